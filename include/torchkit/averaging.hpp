#pragma once
/// @file averaging.hpp
/// Tips 6 and 7 for fine-tuning: weight averaging. AveragedModel (stochastic weight averaging
/// and exponential moving averages of a model's parameters, PyTorch's
/// `torch.optim.swa_utils.AveragedModel`), ModelEma (timm's EMA with warm-up),
/// AveragedWeightsScope (evaluate with the averaged weights in the live model, then swap back
/// exactly) and update_bn (recompute BatchNorm statistics, `swa_utils.update_bn`).
///
/// Python:
///
///     swa = torch.optim.swa_utils.AveragedModel(model)
///     for epoch in range(epochs):
///         train_one_epoch(model)
///         swa.update_parameters(model)
///     torch.optim.swa_utils.update_bn(loader, swa)
///     evaluate(swa)
///
/// C++ (LibTorch cannot copy an arbitrary module, so the averages live beside the model and are
/// swapped into it for evaluation):
///
///     torchkit::AveragedModel swa(model);
///     for (int epoch = 0; epoch < epochs; ++epoch) {
///       train_one_epoch(model);
///       swa.update_parameters(model);
///     }
///     {
///       torchkit::AveragedWeightsScope averaged(model, swa);   // averaged weights in `model`
///       torchkit::update_bn(batches, model);
///       evaluate(model);
///     }                                                       // the trained weights are back

#include <torchkit/concepts.hpp>
#include <torchkit/detail/shape.hpp>
#include <torchkit/error.hpp>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

namespace torchkit {

/// How AveragedModel averages.
///
///     torchkit::AveragedModel swa(model);                           // SWA: the equal-weight mean
///     torchkit::AveragedModel ema(model, {.ema_decay = 0.999});     // EMA
struct AveragingOptions {
  /// None: stochastic weight averaging, the mean of every update (PyTorch's default `avg_fn`,
  /// `avg + (p - avg) / (n + 1)`). A value in [0, 1]: an exponential moving average,
  /// `decay * avg + (1 - decay) * p` (PyTorch 2.x `get_ema_avg_fn(decay)`).
  std::optional<double> ema_decay = std::nullopt;
  /// Average the buffers too (BatchNorm's running statistics), as PyTorch's `use_buffers=True`.
  /// Otherwise each update copies the model's buffers (PyTorch 2.x; 1.13 kept the buffers of the
  /// model as it was when the AveragedModel was made).
  bool use_buffers = false;
};

namespace detail::averaging {

/// Every buffer of a model with its name, each tensor once, in registration order.
[[nodiscard]] inline std::vector<NamedParameter> named_buffers_of(const torch::nn::Module& module) {
  std::vector<NamedParameter> result;
  std::unordered_set<const void*> seen;
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    if (item.value().defined() && seen.insert(item.value().unsafeGetTensorImpl()).second) {
      result.push_back(NamedParameter{item.key(), item.value()});
    }
  }
  return result;
}

/// Throws unless `live` has the names, shapes and dtypes of `kept` ("parameter"/"buffer" in
/// `kind`), naming the first difference. `owner` starts the message.
inline void check_same_structure(std::string_view owner, std::string_view kind,
                                 const std::vector<NamedParameter>& kept, const std::vector<NamedParameter>& live) {
  const std::size_t common = std::min(kept.size(), live.size());
  for (std::size_t i = 0; i < common; ++i) {
    TORCHKIT_CHECK(kept[i].name == live[i].name,
                   "{}: the model's {} {} is '{}' but the averaged model's is '{}'; the model must have the structure "
                   "the AveragedModel was made from",
                   owner, kind, i, live[i].name, kept[i].name);
    TORCHKIT_CHECK(kept[i].tensor.sizes() == live[i].tensor.sizes(),
                   "{}: {} '{}' has shape {} in the model but {} in the averaged model", owner, kind, live[i].name,
                   shape_string(live[i].tensor.sizes()), shape_string(kept[i].tensor.sizes()));
    TORCHKIT_CHECK(kept[i].tensor.scalar_type() == live[i].tensor.scalar_type(),
                   "{}: {} '{}' has dtype {} in the model but {} in the averaged model", owner, kind, live[i].name,
                   c10::toString(live[i].tensor.scalar_type()), c10::toString(kept[i].tensor.scalar_type()));
  }
  TORCHKIT_CHECK(kept.size() == live.size(),
                 "{}: the model has {} {}s but the averaged model has {}{}{}", owner, live.size(), kind, kept.size(),
                 live.size() > common ? fmt::format("; first extra: '{}'", live[common].name) : std::string(),
                 kept.size() > common ? fmt::format("; first missing: '{}'", kept[common].name) : std::string());
}

/// Copies of `named` (detached, own memory).
[[nodiscard]] inline std::vector<NamedParameter> copies_of(const std::vector<NamedParameter>& named) {
  std::vector<NamedParameter> result;
  result.reserve(named.size());
  for (const auto& item : named) result.push_back(NamedParameter{item.name, item.tensor.detach().clone()});
  return result;
}

inline void check_decay(std::string_view owner, std::string_view name, double decay) {
  TORCHKIT_CHECK(std::isfinite(decay) && decay >= 0.0 && decay <= 1.0, "{}: {} must be in [0, 1], got {}", owner,
                 name, decay);
}

}  // namespace detail::averaging

