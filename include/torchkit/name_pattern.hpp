#pragma once
/// @file name_pattern.hpp
/// Parameter-name patterns, shared by freeze.hpp (tip 8) and param_groups.hpp (tip 9):
/// `NamePattern` (an exact name, a module path, a glob or a regular expression),
/// `torchkit::regex()`, and `PatternList`, the one list type every function that selects
/// parameters by name accepts.
///
///     torchkit::freeze(net, {"cnn.VGG_16.convolution1_1", "*.bias", torchkit::regex(R"(.*_2\.weight)")});
///
/// A new kind of pattern goes here: an enumerator in NamePattern::Kind, a factory like regex(),
/// a case in matches() and in to_string() (detail/name_pattern.hpp's select() and suggestions
/// work on any kind).

#include <torchkit/error.hpp>

#include <fmt/format.h>

#include <concepts>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <ranges>
#include <regex>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace torchkit {

class NamePattern;
[[nodiscard]] NamePattern regex(std::string expression);

/// Selects parameters by name. A pattern is one of:
/// - an exact parameter name: `"cnn.VGG_16.convolution1_1.weight"`;
/// - a module path, which covers every parameter below it: `"cnn.VGG_16.convolution1_1"` covers
///   its `.weight` and `.bias` (but `"features.1"` does not cover `features.10.weight`);
/// - a glob, when the text holds `*` (any run of characters, dots included) or `?` (exactly one
///   character): `"*.bias"`, `"*convolution1*"`. Like a module path, a glob that matches a module
///   path covers everything below it: `"features.?"` covers `features.3.weight`;
/// - `torchkit::regex("…")`: an ECMAScript regular expression (no back-references) that must match the whole
///   parameter name (`std::regex_match`), e.g. `torchkit::regex(R"(.*conv\d+_1\.weight)")`.
///
/// A tied tensor (one tensor registered in several modules) matches when any of its names does.
///
///     torchkit::freeze(model, {"cnn.VGG_16.convolution1_1", "*.bias", torchkit::regex(".*_2\\.weight")});
class NamePattern {
 public:
  /// What kind of pattern this is.
  enum class Kind {
    name,   ///< an exact parameter name or a module path
    glob,   ///< text with `*` or `?`
    regex,  ///< made by torchkit::regex()
  };

  /// A name, module path or glob (a glob when `text` holds `*` or `?`).
  NamePattern(std::string text)  // NOLINT(google-explicit-constructor): patterns are written as strings
      : text_(std::move(text)),
        kind_(text_.find_first_of("*?") == std::string::npos ? Kind::name : Kind::glob) {}
  /// A name, module path or glob. Throws Error for a null pointer.
  NamePattern(const char* text)  // NOLINT(google-explicit-constructor)
      : NamePattern(std::string(checked(text))) {}
  /// A name, module path or glob.
  NamePattern(std::string_view text)  // NOLINT(google-explicit-constructor)
      : NamePattern(std::string(text)) {}

  /// The pattern as written (for a regex: the expression).
  [[nodiscard]] const std::string& text() const noexcept { return text_; }
  /// Whether this is a name, a glob or a regex.
  [[nodiscard]] Kind kind() const noexcept { return kind_; }

  /// Whether the parameter called `name` is selected by this pattern.
  [[nodiscard]] bool matches(std::string_view name) const;

  /// The pattern as it appears in messages: `"cnn.VGG_16"`, `"*.bias"`, `regex("conv.*")`.
  [[nodiscard]] std::string to_string() const {
    return kind_ == Kind::regex ? fmt::format("regex(\"{}\")", text_) : fmt::format("\"{}\"", text_);
  }

  /// Writes to_string().
  friend std::ostream& operator<<(std::ostream& out, const NamePattern& pattern) { return out << pattern.to_string(); }

  friend NamePattern regex(std::string expression);

