#pragma once
/// @file detail/name_pattern.hpp
/// Internals of the name patterns (the public part, NamePattern, regex() and PatternList, is in
/// torchkit/name_pattern.hpp, included here): the parameter table (each tensor once, with every
/// name it is reachable under), selection with validation, and the "closest names" suggestion
/// that makes a typo fail loudly instead of matching nothing.

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
#include <torchkit/name_pattern.hpp>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace torchkit {
namespace detail {

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
/// traversal for the other names would cost twice as much). `caller` names the public function
/// in the error for an empty holder or a null pointer.
template <ModuleLike M>
[[nodiscard]] std::vector<ParameterEntry> parameter_table(const M& model, std::string_view caller = "module_of") {
  const auto all = module_of(model, caller).named_parameters(/*recurse=*/true);
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

/// What to write instead, for a pattern that matched nothing, or "": a name or glob written
/// like a regular expression ("features\\.\\d+", "^conv", "a|b") gets `torchkit::regex(...)`; a
/// dotted name whose first part is no top-level module but which matches once that part is
/// dropped (a "model." or DataParallel's "module." prefix) gets the name without it.
[[nodiscard]] inline std::string pattern_hint(const NamePattern& pattern, std::span<const ParameterEntry> table) {
  const std::string& text = pattern.text();
  if (pattern.kind() == NamePattern::Kind::regex) return "";
  // (".*" is a glob too: "features.*" is every parameter under features.)
  static constexpr std::string_view regex_marks[] = {"\\", "^", "$", "[", "(", "|", "+", "{"};
  for (const auto mark : regex_marks) {
    if (text.find(mark) != std::string::npos) {
      return fmt::format("; it looks like a regular expression: write torchkit::regex(\"{}\")", text);
    }
  }
  const auto dot = text.find('.');
  if (dot == std::string::npos || dot + 1 >= text.size()) return "";
  const std::string first = text.substr(0, dot);
  const bool first_exists = std::any_of(table.begin(), table.end(), [&](const ParameterEntry& entry) {
    return entry.name.compare(0, first.size() + 1, first + ".") == 0 || entry.name == first;
  });
  if (first_exists) return "";
  const NamePattern rest(text.substr(dot + 1));
  const bool rest_matches =
      std::any_of(table.begin(), table.end(), [&](const ParameterEntry& entry) { return matches(rest, entry); });
  return rest_matches
             ? fmt::format("; the model has no top-level module \"{}\": did you mean \"{}\" (names are relative "
                           "to the model you pass)?",
                           first, rest.text())
             : std::string();
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
    TORCHKIT_CHECK(any, "{}: pattern {} (pattern {} of {}) matches no parameter of the model ({} parameters); the closest names are {}{}",
                   context, pattern.to_string(), p + 1, patterns.size(), table.size(),
                   closest_names(pattern.text(), table), pattern_hint(pattern, table));
  }
  return selected;
}

}  // namespace detail
}  // namespace torchkit