/// A running average of a model's parameters (and buffers): stochastic weight averaging or an
/// exponential moving average. PyTorch: `torch.optim.swa_utils.AveragedModel`.
///
/// The averages are tensors beside the model (LibTorch cannot deep-copy an arbitrary module);
/// AveragedWeightsScope puts them into the model for evaluation. Parameters are matched by
/// name, each tied tensor once, as Python's `model.parameters()`. Every update checks that the
/// model still has the names, shapes and dtypes it was made from.
///
/// @throws torchkit::Error for an empty/null model, an `ema_decay` outside [0, 1] or not
///         finite, and (update_parameters, AveragedWeightsScope) a model of another structure,
///         naming the first parameter or buffer that differs; nothing changes when it throws.
///
///     torchkit::AveragedModel ema(model, {.ema_decay = 0.999, .use_buffers = true});
///     // after each optimizer step:
///     ema.update_parameters(model);
class AveragedModel {
 public:
  /// Starts from copies of `model`'s parameters and buffers (not yet averaged: the first
  /// update_parameters copies the model, as in Python).
  template <ModuleLike M>
  explicit AveragedModel(const M& model, AveragingOptions options = {}) : options_(options) {
    if (options_.ema_decay) detail::averaging::check_decay("AveragedModel", "ema_decay", *options_.ema_decay);
    const torch::nn::Module& module = module_of(model, "AveragedModel");
    const at::NoGradGuard no_grad;
    parameters_ = detail::averaging::copies_of(named_parameters_of(module));
    buffers_ = detail::averaging::copies_of(detail::averaging::named_buffers_of(module));
  }

  /// Folds the model's current parameters (and buffers with `use_buffers`) into the average;
  /// the first call copies them. PyTorch: `AveragedModel.update_parameters(model)`.
  template <ModuleLike M>
  void update_parameters(const M& model) {
    update(module_of(model, "AveragedModel::update_parameters"), "AveragedModel::update_parameters",
           options_.ema_decay);
  }

  /// How many times update_parameters ran (PyTorch's `n_averaged`).
  [[nodiscard]] std::int64_t n_averaged() const noexcept { return n_averaged_; }
  /// The options the average was made with.
  [[nodiscard]] const AveragingOptions& options() const noexcept { return options_; }
  /// The averaged parameters, by name, in the model's order (the tensors themselves: changing
  /// them changes the average).
  [[nodiscard]] const std::vector<NamedParameter>& named_parameters() const noexcept { return parameters_; }
  /// The buffers kept beside the parameters: averaged with `use_buffers`, else the model's as of
  /// the last update.
  [[nodiscard]] const std::vector<NamedParameter>& named_buffers() const noexcept { return buffers_; }

