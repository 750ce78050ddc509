#pragma once
/// @file amp.hpp
/// Mixed precision (tips 3 and 6): AutocastScope (PyTorch's `torch.autocast`), GradScaler
/// (`torch.amp.GradScaler`) and gradient clipping that knows about the scale.
///
///     torchkit::GradScaler scaler;
///     for (...) {
///       optimizer.zero_grad();
///       at::Tensor loss;
///       {
///         torchkit::AutocastScope autocast(at::kCPU);  // bfloat16 matmuls and convolutions
///         loss = criterion(model->forward(x), y);
///       }
///       scaler.scale(loss).backward();
///       torchkit::clip_grad_norm_(optimizer, 1.0, 2.0, scaler);  // unscale + clip, one pass each
///       scaler.step(optimizer);                                   // skipped on inf/nan gradients
///       scaler.update();
///     }

#include <torchkit/clip.hpp>
#include <torchkit/detail/autocast.hpp>
#include <torchkit/detail/clip_kernels.hpp>
#include <torchkit/detail/config.hpp>
#include <torchkit/error.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/DeviceType.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/ScalarType.h>
#include <fmt/format.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <ostream>
#include <ranges>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace torchkit {

/// Automatic mixed precision for the current thread until the scope ends (RAII), as
/// `with torch.autocast(device_type, dtype, enabled, cache_enabled):` in Python. Inside it,
/// LibTorch runs matmul-like ops (mm, matmul, linear, conv, bmm, addmm, baddbmm) in `dtype` and
/// precision-sensitive ones (losses such as mse_loss, binary_cross_entropy) in float32; others
/// keep their inputs' dtype (a sum of float32 values stays float32).
///
/// The destructor restores exactly what the constructor found: the enabled flag and dtype of
/// `device`, the cache flag, and the nesting depth (the cast cache is cleared when the
/// outermost scope ends, as Python does). Scopes nest; non-copyable, non-movable.
///
/// @param device   `at::kCPU` or `at::kCUDA`
/// @param dtype    the lower precision: bfloat16 by default on the CPU, float16 on CUDA.
///                 CPU: bfloat16 (float16 too from LibTorch 2.4); CUDA: float16 or bfloat16.
/// @param enabled  `false` switches autocast off inside the scope (e.g. for a float32 loss
///                 inside an autocast region)
/// @param cache_enabled  keep the casts of leaf tensors (weights) for the scope's duration
/// @throws torchkit::Error for a device other than CPU or CUDA, or a dtype the device's
///         autocast does not support (e.g. float32, or float16 on the CPU before LibTorch 2.4).
///         On a LibTorch without CUDA, a CUDA scope is a disabled scope (Python warns and
///         disables).
///
///     {
///       torchkit::AutocastScope autocast(at::kCPU);          // bfloat16
///       auto out = model->forward(x);                        // linear/conv in bfloat16
///       torchkit::AutocastScope off(at::kCPU, {}, false);    // a float32 island
///     }
class AutocastScope {
 public:
  /// Switches autocast on (or off, `enabled = false`) for `device` in `dtype` until the scope
  /// ends; see the class comment for the arguments and what it throws.
  explicit AutocastScope(c10::DeviceType device, std::optional<at::ScalarType> dtype = {}, bool enabled = true,
                         bool cache_enabled = true)
      : device_(device) {
    TORCHKIT_CHECK(device == c10::DeviceType::CPU || device == c10::DeviceType::CUDA,
                   "AutocastScope: device type {} has no autocast here; expected cpu or cuda",
                   c10::DeviceTypeName(device, /*lower_case=*/true));
    dtype_ = dtype.value_or(device == c10::DeviceType::CPU ? at::kBFloat16 : at::kHalf);
    TORCHKIT_CHECK(detail::autocast::supports(device, dtype_),
                   "AutocastScope: dtype {} is not supported by autocast on {}; expected {}", c10::toString(dtype_),
                   c10::DeviceTypeName(device, true),
                   device == c10::DeviceType::CPU
                       ? (detail::autocast::supports(device, at::kHalf) ? "BFloat16 or Half" : "BFloat16")
                       : "Half or BFloat16");
    enabled_ = enabled && (device != c10::DeviceType::CUDA || at::hasCUDA());
    previous_enabled_ = detail::autocast::is_enabled(device);
    previous_dtype_ = detail::autocast::dtype(device);
    previous_cache_ = detail::autocast::is_cache_enabled();
    detail::autocast::set_enabled(device, enabled_);
    detail::autocast::set_dtype(device, dtype_);
    detail::autocast::increment_nesting();
    detail::autocast::set_cache_enabled(cache_enabled);
  }
  ~AutocastScope() {
    if (detail::autocast::decrement_nesting() == 0) detail::autocast::clear_cache();
    detail::autocast::set_enabled(device_, previous_enabled_);
    detail::autocast::set_dtype(device_, previous_dtype_);
    detail::autocast::set_cache_enabled(previous_cache_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;
  AutocastScope(AutocastScope&&) = delete;
  AutocastScope& operator=(AutocastScope&&) = delete;

  /// The device type whose autocast the scope controls.
  [[nodiscard]] c10::DeviceType device() const noexcept { return device_; }
  /// The lower-precision dtype autocast casts to inside the scope.
  [[nodiscard]] at::ScalarType dtype() const noexcept { return dtype_; }
  /// Whether autocast is on inside the scope.
  [[nodiscard]] bool enabled() const noexcept { return enabled_; }

 private:
  c10::DeviceType device_;
  at::ScalarType dtype_ = at::kBFloat16;
  bool enabled_ = true;
  bool previous_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kBFloat16;
  bool previous_cache_ = true;
};

/// GradScaler's settings, with Python's names and defaults.
struct GradScalerOptions {
  double init_scale = 65536.0;  ///< the first scale (2^16), finite and > 0
  double growth_factor = 2.0;   ///< scale *= growth_factor after growth_interval clean steps; > 1
  double backoff_factor = 0.5;  ///< scale *= backoff_factor after a step with inf/nan; in (0, 1)
  std::int64_t growth_interval = 2000;  ///< clean steps between growths; > 0
  bool enabled = true;                  ///< false: every call is a pass-through (step just steps)
};

class GradScaler;

namespace detail::amp {

/// GradScaler's private state, for the scaler-aware clip_grad_norm_.
struct ScalerAccess;

/// The inverse scale as PyTorch computes it: `scale.double().reciprocal().float()`.
[[nodiscard]] inline float inverse_scale(float scale) noexcept {
  return static_cast<float>(1.0 / static_cast<double>(scale));
}

/// Every parameter of every group of `optimizer`, in order, as a view (no tensor handle copied).
[[nodiscard]] inline auto parameters_of(const torch::optim::Optimizer& optimizer) {
  return optimizer.param_groups() |
         std::views::transform([](const torch::optim::OptimizerParamGroup& group) -> const std::vector<at::Tensor>& {
           return group.params();
         }) |
         std::views::join;
}

/// Checks what clip::collect does not say in GradScaler's words: dense floating gradients.
inline void check_scalable(const torch::optim::Optimizer& optimizer, std::string_view function) {
  std::size_t k = 0;
  for (const at::Tensor& parameter : parameters_of(optimizer)) {
    const std::size_t index = k++;
    if (!parameter.defined()) continue;
    const at::Tensor& grad = clip::gradient_of(parameter);
    if (!grad.defined()) continue;
    TORCHKIT_CHECK(grad.layout() == at::kStrided,
                   "{}: the gradient of parameter {} of the optimizer is sparse (layout {}); GradScaler unscales "
                   "dense (strided) gradients only",
                   function, index, c10::str(grad.layout()));
    TORCHKIT_CHECK(clip::is_supported_dtype(grad.scalar_type()),
                   "{}: the gradient of parameter {} of the optimizer has dtype {}; expected float, double, float16 "
                   "or bfloat16",
                   function, index, c10::toString(grad.scalar_type()));
  }
}

/// clip::collect over the optimizer's parameters; when it refuses a gradient, check_scalable
/// says so in GradScaler's words where they apply (sparse or integer gradients).
[[nodiscard]] inline clip::Collected collect_scalable(const torch::optim::Optimizer& optimizer,
                                                      std::string_view function) {
  try {
    return clip::collect(parameters_of(optimizer), function, /*mutating=*/true);
  } catch (const Error&) {
    check_scalable(optimizer, function);
    throw;
  }
}

/// The CPU gradients of a Collected set as runs over raw memory (clip's CpuRuns, as the clip's
/// FastPass has them), and the others grouped by (device, dtype) for ATen's `_amp_` kernels.
class ScaledPass {
 public:
  explicit ScaledPass(const clip::Collected& collected)
      : collected_(collected), cpu_(collected, /*cpu_through_foreach=*/false, [this](std::size_t k) {
          add_to_device_group(k);
        }) {}

  ScaledPass(const ScaledPass&) = delete;
  ScaledPass& operator=(const ScaledPass&) = delete;

  [[nodiscard]] bool all_on_cpu() const noexcept { return device_groups_.empty(); }
  /// Whether some gradient lives on the CPU (and so needs the inverse scale on the host).
  [[nodiscard]] bool has_cpu_gradients() const noexcept { return cpu_.any(); }

  /// Unscales every gradient in place (one pass): CPU gradients by `inv`, the others by
  /// `inv_tensor` (the same value, a float tensor, moved to their device: no host sync);
  /// returns whether a CPU gradient held inf or nan, and appends one found-inf tensor per
  /// accelerator device to `device_found`.
  bool unscale(float inv, const at::Tensor& inv_tensor, std::vector<at::Tensor>& device_found) {
    const auto& runs = cpu_.runs();
    std::vector<unsigned char> nonfinite(runs.size(), 0);
    cpu_.for_each_share(/*writes=*/true, [&](std::int64_t begin, std::int64_t end) {
      clip::unscale_runs(runs.data() + begin, end - begin, inv, nonfinite.data() + begin);
    });
    cpu_.finish_writes();
    for (auto& group : device_groups_) {
      at::Tensor found;
      for (auto& existing : device_found) {
        if (existing.device() == group.device) found = existing;
      }
      if (!found.defined()) {
        found = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(group.device));
        device_found.push_back(found);
      }
      const at::Tensor inv_on_device = inv_tensor.to(group.device).reshape({1});
      at::_amp_foreach_non_finite_check_and_unscale_(group.grads, found, inv_on_device);
    }
    return std::any_of(nonfinite.begin(), nonfinite.end(), [](unsigned char seen) { return seen != 0; });
  }

  /// The total norm of order p of the gradients unscaled by `inv`, without writing them (CPU
  /// gradients only); `found` = whether any held inf or nan. As clip's FastPass: per-gradient
  /// norms in the gradient's dtype, the total in the promoted dtype.
  [[nodiscard]] double unscaled_norm(double p, float inv, bool& found, at::ScalarType& result_dtype) {
    const clip::NormKind kind = clip::norm_kind_of(p);
    const auto& runs = cpu_.runs();
    std::vector<double> partials(runs.size(), 0.0);
    std::vector<unsigned char> nonfinite(runs.size(), 0);  // a flag per share, at its first run
    cpu_.for_each_share(/*writes=*/false, [&](std::int64_t begin, std::int64_t end) {
      clip::unscale_reduce_runs(runs.data() + begin, end - begin, kind, p, inv, partials.data() + begin,
                                nonfinite.data() + begin);
    });
    found = std::any_of(nonfinite.begin(), nonfinite.end(), [](unsigned char seen) { return seen != 0; });
    const auto& gradients = collected_.gradients;
    result_dtype = collected_.promoted_dtype;
    std::vector<double> norms(gradients.size());
    const double total = clip::gradient_norms(kind, p, runs.data(), cpu_.run_begin().data(), gradients.size(),
                                              partials.data(), norms.data());
    return clip::finish_in(result_dtype, kind, total, p);
  }

  /// Unscales every CPU gradient by `inv` and multiplies it by `factor` in place (one pass).
  void unscale_and_scale(float inv, double factor) {
    if (inv == 1.0f && factor == 1.0) return;  // changes no value
    const auto& runs = cpu_.runs();
    cpu_.for_each_share_after_read([&](std::int64_t begin, std::int64_t end) {
      clip::unscale_scale_runs(runs.data() + begin, end - begin, inv, factor);
    });
    cpu_.finish_writes();
  }

 private:
  struct DeviceGroup {
    c10::Device device;
    at::ScalarType dtype;
    std::vector<at::Tensor> grads;
  };

  void add_to_device_group(std::size_t k) {
    const at::Tensor& grad = *collected_.gradients[k].grad;
    for (auto& group : device_groups_) {
      if (group.device == grad.device() && group.dtype == grad.scalar_type()) {
        group.grads.push_back(grad);
        return;
      }
    }
    device_groups_.push_back(DeviceGroup{grad.device(), grad.scalar_type(), {grad}});
  }

  const clip::Collected& collected_;
  std::vector<DeviceGroup> device_groups_;
  clip::CpuRuns cpu_;  // last: its constructor fills device_groups_
};

}  // namespace detail::amp

/// Dynamic loss scaling for float16/bfloat16 training, as Python's `torch.amp.GradScaler`:
/// same names, defaults and semantics. `scale(loss)` multiplies the loss by the scale;
/// `unscale_(optimizer)` divides the gradients by it (once per step) and notes whether any is
/// inf or nan; `step(optimizer)` steps only when none was; `update()` halves the scale after
/// a skipped step and doubles it after `growth_interval` clean ones.
///
/// On the CPU the scale lives in a float32 tensor that torchkit reads directly, and unscaling
/// is one fused pass (non-finite check + multiply) over the gradients' memory; on CUDA it runs
/// ATen's `_amp_foreach_non_finite_check_and_unscale_` / `_amp_update_scale_` and syncs only in
/// `step` (reading found-inf), `get_scale()` and `growth_tracker()`, where Python syncs.
///
/// Where it differs from Python (by design): float16 gradients are unscaled (Python's
/// unscale_ refuses them, for pure-float16 training); bad arguments throw torchkit::Error
/// instead of asserting; `update(new_scale)` refuses a new scale <= 0, non-finite, or beyond
/// what float32 holds. Not copyable (a copy would share the scale tensor); movable.
///
///     torchkit::GradScaler scaler;   // init_scale 65536, x2 every 2000 clean steps, x0.5 on inf
///     scaler.scale(loss).backward();
///     scaler.step(optimizer);        // false when skipped
///     scaler.update();
class GradScaler {
 public:
  /// @throws torchkit::Error for an init_scale that is not a finite float32 > 0 (<= 0, nan, inf,
  ///         above 3.4e38 or below 1.4e-45), growth_factor <= 1 or non-finite, backoff_factor
  ///         outside (0, 1), growth_interval <= 0 or above 2^31 - 1 (the tracker is int32).
  explicit GradScaler(GradScalerOptions options = {}) : options_(options) {
    check_options(options, "GradScaler");
    init_scale_ = options.init_scale;
  }