 private:
  struct RegexTag {};
  NamePattern(RegexTag, std::string expression, std::shared_ptr<const std::regex> compiled)
      : text_(std::move(expression)), kind_(Kind::regex), compiled_(std::move(compiled)) {}

  static const char* checked(const char* text) {
    TORCHKIT_CHECK(text != nullptr, "NamePattern: the pattern is a null pointer; pass a parameter name, module path or glob");
    return text;
  }

  std::string text_;
  Kind kind_;
  std::shared_ptr<const std::regex> compiled_;  // shared: patterns are cheap to copy
};

namespace detail {
/// ECMAScript; with libstdc++ also its breadth-first matcher (`__polynomial`): time linear in the
/// name for any expression, and no recursion as deep as the name is long. libstdc++'s default
/// depth-first matcher takes exponential time on expressions such as `(a|a)*b` (found by
/// fuzz/fuzz_name_pattern.cpp). Back-references are then refused as invalid expressions.
#if defined(__GLIBCXX__)
inline constexpr auto regex_flags = std::regex::ECMAScript | std::regex_constants::__polynomial;
#else
inline constexpr auto regex_flags = std::regex::ECMAScript;
#endif
}  // namespace detail

/// A pattern that selects the parameters whose whole name matches the ECMAScript regular
/// expression `expression` (`std::regex_match`; Python: `re.fullmatch(expression, name)`).
///
/// @throws Error naming the expression when it is not a valid regular expression.
///
///     torchkit::freeze(model, {torchkit::regex(R"(cnn\.VGG_16\.convolution1_\d\..*)")});
[[nodiscard]] inline NamePattern regex(std::string expression) {
  std::shared_ptr<const std::regex> compiled;
  try {
    compiled = std::make_shared<const std::regex>(expression, detail::regex_flags);
  } catch (const std::regex_error& error) {
    detail::fail("regex: \"{}\" is not a valid regular expression ({}); expected an ECMAScript "
                 "expression that matches whole parameter names, e.g. \"cnn\\.conv\\d+\\.weight\"",
                 expression, error.what());
  }
  return NamePattern(NamePattern::RegexTag{}, std::move(expression), std::move(compiled));
}

/// Any range of patterns: `std::vector<NamePattern>`, `std::array<std::string, 4>`, a set of
/// strings, ... (elements convertible to NamePattern).
template <class R>
concept NamePatternRange =
    std::ranges::input_range<R> && std::convertible_to<std::ranges::range_reference_t<R>, NamePattern>;

namespace detail {

/// Full match of a glob (`*` any run of characters, `?` exactly one) against `text`.
[[nodiscard]] inline bool glob_match(std::string_view pattern, std::string_view text) noexcept {
  std::size_t p = 0;
  std::size_t t = 0;
  std::size_t star = std::string_view::npos;
  std::size_t star_text = 0;
  while (t < text.size()) {
    // '*' first: a '*' in the text is an ordinary character, never a match for the wildcard
    // itself (found by fuzz/fuzz_name_pattern.cpp).
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_text = t;
    } else if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++star_text;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') {
    ++p;
  }
  return p == pattern.size();
}

}  // namespace detail

inline bool NamePattern::matches(std::string_view name) const {
  switch (kind_) {
    case Kind::name:
      if (text_.empty()) {
        return false;
      }
      if (name == text_) {
        return true;
      }
      // A module path covers everything below it; "a.b." is read as the module path "a.b".
      if (text_.back() == '.') {
        return name.starts_with(text_);
      }
      return name.size() > text_.size() && name.starts_with(text_) && name[text_.size()] == '.';
    case Kind::glob: {
      if (detail::glob_match(text_, name)) {
        return true;
      }
      // ... or a module path above the parameter: "features.?" covers "features.3.weight".
      for (std::size_t dot = name.find('.'); dot != std::string_view::npos; dot = name.find('.', dot + 1)) {
        if (detail::glob_match(text_, name.substr(0, dot))) {
          return true;
        }
      }
      return false;
    }
    case Kind::regex:
      return !text_.empty() && std::regex_match(name.begin(), name.end(), *compiled_);
  }
  return false;
}

