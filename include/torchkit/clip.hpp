#pragma once
/// @file clip.hpp
/// tip 3 — gradient clipping: clip_grad_norm_, clip_grad_value_, grad_norm and the ClipGrad
/// functor. Same results as `torch.nn.utils.clip_grad_norm_` / `clip_grad_value_`, computed in
/// one vectorised pass over the gradients' memory instead of two dispatcher calls per tensor.
///
///     loss.backward();
///     torchkit::clip_grad_norm_(model, /*max_norm=*/20, /*norm_type=*/2);
///     optimizer.step();

#include <torchkit/concepts.hpp>
#include <torchkit/detail/clip_kernels.hpp>
#include <torchkit/detail/config.hpp>
#include <torchkit/detail/shape.hpp>
#include <torchkit/error.hpp>

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <ostream>
#include <ranges>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace torchkit {

/// How clip_grad_norm_ and grad_norm work.
///
///     torchkit::clip_grad_norm_(model, 1.0, 2.0, {.error_if_nonfinite = true});
struct ClipOptions {
  /// Throw torchkit::Error, leaving every gradient unchanged, when the total norm is nan or
  /// inf (PyTorch's `error_if_nonfinite`). Needs the norm on the host: one device sync.
  bool error_if_nonfinite = false;
  /// The fast path (default): gradients grouped by device and dtype; on CPU one vectorised,
  /// parallel read pass and one scale pass over raw memory, with the best kernels the CPU has
  /// (portable, AVX, AVX2 or AVX-512, chosen at run time; every one gives the same bits); on
  /// other devices LibTorch's `_foreach` kernels. `false` takes the reference path: per-tensor
  /// `at::norm`, `stack`, `mul_`, literally what PyTorch does (the two agree to rounding).
  bool foreach = true;
};

namespace detail::clip {

/// A parameter's gradient to work on, with what the fast path needs to know about it read
/// once (reading tensor metadata costs a cache miss per tensor per pass). `grad` points into
/// the parameter's autograd metadata, which outlives the call.
struct Gradient {
  /// Leaves the fields unset (see Run's default constructor).
  // NOLINTNEXTLINE(modernize-use-equals-default): `= default` would zero-initialize
  [[gnu::always_inline]] Gradient() noexcept {}
  [[gnu::always_inline]] Gradient(const at::Tensor* grad_, c10::TensorImpl* impl_, void* data_, std::int64_t numel_,
                                  std::size_t index_, at::ScalarType dtype_, bool is_cpu_, bool tracked_) noexcept
      : grad(grad_), impl(impl_), data(data_), numel(numel_), index(index_), dtype(dtype_), is_cpu(is_cpu_),
        tracked(tracked_) {}

  const at::Tensor* grad;
  c10::TensorImpl* impl;
  void* data;  // first element, when on the CPU, dense (contiguous or permuted) and not empty
  std::int64_t numel;
  std::size_t index;  // the parameter's position in what the caller passed
  at::ScalarType dtype;
  bool is_cpu;
  bool tracked;  // requires grad (made with create_graph): in-place writes must bump its version
};

/// Runs are at most this long, so one large gradient spreads over threads.
inline constexpr std::int64_t run_elements = std::int64_t{1} << 16;

/// The gradients of the parameters a caller passed, validated, with the CPU ones laid out as
/// runs over raw memory while they are gathered (one walk over the tensors' metadata).
struct Collected {
  std::vector<Gradient> gradients;
  std::vector<std::string> names;      // one per parameter when a module was passed
  std::vector<at::Tensor> keep_alive;  // parameters a range produced by value
  /// The elements of every gradient with `data` (CPU, dense, not empty), in order, as runs of
  /// at most run_elements; runs[run_begin[k] .. run_begin[k + 1]) belong to gradients[k].
  std::vector<Run> runs;
  std::vector<std::size_t> run_begin{0};
  std::int64_t run_elements_total = 0;
  /// Whether `runs` covers every gradient: all on the CPU and dense (else the passes lay out
  /// their own runs, with contiguous copies and device groups).
  bool runs_cover_all = true;
  /// The dtype of the total norm: the gradients' dtypes promoted (c10::promoteTypes), the dtype
  /// PyTorch's total norm has (Undefined when there are no gradients).
  at::ScalarType promoted_dtype = at::ScalarType::Undefined;
  /// Whether some gradient requires grad (made with create_graph): see Gradient::tracked.
  bool any_tracked = false;
};

/// `parameter 3 ('fc.weight')`, or `parameter 3` when no names are known.
[[nodiscard]] inline std::string parameter_label(const Collected& collected, std::size_t index) {
  if (index < collected.names.size()) {
    return fmt::format("parameter {} ('{}')", index, collected.names[index]);
  }
  return fmt::format("parameter {}", index);
}

[[nodiscard]] inline bool is_supported_dtype(at::ScalarType dtype) noexcept {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16;
}

/// The gradient of `parameter` (an undefined tensor when it has none). TensorImpl::grad() reads
/// the autograd metadata directly; Tensor::grad() would add a dispatcher call (is_leaf).
[[nodiscard]] inline const at::Tensor& gradient_of(const at::Tensor& parameter) {
  return parameter.unsafeGetTensorImpl()->grad();
}

/// `a == b` for shapes, without a library call (shapes have a handful of dimensions).
[[nodiscard]] inline bool same_sizes(c10::IntArrayRef a, c10::IntArrayRef b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t d = 0; d < a.size(); ++d) {
    if (a[d] != b[d]) return false;
  }
  return true;
}

/// The first element of `impl`'s data (CPU, strided, not empty): what `Tensor::data_ptr()`
/// returns, without its out-of-line storage checks on LibTorch 1.13 (the caller has checked).
[[nodiscard, gnu::always_inline]] inline void* first_element(c10::TensorImpl* impl, at::ScalarType dtype) {
#if TORCHKIT_TORCH_AT_LEAST(2, 1)
  (void)dtype;
  return impl->mutable_data();  // (materialises a copy-on-write storage first)
#else
  const c10::Storage& storage = impl->unsafe_storage();
  if (!storage) return impl->data();  // (throws LibTorch's own error)
  return static_cast<char*>(storage.unsafeGetStorageImpl()->data_ptr().get()) +
         impl->storage_offset() * static_cast<std::int64_t>(c10::elementSize(dtype));
#endif
}