  /// Not copyable: a copy would share the scale and growth tracker tensors (updating one
  /// scaler would change the other) but not the per-optimizer step state. Movable.
  GradScaler(const GradScaler&) = delete;
  GradScaler& operator=(const GradScaler&) = delete;
  /// Takes over the scale, the tracker and the per-optimizer step state (the moved-from
  /// scaler is left without a scale: scale() makes a new one).
  GradScaler(GradScaler&&) noexcept = default;
  /// As the move constructor.
  GradScaler& operator=(GradScaler&&) noexcept = default;
  ~GradScaler() = default;

  /// `loss * scale` (PyTorch: `scaler.scale(loss)`), the scale made on the loss's device by the
  /// first call (an ordinary tensor, also inside c10::InferenceMode). Returns `loss` itself,
  /// unchecked, when disabled.
  /// @throws torchkit::Error (when enabled) for an undefined or non-floating-point loss.
  [[nodiscard]] at::Tensor scale(const at::Tensor& loss) {
    constexpr std::string_view function = "GradScaler::scale";
    if (!options_.enabled) return loss;  // (Python returns its argument untouched)
    TORCHKIT_CHECK(loss.defined(), "{}: the loss is an undefined tensor", function);
    TORCHKIT_CHECK(at::isFloatingType(loss.scalar_type()),
                   "{}: the loss has dtype {}; expected a floating-point tensor", function,
                   c10::toString(loss.scalar_type()));
    if (!scale_.defined()) {
      // Ordinary tensors even when the first call comes inside c10::InferenceMode: inference
      // tensors could never be updated in place or saved for backward afterwards.
      const c10::InferenceMode not_inference(/*enabled=*/false);
      const auto on = at::TensorOptions().device(loss.device());
      scale_ = at::full({}, init_scale_, on.dtype(at::kFloat));
      growth_tracker_ = at::full({}, init_growth_tracker_, on.dtype(at::kInt));
    }
    return loss * (scale_.device() == loss.device() ? scale_ : scale_.to(loss.device()));
  }

