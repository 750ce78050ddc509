#pragma once
/// @file detail/summary_trace.hpp
/// Stage 1 of summary.hpp, running the model: makes the inputs, runs one forward pass (in eval
/// mode, under no-grad) and sees what it does. A `Sequential` is run child by child; inside any
/// other forward the ATen operators it runs are observed with thread-local
/// `at::RecordFunction` callbacks, recording for each top-level operator which module state
/// (parameters, buffers) it read and the shape of its first tensor output. What is seen is
/// handed to the row builder (detail/summary_build.hpp) as it happens: `open_call`,
/// `attribute_region`, `set_output`.
///
/// Only operators at nesting depth 0 are recorded (`aten::linear` is recorded, the `aten::t` and
/// `aten::addmm` it runs inside are not). The callbacks are thread-local, so two threads can
/// observe two forward passes at once; an operator that runs on another thread (inside an
/// intra-op parallel region) finds no recorder there and is ignored.
///
/// A new kind of model argument or forward signature goes here (forward_target, can_run,
/// run_model). The drivers are templates over the builder so that this header compiles on its
/// own.

#include <torchkit/concepts.hpp>
#include <torchkit/detail/config.hpp>
#include <torchkit/detail/shape.hpp>
#include <torchkit/error.hpp>
#include <torchkit/grad_mode.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <ATen/record_function.h>
#include <c10/util/Exception.h>
#include <c10/util/Type.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

