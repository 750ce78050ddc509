// torchkit — single-header edition.
//
// GENERATED FILE — DO NOT EDIT. It is produced by tools/amalgamate.py from include/torchkit/;
// edit those headers and run `python3 tools/amalgamate.py` instead.
//
// Copy this one file into a project, then compile with C++20 and link LibTorch and fmt.
// Define TORCHKIT_WITH_CUDA=1 when LibTorch's CUDA libraries are linked, and
// TORCHKIT_WITH_OPENCV=1 to get the cv::Mat adapters (needs OpenCV).
//
// SPDX-License-Identifier: MIT
#pragma once
// ---- begin torchkit/torchkit.hpp ----
/// @file torchkit.hpp
/// The umbrella header: every torchkit feature.
///
///     #include <torchkit/torchkit.hpp>
///
/// `torchkit/opencv.hpp` (cv::Mat adapters) is included too when TORCHKIT_WITH_OPENCV is
/// defined to 1; otherwise include it yourself where OpenCV is available.

// ---- begin torchkit/version.hpp ----
/// @file version.hpp
/// torchkit's version, as macros and as a string.

#include <string_view>

#define TORCHKIT_VERSION_MAJOR 0
#define TORCHKIT_VERSION_MINOR 1
#define TORCHKIT_VERSION_PATCH 0

namespace torchkit {

/// The library version as "major.minor.patch".
///
///     std::cout << torchkit::version();   // 0.1.0
[[nodiscard]] constexpr std::string_view version() noexcept { return "0.1.0"; }

}  // namespace torchkit
// ---- end torchkit/version.hpp ----
// ---- begin torchkit/error.hpp ----
/// @file error.hpp
/// torchkit::Error, the one exception type for bad arguments, and TORCHKIT_CHECK.

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace torchkit {

/// Thrown for every bad argument: the message names the offending value, where it is, and
/// what was expected.
///
///     try { torchkit::parse_device_list("0,,1"); }
///     catch (const torchkit::Error& e) { std::cerr << e.what(); }
class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

/// Throws torchkit::Error with a fmt-formatted message.
template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace detail
}  // namespace torchkit

/// Throws torchkit::Error with the fmt-formatted message when `condition` is false. The message
/// arguments are only evaluated on failure.
///
///     TORCHKIT_CHECK(max_norm > 0, "clip_grad_norm_: max_norm must be > 0, got {}", max_norm);
#define TORCHKIT_CHECK(condition, ...)            \
  do {                                            \
    if (!(condition)) {                           \
      ::torchkit::detail::fail(__VA_ARGS__);      \
    }                                             \
  } while (false)
// ---- end torchkit/error.hpp ----
// ---- begin torchkit/concepts.hpp ----
/// @file concepts.hpp
/// The concepts every feature is constrained with, and the helpers that turn what a user
/// passes (a module, a holder, a shared_ptr, a range of tensors) into parameters.

// ---- begin torchkit/detail/config.hpp ----
/// @file detail/config.hpp
/// The one place where differences between LibTorch versions and build flavours are handled.
///
/// - TORCHKIT_TORCH_VERSION       LibTorch's version as major * 10000 + minor * 100 + patch.
/// - TORCHKIT_TORCH_AT_LEAST(M,m) true for LibTorch M.m or newer.
/// - TORCHKIT_WITH_CUDA           1 when LibTorch's CUDA libraries are linked. The CMake package
///                                defines it when the Torch it finds was built with CUDA;
///                                single-header users define it themselves. 0 otherwise: then no
///                                CUDA symbol is ever referenced.

#include <torch/version.h>

#define TORCHKIT_TORCH_VERSION (TORCH_VERSION_MAJOR * 10000 + TORCH_VERSION_MINOR * 100 + TORCH_VERSION_PATCH)
#define TORCHKIT_TORCH_AT_LEAST(major, minor) (TORCHKIT_TORCH_VERSION >= ((major) * 10000 + (minor) * 100))

#ifndef TORCHKIT_WITH_CUDA
#define TORCHKIT_WITH_CUDA 0
#endif

static_assert(TORCHKIT_TORCH_AT_LEAST(1, 13), "torchkit needs LibTorch 1.13 or newer");
// ---- end torchkit/detail/config.hpp ----

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/optim/optimizer.h>

