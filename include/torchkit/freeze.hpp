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
///
/// Fine-tuning (FreezeOptions) — two differences from Python, both on purpose:
/// - **Frozen means frozen.** Python's `p.requires_grad = False` keeps `p.grad`; an optimizer built
///   before the freeze then still moves `p` (weight decay, momentum: LibTorch 1.13's `zero_grad`
///   zeroes gradients rather than resetting them, so the zero gradient stays defined). torchkit
///   resets the gradient of every newly frozen parameter to an undefined tensor, so no optimizer
///   touches it; `FreezeOptions{.clear_grads = false}` keeps Python's behaviour.
/// - **Frozen statistics.** In Python a frozen BatchNorm still updates its running mean and
///   variance whenever the model is in training mode. With `FreezeOptions{.freeze_norm_stats =
///   true}` the normalisation layers with running statistics that the call freezes (BatchNorm1d/2d/3d,
///   InstanceNorm1d/2d/3d with `track_running_stats`) are put in eval mode and remembered;
///   `torchkit::train(model)` (or a `TrainScope`) then sets training mode everywhere except in
///   them, as Python's usual `model.train(); freeze_bn(model)` recipe does. Their affine parameters
///   (and those of GroupNorm/LayerNorm) are frozen like any other parameter. LibTorch's own
///   `model->train()` does not know about them and puts them back in training mode: call
///   `torchkit::train(model)` instead (the layers stay remembered, so the next torchkit::train
///   freezes them again).

#include <torchkit/concepts.hpp>
#include <torchkit/detail/name_pattern.hpp>
#include <torchkit/name_pattern.hpp>
#include <torchkit/error.hpp>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/functional/batchnorm.h>     // LibTorch's module headers below use these
#include <torch/nn/functional/instancenorm.h>  // without including them
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/instancenorm.h>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <ostream>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
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
/// ``print('name: {0},\t grad: {1}'.format(name, value.requires_grad))``). `summary()` gives the
/// counts and what changed.
///
///     auto report = torchkit::freeze(net, {"cnn.VGG_16.convolution1_1"});
///     std::cout << report;             // the listing
///     std::cout << report.summary();   // 8 parameters (...): 6 trainable (...), 2 frozen (...); ...
struct FreezeReport {
  std::vector<ParameterFlag> parameters;  ///< in Python's named_parameters() order, each tensor once
  /// The normalisation layers with running statistics (BatchNorm1d/2d/3d, InstanceNorm with
  /// `track_running_stats`) whose statistics are frozen after the call (kept in eval mode by
  /// torchkit::train), by module name, in model order. Empty unless FreezeOptions::freeze_norm_stats
  /// was used on this model.
  std::vector<std::string> frozen_batchnorm;

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

  /// The tip's listing: `name: <name>,\t grad: True|False`, one line (ending in a newline) per parameter.
  [[nodiscard]] std::string to_string() const {
    std::string text;
    for (const auto& parameter : parameters) {
      text += fmt::format("name: {},\t grad: {}\n", parameter.name, parameter.requires_grad ? "True" : "False");
    }
    return text;
  }

