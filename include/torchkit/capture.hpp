#pragma once
/// @file capture.hpp
/// Tip 2, beyond torchinfo: the outputs of a model's inner modules (feature maps from the middle
/// of a backbone) without rewriting its `forward`.
///
/// Python (forward hooks, or torchvision's create_feature_extractor):
///
///     features = {}
///     model.layer2.register_forward_hook(lambda m, i, o: features.__setitem__("layer2", o))
///     model(x)
///
/// C++:
///
///     auto features = torchkit::capture(model, {"layer2", "layer3"}, x);  // [("layer2", t), ("layer3", t)]
///
/// LibTorch modules have no forward hooks. capture() observes the forward pass as summary()
/// does (detail/summary_trace.hpp: a `Sequential` run child by child, any other forward through
/// the ATen operators it runs) and reconstructs each call's output (detail/summary_build.hpp):
/// - exact for the model's `Sequential` children (at any depth of nested Sequentials): the value
///   their forward returned;
/// - inside any other forward, the output of the last operator attributed to the module: exact
///   for LibTorch's layers (Conv2d, Linear, BatchNorm2d, ReLU, ...) and for containers and custom
///   modules whose forward ends with a module call. Where operators that belong to no module
///   follow the module's last layer and read its result (`return conv(x) + x`), the output is
///   not known, and capture says so.
/// Captured tensors are the tensors of the forward pass itself (no copies): run under grad mode,
/// they are part of the autograd graph, and `torch::autograd::grad(score, {feature})` gives their
/// gradients (Grad-CAM). An output that a later operator of the forward changed in place
/// (`ReLU(inplace=true)` after a BatchNorm2d, `out += identity`) is refused: the value the module
/// returned is gone.
///
/// The model is run as it is (its training flags and the caller's grad mode) and left exactly as
/// it was: no flag, parameter or buffer is changed by capture itself, and no callback is left
/// installed, also when forward throws.

#include <torchkit/concepts.hpp>
#include <torchkit/detail/name_pattern.hpp>
#include <torchkit/detail/summary_build.hpp>
#include <torchkit/detail/summary_trace.hpp>
#include <torchkit/error.hpp>
#include <torchkit/name_pattern.hpp>
#include <torchkit/summary.hpp>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace torchkit {

/// The captured outputs: (dotted module name, output) in call order; a module called twice
/// appears twice.
using CapturedOutputs = std::vector<std::pair<std::string, at::Tensor>>;