/// Calls `emit(first, size)` for the runs of `numel` contiguous elements of `dtype` from `data`
/// on, in order: at most run_elements each, so that one large gradient spreads over threads.
template <class Emit>
[[gnu::always_inline]] inline void split_runs(void* data, std::int64_t numel, at::ScalarType dtype, Emit&& emit) {
  if (numel <= run_elements) [[likely]] {
    emit(data, numel);
    return;
  }
  const auto element_size = static_cast<std::int64_t>(c10::elementSize(dtype));
  for (std::int64_t begin = 0; begin < numel; begin += run_elements) {
    emit(static_cast<void*>(static_cast<char*>(data) + begin * element_size), std::min(run_elements, numel - begin));
  }
}

/// Collected's gradients and runs written by position as the walk finds them: the arrays are
/// sized once for one run per parameter, so that recording the usual gradient is a few stores
/// (three push_backs per parameter, each reloading and storing its vector's end, were a tenth of
/// the walk, and GCC did not always inline them). finish() trims the arrays to what was written.
class GradientWriter {
 public:
  GradientWriter(Collected& collected, std::size_t parameters) : collected_(collected) {
    collected.gradients.resize(parameters);
    collected.run_begin.resize(parameters + 1);
    collected.runs.resize(parameters + 16);
    refresh();
  }

  GradientWriter(const GradientWriter&) = delete;
  GradientWriter& operator=(const GradientWriter&) = delete;

  /// The usual gradient: on the CPU, dense, with 1 to run_elements elements from `data` on.
  [[gnu::always_inline]] void add_one_run(const at::Tensor& grad, c10::TensorImpl* impl, std::size_t index, void* data,
                                          std::int64_t numel, at::ScalarType dtype) {
    const bool tracked = is_tracked(impl);
    note(dtype, tracked);
    gradients_[count_] = Gradient{&grad, impl, data, numel, index, dtype, true, tracked};
    runs_[run_count_] = Run{data, numel, count_, dtype};
    ++count_;
    ++run_count_;
    elements_ += numel;
    run_begin_[count_] = run_count_;
  }

  /// Any gradient: `data` is its first element when it is on the CPU, dense and not empty (it
  /// then gets runs of at most run_elements), else null. `parameters_left` is how many
  /// parameters the walk has still to visit after this one (each may need a run).
  void add(const at::Tensor& grad, std::size_t index, void* data, std::int64_t numel, at::ScalarType dtype,
           bool is_cpu, std::size_t parameters_left) {
    c10::TensorImpl* impl = grad.unsafeGetTensorImpl();
    const bool tracked = is_tracked(impl);
    note(dtype, tracked);
    gradients_[count_] = Gradient{&grad, impl, data, numel, index, dtype, is_cpu, tracked};
    if (data != nullptr) {
      const auto runs = static_cast<std::size_t>((numel + run_elements - 1) / run_elements);
      if (run_count_ + runs + parameters_left > collected_.runs.size()) {
        collected_.runs.resize(std::max(2 * collected_.runs.size(), run_count_ + runs + parameters_left));
        refresh();
      }
      split_runs(data, numel, dtype,
                 [&](void* first, std::int64_t size) { runs_[run_count_++] = Run{first, size, count_, dtype}; });
      elements_ += numel;
    } else if (numel > 0) {
      collected_.runs_cover_all = false;
    }
    if (!is_cpu) collected_.runs_cover_all = false;
    ++count_;
    run_begin_[count_] = run_count_;
  }

  /// Trims the arrays to what was written.
  void finish() {
    collected_.gradients.resize(count_);
    collected_.run_begin.resize(count_ + 1);
    collected_.runs.resize(run_count_);
    collected_.run_elements_total = elements_;
    collected_.promoted_dtype = promoted_;
    collected_.any_tracked = any_tracked_;
  }

 private:
  /// Whether `impl` requires grad (made with create_graph): in-place writes must then bump its
  /// version (autograd metadata first: no call for a plain gradient).
  [[nodiscard, gnu::always_inline]] static bool is_tracked(c10::TensorImpl* impl) {
    return impl->autograd_meta() != nullptr && impl->requires_grad();
  }

  /// Promotes the total's dtype with `dtype` and notes a tracked gradient, as the walk goes
  /// (instead of a loop over every gradient afterwards).
  [[gnu::always_inline]] void note(at::ScalarType dtype, bool tracked) {
    if (dtype != promoted_) [[unlikely]] {
      promoted_ = promoted_ == at::ScalarType::Undefined ? dtype : c10::promoteTypes(promoted_, dtype);
    }
    any_tracked_ = any_tracked_ || tracked;
  }

  void refresh() noexcept {
    gradients_ = collected_.gradients.data();
    runs_ = collected_.runs.data();
    run_begin_ = collected_.run_begin.data();
  }

  Collected& collected_;
  Gradient* gradients_ = nullptr;
  Run* runs_ = nullptr;
  std::size_t* run_begin_ = nullptr;
  std::size_t count_ = 0;
  std::size_t run_count_ = 0;
  std::int64_t elements_ = 0;
  at::ScalarType promoted_ = at::ScalarType::Undefined;
  bool any_tracked_ = false;
};

/// Checks `grad`, the gradient of `parameter` (position `index`), when it is not the usual one
/// (see add_parameters): throws the error that names what is wrong, else records it (a
/// gradient on an accelerator, an empty or a large one, a non-dense one, say).
[[gnu::noinline]] inline void add_unusual_parameter(Collected& collected, GradientWriter& writer,
                                                   const at::Tensor& parameter, const at::Tensor& grad,
                                                   std::size_t index, std::size_t parameters_left,
                                                   std::string_view function, bool mutating) {
  TORCHKIT_CHECK(grad.layout() == at::kStrided,
                 "{}: the gradient of {} is sparse (layout {}); only dense (strided) gradients can be clipped",
                 function, parameter_label(collected, index), c10::str(grad.layout()));
  TORCHKIT_CHECK(is_supported_dtype(grad.scalar_type()),
                 "{}: the gradient of {} has dtype {}; expected float, double, float16 or bfloat16", function,
                 parameter_label(collected, index), c10::toString(grad.scalar_type()));
  TORCHKIT_CHECK(same_sizes(grad.sizes(), parameter.sizes()),
                 "{}: the gradient of {} has shape {} but the parameter has shape {}; expected the same shape",
                 function, parameter_label(collected, index), detail::shape_string(grad.sizes()),
                 detail::shape_string(parameter.sizes()));
  TORCHKIT_CHECK(!mutating || !grad.is_inference() || c10::InferenceMode::is_enabled(),
                 "{}: the gradient of {} is an inference tensor, which cannot be modified outside InferenceMode",
                 function, parameter_label(collected, index));
  c10::TensorImpl* impl = grad.unsafeGetTensorImpl();
  const bool dense = impl->is_non_overlapping_and_dense();
  // Not dense: an expanded gradient (stride 0) has elements sharing memory: scaling it in place
  // cannot work, and must be refused here, before any other gradient is touched.
  TORCHKIT_CHECK(!mutating || dense || at::has_internal_overlap(grad) != at::MemOverlap::Yes,
                 "{}: the gradient of {} has elements that share memory (strides {}, e.g. made by expand()); it "
                 "cannot be changed in place: give it its own memory first (grad = grad.clone())",
                 function, parameter_label(collected, index), detail::shape_string(grad.strides()));
  TORCHKIT_CHECK(impl->device_type() != c10::DeviceType::Meta,
                 "{}: the gradient of {} is on the meta device (a shape without values); expected gradients that "
                 "hold values (CPU or an accelerator)",
                 function, parameter_label(collected, index));
  const at::ScalarType dtype = c10::typeMetaToScalarType(impl->dtype());
  const bool is_cpu = impl->device_type() == c10::DeviceType::CPU;
  const std::int64_t numel = impl->numel();
  writer.add(grad, index, is_cpu && dense && numel > 0 ? first_element(impl, dtype) : nullptr, numel, dtype, is_cpu,
             parameters_left);
}