  /// Counts and changes in one line (naming the first 8 changes), e.g.
  /// `8 parameters (1000 elements): 4 trainable (800 elements), 4 frozen (200 elements); 4 changed: a (frozen), ...`
  /// (and `; 2 normalisation layers with frozen statistics` when there are any).
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
    if (!frozen_batchnorm.empty()) {
      text += fmt::format("; {} normalisation layer{} with frozen statistics", frozen_batchnorm.size(),
                          frozen_batchnorm.size() == 1 ? "" : "s");
    }
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

/// How freeze, freeze_all_except and FreezeByName freeze (see the file comment for the two
/// differences from Python).
///
///     torchkit::freeze(model, {"backbone"}, {.freeze_norm_stats = true});
///     torchkit::train(model);  // training mode, except the backbone's BatchNorm layers
struct FreezeOptions {
  /// Also freeze the running statistics of the normalisation layers the call freezes: a
  /// BatchNorm1d/2d/3d or InstanceNorm1d/2d/3d with `track_running_stats` that a pattern reaches
  /// (one of its parameter or buffer names matches; freeze_all_except: none matches) and whose
  /// parameters are all frozen afterwards. They go to eval mode now and stay there under
  /// torchkit::train / TrainScope.
  bool freeze_norm_stats = false;
  /// Reset the gradient of every newly frozen parameter to an undefined tensor, so that an
  /// optimizer built before the freeze does not move it (weight decay, momentum). `false` keeps
  /// the gradient, as Python does.
  bool clear_grads = true;
};

namespace detail {

enum class FreezeAction { freeze, unfreeze, freeze_all_except };

/// The normalisation layers whose statistics are frozen, process-wide, keyed by module address
/// (with a weak reference, so that a new module at the address of a destroyed one is not
/// taken for it). Thread-safe.
class FrozenNormRegistry {
 public:
  static FrozenNormRegistry& instance() {
    static FrozenNormRegistry registry;
    return registry;
  }
  [[nodiscard]] bool contains(const torch::nn::Module& module) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto found = entries_.find(&module);
    return found != entries_.end() && alive(found->second, module);
  }
  void set(torch::nn::Module& module, bool frozen) {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end();) {  // forget destroyed modules
      it = it->second.owned && it->second.module.expired() ? entries_.erase(it) : std::next(it);
    }
    if (frozen) {
      std::weak_ptr<torch::nn::Module> weak = module.weak_from_this();
      const bool owned = !weak.expired();
      entries_[&module] = Entry{std::move(weak), owned};
    } else {
      entries_.erase(&module);
    }
  }

 private:
  struct Entry {
    std::weak_ptr<torch::nn::Module> module;
    bool owned = false;  // held by a shared_ptr when registered (modules inside a model always are)
  };
  static bool alive(const Entry& entry, const torch::nn::Module& module) {
    if (!entry.owned) {
      return true;
    }
    const auto held = entry.module.lock();
    return held && held.get() == &module;
  }
  std::mutex mutex_;
  std::unordered_map<const torch::nn::Module*, Entry> entries_;
};

/// Whether `module` is a normalisation layer with running statistics (whose training mode
/// decides whether they update).
[[nodiscard]] inline bool has_running_stats(const torch::nn::Module& module) {
  if (const auto* bn1 = dynamic_cast<const torch::nn::BatchNorm1dImpl*>(&module)) {
    return bn1->options.track_running_stats();
  }
  if (const auto* bn2 = dynamic_cast<const torch::nn::BatchNorm2dImpl*>(&module)) {
    return bn2->options.track_running_stats();
  }
  if (const auto* bn3 = dynamic_cast<const torch::nn::BatchNorm3dImpl*>(&module)) {
    return bn3->options.track_running_stats();
  }
  if (const auto* in1 = dynamic_cast<const torch::nn::InstanceNorm1dImpl*>(&module)) {
    return in1->options.track_running_stats();
  }
  if (const auto* in2 = dynamic_cast<const torch::nn::InstanceNorm2dImpl*>(&module)) {
    return in2->options.track_running_stats();
  }
  if (const auto* in3 = dynamic_cast<const torch::nn::InstanceNorm3dImpl*>(&module)) {
    return in3->options.track_running_stats();
  }
  return false;
}

/// A normalisation layer with running statistics inside a model.
struct NormLayer {
  std::string name;  ///< module path ("" for the model itself)
  torch::nn::Module* module = nullptr;
  std::vector<std::string> entry_names;  ///< its own parameters' and buffers' full names
  std::vector<std::size_t> parameters;   ///< its own parameters, as indices into the parameter table
};

[[nodiscard]] inline std::vector<NormLayer> norm_layers(const torch::nn::Module& model,
                                                        std::span<const ParameterEntry> table) {
  std::unordered_map<const void*, std::size_t> index_of;
  for (std::size_t i = 0; i < table.size(); ++i) {
    index_of.emplace(table[i].tensor.unsafeGetTensorImpl(), i);
  }
  std::vector<NormLayer> layers;
  // The model itself, then its descendants (named_modules(include_self) needs a model held by a
  // shared_ptr; a model by value is not).
  std::vector<std::pair<std::string, torch::nn::Module*>> modules{{"", const_cast<torch::nn::Module*>(&model)}};
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    modules.emplace_back(item.key(), item.value().get());
  }
  for (const auto& [name, module] : modules) {
    if (!has_running_stats(*module)) {
      continue;
    }
    NormLayer layer{name, module, {}, {}};
    const auto full = [&](const std::string& key) { return layer.name.empty() ? key : layer.name + "." + key; };
    for (const auto& parameter : module->named_parameters(/*recurse=*/false)) {
      layer.entry_names.push_back(full(parameter.key()));
      if (const auto found = index_of.find(parameter.value().unsafeGetTensorImpl()); found != index_of.end()) {
        layer.parameters.push_back(found->second);
      }
    }
    for (const auto& buffer : module->named_buffers(/*recurse=*/false)) {
      layer.entry_names.push_back(full(buffer.key()));
    }
    layers.push_back(std::move(layer));
  }
  return layers;
}