  /// Divides every gradient of `optimizer` by the scale in place and records whether any is
  /// inf or nan (PyTorch: `scaler.unscale_(optimizer)`), so that gradients can be inspected
  /// or clipped before `step`. At most once per optimizer between two `update()`s. No-op when
  /// disabled.
  /// @throws torchkit::Error when `scale()` was never called, when called twice for the same
  ///         optimizer since the last update(), or after step(); for a sparse or integer
  ///         gradient (nothing changes).
  void unscale_(torch::optim::Optimizer& optimizer) {
    constexpr std::string_view function = "GradScaler::unscale_";
    if (!options_.enabled) return;
    check_scaled(function);
    const State* existing = find(optimizer);
    TORCHKIT_CHECK(existing == nullptr || existing->stage != Stage::unscaled,
                   "{}: unscale_() has already been called on this optimizer since the last update()", function);
    TORCHKIT_CHECK(existing == nullptr || existing->stage != Stage::stepped,
                   "{}: unscale_() is being called after step() for this optimizer; call update() first", function);
    const auto collected = detail::amp::collect_scalable(optimizer, function);
    State& state = state_of(optimizer);
    unscale_collected(collected, state);
  }

  /// Steps `optimizer` unless its gradients held inf or nan (PyTorch: `scaler.step(optimizer)`);
  /// unscales first when unscale_() was not called this step. Returns whether it stepped.
  /// Reads found-inf on the host (one sync per accelerator device). When disabled: steps.
  /// @throws torchkit::Error when `scale()` was never called, when step() was already called
  ///         for this optimizer since the last update(), when no parameter has a gradient, or for
  ///         a bad gradient (as unscale_). Nothing changes then.
  bool step(torch::optim::Optimizer& optimizer) {
    constexpr std::string_view function = "GradScaler::step";
    if (!options_.enabled) {
      optimizer.step();
      return true;
    }
    check_scaled(function);
    const State* existing = find(optimizer);
    TORCHKIT_CHECK(existing == nullptr || existing->stage != Stage::stepped,
                   "{}: step() has already been called on this optimizer since the last update()", function);
    if (existing == nullptr || existing->stage == Stage::ready) {
      const auto collected = detail::amp::collect_scalable(optimizer, function);
      TORCHKIT_CHECK(!collected.gradients.empty(),
                     "{}: no parameter of the optimizer has a gradient, so no inf checks were recorded", function);
      unscale_collected(collected, state_of(optimizer));
    }
    State& state = state_of(optimizer);
    TORCHKIT_CHECK(state.recorded,
                   "{}: no inf checks were recorded for this optimizer (no parameter had a gradient when it was "
                   "unscaled)",
                   function);
    bool found = state.found_cpu;
    for (const auto& tensor : state.found_device) found = found || tensor.item<float>() != 0.0f;
    if (!found) optimizer.step();
    state.stage = Stage::stepped;
    return !found;
  }