/// Checks the parameters in order and gathers their gradients. The usual gradient (on the CPU,
/// dense, float, the parameter's shape, at most run_elements elements, not an inference
/// tensor) is checked on the tensor's own fields and recorded inline; anything else takes the
/// detailed checks (add_unusual_parameter). The metadata of each parameter sits in four objects
/// (the tensor, its autograd metadata, the gradient tensor, the gradient's storage) that a
/// model scatters through memory: they are requested a few parameters ahead, each stage once
/// the previous one has arrived, so that the misses overlap instead of adding up. The distances
/// (12, 8, 4, 2 parameters) were chosen by measurement on bench/clip_bench's 2,000 x 512 sets.
/// The gradient found for the third stage is kept for the parameter's turn.
inline void add_parameters(Collected& collected, const std::vector<const at::Tensor*>& parameters,
                           std::string_view function, bool mutating) {
  constexpr std::size_t tensor_ahead = 12, metadata_ahead = 8, grad_ahead = 4, storage_ahead = 2;
  constexpr std::size_t ring = 8;  // > grad_ahead: gradients found ahead, by position % ring
  std::array<const at::Tensor*, ring> found{};
  const std::size_t count = parameters.size();
  const auto find_gradient = [&](std::size_t index) {
    const at::Tensor& parameter = *parameters[index];
    found[index % ring] = parameter.defined() ? &gradient_of(parameter) : nullptr;
    return found[index % ring];
  };
  GradientWriter writer(collected, count);
  for (std::size_t index = 0; index < std::min(grad_ahead, count); ++index) find_gradient(index);
  for (std::size_t index = 0; index < count; ++index) {
    if (index + tensor_ahead < count) {
      prefetch_lines(parameters[index + tensor_ahead]->unsafeGetTensorImpl(), sizeof(c10::TensorImpl));
    }
    if (index + metadata_ahead < count) {
      if (const c10::TensorImpl* impl = parameters[index + metadata_ahead]->unsafeGetTensorImpl()) {
        if (const auto* metadata = impl->autograd_meta()) prefetch_lines(metadata, 128);
      }
    }
    if (index + grad_ahead < count) {
      const at::Tensor* grad = find_gradient(index + grad_ahead);
      if (grad != nullptr && grad->defined()) prefetch_lines(grad->unsafeGetTensorImpl(), sizeof(c10::TensorImpl));
    }
    if (index + storage_ahead < count) {
      const at::Tensor* grad = found[(index + storage_ahead) % ring];
      if (grad != nullptr && grad->defined() && grad->unsafeGetTensorImpl()->unsafe_storage()) {
        prefetch_lines(grad->unsafeGetTensorImpl()->unsafe_storage().unsafeGetStorageImpl(), 64);
      }
    }
    const at::Tensor& parameter = *parameters[index];
    TORCHKIT_CHECK(parameter.defined(), "{}: {} is an undefined tensor; expected parameters (defined tensors)",
                   function, parameter_label(collected, index));
    const at::Tensor& grad = *found[index % ring];
    if (!grad.defined()) continue;
    c10::TensorImpl* impl = grad.unsafeGetTensorImpl();
    const at::ScalarType dtype = c10::typeMetaToScalarType(impl->dtype());
    if (impl->layout() == at::kStrided && is_supported_dtype(dtype) &&
        same_sizes(impl->sizes(), parameter.unsafeGetTensorImpl()->sizes()) && impl->is_non_overlapping_and_dense() &&
        impl->device_type() == c10::DeviceType::CPU && !impl->is_inference()) [[likely]] {
      const std::int64_t numel = impl->numel();
      if (numel > 0 && numel <= run_elements) [[likely]] {
        writer.add_one_run(grad, impl, index, first_element(impl, dtype), numel, dtype);
        continue;
      }
    }
    add_unusual_parameter(collected, writer, parameter, grad, index, count - index - 1, function, mutating);
  }
  writer.finish();
}

/// Validates every parameter and gathers the defined gradients, in order, without copying a
/// tensor handle per parameter.
template <ParameterSource P>
[[nodiscard]] Collected collect(P&& source, std::string_view function, bool mutating) {
  Collected collected;
  std::vector<const at::Tensor*> parameters;
  if constexpr (ModuleLike<P>) {
    auto named = named_parameters_of(source);
    collected.names.reserve(named.size());
    parameters.reserve(named.size());
    for (auto& item : named) {
      collected.names.push_back(std::move(item.name));
      collected.keep_alive.push_back(std::move(item.tensor));
    }
  } else {
    constexpr bool by_value = !std::is_reference_v<std::ranges::range_reference_t<P>>;
    if constexpr (std::ranges::sized_range<P>) {
      const auto size = static_cast<std::size_t>(std::ranges::size(source));
      parameters.reserve(size);
      if constexpr (by_value) collected.keep_alive.reserve(size);
    }
    for (auto&& item : source) {
      if constexpr (by_value) {
        collected.keep_alive.push_back(static_cast<const at::Tensor&>(item));
      } else {
        parameters.push_back(&static_cast<const at::Tensor&>(item));
      }
    }
  }
  for (const auto& tensor : collected.keep_alive) {
    parameters.push_back(&tensor);
  }
  add_parameters(collected, parameters, function, mutating);
  return collected;
}