#include <concepts>
#include <memory>
#include <ranges>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

namespace torchkit {

/// Any input range whose elements are tensors: `std::vector<at::Tensor>`,
/// `module->parameters()`, a `std::span`, a filtered view, ...
///
///     static_assert(torchkit::TensorRange<std::vector<at::Tensor>>);
template <class R>
concept TensorRange = std::ranges::input_range<R> &&
                      std::convertible_to<std::ranges::range_reference_t<R>, const at::Tensor&>;

namespace detail {

template <class T>
inline constexpr bool is_module_v = std::is_base_of_v<torch::nn::Module, T>;

template <class T>
inline constexpr bool is_module_holder_v = false;
template <class T>
  requires std::is_base_of_v<torch::detail::ModuleHolderIndicator, T>
inline constexpr bool is_module_holder_v<T> = is_module_v<typename T::ContainedType>;

template <class T>
inline constexpr bool is_module_pointer_v = false;
template <class T>
inline constexpr bool is_module_pointer_v<std::shared_ptr<T>> = is_module_v<T>;

}  // namespace detail

/// A LibTorch module in any of the forms users hold one: a `torch::nn::Module` (or a class
/// derived from it), a `ModuleHolder` such as `torch::nn::Linear`, or a `std::shared_ptr` to a
/// module.
///
///     static_assert(torchkit::ModuleLike<torch::nn::Linear>);
template <class M>
concept ModuleLike = detail::is_module_v<std::remove_cvref_t<M>> ||
                     detail::is_module_holder_v<std::remove_cvref_t<M>> ||
                     detail::is_module_pointer_v<std::remove_cvref_t<M>>;

/// What functions that work on parameters accept: a ModuleLike or a TensorRange.
template <class P>
concept ParameterSource = ModuleLike<P> || TensorRange<P>;

/// The options of a LibTorch optimizer that has a learning rate and weight decay (SGD, Adam,
/// AdamW, RMSprop, Adagrad).
///
///     static_assert(torchkit::OptimizerOptions<torch::optim::AdamOptions>);
template <class O>
concept OptimizerOptions =
    std::derived_from<O, torch::optim::OptimizerOptions> && std::copy_constructible<O> &&
    requires(O options, const O const_options, double value) {
      { const_options.lr() } -> std::convertible_to<double>;
      { const_options.weight_decay() } -> std::convertible_to<double>;
      options.lr(value);
      options.weight_decay(value);
    };

/// The module behind any ModuleLike. Throws Error for an empty holder or a null pointer.
///
///     torch::nn::Linear linear(4, 2);
///     torch::nn::Module& module = torchkit::module_of(linear);
template <ModuleLike M>
[[nodiscard]] decltype(auto) module_of(M&& model) {
  using Model = std::remove_cvref_t<M>;
  if constexpr (detail::is_module_v<Model>) {
    return static_cast<std::conditional_t<std::is_const_v<std::remove_reference_t<M>>,
                                          const torch::nn::Module&, torch::nn::Module&>>(model);
  } else if constexpr (detail::is_module_holder_v<Model>) {
    TORCHKIT_CHECK(!model.is_empty(), "torchkit: the module holder is empty (it was constructed with nullptr)");
    return static_cast<torch::nn::Module&>(*model.ptr());
  } else {
    TORCHKIT_CHECK(model != nullptr, "torchkit: the module pointer is null");
    return static_cast<torch::nn::Module&>(*model);
  }
}

/// A parameter and its dotted name (`features.0.weight`).
struct NamedParameter {
  std::string name;
  at::Tensor tensor;
};

/// Every parameter of a model with its name, each tensor once, in registration order, as
/// Python's `model.named_parameters()`. LibTorch's own `named_parameters()` lists a tied
/// (shared) tensor once per module that holds it; this lists it once, under its first name.
///
///     for (const auto& [name, tensor] : torchkit::named_parameters_of(model)) ...
template <ModuleLike M>
[[nodiscard]] std::vector<NamedParameter> named_parameters_of(const M& model) {
  const torch::nn::Module& module = module_of(model);
  const auto all = module.named_parameters(/*recurse=*/true);
  std::vector<NamedParameter> result;
  result.reserve(all.size());
  std::unordered_set<const void*> seen;
  seen.reserve(all.size());
  for (const auto& item : all) {
    if (seen.insert(item.value().unsafeGetTensorImpl()).second) {
      result.push_back(NamedParameter{item.key(), item.value()});
    }
  }
  return result;
}

/// The parameters to work on: a model's parameters (each tensor once, as Python's
/// `model.parameters()`), or the tensors of a range as given.
///
///     auto tensors = torchkit::parameters_of(model);
///     auto same = torchkit::parameters_of(model->parameters());
template <ParameterSource P>
[[nodiscard]] std::vector<at::Tensor> parameters_of(P&& source) {
  std::vector<at::Tensor> result;
  if constexpr (ModuleLike<P>) {
    auto named = named_parameters_of(source);
    result.reserve(named.size());
    for (auto& item : named) {
      result.push_back(std::move(item.tensor));
    }
  } else {
    if constexpr (std::ranges::sized_range<P>) {
      result.reserve(static_cast<std::size_t>(std::ranges::size(source)));
    }
    for (auto&& tensor : source) {
      result.push_back(static_cast<const at::Tensor&>(tensor));
    }
  }
  return result;
}

}  // namespace torchkit
// ---- end torchkit/concepts.hpp ----