  /// Writes the averages and n_averaged under the key "averaged_model" (one archive can hold
  /// the model, the optimizer, the schedulers and this).
  void save(torch::serialize::OutputArchive& archive) const {
    torch::serialize::OutputArchive state;
    state.write("n_averaged", at::scalar_tensor(n_averaged_, at::kLong));
    write_list(state, "parameter", parameters_);
    write_list(state, "buffer", buffers_);
    archive.write("averaged_model", state);
  }

  /// Restores what save() wrote. Validates the names, shapes and dtypes against this average
  /// first; nothing changes when it throws.
  /// @throws torchkit::Error for a missing key, another structure, or a negative n_averaged.
  void load(torch::serialize::InputArchive& archive) {
    constexpr std::string_view owner = "AveragedModel::load";
    torch::serialize::InputArchive state;
    TORCHKIT_CHECK(archive.try_read("averaged_model", state),
                   "{}: the archive has no 'averaged_model' entry (write it with AveragedModel::save)", owner);
    at::Tensor count;
    TORCHKIT_CHECK(state.try_read("n_averaged", count) && count.defined() && count.numel() == 1 &&
                       count.scalar_type() == at::kLong,
                   "{}: 'averaged_model' has no integer n_averaged", owner);
    const auto n = count.item<std::int64_t>();
    TORCHKIT_CHECK(n >= 0, "{}: n_averaged must be >= 0, got {}", owner, n);
    auto parameters = read_list(state, "parameter", parameters_, owner);
    auto buffers = read_list(state, "buffer", buffers_, owner);
    const at::NoGradGuard no_grad;
    for (std::size_t i = 0; i < parameters.size(); ++i) parameters_[i].tensor.copy_(parameters[i].tensor);
    for (std::size_t i = 0; i < buffers.size(); ++i) buffers_[i].tensor.copy_(buffers[i].tensor);
    n_averaged_ = n;
  }

  /// `AveragedModel(swa, n_averaged=3, parameters=8, buffers=3, use_buffers=false)`, or
  /// `ema_decay=0.999` in place of `swa` (`ModelEma(...)` for a ModelEma).
  [[nodiscard]] std::string to_string() const {
    return fmt::format("{}({}, n_averaged={}, parameters={}, buffers={}, use_buffers={})", type_name_,
                       options_.ema_decay ? fmt::format("ema_decay={}", *options_.ema_decay) : std::string("swa"),
                       n_averaged_, parameters_.size(), buffers_.size(), options_.use_buffers);
  }
  /// Writes to_string().
  friend std::ostream& operator<<(std::ostream& out, const AveragedModel& averaged) {
    return out << averaged.to_string();
  }

 protected:
  /// The class name to_string() prints.
  std::string type_name_ = "AveragedModel";

  /// One update with `ema_decay` (none: the SWA mean), after checking the structure.
  void update(const torch::nn::Module& module, std::string_view owner, std::optional<double> ema_decay) {
    const auto live_parameters = named_parameters_of(module);
    const auto live_buffers = detail::averaging::named_buffers_of(module);
    detail::averaging::check_same_structure(owner, "parameter", parameters_, live_parameters);
    detail::averaging::check_same_structure(owner, "buffer", buffers_, live_buffers);
    const at::NoGradGuard no_grad;
    const auto average = [&](at::Tensor& kept, const at::Tensor& live) {
      const at::Tensor current = live.detach().to(kept.device());
      if (n_averaged_ == 0) {
        kept.copy_(current);
      } else if (ema_decay) {
        kept.copy_(*ema_decay * kept + (1.0 - *ema_decay) * current);
      } else {
        // Python's default avg_fn, with n_averaged as a 0-dim integer tensor as Python has it.
        const at::Tensor n = at::scalar_tensor(n_averaged_, at::TensorOptions(at::kLong).device(kept.device()));
        kept.copy_(kept + (current - kept) / (n + 1));
      }
    };
    for (std::size_t i = 0; i < parameters_.size(); ++i) average(parameters_[i].tensor, live_parameters[i].tensor);
    for (std::size_t i = 0; i < buffers_.size(); ++i) {
      if (options_.use_buffers) {
        average(buffers_[i].tensor, live_buffers[i].tensor);
      } else {
        buffers_[i].tensor.copy_(live_buffers[i].tensor.detach());
      }
    }
    ++n_averaged_;
  }