namespace torchkit::detail::summary {

// --- reading RecordFunction::inputs() -----------------------------------------------------
//
// `RecordFunction::inputs()` asserts a debug-only flag when the including code is compiled
// without NDEBUG. LibTorch itself is built with NDEBUG and never sets that flag, so in a Debug
// build of a user's program the public accessor throws for every operator. The member it reads
// is the same either way; in Debug builds it is read through a member pointer obtained by the
// standard's explicit-instantiation access rule ([temp.spec.general]/6), which is what the
// accessor itself returns in Release builds. (Each translation unit that includes this header
// repeats the explicit instantiation; the class has no members but an inline friend, so there is
// nothing to link twice. LibTorch 2.x keeps the member and the assertion.)

using RecordFunctionInputs = c10::ArrayRef<const c10::IValue>;

#ifndef NDEBUG
struct RecordFunctionInputsMember {
  using type = RecordFunctionInputs at::RecordFunction::*;
  friend type record_function_inputs_member(RecordFunctionInputsMember);
};

template <class Tag, typename Tag::type Member>
struct ExposePrivateMember {
  friend typename Tag::type record_function_inputs_member(Tag) { return Member; }
};

template struct ExposePrivateMember<RecordFunctionInputsMember, &at::RecordFunction::inputs_>;
#endif

/// The boxed inputs of the operator a start callback is called for.
inline RecordFunctionInputs inputs_of(const at::RecordFunction& function) {
#ifdef NDEBUG
  return function.inputs();
#else
  return function.*record_function_inputs_member(RecordFunctionInputsMember{});
#endif
}

// --- what is recorded ---------------------------------------------------------------------

/// The mult-adds of a matmul-like operator, from the shapes of its inputs (Count::Operators):
/// `fixed`, plus `per_output_element` times the elements of its output (known at its end).
struct OperatorCost {
  bool counted = false;                ///< a matmul-like operator whose mult-adds the shapes determine
  std::int64_t fixed = 0;
  std::int64_t per_output_element = 0;
};

namespace operators {

inline const at::Tensor* tensor_at(RecordFunctionInputs inputs, std::size_t index) {
  return index < inputs.size() && inputs[index].isTensor() && inputs[index].toTensor().defined()
             ? &inputs[index].toTensor()
             : nullptr;
}

inline std::int64_t last_size(const at::Tensor& tensor) { return tensor.dim() == 0 ? 1 : tensor.size(-1); }

/// The rows a matrix product runs over: the elements of `tensor` over its last dimension.
inline std::int64_t rows_of(const at::Tensor& tensor) {
  const std::int64_t last = last_size(tensor);
  return last == 0 ? 0 : tensor.numel() / last;
}

/// `einsum` with one or two operands where every label of one operand that the other lacks is
/// kept in the output (nothing is summed before the product): the product of all label sizes.
/// Other equations (three or more operands: the order of the contractions decides) are not
/// counted.
inline OperatorCost einsum_cost(RecordFunctionInputs inputs) {
  if (inputs.size() < 2 || !inputs[0].isString() || !inputs[1].isTensorList()) {
    return {};
  }
  const std::string equation = inputs[0].toStringRef();
  const std::vector<at::Tensor> operands = inputs[1].toTensorList().vec();
  const std::size_t arrow = equation.find("->");
  const std::string lhs = equation.substr(0, arrow);
  const std::string output = arrow == std::string::npos ? std::string() : equation.substr(arrow + 2);
  std::vector<std::string> terms;
  for (std::size_t start = 0;;) {
    const std::size_t comma = lhs.find(',', start);
    terms.push_back(lhs.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) {
      break;
    }
    start = comma + 1;
  }
  if (terms.size() != operands.size() || operands.empty() || operands.size() > 2) {
    return {};
  }
  if (operands.size() == 1) {
    return {true, 0, 0};  // one operand: sums and permutations, no products
  }
  std::array<std::int64_t, 128> sizes{};
  std::array<std::array<bool, 128>, 2> present{};
  std::vector<std::int64_t> ellipsis;  // broadcast sizes of "...", aligned right
  for (std::size_t operand = 0; operand < 2; ++operand) {
    std::string term;
    for (const char c : terms[operand]) {
      if (c != ' ') {
        term.push_back(c);
      }
    }
    const at::Tensor& tensor = operands[operand];
    const std::size_t dots = term.find("...");
    const std::size_t labels = term.size() - (dots == std::string::npos ? 0 : 3);
    if (labels > static_cast<std::size_t>(tensor.dim())) {
      return {};
    }
    const std::int64_t covered = tensor.dim() - static_cast<std::int64_t>(labels);
    std::int64_t dim = 0;
    for (std::size_t i = 0; i < term.size(); ++i) {
      if (dots != std::string::npos && i == dots) {
        std::vector<std::int64_t> own(tensor.sizes().begin() + dim, tensor.sizes().begin() + dim + covered);
        if (own.size() > ellipsis.size()) {
          ellipsis.insert(ellipsis.begin(), own.size() - ellipsis.size(), 1);
        }
        for (std::size_t k = 0; k < own.size(); ++k) {
          std::int64_t& target = ellipsis[ellipsis.size() - own.size() + k];
          target = std::max(target, own[k]);
        }
        dim += covered;
        i += 2;
        continue;
      }
      const auto label = static_cast<unsigned char>(term[i]);
      if (label >= 128) {
        return {};
      }
      sizes[label] = std::max(sizes[label], tensor.size(dim));
      present[operand][label] = true;
      ++dim;
    }
  }
  std::int64_t total = 1;
  for (const std::int64_t size : ellipsis) {
    total *= size;
  }
  for (std::size_t label = 0; label < 128; ++label) {
    if (!present[0][label] && !present[1][label]) {
      continue;
    }
    const bool in_output = arrow == std::string::npos ? present[0][label] != present[1][label]
                                                      : output.find(static_cast<char>(label)) != std::string::npos;
    if (present[0][label] != present[1][label] && !in_output) {
      return {};  // summed out of one operand before the product: not determined by the shapes
    }
    total *= sizes[label];
  }
  return {true, total, 0};
}

/// The mult-adds of one operator, from its inputs: the products of matrix multiplications and
/// convolutions (additions of a bias, activations, softmax not counted, as fvcore counts).
inline OperatorCost cost_of(std::string_view name, RecordFunctionInputs inputs) {
  if (!name.starts_with("aten::")) {
    return {};
  }
  name.remove_prefix(6);
  const at::Tensor* first = tensor_at(inputs, 0);
  const at::Tensor* second = tensor_at(inputs, 1);
  // Matrix products: every output element is a dot product over the shared dimension K.
  if (name == "linear" || name == "matmul" || name == "mm" || name == "bmm" || name == "mv" || name == "dot" ||
      name == "vdot") {
    return first != nullptr ? OperatorCost{true, 0, last_size(*first)} : OperatorCost{};
  }
  if (name == "addmm" || name == "baddbmm" || name == "addmv") {
    return second != nullptr ? OperatorCost{true, 0, last_size(*second)} : OperatorCost{};
  }
  if (name == "addbmm") {  // (B, M, K) x (B, K, N) summed over B into (M, N)
    return second != nullptr && second->dim() == 3 ? OperatorCost{true, 0, second->size(0) * second->size(2)}
                                                   : OperatorCost{};
  }
  // Convolutions: each output element reads (C_in / groups) x kernel inputs; a transposed one
  // spreads each input element over (C_out / groups) x kernel outputs.
  const bool transposed_call = name.starts_with("conv_transpose");
  bool convolution = name == "conv1d" || name == "conv2d" || name == "conv3d" || transposed_call;
  bool transposed = transposed_call;
  if (name == "convolution" || name == "_convolution") {
    convolution = true;
    transposed = inputs.size() > 6 && inputs[6].isBool() && inputs[6].toBool();
  }
  if (convolution) {
    if (first == nullptr || second == nullptr || second->dim() < 1 || second->size(0) == 0) {
      return {};
    }
    const std::int64_t per_channel = second->numel() / second->size(0);
    return transposed ? OperatorCost{true, first->numel() * per_channel, 0} : OperatorCost{true, 0, per_channel};
  }
  if (name == "scaled_dot_product_attention") {  // Q K^T and the weighted sum of V
    const at::Tensor* value = tensor_at(inputs, 2);
    if (first == nullptr || second == nullptr || value == nullptr || first->dim() < 2 || second->dim() < 2) {
      return {};
    }
    const std::int64_t source = second->size(-2);
    return {true, rows_of(*first) * source * (last_size(*first) + last_size(*value)), 0};
  }
  // Recurrent layers: every step of every row runs a product with each weight matrix (the
  // 2-D tensors of the parameter list, all layers and directions).
  if (name == "lstm" || name == "gru" || name == "rnn_tanh" || name == "rnn_relu") {
    const c10::IValue* params = nullptr;
    for (const c10::IValue& value : inputs) {
      if (value.isTensorList()) {
        params = &value;
      }
    }
    if (first == nullptr || params == nullptr) {
      return {};
    }
    std::int64_t weights = 0;
    for (const at::Tensor& tensor : params->toTensorList().vec()) {
      weights += tensor.dim() == 2 ? tensor.numel() : 0;
    }
    return {true, rows_of(*first) * weights, 0};
  }
  if (name == "lstm_cell" || name == "gru_cell" || name == "rnn_tanh_cell" || name == "rnn_relu_cell") {
    const at::Tensor* input_weight = tensor_at(inputs, 2);
    const at::Tensor* hidden_weight = tensor_at(inputs, 3);
    if (first == nullptr || input_weight == nullptr || hidden_weight == nullptr) {
      return {};
    }
    return {true, rows_of(*first) * (input_weight->numel() + hidden_weight->numel()), 0};
  }
  if (name == "einsum") {
    return einsum_cost(inputs);
  }
  return {};
}

}  // namespace operators

/// One top-level operator of the observed forward pass.
struct OpRecord {
  std::string name;                   ///< "aten::conv2d"
  std::vector<int> state_read;        ///< indices of the module state (parameters, buffers) it read
  bool reads_data = false;            ///< it read a tensor that is not module state
  std::vector<std::int64_t> output_shape;  ///< shape of the first tensor output
  std::vector<std::int64_t> input_shape;   ///< shape of the first tensor it read that is no module state
  std::int64_t output_element_size = 0;    ///< bytes per element of that output
  bool has_output = false;
  OperatorCost cost;                  ///< Count::Operators: how its mult-adds are computed
  std::int64_t mult_adds = 0;         ///< Count::Operators: its mult-adds (0 where not counted)
  at::Tensor output;                  ///< capture: its first tensor output
  std::int64_t output_version = 0;    ///< capture: that tensor's version counter at the operator's end
  std::vector<const c10::TensorImpl*> inputs;  ///< capture: the tensors it read
  /// Only reads module state (e.g. `weight.t()`): prepares state, is no module call itself; its
  /// output counts as the state it was derived from.
  bool prepares_state() const { return !reads_data && !state_read.empty(); }
};

/// Per-forward-pass state of the observer. One per summary call; lives on that call's stack.
struct Recorder {
  /// TensorImpl of every parameter and buffer of the model -> its state index.
  std::unordered_map<const c10::TensorImpl*, int> state_index;
  /// Tensors computed from module state only (`weight.t()`), kept alive while recording so that
  /// their TensorImpl addresses stay unique -> the state they were derived from.
  std::unordered_map<const c10::TensorImpl*, std::vector<int>> derived_state;
  std::vector<at::Tensor> derived_tensors;

