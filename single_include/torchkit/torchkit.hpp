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
/// Tip 1: choose which GPUs this process sees: VisibleDevices (CUDA_VISIBLE_DEVICES as an RAII
/// guard that refuses to act too late), parse_device_list, best_device.
///
/// Python:
///
///     import os
///     os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"   # before anything touches CUDA

// ---- begin torchkit/detail/cuda_driver.hpp ----
/// @file detail/cuda_driver.hpp
/// Whether the CUDA driver has been initialised in this process, asked without linking CUDA.
///
/// CUDA reads CUDA_VISIBLE_DEVICES exactly once, in cuInit (the driver's start-up, which the CUDA
/// runtime, LibTorch's `torch::cuda::is_available()`, `device_count()`, the first CUDA tensor,
/// NCCL, ... all trigger). A later change of the variable silently does nothing. LibTorch keeps
/// its own "CUDA initialised" flag private (`at::Context`'s once-flags; Python's
/// `torch.cuda.is_initialized()` lives in libtorch_python), and CUDA can also be started by
/// other libraries, so torchkit asks the driver itself:
///
/// - the driver library `libcuda.so.1` is only ever loaded, never loaded by this probe
///   (`dlopen(..., RTLD_NOLOAD)`); when it is not loaded, nothing can have started CUDA;
/// - when it is loaded, its `cuDeviceGetCount` answers CUDA_ERROR_NOT_INITIALIZED (3) before
///   `cuInit` and CUDA_SUCCESS after it; this is a query with no side effect.
///
/// Limitation: a `cuInit` that failed (no GPU, or every GPU hidden) also answers
/// CUDA_ERROR_NOT_INITIALIZED, so it counts as "not initialised".

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#define TORCHKIT_HAS_DLOPEN 1
#else
#define TORCHKIT_HAS_DLOPEN 0
#endif

namespace torchkit::detail {

/// What the probe found out about the CUDA driver in this process.
enum class CudaDriverState {
  not_loaded,       ///< libcuda is not loaded: nothing has started CUDA
  not_initialised,  ///< libcuda is loaded, cuInit has not run (or failed)
  initialised,      ///< cuInit has run: CUDA_VISIBLE_DEVICES has been read
};

/// The driver library names the probe looks for, most common first.
inline constexpr const char* cuda_driver_library_names[] = {"libcuda.so.1", "libcuda.so"};

/// Asks the loaded CUDA driver, if any, whether cuInit has run. Never loads the driver, never
/// initialises CUDA, never throws.
[[nodiscard]] inline CudaDriverState probe_cuda_driver() noexcept {
#if TORCHKIT_HAS_DLOPEN
  for (const char* name : cuda_driver_library_names) {
    void* handle = ::dlopen(name, RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
    if (handle == nullptr) {
      continue;
    }
    constexpr int cuda_success = 0;
    using DeviceGetCount = int (*)(int*);
    // dlsym returns an object pointer; POSIX guarantees it converts to a function pointer.
    auto* device_get_count = reinterpret_cast<DeviceGetCount>(::dlsym(handle, "cuDeviceGetCount"));
    CudaDriverState state = CudaDriverState::not_initialised;
    if (device_get_count != nullptr) {
      int count = 0;
      if (device_get_count(&count) == cuda_success) {
        state = CudaDriverState::initialised;
      }
    }
    ::dlclose(handle);
    return state;
  }
#endif
  return CudaDriverState::not_loaded;
}

/// The probe torchkit uses. Tests replace it (not thread-safe; restore it when done) to check
/// both answers without a GPU.
using CudaDriverProbe = CudaDriverState (*)() noexcept;
[[nodiscard]] inline CudaDriverProbe& cuda_driver_probe() noexcept {
  static CudaDriverProbe probe = &probe_cuda_driver;
  return probe;
}

/// True when CUDA has been started in this process (see the file comment).
[[nodiscard]] inline bool cuda_driver_initialised() noexcept {
  return cuda_driver_probe()() == CudaDriverState::initialised;
}

}  // namespace torchkit::detail
// ---- end torchkit/detail/cuda_driver.hpp ----
// ---- begin torchkit/detail/environment.hpp ----
/// @file detail/environment.hpp
/// Reading and writing this process's environment variables (POSIX and Windows).


#include <cerrno>
#include <cstdlib>
#include <optional>
#include <string>
#include <system_error>

namespace torchkit::detail {

/// The value of the environment variable `name`, or nullopt when it is not set (an empty value
/// is a value: `CUDA_VISIBLE_DEVICES=""` hides every GPU).
[[nodiscard]] inline std::optional<std::string> get_environment(const char* name) {
  const char* value = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): documented by callers
  if (value == nullptr) {
    return std::nullopt;
  }
  return std::string(value);
}

/// Sets the environment variable `name` to `value`, or unsets it when `value` is nullopt.
/// Returns false when the C library refuses (out of memory); never throws.
inline bool set_environment_noexcept(const char* name, const std::optional<std::string>& value) noexcept {
#if defined(_WIN32)
  // _putenv_s with an empty value removes the variable on Windows; an empty value cannot be kept.
  return _putenv_s(name, value ? value->c_str() : "") == 0;
#else
  if (value) {
    return ::setenv(name, value->c_str(), /*overwrite=*/1) == 0;
  }
  return ::unsetenv(name) == 0;
#endif
}

/// Sets (or, for nullopt, unsets) the environment variable `name`; throws Error when the C
/// library refuses.
inline void set_environment(const char* name, const std::optional<std::string>& value) {
  if (!set_environment_noexcept(name, value)) {
    const int error = errno;
    fail("torchkit: could not {} the environment variable {}: {}", value ? "set" : "unset", name,
         std::generic_category().message(error));
  }
}

}  // namespace torchkit::detail
// ---- end torchkit/detail/environment.hpp ----

#include <c10/core/Device.h>
#include <torch/cuda.h>

#include <charconv>
#include <cstddef>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace torchkit {

namespace detail {

inline constexpr const char* visible_devices_variable = "CUDA_VISIBLE_DEVICES";

/// `value` in double quotes, or `unset` for nullopt: how error messages show a variable.
inline std::string quoted_environment_value(const std::optional<std::string>& value) {
  return value ? fmt::format("\"{}\"", *value) : std::string("unset");
}

/// One entry of a device spec: a device index, or a `GPU-`/`MIG-` UUID.
struct DeviceEntry {
  std::string text;
  std::optional<int> index;  ///< set for numeric entries
};

/// Splits and validates a CUDA_VISIBLE_DEVICES spec. `caller` starts every error message.
/// Accepts "" (no devices), comma-separated device indices ("0,1"), and `GPU-<uuid>` /
/// `MIG-<uuid>` entries (MIG also in the older `MIG-GPU-<uuid>/<gi>/<ci>` form).
[[nodiscard]] inline std::vector<DeviceEntry> split_device_spec(std::string_view spec, std::string_view caller) {
  std::vector<DeviceEntry> entries;
  if (spec.empty()) {
    return entries;
  }
  constexpr std::string_view expected =
      "expected comma-separated device indices such as \"0,1\" (priority order), "
      "\"GPU-<uuid>\" or \"MIG-<uuid>\" entries, or \"\" to hide every GPU";
  std::size_t position = 0;
  for (std::size_t index = 0;; ++index) {
    const std::size_t comma = spec.find(',', position);
    const std::string_view text =
        spec.substr(position, comma == std::string_view::npos ? std::string_view::npos : comma - position);
    TORCHKIT_CHECK(!text.empty(), "{}: malformed device spec \"{}\": entry {} is empty; {}", caller, spec, index,
                   expected);
    const std::size_t space = text.find_first_of(" \t\r\n\v\f");
    TORCHKIT_CHECK(space == std::string_view::npos,
                   "{}: malformed device spec \"{}\": entry {} (\"{}\") contains white space; write the "
                   "entries without spaces (\"0,1\")",
                   caller, spec, index, text);
    DeviceEntry entry{std::string(text), std::nullopt};
    if (text.starts_with("GPU-") || text.starts_with("MIG-")) {
      const std::string_view uuid = text.substr(4);
      const bool valid_uuid =
          !uuid.empty() && uuid.find_first_not_of("0123456789abcdefABCDEF-GPUgpu/") == std::string_view::npos;
      TORCHKIT_CHECK(valid_uuid,
                     "{}: malformed device spec \"{}\": entry {} (\"{}\") is not a valid {}<uuid> (hexadecimal "
                     "digits and dashes, as `nvidia-smi -L` prints them)",
                     caller, spec, index, text, text.substr(0, 4));
    } else {
      TORCHKIT_CHECK(!text.starts_with('-'),
                     "{}: malformed device spec \"{}\": entry {} (\"{}\") is negative; device indices start at 0 "
                     "(CUDA would silently hide every device from there on; use \"\" to hide every GPU)",
                     caller, spec, index, text);
      int value = 0;
      const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
      TORCHKIT_CHECK(error != std::errc::result_out_of_range,
                     "{}: malformed device spec \"{}\": entry {} (\"{}\") is too large for a device index", caller,
                     spec, index, text);
      TORCHKIT_CHECK(error == std::errc() && end == text.data() + text.size(),
                     "{}: malformed device spec \"{}\": entry {} (\"{}\") is not a device index; {}", caller, spec,
                     index, text, expected);
      TORCHKIT_CHECK(text.size() == 1 || text.front() != '0',
                     "{}: malformed device spec \"{}\": entry {} (\"{}\") has a leading zero; write {}", caller,
                     spec, index, text, value);
      entry.index = value;
    }
    for (std::size_t earlier = 0; earlier < entries.size(); ++earlier) {
      TORCHKIT_CHECK(entries[earlier].text != entry.text,
                     "{}: malformed device spec \"{}\": device {} is listed twice (entries {} and {}); list each "
                     "device once",
                     caller, spec, entry.text, earlier, index);
    }
    entries.push_back(std::move(entry));
    if (comma == std::string_view::npos) {
      break;
    }
    position = comma + 1;
  }
  return entries;
}

/// The spec for a list of device indices; validates them (non-negative, no duplicates).
[[nodiscard]] inline std::string device_spec_from_ids(std::span<const int> ids, std::string_view caller) {
  std::string spec;
  for (std::size_t index = 0; index < ids.size(); ++index) {
    TORCHKIT_CHECK(ids[index] >= 0,
                   "{}: device index {} at position {} is negative; device indices start at 0 (pass an empty "
                   "list to hide every GPU)",
                   caller, ids[index], index);
    for (std::size_t earlier = 0; earlier < index; ++earlier) {
      TORCHKIT_CHECK(ids[earlier] != ids[index],
                     "{}: device {} is listed twice (positions {} and {}); list each device once", caller,
                     ids[index], earlier, index);
    }
    if (index > 0) {
      spec += ',';
    }
    spec += std::to_string(ids[index]);
  }
  return spec;
}

}  // namespace detail

/// The device indices of a numeric CUDA_VISIBLE_DEVICES spec, in priority order.
///
/// @throws Error for a malformed spec (`"0,,1"`, `"a"`, `"-1"`, `"1,1"`, spaces) and for
///         `GPU-`/`MIG-` UUID entries, which have no index.
///
///     auto ids = torchkit::parse_device_list("2,0");   // {2, 0}
///     auto none = torchkit::parse_device_list("");     // {}: every GPU hidden
[[nodiscard]] inline std::vector<int> parse_device_list(std::string_view spec) {
  const auto entries = detail::split_device_spec(spec, "parse_device_list");
  std::vector<int> ids;
  ids.reserve(entries.size());
  for (std::size_t index = 0; index < entries.size(); ++index) {
    TORCHKIT_CHECK(entries[index].index.has_value(),
                   "parse_device_list: entry {} of \"{}\" (\"{}\") is a UUID, not a device index; "
                   "parse_device_list takes numeric specs only (VisibleDevices accepts UUIDs)",
                   index, spec, entries[index].text);
    ids.push_back(*entries[index].index);
  }
  return ids;
}

/// True when CUDA has been started in this process (by LibTorch or any other library), so that
/// CUDA_VISIBLE_DEVICES can no longer change which GPUs it sees. Like Python's
/// `torch.cuda.is_initialized()`, but it also notices CUDA started outside LibTorch. Never
/// starts CUDA itself.
[[nodiscard]] inline bool cuda_initialized() noexcept { return detail::cuda_driver_initialised(); }

/// RAII: sets CUDA_VISIBLE_DEVICES for this process and, on destruction (also during exception
/// unwinding), restores the value it found, or unsets the variable when it was not set.
///
/// The order of the list is priority order: with "1,0", `cuda:0` is physical GPU 1. An empty
/// spec hides every GPU. CUDA reads the variable once, when it starts, so a VisibleDevices must
/// be created before anything touches CUDA (`torch::cuda::is_available()`,
/// `torch::cuda::device_count()`, `best_device()`, the first CUDA tensor, ...); when CUDA has
/// already started and the spec differs from the current value, the constructor throws instead
/// of silently doing nothing. Changing the environment is not thread-safe: create it at start-up,
/// before other threads run. Non-copyable, non-movable; nest guards, do not interleave them.
///
/// @throws Error for a malformed spec (`"0,,1"`, `"a"`, `"-1"`, `"1,1"`, spaces) or when CUDA is
///         already initialised; the environment is then unchanged.
///
///     int main() {
///       torchkit::VisibleDevices devices("0,1");   // os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"
///       auto device = torchkit::best_device();     // cuda:0 = physical GPU 0
///       ...
///     }
class VisibleDevices {
 public:
  /// Makes the devices of `spec` visible: `"0"`, `"0,1"`, `""` (none), `"GPU-<uuid>"`,
  /// `"MIG-<uuid>"`, or a comma-separated mix.
  explicit VisibleDevices(std::string_view spec) : VisibleDevices(validated(spec), Validated{}) {}

  /// Makes the devices with these indices visible, in this priority order: `{1, 0}`.
  explicit VisibleDevices(std::initializer_list<int> ids)
      : VisibleDevices(std::span<const int>(ids.begin(), ids.size())) {}

  /// Makes the devices with these indices visible, in this priority order.
  explicit VisibleDevices(std::span<const int> ids)
      : VisibleDevices(detail::device_spec_from_ids(ids, "VisibleDevices"), Validated{}) {}

  VisibleDevices(const VisibleDevices&) = delete;
  VisibleDevices& operator=(const VisibleDevices&) = delete;
  VisibleDevices(VisibleDevices&&) = delete;
  VisibleDevices& operator=(VisibleDevices&&) = delete;

  /// Restores CUDA_VISIBLE_DEVICES to the value found on construction (or unsets it).
  ~VisibleDevices() { (void)detail::set_environment_noexcept(detail::visible_devices_variable, previous_); }

  /// The spec this guard set, e.g. `"0,1"`.
  [[nodiscard]] const std::string& spec() const noexcept { return spec_; }

  /// The value CUDA_VISIBLE_DEVICES had before (nullopt: it was not set); restored on destruction.
  [[nodiscard]] const std::optional<std::string>& previous() const noexcept { return previous_; }

  /// One GPU per process, the torchrun convention: reads LOCAL_RANK (set by torchrun for each
  /// process on a node) and makes the LOCAL_RANK-th device of the current CUDA_VISIBLE_DEVICES
  /// visible (so a scheduler's "2,3" is respected: local rank 1 gets GPU 3), or device LOCAL_RANK
  /// when CUDA_VISIBLE_DEVICES is not set.
  ///
  /// @throws Error when LOCAL_RANK is unset, not a non-negative integer, or beyond the list.
  ///
  ///     auto devices = torchkit::VisibleDevices::for_local_rank();   // LOCAL_RANK=1 -> "1"
  [[nodiscard]] static VisibleDevices for_local_rank() {
    const auto current = detail::get_environment(detail::visible_devices_variable);
    if (!current) {
      const int rank = local_rank();
      return VisibleDevices(std::to_string(rank), Validated{});
    }
    const auto entries = detail::split_device_spec(
        *current, "VisibleDevices::for_local_rank (the current CUDA_VISIBLE_DEVICES)");
    const auto rank = static_cast<std::size_t>(local_rank());
    TORCHKIT_CHECK(rank < entries.size(),
                   "VisibleDevices::for_local_rank: LOCAL_RANK={} is beyond the {} device(s) of "
                   "CUDA_VISIBLE_DEVICES=\"{}\" (valid local ranks: {}); start at most that many processes "
                   "per node (torchrun --nproc-per-node)",
                   rank, entries.size(), *current, valid_ranks(entries.size()));
    return VisibleDevices(entries[rank].text, Validated{});
  }

  /// Like for_local_rank(), with the devices of this node given: local rank k gets `devices[k]`.
  ///
  ///     auto devices = torchkit::VisibleDevices::for_local_rank({4, 5, 6, 7});   // LOCAL_RANK=1 -> "5"
  [[nodiscard]] static VisibleDevices for_local_rank(std::span<const int> devices) {
    (void)detail::device_spec_from_ids(devices, "VisibleDevices::for_local_rank");
    const auto rank = static_cast<std::size_t>(local_rank());
    TORCHKIT_CHECK(rank < devices.size(),
                   "VisibleDevices::for_local_rank: LOCAL_RANK={} is beyond the device list of {} entr{} "
                   "(valid local ranks: {})",
                   rank, devices.size(), devices.size() == 1 ? "y" : "ies", valid_ranks(devices.size()));
    return VisibleDevices(std::to_string(devices[rank]), Validated{});
  }

  /// Like for_local_rank(std::span<const int>), for a braced list.
  [[nodiscard]] static VisibleDevices for_local_rank(std::initializer_list<int> devices) {
    return for_local_rank(std::span<const int>(devices.begin(), devices.size()));
  }

 private:
  struct Validated {};

  // `spec` is valid here. Refuses to act when CUDA has started and the value would change.
  VisibleDevices(std::string spec, Validated)
      : spec_(std::move(spec)), previous_(detail::get_environment(detail::visible_devices_variable)) {
    if (previous_ != spec_ && detail::cuda_driver_initialised()) {
      detail::fail(
          "VisibleDevices(\"{}\"): CUDA is already initialised in this process, so setting "
          "CUDA_VISIBLE_DEVICES now would silently do nothing (CUDA read it once, at start-up, when it was {}). "
          "Create the VisibleDevices before anything touches CUDA (torch::cuda::is_available(), device_count(), "
          "best_device(), the first CUDA tensor), or set CUDA_VISIBLE_DEVICES in the environment that starts "
          "the program",
          spec_, detail::quoted_environment_value(previous_));
    }
    detail::set_environment(detail::visible_devices_variable, spec_);
  }

  static std::string validated(std::string_view spec) {
    (void)detail::split_device_spec(spec, "VisibleDevices");
    return std::string(spec);
  }

  static int local_rank() {
    const auto value = detail::get_environment("LOCAL_RANK");
    TORCHKIT_CHECK(value.has_value(),
                   "VisibleDevices::for_local_rank: LOCAL_RANK is not set; torchrun (torch.distributed.run) sets "
                   "it for every process it starts. Launch with torchrun, or choose the device yourself: "
                   "VisibleDevices(\"0\")");
    int rank = -1;
    const auto [end, error] = std::from_chars(value->data(), value->data() + value->size(), rank);
    TORCHKIT_CHECK(error == std::errc() && end == value->data() + value->size() && rank >= 0,
                   "VisibleDevices::for_local_rank: LOCAL_RANK=\"{}\" is not a non-negative integer", *value);
    return rank;
  }

  static std::string valid_ranks(std::size_t count) {
    return count == 0 ? std::string("none") : fmt::format("0..{}", count - 1);
  }

  std::string spec_;
  std::optional<std::string> previous_;
};

/// The device to run on: `cuda:0` where CUDA is available, else `cpu` (Python:
/// `torch.device("cuda" if torch.cuda.is_available() else "cpu")`). Starts CUDA when LibTorch
/// has it, so create any VisibleDevices first.
///
///     auto model = Net();
///     model->to(torchkit::best_device());
[[nodiscard]] inline c10::Device best_device() {
  if (torch::cuda::is_available()) {
    return c10::Device(c10::DeviceType::CUDA, 0);
  }
  return c10::Device(c10::DeviceType::CPU);
}

}  // namespace torchkit
// ---- end torchkit/devices.hpp ----
// ---- begin torchkit/summary.hpp ----
/// @file summary.hpp
/// Tip 2: print a model summary: each layer's output shape and parameter count, mult-adds and
/// memory estimates, for any LibTorch module.
///
/// Python (pytorch-summary / torchinfo):
///
///     from torchinfo import summary
///     summary(model, input_size=(2, 3, 224, 224))
///
/// C++:
///
///     std::cout << torchkit::summary(net, {3, 224, 224}) << '\n';
///
/// LibTorch has no forward hooks. summary() runs one forward pass (in eval mode, without
/// gradients) and reconstructs the module calls: `Sequential` containers are walked child by
/// child, and for any other forward the ATen operators it runs are observed with thread-local
/// `at::RecordFunction` callbacks and attributed to the modules whose parameters they read
/// (parameter-free modules such as ReLU or MaxPool2d by the operator they run). See
/// detail/summary_build.hpp for the rules.
///
/// What the reconstruction cannot know, and what it does then:
/// - A functional call (`torch::relu(x)`) and a registered `ReLU` module run the same operator;
///   an operator is given to a parameter-free module only where one of that kind is registered
///   near the last module called, so a model mixing both may show a functional call as a
///   (recursive) call of the module.
/// - A parameter-free module that runs no operator of its own name (`Identity`, a custom
///   parameter-free module) is not seen: it appears with an empty shape, like a module never
///   called.
/// - Inside a custom forward, a container's output is the output of the last module call
///   inside it (an `x + identity` after its last layer is not seen; the shape is the same).
/// - Looping over a Sequential's children runs the same operators as calling it, and shows as
///   a call of the Sequential.
/// Sequential children and the model itself are exact: their outputs are what forward returned.

// ---- begin torchkit/detail/shape.hpp ----
/// @file detail/shape.hpp
/// Shapes and multi-dimensional indices in messages and tables, as Python prints lists: `[3, 17]`.

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

namespace torchkit::detail {

/// `[2, 3, 4]` for sizes {2, 3, 4}; `[]` for a 0-dim tensor.
[[nodiscard]] inline std::string shape_string(c10::IntArrayRef sizes) {
  std::string text = "[";
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    if (i > 0) {
      text += ", ";
    }
    text += std::to_string(sizes[i]);
  }
  text += "]";
  return text;
}

/// The multi-dimensional (row-major) index of element `flat_index` of a tensor of shape `sizes`,
/// as `[3, 17]`.
[[nodiscard]] inline std::string index_string(int64_t flat_index, c10::IntArrayRef sizes) {
  std::string text;
  for (std::size_t i = sizes.size(); i-- > 0;) {
    const int64_t size = sizes[i] > 0 ? sizes[i] : 1;
    const std::string coordinate = std::to_string(flat_index % size);
    flat_index /= size;
    text = (i + 1 < sizes.size() ? coordinate + ", " : coordinate) + text;
  }
  return "[" + text + "]";
}

}  // namespace torchkit::detail
// ---- end torchkit/detail/shape.hpp ----
// ---- begin torchkit/detail/summary_build.hpp ----
/// @file detail/summary_build.hpp
/// Internals of summary.hpp: the module tree of a model, and the turning of an observed forward
/// pass into one row per module call.
///
/// LibTorch has no forward hooks, so module calls are reconstructed:
/// - `Sequential` containers are walked exactly: each child is run by summary itself, so its
///   call and its output are known exactly.
/// - Inside any other forward (a "region"), the top-level ATen operators are recorded
///   (detail/summary_trace.hpp) and attributed to the region's submodules: an operator that
///   reads a module's own parameters or buffers (or tensors computed only from them, such as
///   `weight.t()`) belongs to that module; an operator that reads none is matched to a
///   parameter-free leaf module (ReLU, Dropout, MaxPool2d, Flatten, ...) by the operator's name,
///   searching the module tree outwards from the last module called. Container modules are
///   called for the span of their descendants' calls and output what the last of them output.
/// - A module called again gets a new row marked recursive. A module never called still gets a
///   row, with an empty shape.

// ---- begin torchkit/detail/summary_trace.hpp ----
/// @file detail/summary_trace.hpp
/// Internals of summary.hpp: observes the ATen operators a forward pass runs, with thread-local
/// `at::RecordFunction` callbacks, and records for each top-level operator which module state
/// (parameters, buffers) it read and the shape of its first tensor output.
///
/// Only operators at nesting depth 0 are recorded (`aten::linear` is recorded, the `aten::t` and
/// `aten::addmm` it runs inside are not). The callbacks are thread-local, so two threads can
/// observe two forward passes at once; an operator that runs on another thread (inside an
/// intra-op parallel region) finds no recorder there and is ignored.


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
// ---- end torchkit/detail/summary_trace.hpp ----

#include <ATen/core/Tensor.h>
#include <c10/util/irange.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/parameterdict.h>
#include <torch/nn/modules/container/parameterlist.h>
#include <torch/nn/modules/container/sequential.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace torchkit::detail::summary_impl {

/// The class name a Python user would see: `torch::nn::Conv2dImpl` -> `Conv2d`,
/// `(anonymous namespace)::NetImpl` -> `Net`, `ns::Block<3>` -> `Block<3>`.
inline std::string short_type_name(std::string_view full) {
  std::size_t start = 0;
  int nesting = 0;
  for (std::size_t i = 0; i < full.size(); ++i) {
    const char c = full[i];
    if (c == '<' || c == '(') {
      ++nesting;
    } else if (c == '>' || c == ')') {
      --nesting;
    } else if (nesting == 0 && c == ':' && i + 1 < full.size() && full[i + 1] == ':') {
      start = i + 2;
      ++i;
    }
  }
  std::string name(full.substr(start));
  const std::size_t template_start = std::min(name.find('<'), name.size());
  constexpr std::string_view impl = "Impl";
  if (template_start > impl.size() && name.compare(template_start - impl.size(), impl.size(), impl) == 0) {
    name.erase(template_start - impl.size(), impl.size());
  }
  return name;
}

/// An operator or class name reduced for matching: namespace dropped, underscores dropped,
/// lower case. `aten::max_pool2d` -> `maxpool2d`, `MaxPool2d` -> `maxpool2d`, `aten::relu_` -> `relu`.
inline std::string operator_key(std::string_view name) {
  if (const auto colons = name.rfind("::"); colons != std::string_view::npos) {
    name.remove_prefix(colons + 2);
  }
  std::string key;
  key.reserve(name.size());
  for (const char c : name) {
    if (c != '_') {
      key.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    }
  }
  return key;
}

/// The operator keys a parameter-free module of this type shows up as. Most LibTorch modules
/// run the operator named like the class; the rest are listed here.
inline std::vector<std::string> operator_keys_of_type(const std::string& type) {
  const std::string key = operator_key(type.substr(0, type.find('<')));
  std::vector<std::string> keys{key, key + "withindices"};
  static const std::map<std::string, std::vector<std::string>, std::less<>> extra{
      {"dropout1d", {"featuredropout", "dropout"}},
      {"dropout2d", {"featuredropout", "dropout2d"}},
      {"dropout3d", {"featuredropout", "dropout3d"}},
      {"relu6", {"hardtanh", "relu6"}},
      {"softmax2d", {"softmax"}},
      {"softmin", {"softmax"}},
      {"zeropad1d", {"constantpadnd", "padenum", "pad"}},
      {"zeropad2d", {"constantpadnd", "padenum", "pad"}},
      {"zeropad3d", {"constantpadnd", "padenum", "pad"}},
      {"upsample", {"upsample"}},
      {"instancenorm1d", {"instancenorm"}},
      {"instancenorm2d", {"instancenorm"}},
      {"instancenorm3d", {"instancenorm"}},
      {"batchnorm1d", {"batchnorm"}},
      {"batchnorm2d", {"batchnorm"}},
      {"batchnorm3d", {"batchnorm"}},
      {"fold", {"col2im"}},
      {"unfold", {"im2col"}},
      {"bceloss", {"binarycrossentropy"}},
      {"bcewithlogitsloss", {"binarycrossentropywithlogits"}},
      {"nllloss", {"nllloss2d", "nlllossnd"}},
      {"kldivloss", {"kldiv"}},
  };
  if (const auto found = extra.find(key); found != extra.end()) {
    keys.insert(keys.end(), found->second.begin(), found->second.end());
  }
  if (key.find("pad") != std::string::npos) {
    keys.emplace_back("padenum");
    keys.emplace_back("pad");
  }
  return keys;
}

/// The key an observed operator is looked up by (all `upsample_*` operators share one).
inline std::string observed_operator_key(std::string_view name) {
  std::string key = operator_key(name);
  if (key.rfind("upsample", 0) == 0) {
    key = "upsample";
  }
  return key;
}

/// A parameter registered on a module itself.
struct OwnParameter {
  const c10::TensorImpl* impl = nullptr;
  int64_t count = 0;
  bool trainable = false;
};

/// One module of the model, in pre-order (index 0 is the model itself).
struct ModuleNode {
  torch::nn::Module* module = nullptr;
  std::string name;  ///< dotted path, "" for the model itself
  std::string type;  ///< short class name
  int depth = 0;
  int parent = -1;
  std::vector<int> children;
  int subtree_end = 0;         ///< nodes [index, subtree_end) are this module and its descendants
  bool sequential = false;     ///< a Sequential: its children are walked exactly
  bool callable = true;        ///< false for ModuleList, ModuleDict, ParameterList, ParameterDict
  int64_t params = 0;          ///< parameters of the module and its descendants, each once
  int64_t trainable_params = 0;
  int64_t own_params = 0;      ///< parameters registered on this module itself
  std::vector<std::pair<std::string, int64_t>> own_parameter_sizes;  ///< name, element count
  std::vector<OwnParameter> own_parameters;
  std::vector<int> own_state;  ///< state indices of its own parameters and buffers
  std::vector<std::string> operator_keys;  ///< for parameter-free leaves: operators it runs
  bool leaf() const { return children.empty(); }
};

/// One row of a summary as built (torchkit::Summary::Row plus layout information).
struct RowRecord {
  int node = 0;
  int depth = 0;
  std::vector<int64_t> output_shape;
  int64_t output_element_size = 0;
  bool called = false;       ///< a call observed in the forward pass
  bool recursive = false;    ///< the module had a row before
  bool placeholder = false;  ///< a container shown again so that the tree stays a tree
  int64_t mult_adds = 0;
  int depth_index = 0;       ///< torchinfo's "depth-idx" index, 0 where none
};

/// Builds the rows of one summary: the module tree, the observed calls, and the layout.
class SummaryBuilder {
 public:
  explicit SummaryBuilder(torch::nn::Module& root) {
    add_node(root, "", 0, -1);
    count_subtree_parameters();
    call_count_.assign(nodes_.size(), 0);
    appeared_.assign(nodes_.size(), false);
  }

  const std::vector<ModuleNode>& nodes() const { return nodes_; }
  std::vector<RowRecord>& rows() { return rows_; }
  Recorder& recorder() { return recorder_; }

  /// Appends the row of a new call of `node`; returns its index.
  int open_call(int node) {
    RowRecord row;
    row.node = node;
    row.depth = nodes_[static_cast<std::size_t>(node)].depth;
    row.called = true;
    ++call_count_[static_cast<std::size_t>(node)];
    // Recursive: this module object had a row before (a module registered twice is one module).
    row.recursive = !seen_modules_.insert(nodes_[static_cast<std::size_t>(node)].module).second;
    appeared_[static_cast<std::size_t>(node)] = true;
    rows_.push_back(std::move(row));
    return static_cast<int>(rows_.size()) - 1;
  }

  void set_output(int row, std::vector<int64_t> shape, int64_t element_size) {
    rows_[static_cast<std::size_t>(row)].output_shape = std::move(shape);
    rows_[static_cast<std::size_t>(row)].output_element_size = element_size;
  }

  /// The output of the last recorded operator of the region (used where a forward returns
  /// something that is no tensor and no tuple of tensors).
  const OpRecord* last_output_of_region() const {
    for (auto op = recorder_.ops.rbegin(); op != recorder_.ops.rend(); ++op) {
      if (op->has_output) {
        return &*op;
      }
    }
    return nullptr;
  }

  /// Attributes the operators recorded while `region_node`'s forward ran to its descendants.
  void attribute_region(int region_node) {
    std::vector<OpenCall> open;
    int context = region_node;
    for (const OpRecord& op : recorder_.ops) {
      if (!op.has_output || op.prepares_state()) {
        continue;
      }
      if (!op.state_read.empty()) {
        const int owner = owner_of(op, region_node, open);
        if (owner >= 0) {
          record_event(region_node, owner, op, /*reads_state=*/true, open);
          context = owner;
        }
        continue;
      }
      const int module = parameter_free_module_for(op, region_node, context);
      if (module >= 0) {
        record_event(region_node, module, op, /*reads_state=*/false, open);
        context = module;
      }
    }
  }

  /// Adds the rows of modules never called, numbers the rows, computes mult-adds.
  void finish() {
    if (rows_.empty() || rows_.front().node != 0) {
      RowRecord root;
      root.node = 0;
      rows_.insert(rows_.begin(), root);
      appeared_[0] = true;
      seen_modules_.insert(nodes_[0].module);
    }
    add_rows_of_modules_never_called();
    number_rows();
    compute_mult_adds();
  }

 private:
  struct OpenCall {
    int node;
    int row;
    std::vector<int> state_read;     ///< state read by this call so far
    std::vector<int> called_children;
  };

  int add_node(torch::nn::Module& module, std::string name, int depth, int parent) {
    const int index = static_cast<int>(nodes_.size());
    {
      ModuleNode node;
      node.module = &module;
      node.name = std::move(name);
      node.type = short_type_name(module.name());
      node.depth = depth;
      node.parent = parent;
      node.sequential = dynamic_cast<torch::nn::SequentialImpl*>(&module) != nullptr;
      node.callable = dynamic_cast<torch::nn::ModuleListImpl*>(&module) == nullptr &&
                      dynamic_cast<torch::nn::ModuleDictImpl*>(&module) == nullptr &&
                      dynamic_cast<torch::nn::ParameterListImpl*>(&module) == nullptr &&
                      dynamic_cast<torch::nn::ParameterDictImpl*>(&module) == nullptr;
      nodes_.push_back(std::move(node));
    }
    {
      ModuleNode& node = nodes_.back();
      for (const auto& item : module.named_parameters(/*recurse=*/false)) {
        const at::Tensor& parameter = item.value();
        node.own_params += parameter.numel();
        node.own_parameter_sizes.emplace_back(item.key(), parameter.numel());
        node.own_parameters.push_back(
            OwnParameter{parameter.unsafeGetTensorImpl(), parameter.numel(), parameter.requires_grad()});
        add_state(index, parameter);
      }
      for (const auto& item : module.named_buffers(/*recurse=*/false)) {
        add_state(index, item.value());
      }
    }
    const std::string prefix = nodes_.back().name.empty() ? "" : nodes_.back().name + ".";
    for (const auto& child : module.named_children()) {
      const int child_index = add_node(*child.value(), prefix + child.key(), depth + 1, index);
      nodes_[static_cast<std::size_t>(index)].children.push_back(child_index);
    }
    ModuleNode& node = nodes_[static_cast<std::size_t>(index)];
    node.subtree_end = static_cast<int>(nodes_.size());
    if (node.leaf() && node.own_state.empty()) {
      node.operator_keys = operator_keys_of_type(node.type);
      for (const std::string& key : node.operator_keys) {
        parameter_free_by_key_[key].push_back(index);
      }
    }
    return index;
  }

  /// Parameters of each module and its descendants, each tensor once.
  void count_subtree_parameters() {
    bool shared = false;
    for (const ModuleNode& node : nodes_) {
      for (const int state : node.own_state) {
        shared = shared || state_owners_[static_cast<std::size_t>(state)].size() > 1;
      }
    }
    if (!shared) {  // every parameter has one owner: sum bottom-up
      for (std::size_t index = nodes_.size(); index-- > 0;) {
        ModuleNode& node = nodes_[index];
        for (const OwnParameter& parameter : node.own_parameters) {
          node.params += parameter.count;
          node.trainable_params += parameter.trainable ? parameter.count : 0;
        }
        for (const int child : node.children) {
          node.params += nodes_[static_cast<std::size_t>(child)].params;
          node.trainable_params += nodes_[static_cast<std::size_t>(child)].trainable_params;
        }
      }
      return;
    }
    for (ModuleNode& node : nodes_) {  // tied parameters: count each tensor once per subtree
      std::unordered_set<const c10::TensorImpl*> seen;
      const int first = static_cast<int>(&node - nodes_.data());
      for (int other = first; other < node.subtree_end; ++other) {
        for (const OwnParameter& parameter : nodes_[static_cast<std::size_t>(other)].own_parameters) {
          if (seen.insert(parameter.impl).second) {
            node.params += parameter.count;
            node.trainable_params += parameter.trainable ? parameter.count : 0;
          }
        }
      }
    }
  }

  void add_state(int node, const at::Tensor& tensor) {
    if (!tensor.defined()) {
      return;
    }
    const auto [entry, inserted] =
        recorder_.state_index.emplace(tensor.unsafeGetTensorImpl(), static_cast<int>(state_owners_.size()));
    if (inserted) {
      state_owners_.emplace_back();
    }
    auto& owners = state_owners_[static_cast<std::size_t>(entry->second)];
    if (std::find(owners.begin(), owners.end(), node) == owners.end()) {
      owners.push_back(node);
      nodes_[static_cast<std::size_t>(node)].own_state.push_back(entry->second);
    }
  }

  bool strictly_below(int node, int ancestor) const {
    return node > ancestor && node < nodes_[static_cast<std::size_t>(ancestor)].subtree_end;
  }

  static bool contains(const std::vector<int>& values, int value) {
    return std::find(values.begin(), values.end(), value) != values.end();
  }

  /// The module whose own state the operator reads most of (below the region's module).
  int owner_of(const OpRecord& op, int region_node, const std::vector<OpenCall>& open) const {
    int best = -1;
    std::size_t best_score = 0;
    int best_rank = 0;
    for (const int state : op.state_read) {
      for (const int candidate : state_owners_[static_cast<std::size_t>(state)]) {
        if (!strictly_below(candidate, region_node)) {
          continue;
        }
        const auto& own = nodes_[static_cast<std::size_t>(candidate)].own_state;
        std::size_t score = 0;
        for (const int read : op.state_read) {
          score += contains(own, read) ? 1 : 0;
        }
        // Ties: a module whose call is open, then one not called yet, then registration order.
        const bool is_open = std::any_of(open.begin(), open.end(), [&](const OpenCall& call) { return call.node == candidate; });
        const int rank = is_open ? 2 : (call_count_[static_cast<std::size_t>(candidate)] == 0 ? 1 : 0);
        if (best < 0 || score > best_score || (score == best_score && rank > best_rank) ||
            (score == best_score && rank == best_rank && candidate < best)) {
          best = candidate;
          best_score = score;
          best_rank = rank;
        }
      }
    }
    return best;
  }

  /// Whether every module with parameters registered before `node` in its parent has been
  /// called: a parameter-free module is usually called after the layers registered before it.
  bool plausible_next(int node) const {
    const int parent = nodes_[static_cast<std::size_t>(node)].parent;
    for (int other = parent + 1; other < node; ++other) {
      if (!nodes_[static_cast<std::size_t>(other)].own_state.empty() && call_count_[static_cast<std::size_t>(other)] == 0) {
        return false;
      }
    }
    return true;
  }

  /// The parameter-free leaf module an operator that reads no module state belongs to, or -1.
  int parameter_free_module_for(const OpRecord& op, int region_node, int context) const {
    const auto found = parameter_free_by_key_.find(observed_operator_key(op.name));
    if (found == parameter_free_by_key_.end()) {
      return -1;
    }
    const std::vector<int>& candidates = found->second;
    auto pick = [&](auto&& accept) {
      int first = -1;
      for (const int candidate : candidates) {
        if (!accept(candidate)) {
          continue;
        }
        if (candidate > context) {
          return candidate;
        }
        if (first < 0) {
          first = candidate;
        }
      }
      return first;
    };
    int scope = context == region_node ? region_node : nodes_[static_cast<std::size_t>(context)].parent;
    int called_before = -1;
    while (true) {
      const int fresh = pick([&](int candidate) {
        return strictly_below(candidate, scope) && call_count_[static_cast<std::size_t>(candidate)] == 0 &&
               (called_before < 0 || plausible_next(candidate));
      });
      if (fresh >= 0) {
        return fresh;
      }
      if (called_before < 0) {
        called_before = pick([&](int candidate) {
          return strictly_below(candidate, scope) && call_count_[static_cast<std::size_t>(candidate)] > 0;
        });
      }
      if (scope == region_node) {
        return called_before;
      }
      scope = nodes_[static_cast<std::size_t>(scope)].parent;
    }
  }

  /// Opens, continues or closes the calls an attributed operator implies.
  void record_event(int region_node, int module, const OpRecord& op, bool reads_state, std::vector<OpenCall>& open) {
    // The chain of modules from the region's child down to `module`.
    std::vector<int> chain;
    for (int node = module; node != region_node; node = nodes_[static_cast<std::size_t>(node)].parent) {
      chain.push_back(node);
    }
    std::reverse(chain.begin(), chain.end());

    std::size_t matched = 0;
    while (matched < open.size() && matched < chain.size() && open[matched].node == chain[matched]) {
      ++matched;
    }
    bool continuation = false;
    if (matched == chain.size()) {
      // `module` is open: the operator continues its call if it reads state the call has not
      // read yet (`x * weight + bias`), or, for a module with submodules (MultiheadAttention),
      // if none of them has been called yet in this call (the in-projections of q, k and v all
      // read in_proj_weight). Otherwise it is a new call of the module.
      const OpenCall& call = open[matched - 1];
      const bool new_state = std::none_of(op.state_read.begin(), op.state_read.end(),
                                          [&](int state) { return contains(call.state_read, state); });
      const bool before_submodules = !nodes_[static_cast<std::size_t>(module)].leaf() && call.called_children.empty();
      continuation = reads_state && (new_state || before_submodules);
      if (!continuation) {
        matched = chain.size() - 1;
      }
    }
    if (!continuation && reads_state && chain.size() >= 2 && matched == chain.size() - 1) {
      // A module with parameters called again inside the same call of its parent: the parent
      // was called again (`block(block(x))`), unless the parent cannot be called (ModuleList).
      const OpenCall& parent_call = open[matched - 1];
      if (nodes_[static_cast<std::size_t>(parent_call.node)].callable && contains(parent_call.called_children, module)) {
        matched -= 1;
      }
    }
    open.resize(matched);
    for (std::size_t i = matched; i < chain.size(); ++i) {
      const int node = chain[i];
      int row = -1;
      if (nodes_[static_cast<std::size_t>(node)].callable) {
        row = open_call(node);
      } else {
        RowRecord record;
        record.node = node;
        record.depth = nodes_[static_cast<std::size_t>(node)].depth;
        record.placeholder = appeared_[static_cast<std::size_t>(node)];
        record.recursive = !seen_modules_.insert(nodes_[static_cast<std::size_t>(node)].module).second;
        appeared_[static_cast<std::size_t>(node)] = true;
        rows_.push_back(std::move(record));
        row = static_cast<int>(rows_.size()) - 1;
      }
      if (i > 0) {
        open[i - 1].called_children.push_back(node);
      }
      open.push_back(OpenCall{node, row, {}, {}});
    }
    OpenCall& call = open.back();
    call.state_read.insert(call.state_read.end(), op.state_read.begin(), op.state_read.end());
    for (const OpenCall& entry : open) {
      if (nodes_[static_cast<std::size_t>(entry.node)].callable) {
        set_output(entry.row, op.output_shape, op.output_element_size);
      }
    }
  }

  void add_rows_of_modules_never_called() {
    for (std::size_t node = 1; node < nodes_.size(); ++node) {
      if (appeared_[node]) {
        continue;
      }
      const int parent = nodes_[node].parent;
      std::size_t position = 0;
      while (rows_[position].node != parent) {
        ++position;
      }
      const int parent_depth = rows_[position].depth;
      ++position;
      while (position < rows_.size() && rows_[position].depth > parent_depth) {
        ++position;
      }
      RowRecord row;
      row.node = static_cast<int>(node);
      row.depth = nodes_[node].depth;
      row.recursive = !seen_modules_.insert(nodes_[node].module).second;
      rows_.insert(rows_.begin() + static_cast<std::ptrdiff_t>(position), std::move(row));
      appeared_[node] = true;
    }
  }

  void number_rows() {
    std::vector<int> counters;
    for (RowRecord& row : rows_) {
      if (row.depth == 0 || row.placeholder) {
        continue;
      }
      if (counters.size() <= static_cast<std::size_t>(row.depth)) {
        counters.resize(static_cast<std::size_t>(row.depth) + 1, 0);
      }
      row.depth_index = ++counters[static_cast<std::size_t>(row.depth)];
    }
  }

  /// torchinfo's rule, per parameter of a leaf module: `weight`/`bias` of a Conv: count times
  /// N times the spatial output size; of a Linear: count times prod(output[:-1]); of anything
  /// else: count times output[0]; other parameters named `*weight*`/`*bias*` (RNN weights such as
  /// `weight_ih_l0`): count times prod(output[:2]).
  int64_t leaf_mult_adds(const ModuleNode& node, const std::vector<int64_t>& output) const {
    if (output.empty()) {
      return 0;
    }
    auto product = [&](std::size_t begin, std::size_t end) {
      int64_t result = 1;
      for (std::size_t i = begin; i < std::min(end, output.size()); ++i) {
        result *= output[i];
      }
      return result;
    };
    const bool conv = node.type.find("Conv") != std::string::npos;
    const bool linear = node.type.find("Linear") != std::string::npos;
    int64_t total = 0;
    for (const auto& [name, count] : node.own_parameter_sizes) {
      if (name == "weight" || name == "bias") {
        if (conv) {
          total += count * output[0] * product(2, output.size());
        } else if (linear) {
          total += count * product(0, output.size() - 1);
        } else {
          total += count * output[0];
        }
      } else if (name.find("weight") != std::string::npos || name.find("bias") != std::string::npos) {
        total += count * product(0, 2);
      }
    }
    return total;
  }

  void compute_mult_adds() {
    for (RowRecord& row : rows_) {
      const ModuleNode& node = nodes_[static_cast<std::size_t>(row.node)];
      row.mult_adds = node.leaf() ? leaf_mult_adds(node, row.output_shape) : 0;
    }
    // A container's mult-adds are those of the leaf calls nested in its call.
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      if (nodes_[static_cast<std::size_t>(rows_[i].node)].leaf()) {
        continue;
      }
      int64_t sum = 0;
      for (std::size_t j = i + 1; j < rows_.size() && rows_[j].depth > rows_[i].depth; ++j) {
        if (nodes_[static_cast<std::size_t>(rows_[j].node)].leaf()) {
          sum += rows_[j].mult_adds;
        }
      }
      rows_[i].mult_adds = sum;
    }
  }

  std::vector<ModuleNode> nodes_;
  std::vector<std::vector<int>> state_owners_;  ///< state index -> nodes owning it directly
  std::unordered_map<std::string, std::vector<int>> parameter_free_by_key_;
  std::vector<int> call_count_;
  std::vector<bool> appeared_;
  std::unordered_set<const torch::nn::Module*> seen_modules_;
  std::vector<RowRecord> rows_;
  Recorder recorder_;
};

}  // namespace torchkit::detail::summary_impl
// ---- end torchkit/detail/summary_build.hpp ----
// ---- begin torchkit/detail/summary_format.hpp ----
/// @file detail/summary_format.hpp
/// Internals of summary.hpp: the number and table formatting torchinfo and pytorch-summary use
/// (Python's `{:,}`, `{:.2f}`, left/right alignment by characters, the `├─`/`└─` tree).

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace torchkit::detail::summary_impl {

/// Python's `f"{value:,}"`: 21840 -> "21,840".
inline std::string with_thousands(int64_t value) {
  const std::string digits = std::to_string(value < 0 ? -value : value);
  std::string result;
  result.reserve(digits.size() + digits.size() / 3 + 1);
  if (value < 0) {
    result.push_back('-');
  }
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) {
      result.push_back(',');
    }
    result.push_back(digits[i]);
  }
  return result;
}

/// Python's `f"{value:,.2f}"`: 1234.5 -> "1,234.50".
inline std::string with_thousands_2f(double value) {
  std::string text = fmt::format("{:.2f}", value);
  const std::size_t sign = (!text.empty() && text[0] == '-') ? 1 : 0;
  const std::size_t point = text.find('.');
  std::string result = text.substr(0, sign);
  const std::string integer = text.substr(sign, point - sign);
  for (std::size_t i = 0; i < integer.size(); ++i) {
    if (i > 0 && (integer.size() - i) % 3 == 0) {
      result.push_back(',');
    }
    result.push_back(integer[i]);
  }
  result += text.substr(point);
  return result;
}

/// torchinfo's "Total mult-adds" value with its unit: " (M): 0.98", " (G): 8.18", " (M): 0".
/// The unit is T, G or M (the largest one the value reaches, M at least); a whole number is
/// printed without decimals, as torchinfo does.
inline std::string mult_adds_with_unit(int64_t count) {
  const auto value = static_cast<double>(count);
  const char* unit = "M";
  double scaled = value / 1e6;
  if (value >= 1e12) {
    unit = "T";
    scaled = value / 1e12;
  } else if (value >= 1e9) {
    unit = "G";
    scaled = value / 1e9;
  }
  const std::string number = scaled == std::floor(scaled) && std::abs(scaled) < 9.0e15
                                 ? with_thousands(static_cast<int64_t>(scaled))
                                 : with_thousands_2f(scaled);
  return fmt::format(" ({}): {}", unit, number);
}

/// Bytes as megabytes (1e6), two decimals: 113600 -> "0.11".
inline std::string megabytes(int64_t bytes) { return fmt::format("{:.2f}", static_cast<double>(bytes) / 1e6); }

/// Characters (code points) of a UTF-8 string: "├─" is 2.
inline std::size_t characters(std::string_view text) {
  std::size_t count = 0;
  for (const char c : text) {
    count += (static_cast<unsigned char>(c) & 0xC0U) != 0x80U ? 1 : 0;
  }
  return count;
}

inline std::string pad_right(std::string text, std::size_t width) {
  const std::size_t length = characters(text);
  if (length < width) {
    text.append(width - length, ' ');
  }
  return text;
}

inline std::string pad_left(const std::string& text, std::size_t width) {
  const std::size_t length = characters(text);
  return length < width ? std::string(width - length, ' ') + text : text;
}

/// The tree glyphs in front of a row: one entry per level below the root, true where the line
/// of that level goes on below this row; the last entry is this row's own level.
inline std::string tree_prefix(const std::vector<bool>& continues) {
  std::string prefix;
  for (std::size_t level = 0; level < continues.size(); ++level) {
    if (level > 0) {
      prefix += "    ";
    }
    const bool own_level = level + 1 == continues.size();
    if (own_level) {
      prefix += continues[level] ? "├─" : "└─";
    } else {
      prefix += continues[level] ? "│" : " ";
    }
  }
  return prefix;
}

}  // namespace torchkit::detail::summary_impl
// ---- end torchkit/detail/summary_format.hpp ----

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <c10/util/Type.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace torchkit {

/// How Summary::to_string() lays the table out.
enum class SummaryStyle {
  Tree,  ///< torchinfo: `Layer (type:depth-idx)`, `├─Conv2d: 1-1`, depth-limited, footer in MB
  Flat,  ///< pytorch-summary: `Layer (type)  Output Shape  Param #`, `Conv2d-1`, batch as -1
};

/// Options of summary(). Designated initializers read well: `{.depth = 1, .batch_size = 4}`.
struct SummaryOptions {
  int depth = 3;                         ///< rows deeper than this are not printed (torchinfo's depth)
  int64_t batch_size = 2;                ///< prepended to each input_size (2, so BatchNorm works)
  c10::Device device = at::kCPU;         ///< where the generated inputs are made; the model must be there
  at::ScalarType dtype = at::kFloat;     ///< dtype of the generated inputs
  SummaryStyle style = SummaryStyle::Tree;
  std::vector<at::ScalarType> dtypes{};  ///< one dtype per input, overriding `dtype` (torchinfo's dtypes)
  bool show_mult_adds = false;           ///< Tree style: add torchinfo's "Mult-Adds" column
  bool show_trainable = false;           ///< Tree style: add torchinfo's "Trainable" column (True/False/Partial)
};

class Summary;

namespace detail::summary_impl {
struct SummaryAccess;
}  // namespace detail::summary_impl

/// A model summary: one row per module call, in call order, and totals counted as torchinfo
/// counts them. Printable (`to_string()`, `operator<<`).
///
///     auto info = torchkit::summary(net, {1, 28, 28});
///     std::cout << info << '\n';
///     int64_t params = info.total_params();
class Summary {
 public:
  /// One module call (or, for a module never called, the module itself).
  struct Row {
    std::string name;                   ///< dotted path (`features.0`); "" for the model itself
    std::string type;                   ///< short class name (`Conv2d`)
    int depth = 0;                      ///< 0 for the model, 1 for its children, ...
    std::vector<int64_t> output_shape;  ///< first tensor of the output; empty where unknown
    int64_t params = 0;                 ///< parameters of the module and its submodules, each once
    int64_t trainable_params = 0;       ///< of those, how many require grad
    int64_t mult_adds = 0;              ///< this call's (for a container: its leaf calls' sum)
    bool recursive = false;             ///< the module was called (or shown) before
  };

  /// One row per module call, in call order; modules never called appear too, with an empty
  /// shape, after the rows of their parent.
  [[nodiscard]] const std::vector<Row>& rows() const noexcept { return rows_; }

  /// Parameters of the model, each tensor once (tied parameters count once).
  [[nodiscard]] int64_t total_params() const noexcept { return total_params_; }
  [[nodiscard]] int64_t trainable_params() const noexcept { return trainable_params_; }
  [[nodiscard]] int64_t non_trainable_params() const noexcept { return total_params_ - trainable_params_; }
  /// Sum of the leaf modules' mult-adds over all calls (torchinfo's "Total mult-adds").
  [[nodiscard]] int64_t total_mult_adds() const noexcept { return total_mult_adds_; }
  /// Bytes of the inputs of the forward pass.
  [[nodiscard]] int64_t input_bytes() const noexcept { return input_bytes_; }
  /// 2 x the bytes of the outputs of every call of a leaf module with parameters (activations
  /// and their gradients), torchinfo's "Forward/backward pass size".
  [[nodiscard]] int64_t forward_backward_bytes() const noexcept { return forward_backward_bytes_; }
  /// Bytes of the parameters, each tensor once.
  [[nodiscard]] int64_t param_bytes() const noexcept { return param_bytes_; }
  [[nodiscard]] int64_t total_bytes() const noexcept { return input_bytes_ + forward_backward_bytes_ + param_bytes_; }

  /// Whether a forward pass was run (false for `summary(model)`: parameters only).
  [[nodiscard]] bool has_forward_pass() const noexcept { return forward_pass_; }
  [[nodiscard]] const SummaryOptions& options() const noexcept { return options_; }

  /// The table in the style of the options.
  [[nodiscard]] std::string to_string() const { return to_string(options_.style); }
  /// The table in the given style.
  [[nodiscard]] std::string to_string(SummaryStyle style) const {
    return style == SummaryStyle::Flat ? flat_table() : tree_table();
  }

  friend std::ostream& operator<<(std::ostream& out, const Summary& summary) { return out << summary.to_string(); }

 private:
  friend struct detail::summary_impl::SummaryAccess;

  struct Layout {
    bool leaf = true;          ///< the module has no submodules
    bool called = false;       ///< a call seen in the forward pass
    bool placeholder = false;  ///< a container repeated to keep the tree a tree
    bool container = false;    ///< Sequential, ModuleList, ModuleDict: not shown in the Flat style
    int depth_index = 0;
    int64_t own_params = 0;    ///< parameters registered on the module itself (the Flat style's count)
  };

  Summary() = default;

  [[nodiscard]] std::string title_of(std::size_t row) const {
    const Row& r = rows_[row];
    if (r.depth == 0) {
      return r.type;
    }
    return layout_[row].placeholder ? fmt::format("{}: {}", r.type, r.depth)
                                    : fmt::format("{}: {}-{}", r.type, r.depth, layout_[row].depth_index);
  }

  /// torchinfo's leftover_params: a container's parameters not shown by the rows below it
  /// (leaf rows count their parameters, container rows their own leftover; repeated rows none).
  [[nodiscard]] std::vector<int64_t> leftover_params() const {
    std::vector<int64_t> leftover(rows_.size(), 0);
    for (std::size_t i = rows_.size(); i-- > 0;) {
      int64_t children = 0;
      for (std::size_t j = i + 1; j < rows_.size() && rows_[j].depth > rows_[i].depth; ++j) {
        if (!rows_[j].recursive) {
          children += layout_[j].leaf ? rows_[j].params : leftover[j];
        }
      }
      leftover[i] = rows_[i].params - children;
    }
    return leftover;
  }

  [[nodiscard]] std::string tree_table() const {
    namespace impl = detail::summary_impl;
    constexpr std::size_t column_width = 25;
    const int max_depth = options_.depth;
    std::vector<std::string> titles;
    if (forward_pass_) {
      titles.emplace_back("Output Shape");
    }
    titles.emplace_back("Param #");
    const bool mult_adds_column = forward_pass_ && options_.show_mult_adds;
    if (mult_adds_column) {
      titles.emplace_back("Mult-Adds");
    }
    if (options_.show_trainable) {
      titles.emplace_back("Trainable");
    }
    std::size_t name_width = 40;
    {
      std::size_t longest = 0;
      for (std::size_t i = 0; i < rows_.size(); ++i) {
        longest = std::max(longest, impl::characters(title_of(i)) + static_cast<std::size_t>(rows_[i].depth) * 5 + 1);
      }
      if (longest >= name_width) {
        name_width = (longest + 4) / 5 * 5;
      }
    }
    const std::string divider(titles.size() * column_width + name_width, '=');
    auto format_row = [&](const std::string& name, const std::vector<std::string>& values) {
      std::string line = impl::pad_right(name, name_width) + " ";
      for (const std::string& value : values) {
        line += impl::pad_right(value, column_width) + " ";
      }
      line.erase(line.find_last_not_of(' ') + 1);
      return line + "\n";
    };

    std::vector<std::size_t> visible;
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      if (rows_[i].depth <= max_depth) {
        visible.push_back(i);
      }
    }
    const std::vector<int64_t> leftover = leftover_params();
    std::string table = divider + "\n" + format_row("Layer (type:depth-idx)", titles) + divider + "\n";
    for (std::size_t v = 0; v < visible.size(); ++v) {
      const std::size_t i = visible[v];
      const Row& row = rows_[i];
      // Which tree lines go on below this row: level l continues where a later row of depth l
      // follows before any shallower one.
      std::vector<bool> continues(static_cast<std::size_t>(row.depth), false);
      for (int level = 1; level <= row.depth; ++level) {
        for (std::size_t w = v + 1; w < visible.size(); ++w) {
          const int depth = rows_[visible[w]].depth;
          if (depth < level) {
            break;
          }
          if (depth == level) {
            continues[static_cast<std::size_t>(level - 1)] = true;
            break;
          }
        }
      }
      const bool at_max_depth = row.depth == max_depth;
      std::vector<std::string> values;
      if (forward_pass_) {
        values.push_back(row.output_shape.empty() ? "--" : detail::shape_string(row.output_shape));
      }
      if (row.params == 0) {
        values.emplace_back("--");
      } else if (row.recursive) {
        values.emplace_back("(recursive)");
      } else if (at_max_depth || layout_[i].leaf) {
        const std::string count = impl::with_thousands(row.params);
        values.push_back(row.trainable_params > 0 ? count : "(" + count + ")");
      } else {
        values.push_back(leftover[i] > 0 ? impl::with_thousands(leftover[i]) : "--");
      }
      if (mult_adds_column) {
        values.push_back(row.mult_adds > 0 && (layout_[i].leaf || at_max_depth) ? impl::with_thousands(row.mult_adds) : "--");
      }
      if (options_.show_trainable) {
        values.emplace_back(row.params == 0               ? "--"
                            : row.trainable_params == 0   ? "False"
                            : row.trainable_params == row.params ? "True"
                                                          : "Partial");
      }
      table += format_row(impl::tree_prefix(continues) + title_of(i), values);
    }
    table += divider + "\n";
    table += "Total params: " + impl::with_thousands(total_params_) + "\n";
    table += "Trainable params: " + impl::with_thousands(trainable_params_) + "\n";
    table += "Non-trainable params: " + impl::with_thousands(non_trainable_params()) + "\n";
    if (forward_pass_) {
      table += "Total mult-adds" + impl::mult_adds_with_unit(total_mult_adds_) + "\n" + divider + "\n";
      table += "Input size (MB): " + impl::megabytes(input_bytes_) + "\n";
      table += "Forward/backward pass size (MB): " + impl::megabytes(forward_backward_bytes_) + "\n";
      table += "Params size (MB): " + impl::megabytes(param_bytes_) + "\n";
      table += "Estimated Total Size (MB): " + impl::megabytes(total_bytes()) + "\n";
    }
    return table + divider;
  }

  [[nodiscard]] std::string flat_table() const {
    namespace impl = detail::summary_impl;
    const std::string thin(64, '-');
    const std::string thick(64, '=');
    auto line = [](const std::string& name, const std::string& shape, const std::string& params) {
      return impl::pad_left(name, 20) + "  " + impl::pad_left(shape, 25) + " " + impl::pad_left(params, 15) + "\n";
    };
    // pytorch-summary numbers a module when its forward returns: children before parents.
    std::vector<std::size_t> order;
    {
      std::vector<std::size_t> pending;
      auto emit_down_to = [&](int depth) {
        while (!pending.empty() && rows_[pending.back()].depth >= depth) {
          order.push_back(pending.back());
          pending.pop_back();
        }
      };
      for (std::size_t i = 0; i < rows_.size(); ++i) {
        emit_down_to(rows_[i].depth);
        pending.push_back(i);
      }
      emit_down_to(0);
    }
    std::string table = thin + "\n" + line("Layer (type)", "Output Shape", "Param #") + thick + "\n";
    int number = 0;
    for (const std::size_t i : order) {
      const Row& row = rows_[i];
      const Layout& layout = layout_[i];
      if (layout.container || layout.placeholder || (forward_pass_ && !layout.called)) {
        continue;
      }
      std::vector<int64_t> shape = row.output_shape;
      if (batch_synthesized_ && !shape.empty()) {
        shape[0] = -1;
      }
      const std::string params = row.recursive && layout.own_params > 0 ? "(recursive)" : impl::with_thousands(layout.own_params);
      table += line(fmt::format("{}-{}", row.type, ++number), shape.empty() ? "--" : detail::shape_string(shape), params);
    }
    table += thick + "\n";
    table += "Total params: " + impl::with_thousands(total_params_) + "\n";
    table += "Trainable params: " + impl::with_thousands(trainable_params_) + "\n";
    table += "Non-trainable params: " + impl::with_thousands(non_trainable_params()) + "\n";
    table += thin + "\n";
    if (forward_pass_) {
      table += "Input size (MB): " + impl::megabytes(input_bytes_) + "\n";
      table += "Forward/backward pass size (MB): " + impl::megabytes(forward_backward_bytes_) + "\n";
      table += "Params size (MB): " + impl::megabytes(param_bytes_) + "\n";
      table += "Estimated Total Size (MB): " + impl::megabytes(total_bytes()) + "\n";
      table += thin;
    }
    return table;
  }

  std::vector<Row> rows_;
  std::vector<Layout> layout_;
  int64_t total_params_ = 0;
  int64_t trainable_params_ = 0;
  int64_t total_mult_adds_ = 0;
  int64_t input_bytes_ = 0;
  int64_t forward_backward_bytes_ = 0;
  int64_t param_bytes_ = 0;
  bool forward_pass_ = false;
  bool batch_synthesized_ = false;
  SummaryOptions options_;
};

namespace detail::summary_impl {

/// Builds a Summary from a finished SummaryBuilder.
struct SummaryAccess {
  static Summary make(SummaryBuilder& builder, const torch::nn::Module& root, SummaryOptions options,
                      int64_t input_bytes, bool forward_pass, bool batch_synthesized) {
    Summary summary;
    const std::vector<ModuleNode>& nodes = builder.nodes();
    for (const RowRecord& record : builder.rows()) {
      const ModuleNode& node = nodes[static_cast<std::size_t>(record.node)];
      summary.rows_.push_back(Summary::Row{node.name, node.type, record.depth, record.output_shape, node.params,
                                           node.trainable_params, record.mult_adds, record.recursive});
      Summary::Layout layout;
      layout.leaf = node.leaf();
      layout.called = record.called;
      layout.placeholder = record.placeholder;
      layout.container = node.sequential || !node.callable;
      layout.depth_index = record.depth_index;
      layout.own_params = node.own_params;
      summary.layout_.push_back(layout);
      if (node.leaf() && record.called) {
        summary.total_mult_adds_ += record.mult_adds;
        if (node.params > 0 && !record.output_shape.empty()) {
          int64_t elements = 1;
          for (const int64_t size : record.output_shape) {
            elements *= size;
          }
          summary.forward_backward_bytes_ += 2 * record.output_element_size * elements;
        }
      }
    }
    for (const NamedParameter& parameter : named_parameters_of(root)) {
      const int64_t count = parameter.tensor.numel();
      summary.total_params_ += count;
      summary.trainable_params_ += parameter.tensor.requires_grad() ? count : 0;
      summary.param_bytes_ += count * static_cast<int64_t>(parameter.tensor.element_size());
    }
    summary.input_bytes_ = input_bytes;
    summary.forward_pass_ = forward_pass;
    summary.batch_synthesized_ = batch_synthesized;
    summary.options_ = std::move(options);
    return summary;
  }
};

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
    return module_of(model);
  }
}

/// The shape and element size of the first tensor in what a forward returned.
struct OutputShape {
  std::vector<int64_t> shape;
  int64_t element_size = 0;
};

inline std::optional<OutputShape> shape_of(const at::Tensor& tensor) {
  if (!tensor.defined()) {
    return std::nullopt;
  }
  const auto sizes = tensor.sizes();
  return OutputShape{std::vector<int64_t>(sizes.begin(), sizes.end()), static_cast<int64_t>(tensor.element_size())};
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

/// Sets a call's output: what the forward returned, else the last operator's output.
template <class T>
void set_call_output(SummaryBuilder& builder, int row, T& result) {
  if (auto output = first_output(result)) {
    builder.set_output(row, std::move(output->shape), output->element_size);
  } else if (const OpRecord* op = builder.last_output_of_region()) {
    builder.set_output(row, op->output_shape, op->output_element_size);
  }
}

/// Calls `call` (a forward) as the region of `node`'s call in `row`, then attributes the
/// operators it ran to `node`'s submodules.
template <class Call>
void run_region(SummaryBuilder& builder, int node, int row, Call&& call) {
  using Result = decltype(call());
  if constexpr (std::is_void_v<Result>) {
    {
      RecordingRegion region(builder.recorder());
      call();
    }
    builder.attribute_region(node);
    int dummy = 0;
    set_call_output(builder, row, dummy);
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

template <class... Args>
torch::nn::AnyValue walk_sequential(SummaryBuilder& builder, int node, torch::nn::SequentialImpl& sequential,
                                    Args&&... inputs);

/// Sets the output of a walked Sequential's call: what it returned, else its last child's output.
inline void set_sequential_output(SummaryBuilder& builder, int row, torch::nn::AnyValue& output) {
  if (auto shape = first_output(output)) {
    builder.set_output(row, std::move(shape->shape), shape->element_size);
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

/// Runs one child of a Sequential as its own call.
template <class... Args>
torch::nn::AnyValue run_sequential_child(SummaryBuilder& builder, int node, torch::nn::AnyModule& child,
                                         Args&&... inputs) {
  const int row = builder.open_call(node);
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
template <class... Args>
torch::nn::AnyValue walk_sequential(SummaryBuilder& builder, int node, torch::nn::SequentialImpl& sequential,
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
template <class M, class... Args>
void run_model(SummaryBuilder& builder, M& model, Args&&... inputs) {
  auto& target = forward_target(model);
  using Target = std::remove_cvref_t<decltype(target)>;
  const int row = builder.open_call(0);
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
template <class M, std::size_t N = 1>
void run_model_on_tensors(SummaryBuilder& builder, M& model, std::vector<at::Tensor>& inputs, const std::string& tried) {
  if (inputs.size() == N) {
    [&]<std::size_t... I>(std::index_sequence<I...> /*unused*/) {
      if (!can_run<M, decltype(((void)I, inputs[0]))...>(model)) {
        using Target = std::remove_cvref_t<decltype(forward_target(model))>;
        throw forward_signature_error<Target>(fmt::format("{} tensor argument{}", N, N == 1 ? "" : "s"), tried);
      }
      run_model(builder, model, inputs[I]...);
    }(std::make_index_sequence<N>{});
  } else if constexpr (N < max_tensor_inputs) {
    run_model_on_tensors<M, N + 1>(builder, model, inputs, tried);
  } else {
    throw ForwardSignatureError(fmt::format("summary: at most {} inputs are supported, got {}; inputs tried: {}",
                                            max_tensor_inputs, inputs.size(), tried));
  }
}

/// RAII: remembers every module's own training flag and restores each one on destruction (the
/// model first, then its submodules in pre-order, so that each ends up with its own flag).
class TrainingModeGuard {
 public:
  explicit TrainingModeGuard(torch::nn::Module& root) : root_(root), root_training_(root.is_training()) {
    for (const auto& module : root.modules(/*include_self=*/false)) {
      modes_.emplace_back(module, module->is_training());
    }
  }
  ~TrainingModeGuard() {
    try {
      root_.train(root_training_);
      for (const auto& [module, training] : modes_) {
        if (module->is_training() != training) {
          module->train(training);
        }
      }
    } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
    }
  }
  TrainingModeGuard(const TrainingModeGuard&) = delete;
  TrainingModeGuard& operator=(const TrainingModeGuard&) = delete;
  TrainingModeGuard(TrainingModeGuard&&) = delete;
  TrainingModeGuard& operator=(TrainingModeGuard&&) = delete;

 private:
  torch::nn::Module& root_;
  bool root_training_;
  std::vector<std::pair<std::shared_ptr<torch::nn::Module>, bool>> modes_;
};

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
int64_t bytes_of_argument(const T& value) {
  using Value = std::remove_cvref_t<T>;
  if constexpr (std::is_same_v<Value, at::Tensor>) {
    return value.defined() ? static_cast<int64_t>(value.nbytes()) : 0;
  } else if constexpr (std::is_same_v<Value, std::vector<at::Tensor>>) {
    int64_t bytes = 0;
    for (const at::Tensor& tensor : value) {
      bytes += tensor.defined() ? static_cast<int64_t>(tensor.nbytes()) : 0;
    }
    return bytes;
  } else {
    return 0;
  }
}

inline void check_options(const SummaryOptions& options) {
  TORCHKIT_CHECK(options.depth >= 0, "summary: SummaryOptions::depth is {}, expected >= 0", options.depth);
}

/// Runs `run(builder)` (the forward pass) with the model in eval mode, under no-grad, with the
/// operator callbacks installed; restores everything, also when the forward throws.
template <class M, class Run>
Summary observe(M& model, const SummaryOptions& options, const std::string& tried, int64_t input_bytes,
                bool batch_synthesized, Run&& run) {
  torch::nn::Module& root = root_module(model);
  SummaryBuilder builder(root);
  {
    TrainingModeGuard training(root);
    root.eval();
    at::NoGradGuard no_grad;
    ObservationScope observation(builder.recorder());
    try {
      run(builder);
    } catch (const ForwardSignatureError&) {
      throw;
    } catch (const c10::Error& error) {
      throw Error(fmt::format("summary: the forward pass of {} failed for input shapes {}: {}",
                              builder.nodes().front().type, tried, error.what_without_backtrace()));
    } catch (const std::exception& error) {
      throw Error(fmt::format("summary: the forward pass of {} failed for input shapes {}: {}",
                              builder.nodes().front().type, tried, error.what()));
    }
  }
  builder.finish();
  return SummaryAccess::make(builder, root, options, input_bytes, /*forward_pass=*/true, batch_synthesized);
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
inline at::Tensor make_input(const std::vector<int64_t>& shape, at::ScalarType dtype, c10::Device device) {
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

}  // namespace detail::summary_impl

/// torchsummary's `summary(model, input_size=(C, H, W))`: runs one forward pass on an input of
/// shape `{batch_size, input_size...}` and summarises every module call.
///
/// The model (a module, a holder such as `Net` or `torch::nn::Sequential`, a
/// `std::shared_ptr<NetImpl>`, or a `torch::nn::AnyModule`) must be passed as its own type so
/// that its `forward` can be called. It is left exactly as it was: the pass runs in eval mode
/// under no-grad, and every module's training flag is restored, also when forward throws.
///
/// @throws Error for an empty `input_size`, a dimension < 1, a batch size < 1, a model whose
///         parameters are not on `options.device`, a forward that does not take the input or
///         throws (the message names the input shapes tried).
///
///     torchkit::Summary info = torchkit::summary(net, {3, 224, 224});
///     std::cout << info << '\n';
template <class M>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::vector<std::vector<int64_t>> input_sizes, SummaryOptions options = {}) {
  namespace impl = detail::summary_impl;
  impl::check_options(options);
  TORCHKIT_CHECK(!input_sizes.empty(), "summary: input_sizes is empty; expected at least one input shape");
  TORCHKIT_CHECK(options.batch_size >= 1, "summary: SummaryOptions::batch_size is {}, expected >= 1", options.batch_size);
  TORCHKIT_CHECK(options.dtypes.empty() || options.dtypes.size() == input_sizes.size(),
                 "summary: SummaryOptions::dtypes has {} entries for {} inputs; give one dtype per input or none",
                 options.dtypes.size(), input_sizes.size());
  for (std::size_t input = 0; input < input_sizes.size(); ++input) {
    const auto& size = input_sizes[input];
    TORCHKIT_CHECK(!size.empty(), "summary: input_size {} is empty; expected the shape of one sample, e.g. {{3, 224, 224}}",
                   input);
    for (std::size_t dim = 0; dim < size.size(); ++dim) {
      TORCHKIT_CHECK(size[dim] >= 1, "summary: dimension {} of input_size {} is {} in {}; every dimension must be >= 1", dim,
                     input, size[dim], detail::shape_string(size));
    }
  }
  torch::nn::Module& root = impl::root_module(model);
  impl::check_model_device(root, options.device);

  std::vector<at::Tensor> inputs;
  int64_t input_bytes = 0;
  for (std::size_t input = 0; input < input_sizes.size(); ++input) {
    std::vector<int64_t> shape{options.batch_size};
    shape.insert(shape.end(), input_sizes[input].begin(), input_sizes[input].end());
    const at::ScalarType dtype = options.dtypes.empty() ? options.dtype : options.dtypes[input];
    try {
      inputs.push_back(impl::make_input(shape, dtype, options.device));
    } catch (const c10::Error& error) {
      throw Error(fmt::format("summary: cannot make an input of shape {} ({}) on {}: {}", detail::shape_string(shape),
                              c10::toString(dtype), options.device.str(), error.what_without_backtrace()));
    }
    input_bytes += static_cast<int64_t>(inputs.back().nbytes());
  }
  const std::string tried = impl::describe_shapes(inputs);
  return impl::observe(model, options, tried, input_bytes, /*batch_synthesized=*/true,
                       [&](impl::SummaryBuilder& builder) { impl::run_model_on_tensors(builder, model, inputs, tried); });
}

/// One input: `summary(net, {3, 224, 224})` (the batch dimension is prepended).
template <class M>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::vector<int64_t> input_size, SummaryOptions options = {}) {
  return summary(model, std::vector<std::vector<int64_t>>{std::move(input_size)}, std::move(options));
}

/// One input written in braces: `summary(net, {3, 224, 224})`, `summary(mlp, {784})`.
template <class M>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::initializer_list<int64_t> input_size, SummaryOptions options = {}) {
  return summary(model, std::vector<std::vector<int64_t>>{std::vector<int64_t>(input_size)}, std::move(options));
}

/// Several inputs written in braces: `summary(net, {{3, 32, 32}, {10, 4}})`. (Two 1-D inputs
/// read like one 2-D shape in braces; write them as `std::vector<std::vector<int64_t>>{{3}, {5}}`.)
template <class M>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::initializer_list<std::initializer_list<int64_t>> input_sizes,
                              SummaryOptions options = {}) {
  std::vector<std::vector<int64_t>> sizes;
  for (const auto& size : input_sizes) {
    sizes.emplace_back(size);
  }
  return summary(model, std::move(sizes), std::move(options));
}

/// Parameters only, no forward pass (torchinfo's `summary(model)`): one row per module, the
/// parameter counts and totals; no shapes, mult-adds or memory estimates.
///
///     std::cout << torchkit::summary(net) << '\n';
template <class M>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary(M& model) {
  namespace impl = detail::summary_impl;
  torch::nn::Module& root = impl::root_module(model);
  impl::SummaryBuilder builder(root);
  builder.finish();
  return impl::SummaryAccess::make(builder, root, SummaryOptions{}, 0, /*forward_pass=*/false, false);
}

/// torchinfo's `summary(model, input_data=...)`: summarises a forward pass on real inputs
/// (tensors or anything else the model's `forward` takes), shapes printed as given.
///
/// @throws Error when `forward` cannot be called with the inputs or throws (naming them).
///
///     auto info = torchkit::summary_of(lstm_net, tokens, lengths);
template <class M, class... Ts>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary_of(const SummaryOptions& options, M& model, Ts&&... example_inputs) {
  namespace impl = detail::summary_impl;
  impl::check_options(options);
  std::string tried;
  ((tried += (tried.empty() ? "" : ", ") + impl::describe_argument(example_inputs)), ...);
  const int64_t input_bytes = (int64_t{0} + ... + impl::bytes_of_argument(example_inputs));
  return impl::observe(model, options, tried, input_bytes, /*batch_synthesized=*/false, [&](impl::SummaryBuilder& builder) {
    if (!impl::can_run<M, Ts&&...>(model)) {
      using Target = std::remove_cvref_t<decltype(impl::forward_target(model))>;
      throw impl::forward_signature_error<Target>("these arguments", tried);
    }
    impl::run_model(builder, model, std::forward<Ts>(example_inputs)...);
  });
}

/// summary_of with default options.
template <class M, class... Ts>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary_of(M& model, Ts&&... example_inputs) {
  return summary_of(SummaryOptions{}, model, std::forward<Ts>(example_inputs)...);
}

}  // namespace torchkit
// ---- end torchkit/summary.hpp ----
// ---- begin torchkit/clip.hpp ----
/// @file clip.hpp
/// tip 3 — gradient clipping: clip_grad_norm_, clip_grad_value_, grad_norm and the ClipGrad
/// functor. Same results as `torch.nn.utils.clip_grad_norm_` / `clip_grad_value_`, computed in
/// one vectorised pass over the gradients' memory instead of two dispatcher calls per tensor.
///
///     loss.backward();
///     torchkit::clip_grad_norm_(model, /*max_norm=*/20, /*norm_type=*/2);
///     optimizer.step();

// ---- begin torchkit/detail/clip_kernels.hpp ----
/// @file detail/clip_kernels.hpp
/// The CPU kernels behind clip.hpp's fast path: the norm partial of a contiguous run of
/// gradient elements, and in-place scaling of such a run. Written with GCC/clang vector
/// extensions and several independent accumulators, so they vectorise at any optimisation
/// level; on x86-64 an AVX + FMA + F16C build of the same code is chosen at run time when the
/// CPU has those features (as LibTorch's own kernels dispatch on CPU capability).
///
/// Accumulation follows PyTorch: in float for float, float16 and bfloat16 elements, in double
/// for double elements. Partials of separate runs are combined in double by the caller.

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define TORCHKIT_CLIP_X86_DISPATCH 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define TORCHKIT_CLIP_X86_DISPATCH 0
#endif

namespace torchkit::detail::clip {

/// Which reduction a norm order needs.
enum class NormKind : std::uint8_t { zero, one, two, infinity, general };

/// The reduction for the norm of order `p` (p >= 0 or +inf, already validated).
[[nodiscard]] inline NormKind norm_kind_of(double p) noexcept {
  if (p == 0.0) return NormKind::zero;
  if (p == 1.0) return NormKind::one;
  if (p == 2.0) return NormKind::two;
  if (std::isinf(p)) return NormKind::infinity;
  return NormKind::general;
}

/// Merges two partials of one tensor (or two per-tensor values of one total).
[[nodiscard]] inline double combine(NormKind kind, double left, double right) noexcept {
  if (kind == NormKind::infinity) {
    if (std::isnan(left) || std::isnan(right)) return std::numeric_limits<double>::quiet_NaN();
    return std::max(left, right);
  }
  return left + right;
}

/// The contribution of one (per-tensor) norm value to a total of order p, as `combine` adds it.
[[nodiscard]] inline double contribution(NormKind kind, double value, double p) noexcept {
  switch (kind) {
    case NormKind::zero: return value != 0.0 ? 1.0 : 0.0;
    case NormKind::one: return std::abs(value);
    case NormKind::two: return value * value;
    case NormKind::infinity: return std::abs(value);
    case NormKind::general: return std::pow(std::abs(value), p);
  }
  return 0.0;
}

/// Turns a combined partial into the norm, computed in `Accumulate`'s precision.
template <class Accumulate>
[[nodiscard]] inline double finish(NormKind kind, double partial, double p) noexcept {
  const auto value = static_cast<Accumulate>(partial);
  switch (kind) {
    case NormKind::two: return static_cast<double>(std::sqrt(value));
    case NormKind::general:
      return static_cast<double>(std::pow(value, Accumulate(1) / static_cast<Accumulate>(p)));
    default: return static_cast<double>(value);
  }
}

typedef float FloatVector __attribute__((vector_size(32)));
typedef double DoubleVector __attribute__((vector_size(32)));
typedef std::int32_t Int32Vector __attribute__((vector_size(32)));
typedef std::int64_t Int64Vector __attribute__((vector_size(32)));

template <class T>
struct VectorOf;
template <>
struct VectorOf<float> {
  using Vector = FloatVector;
  using Mask = Int32Vector;
  static constexpr std::int32_t magnitude_bits = 0x7fffffff;
};
template <>
struct VectorOf<double> {
  using Vector = DoubleVector;
  using Mask = Int64Vector;
  static constexpr std::int64_t magnitude_bits = 0x7fffffffffffffffLL;
};

/// The partial of `size` contiguous elements: sum of squares (two), of magnitudes (one), of
/// p-th powers (general), the count of non-zeros (zero) or the largest magnitude, NaN if any
/// element is NaN (infinity). T is float or double; the result is widened to double.
template <NormKind kind, class T>
[[gnu::always_inline]] inline double reduce_run(const T* data, std::int64_t size, double p) {
  using Vector = typename VectorOf<T>::Vector;
  using Mask = typename VectorOf<T>::Mask;
  constexpr std::int64_t lanes = sizeof(Vector) / sizeof(T);
  constexpr std::int64_t unroll = 4;
  std::int64_t i = 0;
  if constexpr (kind == NormKind::general) {
    // pow (in T, as PyTorch) has no vector form here; eight independent sums overlap its
    // latency, and summing in double costs nothing next to it.
    const auto order = static_cast<T>(p);
    double sums[8] = {};
    for (; i + 8 <= size; i += 8) {
      for (int lane = 0; lane < 8; ++lane) {
        sums[lane] += static_cast<double>(std::pow(std::abs(data[i + lane]), order));
      }
    }
    double total = 0;
    for (const double sum : sums) total += sum;
    for (; i < size; ++i) total += static_cast<double>(std::pow(std::abs(data[i]), order));
    return total;
  } else {
    Vector accumulators[unroll] = {};
    Mask counts[unroll] = {};
    Mask nan_seen = {};
    const Mask magnitude = Mask{} + VectorOf<T>::magnitude_bits;
    for (; i + unroll * lanes <= size; i += unroll * lanes) {
      for (std::int64_t u = 0; u < unroll; ++u) {
        Vector x;
        std::memcpy(&x, data + i + u * lanes, sizeof(Vector));
        if constexpr (kind == NormKind::two) {
          accumulators[u] += x * x;
        } else if constexpr (kind == NormKind::one) {
          accumulators[u] += __builtin_bit_cast(Vector, __builtin_bit_cast(Mask, x) & magnitude);
        } else if constexpr (kind == NormKind::infinity) {
          const Vector absolute = __builtin_bit_cast(Vector, __builtin_bit_cast(Mask, x) & magnitude);
          const Mask greater = __builtin_bit_cast(Mask, absolute > accumulators[u]);
          accumulators[u] = __builtin_bit_cast(Vector, (__builtin_bit_cast(Mask, absolute) & greater) |
                                                  (__builtin_bit_cast(Mask, accumulators[u]) & ~greater));
          nan_seen |= __builtin_bit_cast(Mask, absolute != absolute);
        } else {
          counts[u] -= __builtin_bit_cast(Mask, x != Vector{});
        }
      }
    }
    if constexpr (kind == NormKind::zero) {
      std::int64_t count = 0;
      for (std::int64_t u = 0; u < unroll; ++u) {
        for (std::int64_t lane = 0; lane < lanes; ++lane) count += counts[u][lane];
      }
      for (; i < size; ++i) count += data[i] != T(0) ? 1 : 0;
      return static_cast<double>(count);
    } else if constexpr (kind == NormKind::infinity) {
      bool any_nan = false;
      T largest = 0;
      for (std::int64_t u = 0; u < unroll; ++u) {
        for (std::int64_t lane = 0; lane < lanes; ++lane) {
          any_nan = any_nan || nan_seen[lane] != 0;
          largest = std::max(largest, accumulators[u][lane]);
        }
      }
      for (; i < size; ++i) {
        const T absolute = std::abs(data[i]);
        any_nan = any_nan || std::isnan(absolute);
        largest = std::max(largest, absolute);
      }
      return any_nan ? std::numeric_limits<double>::quiet_NaN() : static_cast<double>(largest);
    } else {
      // Lane sums in a fixed order, so the result does not depend on the thread count.
      T total = 0;
      for (std::int64_t lane = 0; lane < lanes; ++lane) {
        total += (accumulators[0][lane] + accumulators[1][lane]) +
                 (accumulators[2][lane] + accumulators[3][lane]);
      }
      for (; i < size; ++i) {
        if constexpr (kind == NormKind::two) {
          total += data[i] * data[i];
        } else {
          total += std::abs(data[i]);
        }
      }
      return static_cast<double>(total);
    }
  }
}

template <class T>
[[gnu::always_inline]] inline double reduce_run(NormKind kind, const T* data, std::int64_t size, double p) {
  switch (kind) {
    case NormKind::zero: return reduce_run<NormKind::zero>(data, size, p);
    case NormKind::one: return reduce_run<NormKind::one>(data, size, p);
    case NormKind::two: return reduce_run<NormKind::two>(data, size, p);
    case NormKind::infinity: return reduce_run<NormKind::infinity>(data, size, p);
    case NormKind::general: return reduce_run<NormKind::general>(data, size, p);
  }
  return 0.0;
}

/// `data[i] *= factor` over `size` contiguous float or double elements.
template <class T>
[[gnu::always_inline]] inline void scale_run(T* data, std::int64_t size, T factor) {
  using Vector = typename VectorOf<T>::Vector;
  constexpr std::int64_t lanes = sizeof(Vector) / sizeof(T);
  constexpr std::int64_t unroll = 4;
  const Vector factors = Vector{} + factor;
  std::int64_t i = 0;
  for (; i + unroll * lanes <= size; i += unroll * lanes) {
    for (std::int64_t u = 0; u < unroll; ++u) {
      Vector x;
      std::memcpy(&x, data + i + u * lanes, sizeof(Vector));
      x *= factors;
      std::memcpy(data + i + u * lanes, &x, sizeof(Vector));
    }
  }
  for (; i < size; ++i) data[i] *= factor;
}

/// `data[i] = clamp(data[i], lower, upper)` over `size` contiguous float or double elements;
/// NaN stays NaN, as `at::clamp_` does.
template <class T>
[[gnu::always_inline]] inline void clamp_run(T* data, std::int64_t size, T lower, T upper) {
  using Vector = typename VectorOf<T>::Vector;
  using Mask = typename VectorOf<T>::Mask;
  constexpr std::int64_t lanes = sizeof(Vector) / sizeof(T);
  const Vector lowers = Vector{} + lower;
  const Vector uppers = Vector{} + upper;
  std::int64_t i = 0;
  for (; i + lanes <= size; i += lanes) {
    Vector x;
    std::memcpy(&x, data + i, sizeof(Vector));
    // Comparisons with NaN are false, so NaN lanes keep their value.
    const Mask below = __builtin_bit_cast(Mask, x < lowers);
    x = __builtin_bit_cast(Vector, (__builtin_bit_cast(Mask, lowers) & below) | (__builtin_bit_cast(Mask, x) & ~below));
    const Mask above = __builtin_bit_cast(Mask, x > uppers);
    x = __builtin_bit_cast(Vector, (__builtin_bit_cast(Mask, uppers) & above) | (__builtin_bit_cast(Mask, x) & ~above));
    std::memcpy(data + i, &x, sizeof(Vector));
  }
  for (; i < size; ++i) {
    if (data[i] < lower) {
      data[i] = lower;
    } else if (data[i] > upper) {
      data[i] = upper;
    }
  }
}

/// Elements of a reduced-precision run converted per block of this many, through a float buffer.
inline constexpr std::int64_t block_elements = 512;

inline void half_to_float(const std::uint16_t* source, float* target, std::int64_t size) {
  for (std::int64_t i = 0; i < size; ++i) target[i] = c10::detail::fp16_ieee_to_fp32_value(source[i]);
}
inline void float_to_half(const float* source, std::uint16_t* target, std::int64_t size) {
  for (std::int64_t i = 0; i < size; ++i) target[i] = c10::detail::fp16_ieee_from_fp32_value(source[i]);
}
inline void bfloat16_to_float(const std::uint16_t* source, float* target, std::int64_t size) {
  for (std::int64_t i = 0; i < size; ++i) {
    target[i] = __builtin_bit_cast(float, static_cast<std::uint32_t>(source[i]) << 16);
  }
}
inline void float_to_bfloat16(const float* source, std::uint16_t* target, std::int64_t size) {
  for (std::int64_t i = 0; i < size; ++i) target[i] = c10::detail::round_to_nearest_even(source[i]);
}

#if TORCHKIT_CLIP_X86_DISPATCH
[[gnu::target("avx,fma,f16c")]] inline void half_to_float_f16c(const std::uint16_t* source, float* target,
                                                               std::int64_t size) {
  std::int64_t i = 0;
  for (; i + 8 <= size; i += 8) {
    const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(source + i));
    _mm256_storeu_ps(target + i, _mm256_cvtph_ps(halves));
  }
  half_to_float(source + i, target + i, size - i);
}
[[gnu::target("avx,fma,f16c")]] inline void float_to_half_f16c(const float* source, std::uint16_t* target,
                                                               std::int64_t size) {
  std::int64_t i = 0;
  for (; i + 8 <= size; i += 8) {
    const __m128i halves = _mm256_cvtps_ph(_mm256_loadu_ps(source + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(target + i), halves);
  }
  float_to_half(source + i, target + i, size - i);
}
#endif

/// Partial of a float16 or bfloat16 run, accumulated in float block by block.
template <bool f16c>
[[gnu::always_inline]] inline double reduce_reduced_run(NormKind kind, bool is_half, const std::uint16_t* data,
                                                        std::int64_t size, double p) {
  alignas(64) float buffer[block_elements];
  double partial = 0.0;
  for (std::int64_t begin = 0; begin < size; begin += block_elements) {
    const std::int64_t count = std::min(block_elements, size - begin);
    if (is_half) {
#if TORCHKIT_CLIP_X86_DISPATCH
      if constexpr (f16c) {
        half_to_float_f16c(data + begin, buffer, count);
      } else {
        half_to_float(data + begin, buffer, count);
      }
#else
      half_to_float(data + begin, buffer, count);
#endif
    } else {
      bfloat16_to_float(data + begin, buffer, count);
    }
    partial = combine(kind, partial, reduce_run<float>(kind, buffer, count, p));
  }
  return partial;
}

template <bool f16c>
[[gnu::always_inline]] inline void scale_reduced_run(bool is_half, std::uint16_t* data, std::int64_t size,
                                                     float factor) {
  alignas(64) float buffer[block_elements];
  for (std::int64_t begin = 0; begin < size; begin += block_elements) {
    const std::int64_t count = std::min(block_elements, size - begin);
    if (is_half) {
#if TORCHKIT_CLIP_X86_DISPATCH
      if constexpr (f16c) {
        half_to_float_f16c(data + begin, buffer, count);
        scale_run<float>(buffer, count, factor);
        float_to_half_f16c(buffer, data + begin, count);
        continue;
      }
#endif
      half_to_float(data + begin, buffer, count);
      scale_run<float>(buffer, count, factor);
      float_to_half(buffer, data + begin, count);
    } else {
      bfloat16_to_float(data + begin, buffer, count);
      scale_run<float>(buffer, count, factor);
      float_to_bfloat16(buffer, data + begin, count);
    }
  }
}

template <bool f16c>
[[gnu::always_inline]] inline void clamp_reduced_run(bool is_half, std::uint16_t* data, std::int64_t size,
                                                     float lower, float upper) {
  alignas(64) float buffer[block_elements];
  for (std::int64_t begin = 0; begin < size; begin += block_elements) {
    const std::int64_t count = std::min(block_elements, size - begin);
    if (is_half) {
#if TORCHKIT_CLIP_X86_DISPATCH
      if constexpr (f16c) {
        half_to_float_f16c(data + begin, buffer, count);
        clamp_run<float>(buffer, count, lower, upper);
        float_to_half_f16c(buffer, data + begin, count);
        continue;
      }
#endif
      half_to_float(data + begin, buffer, count);
      clamp_run<float>(buffer, count, lower, upper);
      float_to_half(buffer, data + begin, count);
    } else {
      bfloat16_to_float(data + begin, buffer, count);
      clamp_run<float>(buffer, count, lower, upper);
      float_to_bfloat16(buffer, data + begin, count);
    }
  }
}

/// Clamps to [-bound, bound] with the bounds rounded to the element type, as `at::clamp_` does.
template <bool f16c>
[[gnu::always_inline]] inline void clamp_any(at::ScalarType dtype, void* data, std::int64_t size, double bound) {
  switch (dtype) {
    case at::kFloat: {
      const auto upper = static_cast<float>(bound);
      clamp_run<float>(static_cast<float*>(data), size, -upper, upper);
      break;
    }
    case at::kDouble: clamp_run<double>(static_cast<double*>(data), size, -bound, bound); break;
    case at::kHalf: {
      const auto upper = static_cast<float>(c10::Half(static_cast<float>(bound)));
      clamp_reduced_run<f16c>(true, static_cast<std::uint16_t*>(data), size, -upper, upper);
      break;
    }
    case at::kBFloat16: {
      const auto upper = static_cast<float>(c10::BFloat16(static_cast<float>(bound)));
      clamp_reduced_run<f16c>(false, static_cast<std::uint16_t*>(data), size, -upper, upper);
      break;
    }
    default: break;
  }
}

template <bool f16c>
[[gnu::always_inline]] inline double reduce_any(at::ScalarType dtype, NormKind kind, const void* data,
                                                std::int64_t size, double p) {
  switch (dtype) {
    case at::kFloat: return reduce_run<float>(kind, static_cast<const float*>(data), size, p);
    case at::kDouble: return reduce_run<double>(kind, static_cast<const double*>(data), size, p);
    case at::kHalf:
      return reduce_reduced_run<f16c>(kind, true, static_cast<const std::uint16_t*>(data), size, p);
    case at::kBFloat16:
      return reduce_reduced_run<f16c>(kind, false, static_cast<const std::uint16_t*>(data), size, p);
    default: return std::numeric_limits<double>::quiet_NaN();
  }
}

/// Multiplies by `factor` rounded to the element type first, in the element type's compute
/// precision (float for float16/bfloat16), as `tensor.mul_(0-dim tensor)` does in LibTorch 1.13.
template <bool f16c>
[[gnu::always_inline]] inline void scale_any(at::ScalarType dtype, void* data, std::int64_t size, double factor) {
  switch (dtype) {
    case at::kFloat: scale_run<float>(static_cast<float*>(data), size, static_cast<float>(factor)); break;
    case at::kDouble: scale_run<double>(static_cast<double*>(data), size, factor); break;
    case at::kHalf:
      scale_reduced_run<f16c>(true, static_cast<std::uint16_t*>(data), size,
                              static_cast<float>(c10::Half(static_cast<float>(factor))));
      break;
    case at::kBFloat16:
      scale_reduced_run<f16c>(false, static_cast<std::uint16_t*>(data), size,
                              static_cast<float>(c10::BFloat16(static_cast<float>(factor))));
      break;
    default: break;
  }
}

inline double reduce_portable(at::ScalarType dtype, NormKind kind, const void* data, std::int64_t size,
                              double p) {
  return reduce_any<false>(dtype, kind, data, size, p);
}
inline void scale_portable(at::ScalarType dtype, void* data, std::int64_t size, double factor) {
  scale_any<false>(dtype, data, size, factor);
}
inline void clamp_portable(at::ScalarType dtype, void* data, std::int64_t size, double bound) {
  clamp_any<false>(dtype, data, size, bound);
}

#if TORCHKIT_CLIP_X86_DISPATCH
[[gnu::target("avx,fma,f16c")]] inline double reduce_avx(at::ScalarType dtype, NormKind kind, const void* data,
                                                         std::int64_t size, double p) {
  return reduce_any<true>(dtype, kind, data, size, p);
}
[[gnu::target("avx,fma,f16c")]] inline void scale_avx(at::ScalarType dtype, void* data, std::int64_t size,
                                                      double factor) {
  scale_any<true>(dtype, data, size, factor);
}
[[gnu::target("avx,fma,f16c")]] inline void clamp_avx(at::ScalarType dtype, void* data, std::int64_t size,
                                                      double bound) {
  clamp_any<true>(dtype, data, size, bound);
}

/// True when this CPU runs AVX, FMA and F16C code and the OS saves the AVX registers.
[[nodiscard]] inline bool cpu_has_avx_fma_f16c() noexcept {
  static const bool supported = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
    const bool fma = (ecx & (1u << 12)) != 0;
    const bool osxsave = (ecx & (1u << 27)) != 0;
    const bool avx = (ecx & (1u << 28)) != 0;
    const bool f16c = (ecx & (1u << 29)) != 0;
    if (!(fma && osxsave && avx && f16c)) return false;
    unsigned low = 0, high = 0;
    __asm__("xgetbv" : "=a"(low), "=d"(high) : "c"(0));  // XCR0: are the SSE and AVX states enabled?
    return (low & 0x6u) == 0x6u;
  }();
  return supported;
}
#endif

/// The partial of `size` contiguous elements of `dtype` (float, double, float16, bfloat16)
/// starting at `data`, widened to double. `combine` merges partials; `finish` makes the norm.
[[nodiscard]] inline double reduce(at::ScalarType dtype, NormKind kind, const void* data, std::int64_t size,
                                   double p) {
#if TORCHKIT_CLIP_X86_DISPATCH
  if (cpu_has_avx_fma_f16c()) return reduce_avx(dtype, kind, data, size, p);
#endif
  return reduce_portable(dtype, kind, data, size, p);
}

/// Multiplies `size` contiguous elements of `dtype` starting at `data` by `factor` in place.
inline void scale(at::ScalarType dtype, void* data, std::int64_t size, double factor) {
#if TORCHKIT_CLIP_X86_DISPATCH
  if (cpu_has_avx_fma_f16c()) {
    scale_avx(dtype, data, size, factor);
    return;
  }
#endif
  scale_portable(dtype, data, size, factor);
}

/// Clamps `size` contiguous elements of `dtype` starting at `data` to [-bound, bound] in place.
inline void clamp(at::ScalarType dtype, void* data, std::int64_t size, double bound) {
#if TORCHKIT_CLIP_X86_DISPATCH
  if (cpu_has_avx_fma_f16c()) {
    clamp_avx(dtype, data, size, bound);
    return;
  }
#endif
  clamp_portable(dtype, data, size, bound);
}

}  // namespace torchkit::detail::clip
// ---- end torchkit/detail/clip_kernels.hpp ----

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

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
  /// parallel read pass and one scale pass over raw memory; on other devices LibTorch's
  /// `_foreach` kernels. `false` takes the reference path: per-tensor `at::norm`, `stack`,
  /// `mul_`, literally what PyTorch does (the two agree to rounding).
  bool foreach = true;
};

namespace detail::clip {

/// A parameter's gradient to work on, with what the fast path needs to know about it read
/// once (reading tensor metadata costs a cache miss per tensor per pass). `grad` points into
/// the parameter's autograd metadata, which outlives the call.
struct Gradient {
  const at::Tensor* grad;
  c10::TensorImpl* impl;
  void* data;  // first element, when on the CPU, dense (contiguous or permuted) and not empty
  std::int64_t numel;
  std::size_t index;  // the parameter's position in what the caller passed
  at::ScalarType dtype;
  bool is_cpu;
  bool tracked;  // requires grad (made with create_graph): in-place writes must bump its version
};

/// The gradients of the parameters a caller passed, validated.
struct Collected {
  std::vector<Gradient> gradients;
  std::vector<std::string> names;      // one per parameter when a module was passed
  std::vector<at::Tensor> keep_alive;  // parameters a range produced by value
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

inline void add_parameter(Collected& collected, const at::Tensor& parameter, std::size_t index,
                          std::string_view function, bool mutating) {
  TORCHKIT_CHECK(parameter.defined(), "{}: {} is an undefined tensor; expected parameters (defined tensors)",
                 function, parameter_label(collected, index));
  // TensorImpl::grad() reads the autograd metadata directly; Tensor::grad() would add a
  // dispatcher call (is_leaf) per parameter.
  const at::Tensor& grad = parameter.unsafeGetTensorImpl()->grad();
  if (!grad.defined()) {
    return;
  }
  TORCHKIT_CHECK(grad.layout() == at::kStrided,
                 "{}: the gradient of {} is sparse (layout {}); only dense (strided) gradients can be clipped",
                 function, parameter_label(collected, index), c10::str(grad.layout()));
  TORCHKIT_CHECK(is_supported_dtype(grad.scalar_type()),
                 "{}: the gradient of {} has dtype {}; expected float, double, float16 or bfloat16", function,
                 parameter_label(collected, index), c10::toString(grad.scalar_type()));
  TORCHKIT_CHECK(grad.sizes() == parameter.sizes(),
                 "{}: the gradient of {} has shape {} but the parameter has shape {}; expected the same shape",
                 function, parameter_label(collected, index), detail::shape_string(grad.sizes()),
                 detail::shape_string(parameter.sizes()));
  TORCHKIT_CHECK(!mutating || !grad.is_inference() || c10::InferenceMode::is_enabled(),
                 "{}: the gradient of {} is an inference tensor, which cannot be modified outside InferenceMode",
                 function, parameter_label(collected, index));
  const bool is_cpu = grad.device().is_cpu();
  const std::int64_t numel = grad.numel();
  const bool dense = grad.is_non_overlapping_and_dense();
  // An expanded gradient (stride 0) has elements sharing memory: scaling it in place cannot work,
  // and must be refused here, before any other gradient is touched.
  TORCHKIT_CHECK(!mutating || dense || at::has_internal_overlap(grad) != at::MemOverlap::Yes,
                 "{}: the gradient of {} has elements that share memory (strides {}, e.g. made by expand()); it "
                 "cannot be changed in place: give it its own memory first (grad = grad.clone())",
                 function, parameter_label(collected, index), detail::shape_string(grad.strides()));
  void* data = is_cpu && numel > 0 && dense ? grad.data_ptr() : nullptr;
  collected.gradients.push_back(Gradient{&grad, grad.unsafeGetTensorImpl(), data, numel, index, grad.scalar_type(),
                                         // (autograd metadata first: no call for a plain gradient)
                                         is_cpu, grad.unsafeGetTensorImpl()->autograd_meta() != nullptr &&
                                                     grad.requires_grad()});
}

/// Asks for the cache lines of `bytes` bytes from `address` on.
inline void prefetch_lines(const void* address, std::size_t bytes) noexcept {
  const char* first = static_cast<const char*>(address);
  for (std::size_t offset = 0; offset < bytes; offset += 64) {
    __builtin_prefetch(first + offset, 0, 3);
  }
}

/// Checks the parameters in order and gathers their gradients. The metadata of each parameter
/// sits in three objects (the tensor, its autograd metadata, the gradient tensor) that a model
/// scatters through memory: they are requested a few parameters ahead, each stage once the
/// previous one has arrived, so that the misses overlap instead of adding up.
inline void add_parameters(Collected& collected, const std::vector<const at::Tensor*>& parameters,
                           std::string_view function, bool mutating) {
  constexpr std::size_t tensor_ahead = 12, metadata_ahead = 8, grad_ahead = 4;
  const std::size_t count = parameters.size();
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
      if (const c10::TensorImpl* impl = parameters[index + grad_ahead]->unsafeGetTensorImpl()) {
        if (impl->autograd_meta() != nullptr) {
          const at::Tensor& grad = impl->grad();
          if (grad.defined()) prefetch_lines(grad.unsafeGetTensorImpl(), sizeof(c10::TensorImpl));
        }
      }
    }
    add_parameter(collected, *parameters[index], index, function, mutating);
  }
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
  collected.gradients.reserve(parameters.size());
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

/// The precision reductions of `dtype` run in (PyTorch's opmath type).
[[nodiscard]] inline bool computes_in_double(at::ScalarType dtype) noexcept { return dtype == at::kDouble; }

/// `value` rounded to `dtype`, widened back to double.
[[nodiscard]] inline double round_to(at::ScalarType dtype, double value) noexcept {
  switch (dtype) {
    case at::kFloat: return static_cast<double>(static_cast<float>(value));
    case at::kHalf: return static_cast<double>(static_cast<float>(c10::Half(static_cast<float>(value))));
    case at::kBFloat16: return static_cast<double>(static_cast<float>(c10::BFloat16(static_cast<float>(value))));
    default: return value;
  }
}

/// The norm of a partial, computed in `dtype`'s opmath precision and rounded to `dtype`, as
/// `at::norm` of a tensor of that dtype returns it.
[[nodiscard]] inline double finish_in(at::ScalarType dtype, NormKind kind, double partial, double p) noexcept {
  const double value = computes_in_double(dtype) ? finish<double>(kind, partial, p) : finish<float>(kind, partial, p);
  return round_to(dtype, value);
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

/// A contiguous run of one gradient's elements, the unit of parallel work on CPU.
struct Run {
  void* data;
  std::int64_t size;
  std::size_t gradient;  // position in Collected::gradients
  at::ScalarType dtype;
};

#ifndef TORCHKIT_CLIP_PREFETCH_BYTES
#define TORCHKIT_CLIP_PREFETCH_BYTES 256
#endif
#ifndef TORCHKIT_CLIP_PREFETCH_DISTANCE
#define TORCHKIT_CLIP_PREFETCH_DISTANCE 4
#endif
/// How many runs ahead the passes prefetch.
inline constexpr std::int64_t prefetch_distance = TORCHKIT_CLIP_PREFETCH_DISTANCE;

/// Runs are at most this long, so one large gradient spreads over threads.
inline constexpr std::int64_t run_elements = std::int64_t{1} << 16;

/// The fast path's state for one call: CPU gradients as runs over raw memory, other devices'
/// gradients grouped by (device, dtype) for LibTorch's `_foreach` kernels.
class FastPass {
 public:
  /// `cpu_through_foreach` sends CPU gradients down the accelerator path too (for tests).
  FastPass(const Collected& collected, double p, bool cpu_through_foreach = false)
      : collected_(collected), p_(p), kind_(norm_kind_of(p)) {
    const auto& gradients = collected.gradients;
    run_begin_.assign(gradients.size() + 1, 0);
    in_device_group_.assign(gradients.size(), false);
    runs_.reserve(gradients.size() + 16);
    result_dtype_ = gradients.front().dtype;
    for (std::size_t k = 0; k < gradients.size(); ++k) {
      run_begin_[k] = runs_.size();
      const Gradient& gradient = gradients[k];
      const auto dtype = gradient.dtype;
      result_dtype_ = c10::promoteTypes(result_dtype_, dtype);
      if (!gradient.is_cpu || cpu_through_foreach) {
        in_device_group_[k] = true;
        add_to_device_group(k);
        continue;
      }
      const std::int64_t numel = gradient.numel;
      if (numel == 0) {
        continue;
      }
      // A dense gradient (contiguous or permuted, e.g. channels-last) fills numel slots from
      // its first element on, in some order; norms and scaling do not care which.
      void* data = gradient.data;
      if (data == nullptr) {
        copies_.push_back(Copy{k, gradient.grad->contiguous()});
        data = copies_.back().tensor.data_ptr();
      }
      total_elements_ += numel;
      const std::size_t element_size = c10::elementSize(dtype);
      for (std::int64_t begin = 0; begin < numel; begin += run_elements) {
        runs_.push_back(Run{static_cast<char*>(data) + begin * static_cast<std::int64_t>(element_size),
                            std::min(run_elements, numel - begin), k, dtype});
      }
    }
    run_begin_[gradients.size()] = runs_.size();
  }

  /// The total norm as a 0-dim tensor of the promoted gradient dtype on the first gradient's
  /// device, as PyTorch returns it.
  [[nodiscard]] at::Tensor total_norm() {
    compute_cpu_norms();
    const auto& gradients = collected_.gradients;
    const c10::Device device = gradients.front().grad->device();
    if (device_groups_.empty()) {
      double partial = 0.0;
      for (std::size_t k = 0; k < gradients.size(); ++k) {
        partial = combine(kind_, partial, contribution(kind_, cpu_norms_[k], p_));
      }
      host_total_ = finish_in(result_dtype_, kind_, partial, p_);
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
    if (!runs_.empty() || !copies_.empty()) {
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
  struct Copy {
    std::size_t gradient;
    at::Tensor tensor;
  };
  struct DeviceGroup {
    c10::Device device;
    at::ScalarType dtype;
    std::vector<std::size_t> members;
    std::vector<at::Tensor> grads;
    std::vector<at::Tensor> norms;
  };

  void add_to_device_group(std::size_t k) {
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

  [[nodiscard]] std::int64_t grain() const {
    // About at::internal::GRAIN_SIZE elements per task.
    const auto runs = static_cast<std::int64_t>(runs_.size());
    return std::max<std::int64_t>(1, runs * 32768 / std::max<std::int64_t>(1, total_elements_));
  }

  void compute_cpu_norms() {
    cpu_norms_.assign(collected_.gradients.size(), 0.0);
    std::vector<double> partials(runs_.size());
    const NormKind kind = kind_;
    const double p = p_;
    at::parallel_for(0, static_cast<std::int64_t>(runs_.size()), grain(), [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t r = begin; r < end; ++r) {
        if (r + prefetch_distance < end) {
          prefetch(runs_[static_cast<std::size_t>(r + prefetch_distance)], /*for_write=*/false);
        }
        const Run& run = runs_[static_cast<std::size_t>(r)];
        partials[static_cast<std::size_t>(r)] = reduce(run.dtype, kind, run.data, run.size, p);
      }
    });
    for (std::size_t k = 0; k < collected_.gradients.size(); ++k) {
      if (run_begin_[k] == run_begin_[k + 1]) continue;  // empty, or not on the CPU
      double partial = partials[run_begin_[k]];
      for (std::size_t r = run_begin_[k] + 1; r < run_begin_[k + 1]; ++r) {
        partial = combine(kind, partial, partials[r]);
      }
      cpu_norms_[k] = finish_in(runs_[run_begin_[k]].dtype, kind, partial, p);
    }
  }

  [[nodiscard]] bool runs_may_alias() const {
    // The same gradient passed twice (or overlapping views) must be scaled twice, in order, as
    // PyTorch's loop does; only then does the pass run sequentially.
    std::vector<std::pair<const char*, const char*>> spans;
    spans.reserve(collected_.gradients.size());
    for (std::size_t k = 0; k < collected_.gradients.size(); ++k) {
      if (run_begin_[k] == run_begin_[k + 1]) continue;
      const Run& first = runs_[run_begin_[k]];
      const Run& last = runs_[run_begin_[k + 1] - 1];
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

  /// Small separate gradients defeat the hardware prefetcher (it retrains on every new
  /// allocation): ask for the next run's first cache lines while this one is processed.
  static void prefetch(const Run& run, bool for_write) {
    const auto bytes = std::min<std::int64_t>(run.size * static_cast<std::int64_t>(c10::elementSize(run.dtype)),
                                              TORCHKIT_CLIP_PREFETCH_BYTES);
    const char* data = static_cast<const char*>(run.data);
    for (std::int64_t offset = 0; offset < bytes; offset += 64) {
      if (for_write) {
        __builtin_prefetch(data + offset, 1, 3);
      } else {
        __builtin_prefetch(data + offset, 0, 3);
      }
    }
  }

  void scale_cpu(double factor) {
    const auto count = static_cast<std::int64_t>(runs_.size());
    // Backwards: the norm pass walked forwards, so the runs it read last are the ones still in
    // the cache (up to its size); starting the scale pass there saves that much memory traffic.
    auto body = [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t r = end - 1; r >= begin; --r) {
        if (r - prefetch_distance >= begin) {
          prefetch(runs_[static_cast<std::size_t>(r - prefetch_distance)], /*for_write=*/true);
        }
        const Run& run = runs_[static_cast<std::size_t>(r)];
        detail::clip::scale(run.dtype, run.data, run.size, factor);
      }
    };
    if (at::get_num_threads() > 1 && count > grain() && !runs_may_alias()) {
      at::parallel_for(0, count, grain(), body);
    } else {
      body(0, count);
    }
    for (const auto& copy : copies_) {
      collected_.gradients[copy.gradient].grad->copy_(copy.tensor);
    }
    // The kernels write through raw pointers, like LibTorch's clip_grad_norm_ (which scales
    // `grad.data()`) without touching version counters; a gradient that is itself part of a
    // graph (create_graph) gets its version bumped, as Python's `detach().mul_()` does, so
    // autograd still notices the change. (copy_ bumped the copied-back ones already.)
    std::size_t next_copy = 0;
    for (std::size_t k = 0; k < collected_.gradients.size(); ++k) {
      const bool copied = next_copy < copies_.size() && copies_[next_copy].gradient == k;
      if (copied) ++next_copy;
      if (!copied && collected_.gradients[k].tracked && run_begin_[k] != run_begin_[k + 1]) {
        collected_.gradients[k].impl->bump_version();
      }
    }
  }

  const Collected& collected_;
  double p_;
  NormKind kind_;
  at::ScalarType result_dtype_ = at::kFloat;
  std::vector<Run> runs_;
  std::vector<std::size_t> run_begin_;
  std::vector<Copy> copies_;
  std::vector<DeviceGroup> device_groups_;
  std::vector<double> cpu_norms_;
  std::vector<bool> in_device_group_;
  std::optional<double> host_total_;
  std::int64_t total_elements_ = 0;
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
    at::Tensor total = clip_grad_norm_(std::forward<P>(params), max_norm_, norm_type_, options_);
    ++steps_;
    if (total.device().is_cpu()) {
      last_norm_ = total.item<double>();
      last_norm_on_device_ = at::Tensor();
      if (last_norm_ > max_norm_) ++clipped_steps_;
    } else {
      last_norm_on_device_ = total;
      const at::Tensor exceeded = total.gt(max_norm_).to(at::kLong);
      pending_clipped_ = pending_clipped_.defined() ? pending_clipped_.add(exceeded.to(pending_clipped_.device()))
                                                    : exceeded;
    }
    return total;
  }

  /// The total norm the last call returned (0 before the first call). Reads it from the
  /// device when the gradients live on an accelerator (one sync).
  [[nodiscard]] double last_norm() const {
    if (last_norm_on_device_.defined()) {
      last_norm_ = last_norm_on_device_.item<double>();
      last_norm_on_device_ = at::Tensor();
    }
    return last_norm_;
  }
  /// How many times the functor ran.
  [[nodiscard]] std::int64_t steps() const noexcept { return steps_; }
  /// How many of those steps had a total norm above max_norm (and so scaled the gradients).
  [[nodiscard]] std::int64_t clipped_steps() const {
    if (pending_clipped_.defined()) {
      clipped_steps_ += pending_clipped_.item<std::int64_t>();
      pending_clipped_ = at::Tensor();
    }
    return clipped_steps_;
  }
  [[nodiscard]] double max_norm() const noexcept { return max_norm_; }
  [[nodiscard]] double norm_type() const noexcept { return norm_type_; }
  [[nodiscard]] const ClipOptions& options() const noexcept { return options_; }

  /// `ClipGrad(max_norm=20, norm_type=2, steps=100, clipped_steps=12, last_norm=3.25)`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("ClipGrad(max_norm={}, norm_type={}, steps={}, clipped_steps={}, last_norm={})", max_norm_,
                       norm_type_, steps_, clipped_steps(), last_norm());
  }
  friend std::ostream& operator<<(std::ostream& out, const ClipGrad& clip) { return out << clip.to_string(); }

 private:
  double max_norm_;
  double norm_type_;
  ClipOptions options_;
  std::int64_t steps_ = 0;
  mutable double last_norm_ = 0.0;
  mutable at::Tensor last_norm_on_device_;
  mutable std::int64_t clipped_steps_ = 0;
  mutable at::Tensor pending_clipped_;
};

}  // namespace torchkit
// ---- end torchkit/clip.hpp ----
// ---- begin torchkit/batch.hpp ----
/// @file batch.hpp
/// tip 4  to_batch, from_batch, image_to_batch, images_to_batch.
///
/// A model trained on `[N, C, H, W]` batches gets one decoded image `[H, W, C]` (BGR uint8 from
/// `cv2.imread`) at test time. The Python way is `image.unsqueeze(0)` (or `view(1, *size)`,
/// `np.newaxis`) plus, in practice, `permute`, `float()`, `/ 255` and a per-channel normalisation:
/// five or six full passes over the image. `image_to_batch` does all of it in one pass.

// ---- begin torchkit/detail/image_kernel.hpp ----
/// @file detail/image_kernel.hpp
/// The fused HWC → CHW pass behind image_to_batch: one read of every pixel, one write of every
/// output value, `value = pixel * multiplier[c] + offset[c]`, with the channel order applied by
/// choosing which output plane each source channel is written to.
///
/// Rows whose pixels are packed (channel stride 1, pixel stride C: a contiguous image or a crop
/// of one, a cv::Mat or a ROI of one) go through SSE2 kernels on x86-64 (16 pixels per step for
/// uint8); everything else through a portable strided loop. Each output plane row is written
/// sequentially.

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#include <emmintrin.h>
#define TORCHKIT_IMAGE_KERNEL_SSE2 1
#else
#define TORCHKIT_IMAGE_KERNEL_SSE2 0
#endif

namespace torchkit::detail {

/// What the fused pass does to each source channel: `pixel * multiplier + offset`, written to
/// output plane `destination`. Indexed by SOURCE channel (the channel order of the input).
struct ImageTransform {
  int channels = 0;
  std::array<double, 4> multiplier{};
  std::array<double, 4> offset{};
  std::array<int, 4> destination{};
};

/// One image's pixels: a base pointer and element strides (any strides, as a tensor view has).
struct ImageSource {
  const void* data = nullptr;
  c10::ScalarType dtype = c10::ScalarType::Byte;
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;
  int64_t row_stride = 0;
  int64_t pixel_stride = 0;
  int64_t channel_stride = 0;

  [[nodiscard]] bool packed() const { return channel_stride == 1 && pixel_stride == channels; }
};

/// The portable loop: any strides, any input/compute/output type.
template <class In, class Compute, class Out>
void strided_image_row(const In* row, int64_t width, int64_t pixel_stride, int64_t channel_stride,
                       int channels, const Compute* multiplier, const Compute* offset,
                       Out* const* planes) {
  for (int64_t x = 0; x < width; ++x) {
    const In* pixel = row + x * pixel_stride;
    for (int source = 0; source < channels; ++source) {
      const Compute value =
          static_cast<Compute>(pixel[source * channel_stride]) * multiplier[source] + offset[source];
      planes[source][x] = static_cast<Out>(value);
    }
  }
}

#if TORCHKIT_IMAGE_KERNEL_SSE2

/// 16 bytes to four vectors of four floats, in memory order.
inline void bytes_to_floats(__m128i bytes, __m128* floats) {
  const __m128i zero = _mm_setzero_si128();
  const __m128i low = _mm_unpacklo_epi8(bytes, zero);
  const __m128i high = _mm_unpackhi_epi8(bytes, zero);
  floats[0] = _mm_cvtepi32_ps(_mm_unpacklo_epi16(low, zero));
  floats[1] = _mm_cvtepi32_ps(_mm_unpackhi_epi16(low, zero));
  floats[2] = _mm_cvtepi32_ps(_mm_unpacklo_epi16(high, zero));
  floats[3] = _mm_cvtepi32_ps(_mm_unpackhi_epi16(high, zero));
}

/// Four interleaved 3-channel pixels (a0 b0 c0 a1 | b1 c1 a2 b2 | c2 a3 b3 c3) to planes
/// (a0 a1 a2 a3, b0 b1 b2 b3, c0 c1 c2 c3).
inline void deinterleave3(__m128 v0, __m128 v1, __m128 v2, __m128& a, __m128& b, __m128& c) {
  const __m128 a01 = _mm_shuffle_ps(v0, v0, _MM_SHUFFLE(3, 3, 3, 0));  // a0 a1 a1 a1
  const __m128 a23 = _mm_shuffle_ps(v1, v2, _MM_SHUFFLE(1, 1, 2, 2));  // a2 a2 a3 a3
  a = _mm_shuffle_ps(a01, a23, _MM_SHUFFLE(2, 0, 1, 0));
  const __m128 b01 = _mm_shuffle_ps(v0, v1, _MM_SHUFFLE(0, 0, 1, 1));  // b0 b0 b1 b1
  const __m128 b23 = _mm_shuffle_ps(v1, v2, _MM_SHUFFLE(2, 2, 3, 3));  // b2 b2 b3 b3
  b = _mm_shuffle_ps(b01, b23, _MM_SHUFFLE(2, 0, 2, 0));
  const __m128 c01 = _mm_shuffle_ps(v0, v1, _MM_SHUFFLE(1, 1, 2, 2));  // c0 c0 c1 c1
  const __m128 c23 = _mm_shuffle_ps(v2, v2, _MM_SHUFFLE(3, 3, 0, 0));  // c2 c2 c3 c3
  c = _mm_shuffle_ps(c01, c23, _MM_SHUFFLE(2, 0, 2, 0));
}

/// Four 4-channel pixels (one per vector) to four planes (one per vector), in place.
inline void transpose4(__m128& r0, __m128& r1, __m128& r2, __m128& r3) {
  const __m128 t0 = _mm_unpacklo_ps(r0, r1);  // r00 r10 r01 r11
  const __m128 t1 = _mm_unpacklo_ps(r2, r3);  // r20 r30 r21 r31
  const __m128 t2 = _mm_unpackhi_ps(r0, r1);  // r02 r12 r03 r13
  const __m128 t3 = _mm_unpackhi_ps(r2, r3);  // r22 r32 r23 r33
  r0 = _mm_movelh_ps(t0, t1);
  r1 = _mm_movehl_ps(t1, t0);
  r2 = _mm_movelh_ps(t2, t3);
  r3 = _mm_movehl_ps(t3, t2);
}

/// Coefficients laid out for the SSE2 kernels: for 3 channels the pattern repeats every 12
/// floats (three vectors), for 4 channels every vector, for 1 channel it is a broadcast.
struct SseCoefficients {
  __m128 multiplier[3];
  __m128 offset[3];

  SseCoefficients(int channels, const float* multiplier_of, const float* offset_of) {
    for (int v = 0; v < 3; ++v) {
      alignas(16) float m[4];
      alignas(16) float o[4];
      for (int lane = 0; lane < 4; ++lane) {
        const int source = (v * 4 + lane) % channels;
        m[lane] = multiplier_of[source];
        o[lane] = offset_of[source];
      }
      multiplier[v] = _mm_load_ps(m);
      offset[v] = _mm_load_ps(o);
    }
  }
  [[nodiscard]] __m128 apply(__m128 value, int v) const {
    return _mm_add_ps(_mm_mul_ps(value, multiplier[v]), offset[v]);
  }
};

/// Packed rows, SSE2: converts the first `width - width % step` pixels and returns how many.
inline int64_t packed_image_row_sse2(const uint8_t* row, int64_t width, int channels,
                                     const SseCoefficients& k, float* const* planes) {
  int64_t x = 0;
  if (channels == 3) {
    for (; x + 16 <= width; x += 16) {
      const uint8_t* pixel = row + 3 * x;
      __m128 f[12];
      bytes_to_floats(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pixel)), f);
      bytes_to_floats(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pixel + 16)), f + 4);
      bytes_to_floats(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pixel + 32)), f + 8);
      for (int group = 0; group < 4; ++group) {
        __m128 a, b, c;
        deinterleave3(k.apply(f[3 * group], 0), k.apply(f[3 * group + 1], 1),
                      k.apply(f[3 * group + 2], 2), a, b, c);
        _mm_storeu_ps(planes[0] + x + 4 * group, a);
        _mm_storeu_ps(planes[1] + x + 4 * group, b);
        _mm_storeu_ps(planes[2] + x + 4 * group, c);
      }
    }
  } else if (channels == 4) {
    for (; x + 4 <= width; x += 4) {
      __m128 f[4];
      bytes_to_floats(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 4 * x)), f);
      __m128 p0 = k.apply(f[0], 0), p1 = k.apply(f[1], 0), p2 = k.apply(f[2], 0), p3 = k.apply(f[3], 0);
      transpose4(p0, p1, p2, p3);
      _mm_storeu_ps(planes[0] + x, p0);
      _mm_storeu_ps(planes[1] + x, p1);
      _mm_storeu_ps(planes[2] + x, p2);
      _mm_storeu_ps(planes[3] + x, p3);
    }
  } else {  // 1 channel
    for (; x + 16 <= width; x += 16) {
      __m128 f[4];
      bytes_to_floats(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + x)), f);
      for (int v = 0; v < 4; ++v) {
        _mm_storeu_ps(planes[0] + x + 4 * v, k.apply(f[v], 0));
      }
    }
  }
  return x;
}

inline int64_t packed_image_row_sse2(const float* row, int64_t width, int channels,
                                     const SseCoefficients& k, float* const* planes) {
  int64_t x = 0;
  if (channels == 3) {
    for (; x + 4 <= width; x += 4) {
      const float* pixel = row + 3 * x;
      __m128 a, b, c;
      deinterleave3(k.apply(_mm_loadu_ps(pixel), 0), k.apply(_mm_loadu_ps(pixel + 4), 1),
                    k.apply(_mm_loadu_ps(pixel + 8), 2), a, b, c);
      _mm_storeu_ps(planes[0] + x, a);
      _mm_storeu_ps(planes[1] + x, b);
      _mm_storeu_ps(planes[2] + x, c);
    }
  } else if (channels == 4) {
    for (; x + 4 <= width; x += 4) {
      const float* pixel = row + 4 * x;
      __m128 p0 = k.apply(_mm_loadu_ps(pixel), 0), p1 = k.apply(_mm_loadu_ps(pixel + 4), 0),
             p2 = k.apply(_mm_loadu_ps(pixel + 8), 0), p3 = k.apply(_mm_loadu_ps(pixel + 12), 0);
      transpose4(p0, p1, p2, p3);
      _mm_storeu_ps(planes[0] + x, p0);
      _mm_storeu_ps(planes[1] + x, p1);
      _mm_storeu_ps(planes[2] + x, p2);
      _mm_storeu_ps(planes[3] + x, p3);
    }
  } else {
    for (; x + 4 <= width; x += 4) {
      _mm_storeu_ps(planes[0] + x, k.apply(_mm_loadu_ps(row + x), 0));
    }
  }
  return x;
}

#endif  // TORCHKIT_IMAGE_KERNEL_SSE2

/// Converts rows [y_begin, y_end) of `image` into `output`, the [C, H, W] planes of one image.
template <class In, class Out>
void convert_image_rows(const ImageSource& image, const ImageTransform& transform, Out* output,
                        int64_t y_begin, int64_t y_end) {
  const int channels = transform.channels;
  const int64_t width = image.width;
  const int64_t plane_size = image.height * width;
  const In* const base = static_cast<const In*>(image.data);
  // Doubles are computed in double; everything else in float.
  using Compute = std::conditional_t<std::is_same_v<Out, double>, double, float>;
  std::array<Compute, 4> multiplier{};
  std::array<Compute, 4> offset{};
  for (int source = 0; source < channels; ++source) {
    multiplier[source] = static_cast<Compute>(transform.multiplier[source]);
    offset[source] = static_cast<Compute>(transform.offset[source]);
  }
  constexpr bool computes_in_float = std::is_same_v<Compute, float>;
  const bool fast = computes_in_float && image.packed() && TORCHKIT_IMAGE_KERNEL_SSE2 != 0;
#if TORCHKIT_IMAGE_KERNEL_SSE2
  std::array<float, 4> float_multiplier{};
  std::array<float, 4> float_offset{};
  for (int source = 0; source < channels; ++source) {
    float_multiplier[source] = static_cast<float>(transform.multiplier[source]);
    float_offset[source] = static_cast<float>(transform.offset[source]);
  }
  const SseCoefficients sse(channels, float_multiplier.data(), float_offset.data());
#endif
  // Half and bfloat16 outputs: the SSE2 kernel writes a float row that is then narrowed.
  std::vector<float> row_buffer;
  if (fast && !std::is_same_v<Out, float>) {
    row_buffer.resize(static_cast<std::size_t>(channels * width));
  }

  for (int64_t y = y_begin; y < y_end; ++y) {
    const In* row = base + y * image.row_stride;
    std::array<Out*, 4> planes{};
    for (int source = 0; source < channels; ++source) {
      planes[source] = output + transform.destination[source] * plane_size + y * width;
    }
    if (!fast) {
      strided_image_row<In, Compute, Out>(row, width, image.pixel_stride, image.channel_stride,
                                          channels, multiplier.data(), offset.data(), planes.data());
      continue;
    }
#if TORCHKIT_IMAGE_KERNEL_SSE2
    if constexpr (computes_in_float) {
      std::array<float*, 4> float_planes{};
      for (int source = 0; source < channels; ++source) {
        if constexpr (std::is_same_v<Out, float>) {
          float_planes[source] = planes[source];
        } else {
          float_planes[source] = row_buffer.data() + source * width;
        }
      }
      const int64_t done = packed_image_row_sse2(row, width, channels, sse, float_planes.data());
      // The last few pixels of the row (fewer than one SSE step).
      std::array<float*, 4> tail{};
      for (int source = 0; source < channels; ++source) {
        tail[source] = float_planes[source] + done;
      }
      strided_image_row<In, float, float>(row + done * channels, width - done, channels, 1, channels,
                                          multiplier.data(), offset.data(), tail.data());
      if constexpr (!std::is_same_v<Out, float>) {
        for (int source = 0; source < channels; ++source) {
          const float* from = float_planes[source];
          Out* to = planes[source];
          for (int64_t x = 0; x < width; ++x) {
            to[x] = static_cast<Out>(from[x]);
          }
        }
      }
    }
#endif
  }
}

/// Runs convert_image_rows for the input and output element types.
template <class Out>
void convert_image_rows_for(const ImageSource& image, const ImageTransform& transform, Out* output,
                            int64_t y_begin, int64_t y_end) {
  if (image.dtype == c10::ScalarType::Byte) {
    convert_image_rows<uint8_t, Out>(image, transform, output, y_begin, y_end);
  } else {
    convert_image_rows<float, Out>(image, transform, output, y_begin, y_end);
  }
}

}  // namespace torchkit::detail
// ---- end torchkit/detail/image_kernel.hpp ----

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace torchkit {

/// Adds the leading batch dimension: `[C, H, W]` → `[1, C, H, W]`. A view (no copy), like
/// Python's `sample.unsqueeze(0)` or `sample.view(1, *sample.size())`.
///
/// @throws Error for an undefined tensor.
///
///     auto batch = torchkit::to_batch(image);  // [3, 224, 224] -> [1, 3, 224, 224]
[[nodiscard]] inline at::Tensor to_batch(const at::Tensor& sample) {
  TORCHKIT_CHECK(sample.defined(), "to_batch: the sample is an undefined tensor");
  return sample.unsqueeze(0);
}

/// Removes the leading batch dimension of a batch of one: `[1, C, H, W]` → `[C, H, W]`. A view
/// (no copy), like Python's `batch.squeeze(0)`, except that it refuses a batch of several
/// samples instead of silently returning it unchanged.
///
/// @throws Error for an undefined or 0-dim tensor, and unless the batch size is 1.
///
///     auto image = torchkit::from_batch(model->forward(torchkit::to_batch(input)));
[[nodiscard]] inline at::Tensor from_batch(const at::Tensor& batch) {
  TORCHKIT_CHECK(batch.defined(), "from_batch: the batch is an undefined tensor");
  TORCHKIT_CHECK(batch.dim() >= 1, "from_batch: expected a batch [1, ...], got a 0-dim tensor");
  TORCHKIT_CHECK(batch.size(0) == 1,
                 "from_batch: the batch holds {} samples (shape {}); expected exactly 1 "
                 "(take one sample with batch[i] or batch.unbind(0))",
                 batch.size(0), detail::shape_string(batch.sizes()));
  return batch.select(0, 0);
}

/// How image_to_batch turns pixels into model input:
/// `output[c] = (pixel[c] * scale - mean[c]) / std[c]`, where `c` is the OUTPUT channel (after
/// the optional BGR → RGB swap), as torchvision's `ToTensor()` + `Normalize(mean, std)` and
/// OpenCV's `blobFromImage(image, scale, size, mean, swapRB)` order them.
///
///     torchkit::ImageOptions imagenet{.bgr_to_rgb = true,
///                                     .mean = {0.485, 0.456, 0.406},
///                                     .std = {0.229, 0.224, 0.225}};
struct ImageOptions {
  /// Reverse the first three channels (OpenCV's BGR / BGRA to RGB / RGBA). No effect on 1 channel.
  bool bgr_to_rgb = false;
  /// Multiplies every pixel first (1/255 maps uint8 to [0, 1]; use 1 for float images in [0, 1]).
  double scale = 1.0 / 255;
  /// Subtracted after scaling: empty (0), one value for every channel, or one per channel.
  ::std::vector<double> mean{};
  /// Divides last: empty (1), one value for every channel, or one per channel; never 0.
  ::std::vector<double> std{};
  /// The output dtype: Float (default), Half, BFloat16 or Double.
  at::ScalarType dtype = at::kFloat;
  /// Where the batch is made. CPU (default) keeps the image's own device. A CUDA device uploads
  /// the image as it is (uint8: 4× fewer bytes than float) and normalises it there.
  c10::Device device = at::kCPU;
};

namespace detail {

/// Checks one image and returns a description of its pixels.
inline ImageSource image_source_of(std::string_view function, const at::Tensor& image,
                                   std::string_view which) {
  TORCHKIT_CHECK(image.defined(), "{}: {} is an undefined tensor", function, which);
  TORCHKIT_CHECK(image.layout() == at::kStrided,
                 "{}: {} is not a dense tensor (sparse or another layout); expected a strided tensor",
                 function, which);
  TORCHKIT_CHECK(image.dim() == 3,
                 "{}: {} has shape {} ({} dimensions); expected an image [H, W, C] "
                 "(for a grayscale [H, W] image use unsqueeze(-1))",
                 function, which, shape_string(image.sizes()), image.dim());
  TORCHKIT_CHECK(image.size(0) > 0 && image.size(1) > 0,
                 "{}: {} is empty (shape {}); expected H > 0 and W > 0", function, which,
                 shape_string(image.sizes()));
  const int64_t channels = image.size(2);
  TORCHKIT_CHECK(channels == 1 || channels == 3 || channels == 4,
                 "{}: {} has {} channels (shape {}); expected 1, 3 or 4 channels in the last "
                 "dimension of [H, W, C]",
                 function, which, channels, shape_string(image.sizes()));
  TORCHKIT_CHECK(image.scalar_type() == at::kByte || image.scalar_type() == at::kFloat,
                 "{}: {} has dtype {}; expected uint8 (Byte) or float (Float)", function, which,
                 std::string(c10::toString(image.scalar_type())));
  ImageSource source;
  source.dtype = image.scalar_type();
  source.height = image.size(0);
  source.width = image.size(1);
  source.channels = channels;
  source.row_stride = image.stride(0);
  source.pixel_stride = image.stride(1);
  source.channel_stride = image.stride(2);
  return source;
}

/// Checks the options and turns them into the per-channel multiplier and offset of the pass.
inline ImageTransform image_transform_of(std::string_view function, int64_t channels,
                                         const ImageOptions& options) {
  TORCHKIT_CHECK(std::isfinite(options.scale), "{}: scale is {}; expected a finite number",
                 function, options.scale);
  const auto check_count = [&](const std::vector<double>& values, std::string_view name) {
    TORCHKIT_CHECK(values.empty() || values.size() == 1 || static_cast<int64_t>(values.size()) == channels,
                   "{}: {} has {} values for an image of {} channels; expected 0, 1 or {} "
                   "(one per channel)",
                   function, name, values.size(), channels, channels);
  };
  check_count(options.mean, "mean");
  check_count(options.std, "std");
  for (std::size_t i = 0; i < options.mean.size(); ++i) {
    TORCHKIT_CHECK(std::isfinite(options.mean[i]), "{}: mean[{}] is {}; expected a finite number",
                   function, i, options.mean[i]);
  }
  for (std::size_t i = 0; i < options.std.size(); ++i) {
    TORCHKIT_CHECK(std::isfinite(options.std[i]) && options.std[i] != 0,
                   "{}: std[{}] is {}; every std must be finite and non-zero", function, i,
                   options.std[i]);
  }
  const auto dtype = options.dtype;
  TORCHKIT_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble,
                 "{}: output dtype {} is not supported; expected Float, Half, BFloat16 or Double",
                 function, std::string(c10::toString(dtype)));

  ImageTransform transform;
  transform.channels = static_cast<int>(channels);
  const auto value_of = [](const std::vector<double>& values, int64_t channel, double fallback) {
    if (values.empty()) {
      return fallback;
    }
    return values.size() == 1 ? values[0] : values[static_cast<std::size_t>(channel)];
  };
  for (int source = 0; source < transform.channels; ++source) {
    const int destination = options.bgr_to_rgb && channels >= 3 && source < 3 ? 2 - source : source;
    const double mean = value_of(options.mean, destination, 0.0);
    const double deviation = value_of(options.std, destination, 1.0);
    transform.destination[source] = destination;
    transform.multiplier[source] = options.scale / deviation;
    transform.offset[source] = -mean / deviation;
  }
  return transform;
}

/// The device the batch is made on: `options.device`, or the image's own device when
/// `options.device` is the CPU.
inline c10::Device batch_device_of(const at::Tensor& image, const ImageOptions& options) {
  return options.device.is_cpu() ? image.device() : options.device;
}

/// The same computation with ATen operations, for batches made off the CPU (a CUDA device) and
/// for float images that require grad (so that autograd sees it). Also used by the tests as a
/// second, independent implementation.
inline at::Tensor images_to_batch_with_aten_ops(std::span<const at::Tensor> images,
                                                const ImageTransform& transform,
                                                const ImageOptions& options, c10::Device device) {
  const int64_t channels = transform.channels;
  std::vector<double> multiplier(static_cast<std::size_t>(channels));
  std::vector<double> offset(static_cast<std::size_t>(channels));
  std::vector<int64_t> source_of(static_cast<std::size_t>(channels));
  for (int source = 0; source < transform.channels; ++source) {
    const auto destination = static_cast<std::size_t>(transform.destination[source]);
    multiplier[destination] = transform.multiplier[source];
    offset[destination] = transform.offset[source];
    source_of[destination] = source;
  }
  const auto compute = options.dtype == at::kDouble ? at::kDouble : at::kFloat;
  const auto coefficients = [&](const std::vector<double>& values) {
    return at::tensor(values, at::TensorOptions().dtype(at::kDouble))
        .to(compute)
        .to(device)
        .view({channels, 1, 1});
  };
  const at::Tensor multiplier_tensor = coefficients(multiplier);
  const at::Tensor offset_tensor = coefficients(offset);
  const bool reorder = !std::is_sorted(source_of.begin(), source_of.end());
  const at::Tensor order = at::tensor(source_of, at::TensorOptions().dtype(at::kLong)).to(device);

  std::vector<at::Tensor> batch;
  batch.reserve(images.size());
  for (const at::Tensor& image : images) {
    // Upload as it is: a uint8 image is 4× fewer bytes than its float batch.
    at::Tensor planes = image.to(device).permute({2, 0, 1});
    if (reorder) {
      planes = planes.index_select(0, order);
    }
    batch.push_back((planes.to(compute) * multiplier_tensor + offset_tensor).to(options.dtype));
  }
  return at::stack(batch).contiguous();
}

/// Writes every image into `batch` ([N, C, H, W], contiguous, on the CPU) in one fused pass,
/// parallel over rows.
template <class Out>
void fill_batch_on_cpu(std::span<const ImageSource> sources, const ImageTransform& transform,
                       Out* batch) {
  const int64_t height = sources[0].height;
  const int64_t width = sources[0].width;
  const int64_t image_size = transform.channels * height * width;
  const int64_t rows = static_cast<int64_t>(sources.size()) * height;
  // At least ~64K values per task, so that small images stay on one thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (width * transform.channels));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end;) {
      const int64_t image = row / height;
      const int64_t y_begin = row % height;
      const int64_t y_end = std::min(height, y_begin + (end - row));
      convert_image_rows_for<Out>(sources[static_cast<std::size_t>(image)], transform,
                                  batch + image * image_size, y_begin, y_end);
      row += y_end - y_begin;
    }
  });
}

inline at::Tensor images_to_batch_impl(std::string_view function, std::span<const at::Tensor> images,
                                       const ImageOptions& options) {
  TORCHKIT_CHECK(!images.empty(), "{}: no images; expected at least one [H, W, C] image", function);
  std::vector<ImageSource> sources;
  sources.reserve(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) {
    const std::string which = images.size() == 1 ? std::string("the image") : fmt::format("image {}", i);
    sources.push_back(image_source_of(function, images[i], which));
    if (i > 0) {
      TORCHKIT_CHECK(images[i].sizes() == images[0].sizes(),
                     "{}: image {} has shape {} but image 0 has {}; every image of a batch must "
                     "have the same height, width and channel count",
                     function, i, shape_string(images[i].sizes()), shape_string(images[0].sizes()));
      TORCHKIT_CHECK(images[i].device() == images[0].device(),
                     "{}: image {} is on {} but image 0 is on {}; every image must be on one device",
                     function, i, images[i].device().str(), images[0].device().str());
    }
  }
  const ImageTransform transform = image_transform_of(function, sources[0].channels, options);
  const c10::Device device = batch_device_of(images[0], options);

  bool needs_autograd = false;
  for (const at::Tensor& image : images) {
    needs_autograd = needs_autograd || (image.requires_grad() && at::GradMode::is_enabled());
  }
  if (!device.is_cpu() || !images[0].is_cpu() || needs_autograd) {
    TORCHKIT_CHECK(!device.is_cuda() || at::hasCUDA(),
                   "{}: device {} was asked for, but this LibTorch has no CUDA support or no GPU",
                   function, device.str());
    return images_to_batch_with_aten_ops(images, transform, options, device);
  }

  const int64_t count = static_cast<int64_t>(images.size());
  at::Tensor batch = at::empty({count, sources[0].channels, sources[0].height, sources[0].width},
                               at::TensorOptions().dtype(options.dtype));
  for (std::size_t i = 0; i < images.size(); ++i) {
    sources[i].data = images[i].data_ptr();
  }
  switch (options.dtype) {
    case at::kFloat:
      fill_batch_on_cpu<float>(sources, transform, batch.data_ptr<float>());
      break;
    case at::kDouble:
      fill_batch_on_cpu<double>(sources, transform, batch.data_ptr<double>());
      break;
    case at::kHalf:
      fill_batch_on_cpu<c10::Half>(sources, transform, batch.data_ptr<c10::Half>());
      break;
    default:  // BFloat16; image_transform_of rejected everything else
      fill_batch_on_cpu<c10::BFloat16>(sources, transform, batch.data_ptr<c10::BFloat16>());
      break;
  }
  return batch;
}

}  // namespace detail

/// A decoded image `[H, W, C]` to a model input `[1, C, H, W]`: HWC → CHW, uint8 → float,
/// `(pixel * scale - mean[c]) / std[c]` and the optional BGR → RGB swap, in one fused pass (on the
/// CPU: one read of each pixel, one sequential write of each output value, parallel over rows).
///
/// The Python equivalent is
/// `((torch.from_numpy(img).permute(2, 0, 1).float() * scale - mean) / std).unsqueeze(0)`
/// (with `img[..., ::-1]` first for BGR → RGB), or torchvision's `Normalize(mean, std)(ToTensor()(img)).unsqueeze(0)`.
///
/// @param hwc      uint8 or float, 1, 3 or 4 channels, any strides: a crop `image.slice(0, y0, y1)
///                 .slice(1, x0, x1)` is read in place, without a copy.
/// @param options  scale, mean, std, channel swap, output dtype and device (see ImageOptions).
/// @returns a new contiguous `[1, C, H, W]` tensor of `options.dtype`, on `options.device` (or
///          on the image's device when that is the CPU). It does not track gradients unless the
///          image requires grad.
/// @throws Error for an undefined or empty image, a channel count other than 1, 3 or 4, a dtype
///         other than uint8/float, a mean or std of the wrong length, a std of 0, a non-finite
///         option or an unsupported output dtype.
///
///     at::Tensor image = decode("cat.png");  // [H, W, 3] uint8, BGR (see opencv.hpp for cv::Mat)
///     auto input = torchkit::image_to_batch(image, {.bgr_to_rgb = true,
///                                                   .mean = {0.485, 0.456, 0.406},
///                                                   .std = {0.229, 0.224, 0.225}});
///     auto logits = model->forward(input);  // input: [1, 3, H, W] float
[[nodiscard]] inline at::Tensor image_to_batch(const at::Tensor& hwc, const ImageOptions& options = {}) {
  return detail::images_to_batch_impl("image_to_batch", std::span<const at::Tensor>(&hwc, 1), options);
}

/// Several images of one size `[H, W, C]` to a batch `[N, C, H, W]`, each as image_to_batch does
/// it, written straight into the batch (no per-image tensors, no `at::stack` copy). The Python
/// equivalent is `torch.stack([transform(img) for img in images])`.
///
/// @throws Error for an empty list, images of different shapes or devices, and everything
///         image_to_batch rejects (the message names the image's position).
///
///     std::vector<at::Tensor> frames = ...;  // each [480, 640, 3] uint8
///     auto batch = torchkit::images_to_batch(frames, {.bgr_to_rgb = true});  // [N, 3, 480, 640]
[[nodiscard]] inline at::Tensor images_to_batch(std::span<const at::Tensor> hwcs, const ImageOptions& options = {}) {
  return detail::images_to_batch_impl("images_to_batch", hwcs, options);
}

/// images_to_batch for a braced list: `images_to_batch({left, right}, options)`.
[[nodiscard]] inline at::Tensor images_to_batch(std::initializer_list<at::Tensor> hwcs,
                                                const ImageOptions& options = {}) {
  return detail::images_to_batch_impl("images_to_batch",
                                      std::span<const at::Tensor>(hwcs.begin(), hwcs.size()), options);
}

}  // namespace torchkit
// ---- end torchkit/batch.hpp ----
// ---- begin torchkit/one_hot.hpp ----
/// @file one_hot.hpp
/// tip 5  one_hot, OneHot.
///
/// Cross-entropy takes class indices, but losses such as MSE need one-hot targets. Python's
/// `F.one_hot(labels, C)` returns int64 (8 bytes a value) that then needs `.float()`: two passes
/// and three times the memory traffic of writing the float targets once, which is what
/// torchkit::one_hot does. It also smooths labels and skips an ignore index, and a bad label
/// gets an error that names it and where it is.

// ---- begin torchkit/detail/one_hot_kernel.hpp ----
/// @file detail/one_hot_kernel.hpp
/// The one pass behind one_hot on the CPU: fills a block of output rows (a few KB, so it stays
/// in L1/L2) with the off value, then writes each row's on value, checking each label's range as
/// it goes. No int64 intermediate, no `.to()` pass afterwards.

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>

namespace torchkit::detail {

/// The values one_hot writes: `on` at the target class, `off` elsewhere, zeros for ignored labels.
struct OneHotValues {
  double on = 1.0;
  double off = 0.0;
};

/// Writes one-hot rows for `count` labels into `output` ([count, num_classes], contiguous).
/// Returns the flat index of the first label outside [0, num_classes) that is not
/// `ignore_index`, or -1 when every label is valid. After a bad label, `output` is partly written.
template <class Label, class Out>
[[nodiscard]] int64_t one_hot_on_cpu(const Label* labels, int64_t count, int64_t num_classes,
                                     OneHotValues values, std::optional<int64_t> ignore_index,
                                     Out* output) {
  const Out on = static_cast<Out>(values.on);
  const Out off = static_cast<Out>(values.off);
  const bool off_is_zero = values.off == 0.0;
  const bool has_ignore = ignore_index.has_value();
  const int64_t ignore = ignore_index.value_or(0);
  // The first bad label seen by any task; `count` while there is none.
  std::atomic<int64_t> first_bad{count};
  const auto record_bad = [&first_bad](int64_t index) {
    int64_t current = first_bad.load(std::memory_order_relaxed);
    while (index < current && !first_bad.compare_exchange_weak(current, index, std::memory_order_relaxed)) {
    }
  };
  const auto fill = [&](Out* begin, int64_t size, bool zero) {
    if (zero) {
      std::memset(static_cast<void*>(begin), 0, static_cast<std::size_t>(size) * sizeof(Out));
    } else {
      std::fill_n(begin, size, off);
    }
  };
  // Rows per block: about 32 KB of output, so the writes of the on values hit the cache.
  const int64_t block_rows = std::max<int64_t>(1, static_cast<int64_t>(32768 / sizeof(Out)) / num_classes);
  // At least ~32K output values per task.
  const int64_t grain = std::max<int64_t>(1, 32768 / num_classes);
  at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; block += block_rows) {
      if (first_bad.load(std::memory_order_relaxed) < block) {
        return;  // an earlier label is already bad: the result is thrown away
      }
      const int64_t block_end = std::min(end, block + block_rows);
      fill(output + block * num_classes, (block_end - block) * num_classes, off_is_zero);
      for (int64_t i = block; i < block_end; ++i) {
        const auto label = static_cast<int64_t>(labels[i]);
        Out* row = output + i * num_classes;
        if (has_ignore && label == ignore) {
          if (!off_is_zero) {
            fill(row, num_classes, true);
          }
        } else if (label >= 0 && label < num_classes) {
          row[label] = on;
        } else {
          record_bad(i);
          return;
        }
      }
    }
  });
  const int64_t bad = first_bad.load();
  return bad < count ? bad : -1;
}

}  // namespace torchkit::detail
// ---- end torchkit/detail/one_hot_kernel.hpp ----

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace torchkit {

/// Options of one_hot and OneHot.
///
///     torchkit::OneHotOptions options{.smoothing = 0.1, .ignore_index = 255};
struct OneHotOptions {
  /// The output dtype: any floating dtype (Float by default), an integer dtype or Bool.
  at::ScalarType dtype = at::kFloat;
  /// Label smoothing in [0, 1): `1 - smoothing + smoothing / C` on the target class and
  /// `smoothing / C` elsewhere, the targets of `CrossEntropyLoss(label_smoothing=smoothing)`.
  /// Needs a floating dtype.
  double smoothing = 0.0;
  /// Labels equal to this value give an all-zero row (they may lie outside [0, C), e.g. 255 or
  /// -100), as `CrossEntropyLoss(ignore_index=…)` skips them.
  std::optional<int64_t> ignore_index{};
};

namespace detail {

inline void check_one_hot_options(std::string_view function, int64_t num_classes,
                                  const OneHotOptions& options) {
  TORCHKIT_CHECK(num_classes > 0, "{}: num_classes is {}; expected a positive number of classes",
                 function, num_classes);
  TORCHKIT_CHECK(std::isfinite(options.smoothing) && options.smoothing >= 0.0 && options.smoothing < 1.0,
                 "{}: smoothing is {}; expected a value in [0, 1)", function, options.smoothing);
  const auto dtype = options.dtype;
  const bool floating = dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16;
  const bool integral = dtype == at::kLong || dtype == at::kInt || dtype == at::kShort ||
                        dtype == at::kChar || dtype == at::kByte || dtype == at::kBool;
  TORCHKIT_CHECK(floating || integral,
                 "{}: output dtype {} is not supported; expected Float, Double, Half, BFloat16, an "
                 "integer dtype or Bool",
                 function, std::string(c10::toString(dtype)));
  TORCHKIT_CHECK(floating || options.smoothing == 0.0,
                 "{}: smoothing {} needs a floating output dtype, got {}", function,
                 options.smoothing, std::string(c10::toString(dtype)));
}

inline OneHotValues one_hot_values_of(int64_t num_classes, const OneHotOptions& options) {
  const double spread = options.smoothing / static_cast<double>(num_classes);
  return {1.0 - options.smoothing + spread, spread};
}

[[noreturn]] inline void fail_bad_label(int64_t label, int64_t flat_index, c10::IntArrayRef sizes,
                                        int64_t num_classes, const OneHotOptions& options) {
  if (options.ignore_index.has_value()) {
    fail("one_hot: label {} at index {} is outside [0, {}) and is not the ignore_index ({})", label,
         index_string(flat_index, sizes), num_classes, *options.ignore_index);
  }
  fail("one_hot: label {} at index {} is outside [0, {}); pass ignore_index={} to skip it", label,
       index_string(flat_index, sizes), num_classes, label);
}

/// The same computation with ATen operations (scatter), for labels off the CPU. One host sync:
/// the range check (`any()`); the bad label's position is only looked up on failure. Also used by
/// the tests as a second, independent implementation.
inline at::Tensor one_hot_with_aten_ops(const at::Tensor& labels, int64_t num_classes,
                                        const OneHotOptions& options) {
  const OneHotValues values = one_hot_values_of(num_classes, options);
  const at::Tensor wide = labels.to(at::kLong);
  const at::Tensor ignored = options.ignore_index.has_value()
                                 ? wide.eq(*options.ignore_index)
                                 : at::zeros_like(wide, at::TensorOptions().dtype(at::kBool));
  const at::Tensor bad = wide.lt(0).logical_or(wide.ge(num_classes)).logical_and(ignored.logical_not());
  if (bad.any().item<bool>()) {
    const int64_t first = bad.flatten().nonzero().select(0, 0).select(0, 0).item<int64_t>();
    fail_bad_label(wide.flatten().select(0, first).item<int64_t>(), first, labels.sizes(), num_classes,
                   options);
  }
  std::vector<int64_t> sizes = labels.sizes().vec();
  sizes.push_back(num_classes);
  at::Tensor result = at::full(sizes, values.off, labels.options().dtype(options.dtype));
  result.scatter_(-1, wide.masked_fill(ignored, 0).unsqueeze(-1), values.on);
  if (options.ignore_index.has_value()) {
    result.masked_fill_(ignored.unsqueeze(-1), 0);
  }
  return result;
}

template <class T>
struct TypeTag {
  using type = T;
};

template <class F>
decltype(auto) visit_label_type(at::ScalarType dtype, F&& visit) {
  switch (dtype) {
    case at::kByte: return visit(TypeTag<uint8_t>{});
    case at::kChar: return visit(TypeTag<int8_t>{});
    case at::kShort: return visit(TypeTag<int16_t>{});
    case at::kInt: return visit(TypeTag<int32_t>{});
    default: return visit(TypeTag<int64_t>{});  // kLong; one_hot checked the dtype
  }
}

template <class F>
decltype(auto) visit_one_hot_output_type(at::ScalarType dtype, F&& visit) {
  switch (dtype) {
    case at::kDouble: return visit(TypeTag<double>{});
    case at::kHalf: return visit(TypeTag<c10::Half>{});
    case at::kBFloat16: return visit(TypeTag<c10::BFloat16>{});
    case at::kLong: return visit(TypeTag<int64_t>{});
    case at::kInt: return visit(TypeTag<int32_t>{});
    case at::kShort: return visit(TypeTag<int16_t>{});
    case at::kChar: return visit(TypeTag<int8_t>{});
    case at::kByte: return visit(TypeTag<uint8_t>{});
    case at::kBool: return visit(TypeTag<bool>{});
    default: return visit(TypeTag<float>{});  // kFloat; check_one_hot_options checked the dtype
  }
}

}  // namespace detail

/// One-hot encodes class labels: `labels.sizes() + [num_classes]`, 1 at each label's class and 0
/// elsewhere, written straight in the chosen dtype (float by default) in one pass.
///
/// The Python equivalent is `F.one_hot(labels, num_classes).float()` (or the tip's
/// `torch.zeros(batch_size, class_num).scatter_(1, label, 1)`); with smoothing, the targets
/// that `CrossEntropyLoss(label_smoothing=smoothing)` uses.
///
/// @param labels       class indices of any integer dtype (uint8, int8, int16, int32, int64) and
///                     any shape; the result stays on their device.
/// @param num_classes  C, the length of each one-hot row; every label must be in [0, C) or equal
///                     to `options.ignore_index`.
/// @param options      output dtype, label smoothing, ignore index (see OneHotOptions).
/// @throws Error for an undefined tensor, non-integer labels, `num_classes <= 0`, smoothing
///         outside [0, 1), an unsupported dtype, and a label outside [0, C): the message names the
///         first such label, its index in `labels` and the valid range. On the CPU the check runs
///         in the same pass that writes the output; on a GPU it costs one host sync.
///
///     auto labels = torch::tensor({3, 4, 2, 1});                 // batch_size = 4
///     auto targets = torchkit::one_hot(labels, 8);                // [4, 8] float
///     auto loss = torch::mse_loss(model->forward(x), targets);
[[nodiscard]] inline at::Tensor one_hot(const at::Tensor& labels, int64_t num_classes,
                                        const OneHotOptions& options = {}) {
  TORCHKIT_CHECK(labels.defined(), "one_hot: labels is an undefined tensor");
  TORCHKIT_CHECK(labels.layout() == at::kStrided,
                 "one_hot: labels is not a dense tensor (sparse or another layout); expected a strided tensor");
  const auto label_type = labels.scalar_type();
  TORCHKIT_CHECK(label_type == at::kByte || label_type == at::kChar || label_type == at::kShort ||
                     label_type == at::kInt || label_type == at::kLong,
                 "one_hot: labels have dtype {}; expected class indices of an integer dtype (uint8, "
                 "int8, int16, int32 or int64)",
                 std::string(c10::toString(label_type)));
  detail::check_one_hot_options("one_hot", num_classes, options);
  if (!labels.is_cpu()) {
    return detail::one_hot_with_aten_ops(labels, num_classes, options);
  }

  std::vector<int64_t> sizes = labels.sizes().vec();
  sizes.push_back(num_classes);
  at::Tensor result = at::empty(sizes, at::TensorOptions().dtype(options.dtype));
  const int64_t count = labels.numel();
  if (count == 0) {
    return result;
  }
  // Non-contiguous labels are copied once (they are 1/C of the output or less).
  const at::Tensor dense = labels.contiguous();
  const detail::OneHotValues values = detail::one_hot_values_of(num_classes, options);
  const int64_t bad = detail::visit_label_type(label_type, [&](auto label_tag) {
    using Label = typename decltype(label_tag)::type;
    const Label* label_data = static_cast<const Label*>(dense.data_ptr());
    return detail::visit_one_hot_output_type(options.dtype, [&](auto output_tag) {
      using Out = typename decltype(output_tag)::type;
      return detail::one_hot_on_cpu<Label, Out>(label_data, count, num_classes, values,
                                                options.ignore_index,
                                                static_cast<Out*>(result.data_ptr()));
    });
  });
  if (bad >= 0) {
    const int64_t label = detail::visit_label_type(label_type, [&](auto label_tag) {
      using Label = typename decltype(label_tag)::type;
      return static_cast<int64_t>(static_cast<const Label*>(dense.data_ptr())[bad]);
    });
    detail::fail_bad_label(label, bad, labels.sizes(), num_classes, options);
  }
  return result;
}

/// A reusable one-hot encoder with fixed options, checked once at construction.
///
///     torchkit::OneHot encode(10, {.smoothing = 0.1});
///     auto targets = encode(labels);  // [N, 10] float
///     std::cout << encode;            // OneHot(num_classes=10, dtype=Float, smoothing=0.1, ignore_index=none)
class OneHot {
 public:
  /// @throws Error for `num_classes <= 0`, smoothing outside [0, 1) or an unsupported dtype.
  explicit OneHot(int64_t num_classes, OneHotOptions options = {})
      : num_classes_(num_classes), options_(std::move(options)) {
    detail::check_one_hot_options("OneHot", num_classes_, options_);
  }

  /// one_hot(labels, num_classes(), options()).
  [[nodiscard]] at::Tensor operator()(const at::Tensor& labels) const {
    return one_hot(labels, num_classes_, options_);
  }

  [[nodiscard]] int64_t num_classes() const { return num_classes_; }
  [[nodiscard]] const OneHotOptions& options() const { return options_; }

  /// `OneHot(num_classes=10, dtype=Float, smoothing=0.1, ignore_index=255)`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("OneHot(num_classes={}, dtype={}, smoothing={}, ignore_index={})", num_classes_,
                       c10::toString(options_.dtype), options_.smoothing,
                       options_.ignore_index.has_value() ? std::to_string(*options_.ignore_index)
                                                         : std::string("none"));
  }

  friend std::ostream& operator<<(std::ostream& out, const OneHot& encoder) {
    return out << encoder.to_string();
  }

 private:
  int64_t num_classes_;
  OneHotOptions options_;
};

}  // namespace torchkit
// ---- end torchkit/one_hot.hpp ----
// ---- begin torchkit/grad_mode.hpp ----
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
  template <ModuleLike M>
    requires(!std::is_const_v<std::remove_reference_t<M>>)
  explicit EvalScope(M& model) {
    torch::nn::Module& root = module_of(model);  // throws before anything changes
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
// ---- end torchkit/grad_mode.hpp ----
// ---- begin torchkit/memory.hpp ----
/// @file memory.hpp
/// Tip 6: hand the CUDA caching allocator's unused memory back, and read its statistics:
/// empty_cache, memory_stats, reset_peak_memory_stats, MemoryStats.
///
/// Python:
///
///     del activations
///     torch.cuda.empty_cache()
///     print(torch.cuda.memory_allocated(), torch.cuda.memory_reserved())
///
/// CUDA support is compiled in when TORCHKIT_WITH_CUDA is 1: the CMake package defines it when
/// the Torch it finds was built with CUDA; single-header users define it themselves
/// (`-DTORCHKIT_WITH_CUDA=1`) and link LibTorch's CUDA libraries. Without it (a CPU-only LibTorch)
/// this header references no CUDA symbol: empty_cache() does nothing, as in Python, and the
/// statistics functions throw Error.

// ---- begin torchkit/detail/cuda_memory.hpp ----
/// @file detail/cuda_memory.hpp
/// The CUDA caching allocator calls behind memory.hpp, one per LibTorch API generation. Only
/// compiled when TORCHKIT_WITH_CUDA is 1: a CPU-only LibTorch never sees a CUDA symbol.
///
/// - 1.13 … 2.x: `c10::cuda::CUDACachingAllocator::{emptyCache, getDeviceStats, resetPeakStats}`
///   (free functions; the device parameter is `int` up to 2.2, `c10::DeviceIndex` from 2.3;
///   the stats type moved to `c10::CachingDeviceAllocator::DeviceStats` in later 2.x and
///   `emptyCache` gained a defaulted memory-pool argument; neither is named here).
/// - The allocator is set up by LibTorch's lazy CUDA initialisation: `lazyInitCUDA()` up to 2.5,
///   `lazyInitDevice(at::kCUDA)` from 2.6 (`lazyInitCUDA` is deprecated there).


#if TORCHKIT_WITH_CUDA


#include <ATen/Context.h>
#include <c10/core/Device.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace torchkit::detail {

/// Allocator statistics of one CUDA device, in bytes.
struct CudaAllocatorStats {
  std::int64_t allocated, reserved, peak_allocated, peak_reserved;
};

/// The device a user's index means (-1: the current device); Error when it does not exist.
/// Starts CUDA (it has to count the devices).
[[nodiscard]] inline c10::DeviceIndex checked_cuda_device(c10::DeviceIndex device, std::string_view caller) {
  const c10::DeviceIndex count = c10::cuda::device_count();
  TORCHKIT_CHECK(count > 0,
                 "{}(device={}): CUDA is not available: LibTorch has CUDA, but no GPU is visible to this process "
                 "(check the driver, nvidia-smi and CUDA_VISIBLE_DEVICES)",
                 caller, static_cast<int>(device));
  TORCHKIT_CHECK(device >= -1 && device < count,
                 "{}: CUDA device index {} does not exist; {} device{} visible (valid: 0..{}, or -1 for the "
                 "current device)",
                 caller, static_cast<int>(device), static_cast<int>(count), count == 1 ? " is" : "s are",
                 static_cast<int>(count) - 1);
  return device == -1 ? c10::cuda::current_device() : device;
}

/// Sets up LibTorch's CUDA state (and so its caching allocator) once; what the first CUDA
/// tensor would do anyway.
inline void lazy_init_cuda() {
#if TORCHKIT_TORCH_AT_LEAST(2, 6)
  at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
#else
  at::globalContext().lazyInitCUDA();
#endif
}

inline void cuda_empty_cache() {
  // Before CUDA starts nothing is cached, and asking would start CUDA (fixing
  // CUDA_VISIBLE_DEVICES): Python's torch.cuda.empty_cache() likewise does nothing then.
  if (!cuda_driver_initialised() || c10::cuda::device_count() == 0) {
    return;
  }
  lazy_init_cuda();
  c10::cuda::CUDACachingAllocator::emptyCache();
}

[[nodiscard]] inline CudaAllocatorStats cuda_memory_stats(c10::DeviceIndex device) {
  const c10::DeviceIndex index = checked_cuda_device(device, "memory_stats");
  lazy_init_cuda();
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
  constexpr std::size_t aggregate = 0;  // StatType::AGGREGATE in every LibTorch version
  return CudaAllocatorStats{stats.allocated_bytes[aggregate].current, stats.reserved_bytes[aggregate].current,
                            stats.allocated_bytes[aggregate].peak, stats.reserved_bytes[aggregate].peak};
}

inline void cuda_reset_peak_memory_stats(c10::DeviceIndex device) {
  const c10::DeviceIndex index = checked_cuda_device(device, "reset_peak_memory_stats");
  lazy_init_cuda();
  c10::cuda::CUDACachingAllocator::resetPeakStats(index);
}

}  // namespace torchkit::detail

#endif  // TORCHKIT_WITH_CUDA
// ---- end torchkit/detail/cuda_memory.hpp ----

#include <c10/core/Device.h>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <ostream>
#include <string>

namespace torchkit {

/// What the CUDA caching allocator holds on one device, in bytes (Python:
/// `torch.cuda.memory_allocated()`, `memory_reserved()`, `max_memory_allocated()`,
/// `max_memory_reserved()`). `allocated` is what live tensors use; `reserved` is what the
/// allocator took from the driver (allocated plus cached); the peaks count since the start or
/// the last reset_peak_memory_stats().
///
///     std::cout << torchkit::memory_stats() << '\n';
///     // allocated 1.50 MiB (peak 3.00 MiB), reserved 20.00 MiB (peak 22.00 MiB)
struct MemoryStats {
  std::int64_t allocated = 0;
  std::int64_t reserved = 0;
  std::int64_t peak_allocated = 0;
  std::int64_t peak_reserved = 0;

  /// `allocated 1.50 MiB (peak 3.00 MiB), reserved 20.00 MiB (peak 22.00 MiB)`.
  [[nodiscard]] std::string to_string() const;

  friend bool operator==(const MemoryStats&, const MemoryStats&) = default;
};

namespace detail {

/// A byte count in binary units: `512 B`, `1.50 KiB`, `20.00 MiB`, `3.25 GiB`.
[[nodiscard]] inline std::string format_bytes(std::int64_t bytes) {
  constexpr const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  const bool negative = bytes < 0;  // never from the allocator; shown honestly if it happens
  const double magnitude = negative ? -static_cast<double>(bytes) : static_cast<double>(bytes);
  if (magnitude < 1024.0) {
    return fmt::format("{} B", bytes);
  }
  double value = magnitude / 1024.0;
  std::size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < std::size(units)) {
    value /= 1024.0;
    ++unit;
  }
  return fmt::format("{}{:.2f} {}", negative ? "-" : "", value, units[unit]);
}

}  // namespace detail

inline std::string MemoryStats::to_string() const {
  return fmt::format("allocated {} (peak {}), reserved {} (peak {})", detail::format_bytes(allocated),
                     detail::format_bytes(peak_allocated), detail::format_bytes(reserved),
                     detail::format_bytes(peak_reserved));
}

/// Prints MemoryStats::to_string().
inline std::ostream& operator<<(std::ostream& stream, const MemoryStats& stats) {
  return stream << stats.to_string();
}

/// Hands the CUDA caching allocator's unused cached blocks back to the driver, so that other
/// processes (and nvidia-smi) see the memory free (Python: `torch.cuda.empty_cache()`). Memory
/// used by live tensors stays. Does nothing where CUDA is absent or has not started yet (it does
/// not start CUDA), as in Python. Does not make more memory available to this process's tensors:
/// the allocator reuses cached blocks anyway.
///
///     activations.reset();
///     torchkit::empty_cache();
inline void empty_cache() {
#if TORCHKIT_WITH_CUDA
  detail::cuda_empty_cache();
#endif
}

/// The CUDA caching allocator's statistics for `device` (-1: the current device).
/// Starts CUDA if it has not started.
///
/// @throws Error when CUDA is not available (a CPU-only LibTorch, or no GPU) or the device index
///         does not exist.
///
///     auto stats = torchkit::memory_stats();
///     std::cout << stats.allocated << " bytes in tensors\n";
[[nodiscard]] inline MemoryStats memory_stats([[maybe_unused]] c10::DeviceIndex device = -1) {
#if TORCHKIT_WITH_CUDA
  const auto stats = detail::cuda_memory_stats(device);
  return MemoryStats{stats.allocated, stats.reserved, stats.peak_allocated, stats.peak_reserved};
#else
  detail::fail(
      "memory_stats(device={}): CUDA is not available: torchkit was compiled without CUDA support "
      "(TORCHKIT_WITH_CUDA is 0: this LibTorch was built without CUDA, or, using the single header, "
      "TORCHKIT_WITH_CUDA=1 was not defined); memory statistics exist only for CUDA devices",
      static_cast<int>(device));
#endif
}

/// Starts the peak statistics of `device` (-1: the current device) afresh from the current
/// values (Python: `torch.cuda.reset_peak_memory_stats()`). Starts CUDA if it has not started.
///
/// @throws Error when CUDA is not available or the device index does not exist.
///
///     torchkit::reset_peak_memory_stats();
///     run_validation();
///     auto peak = torchkit::memory_stats().peak_allocated;
inline void reset_peak_memory_stats([[maybe_unused]] c10::DeviceIndex device = -1) {
#if TORCHKIT_WITH_CUDA
  detail::cuda_reset_peak_memory_stats(device);
#else
  detail::fail(
      "reset_peak_memory_stats(device={}): CUDA is not available: torchkit was compiled without CUDA support "
      "(TORCHKIT_WITH_CUDA is 0: this LibTorch was built without CUDA, or, using the single header, "
      "TORCHKIT_WITH_CUDA=1 was not defined); memory statistics exist only for CUDA devices",
      static_cast<int>(device));
#endif
}

}  // namespace torchkit
// ---- end torchkit/memory.hpp ----
// ---- begin torchkit/lr.hpp ----
/// @file lr.hpp
/// tip 7  namespace torchkit::lr: PyTorch's learning-rate scheduler family
/// (`torch.optim.lr_scheduler`) for LibTorch optimizers, with Python's argument names,
/// defaults, errors and values (the same recursive "chainable" formulas, so the learning rates
/// agree with Python's to the last bits).
///
///     torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
///     torchkit::lr::StepLR scheduler(optimizer, 10, 0.1);   // lr_scheduler.StepLR(optimizer, 10, 0.1)
///     for (int epoch = 0; epoch < 30; ++epoch) {
///       train(...);
///       scheduler.step();
///     }
///
/// Every scheduler takes the optimizer first and records each parameter group's initial lr
/// the way Python does (`param_group['initial_lr']`): the first scheduler of an optimizer
/// records it, later ones read it, so that chained and sequential schedules start from the
/// same base. LibTorch's parameter groups have no room for it, so torchkit keeps it beside the
/// optimizer while any scheduler of that optimizer is alive.
///
/// Not carried over from Python: `last_epoch` and `verbose` constructor arguments (resume with
/// `load()` instead), and `step(epoch)` except for CosineAnnealingWarmRestarts. Where Python
/// would leave a scheduler half-updated by an error (e.g. OneCycleLR stepped too often), the
/// torchkit scheduler throws before changing anything.

// ---- begin torchkit/detail/lr_support.hpp ----
/// @file detail/lr_support.hpp
/// Internals of lr.hpp: the initial learning rates every scheduler of one optimizer shares
/// (Python's `param_group['initial_lr']`), reading and writing a parameter group's lr and
/// momentum, Python's arithmetic helpers, and typed archive access for save/load.


#include <ATen/core/ivalue.h>
#include <c10/util/Exception.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace torchkit::detail {

/// The initial lr of each parameter group of one optimizer: Python keeps it in
/// `param_group['initial_lr']`, set by the first scheduler (`setdefault`) and read by every
/// later one. LibTorch's parameter groups have no room for it, so it lives here, shared by
/// every scheduler of that optimizer while any of them is alive.
struct InitialLrs {
  std::vector<double> values;
};

/// The InitialLrs of `optimizer`: the live record when a scheduler of it exists, else a new,
/// empty one. Thread-safe.
[[nodiscard]] inline std::shared_ptr<InitialLrs> shared_initial_lrs(const torch::optim::Optimizer& optimizer) {
  static std::mutex mutex;
  static std::unordered_map<const torch::optim::Optimizer*, std::weak_ptr<InitialLrs>> records;
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto found = records.find(&optimizer); found != records.end()) {
    if (auto record = found->second.lock()) {
      return record;
    }
  }
  std::erase_if(records, [](const auto& entry) { return entry.second.expired(); });
  auto record = std::make_shared<InitialLrs>();
  records[&optimizer] = record;
  return record;
}

/// The lr of parameter group `index` (Python's `param_group['lr']`).
[[nodiscard]] inline double group_lr(const torch::optim::Optimizer& optimizer, std::size_t index) {
  try {
    return optimizer.param_groups()[index].options().get_lr();
  } catch (const c10::Error&) {
    fail("torchkit::lr: the options of param group {} do not implement get_lr(), so no scheduler "
         "can read or set their learning rate",
         index);
  }
}

/// Sets the lr of parameter group `index`.
inline void set_group_lr(torch::optim::Optimizer& optimizer, std::size_t index, double lr) {
  optimizer.param_groups()[index].options().set_lr(lr);
}

/// How an optimizer exposes momentum: Python's `'momentum' in optimizer.defaults` (SGD,
/// RMSprop) or `'betas' in optimizer.defaults` (Adam, AdamW: beta1 plays the momentum's role).
enum class MomentumKind { none, momentum, beta1 };

[[nodiscard]] inline MomentumKind momentum_kind(const torch::optim::OptimizerOptions& options) {
  if (dynamic_cast<const torch::optim::SGDOptions*>(&options) != nullptr ||
      dynamic_cast<const torch::optim::RMSpropOptions*>(&options) != nullptr) {
    return MomentumKind::momentum;
  }
  if (dynamic_cast<const torch::optim::AdamOptions*>(&options) != nullptr ||
      dynamic_cast<const torch::optim::AdamWOptions*>(&options) != nullptr) {
    return MomentumKind::beta1;
  }
  return MomentumKind::none;
}

/// The momentum kind shared by every parameter group (and the defaults) of `optimizer`; `none`
/// when any of them has none.
[[nodiscard]] inline MomentumKind momentum_kind(const torch::optim::Optimizer& optimizer) {
  const MomentumKind kind = momentum_kind(optimizer.defaults());
  for (const auto& group : optimizer.param_groups()) {
    if (momentum_kind(group.options()) != kind) {
      return MomentumKind::none;
    }
  }
  return kind;
}

/// The momentum (or beta1) of parameter group `index`; the kind must have been checked.
[[nodiscard]] inline double group_momentum(const torch::optim::Optimizer& optimizer, std::size_t index) {
  const auto& options = optimizer.param_groups()[index].options();
  if (const auto* sgd = dynamic_cast<const torch::optim::SGDOptions*>(&options)) {
    return sgd->momentum();
  }
  if (const auto* rmsprop = dynamic_cast<const torch::optim::RMSpropOptions*>(&options)) {
    return rmsprop->momentum();
  }
  if (const auto* adam = dynamic_cast<const torch::optim::AdamOptions*>(&options)) {
    return std::get<0>(adam->betas());
  }
  if (const auto* adamw = dynamic_cast<const torch::optim::AdamWOptions*>(&options)) {
    return std::get<0>(adamw->betas());
  }
  fail("torchkit::lr: param group {} has no momentum or betas", index);
}

/// Sets the momentum (SGD, RMSprop) or beta1 (Adam, AdamW, keeping beta2) of group `index`.
inline void set_group_momentum(torch::optim::Optimizer& optimizer, std::size_t index, double value) {
  auto& options = optimizer.param_groups()[index].options();
  if (auto* sgd = dynamic_cast<torch::optim::SGDOptions*>(&options)) {
    sgd->momentum(value);
  } else if (auto* rmsprop = dynamic_cast<torch::optim::RMSpropOptions*>(&options)) {
    rmsprop->momentum(value);
  } else if (auto* adam = dynamic_cast<torch::optim::AdamOptions*>(&options)) {
    adam->betas(std::make_tuple(value, std::get<1>(adam->betas())));
  } else if (auto* adamw = dynamic_cast<torch::optim::AdamWOptions*>(&options)) {
    adamw->betas(std::make_tuple(value, std::get<1>(adamw->betas())));
  } else {
    fail("torchkit::lr: param group {} has no momentum or betas", index);
  }
}

/// Python's `a % b` for integers (the result has the sign of `b`).
[[nodiscard]] constexpr int64_t python_mod(int64_t a, int64_t b) noexcept {
  const int64_t remainder = a % b;
  return (remainder != 0 && ((remainder < 0) != (b < 0))) ? remainder + b : remainder;
}

/// Python's `a // b` for integers (rounds toward negative infinity).
[[nodiscard]] constexpr int64_t python_floor_div(int64_t a, int64_t b) noexcept {
  const int64_t quotient = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? quotient - 1 : quotient;
}

/// Python's `bisect.bisect_right(sorted_values, value)`.
[[nodiscard]] inline std::size_t bisect_right(const std::vector<int64_t>& sorted_values, int64_t value) {
  return static_cast<std::size_t>(std::upper_bound(sorted_values.begin(), sorted_values.end(), value) -
                                  sorted_values.begin());
}

/// `[a, b, c]` with each double in its shortest round-trip form.
template <class T>
[[nodiscard]] std::string list_to_string(const std::vector<T>& values) {
  return fmt::format("[{}]", fmt::join(values, ", "));
}

/// The largest count of epochs or steps a scheduler accepts: 2^53, where epochs stop being exact
/// as doubles (no run gets there); it keeps every epoch computation clear of int64 overflow.
inline constexpr int64_t max_count = int64_t{1} << 53;

/// A count of epochs or steps: in [1, 2^53].
inline void check_positive(std::string_view owner, std::string_view name, int64_t value) {
  TORCHKIT_CHECK(value > 0, "{}: {} must be a positive integer, got {}", owner, name, value);
  TORCHKIT_CHECK(value <= max_count, "{}: {} is {}; the largest count a scheduler accepts is 2^53 = {}", owner, name,
                 value, max_count);
}

inline void check_non_negative(std::string_view owner, std::string_view name, double value) {
  TORCHKIT_CHECK(std::isfinite(value) && value >= 0, "{}: {} must be a finite number >= 0, got {}", owner, name,
                 value);
}

inline void check_non_negative(std::string_view owner, std::string_view name, const std::vector<double>& values) {
  for (std::size_t index = 0; index < values.size(); ++index) {
    TORCHKIT_CHECK(std::isfinite(values[index]) && values[index] >= 0,
                   "{}: {} must be finite numbers >= 0, got {} for param group {}", owner, name, values[index],
                   index);
  }
}

/// Milestones must be >= 0 and sorted (equal neighbours are allowed: Python counts them).
inline void check_milestones(std::string_view owner, const std::vector<int64_t>& milestones) {
  for (std::size_t index = 0; index < milestones.size(); ++index) {
    TORCHKIT_CHECK(milestones[index] >= 0, "{}: milestones must be >= 0, got milestones[{}] = {} in {}", owner,
                   index, milestones[index], list_to_string(milestones));
    TORCHKIT_CHECK(index == 0 || milestones[index - 1] <= milestones[index],
                   "{}: milestones must be increasing, got milestones[{}] = {} after {} in {}", owner, index,
                   milestones[index], milestones[index - 1], list_to_string(milestones));
  }
}

inline std::vector<std::function<double(int64_t)>> lambdas_for_groups(std::vector<std::function<double(int64_t)>> lambdas, bool one_for_all,
                                                std::size_t group_count, std::string_view owner) {
  if (one_for_all) {
    TORCHKIT_CHECK(lambdas.size() == 1 && lambdas.front(), "{}: lr_lambda is empty", owner);
    return std::vector<std::function<double(int64_t)>>(group_count, lambdas.front());
  }
  TORCHKIT_CHECK(lambdas.size() == group_count, "{}: Expected {} lr_lambdas, but got {}", owner, group_count,
                 lambdas.size());
  for (std::size_t index = 0; index < lambdas.size(); ++index) {
    TORCHKIT_CHECK(static_cast<bool>(lambdas[index]), "{}: lr_lambda[{}] is empty", owner, index);
  }
  return lambdas;
}

/// Writes typed values under string keys of an archive (the scheduler's state).
class ArchiveWriter {
 public:
  explicit ArchiveWriter(torch::serialize::OutputArchive& archive) : archive_(archive) {}

  void write_int(const std::string& key, int64_t value) { archive_.write(key, c10::IValue(value)); }
  void write_double(const std::string& key, double value) { archive_.write(key, c10::IValue(value)); }
  void write_bool(const std::string& key, bool value) { archive_.write(key, c10::IValue(value)); }
  void write_string(const std::string& key, const std::string& value) { archive_.write(key, c10::IValue(value)); }
  void write_doubles(const std::string& key, const std::vector<double>& values) {
    c10::List<double> list;
    list.reserve(values.size());
    for (const double value : values) {
      list.push_back(value);
    }
    archive_.write(key, c10::IValue(std::move(list)));
  }
  void write_ints(const std::string& key, const std::vector<int64_t>& values) {
    c10::List<int64_t> list;
    list.reserve(values.size());
    for (const int64_t value : values) {
      list.push_back(value);
    }
    archive_.write(key, c10::IValue(std::move(list)));
  }
  void write_optional_int(const std::string& key, const std::optional<int64_t>& value) {
    archive_.write(key, value ? c10::IValue(*value) : c10::IValue());
  }

  [[nodiscard]] torch::serialize::OutputArchive& archive() noexcept { return archive_; }

 private:
  torch::serialize::OutputArchive& archive_;
};

/// Reads typed values written by ArchiveWriter; every missing key or wrong type throws Error
/// naming the key and `owner` (the scheduler being loaded).
class ArchiveReader {
 public:
  ArchiveReader(torch::serialize::InputArchive& archive, std::string owner)
      : archive_(archive), owner_(std::move(owner)) {}

  [[nodiscard]] int64_t read_int(const std::string& key) {
    const c10::IValue value = read(key);
    check(value.isInt(), key, "an integer", value);
    return value.toInt();
  }
  [[nodiscard]] double read_double(const std::string& key) {
    const c10::IValue value = read(key);
    check(value.isDouble(), key, "a float", value);
    return value.toDouble();
  }
  [[nodiscard]] bool read_bool(const std::string& key) {
    const c10::IValue value = read(key);
    check(value.isBool(), key, "a bool", value);
    return value.toBool();
  }
  [[nodiscard]] std::string read_string(const std::string& key) {
    const c10::IValue value = read(key);
    check(value.isString(), key, "a string", value);
    return value.toStringRef();
  }
  [[nodiscard]] std::vector<double> read_doubles(const std::string& key) {
    const c10::IValue value = read(key);
    if (value.isList() && value.toListRef().empty()) {
      return {};
    }
    check(value.isDoubleList(), key, "a list of floats", value);
    return value.toDoubleVector();
  }
  [[nodiscard]] std::vector<int64_t> read_ints(const std::string& key) {
    const c10::IValue value = read(key);
    if (value.isList() && value.toListRef().empty()) {
      return {};
    }
    check(value.isIntList(), key, "a list of integers", value);
    return value.toIntVector();
  }
  [[nodiscard]] std::optional<int64_t> read_optional_int(const std::string& key) {
    const c10::IValue value = read(key);
    if (value.isNone()) {
      return std::nullopt;
    }
    check(value.isInt(), key, "an integer or None", value);
    return value.toInt();
  }
  /// The nested archive under `key`.
  [[nodiscard]] torch::serialize::InputArchive read_archive(const std::string& key) {
    torch::serialize::InputArchive nested;
    TORCHKIT_CHECK(archive_.try_read(key, nested), "{}: the archive has no '{}'", owner_, key);
    return nested;
  }

  [[nodiscard]] const std::string& owner() const noexcept { return owner_; }

 private:
  [[nodiscard]] c10::IValue read(const std::string& key) {
    c10::IValue value;
    TORCHKIT_CHECK(archive_.try_read(key, value), "{}: the archive has no '{}' (was it saved by this kind of scheduler?)",
                   owner_, key);
    return value;
  }
  void check(bool ok, const std::string& key, std::string_view expected, const c10::IValue& value) const {
    TORCHKIT_CHECK(ok, "{}: '{}' in the archive should be {}, got a {}", owner_, key, expected, value.tagKind());
  }

  torch::serialize::InputArchive& archive_;
  std::string owner_;
};

/// Reads the group momentums a cycling scheduler (OneCycleLR, CyclicLR) saved, after checking
/// that `optimizer` has the kind of momentum the archive cycles (`use_beta1`: Adam's beta1,
/// else SGD's momentum) and that there is one value per group (none without cycling).
[[nodiscard]] inline std::vector<double> read_cycled_momentums(ArchiveReader& reader,
                                                               const torch::optim::Optimizer& optimizer,
                                                               bool cycle_momentum, bool use_beta1,
                                                               std::size_t group_count) {
  if (cycle_momentum) {
    TORCHKIT_CHECK(momentum_kind(optimizer) == (use_beta1 ? MomentumKind::beta1 : MomentumKind::momentum),
                   "{}: the archive cycles the {}, which this optimizer does not have", reader.owner(),
                   use_beta1 ? "beta1 of betas" : "momentum");
  }
  auto momentums = reader.read_doubles("optimizer_momentums");
  TORCHKIT_CHECK(momentums.size() == (cycle_momentum ? group_count : 0),
                 "{}: 'optimizer_momentums' has {} values for {} parameter groups", reader.owner(), momentums.size(),
                 group_count);
  return momentums;
}

}  // namespace torchkit::detail
// ---- end torchkit/detail/lr_support.hpp ----

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <numbers>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace torchkit::lr {

/// A value for every parameter group, or a list with one value per group: Python's
/// "float or list" arguments (`max_lr`, `base_momentum`, `min_lr`, ...).
///
///     torchkit::lr::GroupValues same = 0.1;            // every group
///     torchkit::lr::GroupValues each = {0.1, 0.01};    // group 0, group 1
class GroupValues {
 public:
  /// Not given (for required arguments).
  GroupValues() = default;
  /// One value for every group.
  GroupValues(double value) : values_{value}, for_every_group_(true) {}  // NOLINT(google-explicit-constructor)
  /// One value per group.
  GroupValues(std::initializer_list<double> values) : values_(values) {}
  /// One value per group.
  GroupValues(std::vector<double> values) : values_(std::move(values)) {}  // NOLINT(google-explicit-constructor)

  /// Whether no value was given.
  [[nodiscard]] bool empty() const noexcept { return values_.empty(); }
  /// Whether one value was given for every group (rather than a list).
  [[nodiscard]] bool for_every_group() const noexcept { return for_every_group_; }
  /// The values as given.
  [[nodiscard]] const std::vector<double>& values() const noexcept { return values_; }

  /// One value per group (Python's `_format_param`). Throws Error when a list has the wrong
  /// length: `expected 2 values for max_lr, got 3`.
  [[nodiscard]] std::vector<double> for_groups(std::size_t group_count, std::string_view name,
                                               std::string_view owner) const {
    TORCHKIT_CHECK(!values_.empty(), "{}: {} is required", owner, name);
    if (for_every_group_) {
      return std::vector<double>(group_count, values_.front());
    }
    TORCHKIT_CHECK(values_.size() == group_count, "{}: expected {} values for {}, got {}", owner, group_count, name,
                   values_.size());
    return values_;
  }

  [[nodiscard]] std::string to_string() const {
    if (values_.empty()) {
      return "None";
    }
    return for_every_group_ ? fmt::format("{}", values_.front()) : detail::list_to_string(values_);
  }

 private:
  std::vector<double> values_;
  bool for_every_group_ = false;
};

/// A function of the epoch (LambdaLR: the factor applied to the initial lr; MultiplicativeLR:
/// the factor applied to the current lr).
using LrLambda = std::function<double(int64_t epoch)>;

/// The common base of every epoch-driven scheduler (Python's `_LRScheduler`), so that
/// SequentialLR and ChainedScheduler can hold any of them.
///
/// A custom scheduler derives from it, implements `get_lr()` (and `arguments()`), and calls
/// `record_initial_lrs()` and then `initial_step()` at the end of its constructor, as
/// Python's `_LRScheduler.__init__` does.
class Scheduler {
 public:
  virtual ~Scheduler() = default;

  /// Advances one epoch (or batch) and sets the new lr of every parameter group, as Python's
  /// `scheduler.step()`. Call it after `optimizer.step()`.
  virtual void step() {
    check_group_count();
    advance(std::nullopt);
  }

  /// The lr of every parameter group after the last step (Python's `get_last_lr()`).
  [[nodiscard]] std::vector<double> last_lr() const { return last_lr_; }
  /// The index of the last epoch: 0 after construction, +1 per step (Python's `last_epoch`).
  [[nodiscard]] int64_t last_epoch() const noexcept { return last_epoch_; }
  /// The initial lr of every parameter group (Python's `base_lrs`).
  [[nodiscard]] const std::vector<double>& base_lrs() const noexcept { return base_lrs_; }
  /// The optimizer whose learning rates this scheduler sets.
  [[nodiscard]] torch::optim::Optimizer& optimizer() const noexcept { return *optimizer_; }
  /// The class name, as in Python: `"StepLR"`.
  [[nodiscard]] const std::string& type_name() const noexcept { return type_name_; }

  /// Writes the scheduler's state (Python's `state_dict()`: hyperparameters, epoch, base and
  /// last lrs, and what Python keeps in the parameter groups) under the key `"lr_scheduler"`,
  /// so it can sit beside the optimizer's state in the same archive. It includes every group's
  /// current lr (and the momentum OneCycleLR/CyclicLR cycle), which LibTorch's
  /// `optimizer.save()`/`load()` do not restore. Lambdas are not saved.
  ///
  ///     torch::serialize::OutputArchive archive;
  ///     optimizer.save(archive);
  ///     scheduler.save(archive);
  ///     archive.save_to("checkpoint.pt");
  void save(torch::serialize::OutputArchive& archive) const {
    torch::serialize::OutputArchive state(archive.compilation_unit());
    detail::ArchiveWriter writer(state);
    save_to(writer);
    archive.write("lr_scheduler", state);
  }

  /// Restores the state written by `save()` (Python's `load_state_dict()`), and the lr (and
  /// cycled momentum) of every parameter group. Construct the optimizer and the scheduler as
  /// at the start of the run, then load both; the schedule continues exactly where the saved
  /// run stopped. Throws Error (and changes nothing) when the
  /// archive holds another kind of scheduler or a different number of parameter groups.
  ///
  ///     torch::serialize::InputArchive archive;
  ///     archive.load_from("checkpoint.pt");
  ///     optimizer.load(archive);
  ///     scheduler.load(archive);
  void load(torch::serialize::InputArchive& archive) {
    detail::ArchiveReader outer(archive, type_name_ + "::load");
    torch::serialize::InputArchive state = outer.read_archive("lr_scheduler");
    detail::ArchiveReader reader(state, type_name_ + "::load");
    load_from(reader, /*apply=*/false);  // validates everything first
    load_from(reader, /*apply=*/true);
  }

  /// `StepLR(step_size=10, gamma=0.1) last_epoch=3 last_lr=[0.001, 0.0001]`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("{}({}) last_epoch={} last_lr={}", type_name_, arguments(), last_epoch_,
                       detail::list_to_string(last_lr_));
  }

  friend std::ostream& operator<<(std::ostream& stream, const Scheduler& scheduler) {
    return stream << scheduler.to_string();
  }

 protected:
  /// Attaches to `optimizer`; throws Error when it has no parameter groups or its options
  /// have no learning rate. Changes nothing.
  Scheduler(torch::optim::Optimizer& optimizer, std::string type_name)
      : optimizer_(&optimizer), type_name_(std::move(type_name)) {
    TORCHKIT_CHECK(!optimizer.param_groups().empty(),
                   "{}: the optimizer has no parameter groups; give it parameters before creating a scheduler",
                   type_name_);
    for (std::size_t index = 0; index < optimizer.param_groups().size(); ++index) {
      (void)detail::group_lr(optimizer, index);
    }
  }
  Scheduler(const Scheduler&) = default;
  Scheduler(Scheduler&&) noexcept = default;
  Scheduler& operator=(const Scheduler&) = default;
  Scheduler& operator=(Scheduler&&) noexcept = default;

  /// The new lr of every group at `last_epoch_` (Python's chainable `get_lr()`).
  [[nodiscard]] virtual std::vector<double> get_lr() const = 0;
  /// The lr of every group at `last_epoch_` from the closed form, where Python has one
  /// (`_get_closed_form_lr`, used by SequentialLR at a milestone).
  [[nodiscard]] virtual std::optional<std::vector<double>> closed_form_lr() const { return std::nullopt; }
  /// The new momentum (or beta1) of every group, for schedulers that cycle it; else empty.
  [[nodiscard]] virtual std::vector<double> get_momentum() const { return {}; }
  /// The arguments for to_string(): `step_size=10, gamma=0.1`.
  [[nodiscard]] virtual std::string arguments() const = 0;
  /// Python's `scheduler.step(epoch)` (the deprecated form SequentialLR uses at a milestone):
  /// jumps to `epoch`, with the closed form where there is one.
  virtual void step_to(int64_t epoch) {
    check_group_count();
    advance(epoch);
  }
  /// Throws the Error the next `step()` would throw, changing nothing (OneCycleLR past its
  /// total steps); lets composites refuse a step before any of their schedulers moves.
  virtual void check_next_step() const {}
  /// Whether this is a SequentialLR or ChainedScheduler (which cannot follow a milestone).
  [[nodiscard]] virtual bool is_composite() const noexcept { return false; }
  /// Writes what the subclass adds to the state.
  virtual void save_state(detail::ArchiveWriter& /*writer*/) const {}
  /// Reads what the subclass adds; with `apply` false it only validates (and must throw
  /// Error for anything it would not accept), with `apply` true it commits.
  virtual void load_state(detail::ArchiveReader& /*reader*/, bool /*apply*/) {}

  /// Python's `param_group.setdefault('initial_lr', param_group['lr'])` for every group, then
  /// `base_lrs = [group['initial_lr'] ...]`. With `overwrite`, sets them instead (OneCycleLR).
  void record_initial_lrs(const std::vector<double>* overwrite = nullptr) {
    initial_lrs_ = detail::shared_initial_lrs(*optimizer_);
    auto& values = initial_lrs_->values;
    const std::size_t group_count = optimizer_->param_groups().size();
    for (std::size_t index = values.size(); index < group_count; ++index) {
      values.push_back(detail::group_lr(*optimizer_, index));
    }
    if (overwrite != nullptr) {
      std::copy(overwrite->begin(), overwrite->end(), values.begin());
    }
    base_lrs_.assign(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(group_count));
  }

  /// Python's `_initial_step()`: resets the step count and takes the first step (to epoch 0).
  void initial_step() {
    step_count_ = 0;
    step();
  }

  /// Throws Error when parameter groups were added to the optimizer since construction.
  void check_group_count() const {
    TORCHKIT_CHECK(optimizer_->param_groups().size() == base_lrs_.size(),
                   "{}: the optimizer has {} parameter groups, but had {} when the scheduler was created",
                   type_name_, optimizer_->param_groups().size(), base_lrs_.size());
  }

  /// The current lr of every group (Python's `[group['lr'] for group in param_groups]`).
  [[nodiscard]] std::vector<double> group_lrs() const {
    std::vector<double> lrs(optimizer_->param_groups().size());
    for (std::size_t index = 0; index < lrs.size(); ++index) {
      lrs[index] = detail::group_lr(*optimizer_, index);
    }
    return lrs;
  }

  /// The current momentum (or beta1) of every group; the optimizer must have one.
  [[nodiscard]] std::vector<double> group_momentums() const {
    std::vector<double> momentums(optimizer_->param_groups().size());
    for (std::size_t index = 0; index < momentums.size(); ++index) {
      momentums[index] = detail::group_momentum(*optimizer_, index);
    }
    return momentums;
  }

  /// Sets the lr (and momentum, when given) of every group and records `last_lr_`.
  void apply(const std::vector<double>& lrs, const std::vector<double>& momentums = {}) {
    for (std::size_t index = 0; index < lrs.size(); ++index) {
      detail::set_group_lr(*optimizer_, index, lrs[index]);
    }
    for (std::size_t index = 0; index < momentums.size(); ++index) {
      detail::set_group_momentum(*optimizer_, index, momentums[index]);
    }
    last_lr_ = group_lrs();
  }

  /// Python's `_LRScheduler.step(epoch)`: counts the step, moves `last_epoch_` (by one, or to
  /// `epoch`), computes and applies the new values. Nothing changes when computing throws.
  void advance(std::optional<int64_t> epoch) {
    const int64_t previous_epoch = last_epoch_;
    const int64_t previous_count = step_count_;
    ++step_count_;
    last_epoch_ = epoch ? *epoch : last_epoch_ + 1;
    std::vector<double> lrs;
    std::vector<double> momentums;
    try {
      std::optional<std::vector<double>> closed_form;
      if (epoch) {
        closed_form = closed_form_lr();
      }
      lrs = closed_form ? std::move(*closed_form) : get_lr();
      momentums = get_momentum();
    } catch (...) {
      last_epoch_ = previous_epoch;
      step_count_ = previous_count;
      throw;
    }
    apply(lrs, momentums);
  }

  torch::optim::Optimizer* optimizer_;
  std::string type_name_;
  std::shared_ptr<detail::InitialLrs> initial_lrs_;
  std::vector<double> base_lrs_;
  int64_t last_epoch_ = -1;
  int64_t step_count_ = 0;
  std::vector<double> last_lr_;

 private:
  friend class SequentialLR;
  friend class ChainedScheduler;

  void save_to(detail::ArchiveWriter& writer) const {
    writer.write_string("type", type_name_);
    writer.write_int("last_epoch", last_epoch_);
    writer.write_int("step_count", step_count_);
    writer.write_doubles("base_lrs", base_lrs_);
    writer.write_doubles("last_lr", last_lr_);
    writer.write_doubles("initial_lrs", initial_lrs_ ? initial_lrs_->values : base_lrs_);
    writer.write_doubles("optimizer_lrs", group_lrs());
    save_state(writer);
  }

  void load_from(detail::ArchiveReader& reader, bool apply) {
    const std::string type = reader.read_string("type");
    TORCHKIT_CHECK(type == type_name_, "{}: the archive holds the state of a {}, not of a {}", reader.owner(), type,
                   type_name_);
    const int64_t last_epoch = reader.read_int("last_epoch");
    const int64_t step_count = reader.read_int("step_count");
    constexpr int64_t epoch_limit = detail::max_count;  // exact as doubles; no run goes beyond
    TORCHKIT_CHECK(last_epoch >= -1 && last_epoch < epoch_limit,
                   "{}: last_epoch in the archive is {}; expected -1 <= last_epoch < 2^53", reader.owner(), last_epoch);
    TORCHKIT_CHECK(step_count >= 0 && step_count < epoch_limit,
                   "{}: step_count in the archive is {}; expected 0 <= step_count < 2^53", reader.owner(), step_count);
    auto base_lrs = reader.read_doubles("base_lrs");
    auto last_lr = reader.read_doubles("last_lr");
    auto initial_lrs = reader.read_doubles("initial_lrs");
    const auto optimizer_lrs = reader.read_doubles("optimizer_lrs");
    const std::size_t group_count = optimizer_->param_groups().size();
    TORCHKIT_CHECK(base_lrs.size() == group_count && last_lr.size() == group_count &&
                       initial_lrs.size() >= group_count && optimizer_lrs.size() == group_count,
                   "{}: the archive was saved for {} parameter groups, the optimizer has {}", reader.owner(),
                   base_lrs.size(), group_count);
    load_state(reader, apply);
    if (apply) {
      last_epoch_ = last_epoch;
      step_count_ = step_count;
      base_lrs_ = std::move(base_lrs);
      last_lr_ = std::move(last_lr);
      if (!initial_lrs_) {
        initial_lrs_ = detail::shared_initial_lrs(*optimizer_);
      }
      initial_lrs_->values = std::move(initial_lrs);
      for (std::size_t index = 0; index < group_count; ++index) {
        detail::set_group_lr(*optimizer_, index, optimizer_lrs[index]);
      }
    }
  }
};


// ---------------------------------------------------------------------------------------------
// StepLR
// ---------------------------------------------------------------------------------------------

/// StepLR's arguments (Python's names and defaults; `step_size` is required).
struct StepLROptions {
  /// Period of learning rate decay, in epochs (> 0).
  std::optional<int64_t> step_size{};
  /// Multiplicative factor of learning rate decay (>= 0).
  double gamma = 0.1;
};

/// Decays each group's lr by `gamma` every `step_size` epochs
/// (`torch.optim.lr_scheduler.StepLR`). Throws Error for `step_size <= 0` or `gamma < 0`.
///
///     torchkit::lr::StepLR scheduler(optimizer, 30, 0.1);  // 0.05 → 0.005 at epoch 30 → ...
class StepLR final : public Scheduler {
 public:
  StepLR(torch::optim::Optimizer& optimizer, int64_t step_size, double gamma = 0.1)
      : StepLR(optimizer, StepLROptions{.step_size = step_size, .gamma = gamma}) {}
  StepLR(torch::optim::Optimizer& optimizer, const StepLROptions& options)
      : Scheduler(optimizer, "StepLR"), options_(options) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const StepLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const StepLROptions& options) {
    TORCHKIT_CHECK(options.step_size.has_value(), "StepLR: step_size is required");
    detail::check_positive("StepLR", "step_size", *options.step_size);
    detail::check_non_negative("StepLR", "gamma", options.gamma);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    if (last_epoch_ == 0 || detail::python_mod(last_epoch_, *options_.step_size) != 0) {
      return lrs;
    }
    for (double& lr : lrs) {
      lr = lr * options_.gamma;
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    std::vector<double> lrs;
    const auto exponent = static_cast<double>(detail::python_floor_div(last_epoch_, *options_.step_size));
    for (const double base_lr : base_lrs_) {
      lrs.push_back(base_lr * std::pow(options_.gamma, exponent));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("step_size={}, gamma={}", *options_.step_size, options_.gamma);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_int("step_size", *options_.step_size);
    writer.write_double("gamma", options_.gamma);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    StepLROptions options{.step_size = reader.read_int("step_size"), .gamma = reader.read_double("gamma")};
    validate(options);
    if (apply) {
      options_ = options;
    }
  }

  StepLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// MultiStepLR
// ---------------------------------------------------------------------------------------------

/// MultiStepLR's arguments.
struct MultiStepLROptions {
  /// Epochs at which to decay: >= 0 and increasing (a repeated milestone decays twice, as in
  /// Python, whose `Counter` counts it).
  std::vector<int64_t> milestones{};
  /// Multiplicative factor of learning rate decay (>= 0).
  double gamma = 0.1;
};

/// Decays each group's lr by `gamma` at each milestone epoch
/// (`torch.optim.lr_scheduler.MultiStepLR`). Throws Error for negative or unsorted milestones
/// or `gamma < 0`.
///
///     torchkit::lr::MultiStepLR scheduler(optimizer, {30, 80}, 0.1);
class MultiStepLR final : public Scheduler {
 public:
  MultiStepLR(torch::optim::Optimizer& optimizer, std::vector<int64_t> milestones, double gamma = 0.1)
      : MultiStepLR(optimizer, MultiStepLROptions{.milestones = std::move(milestones), .gamma = gamma}) {}
  MultiStepLR(torch::optim::Optimizer& optimizer, MultiStepLROptions options)
      : Scheduler(optimizer, "MultiStepLR"), options_(std::move(options)) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const MultiStepLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const MultiStepLROptions& options) {
    detail::check_milestones("MultiStepLR", options.milestones);
    detail::check_non_negative("MultiStepLR", "gamma", options.gamma);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    const auto count = std::count(options_.milestones.begin(), options_.milestones.end(), last_epoch_);
    if (count == 0) {
      return lrs;
    }
    for (double& lr : lrs) {
      lr = lr * std::pow(options_.gamma, static_cast<double>(count));
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    std::vector<double> lrs;
    const auto exponent = static_cast<double>(detail::bisect_right(options_.milestones, last_epoch_));
    for (const double base_lr : base_lrs_) {
      lrs.push_back(base_lr * std::pow(options_.gamma, exponent));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("milestones={}, gamma={}", detail::list_to_string(options_.milestones), options_.gamma);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_ints("milestones", options_.milestones);
    writer.write_double("gamma", options_.gamma);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    MultiStepLROptions options{.milestones = reader.read_ints("milestones"), .gamma = reader.read_double("gamma")};
    validate(options);
    if (apply) {
      options_ = std::move(options);
    }
  }

  MultiStepLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// ConstantLR
// ---------------------------------------------------------------------------------------------

/// ConstantLR's arguments.
struct ConstantLROptions {
  /// The factor applied until `total_iters`, in (0, 1].
  double factor = 1.0 / 3;
  /// The number of epochs the factor applies (> 0).
  int64_t total_iters = 5;
};

/// Multiplies each group's lr by `factor` until epoch `total_iters`
/// (`torch.optim.lr_scheduler.ConstantLR`). Throws Error for a factor outside (0, 1] (Python
/// accepts 0 but then divides by it) or `total_iters <= 0`.
///
///     torchkit::lr::ConstantLR scheduler(optimizer, {.factor = 0.5, .total_iters = 4});
class ConstantLR final : public Scheduler {
 public:
  explicit ConstantLR(torch::optim::Optimizer& optimizer, double factor = 1.0 / 3, int64_t total_iters = 5)
      : ConstantLR(optimizer, ConstantLROptions{.factor = factor, .total_iters = total_iters}) {}
  ConstantLR(torch::optim::Optimizer& optimizer, const ConstantLROptions& options)
      : Scheduler(optimizer, "ConstantLR"), options_(options) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const ConstantLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const ConstantLROptions& options) {
    TORCHKIT_CHECK(options.factor > 0 && options.factor <= 1.0,
                   "ConstantLR: Constant multiplicative factor expected to be between 0 and 1 (0 excluded), got "
                   "factor={}",
                   options.factor);
    detail::check_positive("ConstantLR", "total_iters", options.total_iters);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    if (last_epoch_ == 0) {
      for (double& lr : lrs) {
        lr = lr * options_.factor;
      }
      return lrs;
    }
    if (last_epoch_ != options_.total_iters) {
      return lrs;
    }
    for (double& lr : lrs) {
      lr = lr * (1.0 / options_.factor);
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    std::vector<double> lrs;
    const double reached = last_epoch_ >= options_.total_iters ? 1.0 : 0.0;
    for (const double base_lr : base_lrs_) {
      lrs.push_back(base_lr * (options_.factor + reached * (1 - options_.factor)));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("factor={}, total_iters={}", options_.factor, options_.total_iters);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_double("factor", options_.factor);
    writer.write_int("total_iters", options_.total_iters);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    ConstantLROptions options{.factor = reader.read_double("factor"), .total_iters = reader.read_int("total_iters")};
    validate(options);
    if (apply) {
      options_ = options;
    }
  }

  ConstantLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// LinearLR
// ---------------------------------------------------------------------------------------------

/// LinearLR's arguments.
struct LinearLROptions {
  /// The factor at epoch 0, in (0, 1].
  double start_factor = 1.0 / 3;
  /// The factor from epoch `total_iters` on, in [0, 1].
  double end_factor = 1.0;
  /// The number of epochs over which the factor changes linearly (> 0).
  int64_t total_iters = 5;
};

/// Changes each group's lr linearly from `start_factor` to `end_factor` times its initial lr
/// over `total_iters` epochs (`torch.optim.lr_scheduler.LinearLR`), the usual warm-up.
/// Throws Error for factors outside their range (a start factor of 0 would divide by zero) or
/// `total_iters <= 0`.
///
///     torchkit::lr::LinearLR warmup(optimizer, {.start_factor = 0.1, .total_iters = 5});
class LinearLR final : public Scheduler {
 public:
  explicit LinearLR(torch::optim::Optimizer& optimizer, double start_factor = 1.0 / 3, double end_factor = 1.0,
                    int64_t total_iters = 5)
      : LinearLR(optimizer, LinearLROptions{.start_factor = start_factor, .end_factor = end_factor,
                                            .total_iters = total_iters}) {}
  LinearLR(torch::optim::Optimizer& optimizer, const LinearLROptions& options)
      : Scheduler(optimizer, "LinearLR"), options_(options) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const LinearLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const LinearLROptions& options) {
    TORCHKIT_CHECK(options.start_factor > 0 && options.start_factor <= 1.0,
                   "LinearLR: Starting multiplicative factor expected to be between 0 and 1 (0 excluded: the lr is "
                   "divided by it), got start_factor={}",
                   options.start_factor);
    TORCHKIT_CHECK(options.end_factor >= 0 && options.end_factor <= 1.0,
                   "LinearLR: Ending multiplicative factor expected to be between 0 and 1, got end_factor={}",
                   options.end_factor);
    detail::check_positive("LinearLR", "total_iters", options.total_iters);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    const auto& [start_factor, end_factor, total_iters] = options_;
    if (last_epoch_ == 0) {
      for (double& lr : lrs) {
        lr = lr * start_factor;
      }
      return lrs;
    }
    if (last_epoch_ > total_iters) {
      return lrs;
    }
    const double factor =
        1. + (end_factor - start_factor) / (static_cast<double>(total_iters) * start_factor +
                                            static_cast<double>(last_epoch_ - 1) * (end_factor - start_factor));
    for (double& lr : lrs) {
      lr = lr * factor;
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    std::vector<double> lrs;
    const auto& [start_factor, end_factor, total_iters] = options_;
    const auto reached = static_cast<double>(std::min(total_iters, last_epoch_));
    for (const double base_lr : base_lrs_) {
      lrs.push_back(base_lr *
                    (start_factor + (end_factor - start_factor) * reached / static_cast<double>(total_iters)));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("start_factor={}, end_factor={}, total_iters={}", options_.start_factor, options_.end_factor,
                       options_.total_iters);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_double("start_factor", options_.start_factor);
    writer.write_double("end_factor", options_.end_factor);
    writer.write_int("total_iters", options_.total_iters);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    LinearLROptions options{.start_factor = reader.read_double("start_factor"),
                            .end_factor = reader.read_double("end_factor"),
                            .total_iters = reader.read_int("total_iters")};
    validate(options);
    if (apply) {
      options_ = options;
    }
  }

  LinearLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// ExponentialLR
// ---------------------------------------------------------------------------------------------

/// ExponentialLR's arguments (`gamma` is required).
struct ExponentialLROptions {
  /// Multiplicative factor of learning rate decay, applied every epoch (>= 0).
  std::optional<double> gamma{};
};

/// Multiplies each group's lr by `gamma` every epoch (`torch.optim.lr_scheduler.ExponentialLR`).
///
///     torchkit::lr::ExponentialLR scheduler(optimizer, 0.95);
class ExponentialLR final : public Scheduler {
 public:
  ExponentialLR(torch::optim::Optimizer& optimizer, double gamma)
      : ExponentialLR(optimizer, ExponentialLROptions{.gamma = gamma}) {}
  ExponentialLR(torch::optim::Optimizer& optimizer, const ExponentialLROptions& options)
      : Scheduler(optimizer, "ExponentialLR"), options_(options) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const ExponentialLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const ExponentialLROptions& options) {
    TORCHKIT_CHECK(options.gamma.has_value(), "ExponentialLR: gamma is required");
    detail::check_non_negative("ExponentialLR", "gamma", *options.gamma);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    if (last_epoch_ == 0) {
      return lrs;
    }
    for (double& lr : lrs) {
      lr = lr * *options_.gamma;
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    std::vector<double> lrs;
    for (const double base_lr : base_lrs_) {
      lrs.push_back(base_lr * std::pow(*options_.gamma, static_cast<double>(last_epoch_)));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override { return fmt::format("gamma={}", *options_.gamma); }
  void save_state(detail::ArchiveWriter& writer) const override { writer.write_double("gamma", *options_.gamma); }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    ExponentialLROptions options{.gamma = reader.read_double("gamma")};
    validate(options);
    if (apply) {
      options_ = options;
    }
  }

  ExponentialLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// PolynomialLR
// ---------------------------------------------------------------------------------------------

/// PolynomialLR's arguments.
struct PolynomialLROptions {
  /// The number of epochs over which the lr decays to 0 (> 0).
  int64_t total_iters = 5;
  /// The power of the polynomial (>= 0).
  double power = 1.0;
};

/// Decays each group's lr as `(1 - epoch / total_iters) ** power` times its initial lr
/// (`torch.optim.lr_scheduler.PolynomialLR`).
///
///     torchkit::lr::PolynomialLR scheduler(optimizer, {.total_iters = 4, .power = 1.0});
class PolynomialLR final : public Scheduler {
 public:
  explicit PolynomialLR(torch::optim::Optimizer& optimizer, int64_t total_iters = 5, double power = 1.0)
      : PolynomialLR(optimizer, PolynomialLROptions{.total_iters = total_iters, .power = power}) {}
  PolynomialLR(torch::optim::Optimizer& optimizer, const PolynomialLROptions& options)
      : Scheduler(optimizer, "PolynomialLR"), options_(options) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const PolynomialLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const PolynomialLROptions& options) {
    detail::check_positive("PolynomialLR", "total_iters", options.total_iters);
    detail::check_non_negative("PolynomialLR", "power", options.power);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    if (last_epoch_ == 0 || last_epoch_ > options_.total_iters) {
      return lrs;
    }
    const auto total_iters = static_cast<double>(options_.total_iters);
    const double decay_factor =
        std::pow((1.0 - static_cast<double>(last_epoch_) / total_iters) /
                     (1.0 - static_cast<double>(last_epoch_ - 1) / total_iters),
                 options_.power);
    for (double& lr : lrs) {
      lr = lr * decay_factor;
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    std::vector<double> lrs;
    const auto reached = static_cast<double>(std::min(options_.total_iters, last_epoch_));
    for (const double base_lr : base_lrs_) {
      lrs.push_back(base_lr *
                    std::pow(1.0 - reached / static_cast<double>(options_.total_iters), options_.power));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("total_iters={}, power={}", options_.total_iters, options_.power);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_int("total_iters", options_.total_iters);
    writer.write_double("power", options_.power);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    PolynomialLROptions options{.total_iters = reader.read_int("total_iters"), .power = reader.read_double("power")};
    validate(options);
    if (apply) {
      options_ = options;
    }
  }

  PolynomialLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// CosineAnnealingLR
// ---------------------------------------------------------------------------------------------

/// CosineAnnealingLR's arguments (`T_max` is required; the names are Python's).
struct CosineAnnealingLROptions {
  /// Maximum number of iterations: the half period of the cosine (> 0).
  std::optional<int64_t> T_max{};  // NOLINT(readability-identifier-naming): Python's name
  /// Minimum learning rate (>= 0).
  double eta_min = 0.0;
};

/// Anneals each group's lr from its initial lr to `eta_min` along a cosine over `T_max` epochs
/// (and back up over the next `T_max`) with Python's recursive formula
/// (`torch.optim.lr_scheduler.CosineAnnealingLR`).
///
///     torchkit::lr::CosineAnnealingLR scheduler(optimizer, {.T_max = 100, .eta_min = 1e-5});
class CosineAnnealingLR final : public Scheduler {
 public:
  CosineAnnealingLR(torch::optim::Optimizer& optimizer, int64_t T_max, double eta_min = 0.0)  // NOLINT
      : CosineAnnealingLR(optimizer, CosineAnnealingLROptions{.T_max = T_max, .eta_min = eta_min}) {}
  CosineAnnealingLR(torch::optim::Optimizer& optimizer, const CosineAnnealingLROptions& options)
      : Scheduler(optimizer, "CosineAnnealingLR"), options_(options) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const CosineAnnealingLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const CosineAnnealingLROptions& options) {
    TORCHKIT_CHECK(options.T_max.has_value(), "CosineAnnealingLR: T_max is required");
    detail::check_positive("CosineAnnealingLR", "T_max", *options.T_max);
    detail::check_non_negative("CosineAnnealingLR", "eta_min", options.eta_min);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    constexpr double pi = std::numbers::pi;
    const double eta_min = options_.eta_min;
    const int64_t T_max = *options_.T_max;  // NOLINT(readability-identifier-naming)
    const auto t_max = static_cast<double>(T_max);
    const auto epoch = static_cast<double>(last_epoch_);
    auto lrs = group_lrs();
    if (last_epoch_ == 0) {
      return lrs;
    }
    if (step_count_ == 1 && last_epoch_ > 0) {
      for (std::size_t index = 0; index < lrs.size(); ++index) {
        lrs[index] = eta_min + (base_lrs_[index] - eta_min) * (1 + std::cos(epoch * pi / t_max)) / 2;
      }
      return lrs;
    }
    if (detail::python_mod(last_epoch_ - 1 - T_max, 2 * T_max) == 0) {
      for (std::size_t index = 0; index < lrs.size(); ++index) {
        lrs[index] = lrs[index] + (base_lrs_[index] - eta_min) * (1 - std::cos(pi / t_max)) / 2;
      }
      return lrs;
    }
    for (double& lr : lrs) {
      lr = (1 + std::cos(pi * epoch / t_max)) / (1 + std::cos(pi * (epoch - 1) / t_max)) * (lr - eta_min) + eta_min;
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    constexpr double pi = std::numbers::pi;
    std::vector<double> lrs;
    const double eta_min = options_.eta_min;
    for (const double base_lr : base_lrs_) {
      lrs.push_back(eta_min + (base_lr - eta_min) *
                                  (1 + std::cos(pi * static_cast<double>(last_epoch_) /
                                                static_cast<double>(*options_.T_max))) /
                                  2);
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("T_max={}, eta_min={}", *options_.T_max, options_.eta_min);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_int("T_max", *options_.T_max);
    writer.write_double("eta_min", options_.eta_min);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    CosineAnnealingLROptions options{.T_max = reader.read_int("T_max"), .eta_min = reader.read_double("eta_min")};
    validate(options);
    if (apply) {
      options_ = options;
    }
  }

  CosineAnnealingLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// CosineAnnealingWarmRestarts
// ---------------------------------------------------------------------------------------------

/// CosineAnnealingWarmRestarts's arguments (`T_0` is required; the names are Python's).
struct CosineAnnealingWarmRestartsOptions {
  /// Number of iterations until the first restart (> 0).
  std::optional<int64_t> T_0{};  // NOLINT(readability-identifier-naming): Python's name
  /// The factor by which the period grows after each restart (>= 1).
  int64_t T_mult = 1;  // NOLINT(readability-identifier-naming): Python's name
  /// Minimum learning rate (>= 0).
  double eta_min = 0.0;
};

/// SGDR: cosine annealing from each group's initial lr to `eta_min`, restarting every `T_i`
/// epochs, `T_i` growing by `T_mult` after each restart
/// (`torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`). Besides `step()`, `step(epoch)`
/// accepts a fractional epoch, as in Python (`scheduler.step(epoch + i / iters)`).
///
///     torchkit::lr::CosineAnnealingWarmRestarts scheduler(optimizer, {.T_0 = 10, .T_mult = 2});
class CosineAnnealingWarmRestarts final : public Scheduler {
 public:
  CosineAnnealingWarmRestarts(torch::optim::Optimizer& optimizer, int64_t T_0, int64_t T_mult = 1,  // NOLINT
                              double eta_min = 0.0)
      : CosineAnnealingWarmRestarts(
            optimizer, CosineAnnealingWarmRestartsOptions{.T_0 = T_0, .T_mult = T_mult, .eta_min = eta_min}) {}
  CosineAnnealingWarmRestarts(torch::optim::Optimizer& optimizer, const CosineAnnealingWarmRestartsOptions& options)
      : Scheduler(optimizer, "CosineAnnealingWarmRestarts"), options_(options) {
    validate(options_);
    T_i_ = *options_.T_0;
    T_cur_ = static_cast<double>(last_epoch_);
    record_initial_lrs();
    initial_step();
  }

  /// One epoch (or batch) further; at the end of a period, restarts.
  void step() override {
    check_group_count();
    if (last_epoch_ < 0) {  // Python: `if epoch is None and self.last_epoch < 0: epoch = 0`
      step(0.0);
      return;
    }
    double T_cur = T_cur_ + 1;  // NOLINT(readability-identifier-naming)
    int64_t T_i = T_i_;         // NOLINT(readability-identifier-naming)
    if (T_cur >= static_cast<double>(T_i)) {
      T_cur = T_cur - static_cast<double>(T_i);
      // Python's integers never overflow; int64 does after about 63 restarts with T_mult = 2.
      TORCHKIT_CHECK(!__builtin_mul_overflow(T_i, options_.T_mult, &T_i),
                     "CosineAnnealingWarmRestarts: the next period T_i * T_mult = {} * {} does not fit in int64",
                     T_i_, options_.T_mult);
    }
    commit(last_epoch_ + 1, T_cur, T_i);
  }

  /// Jumps to `epoch` (fractional epochs allowed), as Python's `scheduler.step(epoch)`.
  /// Throws Error for a negative or non-finite epoch: `Expected non-negative epoch, but got -1`.
  void step(double epoch) {
    check_group_count();
    TORCHKIT_CHECK(std::isfinite(epoch) && epoch >= 0,
                   "CosineAnnealingWarmRestarts: Expected non-negative epoch, but got {}", epoch);
    TORCHKIT_CHECK(epoch < static_cast<double>(detail::max_count),
                   "CosineAnnealingWarmRestarts: epoch {} is beyond 2^53, the largest epoch a scheduler accepts", epoch);
    const int64_t T_0 = *options_.T_0;       // NOLINT(readability-identifier-naming)
    const int64_t T_mult = options_.T_mult;  // NOLINT(readability-identifier-naming)
    double T_cur = 0;                        // NOLINT(readability-identifier-naming)
    int64_t T_i = T_i_;                      // NOLINT(readability-identifier-naming)
    if (epoch >= static_cast<double>(T_0)) {
      if (T_mult == 1) {
        T_cur = std::fmod(epoch, static_cast<double>(T_0));
      } else {
        const double periods = epoch / static_cast<double>(T_0) * static_cast<double>(T_mult - 1) + 1;
        const auto n = static_cast<int64_t>(std::log(periods) / std::log(static_cast<double>(T_mult)));
        int64_t power = 1;
        bool overflow = false;
        for (int64_t i = 0; i < n && !overflow; ++i) {
          overflow = __builtin_mul_overflow(power, T_mult, &power);
        }
        int64_t restarted = 0;  // T_0 * (power - 1): the epochs before the current period
        overflow = overflow || __builtin_mul_overflow(T_0, power - 1, &restarted) ||
                   __builtin_mul_overflow(T_0, power, &T_i);
        TORCHKIT_CHECK(!overflow, "CosineAnnealingWarmRestarts: the period at epoch {} (T_0={}, T_mult={}) does not fit "
                       "in int64", epoch, T_0, T_mult);
        T_cur = epoch - static_cast<double>(restarted) / static_cast<double>(T_mult - 1);
      }
    } else {
      T_i = T_0;
      T_cur = epoch;
    }
    commit(static_cast<int64_t>(std::floor(epoch)), T_cur, T_i);
  }

  /// Epochs since the last restart (Python's `T_cur`).
  [[nodiscard]] double T_cur() const noexcept { return T_cur_; }  // NOLINT(readability-identifier-naming)
  /// The current period (Python's `T_i`).
  [[nodiscard]] int64_t T_i() const noexcept { return T_i_; }  // NOLINT(readability-identifier-naming)
  [[nodiscard]] const CosineAnnealingWarmRestartsOptions& options() const noexcept { return options_; }

 private:
  static void validate(const CosineAnnealingWarmRestartsOptions& options) {
    TORCHKIT_CHECK(options.T_0.has_value(), "CosineAnnealingWarmRestarts: T_0 is required");
    TORCHKIT_CHECK(*options.T_0 > 0, "CosineAnnealingWarmRestarts: Expected positive integer T_0, but got {}",
                   *options.T_0);
    TORCHKIT_CHECK(options.T_mult >= 1, "CosineAnnealingWarmRestarts: Expected integer T_mult >= 1, but got {}",
                   options.T_mult);
    detail::check_non_negative("CosineAnnealingWarmRestarts", "eta_min", options.eta_min);
  }
  [[nodiscard]] std::vector<double> lrs_at(double T_cur, int64_t T_i) const {  // NOLINT
    std::vector<double> lrs;
    const double eta_min = options_.eta_min;
    for (const double base_lr : base_lrs_) {
      lrs.push_back(eta_min + (base_lr - eta_min) *
                                  (1 + std::cos(std::numbers::pi * T_cur / static_cast<double>(T_i))) / 2);
    }
    return lrs;
  }
  void commit(int64_t last_epoch, double T_cur, int64_t T_i) {  // NOLINT(readability-identifier-naming)
    const auto lrs = lrs_at(T_cur, T_i);
    last_epoch_ = last_epoch;
    T_cur_ = T_cur;
    T_i_ = T_i;
    apply(lrs);
  }
  [[nodiscard]] std::vector<double> get_lr() const override { return lrs_at(T_cur_, T_i_); }
  void step_to(int64_t epoch) override { step(static_cast<double>(epoch)); }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("T_0={}, T_mult={}, eta_min={}", *options_.T_0, options_.T_mult, options_.eta_min);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_int("T_0", *options_.T_0);
    writer.write_int("T_mult", options_.T_mult);
    writer.write_double("eta_min", options_.eta_min);
    writer.write_double("T_cur", T_cur_);
    writer.write_int("T_i", T_i_);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    CosineAnnealingWarmRestartsOptions options{
        .T_0 = reader.read_int("T_0"), .T_mult = reader.read_int("T_mult"), .eta_min = reader.read_double("eta_min")};
    validate(options);
    const double T_cur = reader.read_double("T_cur");  // NOLINT(readability-identifier-naming)
    const int64_t T_i = reader.read_int("T_i");        // NOLINT(readability-identifier-naming)
    TORCHKIT_CHECK(T_i > 0, "{}: T_i in the archive must be positive, got {}", reader.owner(), T_i);
    TORCHKIT_CHECK(std::isfinite(T_cur) && T_cur >= -1, "{}: T_cur in the archive must be finite and >= -1, got {}",
                   reader.owner(), T_cur);
    if (apply) {
      options_ = options;
      T_cur_ = T_cur;
      T_i_ = T_i;
    }
  }

  CosineAnnealingWarmRestartsOptions options_;
  double T_cur_ = -1;  // NOLINT(readability-identifier-naming)
  int64_t T_i_ = 1;    // NOLINT(readability-identifier-naming)
};

// ---------------------------------------------------------------------------------------------
// LambdaLR and MultiplicativeLR
// ---------------------------------------------------------------------------------------------


/// Sets each group's lr to its initial lr times `lr_lambda(epoch)`
/// (`torch.optim.lr_scheduler.LambdaLR`): one function for every group, or one per group.
///
///     torchkit::lr::LambdaLR scheduler(optimizer, [](int64_t epoch) { return std::pow(0.95, epoch); });
///     torchkit::lr::LambdaLR per_group(optimizer, {[](int64_t epoch) { return epoch / 30; },
///                                                  [](int64_t epoch) { return std::pow(0.95, epoch); }});
class LambdaLR final : public Scheduler {
 public:
  LambdaLR(torch::optim::Optimizer& optimizer, LrLambda lr_lambda)
      : LambdaLR(optimizer, std::vector<LrLambda>{std::move(lr_lambda)}, true) {}
  LambdaLR(torch::optim::Optimizer& optimizer, std::vector<LrLambda> lr_lambdas)
      : LambdaLR(optimizer, std::move(lr_lambdas), false) {}

 private:
  LambdaLR(torch::optim::Optimizer& optimizer, std::vector<LrLambda> lr_lambdas, bool one_for_all)
      : Scheduler(optimizer, "LambdaLR"),
        lr_lambdas_(detail::lambdas_for_groups(std::move(lr_lambdas), one_for_all, optimizer.param_groups().size(),
                                               "LambdaLR")) {
    record_initial_lrs();
    initial_step();
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    std::vector<double> lrs;
    for (std::size_t index = 0; index < base_lrs_.size(); ++index) {
      lrs.push_back(base_lrs_[index] * lr_lambdas_[index](last_epoch_));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override { return fmt::format("lr_lambdas={}", lr_lambdas_.size()); }

  std::vector<LrLambda> lr_lambdas_;
};

/// Multiplies each group's lr by `lr_lambda(epoch)` every epoch from epoch 1 on
/// (`torch.optim.lr_scheduler.MultiplicativeLR`).
///
///     torchkit::lr::MultiplicativeLR scheduler(optimizer, [](int64_t) { return 0.95; });
class MultiplicativeLR final : public Scheduler {
 public:
  MultiplicativeLR(torch::optim::Optimizer& optimizer, LrLambda lr_lambda)
      : MultiplicativeLR(optimizer, std::vector<LrLambda>{std::move(lr_lambda)}, true) {}
  MultiplicativeLR(torch::optim::Optimizer& optimizer, std::vector<LrLambda> lr_lambdas)
      : MultiplicativeLR(optimizer, std::move(lr_lambdas), false) {}

 private:
  MultiplicativeLR(torch::optim::Optimizer& optimizer, std::vector<LrLambda> lr_lambdas, bool one_for_all)
      : Scheduler(optimizer, "MultiplicativeLR"),
        lr_lambdas_(detail::lambdas_for_groups(std::move(lr_lambdas), one_for_all, optimizer.param_groups().size(),
                                               "MultiplicativeLR")) {
    record_initial_lrs();
    initial_step();
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    if (last_epoch_ > 0) {
      for (std::size_t index = 0; index < lrs.size(); ++index) {
        lrs[index] = lrs[index] * lr_lambdas_[index](last_epoch_);
      }
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override { return fmt::format("lr_lambdas={}", lr_lambdas_.size()); }

  std::vector<LrLambda> lr_lambdas_;
};

// ---------------------------------------------------------------------------------------------
// OneCycleLR
// ---------------------------------------------------------------------------------------------

/// OneCycleLR's arguments (Python's names and defaults). `max_lr` is required, and either
/// `total_steps` or both `epochs` and `steps_per_epoch`.
struct OneCycleLROptions {
  /// The peak lr: one value, or one per group.
  GroupValues max_lr{};
  /// The total number of steps in the cycle.
  std::optional<int64_t> total_steps{};
  /// With `steps_per_epoch`, gives `total_steps = epochs * steps_per_epoch` when `total_steps`
  /// is not set.
  std::optional<int64_t> epochs{};
  std::optional<int64_t> steps_per_epoch{};
  /// The fraction of the cycle spent increasing the lr, in [0, 1].
  double pct_start = 0.3;
  /// `"cos"` or `"linear"`.
  std::string anneal_strategy = "cos";
  /// Cycle the momentum (SGD, RMSprop) or beta1 (Adam, AdamW) inversely to the lr.
  bool cycle_momentum = true;
  /// The momentum at the lr's peak.
  GroupValues base_momentum = 0.85;
  /// The momentum at the start and end of the cycle.
  GroupValues max_momentum = 0.95;
  /// The initial lr is `max_lr / div_factor` (> 0).
  double div_factor = 25.;
  /// The final lr is `initial_lr / final_div_factor` (> 0).
  double final_div_factor = 1e4;
  /// Three phases (up, down to the initial lr, annihilation) instead of two, as in the paper.
  bool three_phase = false;
};

/// The 1cycle policy: the lr rises from `max_lr / div_factor` to `max_lr` and anneals down to
/// `initial_lr / final_div_factor`, the momentum cycling the other way
/// (`torch.optim.lr_scheduler.OneCycleLR`). Step it once per batch; stepping more than
/// `total_steps` times throws Error (`Tried to step 102 times. The specified number of total
/// steps is 100`) and leaves everything unchanged.
///
///     torchkit::lr::OneCycleLR scheduler(optimizer, {.max_lr = 0.01, .epochs = 10, .steps_per_epoch = 100});
class OneCycleLR final : public Scheduler {
 public:
  OneCycleLR(torch::optim::Optimizer& optimizer, GroupValues max_lr, int64_t total_steps)
      : OneCycleLR(optimizer, OneCycleLROptions{.max_lr = std::move(max_lr), .total_steps = total_steps}) {}
  OneCycleLR(torch::optim::Optimizer& optimizer, OneCycleLROptions options)
      : Scheduler(optimizer, "OneCycleLR"), options_(std::move(options)) {
    const std::size_t group_count = optimizer.param_groups().size();
    Config config = configure(options_, group_count, "OneCycleLR");
    if (config.cycle_momentum) {
      const auto kind = detail::momentum_kind(optimizer);
      TORCHKIT_CHECK(kind != detail::MomentumKind::none,
                     "OneCycleLR: optimizer must support momentum with `cycle_momentum` option enabled (SGD, "
                     "RMSprop, Adam or AdamW); pass cycle_momentum=false");
      config.use_beta1 = kind == detail::MomentumKind::beta1;
    }
    check_step(config, 0);  // Python fails in the initial step for some arguments: fail before any change
    // Everything is valid: from here on the optimizer changes.
    config_ = std::move(config);
    if (config_.cycle_momentum) {
      for (std::size_t index = 0; index < group_count; ++index) {
        detail::set_group_momentum(optimizer, index, config_.max_momentums[index]);
      }
    }
    record_initial_lrs(&config_.initial_lrs);
    initial_step();
  }

  /// The number of steps in the cycle.
  [[nodiscard]] int64_t total_steps() const noexcept { return config_.total_steps; }
  [[nodiscard]] const OneCycleLROptions& options() const noexcept { return options_; }

 private:
  struct Phase {
    double end_step;
    // Which per-group values the phase anneals between: 0 initial lr, 1 max lr, 2 min lr;
    // momentum: 0 max momentum, 1 base momentum.
    int start_lr;
    int end_lr;
    int start_momentum;
    int end_momentum;
  };
  struct Config {
    int64_t total_steps = 0;
    double pct_start = 0.3;
    bool three_phase = false;
    bool anneal_cos = true;
    bool cycle_momentum = true;
    bool use_beta1 = false;
    std::vector<double> initial_lrs, max_lrs, min_lrs, base_momentums, max_momentums;
    std::vector<Phase> phases;
  };

  static std::vector<Phase> phases_for(int64_t total_steps, double pct_start, bool three_phase) {
    const auto total = static_cast<double>(total_steps);
    if (three_phase) {
      return {Phase{pct_start * total - 1, 0, 1, 0, 1}, Phase{2 * pct_start * total - 2, 1, 0, 1, 0},
              Phase{total - 1, 0, 2, 0, 0}};
    }
    return {Phase{pct_start * total - 1, 0, 1, 0, 1}, Phase{total - 1, 1, 2, 1, 0}};
  }

  static Config configure(const OneCycleLROptions& options, std::size_t group_count, std::string_view owner) {
    Config config;
    if (options.total_steps) {
      TORCHKIT_CHECK(*options.total_steps > 0, "{}: Expected positive integer total_steps, but got {}", owner,
                     *options.total_steps);
      config.total_steps = *options.total_steps;
    } else {
      TORCHKIT_CHECK(options.epochs || options.steps_per_epoch,
                     "{}: You must define either total_steps OR (epochs AND steps_per_epoch)", owner);
      TORCHKIT_CHECK(options.epochs && *options.epochs > 0, "{}: Expected positive integer epochs, but got {}", owner,
                     options.epochs ? fmt::format("{}", *options.epochs) : std::string("None"));
      TORCHKIT_CHECK(options.steps_per_epoch && *options.steps_per_epoch > 0,
                     "{}: Expected positive integer steps_per_epoch, but got {}", owner,
                     options.steps_per_epoch ? fmt::format("{}", *options.steps_per_epoch) : std::string("None"));
      TORCHKIT_CHECK(*options.epochs <= std::numeric_limits<int64_t>::max() / *options.steps_per_epoch,
                     "{}: epochs * steps_per_epoch = {} * {} overflows", owner, *options.epochs,
                     *options.steps_per_epoch);
      config.total_steps = *options.epochs * *options.steps_per_epoch;
    }
    TORCHKIT_CHECK(options.pct_start >= 0 && options.pct_start <= 1,
                   "{}: Expected float between 0 and 1 pct_start, but got {}", owner, options.pct_start);
    TORCHKIT_CHECK(options.anneal_strategy == "cos" || options.anneal_strategy == "linear",
                   "{}: anneal_strategy must by one of 'cos' or 'linear', instead got {}", owner,
                   options.anneal_strategy);
    TORCHKIT_CHECK(std::isfinite(options.div_factor) && options.div_factor > 0,
                   "{}: div_factor must be a positive number, got {}", owner, options.div_factor);
    TORCHKIT_CHECK(std::isfinite(options.final_div_factor) && options.final_div_factor > 0,
                   "{}: final_div_factor must be a positive number, got {}", owner, options.final_div_factor);
    config.pct_start = options.pct_start;
    config.three_phase = options.three_phase;
    config.anneal_cos = options.anneal_strategy == "cos";
    config.phases = phases_for(config.total_steps, config.pct_start, config.three_phase);
    config.max_lrs = options.max_lr.for_groups(group_count, "max_lr", owner);
    detail::check_non_negative(owner, "max_lr", config.max_lrs);
    for (const double max_lr : config.max_lrs) {
      config.initial_lrs.push_back(max_lr / options.div_factor);
      config.min_lrs.push_back(config.initial_lrs.back() / options.final_div_factor);
    }
    config.cycle_momentum = options.cycle_momentum;
    if (config.cycle_momentum) {
      config.max_momentums = options.max_momentum.for_groups(group_count, "max_momentum", owner);
      config.base_momentums = options.base_momentum.for_groups(group_count, "base_momentum", owner);
      detail::check_non_negative(owner, "max_momentum", config.max_momentums);
      detail::check_non_negative(owner, "base_momentum", config.base_momentums);
    }
    return config;
  }

  [[nodiscard]] double anneal(double start, double end, double pct) const {
    if (config_.anneal_cos) {
      const double cos_out = std::cos(std::numbers::pi * pct) + 1;
      return end + (start - end) / 2.0 * cos_out;
    }
    return (end - start) * pct + start;
  }

  // The phase of step `step_num`, and the fraction of it that is done. Throws where Python
  // divides by zero (a phase with no steps: pct_start 1 in two phases, e.g.).
  [[nodiscard]] static std::pair<const Phase*, double> phase_at(const Config& config, int64_t step_num) {
    double start_step = 0;
    const auto step = static_cast<double>(step_num);
    for (std::size_t index = 0; index < config.phases.size(); ++index) {
      const Phase& phase = config.phases[index];
      if (step <= phase.end_step || index + 1 == config.phases.size()) {
        TORCHKIT_CHECK(phase.end_step != start_step,
                       "OneCycleLR: float division by zero at step {}: phase {} of the cycle has no steps "
                       "(pct_start={}, total_steps={})",
                       step_num, index, config.pct_start, config.total_steps);
        return {&phase, (step - start_step) / (phase.end_step - start_step)};
      }
      start_step = phase.end_step;
    }
    return {nullptr, 0.0};  // unreachable: the last phase always matches
  }

  // Python's check in get_lr(), and its division by zero, for step `step_num`.
  static void check_step(const Config& config, int64_t step_num) {
    TORCHKIT_CHECK(step_num <= config.total_steps,
                   "OneCycleLR: Tried to step {} times. The specified number of total steps is {}", step_num + 1,
                   config.total_steps);
    (void)phase_at(config, step_num);
  }

  void check_next_step() const override { check_step(config_, last_epoch_ + 1); }

  [[nodiscard]] std::vector<double> get_lr() const override {
    check_step(config_, last_epoch_);
    const auto [phase, pct] = phase_at(config_, last_epoch_);
    std::vector<double> lrs;
    for (std::size_t index = 0; index < base_lrs_.size(); ++index) {
      const double values[] = {initial_lrs_->values[index], config_.max_lrs[index], config_.min_lrs[index]};
      lrs.push_back(anneal(values[phase->start_lr], values[phase->end_lr], pct));
    }
    return lrs;
  }
  [[nodiscard]] std::vector<double> get_momentum() const override {
    if (!config_.cycle_momentum) {
      return {};
    }
    const auto [phase, pct] = phase_at(config_, last_epoch_);
    std::vector<double> momentums;
    for (std::size_t index = 0; index < base_lrs_.size(); ++index) {
      const double values[] = {config_.max_momentums[index], config_.base_momentums[index]};
      momentums.push_back(anneal(values[phase->start_momentum], values[phase->end_momentum], pct));
    }
    return momentums;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format(
        "max_lr={}, total_steps={}, pct_start={}, anneal_strategy='{}', cycle_momentum={}, base_momentum={}, "
        "max_momentum={}, div_factor={}, final_div_factor={}, three_phase={}",
        detail::list_to_string(config_.max_lrs), config_.total_steps, config_.pct_start,
        config_.anneal_cos ? "cos" : "linear", config_.cycle_momentum,
        detail::list_to_string(config_.base_momentums), detail::list_to_string(config_.max_momentums),
        options_.div_factor, options_.final_div_factor, config_.three_phase);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_int("total_steps", config_.total_steps);
    writer.write_double("pct_start", config_.pct_start);
    writer.write_bool("three_phase", config_.three_phase);
    writer.write_string("anneal_strategy", config_.anneal_cos ? "cos" : "linear");
    writer.write_bool("cycle_momentum", config_.cycle_momentum);
    writer.write_bool("use_beta1", config_.use_beta1);
    writer.write_double("div_factor", options_.div_factor);
    writer.write_double("final_div_factor", options_.final_div_factor);
    writer.write_doubles("max_lrs", config_.max_lrs);
    writer.write_doubles("min_lrs", config_.min_lrs);
    writer.write_doubles("base_momentums", config_.base_momentums);
    writer.write_doubles("max_momentums", config_.max_momentums);
    writer.write_doubles("optimizer_momentums", config_.cycle_momentum ? group_momentums() : std::vector<double>{});
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    const std::size_t group_count = optimizer_->param_groups().size();
    OneCycleLROptions options = options_;
    options.total_steps = reader.read_int("total_steps");
    options.pct_start = reader.read_double("pct_start");
    options.three_phase = reader.read_bool("three_phase");
    options.anneal_strategy = reader.read_string("anneal_strategy");
    options.cycle_momentum = reader.read_bool("cycle_momentum");
    options.div_factor = reader.read_double("div_factor");
    options.final_div_factor = reader.read_double("final_div_factor");
    options.max_lr = reader.read_doubles("max_lrs");
    options.base_momentum = reader.read_doubles("base_momentums");
    options.max_momentum = reader.read_doubles("max_momentums");
    Config config = configure(options, group_count, reader.owner());
    config.use_beta1 = reader.read_bool("use_beta1");
    config.initial_lrs = base_lrs_;  // not used after construction: get_lr reads the shared ones
    config.min_lrs = reader.read_doubles("min_lrs");
    TORCHKIT_CHECK(config.min_lrs.size() == group_count, "{}: 'min_lrs' has {} values for {} parameter groups",
                   reader.owner(), config.min_lrs.size(), group_count);
    const auto momentums =
        detail::read_cycled_momentums(reader, *optimizer_, config.cycle_momentum, config.use_beta1, group_count);
    if (apply) {
      options_ = std::move(options);
      config_ = std::move(config);
      for (std::size_t index = 0; index < momentums.size(); ++index) {
        detail::set_group_momentum(*optimizer_, index, momentums[index]);
      }
    }
  }

  OneCycleLROptions options_;
  Config config_;
};

// ---------------------------------------------------------------------------------------------
// CyclicLR
// ---------------------------------------------------------------------------------------------

/// CyclicLR's arguments (Python's names and defaults; `base_lr` and `max_lr` are required).
struct CyclicLROptions {
  /// The lower lr boundary: one value, or one per group.
  GroupValues base_lr{};
  /// The upper lr boundary: one value, or one per group.
  GroupValues max_lr{};
  /// Iterations in the increasing half of a cycle (> 0).
  int64_t step_size_up = 2000;
  /// Iterations in the decreasing half (> 0); `step_size_up` when not set.
  std::optional<int64_t> step_size_down{};
  /// `"triangular"`, `"triangular2"` or `"exp_range"`; ignored when `scale_fn` is set.
  std::string mode = "triangular";
  /// The constant of `"exp_range"`: the amplitude scales by `gamma ** iterations`.
  double gamma = 1.0;
  /// A custom amplitude scale (0 <= scale_fn(x) <= 1), called with the cycle number or the
  /// iteration (`scale_mode`). Not saved by `save()`.
  std::function<double(double)> scale_fn{};
  /// `"cycle"` or `"iterations"`: what `scale_fn` is called with.
  std::string scale_mode = "cycle";
  /// Cycle the momentum (SGD, RMSprop) or beta1 (Adam, AdamW) inversely to the lr.
  bool cycle_momentum = true;
  /// The momentum at the lr's peak.
  GroupValues base_momentum = 0.8;
  /// The momentum at the start of a cycle.
  GroupValues max_momentum = 0.9;
};

/// Cycles each group's lr between `base_lr` and `max_lr` (`torch.optim.lr_scheduler.CyclicLR`),
/// the momentum between `max_momentum` and `base_momentum`. Step it once per batch. Besides
/// torch 1.13's SGD/RMSprop momentum, it cycles Adam/AdamW's beta1 as torch 2.x does.
///
///     torchkit::lr::CyclicLR scheduler(optimizer, {.base_lr = 0.01, .max_lr = 0.1, .step_size_up = 20});
class CyclicLR final : public Scheduler {
 public:
  CyclicLR(torch::optim::Optimizer& optimizer, GroupValues base_lr, GroupValues max_lr, int64_t step_size_up = 2000)
      : CyclicLR(optimizer, CyclicLROptions{.base_lr = std::move(base_lr), .max_lr = std::move(max_lr),
                                            .step_size_up = step_size_up}) {}
  CyclicLR(torch::optim::Optimizer& optimizer, CyclicLROptions options)
      : Scheduler(optimizer, "CyclicLR"), options_(std::move(options)) {
    const std::size_t group_count = optimizer.param_groups().size();
    Config config = configure(options_, group_count, "CyclicLR");
    if (config.cycle_momentum) {
      const auto kind = detail::momentum_kind(optimizer);
      TORCHKIT_CHECK(kind != detail::MomentumKind::none,
                     "CyclicLR: optimizer must support momentum with `cycle_momentum` option enabled (SGD, RMSprop, "
                     "Adam or AdamW); pass cycle_momentum=false");
      config.use_beta1 = kind == detail::MomentumKind::beta1;
    }
    // Everything is valid: from here on the optimizer changes.
    config_ = std::move(config);
    for (std::size_t index = 0; index < group_count; ++index) {
      detail::set_group_lr(optimizer, index, config_.base_lrs[index]);
      if (config_.cycle_momentum) {
        detail::set_group_momentum(optimizer, index, config_.base_momentums[index]);
      }
    }
    record_initial_lrs();
    initial_step();
    base_lrs_ = config_.base_lrs;  // Python sets them after the initial step
  }

  [[nodiscard]] const CyclicLROptions& options() const noexcept { return options_; }

 private:
  struct Config {
    std::vector<double> base_lrs, max_lrs, base_momentums, max_momentums;
    int64_t step_size_up = 0;
    int64_t step_size_down = 0;
    double total_size = 0;
    double step_ratio = 0;
    int scale = 0;  // 0 triangular, 1 triangular2, 2 exp_range, 3 custom
    bool scale_by_cycle = true;
    bool cycle_momentum = true;
    bool use_beta1 = false;
  };

  static Config configure(const CyclicLROptions& options, std::size_t group_count, std::string_view owner) {
    Config config;
    config.base_lrs = options.base_lr.for_groups(group_count, "base_lr", owner);
    detail::check_non_negative(owner, "base_lr", config.base_lrs);
    config.max_lrs = options.max_lr.for_groups(group_count, "max_lr", owner);
    detail::check_non_negative(owner, "max_lr", config.max_lrs);
    detail::check_positive(owner, "step_size_up", options.step_size_up);
    if (options.step_size_down) {
      detail::check_positive(owner, "step_size_down", *options.step_size_down);
    }
    config.step_size_up = options.step_size_up;
    config.step_size_down = options.step_size_down.value_or(options.step_size_up);
    const auto up = static_cast<double>(config.step_size_up);
    config.total_size = up + static_cast<double>(config.step_size_down);
    config.step_ratio = up / config.total_size;
    if (options.scale_fn) {
      TORCHKIT_CHECK(options.scale_mode == "cycle" || options.scale_mode == "iterations",
                     "{}: scale_mode must be 'cycle' or 'iterations', got '{}'", owner, options.scale_mode);
      config.scale = 3;
      config.scale_by_cycle = options.scale_mode == "cycle";
    } else {
      TORCHKIT_CHECK(options.mode == "triangular" || options.mode == "triangular2" || options.mode == "exp_range",
                     "{}: mode is invalid and scale_fn is None: got mode '{}', expected 'triangular', "
                     "'triangular2' or 'exp_range'",
                     owner, options.mode);
      config.scale = options.mode == "triangular" ? 0 : options.mode == "triangular2" ? 1 : 2;
      config.scale_by_cycle = config.scale != 2;
    }
    TORCHKIT_CHECK(std::isfinite(options.gamma) && options.gamma >= 0, "{}: gamma must be a finite number >= 0, got {}",
                   owner, options.gamma);
    config.cycle_momentum = options.cycle_momentum;
    if (config.cycle_momentum) {
      config.base_momentums = options.base_momentum.for_groups(group_count, "base_momentum", owner);
      config.max_momentums = options.max_momentum.for_groups(group_count, "max_momentum", owner);
      detail::check_non_negative(owner, "base_momentum", config.base_momentums);
      detail::check_non_negative(owner, "max_momentum", config.max_momentums);
    }
    return config;
  }

  [[nodiscard]] double scale(double x) const {
    switch (config_.scale) {
      case 0:
        return 1.;
      case 1:
        return 1 / std::pow(2., x - 1);
      case 2:
        return std::pow(options_.gamma, x);
      default:
        return options_.scale_fn(x);
    }
  }

  // Python's cycle, the position in it, and the amplitude scale of the current iteration.
  struct Position {
    double scale_factor;
    double amplitude_scale;
  };
  [[nodiscard]] Position position() const {
    const auto epoch = static_cast<double>(last_epoch_);
    const double cycle = std::floor(1 + epoch / config_.total_size);
    const double x = 1. + epoch / config_.total_size - cycle;
    const double scale_factor = x <= config_.step_ratio ? x / config_.step_ratio : (x - 1) / (config_.step_ratio - 1);
    return {scale_factor, scale(config_.scale_by_cycle ? cycle : epoch)};
  }

  [[nodiscard]] std::vector<double> get_lr() const override {
    const auto [scale_factor, amplitude_scale] = position();
    std::vector<double> lrs;
    for (std::size_t index = 0; index < base_lrs_.size(); ++index) {
      const double base_height = (config_.max_lrs[index] - base_lrs_[index]) * scale_factor;
      lrs.push_back(base_lrs_[index] + base_height * amplitude_scale);
    }
    return lrs;
  }
  [[nodiscard]] std::vector<double> get_momentum() const override {
    if (!config_.cycle_momentum) {
      return {};
    }
    const auto [scale_factor, amplitude_scale] = position();
    std::vector<double> momentums;
    for (std::size_t index = 0; index < base_lrs_.size(); ++index) {
      const double base_height = (config_.max_momentums[index] - config_.base_momentums[index]) * scale_factor;
      momentums.push_back(config_.max_momentums[index] - base_height * amplitude_scale);
    }
    return momentums;
  }
  [[nodiscard]] std::string arguments() const override {
    static constexpr const char* modes[] = {"triangular", "triangular2", "exp_range", "custom scale_fn"};
    return fmt::format(
        "base_lr={}, max_lr={}, step_size_up={}, step_size_down={}, mode='{}', gamma={}, scale_mode='{}', "
        "cycle_momentum={}, base_momentum={}, max_momentum={}",
        detail::list_to_string(config_.base_lrs), detail::list_to_string(config_.max_lrs), config_.step_size_up,
        config_.step_size_down, modes[config_.scale], options_.gamma, config_.scale_by_cycle ? "cycle" : "iterations",
        config_.cycle_momentum, detail::list_to_string(config_.base_momentums),
        detail::list_to_string(config_.max_momentums));
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_doubles("max_lrs", config_.max_lrs);
    writer.write_int("step_size_up", config_.step_size_up);
    writer.write_int("step_size_down", config_.step_size_down);
    writer.write_string("mode", options_.mode);
    writer.write_double("gamma", options_.gamma);
    writer.write_bool("custom_scale_fn", config_.scale == 3);
    writer.write_string("scale_mode", config_.scale_by_cycle ? "cycle" : "iterations");
    writer.write_bool("cycle_momentum", config_.cycle_momentum);
    writer.write_bool("use_beta1", config_.use_beta1);
    writer.write_doubles("base_momentums", config_.base_momentums);
    writer.write_doubles("max_momentums", config_.max_momentums);
    writer.write_doubles("optimizer_momentums", config_.cycle_momentum ? group_momentums() : std::vector<double>{});
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    const std::size_t group_count = optimizer_->param_groups().size();
    CyclicLROptions options = options_;
    options.base_lr = reader.read_doubles("base_lrs");
    options.max_lr = reader.read_doubles("max_lrs");
    options.step_size_up = reader.read_int("step_size_up");
    options.step_size_down = reader.read_int("step_size_down");
    options.mode = reader.read_string("mode");
    options.gamma = reader.read_double("gamma");
    options.scale_mode = reader.read_string("scale_mode");
    options.cycle_momentum = reader.read_bool("cycle_momentum");
    options.base_momentum = reader.read_doubles("base_momentums");
    options.max_momentum = reader.read_doubles("max_momentums");
    const bool custom = reader.read_bool("custom_scale_fn");
    TORCHKIT_CHECK(custom == static_cast<bool>(options_.scale_fn),
                   "{}: the archive was saved {} a custom scale_fn, this scheduler has {}; construct it as the saved "
                   "one was",
                   reader.owner(), custom ? "with" : "without", options_.scale_fn ? "one" : "none");
    Config config = configure(options, group_count, reader.owner());
    config.use_beta1 = reader.read_bool("use_beta1");
    const auto momentums =
        detail::read_cycled_momentums(reader, *optimizer_, config.cycle_momentum, config.use_beta1, group_count);
    if (apply) {
      options_ = std::move(options);
      config_ = std::move(config);
      for (std::size_t index = 0; index < momentums.size(); ++index) {
        detail::set_group_momentum(*optimizer_, index, momentums[index]);
      }
    }
  }

  CyclicLROptions options_;
  Config config_;
};

// ---------------------------------------------------------------------------------------------
// SequentialLR and ChainedScheduler
// ---------------------------------------------------------------------------------------------

/// A scheduler of any type for SequentialLR and ChainedScheduler: a `std::shared_ptr` to one
/// (shared with the caller), or a scheduler moved in. The list is built left to right, so
/// schedulers written inline are constructed in the order written, as in Python.
///
///     {torchkit::lr::LinearLR(optimizer, {.start_factor = 0.1}), std::move(cosine), shared_step}
class AnyScheduler {
 public:
  /// Shares `scheduler` with the caller. Throws Error when it is null.
  template <std::derived_from<Scheduler> S>
  AnyScheduler(std::shared_ptr<S> scheduler) : scheduler_(std::move(scheduler)) {  // NOLINT
    TORCHKIT_CHECK(scheduler_ != nullptr, "torchkit::lr: a scheduler pointer is null");
  }
  /// Takes over `scheduler` (pass a temporary or `std::move(scheduler)`; an lvalue would be
  /// copied, so that stepping the composite would not step the caller's object).
  template <std::derived_from<Scheduler> S>
    requires(!std::is_lvalue_reference_v<S>)
  AnyScheduler(S&& scheduler)  // NOLINT(google-explicit-constructor, bugprone-forwarding-reference-overload)
      : scheduler_(std::make_shared<S>(std::move(scheduler))) {}

  [[nodiscard]] const std::shared_ptr<Scheduler>& get() const noexcept { return scheduler_; }

 private:
  std::shared_ptr<Scheduler> scheduler_;
};

/// Runs schedulers one after another, switching at the milestones
/// (`torch.optim.lr_scheduler.SequentialLR`), e.g. a linear warm-up, then cosine annealing.
/// At construction it resets every group's lr to its initial lr and restarts the first
/// scheduler; at each milestone the next one starts from epoch 0 (its closed form), as in
/// Python. Throws Error (Python's wording) when a scheduler belongs to another optimizer or
/// the number of milestones is not one less than the number of schedulers, and for negative
/// or unsorted milestones; a SequentialLR or ChainedScheduler cannot be one of the schedulers.
///
///     torchkit::lr::SequentialLR scheduler(
///         optimizer,
///         {torchkit::lr::LinearLR(optimizer, {.start_factor = 0.1, .total_iters = 5}),
///          torchkit::lr::CosineAnnealingLR(optimizer, {.T_max = 95})},
///         {5});
class SequentialLR final : public Scheduler {
 public:
  SequentialLR(torch::optim::Optimizer& optimizer, std::vector<AnyScheduler> schedulers,
               std::vector<int64_t> milestones)
      : Scheduler(optimizer, "SequentialLR"), milestones_(std::move(milestones)) {
    TORCHKIT_CHECK(!schedulers.empty(), "SequentialLR: expects at least one scheduler, got none");
    for (std::size_t index = 0; index < schedulers.size(); ++index) {
      const auto& scheduler = schedulers[index].get();
      TORCHKIT_CHECK(&scheduler->optimizer() == &optimizer,
                     "SequentialLR: Sequential Schedulers expects all schedulers to belong to the same optimizer, "
                     "but got schedulers at index {} to be different than the optimizer passed in.",
                     index);
      TORCHKIT_CHECK(!scheduler->is_composite(),
                     "SequentialLR: the scheduler at index {} is a {}, which cannot be restarted at a milestone; "
                     "put it around the SequentialLR instead",
                     index, scheduler->type_name());
    }
    TORCHKIT_CHECK(milestones_.size() + 1 == schedulers.size(),
                   "SequentialLR: Sequential Schedulers expects number of schedulers provided to be one more than "
                   "the number of milestone points, but got number of schedulers {} and the number of milestones "
                   "to be equal to {}",
                   schedulers.size(), milestones_.size());
    detail::check_milestones("SequentialLR", milestones_);
    for (auto& scheduler : schedulers) {
      schedulers_.push_back(scheduler.get());
    }
    check_group_counts();
    initial_lrs_ = detail::shared_initial_lrs(optimizer);
    const std::size_t group_count = optimizer.param_groups().size();
    base_lrs_.assign(initial_lrs_->values.begin(),
                     initial_lrs_->values.begin() + static_cast<std::ptrdiff_t>(group_count));
    // Valid: now reset the lrs, "undo" the schedulers' initial steps and restart the first.
    last_epoch_ = 0;
    for (std::size_t index = 0; index < group_count; ++index) {
      detail::set_group_lr(optimizer, index, base_lrs_[index]);
    }
    for (const auto& scheduler : schedulers_) {
      scheduler->last_epoch_ -= 1;
    }
    schedulers_.front()->initial_step();
    last_lr_ = schedulers_.front()->last_lr();
  }

  /// Steps the scheduler whose turn it is; at a milestone, starts the next one at epoch 0.
  void step() override {
    check_group_count();
    const int64_t epoch = last_epoch_ + 1;
    const std::size_t index = detail::bisect_right(milestones_, epoch);
    const auto& scheduler = schedulers_[index];
    if (index > 0 && milestones_[index - 1] == epoch) {
      scheduler->step_to(0);
    } else {
      scheduler->check_next_step();
      scheduler->step();
    }
    last_epoch_ = epoch;
    last_lr_ = scheduler->last_lr();
  }

  /// The schedulers, in order.
  [[nodiscard]] const std::vector<std::shared_ptr<Scheduler>>& schedulers() const noexcept { return schedulers_; }
  /// The epochs at which the next scheduler takes over.
  [[nodiscard]] const std::vector<int64_t>& milestones() const noexcept { return milestones_; }

 private:
  void check_group_counts() const {
    for (const auto& scheduler : schedulers_) {
      scheduler->check_group_count();
    }
  }
  void check_next_step() const override {
    const int64_t epoch = last_epoch_ + 1;
    const std::size_t index = detail::bisect_right(milestones_, epoch);
    if (index == 0 || milestones_[index - 1] != epoch) {
      schedulers_[index]->check_next_step();
    }
  }
  [[nodiscard]] std::vector<double> get_lr() const override { return last_lr_; }
  [[nodiscard]] bool is_composite() const noexcept override { return true; }
  void step_to(int64_t /*epoch*/) override {
    detail::fail("SequentialLR: cannot jump to an epoch (Python's SequentialLR.step() takes no epoch)");
  }
  [[nodiscard]] std::string arguments() const override {
    std::vector<std::string> names;
    for (const auto& scheduler : schedulers_) {
      names.push_back(scheduler->to_string());
    }
    return fmt::format("schedulers=[{}], milestones={}", fmt::join(names, ", "),
                       detail::list_to_string(milestones_));
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_ints("milestones", milestones_);
    writer.write_int("scheduler_count", static_cast<int64_t>(schedulers_.size()));
    for (std::size_t index = 0; index < schedulers_.size(); ++index) {
      torch::serialize::OutputArchive nested(writer.archive().compilation_unit());
      detail::ArchiveWriter nested_writer(nested);
      schedulers_[index]->save_to(nested_writer);
      writer.archive().write(fmt::format("schedulers/{}", index), nested);
    }
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    auto milestones = reader.read_ints("milestones");
    const int64_t count = reader.read_int("scheduler_count");
    TORCHKIT_CHECK(count == static_cast<int64_t>(schedulers_.size()),
                   "{}: the archive holds {} schedulers, this SequentialLR has {}", reader.owner(), count,
                   schedulers_.size());
    TORCHKIT_CHECK(milestones.size() + 1 == schedulers_.size(), "{}: the archive holds {} milestones for {} schedulers",
                   reader.owner(), milestones.size(), schedulers_.size());
    detail::check_milestones(reader.owner(), milestones);
    for (std::size_t index = 0; index < schedulers_.size(); ++index) {
      auto nested = reader.read_archive(fmt::format("schedulers/{}", index));
      detail::ArchiveReader nested_reader(nested, fmt::format("{} (schedulers[{}])", reader.owner(), index));
      schedulers_[index]->load_from(nested_reader, apply);
    }
    if (apply) {
      milestones_ = std::move(milestones);
    }
  }

  std::vector<std::shared_ptr<Scheduler>> schedulers_;
  std::vector<int64_t> milestones_;
};

/// Steps several schedulers of one optimizer together, each multiplying in its effect
/// (`torch.optim.lr_scheduler.ChainedScheduler`). Its `last_epoch()` counts its steps.
/// Throws Error (Python's wording) when the schedulers belong to different optimizers.
///
///     torchkit::lr::ChainedScheduler scheduler({torchkit::lr::ConstantLR(optimizer, {.factor = 0.1, .total_iters = 2}),
///                                               torchkit::lr::ExponentialLR(optimizer, 0.9)});
class ChainedScheduler final : public Scheduler {
 public:
  explicit ChainedScheduler(std::vector<AnyScheduler> schedulers)
      : Scheduler(first_optimizer(schedulers), "ChainedScheduler") {
    for (std::size_t index = 1; index < schedulers.size(); ++index) {
      TORCHKIT_CHECK(&schedulers[index].get()->optimizer() == optimizer_,
                     "ChainedScheduler: ChainedScheduler expects all schedulers to belong to the same optimizer, but "
                     "got schedulers at index {} and {} to be different",
                     0, index);
    }
    for (auto& scheduler : schedulers) {
      schedulers_.push_back(scheduler.get());
    }
    for (const auto& scheduler : schedulers_) {
      scheduler->check_group_count();
    }
    initial_lrs_ = detail::shared_initial_lrs(*optimizer_);
    const std::size_t group_count = optimizer_->param_groups().size();
    base_lrs_.assign(initial_lrs_->values.begin(),
                     initial_lrs_->values.begin() + static_cast<std::ptrdiff_t>(group_count));
    last_epoch_ = 0;
    last_lr_ = group_lrs();
  }

  /// Steps every scheduler, in order. When one of them would refuse the step (OneCycleLR past
  /// its total steps), throws that Error before any of them moves.
  void step() override {
    check_group_count();
    check_next_step();
    for (const auto& scheduler : schedulers_) {
      scheduler->step();
    }
    ++last_epoch_;
    last_lr_ = group_lrs();
  }

  /// The schedulers, in order.
  [[nodiscard]] const std::vector<std::shared_ptr<Scheduler>>& schedulers() const noexcept { return schedulers_; }

 private:
  static torch::optim::Optimizer& first_optimizer(const std::vector<AnyScheduler>& schedulers) {
    TORCHKIT_CHECK(!schedulers.empty(), "ChainedScheduler: expects at least one scheduler, got none");
    return schedulers.front().get()->optimizer();
  }
  void check_next_step() const override {
    for (const auto& scheduler : schedulers_) {
      scheduler->check_next_step();
    }
  }
  [[nodiscard]] std::vector<double> get_lr() const override { return last_lr_; }
  [[nodiscard]] bool is_composite() const noexcept override { return true; }
  void step_to(int64_t /*epoch*/) override {
    detail::fail("ChainedScheduler: cannot jump to an epoch (Python's ChainedScheduler.step() takes no epoch)");
  }
  [[nodiscard]] std::string arguments() const override {
    std::vector<std::string> names;
    for (const auto& scheduler : schedulers_) {
      names.push_back(scheduler->to_string());
    }
    return fmt::format("schedulers=[{}]", fmt::join(names, ", "));
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_int("scheduler_count", static_cast<int64_t>(schedulers_.size()));
    for (std::size_t index = 0; index < schedulers_.size(); ++index) {
      torch::serialize::OutputArchive nested(writer.archive().compilation_unit());
      detail::ArchiveWriter nested_writer(nested);
      schedulers_[index]->save_to(nested_writer);
      writer.archive().write(fmt::format("schedulers/{}", index), nested);
    }
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    const int64_t count = reader.read_int("scheduler_count");
    TORCHKIT_CHECK(count == static_cast<int64_t>(schedulers_.size()),
                   "{}: the archive holds {} schedulers, this ChainedScheduler has {}", reader.owner(), count,
                   schedulers_.size());
    for (std::size_t index = 0; index < schedulers_.size(); ++index) {
      auto nested = reader.read_archive(fmt::format("schedulers/{}", index));
      detail::ArchiveReader nested_reader(nested, fmt::format("{} (schedulers[{}])", reader.owner(), index));
      schedulers_[index]->load_from(nested_reader, apply);
    }
  }

  std::vector<std::shared_ptr<Scheduler>> schedulers_;
};

// ---------------------------------------------------------------------------------------------
// ReduceLROnPlateau
// ---------------------------------------------------------------------------------------------

/// ReduceLROnPlateau's arguments (Python's names and defaults).
struct ReduceLROnPlateauOptions {
  /// `"min"`: reduce when the metric stops decreasing; `"max"`: when it stops increasing.
  std::string mode = "min";
  /// The lr is multiplied by it on a plateau, in [0, 1).
  double factor = 0.1;
  /// Epochs without improvement tolerated before reducing (>= 0).
  int64_t patience = 10;
  /// What counts as an improvement (>= 0), relative or absolute (`threshold_mode`).
  double threshold = 1e-4;
  /// `"rel"` or `"abs"`.
  std::string threshold_mode = "rel";
  /// Epochs to wait after a reduction before counting bad epochs again (>= 0).
  int64_t cooldown = 0;
  /// Lower bound of the lr: one value, or one per group (>= 0).
  GroupValues min_lr = 0.0;
  /// A reduction smaller than this is skipped (>= 0).
  double eps = 1e-8;
};

/// Reduces the lr when a metric has stopped improving
/// (`torch.optim.lr_scheduler.ReduceLROnPlateau`). Not a Scheduler: `step` takes the metric.
/// Throws Error with Python's wording for a bad mode, threshold mode, factor (`Factor should be
/// < 1.0.`) or min_lr list.
///
///     torchkit::lr::ReduceLROnPlateau scheduler(optimizer, {.mode = "min", .patience = 5});
///     for (...) { train(...); scheduler.step(validation_loss); }
class ReduceLROnPlateau {
 public:
  explicit ReduceLROnPlateau(torch::optim::Optimizer& optimizer) : ReduceLROnPlateau(optimizer, {}) {}
  ReduceLROnPlateau(torch::optim::Optimizer& optimizer, ReduceLROnPlateauOptions options)
      : optimizer_(&optimizer), options_(std::move(options)) {
    TORCHKIT_CHECK(!optimizer.param_groups().empty(),
                   "ReduceLROnPlateau: the optimizer has no parameter groups; give it parameters before creating a "
                   "scheduler");
    min_lrs_ = validate(options_, optimizer.param_groups().size(), "ReduceLROnPlateau");
    last_lr_ = group_lrs();
    reset();
  }

  /// Takes the epoch's metric (e.g. the validation loss); reduces the lr of every group by
  /// `factor` (not below its `min_lr`) after more than `patience` epochs without improvement.
  void step(double metric) {
    TORCHKIT_CHECK(optimizer_->param_groups().size() == min_lrs_.size(),
                   "ReduceLROnPlateau: the optimizer has {} parameter groups, but had {} when the scheduler was "
                   "created",
                   optimizer_->param_groups().size(), min_lrs_.size());
    const double current = metric;
    last_epoch_ = last_epoch_ + 1;
    if (is_better(current, best_)) {
      best_ = current;
      num_bad_epochs_ = 0;
    } else {
      num_bad_epochs_ += 1;
    }
    if (in_cooldown()) {
      cooldown_counter_ -= 1;
      num_bad_epochs_ = 0;  // ignore any bad epochs in cooldown
    }
    if (num_bad_epochs_ > options_.patience) {
      reduce_lr();
      cooldown_counter_ = options_.cooldown;
      num_bad_epochs_ = 0;
    }
    last_lr_ = group_lrs();
  }

  /// The metric as a one-element tensor (Python's `float(metrics)`; synchronises with its
  /// device). Throws Error for a tensor with more than one element.
  void step(const at::Tensor& metric) {
    TORCHKIT_CHECK(metric.defined() && metric.numel() == 1,
                   "ReduceLROnPlateau: the metric must be a one-element tensor, got {}",
                   metric.defined() ? fmt::format("shape [{}]", fmt::join(metric.sizes(), ", ")) : "an undefined tensor");
    step(metric.item<double>());
  }

  /// The lr of every group after the last step (at construction: the current lrs).
  [[nodiscard]] std::vector<double> last_lr() const { return last_lr_; }
  /// The number of steps taken.
  [[nodiscard]] int64_t last_epoch() const noexcept { return last_epoch_; }
  /// The best metric so far (+inf in "min" mode, -inf in "max" mode before the first step).
  [[nodiscard]] double best() const noexcept { return best_; }
  /// Epochs since the last improvement (reset by a reduction and in cooldown).
  [[nodiscard]] int64_t num_bad_epochs() const noexcept { return num_bad_epochs_; }
  /// Epochs of cooldown left.
  [[nodiscard]] int64_t cooldown_counter() const noexcept { return cooldown_counter_; }
  [[nodiscard]] bool in_cooldown() const noexcept { return cooldown_counter_ > 0; }
  [[nodiscard]] const ReduceLROnPlateauOptions& options() const noexcept { return options_; }
  [[nodiscard]] torch::optim::Optimizer& optimizer() const noexcept { return *optimizer_; }

  /// Writes the state (options, best, counters, epoch, and every group's current lr, which
  /// LibTorch's `optimizer.save()` does not keep) under the key `"lr_scheduler"`.
  void save(torch::serialize::OutputArchive& archive) const {
    torch::serialize::OutputArchive state(archive.compilation_unit());
    detail::ArchiveWriter writer(state);
    writer.write_string("type", "ReduceLROnPlateau");
    writer.write_string("mode", options_.mode);
    writer.write_double("factor", options_.factor);
    writer.write_int("patience", options_.patience);
    writer.write_double("threshold", options_.threshold);
    writer.write_string("threshold_mode", options_.threshold_mode);
    writer.write_int("cooldown", options_.cooldown);
    writer.write_doubles("min_lrs", min_lrs_);
    writer.write_double("eps", options_.eps);
    writer.write_double("best", best_);
    writer.write_int("num_bad_epochs", num_bad_epochs_);
    writer.write_int("cooldown_counter", cooldown_counter_);
    writer.write_int("last_epoch", last_epoch_);
    writer.write_doubles("last_lr", last_lr_);
    writer.write_doubles("optimizer_lrs", group_lrs());
    archive.write("lr_scheduler", state);
  }

  /// Restores the state written by `save()` and every group's lr; throws Error (changing
  /// nothing) for another kind of scheduler or a different number of parameter groups.
  void load(torch::serialize::InputArchive& archive) {
    detail::ArchiveReader outer(archive, "ReduceLROnPlateau::load");
    torch::serialize::InputArchive state = outer.read_archive("lr_scheduler");
    detail::ArchiveReader reader(state, "ReduceLROnPlateau::load");
    const std::string type = reader.read_string("type");
    TORCHKIT_CHECK(type == "ReduceLROnPlateau", "{}: the archive holds the state of a {}, not of a ReduceLROnPlateau",
                   reader.owner(), type);
    ReduceLROnPlateauOptions options{.mode = reader.read_string("mode"),
                                     .factor = reader.read_double("factor"),
                                     .patience = reader.read_int("patience"),
                                     .threshold = reader.read_double("threshold"),
                                     .threshold_mode = reader.read_string("threshold_mode"),
                                     .cooldown = reader.read_int("cooldown"),
                                     .min_lr = reader.read_doubles("min_lrs"),
                                     .eps = reader.read_double("eps")};
    auto min_lrs = validate(options, optimizer_->param_groups().size(), reader.owner());
    const double best = reader.read_double("best");
    const int64_t num_bad_epochs = reader.read_int("num_bad_epochs");
    const int64_t cooldown_counter = reader.read_int("cooldown_counter");
    const int64_t last_epoch = reader.read_int("last_epoch");
    auto last_lr = reader.read_doubles("last_lr");
    const auto optimizer_lrs = reader.read_doubles("optimizer_lrs");
    TORCHKIT_CHECK(last_lr.size() == min_lrs.size() && optimizer_lrs.size() == min_lrs.size(),
                   "{}: the archive was saved for {} parameter groups, the optimizer has {}", reader.owner(),
                   last_lr.size(), min_lrs.size());
    // Counters beyond 2^53 cannot come from a run, and would overflow the next step.
    const auto check_counter = [&](std::string_view name, int64_t value) {
      TORCHKIT_CHECK(value >= 0 && value < detail::max_count, "{}: {} in the archive is {}; expected 0 <= {} < 2^53",
                     reader.owner(), name, value, name);
    };
    check_counter("num_bad_epochs", num_bad_epochs);
    check_counter("cooldown_counter", cooldown_counter);
    check_counter("last_epoch", last_epoch);
    options_ = std::move(options);
    min_lrs_ = std::move(min_lrs);
    best_ = best;
    num_bad_epochs_ = num_bad_epochs;
    cooldown_counter_ = cooldown_counter;
    last_epoch_ = last_epoch;
    last_lr_ = std::move(last_lr);
    for (std::size_t index = 0; index < optimizer_lrs.size(); ++index) {
      detail::set_group_lr(*optimizer_, index, optimizer_lrs[index]);
    }
  }

  /// `ReduceLROnPlateau(mode='min', factor=0.1, ...) last_epoch=3 best=0.5 num_bad_epochs=1 last_lr=[0.1]`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format(
        "ReduceLROnPlateau(mode='{}', factor={}, patience={}, threshold={}, threshold_mode='{}', cooldown={}, "
        "min_lr={}, eps={}) last_epoch={} best={} num_bad_epochs={} last_lr={}",
        options_.mode, options_.factor, options_.patience, options_.threshold, options_.threshold_mode,
        options_.cooldown, detail::list_to_string(min_lrs_), options_.eps, last_epoch_, best_, num_bad_epochs_,
        detail::list_to_string(last_lr_));
  }

  friend std::ostream& operator<<(std::ostream& stream, const ReduceLROnPlateau& scheduler) {
    return stream << scheduler.to_string();
  }

 private:
  static std::vector<double> validate(const ReduceLROnPlateauOptions& options, std::size_t group_count,
                                      std::string_view owner) {
    TORCHKIT_CHECK(options.factor < 1.0, "{}: Factor should be < 1.0, got factor={}", owner, options.factor);
    TORCHKIT_CHECK(options.factor >= 0, "{}: Factor should be >= 0, got factor={}", owner, options.factor);
    TORCHKIT_CHECK(options.mode == "min" || options.mode == "max", "{}: mode {} is unknown! (expected 'min' or 'max')",
                   owner, options.mode);
    TORCHKIT_CHECK(options.threshold_mode == "rel" || options.threshold_mode == "abs",
                   "{}: threshold mode {} is unknown! (expected 'rel' or 'abs')", owner, options.threshold_mode);
    TORCHKIT_CHECK(options.patience >= 0, "{}: patience must be >= 0, got {}", owner, options.patience);
    TORCHKIT_CHECK(options.cooldown >= 0, "{}: cooldown must be >= 0, got {}", owner, options.cooldown);
    detail::check_non_negative(owner, "threshold", options.threshold);
    detail::check_non_negative(owner, "eps", options.eps);
    TORCHKIT_CHECK(!options.min_lr.empty(), "{}: min_lr is empty; give one value or one per group", owner);
    std::vector<double> min_lrs;
    if (options.min_lr.for_every_group()) {
      min_lrs.assign(group_count, options.min_lr.values().front());
    } else {
      TORCHKIT_CHECK(options.min_lr.values().size() == group_count, "{}: expected {} min_lrs, got {}", owner,
                     group_count, options.min_lr.values().size());
      min_lrs = options.min_lr.values();
    }
    detail::check_non_negative(owner, "min_lr", min_lrs);
    return min_lrs;
  }

  void reset() {
    best_ = options_.mode == "min" ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
    cooldown_counter_ = 0;
    num_bad_epochs_ = 0;
  }

  [[nodiscard]] bool is_better(double a, double best) const {
    const bool relative = options_.threshold_mode == "rel";
    if (options_.mode == "min") {
      return relative ? a < best * (1. - options_.threshold) : a < best - options_.threshold;
    }
    return relative ? a > best * (options_.threshold + 1.) : a > best + options_.threshold;
  }

  void reduce_lr() {
    for (std::size_t index = 0; index < min_lrs_.size(); ++index) {
      const double old_lr = detail::group_lr(*optimizer_, index);
      const double new_lr = std::max(old_lr * options_.factor, min_lrs_[index]);
      if (old_lr - new_lr > options_.eps) {
        detail::set_group_lr(*optimizer_, index, new_lr);
      }
    }
  }

  [[nodiscard]] std::vector<double> group_lrs() const {
    std::vector<double> lrs(optimizer_->param_groups().size());
    for (std::size_t index = 0; index < lrs.size(); ++index) {
      lrs[index] = detail::group_lr(*optimizer_, index);
    }
    return lrs;
  }

  torch::optim::Optimizer* optimizer_;
  ReduceLROnPlateauOptions options_;
  std::vector<double> min_lrs_;
  double best_ = 0;
  int64_t num_bad_epochs_ = 0;
  int64_t cooldown_counter_ = 0;
  int64_t last_epoch_ = 0;
  std::vector<double> last_lr_;
};

}  // namespace torchkit::lr
// ---- end torchkit/lr.hpp ----
// ---- begin torchkit/freeze.hpp ----
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

// ---- begin torchkit/detail/name_pattern.hpp ----
/// @file detail/name_pattern.hpp
/// Parameter-name patterns shared by freeze.hpp (tip 8) and param_groups.hpp (tip 9).
///
/// The public part is `torchkit::NamePattern` and `torchkit::regex()`; include freeze.hpp or
/// param_groups.hpp to use them. Everything in `torchkit::detail` is internal: the parameter
/// table (each tensor once, with every name it is reachable under), glob matching, and the
/// "closest names" suggestion that makes a typo fail loudly instead of matching nothing.


#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <numeric>
#include <ostream>
#include <ranges>
#include <regex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace torchkit {

class NamePattern;
[[nodiscard]] NamePattern regex(std::string expression);

/// Selects parameters by name. A pattern is one of:
/// - an exact parameter name: `"cnn.VGG_16.convolution1_1.weight"`;
/// - a module path, which covers every parameter below it: `"cnn.VGG_16.convolution1_1"` covers
///   its `.weight` and `.bias` (but `"features.1"` does not cover `features.10.weight`);
/// - a glob, when the text holds `*` (any run of characters, dots included) or `?` (exactly one
///   character): `"*.bias"`, `"*convolution1*"`. Like a module path, a glob that matches a module
///   path covers everything below it: `"features.?"` covers `features.3.weight`;
/// - `torchkit::regex("…")`: an ECMAScript regular expression (no back-references) that must match the whole
///   parameter name (`std::regex_match`), e.g. `torchkit::regex(R"(.*conv\d+_1\.weight)")`.
///
/// A tied tensor (one tensor registered in several modules) matches when any of its names does.
///
///     torchkit::freeze(model, {"cnn.VGG_16.convolution1_1", "*.bias", torchkit::regex(".*_2\\.weight")});
class NamePattern {
 public:
  /// What kind of pattern this is.
  enum class Kind {
    name,   ///< an exact parameter name or a module path
    glob,   ///< text with `*` or `?`
    regex,  ///< made by torchkit::regex()
  };

  /// A name, module path or glob (a glob when `text` holds `*` or `?`).
  NamePattern(std::string text)  // NOLINT(google-explicit-constructor): patterns are written as strings
      : text_(std::move(text)),
        kind_(text_.find_first_of("*?") == std::string::npos ? Kind::name : Kind::glob) {}
  /// A name, module path or glob. Throws Error for a null pointer.
  NamePattern(const char* text)  // NOLINT(google-explicit-constructor)
      : NamePattern(std::string(checked(text))) {}
  /// A name, module path or glob.
  NamePattern(std::string_view text)  // NOLINT(google-explicit-constructor)
      : NamePattern(std::string(text)) {}

  /// The pattern as written (for a regex: the expression).
  [[nodiscard]] const std::string& text() const noexcept { return text_; }
  [[nodiscard]] Kind kind() const noexcept { return kind_; }

  /// Whether the parameter called `name` is selected by this pattern.
  [[nodiscard]] bool matches(std::string_view name) const;

  /// The pattern as it appears in messages: `"cnn.VGG_16"`, `"*.bias"`, `regex("conv.*")`.
  [[nodiscard]] std::string to_string() const {
    return kind_ == Kind::regex ? fmt::format("regex(\"{}\")", text_) : fmt::format("\"{}\"", text_);
  }

  /// Writes to_string().
  friend std::ostream& operator<<(std::ostream& out, const NamePattern& pattern) { return out << pattern.to_string(); }

  friend NamePattern regex(std::string expression);

 private:
  struct RegexTag {};
  NamePattern(RegexTag, std::string expression, std::shared_ptr<const std::regex> compiled)
      : text_(std::move(expression)), kind_(Kind::regex), compiled_(std::move(compiled)) {}

  static const char* checked(const char* text) {
    TORCHKIT_CHECK(text != nullptr, "NamePattern: the pattern is a null pointer; pass a parameter name, module path or glob");
    return text;
  }

  std::string text_;
  Kind kind_;
  std::shared_ptr<const std::regex> compiled_;  // shared: patterns are cheap to copy
};

/// A pattern that selects the parameters whose whole name matches the ECMAScript regular
/// expression `expression` (`std::regex_match`; Python: `re.fullmatch(expression, name)`).
///
/// Throws Error naming the expression when it is not a valid regular expression.
///
///     torchkit::freeze(model, {torchkit::regex(R"(cnn\.VGG_16\.convolution1_\d\..*)")});
namespace detail {
/// ECMAScript; with libstdc++ also its breadth-first matcher (`__polynomial`): time linear in the
/// name for any expression, and no recursion as deep as the name is long. libstdc++'s default
/// depth-first matcher takes exponential time on expressions such as `(a|a)*b` (found by
/// fuzz/fuzz_name_pattern.cpp). Back-references are then refused as invalid expressions.
#if defined(__GLIBCXX__)
inline constexpr auto regex_flags = std::regex::ECMAScript | std::regex_constants::__polynomial;
#else
inline constexpr auto regex_flags = std::regex::ECMAScript;
#endif
}  // namespace detail

[[nodiscard]] inline NamePattern regex(std::string expression) {
  std::shared_ptr<const std::regex> compiled;
  try {
    compiled = std::make_shared<const std::regex>(expression, detail::regex_flags);
  } catch (const std::regex_error& error) {
    detail::fail("torchkit::regex: \"{}\" is not a valid regular expression ({}); expected an ECMAScript "
                 "expression that matches whole parameter names, e.g. \"cnn\\.conv\\d+\\.weight\"",
                 expression, error.what());
  }
  return NamePattern(NamePattern::RegexTag{}, std::move(expression), std::move(compiled));
}

/// Any range of patterns: `std::vector<NamePattern>`, `std::array<std::string, 4>`, a set of
/// strings, ... (elements convertible to NamePattern).
template <class R>
concept NamePatternRange =
    std::ranges::input_range<R> && std::convertible_to<std::ranges::range_reference_t<R>, NamePattern>;

namespace detail {

/// Full match of a glob (`*` any run of characters, `?` exactly one) against `text`.
[[nodiscard]] inline bool glob_match(std::string_view pattern, std::string_view text) noexcept {
  std::size_t p = 0;
  std::size_t t = 0;
  std::size_t star = std::string_view::npos;
  std::size_t star_text = 0;
  while (t < text.size()) {
    // '*' first: a '*' in the text is an ordinary character, never a match for the wildcard
    // itself (found by fuzz/fuzz_name_pattern.cpp).
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_text = t;
    } else if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++star_text;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') {
    ++p;
  }
  return p == pattern.size();
}

/// Levenshtein distance (insertions, deletions, substitutions, each 1).
[[nodiscard]] inline std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> previous(b.size() + 1);
  std::vector<std::size_t> current(b.size() + 1);
  std::iota(previous.begin(), previous.end(), std::size_t{0});
  for (std::size_t i = 1; i <= a.size(); ++i) {
    current[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      current[j] = std::min({previous[j] + 1, current[j - 1] + 1, substitution});
    }
    std::swap(previous, current);
  }
  return previous[b.size()];
}

}  // namespace detail

inline bool NamePattern::matches(std::string_view name) const {
  switch (kind_) {
    case Kind::name:
      if (text_.empty()) {
        return false;
      }
      if (name == text_) {
        return true;
      }
      // A module path covers everything below it; "a.b." is read as the module path "a.b".
      if (text_.back() == '.') {
        return name.starts_with(text_);
      }
      return name.size() > text_.size() && name.starts_with(text_) && name[text_.size()] == '.';
    case Kind::glob: {
      if (detail::glob_match(text_, name)) {
        return true;
      }
      // ... or a module path above the parameter: "features.?" covers "features.3.weight".
      for (std::size_t dot = name.find('.'); dot != std::string_view::npos; dot = name.find('.', dot + 1)) {
        if (detail::glob_match(text_, name.substr(0, dot))) {
          return true;
        }
      }
      return false;
    }
    case Kind::regex:
      return !text_.empty() && std::regex_match(name.begin(), name.end(), *compiled_);
  }
  return false;
}

namespace detail {

/// One parameter of a model: the tensor once, under its first (Python) name, with every name it
/// is registered under (more than one for tied tensors).
struct ParameterEntry {
  std::string name;
  at::Tensor tensor;
  std::vector<std::string> other_names;  ///< the names of a tied tensor after the first (usually none)
};

/// Every defined parameter of `model`, each tensor once, in Python's `named_parameters()` order
/// and under its Python name: the same list as torchkit::named_parameters_of, plus the other names
/// of tied tensors. Built from one traversal of the module tree (named_parameters_of and a second
/// traversal for the other names would cost twice as much).
template <ModuleLike M>
[[nodiscard]] std::vector<ParameterEntry> parameter_table(const M& model) {
  const auto all = module_of(model).named_parameters(/*recurse=*/true);
  std::vector<ParameterEntry> table;
  table.reserve(all.size());
  std::unordered_map<const void*, std::size_t> index_of;
  index_of.reserve(all.size());
  for (const auto& item : all) {
    if (!item.value().defined()) {
      continue;
    }
    const auto [found, inserted] = index_of.emplace(item.value().unsafeGetTensorImpl(), table.size());
    if (inserted) {
      table.push_back(ParameterEntry{item.key(), item.value(), {}});
    } else {
      auto& entry = table[found->second];
      if (item.key() != entry.name &&
          std::find(entry.other_names.begin(), entry.other_names.end(), item.key()) == entry.other_names.end()) {
        entry.other_names.push_back(item.key());
      }
    }
  }
  return table;
}

/// Whether any name of `entry` matches `pattern`.
[[nodiscard]] inline bool matches(const NamePattern& pattern, const ParameterEntry& entry) {
  return pattern.matches(entry.name) ||
         std::any_of(entry.other_names.begin(), entry.other_names.end(),
                     [&](const std::string& other) { return pattern.matches(other); });
}

/// The distance between what the user typed and a parameter name: the smallest edit distance to
/// the name or to one of the module paths above it (so a mistyped module path finds its module).
[[nodiscard]] inline std::size_t name_distance(std::string_view typed, std::string_view name) {
  std::size_t best = edit_distance(typed, name);
  for (std::size_t dot = name.find('.'); dot != std::string_view::npos; dot = name.find('.', dot + 1)) {
    best = std::min(best, edit_distance(typed, name.substr(0, dot)));
  }
  return best;
}

/// Up to `count` parameter names closest to `typed` (by name_distance; ties keep model order),
/// formatted for a message: `"a.weight", "a.bias", "b.weight"`.
[[nodiscard]] inline std::string closest_names(std::string_view typed, std::span<const ParameterEntry> table,
                                               std::size_t count = 3) {
  if (table.empty()) {
    return "(the model has no parameters)";
  }
  std::vector<std::pair<std::size_t, std::size_t>> ranked;  // (distance, index)
  ranked.reserve(table.size());
  for (std::size_t i = 0; i < table.size(); ++i) {
    std::size_t distance = name_distance(typed, table[i].name);
    for (const auto& other : table[i].other_names) {
      distance = std::min(distance, name_distance(typed, other));
    }
    ranked.emplace_back(distance, i);
  }
  std::stable_sort(ranked.begin(), ranked.end(),
                   [](const auto& left, const auto& right) { return left.first < right.first; });
  std::string result;
  for (std::size_t i = 0; i < std::min(count, ranked.size()); ++i) {
    result += fmt::format("{}\"{}\"", i == 0 ? "" : ", ", table[ranked[i].second].name);
  }
  return result;
}

/// Checks every pattern (non-empty list, no empty pattern, each matches some parameter) and
/// returns, per parameter, whether any pattern selects it. Nothing is changed; throws Error
/// prefixed with `context` (the calling function's name).
[[nodiscard]] inline std::vector<bool> select(std::string_view context, std::span<const NamePattern> patterns,
                                              std::span<const ParameterEntry> table) {
  TORCHKIT_CHECK(!patterns.empty(),
                 "{}: no patterns given; expected parameter names, module paths, globs or torchkit::regex(...), "
                 "e.g. {{\"cnn.VGG_16.convolution1_1\"}} (\"*\" selects every parameter)",
                 context);
  std::vector<bool> selected(table.size(), false);
  for (std::size_t p = 0; p < patterns.size(); ++p) {
    const NamePattern& pattern = patterns[p];
    TORCHKIT_CHECK(!pattern.text().empty(),
                   "{}: pattern {} of {} is empty; expected a parameter name, module path, glob or torchkit::regex(...)",
                   context, p + 1, patterns.size());
    bool any = false;
    for (std::size_t i = 0; i < table.size(); ++i) {
      if (matches(pattern, table[i])) {
        selected[i] = true;
        any = true;
      }
    }
    TORCHKIT_CHECK(any, "{}: pattern {} (pattern {} of {}) matches no parameter of the model ({} parameters); the closest names are {}",
                   context, pattern.to_string(), p + 1, patterns.size(), table.size(),
                   closest_names(pattern.text(), table));
  }
  return selected;
}

/// Patterns from any range of pattern-convertible elements.
template <class R>
[[nodiscard]] std::vector<NamePattern> collect_patterns(R&& patterns) {
  std::vector<NamePattern> result;
  for (auto&& pattern : patterns) {
    result.emplace_back(std::forward<decltype(pattern)>(pattern));
  }
  return result;
}

/// Patterns from plain strings.
[[nodiscard]] inline std::vector<NamePattern> to_patterns(const std::vector<std::string>& texts) {
  return std::vector<NamePattern>(texts.begin(), texts.end());
}

}  // namespace detail
}  // namespace torchkit
// ---- end torchkit/detail/name_pattern.hpp ----

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace torchkit {

/// One parameter's line in a FreezeReport: its name, size and `requires_grad` before and after.
struct ParameterFlag {
  std::string name;                   ///< Python's name (the first one for a tied tensor)
  int64_t numel = 0;                  ///< number of elements
  bool requires_grad_before = false;  ///< the flag before the call
  bool requires_grad = false;         ///< the flag after the call

  /// Whether the call changed this parameter's flag.
  [[nodiscard]] bool changed() const noexcept { return requires_grad_before != requires_grad; }
};

/// Every parameter of a model with its `requires_grad` flag (before and after a freeze call).
///
/// `to_string()` is exactly the tip's listing, one line per parameter:
/// `name: cnn.VGG_16.convolution1_1.weight,\t grad: True` (Python:
/// `print('name: {0},\t grad: {1}'.format(name, value.requires_grad))`). `summary()` gives the
/// counts and what changed.
///
///     auto report = torchkit::freeze(net, {"cnn.VGG_16.convolution1_1"});
///     std::cout << report;             // the listing
///     std::cout << report.summary();   // 8 parameters (...): 6 trainable (...), 2 frozen (...); ...
struct FreezeReport {
  std::vector<ParameterFlag> parameters;  ///< in Python's named_parameters() order, each tensor once

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
  [[nodiscard]] int64_t frozen_elements() const noexcept { return elements(false); }
  /// Elements in the trainable parameters.
  [[nodiscard]] int64_t trainable_elements() const noexcept { return elements(true); }

  /// The tip's listing: `name: <name>,\t grad: True|False`, one line (ending in '\n') per parameter.
  [[nodiscard]] std::string to_string() const {
    std::string text;
    for (const auto& parameter : parameters) {
      text += fmt::format("name: {},\t grad: {}\n", parameter.name, parameter.requires_grad ? "True" : "False");
    }
    return text;
  }

  /// Counts and changes in one line (naming the first 8 changes), e.g.
  /// `8 parameters (1000 elements): 4 trainable (800 elements), 4 frozen (200 elements); 4 changed: a (frozen), ...`.
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
  [[nodiscard]] int64_t elements(bool trainable) const noexcept {
    int64_t result = 0;
    for (const auto& parameter : parameters) {
      result += parameter.requires_grad == trainable ? parameter.numel : 0;
    }
    return result;
  }
};

/// What FreezeByName freezes.
enum class FreezeMode {
  matching,    ///< the matching parameters (as torchkit::freeze)
  all_except,  ///< every parameter but the matching ones, which become trainable (as torchkit::freeze_all_except)
};

namespace detail {

enum class FreezeAction { freeze, unfreeze, freeze_all_except };

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

/// Validates every pattern and every planned change, then sets the flags. Throws Error (prefixed
/// with `context`) before changing anything.
[[nodiscard]] inline FreezeReport set_requires_grad_by_name(std::string_view context,
                                                            std::span<const ParameterEntry> table,
                                                            std::span<const NamePattern> patterns,
                                                            FreezeAction action) {
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
  for (std::size_t i = 0; i < table.size(); ++i) {
    if (report.parameters[i].changed()) {
      table[i].tensor.requires_grad_(report.parameters[i].requires_grad);
    }
  }
  return report;
}

}  // namespace detail

/// Freezes (`requires_grad = false`) every parameter that one of `patterns` selects; the others
/// keep their flag. Python: `for name, p in net.named_parameters(): if name in no_grad:
/// p.requires_grad = False`.
///
/// @param model     a module, module holder or shared_ptr to a module
/// @param patterns  names, module paths, globs or torchkit::regex(...) (see NamePattern)
/// @returns         every parameter's flag before and after
/// @throws Error    for an empty list, an empty pattern, or a pattern that matches no parameter
///                  (the message lists the three closest names); the model is unchanged then.
///
///     const std::vector<std::string> no_grad{"cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution1_1.bias"};
///     auto report = torchkit::freeze(net, no_grad);
///     torchkit::freeze(net, {"cnn.VGG_16.convolution1_2", "*.bias"});
template <ModuleLike M>
FreezeReport freeze(M& model, const std::vector<std::string>& patterns) {
  const auto table = detail::parameter_table(model);
  return detail::set_requires_grad_by_name("freeze", table, detail::to_patterns(patterns), detail::FreezeAction::freeze);
}
/// Freezes the parameters selected by `patterns` (names, module paths, globs, torchkit::regex).
template <ModuleLike M>
FreezeReport freeze(M& model, std::initializer_list<NamePattern> patterns) {
  const auto table = detail::parameter_table(model);
  return detail::set_requires_grad_by_name("freeze", table, std::span(patterns.begin(), patterns.size()),
                                           detail::FreezeAction::freeze);
}
/// Freezes the parameters selected by any range of patterns.
template <ModuleLike M, NamePatternRange R>
FreezeReport freeze(M& model, R&& patterns) {
  const auto table = detail::parameter_table(model);
  return detail::set_requires_grad_by_name("freeze", table, detail::collect_patterns(std::forward<R>(patterns)),
                                           detail::FreezeAction::freeze);
}

/// Makes every parameter that one of `patterns` selects trainable (`requires_grad = true`); the
/// others keep their flag. Python: `p.requires_grad = True` for the chosen names.
///
/// @throws Error as freeze(), and when a selected parameter cannot require gradients (an integer
///         dtype or a non-leaf tensor); the model is unchanged then.
///
///     torchkit::unfreeze(net, {"cnn.VGG_16.convolution1_2"});
template <ModuleLike M>
FreezeReport unfreeze(M& model, const std::vector<std::string>& patterns) {
  const auto table = detail::parameter_table(model);
  return detail::set_requires_grad_by_name("unfreeze", table, detail::to_patterns(patterns),
                                           detail::FreezeAction::unfreeze);
}
/// Makes the parameters selected by `patterns` trainable.
template <ModuleLike M>
FreezeReport unfreeze(M& model, std::initializer_list<NamePattern> patterns) {
  const auto table = detail::parameter_table(model);
  return detail::set_requires_grad_by_name("unfreeze", table, std::span(patterns.begin(), patterns.size()),
                                           detail::FreezeAction::unfreeze);
}
/// Makes the parameters selected by any range of patterns trainable.
template <ModuleLike M, NamePatternRange R>
FreezeReport unfreeze(M& model, R&& patterns) {
  const auto table = detail::parameter_table(model);
  return detail::set_requires_grad_by_name("unfreeze", table, detail::collect_patterns(std::forward<R>(patterns)),
                                           detail::FreezeAction::unfreeze);
}

/// Freezes every parameter except the ones `patterns` select, which are made trainable:
/// afterwards exactly the selected parameters have `requires_grad == true`. This is the tip's
/// loop (`if name in no_grad: False else: True`) seen from the other side, e.g. fine-tuning
/// only the classifier head.
///
/// @throws Error as unfreeze(); the model is unchanged then.
///
///     torchkit::freeze_all_except(net, {"classifier"});
template <ModuleLike M>
FreezeReport freeze_all_except(M& model, const std::vector<std::string>& patterns) {
  const auto table = detail::parameter_table(model);
  return detail::set_requires_grad_by_name("freeze_all_except", table, detail::to_patterns(patterns),
                                           detail::FreezeAction::freeze_all_except);
}
/// Freezes every parameter except the ones `patterns` select.
template <ModuleLike M>
FreezeReport freeze_all_except(M& model, std::initializer_list<NamePattern> patterns) {
  const auto table = detail::parameter_table(model);
  return detail::set_requires_grad_by_name("freeze_all_except", table, std::span(patterns.begin(), patterns.size()),
                                           detail::FreezeAction::freeze_all_except);
}
/// Freezes every parameter except the ones any range of patterns selects.
template <ModuleLike M, NamePatternRange R>
FreezeReport freeze_all_except(M& model, R&& patterns) {
  const auto table = detail::parameter_table(model);
  return detail::set_requires_grad_by_name("freeze_all_except", table,
                                           detail::collect_patterns(std::forward<R>(patterns)),
                                           detail::FreezeAction::freeze_all_except);
}

/// RAII: freezes parameters by name on construction and, on destruction, restores every
/// parameter's `requires_grad` to what it was on construction (also the ones changed by hand
/// in between, and also when an exception unwinds). Non-copyable, non-movable.
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
  template <ModuleLike M>
  FreezeByName(M& model, const std::vector<std::string>& patterns, FreezeMode mode = FreezeMode::matching)
      : FreezeByName(detail::parameter_table(model), detail::to_patterns(patterns), mode) {}
  template <ModuleLike M>
  FreezeByName(M& model, std::initializer_list<NamePattern> patterns, FreezeMode mode = FreezeMode::matching)
      : FreezeByName(detail::parameter_table(model), std::vector<NamePattern>(patterns), mode) {}
  template <ModuleLike M, NamePatternRange R>
  FreezeByName(M& model, R&& patterns, FreezeMode mode = FreezeMode::matching)
      : FreezeByName(detail::parameter_table(model), detail::collect_patterns(std::forward<R>(patterns)), mode) {}

  FreezeByName(const FreezeByName&) = delete;
  FreezeByName& operator=(const FreezeByName&) = delete;
  FreezeByName(FreezeByName&&) = delete;
  FreezeByName& operator=(FreezeByName&&) = delete;

  /// Restores every parameter's flag. Never throws: a flag that can no longer be set (the
  /// tensor's dtype was changed to an integer type in the meantime) is left as it is.
  ~FreezeByName() {
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
  FreezeByName(std::vector<detail::ParameterEntry> table, std::vector<NamePattern> patterns, FreezeMode mode)
      : report_(detail::set_requires_grad_by_name(
            mode == FreezeMode::matching ? "FreezeByName" : "FreezeByName(all_except)", table, patterns,
            mode == FreezeMode::matching ? detail::FreezeAction::freeze : detail::FreezeAction::freeze_all_except)) {
    // set_requires_grad_by_name validated before changing anything; the report has every flag as found.
    saved_.reserve(table.size());
    for (std::size_t i = 0; i < table.size(); ++i) {
      saved_.emplace_back(table[i].tensor, report_.parameters[i].requires_grad_before);
    }
  }

  FreezeReport report_;
  std::vector<std::pair<at::Tensor, bool>> saved_;
};

/// Every parameter's name and `requires_grad`, changing nothing. Its `to_string()` (and
/// `operator<<`) is the tip's listing: Python
/// `for name, value in net.named_parameters(): print('name: {0},\t grad: {1}'.format(name, value.requires_grad))`.
///
///     std::cout << torchkit::requires_grad_report(net);
///     // name: cnn.VGG_16.convolution1_1.weight,	 grad: True
///     // ...
template <ModuleLike M>
[[nodiscard]] FreezeReport requires_grad_report(const M& model) {
  return detail::flags_of(detail::parameter_table(model));
}

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
// ---- end torchkit/freeze.hpp ----
// ---- begin torchkit/param_groups.hpp ----
/// @file param_groups.hpp
/// Tip 9: per-layer learning rates. `ParamGroupBuilder` splits a model's parameters into
/// optimizer parameter groups by name (torchkit::NamePattern: exact name, module path, glob,
/// torchkit::regex), each with its own `lr` / `weight_decay`, everything else inherited from the
/// optimizer's default options — Python's
/// `optim.Adam([{"params": conv1, "lr": 0.01}, {"params": conv2, "lr": 0.001}], weight_decay=1e-3)`.


#include <ATen/core/Tensor.h>
#include <c10/util/Type.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <fmt/format.h>

#include <algorithm>
#include <concepts>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <typeinfo>
#include <utility>
#include <vector>

namespace torchkit {

/// A group's own settings. Options left unset inherit the optimizer's defaults (the tip's
/// "global" settings outside the list); every other option (betas, eps, momentum, ...) always
/// comes from the defaults.
///
///     builder.add({"*convolution1*"}, {.lr = 0.01, .name = "conv1"});
struct GroupOptions {
  // The `{}` initialisers let `{.lr = 0.01}` compile without -Wmissing-field-initializers warnings.
  std::optional<double> lr{}, weight_decay{};
  std::string name{};  ///< shown by describe() and group_names(); defaults to the group's patterns
};

/// Gives every parameter group of `optimizer` exactly the options of the matching group in
/// `groups` (the groups the optimizer was built from, or meant to have), in order.
///
/// Why: from LibTorch 2.14 on, the optimizer constructor and `add_param_group` merge each group's
/// options with the optimizer's defaults *by comparison*: an option equal to its options type's
/// constructor default is taken as "not set" and replaced by the optimizer's default. A group's
/// `weight_decay = 0` then gets the default's decay, and an explicit `lr = 0.01` for RMSprop or
/// Adagrad (their constructor default) gets the optimizer's lr. LibTorch 1.13 and 2.6 keep the
/// group's options as given; calling this there changes nothing.
///
/// Shapes: `groups.size()` must equal the optimizer's group count and each group must hold the
/// same tensors (by identity, in order) as the optimizer's group of that index. Groups without
/// options are skipped (they inherit the defaults on every LibTorch).
///
/// @throws Error when the group counts, a group's tensors or a group's options type differ;
///         then no group is changed.
///
/// PyTorch equivalent: none needed (Python keeps a group's explicit values).
///
///     auto groups = builder.build(defaults);
///     torch::optim::RMSprop optimizer(groups, defaults);
///     torchkit::restore_group_options(optimizer, groups);
inline void restore_group_options(torch::optim::Optimizer& optimizer,
                                  const std::vector<torch::optim::OptimizerParamGroup>& groups) {
  constexpr std::string_view context = "restore_group_options";
  auto& actual = optimizer.param_groups();
  TORCHKIT_CHECK(actual.size() == groups.size(), "{}: the optimizer has {} parameter group{} but {} {} given", context,
                 actual.size(), actual.size() == 1 ? "" : "s", groups.size(), groups.size() == 1 ? "was" : "were");
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const auto& mine = actual[g].params();
    const auto& wanted = groups[g].params();
    TORCHKIT_CHECK(mine.size() == wanted.size(), "{}: group {} of the optimizer has {} tensors, the given group {}",
                   context, g, mine.size(), wanted.size());
    for (std::size_t t = 0; t < mine.size(); ++t) {
      TORCHKIT_CHECK(mine[t].unsafeGetTensorImpl() == wanted[t].unsafeGetTensorImpl(),
                     "{}: tensor {} of group {} is not the tensor the optimizer holds there; pass the groups the "
                     "optimizer was built from, in order",
                     context, t, g);
    }
    if (groups[g].has_options() && actual[g].has_options()) {
      const auto& from = groups[g].options();
      const auto& to = actual[g].options();
      TORCHKIT_CHECK(typeid(from) == typeid(to), "{}: group {} has options of type {} but the optimizer's are {}",
                     context, g, c10::demangle(typeid(from).name()), c10::demangle(typeid(to).name()));
    }
  }
  for (std::size_t g = 0; g < groups.size(); ++g) {
    if (groups[g].has_options()) {
      actual[g].set_options(groups[g].options().clone());
    }
  }
}

/// Builds optimizer parameter groups by parameter name.
///
/// - `add(patterns, options)` declares a group; a parameter joins the FIRST group (in the order
///   given) one of whose patterns matches it.
/// - `rest(options)` declares the group that collects every parameter no other group claims.
///   When nothing is left over, it adds no optimizer group (so the tip's two groups plus `rest()`
///   give Python's two optimizer groups).
/// - `no_weight_decay(patterns)` (e.g. `{"*.bias", "*norm*.weight"}`): every group is split in
///   two consecutive optimizer groups, as common Python recipes do: first the parameters with
///   the group's weight decay, then the matching ones with weight decay 0 (same lr). Both parts
///   are always emitted (one may be empty), so the optimizer groups of `add()` group `i` are
///   `2 i` and `2 i + 1`; without no_weight_decay it is `i`.
/// - Frozen parameters (`requires_grad == false`, read at build time) are left out, as the tip's
///   `filter(lambda p: p.requires_grad, ...)`; `include_frozen()` keeps them. An `add()` group
///   whose every match is frozen is kept, empty, so that the group indices stay as declared.
/// - A tied tensor appears once, and a pattern matches it under any of its names.
///
/// Every check runs in `build()` (and `describe()`, `group_names()`), which throw Error when a
/// pattern is empty or matches no parameter (listing the closest names), when a parameter is
/// claimed by no group and no `rest()` was given (naming it), when a group gets nothing because
/// earlier groups claimed all its matches, when an lr or weight decay is negative or not finite,
/// when `rest()` was given twice, when there are no groups, or when nothing is left to optimize.
///
/// The builder lists the model's parameters (names and tensors) when it is constructed and keeps
/// the tensors alive; after registering or replacing parameters, construct a new builder.
///
///     torchkit::ParamGroupBuilder builder(net);
///     builder.add({"*convolution1*"}, {.lr = 0.01}).add({"*convolution2*"}, {.lr = 0.001}).rest();
///     const auto defaults = torch::optim::AdamOptions(1e-3).weight_decay(1e-3);
///     auto optimizer = builder.make<torch::optim::Adam>(defaults);
///     std::cout << builder.describe(defaults);
class ParamGroupBuilder {
 public:
  /// Reads `model`'s parameters (a module, module holder or shared_ptr to a module).
  template <ModuleLike M>
  explicit ParamGroupBuilder(const M& model) : parameters_(detail::parameter_table(model)) {}

  /// Adds a group of the parameters that `patterns` select (and no earlier group claimed).
  ParamGroupBuilder& add(const std::vector<std::string>& patterns, GroupOptions options = {}) {
    return add_group(detail::to_patterns(patterns), std::move(options));
  }
  /// Adds a group of the parameters that `patterns` select (and no earlier group claimed).
  ParamGroupBuilder& add(std::initializer_list<NamePattern> patterns, GroupOptions options = {}) {
    return add_group(std::vector<NamePattern>(patterns), std::move(options));
  }
  /// Adds a group of the parameters that a range of patterns selects.
  template <NamePatternRange R>
  ParamGroupBuilder& add(R&& patterns, GroupOptions options = {}) {
    return add_group(detail::collect_patterns(std::forward<R>(patterns)), std::move(options));
  }

  /// Adds the group that collects every parameter no `add()` group claims. Without it, such a
  /// parameter is an error in build().
  ParamGroupBuilder& rest(GroupOptions options = {}) {
    groups_.push_back(Group{{}, std::move(options), /*is_rest=*/true});
    return *this;
  }

  /// Gives the parameters that `patterns` select weight decay 0 (e.g. biases and norm weights),
  /// splitting every group in two (see the class comment). May be called more than once.
  ParamGroupBuilder& no_weight_decay(const std::vector<std::string>& patterns) {
    return add_no_weight_decay(detail::to_patterns(patterns));
  }
  /// Gives the parameters that `patterns` select weight decay 0.
  ParamGroupBuilder& no_weight_decay(std::initializer_list<NamePattern> patterns) {
    return add_no_weight_decay(std::vector<NamePattern>(patterns));
  }
  /// Gives the parameters that a range of patterns selects weight decay 0.
  template <NamePatternRange R>
  ParamGroupBuilder& no_weight_decay(R&& patterns) {
    return add_no_weight_decay(detail::collect_patterns(std::forward<R>(patterns)));
  }

  /// Whether frozen parameters (`requires_grad == false`) go into the groups too (default: no).
  ParamGroupBuilder& include_frozen(bool include = true) noexcept {
    include_frozen_ = include;
    return *this;
  }

  /// The parameter groups for a LibTorch optimizer whose options have `lr` and `weight_decay`
  /// (SGD, Adam, AdamW, RMSprop, Adagrad). Each group's options are a copy of `defaults` with
  /// the group's lr / weight decay set where the group gives them. Pass the same `defaults` to
  /// the optimizer, and then call restore_group_options(optimizer, groups): LibTorch 2.14's
  /// optimizer constructor overwrites group options that equal their type's default. make()
  /// does both.
  ///
  /// @throws Error see the class comment; nothing is built then.
  ///
  ///     torch::optim::SGD optimizer(builder.build(torch::optim::SGDOptions(0.1)), torch::optim::SGDOptions(0.1));
  template <OptimizerOptions O>
  [[nodiscard]] std::vector<torch::optim::OptimizerParamGroup> build(const O& defaults) const {
    check_value("ParamGroupBuilder::build", "the defaults' lr", static_cast<double>(defaults.lr()));
    check_value("ParamGroupBuilder::build", "the defaults' weight_decay", static_cast<double>(defaults.weight_decay()));
    const auto planned = plan("ParamGroupBuilder::build");
    std::vector<torch::optim::OptimizerParamGroup> result;
    result.reserve(planned.groups.size());
    for (const auto& group : planned.groups) {
      auto options = std::make_unique<O>(defaults);
      if (group.lr) {
        options->lr(*group.lr);
      }
      if (group.weight_decay) {
        options->weight_decay(*group.weight_decay);
      }
      std::vector<at::Tensor> tensors;
      tensors.reserve(group.members.size());
      for (const std::size_t member : group.members) {
        tensors.push_back(parameters_[member].tensor);
      }
      result.emplace_back(std::move(tensors), std::unique_ptr<torch::optim::OptimizerOptions>(std::move(options)));
    }
    return result;
  }

  /// The optimizer itself, built from build(defaults), with every group's options exactly as
  /// planned on every LibTorch (see restore_group_options for the LibTorch 2.14 trap that the
  /// plain `Optimizer(builder.build(defaults), defaults)` falls into). Prefer it to build().
  ///
  /// @throws Error as build(); nothing is built then.
  ///
  ///     auto optimizer = builder.make<torch::optim::AdamW>(torch::optim::AdamWOptions(1e-3).weight_decay(0.05));
  template <class Optimizer, OptimizerOptions O>
    requires std::derived_from<Optimizer, torch::optim::Optimizer> &&
             std::constructible_from<Optimizer, std::vector<torch::optim::OptimizerParamGroup>, O>
  [[nodiscard]] Optimizer make(const O& defaults) const {
    const auto groups = build(defaults);
    Optimizer optimizer(groups, defaults);
    restore_group_options(optimizer, groups);
    return optimizer;
  }

  /// The names of the optimizer groups build() makes, in its order (for logging per group).
  [[nodiscard]] std::vector<std::string> group_names() const {
    std::vector<std::string> names;
    for (const auto& group : plan("ParamGroupBuilder::group_names").groups) {
      names.push_back(group.name);
    }
    return names;
  }

  /// A printable table of the optimizer groups build() makes: each group's options (unset ones
  /// shown as `default`), then its parameters with their shapes; then the frozen parameters left
  /// out. Throws as build().
  [[nodiscard]] std::string describe() const { return describe_with("ParamGroupBuilder::describe", std::nullopt); }

  /// As describe(), with the values the groups inherit from `defaults` filled in.
  ///
  ///     std::cout << builder.describe(torch::optim::AdamOptions(1e-3).weight_decay(1e-3));
  template <OptimizerOptions O>
  [[nodiscard]] std::string describe(const O& defaults) const {
    check_value("ParamGroupBuilder::describe", "the defaults' lr", static_cast<double>(defaults.lr()));
    check_value("ParamGroupBuilder::describe", "the defaults' weight_decay",
                static_cast<double>(defaults.weight_decay()));
    return describe_with("ParamGroupBuilder::describe",
                         std::pair<double, double>{static_cast<double>(defaults.lr()),
                                                   static_cast<double>(defaults.weight_decay())});
  }

 private:
  struct Group {
    std::vector<NamePattern> patterns;  // empty for rest()
    GroupOptions options;
    bool is_rest = false;
  };

  struct PlannedGroup {
    std::string name;
    std::vector<std::size_t> members;  // indices into parameters_
    std::optional<double> lr, weight_decay;
    bool weight_decay_from_no_weight_decay = false;
  };

  struct Plan {
    std::vector<PlannedGroup> groups;
    std::vector<std::size_t> left_out;  // frozen parameters not in any group
  };

  ParamGroupBuilder& add_group(std::vector<NamePattern> patterns, GroupOptions options) {
    groups_.push_back(Group{std::move(patterns), std::move(options), /*is_rest=*/false});
    return *this;
  }

  ParamGroupBuilder& add_no_weight_decay(std::vector<NamePattern> patterns) {
    no_weight_decay_.push_back(std::move(patterns));
    return *this;
  }

  static void check_value(std::string_view context, std::string_view what, double value) {
    TORCHKIT_CHECK(std::isfinite(value) && value >= 0, "{}: {} is {}; expected a finite value >= 0", context, what,
                   value);
  }

  [[nodiscard]] std::string display_name(std::size_t index) const {
    const Group& group = groups_[index];
    if (!group.options.name.empty()) {
      return group.options.name;
    }
    if (group.is_rest) {
      return "rest";
    }
    std::string name;
    for (const auto& pattern : group.patterns) {
      name += (name.empty() ? "" : ", ") + pattern.to_string();
    }
    return name;
  }

  [[nodiscard]] std::string list_names(const std::vector<std::size_t>& indices, std::size_t limit = 5) const {
    std::string text;
    for (std::size_t i = 0; i < std::min(limit, indices.size()); ++i) {
      text += fmt::format("{}\"{}\"", i == 0 ? "" : ", ", parameters_[indices[i]].name);
    }
    if (indices.size() > limit) {
      text += fmt::format(" and {} more", indices.size() - limit);
    }
    return text;
  }

  /// Checks everything and decides which parameter goes where. Changes nothing.
  [[nodiscard]] Plan plan(std::string_view context) const {
    constexpr std::size_t none = static_cast<std::size_t>(-1);
    TORCHKIT_CHECK(!groups_.empty(),
                   "{}: no groups were declared; call add({{patterns}}, options) for each group and/or rest(options)",
                   context);
    const std::size_t count = parameters_.size();

    // Options, patterns, matches.
    std::size_t rest_index = none;
    std::vector<std::vector<bool>> matched(groups_.size());
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      const Group& group = groups_[g];
      const std::string where = fmt::format("group {} ({})", g, display_name(g));
      if (group.options.lr) {
        check_value(context, fmt::format("the lr of {}", where), *group.options.lr);
      }
      if (group.options.weight_decay) {
        check_value(context, fmt::format("the weight_decay of {}", where), *group.options.weight_decay);
      }
      if (group.is_rest) {
        TORCHKIT_CHECK(rest_index == none,
                       "{}: rest() was given twice (groups {} and {}); one group collects the parameters no other "
                       "group claims",
                       context, rest_index, g);
        rest_index = g;
        continue;
      }
      matched[g] = detail::select(fmt::format("{}: {}", context, where), group.patterns, parameters_);
    }
    std::vector<bool> no_decay(count, false);
    for (const auto& patterns : no_weight_decay_) {
      const auto selected = detail::select(fmt::format("{}: no_weight_decay", context), patterns, parameters_);
      for (std::size_t i = 0; i < count; ++i) {
        no_decay[i] = no_decay[i] || selected[i];
      }
    }

    // Assignment: the first matching group wins; rest() takes the others.
    Plan result;
    std::vector<std::size_t> owner(count, none);
    std::vector<std::size_t> unclaimed;
    std::size_t assigned = 0;
    for (std::size_t i = 0; i < count; ++i) {
      if (!include_frozen_ && !parameters_[i].tensor.requires_grad()) {
        result.left_out.push_back(i);
        continue;
      }
      for (std::size_t g = 0; g < groups_.size() && owner[i] == none; ++g) {
        if (!groups_[g].is_rest && matched[g][i]) {
          owner[i] = g;
        }
      }
      if (owner[i] == none) {
        owner[i] = rest_index;
      }
      if (owner[i] == none) {
        unclaimed.push_back(i);
      } else {
        ++assigned;
      }
    }
    TORCHKIT_CHECK(unclaimed.empty(),
                   "{}: {} {}parameter(s) belong to no group: {}; add a group that matches them, or call rest(options) "
                   "to collect the parameters no group claims",
                   context, unclaimed.size(), include_frozen_ ? "" : "trainable ", list_names(unclaimed));
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      if (groups_[g].is_rest) {
        continue;
      }
      std::vector<std::size_t> taken_earlier;
      bool owns_any = false;
      for (std::size_t i = 0; i < count; ++i) {
        owns_any = owns_any || owner[i] == g;
        if (matched[g][i] && owner[i] != none && owner[i] != g) {
          taken_earlier.push_back(i);
        }
      }
      TORCHKIT_CHECK(owns_any || taken_earlier.empty(),
                     "{}: group {} ({}) gets no parameter: every parameter it matches ({}) was claimed by an earlier "
                     "group, and a parameter joins the first group that matches it; reorder the groups or narrow "
                     "the earlier patterns",
                     context, g, display_name(g), list_names(taken_earlier));
    }
    TORCHKIT_CHECK(count > 0, "{}: nothing to optimize: the model has no parameters", context);
    TORCHKIT_CHECK(assigned > 0,
                   "{}: nothing to optimize: all {} parameters are frozen (requires_grad == false); unfreeze some, "
                   "or call include_frozen() to put frozen parameters into the groups",
                   context, count);

    // The optimizer groups, in the order given; each split in two when no_weight_decay was used.
    // A rest() group that collects nothing adds none (a catch-all with nothing left over).
    const bool split = !no_weight_decay_.empty();
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      PlannedGroup decay{display_name(g), {}, groups_[g].options.lr, groups_[g].options.weight_decay, false};
      PlannedGroup without_decay{display_name(g) + " (no weight decay)", {}, groups_[g].options.lr, 0.0, true};
      for (std::size_t i = 0; i < count; ++i) {
        if (owner[i] == g) {
          (split && no_decay[i] ? without_decay : decay).members.push_back(i);
        }
      }
      if (groups_[g].is_rest && decay.members.empty() && without_decay.members.empty()) {
        continue;
      }
      result.groups.push_back(std::move(decay));
      if (split) {
        result.groups.push_back(std::move(without_decay));
      }
    }
    return result;
  }

  [[nodiscard]] std::string describe_with(std::string_view context,
                                          std::optional<std::pair<double, double>> defaults) const {
    const Plan planned = plan(context);
    const auto value = [&](const std::optional<double>& own, bool forced, bool is_lr) -> std::string {
      if (own) {
        return forced ? fmt::format("{} (no_weight_decay)", *own) : fmt::format("{}", *own);
      }
      if (!defaults) {
        return "default";
      }
      return fmt::format("{} (default)", is_lr ? defaults->first : defaults->second);
    };
    std::size_t width = 0;
    std::size_t total = 0;
    int64_t elements = 0;
    for (const auto& group : planned.groups) {
      for (const std::size_t member : group.members) {
        width = std::max(width, parameters_[member].name.size());
        elements += parameters_[member].tensor.numel();
        ++total;
      }
    }
    std::string text = fmt::format("{} optimizer group{}, {} parameter{} ({} elements){}\n", planned.groups.size(),
                                   planned.groups.size() == 1 ? "" : "s", total, total == 1 ? "" : "s", elements,
                                   include_frozen_ ? ", frozen parameters included" : "");
    for (std::size_t index = 0; index < planned.groups.size(); ++index) {
      const PlannedGroup& group = planned.groups[index];
      int64_t group_elements = 0;
      for (const std::size_t member : group.members) {
        group_elements += parameters_[member].tensor.numel();
      }
      text += fmt::format("group {}: {}  lr={}  weight_decay={}  {} parameter{} ({} elements)\n", index, group.name,
                          value(group.lr, false, true),
                          value(group.weight_decay, group.weight_decay_from_no_weight_decay, false),
                          group.members.size(), group.members.size() == 1 ? "" : "s", group_elements);
      for (const std::size_t member : group.members) {
        std::string shape;
        for (const int64_t size : parameters_[member].tensor.sizes()) {
          shape += fmt::format("{}{}", shape.empty() ? "" : ", ", size);
        }
        text += fmt::format("    {:<{}}  [{}]\n", parameters_[member].name, width, shape);
      }
    }
    if (!planned.left_out.empty()) {
      text += fmt::format("left out (frozen): {}\n", list_names(planned.left_out, planned.left_out.size()));
    }
    return text;
  }

  std::vector<detail::ParameterEntry> parameters_;
  std::vector<Group> groups_;
  std::vector<std::vector<NamePattern>> no_weight_decay_;
  bool include_frozen_ = false;
};

}  // namespace torchkit
// ---- end torchkit/param_groups.hpp ----
// ---- begin torchkit/distributed.hpp ----
/// @file distributed.hpp
/// c10d helpers: the torchrun environment, a TCP store and a Gloo process group made from it,
/// and global-norm gradient clipping over gradients sharded across ranks (FSDP / ZeRO style:
/// each rank holds some of the gradients; the norm is that of all of them together).
///
///     auto group = torchkit::gloo_group_from_environment();   // under torchrun
///     loss.backward();
///     torchkit::clip_grad_norm_(my_shard_of_parameters, 1.0, 2.0, *group);
///
/// The c10d headers ship with LibTorch. Gloo's own headers do not always: the Gloo helpers
/// exist where `<gloo/algorithm.h>` is found (Debian: libgloo-dev) or TORCHKIT_WITH_GLOO is
/// defined to 1; clipping works with any group that has `allreduce` (Gloo, NCCL, MPI, yours).


#include <ATen/ATen.h>
#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#if __has_include(<torch/csrc/distributed/c10d/ProcessGroup.hpp>) && __has_include(<torch/csrc/distributed/c10d/TCPStore.hpp>)
#define TORCHKIT_HAS_C10D 1
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
// ---- begin torchkit/detail/tcp_store.hpp ----
/// @file detail/tcp_store.hpp
/// Creating a c10d::TCPStore on every LibTorch: the libuv server switch.
///
/// LibTorch 2.2 added `TCPStoreOptions::useLibUV` and 2.4 made it default to true, but a LibTorch
/// may be built without libuv (Debian's 2.6 and 2.14 are): then the constructor refuses with
/// "use_libuv was requested but PyTorch was build[sic, 2.6] without libuv support". The check it uses,
/// c10d::detail::is_libuv_tcpstore_backend_available(), is not exported from libtorch_cpu, so the
/// store is asked for libuv and, when the constructor refuses that before it touches the network,
/// made again with the classic server. As Python's rendezvous does, USE_LIBUV=0 in the
/// environment asks for the classic server from the start. LibTorch 1.13 has no such option.


#if __has_include(<torch/csrc/distributed/c10d/TCPStore.hpp>)
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <c10/util/Exception.h>

#include <atomic>
#include <string>
#include <string_view>

namespace torchkit::detail {

template <class Options>
concept HasLibUVOption = requires(Options& options) { options.useLibUV = false; };

/// True once a store was refused libuv by this LibTorch: later stores skip the first try.
inline std::atomic<bool>& libuv_unavailable() {
  static std::atomic<bool> unavailable{false};
  return unavailable;
}

template <class Options>
[[nodiscard]] c10::intrusive_ptr<c10d::Store> make_tcp_store(const std::string& host, Options options) {
  if constexpr (HasLibUVOption<Options>) {
    const auto use_libuv = get_environment("USE_LIBUV");
    if ((use_libuv && *use_libuv == "0") || libuv_unavailable().load()) {
      options.useLibUV = false;
    }
    if (options.useLibUV) {
      try {
        return c10::make_intrusive<c10d::TCPStore>(host, options);
      } catch (const c10::Error& error) {
        if (std::string_view(error.what()).find("without libuv") == std::string_view::npos) {
          throw;
        }
        libuv_unavailable().store(true);
        options.useLibUV = false;
      }
    }
  }
  return c10::make_intrusive<c10d::TCPStore>(host, options);
}

}  // namespace torchkit::detail
#endif
// ---- end torchkit/detail/tcp_store.hpp ----
#else
#define TORCHKIT_HAS_C10D 0
#endif

#ifndef TORCHKIT_WITH_GLOO
#if TORCHKIT_HAS_C10D && __has_include(<gloo/algorithm.h>) && \
    __has_include(<torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>)
#define TORCHKIT_WITH_GLOO 1
#else
#define TORCHKIT_WITH_GLOO 0
#endif
#endif

#if TORCHKIT_WITH_GLOO
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1  // ProcessGroupGloo.hpp declares its class only under this macro
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

namespace torchkit {

/// Where this process sits in a torchrun launch: the variables torchrun sets.
///
///     const auto where = torchkit::torchrun_environment();
///     if (where.rank == 0) std::cout << where << "\n";
struct TorchrunEnvironment {
  int rank = 0;              ///< RANK: this process among all of them
  int world_size = 1;        ///< WORLD_SIZE
  int local_rank = 0;        ///< LOCAL_RANK: this process on its node (default: RANK)
  int local_world_size = 1;  ///< LOCAL_WORLD_SIZE (default: WORLD_SIZE)
  std::string master_addr;   ///< MASTER_ADDR: where rank 0's store listens
  int master_port = 0;       ///< MASTER_PORT

  /// `rank 1 of 4 (local 1 of 4), master 10.0.0.1:29500`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("rank {} of {} (local {} of {}), master {}:{}", rank, world_size, local_rank, local_world_size,
                       master_addr, master_port);
  }
  friend std::ostream& operator<<(std::ostream& out, const TorchrunEnvironment& environment) {
    return out << environment.to_string();
  }
};

namespace detail::distributed {

using Lookup = std::function<std::optional<std::string>(std::string_view)>;

[[nodiscard]] inline std::optional<std::string> from_process_environment(std::string_view name) {
  const char* value = std::getenv(std::string(name).c_str());
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

[[nodiscard]] inline int parse_integer(const Lookup& lookup, std::string_view name, std::optional<int> fallback,
                                       int minimum, int maximum) {
  const auto text = lookup(name);
  if (!text) {
    TORCHKIT_CHECK(fallback.has_value(),
                   "torchrun_environment: {} is not set; start the program with torchrun, or set RANK, WORLD_SIZE, "
                   "MASTER_ADDR and MASTER_PORT",
                   name);
    return *fallback;
  }
  int value = 0;
  const char* end = text->data() + text->size();
  const auto [last, error] = std::from_chars(text->data(), end, value);
  TORCHKIT_CHECK(error == std::errc() && last == end && !text->empty() && value >= minimum && value <= maximum,
                 "torchrun_environment: {}='{}' is not an integer in [{}, {}]", name, *text, minimum, maximum);
  return value;
}

}  // namespace detail::distributed

/// Reads torchrun's variables through `lookup` (name -> value, nullopt when unset); the
/// process environment by default. PyTorch: what `init_process_group("env://")` reads.
///
/// @throws torchkit::Error when RANK, WORLD_SIZE, MASTER_ADDR or MASTER_PORT is missing, a
///         value is not an integer in range, or RANK >= WORLD_SIZE (the message names it).
///
///     const auto where = torchkit::torchrun_environment();
[[nodiscard]] inline TorchrunEnvironment torchrun_environment(
    const detail::distributed::Lookup& lookup = detail::distributed::from_process_environment) {
  using detail::distributed::parse_integer;
  constexpr int most = std::numeric_limits<int>::max();
  TorchrunEnvironment environment;
  environment.world_size = parse_integer(lookup, "WORLD_SIZE", std::nullopt, 1, most);
  environment.rank = parse_integer(lookup, "RANK", std::nullopt, 0, most);
  TORCHKIT_CHECK(environment.rank < environment.world_size,
                 "torchrun_environment: RANK={} is not below WORLD_SIZE={}", environment.rank, environment.world_size);
  environment.local_world_size = parse_integer(lookup, "LOCAL_WORLD_SIZE", environment.world_size, 1, most);
  environment.local_rank = parse_integer(lookup, "LOCAL_RANK", environment.rank, 0, most);
  TORCHKIT_CHECK(environment.local_rank < environment.local_world_size,
                 "torchrun_environment: LOCAL_RANK={} is not below LOCAL_WORLD_SIZE={}", environment.local_rank,
                 environment.local_world_size);
  const auto address = lookup("MASTER_ADDR");
  TORCHKIT_CHECK(address.has_value() && !address->empty(),
                 "torchrun_environment: MASTER_ADDR is {}; start the program with torchrun, or set it to rank 0's "
                 "host",
                 address ? "empty" : "not set");
  environment.master_addr = *address;
  environment.master_port = parse_integer(lookup, "MASTER_PORT", std::nullopt, 1, 65535);
  return environment;
}

#if TORCHKIT_HAS_C10D

/// Anything clip_grad_norm_ can reduce over: a c10d::ProcessGroup (LibTorch 1.13), a
/// c10d::Backend such as ProcessGroupGloo or ProcessGroupNCCL (2.x), or a class of yours with
/// the same `allreduce`, `getRank` and `getSize`.
template <class G>
concept CollectiveGroup =
    requires(G& group, std::vector<at::Tensor>& tensors) {
      group.allreduce(tensors, c10d::AllreduceOptions{})->wait();
      { group.getRank() } -> std::convertible_to<int>;
      { group.getSize() } -> std::convertible_to<int>;
    };

/// The c10d TCPStore of a torchrun launch: rank 0 hosts it at MASTER_ADDR:MASTER_PORT and
/// waits for the other ranks; every rank connects. PyTorch: the `env://` rendezvous. Uses
/// the libuv server where LibTorch has one and the classic server where it was built without
/// libuv (Debian's 2.x) or USE_LIBUV=0 is set.
///
///     auto store = torchkit::store_from_environment(torchkit::torchrun_environment());
[[nodiscard]] inline c10::intrusive_ptr<c10d::Store> store_from_environment(
    const TorchrunEnvironment& environment, std::chrono::milliseconds timeout = std::chrono::minutes(30)) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(environment.master_port);
  options.isServer = environment.rank == 0;
  options.numWorkers = static_cast<std::size_t>(environment.world_size);
  options.waitWorkers = true;
  options.timeout = timeout;
  return detail::make_tcp_store(environment.master_addr, options);
}

#if TORCHKIT_WITH_GLOO
/// A Gloo process group (CPU tensors) of `world_size` ranks meeting through `store`; this
/// process is `rank`. A c10d::ProcessGroup in LibTorch 1.13, a c10d::Backend in 2.x; both work
/// with clip_grad_norm_. PyTorch: `dist.new_group(backend="gloo")`.
///
/// @throws torchkit::Error for a null store, world_size < 1, rank outside [0, world_size).
///
///     auto store = c10::make_intrusive<c10d::HashStore>();   // threads of one process
///     auto group = torchkit::make_gloo_group(store, rank, 4);
[[nodiscard]] inline c10::intrusive_ptr<c10d::ProcessGroupGloo> make_gloo_group(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int world_size,
    std::chrono::milliseconds timeout = std::chrono::minutes(30)) {
  TORCHKIT_CHECK(store, "make_gloo_group: the store is null");
  TORCHKIT_CHECK(world_size >= 1, "make_gloo_group: world_size must be >= 1, got {}", world_size);
  TORCHKIT_CHECK(rank >= 0 && rank < world_size, "make_gloo_group: rank {} is outside [0, {})", rank, world_size);
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
}

/// The Gloo process group of a torchrun launch: torchrun_environment(), its TCP store, and a
/// Gloo group over it. PyTorch: `dist.init_process_group("gloo")`.
///
///     auto group = torchkit::gloo_group_from_environment();
///     torchkit::clip_grad_norm_(shard, 1.0, 2.0, *group);
[[nodiscard]] inline c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo_group_from_environment(
    std::chrono::milliseconds timeout = std::chrono::minutes(30)) {
  const auto environment = torchrun_environment();
  return make_gloo_group(store_from_environment(environment, timeout), environment.rank, environment.world_size,
                         timeout);
}
#endif  // TORCHKIT_WITH_GLOO

namespace detail::clip {

/// The global total norm over every rank's gradients, and the clip with it.
template <CollectiveGroup G>
at::Tensor distributed_norm_and_clip(const Collected& collected, double p, std::optional<double> max_norm,
                                     const ClipOptions& options, G& group, std::string_view function) {
  const at::NoGradGuard no_grad;
  const NormKind kind = norm_kind_of(p);
  std::optional<FastPass> pass;
  std::vector<at::Tensor> reference_norms;
  at::Tensor local;
  if (collected.gradients.empty()) {
    local = at::scalar_tensor(0.0, at::kFloat);
  } else if (options.foreach) {
    pass.emplace(collected, p);
    local = pass->total_norm();
  } else {
    local = reference_norms_and_total(collected, p, reference_norms);
  }
  const at::ScalarType dtype = local.scalar_type();
  // Each rank's share of the total, in double: |local|^p summed (p = 0: the count of
  // gradients with a non-zero element; inf: the largest, NaN kept aside since a max drops it).
  at::Tensor share = local.to(at::kDouble).reshape({1});
  c10d::AllreduceOptions reduce;
  if (kind == NormKind::infinity) {
    share = at::cat({at::nan_to_num(share, 0.0), share.isnan().to(at::kDouble)});
    reduce.reduceOp = c10d::ReduceOp::MAX;
  } else {
    if (kind == NormKind::two) share = share * share;
    if (kind == NormKind::general) share = share.pow(p);
    reduce.reduceOp = c10d::ReduceOp::SUM;
  }
  std::vector<at::Tensor> tensors{share.contiguous()};
  group.allreduce(tensors, reduce)->wait();
  const at::Tensor& reduced = tensors.front();
  at::Tensor total;
  if (kind == NormKind::infinity) {
    total = at::where(reduced[1] > 0, at::full({}, std::numeric_limits<double>::quiet_NaN(), reduced.options()),
                      reduced[0]);
  } else {
    total = reduced[0];
    if (kind == NormKind::two) total = total.sqrt();
    if (kind == NormKind::general) total = total.pow(1.0 / p);
  }
  total = total.to(dtype);
  if (options.error_if_nonfinite) {
    const double value = total.item<double>();
    if (!std::isfinite(value)) {
      std::optional<std::size_t> first;
      if (pass) {
        first = pass->first_nonfinite();
      } else {
        for (std::size_t k = 0; k < reference_norms.size() && !first; ++k) {
          if (!std::isfinite(reference_norms[k].item<double>())) first = k;
        }
      }
      if (!first) {
        fail("{}: the global total norm of order {} of the gradients is {} (non-finite), so they cannot be "
             "clipped; no gradient on this rank ({} of {}) is non-finite, another rank's is; no gradient was "
             "changed. Pass error_if_nonfinite = false to scale them by the non-finite norm anyway, as PyTorch does",
             function, p, std::isnan(value) ? std::string("nan") : fmt::format("{}", value), group.getRank(),
             group.getSize());
      }
      fail_nonfinite(collected, p, value, first, dtype,
                     fmt::format("{} (rank {} of {}, global norm)", function, group.getRank(), group.getSize()));
    }
  }
  if (max_norm && !collected.gradients.empty()) {
    const at::Tensor coefficient = clip_coefficient(total, *max_norm);
    if (pass) {
      pass->scale(coefficient);
    } else {
      for (const auto& gradient : collected.gradients) {
        gradient.grad->mul_(coefficient.to(gradient.grad->device()));
      }
    }
  }
  return total;
}

}  // namespace detail::clip

/// Global-norm clipping of gradients sharded across the ranks of `group`: every rank passes
/// the parameters whose gradients it holds; the total norm is that of all ranks' gradients
/// together (one allreduce of one number), and every rank scales its own by the same
/// coefficient. With one rank it equals clip_grad_norm_ (to rounding). PyTorch: FSDP's
/// `clip_grad_norm_`.
///
/// Every rank must call it (it is a collective). Bad arguments are checked on each rank before
/// the allreduce; pass the same max_norm and norm_type everywhere. The reduction runs on the
/// first local gradient's device (CPU for a rank with none): use a group for that device.
///
/// @returns the global total norm before clipping, a 0-dim tensor of the local gradients'
///          promoted dtype (float where a rank has none), on the reduction's device.
/// @throws torchkit::Error as clip_grad_norm_; with `error_if_nonfinite` on every rank, naming
///         this rank's first non-finite gradient or saying that another rank holds it.
///
///     auto group = torchkit::gloo_group_from_environment();
///     torchkit::clip_grad_norm_(model, 1.0, 2.0, *group);
template <ParameterSource P, CollectiveGroup G>
at::Tensor clip_grad_norm_(P&& params, double max_norm, double norm_type, G& group, ClipOptions options = {}) {
  constexpr std::string_view function = "clip_grad_norm_";
  detail::clip::check_max_norm(max_norm, function);
  detail::clip::check_norm_type(norm_type, function);
  const auto collected = detail::clip::collect(std::forward<P>(params), function, /*mutating=*/true);
  return detail::clip::distributed_norm_and_clip(collected, norm_type, max_norm, options, group, function);
}

/// clip_grad_norm_ with the group held by pointer, as the helpers above return it.
template <ParameterSource P, CollectiveGroup G>
at::Tensor clip_grad_norm_(P&& params, double max_norm, double norm_type, const c10::intrusive_ptr<G>& group,
                           ClipOptions options = {}) {
  TORCHKIT_CHECK(group, "clip_grad_norm_: the process group is null");
  return clip_grad_norm_(std::forward<P>(params), max_norm, norm_type, *group, options);
}

/// The global total norm of gradients sharded across the ranks of `group`, without clipping.
///
///     const double norm = torchkit::grad_norm(shard, 2.0, *group).item<double>();
template <ParameterSource P, CollectiveGroup G>
[[nodiscard]] at::Tensor grad_norm(P&& params, double norm_type, G& group, ClipOptions options = {}) {
  constexpr std::string_view function = "grad_norm";
  detail::clip::check_norm_type(norm_type, function);
  const auto collected = detail::clip::collect(std::forward<P>(params), function, /*mutating=*/false);
  return detail::clip::distributed_norm_and_clip(collected, norm_type, std::nullopt, options, group, function);
}

#endif  // TORCHKIT_HAS_C10D

}  // namespace torchkit
// ---- end torchkit/distributed.hpp ----
// ---- begin torchkit/format.hpp ----
/// @file format.hpp
/// {fmt} support: every printable torchkit type formats with `fmt::format("{}", value)`, and
/// tensor shapes format as Python prints them.
///
///     fmt::print("{}\n", torchkit::summary(model, {3, 224, 224}));
///     fmt::print("{}\n", torchkit::requires_grad_report(model));
///     fmt::print("input {}\n", torchkit::Shape(batch.sizes()));      // input [1, 3, 224, 224]
///
/// A printable type's text is its `to_string()`; the string format spec applies to it, so
/// `{:>40}` pads a short text such as a MemoryStats line.


#include <c10/util/ArrayRef.h>
#include <fmt/format.h>

#include <concepts>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace torchkit {

/// A tensor shape (or any list of sizes) that formats as Python prints a `torch.Size` list:
/// `[2, 3, 224, 224]`. It refers to the sizes it was given; keep those alive while formatting.
///
///     fmt::print("{}", torchkit::Shape(tensor.sizes()));   // [2, 3]
struct Shape {
  c10::IntArrayRef sizes;
  explicit Shape(c10::IntArrayRef sizes_to_print) noexcept : sizes(sizes_to_print) {}
  [[nodiscard]] std::string to_string() const { return detail::shape_string(sizes); }
};

namespace detail {

/// True for the torchkit types that format through their `to_string()`.
template <class T>
inline constexpr bool formats_with_to_string =
    std::same_as<T, Shape> || std::same_as<T, Summary> || std::same_as<T, FreezeReport> ||
    std::same_as<T, NamePattern> || std::same_as<T, MemoryStats> || std::same_as<T, ClipGrad> ||
    std::same_as<T, OneHot> || std::same_as<T, lr::ReduceLROnPlateau> || std::derived_from<T, lr::Scheduler>;

}  // namespace detail
}  // namespace torchkit

/// Formats Summary, FreezeReport, NamePattern, MemoryStats, ClipGrad, OneHot, every
/// scheduler of torchkit::lr and torchkit::Shape with their `to_string()`.
template <class T>
  requires torchkit::detail::formats_with_to_string<T>
struct fmt::formatter<T> : fmt::formatter<std::string_view> {
  template <class FormatContext>
  auto format(const T& value, FormatContext& context) const -> decltype(context.out()) {
    const std::string text = value.to_string();
    return fmt::formatter<std::string_view>::format(std::string_view(text), context);
  }
};
// ---- end torchkit/format.hpp ----

#if defined(TORCHKIT_WITH_OPENCV) && TORCHKIT_WITH_OPENCV
// ---- begin torchkit/opencv.hpp ----
/// @file opencv.hpp
/// tip 4  cv::Mat adapters: image_to_batch straight from a `cv::Mat` (as `cv::imread` returns it),
/// as_tensor (a Mat's pixels as a tensor, no copy) and to_mat (a tensor back to a Mat).
///
/// The only torchkit header that needs OpenCV (core). Include it explicitly where OpenCV is
/// available (or define TORCHKIT_WITH_OPENCV=1 before including torchkit.hpp).
///
///     cv::Mat bgr = cv::imread("cat.png");                 // [h, w, c] BGR uint8
///     auto input = torchkit::image_to_batch(bgr, {.bgr_to_rgb = true});  // [1, c, h, w] float


#include <ATen/ATen.h>
#include <opencv2/core.hpp>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace torchkit {

/// How to_mat reads a 3-d tensor: `[H, W, C]`, `[C, H, W]`, or `Auto` (decided by which end
/// dimension is a channel count of 1, 3 or 4; an error when both or neither are).
enum class ImageLayout { Auto, HWC, CHW };

namespace detail {

/// The tensor dtype of an OpenCV depth, or Undefined where there is none.
inline at::ScalarType dtype_of_cv_depth(int depth) {
  switch (depth) {
    case CV_8U: return at::kByte;
    case CV_8S: return at::kChar;
    case CV_16S: return at::kShort;
    case CV_32S: return at::kInt;
    case CV_32F: return at::kFloat;
    case CV_64F: return at::kDouble;
    case CV_16F: return at::kHalf;
    default: return at::ScalarType::Undefined;
  }
}

/// The Mat's pixels as a `[rows, cols, channels]` tensor with the Mat's strides (any step, so a
/// ROI too). No copy and no ownership: the Mat's data must outlive the tensor.
inline at::Tensor mat_view(std::string_view function, const cv::Mat& mat) {
  TORCHKIT_CHECK(!mat.empty(), "{}: the Mat is empty ({}x{}, type {}); expected an image", function,
                 mat.rows, mat.cols, cv::typeToString(mat.type()));
  TORCHKIT_CHECK(mat.dims == 2, "{}: the Mat has {} dimensions; expected a 2-d image Mat", function, mat.dims);
  const at::ScalarType dtype = dtype_of_cv_depth(mat.depth());
  TORCHKIT_CHECK(dtype != at::ScalarType::Undefined, "{}: the Mat's type {} has no tensor dtype", function,
                 cv::typeToString(mat.type()));
  const auto element = static_cast<int64_t>(mat.elemSize1());
  const auto row_step = static_cast<int64_t>(mat.step[0]);
  TORCHKIT_CHECK(row_step % element == 0,
                 "{}: the Mat's row step of {} bytes is not a multiple of its element size {}", function,
                 row_step, element);
  const int64_t channels = mat.channels();
  return at::from_blob(mat.data, {mat.rows, mat.cols, channels}, {row_step / element, channels, 1},
                       at::TensorOptions().dtype(dtype));
}

/// Checks what image_to_batch accepts, with OpenCV's names for the types.
inline void check_image_mat(std::string_view function, const cv::Mat& mat, std::string_view which) {
  TORCHKIT_CHECK(!mat.empty(), "{}: {} is empty ({}x{}); expected an image", function, which, mat.rows, mat.cols);
  TORCHKIT_CHECK(mat.depth() == CV_8U || mat.depth() == CV_32F,
                 "{}: {} has type {}; expected CV_8U or CV_32F pixels (CV_8UC3, CV_32FC3, ...)", function,
                 which, cv::typeToString(mat.type()));
  TORCHKIT_CHECK(mat.channels() == 1 || mat.channels() == 3 || mat.channels() == 4,
                 "{}: {} has {} channels (type {}); expected 1, 3 or 4", function, which, mat.channels(),
                 cv::typeToString(mat.type()));
}

inline int cv_depth_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kByte:
    case at::kBool: return CV_8U;
    case at::kChar: return CV_8S;
    case at::kShort: return CV_16S;
    case at::kInt: return CV_32S;
    case at::kDouble: return CV_64F;
    case at::kFloat:
    case at::kHalf:
    case at::kBFloat16: return CV_32F;
    default: return -1;
  }
}

}  // namespace detail

/// A Mat's pixels as an `[H, W, C]` tensor that shares the Mat's memory (no copy, any step, so a
/// ROI works) and keeps the Mat's buffer alive as long as the tensor lives. Like Python's
/// `torch.from_numpy(cv2.imread(path))`.
///
/// @throws Error for an empty Mat, a Mat of more than 2 dimensions, or a depth without a tensor
///         dtype (CV_16U).
///
///     cv::Mat bgr = cv::imread("cat.png");
///     at::Tensor hwc = torchkit::as_tensor(bgr);  // [h, w, 3] uint8, same memory
[[nodiscard]] inline at::Tensor as_tensor(const cv::Mat& mat) {
  const at::Tensor view = detail::mat_view("as_tensor", mat);
  auto owner = std::make_shared<cv::Mat>(mat);  // shares (and so keeps) the Mat's buffer
  return at::from_blob(
      mat.data, view.sizes(), view.strides(), [owner](void*) {}, view.options());
}

/// image_to_batch for a `cv::Mat` (CV_8U or CV_32F, 1, 3 or 4 channels, any step): the Mat's
/// pixels are read in place by the fused pass, without a copy of the Mat first.
/// OpenCV's nearest equivalent is `cv::dnn::blobFromImage(mat, scale, {}, mean, swapRB)`, which
/// has no per-channel std and makes several passes.
///
/// @throws Error for an empty Mat, another depth or channel count, and everything the tensor
///         image_to_batch rejects.
///
///     cv::Mat bgr = cv::imread("cat.png");
///     auto input = torchkit::image_to_batch(bgr(cv::Rect(10, 10, 224, 224)),  // a ROI, no copy
///                                           {.bgr_to_rgb = true, .mean = {0.485, 0.456, 0.406},
///                                            .std = {0.229, 0.224, 0.225}});
[[nodiscard]] inline at::Tensor image_to_batch(const cv::Mat& image, const ImageOptions& options = {}) {
  detail::check_image_mat("image_to_batch", image, "the Mat");
  const at::Tensor view = detail::mat_view("image_to_batch", image);
  return detail::images_to_batch_impl("image_to_batch", std::span<const at::Tensor>(&view, 1), options);
}

/// images_to_batch for Mats of one size and channel count: `[N, C, H, W]`, each Mat read in place.
/// OpenCV's nearest equivalent is `cv::dnn::blobFromImages`.
///
///     std::vector<cv::Mat> frames = ...;
///     auto batch = torchkit::images_to_batch(std::span<const cv::Mat>(frames), {.bgr_to_rgb = true});
[[nodiscard]] inline at::Tensor images_to_batch(std::span<const cv::Mat> images, const ImageOptions& options = {}) {
  std::vector<at::Tensor> views;
  views.reserve(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) {
    detail::check_image_mat("images_to_batch", images[i], fmt::format("Mat {}", i));
    views.push_back(detail::mat_view("images_to_batch", images[i]));
  }
  return detail::images_to_batch_impl("images_to_batch", views, options);
}

/// images_to_batch for a `std::vector<cv::Mat>`.
[[nodiscard]] inline at::Tensor images_to_batch(const std::vector<cv::Mat>& images, const ImageOptions& options = {}) {
  return images_to_batch(std::span<const cv::Mat>(images), options);
}

/// A tensor image back to a new `cv::Mat` (a copy with its own buffer, continuous), values
/// unchanged (no de-normalisation, no channel swap).
///
/// @param chw_or_hwc  `[H, W, C]`, `[C, H, W]`, a batch of one `[1, C, H, W]` (as image_to_batch
///                    returns), or `[H, W]`; on any device (a GPU tensor is copied to the host,
///                    which waits for it).
/// @param layout      how to read a 3-d tensor; `Auto` looks for the channel count (1, 3 or 4) at
///                    the end, then at the front, and throws when both ends could be channels.
/// @returns CV_8U for uint8 and bool, CV_8S, CV_16S, CV_32S, CV_64F for int8, int16, int32,
///          double, and CV_32F for float, half and bfloat16; as many channels as the tensor has.
/// @throws Error for an undefined or empty tensor, a batch of more than one image, an ambiguous
///         or unsupported shape, more than CV_CN_MAX channels, or an int64 tensor.
///
///     cv::Mat shown = torchkit::to_mat(batch.mul(255).clamp(0, 255).to(at::kByte));
[[nodiscard]] inline cv::Mat to_mat(const at::Tensor& chw_or_hwc, ImageLayout layout = ImageLayout::Auto) {
  TORCHKIT_CHECK(chw_or_hwc.defined(), "to_mat: the tensor is undefined");
  at::Tensor image = chw_or_hwc;
  const std::string shape = detail::shape_string(image.sizes());
  const auto is_channel_count = [](int64_t size) { return size == 1 || size == 3 || size == 4; };
  if (image.dim() == 4) {
    TORCHKIT_CHECK(image.size(0) == 1,
                   "to_mat: the tensor is a batch of {} images (shape {}); expected one image (take batch[i])",
                   image.size(0), shape);
    image = image.select(0, 0);
    if (layout == ImageLayout::Auto) {
      layout = ImageLayout::CHW;  // a batch is [N, C, H, W]
    }
  } else if (image.dim() == 2) {
    TORCHKIT_CHECK(layout != ImageLayout::CHW, "to_mat: a 2-d tensor (shape {}) cannot be [C, H, W]", shape);
    image = image.unsqueeze(-1);
    layout = ImageLayout::HWC;
  }
  TORCHKIT_CHECK(image.dim() == 3,
                 "to_mat: the tensor has shape {}; expected an image [H, W, C], [C, H, W], [1, C, H, W] or [H, W]",
                 shape);
  if (layout == ImageLayout::Auto) {
    const bool channels_last = is_channel_count(image.size(2));
    const bool channels_first = is_channel_count(image.size(0));
    TORCHKIT_CHECK(channels_last != channels_first,
                   "to_mat: cannot tell the channels of shape {}: {}; pass ImageLayout::HWC or ImageLayout::CHW",
                   shape,
                   channels_last ? "both [H, W, C] and [C, H, W] fit"
                                 : "neither end is a channel count of 1, 3 or 4");
    layout = channels_last ? ImageLayout::HWC : ImageLayout::CHW;
  }
  if (layout == ImageLayout::CHW) {
    image = image.permute({1, 2, 0});
  }
  const int64_t height = image.size(0);
  const int64_t width = image.size(1);
  const int64_t channels = image.size(2);
  TORCHKIT_CHECK(height > 0 && width > 0 && channels > 0, "to_mat: the tensor is empty (shape {})", shape);
  TORCHKIT_CHECK(channels <= CV_CN_MAX, "to_mat: {} channels (shape {}) is more than OpenCV's {}", channels,
                 shape, CV_CN_MAX);
  const int depth = detail::cv_depth_of(image.scalar_type());
  TORCHKIT_CHECK(depth >= 0,
                 "to_mat: dtype {} has no OpenCV depth; expected uint8, int8, int16, int32, float, "
                 "double, half, bfloat16 or bool",
                 std::string(c10::toString(image.scalar_type())));
  TORCHKIT_CHECK(height <= INT32_MAX && width <= INT32_MAX, "to_mat: shape {} is too large for a cv::Mat", shape);

  cv::Mat mat(static_cast<int>(height), static_cast<int>(width), CV_MAKETYPE(depth, static_cast<int>(channels)));
  const at::Tensor destination = detail::mat_view("to_mat", mat);
  // One copy: from any device, any strides, converting half/bfloat16 to float.
  destination.copy_(image.detach());
  return mat;
}

}  // namespace torchkit
// ---- end torchkit/opencv.hpp ----
#endif
// ---- end torchkit/torchkit.hpp ----