 private:
  static void write_list(torch::serialize::OutputArchive& state, const std::string& kind,
                         const std::vector<NamedParameter>& named) {
    c10::List<std::string> names;
    for (const auto& item : named) names.push_back(item.name);
    state.write(kind + "_names", c10::IValue(names));
    torch::serialize::OutputArchive tensors;
    for (std::size_t i = 0; i < named.size(); ++i) tensors.write(std::to_string(i), named[i].tensor);
    state.write(kind + "_values", tensors);
  }

  /// The tensors of `kind` in `state`, checked against `kept` (names, shapes, dtypes).
  static std::vector<NamedParameter> read_list(torch::serialize::InputArchive& state, const std::string& kind,
                                               const std::vector<NamedParameter>& kept, std::string_view owner) {
    c10::IValue names;
    TORCHKIT_CHECK(state.try_read(kind + "_names", names) && names.isList(), "{}: the archive has no {} names",
                   owner, kind);
    torch::serialize::InputArchive tensors;
    TORCHKIT_CHECK(state.try_read(kind + "_values", tensors), "{}: the archive has no {} values", owner, kind);
    std::vector<NamedParameter> read;
    for (const auto& name : names.toListRef()) {
      TORCHKIT_CHECK(name.isString(), "{}: a {} name in the archive is not a string", owner, kind);
      at::Tensor value;
      TORCHKIT_CHECK(tensors.try_read(std::to_string(read.size()), value) && value.defined(),
                     "{}: the archive has no value for {} '{}'", owner, kind, name.toStringRef());
      read.push_back(NamedParameter{name.toStringRef(), value});
    }
    detail::averaging::check_same_structure(owner, kind, kept, read);
    return read;
  }

  AveragingOptions options_;
  std::vector<NamedParameter> parameters_;
  std::vector<NamedParameter> buffers_;
  std::int64_t n_averaged_ = 0;
};

/// How ModelEma decays. The warm-up follows timm's `ModelEmaV3.get_decay`: with `warmup`, the
/// decay at update t (counted from 1) is `1 - (1 + t / warmup_gamma)^-warmup_power`, clamped to
/// [min_decay, decay]; without it, `decay` from the second update on (the first copies).
struct ModelEmaOptions {
  double decay = 0.9999;       ///< the decay once warmed up, in [0, 1]
  bool warmup = false;         ///< ramp the decay up over the first updates
  double warmup_gamma = 1.0;   ///< timm's `warmup_gamma` (> 0)
  double warmup_power = 2.0 / 3.0;  ///< timm's `warmup_power` (> 0)
  double min_decay = 0.0;      ///< the smallest decay the warm-up uses, in [0, decay]
  bool use_buffers = true;     ///< average the buffers too (timm averages the whole state dict)
};

/// An exponential moving average of a model's weights with timm's warm-up: AveragedModel with
/// a decay that may grow with the number of updates. Evaluate it with AveragedWeightsScope.
///
/// @throws torchkit::Error for a decay or min_decay outside [0, 1] (or min_decay > decay), a
///         warmup_gamma or warmup_power <= 0, and (update) a model of another structure.
///
///     torchkit::ModelEma ema(model, {.decay = 0.999, .warmup = true});
///     ema.update(model);                    // after every optimizer step
///     double d = ema.decay_at(ema.n_averaged());
class ModelEma : public AveragedModel {
 public:
  /// Starts from copies of `model`'s parameters and buffers.
  template <ModuleLike M>
  explicit ModelEma(const M& model, ModelEmaOptions options = {})
      : AveragedModel(model, AveragingOptions{.ema_decay = checked(options).decay, .use_buffers = options.use_buffers}),
        ema_options_(options) {
    type_name_ = "ModelEma";
  }