  /// Updates the scale for the next step (PyTorch: `scaler.update(new_scale=None)`): x
  /// backoff_factor when any optimizer's gradients held inf/nan this step (growth tracker to
  /// 0); else the growth tracker counts up, and at growth_interval the scale grows by
  /// growth_factor (when the product is finite) and the tracker restarts. `new_scale` sets the
  /// scale instead. Starts a new step for every optimizer. No-op when disabled.
  /// @throws torchkit::Error when `scale()` was never called, for a new_scale that is not a
  ///         finite float32 > 0 (as init_scale; nothing changes then),
  ///         and (without new_scale) when no optimizer was unscaled or stepped since the last update.
  void update(std::optional<double> new_scale = {}) {
    constexpr std::string_view function = "GradScaler::update";
    if (!options_.enabled) return;
    check_scaled(function);
    if (new_scale) {
      check_scale(*new_scale, "new_scale", function);
      scale_.fill_(*new_scale);
      states_.clear();
      return;
    }
    bool any_recorded = false;
    bool found_cpu = false;
    std::vector<at::Tensor> found_device;
    for (const auto& [optimizer, state] : states_) {
      if (!state.recorded) continue;
      any_recorded = true;
      found_cpu = found_cpu || state.found_cpu;
      found_device.insert(found_device.end(), state.found_device.begin(), state.found_device.end());
    }
    TORCHKIT_CHECK(any_recorded,
                   "{}: no inf checks were recorded since the last update(); call unscale_(), step() or the "
                   "scaler-aware clip_grad_norm_ first",
                   function);
    if (scale_.device().is_cpu() && found_device.empty()) {
      update_on_host(found_cpu);
    } else {
      at::Tensor found = at::full({}, found_cpu ? 1.0f : 0.0f, scale_.options());
      for (const auto& tensor : found_device) found = found + tensor.to(scale_.device()).reshape({});
      at::_amp_update_scale_(scale_, growth_tracker_, found, options_.growth_factor, options_.backoff_factor,
                             options_.growth_interval);
    }
    states_.clear();
  }