  std::vector<OpRecord> ops;  ///< top-level operators, in the order they ran
  bool recording = false;     ///< only operators run while this is set are recorded
  bool count_operators = false;  ///< compute each operator's mult-adds (Count::Operators)
  bool keep_outputs = false;     ///< keep each operator's output tensor and inputs until it is attributed (capture)
  /// Called after each recorded operator with `listener`: the row builder attributes it at once
  /// (so that capture can let go of every output that is no selected call's output any more).
  void (*on_recorded)(void* listener) = nullptr;
  void* listener = nullptr;
  std::uint64_t regions = 0;     ///< regions started so far (a new region restarts `ops`)
  bool skipping = false;         ///< the depth-0 callback now running is no operator (a backward node)
  int depth = 0;              ///< RecordFunction nesting depth on the recording thread
  OpRecord pending;           ///< the top-level operator now running

  void start_region() {
    ops.clear();
    derived_state.clear();
    derived_tensors.clear();
    depth = 0;
    ++regions;
    recording = true;
  }
  void stop_region() { recording = false; }

  void note_tensor(const at::Tensor& tensor) {
    if (!tensor.defined()) {
      return;
    }
    const c10::TensorImpl* impl = tensor.unsafeGetTensorImpl();
    if (keep_outputs) {
      pending.inputs.push_back(impl);
    }
    if (const auto found = state_index.find(impl); found != state_index.end()) {
      pending.state_read.push_back(found->second);
      return;
    }
    if (!derived_state.empty()) {
      if (const auto found = derived_state.find(impl); found != derived_state.end()) {
        pending.state_read.insert(pending.state_read.end(), found->second.begin(), found->second.end());
        return;
      }
    }
    if (!pending.reads_data) {
      const auto sizes = tensor.sizes();
      pending.input_shape.assign(sizes.begin(), sizes.end());
    }
    pending.reads_data = true;
  }