inline void check_norm_type(double norm_type, std::string_view function) {
  TORCHKIT_CHECK(!std::isnan(norm_type) && norm_type >= 0.0,
                 "{}: norm_type must be 0, a positive number or inf, got {}", function, norm_type);
}

inline void check_max_norm(double max_norm, std::string_view function) {
  TORCHKIT_CHECK(!std::isnan(max_norm) && max_norm > 0.0, "{}: max_norm must be a positive number, got {}",
                 function, max_norm);
}

/// `max_norm / (total + 1e-6)` clamped to at most 1, as 0-dim tensor ops on total's device (no
/// host sync), exactly as PyTorch writes it.
[[nodiscard]] inline at::Tensor clip_coefficient(const at::Tensor& total, double max_norm) {
  // Python's `max_norm / tensor` is `tensor.reciprocal() * max_norm`.
  const at::Tensor coefficient = at::reciprocal(total + 1e-6) * max_norm;
  if (coefficient.scalar_type() == at::kHalf) {
    // LibTorch 1.13 has no float16 clamp on the CPU; clamping to 1 in float is exact.
    return at::clamp_max(coefficient.to(at::kFloat), 1.0).to(at::kHalf);
  }
  return at::clamp_max(coefficient, 1.0);
}

/// clip_coefficient's value computed on the host for a float or double total: the same
/// operations in the same precision (float32 ops round every step to float32), without
/// dispatching four tensor ops. The tests check it against clip_coefficient bit for bit.
[[nodiscard]] inline double host_clip_coefficient(double total, double max_norm, at::ScalarType dtype) noexcept {
  const auto clamp_to_one = [](auto value) { return std::isnan(value) ? value : std::min(value, decltype(value)(1)); };
  if (dtype == at::kFloat) {
    const float shifted = static_cast<float>(total) + static_cast<float>(1e-6);
    const float reciprocal = 1.0f / shifted;
    return static_cast<double>(clamp_to_one(reciprocal * static_cast<float>(max_norm)));
  }
  const double reciprocal = 1.0 / (total + 1e-6);
  return clamp_to_one(reciprocal * max_norm);
}

/// Sets with fewer elements run on one thread even when more are allowed: one thread reads
/// 2^21 floats (8 MB) and scales them in about 0.2 ms, and starting a parallel region and
/// sharing the cache cost more than the second thread saves (measured with bench/clip_bench on
/// the 2-core development machine: 2,000 x 512 took 136 us on one thread, 145 us on two).
inline constexpr std::int64_t parallel_min_elements = std::int64_t{1} << 21;

/// Elements the scale pass takes at a time when it walks a small set backwards.
inline constexpr std::int64_t cache_order_chunk_elements = std::int64_t{1} << 14;

/// The CPU gradients of a Collected set as runs over raw memory, for the clip's FastPass and
/// amp's ScaledPass: the runs collect() laid out when they cover every gradient, else laid out
/// here, a non-dense gradient through a contiguous copy that finish_writes() copies back.
/// Gradients left out (not on the CPU; every one with `cpu_through_foreach`) go to `leave_out`.
class CpuRuns {
 public:
  template <class LeaveOut>
  CpuRuns(const Collected& collected, bool cpu_through_foreach, LeaveOut&& leave_out) : collected_(collected) {
    if (collected.runs_cover_all && !cpu_through_foreach) {
      runs_ = &collected.runs;
      run_begin_ = &collected.run_begin;
      elements_ = collected.run_elements_total;
      return;
    }
    const auto& gradients = collected.gradients;
    own_runs_.reserve(gradients.size() + 16);
    own_run_begin_.reserve(gradients.size() + 1);
    own_run_begin_.push_back(0);
    for (std::size_t k = 0; k < gradients.size(); ++k) {
      const Gradient& gradient = gradients[k];
      if (!gradient.is_cpu || cpu_through_foreach) {
        leave_out(k);
      } else if (gradient.numel > 0) {
        // A dense gradient (contiguous or permuted, e.g. channels-last) fills numel slots from
        // its first element on, in some order; norms and scaling do not care which.
        void* data = gradient.data;
        if (data == nullptr) {
          copies_.push_back(Copy{k, gradient.grad->contiguous()});
          data = copies_.back().tensor.data_ptr();
        }
        split_runs(data, gradient.numel, gradient.dtype, [&](void* first, std::int64_t size) {
          own_runs_.push_back(Run{first, size, k, gradient.dtype});
        });
        elements_ += gradient.numel;
      }
      own_run_begin_.push_back(own_runs_.size());
    }
  }

  CpuRuns(const CpuRuns&) = delete;
  CpuRuns& operator=(const CpuRuns&) = delete;

  [[nodiscard]] const std::vector<Run>& runs() const noexcept { return *runs_; }
  /// runs()[run_begin()[k] .. run_begin()[k + 1]) belong to gradient k.
  [[nodiscard]] const std::vector<std::size_t>& run_begin() const noexcept { return *run_begin_; }
  [[nodiscard]] std::int64_t elements() const noexcept { return elements_; }
  /// Whether some gradient lives on the CPU.
  [[nodiscard]] bool any() const noexcept { return !runs_->empty() || !copies_.empty(); }

  /// About at::internal::GRAIN_SIZE elements of runs per task.
  [[nodiscard]] std::int64_t grain() const {
    const auto count = static_cast<std::int64_t>(runs_->size());
    return std::max<std::int64_t>(1, count * 32768 / std::max<std::int64_t>(1, elements_));
  }

  /// Whether the runs are split over LibTorch's intra-op threads: several threads, a set of at
  /// least parallel_min_elements, more runs than one task takes, and for a pass that writes, no
  /// two gradients sharing memory.
  [[nodiscard]] bool splits(bool writes) const {
    return at::get_num_threads() > 1 && elements_ >= parallel_min_elements &&
           static_cast<std::int64_t>(runs_->size()) > grain() && !(writes && may_alias());
  }

  /// `body(begin, end)` over the runs: split over the threads when splits(), else once on this
  /// thread.
  template <class Body>
  void for_each_share(bool writes, Body&& body) const {
    const auto count = static_cast<std::int64_t>(runs_->size());
    if (count == 0) return;
    if (splits(writes)) {
      at::parallel_for(0, count, grain(), body);
    } else {
      body(0, count);
    }
  }