/// The names of the layers among `layers` whose statistics are frozen now.
[[nodiscard]] inline std::vector<std::string> frozen_norm_names(const std::vector<NormLayer>& layers) {
  std::vector<std::string> names;
  for (const auto& layer : layers) {
    if (FrozenNormRegistry::instance().contains(*layer.module)) {
      names.push_back(layer.name);
    }
  }
  return names;
}

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

/// What a freeze call changed beyond the flags: the norm layers whose statistics it froze or
/// released, with their training flag before (for FreezeByName to restore).
struct NormChange {
  torch::nn::Module* module = nullptr;
  bool was_frozen = false;
  bool was_training = false;
};

/// Validates every pattern and every planned change, then sets the flags (clearing the gradients
/// of newly frozen parameters, freezing or releasing norm statistics as `options` say). Throws
/// Error (prefixed with `context`) before changing anything. `model` is null for callers that
/// only have the table (no norm layers then).
[[nodiscard]] inline FreezeReport set_requires_grad_by_name(std::string_view context,
                                                            std::span<const ParameterEntry> table,
                                                            std::span<const NamePattern> patterns,
                                                            FreezeAction action, const FreezeOptions& options = {},
                                                            const torch::nn::Module* model = nullptr,
                                                            std::vector<NormChange>* norm_changes = nullptr) {
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
  // Which norm layers change: decided before anything is applied.
  std::vector<NormLayer> layers = model != nullptr ? norm_layers(*model, table) : std::vector<NormLayer>{};
  std::vector<std::pair<std::size_t, bool>> norm_plan;  // (layer, frozen afterwards)
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const NormLayer& layer = layers[l];
    bool reached = false;
    for (const auto& pattern : patterns) {
      for (const auto& name : layer.entry_names) {
        reached = reached || pattern.matches(name);
      }
    }
    bool all_frozen = true;
    for (const std::size_t index : layer.parameters) {
      all_frozen = all_frozen && !report.parameters[index].requires_grad;
    }
    if (action == FreezeAction::unfreeze) {
      if (reached) {
        norm_plan.emplace_back(l, false);
      }
    } else if (options.freeze_norm_stats && all_frozen &&
               (action == FreezeAction::freeze ? reached : !reached)) {
      norm_plan.emplace_back(l, true);
    }
  }
  for (std::size_t i = 0; i < table.size(); ++i) {
    if (report.parameters[i].changed()) {
      at::Tensor tensor = table[i].tensor;
      tensor.requires_grad_(report.parameters[i].requires_grad);
      if (!report.parameters[i].requires_grad && options.clear_grads && tensor.grad().defined()) {
        tensor.mutable_grad().reset();
      }
    }
  }
  auto& registry = FrozenNormRegistry::instance();
  for (const auto& [l, frozen] : norm_plan) {
    torch::nn::Module& module = *layers[l].module;
    const bool was_frozen = registry.contains(module);
    if (norm_changes != nullptr) {
      norm_changes->push_back(NormChange{layers[l].module, was_frozen, module.is_training()});
    }
    registry.set(module, frozen);
    if (frozen && module.is_training()) {
      module.eval();
    }
  }
  report.frozen_batchnorm = frozen_norm_names(layers);
  return report;
}

}  // namespace detail