  void note_input(const c10::IValue& value) {
    if (value.isTensor()) {
      note_tensor(value.toTensor());
    } else if (value.isTensorList()) {
      for (const at::Tensor& tensor : value.toTensorList().vec()) {
        note_tensor(tensor);
      }
    } else if (value.isList()) {
      for (const c10::IValue& element : value.toListRef()) {
        if (element.isTensor()) {
          note_tensor(element.toTensor());
        }
      }
    }
  }

  void start(const at::RecordFunction& function) {
    pending = OpRecord{};
    pending.name = function.name();
    const RecordFunctionInputs inputs = inputs_of(function);
    for (const c10::IValue& value : inputs) {
      note_input(value);
    }
    if (count_operators) {
      pending.cost = operators::cost_of(pending.name, inputs);
    }
  }

  void end(const at::RecordFunction& function) {
    if (pending.state_read.empty() && !pending.reads_data) {
      return;  // factory operators (zeros, empty, rand) read nothing a module owns or computed
    }
    at::Tensor output;
    for (const c10::IValue& value : function.outputs()) {
      if (value.isTensor()) {
        output = value.toTensor();
        break;
      }
      if (value.isTensorList()) {
        const auto list = value.toTensorList();
        if (list.size() > 0) {
          output = list.get(0);
          break;
        }
      }
    }
    if (!output.defined()) {
      return;  // no tensor result (aten::equal, aten::item): nothing to attribute
    }
    pending.has_output = true;
    const auto sizes = output.sizes();
    pending.output_shape.assign(sizes.begin(), sizes.end());
    pending.output_element_size = static_cast<std::int64_t>(output.element_size());
    if (pending.cost.counted) {
      pending.mult_adds = pending.cost.fixed + pending.cost.per_output_element * output.numel();
    }
    if (keep_outputs) {
      pending.output = output;
      pending.output_version = static_cast<std::int64_t>(output._version());
    }
    if (pending.prepares_state()) {
      derived_state.emplace(output.unsafeGetTensorImpl(), pending.state_read);
      derived_tensors.push_back(std::move(output));
    }
    ops.push_back(std::move(pending));
    if (on_recorded != nullptr) {
      on_recorded(listener);
    }
  }
};

/// The recorder of the summary running on this thread (null when none is).
inline Recorder*& current_recorder() {
  thread_local Recorder* recorder = nullptr;
  return recorder;
}

inline std::unique_ptr<at::ObserverContext> on_operator_start(const at::RecordFunction& function) {
  Recorder* recorder = current_recorder();
  if (recorder == nullptr || !recorder->recording) {
    return nullptr;
  }
  if (recorder->depth++ == 0) {
    // A backward node (an autograd function run by backward() on this thread) is no operator of
    // the forward pass: it and the operators inside it are not recorded.
    recorder->skipping = function.scope() != at::RecordScope::FUNCTION;
    if (recorder->skipping) {
      return nullptr;
    }
    try {
      recorder->start(function);
    } catch (const std::exception&) {
      recorder->pending = OpRecord{};  // never let an exception escape into the dispatcher
    }
  }
  return nullptr;
}

inline void on_operator_end(const at::RecordFunction& function, at::ObserverContext* /*context*/) {
  Recorder* recorder = current_recorder();
  if (recorder == nullptr || !recorder->recording || recorder->depth == 0) {
    return;
  }
  if (--recorder->depth == 0 && !recorder->skipping) {
    try {
      recorder->end(function);
    } catch (const std::exception&) {
      recorder->pending = OpRecord{};
    }
  }
}

/// RAII: installs the thread-local operator callbacks and makes `recorder` this thread's
/// recorder; removes the callbacks and restores the previous recorder on destruction, also
/// during exception unwinding. A summary run inside another one's forward reuses the callbacks
/// already installed. Non-copyable, non-movable.
class ObservationScope {
 public:
  explicit ObservationScope(Recorder& recorder)
      : previous_(current_recorder()),
        record_function_enabled_(true),
        handle_(previous_ != nullptr ? at::INVALID_CALLBACK_HANDLE
                                     : at::addThreadLocalCallback(at::RecordFunctionCallback(&on_operator_start, &on_operator_end)
                                                                      .needsInputs(true)
                                                                      .needsOutputs(true)
                                                                      .scopes({at::RecordScope::FUNCTION,
                                                                               at::RecordScope::BACKWARD_FUNCTION}))) {
    current_recorder() = &recorder;
  }
  ~ObservationScope() {
    if (handle_ != at::INVALID_CALLBACK_HANDLE) {
      at::removeCallback(handle_);
    }
    current_recorder() = previous_;
  }
  ObservationScope(const ObservationScope&) = delete;
  ObservationScope& operator=(const ObservationScope&) = delete;
  ObservationScope(ObservationScope&&) = delete;
  ObservationScope& operator=(ObservationScope&&) = delete;