  /// `body(begin, end)` over the runs for a pass that writes them right after a pass that read
  /// them all (the scale pass after the norm pass). Split over the threads when splits(true);
  /// else on this thread: for sets up to parallel_min_elements in cache order, chunks of about
  /// cache_order_chunk_elements from the last to the first, each chunk forwards (the read pass
  /// has just left the last runs in the core's cache, and forwards within a chunk keeps the
  /// hardware prefetchers useful); larger sets forwards (the prefetchers follow ascending
  /// addresses best: backwards from the end was 20 % slower on ResNet-50). Measured on
  /// bench/clip_bench's and bench/amp_bench's sets (AVX-512 machine, 1 MB L2 per core).
  template <class Body>
  void for_each_share_after_read(Body&& body) const {
    if (elements_ > parallel_min_elements || splits(/*writes=*/true)) {
      for_each_share(/*writes=*/true, body);
      return;
    }
    const auto& runs = *runs_;
    std::int64_t end = static_cast<std::int64_t>(runs.size());
    while (end > 0) {
      std::int64_t begin = end - 1;
      std::int64_t elements = runs[begin].size;
      while (begin > 0 && elements + runs[begin - 1].size <= cache_order_chunk_elements) {
        --begin;
        elements += runs[begin].size;
      }
      body(begin, end);
      end = begin;
    }
  }

  /// After a pass that wrote the runs: copies the contiguous copies back, and bumps the version
  /// of gradients that are themselves part of a graph (create_graph), as Python's
  /// `detach().mul_()` would, so autograd notices. The kernels write through raw pointers, like
  /// LibTorch's clip_grad_norm_ (which scales `grad.data()`), without touching version counters;
  /// copy_ bumped the copied-back ones already.
  void finish_writes() const {
    for (const auto& copy : copies_) collected_.gradients[copy.gradient].grad->copy_(copy.tensor);
    if (!collected_.any_tracked) return;
    const auto& run_begin = *run_begin_;
    std::size_t next_copy = 0;
    for (std::size_t k = 0; k < collected_.gradients.size(); ++k) {
      const bool copied = next_copy < copies_.size() && copies_[next_copy].gradient == k;
      if (copied) ++next_copy;
      if (!copied && collected_.gradients[k].tracked && run_begin[k] != run_begin[k + 1]) {
        collected_.gradients[k].impl->bump_version();
      }
    }
  }

 private:
  struct Copy {
    std::size_t gradient;
    at::Tensor tensor;
  };

  /// Whether two gradients share memory (the same gradient passed twice, overlapping views):
  /// they must then be scaled in order, as PyTorch's loop does. Worked out on first use (a
  /// sort of every gradient's span), then kept: the runs do not change.
  [[nodiscard]] bool may_alias() const {
    if (!may_alias_) may_alias_ = spans_overlap();
    return *may_alias_;
  }

  [[nodiscard]] bool spans_overlap() const {
    const auto& runs = *runs_;
    const auto& run_begin = *run_begin_;
    std::vector<std::pair<const char*, const char*>> spans;
    spans.reserve(collected_.gradients.size());
    for (std::size_t k = 0; k < collected_.gradients.size(); ++k) {
      if (run_begin[k] == run_begin[k + 1]) continue;
      const Run& first = runs[run_begin[k]];
      const Run& last = runs[run_begin[k + 1] - 1];
      spans.emplace_back(static_cast<const char*>(first.data),
                         static_cast<const char*>(last.data) +
                             last.size * static_cast<std::int64_t>(c10::elementSize(last.dtype)));
    }
    std::sort(spans.begin(), spans.end());
    for (std::size_t i = 1; i < spans.size(); ++i) {
      if (spans[i].first < spans[i - 1].second) return true;
    }
    return false;
  }

  const Collected& collected_;
  std::vector<Run> own_runs_;
  std::vector<std::size_t> own_run_begin_;
  const std::vector<Run>* runs_ = &own_runs_;
  const std::vector<std::size_t>* run_begin_ = &own_run_begin_;
  std::vector<Copy> copies_;
  std::int64_t elements_ = 0;
  mutable std::optional<bool> may_alias_;  // may_alias(), once asked
};

/// The fast path's state for one call: CPU gradients as runs over raw memory, other devices'
/// gradients grouped by (device, dtype) for LibTorch's `_foreach` kernels.
class FastPass {
 public:
  /// `cpu_through_foreach` sends CPU gradients down the accelerator path too (for tests).
  FastPass(const Collected& collected, double p, bool cpu_through_foreach = false)
      : collected_(collected),
        p_(p),
        kind_(norm_kind_of(p)),
        result_dtype_(collected.promoted_dtype),
        cpu_(collected, cpu_through_foreach, [this](std::size_t k) { add_to_device_group(k); }) {}

  FastPass(const FastPass&) = delete;
  FastPass& operator=(const FastPass&) = delete;

  /// The total norm as a 0-dim tensor of the promoted gradient dtype on the first gradient's
  /// device, as PyTorch returns it.
  [[nodiscard]] at::Tensor total_norm() {
    compute_cpu_norms();
    const auto& gradients = collected_.gradients;
    const c10::Device device = gradients.front().grad->device();
    if (device_groups_.empty()) {
      host_total_ = finish_in(result_dtype_, kind_, cpu_total_partial_, p_);
      return at::scalar_tensor(*host_total_, at::TensorOptions().dtype(result_dtype_).device(device));
    }
    // Some gradients live on an accelerator: stack every per-tensor norm on the first
    // gradient's device (PyTorch's `.to(device)`) and reduce there, without a host sync.
    std::vector<at::Tensor> pieces;
    std::vector<double> host_norms;
    for (std::size_t k = 0; k < gradients.size(); ++k) {
      if (!in_device_group_[k]) {
        host_norms.push_back(cpu_norms_[k]);
      }
    }
    if (!host_norms.empty()) {
      pieces.push_back(at::tensor(host_norms, at::kDouble).to(result_dtype_).to(device));
    }
    for (auto& group : device_groups_) {
      group.norms = at::_foreach_norm(group.grads, p_);
      pieces.push_back(at::stack(group.norms).to(result_dtype_).to(device));
    }
    const at::Tensor norms = pieces.size() == 1 ? pieces.front() : at::cat(pieces);
    return kind_ == NormKind::infinity ? norms.max() : at::norm(norms, p_);
  }

  /// The first gradient (position in Collected::gradients) whose own norm is not finite.
  [[nodiscard]] std::optional<std::size_t> first_nonfinite() const {
    std::vector<double> norms = cpu_norms_;
    for (const auto& group : device_groups_) {
      for (std::size_t j = 0; j < group.members.size(); ++j) {
        norms[group.members[j]] = group.norms.empty() ? 0.0 : group.norms[j].item<double>();
      }
    }
    for (std::size_t k = 0; k < norms.size(); ++k) {
      if (!std::isfinite(norms[k])) return k;
    }
    return std::nullopt;
  }