/// Freezes (`requires_grad = false`) every parameter that one of `patterns` selects; the others
/// keep their flag. Python: `for name, p in net.named_parameters(): if name in no_grad:
/// p.requires_grad = False`.
///
/// @param model     a module, module holder or shared_ptr to a module
/// @param patterns  names, module paths, globs or torchkit::regex(...) (see NamePattern)
/// @param options   FreezeOptions: clear the frozen parameters' gradients (default: yes, unlike
///                  Python), freeze the running statistics of the norm layers frozen (default: no)
/// @returns         every parameter's flag before and after, the norm layers with frozen statistics
/// @throws Error    for an empty list, an empty pattern, a pattern that matches no parameter
///                  (the message lists the three closest names), or a selected trainable
///                  parameter that is not a leaf tensor (computed from other tensors: its flag
///                  cannot be turned off); the model is unchanged then.
///
///     const std::vector<std::string> no_grad{"cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution1_1.bias"};
///     auto report = torchkit::freeze(net, no_grad);
///     torchkit::freeze(net, {"cnn.VGG_16.convolution1_2", "*.bias"});
///     torchkit::freeze(resnet, {"conv1", "bn1", "layer1"}, {.freeze_norm_stats = true});
template <ModuleLike M>
FreezeReport freeze(M& model, const PatternList& patterns, const FreezeOptions& options = {}) {
  const auto table = detail::parameter_table(model, "freeze");
  return detail::set_requires_grad_by_name("freeze", table, patterns.patterns(), detail::FreezeAction::freeze, options,
                                           &module_of(model, "freeze"));
}

/// Makes every parameter that one of `patterns` selects trainable (`requires_grad = true`); the
/// others keep their flag. Python: `p.requires_grad = True` for the chosen names. Norm layers
/// whose statistics were frozen (FreezeOptions::freeze_norm_stats) and that a pattern reaches
/// get trainable statistics again (torchkit::train puts them in training mode).
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
  return detail::set_requires_grad_by_name("unfreeze", table, patterns.patterns(), detail::FreezeAction::unfreeze, {},
                                           &module_of(model, "unfreeze"));
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
///     torchkit::freeze_all_except(net, {"classifier"}, {.freeze_norm_stats = true});  // and every BatchNorm outside it
template <ModuleLike M>
FreezeReport freeze_all_except(M& model, const PatternList& patterns, const FreezeOptions& options = {}) {
  const auto table = detail::parameter_table(model, "freeze_all_except");
  return detail::set_requires_grad_by_name("freeze_all_except", table, patterns.patterns(),
                                           detail::FreezeAction::freeze_all_except, options,
                                           &module_of(model, "freeze_all_except"));
}

/// RAII: freezes parameters by name on construction and, on destruction, restores every
/// parameter's `requires_grad` to what it was on construction (also the ones changed by hand
/// in between, and also when an exception unwinds). Non-copyable, non-movable. With
/// FreezeOptions::freeze_norm_stats it also restores the norm layers whose statistics it froze
/// (their training flag as found, and whether their statistics were frozen); gradients it
/// cleared (FreezeOptions::clear_grads) stay cleared.
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
  FreezeByName(M& model, const PatternList& patterns, FreezeMode mode = FreezeMode::matching,
               const FreezeOptions& options = {})
      : FreezeByName(detail::parameter_table(model, "FreezeByName"), patterns, mode, options,
                     module_of(model, "FreezeByName")) {}
  /// As above, FreezeMode::matching.
  template <ModuleLike M>
  FreezeByName(M& model, const PatternList& patterns, const FreezeOptions& options)
      : FreezeByName(model, patterns, FreezeMode::matching, options) {}

  FreezeByName(const FreezeByName&) = delete;
  FreezeByName& operator=(const FreezeByName&) = delete;
  FreezeByName(FreezeByName&&) = delete;
  FreezeByName& operator=(FreezeByName&&) = delete;

  /// Restores every parameter's flag. Never throws: a flag that can no longer be set (the
  /// tensor's dtype was changed to an integer type in the meantime) is left as it is.
  ~FreezeByName() {
    for (auto it = norm_changes_.rbegin(); it != norm_changes_.rend(); ++it) {
      try {
        detail::FrozenNormRegistry::instance().set(*it->module, it->was_frozen);
        if (it->module->is_training() != it->was_training) {
          it->module->train(it->was_training);
        }
      } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
      }
    }
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
  FreezeByName(std::vector<detail::ParameterEntry> table, const PatternList& patterns, FreezeMode mode,
               const FreezeOptions& options, const torch::nn::Module& model)
      : report_(detail::set_requires_grad_by_name(
            "FreezeByName", table, patterns.patterns(),
            mode == FreezeMode::matching ? detail::FreezeAction::freeze : detail::FreezeAction::freeze_all_except,
            options, &model, &norm_changes_)) {
    // set_requires_grad_by_name validated before changing anything; the report has every flag as found.
    saved_.reserve(table.size());
    for (std::size_t i = 0; i < table.size(); ++i) {
      saved_.emplace_back(table[i].tensor, report_.parameters[i].requires_grad_before);
    }
  }

  std::vector<detail::NormChange> norm_changes_;  // declared before report_: filled while it is made
  FreezeReport report_;
  std::vector<std::pair<at::Tensor, bool>> saved_;
};

