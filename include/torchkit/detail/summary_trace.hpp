#pragma once
/// @file detail/summary_trace.hpp
/// Internals of summary.hpp: observes the ATen operators a forward pass runs, with thread-local
/// `at::RecordFunction` callbacks, and records for each top-level operator which module state
/// (parameters, buffers) it read and the shape of its first tensor output.
///
/// Only operators at nesting depth 0 are recorded (`aten::linear` is recorded, the `aten::t` and
/// `aten::addmm` it runs inside are not). The callbacks are thread-local, so two threads can
/// observe two forward passes at once; an operator that runs on another thread (inside an
/// intra-op parallel region) finds no recorder there and is ignored.

#include <torchkit/detail/config.hpp>

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <ATen/record_function.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace torchkit::detail::summary_impl {

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

/// One top-level operator of the observed forward pass.
struct OpRecord {
  std::string name;                   ///< "aten::conv2d"
  std::vector<int> state_read;        ///< indices of the module state (parameters, buffers) it read
  bool reads_data = false;            ///< it read a tensor that is not module state
  std::vector<int64_t> output_shape;  ///< shape of the first tensor output
  int64_t output_element_size = 0;    ///< bytes per element of that output
  bool has_output = false;
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
  int depth = 0;              ///< RecordFunction nesting depth on the recording thread
  OpRecord pending;           ///< the top-level operator now running

  void start_region() {
    ops.clear();
    derived_state.clear();
    derived_tensors.clear();
    depth = 0;
    recording = true;
  }
  void stop_region() { recording = false; }

  void note_tensor(const at::Tensor& tensor) {
    if (!tensor.defined()) {
      return;
    }
    const c10::TensorImpl* impl = tensor.unsafeGetTensorImpl();
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
    for (const c10::IValue& value : inputs_of(function)) {
      note_input(value);
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
    pending.output_element_size = static_cast<int64_t>(output.element_size());
    if (pending.prepares_state()) {
      derived_state.emplace(output.unsafeGetTensorImpl(), pending.state_read);
      derived_tensors.push_back(std::move(output));
    }
    ops.push_back(std::move(pending));
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
  if (--recorder->depth == 0) {
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
                                                                      .scopes({at::RecordScope::FUNCTION}))) {
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

}  // namespace torchkit::detail::summary_impl