// ---- begin torchkit/devices.hpp ----
/// @file devices.hpp
/// tip 1  VisibleDevices, parse_device_list, best_device (not written yet).

// ---- end torchkit/devices.hpp ----
// ---- begin torchkit/summary.hpp ----
/// @file summary.hpp
/// tip 2  Summary, summary() (not written yet).

// ---- end torchkit/summary.hpp ----
// ---- begin torchkit/clip.hpp ----
/// @file clip.hpp
/// tip 3  clip_grad_norm_, clip_grad_value_, grad_norm, ClipGrad (not written yet).

// ---- end torchkit/clip.hpp ----
// ---- begin torchkit/batch.hpp ----
/// @file batch.hpp
/// tip 4  to_batch, from_batch, image_to_batch, images_to_batch (not written yet).

// ---- end torchkit/batch.hpp ----
// ---- begin torchkit/one_hot.hpp ----
/// @file one_hot.hpp
/// tip 5  one_hot, OneHot (not written yet).

// ---- end torchkit/one_hot.hpp ----
// ---- begin torchkit/grad_mode.hpp ----
/// @file grad_mode.hpp
/// tip 6  NoGradScope, InferenceScope, EvalScope (not written yet).

// ---- end torchkit/grad_mode.hpp ----
// ---- begin torchkit/memory.hpp ----
/// @file memory.hpp
/// tip 6  empty_cache, memory_stats, reset_peak_memory_stats (not written yet).

// ---- end torchkit/memory.hpp ----
// ---- begin torchkit/lr.hpp ----
/// @file lr.hpp
/// tip 7  namespace torchkit::lr: the scheduler family (not written yet).

// ---- end torchkit/lr.hpp ----
// ---- begin torchkit/freeze.hpp ----
/// @file freeze.hpp
/// tip 8  freeze, unfreeze, FreezeByName, requires_grad_report, trainable_parameters (not written yet).

// ---- end torchkit/freeze.hpp ----
// ---- begin torchkit/param_groups.hpp ----
/// @file param_groups.hpp
/// tip 9  ParamGroupBuilder (not written yet).

// ---- end torchkit/param_groups.hpp ----
// ---- begin torchkit/distributed.hpp ----
/// @file distributed.hpp
/// c10d helpers (not written yet).

// ---- end torchkit/distributed.hpp ----
// ---- begin torchkit/format.hpp ----
/// @file format.hpp
/// fmt::formatter specialisations (not written yet).

// ---- end torchkit/format.hpp ----

#if defined(TORCHKIT_WITH_OPENCV) && TORCHKIT_WITH_OPENCV
// ---- begin torchkit/opencv.hpp ----
/// @file opencv.hpp
/// tip 4  cv::Mat adapters (not written yet). Include it explicitly; it needs OpenCV.

// ---- end torchkit/opencv.hpp ----
#endif
// ---- end torchkit/torchkit.hpp ----