  /// The current scale (a float32 value), init_scale before the first scale(), 1 when
  /// disabled. Syncs when the scale lives on an accelerator.
  [[nodiscard]] double get_scale() const {
    if (!options_.enabled) return 1.0;
    return scale_.defined() ? scale_.item<double>() : init_scale_;
  }
  /// Clean steps since the last growth or backoff (Python's `_growth_tracker`).
  [[nodiscard]] std::int64_t growth_tracker() const {
    if (!options_.enabled) return 0;
    return growth_tracker_.defined() ? growth_tracker_.item<std::int64_t>() : init_growth_tracker_;
  }
  /// Whether the scaler scales at all (PyTorch: `is_enabled()`).
  [[nodiscard]] bool is_enabled() const noexcept { return options_.enabled; }
  /// The options, with the factors and interval as last loaded.
  [[nodiscard]] const GradScalerOptions& options() const noexcept { return options_; }
  /// PyTorch: `get_growth_factor()`.
  [[nodiscard]] double get_growth_factor() const noexcept { return options_.growth_factor; }
  /// PyTorch: `get_backoff_factor()`.
  [[nodiscard]] double get_backoff_factor() const noexcept { return options_.backoff_factor; }
  /// PyTorch: `get_growth_interval()`.
  [[nodiscard]] std::int64_t get_growth_interval() const noexcept { return options_.growth_interval; }

  /// Writes the state (Python's `state_dict()`: scale, growth_factor, backoff_factor,
  /// growth_interval, _growth_tracker) under the key "grad_scaler", beside the optimizer's and
  /// the schedulers' state in the same archive.
  ///
  ///     optimizer.save(archive); scheduler.save(archive); scaler.save(archive);
  void save(torch::serialize::OutputArchive& archive) const {
    torch::serialize::OutputArchive nested(archive.compilation_unit());
    nested.write("enabled", c10::IValue(options_.enabled));
    nested.write("scale", c10::IValue(get_scale()));
    nested.write("growth_factor", c10::IValue(options_.growth_factor));
    nested.write("backoff_factor", c10::IValue(options_.backoff_factor));
    nested.write("growth_interval", c10::IValue(options_.growth_interval));
    nested.write("_growth_tracker", c10::IValue(growth_tracker()));
    archive.write("grad_scaler", nested);
  }

  /// Restores the state written by save() (Python's `load_state_dict()`). A disabled scaler
  /// loads nothing, as in Python.
  /// @throws torchkit::Error when the archive has no "grad_scaler", a value is missing or of the
  ///         wrong type or out of range, or it was saved by a disabled scaler; nothing changes then.
  void load(torch::serialize::InputArchive& archive) {
    constexpr std::string_view function = "GradScaler::load";
    if (!options_.enabled) return;
    torch::serialize::InputArchive nested;
    TORCHKIT_CHECK(archive.try_read("grad_scaler", nested), "{}: the archive has no 'grad_scaler'", function);
    const auto read = [&](const char* key) {
      c10::IValue value;
      TORCHKIT_CHECK(nested.try_read(key, value), "{}: the archive's grad_scaler has no '{}'", function, key);
      return value;
    };
    const auto read_double = [&](const char* key) {
      const c10::IValue value = read(key);
      TORCHKIT_CHECK(value.isDouble(), "{}: '{}' in the archive should be a float, got a value of type {}", function,
                     key, value.tagKind());
      return value.toDouble();
    };
    const auto read_int = [&](const char* key) {
      const c10::IValue value = read(key);
      TORCHKIT_CHECK(value.isInt(), "{}: '{}' in the archive should be an integer, got a value of type {}", function,
                     key, value.tagKind());
      return value.toInt();
    };
    const c10::IValue enabled = read("enabled");
    TORCHKIT_CHECK(enabled.isBool(), "{}: 'enabled' in the archive should be a bool, got a value of type {}",
                   function, enabled.tagKind());
    TORCHKIT_CHECK(enabled.toBool(), "{}: the archive was saved by a disabled GradScaler; it holds no state",
                   function);
    GradScalerOptions loaded = options_;
    loaded.init_scale = read_double("scale");
    loaded.growth_factor = read_double("growth_factor");
    loaded.backoff_factor = read_double("backoff_factor");
    loaded.growth_interval = read_int("growth_interval");
    const std::int64_t tracker = read_int("_growth_tracker");
    check_options(loaded, function);
    TORCHKIT_CHECK(tracker >= 0 && tracker < loaded.growth_interval,
                   "{}: _growth_tracker must be in [0, growth_interval = {}), got {}", function,
                   loaded.growth_interval, tracker);
    options_.growth_factor = loaded.growth_factor;
    options_.backoff_factor = loaded.backoff_factor;
    options_.growth_interval = loaded.growth_interval;
    init_scale_ = loaded.init_scale;
    init_growth_tracker_ = tracker;
    if (scale_.defined()) {
      scale_.fill_(init_scale_);
      growth_tracker_.fill_(tracker);
    }
  }