 private:
  Recorder* previous_;
  at::RecordFunctionGuard record_function_enabled_;
  at::CallbackHandle handle_;
};

/// RAII: records the operators run while it lives into `recorder` (one region of the forward
/// pass); stops recording on destruction.
class RecordingRegion {
 public:
  explicit RecordingRegion(Recorder& recorder) : recorder_(recorder) { recorder_.start_region(); }
  ~RecordingRegion() { recorder_.stop_region(); }
  RecordingRegion(const RecordingRegion&) = delete;
  RecordingRegion& operator=(const RecordingRegion&) = delete;
  RecordingRegion(RecordingRegion&&) = delete;
  RecordingRegion& operator=(RecordingRegion&&) = delete;

 private:
  Recorder& recorder_;
};

// --- running the model ---------------------------------------------------------------------

template <class M>
concept AnyModuleModel = std::same_as<std::remove_cvref_t<M>, torch::nn::AnyModule>;

/// What summary() accepts: a module, a module holder, a shared_ptr to a module, an AnyModule.
template <class M>
concept SummaryModel = ModuleLike<M> || AnyModuleModel<M>;

/// The object whose `forward` summary calls: the module itself in its concrete type.
template <class M>
decltype(auto) forward_target(M& model) {
  using Model = std::remove_cvref_t<M>;
  if constexpr (AnyModuleModel<M>) {
    TORCHKIT_CHECK(!model.is_empty(), "summary: the AnyModule is empty");
    return (model);
  } else if constexpr (is_module_holder_v<Model>) {
    TORCHKIT_CHECK(!model.is_empty(), "summary: the module holder is empty (it was constructed with nullptr)");
    return *model;
  } else if constexpr (is_module_pointer_v<Model>) {
    TORCHKIT_CHECK(model != nullptr, "summary: the module pointer is null");
    return *model;
  } else {
    return (model);
  }
}

/// The module as a Sequential when it is exactly one (not a subclass with a forward of its own):
/// then summary walks its children itself.
inline torch::nn::SequentialImpl* exact_sequential(torch::nn::Module* module) {
  return module != nullptr && typeid(*module) == typeid(torch::nn::SequentialImpl)
             ? dynamic_cast<torch::nn::SequentialImpl*>(module)
             : nullptr;
}

template <class M>
torch::nn::Module& root_module(M& model) {
  if constexpr (AnyModuleModel<M>) {
    TORCHKIT_CHECK(!model.is_empty(), "summary: the AnyModule is empty");
    return *model.ptr();
  } else {
    return module_of(model, "summary");
  }
}

/// The shape and element size of the first tensor in what a forward returned.
struct OutputShape {
  std::vector<std::int64_t> shape;
  std::int64_t element_size = 0;
  at::Tensor tensor;  ///< the tensor itself (capture keeps it)
};

inline std::optional<OutputShape> shape_of(const at::Tensor& tensor) {
  if (!tensor.defined()) {
    return std::nullopt;
  }
  const auto sizes = tensor.sizes();
  return OutputShape{std::vector<std::int64_t>(sizes.begin(), sizes.end()), static_cast<std::int64_t>(tensor.element_size()),
                     tensor};
}

template <class T>
inline constexpr bool is_tuple_v = false;
template <class... T>
inline constexpr bool is_tuple_v<std::tuple<T...>> = true;
template <class A, class B>
inline constexpr bool is_tuple_v<std::pair<A, B>> = true;

template <class T>
std::optional<OutputShape> first_output(T& value) {
  using Value = std::remove_cvref_t<T>;
  if constexpr (std::is_same_v<Value, at::Tensor>) {
    return shape_of(value);
  } else if constexpr (is_tuple_v<Value>) {
    std::optional<OutputShape> found;
    std::apply([&](auto&... elements) { ((found = found ? found : first_output(elements)), ...); }, value);
    return found;
  } else if constexpr (std::is_same_v<Value, std::vector<at::Tensor>>) {
    return value.empty() ? std::nullopt : shape_of(value.front());
  } else if constexpr (std::is_same_v<Value, torch::nn::AnyValue>) {
    if (auto* tensor = value.template try_get<at::Tensor>()) {
      return shape_of(*tensor);
    }
    if (auto* lstm = value.template try_get<std::tuple<at::Tensor, std::tuple<at::Tensor, at::Tensor>>>()) {
      return shape_of(std::get<0>(*lstm));
    }
    if (auto* pair = value.template try_get<std::tuple<at::Tensor, at::Tensor>>()) {
      return shape_of(std::get<0>(*pair));
    }
    if (auto* tensors = value.template try_get<std::vector<at::Tensor>>()) {
      return tensors->empty() ? std::nullopt : shape_of(tensors->front());
    }
    return std::nullopt;
  } else {
    return std::nullopt;
  }
}

/// Sets a call's output to the last recorded operator's output (for a forward that returns
/// nothing, or something that is no tensor and no tuple of tensors).
template <class Builder>
void set_output_from_region(Builder& builder, int row) {
  if (const OpRecord* op = builder.last_output_of_region()) {
    builder.set_output(row, op->output_shape, op->output_element_size);
  }
}

/// Sets a call's output: what the forward returned, else the last operator's output.
template <class Builder, class T>
void set_call_output(Builder& builder, int row, T& result) {
  if (auto output = first_output(result)) {
    builder.set_output(row, std::move(output->shape), output->element_size);
    builder.set_output_tensor(row, output->tensor);
  } else {
    set_output_from_region(builder, row);
  }
}

/// Calls `call` (a forward) as the region of `node`'s call in `row`, then attributes the
/// operators it ran to `node`'s submodules.
template <class Builder, class Call>
void run_region(Builder& builder, int node, int row, Call&& call) {
  using Result = decltype(call());
  if constexpr (std::is_void_v<Result>) {
    {
      RecordingRegion region(builder.recorder());
      call();
    }
    builder.attribute_region(node);
    set_output_from_region(builder, row);
  } else {
    std::optional<std::decay_t<Result>> result;
    {
      RecordingRegion region(builder.recorder());
      result.emplace(call());
    }
    builder.attribute_region(node);
    set_call_output(builder, row, *result);
  }
}

template <class Builder, class... Args>
torch::nn::AnyValue walk_sequential(Builder& builder, int node, torch::nn::SequentialImpl& sequential,
                                    Args&&... inputs);

/// Sets the output of a walked Sequential's call: what it returned, else its last child's output.
template <class Builder>
void set_sequential_output(Builder& builder, int row, torch::nn::AnyValue& output) {
  if (auto shape = first_output(output)) {
    builder.set_output(row, std::move(shape->shape), shape->element_size);
    builder.set_output_tensor(row, shape->tensor);
    return;
  }
  const auto& rows = builder.rows();
  const int depth = rows[static_cast<std::size_t>(row)].depth;
  for (std::size_t i = rows.size(); i-- > static_cast<std::size_t>(row) + 1;) {
    if (rows[i].depth == depth + 1) {
      builder.set_output(row, rows[i].output_shape, rows[i].output_element_size);
      return;
    }
  }
}

/// Sets a call's input shape: the first tensor among its arguments.
template <class Builder, class... Args>
void set_call_input(Builder& builder, int row, Args&... inputs) {
  std::optional<OutputShape> found;
  ((found = found ? found : first_output(inputs)), ...);
  if (found) {
    builder.set_input(row, std::move(found->shape));
  }
}

/// Runs one child of a Sequential as its own call.
template <class Builder, class... Args>
torch::nn::AnyValue run_sequential_child(Builder& builder, int node, torch::nn::AnyModule& child,
                                         Args&&... inputs) {
  const int row = builder.open_call(node);
  set_call_input(builder, row, inputs...);
  if (auto* sequential = exact_sequential(child.ptr().get())) {
    torch::nn::AnyValue output = walk_sequential(builder, node, *sequential, std::forward<Args>(inputs)...);
    set_sequential_output(builder, row, output);
    return output;
  }
  std::optional<torch::nn::AnyValue> output;
  {
    RecordingRegion region(builder.recorder());
    output.emplace(child.any_forward(std::forward<Args>(inputs)...));
  }
  builder.attribute_region(node);
  set_call_output(builder, row, *output);
  return std::move(*output);
}

/// Runs a Sequential child by child, as `Sequential::forward` does.
template <class Builder, class... Args>
torch::nn::AnyValue walk_sequential(Builder& builder, int node, torch::nn::SequentialImpl& sequential,
                                    Args&&... inputs) {
  const std::vector<int> children = builder.nodes()[static_cast<std::size_t>(node)].children;
  if (sequential.is_empty()) {
    throw std::runtime_error("Cannot call forward() on an empty Sequential");
  }
  TORCHKIT_CHECK(children.size() == sequential.size(),
                 "summary: the Sequential '{}' has {} modules but {} registered children",
                 builder.nodes()[static_cast<std::size_t>(node)].name, sequential.size(), children.size());
  auto module = sequential.begin();
  torch::nn::AnyValue value = run_sequential_child(builder, children[0], *module, std::forward<Args>(inputs)...);
  std::size_t index = 1;
  for (++module; module != sequential.end(); ++module, ++index) {
    value = run_sequential_child(builder, children[index], *module, std::move(value));
  }
  return value;
}

/// Thrown (and passed on unchanged) where the model's forward does not take the inputs.
class ForwardSignatureError : public Error {
 public:
  using Error::Error;
};

/// The error for a model whose forward summary cannot call with the inputs.
template <class Target>
ForwardSignatureError forward_signature_error(const std::string& what, const std::string& tried) {
  if constexpr (std::is_same_v<Target, torch::nn::Module>) {
    return ForwardSignatureError(fmt::format(
        "summary: the model is passed as torch::nn::Module, which has no forward(); pass it as its own type "
        "(Net, std::shared_ptr<NetImpl>) or as a torch::nn::AnyModule; inputs tried: {}",
        tried));
  } else {
    return ForwardSignatureError(
        fmt::format("summary: {}::forward does not take {}; inputs tried: {}", c10::demangle(typeid(Target).name()), what, tried));
  }
}

/// Whether summary can run the model on arguments of these types: a forward that takes them,
/// or a Sequential or AnyModule (they check the arguments when called).
template <class M, class... Args>
bool can_run(M& model) {
  using Target = std::remove_cvref_t<decltype(forward_target(model))>;
  if constexpr (AnyModuleModel<M> || std::is_same_v<Target, torch::nn::SequentialImpl> ||
                requires(Target& target) { target.forward(std::declval<Args>()...); }) {
    return true;
  } else {
    return exact_sequential(&root_module(model)) != nullptr;
  }
}

/// Runs the model's forward on `inputs...` as the model's call (row 0). A Sequential is walked
/// child by child; any other forward is one region.
template <class Builder, class M, class... Args>
void run_model(Builder& builder, M& model, Args&&... inputs) {
  auto& target = forward_target(model);
  using Target = std::remove_cvref_t<decltype(target)>;
  const int row = builder.open_call(0);
  set_call_input(builder, row, inputs...);
  if (auto* sequential = exact_sequential(&root_module(model))) {
    torch::nn::AnyValue output = walk_sequential(builder, 0, *sequential, std::forward<Args>(inputs)...);
    set_sequential_output(builder, row, output);
  } else if constexpr (AnyModuleModel<M>) {
    run_region(builder, 0, row, [&] { return target.any_forward(std::forward<Args>(inputs)...); });
  } else if constexpr (requires { target.forward(std::forward<Args>(inputs)...); }) {
    run_region(builder, 0, row, [&]() -> decltype(auto) { return target.forward(std::forward<Args>(inputs)...); });
  } else {
    throw forward_signature_error<Target>("these arguments", "");  // can_run() said no before
  }
}

inline constexpr std::size_t max_tensor_inputs = 8;

/// Calls run_model with the tensors of `inputs` as separate arguments.
template <std::size_t N = 1, class Builder, class M>
void run_model_on_tensors(Builder& builder, M& model, std::vector<at::Tensor>& inputs, const std::string& tried) {
  if (inputs.size() == N) {
    [&]<std::size_t... I>(std::index_sequence<I...> /*unused*/) {
      if (!can_run<M, decltype(((void)I, inputs[0]))...>(model)) {
        using Target = std::remove_cvref_t<decltype(forward_target(model))>;
        throw forward_signature_error<Target>(fmt::format("{} tensor argument{}", N, N == 1 ? "" : "s"), tried);
      }
      run_model(builder, model, inputs[I]...);
    }(std::make_index_sequence<N>{});
  } else if constexpr (N < max_tensor_inputs) {
    run_model_on_tensors<N + 1>(builder, model, inputs, tried);
  } else {
    throw ForwardSignatureError(fmt::format("summary: at most {} inputs are supported, got {}; inputs tried: {}",
                                            max_tensor_inputs, inputs.size(), tried));
  }
}

/// The inputs as an error names them: "[2, 3, 224, 224], [2, 10] (Long)" (dtype where not float).
inline std::string describe_shapes(const std::vector<at::Tensor>& tensors) {
  std::string text;
  for (const at::Tensor& tensor : tensors) {
    text += (text.empty() ? "" : ", ") + detail::shape_string(tensor.sizes());
    if (tensor.scalar_type() != at::kFloat) {
      text += fmt::format(" ({})", c10::toString(tensor.scalar_type()));
    }
  }
  return text;
}

template <class T>
std::string describe_argument(const T& value) {
  using Value = std::remove_cvref_t<T>;
  if constexpr (std::is_same_v<Value, at::Tensor>) {
    return value.defined() ? detail::shape_string(value.sizes()) : "undefined tensor";
  } else if constexpr (std::is_same_v<Value, std::vector<at::Tensor>>) {
    return "[" + describe_shapes(value) + "]";
  } else if constexpr (std::is_arithmetic_v<Value>) {
    return fmt::format("{}", value);
  } else {
    return c10::demangle(typeid(Value).name());
  }
}

template <class T>
std::int64_t bytes_of_argument(const T& value) {
  using Value = std::remove_cvref_t<T>;
  if constexpr (std::is_same_v<Value, at::Tensor>) {
    return value.defined() ? static_cast<std::int64_t>(value.nbytes()) : 0;
  } else if constexpr (std::is_same_v<Value, std::vector<at::Tensor>>) {
    std::int64_t bytes = 0;
    for (const at::Tensor& tensor : value) {
      bytes += tensor.defined() ? static_cast<std::int64_t>(tensor.nbytes()) : 0;
    }
    return bytes;
  } else {
    return 0;
  }
}


/// What a failed forward pass most often means, for its message: the input size is per sample
/// (summary prepends the batch), and what the first layer with weights takes per sample —
/// `; input_size is per sample, without the batch dimension; the first layer, '0' (Conv2d),
/// takes [3, H, W]`.
inline std::string input_size_hint(const torch::nn::Module& root) {
  std::string first;
  const auto describe = [&](const std::string& name, const torch::nn::Module& module) -> bool {
    const auto layer = [&](std::string_view type, const std::string& shape) {
      first = fmt::format("; the first layer, '{}' ({}), takes {} per sample", name, type, shape);
      return true;
    };
    if (const auto* conv = dynamic_cast<const torch::nn::Conv1dImpl*>(&module)) {
      return layer("Conv1d", fmt::format("[{}, L]", conv->options.in_channels()));
    }
    if (const auto* conv = dynamic_cast<const torch::nn::Conv2dImpl*>(&module)) {
      return layer("Conv2d", fmt::format("[{}, H, W]", conv->options.in_channels()));
    }
    if (const auto* conv = dynamic_cast<const torch::nn::Conv3dImpl*>(&module)) {
      return layer("Conv3d", fmt::format("[{}, D, H, W]", conv->options.in_channels()));
    }
    if (const auto* linear = dynamic_cast<const torch::nn::LinearImpl*>(&module)) {
      return layer("Linear", fmt::format("[..., {}]", linear->options.in_features()));
    }
    return false;
  };
  if (!describe("(the model)", root)) {
    for (const auto& item : root.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
      if (describe(item.key(), *item.value())) break;
    }
  }
  return "; input_size is per sample, without the batch dimension (summary prepends SummaryOptions::batch_size)" +
         first;
}

/// Runs `run()` (the forward pass, driving `builder`) with the model in eval mode, under
/// no-grad, with the operator callbacks installed; restores everything, also when the forward
/// throws; then finishes the builder.
template <class Builder, class Run>
void run_forward_pass(Builder& builder, torch::nn::Module& root, const std::string& tried, Run&& run) {
  {
    EvalScope eval(root);
    NoGradScope no_grad;
    ObservationScope observation(builder.recorder());
    try {
      run();
    } catch (const ForwardSignatureError&) {
      throw;
    } catch (const c10::Error& error) {
      throw Error(fmt::format("summary: the forward pass of {} failed for input shapes {}: {}{}",
                              builder.nodes().front().type, tried, error.what_without_backtrace(),
                              input_size_hint(root)));
    } catch (const std::exception& error) {
      throw Error(fmt::format("summary: the forward pass of {} failed for input shapes {}: {}{}",
                              builder.nodes().front().type, tried, error.what(), input_size_hint(root)));
    }
  }
  builder.finish();
}

/// The device check for generated inputs: the model's tensors must be where the inputs go.
inline void check_model_device(const torch::nn::Module& root, c10::Device device) {
  auto mismatch = [&](const at::Tensor& tensor) {
    return tensor.device().type() != device.type() ||
           (device.has_index() && tensor.device().has_index() && tensor.device().index() != device.index());
  };
  for (const auto& item : root.named_parameters(/*recurse=*/true)) {
    TORCHKIT_CHECK(!mismatch(item.value()),
                   "summary: parameter '{}' is on {} but the inputs would be made on {}; pass "
                   "SummaryOptions{{.device = ...}} with the model's device",
                   item.key(), item.value().device().str(), device.str());
  }
  for (const auto& item : root.named_buffers(/*recurse=*/true)) {
    TORCHKIT_CHECK(!mismatch(item.value()),
                   "summary: buffer '{}' is on {} but the inputs would be made on {}; pass "
                   "SummaryOptions{{.device = ...}} with the model's device",
                   item.key(), item.value().device().str(), device.str());
  }
}

/// A generated input: uniform [0, 1) from a private generator (the global one is not touched)
/// for floating dtypes, zeros for integer dtypes (valid indices for an Embedding).
inline at::Tensor make_input(const std::vector<std::int64_t>& shape, at::ScalarType dtype, c10::Device device) {
  at::Tensor input;
  if (at::isFloatingType(dtype) || at::isComplexType(dtype)) {
    at::Generator generator = at::detail::createCPUGenerator(/*seed_val=*/0);
    const at::ScalarType drawn = dtype == at::kDouble ? at::kDouble : at::kFloat;
    input = at::rand(shape, generator, at::TensorOptions().dtype(drawn)).to(dtype);
  } else {
    input = at::zeros(shape, at::TensorOptions().dtype(dtype));
  }
  return device.is_cpu() ? input : input.to(device);
}

}  // namespace torchkit::detail::summary