/// Every parameter's name and `requires_grad`, changing nothing. Its `to_string()` (and
/// `operator<<`) is the tip's listing: Python
/// ``for name, value in net.named_parameters(): print('name: {0},\t grad: {1}'.format(name, value.requires_grad))``.
///
///     std::cout << torchkit::requires_grad_report(net);
///     // name: cnn.VGG_16.convolution1_1.weight,	 grad: True
///     // ...
template <ModuleLike M>
[[nodiscard]] FreezeReport requires_grad_report(const M& model) {
  const auto table = detail::parameter_table(model, "requires_grad_report");
  FreezeReport report = detail::flags_of(table);
  report.frozen_batchnorm = detail::frozen_norm_names(detail::norm_layers(module_of(model), table));
  return report;
}

/// Sets `model` to training mode (`on`) or eval mode, except the normalisation layers whose
/// statistics were frozen (FreezeOptions::freeze_norm_stats), which stay in eval mode:
/// `model->train(on)` for fine-tuning. Python has no single call for it; its recipe is
/// `model.train()` followed by `m.eval()` for every frozen BatchNorm. Call it wherever Python
/// code calls `model.train()`: LibTorch's `model->train()` puts the frozen layers back in
/// training mode (and their running statistics then drift).
///
/// @throws Error for an empty module holder or a null pointer (nothing changes then).
///
///     torchkit::freeze(model, {"backbone"}, {.freeze_norm_stats = true});
///     torchkit::train(model);           // the backbone's BatchNorm layers stay in eval mode
///     ... training steps ...
///     torchkit::train(model, false);    // everything in eval mode, as model->eval()
template <ModuleLike M>
void train(M& model, bool on = true) {
  torch::nn::Module& module = module_of(model, "train");
  module.train(on);
  if (!on) {
    return;
  }
  auto& registry = detail::FrozenNormRegistry::instance();
  if (registry.contains(module)) {
    module.eval();
  }
  for (const auto& child : module.modules(/*include_self=*/false)) {
    if (registry.contains(*child)) {
      child->eval();
    }
  }
}

/// RAII torchkit::train: on construction sets training mode (`on`) everywhere except the
/// normalisation layers with frozen statistics; on destruction gives every module of the model
/// its training flag as found (also when an exception unwinds). Non-copyable, non-movable.
///
/// Construction throws Error for an empty module holder or a null pointer.
///
///     {
///       torchkit::TrainScope training(model);
///       for (const auto& batch : loader) { ... }
///     }  // back in the mode it was in (e.g. eval)
class TrainScope {
 public:
  /// Records every module's training flag, then calls torchkit::train(model, on).
  template <ModuleLike M>
  explicit TrainScope(M& model, bool on = true) {
    torch::nn::Module& module = module_of(model, "TrainScope");
    saved_.emplace_back(&module, module.is_training());
    for (const auto& child : module.modules(/*include_self=*/false)) {
      saved_.emplace_back(child.get(), child->is_training());
    }
    torchkit::train(module, on);
  }
  TrainScope(const TrainScope&) = delete;
  TrainScope& operator=(const TrainScope&) = delete;
  TrainScope(TrainScope&&) = delete;
  TrainScope& operator=(TrainScope&&) = delete;

  /// Restores every module's training flag (each module alone: `train()` would recurse).
  ~TrainScope() {
    for (auto& [module, training] : saved_) {
      try {
        if (module->is_training() != training) {
          set_own_flag(*module, training);
        }
      } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
      }
    }
  }

 private:
  // Module::train(on) sets the module's flag and its children's; restoring a parent before its
  // children (saved_ is in pre-order) lets each child then get its own flag back.
  static void set_own_flag(torch::nn::Module& module, bool training) { module.train(training); }

  std::vector<std::pair<torch::nn::Module*, bool>> saved_;  // the model outlives the scope
};

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
