#pragma once
/// @file detail/name_pattern.hpp
/// Parameter-name patterns shared by freeze.hpp (tip 8) and param_groups.hpp (tip 9).
///
/// The public part is `torchkit::NamePattern` and `torchkit::regex()`; include freeze.hpp or
/// param_groups.hpp to use them. Everything in `torchkit::detail` is internal: the parameter
/// table (each tensor once, with every name it is reachable under), glob matching, and the
/// "closest names" suggestion that makes a typo fail loudly instead of matching nothing.

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <numeric>
#include <ostream>
#include <ranges>
#include <regex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
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

/// A pattern that selects the parameters whose whole name matches the ECMAScript regular
/// expression `expression` (`std::regex_match`; Python: `re.fullmatch(expression, name)`).
///
/// Throws Error naming the expression when it is not a valid regular expression.
///
///     torchkit::freeze(model, {torchkit::regex(R"(cnn\.VGG_16\.convolution1_\d\..*)")});
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

[[nodiscard]] inline NamePattern regex(std::string expression) {
  std::shared_ptr<const std::regex> compiled;
  try {
    compiled = std::make_shared<const std::regex>(expression, detail::regex_flags);
  } catch (const std::regex_error& error) {
    detail::fail("torchkit::regex: \"{}\" is not a valid regular expression ({}); expected an ECMAScript "
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

/// Levenshtein distance (insertions, deletions, substitutions, each 1).
[[nodiscard]] inline std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> previous(b.size() + 1);
  std::vector<std::size_t> current(b.size() + 1);
  std::iota(previous.begin(), previous.end(), std::size_t{0});
  for (std::size_t i = 1; i <= a.size(); ++i) {
    current[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      current[j] = std::min({previous[j] + 1, current[j - 1] + 1, substitution});
    }
    std::swap(previous, current);
  }
  return previous[b.size()];
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

namespace detail {

/// One parameter of a model: the tensor once, under its first (Python) name, with every name it
/// is registered under (more than one for tied tensors).
struct ParameterEntry {
  std::string name;
  at::Tensor tensor;
  std::vector<std::string> other_names;  ///< the names of a tied tensor after the first (usually none)
};

/// Every defined parameter of `model`, each tensor once, in Python's `named_parameters()` order
/// and under its Python name: the same list as torchkit::named_parameters_of, plus the other names
/// of tied tensors. Built from one traversal of the module tree (named_parameters_of and a second
/// traversal for the other names would cost twice as much).
template <ModuleLike M>
[[nodiscard]] std::vector<ParameterEntry> parameter_table(const M& model) {
  const auto all = module_of(model).named_parameters(/*recurse=*/true);
  std::vector<ParameterEntry> table;
  table.reserve(all.size());
  std::unordered_map<const void*, std::size_t> index_of;
  index_of.reserve(all.size());
  for (const auto& item : all) {
    if (!item.value().defined()) {
      continue;
    }
    const auto [found, inserted] = index_of.emplace(item.value().unsafeGetTensorImpl(), table.size());
    if (inserted) {
      table.push_back(ParameterEntry{item.key(), item.value(), {}});
    } else {
      auto& entry = table[found->second];
      if (item.key() != entry.name &&
          std::find(entry.other_names.begin(), entry.other_names.end(), item.key()) == entry.other_names.end()) {
        entry.other_names.push_back(item.key());
      }
    }
  }
  return table;
}

/// Whether any name of `entry` matches `pattern`.
[[nodiscard]] inline bool matches(const NamePattern& pattern, const ParameterEntry& entry) {
  return pattern.matches(entry.name) ||
         std::any_of(entry.other_names.begin(), entry.other_names.end(),
                     [&](const std::string& other) { return pattern.matches(other); });
}

/// The distance between what the user typed and a parameter name: the smallest edit distance to
/// the name or to one of the module paths above it (so a mistyped module path finds its module).
[[nodiscard]] inline std::size_t name_distance(std::string_view typed, std::string_view name) {
  std::size_t best = edit_distance(typed, name);
  for (std::size_t dot = name.find('.'); dot != std::string_view::npos; dot = name.find('.', dot + 1)) {
    best = std::min(best, edit_distance(typed, name.substr(0, dot)));
  }
  return best;
}

/// Up to `count` parameter names closest to `typed` (by name_distance; ties keep model order),
/// formatted for a message: `"a.weight", "a.bias", "b.weight"`.
[[nodiscard]] inline std::string closest_names(std::string_view typed, std::span<const ParameterEntry> table,
                                               std::size_t count = 3) {
  if (table.empty()) {
    return "(the model has no parameters)";
  }
  std::vector<std::pair<std::size_t, std::size_t>> ranked;  // (distance, index)
  ranked.reserve(table.size());
  for (std::size_t i = 0; i < table.size(); ++i) {
    std::size_t distance = name_distance(typed, table[i].name);
    for (const auto& other : table[i].other_names) {
      distance = std::min(distance, name_distance(typed, other));
    }
    ranked.emplace_back(distance, i);
  }
  std::stable_sort(ranked.begin(), ranked.end(),
                   [](const auto& left, const auto& right) { return left.first < right.first; });
  std::string result;
  for (std::size_t i = 0; i < std::min(count, ranked.size()); ++i) {
    result += fmt::format("{}\"{}\"", i == 0 ? "" : ", ", table[ranked[i].second].name);
  }
  return result;
}

/// Checks every pattern (non-empty list, no empty pattern, each matches some parameter) and
/// returns, per parameter, whether any pattern selects it. Nothing is changed; throws Error
/// prefixed with `context` (the calling function's name).
[[nodiscard]] inline std::vector<bool> select(std::string_view context, std::span<const NamePattern> patterns,
                                              std::span<const ParameterEntry> table) {
  TORCHKIT_CHECK(!patterns.empty(),
                 "{}: no patterns given; expected parameter names, module paths, globs or torchkit::regex(...), "
                 "e.g. {{\"cnn.VGG_16.convolution1_1\"}} (\"*\" selects every parameter)",
                 context);
  std::vector<bool> selected(table.size(), false);
  for (std::size_t p = 0; p < patterns.size(); ++p) {
    const NamePattern& pattern = patterns[p];
    TORCHKIT_CHECK(!pattern.text().empty(),
                   "{}: pattern {} of {} is empty; expected a parameter name, module path, glob or torchkit::regex(...)",
                   context, p + 1, patterns.size());
    bool any = false;
    for (std::size_t i = 0; i < table.size(); ++i) {
      if (matches(pattern, table[i])) {
        selected[i] = true;
        any = true;
      }
    }
    TORCHKIT_CHECK(any, "{}: pattern {} (pattern {} of {}) matches no parameter of the model ({} parameters); the closest names are {}",
                   context, pattern.to_string(), p + 1, patterns.size(), table.size(),
                   closest_names(pattern.text(), table));
  }
  return selected;
}

/// Patterns from any range of pattern-convertible elements.
template <class R>
[[nodiscard]] std::vector<NamePattern> collect_patterns(R&& patterns) {
  std::vector<NamePattern> result;
  for (auto&& pattern : patterns) {
    result.emplace_back(std::forward<decltype(pattern)>(pattern));
  }
  return result;
}

/// Patterns from plain strings.
[[nodiscard]] inline std::vector<NamePattern> to_patterns(const std::vector<std::string>& texts) {
  return std::vector<NamePattern>(texts.begin(), texts.end());
}

}  // namespace detail
}  // namespace torchkit