  /// The total norm as a host value, when every gradient is on the CPU (after total_norm()).
  [[nodiscard]] std::optional<double> host_total() const noexcept { return host_total_; }

  /// Multiplies every (CPU) gradient by `factor`, the coefficient already on the host.
  void scale_by(double factor) {
    if (factor != 1.0) scale_cpu(factor);  // multiplying by exactly 1 changes no value
  }

  /// Multiplies every gradient by the 0-dim `coefficient`. CPU gradients need its value on the
  /// host: free when it is on the CPU, one sync when it is on an accelerator.
  void scale(const at::Tensor& coefficient) {
    if (cpu_.any()) {
      const double factor = coefficient.item<double>();
      // Multiplying by exactly 1 changes no value: skip the pass (PyTorch always multiplies).
      if (factor != 1.0) {
        scale_cpu(factor);
      }
    }
    for (auto& group : device_groups_) {
      const at::Tensor on_device = coefficient.to(group.device);
#if TORCHKIT_TORCH_AT_LEAST(2, 1)
      at::_foreach_mul_(group.grads, on_device);
#else
      for (auto& grad : group.grads) {
        grad.mul_(on_device);
      }
#endif
    }
  }

 private:
  struct DeviceGroup {
    c10::Device device;
    at::ScalarType dtype;
    std::vector<std::size_t> members;
    std::vector<at::Tensor> grads;
    std::vector<at::Tensor> norms;
  };

  void add_to_device_group(std::size_t k) {
    if (in_device_group_.empty()) in_device_group_.assign(collected_.gradients.size(), false);
    in_device_group_[k] = true;
    const at::Tensor& grad = *collected_.gradients[k].grad;
    for (auto& group : device_groups_) {
      if (group.device == grad.device() && group.dtype == grad.scalar_type()) {
        group.members.push_back(k);
        group.grads.push_back(grad);
        return;
      }
    }
    device_groups_.push_back(DeviceGroup{grad.device(), grad.scalar_type(), {k}, {grad}, {}});
  }

  void compute_cpu_norms() {
    const auto& gradients = collected_.gradients;
    const auto& runs = cpu_.runs();
    cpu_norms_.assign(gradients.size(), 0.0);
    const NormKind kind = kind_;
    const double p = p_;
    // (small sets on this thread: no parallel region to enter)
    std::vector<double> partials(runs.size());
    cpu_.for_each_share(/*writes=*/false, [&](std::int64_t begin, std::int64_t end) {
      reduce_runs(runs.data() + begin, end - begin, kind, p, partials.data() + begin);
    });
    cpu_total_partial_ = gradient_norms(kind, p, runs.data(), cpu_.run_begin().data(), gradients.size(),
                                        partials.data(), cpu_norms_.data());
  }

  void scale_cpu(double factor) {
    const auto& runs = cpu_.runs();
    cpu_.for_each_share_after_read(
        [&](std::int64_t begin, std::int64_t end) { scale_runs(runs.data() + begin, end - begin, factor); });
    cpu_.finish_writes();
  }

  const Collected& collected_;
  double p_;
  NormKind kind_;
  at::ScalarType result_dtype_;
  std::vector<DeviceGroup> device_groups_;
  std::vector<bool> in_device_group_;  // empty when no gradient is in a device group
  std::vector<double> cpu_norms_;
  double cpu_total_partial_ = 0.0;  // the contributions of cpu_norms_ combined
  std::optional<double> host_total_;
  CpuRuns cpu_;  // last: its constructor fills device_groups_ and in_device_group_
};

/// `at::norm(tensor, p)`, accumulated in float for float16/bfloat16 tensors: LibTorch 1.13's
/// CPU kernel accumulates those in their own precision (a bfloat16 count of non-zeros stops at
/// 256); 2.x accumulates in float on the CPU, as CUDA always did, and so does the fast path.
[[nodiscard]] inline at::Tensor reference_norm(const at::Tensor& tensor, double p) {
  const auto dtype = tensor.scalar_type();
  if (dtype == at::kHalf || dtype == at::kBFloat16) {
    return at::norm(tensor, p, at::kFloat).to(dtype);
  }
  return at::norm(tensor, p);
}

/// PyTorch's algorithm, op by op: per-tensor norms, stack, norm of the stack.
[[nodiscard]] inline at::Tensor reference_norms_and_total(const Collected& collected, double p,
                                                          std::vector<at::Tensor>& norms) {
  const c10::Device device = collected.gradients.front().grad->device();
  norms.clear();
  norms.reserve(collected.gradients.size());
  const bool infinity = std::isinf(p);
  for (const auto& gradient : collected.gradients) {
    const at::Tensor& grad = *gradient.grad;
    // An empty gradient's inf-norm is 0 here, as on the fast path (PyTorch's max() throws).
    norms.push_back((infinity ? (grad.numel() == 0 ? at::zeros({}, grad.options()) : grad.abs().max())
                              : reference_norm(grad, p))
                        .to(device));
  }
  if (infinity) {
    return norms.size() == 1 ? norms.front() : at::stack(norms).max();
  }
  return reference_norm(at::stack(norms), p);
}

/// Throws the error_if_nonfinite error, naming the first gradient whose own norm is not finite.
[[noreturn]] inline void fail_nonfinite(const Collected& collected, double p, double total,
                                        std::optional<std::size_t> first, at::ScalarType dtype,
                                        std::string_view function) {
  std::string culprit;
  if (first) {
    const Gradient& gradient = collected.gradients[*first];
    const bool holds_nonfinite = !at::isfinite(*gradient.grad).all().item<bool>();
    culprit = fmt::format("the first non-finite gradient is that of {} ({})",
                          parameter_label(collected, gradient.index),
                          holds_nonfinite ? "it holds nan or inf values"
                                          : fmt::format("its norm overflows {}", c10::toString(dtype)));
  } else {
    culprit = fmt::format("every gradient's own norm is finite, but their total overflows {}", c10::toString(dtype));
  }
  fail("{}: the total norm of order {} of the gradients is {} (non-finite), so they cannot be clipped; {}; "
       "no gradient was changed. Pass error_if_nonfinite = false to scale them by the non-finite norm anyway, "
       "as PyTorch does",
       function, p, std::isnan(total) ? std::string("nan") : fmt::format("{}", total), culprit);
}