  /// Folds the model's weights in with the decay of this update (decay_at(n_averaged() + 1)).
  template <ModuleLike M>
  void update(const M& model) {
    AveragedModel::update(module_of(model, "ModelEma::update"), "ModelEma::update", decay_at(n_averaged() + 1));
  }

  /// The decay update number `t` (1 for the first) uses; the first update copies the model
  /// whatever its decay.
  [[nodiscard]] double decay_at(std::int64_t t) const {
    if (!ema_options_.warmup) return ema_options_.decay;
    const double step = static_cast<double>(std::max<std::int64_t>(0, t - 1));
    if (step <= 0) return 0.0;
    const double warm = 1.0 - std::pow(1.0 + step / ema_options_.warmup_gamma, -ema_options_.warmup_power);
    return std::max(std::min(warm, ema_options_.decay), ema_options_.min_decay);
  }

  /// The options the EMA was made with.
  [[nodiscard]] const ModelEmaOptions& ema_options() const noexcept { return ema_options_; }

 private:
  static const ModelEmaOptions& checked(const ModelEmaOptions& options) {
    detail::averaging::check_decay("ModelEma", "decay", options.decay);
    detail::averaging::check_decay("ModelEma", "min_decay", options.min_decay);
    TORCHKIT_CHECK(options.min_decay <= options.decay, "ModelEma: min_decay ({}) must be <= decay ({})",
                   options.min_decay, options.decay);
    TORCHKIT_CHECK(std::isfinite(options.warmup_gamma) && options.warmup_gamma > 0,
                   "ModelEma: warmup_gamma must be a finite number > 0, got {}", options.warmup_gamma);
    TORCHKIT_CHECK(std::isfinite(options.warmup_power) && options.warmup_power > 0,
                   "ModelEma: warmup_power must be a finite number > 0, got {}", options.warmup_power);
    return options;
  }

  ModelEmaOptions ema_options_;
};

/// RAII: puts an AveragedModel's parameters and buffers into the live model, and the model's
/// own values back when the scope ends, bit for bit, also while unwinding. Evaluating inside
/// the scope evaluates the averaged model (Python evaluates the AveragedModel's own copy).
/// Changes made to the model inside the scope (update_bn's statistics, an optimizer step) are
/// discarded at the end.
///
/// @throws torchkit::Error when the model's structure (names, shapes, dtypes) differs from the
///         average's; nothing changes then.
///
///     {
///       torchkit::AveragedWeightsScope averaged(model, ema);
///       accuracy_ema = evaluate(model);
///     }
class AveragedWeightsScope {
 public:
  /// Saves the model's values and copies the averages in.
  template <ModuleLike M>
    requires(!std::is_const_v<std::remove_reference_t<M>>)
  AveragedWeightsScope(M& model, const AveragedModel& averaged) {
    constexpr std::string_view owner = "AveragedWeightsScope";
    torch::nn::Module& module = module_of(model, owner);
    live_ = named_parameters_of(module);
    auto buffers = detail::averaging::named_buffers_of(module);
    detail::averaging::check_same_structure(owner, "parameter", averaged.named_parameters(), live_);
    detail::averaging::check_same_structure(owner, "buffer", averaged.named_buffers(), buffers);
    live_.insert(live_.end(), buffers.begin(), buffers.end());
    const at::NoGradGuard no_grad;
    saved_.reserve(live_.size());
    for (const auto& item : live_) saved_.push_back(item.tensor.detach().clone());
    std::size_t i = 0;
    for (const auto& item : averaged.named_parameters()) live_[i++].tensor.detach().copy_(item.tensor);
    for (const auto& item : averaged.named_buffers()) live_[i++].tensor.detach().copy_(item.tensor);
  }

  ~AveragedWeightsScope() {
    const at::NoGradGuard no_grad;
    for (std::size_t i = 0; i < live_.size(); ++i) live_[i].tensor.detach().copy_(saved_[i]);
  }

  AveragedWeightsScope(const AveragedWeightsScope&) = delete;
  AveragedWeightsScope& operator=(const AveragedWeightsScope&) = delete;
  AveragedWeightsScope(AveragedWeightsScope&&) = delete;
  AveragedWeightsScope& operator=(AveragedWeightsScope&&) = delete;

