#pragma once
/// @file freeze.hpp
/// Tip 8: freeze layers by name. `freeze`, `unfreeze`, `freeze_all_except`, the RAII
/// `FreezeByName`, `requires_grad_report` (the tip's `name: …,\t grad: True` listing) and
/// `trainable_parameters` (the tip's `filter(lambda p: p.requires_grad, net.parameters())`).
///
/// Parameters are selected with name patterns (see torchkit::NamePattern): an exact name, a
/// module path (covers every parameter below it), a glob (`*`, `?`) or `torchkit::regex("…")`.
/// A pattern that matches no parameter is an error that lists the closest parameter names, so a
/// typo never passes silently. Every pattern is checked before any flag changes: after an error
/// the model is exactly as it was.

#include <torchkit/concepts.hpp>
#include <torchkit/detail/name_pattern.hpp>
#include <torchkit/name_pattern.hpp>
#include <torchkit/error.hpp>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace torchkit {

/// One parameter's line in a FreezeReport: its name, size and `requires_grad` before and after.
struct ParameterFlag {
  std::string name;                   ///< Python's name (the first one for a tied tensor)
  std::int64_t numel = 0;                  ///< number of elements
  bool requires_grad_before = false;  ///< the flag before the call
  bool requires_grad = false;         ///< the flag after the call

  /// Whether the call changed this parameter's flag.
  [[nodiscard]] bool changed() const noexcept { return requires_grad_before != requires_grad; }
};

/// Every parameter of a model with its `requires_grad` flag (before and after a freeze call).
///
/// `to_string()` is exactly the tip's listing, one line per parameter:
/// `name: cnn.VGG_16.convolution1_1.weight,\t grad: True` (Python:
/// `print('name: {0},\t grad: {1}'.format(name, value.requires_grad))`). `summary()` gives the
/// counts and what changed.
///
///     auto report = torchkit::freeze(net, {"cnn.VGG_16.convolution1_1"});
///     std::cout << report;             // the listing
///     std::cout << report.summary();   // 8 parameters (...): 6 trainable (...), 2 frozen (...); ...
struct FreezeReport {
  std::vector<ParameterFlag> parameters;  ///< in Python's named_parameters() order, each tensor once

  /// Names of the parameters whose flag the call changed, in model order.
  [[nodiscard]] std::vector<std::string> changed() const {
    std::vector<std::string> names;
    for (const auto& parameter : parameters) {
      if (parameter.changed()) {
        names.push_back(parameter.name);
      }
    }
    return names;
  }
  /// Number of parameters with `requires_grad == false` afterwards.
  [[nodiscard]] std::size_t frozen_count() const noexcept { return count(false); }
  /// Number of parameters with `requires_grad == true` afterwards.
  [[nodiscard]] std::size_t trainable_count() const noexcept { return count(true); }
  /// Elements in the frozen parameters.
  [[nodiscard]] std::int64_t frozen_elements() const noexcept { return elements(false); }
  /// Elements in the trainable parameters.
  [[nodiscard]] std::int64_t trainable_elements() const noexcept { return elements(true); }

  /// The tip's listing: `name: <name>,\t grad: True|False`, one line (ending in '\n') per parameter.
  [[nodiscard]] std::string to_string() const {
    std::string text;
    for (const auto& parameter : parameters) {
      text += fmt::format("name: {},\t grad: {}\n", parameter.name, parameter.requires_grad ? "True" : "False");
    }
    return text;
  }

  /// Counts and changes in one line (naming the first 8 changes), e.g.
  /// `8 parameters (1000 elements): 4 trainable (800 elements), 4 frozen (200 elements); 4 changed: a (frozen), ...`.
  [[nodiscard]] std::string summary() const {
    std::string text = fmt::format("{} parameters ({} elements): {} trainable ({} elements), {} frozen ({} elements)",
                                   parameters.size(), trainable_elements() + frozen_elements(), trainable_count(),
                                   trainable_elements(), frozen_count(), frozen_elements());
    constexpr std::size_t listed = 8;  // a one-liner: name the first few changes
    std::size_t changes = 0;
    std::string list;
    for (const auto& parameter : parameters) {
      if (parameter.changed()) {
        if (changes < listed) {
          list += fmt::format("{}{} ({})", changes == 0 ? "" : ", ", parameter.name,
                              parameter.requires_grad ? "trainable" : "frozen");
        }
        ++changes;
      }
    }
    if (changes > listed) {
      list += fmt::format(" and {} more", changes - listed);
    }
    text += changes == 0 ? std::string("; nothing changed") : fmt::format("; {} changed: {}", changes, list);
    return text;
  }

  /// Writes to_string().
  friend std::ostream& operator<<(std::ostream& out, const FreezeReport& report) { return out << report.to_string(); }