namespace detail::capture {

using Builder = summary::SummaryBuilder<Summary::Row>;

/// Whether a module's dotted name is selected: the whole name (an exact name, a glob matched
/// against the whole name, a regex); unlike parameter selection, a module path does not select
/// the modules below it.
inline bool selects(const NamePattern& pattern, const std::string& name) {
  if (name.empty()) {
    return false;
  }
  switch (pattern.kind()) {
    case NamePattern::Kind::name: {
      std::string_view text = pattern.text();
      if (!text.empty() && text.back() == '.') {
        text.remove_suffix(1);
      }
      return text == name;
    }
    case NamePattern::Kind::glob:
      return glob_match(pattern.text(), name);
    case NamePattern::Kind::regex:
      return pattern.matches(name);
  }
  return false;
}

/// Up to three module names closest to `typed`, for a message.
inline std::string closest_modules(std::string_view typed, const std::vector<summary::ModuleNode>& nodes) {
  std::vector<std::pair<std::size_t, std::size_t>> ranked;  // (distance, node)
  for (std::size_t node = 1; node < nodes.size(); ++node) {
    ranked.emplace_back(name_distance(typed, nodes[node].name), node);
  }
  std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::string text;
  for (std::size_t i = 0; i < ranked.size() && i < 3; ++i) {
    text += fmt::format("{}\"{}\"", text.empty() ? "" : ", ", nodes[ranked[i].second].name);
  }
  return text.empty() ? "none (the model has no submodules)" : text;
}

/// The module nodes the patterns select; every pattern must select a module that has a forward.
inline std::vector<bool> select_modules(std::string_view caller, const PatternList& patterns,
                                        const std::vector<summary::ModuleNode>& nodes) {
  TORCHKIT_CHECK(!patterns.empty(), "{}: no patterns given; name the modules whose outputs to capture, e.g. {{\"layer2\"}}",
                 caller);
  std::vector<bool> selected(nodes.size(), false);
  for (const NamePattern& pattern : patterns.patterns()) {
    TORCHKIT_CHECK(!pattern.text().empty(), "{}: pattern {} is empty; expected a module name such as \"layer2.0\"", caller,
                   pattern);
    bool any = false;
    for (std::size_t node = 1; node < nodes.size(); ++node) {
      if (!selects(pattern, nodes[node].name)) {
        continue;
      }
      TORCHKIT_CHECK(nodes[node].callable,
                     "{}: pattern {} matches '{}', a {} that has no forward of its own, so it has no output; name its "
                     "elements ('{}.0') or use a glob ('{}.*')",
                     caller, pattern, nodes[node].name, nodes[node].type, nodes[node].name, nodes[node].name);
      selected[node] = true;
      any = true;
    }
    TORCHKIT_CHECK(any, "{}: pattern {} matches no module of {}; closest module names: {}", caller, pattern,
                   nodes.front().type, closest_modules(pattern.text(), nodes));
  }
  return selected;
}

/// The outputs of the selected modules' calls, in call order; throws for a selected module never
/// called or whose output is not known.
inline CapturedOutputs collect(std::string_view caller, const Builder& builder, const std::vector<bool>& selected) {
  const auto& nodes = builder.nodes();
  const auto& rows = builder.row_nodes();
  const auto& outputs = builder.call_outputs();
  std::vector<bool> called(nodes.size(), false);
  CapturedOutputs captured;
  for (std::size_t row = 0; row < rows.size(); ++row) {
    const auto node = static_cast<std::size_t>(rows[row]);
    if (!selected[node] || !builder.rows()[row].called) {
      continue;
    }
    called[node] = true;
    const summary::CallOutput& output = outputs[row];
    const std::string& name = nodes[node].name;
    TORCHKIT_CHECK(output.problem.empty(), "{}: the output of '{}' ({}) cannot be identified: {}; capture a module inside it "
                   "or the module that calls it", caller, name, nodes[node].type, output.problem);
    TORCHKIT_CHECK(output.tensor.defined(),
                   "{}: the output of '{}' ({}) cannot be identified: its forward returned no tensor and ran no operator "
                   "with a tensor result",
                   caller, name, nodes[node].type);
    TORCHKIT_CHECK(static_cast<std::int64_t>(output.tensor._version()) == output.version,
                   "{}: the output of '{}' ({}) cannot be identified: a later operator of the forward changed it in "
                   "place (an in-place ReLU, `out += identity`), so the value it returned is gone; capture the module "
                   "that runs the in-place operation, or make it out of place",
                   caller, name, nodes[node].type);
    captured.emplace_back(name, output.tensor);
  }
  for (std::size_t node = 1; node < nodes.size(); ++node) {
    TORCHKIT_CHECK(!selected[node] || called[node],
                   "{}: module '{}' ({}) was never called by the forward pass (or it is a module without parameters "
                   "that runs no operator of its own name, such as Identity, which cannot be seen)",
                   caller, nodes[node].name, nodes[node].type);
  }
  return captured;
}

/// The error of a failed forward pass, prefixed with `caller`.
[[noreturn]] inline void rethrow_forward_error(std::string_view caller, const std::string& model_type) {
  try {
    throw;
  } catch (const summary::ForwardSignatureError& error) {
    std::string message = error.what();
    constexpr std::string_view prefix = "summary: ";
    if (message.rfind(prefix, 0) == 0) {
      message.erase(0, prefix.size());
    }
    throw Error(fmt::format("{}: {}", caller, message));
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& error) {
    throw Error(fmt::format("{}: the forward pass of {} failed: {}", caller, model_type, error.what_without_backtrace()));
  } catch (const std::exception& error) {
    throw Error(fmt::format("{}: the forward pass of {} failed: {}", caller, model_type, error.what()));
  }
}

template <class M>
torch::nn::Module& root_of(M& model, std::string_view caller) {
  if constexpr (summary::AnyModuleModel<M>) {
    TORCHKIT_CHECK(!model.is_empty(), "{}: the AnyModule is empty", caller);
    return *model.ptr();
  } else {
    return module_of(model, caller);
  }
}

}  // namespace detail::capture