/// The shared implementation of clip_grad_norm_ (max_norm set) and grad_norm (no max_norm).
[[nodiscard]] inline at::Tensor norm_and_clip(const Collected& collected, double p, std::optional<double> max_norm,
                                              const ClipOptions& options, std::string_view function,
                                              bool cpu_through_foreach = false) {
  if (collected.gradients.empty()) {
    return at::scalar_tensor(0.0, at::kFloat);  // PyTorch: torch.tensor(0.)
  }
  const at::NoGradGuard no_grad;
  if (options.foreach) {
    FastPass pass(collected, p, cpu_through_foreach);
    at::Tensor total = pass.total_norm();
    if (options.error_if_nonfinite) {
      const double value = total.item<double>();
      if (!std::isfinite(value)) {
        fail_nonfinite(collected, p, value, pass.first_nonfinite(), total.scalar_type(), function);
      }
    }
    if (max_norm) {
      const auto host_total = pass.host_total();
      const auto dtype = total.scalar_type();
      if (host_total && (dtype == at::kFloat || dtype == at::kDouble)) {
        pass.scale_by(host_clip_coefficient(*host_total, *max_norm, dtype));  // no tensor ops
      } else {
        pass.scale(clip_coefficient(total, *max_norm));
      }
    }
    return total;
  }
  std::vector<at::Tensor> norms;
  at::Tensor total = reference_norms_and_total(collected, p, norms);
  if (options.error_if_nonfinite) {
    const double value = total.item<double>();
    if (!std::isfinite(value)) {
      std::optional<std::size_t> first;
      for (std::size_t k = 0; k < norms.size() && !first; ++k) {
        if (!std::isfinite(norms[k].item<double>())) first = k;
      }
      fail_nonfinite(collected, p, value, first, total.scalar_type(), function);
    }
  }
  if (max_norm) {
    const at::Tensor coefficient = clip_coefficient(total, *max_norm);
    for (const auto& gradient : collected.gradients) {
      gradient.grad->mul_(coefficient.to(gradient.grad->device()));
    }
  }
  return total;
}

}  // namespace detail::clip

/// Scales the gradients so that their total norm is at most `max_norm`, in place, and
/// returns the total norm before clipping. PyTorch: `torch.nn.utils.clip_grad_norm_`.
///
/// The total norm is the norm of the vector of every gradient's own norm, as if all gradients
/// were one vector; gradients are multiplied by `min(1, max_norm / (total + 1e-6))`.
/// Parameters without a gradient are skipped; with no gradient at all the result is a float
/// 0 on the CPU and nothing changes.
///
/// @param params     a module (or holder, or shared_ptr), `parameters()`, or any tensor range
/// @param max_norm   the largest total norm allowed, > 0
/// @param norm_type  p of the p-norm: any p > 0, `INFINITY` (largest magnitude) or 0 (how many
///                   gradients have a non-zero element, as PyTorch computes it)
/// @param options    error_if_nonfinite, and the fast or the reference path (ClipOptions)
/// @returns a 0-dim tensor on the first gradient's device, of the gradients' promoted dtype.
///          No host sync, except with `error_if_nonfinite`, and when CPU gradients must be
///          scaled by a norm computed on an accelerator.
/// @throws torchkit::Error for max_norm <= 0 or nan, norm_type < 0 or nan, a sparse gradient,
///         a gradient whose shape differs from its parameter's, an undefined parameter, a
///         gradient that is not float/double/float16/bfloat16, and (with `error_if_nonfinite`)
///         a nan/inf total norm, naming the first non-finite gradient. No gradient changes when
///         it throws.
///
/// Where it differs from PyTorch 1.13 on the CPU (all by design):
/// - float16/bfloat16 norms accumulate in float, as PyTorch 2.x and CUDA do; 1.13's CPU kernel
///   accumulates them in their own precision (its bfloat16 sums stall after a few hundred).
/// - float32 sums use many partial sums, so long gradients come out more exact than 1.13's
///   single running float sum (e.g. 6e-5 relative for p = 3.5 over 300k elements).
/// - The inf-norm of an empty gradient is 0 (PyTorch's `abs().max()` throws).
/// - Gradients are scaled through raw memory like LibTorch's clip_grad_norm_ (which scales
///   `grad.data()`): version counters move only for gradients that require grad themselves
///   (made with create_graph), as Python's `detach().mul_()` would. `foreach = false` runs
///   PyTorch's own per-tensor ops.
///
///     loss.backward();
///     const at::Tensor norm = torchkit::clip_grad_norm_(model, 20.0);
///     optimizer.step();
template <ParameterSource P>
at::Tensor clip_grad_norm_(P&& params, double max_norm, double norm_type = 2.0, ClipOptions options = {}) {
  constexpr std::string_view function = "clip_grad_norm_";
  detail::clip::check_max_norm(max_norm, function);
  detail::clip::check_norm_type(norm_type, function);
  const auto collected = detail::clip::collect(std::forward<P>(params), function, /*mutating=*/true);
  return detail::clip::norm_and_clip(collected, norm_type, max_norm, options, function);
}

/// The total norm of the gradients, as clip_grad_norm_ computes it, without changing them.
/// PyTorch 2.x: `torch.nn.utils.get_total_norm` of the gradients.
///
/// @returns a 0-dim tensor on the first gradient's device (float 0 on the CPU when no
///          parameter has a gradient); no host sync.
/// @throws torchkit::Error for norm_type < 0 or nan, sparse or misshapen gradients.
///
///     const double norm = torchkit::grad_norm(model).item<double>();
template <ParameterSource P>
[[nodiscard]] at::Tensor grad_norm(P&& params, double norm_type = 2.0, ClipOptions options = {}) {
  constexpr std::string_view function = "grad_norm";
  detail::clip::check_norm_type(norm_type, function);
  const auto collected = detail::clip::collect(std::forward<P>(params), function, /*mutating=*/false);
  return detail::clip::norm_and_clip(collected, norm_type, std::nullopt, options, function);
}

