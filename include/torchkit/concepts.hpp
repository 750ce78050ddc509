#pragma once
/// @file concepts.hpp
/// The concepts every feature is constrained with, and the helpers that turn what a user
/// passes (a module, a holder, a shared_ptr, a range of tensors) into parameters.

#include <torchkit/detail/config.hpp>
#include <torchkit/error.hpp>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/optim/optimizer.h>

#include <concepts>
#include <memory>
#include <ranges>
#include <string>
#include <string_view>
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

/// The module behind any ModuleLike.
///
/// Throws Error for an empty holder or a null pointer; the message starts with `caller`, the
/// public name that was called with `model` ("module_of" when called directly).
///
///     torch::nn::Linear linear(4, 2);
///     torch::nn::Module& module = torchkit::module_of(linear);
template <ModuleLike M>
[[nodiscard]] decltype(auto) module_of(M&& model, std::string_view caller = "module_of") {
  using Model = std::remove_cvref_t<M>;
  if constexpr (detail::is_module_v<Model>) {
    return static_cast<std::conditional_t<std::is_const_v<std::remove_reference_t<M>>,
                                          const torch::nn::Module&, torch::nn::Module&>>(model);
  } else if constexpr (detail::is_module_holder_v<Model>) {
    TORCHKIT_CHECK(!model.is_empty(), "{}: the module holder is empty (it was constructed with nullptr)", caller);
    return static_cast<torch::nn::Module&>(*model.ptr());
  } else {
    TORCHKIT_CHECK(model != nullptr, "{}: the module pointer is null", caller);
    return static_cast<torch::nn::Module&>(*model);
  }
}

/// A parameter and its dotted name (`features.0.weight`).
struct NamedParameter {
  std::string name;   ///< the dotted name (for a tied tensor: its first name)
  at::Tensor tensor;  ///< the model's parameter tensor itself, not a copy
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