/// A list of name patterns: what every function that selects parameters by name takes
/// (freeze, unfreeze, freeze_all_except, FreezeByName, ParamGroupBuilder::add and
/// ParamGroupBuilder::no_weight_decay). It is made implicitly from
/// - a braced list: `{"features.0", "*.bias", torchkit::regex(".*_2\\.weight")}`;
/// - any range of strings or patterns: `std::vector<std::string>`, `std::vector<NamePattern>`,
///   `std::array<std::string_view, 3>`, `std::set<std::string>`, ...;
/// - one pattern: `"features.0"`, a `std::string`, a `NamePattern`.
///
///     const std::vector<std::string> no_grad{"cnn.VGG_16.convolution1_1"};
///     torchkit::freeze(net, no_grad);                  // the same call as
///     torchkit::freeze(net, {"cnn.VGG_16.convolution1_1"});
class PatternList {
 public:
  /// No patterns (the functions that take a list refuse an empty one, naming themselves).
  PatternList() = default;
  /// `{"a", "*.bias", torchkit::regex("...")}`.
  PatternList(std::initializer_list<NamePattern> patterns)  // NOLINT(google-explicit-constructor)
      : patterns_(patterns) {}
  /// Any range whose elements convert to NamePattern.
  template <NamePatternRange R>
    requires(!std::same_as<std::remove_cvref_t<R>, PatternList>)
  PatternList(R&& patterns) {  // NOLINT(google-explicit-constructor,bugprone-forwarding-reference-overload)
    if constexpr (std::ranges::sized_range<R>) {
      patterns_.reserve(static_cast<std::size_t>(std::ranges::size(patterns)));
    }
    for (auto&& pattern : patterns) {
      patterns_.emplace_back(std::forward<decltype(pattern)>(pattern));
    }
  }
  /// One pattern.
  PatternList(NamePattern pattern) : patterns_{std::move(pattern)} {}  // NOLINT(google-explicit-constructor)
  /// One name, module path or glob. Throws Error for a null pointer.
  PatternList(const char* text) : PatternList(NamePattern(text)) {}  // NOLINT(google-explicit-constructor)
  /// One name, module path or glob.
  PatternList(std::string text) : PatternList(NamePattern(std::move(text))) {}  // NOLINT(google-explicit-constructor)
  /// One name, module path or glob.
  PatternList(std::string_view text) : PatternList(NamePattern(text)) {}  // NOLINT(google-explicit-constructor)

  /// The number of patterns.
  [[nodiscard]] std::size_t size() const noexcept { return patterns_.size(); }
  /// Whether there are no patterns.
  [[nodiscard]] bool empty() const noexcept { return patterns_.empty(); }
  /// The pattern at `index` (< size(), unchecked, as `std::vector`).
  [[nodiscard]] const NamePattern& operator[](std::size_t index) const { return patterns_[index]; }
  /// The patterns, in the order given. (PatternList itself is no range, so that {fmt} prints it
  /// as its to_string() also where <fmt/ranges.h> is included.)
  [[nodiscard]] const std::vector<NamePattern>& patterns() const noexcept { return patterns_; }

  /// The patterns as messages show them: `"a", "*.bias", regex("b.*")`.
  [[nodiscard]] std::string to_string() const {
    std::string text;
    for (const NamePattern& pattern : patterns_) {
      text += (text.empty() ? "" : ", ") + pattern.to_string();
    }
    return text;
  }

 private:
  std::vector<NamePattern> patterns_;
};

namespace detail {
/// NamePattern and PatternList format with `{fmt}` as their to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<NamePattern> = true;
template <>
inline constexpr bool formats_with_to_string<PatternList> = true;
}  // namespace detail

}  // namespace torchkit