  /// `GradScaler(scale=65536, growth_tracker=0, growth_factor=2, backoff_factor=0.5,
  /// growth_interval=2000, enabled=true)`. Syncs as get_scale() does.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("GradScaler(scale={}, growth_tracker={}, growth_factor={}, backoff_factor={}, "
                       "growth_interval={}, enabled={})",
                       get_scale(), growth_tracker(), options_.growth_factor, options_.backoff_factor,
                       options_.growth_interval, options_.enabled);
  }
  /// Writes to_string().
  friend std::ostream& operator<<(std::ostream& out, const GradScaler& scaler) { return out << scaler.to_string(); }

 private:
  friend struct detail::amp::ScalerAccess;

  enum class Stage : std::uint8_t { ready, unscaled, stepped };
  struct State {
    Stage stage = Stage::ready;
    bool recorded = false;   // some gradient was checked (Python: found_inf_per_device not empty)
    bool found_cpu = false;  // a CPU gradient held inf/nan
    std::vector<at::Tensor> found_device;  // one per accelerator device, on it
  };

  /// The scale lives in a float32 tensor: it must be > 0 and finite as a float32 (a finite
  /// double above float32's largest value would become inf, one below its smallest would be 0).
  static void check_scale(double scale, std::string_view name, std::string_view function) {
    TORCHKIT_CHECK(std::isfinite(scale) && scale >= static_cast<double>(std::numeric_limits<float>::denorm_min()) &&
                       scale <= static_cast<double>(std::numeric_limits<float>::max()),
                   "{}: {} must be a finite number > 0 that float32 holds (from {} to {}), got {}", function, name,
                   std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max(), scale);
  }

  static void check_options(const GradScalerOptions& options, std::string_view function) {
    check_scale(options.init_scale, "init_scale (the scale)", function);
    TORCHKIT_CHECK(std::isfinite(options.growth_factor) && options.growth_factor > 1.0,
                   "{}: growth_factor must be a finite number > 1, got {}", function, options.growth_factor);
    TORCHKIT_CHECK(options.backoff_factor > 0.0 && options.backoff_factor < 1.0,
                   "{}: backoff_factor must be in (0, 1), got {}", function, options.backoff_factor);
    // The growth tracker is an int32 tensor, as in PyTorch, counting up to growth_interval.
    TORCHKIT_CHECK(options.growth_interval > 0 && options.growth_interval <= std::numeric_limits<std::int32_t>::max(),
                   "{}: growth_interval must be in [1, {}] (the growth tracker is int32), got {}", function,
                   std::numeric_limits<std::int32_t>::max(), options.growth_interval);
  }

  void check_scaled(std::string_view function) const {
    TORCHKIT_CHECK(scale_.defined(),
                   "{}: scale() was never called; scale the loss first (scaler.scale(loss).backward())", function);
  }

  [[nodiscard]] const State* find(const torch::optim::Optimizer& optimizer) const {
    for (const auto& [key, state] : states_) {
      if (key == &optimizer) return &state;
    }
    return nullptr;
  }
  State& state_of(const torch::optim::Optimizer& optimizer) {
    for (auto& [key, state] : states_) {
      if (key == &optimizer) return state;
    }
    return states_.emplace_back(&optimizer, State{}).second;
  }

  /// Whether `optimizer` lists some parameter more than once (Python's optimizers warn about
  /// it). Remembered per optimizer across steps: the parameters are compared with those of the
  /// last call (one read of each handle), and sorted only when they changed.
  [[nodiscard]] bool lists_a_parameter_twice(const torch::optim::Optimizer& optimizer) {
    auto found = std::find_if(parameter_checks_.begin(), parameter_checks_.end(),
                              [&](const auto& entry) { return entry.first == &optimizer; });
    if (found == parameter_checks_.end()) {
      // A few optimizers at most: forget the oldest (a program may make a new one per epoch).
      if (parameter_checks_.size() == 8) parameter_checks_.erase(parameter_checks_.begin());
      found = parameter_checks_.insert(parameter_checks_.end(), {&optimizer, ParameterCheck{}});
    }
    ParameterCheck& check = found->second;
    std::size_t k = 0;
    bool same = true;
    for (const auto& group : optimizer.param_groups()) {  // (a plain loop per group: ~0.5 us for 2,000)
      const std::vector<at::Tensor>& parameters = group.params();
      same = same && k + parameters.size() <= check.parameters.size();
      for (std::size_t i = 0; same && i < parameters.size(); ++i) {
        same = check.parameters[k + i] == parameters[i].unsafeGetTensorImpl();
      }
      k += parameters.size();
    }
    if (same && k == check.parameters.size()) return check.duplicates;
    check.parameters.clear();
    for (const at::Tensor& parameter : detail::amp::parameters_of(optimizer)) {
      check.parameters.push_back(parameter.unsafeGetTensorImpl());
    }
    std::vector<const c10::TensorImpl*> sorted = check.parameters;
    std::sort(sorted.begin(), sorted.end());
    check.duplicates = std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end();
    return check.duplicates;
  }

  /// The scale's float32 value on the host (CPU scale: no sync).
  [[nodiscard]] float host_scale() const { return scale_.item<float>(); }

  /// Python: `self._scale.double().reciprocal().float()`, on the scale's device.
  [[nodiscard]] at::Tensor inverse_scale_tensor() const {
    return at::reciprocal(scale_.to(at::kDouble)).to(at::kFloat);
  }

  void unscale_collected(const detail::clip::Collected& collected, State& state) {
    const at::NoGradGuard no_grad;
    detail::amp::ScaledPass pass(collected);
    // Python: `self._scale.double().reciprocal().float()`, on the scale's device; read on the
    // host only for CPU gradients (free when the scale is on the CPU).
    const at::Tensor inv_tensor = inverse_scale_tensor();
    const float inv = pass.has_cpu_gradients() ? inv_tensor.item<float>() : 1.0f;
    state.found_cpu = pass.unscale(inv, inv_tensor, state.found_device) || state.found_cpu;
    state.recorded = state.recorded || !collected.gradients.empty();
    state.stage = Stage::unscaled;
  }

  /// `_amp_update_scale_`'s CPU kernel: float32 scale, products in double, rounded to float.
  void update_on_host(bool found) {
    float* scale = scale_.data_ptr<float>();
    std::int32_t* tracker = growth_tracker_.data_ptr<std::int32_t>();
    if (found) {
      *scale = static_cast<float>(static_cast<double>(*scale) * options_.backoff_factor);
      *tracker = 0;
    } else {
      const std::int64_t successful = static_cast<std::int64_t>(*tracker) + 1;
      if (successful == options_.growth_interval) {
        const auto grown = static_cast<float>(static_cast<double>(*scale) * options_.growth_factor);
        if (std::isfinite(grown)) *scale = grown;
        *tracker = 0;
      } else {
        *tracker = static_cast<std::int32_t>(successful);
      }
    }
    // In place, as `_amp_update_scale_` is: a scaled loss whose backward has not run yet saw
    // the old scale, and autograd then refuses to use the changed one.
    scale_.unsafeGetTensorImpl()->bump_version();
    growth_tracker_.unsafeGetTensorImpl()->bump_version();
  }

  GradScalerOptions options_;
  double init_scale_ = 65536.0;
  std::int64_t init_growth_tracker_ = 0;
  at::Tensor scale_;           // 0-dim float32, on the device of the first scaled loss
  at::Tensor growth_tracker_;  // 0-dim int32, beside it
  std::vector<std::pair<const torch::optim::Optimizer*, State>> states_;
  /// lists_a_parameter_twice's memory: an optimizer's parameters at the last check.
  struct ParameterCheck {
    std::vector<const c10::TensorImpl*> parameters;
    bool duplicates = false;
  };
  std::vector<std::pair<const torch::optim::Optimizer*, ParameterCheck>> parameter_checks_;
};