 private:
  [[nodiscard]] std::size_t count(bool trainable) const noexcept {
    std::size_t result = 0;
    for (const auto& parameter : parameters) {
      result += parameter.requires_grad == trainable ? 1 : 0;
    }
    return result;
  }
  [[nodiscard]] std::int64_t elements(bool trainable) const noexcept {
    std::int64_t result = 0;
    for (const auto& parameter : parameters) {
      result += parameter.requires_grad == trainable ? parameter.numel : 0;
    }
    return result;
  }
};

namespace detail {
/// FreezeReport formats with `{fmt}` as its to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<FreezeReport> = true;
}  // namespace detail

/// What FreezeByName freezes.
enum class FreezeMode {
  matching,    ///< the matching parameters (as torchkit::freeze)
  all_except,  ///< every parameter but the matching ones, which become trainable (as torchkit::freeze_all_except)
};

namespace detail {

enum class FreezeAction { freeze, unfreeze, freeze_all_except };

/// The report of the current flags, without changing anything.
[[nodiscard]] inline FreezeReport flags_of(std::span<const ParameterEntry> table) {
  FreezeReport report;
  report.parameters.reserve(table.size());
  for (const auto& entry : table) {
    const bool flag = entry.tensor.requires_grad();
    report.parameters.push_back(ParameterFlag{entry.name, entry.tensor.numel(), flag, flag});
  }
  return report;
}

/// Validates every pattern and every planned change, then sets the flags. Throws Error (prefixed
/// with `context`) before changing anything.
[[nodiscard]] inline FreezeReport set_requires_grad_by_name(std::string_view context,
                                                            std::span<const ParameterEntry> table,
                                                            std::span<const NamePattern> patterns,
                                                            FreezeAction action) {
  const std::vector<bool> selected = select(context, patterns, table);
  FreezeReport report = flags_of(table);
  for (std::size_t i = 0; i < table.size(); ++i) {
    ParameterFlag& flag = report.parameters[i];
    switch (action) {
      case FreezeAction::freeze:
        flag.requires_grad = selected[i] ? false : flag.requires_grad_before;
        break;
      case FreezeAction::unfreeze:
        flag.requires_grad = selected[i] ? true : flag.requires_grad_before;
        break;
      case FreezeAction::freeze_all_except:
        flag.requires_grad = selected[i];
        break;
    }
    if (!flag.changed()) {
      continue;
    }
    const at::Tensor& tensor = table[i].tensor;
    TORCHKIT_CHECK(tensor.is_leaf(),
                   "{}: parameter \"{}\" is not a leaf tensor (it was computed from other tensors), so its "
                   "requires_grad cannot change; register a leaf tensor (e.g. tensor.detach()) as the parameter",
                   context, flag.name);
    TORCHKIT_CHECK(!flag.requires_grad || tensor.is_floating_point() || tensor.is_complex(),
                   "{}: parameter \"{}\" has dtype {}, which cannot require gradients; only floating-point and "
                   "complex parameters can be made trainable",
                   context, flag.name, c10::toString(tensor.scalar_type()));
  }
  for (std::size_t i = 0; i < table.size(); ++i) {
    if (report.parameters[i].changed()) {
      table[i].tensor.requires_grad_(report.parameters[i].requires_grad);
    }
  }
  return report;
}

}  // namespace detail

/// Freezes (`requires_grad = false`) every parameter that one of `patterns` selects; the others
/// keep their flag. Python: `for name, p in net.named_parameters(): if name in no_grad:
/// p.requires_grad = False`.
///
/// @param model     a module, module holder or shared_ptr to a module
/// @param patterns  names, module paths, globs or torchkit::regex(...) (see NamePattern)
/// @returns         every parameter's flag before and after
/// @throws Error    for an empty list, an empty pattern, a pattern that matches no parameter
///                  (the message lists the three closest names), or a selected trainable
///                  parameter that is not a leaf tensor (computed from other tensors: its flag
///                  cannot be turned off); the model is unchanged then.
///
///     const std::vector<std::string> no_grad{"cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution1_1.bias"};
///     auto report = torchkit::freeze(net, no_grad);
///     torchkit::freeze(net, {"cnn.VGG_16.convolution1_2", "*.bias"});
template <ModuleLike M>
FreezeReport freeze(M& model, const PatternList& patterns) {
  const auto table = detail::parameter_table(model, "freeze");
  return detail::set_requires_grad_by_name("freeze", table, patterns.patterns(), detail::FreezeAction::freeze);
}

/// Makes every parameter that one of `patterns` selects trainable (`requires_grad = true`); the
/// others keep their flag. Python: `p.requires_grad = True` for the chosen names.
///
/// @throws Error for an empty list, an empty pattern, a pattern that matches no parameter, or a
///         selected parameter that cannot require gradients (an integer dtype); the model is
///         unchanged then. (A non-leaf parameter always requires grad already, so unfreeze never
///         has to change one.)
///
///     torchkit::unfreeze(net, {"cnn.VGG_16.convolution1_2"});
template <ModuleLike M>
FreezeReport unfreeze(M& model, const PatternList& patterns) {
  const auto table = detail::parameter_table(model, "unfreeze");
  return detail::set_requires_grad_by_name("unfreeze", table, patterns.patterns(), detail::FreezeAction::unfreeze);
}

