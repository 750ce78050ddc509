#pragma once
/// @file grad_mode.hpp
/// Tip 6: evaluate without autograd: NoGradScope, InferenceScope, EvalScope.
///
/// Python:
///
///     model.eval()
///     with torch.no_grad():
///         output = model(input)
///
/// C++:
///
///     {
///       torchkit::EvalScope eval(model);     // every submodule to eval, each restored on exit
///       torchkit::NoGradScope no_grad;       // no graph, no saved activations
///       auto output = model->forward(input);
///     }

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>

#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/nn/module.h>

#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

namespace torchkit {

/// RAII: turns autograd recording off (`torch.no_grad()`), restores the previous grad mode on
/// destruction, also during exception unwinding. Thread-local, like the grad mode itself.
/// Non-copyable, non-movable; nests.
///
///     {
///       torchkit::NoGradScope no_grad;
///       auto output = model->forward(input);   // output.requires_grad() == false
///     }
class NoGradScope {
 public:
  NoGradScope() : previous_(c10::GradMode::is_enabled()) { c10::GradMode::set_enabled(false); }
  ~NoGradScope() { c10::GradMode::set_enabled(previous_); }

  NoGradScope(const NoGradScope&) = delete;
  NoGradScope& operator=(const NoGradScope&) = delete;
  NoGradScope(NoGradScope&&) = delete;
  NoGradScope& operator=(NoGradScope&&) = delete;

  /// Whether grad mode was on when the scope began (what the destructor restores).
  [[nodiscard]] bool previously_enabled() const noexcept { return previous_; }

 private:
  bool previous_;
};

// g++ 16 with LibTorch 2.14 reports -Wmaybe-uninitialized inside LibTorch's own headers when this
// class's destructor is inlined: ~c10::InferenceMode destroys AutogradState's
// std::optional<c10::SafePyObject>, whose payload g++ cannot prove is only read when engaged. The
// report is about LibTorch's code (the optional is never engaged on a C++-only path), so it is
// silenced for this class only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
/// RAII: inference mode (`torch.inference_mode()`, `c10::InferenceMode`): like NoGradScope, and
/// faster, because tensors created inside skip version counting and view tracking; they can
/// never be used by autograd later. `InferenceScope(false)` turns inference mode off inside an
/// enclosing one, as `torch.inference_mode(False)`. Restores the previous state on destruction,
/// also during exception unwinding. Non-copyable, non-movable; nests.
///
///     {
///       torchkit::InferenceScope inference;
///       auto output = model->forward(input);   // output.is_inference() == true
///     }
class InferenceScope {
 public:
  /// Enters inference mode (with `enabled` false: leaves it for the scope).
  explicit InferenceScope(bool enabled = true) : previous_(c10::InferenceMode::is_enabled()), guard_(enabled) {}

  InferenceScope(const InferenceScope&) = delete;
  InferenceScope& operator=(const InferenceScope&) = delete;
  InferenceScope(InferenceScope&&) = delete;
  InferenceScope& operator=(InferenceScope&&) = delete;

  /// Whether inference mode was on when the scope began.
  [[nodiscard]] bool previously_enabled() const noexcept { return previous_; }

 private:
  bool previous_;
  c10::InferenceMode guard_;
};
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/// RAII: puts a model and every submodule in evaluation mode (`model.eval()`: dropout off,
/// batch norm uses its running statistics) and, on destruction, gives each module back its own
/// previous training flag, so a model with some submodules deliberately in eval (a frozen
/// BatchNorm) comes back exactly as it was. Also during exception unwinding. Accepts any
/// ModuleLike; a module holder or shared_ptr is kept alive by the scope, a plain module must
/// outlive it. Modules added to the model inside the scope take their parent's restored flag.
/// Non-copyable, non-movable; nests. Does not turn autograd off: combine with NoGradScope.
///
/// @throws Error for an empty module holder or a null pointer (nothing is changed then).
///
///     torchkit::EvalScope eval(model);
///     torchkit::NoGradScope no_grad;
///     auto logits = model->forward(images);
class EvalScope {
 public:
  /// Puts `model` and all its submodules in eval mode, recording each one's training flag.
  template <ModuleLike M>
    requires(!std::is_const_v<std::remove_reference_t<M>>)
  explicit EvalScope(M& model) {
    torch::nn::Module& root = module_of(model, "EvalScope");  // throws before anything changes
    using Model = std::remove_cvref_t<M>;
    if constexpr (detail::is_module_holder_v<Model>) {
      owner_ = model.ptr();
    } else if constexpr (detail::is_module_pointer_v<Model>) {
      owner_ = model;
    }
    root_ = &root;
    root_was_training_ = root.is_training();
    // Pre-order (parents first), every occurrence of a module registered under several parents.
    auto submodules = root.modules(/*include_self=*/false);
    submodules_.reserve(submodules.size());
    for (auto& submodule : submodules) {
      const bool training = submodule->is_training();
      submodules_.push_back({std::move(submodule), training});
    }
    try {
      root.eval();
    } catch (...) {  // a user override of train() threw: leave the model as it was
      restore_all();
      throw;
    }
  }

  EvalScope(const EvalScope&) = delete;
  EvalScope& operator=(const EvalScope&) = delete;
  EvalScope(EvalScope&&) = delete;
  EvalScope& operator=(EvalScope&&) = delete;

  /// Restores every module's own training flag.
  ~EvalScope() { restore_all(); }

  /// Whether the model (the root module) was in training mode when the scope began.
  [[nodiscard]] bool was_training() const noexcept { return root_was_training_; }

 private:
  struct Entry {
    std::shared_ptr<torch::nn::Module> module;
    bool was_training;
  };

  // Module::train(on) is recursive: it sets the module and everything below it. Going through
  // the modules parents-first and calling train() only where a module's flag differs from the
  // one it had, every module's last setter is its own entry, so each ends with its own flag.
  // When the whole model was in one mode this is a single recursive call.
  void restore_all() noexcept {
    restore(*root_, root_was_training_);
    for (const auto& [module, was_training] : submodules_) {
      restore(*module, was_training);
    }
  }

  static void restore(torch::nn::Module& module, bool was_training) noexcept {
    if (module.is_training() != was_training) {
      try {
        module.train(was_training);
      } catch (...) {  // a user override of train() threw; a destructor must not
      }
    }
  }

  std::shared_ptr<torch::nn::Module> owner_;
  torch::nn::Module* root_ = nullptr;
  bool root_was_training_ = true;
  std::vector<Entry> submodules_;
};

}  // namespace torchkit