namespace detail {
/// GradScaler formats with `{fmt}` as its to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<GradScaler> = true;
}  // namespace detail

namespace detail::amp {

/// error_if_nonfinite for the scaler-aware clip: the same words on every path.
inline void check_unscaled_total(double total, double norm_type, std::string_view function) {
  TORCHKIT_CHECK(std::isfinite(total),
                 "{}: the total norm of order {} of the unscaled gradients is {} (non-finite), so they cannot be "
                 "clipped (error_if_nonfinite); no gradient was changed. Pass error_if_nonfinite = false to skip "
                 "this step through scaler.step() instead, as PyTorch does",
                 function, norm_type, std::isnan(total) ? std::string("nan") : fmt::format("{}", total));
}

/// The total norm of order p (PyTorch's algorithm, op by op) of `collected`'s gradients as
/// unscale_ would leave them, `grad * inv` in each gradient's dtype, computed on copies.
[[nodiscard]] inline double unscaled_total_of_copies(const clip::Collected& collected, double p,
                                                     const at::Tensor& inv) {
  std::vector<at::Tensor> copies;
  copies.reserve(collected.gradients.size());
  clip::Collected unscaled;
  unscaled.gradients = collected.gradients;
  for (auto& gradient : unscaled.gradients) {
    copies.push_back(*gradient.grad * inv.to(gradient.grad->device()));
  }
  for (std::size_t k = 0; k < copies.size(); ++k) unscaled.gradients[k].grad = &copies[k];
  std::vector<at::Tensor> norms;
  return clip::reference_norms_and_total(unscaled, p, norms).item<double>();
}

struct ScalerAccess {
  /// The scaler-aware clip (see clip_grad_norm_ below).
  static at::Tensor clip(torch::optim::Optimizer& optimizer, double max_norm, double norm_type, GradScaler& scaler,
                         const ClipOptions& options) {
    constexpr std::string_view function = "clip_grad_norm_";
    clip::check_max_norm(max_norm, function);
    clip::check_norm_type(norm_type, function);
    if (!scaler.options_.enabled) {
      const auto collected = clip::collect(parameters_of(optimizer), function, /*mutating=*/true);
      return clip::norm_and_clip(collected, norm_type, max_norm, options, function);
    }
    scaler.check_scaled(function);
    const GradScaler::State* existing = scaler.find(optimizer);
    TORCHKIT_CHECK(existing == nullptr || existing->stage != GradScaler::Stage::stepped,
                   "{}: the scaler already stepped this optimizer since the last update(); clip before "
                   "scaler.step(optimizer)",
                   function);
    const bool unscaled = existing != nullptr && existing->stage == GradScaler::Stage::unscaled;
    const auto collected = collect_scalable(optimizer, function);
    if (unscaled || collected.gradients.empty()) {
      if (!unscaled) scaler.state_of(optimizer).stage = GradScaler::Stage::unscaled;  // Python records nothing
      return clip::norm_and_clip(collected, norm_type, max_norm, options, function);
    }
    const at::NoGradGuard no_grad;
    ScaledPass pass(collected);
    if (!pass.all_on_cpu() || !options.foreach || scaler.lists_a_parameter_twice(optimizer)) {
      // Accelerators (or the reference path): PyTorch's recipe, op by op. Also for a parameter
      // listed twice: Python's unscale_ then unscales its gradient twice, and the clip counts it
      // twice, which one read pass and one write pass cannot reproduce.
      auto& state = scaler.state_of(optimizer);
      if (options.error_if_nonfinite) {
        // Validate before unscaling, so that nothing changes when it throws: the norm of the
        // values unscale_ would leave (on copies; the scaled values' own norm may overflow).
        check_unscaled_total(unscaled_total_of_copies(collected, norm_type, scaler.inverse_scale_tensor()), norm_type,
                             function);
      }
      scaler.unscale_collected(collected, state);
      return clip::norm_and_clip(collected, norm_type, max_norm, {.error_if_nonfinite = false, .foreach = options.foreach},
                                 function);
    }
    const float inv = inverse_scale(scaler.host_scale());
    bool found = false;
    at::ScalarType dtype = at::kFloat;
    const double total = pass.unscaled_norm(norm_type, inv, found, dtype);
    if (options.error_if_nonfinite) check_unscaled_total(total, norm_type, function);
    const at::Tensor total_tensor = at::scalar_tensor(total, at::TensorOptions().dtype(dtype));
    const double coefficient = dtype == at::kFloat || dtype == at::kDouble
                                   ? clip::host_clip_coefficient(total, max_norm, dtype)
                                   : clip::clip_coefficient(total_tensor, max_norm).item<double>();
    pass.unscale_and_scale(inv, coefficient);
    auto& state = scaler.state_of(optimizer);
    state.found_cpu = found || state.found_cpu;
    state.recorded = true;
    state.stage = GradScaler::Stage::unscaled;
    return total_tensor;
  }
};

}  // namespace detail::amp