/// Freezes every parameter except the ones `patterns` select, which are made trainable:
/// afterwards exactly the selected parameters have `requires_grad == true`. This is the tip's
/// loop (`if name in no_grad: False else: True`) seen from the other side, e.g. fine-tuning
/// only the classifier head.
///
/// @throws Error as unfreeze(), and for a trainable non-leaf parameter it would freeze (as
///         freeze()); the model is unchanged then.
///
///     torchkit::freeze_all_except(net, {"classifier"});
template <ModuleLike M>
FreezeReport freeze_all_except(M& model, const PatternList& patterns) {
  const auto table = detail::parameter_table(model, "freeze_all_except");
  return detail::set_requires_grad_by_name("freeze_all_except", table, patterns.patterns(), detail::FreezeAction::freeze_all_except);
}

/// RAII: freezes parameters by name on construction and, on destruction, restores every
/// parameter's `requires_grad` to what it was on construction (also the ones changed by hand
/// in between, and also when an exception unwinds). Non-copyable, non-movable.
///
/// Construction throws Error exactly as freeze() (or freeze_all_except() with
/// FreezeMode::all_except) does, and then changes nothing.
///
///     {
///       torchkit::FreezeByName frozen(net, {"cnn.VGG_16.convolution1_*"});  // warm up the head only
///       std::cout << frozen.report().summary() << '\n';
///       train_one_epoch(net);
///     }  // every flag is back
class FreezeByName {
 public:
  /// Freezes what `patterns` select (FreezeMode::matching) or everything else
  /// (FreezeMode::all_except).
  template <ModuleLike M>
  FreezeByName(M& model, const PatternList& patterns, FreezeMode mode = FreezeMode::matching)
      : FreezeByName(detail::parameter_table(model, "FreezeByName"), patterns, mode) {}

  FreezeByName(const FreezeByName&) = delete;
  FreezeByName& operator=(const FreezeByName&) = delete;
  FreezeByName(FreezeByName&&) = delete;
  FreezeByName& operator=(FreezeByName&&) = delete;

  /// Restores every parameter's flag. Never throws: a flag that can no longer be set (the
  /// tensor's dtype was changed to an integer type in the meantime) is left as it is.
  ~FreezeByName() {
    for (auto& [tensor, flag] : saved_) {
      try {
        if (tensor.requires_grad() != flag) {
          tensor.requires_grad_(flag);
        }
      } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
      }
    }
  }

  /// What the construction changed.
  [[nodiscard]] const FreezeReport& report() const noexcept { return report_; }

 private:
  FreezeByName(std::vector<detail::ParameterEntry> table, const PatternList& patterns, FreezeMode mode)
      : report_(detail::set_requires_grad_by_name(
            "FreezeByName", table, patterns.patterns(),
            mode == FreezeMode::matching ? detail::FreezeAction::freeze : detail::FreezeAction::freeze_all_except)) {
    // set_requires_grad_by_name validated before changing anything; the report has every flag as found.
    saved_.reserve(table.size());
    for (std::size_t i = 0; i < table.size(); ++i) {
      saved_.emplace_back(table[i].tensor, report_.parameters[i].requires_grad_before);
    }
  }

  FreezeReport report_;
  std::vector<std::pair<at::Tensor, bool>> saved_;
};

/// Every parameter's name and `requires_grad`, changing nothing. Its `to_string()` (and
/// `operator<<`) is the tip's listing: Python
/// `for name, value in net.named_parameters(): print('name: {0},\t grad: {1}'.format(name, value.requires_grad))`.
///
///     std::cout << torchkit::requires_grad_report(net);
///     // name: cnn.VGG_16.convolution1_1.weight,	 grad: True
///     // ...
template <ModuleLike M>
[[nodiscard]] FreezeReport requires_grad_report(const M& model) {
  return detail::flags_of(detail::parameter_table(model, "requires_grad_report"));
}

/// The parameters that require gradients, each tensor once, in model order: the tip's
/// `filter(lambda p: p.requires_grad, net.parameters())`. Accepts a module (holder, shared_ptr)
/// or any range of tensors (kept in its order, undefined tensors skipped).
///
///     torch::optim::Adam optimizer(torchkit::trainable_parameters(net), torch::optim::AdamOptions(0.01));
template <ParameterSource P>
[[nodiscard]] std::vector<at::Tensor> trainable_parameters(P&& source) {
  std::vector<at::Tensor> all = parameters_of(std::forward<P>(source));
  std::vector<at::Tensor> result;
  result.reserve(all.size());
  for (auto& tensor : all) {
    if (tensor.defined() && tensor.requires_grad()) {
      result.push_back(std::move(tensor));
    }
  }
  return result;
}

}  // namespace torchkit