 private:
  std::vector<NamedParameter> live_;  // the model's parameters, then its buffers
  std::vector<at::Tensor> saved_;
};

namespace detail::averaging {

/// The input tensor of one element of update_bn's range: a tensor, the first element of a pair
/// or tuple, or the `data` of a torch::data::Example.
template <class Batch>
[[nodiscard]] const at::Tensor& input_of(const Batch& batch) {
  using B = std::remove_cvref_t<Batch>;
  if constexpr (std::is_convertible_v<const B&, const at::Tensor&>) {
    return batch;
  } else if constexpr (requires { batch.data; }) {
    return batch.data;
  } else {
    return std::get<0>(batch);
  }
}

}  // namespace detail::averaging

/// Recomputes the running statistics of every BatchNorm layer of `model` with one pass over
/// `batches`: the statistics are reset, momentum is set to none (a cumulative average over the
/// batches), and the model runs forward on each batch in training mode under no-grad. Then
/// every layer's momentum and every module's training flag are restored. PyTorch:
/// `torch.optim.swa_utils.update_bn(loader, model)` (which restores the root's flag on every
/// module; this restores each module's own).
///
/// `batches`: any range of input tensors, pairs/tuples whose first element is the input, or
/// torch::data::Example (its `data`). A model without BatchNorm is left as it is.
///
/// @throws torchkit::Error for an empty/null model; errors of the model's forward propagate
///         (momenta and training flags are restored; the statistics are then partly updated).
///
///     {
///       torchkit::AveragedWeightsScope averaged(model, swa);
///       torchkit::update_bn(train_images, model);
///       evaluate(model);
///     }
template <std::ranges::input_range R, ModuleLike M>
void update_bn(R&& batches, M& model) {
  torch::nn::Module& root = module_of(model, "update_bn");
  struct Layer {
    at::Tensor mean, var, count;
    c10::optional<double>* momentum;
    c10::optional<double> saved;
  };
  std::vector<Layer> layers;
  std::vector<std::pair<torch::nn::Module*, bool>> flags;
  const auto visit = [&](torch::nn::Module& module) {
    flags.emplace_back(&module, module.is_training());
    const auto add = [&](auto* layer) {
      if (layer == nullptr || !layer->options.track_running_stats()) return;
      layers.push_back(Layer{layer->running_mean, layer->running_var, layer->num_batches_tracked,
                             &layer->options.momentum(), layer->options.momentum()});
    };
    add(dynamic_cast<torch::nn::BatchNorm1dImpl*>(&module));
    add(dynamic_cast<torch::nn::BatchNorm2dImpl*>(&module));
    add(dynamic_cast<torch::nn::BatchNorm3dImpl*>(&module));
  };
  visit(root);
  for (const auto& child : root.modules(/*include_self=*/false)) visit(*child);
  if (layers.empty()) return;
  struct Restore {
    std::vector<Layer>& layers;
    std::vector<std::pair<torch::nn::Module*, bool>>& flags;
    ~Restore() {
      for (auto& layer : layers) *layer.momentum = layer.saved;
      for (auto& [module, training] : flags) module->train(training);
    }
  } restore{layers, flags};
  const at::NoGradGuard no_grad;
  for (auto& layer : layers) {
    layer.mean.zero_();
    layer.var.fill_(1);
    if (layer.count.defined()) layer.count.zero_();
    *layer.momentum = c10::nullopt;
  }
  for (auto& [module, training] : flags) module->train(true);
  for (auto&& batch : batches) {
    const at::Tensor& input = detail::averaging::input_of(batch);
    if constexpr (detail::is_module_v<std::remove_cvref_t<M>>) {
      (void)model.forward(input);
    } else {
      (void)model->forward(input);
    }
  }
}

namespace detail {
/// AveragedModel and ModelEma format with `{fmt}` as their to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<AveragedModel> = true;
template <>
inline constexpr bool formats_with_to_string<ModelEma> = true;
}  // namespace detail

}  // namespace torchkit