/// Unscales the gradients of `optimizer` (unless `scaler.unscale_(optimizer)` already did this
/// step), clips them to a total norm of at most `max_norm`, and records whether any held inf or
/// nan so that `scaler.step(optimizer)` skips the step. The result equals Python's documented
/// recipe `scaler.unscale_(optimizer); torch.nn.utils.clip_grad_norm_(params, max_norm,
/// norm_type)`; on the CPU it reads the gradients once (non-finite check and the norm of the
/// unscaled values) and writes them once (the unscale factor and the clip coefficient applied
/// together), instead of unscale's read and write plus clip's read and write. The same bits as
/// `scaler.unscale_(optimizer)` then `clip_grad_norm_` on the LibTorch at hand (float16 and
/// bfloat16 gradients multiplied by the coefficient as its `mul_` does). Gradients on an
/// accelerator, `foreach = false` and an optimizer that lists a parameter twice (Python's
/// unscale_ then unscales that gradient twice) take that recipe op by op.
///
/// With a disabled scaler this is clip_grad_norm_ over the optimizer's parameters.
///
/// @returns the total norm of the unscaled gradients before clipping, as clip_grad_norm_
///          (inf or nan on a step the scaler will skip; the gradients are then scaled by
///          PyTorch's coefficient anyway, as the Python recipe does).
/// @throws torchkit::Error for max_norm <= 0 or nan, norm_type < 0 or nan, when `scale()` was
///         never called, after `scaler.step(optimizer)` in this step, for a sparse, integer or
///         misshapen gradient, and (with `error_if_nonfinite`) a non-finite total norm. Nothing
///         changes when it throws.
///
///     scaler.scale(loss).backward();
///     torchkit::clip_grad_norm_(optimizer, 1.0, 2.0, scaler);
///     scaler.step(optimizer);
///     scaler.update();
inline at::Tensor clip_grad_norm_(torch::optim::Optimizer& optimizer, double max_norm, double norm_type,
                                  GradScaler& scaler, ClipOptions options = {}) {
  return detail::amp::ScalerAccess::clip(optimizer, max_norm, norm_type, scaler, options);
}

}  // namespace torchkit