/// Clamps every gradient element to [-clip_value, clip_value] in place (NaN stays NaN).
/// PyTorch: `torch.nn.utils.clip_grad_value_`.
///
/// @throws torchkit::Error for clip_value < 0 or nan, sparse or misshapen gradients; nothing
///         changes when it throws.
///
///     torchkit::clip_grad_value_(model, 0.5);
template <ParameterSource P>
void clip_grad_value_(P&& params, double clip_value) {
  constexpr std::string_view function = "clip_grad_value_";
  TORCHKIT_CHECK(!std::isnan(clip_value) && clip_value >= 0.0, "{}: clip_value must be >= 0, got {}", function,
                 clip_value);
  const auto collected = detail::clip::collect(std::forward<P>(params), function, /*mutating=*/true);
  const at::NoGradGuard no_grad;
  for (const auto& gradient : collected.gradients) {
    const at::Tensor& grad = *gradient.grad;
    if (!grad.device().is_cpu()) {
      grad.clamp_(-clip_value, clip_value);
      continue;
    }
    // Dense gradients in place; others through a contiguous copy (LibTorch 1.13 has no
    // float16 clamp on the CPU, so the kernel here serves every dtype).
    const bool dense = grad.is_non_overlapping_and_dense();
    const at::Tensor target = dense ? grad : grad.contiguous();
    const auto dtype = target.scalar_type();
    char* data = static_cast<char*>(target.data_ptr());
    const auto element_size = static_cast<std::int64_t>(c10::elementSize(dtype));
    at::parallel_for(0, target.numel(), at::internal::GRAIN_SIZE, [&](std::int64_t begin, std::int64_t end) {
      detail::clip::clamp(dtype, data + begin * element_size, end - begin, clip_value);
    });
    if (dense) {
      if (gradient.tracked) grad.unsafeGetTensorImpl()->bump_version();
    } else {
      grad.copy_(target);
    }
  }
}

/// A reusable clip_grad_norm_ that remembers what it did: the last total norm, how many
/// steps it ran and how often the norm exceeded max_norm.
///
///     torchkit::ClipGrad clip(/*max_norm=*/20.0);
///     for (...) { loss.backward(); clip(model); optimizer.step(); }
///     fmt::print("clipped {} of {} steps\n", clip.clipped_steps(), clip.steps());
class ClipGrad {
 public:
  /// @throws torchkit::Error for max_norm <= 0 or nan, norm_type < 0 or nan.
  explicit ClipGrad(double max_norm, double norm_type = 2.0, ClipOptions options = {})
      : max_norm_(max_norm), norm_type_(norm_type), options_(options) {
    detail::clip::check_max_norm(max_norm, "ClipGrad");
    detail::clip::check_norm_type(norm_type, "ClipGrad");
  }

  /// Clips `params` (see clip_grad_norm_) and returns the total norm before clipping. On an
  /// accelerator the bookkeeping stays on the device: no host sync here.
  template <ParameterSource P>
  at::Tensor operator()(P&& params) {
    return record(clip_grad_norm_(std::forward<P>(params), max_norm_, norm_type_, options_));
  }

  /// Clips the gradients of `optimizer` through a GradScaler (amp.hpp's
  /// `clip_grad_norm_(optimizer, max_norm, norm_type, scaler)`: unscaled once per step, one read
  /// and one write pass on the CPU, inf/nan recorded so that `scaler.step` skips) and records the
  /// total norm of the unscaled gradients as the call above does (an inf norm counts as clipped).
  ///
  ///     scaler.scale(loss).backward();
  ///     clip(optimizer, scaler);
  ///     scaler.step(optimizer);
  ///     scaler.update();
  template <class Optimizer, class Scaler>
    requires requires(Optimizer& optimizer, Scaler& scaler, double value, ClipOptions options) {
      clip_grad_norm_(optimizer, value, value, scaler, options);  // found in amp.hpp by ADL
    }
  at::Tensor operator()(Optimizer& optimizer, Scaler& scaler) {
    return record(clip_grad_norm_(optimizer, max_norm_, norm_type_, scaler, options_));
  }

  /// The total norm the last call returned (0 before the first call). When the gradients live
  /// on an accelerator the norm is on the device: the first read after a call syncs once (the
  /// value is then cached on the host).
  [[nodiscard]] double last_norm() const {
    if (last_norm_on_device_.defined()) {
      last_norm_ = last_norm_on_device_.item<double>();
      last_norm_on_device_ = at::Tensor();
    }
    return last_norm_;
  }
  /// How many times the functor ran.
  [[nodiscard]] std::int64_t steps() const noexcept { return steps_; }
  /// How many of those steps had a total norm above max_norm or nan (and so scaled the
  /// gradients: by a coefficient below 1, or by nan).
  /// When the gradients live on an accelerator the count of the steps since the last read is
  /// on the device: reading it syncs once (then it is cached on the host).
  [[nodiscard]] std::int64_t clipped_steps() const {
    if (pending_clipped_.defined()) {
      clipped_steps_ += pending_clipped_.item<std::int64_t>();
      pending_clipped_ = at::Tensor();
    }
    return clipped_steps_;
  }
  /// The largest total norm allowed (the constructor's `max_norm`).
  [[nodiscard]] double max_norm() const noexcept { return max_norm_; }
  /// p of the p-norm (the constructor's `norm_type`).
  [[nodiscard]] double norm_type() const noexcept { return norm_type_; }
  /// The options every call passes to clip_grad_norm_.
  [[nodiscard]] const ClipOptions& options() const noexcept { return options_; }

  /// `ClipGrad(max_norm=20, norm_type=2, steps=100, clipped_steps=12, last_norm=3.25)`.
  /// Reads last_norm() and clipped_steps(), so on an accelerator it syncs as they do.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("ClipGrad(max_norm={}, norm_type={}, steps={}, clipped_steps={}, last_norm={})", max_norm_,
                       norm_type_, steps_, clipped_steps(), last_norm());
  }
  /// Writes to_string().
  friend std::ostream& operator<<(std::ostream& out, const ClipGrad& clip) { return out << clip.to_string(); }

 private:
  /// Counts a call that returned `total`; on an accelerator without a host sync.
  at::Tensor record(at::Tensor total) {
    ++steps_;
    if (total.device().is_cpu()) {
      last_norm_ = total.item<double>();
      last_norm_on_device_ = at::Tensor();
      if (!(last_norm_ <= max_norm_)) ++clipped_steps_;  // above max_norm, or nan
    } else {
      last_norm_on_device_ = total;
      const at::Tensor exceeded = at::logical_not(total.le(max_norm_)).to(at::kLong);  // above, or nan
      pending_clipped_ = pending_clipped_.defined() ? pending_clipped_.add(exceeded.to(pending_clipped_.device()))
                                                    : exceeded;
    }
    return total;
  }

  double max_norm_;
  double norm_type_;
  ClipOptions options_;
  std::int64_t steps_ = 0;
  mutable double last_norm_ = 0.0;
  mutable at::Tensor last_norm_on_device_;
  mutable std::int64_t clipped_steps_ = 0;
  mutable at::Tensor pending_clipped_;
};

namespace detail {
/// ClipGrad formats with `{fmt}` as its to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<ClipGrad> = true;
}  // namespace detail

}  // namespace torchkit