/// The outputs of the modules whose dotted names the patterns select, from one forward pass of
/// `model` on `inputs...`, in call order (a module called twice appears twice). A pattern is a
/// whole module name (`"layer2"`, `"features.3"`), a glob over whole names (`"layer*"`,
/// `"blocks.?"`) or a `torchkit::regex(...)`; a module name does not select the modules below it.
///
/// The forward runs in the model's current mode and the caller's grad mode (call `model->eval()`
/// and hold a `torch::NoGradGuard` for inference); the outputs are its own tensors.
///
/// @throws Error for an empty pattern list or pattern, a pattern that matches no module (naming
///         the closest names) or a ModuleList/ModuleDict, a forward that does not take the inputs
///         or throws, a selected module never called, and a selected module whose output cannot
///         be identified (its forward ends with operators of no module that read its last
///         layer's result; its output was changed in place later). The model is left as it was.
///
/// PyTorch: `torchvision.models.feature_extraction.create_feature_extractor(model, ["layer2"])(x)`.
///
///     auto features = torchkit::capture(resnet, {"layer2", "layer3"}, images);
///     at::Tensor layer2 = features[0].second;
template <class M, class... Ts>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] CapturedOutputs capture(M& model, const PatternList& patterns, Ts&&... inputs) {
  namespace impl = detail::summary;
  constexpr std::string_view caller = "capture";
  torch::nn::Module& root = detail::capture::root_of(model, caller);
  detail::capture::Builder builder(root);
  const std::vector<bool> selected = detail::capture::select_modules(caller, patterns, builder.nodes());
  builder.keep_outputs(selected);
  {
    impl::ObservationScope observation(builder.recorder());
    try {
      if (!impl::can_run<M, Ts&&...>(model)) {
        using Target = std::remove_cvref_t<decltype(impl::forward_target(model))>;
        std::string tried;
        ((tried += (tried.empty() ? "" : ", ") + impl::describe_argument(inputs)), ...);
        throw impl::forward_signature_error<Target>("these arguments", tried);
      }
      impl::run_model(builder, model, std::forward<Ts>(inputs)...);
    } catch (...) {
      detail::capture::rethrow_forward_error(caller, builder.nodes().front().type);
    }
  }
  builder.finish();
  return detail::capture::collect(caller, builder, selected);
}

/// RAII: records the outputs of the selected modules during the caller's own forward calls (on
/// this thread) from construction until outputs() is called; then nothing more is recorded.
/// Installs thread-local operator callbacks while recording; the destructor removes them.
/// Non-copyable, non-movable: make it on the stack around the forward call.
///
///     torchkit::FeatureCapture capture(model, {"layer4"});
///     at::Tensor score = model->forward(image).select(1, label).sum();
///     auto features = capture.outputs();                    // stops recording
///     at::Tensor grad = torch::autograd::grad({score}, {features[0].second})[0];  // Grad-CAM
class FeatureCapture {
 public:
  /// Starts recording for `model` (a module, holder, shared_ptr or AnyModule).
  ///
  /// @throws Error for an empty pattern list or pattern, a pattern that matches no module (naming
  ///         the closest names) or a ModuleList/ModuleDict; nothing is installed then.
  template <class M>
    requires detail::summary::SummaryModel<M>
  FeatureCapture(M& model, const PatternList& patterns)
      : builder_(std::make_unique<detail::capture::Builder>(detail::capture::root_of(model, "FeatureCapture"))),
        selected_(detail::capture::select_modules("FeatureCapture", patterns, builder_->nodes())) {
    builder_->keep_outputs(selected_);
    builder_->open_call(0);
    observation_ = std::make_unique<detail::summary::ObservationScope>(builder_->recorder());
    region_ = std::make_unique<detail::summary::RecordingRegion>(builder_->recorder());
  }

  /// The outputs of the selected modules' calls in the forward calls since construction, in call
  /// order. Stops recording; a second call returns the same outputs.
  ///
  /// @throws Error for a selected module never called, or whose output cannot be identified
  ///         (see capture()).
  [[nodiscard]] const CapturedOutputs& outputs() {
    if (region_ != nullptr) {
      region_.reset();
      observation_.reset();
      builder_->attribute_region(0);
      builder_->finish();
      try {
        result_ = detail::capture::collect("FeatureCapture::outputs", *builder_, selected_);
      } catch (const Error& error) {
        error_ = error.what();
      }
    }
    TORCHKIT_CHECK(error_.empty(), "{}", error_);
    return result_;
  }

  /// Whether operators are still being recorded (outputs() not called yet).
  [[nodiscard]] bool recording() const noexcept { return region_ != nullptr; }

  ~FeatureCapture() {
    region_.reset();
    observation_.reset();
  }
  FeatureCapture(const FeatureCapture&) = delete;
  FeatureCapture& operator=(const FeatureCapture&) = delete;
  FeatureCapture(FeatureCapture&&) = delete;
  FeatureCapture& operator=(FeatureCapture&&) = delete;

 private:
  std::unique_ptr<detail::capture::Builder> builder_;
  std::vector<bool> selected_;
  std::unique_ptr<detail::summary::ObservationScope> observation_;
  std::unique_ptr<detail::summary::RecordingRegion> region_;
  CapturedOutputs result_;
  std::string error_;  ///< why outputs() failed (it fails the same way when called again)
};

}  // namespace torchkit
