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
///
/// The three TORCHKIT_VERSION_* macros below are the one place the version number is written.
/// The copies the packaging tools need (CMakeLists.txt's `project(VERSION)`,
/// ports/torchkit/vcpkg.json, conanfile.py) are checked against them by the CTest test
/// `version_consistent` (tests/packaging/check_version.py).

#include <string_view>

/// The major version number (X of X.Y.Z).
#define TORCHKIT_VERSION_MAJOR 0
/// The minor version number (Y of X.Y.Z).
#define TORCHKIT_VERSION_MINOR 1
/// The patch version number (Z of X.Y.Z).
#define TORCHKIT_VERSION_PATCH 0

/// The version as one number, major * 10000 + minor * 100 + patch (as TORCHKIT_TORCH_VERSION).
#define TORCHKIT_VERSION (TORCHKIT_VERSION_MAJOR * 10000 + TORCHKIT_VERSION_MINOR * 100 + TORCHKIT_VERSION_PATCH)

/// Internal: `x` as a string literal, unexpanded.
#define TORCHKIT_DETAIL_STRINGIFY_EXPANDED(x) #x
/// Internal: `x` as a string literal after macro expansion (a version macro -> its digits).
#define TORCHKIT_DETAIL_STRINGIFY(x) TORCHKIT_DETAIL_STRINGIFY_EXPANDED(x)

/// The version as a string literal, "major.minor.patch".
#define TORCHKIT_VERSION_STRING                                                                         \
  TORCHKIT_DETAIL_STRINGIFY(TORCHKIT_VERSION_MAJOR)                                                     \
  "." TORCHKIT_DETAIL_STRINGIFY(TORCHKIT_VERSION_MINOR) "." TORCHKIT_DETAIL_STRINGIFY(TORCHKIT_VERSION_PATCH)

namespace torchkit {

/// The library version as "major.minor.patch", built from the version macros.
///
///     std::cout << torchkit::version();   // 0.1.0
[[nodiscard]] constexpr std::string_view version() noexcept { return TORCHKIT_VERSION_STRING; }

static_assert(version().size() >= 5, "TORCHKIT_VERSION_* must be plain numbers");

}  // namespace torchkit
// ---- end torchkit/version.hpp ----
// ---- begin torchkit/error.hpp ----
/// @file error.hpp
/// torchkit::Error, the one exception type for bad arguments, and TORCHKIT_CHECK.

// ---- begin torchkit/detail/formatter.hpp ----
/// @file detail/formatter.hpp
/// `{fmt}` support for every printable torchkit type, with no extra include: each public header
/// that defines a printable type (one with `to_string()`) marks it right after the type with
///
///     template <> inline constexpr bool detail::formats_with_to_string<Summary> = true;
///
/// and this header (included by error.hpp, so by every torchkit header) turns each marked type
/// into a fmt::formatter that prints `to_string()`; the string format spec applies to that text,
/// so `{:>40}` pads it. Written against fmt 9's formatter API (a `format` member taking any
/// FormatContext), which fmt 10 and 11 keep.

#include <fmt/format.h>

#include <concepts>
#include <string>
#include <string_view>

namespace torchkit {

namespace lr {
class Scheduler;
class ReduceLROnPlateau;
}  // namespace lr

namespace detail {

/// True for the torchkit types that format through their `to_string()`; specialised next to
/// each such type.
template <class T>
inline constexpr bool formats_with_to_string = false;

/// The schedulers of torchkit::lr: every class derived from lr::Scheduler, and
/// ReduceLROnPlateau (named here by forward declaration, so that lr.hpp needs no marker).
template <class T>
concept PrintableScheduler =
    std::derived_from<T, ::torchkit::lr::Scheduler> || std::same_as<T, ::torchkit::lr::ReduceLROnPlateau>;

/// What the formatter below accepts.
template <class T>
concept Printable = formats_with_to_string<T> || PrintableScheduler<T>;

}  // namespace detail
}  // namespace torchkit

/// Formats every torchkit::detail::Printable type with its `to_string()`.
template <class T>
  requires torchkit::detail::Printable<T>
struct fmt::formatter<T> : fmt::formatter<std::string_view> {
  template <class FormatContext>
  auto format(const T& value, FormatContext& context) const -> decltype(context.out()) {
    const std::string text = value.to_string();
    return fmt::formatter<std::string_view>::format(std::string_view(text), context);
  }
};
// ---- end torchkit/detail/formatter.hpp ----

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
#include <string_view>
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

/// Sets (or, for nullopt, unsets) the environment variable `name`; throws Error, prefixed with
/// `owner` (the public name that was called), when the C library refuses.
inline void set_environment(std::string_view owner, const char* name, const std::optional<std::string>& value) {
  if (!set_environment_noexcept(name, value)) {
    const int error = errno;
    fail("{}: could not {} the environment variable {}: {}", owner, value ? "set" : "unset", name,
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
    detail::set_environment("VisibleDevices", detail::visible_devices_variable, spec_);
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
/// (parameter-free modules such as ReLU or MaxPool2d by the operator they run).
///
/// This header holds the public types and entry points only. The work is done in three stages,
/// one detail header each, as torchinfo splits it: running the model
/// (detail/summary_trace.hpp), building the rows (detail/summary_build.hpp, which has the
/// reconstruction rules), drawing the tables (detail/summary_format.hpp).
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

#include <cstddef>
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
[[nodiscard]] inline std::string index_string(std::int64_t flat_index, c10::IntArrayRef sizes) {
  std::string text;
  for (std::size_t i = sizes.size(); i-- > 0;) {
    const std::int64_t size = sizes[i] > 0 ? sizes[i] : 1;
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
/// Stage 2 of summary.hpp, building rows: the module tree of a model, and the turning of what
/// the forward pass was seen to do (detail/summary_trace.hpp) into one Summary::Row per module
/// call, with parameter counts, mult-adds and the totals. Nothing here prints anything
/// (detail/summary_format.hpp draws the tables).
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
///
/// A new per-row value (for a new column) is computed here, in SummaryBuilder::finish(), into a
/// new Summary::Row field. A layer type whose operators are named unlike the class goes in
/// operator_keys_of_type(). SummaryBuilder is a template over the row type (Summary::Row) so
/// that this header compiles on its own.

// ---- begin torchkit/detail/summary_trace.hpp ----
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
// ---- end torchkit/grad_mode.hpp ----

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
// ---- end torchkit/detail/summary_trace.hpp ----

#include <fmt/format.h>

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
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace torchkit::detail::summary {

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
  std::string name;  ///< as registered (`weight`, `weight_ih_l0`)
  const c10::TensorImpl* impl = nullptr;
  std::int64_t count = 0;
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
  std::int64_t params = 0;          ///< parameters of the module and its descendants, each once
  std::int64_t trainable_params = 0;
  std::int64_t own_params = 0;      ///< parameters registered on this module itself
  std::vector<OwnParameter> own_parameters;
  std::vector<int> own_state;  ///< state indices of its own parameters and buffers
  std::vector<std::int64_t> kernel_size;  ///< a convolution's kernel (its weight's spatial sizes); empty otherwise
  bool leaf() const { return children.empty(); }
};

/// The mult-adds of one operator over a forward pass (Count::Operators).
struct OperatorTotal {
  std::string name;            ///< "aten::linear"
  std::int64_t calls = 0;      ///< how many times it ran (at the top level of a forward)
  std::int64_t mult_adds = 0;  ///< the sum of its calls' mult-adds
};

/// The output of one call as capture sees it (capture.hpp).
struct CallOutput {
  at::Tensor tensor;          ///< undefined where none was seen
  std::int64_t version = 0;   ///< the tensor's version counter when it was the call's output
  bool exact = false;         ///< what the forward returned (a Sequential child, the model)
  std::string problem;        ///< why the output cannot be trusted ("" when it can)
};

/// The totals of a summary, counted as torchinfo counts them.
struct SummaryTotals {
  std::int64_t total_params = 0;            ///< each parameter tensor once
  std::int64_t trainable_params = 0;
  std::int64_t total_mult_adds = 0;         ///< leaf calls' mult-adds
  std::int64_t forward_backward_bytes = 0;  ///< 2 x the outputs of leaf calls with parameters
  std::int64_t param_bytes = 0;
};

/// Builds the rows of one summary (`Row` is Summary::Row, the one row model): the module tree,
/// the observed calls, and per row its counts and torchinfo's layout fields.
template <class Row>
class SummaryBuilder {
 public:
  explicit SummaryBuilder(torch::nn::Module& root) : root_(root) {
    add_node(root, "", 0, -1);
    count_subtree_parameters();
    call_count_.assign(nodes_.size(), 0);
    appeared_.assign(nodes_.size(), false);
    capture_node_.assign(nodes_.size(), false);
    recorder_.listener = this;
    recorder_.on_recorded = [](void* self) { static_cast<SummaryBuilder*>(self)->attribute_recorded(); };
  }
  // The recorder calls back into this object: it stays where it was made.
  SummaryBuilder(const SummaryBuilder&) = delete;
  SummaryBuilder& operator=(const SummaryBuilder&) = delete;
  SummaryBuilder(SummaryBuilder&&) = delete;
  SummaryBuilder& operator=(SummaryBuilder&&) = delete;
  ~SummaryBuilder() = default;

  const std::vector<ModuleNode>& nodes() const { return nodes_; }
  const std::vector<Row>& rows() const { return rows_; }
  Recorder& recorder() { return recorder_; }

  /// Count::Operators: mult-adds from the matmul-like operators each call ran (set before the
  /// forward pass).
  void count_operators(bool on) {
    count_operators_ = on;
    recorder_.count_operators = on;
  }
  /// capture: keep the output tensors of the calls of the `selected` modules (one flag per node;
  /// set before the pass). Operators are attributed as they end (attribute_recorded), so each
  /// selected call holds only its latest output; every other operator output is let go at once,
  /// as in a plain forward pass.
  void keep_outputs(const std::vector<bool>& selected) {
    recorder_.keep_outputs = true;
    for (std::size_t node = 0; node < nodes_.size() && node < selected.size(); ++node) {
      capture_node_[node] = selected[node];
    }
  }
  /// capture: the output of each row's call.
  const std::vector<CallOutput>& call_outputs() const { return call_outputs_; }
  /// The module node of each row.
  const std::vector<int>& row_nodes() const { return row_nodes_; }
  /// capture: the exact output of a call (what its forward returned).
  void set_output_tensor(int row, const at::Tensor& tensor) {
    if (recorder_.keep_outputs && tensor.defined() && capture_node_[static_cast<std::size_t>(row_nodes_[static_cast<std::size_t>(row)])]) {
      call_outputs_[static_cast<std::size_t>(row)] =
          CallOutput{tensor, static_cast<std::int64_t>(tensor._version()), /*exact=*/true, ""};
    }
  }

  /// Count::Operators: each counted operator's calls and mult-adds, in order of first call.
  const std::vector<OperatorTotal>& operator_totals() const { return operator_totals_; }

  /// Appends the row of a new call of `node`; returns its index.
  int open_call(int node) {
    Row row;
    row.depth = nodes_[static_cast<std::size_t>(node)].depth;
    row.called = true;
    ++call_count_[static_cast<std::size_t>(node)];
    // Recursive: this module object had a row before (a module registered twice is one module).
    row.recursive = !seen_modules_.insert(nodes_[static_cast<std::size_t>(node)].module).second;
    appeared_[static_cast<std::size_t>(node)] = true;
    push_row(node, std::move(row));
    return static_cast<int>(rows_.size()) - 1;
  }

  void set_input(int row, std::vector<std::int64_t> shape) { rows_[static_cast<std::size_t>(row)].input_shape = std::move(shape); }

  void set_output(int row, std::vector<std::int64_t> shape, std::int64_t element_size) {
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

  /// Attributes the operators recorded while `region_node`'s forward ran to its descendants
  /// (those not attributed yet as they ended; see attribute_recorded) and closes the region.
  ///
  /// Count::Operators: an operator's mult-adds go to the call it is attributed to; one that is
  /// attributed to no module (`q.matmul(k)` inside an attention's custom forward) goes to the
  /// innermost open call of a module with submodules (the attention), else to the region's call.
  void attribute_region(int region_node) {
    if (!region_.active || region_.id != recorder_.regions) {
      begin_region(region_node);
    }
    while (region_.done < recorder_.ops.size()) {
      attribute_op(region_.done++);
    }
    region_.active = false;
    region_.open.clear();
    watches_.clear();
  }

  /// Attributes the operators recorded since the last call (the recorder calls it as each
  /// operator ends). A region is always opened by the call of its module (open_call), so the
  /// last row is the region's call. Attributing an operator reads only it and what came before,
  /// so doing it now gives the same rows as doing it after the region.
  void attribute_recorded() {
    if (!region_.active || region_.id != recorder_.regions) {
      begin_region(row_nodes_.empty() ? 0 : row_nodes_.back());
    }
    while (region_.done < recorder_.ops.size()) {
      attribute_op(region_.done++);
    }
  }

  /// Adds the rows of modules never called, numbers the rows, fills in each row's module
  /// (name, type, counts) and computes mult-adds and the totals. Call once, after the forward
  /// pass (or without one, for the parameters-only summary).
  void finish() {
    if (rows_.empty() || row_nodes_.front() != 0) {
      insert_row(0, 0, Row{});
      appeared_[0] = true;
      seen_modules_.insert(nodes_[0].module);
    }
    add_rows_of_modules_never_called();
    number_rows();
    describe_modules();
    compute_mult_adds();
    count_totals();
  }

  /// The finished rows (moved out).
  std::vector<Row> take_rows() { return std::move(rows_); }
  /// Count::Operators: the mult-adds of the operators attributed to each row's call itself.
  const std::vector<std::int64_t>& own_operator_mult_adds() const { return own_mult_adds_; }
  const SummaryTotals& totals() const { return totals_; }

 private:
  void push_row(int node, Row row) {
    rows_.push_back(std::move(row));
    row_nodes_.push_back(node);
    own_mult_adds_.push_back(0);
    call_outputs_.emplace_back();
  }
  void insert_row(std::size_t position, int node, Row row) {
    rows_.insert(rows_.begin() + static_cast<std::ptrdiff_t>(position), std::move(row));
    row_nodes_.insert(row_nodes_.begin() + static_cast<std::ptrdiff_t>(position), node);
    own_mult_adds_.insert(own_mult_adds_.begin() + static_cast<std::ptrdiff_t>(position), 0);
    call_outputs_.insert(call_outputs_.begin() + static_cast<std::ptrdiff_t>(position), CallOutput{});
  }

  void begin_region(int region_node) {
    region_.active = true;
    region_.id = recorder_.regions;
    region_.node = region_node;
    region_.row = static_cast<int>(rows_.size()) - 1;  // open_call(region_node) came last
    region_.context = region_node;
    region_.open.clear();
    region_.done = 0;
    watches_.clear();
  }

  /// Attributes the region's operator `index` (all before it are attributed).
  void attribute_op(std::size_t index) {
    OpRecord& op = recorder_.ops[index];
    const int region_node = region_.node;
    std::vector<OpenCall>& open = region_.open;
    int module = -1;
    if (op.has_output && !op.prepares_state()) {
      const bool reads_state = !op.state_read.empty();
      module = reads_state ? owner_of(op, region_node, open) : parameter_free_module_for(op, region_node, region_.context);
      if (module >= 0) {
        watches_.clear();  // an operator of a module ends the look at what follows an output
        record_event(region_node, module, op, reads_state, open);
      }
      region_.context = module >= 0 ? module : region_.context;
    }
    if (module < 0 && !watches_.empty()) {
      check_watched_outputs(op);
    }
    if (count_operators_ && op.cost.counted) {
      charge_operator(op, module >= 0 ? innermost_open_row(open, /*with_submodules=*/false, region_.row)
                                      : innermost_open_row(open, /*with_submodules=*/true, region_.row));
    }
    if (recorder_.keep_outputs) {  // held by the calls whose output it is; nothing else needs them
      op.output = at::Tensor();
      std::vector<const c10::TensorImpl*>().swap(op.inputs);
    }
  }

  /// A LibTorch layer without submodules (Conv2d, BatchNorm2d, ReLU): its forward is known to
  /// end with the operator that makes its output.
  bool builtin_leaf(int node) const {
    const ModuleNode& module = nodes_[static_cast<std::size_t>(node)];
    return module.leaf() && module.module->name().rfind("torch::nn::", 0) == 0;
  }

  /// Whether `node`'s output is known to be the output of an operator of `owner` (a LibTorch
  /// layer): `node` is that layer, or a Sequential whose last call is (a Sequential whose last
  /// call is) that layer.
  bool output_known(int node, int owner) const {
    if (owner < 0 || !builtin_leaf(owner)) {
      return false;
    }
    for (int ancestor = owner; ancestor != node; ancestor = nodes_[static_cast<std::size_t>(ancestor)].parent) {
      const int parent = nodes_[static_cast<std::size_t>(ancestor)].parent;
      if (parent < 0 || exact_sequential(nodes_[static_cast<std::size_t>(parent)].module) == nullptr) {
        return false;
      }
    }
    return true;
  }

  /// capture: a reconstructed call output is the output of the last operator attributed to the
  /// call. For a module with a forward of its own (a container, a custom layer), operators that
  /// come after it and are attributed to no module may still belong to that forward
  /// (`return conv(x) + x`): where one of them reads the output, the output is not known.
  /// `op` is such an operator (attributed to no module, after the watched outputs).
  void check_watched_outputs(const OpRecord& op) {
    for (std::size_t i = 0; i < watches_.size();) {
      const OutputWatch& watch = watches_[i];
      if (std::find(op.inputs.begin(), op.inputs.end(), watch.impl) == op.inputs.end()) {
        ++i;
        continue;
      }
      call_outputs_[static_cast<std::size_t>(watch.row)].problem = fmt::format(
          "its last recognised operation is {}, but {} (part of no module) reads that result right after it, "
          "and may belong to its forward (`return layer(x) + x`) as well as to its caller's",
          recorder_.ops[watch.op].name, op.name);
      watches_.erase(watches_.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }

  /// The row of the innermost open call of a callable module (with submodules, if asked), else
  /// `fallback`.
  template <class Open>
  int innermost_open_row(const Open& open, bool with_submodules, int fallback) const {
    for (auto call = open.rbegin(); call != open.rend(); ++call) {
      const ModuleNode& node = nodes_[static_cast<std::size_t>(call->node)];
      if (node.callable && (!with_submodules || !node.leaf())) {
        return call->row;
      }
    }
    return fallback;
  }

  void charge_operator(const OpRecord& op, int row) {
    if (row >= 0) {
      own_mult_adds_[static_cast<std::size_t>(row)] += op.mult_adds;
    }
    auto [entry, inserted] = operator_index_.emplace(op.name, operator_totals_.size());
    if (inserted) {
      operator_totals_.push_back(OperatorTotal{op.name, 0, 0});
    }
    OperatorTotal& total = operator_totals_[entry->second];
    ++total.calls;
    total.mult_adds += op.mult_adds;
  }
  const ModuleNode& node_of_row(std::size_t row) const { return nodes_[static_cast<std::size_t>(row_nodes_[row])]; }

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
        node.own_parameters.push_back(
            OwnParameter{item.key(), parameter.unsafeGetTensorImpl(), parameter.numel(), parameter.requires_grad()});
        if (item.key() == "weight" && parameter.dim() >= 3 && node.type.find("Conv") != std::string::npos) {
          node.kernel_size.assign(parameter.sizes().begin() + 2, parameter.sizes().end());
        }
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
      for (const std::string& key : operator_keys_of_type(node.type)) {
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
        rows_[static_cast<std::size_t>(row)].input_shape = op.input_shape;
      } else {
        Row record;
        record.depth = nodes_[static_cast<std::size_t>(node)].depth;
        record.placeholder = appeared_[static_cast<std::size_t>(node)];
        record.recursive = !seen_modules_.insert(nodes_[static_cast<std::size_t>(node)].module).second;
        appeared_[static_cast<std::size_t>(node)] = true;
        push_row(node, std::move(record));
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
        if (recorder_.keep_outputs && op.output.defined() && capture_node_[static_cast<std::size_t>(entry.node)]) {
          call_outputs_[static_cast<std::size_t>(entry.row)] = CallOutput{op.output, op.output_version, false, ""};
          if (!output_known(entry.node, module)) {
            watches_.push_back(OutputWatch{entry.row, op.output.unsafeGetTensorImpl(),
                                           static_cast<std::size_t>(&op - recorder_.ops.data())});
          }
        }
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
      while (row_nodes_[position] != parent) {
        ++position;
      }
      const int parent_depth = rows_[position].depth;
      ++position;
      while (position < rows_.size() && rows_[position].depth > parent_depth) {
        ++position;
      }
      Row row;
      row.depth = nodes_[node].depth;
      row.recursive = !seen_modules_.insert(nodes_[node].module).second;
      insert_row(position, static_cast<int>(node), std::move(row));
      appeared_[node] = true;
    }
  }

  void number_rows() {
    std::vector<int> counters;
    for (Row& row : rows_) {
      if (row.depth == 0 || row.placeholder) {
        continue;
      }
      if (counters.size() <= static_cast<std::size_t>(row.depth)) {
        counters.resize(static_cast<std::size_t>(row.depth) + 1, 0);
      }
      row.depth_index = ++counters[static_cast<std::size_t>(row.depth)];
    }
  }

  /// torchinfo's rule (torchinfo 1.7, layer_info.py, LayerInfo.calculate_macs; the layer type
  /// tests are its `"Conv" in class_name` / `"Linear" in class_name`), per parameter of a leaf module: `weight`/`bias` of a Conv: count times
  /// N times the spatial output size; of a Linear: count times prod(output[:-1]); of anything
  /// else: count times output[0]; other parameters named `*weight*`/`*bias*` (RNN weights such as
  /// `weight_ih_l0`): count times prod(output[:2]).
  std::int64_t leaf_mult_adds(const ModuleNode& node, const std::vector<std::int64_t>& output) const {
    if (output.empty()) {
      return 0;
    }
    auto product = [&](std::size_t begin, std::size_t end) {
      std::int64_t result = 1;
      for (std::size_t i = begin; i < std::min(end, output.size()); ++i) {
        result *= output[i];
      }
      return result;
    };
    const bool conv = node.type.find("Conv") != std::string::npos;
    const bool linear = node.type.find("Linear") != std::string::npos;
    std::int64_t total = 0;
    for (const OwnParameter& parameter : node.own_parameters) {
      const std::string& name = parameter.name;
      const std::int64_t count = parameter.count;
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

  /// What each row shows of its module: name, type, counts, whether it is a leaf or a container.
  void describe_modules() {
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      const ModuleNode& node = node_of_row(i);
      Row& row = rows_[i];
      row.name = node.name;
      row.type = node.type;
      row.params = node.params;
      row.trainable_params = node.trainable_params;
      row.own_params = node.own_params;
      row.kernel_size = node.kernel_size;
      row.leaf = node.leaf();
      row.container = node.sequential || !node.callable;
    }
  }

  void compute_mult_adds() {
    if (count_operators_) {
      // A call's mult-adds are those of the operators attributed to it and to the calls nested in it.
      for (std::size_t i = 0; i < rows_.size(); ++i) {
        std::int64_t sum = own_mult_adds_[i];
        for (std::size_t j = i + 1; j < rows_.size() && rows_[j].depth > rows_[i].depth; ++j) {
          sum += own_mult_adds_[j];
        }
        rows_[i].mult_adds = sum;
      }
      return;
    }
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      const ModuleNode& node = node_of_row(i);
      rows_[i].mult_adds = node.leaf() ? leaf_mult_adds(node, rows_[i].output_shape) : 0;
    }
    // A container's mult-adds are those of the leaf calls nested in its call.
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      if (rows_[i].leaf) {
        continue;
      }
      std::int64_t sum = 0;
      for (std::size_t j = i + 1; j < rows_.size() && rows_[j].depth > rows_[i].depth; ++j) {
        if (rows_[j].leaf) {
          sum += rows_[j].mult_adds;
        }
      }
      rows_[i].mult_adds = sum;
    }
  }

  /// torchinfo's totals: parameters (each tensor once) and their bytes; mult-adds of the leaf
  /// calls; 2 x the output bytes of every call of a leaf module with parameters.
  void count_totals() {
    for (const std::int64_t mult_adds : own_mult_adds_) {
      totals_.total_mult_adds += count_operators_ ? mult_adds : 0;
    }
    for (const Row& row : rows_) {
      if (row.leaf && row.called) {
        totals_.total_mult_adds += count_operators_ ? 0 : row.mult_adds;
        if (row.params > 0 && !row.output_shape.empty()) {
          std::int64_t elements = 1;
          for (const std::int64_t size : row.output_shape) {
            elements *= size;
          }
          totals_.forward_backward_bytes += 2 * row.output_element_size * elements;
        }
      }
    }
    for (const NamedParameter& parameter : named_parameters_of(root_)) {
      const std::int64_t count = parameter.tensor.numel();
      totals_.total_params += count;
      totals_.trainable_params += parameter.tensor.requires_grad() ? count : 0;
      totals_.param_bytes += count * static_cast<std::int64_t>(parameter.tensor.element_size());
    }
  }

  std::vector<ModuleNode> nodes_;
  std::vector<std::vector<int>> state_owners_;  ///< state index -> nodes owning it directly
  std::unordered_map<std::string, std::vector<int>> parameter_free_by_key_;
  std::vector<int> call_count_;
  std::vector<bool> appeared_;
  std::unordered_set<const torch::nn::Module*> seen_modules_;
  torch::nn::Module& root_;
  std::vector<Row> rows_;
  std::vector<int> row_nodes_;  ///< the module node of each row
  SummaryTotals totals_;
  Recorder recorder_;
  bool count_operators_ = false;
  std::vector<std::int64_t> own_mult_adds_;  ///< per row: Count::Operators mult-adds of the call itself
  std::vector<OperatorTotal> operator_totals_;
  std::unordered_map<std::string, std::size_t> operator_index_;
  std::vector<CallOutput> call_outputs_;    ///< per row: capture's view of the call's output
  std::vector<bool> capture_node_;          ///< capture: per node, whether its calls' outputs are kept
  /// The region whose operators are being attributed, and the attribution's state.
  struct RegionState {
    bool active = false;
    std::uint64_t id = 0;  ///< Recorder::regions when it began
    int node = 0;          ///< the module whose forward the region is
    int row = -1;          ///< the row of that call
    int context = 0;       ///< the module the last attributed operator was given
    std::vector<OpenCall> open;
    std::size_t done = 0;  ///< operators of the region attributed so far
  };
  RegionState region_;
  /// capture: a reconstructed output of a selected call whose following operators of no module
  /// are checked for reading it (until an operator of a module comes).
  struct OutputWatch {
    int row;
    const c10::TensorImpl* impl;  ///< kept unique: the call's output holds the tensor
    std::size_t op;               ///< the operator that made it
  };
  std::vector<OutputWatch> watches_;
};

}  // namespace torchkit::detail::summary
// ---- end torchkit/detail/summary_build.hpp ----
// ---- begin torchkit/detail/summary_format.hpp ----
/// @file detail/summary_format.hpp
/// Stage 3 of summary.hpp, formatting: draws the tables. Everything a Summary prints is drawn
/// here, from its public accessors only: the Tree style (torchinfo's table) and the Flat style
/// (pytorch-summary's), and the number formats both use (Python's `{:,}`, `{:.2f}`, alignment
/// by characters, the `├─`/`└─` tree).
///
/// A new column goes here: a title in tree_table()'s `titles`, a value in its row loop, and a
/// SummaryOptions flag (summary.hpp) that switches it on. What the column shows must already be
/// in Summary::Row (computed in detail/summary_build.hpp).
///
/// The functions are templates over the Summary type so that this header compiles on its own
/// without the public header (nlohmann/json's detail headers do the same with BasicJsonType).


#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace torchkit::detail::summary {

/// Python's `f"{value:,}"`: 21840 -> "21,840".
inline std::string with_thousands(std::int64_t value) {
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
inline std::string mult_adds_with_unit(std::int64_t count) {
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
                                 ? with_thousands(static_cast<std::int64_t>(scaled))
                                 : with_thousands_2f(scaled);
  return fmt::format(" ({}): {}", unit, number);
}

/// Bytes as megabytes (1e6), two decimals: 113600 -> "0.11".
inline std::string megabytes(std::int64_t bytes) { return fmt::format("{:.2f}", static_cast<double>(bytes) / 1e6); }

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
/// of that level goes on below this row; the last entry is this row's own level. ASCII only:
/// torchinfo's `|--`, `'--` and `|`.
inline std::string tree_prefix(const std::vector<bool>& continues, bool ascii_only = false) {
  std::string prefix;
  for (std::size_t level = 0; level < continues.size(); ++level) {
    if (level > 0) {
      prefix += "    ";
    }
    const bool own_level = level + 1 == continues.size();
    if (own_level) {
      prefix += continues[level] ? (ascii_only ? "|--" : "├─") : (ascii_only ? "'--" : "└─");
    } else {
      prefix += continues[level] ? (ascii_only ? "|" : "│") : " ";
    }
  }
  return prefix;
}

// --- the Tree style (torchinfo) -----------------------------------------------------------

/// torchinfo's `col_names` key of a Column (its enumerator's value): "input_size", ...
inline std::string_view column_key(int column) {
  constexpr std::string_view keys[] = {"input_size",   "output_size", "num_params", "params_percent",
                                       "kernel_size",  "mult_adds",   "trainable"};
  return column >= 0 && column < 7 ? keys[column] : std::string_view("?");
}

/// torchinfo's HEADER_TITLES of a Column.
inline std::string_view column_title(int column) {
  constexpr std::string_view titles[] = {"Input Shape",  "Output Shape", "Param #",  "Param %",
                                         "Kernel Shape", "Mult-Adds",    "Trainable"};
  return column >= 0 && column < 7 ? titles[column] : std::string_view("?");
}

/// torchinfo's params_percent: `f"{params / total:>7.2%}"`, `     --` for none.
inline std::string params_percent(std::int64_t params, std::int64_t total) {
  if (total == 0 || params == 0) {
    return "     --";
  }
  return pad_left(fmt::format("{:.2f}%", static_cast<double>(params) / static_cast<double>(total) * 100.0), 7);
}

/// torchinfo's column width (`col_width=25`, the default of torchinfo.summary()) and the least
/// width of the "Layer (type:depth-idx)" column (`layer_name_width=40`, torchinfo's
/// FormattingOptions in formatting.py, which widens it to the longest title rounded up to a
/// multiple of 5, as tree_name_width() does).
inline constexpr std::size_t tree_column_width = 25;
inline constexpr std::size_t tree_least_name_width = 40;

/// A row's title: `Net`, `Conv2d: 1-1`; a placeholder (torchinfo repeats a container so that
/// the tree stays a tree) has no index: `ModuleList: 1`.
template <class Row>
std::string tree_title(const Row& row, bool show_var_name = false) {
  std::string title = row.type;
  if (show_var_name && !row.name.empty()) {
    title += fmt::format(" ({})", row.name.substr(row.name.rfind('.') + 1));  // the attribute name, as torchinfo's var_name
  }
  if (row.depth == 0) {
    return title;
  }
  return row.placeholder ? fmt::format("{}: {}", title, row.depth) : fmt::format("{}: {}-{}", title, row.depth, row.depth_index);
}

/// The width of the title column: torchinfo's 40, or the longest title (indented 5 characters a
/// level) plus one, rounded up to a multiple of 5.
template <class Row>
std::size_t tree_name_width(const std::vector<Row>& rows, bool show_var_name = false) {
  std::size_t longest = 0;
  for (const Row& row : rows) {
    longest = std::max(longest, characters(tree_title(row, show_var_name)) + static_cast<std::size_t>(row.depth) * 5 + 1);
  }
  return longest >= tree_least_name_width ? (longest + 4) / 5 * 5 : tree_least_name_width;
}

/// torchinfo's leftover_params: a container's parameters not shown by the rows below it
/// (leaf rows count their parameters, container rows their own leftover; repeated rows none).
template <class Row>
std::vector<std::int64_t> leftover_params(const std::vector<Row>& rows) {
  std::vector<std::int64_t> leftover(rows.size(), 0);
  for (std::size_t i = rows.size(); i-- > 0;) {
    std::int64_t children = 0;
    for (std::size_t j = i + 1; j < rows.size() && rows[j].depth > rows[i].depth; ++j) {
      if (!rows[j].recursive) {
        children += rows[j].leaf ? rows[j].params : leftover[j];
      }
    }
    leftover[i] = rows[i].params - children;
  }
  return leftover;
}

/// Which tree lines go on below visible row `v`: level l continues where a later visible row of
/// depth l follows before any shallower one.
template <class Row>
std::vector<bool> tree_continues(const std::vector<Row>& rows, const std::vector<std::size_t>& visible, std::size_t v) {
  const int own_depth = rows[visible[v]].depth;
  std::vector<bool> continues(static_cast<std::size_t>(own_depth), false);
  for (int level = 1; level <= own_depth; ++level) {
    for (std::size_t w = v + 1; w < visible.size(); ++w) {
      const int depth = rows[visible[w]].depth;
      if (depth < level) {
        break;
      }
      if (depth == level) {
        continues[static_cast<std::size_t>(level - 1)] = true;
        break;
      }
    }
  }
  return continues;
}

/// The Tree table of a summary: torchinfo's layout, column by column.
template <class Summary>
std::string tree_table(const Summary& summary) {
  using Row = typename Summary::Row;
  const std::vector<Row>& rows = summary.rows();
  const auto& options = summary.options();
  const bool forward_pass = summary.has_forward_pass();
  const int max_depth = options.depth;
  // The columns: as chosen, else Output Shape (with a forward pass), Param # and the two flags.
  std::vector<int> columns;
  for (const auto column : options.columns) {
    columns.push_back(static_cast<int>(column));
  }
  constexpr int output_size = 1, num_params = 2, params_percent_column = 3, kernel_size = 4, mult_adds = 5, trainable = 6;
  if (columns.empty()) {
    if (forward_pass) {
      columns.push_back(output_size);
    }
    columns.push_back(num_params);
    if (forward_pass && options.show_mult_adds) {
      columns.push_back(mult_adds);
    }
    if (options.show_trainable) {
      columns.push_back(trainable);
    }
  }
  std::vector<std::string> titles;
  for (const int column : columns) {
    titles.emplace_back(column_title(column));
  }
  const std::size_t name_width = tree_name_width(rows, options.show_var_names);
  const std::string divider(titles.size() * tree_column_width + name_width, '=');
  auto format_row = [&](const std::string& name, const std::vector<std::string>& values) {
    std::string line = pad_right(name, name_width) + " ";
    for (const std::string& value : values) {
      line += pad_right(value, tree_column_width) + " ";
    }
    line.erase(line.find_last_not_of(' ') + 1);
    return line + "\n";
  };

  std::vector<std::size_t> visible;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].depth <= max_depth) {
      visible.push_back(i);
    }
  }
  const std::vector<std::int64_t> leftover = leftover_params(rows);
  const char* header = options.show_var_names ? "Layer (type (var_name):depth-idx)" : "Layer (type:depth-idx)";
  std::string table = divider + "\n" + format_row(header, titles) + divider + "\n";
  for (std::size_t v = 0; v < visible.size(); ++v) {
    const std::size_t i = visible[v];
    const Row& row = rows[i];
    // torchinfo's rules: a row at the depth limit shows its whole subtree's count, a container
    // above it only what its visible children do not show; "(n)" marks a frozen count.
    const bool at_max_depth = row.depth == max_depth;
    std::vector<std::string> values;
    for (const int column : columns) {
      switch (column) {
        case 0:  // input_size
          values.push_back(row.input_shape.empty() ? "--" : shape_string(row.input_shape));
          break;
        case output_size:
          values.push_back(row.output_shape.empty() ? "--" : shape_string(row.output_shape));
          break;
        case num_params:
          if (row.params == 0) {
            values.emplace_back("--");
          } else if (row.recursive) {
            values.emplace_back("(recursive)");
          } else if (at_max_depth || row.leaf) {
            const std::string count = with_thousands(row.params);
            values.push_back(row.trainable_params > 0 ? count : "(" + count + ")");
          } else {
            values.push_back(leftover[i] > 0 ? with_thousands(leftover[i]) : "--");
          }
          break;
        case params_percent_column:
          values.push_back(row.recursive && summary.total_params() != 0
                               ? "(recursive)"
                               : params_percent(at_max_depth || row.leaf ? row.params : leftover[i], summary.total_params()));
          break;
        case kernel_size:
          values.push_back(row.kernel_size.empty() ? "--" : shape_string(row.kernel_size));
          break;
        case mult_adds:
          values.push_back(row.mult_adds > 0 && (row.leaf || at_max_depth) ? with_thousands(row.mult_adds) : "--");
          break;
        default:  // trainable
          values.emplace_back(row.params == 0                      ? "--"
                              : row.trainable_params == 0          ? "False"
                              : row.trainable_params == row.params ? "True"
                                                                   : "Partial");
          break;
      }
    }
    table += format_row(tree_prefix(tree_continues(rows, visible, v), options.ascii_only) + tree_title(row, options.show_var_names),
                        values);
  }
  table += divider + "\n";
  table += "Total params: " + with_thousands(summary.total_params()) + "\n";
  table += "Trainable params: " + with_thousands(summary.trainable_params()) + "\n";
  table += "Non-trainable params: " + with_thousands(summary.non_trainable_params()) + "\n";
  if (forward_pass) {
    table += "Total mult-adds" + mult_adds_with_unit(summary.total_mult_adds()) + "\n" + divider + "\n";
    table += "Input size (MB): " + megabytes(summary.input_bytes()) + "\n";
    table += "Forward/backward pass size (MB): " + megabytes(summary.forward_backward_bytes()) + "\n";
    table += "Params size (MB): " + megabytes(summary.param_bytes()) + "\n";
    table += "Estimated Total Size (MB): " + megabytes(summary.total_bytes()) + "\n";
  }
  return table + divider;
}

// --- the Flat style (pytorch-summary) -----------------------------------------------------

/// pytorch-summary's line: `"{:>20}  {:>25} {:>15}"` between rules of 64 characters
/// (torchsummary.py's summary()).
inline constexpr std::size_t flat_rule_width = 64;

inline std::string flat_line(const std::string& name, const std::string& shape, const std::string& params) {
  return pad_left(name, 20) + "  " + pad_left(shape, 25) + " " + pad_left(params, 15) + "\n";
}

/// pytorch-summary numbers a module when its forward returns: children before parents. The
/// order of the rows in which it prints them.
template <class Row>
std::vector<std::size_t> return_order(const std::vector<Row>& rows) {
  std::vector<std::size_t> order;
  std::vector<std::size_t> pending;
  auto emit_down_to = [&](int depth) {
    while (!pending.empty() && rows[pending.back()].depth >= depth) {
      order.push_back(pending.back());
      pending.pop_back();
    }
  };
  for (std::size_t i = 0; i < rows.size(); ++i) {
    emit_down_to(rows[i].depth);
    pending.push_back(i);
  }
  emit_down_to(0);
  return order;
}

/// The Flat table of a summary; `batch_synthesized`: the batch dimension was made by summary()
/// and is printed as -1, as pytorch-summary does.
template <class Summary>
std::string flat_table(const Summary& summary, bool batch_synthesized) {
  const auto& rows = summary.rows();
  const bool forward_pass = summary.has_forward_pass();
  const std::string thin(flat_rule_width, '-');
  const std::string thick(flat_rule_width, '=');
  std::string table = thin + "\n" + flat_line("Layer (type)", "Output Shape", "Param #") + thick + "\n";
  int number = 0;
  for (const std::size_t i : return_order(rows)) {
    const auto& row = rows[i];
    if (row.container || row.placeholder || (forward_pass && !row.called)) {
      continue;
    }
    std::vector<std::int64_t> shape = row.output_shape;
    if (batch_synthesized && !shape.empty()) {
      shape[0] = -1;
    }
    const std::string params = row.recursive && row.own_params > 0 ? "(recursive)" : with_thousands(row.own_params);
    table += flat_line(fmt::format("{}-{}", row.type, ++number), shape.empty() ? "--" : shape_string(shape), params);
  }
  table += thick + "\n";
  table += "Total params: " + with_thousands(summary.total_params()) + "\n";
  table += "Trainable params: " + with_thousands(summary.trainable_params()) + "\n";
  table += "Non-trainable params: " + with_thousands(summary.non_trainable_params()) + "\n";
  table += thin + "\n";
  if (forward_pass) {
    table += "Input size (MB): " + megabytes(summary.input_bytes()) + "\n";
    table += "Forward/backward pass size (MB): " + megabytes(summary.forward_backward_bytes()) + "\n";
    table += "Params size (MB): " + megabytes(summary.param_bytes()) + "\n";
    table += "Estimated Total Size (MB): " + megabytes(summary.total_bytes()) + "\n";
    table += thin;
  }
  return table;
}

}  // namespace torchkit::detail::summary
// ---- end torchkit/detail/summary_format.hpp ----

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace torchkit {

/// How Summary::to_string() lays the table out.
enum class SummaryStyle {
  tree,  ///< torchinfo: `Layer (type:depth-idx)`, `├─Conv2d: 1-1`, depth-limited, footer in MB
  flat,  ///< pytorch-summary: `Layer (type)  Output Shape  Param #`, `Conv2d-1`, batch as -1
  Tree = tree,  ///< the earlier spelling, kept so that existing code compiles
  Flat = flat,  ///< the earlier spelling, kept so that existing code compiles
};

/// A column of the Tree table (torchinfo's `col_names`), in SummaryOptions::columns.
enum class Column {
  input_size,      ///< "Input Shape": the first tensor the call read (`[2, 1, 28, 28]`)
  output_size,     ///< "Output Shape"
  num_params,      ///< "Param #"
  params_percent,  ///< "Param %": the row's parameter count over the total (` 20.83%`)
  kernel_size,     ///< "Kernel Shape": a convolution's kernel (`[5, 5]`); "--" for other layers
  mult_adds,       ///< "Mult-Adds"
  trainable,       ///< "Trainable": True/False/Partial
  InputSize = input_size,          ///< DESIGN.md's spelling
  OutputSize = output_size,        ///< DESIGN.md's spelling
  NumParams = num_params,          ///< DESIGN.md's spelling
  ParamsPercent = params_percent,  ///< DESIGN.md's spelling
  KernelSize = kernel_size,        ///< DESIGN.md's spelling
  MultAdds = mult_adds,            ///< DESIGN.md's spelling
  Trainable = trainable,           ///< DESIGN.md's spelling
};

/// How summary() counts mult-adds.
enum class Count {
  /// torchinfo's rule: from each leaf module's parameters and output shape (a Conv's weight
  /// times the output's spatial size, a Linear's weight times its rows, ...). Matrix products
  /// that are no module (`q.matmul(k)` in an attention's forward) are not seen.
  modules,
  /// From every matmul-like operator the forward pass runs, by its input shapes (fvcore's rule:
  /// the products only, no bias additions): `linear`, `matmul`, `mm`, `addmm`, `bmm`, `baddbmm`,
  /// `addbmm`, `mv`, `addmv`, `dot`, `conv*`/`conv_transpose*` (groups, dilation, stride),
  /// `scaled_dot_product_attention` (LibTorch 2.x), `einsum` with one or two operands, and the
  /// recurrent `lstm`/`gru`/`rnn_*` operators and cells (rows x steps x every weight matrix).
  /// Each operator counts for the module whose forward ran it; one that reads no module's
  /// parameters counts for the innermost module with submodules whose call is open (the
  /// attention block), else for the module whose forward is being observed.
  /// Summary::operator_totals() lists the totals per operator.
  operators,
  Modules = modules,      ///< DESIGN.md's spelling
  Operators = operators,  ///< DESIGN.md's spelling
};

/// Options of summary(). Designated initializers read well: `{.depth = 1, .batch_size = 4}`.
struct SummaryOptions {
  int depth = 3;                         ///< rows deeper than this are not printed (torchinfo's depth)
  std::int64_t batch_size = 2;           ///< prepended to each input_size (2, so BatchNorm works)
  c10::Device device = at::kCPU;         ///< where the generated inputs are made; the model must be there
  at::ScalarType dtype = at::kFloat;     ///< dtype of the generated inputs
  SummaryStyle style = SummaryStyle::tree;  ///< the table's layout: torchinfo's tree or pytorch-summary's flat
  std::vector<at::ScalarType> dtypes{};  ///< one dtype per input, overriding `dtype` (torchinfo's dtypes)
  bool show_mult_adds = false;           ///< Tree style: add torchinfo's "Mult-Adds" column
  bool show_trainable = false;           ///< Tree style: add torchinfo's "Trainable" column (True/False/Partial)
  Count count = Count::modules;          ///< how mult-adds are counted (rows, totals, the Mult-Adds column)
  /// Tree style: the columns, in this order, as torchinfo's `col_names` (each at most once).
  /// Empty: Output Shape (with a forward pass) and Param #, plus the two flags above.
  std::vector<Column> columns{};
  bool show_var_names = false;  ///< Tree style: `Conv2d (conv1): 1-1` (torchinfo's row_settings "var_names")
  bool ascii_only = false;      ///< Tree style: `|--`, `'--`, `|` for the tree lines (torchinfo's "ascii_only")
};

class Summary;

namespace detail {
namespace summary {
struct SummaryAccess;
}  // namespace summary
/// The earlier name of detail::summary (internal; kept for code that reached into it).
namespace summary_impl = summary;
}  // namespace detail

/// A model summary: one row per module call, in call order, and totals counted as torchinfo
/// counts them. Printable (`to_string()`, `operator<<`, `{fmt}`).
///
///     auto info = torchkit::summary(net, {1, 28, 28});
///     std::cout << info << '\n';
///     std::int64_t params = info.total_params();
class Summary {
 public:
  /// One module call (or, for a module never called, the module itself): torchinfo's LayerInfo.
  struct Row {
    std::string name;                        ///< dotted path (`features.0`); "" for the model itself
    std::string type;                        ///< short class name (`Conv2d`)
    int depth = 0;                           ///< 0 for the model, 1 for its children, ...
    std::vector<std::int64_t> output_shape;  ///< first tensor of the output; empty where unknown
    std::vector<std::int64_t> input_shape;   ///< first tensor the call read; empty where unknown
    std::vector<std::int64_t> kernel_size;   ///< a convolution's kernel (`{5, 5}`); empty for other modules
    std::int64_t params = 0;                 ///< parameters of the module and its submodules, each once
    std::int64_t trainable_params = 0;       ///< of those, how many require grad
    std::int64_t mult_adds = 0;              ///< this call's (for a container: its leaf calls' sum)
    bool recursive = false;                  ///< the module was called (or shown) before
    int depth_index = 0;                     ///< torchinfo's depth-idx (the 3 of `Conv2d: 1-3`); 0 for none
    bool leaf = true;                        ///< the module has no submodules
    bool called = false;                     ///< a call seen in the forward pass
    bool placeholder = false;                ///< a ModuleList/ModuleDict shown again to keep the tree a tree
    bool container = false;                  ///< Sequential, ModuleList, ModuleDict: not in the Flat style
    std::int64_t own_params = 0;             ///< parameters registered on the module itself (Flat's count)
    std::int64_t output_element_size = 0;    ///< bytes per element of the output
  };

  /// The mult-adds of one operator over the forward pass: name (`aten::linear`), calls, mult-adds.
  using OperatorTotal = detail::summary::OperatorTotal;

  /// One row per module call, in call order; modules never called appear too, with an empty
  /// shape, after the rows of their parent.
  [[nodiscard]] const std::vector<Row>& rows() const noexcept { return rows_; }

  /// Parameters of the model, each tensor once (tied parameters count once).
  [[nodiscard]] std::int64_t total_params() const noexcept { return totals_.total_params; }
  /// Of total_params(), those that require grad.
  [[nodiscard]] std::int64_t trainable_params() const noexcept { return totals_.trainable_params; }
  /// Of total_params(), those that do not require grad (frozen).
  [[nodiscard]] std::int64_t non_trainable_params() const noexcept {
    return totals_.total_params - totals_.trainable_params;
  }
  /// Sum of the leaf modules' mult-adds over all calls (torchinfo's "Total mult-adds").
  [[nodiscard]] std::int64_t total_mult_adds() const noexcept { return totals_.total_mult_adds; }
  /// Count::Operators: each counted operator (`aten::conv2d`, `aten::bmm`, ...) with its calls and
  /// mult-adds, in order of first call; their mult-adds sum to total_mult_adds(). Empty for
  /// Count::Modules.
  [[nodiscard]] const std::vector<OperatorTotal>& operator_totals() const noexcept { return operator_totals_; }
  /// Bytes of the inputs of the forward pass.
  [[nodiscard]] std::int64_t input_bytes() const noexcept { return input_bytes_; }
  /// 2 x the bytes of the outputs of every call of a leaf module with parameters (activations
  /// and their gradients), torchinfo's "Forward/backward pass size".
  [[nodiscard]] std::int64_t forward_backward_bytes() const noexcept { return totals_.forward_backward_bytes; }
  /// Bytes of the parameters, each tensor once.
  [[nodiscard]] std::int64_t param_bytes() const noexcept { return totals_.param_bytes; }
  /// input_bytes() + forward_backward_bytes() + param_bytes(): torchinfo's "Estimated Total Size".
  [[nodiscard]] std::int64_t total_bytes() const noexcept {
    return input_bytes_ + totals_.forward_backward_bytes + totals_.param_bytes;
  }

  /// Whether a forward pass was run (false for `summary(model)`: parameters only).
  [[nodiscard]] bool has_forward_pass() const noexcept { return forward_pass_; }
  /// The options summary() was called with.
  [[nodiscard]] const SummaryOptions& options() const noexcept { return options_; }

  /// The table in the style of the options.
  [[nodiscard]] std::string to_string() const { return to_string(options_.style); }
  /// The table in the given style (drawn by detail/summary_format.hpp).
  [[nodiscard]] std::string to_string(SummaryStyle style) const {
    return style == SummaryStyle::flat ? detail::summary::flat_table(*this, batch_synthesized_)
                                       : detail::summary::tree_table(*this);
  }

  /// Writes to_string() (the table in the options' style) to `out`.
  friend std::ostream& operator<<(std::ostream& out, const Summary& summary) { return out << summary.to_string(); }

 private:
  friend struct detail::summary::SummaryAccess;

  Summary() = default;

  std::vector<Row> rows_;
  detail::summary::SummaryTotals totals_;
  std::vector<OperatorTotal> operator_totals_;
  std::int64_t input_bytes_ = 0;
  bool forward_pass_ = false;
  bool batch_synthesized_ = false;  ///< the batch dimension was made by summary(): Flat prints it as -1
  SummaryOptions options_;
};

namespace detail {
/// Summary formats with `{fmt}` as its to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<Summary> = true;
}  // namespace detail

namespace detail::summary {

/// Makes a Summary from a finished builder.
struct SummaryAccess {
  static Summary make(SummaryBuilder<Summary::Row>& builder, SummaryOptions options, std::int64_t input_bytes,
                      bool forward_pass, bool batch_synthesized) {
    Summary summary;
    summary.rows_ = builder.take_rows();
    summary.totals_ = builder.totals();
    summary.operator_totals_ = builder.operator_totals();
    summary.input_bytes_ = input_bytes;
    summary.forward_pass_ = forward_pass;
    summary.batch_synthesized_ = batch_synthesized;
    summary.options_ = std::move(options);
    return summary;
  }
};

inline void check_options(const SummaryOptions& options) {
  TORCHKIT_CHECK(options.depth >= 0, "summary: SummaryOptions::depth is {}, expected >= 0", options.depth);
  for (std::size_t i = 0; i < options.columns.size(); ++i) {
    const auto value = static_cast<int>(options.columns[i]);
    TORCHKIT_CHECK(value >= static_cast<int>(Column::input_size) && value <= static_cast<int>(Column::trainable),
                   "summary: SummaryOptions::columns[{}] is {}, which is no Column (expected input_size .. trainable)", i,
                   value);
    for (std::size_t j = 0; j < i; ++j) {
      TORCHKIT_CHECK(options.columns[j] != options.columns[i],
                     "summary: SummaryOptions::columns lists {} twice (at {} and {}); give each column once",
                     detail::summary::column_key(value), j, i);
    }
  }
}

/// Runs the model through `run` (stage 1) into a builder (stage 2) and makes the Summary.
template <class M, class Run>
Summary observe(M& model, const SummaryOptions& options, const std::string& tried, std::int64_t input_bytes,
                bool batch_synthesized, Run&& run) {
  torch::nn::Module& root = root_module(model);
  SummaryBuilder<Summary::Row> builder(root);
  builder.count_operators(options.count == Count::operators);
  run_forward_pass(builder, root, tried, [&] { run(builder); });
  return SummaryAccess::make(builder, options, input_bytes, /*forward_pass=*/true, batch_synthesized);
}

}  // namespace detail::summary

/// torchsummary's `summary(model, input_size=(C, H, W))`: runs one forward pass on an input of
/// shape `{batch_size, input_size...}` and summarises every module call.
///
/// The model (a module, a holder such as `Net` or `torch::nn::Sequential`, a
/// `std::shared_ptr<NetImpl>`, or a `torch::nn::AnyModule`) must be passed as its own type so
/// that its `forward` can be called. It is left exactly as it was: the pass runs in eval mode
/// under no-grad, and every module's training flag is restored, also when forward throws.
///
/// @throws Error for an empty `input_size`, a dimension < 1, a batch size < 1, an unknown or
///         repeated column in `options.columns`, a model whose
///         parameters are not on `options.device`, a forward that does not take the input or
///         throws (the message names the input shapes tried).
///
///     torchkit::Summary info = torchkit::summary(net, {3, 224, 224});
///     std::cout << info << '\n';
template <class M>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::vector<std::vector<std::int64_t>> input_sizes, SummaryOptions options = {}) {
  namespace impl = detail::summary;
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
  std::int64_t input_bytes = 0;
  for (std::size_t input = 0; input < input_sizes.size(); ++input) {
    std::vector<std::int64_t> shape{options.batch_size};
    shape.insert(shape.end(), input_sizes[input].begin(), input_sizes[input].end());
    const at::ScalarType dtype = options.dtypes.empty() ? options.dtype : options.dtypes[input];
    try {
      inputs.push_back(impl::make_input(shape, dtype, options.device));
    } catch (const c10::Error& error) {
      throw Error(fmt::format("summary: cannot make an input of shape {} ({}) on {}: {}", detail::shape_string(shape),
                              c10::toString(dtype), options.device.str(), error.what_without_backtrace()));
    }
    input_bytes += static_cast<std::int64_t>(inputs.back().nbytes());
  }
  const std::string tried = impl::describe_shapes(inputs);
  return impl::observe(model, options, tried, input_bytes, /*batch_synthesized=*/true,
                       [&](auto& builder) { impl::run_model_on_tensors(builder, model, inputs, tried); });
}

/// One input: `summary(net, {3, 224, 224})` (the batch dimension is prepended).
template <class M>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::vector<std::int64_t> input_size, SummaryOptions options = {}) {
  return summary(model, std::vector<std::vector<std::int64_t>>{std::move(input_size)}, std::move(options));
}

/// One input written in braces: `summary(net, {3, 224, 224})`, `summary(mlp, {784})`.
template <class M>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::initializer_list<std::int64_t> input_size, SummaryOptions options = {}) {
  return summary(model, std::vector<std::vector<std::int64_t>>{std::vector<std::int64_t>(input_size)}, std::move(options));
}

/// Several inputs written in braces: `summary(net, {{3, 32, 32}, {10, 4}})`. (Two 1-D inputs
/// read like one 2-D shape in braces; write them as `std::vector<std::vector<std::int64_t>>{{3}, {5}}`.)
template <class M>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::initializer_list<std::initializer_list<std::int64_t>> input_sizes,
                              SummaryOptions options = {}) {
  std::vector<std::vector<std::int64_t>> sizes;
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
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary(M& model) {
  namespace impl = detail::summary;
  torch::nn::Module& root = impl::root_module(model);
  impl::SummaryBuilder<Summary::Row> builder(root);
  builder.finish();
  return impl::SummaryAccess::make(builder, SummaryOptions{}, 0, /*forward_pass=*/false, false);
}

/// torchinfo's `summary(model, input_data=...)`: summarises a forward pass on real inputs
/// (tensors or anything else the model's `forward` takes), shapes printed as given.
///
/// @throws Error when `forward` cannot be called with the inputs or throws (naming them), for a
///         negative depth, and an unknown or repeated column in `options.columns`.
///
///     auto info = torchkit::summary_of(lstm_net, tokens, lengths);
template <class M, class... Ts>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary_of(const SummaryOptions& options, M& model, Ts&&... example_inputs) {
  namespace impl = detail::summary;
  impl::check_options(options);
  std::string tried;
  ((tried += (tried.empty() ? "" : ", ") + impl::describe_argument(example_inputs)), ...);
  const std::int64_t input_bytes = (std::int64_t{0} + ... + impl::bytes_of_argument(example_inputs));
  return impl::observe(model, options, tried, input_bytes, /*batch_synthesized=*/false, [&](auto& builder) {
    if (!impl::can_run<M, Ts&&...>(model)) {
      using Target = std::remove_cvref_t<decltype(impl::forward_target(model))>;
      throw impl::forward_signature_error<Target>("these arguments", tried);
    }
    impl::run_model(builder, model, std::forward<Ts>(example_inputs)...);
  });
}

/// summary_of with default options.
template <class M, class... Ts>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary_of(M& model, Ts&&... example_inputs) {
  return summary_of(SummaryOptions{}, model, std::forward<Ts>(example_inputs)...);
}

}  // namespace torchkit
// ---- end torchkit/summary.hpp ----
// ---- begin torchkit/capture.hpp ----
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

// ---- begin torchkit/detail/name_pattern.hpp ----
/// @file detail/name_pattern.hpp
/// Internals of the name patterns (the public part, NamePattern, regex() and PatternList, is in
/// torchkit/name_pattern.hpp, included here): the parameter table (each tensor once, with every
/// name it is reachable under), selection with validation, and the "closest names" suggestion
/// that makes a typo fail loudly instead of matching nothing.

// ---- begin torchkit/name_pattern.hpp ----
/// @file name_pattern.hpp
/// Parameter-name patterns, shared by freeze.hpp (tip 8) and param_groups.hpp (tip 9):
/// `NamePattern` (an exact name, a module path, a glob or a regular expression),
/// `torchkit::regex()`, and `PatternList`, the one list type every function that selects
/// parameters by name accepts.
///
///     torchkit::freeze(net, {"cnn.VGG_16.convolution1_1", "*.bias", torchkit::regex(R"(.*_2\.weight)")});
///
/// A new kind of pattern goes here: an enumerator in NamePattern::Kind, a factory like regex(),
/// a case in matches() and in to_string() (detail/name_pattern.hpp's select() and suggestions
/// work on any kind).


#include <fmt/format.h>

#include <concepts>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <ranges>
#include <regex>
#include <string>
#include <string_view>
#include <type_traits>
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
  /// Whether this is a name, a glob or a regex.
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

/// A pattern that selects the parameters whose whole name matches the ECMAScript regular
/// expression `expression` (`std::regex_match`; Python: `re.fullmatch(expression, name)`).
///
/// @throws Error naming the expression when it is not a valid regular expression.
///
///     torchkit::freeze(model, {torchkit::regex(R"(cnn\.VGG_16\.convolution1_\d\..*)")});
[[nodiscard]] inline NamePattern regex(std::string expression) {
  std::shared_ptr<const std::regex> compiled;
  try {
    compiled = std::make_shared<const std::regex>(expression, detail::regex_flags);
  } catch (const std::regex_error& error) {
    detail::fail("regex: \"{}\" is not a valid regular expression ({}); expected an ECMAScript "
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

/// A list of name patterns: what every function that selects parameters by name takes
/// (freeze, unfreeze, freeze_all_except, FreezeByName, ParamGroupBuilder::add and
/// ParamGroupBuilder::no_weight_decay). It is made implicitly from
/// - a braced list: `{"features.0", "*.bias", torchkit::regex(".*_2\\.weight")}`;
/// - any range of strings or patterns: `std::vector<std::string>`, `std::vector<NamePattern>`,
///   `std::array<std::string_view, 3>`, `std::set<std::string>`, ...;
/// - one pattern: `"features.0"`, a `std::string`, a `NamePattern`.
///
///     const std::vector<std::string> no_grad{"cnn.VGG_16.convolution1_1"};
///     torchkit::freeze(net, no_grad);                  // the same call as
///     torchkit::freeze(net, {"cnn.VGG_16.convolution1_1"});
class PatternList {
 public:
  /// No patterns (the functions that take a list refuse an empty one, naming themselves).
  PatternList() = default;
  /// `{"a", "*.bias", torchkit::regex("...")}`.
  PatternList(std::initializer_list<NamePattern> patterns)  // NOLINT(google-explicit-constructor)
      : patterns_(patterns) {}
  /// Any range whose elements convert to NamePattern.
  template <NamePatternRange R>
    requires(!std::same_as<std::remove_cvref_t<R>, PatternList>)
  PatternList(R&& patterns) {  // NOLINT(google-explicit-constructor,bugprone-forwarding-reference-overload)
    if constexpr (std::ranges::sized_range<R>) {
      patterns_.reserve(static_cast<std::size_t>(std::ranges::size(patterns)));
    }
    for (auto&& pattern : patterns) {
      patterns_.emplace_back(std::forward<decltype(pattern)>(pattern));
    }
  }
  /// One pattern.
  PatternList(NamePattern pattern) : patterns_{std::move(pattern)} {}  // NOLINT(google-explicit-constructor)
  /// One name, module path or glob. Throws Error for a null pointer.
  PatternList(const char* text) : PatternList(NamePattern(text)) {}  // NOLINT(google-explicit-constructor)
  /// One name, module path or glob.
  PatternList(std::string text) : PatternList(NamePattern(std::move(text))) {}  // NOLINT(google-explicit-constructor)
  /// One name, module path or glob.
  PatternList(std::string_view text) : PatternList(NamePattern(text)) {}  // NOLINT(google-explicit-constructor)

  /// The number of patterns.
  [[nodiscard]] std::size_t size() const noexcept { return patterns_.size(); }
  /// Whether there are no patterns.
  [[nodiscard]] bool empty() const noexcept { return patterns_.empty(); }
  /// The pattern at `index` (< size(), unchecked, as `std::vector`).
  [[nodiscard]] const NamePattern& operator[](std::size_t index) const { return patterns_[index]; }
  /// The patterns, in the order given. (PatternList itself is no range, so that {fmt} prints it
  /// as its to_string() also where <fmt/ranges.h> is included.)
  [[nodiscard]] const std::vector<NamePattern>& patterns() const noexcept { return patterns_; }

  /// The patterns as messages show them: `"a", "*.bias", regex("b.*")`.
  [[nodiscard]] std::string to_string() const {
    std::string text;
    for (const NamePattern& pattern : patterns_) {
      text += (text.empty() ? "" : ", ") + pattern.to_string();
    }
    return text;
  }

 private:
  std::vector<NamePattern> patterns_;
};

namespace detail {
/// NamePattern and PatternList format with `{fmt}` as their to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<NamePattern> = true;
template <>
inline constexpr bool formats_with_to_string<PatternList> = true;
}  // namespace detail

}  // namespace torchkit
// ---- end torchkit/name_pattern.hpp ----

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace torchkit {
namespace detail {

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
/// traversal for the other names would cost twice as much). `caller` names the public function
/// in the error for an empty holder or a null pointer.
template <ModuleLike M>
[[nodiscard]] std::vector<ParameterEntry> parameter_table(const M& model, std::string_view caller = "module_of") {
  const auto all = module_of(model, caller).named_parameters(/*recurse=*/true);
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

/// What to write instead, for a pattern that matched nothing, or "": a name or glob written
/// like a regular expression ("features\\.\\d+", "^conv", "a|b") gets `torchkit::regex(...)`; a
/// dotted name whose first part is no top-level module but which matches once that part is
/// dropped (a "model." or DataParallel's "module." prefix) gets the name without it.
[[nodiscard]] inline std::string pattern_hint(const NamePattern& pattern, std::span<const ParameterEntry> table) {
  const std::string& text = pattern.text();
  if (pattern.kind() == NamePattern::Kind::regex) return "";
  // (".*" is a glob too: "features.*" is every parameter under features.)
  static constexpr std::string_view regex_marks[] = {"\\", "^", "$", "[", "(", "|", "+", "{"};
  for (const auto mark : regex_marks) {
    if (text.find(mark) != std::string::npos) {
      return fmt::format("; it looks like a regular expression: write torchkit::regex(\"{}\")", text);
    }
  }
  const auto dot = text.find('.');
  if (dot == std::string::npos || dot + 1 >= text.size()) return "";
  const std::string first = text.substr(0, dot);
  const bool first_exists = std::any_of(table.begin(), table.end(), [&](const ParameterEntry& entry) {
    return entry.name.compare(0, first.size() + 1, first + ".") == 0 || entry.name == first;
  });
  if (first_exists) return "";
  const NamePattern rest(text.substr(dot + 1));
  const bool rest_matches =
      std::any_of(table.begin(), table.end(), [&](const ParameterEntry& entry) { return matches(rest, entry); });
  return rest_matches
             ? fmt::format("; the model has no top-level module \"{}\": did you mean \"{}\" (names are relative "
                           "to the model you pass)?",
                           first, rest.text())
             : std::string();
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
    TORCHKIT_CHECK(any, "{}: pattern {} (pattern {} of {}) matches no parameter of the model ({} parameters); the closest names are {}{}",
                   context, pattern.to_string(), p + 1, patterns.size(), table.size(),
                   closest_names(pattern.text(), table), pattern_hint(pattern, table));
  }
  return selected;
}

}  // namespace detail
}  // namespace torchkit
// ---- end torchkit/detail/name_pattern.hpp ----

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
// ---- end torchkit/capture.hpp ----
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
/// gradient elements, and in-place scaling and clamping of such a run. Written once with
/// GCC/clang vector extensions and several independent accumulators, so they vectorise at any
/// optimisation level, and built four times: portable (the compiler's baseline, SSE2 on
/// x86-64), AVX + F16C, AVX2 + F16C, and AVX-512 (F, BW, DQ, VL) with 64-byte vectors. The best
/// one the CPU (and OS) supports is chosen at run time, as LibTorch's own kernels dispatch on
/// CPU capability; ForceIsa pins a lower one (tests and benchmarks run every path).
///
/// Every path gives the same bits: each reduction keeps the same 128 bytes of partial sums
/// (32 float / 16 double lanes, whatever the vector width) and adds them up in the same order,
/// and no path fuses a multiply and an add (FMA contraction is off in this file, for GCC and
/// clang), so a CPU with AVX-512 and one with only SSE2 return the same norm to the last bit.
///
/// Accumulation follows PyTorch: in float for float, float16 and bfloat16 elements, in double
/// for double elements. Partials of separate runs are combined in double by the caller.


#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define TORCHKIT_CLIP_X86_DISPATCH 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define TORCHKIT_CLIP_X86_DISPATCH 0
#endif

// No multiply-add is fused into an FMA in these kernels (GCC fuses by default under -std=gnu++20
// wherever the target has FMA; clang fuses within an expression), so that the portable path and
// the AVX/AVX2/AVX-512 paths round alike. GCC: for every function in this file; clang: a pragma
// at the top of each kernel body (TORCHKIT_CLIP_NO_CONTRACT).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
#if defined(__clang__)
#define TORCHKIT_CLIP_NO_CONTRACT _Pragma("clang fp contract(off)")
#else
#define TORCHKIT_CLIP_NO_CONTRACT
#endif
// The block lambdas of the float16/bfloat16 paths are inlined into their caller, which is
// compiled for one instruction set ([[gnu::target]]); a lambda's own call operator would be
// compiled for the baseline and split the wide vectors.
#define TORCHKIT_CLIP_INLINE __attribute__((always_inline))

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

/// The instruction sets the kernels are built for, in increasing order.
enum class Isa : std::uint8_t { portable, avx, avx2, avx512 };

[[nodiscard]] inline const char* isa_name(Isa isa) noexcept {
  switch (isa) {
    case Isa::portable: return "portable";
    case Isa::avx: return "avx";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "?";
}

/// GCC/clang vector types of `Bytes` bytes (16, 32 or 64) for float and double, with the integer
/// vector of the same lane count and size used for masks and counts.
template <class T, int Bytes>
struct VectorOf {
  typedef T Vector __attribute__((vector_size(Bytes)));
  typedef std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t> Lane;
  typedef Lane Mask __attribute__((vector_size(Bytes)));
};

/// 16-bit and 32-bit integer vectors with the lanes of a `Bytes`-byte float vector (bfloat16).
template <int Bytes>
struct HalvesOf {
  typedef std::uint16_t Halves __attribute__((vector_size(Bytes / 2)));
  typedef std::uint32_t Words __attribute__((vector_size(Bytes)));
};

// Comparisons of 64-byte vectors. GCC lowers the ISA-generic templates below before inlining
// them into each instruction set's entry point, and there a comparison of 64-byte vectors (float
// or integer) becomes one scalar comparison a lane: with GCC 16 the AVX-512 clamp ran 11x slower
// and the zero-norm count 12x, with GCC 12-16 the infinity norm 20x. So for 64-byte vectors a
// float is compared through its magnitude's bits as an integer (the sign cleared: they order as
// the magnitudes do, and lie above infinity's exactly for NaN), by the sign of a difference
// (lanes_above); maxima are written `a > b ? a : b`, which GCC keeps a vector max at every
// width. Narrower vectors keep plain comparisons, which every compiler here keeps vector
// instructions and which measured faster there (each kernel timed on every path with GCC 12, 14
// and 16 and clang 19 and 21; bench/clip_bench's clip_grad_value and clip_grad_norm_inf rows).

/// All bits but the sign, as an integer lane of T's width: `bits & magnitude_bits<T>` is |x|.
template <class T>
inline constexpr auto magnitude_bits = std::numeric_limits<std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>>::max();

/// The bits of +infinity as an integer lane of T's width: a magnitude's bits are above these
/// exactly when the value is NaN, and at least these when it is inf or NaN.
template <class T>
inline constexpr auto infinity_bits =
    __builtin_bit_cast(typename VectorOf<T, 16>::Lane, std::numeric_limits<T>::infinity());

/// `result` = all ones in the lanes where `bits` > `limit`, zero elsewhere, for lanes and limit
/// in [0, the lane type's maximum] (magnitudes' bits). 64-byte vectors: the sign of
/// `limit - bits` (which cannot overflow there) spread over the lane by an arithmetic shift, no
/// comparison; narrower ones: the comparison, which every compiler here keeps a vector
/// instruction at those widths (the shift measured slower there). An out parameter: a vector
/// return value of a function outside its instruction set draws -Wpsabi.
template <class Mask, class Lane>
[[gnu::always_inline]] inline void lanes_above(const Mask& bits, Lane limit, Mask& result) noexcept {
  if constexpr (sizeof(Mask) == 64) {
    constexpr int sign_shift = static_cast<int>(sizeof(Lane)) * 8 - 1;
    result = ((Mask{} + limit) - bits) >> sign_shift;
  } else {
    result = bits > (Mask{} + limit);
  }
}

/// `result` = all ones in the lanes where the float or double `x` is NaN (`nan`) or is not zero
/// (`!nan`), zero elsewhere: for 64-byte vectors from the magnitude's bits (lanes_above),
/// narrower ones compare the values.
template <bool nan, class Vector, class Mask>
[[gnu::always_inline]] inline void lanes_where(const Vector& x, Mask& result) noexcept {
  using T = std::remove_cvref_t<decltype(x[0])>;
  if constexpr (sizeof(Vector) == 64) {
    const auto limit = nan ? infinity_bits<T> : decltype(magnitude_bits<T>){0};
    lanes_above(__builtin_bit_cast(Mask, x) & magnitude_bits<T>, limit, result);
  } else if constexpr (nan) {
    result = __builtin_bit_cast(Mask, x != x);
  } else {
    result = __builtin_bit_cast(Mask, x != Vector{});
  }
}

/// Bytes of partial sums every reduction keeps, whatever its vector width: 4 vectors of 32
/// bytes (32 float or 16 double lanes). With 64-byte vectors the same lanes sit in 2 vectors,
/// with 16-byte vectors in 8.
inline constexpr std::int64_t partial_bytes = 128;

/// The vector width of each instruction set's kernels: the baseline's registers (SSE2, NEON)
/// hold 16 bytes; wider vectors there would be split and spilled.
template <Isa isa>
inline constexpr int vector_bytes = isa == Isa::avx512 ? 64 : isa == Isa::portable ? 16 : 32;

/// The partial of `size` contiguous elements: sum of squares (two), of magnitudes (one), of
/// p-th powers (general), the count of non-zeros (zero) or the largest magnitude, NaN if any
/// element is NaN (infinity). T is float or double; the result is widened to double. The same
/// bits for either vector width (see partial_bytes).
template <NormKind kind, class T, int Bytes>
[[gnu::always_inline]] inline double reduce_run(const T* data, std::int64_t size, double p) {
  TORCHKIT_CLIP_NO_CONTRACT
  using Vector = typename VectorOf<T, Bytes>::Vector;
  using Mask = typename VectorOf<T, Bytes>::Mask;
  using Lane = typename VectorOf<T, Bytes>::Lane;
  constexpr std::int64_t lanes = Bytes / static_cast<std::int64_t>(sizeof(T));
  constexpr std::int64_t unroll = partial_bytes / Bytes;
  constexpr std::int64_t block = partial_bytes / static_cast<std::int64_t>(sizeof(T));
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
    Mask counts[unroll] = {};   // zero: minus the non-zero lanes seen
    Mask largest[unroll] = {};  // infinity: the largest magnitude's bits seen (NaN's are largest)
    const Mask magnitude = Mask{} + magnitude_bits<T>;
    for (; i + block <= size; i += block) {
      for (std::int64_t u = 0; u < unroll; ++u) {
        Vector x;
        std::memcpy(&x, data + i + u * lanes, sizeof(Vector));
        if constexpr (kind == NormKind::two) {
          accumulators[u] += x * x;
        } else if constexpr (kind == NormKind::one) {
          accumulators[u] += __builtin_bit_cast(Vector, __builtin_bit_cast(Mask, x) & magnitude);
        } else if constexpr (kind == NormKind::infinity) {
          const Mask bits = __builtin_bit_cast(Mask, x) & magnitude;
          largest[u] = bits > largest[u] ? bits : largest[u];
        } else {
          Mask nonzero;  // -1 where x != 0
          lanes_where<false>(x, nonzero);
          counts[u] -= nonzero;
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
      Lane top = 0;
      for (std::int64_t u = 0; u < unroll; ++u) {
        for (std::int64_t lane = 0; lane < lanes; ++lane) top = std::max(top, largest[u][lane]);
      }
      for (; i < size; ++i) top = std::max(top, __builtin_bit_cast(Lane, data[i]) & magnitude_bits<T>);
      return top > infinity_bits<T> ? std::numeric_limits<double>::quiet_NaN()
                                    : static_cast<double>(__builtin_bit_cast(T, top));
    } else {
      // The partial lanes in a fixed order, laid out as four 32-byte vectors whatever the width,
      // so the result depends neither on the path nor on the thread count.
      T partial[block];
      std::memcpy(partial, accumulators, sizeof(partial));
      constexpr std::int64_t quarter = block / 4;
      T total = 0;
      for (std::int64_t lane = 0; lane < quarter; ++lane) {
        total += (partial[lane] + partial[quarter + lane]) + (partial[2 * quarter + lane] + partial[3 * quarter + lane]);
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

template <class T, int Bytes>
[[gnu::always_inline]] inline double reduce_run(NormKind kind, const T* data, std::int64_t size, double p) {
  switch (kind) {
    case NormKind::zero: return reduce_run<NormKind::zero, T, Bytes>(data, size, p);
    case NormKind::one: return reduce_run<NormKind::one, T, Bytes>(data, size, p);
    case NormKind::two: return reduce_run<NormKind::two, T, Bytes>(data, size, p);
    case NormKind::infinity: return reduce_run<NormKind::infinity, T, Bytes>(data, size, p);
    case NormKind::general: return reduce_run<NormKind::general, T, Bytes>(data, size, p);
  }
  return 0.0;
}

/// `data[i] *= factor` over `size` contiguous float or double elements.
template <class T, int Bytes>
[[gnu::always_inline]] inline void scale_run(T* data, std::int64_t size, T factor) {
  using Vector = typename VectorOf<T, Bytes>::Vector;
  constexpr std::int64_t lanes = Bytes / static_cast<std::int64_t>(sizeof(T));
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

/// `data[i] = clamp(data[i], -bound, bound)` over `size` contiguous float or double elements
/// (bound >= 0, or +inf); NaN stays NaN, as `at::clamp_` does.
template <class T, int Bytes>
[[gnu::always_inline]] inline void clamp_run(T* data, std::int64_t size, T bound) {
  using Vector = typename VectorOf<T, Bytes>::Vector;
  using Mask = typename VectorOf<T, Bytes>::Mask;
  using Lane = typename VectorOf<T, Bytes>::Lane;
  constexpr std::int64_t lanes = Bytes / static_cast<std::int64_t>(sizeof(T));
  const T lower = -bound;
  std::int64_t i = 0;
  if constexpr (Bytes == 64) {
    // On the bits (see lanes_above): an element of magnitude above `bound`, not NaN, becomes
    // `bound` with the element's sign. A bound of -0.0 (limits +0.0, then -0.0) is left to the
    // element-by-element loop.
    const Mask magnitude = Mask{} + magnitude_bits<T>;
    const Mask bound_bits = Mask{} + __builtin_bit_cast(Lane, bound);
    for (; i + lanes <= size && !std::signbit(bound); i += lanes) {
      Mask bits;
      std::memcpy(&bits, data + i, sizeof(Mask));
      const Mask absolute = bits & magnitude;
      const Mask smaller = absolute > bound_bits ? bound_bits : absolute;  // a vector min
      Mask nan;
      lanes_above(absolute, infinity_bits<T>, nan);
      bits = (bits & ~magnitude) | (smaller ^ ((smaller ^ absolute) & nan));  // NaN: unchanged
      std::memcpy(data + i, &bits, sizeof(Mask));
    }
  } else {
    Vector lowers, uppers;  // (not `Vector{} + lower`: 0 + -0.0 is +0.0)
    for (std::int64_t lane = 0; lane < lanes; ++lane) {
      lowers[lane] = lower;
      uppers[lane] = bound;
    }
    for (; i + lanes <= size; i += lanes) {
      Vector x;
      std::memcpy(&x, data + i, sizeof(Vector));
      // Comparisons with NaN are false, so NaN lanes keep their value.
      const Mask below = __builtin_bit_cast(Mask, x < lowers);
      x = __builtin_bit_cast(Vector,
                             (__builtin_bit_cast(Mask, lowers) & below) | (__builtin_bit_cast(Mask, x) & ~below));
      const Mask above = __builtin_bit_cast(Mask, x > uppers);
      x = __builtin_bit_cast(Vector,
                             (__builtin_bit_cast(Mask, uppers) & above) | (__builtin_bit_cast(Mask, x) & ~above));
      std::memcpy(data + i, &x, sizeof(Vector));
    }
  }
  for (; i < size; ++i) {
    if (data[i] < lower) {
      data[i] = lower;
    } else if (data[i] > bound) {
      data[i] = bound;
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

/// bfloat16 -> float: the 16 bits become the high half of the float (exact).
template <int Bytes>
[[gnu::always_inline]] inline void bfloat16_to_float(const std::uint16_t* source, float* target, std::int64_t size) {
  using Halves = typename HalvesOf<Bytes>::Halves;
  using Words = typename HalvesOf<Bytes>::Words;
  constexpr std::int64_t lanes = Bytes / 4;
  std::int64_t i = 0;
  for (; i + lanes <= size; i += lanes) {
    Halves halves;
    std::memcpy(&halves, source + i, sizeof(halves));
    const Words words = __builtin_convertvector(halves, Words) << 16;
    std::memcpy(target + i, &words, sizeof(words));
  }
  for (; i < size; ++i) target[i] = __builtin_bit_cast(float, static_cast<std::uint32_t>(source[i]) << 16);
}

/// float -> bfloat16, rounding to nearest even and NaN to 0x7FC0, as c10::BFloat16 does.
template <int Bytes>
[[gnu::always_inline]] inline void float_to_bfloat16(const float* source, std::uint16_t* target, std::int64_t size) {
  using Floats = typename VectorOf<float, Bytes>::Vector;
  using Halves = typename HalvesOf<Bytes>::Halves;
  using Words = typename HalvesOf<Bytes>::Words;
  using Mask = typename VectorOf<float, Bytes>::Mask;
  constexpr std::int64_t lanes = Bytes / 4;
  std::int64_t i = 0;
  for (; i + lanes <= size; i += lanes) {
    Floats x;
    std::memcpy(&x, source + i, sizeof(x));
    const Words bits = __builtin_bit_cast(Words, x);
    const Words rounded = (bits + (((bits >> 16) & 1u) + 0x7FFFu)) >> 16;
    Mask nan_lanes;
    lanes_where<true>(x, nan_lanes);
    const Words nan = __builtin_bit_cast(Words, nan_lanes);
    const Halves halves = __builtin_convertvector((rounded & ~nan) | ((Words{} + 0x7FC0u) & nan), Halves);
    std::memcpy(target + i, &halves, sizeof(halves));
  }
  for (; i < size; ++i) target[i] = c10::detail::round_to_nearest_even(source[i]);
}

#if TORCHKIT_CLIP_X86_DISPATCH
[[gnu::target("avx,f16c")]] inline void half_to_float_f16c(const std::uint16_t* source, float* target,
                                                           std::int64_t size) {
  std::int64_t i = 0;
  for (; i + 8 <= size; i += 8) {
    const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(source + i));
    _mm256_storeu_ps(target + i, _mm256_cvtph_ps(halves));
  }
  half_to_float(source + i, target + i, size - i);
}
[[gnu::target("avx,f16c")]] inline void float_to_half_f16c(const float* source, std::uint16_t* target,
                                                           std::int64_t size) {
  std::int64_t i = 0;
  for (; i + 8 <= size; i += 8) {
    const __m128i halves = _mm256_cvtps_ph(_mm256_loadu_ps(source + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(target + i), halves);
  }
  float_to_half(source + i, target + i, size - i);
}
// (The maskz forms, with every lane selected: GCC 12's unmasked ones start from an
// _mm512_undefined value that -Wmaybe-uninitialized reports.)
[[gnu::target("avx512f")]] inline void half_to_float_avx512(const std::uint16_t* source, float* target,
                                                            std::int64_t size) {
  std::int64_t i = 0;
  for (; i + 16 <= size; i += 16) {
    const __m256i halves = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(source + i));
    _mm512_storeu_ps(target + i, _mm512_maskz_cvtph_ps(0xFFFF, halves));
  }
  half_to_float(source + i, target + i, size - i);
}
[[gnu::target("avx512f")]] inline void float_to_half_avx512(const float* source, std::uint16_t* target,
                                                            std::int64_t size) {
  std::int64_t i = 0;
  for (; i + 16 <= size; i += 16) {
    const __m256i halves = _mm512_maskz_cvtps_ph(0xFFFF, _mm512_loadu_ps(source + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(target + i), halves);
  }
  float_to_half(source + i, target + i, size - i);
}
#endif

/// float16 -> float with the best conversion `isa` has (all exact).
template <Isa isa>
inline void half_to_float(const std::uint16_t* source, float* target, std::int64_t size) {
#if TORCHKIT_CLIP_X86_DISPATCH
  if constexpr (isa == Isa::avx512) {
    half_to_float_avx512(source, target, size);
    return;
  } else if constexpr (isa != Isa::portable) {
    half_to_float_f16c(source, target, size);
    return;
  }
#endif
  half_to_float(source, target, size);
}

/// Replaces each NaN by the quiet NaN of its sign with an empty payload, which F16C converts to
/// c10's float16 NaN (sign | 0x7E00); the hardware would keep part of the payload.
template <int Bytes>
[[gnu::always_inline]] inline void canonical_nans(float* data, std::int64_t size) {
  using Floats = typename VectorOf<float, Bytes>::Vector;
  using Words = typename HalvesOf<Bytes>::Words;
  using Mask = typename VectorOf<float, Bytes>::Mask;
  constexpr std::int64_t lanes = Bytes / 4;
  std::int64_t i = 0;
  for (; i + lanes <= size; i += lanes) {
    Floats x;
    std::memcpy(&x, data + i, sizeof(x));
    const Words bits = __builtin_bit_cast(Words, x);
    Mask nan_lanes;
    lanes_where<true>(x, nan_lanes);
    const Words nan = __builtin_bit_cast(Words, nan_lanes);
    const Words canonical = (bits & 0x80000000u) | 0x7FC00000u;
    const Words result = (canonical & nan) | (bits & ~nan);
    std::memcpy(data + i, &result, sizeof(result));
  }
  for (; i < size; ++i) {
    if (std::isnan(data[i])) data[i] = std::copysign(std::numeric_limits<float>::quiet_NaN(), data[i]);
  }
}

/// float -> float16, rounding to nearest even, NaN to sign | 0x7E00: c10's software conversion
/// and F16C (after canonical_nans) agree on every input.
template <Isa isa>
inline void float_to_half(float* source, std::uint16_t* target, std::int64_t size) {
#if TORCHKIT_CLIP_X86_DISPATCH
  if constexpr (isa != Isa::portable) canonical_nans<vector_bytes<isa>>(source, size);
  if constexpr (isa == Isa::avx512) {
    float_to_half_avx512(source, target, size);
    return;
  } else if constexpr (isa != Isa::portable) {
    float_to_half_f16c(source, target, size);
    return;
  }
#endif
  float_to_half(source, target, size);
}

/// Runs `work(buffer, count)` over a float16 (`is_half`) or bfloat16 run block by block, the
/// block widened to float in `buffer`; with `write_back` the block is rounded back afterwards.
template <Isa isa, bool write_back, class Work>
[[gnu::always_inline]] inline void for_each_block(bool is_half, std::uint16_t* data, std::int64_t size, Work&& work) {
  constexpr int bytes = vector_bytes<isa>;
  alignas(64) float buffer[block_elements];
  for (std::int64_t begin = 0; begin < size; begin += block_elements) {
    const std::int64_t count = std::min(block_elements, size - begin);
    if (is_half) {
      half_to_float<isa>(data + begin, buffer, count);
    } else {
      bfloat16_to_float<bytes>(data + begin, buffer, count);
    }
    work(buffer, count);
    if constexpr (write_back) {
      if (is_half) {
        float_to_half<isa>(buffer, data + begin, count);
      } else {
        float_to_bfloat16<bytes>(buffer, data + begin, count);
      }
    }
  }
}

/// Clamps to [-bound, bound] with the bounds rounded to the element type, as `at::clamp_` does.
template <Isa isa>
[[gnu::always_inline]] inline void clamp_any(at::ScalarType dtype, void* data, std::int64_t size, double bound) {
  constexpr int bytes = vector_bytes<isa>;
  switch (dtype) {
    case at::kFloat: {
      const auto upper = static_cast<float>(bound);
      clamp_run<float, bytes>(static_cast<float*>(data), size, upper);
      break;
    }
    case at::kDouble: clamp_run<double, bytes>(static_cast<double*>(data), size, bound); break;
    case at::kHalf:
    case at::kBFloat16: {
      const bool is_half = dtype == at::kHalf;
      const auto upper = is_half ? static_cast<float>(c10::Half(static_cast<float>(bound)))
                                 : static_cast<float>(c10::BFloat16(static_cast<float>(bound)));
      for_each_block<isa, true>(is_half, static_cast<std::uint16_t*>(data), size,
                                [&](float* buffer, std::int64_t count) TORCHKIT_CLIP_INLINE {
                                  clamp_run<float, bytes>(buffer, count, upper);
                                });
      break;
    }
    default: break;
  }
}

template <Isa isa>
[[gnu::always_inline]] inline double reduce_any(at::ScalarType dtype, NormKind kind, const void* data,
                                                std::int64_t size, double p) {
  constexpr int bytes = vector_bytes<isa>;
  switch (dtype) {
    case at::kFloat: return reduce_run<float, bytes>(kind, static_cast<const float*>(data), size, p);
    case at::kDouble: return reduce_run<double, bytes>(kind, static_cast<const double*>(data), size, p);
    case at::kHalf:
    case at::kBFloat16: {
      // Partial of a float16 or bfloat16 run, accumulated in float block by block.
      double partial = 0.0;
      // The run is only read: for_each_block<.., false> never writes through the pointer.
      for_each_block<isa, false>(dtype == at::kHalf, static_cast<std::uint16_t*>(const_cast<void*>(data)), size,
                                 [&](float* buffer, std::int64_t count) TORCHKIT_CLIP_INLINE {
                                   partial = combine(kind, partial, reduce_run<float, bytes>(kind, buffer, count, p));
                                 });
      return partial;
    }
    default: return std::numeric_limits<double>::quiet_NaN();
  }
}

/// Whether `tensor.mul_(0-dim tensor)` on a float16/bfloat16 CPU tensor rounds the factor to
/// the tensor's type before multiplying in float (LibTorch up to 2.0), or multiplies by the
/// factor as a float (LibTorch 2.1 on: pytorch/pytorch#98820). Checked with 1.13 and 2.6.
inline constexpr bool mul_rounds_factor_to_element_type = !TORCHKIT_TORCH_AT_LEAST(2, 1);

/// The float a float16 (`is_half`) or bfloat16 tensor's `mul_(factor)` multiplies by, on the
/// LibTorch at hand (see mul_rounds_factor_to_element_type).
[[nodiscard]] inline float factor_for_16_bit(bool is_half, double factor) noexcept {
  const auto single = static_cast<float>(factor);
  if (!mul_rounds_factor_to_element_type) return single;
  return is_half ? static_cast<float>(c10::Half(single)) : static_cast<float>(c10::BFloat16(single));
}

/// Multiplies by `factor` in the element type's compute precision (float for float16/bfloat16,
/// the factor as factor_for_16_bit gives it), as `tensor.mul_(0-dim tensor)` does.
template <Isa isa>
[[gnu::always_inline]] inline void scale_any(at::ScalarType dtype, void* data, std::int64_t size, double factor) {
  constexpr int bytes = vector_bytes<isa>;
  switch (dtype) {
    case at::kFloat: scale_run<float, bytes>(static_cast<float*>(data), size, static_cast<float>(factor)); break;
    case at::kDouble: scale_run<double, bytes>(static_cast<double*>(data), size, factor); break;
    case at::kHalf:
    case at::kBFloat16: {
      const bool is_half = dtype == at::kHalf;
      const float rounded = factor_for_16_bit(is_half, factor);
      for_each_block<isa, true>(is_half, static_cast<std::uint16_t*>(data), size,
                                [&](float* buffer, std::int64_t count) TORCHKIT_CLIP_INLINE {
                                  scale_run<float, bytes>(buffer, count, rounded);
                                });
      break;
    }
    default: break;
  }
}

/// A contiguous run of one gradient's elements, the unit of (parallel) work on the CPU.
struct Run {
  /// Leaves the fields unset: arrays of runs are sized first and then written (see
  /// GradientWriter in clip.hpp), and zeroing them would be wasted work.
  // NOLINTNEXTLINE(modernize-use-equals-default): `= default` would zero-initialize
  [[gnu::always_inline]] Run() noexcept {}
  [[gnu::always_inline]] Run(void* data_, std::int64_t size_, std::size_t gradient_, at::ScalarType dtype_) noexcept
      : data(data_), size(size_), gradient(gradient_), dtype(dtype_) {}

  void* data;
  std::int64_t size;
  std::size_t gradient;  // position in the caller's list of gradients
  at::ScalarType dtype;
};

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

/// The norm of every gradient from the partials of its runs (gradient k owns runs
/// [run_begin[k], run_begin[k + 1]): none when it is empty or not on the CPU, norm 0), combined
/// and finished in its dtype's precision as finish_in; returns the contributions of all
/// `count` norms combined (the partial of their total). One call for all gradients: these
/// helpers are compiled without contraction and so are not inlined into other code.
inline double gradient_norms(NormKind kind, double p, const Run* runs, const std::size_t* run_begin, std::size_t count,
                             const double* partials, double* norms) noexcept {
  double total = 0.0;
  for (std::size_t k = 0; k < count; ++k) {
    double norm = 0.0;
    if (run_begin[k] != run_begin[k + 1]) {
      double partial = partials[run_begin[k]];
      for (std::size_t r = run_begin[k] + 1; r < run_begin[k + 1]; ++r) partial = combine(kind, partial, partials[r]);
      norm = finish_in(runs[run_begin[k]].dtype, kind, partial, p);
    }
    norms[k] = norm;
    total = combine(kind, total, contribution(kind, norm, p));
  }
  return total;
}

#ifndef TORCHKIT_CLIP_PREFETCH_BYTES
#define TORCHKIT_CLIP_PREFETCH_BYTES 2048
#endif
#ifndef TORCHKIT_CLIP_PREFETCH_DISTANCE
#define TORCHKIT_CLIP_PREFETCH_DISTANCE 4
#endif
/// How many runs ahead the passes prefetch, and how many of a run's first bytes. Chosen by
/// measurement on bench/clip_bench's and bench/amp_bench's 2,000 x 512 sets (each gradient a
/// separate allocation of 2,048 bytes), not taken from elsewhere: asking for a whole small
/// gradient (2,048 bytes rather than 256) made the unscale-and-norm pass ~25 % and the plain
/// passes ~5-10 % faster there. Both can be overridden by defining the macros.
inline constexpr std::int64_t prefetch_distance = TORCHKIT_CLIP_PREFETCH_DISTANCE;
inline constexpr std::int64_t prefetch_bytes = TORCHKIT_CLIP_PREFETCH_BYTES;

/// Asks for the cache lines of `bytes` bytes from `address` on, to read (or to write).
template <bool for_write = false>
[[gnu::always_inline]] inline void prefetch_lines(const void* address, std::int64_t bytes) noexcept {
  const char* first = static_cast<const char*>(address);
  for (std::int64_t offset = 0; offset < bytes; offset += 64) {
    __builtin_prefetch(first + offset, for_write ? 1 : 0, 3);
  }
}

/// Small separate gradients defeat the hardware prefetcher (it retrains on every new
/// allocation): ask for a later run's first cache lines while this one is processed.
template <bool for_write>
[[gnu::always_inline]] inline void prefetch_run(const Run& run) noexcept {
  prefetch_lines<for_write>(
      run.data, std::min<std::int64_t>(run.size * static_cast<std::int64_t>(c10::elementSize(run.dtype)), prefetch_bytes));
}

/// `partials[r]` = the partial of `runs[r]`, for r < count, in order.
template <Isa isa>
[[gnu::always_inline]] inline void reduce_runs_any(const Run* runs, std::int64_t count, NormKind kind, double p,
                                                   double* partials) {
  for (std::int64_t r = 0; r < count; ++r) {
    if (r + prefetch_distance < count) prefetch_run<false>(runs[r + prefetch_distance]);
    partials[r] = reduce_any<isa>(runs[r].dtype, kind, runs[r].data, runs[r].size, p);
  }
}

/// Scales every run by `factor`, in order.
template <Isa isa>
[[gnu::always_inline]] inline void scale_runs_any(const Run* runs, std::int64_t count, double factor) {
  for (std::int64_t r = 0; r < count; ++r) {
    if (r + prefetch_distance < count) prefetch_run<true>(runs[r + prefetch_distance]);
    scale_any<isa>(runs[r].dtype, runs[r].data, runs[r].size, factor);
  }
}

// ---- Mixed precision (amp.hpp): unscaling by GradScaler's inverse scale, fused with the
// non-finite check, the norm and the clip. The unscaled value is PyTorch's
// `_amp_foreach_non_finite_check_and_unscale_` on the CPU: `x * inv` in the element type's
// compute precision (float for float16/bfloat16, then rounded back; double for double), left
// alone when inv is exactly 1; an element counts as non-finite when it is inf or nan before
// unscaling.

/// Whether some bit of the vector `bits` is set: an OR of its words, instead of a lane-by-lane
/// loop.
template <class Vector>
[[nodiscard, gnu::always_inline]] inline bool any_bit_set(const Vector& bits) noexcept {
  std::uint64_t words[sizeof(Vector) / 8];
  std::memcpy(words, &bits, sizeof(Vector));
  std::uint64_t any = 0;
  for (const std::uint64_t word : words) any |= word;
  return any != 0;
}

/// Whether some lane of `bits` is at least `threshold` (both in [1, the lane type's maximum]).
template <class Mask, class Lane>
[[nodiscard, gnu::always_inline]] inline bool any_lane_at_least(const Mask& bits, Lane threshold) noexcept {
  Mask at_least;
  lanes_above(bits, static_cast<Lane>(threshold - 1), at_least);
  return any_bit_set(at_least);
}

/// `data[i] *= inv` (when `multiply`) over `size` contiguous float or double elements; returns
/// whether any element was inf or nan before (x - x is 0 for every finite x, nan otherwise).
template <class T, int Bytes>
[[gnu::always_inline]] inline bool unscale_run(T* data, std::int64_t size, T inv, bool multiply) {
  TORCHKIT_CLIP_NO_CONTRACT
  using Vector = typename VectorOf<T, Bytes>::Vector;
  using Mask = typename VectorOf<T, Bytes>::Mask;
  constexpr std::int64_t lanes = Bytes / static_cast<std::int64_t>(sizeof(T));
  constexpr std::int64_t unroll = 4;  // independent checks: one sum would wait for each add
  const Vector invs = Vector{} + inv;
  Vector seen[unroll] = {};
  std::int64_t i = 0;
  const auto step = [&](std::int64_t at, Vector& check) TORCHKIT_CLIP_INLINE {
    Vector x;
    std::memcpy(&x, data + at, sizeof(Vector));
    check += x - x;
    if (multiply) {
      x *= invs;
      std::memcpy(data + at, &x, sizeof(Vector));
    }
  };
  for (; i + unroll * lanes <= size; i += unroll * lanes) {
    for (std::int64_t u = 0; u < unroll; ++u) step(i + u * lanes, seen[u]);
  }
  for (; i + lanes <= size; i += lanes) step(i, seen[0]);
  // Every lane of every check is 0 unless some x was inf or nan (then nan, which any sum
  // keeps): one vector comparison for the run (a lane-by-lane test of the four checks was
  // 40 % of GradScaler::unscale_ on 2,000 gradients of 512 floats).
  Vector all = seen[0];
  for (std::int64_t u = 1; u < unroll; ++u) all += seen[u];
  bool nonfinite = any_lane_at_least(__builtin_bit_cast(Mask, all) & magnitude_bits<T>, infinity_bits<T>);
  for (; i < size; ++i) {
    nonfinite = nonfinite || !std::isfinite(data[i]);
    if (multiply) data[i] *= inv;
  }
  return nonfinite;
}

/// `data[i] = (data[i] * inv) * factor`, each product rounded to T (no fused multiply), over
/// `size` contiguous float or double elements; `multiply` false skips the first product.
template <class T, int Bytes>
[[gnu::always_inline]] inline void unscale_scale_run(T* data, std::int64_t size, T inv, bool multiply, T factor) {
  TORCHKIT_CLIP_NO_CONTRACT
  using Vector = typename VectorOf<T, Bytes>::Vector;
  constexpr std::int64_t lanes = Bytes / static_cast<std::int64_t>(sizeof(T));
  const Vector invs = Vector{} + inv;
  const Vector factors = Vector{} + factor;
  std::int64_t i = 0;
  for (; i + lanes <= size; i += lanes) {
    Vector x;
    std::memcpy(&x, data + i, sizeof(Vector));
    if (multiply) x *= invs;
    x *= factors;
    std::memcpy(data + i, &x, sizeof(Vector));
  }
  for (; i < size; ++i) {
    T x = data[i];
    if (multiply) x *= inv;
    data[i] = x * factor;
  }
}

/// Rounds a float buffer to float16 (`is_half`) or bfloat16 and back, in place (what storing
/// an unscaled value in the gradient and reading it again gives).
template <Isa isa>
[[gnu::always_inline]] inline void round_trip_16(bool is_half, float* buffer, std::int64_t size) {
  constexpr int bytes = vector_bytes<isa>;
  alignas(64) std::uint16_t narrow[block_elements];
  if (is_half) {
    float_to_half<isa>(buffer, narrow, size);
    half_to_float<isa>(narrow, buffer, size);
  } else {
    float_to_bfloat16<bytes>(buffer, narrow, size);
    bfloat16_to_float<bytes>(narrow, buffer, size);
  }
}

/// Unscales `size` elements of `dtype` in place; returns whether any was inf or nan.
template <Isa isa>
[[gnu::always_inline]] inline bool unscale_any(at::ScalarType dtype, void* data, std::int64_t size, float inv) {
  constexpr int bytes = vector_bytes<isa>;
  const bool multiply = inv != 1.0f;
  switch (dtype) {
    case at::kFloat: return unscale_run<float, bytes>(static_cast<float*>(data), size, inv, multiply);
    case at::kDouble:
      return unscale_run<double, bytes>(static_cast<double*>(data), size, static_cast<double>(inv), multiply);
    case at::kHalf:
    case at::kBFloat16: {
      bool nonfinite = false;
      const auto work = [&](float* buffer, std::int64_t count) TORCHKIT_CLIP_INLINE {
        nonfinite = unscale_run<float, bytes>(buffer, count, inv, multiply) || nonfinite;
      };
      auto* narrow = static_cast<std::uint16_t*>(data);
      if (multiply) {
        for_each_block<isa, true>(dtype == at::kHalf, narrow, size, work);
      } else {
        for_each_block<isa, false>(dtype == at::kHalf, narrow, size, work);
      }
      return nonfinite;
    }
    default: return false;
  }
}

/// The sum of squares of `data[i] * inv` over `size` float or double elements in one pass, the
/// same bits as reduce_run<NormKind::two> over the unscaled values (same lanes, same order).
/// Non-finite elements are reported for the caller to test once for many runs: `largest_bits`
/// keeps, per lane, the largest magnitude's bits seen (integer operations beside the float
/// ones; inf and nan are exactly the magnitudes at or above infinity_bits), and `nonfinite` is
/// set when an element after the last whole block is inf or nan.
template <class T, int Bytes>
[[gnu::always_inline]] inline double unscale_reduce_two(const T* data, std::int64_t size, T inv,
                                                        typename VectorOf<T, Bytes>::Mask& largest_bits,
                                                        bool& nonfinite) {
  TORCHKIT_CLIP_NO_CONTRACT
  using Vector = typename VectorOf<T, Bytes>::Vector;
  constexpr std::int64_t lanes = Bytes / static_cast<std::int64_t>(sizeof(T));
  constexpr std::int64_t unroll = partial_bytes / Bytes;
  constexpr std::int64_t block = partial_bytes / static_cast<std::int64_t>(sizeof(T));
  using Mask = typename VectorOf<T, Bytes>::Mask;
  const Vector invs = Vector{} + inv;
  const Mask magnitude = Mask{} + magnitude_bits<T>;
  Vector accumulators[unroll] = {};
  Mask largest[unroll] = {};
  std::int64_t i = 0;
  for (; i + block <= size; i += block) {
    for (std::int64_t u = 0; u < unroll; ++u) {
      Vector x;
      std::memcpy(&x, data + i + u * lanes, sizeof(Vector));
      const Mask bits = __builtin_bit_cast(Mask, x) & magnitude;
      largest[u] = bits > largest[u] ? bits : largest[u];
      x *= invs;
      accumulators[u] += x * x;
    }
  }
  T partial[block];
  std::memcpy(partial, accumulators, sizeof(partial));
  constexpr std::int64_t quarter = block / 4;
  T total = 0;
  for (std::int64_t lane = 0; lane < quarter; ++lane) {
    total += (partial[lane] + partial[quarter + lane]) + (partial[2 * quarter + lane] + partial[3 * quarter + lane]);
  }
  for (std::int64_t u = 0; u < unroll; ++u) largest_bits = largest[u] > largest_bits ? largest[u] : largest_bits;
  bool found = false;
  for (; i < size; ++i) {
    found = found || !std::isfinite(data[i]);
    const T x = data[i] * inv;
    total += x * x;
  }
  nonfinite = found || nonfinite;
  return static_cast<double>(total);
}

/// unscale_reduce_any for float or double elements: the unscaled values block by block through a
/// buffer (a function template, not a lambda, so that it is compiled for the caller's target).
template <class T, int Bytes>
[[gnu::always_inline]] inline double unscale_reduce_wide(NormKind kind, const T* values, std::int64_t size, double p,
                                                         float inv, bool& nonfinite) {
  if (inv == 1.0f) {
    // Read-only check (unscale_run writes nothing without multiply), then the plain reduction.
    nonfinite = unscale_run<T, Bytes>(const_cast<T*>(values), size, T(1), false) || nonfinite;
    return reduce_run<T, Bytes>(kind, values, size, p);
  }
  if (kind == NormKind::two) {
    typename VectorOf<T, Bytes>::Mask largest_bits{};
    const double partial = unscale_reduce_two<T, Bytes>(values, size, static_cast<T>(inv), largest_bits, nonfinite);
    nonfinite = any_lane_at_least(largest_bits, infinity_bits<T>) || nonfinite;
    return partial;
  }
  alignas(64) T buffer[block_elements];
  double partial = 0.0;
  for (std::int64_t begin = 0; begin < size; begin += block_elements) {
    const std::int64_t count = std::min(block_elements, size - begin);
    std::memcpy(buffer, values + begin, static_cast<std::size_t>(count) * sizeof(T));
    nonfinite = unscale_run<T, Bytes>(buffer, count, static_cast<T>(inv), true) || nonfinite;
    partial = combine(kind, partial, reduce_run<T, Bytes>(kind, buffer, count, p));
  }
  return partial;
}

/// The norm partial (as reduce) of the unscaled values of `size` elements of `dtype`, without
/// writing them; `nonfinite` is set when any element is inf or nan.
template <Isa isa>
[[gnu::always_inline]] inline double unscale_reduce_any(at::ScalarType dtype, NormKind kind, const void* data,
                                                        std::int64_t size, double p, float inv, bool& nonfinite) {
  constexpr int bytes = vector_bytes<isa>;
  const bool multiply = inv != 1.0f;
  switch (dtype) {
    case at::kFloat:
      return unscale_reduce_wide<float, bytes>(kind, static_cast<const float*>(data), size, p, inv, nonfinite);
    case at::kDouble:
      return unscale_reduce_wide<double, bytes>(kind, static_cast<const double*>(data), size, p, inv, nonfinite);
    case at::kHalf:
    case at::kBFloat16: {
      const bool is_half = dtype == at::kHalf;
      double partial = 0.0;
      // Only read: for_each_block<.., false> never writes through the pointer.
      for_each_block<isa, false>(is_half, static_cast<std::uint16_t*>(const_cast<void*>(data)), size,
                                 [&](float* buffer, std::int64_t count) TORCHKIT_CLIP_INLINE {
                                   nonfinite = unscale_run<float, bytes>(buffer, count, inv, multiply) || nonfinite;
                                   if (multiply) round_trip_16<isa>(is_half, buffer, count);
                                   partial = combine(kind, partial, reduce_run<float, bytes>(kind, buffer, count, p));
                                 });
      return partial;
    }
    default: return std::numeric_limits<double>::quiet_NaN();
  }
}

/// Unscales `size` elements of `dtype` and multiplies them by `factor` in place: both roundings
/// of the two separate PyTorch ops (the factor of a float16/bfloat16 one as scale_any uses it).
template <Isa isa>
[[gnu::always_inline]] inline void unscale_scale_any(at::ScalarType dtype, void* data, std::int64_t size, float inv,
                                                     double factor) {
  constexpr int bytes = vector_bytes<isa>;
  const bool multiply = inv != 1.0f;
  switch (dtype) {
    case at::kFloat:
      unscale_scale_run<float, bytes>(static_cast<float*>(data), size, inv, multiply, static_cast<float>(factor));
      break;
    case at::kDouble:
      unscale_scale_run<double, bytes>(static_cast<double*>(data), size, static_cast<double>(inv), multiply, factor);
      break;
    case at::kHalf:
    case at::kBFloat16: {
      const bool is_half = dtype == at::kHalf;
      const float rounded = factor_for_16_bit(is_half, factor);
      for_each_block<isa, true>(is_half, static_cast<std::uint16_t*>(data), size,
                                [&](float* buffer, std::int64_t count) TORCHKIT_CLIP_INLINE {
                                  if (multiply) {
                                    scale_run<float, bytes>(buffer, count, inv);
                                    round_trip_16<isa>(is_half, buffer, count);
                                  }
                                  scale_run<float, bytes>(buffer, count, rounded);
                                });
      break;
    }
    default: break;
  }
}

/// Unscales every run in place; `nonfinite[r]` = whether runs[r] held inf or nan.
template <Isa isa>
[[gnu::always_inline]] inline void unscale_runs_any(const Run* runs, std::int64_t count, float inv,
                                                    unsigned char* nonfinite) {
  for (std::int64_t r = 0; r < count; ++r) {
    if (r + prefetch_distance < count) prefetch_run<true>(runs[r + prefetch_distance]);
    nonfinite[r] = unscale_any<isa>(runs[r].dtype, runs[r].data, runs[r].size, inv) ? 1 : 0;
  }
}

/// `partials[r]` = the norm partial of runs[r]'s unscaled values (nothing written);
/// `*nonfinite` = whether any of the runs holds inf or nan (one flag for them all: testing each
/// run's lanes on its own was a fifth of this pass on 2,000 gradients of 512 floats).
template <Isa isa>
[[gnu::always_inline]] inline void unscale_reduce_runs_any(const Run* runs, std::int64_t count, NormKind kind,
                                                           double p, float inv, double* partials,
                                                           unsigned char* nonfinite) {
  if (count <= 0) return;
  typename VectorOf<float, vector_bytes<isa>>::Mask largest_bits{};
  bool seen = false;
  for (std::int64_t r = 0; r < count; ++r) {
    if (r + prefetch_distance < count) prefetch_run<false>(runs[r + prefetch_distance]);
    if (runs[r].dtype == at::kFloat && kind == NormKind::two && inv != 1.0f) {
      // The common case without unscale_reduce_any's block buffer on the stack.
      partials[r] = unscale_reduce_two<float, vector_bytes<isa>>(static_cast<const float*>(runs[r].data), runs[r].size,
                                                                  inv, largest_bits, seen);
    } else {
      partials[r] = unscale_reduce_any<isa>(runs[r].dtype, kind, runs[r].data, runs[r].size, p, inv, seen);
    }
  }
  *nonfinite = seen || any_lane_at_least(largest_bits, infinity_bits<float>) ? 1 : 0;
}

/// Unscales every run and multiplies it by `factor`, in place, in order.
template <Isa isa>
[[gnu::always_inline]] inline void unscale_scale_runs_any(const Run* runs, std::int64_t count, float inv,
                                                          double factor) {
  for (std::int64_t r = 0; r < count; ++r) {
    if (r + prefetch_distance < count) prefetch_run<true>(runs[r + prefetch_distance]);
    unscale_scale_any<isa>(runs[r].dtype, runs[r].data, runs[r].size, inv, factor);
  }
}

// One set of entry points per instruction set: the same templates, compiled for that target.
#define TORCHKIT_CLIP_ENTRY_POINTS(suffix, isa, ...)                                                             \
  __VA_ARGS__ inline double reduce_##suffix(at::ScalarType dtype, NormKind kind, const void* data,               \
                                            std::int64_t size, double p) {                                       \
    return reduce_any<isa>(dtype, kind, data, size, p);                                                          \
  }                                                                                                              \
  __VA_ARGS__ inline void scale_##suffix(at::ScalarType dtype, void* data, std::int64_t size, double factor) {   \
    scale_any<isa>(dtype, data, size, factor);                                                                   \
  }                                                                                                              \
  __VA_ARGS__ inline void clamp_##suffix(at::ScalarType dtype, void* data, std::int64_t size, double bound) {    \
    clamp_any<isa>(dtype, data, size, bound);                                                                    \
  }                                                                                                              \
  __VA_ARGS__ inline void reduce_runs_##suffix(const Run* runs, std::int64_t count, NormKind kind, double p,     \
                                               double* partials) {                                               \
    reduce_runs_any<isa>(runs, count, kind, p, partials);                                                        \
  }                                                                                                              \
  __VA_ARGS__ inline void scale_runs_##suffix(const Run* runs, std::int64_t count, double factor) {              \
    scale_runs_any<isa>(runs, count, factor);                                                                    \
  }                                                                                                              \
  __VA_ARGS__ inline void unscale_runs_##suffix(const Run* runs, std::int64_t count, float inv,                  \
                                                unsigned char* nonfinite) {                                      \
    unscale_runs_any<isa>(runs, count, inv, nonfinite);                                                          \
  }                                                                                                              \
  __VA_ARGS__ inline void unscale_reduce_runs_##suffix(const Run* runs, std::int64_t count, NormKind kind,       \
                                                       double p, float inv, double* partials,                    \
                                                       unsigned char* nonfinite) {                               \
    unscale_reduce_runs_any<isa>(runs, count, kind, p, inv, partials, nonfinite);                                \
  }                                                                                                              \
  __VA_ARGS__ inline void unscale_scale_runs_##suffix(const Run* runs, std::int64_t count, float inv,            \
                                                      double factor) {                                           \
    unscale_scale_runs_any<isa>(runs, count, inv, factor);                                                       \
  }

TORCHKIT_CLIP_ENTRY_POINTS(portable, Isa::portable)
#if TORCHKIT_CLIP_X86_DISPATCH
TORCHKIT_CLIP_ENTRY_POINTS(avx, Isa::avx, [[gnu::target("avx,f16c")]])
TORCHKIT_CLIP_ENTRY_POINTS(avx2, Isa::avx2, [[gnu::target("avx2,f16c")]])
TORCHKIT_CLIP_ENTRY_POINTS(avx512, Isa::avx512, [[gnu::target("avx512f,avx512bw,avx512dq,avx512vl,avx2,f16c")]])
#endif
#undef TORCHKIT_CLIP_ENTRY_POINTS

/// The best instruction set this CPU runs and the OS saves the registers of (cpuid + xgetbv).
[[nodiscard]] inline Isa cpu_isa() noexcept {
#if TORCHKIT_CLIP_X86_DISPATCH
  static const Isa best = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return Isa::portable;
    const bool osxsave = (ecx & (1u << 27)) != 0;
    const bool avx = (ecx & (1u << 28)) != 0;
    const bool f16c = (ecx & (1u << 29)) != 0;
    if (!(osxsave && avx && f16c)) return Isa::portable;
    unsigned low = 0, high = 0;
    __asm__("xgetbv" : "=a"(low), "=d"(high) : "c"(0));  // XCR0: which register states the OS saves
    if ((low & 0x6u) != 0x6u) return Isa::portable;       // SSE and AVX (YMM) state
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return Isa::avx;
    const bool avx2 = (ebx & (1u << 5)) != 0;
    if (!avx2) return Isa::avx;
    const bool avx512 = (ebx & (1u << 16)) != 0 && (ebx & (1u << 17)) != 0 &&  // F, DQ
                        (ebx & (1u << 30)) != 0 && (ebx & (1u << 31)) != 0;   // BW, VL
    return avx512 && (low & 0xE0u) == 0xE0u ? Isa::avx512 : Isa::avx2;      // opmask, ZMM states
  }();
  return best;
#else
  return Isa::portable;
#endif
}

/// The instruction set ForceIsa pinned, or none.
[[nodiscard]] inline std::atomic<int>& forced_isa() noexcept {
  static std::atomic<int> forced{-1};
  return forced;
}

/// The instruction set the kernels run with now: the CPU's best, or the one ForceIsa pinned.
[[nodiscard]] inline Isa active_isa() noexcept {
  const int forced = forced_isa().load(std::memory_order_relaxed);
  return forced < 0 ? cpu_isa() : static_cast<Isa>(forced);
}

/// Pins the kernels to `isa` (at most cpu_isa(): a higher one is lowered to it) until destroyed,
/// process-wide. For tests and benchmarks, which run every path the CPU has.
class ForceIsa {
 public:
  explicit ForceIsa(Isa isa) noexcept
      : previous_(forced_isa().exchange(static_cast<int>(std::min(isa, cpu_isa())))) {}
  ForceIsa(const ForceIsa&) = delete;
  ForceIsa& operator=(const ForceIsa&) = delete;
  ~ForceIsa() { forced_isa().store(previous_); }

 private:
  int previous_;
};

// Calls the entry point `name`_<isa> for the active instruction set.
#if TORCHKIT_CLIP_X86_DISPATCH
#define TORCHKIT_CLIP_DISPATCH(name, ...)                          \
  switch (active_isa()) {                                          \
    case Isa::avx512: return name##_avx512(__VA_ARGS__);           \
    case Isa::avx2: return name##_avx2(__VA_ARGS__);               \
    case Isa::avx: return name##_avx(__VA_ARGS__);                 \
    case Isa::portable: break;                                     \
  }                                                                \
  return name##_portable(__VA_ARGS__)
#else
#define TORCHKIT_CLIP_DISPATCH(name, ...) return name##_portable(__VA_ARGS__)
#endif

/// The partial of `size` contiguous elements of `dtype` (float, double, float16, bfloat16)
/// starting at `data`, widened to double. `combine` merges partials; `finish` makes the norm.
[[nodiscard]] inline double reduce(at::ScalarType dtype, NormKind kind, const void* data, std::int64_t size,
                                   double p) {
  TORCHKIT_CLIP_DISPATCH(reduce, dtype, kind, data, size, p);
}

/// Multiplies `size` contiguous elements of `dtype` starting at `data` by `factor` in place.
inline void scale(at::ScalarType dtype, void* data, std::int64_t size, double factor) {
  TORCHKIT_CLIP_DISPATCH(scale, dtype, data, size, factor);
}

/// Clamps `size` contiguous elements of `dtype` starting at `data` to [-bound, bound] in place.
inline void clamp(at::ScalarType dtype, void* data, std::int64_t size, double bound) {
  TORCHKIT_CLIP_DISPATCH(clamp, dtype, data, size, bound);
}

/// `partials[r]` = reduce(runs[r]...) for every r < count (one call for many small gradients).
inline void reduce_runs(const Run* runs, std::int64_t count, NormKind kind, double p, double* partials) {
  TORCHKIT_CLIP_DISPATCH(reduce_runs, runs, count, kind, p, partials);
}

/// scale(runs[r]..., factor) for every r < count, in order.
inline void scale_runs(const Run* runs, std::int64_t count, double factor) {
  TORCHKIT_CLIP_DISPATCH(scale_runs, runs, count, factor);
}

/// Unscales every run in place by `inv` (amp.hpp); `nonfinite[r]` = whether runs[r] held inf/nan.
inline void unscale_runs(const Run* runs, std::int64_t count, float inv, unsigned char* nonfinite) {
  TORCHKIT_CLIP_DISPATCH(unscale_runs, runs, count, inv, nonfinite);
}

/// The norm partials of the runs' values unscaled by `inv`, without writing them; `*nonfinite`
/// = whether any of the runs holds inf or nan (only the first flag is written).
inline void unscale_reduce_runs(const Run* runs, std::int64_t count, NormKind kind, double p, float inv,
                                double* partials, unsigned char* nonfinite) {
  TORCHKIT_CLIP_DISPATCH(unscale_reduce_runs, runs, count, kind, p, inv, partials, nonfinite);
}

/// Unscales every run by `inv` and multiplies it by `factor` (as scale_any uses it), in place,
/// in order.
inline void unscale_scale_runs(const Run* runs, std::int64_t count, float inv, double factor) {
  TORCHKIT_CLIP_DISPATCH(unscale_scale_runs, runs, count, inv, factor);
}

#undef TORCHKIT_CLIP_DISPATCH

}  // namespace torchkit::detail::clip

#undef TORCHKIT_CLIP_NO_CONTRACT
#undef TORCHKIT_CLIP_INLINE
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
// ---- end torchkit/detail/clip_kernels.hpp ----

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
// ---- end torchkit/clip.hpp ----
// ---- begin torchkit/amp.hpp ----
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

// ---- begin torchkit/detail/autocast.hpp ----
/// @file detail/autocast.hpp
/// The autocast switches of LibTorch, one spelling for every supported version (amp.hpp's
/// AutocastScope). LibTorch 1.13 has a function per device (`set_cpu_enabled`,
/// `set_autocast_cpu_dtype`; CUDA is the unnamed `set_enabled` / `set_autocast_gpu_dtype`);
/// 2.x takes the device type (`set_autocast_enabled(device, on)`, `set_autocast_dtype(device,
/// dtype)`) and deprecates the per-device names (2.4 on). The cache and nesting calls are the
/// same in both.


#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace torchkit::detail::autocast {

/// Whether autocast is switched on for `device` (kCPU or kCUDA).
[[nodiscard]] inline bool is_enabled(c10::DeviceType device) {
#if TORCHKIT_TORCH_AT_LEAST(2, 4)
  return at::autocast::is_autocast_enabled(device);
#else
  return device == c10::DeviceType::CPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
#endif
}

inline void set_enabled(c10::DeviceType device, bool enabled) {
#if TORCHKIT_TORCH_AT_LEAST(2, 4)
  at::autocast::set_autocast_enabled(device, enabled);
#else
  if (device == c10::DeviceType::CPU) {
    at::autocast::set_cpu_enabled(enabled);
  } else {
    at::autocast::set_enabled(enabled);
  }
#endif
}

/// The lower-precision dtype autocast casts to on `device`.
[[nodiscard]] inline at::ScalarType dtype(c10::DeviceType device) {
#if TORCHKIT_TORCH_AT_LEAST(2, 4)
  return at::autocast::get_autocast_dtype(device);
#else
  return device == c10::DeviceType::CPU ? at::autocast::get_autocast_cpu_dtype()
                                        : at::autocast::get_autocast_gpu_dtype();
#endif
}

inline void set_dtype(c10::DeviceType device, at::ScalarType dtype) {
#if TORCHKIT_TORCH_AT_LEAST(2, 4)
  at::autocast::set_autocast_dtype(device, dtype);
#else
  if (device == c10::DeviceType::CPU) {
    at::autocast::set_autocast_cpu_dtype(dtype);
  } else {
    at::autocast::set_autocast_gpu_dtype(dtype);
  }
#endif
}

[[nodiscard]] inline bool is_cache_enabled() { return at::autocast::is_autocast_cache_enabled(); }
inline void set_cache_enabled(bool enabled) { at::autocast::set_autocast_cache_enabled(enabled); }
inline int increment_nesting() { return at::autocast::increment_nesting(); }
inline int decrement_nesting() { return at::autocast::decrement_nesting(); }
inline void clear_cache() { at::autocast::clear_cache(); }

/// Whether autocast on `device` can cast to `dtype`: bfloat16 on the CPU (float16 too from
/// LibTorch 2.4, as `torch.autocast("cpu")` accepts it there), float16 and bfloat16 on CUDA.
[[nodiscard]] inline bool supports(c10::DeviceType device, at::ScalarType dtype) noexcept {
  if (device == c10::DeviceType::CPU) {
#if TORCHKIT_TORCH_AT_LEAST(2, 4)
    return dtype == at::kBFloat16 || dtype == at::kHalf;
#else
    return dtype == at::kBFloat16;
#endif
  }
  if (device == c10::DeviceType::CUDA) return dtype == at::kHalf || dtype == at::kBFloat16;
  return false;
}

}  // namespace torchkit::detail::autocast
// ---- end torchkit/detail/autocast.hpp ----

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
// ---- end torchkit/amp.hpp ----
// ---- begin torchkit/batch.hpp ----
/// @file batch.hpp
/// tip 4  to_batch, from_batch, image_to_batch, images_to_batch.
///
/// A model trained on `[N, C, H, W]` batches gets one decoded image `[H, W, C]` (BGR uint8 from
/// `cv2.imread`) at test time. The Python way is `image.unsqueeze(0)` (or `view(1, *size)`,
/// `np.newaxis`) plus, in practice, `permute`, `float()`, `/ 255` and a per-channel normalisation:
/// five or six full passes over the image. `image_to_batch` does all of it in one pass, and with
/// `ImageOptions::resize` / `center_crop` also torchvision's `Resize` and `CenterCrop` (same
/// numbers as the tensor path of torchvision), computing only the pixels that survive the crop.
/// `letterbox` is the detector's version: scale to fit, pad symmetrically, map boxes back.

// ---- begin torchkit/detail/image_kernel.hpp ----
/// @file detail/image_kernel.hpp
/// The fused HWC → CHW pass behind image_to_batch: one read of every pixel, one write of every
/// output value, `value = pixel * multiplier[c] + offset[c]`, with the channel order applied by
/// choosing which output plane each source channel is written to.
///
/// Rows whose pixels are packed (channel stride 1, pixel stride C: a contiguous image or a crop
/// of one, a cv::Mat or a ROI of one) go through SSE2 kernels on x86-64 (16 pixels per step for
/// uint8), and uint8 rows into float planes through AVX2 / AVX-512 kernels where the CPU has them
/// (chosen at run time with clip_kernels.hpp's cpu_isa(), ForceIsa pins a lower path): those
/// write one plane row at a time, 16 pixels per step (3 channels: two byte blends and one pshufb
/// gather a channel; 4 channels: a shift and a mask per 32-bit pixel), then 8 or 16 lanes per
/// conversion. Everything else goes through a portable strided loop. Every path computes
/// `float(pixel) * multiplier + offset` as a multiplication then an addition (never fused), so
/// every path gives the same bits.


#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#include <emmintrin.h>
#define TORCHKIT_IMAGE_KERNEL_SSE2 1
#else
#define TORCHKIT_IMAGE_KERNEL_SSE2 0
#endif

// No multiply-add is fused into an FMA in this file (AVX-512F has 512-bit FMAs, -mfma builds have
// the others, and GCC fuses by default), so that every path rounds alike: GCC for every function
// here, clang with a pragma in each kernel body.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
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
  std::int64_t height = 0;
  std::int64_t width = 0;
  std::int64_t channels = 0;
  std::int64_t row_stride = 0;
  std::int64_t pixel_stride = 0;
  std::int64_t channel_stride = 0;

  [[nodiscard]] bool packed() const { return channel_stride == 1 && pixel_stride == channels; }
};

/// The portable loop: any strides, any input/compute/output type.
template <class In, class Compute, class Out>
void strided_image_row(const In* row, std::int64_t width, std::int64_t pixel_stride, std::int64_t channel_stride,
                       int channels, const Compute* multiplier, const Compute* offset,
                       Out* const* planes) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  for (std::int64_t x = 0; x < width; ++x) {
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
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    return _mm_add_ps(_mm_mul_ps(value, multiplier[v]), offset[v]);
  }
};

/// Packed rows, SSE2: converts the first `width - width % step` pixels and returns how many.
inline std::int64_t packed_image_row_sse2(const std::uint8_t* row, std::int64_t width, int channels,
                                     const SseCoefficients& k, float* const* planes) {
  std::int64_t x = 0;
  if (channels == 3) {
    for (; x + 16 <= width; x += 16) {
      const std::uint8_t* pixel = row + 3 * x;
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

inline std::int64_t packed_image_row_sse2(const float* row, std::int64_t width, int channels,
                                     const SseCoefficients& k, float* const* planes) {
  std::int64_t x = 0;
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

#if TORCHKIT_CLIP_X86_DISPATCH
/// Byte masks that gather channel c of 16 interleaved 3-channel pixels (48 bytes, three chunks of
/// 16) into pixel order: byte i of chunk j belongs to channel (16j + i) mod 3 = (j + i) mod 3, so
/// for each position i exactly one chunk holds a byte of channel c there. Two blends (`from1`,
/// `from2`: take chunk 1 / chunk 2 at this position) collect those 16 bytes into one vector and
/// one pshufb (`order`) puts them in pixel order: pixel p's byte sits at position (3p + c) mod 16.
struct ByteGather3 {
  alignas(16) std::int8_t from1[3][16];
  alignas(16) std::int8_t from2[3][16];
  alignas(16) std::int8_t order[3][16];
};

constexpr ByteGather3 byte_gather3_of() {
  ByteGather3 gather{};
  for (int c = 0; c < 3; ++c) {
    for (int i = 0; i < 16; ++i) {
      const int chunk = ((c - i) % 3 + 3) % 3;
      gather.from1[c][i] = static_cast<std::int8_t>(chunk == 1 ? -1 : 0);
      gather.from2[c][i] = static_cast<std::int8_t>(chunk == 2 ? -1 : 0);
      gather.order[c][i] = static_cast<std::int8_t>((3 * i + c) % 16);
    }
  }
  return gather;
}

inline constexpr ByteGather3 byte_gather3 = byte_gather3_of();

/// The three masks of byte_gather3 for one channel, in registers.
struct Gather3Masks {
  __m128i from1;
  __m128i from2;
  __m128i order;
};

[[gnu::target("avx2")]] inline Gather3Masks gather3_masks(int c) {
  return {_mm_load_si128(reinterpret_cast<const __m128i*>(byte_gather3.from1[c])),
          _mm_load_si128(reinterpret_cast<const __m128i*>(byte_gather3.from2[c])),
          _mm_load_si128(reinterpret_cast<const __m128i*>(byte_gather3.order[c]))};
}

/// One channel of 16 packed 3-channel pixels at `pixel` (48 bytes), in pixel order.
[[gnu::target("avx2")]] inline __m128i gather_channel3(const std::uint8_t* pixel, const Gather3Masks& masks) {
  const __m128i chunk0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pixel));
  const __m128i chunk1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pixel + 16));
  const __m128i chunk2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pixel + 32));
  return _mm_shuffle_epi8(_mm_blendv_epi8(_mm_blendv_epi8(chunk0, chunk1, masks.from1), chunk2, masks.from2),
                          masks.order);
}

/// One output plane's row from packed uint8 pixels of C channels, AVX2: channel `c` of pixels
/// [0, width - width % 16) as `float(pixel) * multiplier + offset` (a multiplication, then an
/// addition), 16 pixels per step. Writing one plane row at a time (rather than all C planes per
/// step) keeps one store stream going, which is what lets the stores keep up on large images.
template <int C>
[[gnu::target("avx2")]] inline void packed_byte_plane_avx2(const std::uint8_t* row, std::int64_t width, int c,
                                                           float multiplier, float offset, float* plane) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  const __m256 m = _mm256_set1_ps(multiplier);
  const __m256 o = _mm256_set1_ps(offset);
  const __m256i low_byte = _mm256_set1_epi32(0xFF);
  const __m128i shift = _mm_cvtsi32_si128(8 * c);
  const Gather3Masks masks = gather3_masks(C == 3 ? c : 0);
  for (std::int64_t x = 0; x + 16 <= width; x += 16) {
    __m256i low;
    __m256i high;
    if constexpr (C == 4) {
      // One pixel per 32-bit lane: channel c is byte c of each lane.
      low = _mm256_and_si256(
          _mm256_srl_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 4 * x)), shift), low_byte);
      high = _mm256_and_si256(
          _mm256_srl_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 4 * x + 32)), shift), low_byte);
    } else {
      const __m128i bytes = C == 3 ? gather_channel3(row + 3 * x, masks)
                                   : _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + x));
      low = _mm256_cvtepu8_epi32(bytes);
      high = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(bytes, bytes));
    }
    _mm256_storeu_ps(plane + x, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(low), m), o));
    _mm256_storeu_ps(plane + x + 8, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(high), m), o));
  }
}

/// The AVX-512 form of packed_byte_plane_avx2: 16 lanes per conversion.
template <int C>
[[gnu::target("avx512f,avx512bw,avx512dq,avx512vl,avx2")]] inline void packed_byte_plane_avx512(
    const std::uint8_t* row, std::int64_t width, int c, float multiplier, float offset, float* plane) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  const __m512 m = _mm512_set1_ps(multiplier);
  const __m512 o = _mm512_set1_ps(offset);
  const __m512i low_byte = _mm512_set1_epi32(0xFF);
  const __m128i shift = _mm_cvtsi32_si128(8 * c);
  const Gather3Masks masks = gather3_masks(C == 3 ? c : 0);
  for (std::int64_t x = 0; x + 16 <= width; x += 16) {
    __m512i lanes;
    if constexpr (C == 4) {
      lanes = _mm512_and_si512(_mm512_maskz_srl_epi32(0xFFFF, _mm512_loadu_si512(row + 4 * x), shift), low_byte);
    } else {
      const __m128i bytes = C == 3 ? gather_channel3(row + 3 * x, masks)
                                   : _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + x));
      // The zero-masking forms: GCC 12 warns that the plain ones read an uninitialised register.
      lanes = _mm512_maskz_cvtepu8_epi32(0xFFFF, bytes);
    }
    const __m512 values = _mm512_maskz_cvtepi32_ps(0xFFFF, lanes);
    _mm512_storeu_ps(plane + x, _mm512_add_ps(_mm512_mul_ps(values, m), o));
  }
}

/// Packed uint8 rows into float planes, one plane row after the other: how many pixels of the
/// row were converted (a multiple of 16; the caller does the rest).
template <int C>
[[gnu::target("avx2")]] inline std::int64_t packed_byte_row_avx2(const std::uint8_t* row, std::int64_t width,
                                                                 const float* m, const float* o, float* const* planes) {
  for (int c = 0; c < C; ++c) {
    packed_byte_plane_avx2<C>(row, width, c, m[c], o[c], planes[c]);
  }
  return width - width % 16;
}

template <int C>
[[gnu::target("avx512f,avx512bw,avx512dq,avx512vl,avx2")]] inline std::int64_t packed_byte_row_avx512(
    const std::uint8_t* row, std::int64_t width, const float* m, const float* o, float* const* planes) {
  for (int c = 0; c < C; ++c) {
    packed_byte_plane_avx512<C>(row, width, c, m[c], o[c], planes[c]);
  }
  return width - width % 16;
}
#endif  // TORCHKIT_CLIP_X86_DISPATCH

/// The AVX2 / AVX-512 uint8 → float row, when the active instruction set has one: how many
/// pixels of the row it converted (a multiple of 16), or 0.
inline std::int64_t packed_byte_row_wide(const std::uint8_t* row, std::int64_t width, int channels, const float* m,
                                         const float* o, float* const* planes) {
#if TORCHKIT_CLIP_X86_DISPATCH
  const clip::Isa isa = clip::active_isa();
  if (isa == clip::Isa::avx512) {
    switch (channels) {
      case 1: return packed_byte_row_avx512<1>(row, width, m, o, planes);
      case 3: return packed_byte_row_avx512<3>(row, width, m, o, planes);
      default: return packed_byte_row_avx512<4>(row, width, m, o, planes);
    }
  }
  if (isa == clip::Isa::avx2) {
    switch (channels) {
      case 1: return packed_byte_row_avx2<1>(row, width, m, o, planes);
      case 3: return packed_byte_row_avx2<3>(row, width, m, o, planes);
      default: return packed_byte_row_avx2<4>(row, width, m, o, planes);
    }
  }
#else
  (void)row, (void)width, (void)channels, (void)m, (void)o, (void)planes;
#endif
  return 0;
}

/// Converts rows [y_begin, y_end) of `image` into `output`, the [C, H, W] planes of one image.
template <class In, class Out>
void convert_image_rows(const ImageSource& image, const ImageTransform& transform, Out* output,
                        std::int64_t y_begin, std::int64_t y_end) {
  const int channels = transform.channels;
  const std::int64_t width = image.width;
  const std::int64_t plane_size = image.height * width;
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

  for (std::int64_t y = y_begin; y < y_end; ++y) {
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
      std::int64_t done = 0;
      if constexpr (std::is_same_v<In, std::uint8_t> && std::is_same_v<Out, float>) {
        done = packed_byte_row_wide(row, width, channels, float_multiplier.data(), float_offset.data(),
                                    float_planes.data());
      }
      if (done == 0) {
        done = packed_image_row_sse2(row, width, channels, sse, float_planes.data());
      }
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
          for (std::int64_t x = 0; x < width; ++x) {
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
                            std::int64_t y_begin, std::int64_t y_end) {
  if (image.dtype == c10::ScalarType::Byte) {
    convert_image_rows<std::uint8_t, Out>(image, transform, output, y_begin, y_end);
  } else {
    convert_image_rows<float, Out>(image, transform, output, y_begin, y_end);
  }
}

}  // namespace torchkit::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
// ---- end torchkit/detail/image_kernel.hpp ----
// ---- begin torchkit/detail/resize_kernel.hpp ----
/// @file detail/resize_kernel.hpp
/// The fused resize → center crop / pad → normalise → HWC-to-CHW pass behind image_to_batch's
/// `resize` and `center_crop` options and letterbox().
///
/// The resize follows ATen's separable kernels (what torchvision's tensor `F.resize` runs):
/// - antialiased bilinear / bicubic (`_upsample_bilinear2d_aa`, `_upsample_bicubic2d_aa`): for
///   output index i, centre `c = scale * (i + 0.5)` with `scale = in / out`, support
///   `s = (interp_size / 2) * max(scale, 1)` (interp_size 2 for bilinear, 4 for bicubic), input
///   indices `[trunc(c - s + 0.5), trunc(c + s + 0.5))` clipped to the image, weights
///   `filter((j - c + 0.5) / max(scale, 1))` normalised to sum 1 per output index; the bicubic
///   filter is Keys' cubic with a = -0.5 (PIL's, which ATen's antialiased kernel copies); all of
///   it in float, operation by operation as ATen does it for float images;
/// - plain bilinear / bicubic (`upsample_bilinear2d`, `upsample_bicubic2d`, align_corners=False):
///   source `scale * (i + 0.5) - 0.5` (clamped at 0 for bilinear), two taps or four taps of
///   Keys' cubic with a = -0.75, indices clamped to the border; the scale in float, the position
///   and the weights in double, rounded to float (what ATen's kernels give for float images);
/// - nearest (`upsample_nearest2d`): `min(floor(i * float(in / out)), in - 1)`.
/// An axis whose size does not change is copied, as ATen skips it.
///
/// Only the output pixels that survive the crop are computed. Per output row the pass blends the
/// input rows it needs (vertical taps, over the input columns the horizontal taps reach, in float,
/// straight from the uint8 or float image), then blends along the row (horizontal taps), rounds
/// to 0..255 for uint8 images (torchvision returns a uint8 image from `F.resize`, rounded half to
/// even and clamped) and writes `value * multiplier + offset` into each output plane. Pixels
/// outside the resized image (a crop larger than it, letterbox borders) get the pad value.
///
/// The vertical and horizontal blends are built for the portable target (SSE2 on x86-64), AVX,
/// AVX2 and AVX-512 from one template and chosen at run time with clip_kernels.hpp's cpu_isa()
/// (ForceIsa pins a lower path). Float images blend 4, 8 or 16 lanes at a time; uint8 images are
/// widened with SSE2 unpacks and blended 4 lanes at a time on every path (VEX-encoded on the AVX
/// ones): GCC 12 scalarises `__builtin_convertvector` from uint8, and gluing 128-bit halves into
/// wider vectors through memory stalls on store forwarding (measured: 0.8 ms vs 1.6-3.3 ms for
/// 1080p -> 256 -> 224). Every lane does the same float multiplications and additions in
/// the same order on every path and no multiply-add is fused (FMA contraction is off in this
/// file), so each path gives the same bits.


#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
#if defined(__clang__)
#define TORCHKIT_RESIZE_NO_CONTRACT _Pragma("clang fp contract(off)")
#else
#define TORCHKIT_RESIZE_NO_CONTRACT
#endif

namespace torchkit::detail::resize {

using clip::active_isa;
using clip::Isa;

/// The interpolation of one axis (mirrors torchkit::Interpolation).
enum class Filter : std::uint8_t { nearest, bilinear, bicubic };

/// The input taps of a run of output indices of one axis: output `i` reads `count[i]` input
/// indices from `start[i]` with `weights[i * taps + k]`.
struct AxisTaps {
  std::vector<std::int64_t> start;
  std::vector<int> count;
  std::vector<float> weights;
  int taps = 1;
};

/// ATen's antialiasing filters (`aa_filter` of the linear and cubic helpers), in float as ATen
/// computes them for float images.
[[nodiscard]] inline float aa_filter(Filter filter, float x) noexcept {
  TORCHKIT_RESIZE_NO_CONTRACT
  x = x < 0.0f ? -x : x;
  if (filter == Filter::bilinear) {
    return x < 1.0f ? 1.0f - x : 0.0f;
  }
  constexpr float a = -0.5f;
  if (x < 1.0f) return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f;
  if (x < 2.0f) return (((x - 5.0f) * x + 8.0f) * x - 4.0f) * a;
  return 0.0f;
}

/// Keys' cubic convolution with a = -0.75 (ATen's plain bicubic), for |x| <= 1 and 1 < |x| < 2.
[[nodiscard]] inline double cubic_near(double x) noexcept {
  TORCHKIT_RESIZE_NO_CONTRACT
  constexpr double a = -0.75;
  return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
}
[[nodiscard]] inline double cubic_far(double x) noexcept {
  TORCHKIT_RESIZE_NO_CONTRACT
  constexpr double a = -0.75;
  return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
}

/// The taps of output indices [first, first + n) of an axis resized from `in` to `out`.
[[nodiscard]] inline AxisTaps axis_taps(std::int64_t in, std::int64_t out, std::int64_t first, std::int64_t n,
                                        Filter filter, bool antialias) {
  TORCHKIT_RESIZE_NO_CONTRACT
  AxisTaps taps;
  const auto size = static_cast<std::size_t>(std::max<std::int64_t>(n, 0));
  taps.start.resize(size);
  taps.count.resize(size);
  std::vector<std::vector<float>> weights(size);
  if (in == out || filter == Filter::nearest) {
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    for (std::size_t i = 0; i < size; ++i) {
      const std::int64_t o = first + static_cast<std::int64_t>(i);
      std::int64_t index = o;
      if (in != out) {
        index = out == 2 * in ? o >> 1
                              : std::min(static_cast<std::int64_t>(std::floor(static_cast<float>(o) * scale)), in - 1);
      }
      taps.start[i] = index;
      taps.count[i] = 1;
      weights[i] = {1.0f};
    }
  } else if (antialias) {
    // In float, step by step as ATen's _compute_weights_aa for float images.
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    const float widen = scale >= 1.0f ? scale : 1.0f;
    const float support = (filter == Filter::bilinear ? 1.0f : 2.0f) * widen;
    const float inverse = scale >= 1.0f ? 1.0f / scale : 1.0f;
    for (std::size_t i = 0; i < size; ++i) {
      const float center = scale * (static_cast<float>(first + static_cast<std::int64_t>(i)) + 0.5f);
      const float from = center - support;
      const float to = center + support;
      const std::int64_t low = std::max<std::int64_t>(static_cast<std::int64_t>(from + 0.5f), 0);
      const std::int64_t high = std::min<std::int64_t>(static_cast<std::int64_t>(to + 0.5f), in);
      const std::int64_t count = std::max<std::int64_t>(high - low, 1);
      std::vector<float> w(static_cast<std::size_t>(count));
      float total = 0.0f;
      for (std::int64_t j = 0; j < count; ++j) {
        const float distance = (static_cast<float>(j + low) - center) + 0.5f;
        w[static_cast<std::size_t>(j)] = aa_filter(filter, distance * inverse);
        total += w[static_cast<std::size_t>(j)];
      }
      taps.start[i] = std::min(low, in - 1);
      taps.count[i] = static_cast<int>(count);
      weights[i].resize(static_cast<std::size_t>(count));
      for (std::int64_t j = 0; j < count; ++j) {
        const float value = w[static_cast<std::size_t>(j)];
        weights[i][static_cast<std::size_t>(j)] = total != 0.0f ? value / total : value;
      }
    }
  } else {
    // The scale in float, the source position and the weights in double, rounded to float at the
    // end: what ATen's plain bilinear / bicubic give for float images.
    const double scale = static_cast<float>(in) / static_cast<float>(out);
    for (std::size_t i = 0; i < size; ++i) {
      const double o = static_cast<double>(first + static_cast<std::int64_t>(i));
      double source = scale * (o + 0.5) - 0.5;
      if (filter == Filter::bilinear) {
        source = source < 0.0 ? 0.0 : source;
        const auto x0 = static_cast<std::int64_t>(source);
        const double l1 = std::min(source - static_cast<double>(x0), 1.0);
        const auto w1 = static_cast<float>(l1);
        const auto w0 = static_cast<float>(1.0 - l1);
        taps.start[i] = std::min(x0, in - 1);
        if (x0 < in - 1) {
          taps.count[i] = 2;
          weights[i] = {w0, w1};
        } else {
          taps.count[i] = 1;
          weights[i] = {w0 + w1};
        }
      } else {
        const double floor = std::floor(source);
        const auto x = static_cast<std::int64_t>(floor);
        const double t = source - floor;
        const std::array<float, 4> w{static_cast<float>(cubic_far(t + 1.0)), static_cast<float>(cubic_near(t)),
                                     static_cast<float>(cubic_near(1.0 - t)), static_cast<float>(cubic_far(2.0 - t))};
        const auto clamp = [&](std::int64_t index) { return std::clamp<std::int64_t>(index, 0, in - 1); };
        const std::int64_t low = clamp(x - 1);
        const std::int64_t high = clamp(x + 2);
        taps.start[i] = low;
        taps.count[i] = static_cast<int>(high - low + 1);
        weights[i].assign(static_cast<std::size_t>(high - low + 1), 0.0f);
        for (std::int64_t k = 0; k < 4; ++k) {
          weights[i][static_cast<std::size_t>(clamp(x - 1 + k) - low)] += w[static_cast<std::size_t>(k)];
        }
      }
    }
  }
  for (const int count : taps.count) {
    taps.taps = std::max(taps.taps, count);
  }
  taps.weights.assign(size * static_cast<std::size_t>(taps.taps), 0.0f);
  for (std::size_t i = 0; i < size; ++i) {
    std::copy(weights[i].begin(), weights[i].end(), taps.weights.begin() + static_cast<std::ptrdiff_t>(i) * taps.taps);
  }
  return taps;
}

/// GCC/clang vectors of `Bytes` bytes: float lanes and as many uint8 lanes.
template <int Bytes>
struct Lanes {
  static constexpr int count = Bytes / 4;
  typedef float Float __attribute__((vector_size(Bytes)));
  typedef std::uint8_t Byte __attribute__((vector_size(Bytes / 4)));
};
typedef float Float4 __attribute__((vector_size(16)));

/// `Bytes / 4` values from `p`, as floats (through a reference: a vector return value of 32 or 64
/// bytes would be another ABI on the portable target).
template <int Bytes, class In>
[[gnu::always_inline]] inline void load_floats(const In* p, typename Lanes<Bytes>::Float& values) {
  if constexpr (std::is_same_v<In, std::uint8_t>) {
#if TORCHKIT_IMAGE_KERNEL_SSE2
    // SSE2 unpacks (zero-extend to 32 bits, then convert): GCC 12 turns __builtin_convertvector
    // from uint8 into one scalar conversion per lane.
    constexpr int lanes = Lanes<Bytes>::count;
    __m128i bytes;
    if constexpr (lanes == 4) {
      std::int32_t word;
      std::memcpy(&word, p, sizeof word);
      bytes = _mm_cvtsi32_si128(word);
    } else if constexpr (lanes == 8) {
      bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    } else {
      bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    }
    const __m128i zero = _mm_setzero_si128();
    const __m128i low = _mm_unpacklo_epi8(bytes, zero);
    __m128 quarters[4];
    quarters[0] = _mm_cvtepi32_ps(_mm_unpacklo_epi16(low, zero));
    if constexpr (lanes > 4) {
      quarters[1] = _mm_cvtepi32_ps(_mm_unpackhi_epi16(low, zero));
    }
    if constexpr (lanes > 8) {
      const __m128i high = _mm_unpackhi_epi8(bytes, zero);
      quarters[2] = _mm_cvtepi32_ps(_mm_unpacklo_epi16(high, zero));
      quarters[3] = _mm_cvtepi32_ps(_mm_unpackhi_epi16(high, zero));
    }
    std::memcpy(&values, quarters, sizeof values);
#else
    typename Lanes<Bytes>::Byte bytes;
    std::memcpy(&bytes, p, sizeof bytes);
    values = __builtin_convertvector(bytes, typename Lanes<Bytes>::Float);
#endif
  } else {
    std::memcpy(&values, p, sizeof values);
  }
}

/// `out[i] = sum_k rows[k][i] * w[k]` for i < n (k in order, first product first).
template <int Bytes, class In>
[[gnu::always_inline]] inline void vertical_any(const In* const* rows, const float* w, int count, std::int64_t n,
                                                float* out) {
  TORCHKIT_RESIZE_NO_CONTRACT
  using V = typename Lanes<Bytes>::Float;
  constexpr int lanes = Lanes<Bytes>::count;
    std::int64_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    V u;
    V v;
    load_floats<Bytes, In>(rows[0] + i, u);
    load_floats<Bytes, In>(rows[0] + i + lanes, v);
    V a = u * w[0];
    V b = v * w[0];
    for (int k = 1; k < count; ++k) {
      load_floats<Bytes, In>(rows[k] + i, u);
      load_floats<Bytes, In>(rows[k] + i + lanes, v);
      a = a + u * w[k];
      b = b + v * w[k];
    }
    std::memcpy(out + i, &a, sizeof a);
    std::memcpy(out + i + lanes, &b, sizeof b);
  }
  for (; i < n; ++i) {
    float a = static_cast<float>(rows[0][i]) * w[0];
    for (int k = 1; k < count; ++k) {
      a = a + static_cast<float>(rows[k][i]) * w[k];
    }
    out[i] = a;
  }
}

/// One output row's horizontal blend: `row` holds the vertically blended input pixels
/// (`channels` floats each, 4 readable floats past the last), `out` gets 4 floats per pixel.
[[gnu::always_inline]] inline void horizontal_any(const float* row, int channels, const std::int64_t* start,
                                                  const int* count, const float* w, int taps, std::int64_t n,
                                                  float* out) {
  TORCHKIT_RESIZE_NO_CONTRACT
  for (std::int64_t x = 0; x < n; ++x) {
    const float* p = row + start[x] * channels;
    const float* wx = w + x * taps;
    Float4 v;
    std::memcpy(&v, p, sizeof v);
    Float4 a = v * wx[0];
    for (int k = 1; k < count[x]; ++k) {
      std::memcpy(&v, p + k * channels, sizeof v);
      a = a + v * wx[k];
    }
    std::memcpy(out + 4 * x, &a, sizeof a);
  }
}

#define TORCHKIT_RESIZE_ENTRY_POINTS(suffix, bytes, ...)                                                  \
  __VA_ARGS__ inline void vertical_u8_##suffix(const std::uint8_t* const* rows, const float* w, int count, \
                                               std::int64_t n, float* out) {                              \
    vertical_any<16, std::uint8_t>(rows, w, count, n, out);                                               \
  }                                                                                                       \
  __VA_ARGS__ inline void vertical_f32_##suffix(const float* const* rows, const float* w, int count,      \
                                                std::int64_t n, float* out) {                             \
    vertical_any<bytes, float>(rows, w, count, n, out);                                                   \
  }                                                                                                       \
  __VA_ARGS__ inline void horizontal_##suffix(const float* row, int channels, const std::int64_t* start,  \
                                              const int* count, const float* w, int taps, std::int64_t n, \
                                              float* out) {                                               \
    horizontal_any(row, channels, start, count, w, taps, n, out);                                         \
  }

TORCHKIT_RESIZE_ENTRY_POINTS(portable, 16)
#if TORCHKIT_CLIP_X86_DISPATCH
TORCHKIT_RESIZE_ENTRY_POINTS(avx, 32, [[gnu::target("avx")]])
TORCHKIT_RESIZE_ENTRY_POINTS(avx2, 32, [[gnu::target("avx2")]])
TORCHKIT_RESIZE_ENTRY_POINTS(avx512, 64, [[gnu::target("avx512f,avx512bw,avx512dq,avx512vl,avx2")]])
#endif
#undef TORCHKIT_RESIZE_ENTRY_POINTS

#if TORCHKIT_CLIP_X86_DISPATCH
#define TORCHKIT_RESIZE_DISPATCH(name, ...)              \
  switch (active_isa()) {                                \
    case Isa::avx512: return name##_avx512(__VA_ARGS__); \
    case Isa::avx2: return name##_avx2(__VA_ARGS__);     \
    case Isa::avx: return name##_avx(__VA_ARGS__);       \
    case Isa::portable: break;                           \
  }                                                      \
  return name##_portable(__VA_ARGS__)
#else
#define TORCHKIT_RESIZE_DISPATCH(name, ...) return name##_portable(__VA_ARGS__)
#endif

inline void vertical(const std::uint8_t* const* rows, const float* w, int count, std::int64_t n, float* out) {
  TORCHKIT_RESIZE_DISPATCH(vertical_u8, rows, w, count, n, out);
}
inline void vertical(const float* const* rows, const float* w, int count, std::int64_t n, float* out) {
  TORCHKIT_RESIZE_DISPATCH(vertical_f32, rows, w, count, n, out);
}
inline void horizontal(const float* row, int channels, const std::int64_t* start, const int* count, const float* w,
                       int taps, std::int64_t n, float* out) {
  TORCHKIT_RESIZE_DISPATCH(horizontal, row, channels, start, count, w, taps, n, out);
}
#undef TORCHKIT_RESIZE_DISPATCH

/// Where one image goes: resized to `resized_h x resized_w`, then the `out_h x out_w` window
/// whose top-left corner is at (`top`, `left`) of the resized image (negative or past the end:
/// those pixels are `pad_value`, in pixel units before scale/mean/std).
struct Plan {
  std::int64_t resized_h = 0;
  std::int64_t resized_w = 0;
  std::int64_t out_h = 0;
  std::int64_t out_w = 0;
  std::int64_t top = 0;
  std::int64_t left = 0;
  Filter filter = Filter::bilinear;
  bool antialias = true;
  double pad_value = 0.0;
};

/// The range [begin, end) of output indices that fall inside a resized axis of `resized`.
[[nodiscard]] inline std::array<std::int64_t, 2> inside(std::int64_t offset, std::int64_t out,
                                                        std::int64_t resized) noexcept {
  const std::int64_t begin = std::clamp<std::int64_t>(-offset, 0, out);
  const std::int64_t end = std::clamp<std::int64_t>(resized - offset, begin, out);
  return {begin, end};
}

/// uint8 results: clamp to 0..255 and round half to even (torch.round), exactly on every path.
[[nodiscard]] inline float round_to_byte(float value) noexcept {
  TORCHKIT_RESIZE_NO_CONTRACT
  value = value < 0.0f ? 0.0f : (value > 255.0f ? 255.0f : value);
  constexpr float shift = 8388608.0f;  // 2^23: adding it rounds 0..255 to an integer, half to even
  return (value + shift) - shift;
}

/// Resizes, crops/pads and converts `image` into `output` ([C, out_h, out_w] planes of one image).
template <class Out>
void resize_image(const ImageSource& image, const Plan& plan, const ImageTransform& transform, Out* output) {
  TORCHKIT_RESIZE_NO_CONTRACT
  const int channels = transform.channels;
  // Plain variables, not structured bindings: lambdas capture them on every compiler.
  const std::array<std::int64_t, 2> y_range = inside(plan.top, plan.out_h, plan.resized_h);
  const std::array<std::int64_t, 2> x_range = inside(plan.left, plan.out_w, plan.resized_w);
  const std::int64_t y_begin = y_range[0];
  const std::int64_t y_end = y_range[1];
  const std::int64_t x_begin = x_range[0];
  const std::int64_t x_end = x_range[1];
  const AxisTaps rows = axis_taps(image.height, plan.resized_h, y_begin + plan.top, y_end - y_begin, plan.filter,
                                  plan.antialias);
  AxisTaps cols = axis_taps(image.width, plan.resized_w, x_begin + plan.left, x_end - x_begin, plan.filter,
                            plan.antialias);
  std::int64_t column_low = image.width;
  std::int64_t column_high = 0;
  for (std::size_t x = 0; x < cols.start.size(); ++x) {
    column_low = std::min(column_low, cols.start[x]);
    column_high = std::max(column_high, cols.start[x] + cols.count[x]);
  }
  for (auto& start : cols.start) {
    start -= column_low;
  }
  const std::int64_t span = std::max<std::int64_t>(column_high - column_low, 0);
  const std::int64_t inner_w = x_end - x_begin;

  using Compute = std::conditional_t<std::is_same_v<Out, double>, double, float>;
  std::array<Compute, 4> multiplier{};
  std::array<Compute, 4> offset{};
  std::array<Out, 4> pad{};
  for (int c = 0; c < channels; ++c) {
    multiplier[c] = static_cast<Compute>(transform.multiplier[c]);
    offset[c] = static_cast<Compute>(transform.offset[c]);
    pad[c] = static_cast<Out>(static_cast<Compute>(static_cast<float>(plan.pad_value)) * multiplier[c] + offset[c]);
  }
  const bool bytes = image.dtype == c10::ScalarType::Byte;
  const std::int64_t plane = plan.out_h * plan.out_w;
  const std::int64_t work_per_row = std::max<std::int64_t>(1, span * channels * rows.taps + inner_w * 4 * cols.taps);
  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 17) / work_per_row);

  at::parallel_for(0, plan.out_h, grain, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> blended(static_cast<std::size_t>(span * channels + 4), 0.0f);
    std::vector<float> pixels(static_cast<std::size_t>(inner_w * 4), 0.0f);
    std::vector<const void*> sources(static_cast<std::size_t>(rows.taps));
    std::vector<float> strided;
    for (std::int64_t y = begin; y < end; ++y) {
      std::array<Out*, 4> planes{};
      for (int c = 0; c < channels; ++c) {
        planes[c] = output + transform.destination[c] * plane + y * plan.out_w;
      }
      if (y < y_begin || y >= y_end) {
        for (int c = 0; c < channels; ++c) {
          std::fill(planes[c], planes[c] + plan.out_w, pad[c]);
        }
        continue;
      }
      const auto r = static_cast<std::size_t>(y - y_begin);
      const std::int64_t first_row = rows.start[r];
      const int count = rows.count[r];
      const float* w = rows.weights.data() + r * static_cast<std::size_t>(rows.taps);
      // Vertical blend of the input rows into `blended` (span pixels, channels floats each).
      if (image.packed()) {
        const std::size_t element = bytes ? 1 : sizeof(float);
        for (int k = 0; k < count; ++k) {
          sources[static_cast<std::size_t>(k)] =
              static_cast<const char*>(image.data) +
              ((first_row + k) * image.row_stride + column_low * channels) * static_cast<std::int64_t>(element);
        }
        if (bytes) {
          vertical(reinterpret_cast<const std::uint8_t* const*>(sources.data()), w, count, span * channels,
                   blended.data());
        } else {
          vertical(reinterpret_cast<const float* const*>(sources.data()), w, count, span * channels, blended.data());
        }
      } else {
        for (std::int64_t x = 0; x < span; ++x) {
          for (int c = 0; c < channels; ++c) {
            const std::int64_t at = (column_low + x) * image.pixel_stride + c * image.channel_stride;
            const auto value = [&](int k) {
              const std::int64_t index = (first_row + k) * image.row_stride + at;
              return bytes ? static_cast<float>(static_cast<const std::uint8_t*>(image.data)[index])
                           : static_cast<const float*>(image.data)[index];
            };
            float a = value(0) * w[0];
            for (int k = 1; k < count; ++k) {
              a = a + value(k) * w[k];
            }
            blended[static_cast<std::size_t>(x * channels + c)] = a;
          }
        }
      }
      // Horizontal blend into `pixels` (4 floats per output pixel).
      horizontal(blended.data(), channels, cols.start.data(), cols.count.data(), cols.weights.data(), cols.taps,
                 inner_w, pixels.data());
      // Round (uint8), normalise, write the planes.
      for (int c = 0; c < channels; ++c) {
        Out* to = planes[c];
        std::fill(to, to + x_begin, pad[c]);
        std::fill(to + x_end, to + plan.out_w, pad[c]);
        const Compute m = multiplier[c];
        const Compute o = offset[c];
        const float* from = pixels.data() + c;
        to += x_begin;
        if (bytes) {
          for (std::int64_t x = 0; x < inner_w; ++x) {
            to[x] = static_cast<Out>(static_cast<Compute>(round_to_byte(from[4 * x])) * m + o);
          }
        } else {
          for (std::int64_t x = 0; x < inner_w; ++x) {
            to[x] = static_cast<Out>(static_cast<Compute>(from[4 * x]) * m + o);
          }
        }
      }
    }
  });
}

}  // namespace torchkit::detail::resize

#undef TORCHKIT_RESIZE_NO_CONTRACT
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
// ---- end torchkit/detail/resize_kernel.hpp ----

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
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

/// How a resize computes pixels, with torchvision's names (`InterpolationMode.NEAREST`, ...).
enum class Interpolation {
  nearest,   ///< the nearest input pixel (`floor(i * in / out)`); never antialiased
  bilinear,  ///< linear in each direction (a triangle filter widened by the scale when antialiased)
  bicubic,   ///< Keys' cubic (a = -0.75; a = -0.5 when antialiased, as ATen and PIL); uint8 results clamped
  Nearest = nearest,    ///< the spelling of DESIGN.md, kept as an alias
  Bilinear = bilinear,  ///< the spelling of DESIGN.md, kept as an alias
  Bicubic = bicubic,    ///< the spelling of DESIGN.md, kept as an alias
};

/// torchvision's `Resize`: to a fixed `size` (`{height, width}`), or the shorter side to
/// `shorter_side` keeping the aspect ratio (`Resize(256)`; the longer side is
/// `int(shorter_side * long / short)`, then capped at `max_size` as torchvision does). Exactly one
/// of `shorter_side` and `size`. A uint8 image is resized in float and rounded back to 0..255 (half
/// to even), as torchvision's `F.resize` returns a uint8 tensor, before scale / mean / std.
///
///     torchkit::Resize{.shorter_side = 256}                     // transforms.Resize(256)
///     torchkit::Resize{.size = {{224, 224}}, .interpolation = torchkit::Interpolation::bicubic}
struct Resize {
  ::std::optional<std::int64_t> shorter_side{};           ///< `Resize(int)`: the shorter side's new length
  ::std::optional<std::array<std::int64_t, 2>> size{};    ///< `Resize((h, w))`: `{height, width}`
  ::std::optional<std::int64_t> max_size{};               ///< with shorter_side: cap on the longer side
  Interpolation interpolation = Interpolation::bilinear;  ///< torchvision's default
  bool antialias = true;  ///< as torchvision >= 0.17 (and PIL); ignored for nearest
};

/// How image_to_batch turns pixels into model input:
/// `output[c] = (pixel[c] * scale - mean[c]) / std[c]`, where `c` is the OUTPUT channel (after
/// the optional BGR → RGB swap), as torchvision's `ToTensor()` + `Normalize(mean, std)` and
/// OpenCV's `blobFromImage(image, scale, size, mean, swapRB)` order them.
///
///     torchkit::ImageOptions imagenet{.bgr_to_rgb = true,
///                                     .mean = {0.485, 0.456, 0.406},
///                                     .std = {0.229, 0.224, 0.225}};
struct ImageOptions {
  /// torchvision's `Resize`, applied first (none: the image's own size).
  ::std::optional<Resize> resize{};
  /// torchvision's `CenterCrop((height, width))` after the resize: the window at
  /// `round((H - height) / 2)` (half to even, as Python's round), and zero pixels around the image
  /// where the crop is larger (`(crop - H) // 2` before, the rest after). Without a resize and
  /// inside the image it is a view: no pixel outside the crop is read.
  ::std::optional<std::array<std::int64_t, 2>> center_crop{};
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
  const std::int64_t channels = image.size(2);
  const bool looks_chw = image.size(0) == 1 || image.size(0) == 3 || image.size(0) == 4;
  TORCHKIT_CHECK(channels == 1 || channels == 3 || channels == 4,
                 "{}: {} has {} channels (shape {}); expected 1, 3 or 4 channels in the last "
                 "dimension of [H, W, C]{}",
                 function, which, channels, shape_string(image.sizes()),
                 looks_chw ? "; it looks like a CHW tensor [C, H, W]: pass image.permute({1, 2, 0}) (the decoded-image "
                             "layout [H, W, C] is expected)"
                           : "");
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
inline ImageTransform image_transform_of(std::string_view function, std::int64_t channels,
                                         const ImageOptions& options) {
  TORCHKIT_CHECK(std::isfinite(options.scale), "{}: scale is {}; expected a finite number",
                 function, options.scale);
  const auto check_count = [&](const std::vector<double>& values, std::string_view name) {
    TORCHKIT_CHECK(values.empty() || values.size() == 1 || static_cast<std::int64_t>(values.size()) == channels,
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
  const auto value_of = [](const std::vector<double>& values, std::int64_t channel, double fallback) {
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

/// The resize of one image, or none: the output size of Resize for an `height x width` image,
/// checked (torchvision's `_compute_resized_output_size`).
inline std::array<std::int64_t, 2> resized_size_of(std::string_view function, const Resize& resize,
                                                   std::int64_t height, std::int64_t width) {
  TORCHKIT_CHECK(resize.shorter_side.has_value() != resize.size.has_value(),
                 "{}: resize has {}; expected exactly one of shorter_side (Resize(int)) and size "
                 "(Resize((h, w)))",
                 function, resize.size.has_value() ? "both shorter_side and size" : "neither shorter_side nor size");
  const auto mode = static_cast<int>(resize.interpolation);
  TORCHKIT_CHECK(mode >= 0 && mode <= 2,
                 "{}: resize.interpolation is {}, not an Interpolation; expected nearest, bilinear or bicubic "
                 "(for uint8 and float images alike)",
                 function, mode);
  if (resize.size.has_value()) {
    const auto [h, w] = *resize.size;
    TORCHKIT_CHECK(h > 0 && w > 0, "{}: resize.size is {{{}, {}}}; expected a positive height and width",
                   function, h, w);
    TORCHKIT_CHECK(!resize.max_size.has_value(),
                   "{}: resize.max_size is {} with a fixed size {{{}, {}}}; max_size only applies with "
                   "shorter_side (as torchvision's Resize)",
                   function, *resize.max_size, h, w);
    return {h, w};
  }
  const std::int64_t requested = *resize.shorter_side;
  TORCHKIT_CHECK(requested > 0, "{}: resize.shorter_side is {}; expected a positive length", function, requested);
  const bool wide = width > height;
  const std::int64_t short_side = wide ? height : width;
  const std::int64_t long_side = wide ? width : height;
  std::int64_t new_short = requested;
  auto new_long = static_cast<std::int64_t>(static_cast<double>(requested * long_side) / static_cast<double>(short_side));
  if (resize.max_size.has_value()) {
    const std::int64_t max_size = *resize.max_size;
    TORCHKIT_CHECK(max_size > requested,
                   "{}: resize.max_size is {} but shorter_side is {}; max_size must be larger than the "
                   "requested shorter side",
                   function, max_size, requested);
    if (new_long > max_size) {
      new_short = static_cast<std::int64_t>(static_cast<double>(max_size * new_short) / static_cast<double>(new_long));
      new_long = max_size;
    }
  }
  new_short = std::max<std::int64_t>(new_short, 1);
  new_long = std::max<std::int64_t>(new_long, 1);
  return wide ? std::array<std::int64_t, 2>{new_short, new_long} : std::array<std::int64_t, 2>{new_long, new_short};
}

/// torchvision's center_crop offset along one axis of `size` pixels for a crop of `crop`:
/// negative where the crop is larger (that many zero pixels before the image).
[[nodiscard]] inline std::int64_t center_crop_offset(std::int64_t size, std::int64_t crop) noexcept {
  if (crop > size) {
    return -((crop - size) / 2);
  }
  const std::int64_t difference = size - crop;  // round(difference / 2.0), half to even
  const std::int64_t half = difference / 2;
  return difference % 2 == 0 || half % 2 == 0 ? half : half + 1;
}

/// The geometry of one image's resize and crop (nullopt: neither, or a crop inside the image
/// without a resize, which the caller takes as a view).
inline std::optional<resize::Plan> plan_of(std::string_view function, const ImageOptions& options,
                                           std::int64_t height, std::int64_t width) {
  if (options.center_crop.has_value()) {
    const auto [h, w] = *options.center_crop;
    TORCHKIT_CHECK(h > 0 && w > 0, "{}: center_crop is {{{}, {}}}; expected a positive height and width",
                   function, h, w);
  }
  if (!options.resize.has_value() && !options.center_crop.has_value()) {
    return std::nullopt;
  }
  resize::Plan plan;
  plan.resized_h = height;
  plan.resized_w = width;
  if (options.resize.has_value()) {
    const auto size = resized_size_of(function, *options.resize, height, width);
    plan.resized_h = size[0];
    plan.resized_w = size[1];
    plan.filter = static_cast<resize::Filter>(static_cast<int>(options.resize->interpolation));
    plan.antialias = options.resize->antialias;
  }
  plan.out_h = plan.resized_h;
  plan.out_w = plan.resized_w;
  if (options.center_crop.has_value()) {
    plan.out_h = (*options.center_crop)[0];
    plan.out_w = (*options.center_crop)[1];
    plan.top = center_crop_offset(plan.resized_h, plan.out_h);
    plan.left = center_crop_offset(plan.resized_w, plan.out_w);
  }
  return plan;
}

/// Whether a plan reads the image as it is (no resize): then only a window, and a view does it.
[[nodiscard]] inline bool is_window_of_image(const resize::Plan& plan, std::int64_t height, std::int64_t width) {
  return plan.resized_h == height && plan.resized_w == width && plan.top >= 0 && plan.left >= 0 &&
         plan.top + plan.out_h <= height && plan.left + plan.out_w <= width;
}

/// A plan's resize, crop and padding with ATen operations: `planes` `[C, H, W]` (any dtype) to
/// `[C, out_h, out_w]` float (uint8 images rounded back to 0..255 after the resize, as torchvision).
inline at::Tensor resize_with_aten_ops(const at::Tensor& planes, const resize::Plan& plan, bool bytes) {
  at::Tensor x = planes.to(at::kFloat).unsqueeze(0);
  const std::vector<std::int64_t> size{plan.resized_h, plan.resized_w};
  if (plan.resized_h != planes.size(1) || plan.resized_w != planes.size(2)) {
    switch (plan.filter) {
      case resize::Filter::nearest: x = at::upsample_nearest2d(x, size); break;
      case resize::Filter::bilinear:
        x = plan.antialias ? at::_upsample_bilinear2d_aa(x, size, false) : at::upsample_bilinear2d(x, size, false);
        break;
      case resize::Filter::bicubic:
        x = plan.antialias ? at::_upsample_bicubic2d_aa(x, size, false) : at::upsample_bicubic2d(x, size, false);
        break;
    }
    if (bytes) {
      x = x.clamp(0, 255).round();
    }
  }
  const std::int64_t right = plan.out_w - plan.resized_w + plan.left;
  const std::int64_t bottom = plan.out_h - plan.resized_h + plan.top;
  x = at::constant_pad_nd(x, {-plan.left, right, -plan.top, bottom}, plan.pad_value);
  return x.squeeze(0);
}

/// The same computation with ATen operations, for batches made off the CPU (a CUDA device) and
/// for float images that require grad (so that autograd sees it). Also used by the tests as a
/// second, independent implementation. `plans`: none, or one resize/crop per image.
inline at::Tensor images_to_batch_with_aten_ops(std::span<const at::Tensor> images,
                                                const ImageTransform& transform,
                                                const ImageOptions& options, c10::Device device,
                                                std::span<const resize::Plan> plans = {}) {
  const std::int64_t channels = transform.channels;
  std::vector<double> multiplier(static_cast<std::size_t>(channels));
  std::vector<double> offset(static_cast<std::size_t>(channels));
  std::vector<std::int64_t> source_of(static_cast<std::size_t>(channels));
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
  for (std::size_t i = 0; i < images.size(); ++i) {
    const at::Tensor& image = images[i];
    // Upload as it is: a uint8 image is 4× fewer bytes than its float batch.
    at::Tensor planes = image.to(device).permute({2, 0, 1});
    if (!plans.empty()) {
      planes = resize_with_aten_ops(planes, plans[i], image.scalar_type() == at::kByte);
    }
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
  const std::int64_t height = sources[0].height;
  const std::int64_t width = sources[0].width;
  const std::int64_t image_size = transform.channels * height * width;
  const std::int64_t rows = static_cast<std::int64_t>(sources.size()) * height;
  // At least ~64K values per task, so that small images stay on one thread.
  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 16) / (width * transform.channels));
  at::parallel_for(0, rows, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end;) {
      const std::int64_t image = row / height;
      const std::int64_t y_begin = row % height;
      const std::int64_t y_end = std::min(height, y_begin + (end - row));
      convert_image_rows_for<Out>(sources[static_cast<std::size_t>(image)], transform,
                                  batch + image * image_size, y_begin, y_end);
      row += y_end - y_begin;
    }
  });
}

/// Writes the images into `batch` (`[N, C, H, W]` of Out, contiguous, on the CPU): those with a
/// plan through the resize pass, the rest through the fused conversion (several at once).
template <class Out>
void fill_batch_on_cpu(std::span<const ImageSource> sources, std::span<const std::optional<resize::Plan>> plans,
                       const ImageTransform& transform, Out* batch, std::int64_t image_size) {
  bool any_plan = false;
  for (const auto& plan : plans) {
    any_plan = any_plan || plan.has_value();
  }
  if (!any_plan) {
    fill_batch_on_cpu<Out>(sources, transform, batch);
    return;
  }
  for (std::size_t i = 0; i < sources.size(); ++i) {
    Out* output = batch + static_cast<std::int64_t>(i) * image_size;
    if (plans[i].has_value()) {
      resize::resize_image<Out>(sources[i], *plans[i], transform, output);
    } else {
      fill_batch_on_cpu<Out>(sources.subspan(i, 1), transform, output);
    }
  }
}

/// image_to_batch / images_to_batch / letterbox. `given`: one plan per image (letterbox), or
/// empty (the plans come from options.resize / options.center_crop).
inline at::Tensor images_to_batch_impl(std::string_view function, std::span<const at::Tensor> images,
                                       const ImageOptions& options, std::span<const resize::Plan> given = {}) {
  TORCHKIT_CHECK(!images.empty(), "{}: no images; expected at least one [H, W, C] image", function);
  std::vector<ImageSource> sources;
  std::vector<at::Tensor> views(images.begin(), images.end());
  std::vector<std::optional<resize::Plan>> plans(images.size());
  sources.reserve(images.size());
  const bool resizes = options.resize.has_value() || !given.empty();
  std::array<std::int64_t, 2> first_size{};
  for (std::size_t i = 0; i < images.size(); ++i) {
    const std::string which = images.size() == 1 ? std::string("the image") : fmt::format("image {}", i);
    sources.push_back(image_source_of(function, images[i], which));
    const std::int64_t height = sources[i].height;
    const std::int64_t width = sources[i].width;
    plans[i] = given.empty() ? plan_of(function, options, height, width) : std::optional<resize::Plan>(given[i]);
    if (plans[i].has_value() && is_window_of_image(*plans[i], height, width)) {
      // A crop inside the image: read in place through a view.
      const resize::Plan& plan = *plans[i];
      views[i] = images[i].slice(0, plan.top, plan.top + plan.out_h).slice(1, plan.left, plan.left + plan.out_w);
      sources[i] = image_source_of(function, views[i], which);
      plans[i].reset();
    }
    const std::array<std::int64_t, 2> size =
        plans[i].has_value() ? std::array<std::int64_t, 2>{plans[i]->out_h, plans[i]->out_w}
                             : std::array<std::int64_t, 2>{sources[i].height, sources[i].width};
    if (i == 0) {
      first_size = size;
      continue;
    }
    if (!resizes && !options.center_crop.has_value()) {
      TORCHKIT_CHECK(images[i].sizes() == images[0].sizes(),
                     "{}: image {} has shape {} but image 0 has {}; every image of a batch must "
                     "have the same height, width and channel count (or pass a resize that makes them equal)",
                     function, i, shape_string(images[i].sizes()), shape_string(images[0].sizes()));
    }
    TORCHKIT_CHECK(sources[i].channels == sources[0].channels,
                   "{}: image {} has {} channels (shape {}) but image 0 has {} (shape {}); every image of a "
                   "batch must have the same channel count",
                   function, i, sources[i].channels, shape_string(images[i].sizes()), sources[0].channels,
                   shape_string(images[0].sizes()));
    TORCHKIT_CHECK(size == first_size,
                   "{}: image {} (shape {}) becomes {}x{} after the resize and crop but image 0 (shape {}) "
                   "becomes {}x{}; use a resize to a fixed size or a center_crop so that every image ends "
                   "the same size",
                   function, i, shape_string(images[i].sizes()), size[0], size[1], shape_string(images[0].sizes()),
                   first_size[0], first_size[1]);
    TORCHKIT_CHECK(images[i].device() == images[0].device(),
                   "{}: image {} is on {} but image 0 is on {}; every image must be on one device",
                   function, i, images[i].device().str(), images[0].device().str());
  }
  const ImageTransform transform = image_transform_of(function, sources[0].channels, options);
  const c10::Device device = batch_device_of(images[0], options);

  bool needs_autograd = false;
  for (const at::Tensor& image : images) {
    needs_autograd = needs_autograd || (image.requires_grad() && at::GradMode::is_enabled());
  }
  bool any_plan = false;
  for (const auto& plan : plans) {
    any_plan = any_plan || plan.has_value();
  }
  if (!device.is_cpu() || !images[0].is_cpu() || needs_autograd) {
    TORCHKIT_CHECK(!device.is_cuda() || at::hasCUDA(),
                   "{}: device {} was asked for, but this LibTorch has no CUDA support or no GPU",
                   function, device.str());
    std::vector<resize::Plan> aten_plans;
    if (any_plan) {
      for (std::size_t i = 0; i < plans.size(); ++i) {
        resize::Plan identity;
        identity.resized_h = identity.out_h = sources[i].height;
        identity.resized_w = identity.out_w = sources[i].width;
        aten_plans.push_back(plans[i].value_or(identity));
      }
    }
    return images_to_batch_with_aten_ops(views, transform, options, device, aten_plans);
  }

  const std::int64_t count = static_cast<std::int64_t>(images.size());
  const std::int64_t channels = sources[0].channels;
  at::Tensor batch = at::empty({count, channels, first_size[0], first_size[1]},
                               at::TensorOptions().dtype(options.dtype));
  for (std::size_t i = 0; i < views.size(); ++i) {
    sources[i].data = views[i].data_ptr();
  }
  const std::int64_t image_size = channels * first_size[0] * first_size[1];
  switch (options.dtype) {
    case at::kFloat:
      fill_batch_on_cpu<float>(sources, plans, transform, batch.data_ptr<float>(), image_size);
      break;
    case at::kDouble:
      fill_batch_on_cpu<double>(sources, plans, transform, batch.data_ptr<double>(), image_size);
      break;
    case at::kHalf:
      fill_batch_on_cpu<c10::Half>(sources, plans, transform, batch.data_ptr<c10::Half>(), image_size);
      break;
    default:  // BFloat16; image_transform_of rejected everything else
      fill_batch_on_cpu<c10::BFloat16>(sources, plans, transform, batch.data_ptr<c10::BFloat16>(), image_size);
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
/// With `options.resize` / `options.center_crop` it is torchvision's
/// `Resize(...)` → `CenterCrop(...)` → `ToTensor()` → `Normalize(...)` (tensor path, within 1e-5
/// for float images and one level for uint8 ones), and only the pixels inside the crop are
/// computed, still in one pass over the output.
///
/// @throws Error for an undefined or empty image, a channel count other than 1, 3 or 4, a dtype
///         other than uint8/float, a mean or std of the wrong length, a std of 0, a non-finite
///         option or an unsupported output dtype; for a resize with neither or both of
///         shorter_side and size, a non-positive size or shorter_side, max_size with a fixed size
///         or not larger than shorter_side, an interpolation that is not an Interpolation, and a
///         non-positive center_crop.
///
///     at::Tensor image = decode("cat.png");  // [H, W, 3] uint8, BGR (see opencv.hpp for cv::Mat)
///     auto input = torchkit::image_to_batch(image, {.bgr_to_rgb = true,
///                                                   .mean = {0.485, 0.456, 0.406},
///                                                   .std = {0.229, 0.224, 0.225}});
///     auto logits = model->forward(input);  // input: [1, 3, H, W] float
///
///     // transforms.Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)])
///     auto classifier_input = torchkit::image_to_batch(image, {.resize = torchkit::Resize{.shorter_side = 256},
///                                                              .center_crop = {{224, 224}},
///                                                              .bgr_to_rgb = true,
///                                                              .mean = {0.485, 0.456, 0.406},
///                                                              .std = {0.229, 0.224, 0.225}});
[[nodiscard]] inline at::Tensor image_to_batch(const at::Tensor& hwc, const ImageOptions& options = {}) {
  return detail::images_to_batch_impl("image_to_batch", std::span<const at::Tensor>(&hwc, 1), options);
}

/// Several images `[H, W, C]` to a batch `[N, C, H, W]`, each as image_to_batch does it, written
/// straight into the batch (no per-image tensors, no `at::stack` copy). The images may differ in
/// size when the resize / center_crop makes them equal. The Python equivalent is
/// `torch.stack([transform(img) for img in images])`.
///
/// @throws Error for an empty list, images of different channel counts or devices, images that
///         end up different sizes (without a resize or crop: of different shapes), and
///         everything image_to_batch rejects (the message names the image's position).
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

/// Options of letterbox(): the detector convention (YOLOv5/v8's `letterbox`): scale the image to
/// fit `size` keeping its aspect ratio, pad the rest symmetrically with `pad_value`.
///
///     torchkit::LetterboxOptions{.size = {640, 640}, .image = {.bgr_to_rgb = true}}
struct LetterboxOptions {
  /// The output `{height, width}`.
  std::array<std::int64_t, 2> size{640, 640};
  /// The border's pixel value, before scale / mean / std (114: YOLO's grey).
  double pad_value = 114;
  /// Whether a small image may be enlarged (false: scale at most 1, YOLO's `scaleup=False`).
  bool scale_up = true;
  /// How the scaled image is computed; bilinear without antialias is cv2's INTER_LINEAR, as the
  /// detectors' Python code resizes.
  Interpolation interpolation = Interpolation::bilinear;
  /// Antialias when shrinking (false, as cv2.resize; true matches torchvision's F.resize).
  bool antialias = false;
  /// scale / mean / std / BGR → RGB / dtype / device of the batch (resize and center_crop must be
  /// empty: the letterbox decides the geometry).
  ImageOptions image{};
};

/// What letterbox() made: the batch and where the image lies in it.
struct Letterbox {
  at::Tensor batch;   ///< `[1, C, size[0], size[1]]`, as image_to_batch makes it
  double scale = 1;   ///< letterboxed pixel = original pixel * scale + pad
  std::int64_t pad_top = 0;   ///< border rows above the image (the odd row goes below)
  std::int64_t pad_left = 0;  ///< border columns left of the image (the odd column goes right)
  std::array<std::int64_t, 2> original_size{};  ///< the image's `{height, width}`
  std::array<std::int64_t, 2> resized_size{};   ///< the scaled image's `{height, width}` inside the border

  /// Boxes predicted on the letterboxed image back to the original image: `x' = (x - pad_left) /
  /// scale`, `y' = (y - pad_top) / scale`, clamped to the image (`[0, width]`, `[0, height]`), as
  /// YOLO's `scale_boxes`. A new tensor; the input is not changed.
  ///
  /// @param boxes_xyxy  `[..., K]` floating point, K >= 4: columns 0-3 are x1, y1, x2, y2; the
  ///                    rest (score, class) are copied unchanged.
  /// @throws Error for an undefined tensor, fewer than 4 columns or an integer dtype.
  ///
  ///     auto boxes = letterboxed.to_original(detections);  // [N, 6] -> [N, 6] in image pixels
  [[nodiscard]] at::Tensor to_original(const at::Tensor& boxes_xyxy) const {
    TORCHKIT_CHECK(boxes_xyxy.defined(), "Letterbox::to_original: the boxes are an undefined tensor");
    TORCHKIT_CHECK(boxes_xyxy.dim() >= 1 && boxes_xyxy.size(-1) >= 4,
                   "Letterbox::to_original: boxes have shape {}; expected [..., 4] (x1, y1, x2, y2, then "
                   "anything)",
                   detail::shape_string(boxes_xyxy.sizes()));
    TORCHKIT_CHECK(at::isFloatingType(boxes_xyxy.scalar_type()),
                   "Letterbox::to_original: boxes have dtype {}; expected a floating point dtype",
                   std::string(c10::toString(boxes_xyxy.scalar_type())));
    at::Tensor result = boxes_xyxy.clone();
    const auto map = [&](std::int64_t column, std::int64_t pad, std::int64_t limit) {
      at::Tensor values = result.select(-1, column);
      values.copy_(((values - static_cast<double>(pad)) / scale).clamp(0, static_cast<double>(limit)));
    };
    map(0, pad_left, original_size[1]);
    map(1, pad_top, original_size[0]);
    map(2, pad_left, original_size[1]);
    map(3, pad_top, original_size[0]);
    return result;
  }
};

namespace detail {

/// The letterbox geometry of an `height x width` image (YOLOv5's arithmetic: `r = min(H / h, W /
/// w)`, the scaled size `round(w * r)` (half to even), the padding split with the odd pixel last).
inline resize::Plan letterbox_plan(const LetterboxOptions& options, std::int64_t height, std::int64_t width,
                                   double& scale) {
  const auto [out_h, out_w] = options.size;
  scale = std::min(static_cast<double>(out_h) / static_cast<double>(height),
                   static_cast<double>(out_w) / static_cast<double>(width));
  if (!options.scale_up) {
    scale = std::min(scale, 1.0);
  }
  resize::Plan plan;
  plan.resized_w = std::clamp<std::int64_t>(static_cast<std::int64_t>(std::nearbyint(static_cast<double>(width) * scale)),
                                            1, out_w);
  plan.resized_h = std::clamp<std::int64_t>(
      static_cast<std::int64_t>(std::nearbyint(static_cast<double>(height) * scale)), 1, out_h);
  plan.out_h = out_h;
  plan.out_w = out_w;
  plan.top = -((out_h - plan.resized_h) / 2);
  plan.left = -((out_w - plan.resized_w) / 2);
  plan.filter = static_cast<resize::Filter>(static_cast<int>(options.interpolation));
  plan.antialias = options.antialias;
  plan.pad_value = options.pad_value;
  return plan;
}

inline Letterbox letterbox_impl(const at::Tensor& hwc, const LetterboxOptions& options) {
  const auto [out_h, out_w] = options.size;
  TORCHKIT_CHECK(out_h > 0 && out_w > 0, "letterbox: size is {{{}, {}}}; expected a positive height and width",
                 out_h, out_w);
  TORCHKIT_CHECK(std::isfinite(options.pad_value), "letterbox: pad_value is {}; expected a finite number",
                 options.pad_value);
  const auto mode = static_cast<int>(options.interpolation);
  TORCHKIT_CHECK(mode >= 0 && mode <= 2,
                 "letterbox: interpolation is {}, not an Interpolation; expected nearest, bilinear or bicubic",
                 mode);
  TORCHKIT_CHECK(!options.image.resize.has_value() && !options.image.center_crop.has_value(),
                 "letterbox: options.image has a {}; the letterbox decides the geometry (leave resize and "
                 "center_crop empty)",
                 options.image.resize.has_value() ? "resize" : "center_crop");
  const ImageSource source = image_source_of("letterbox", hwc, "the image");
  Letterbox result;
  const resize::Plan plan = letterbox_plan(options, source.height, source.width, result.scale);
  result.batch = images_to_batch_impl("letterbox", std::span<const at::Tensor>(&hwc, 1), options.image,
                                      std::span<const resize::Plan>(&plan, 1));
  result.pad_top = -plan.top;
  result.pad_left = -plan.left;
  result.original_size = {source.height, source.width};
  result.resized_size = {plan.resized_h, plan.resized_w};
  return result;
}

}  // namespace detail

/// The detector's input: the image scaled to fit `options.size` keeping its aspect ratio
/// (`scale = min(H / h, W / w)`, at most 1 without `scale_up`), the scaled size rounded half to
/// even, centred with `pad_value` borders (the odd row / column at the bottom / right), then
/// scale / mean / std / BGR → RGB as image_to_batch, in one pass. The Python equivalent is
/// YOLOv5's `letterbox(img, (640, 640), auto=False)` (cv2.resize INTER_LINEAR +
/// cv2.copyMakeBorder with 114) followed by the to-tensor lines; uint8 images match it within one
/// level (cv2 computes INTER_LINEAR in fixed point).
///
/// @returns the batch `[1, C, H, W]`, the scale, the padding and the sizes; `to_original` maps
///          predicted boxes back.
/// @throws Error for a non-positive size, a non-finite pad_value, an unknown interpolation,
///         options.image with a resize or center_crop, and everything image_to_batch rejects.
///
///     auto boxed = torchkit::letterbox(frame, {.size = {640, 640}, .image = {.bgr_to_rgb = true}});
///     auto detections = model->forward(boxed.batch);         // boxes in letterboxed pixels
///     auto boxes = boxed.to_original(detections);            // boxes in the frame's pixels
[[nodiscard]] inline Letterbox letterbox(const at::Tensor& hwc, const LetterboxOptions& options = {}) {
  return detail::letterbox_impl(hwc, options);
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
#include <cstddef>
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
[[nodiscard]] std::int64_t one_hot_on_cpu(const Label* labels, std::int64_t count, std::int64_t num_classes,
                                     OneHotValues values, std::optional<std::int64_t> ignore_index,
                                     Out* output) {
  const Out on = static_cast<Out>(values.on);
  const Out off = static_cast<Out>(values.off);
  const bool off_is_zero = values.off == 0.0;
  const bool has_ignore = ignore_index.has_value();
  const std::int64_t ignore = ignore_index.value_or(0);
  // The first bad label seen by any task; `count` while there is none.
  std::atomic<std::int64_t> first_bad{count};
  const auto record_bad = [&first_bad](std::int64_t index) {
    std::int64_t current = first_bad.load(std::memory_order_relaxed);
    while (index < current && !first_bad.compare_exchange_weak(current, index, std::memory_order_relaxed)) {
    }
  };
  const auto fill = [&](Out* begin, std::int64_t size, bool zero) {
    if (zero) {
      std::memset(static_cast<void*>(begin), 0, static_cast<std::size_t>(size) * sizeof(Out));
    } else {
      std::fill_n(begin, size, off);
    }
  };
  // Rows per block: about 32 KB of output, so the writes of the on values hit the cache.
  const std::int64_t block_rows = std::max<std::int64_t>(1, static_cast<std::int64_t>(32768 / sizeof(Out)) / num_classes);
  // At least ~32K output values per task.
  const std::int64_t grain = std::max<std::int64_t>(1, 32768 / num_classes);
  at::parallel_for(0, count, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t block = begin; block < end; block += block_rows) {
      if (first_bad.load(std::memory_order_relaxed) < block) {
        return;  // an earlier label is already bad: the result is thrown away
      }
      const std::int64_t block_end = std::min(end, block + block_rows);
      fill(output + block * num_classes, (block_end - block) * num_classes, off_is_zero);
      for (std::int64_t i = block; i < block_end; ++i) {
        const auto label = static_cast<std::int64_t>(labels[i]);
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
  const std::int64_t bad = first_bad.load();
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
  std::optional<std::int64_t> ignore_index{};
};

namespace detail {

inline void check_one_hot_options(std::string_view function, std::int64_t num_classes,
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

inline OneHotValues one_hot_values_of(std::int64_t num_classes, const OneHotOptions& options) {
  const double spread = options.smoothing / static_cast<double>(num_classes);
  return {1.0 - options.smoothing + spread, spread};
}

[[noreturn]] inline void fail_bad_label(std::int64_t label, std::int64_t flat_index, c10::IntArrayRef sizes,
                                        std::int64_t num_classes, const OneHotOptions& options) {
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
inline at::Tensor one_hot_with_aten_ops(const at::Tensor& labels, std::int64_t num_classes,
                                        const OneHotOptions& options) {
  const OneHotValues values = one_hot_values_of(num_classes, options);
  const at::Tensor wide = labels.to(at::kLong);
  const at::Tensor ignored = options.ignore_index.has_value()
                                 ? wide.eq(*options.ignore_index)
                                 : at::zeros_like(wide, at::TensorOptions().dtype(at::kBool));
  const at::Tensor bad = wide.lt(0).logical_or(wide.ge(num_classes)).logical_and(ignored.logical_not());
  if (bad.any().item<bool>()) {
    const std::int64_t first = bad.flatten().nonzero().select(0, 0).select(0, 0).item<std::int64_t>();
    fail_bad_label(wide.flatten().select(0, first).item<std::int64_t>(), first, labels.sizes(), num_classes,
                   options);
  }
  std::vector<std::int64_t> sizes = labels.sizes().vec();
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
    case at::kByte: return visit(TypeTag<std::uint8_t>{});
    case at::kChar: return visit(TypeTag<std::int8_t>{});
    case at::kShort: return visit(TypeTag<std::int16_t>{});
    case at::kInt: return visit(TypeTag<std::int32_t>{});
    default: return visit(TypeTag<std::int64_t>{});  // kLong; one_hot checked the dtype
  }
}

template <class F>
decltype(auto) visit_one_hot_output_type(at::ScalarType dtype, F&& visit) {
  switch (dtype) {
    case at::kDouble: return visit(TypeTag<double>{});
    case at::kHalf: return visit(TypeTag<c10::Half>{});
    case at::kBFloat16: return visit(TypeTag<c10::BFloat16>{});
    case at::kLong: return visit(TypeTag<std::int64_t>{});
    case at::kInt: return visit(TypeTag<std::int32_t>{});
    case at::kShort: return visit(TypeTag<std::int16_t>{});
    case at::kChar: return visit(TypeTag<std::int8_t>{});
    case at::kByte: return visit(TypeTag<std::uint8_t>{});
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
[[nodiscard]] inline at::Tensor one_hot(const at::Tensor& labels, std::int64_t num_classes,
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

  std::vector<std::int64_t> sizes = labels.sizes().vec();
  sizes.push_back(num_classes);
  at::Tensor result = at::empty(sizes, at::TensorOptions().dtype(options.dtype));
  const std::int64_t count = labels.numel();
  if (count == 0) {
    return result;
  }
  // Non-contiguous labels are copied once (they are 1/C of the output or less).
  const at::Tensor dense = labels.contiguous();
  const detail::OneHotValues values = detail::one_hot_values_of(num_classes, options);
  const std::int64_t bad = detail::visit_label_type(label_type, [&](auto label_tag) {
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
    const std::int64_t label = detail::visit_label_type(label_type, [&](auto label_tag) {
      using Label = typename decltype(label_tag)::type;
      return static_cast<std::int64_t>(static_cast<const Label*>(dense.data_ptr())[bad]);
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
  explicit OneHot(std::int64_t num_classes, OneHotOptions options = {})
      : num_classes_(num_classes), options_(std::move(options)) {
    detail::check_one_hot_options("OneHot", num_classes_, options_);
  }

  /// one_hot(labels, num_classes(), options()).
  [[nodiscard]] at::Tensor operator()(const at::Tensor& labels) const {
    return one_hot(labels, num_classes_, options_);
  }

  /// The number of classes, the length of the last output dimension.
  [[nodiscard]] std::int64_t num_classes() const { return num_classes_; }
  /// The options every call uses.
  [[nodiscard]] const OneHotOptions& options() const { return options_; }

  /// `OneHot(num_classes=10, dtype=Float, smoothing=0.1, ignore_index=255)`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("OneHot(num_classes={}, dtype={}, smoothing={}, ignore_index={})", num_classes_,
                       c10::toString(options_.dtype), options_.smoothing,
                       options_.ignore_index.has_value() ? std::to_string(*options_.ignore_index)
                                                         : std::string("none"));
  }

  /// Writes to_string().
  friend std::ostream& operator<<(std::ostream& out, const OneHot& encoder) {
    return out << encoder.to_string();
  }

 private:
  std::int64_t num_classes_;
  OneHotOptions options_;
};

namespace detail {
/// OneHot formats with `{fmt}` as its to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<OneHot> = true;
}  // namespace detail

}  // namespace torchkit
// ---- end torchkit/one_hot.hpp ----
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
  std::int64_t allocated = 0;       ///< bytes held by live tensors (`memory_allocated`)
  std::int64_t reserved = 0;        ///< bytes the caching allocator holds (`memory_reserved`)
  std::int64_t peak_allocated = 0;  ///< largest `allocated` since the last reset (`max_memory_allocated`)
  std::int64_t peak_reserved = 0;   ///< largest `reserved` since the last reset (`max_memory_reserved`)

  /// `allocated 1.50 MiB (peak 3.00 MiB), reserved 20.00 MiB (peak 22.00 MiB)`.
  [[nodiscard]] std::string to_string() const;

  /// Every field equal.
  friend bool operator==(const MemoryStats&, const MemoryStats&) = default;
};

namespace detail {
/// MemoryStats formats with `{fmt}` as its to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<MemoryStats> = true;
}  // namespace detail

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
///
/// The family lives in include/torchkit/lr/: scheduler.hpp (the base), decay.hpp, lambda.hpp,
/// cyclic.hpp, composite.hpp, plateau.hpp and swa.hpp (SWALR); this header includes them all.

// ---- begin torchkit/lr/scheduler.hpp ----
/// @file lr/scheduler.hpp
/// The base of torchkit::lr (tip 7): GroupValues, Scheduler (Python's `_LRScheduler`) and
/// RuleScheduler, which every scheduler with an options struct derives from: the options' field
/// table gives the checks, to_string() and save/load, a rule of static functions the values.

// ---- begin torchkit/detail/lr_support.hpp ----
/// @file detail/lr_support.hpp
/// Internals of the schedulers (lr/*.hpp): the initial learning rates every scheduler of one
/// optimizer shares (Python's `param_group['initial_lr']`), reading and writing the groups' lr
/// and momentum, Python's arithmetic helpers, the checks every scheduler's fields use, and
/// typed archive access for save/load.

// ---- begin torchkit/detail/validate.hpp ----
/// @file detail/validate.hpp
/// The shared argument validators: one check, one message, for every header that takes a
/// finite non-negative number (scheduler factors and bounds, parameter-group learning rates and
/// weight decays). Messages start with `owner`, the public name of the function or class that
/// was called ("StepLR", "ParamGroupBuilder::build"), as every torchkit::Error does.


#include <cmath>
#include <cstddef>
#include <string_view>
#include <vector>

namespace torchkit::detail {

/// Throws torchkit::Error "<owner>: <name> must be a finite number >= 0, got <value>" unless
/// `value` is finite and >= 0 (nan, ±inf and negatives are refused; -0.0 is accepted).
inline void check_finite_non_negative(std::string_view owner, std::string_view name, double value) {
  TORCHKIT_CHECK(std::isfinite(value) && value >= 0, "{}: {} must be a finite number >= 0, got {}", owner, name,
                 value);
}

/// The per-param-group form: "<owner>: <name> must be finite numbers >= 0, got <value> for param
/// group <index>", naming the first bad entry.
inline void check_finite_non_negative(std::string_view owner, std::string_view name,
                                      const std::vector<double>& values) {
  for (std::size_t index = 0; index < values.size(); ++index) {
    TORCHKIT_CHECK(std::isfinite(values[index]) && values[index] >= 0,
                   "{}: {} must be finite numbers >= 0, got {} for param group {}", owner, name, values[index],
                   index);
  }
}

}  // namespace torchkit::detail
// ---- end torchkit/detail/validate.hpp ----

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
#include <atomic>
#include <concepts>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace torchkit::detail::lr {

// ---------------------------------------------------------------------------------------------
// The optimizer's parameter groups
// ---------------------------------------------------------------------------------------------

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

/// The lr of every group (Python's `[group['lr'] for group in optimizer.param_groups]`).
[[nodiscard]] inline std::vector<double> group_lrs(const torch::optim::Optimizer& optimizer) {
  std::vector<double> lrs(optimizer.param_groups().size());
  for (std::size_t index = 0; index < lrs.size(); ++index) {
    lrs[index] = group_lr(optimizer, index);
  }
  return lrs;
}

/// Sets the lr of parameter group `index`.
inline void set_group_lr(torch::optim::Optimizer& optimizer, std::size_t index, double lr) {
  optimizer.param_groups()[index].options().set_lr(lr);
}

/// Sets the lr of the first `lrs.size()` groups.
inline void set_group_lrs(torch::optim::Optimizer& optimizer, const std::vector<double>& lrs) {
  for (std::size_t index = 0; index < lrs.size(); ++index) {
    set_group_lr(optimizer, index, lrs[index]);
  }
}

/// What every scheduler checks when it is created: the optimizer has parameter groups, and
/// each group's options have a readable lr. Returns the number of groups.
inline std::size_t check_optimizer(const torch::optim::Optimizer& optimizer, std::string_view owner) {
  TORCHKIT_CHECK(!optimizer.param_groups().empty(),
                 "{}: the optimizer has no parameter groups; give it parameters before creating a scheduler", owner);
  for (std::size_t index = 0; index < optimizer.param_groups().size(); ++index) {
    try {
      (void)optimizer.param_groups()[index].options().get_lr();
    } catch (const c10::Error&) {
      fail("{}: the options of param group {} do not implement get_lr(), so no scheduler can read or set their "
           "learning rate",
           owner, index);
    }
  }
  return optimizer.param_groups().size();
}

/// Throws Error when parameter groups were added to the optimizer since the scheduler
/// `type_name` (which had `expected` of them) was created: its `step()` refuses.
inline void check_group_count(const torch::optim::Optimizer& optimizer, std::size_t expected,
                              std::string_view type_name) {
  TORCHKIT_CHECK(optimizer.param_groups().size() == expected,
                 "{}::step: the optimizer has {} parameter groups, but had {} when the scheduler was created",
                 type_name, optimizer.param_groups().size(), expected);
}

/// What changes when `optimizer.step()` runs: how many parameters have optimizer state, and the
/// first element of every parameter on the CPU (raw bits). LibTorch's optimizers update
/// parameters through `.data()`, which bumps no version counter, so the values themselves are
/// compared. Accelerator parameters are not read (that would sync the device): there only the
/// state count tells.
[[nodiscard]] inline std::vector<std::uint64_t> step_fingerprint(const torch::optim::Optimizer& optimizer) {
  std::vector<std::uint64_t> print{static_cast<std::uint64_t>(optimizer.state().size())};
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& parameter : group.params()) {
      if (!parameter.defined() || !parameter.device().is_cpu() || parameter.numel() == 0 ||
          !parameter.has_storage()) {
        continue;
      }
      std::uint64_t bits = 0;
      std::memcpy(&bits, parameter.data_ptr(), std::min<std::size_t>(sizeof(bits), parameter.element_size()));
      print.push_back(bits);
    }
  }
  return print;
}

/// Whether the step-order warning was given in this process (Python warns once).
[[nodiscard]] inline std::atomic<bool>& step_order_warned() {
  static std::atomic<bool> warned{false};
  return warned;
}

/// Python's warning for `scheduler.step()` before any `optimizer.step()`, once per process,
/// through LibTorch's warning handler (TORCH_WARN: printed to stderr by default; silence or
/// capture it with a c10::WarningUtils::WarningHandlerGuard — c10::Warning:: in LibTorch 1.13).
inline void warn_step_before_optimizer(std::string_view type_name) {
  if (step_order_warned().exchange(true)) return;
  TORCH_WARN(type_name, "::step: called before the optimizer's step(); call optimizer.step() first and then "
             "scheduler.step(), or the first value of the schedule is skipped (PyTorch warns the same: \"Detected "
             "call of `lr_scheduler.step()` before `optimizer.step()`\")");
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

/// The momentum (or beta1) of every group; the kind must have been checked.
[[nodiscard]] inline std::vector<double> group_momentums(const torch::optim::Optimizer& optimizer) {
  std::vector<double> momentums;
  for (const auto& group : optimizer.param_groups()) {
    const auto& options = group.options();
    if (const auto* sgd = dynamic_cast<const torch::optim::SGDOptions*>(&options)) {
      momentums.push_back(sgd->momentum());
    } else if (const auto* rmsprop = dynamic_cast<const torch::optim::RMSpropOptions*>(&options)) {
      momentums.push_back(rmsprop->momentum());
    } else if (const auto* adam = dynamic_cast<const torch::optim::AdamOptions*>(&options)) {
      momentums.push_back(std::get<0>(adam->betas()));
    } else if (const auto* adamw = dynamic_cast<const torch::optim::AdamWOptions*>(&options)) {
      momentums.push_back(std::get<0>(adamw->betas()));
    } else {
      fail("torchkit::lr: param group {} has no momentum or betas", momentums.size());
    }
  }
  return momentums;
}

/// Sets the momentum (SGD, RMSprop) or beta1 (Adam, AdamW, keeping beta2) of the first
/// `momentums.size()` groups; the kind must have been checked.
inline void set_group_momentums(torch::optim::Optimizer& optimizer, const std::vector<double>& momentums) {
  for (std::size_t index = 0; index < momentums.size(); ++index) {
    auto& options = optimizer.param_groups()[index].options();
    const double value = momentums[index];
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
}

// ---------------------------------------------------------------------------------------------
// Python's arithmetic
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// The checks of the options' fields: `(owner, name, value)`, throwing Error naming both
// ---------------------------------------------------------------------------------------------

/// The largest count of epochs or steps a scheduler accepts: 2^53, where epochs stop being exact
/// as doubles (no run gets there); it keeps every epoch computation clear of int64 overflow.
inline constexpr int64_t max_count = int64_t{1} << 53;

/// A count of epochs or steps: in [1, 2^53] (Python's wording for the lower bound).
inline void check_count(std::string_view owner, std::string_view name, int64_t value) {
  TORCHKIT_CHECK(value > 0, "{}: Expected positive integer {}, but got {}", owner, name, value);
  TORCHKIT_CHECK(value <= max_count, "{}: {} is {}; the largest count a scheduler accepts is 2^53 = {}", owner, name,
                 value, max_count);
}

/// The schedulers' finite, non-negative numbers: the one check of detail/validate.hpp.
using torchkit::detail::check_finite_non_negative;

/// A count that may be 0 (patience, cooldown), with the one number check of detail/validate.hpp.
inline void check_non_negative_count(std::string_view owner, std::string_view name, int64_t value) {
  check_finite_non_negative(owner, name, static_cast<double>(value));
}

/// A divisor: finite and > 0.
inline void check_positive(std::string_view owner, std::string_view name, double value) {
  TORCHKIT_CHECK(std::isfinite(value) && value > 0, "{}: {} must be a finite number > 0, got {}", owner, name, value);
}

/// A multiplicative factor of ConstantLR (`factor`) or LinearLR (`start_factor`, `end_factor`)
/// in [0, 1], with Python's wording; 0 only for `end_factor`, since the lr is divided by the others.
inline void check_factor(std::string_view owner, std::string_view name, double value) {
  const bool divisor = name != "end_factor";
  TORCHKIT_CHECK(value <= 1.0 && (divisor ? value > 0 : value >= 0),
                 "{}: {} multiplicative factor expected to be between 0 and 1{}, got {}={}", owner,
                 name == "factor" ? "Constant" : divisor ? "Starting" : "Ending",
                 divisor ? " (0 excluded: the lr is divided by it)" : "", name, value);
}

/// Milestones must be >= 0 and sorted (equal neighbours are allowed: Python counts them).
inline void check_milestones(std::string_view owner, std::string_view name, const std::vector<int64_t>& milestones) {
  for (std::size_t index = 0; index < milestones.size(); ++index) {
    TORCHKIT_CHECK(milestones[index] >= 0, "{}: {} must be >= 0, got {}[{}] = {} in {}", owner, name, name, index,
                   milestones[index], list_to_string(milestones));
    TORCHKIT_CHECK(index == 0 || milestones[index - 1] <= milestones[index],
                   "{}: {} must be increasing, got {}[{}] = {} after {} in {}", owner, name, name, index,
                   milestones[index], milestones[index - 1], list_to_string(milestones));
  }
}

/// `Check` for a field that must be given (`std::optional` without a default).
template <class T, void (*Check)(std::string_view, std::string_view, T)>
void required(std::string_view owner, std::string_view name, const std::optional<T>& value) {
  TORCHKIT_CHECK(value.has_value(), "{}: {} is required", owner, name);
  Check(owner, name, *value);
}

/// `Check` for a field that may be left out.
template <class T, void (*Check)(std::string_view, std::string_view, T)>
void if_given(std::string_view owner, std::string_view name, const std::optional<T>& value) {
  if (value) {
    Check(owner, name, *value);
  }
}

// ---------------------------------------------------------------------------------------------
// Typed archive access
// ---------------------------------------------------------------------------------------------

/// The types a scheduler's state holds; a field of another type (a function) is not saved.
template <class T>
concept Archivable = std::is_same_v<T, int64_t> || std::is_same_v<T, double> || std::is_same_v<T, bool> ||
                     std::is_same_v<T, std::string> || std::is_same_v<T, std::vector<double>> ||
                     std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::optional<int64_t>> ||
                     std::is_same_v<T, std::optional<double>>;

/// Writes typed values under string keys of an archive (the scheduler's state).
class ArchiveWriter {
 public:
  explicit ArchiveWriter(torch::serialize::OutputArchive& archive) : archive_(archive) {}

  template <Archivable T>
  void write(const std::string& key, const T& value) {
    archive_.write(key, to_ivalue(value));
  }
  /// A nested archive, written by `fill(ArchiveWriter&)`.
  template <class Fill>
  void write_nested(const std::string& key, Fill&& fill) {
    torch::serialize::OutputArchive nested(archive_.compilation_unit());
    ArchiveWriter writer(nested);
    std::forward<Fill>(fill)(writer);
    archive_.write(key, nested);
  }

 private:
  template <class T>
  static c10::IValue to_ivalue(const T& value) {
    if constexpr (std::is_same_v<T, std::vector<double>> || std::is_same_v<T, std::vector<int64_t>>) {
      return c10::IValue(c10::List<typename T::value_type>(value));
    } else if constexpr (std::is_same_v<T, std::optional<int64_t>> || std::is_same_v<T, std::optional<double>>) {
      return value ? c10::IValue(*value) : c10::IValue();
    } else {
      return c10::IValue(value);
    }
  }

  torch::serialize::OutputArchive& archive_;
};

/// Reads typed values written by ArchiveWriter; every missing key or wrong type throws Error
/// naming the key and `owner` (the public function loading: `StepLR::load`).
class ArchiveReader {
 public:
  ArchiveReader(torch::serialize::InputArchive& archive, std::string owner)
      : archive_(archive), owner_(std::move(owner)) {}

  template <Archivable T>
  [[nodiscard]] T read(const std::string& key) {
    const c10::IValue value = read_value(key);
    if constexpr (std::is_same_v<T, int64_t>) {
      check(value.isInt(), key, "an integer", value);
      return value.toInt();
    } else if constexpr (std::is_same_v<T, double>) {
      check(value.isDouble(), key, "a float", value);
      return value.toDouble();
    } else if constexpr (std::is_same_v<T, bool>) {
      check(value.isBool(), key, "a bool", value);
      return value.toBool();
    } else if constexpr (std::is_same_v<T, std::string>) {
      check(value.isString(), key, "a string", value);
      return value.toStringRef();
    } else if constexpr (std::is_same_v<T, std::vector<double>>) {
      if (value.isList() && value.toListRef().empty()) {
        return {};
      }
      check(value.isDoubleList(), key, "a list of floats", value);
      return value.toDoubleVector();
    } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
      if (value.isList() && value.toListRef().empty()) {
        return {};
      }
      check(value.isIntList(), key, "a list of integers", value);
      return value.toIntVector();
    } else {
      if (value.isNone()) {
        return std::nullopt;
      }
      if constexpr (std::is_same_v<T, std::optional<int64_t>>) {
        check(value.isInt(), key, "an integer or None", value);
        return value.toInt();
      } else {
        check(value.isDouble(), key, "a float or None", value);
        return value.toDouble();
      }
    }
  }
  /// A float, or a list of floats (a GroupValues).
  [[nodiscard]] c10::IValue read_number_or_list(const std::string& key) {
    c10::IValue value = read_value(key);
    check(value.isDouble() || value.isDoubleList() || (value.isList() && value.toListRef().empty()), key,
          "a float or a list of floats", value);
    return value;
  }
  /// The nested archive under `key`.
  [[nodiscard]] torch::serialize::InputArchive read_nested(const std::string& key) {
    torch::serialize::InputArchive nested;
    TORCHKIT_CHECK(archive_.try_read(key, nested), "{}: the archive has no '{}'", owner_, key);
    return nested;
  }

  [[nodiscard]] const std::string& owner() const noexcept { return owner_; }

 private:
  [[nodiscard]] c10::IValue read_value(const std::string& key) {
    c10::IValue value;
    TORCHKIT_CHECK(archive_.try_read(key, value), "{}: the archive has no '{}' (was it saved by this kind of scheduler?)",
                   owner_, key);
    return value;
  }
  void check(bool ok, const std::string& key, std::string_view expected, const c10::IValue& value) const {
    TORCHKIT_CHECK(ok, "{}: '{}' in the archive should be {}, got a value of type {}", owner_, key, expected,
                   value.tagKind());
  }

  torch::serialize::InputArchive& archive_;
  std::string owner_;
};

// ---------------------------------------------------------------------------------------------
// The options' field tables, and what a scheduler's rule sees
// ---------------------------------------------------------------------------------------------

/// A value per parameter group, one for all or a list (torchkit::lr::GroupValues).
template <class T>
concept PerGroup = requires(const T& value) {
  { value.for_every_group() } -> std::same_as<bool>;
  { value.values() } -> std::same_as<const std::vector<double>&>;
  { value.to_string() } -> std::same_as<std::string>;
};

/// How a field's check takes its value: scalars by value, the rest by reference.
template <class T>
using CheckArgument = std::conditional_t<std::is_scalar_v<T>, T, const T&>;
template <class T>
using Check = void (*)(std::string_view owner, std::string_view name, CheckArgument<T> value);

/// One field of an options struct: Python's name, the member, and its check (none: any value).
/// Each options struct lists its fields once, in `static constexpr auto fields()`; the checks
/// at construction and load, the arguments in to_string(), the saved state and the tests'
/// per-field lists all come from that list.
template <class Options, class T>
struct Field {
  std::string_view name;
  T Options::*member;
  Check<T> check;
};

template <class Options, class T>
constexpr Field<Options, T> field(std::string_view name, T Options::*member,
                                  std::type_identity_t<Check<T>> check = nullptr) {
  return {name, member, check};
}

/// Calls `visit(field)` for every field of `Options`, in order.
template <class Options, class Visit>
void for_each_field(Visit&& visit) {
  std::apply([&](const auto&... fields) { (visit(fields), ...); }, Options::fields());
}

/// Runs every field's check: Error names `owner` (the public function) and the field.
template <class Options>
void check_fields(const Options& options, std::string_view owner) {
  for_each_field<Options>([&](const auto& field) {
    if (field.check != nullptr) {
      field.check(owner, field.name, options.*field.member);
    }
  });
}

template <class T>
inline constexpr bool is_function_v = false;
template <class R, class... A>
inline constexpr bool is_function_v<std::function<R(A...)>> = true;
template <class T>
inline constexpr bool is_function_list_v = false;
template <class R, class... A>
inline constexpr bool is_function_list_v<std::vector<std::function<R(A...)>>> = true;

/// A field's value in to_string(): strings quoted, lists in brackets, functions as
/// `<function>`, an optional not given as `None`.
template <class T>
[[nodiscard]] std::string format_field(const T& value) {
  if constexpr (std::is_same_v<T, std::string>) {
    return fmt::format("'{}'", value);
  } else if constexpr (PerGroup<T>) {
    return value.to_string();
  } else if constexpr (is_function_v<T>) {
    return value ? "<function>" : "None";
  } else if constexpr (is_function_list_v<T>) {
    return fmt::format("[{} functions]", value.size());
  } else if constexpr (std::is_same_v<T, std::optional<int64_t>> || std::is_same_v<T, std::optional<double>>) {
    return value ? fmt::format("{}", *value) : "None";
  } else if constexpr (std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::vector<double>>) {
    return list_to_string(value);
  } else {
    return fmt::format("{}", value);
  }
}

/// `step_size=10, gamma=0.1`.
template <class Options>
[[nodiscard]] std::string format_fields(const Options& options) {
  std::string text;
  for_each_field<Options>([&](const auto& field) {
    text += fmt::format("{}{}={}", text.empty() ? "" : ", ", field.name, format_field(options.*field.member));
  });
  return text;
}

/// Writes every field under its name. A function is not saved: the archive records whether
/// there was one (or how many), and load() requires the same.
template <class Options>
void save_fields(ArchiveWriter& writer, const Options& options) {
  for_each_field<Options>([&](const auto& field) {
    const std::string key(field.name);
    const auto& value = options.*field.member;
    using T = std::remove_cvref_t<decltype(value)>;
    if constexpr (PerGroup<T>) {
      if (value.for_every_group()) {
        writer.write(key, value.values().front());
      } else {
        writer.write(key, value.values());
      }
    } else if constexpr (is_function_v<T>) {
      writer.write(key, static_cast<bool>(value));
    } else if constexpr (is_function_list_v<T>) {
      writer.write(key, static_cast<int64_t>(value.size()));
    } else {
      writer.write(key, value);
    }
  });
}

/// `options` with every field read back from the archive (functions kept, after checking that
/// the archive was saved with as many).
template <class Options>
[[nodiscard]] Options load_fields(ArchiveReader& reader, Options options) {
  for_each_field<Options>([&](const auto& field) {
    const std::string key(field.name);
    auto& value = options.*field.member;
    using T = std::remove_cvref_t<decltype(value)>;
    if constexpr (PerGroup<T>) {
      const c10::IValue saved = reader.read_number_or_list(key);
      value = saved.isDouble() ? T(saved.toDouble())
                               : T(saved.isDoubleList() ? saved.toDoubleVector() : std::vector<double>{});
    } else if constexpr (is_function_v<T>) {
      const bool saved = reader.read<bool>(key);
      TORCHKIT_CHECK(saved == static_cast<bool>(value),
                     "{}: the archive was saved {} a {}, this scheduler has {}; construct it as the saved one was",
                     reader.owner(), saved ? "with" : "without", key, value ? "one" : "none");
    } else if constexpr (is_function_list_v<T>) {
      const auto saved = reader.read<int64_t>(key);
      TORCHKIT_CHECK(saved == static_cast<int64_t>(value.size()),
                     "{}: the archive was saved with {} {}, this scheduler has {}; construct it as the saved one was",
                     reader.owner(), saved, key, value.size());
    } else {
      value = reader.read<T>(key);
    }
  });
  return options;
}

/// A rule's state when it has none beyond its options.
struct NoState {};

template <class Rule>
struct state_of {
  using type = NoState;
};
template <class Rule>
  requires requires { typename Rule::State; }
struct state_of<Rule> {
  using type = typename Rule::State;
};

/// What a rule sees at a step: Python's `self` inside `get_lr()`.
template <class Rule>
struct View {
  const typename Rule::Options& options;
  const typename state_of<Rule>::type& state;
  int64_t last_epoch;
  int64_t step_count;
  const std::vector<double>& base_lrs;
  const std::vector<double>& initial_lrs;
};

/// The multiplicative shape (StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR,
/// PolynomialLR): every group's lr is multiplied by `factor(options, epoch)` at each step
/// (Python's chainable `get_lr()`), and is `base_lr * closed_factor(options, epoch)` in
/// closed form (`_get_closed_form_lr`).
template <class Rule>
concept FactorRule = requires(const typename Rule::Options& options, int64_t epoch) {
  { Rule::factor(options, epoch) } -> std::same_as<double>;
  { Rule::closed_factor(options, epoch) } -> std::same_as<double>;
};

/// What OneCycleLR and CyclicLR share: the momentum (or Adam's beta1) they cycle inversely to
/// the lr. A rule whose State derives from it gets the set-up, the per-step momentum and its
/// save/load from RuleScheduler.
struct Cycling {
  bool cycle_momentum = false;
  bool use_beta1 = false;
  std::vector<double> base_momentums;
  std::vector<double> max_momentums;
};

/// The momentum set-up of a cycling scheduler: with `cycle_momentum`, the optimizer must have a
/// momentum (Python's error), and `base`/`max` give one value per group.
template <PerGroup Values>
[[nodiscard]] Cycling cycling(const torch::optim::Optimizer& optimizer, bool cycle_momentum, const Values& base,
                              const Values& max, std::string_view owner) {
  Cycling cycling;
  cycling.cycle_momentum = cycle_momentum;
  if (cycle_momentum) {
    const auto kind = momentum_kind(optimizer);
    TORCHKIT_CHECK(kind != MomentumKind::none,
                   "{}: optimizer must support momentum with `cycle_momentum` option enabled (SGD, RMSprop, Adam or "
                   "AdamW); pass cycle_momentum=false",
                   owner);
    cycling.use_beta1 = kind == MomentumKind::beta1;
    const std::size_t group_count = optimizer.param_groups().size();
    cycling.base_momentums = base.for_groups(group_count, "base_momentum", owner);
    cycling.max_momentums = max.for_groups(group_count, "max_momentum", owner);
  }
  return cycling;
}

/// Saves what a cycling scheduler keeps in the optimizer: the momentum of every group.
inline void save_cycling(ArchiveWriter& writer, const Cycling& state, const torch::optim::Optimizer& optimizer) {
  writer.write("use_beta1", state.use_beta1);
  writer.write("optimizer_momentums", state.cycle_momentum ? group_momentums(optimizer) : std::vector<double>{});
}

/// The momentums save_cycling() wrote, after checking that `optimizer` has the kind of momentum
/// the archive cycles and one value per group (none without cycling).
[[nodiscard]] inline std::vector<double> load_cycling(ArchiveReader& reader, const Cycling& state,
                                                      const torch::optim::Optimizer& optimizer) {
  const bool use_beta1 = reader.read<bool>("use_beta1");
  TORCHKIT_CHECK(!state.cycle_momentum || use_beta1 == state.use_beta1,
                 "{}: the archive cycles the {}, which this optimizer does not have", reader.owner(),
                 use_beta1 ? "beta1 of betas" : "momentum");
  auto momentums = reader.read<std::vector<double>>("optimizer_momentums");
  const std::size_t group_count = optimizer.param_groups().size();
  TORCHKIT_CHECK(momentums.size() == (state.cycle_momentum ? group_count : 0),
                 "{}: 'optimizer_momentums' has {} values for {} parameter groups", reader.owner(), momentums.size(),
                 group_count);
  return momentums;
}

}  // namespace torchkit::detail::lr
// ---- end torchkit/detail/lr_support.hpp ----

#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <fmt/format.h>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
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

  /// The values as Python prints the argument: `0.1` for one value, `[0.1, 0.01]` for a list,
  /// `None` when not given.
  [[nodiscard]] std::string to_string() const {
    if (values_.empty()) {
      return "None";
    }
    return for_every_group_ ? fmt::format("{}", values_.front()) : detail::lr::list_to_string(values_);
  }

 private:
  std::vector<double> values_;
  bool for_every_group_ = false;
};

/// A function of the epoch (LambdaLR: the factor applied to the initial lr; MultiplicativeLR:
/// the factor applied to the current lr).
using LrLambda = std::function<double(int64_t epoch)>;

}  // namespace torchkit::lr

namespace torchkit::detail::lr {

/// A GroupValues argument that must be given, every value finite and >= 0.
inline void check_group_values(std::string_view owner, std::string_view name, const torchkit::lr::GroupValues& value) {
  TORCHKIT_CHECK(!value.empty(), "{}: {} is required", owner, name);
  check_finite_non_negative(owner, name, value.values());
}

}  // namespace torchkit::detail::lr

namespace torchkit::lr {

template <class Rule>
class RuleScheduler;
class CompositeScheduler;

/// The common base of every epoch-driven scheduler (Python's `_LRScheduler`), so that
/// SequentialLR and ChainedScheduler can hold any of them. Its two direct kinds are
/// RuleScheduler (a scheduler described by its options and a rule: every scheduler of Python's
/// family but the composites) and CompositeScheduler (SequentialLR, ChainedScheduler); a new
/// scheduler derives from RuleScheduler.
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
    detail::lr::ArchiveWriter(archive).write_nested("lr_scheduler", [&](auto& writer) { save_to(writer); });
  }

  /// Restores the state written by `save()` (Python's `load_state_dict()`), and the lr (and
  /// cycled momentum) of every parameter group. Construct the optimizer and the scheduler as
  /// at the start of the run, then load both; the schedule continues exactly where the saved
  /// run stopped. Throws Error (and changes nothing) when the archive holds another kind of
  /// scheduler, a different number of parameter groups, or any value the constructor would
  /// refuse.
  ///
  ///     torch::serialize::InputArchive archive;
  ///     archive.load_from("checkpoint.pt");
  ///     optimizer.load(archive);
  ///     scheduler.load(archive);
  void load(torch::serialize::InputArchive& archive) {
    const std::string owner = type_name_ + "::load";
    torch::serialize::InputArchive state = detail::lr::ArchiveReader(archive, owner).read_nested("lr_scheduler");
    detail::lr::ArchiveReader reader(state, owner);
    load_from(reader, /*apply=*/false);  // validates everything first
    load_from(reader, /*apply=*/true);
  }

  /// `StepLR(step_size=10, gamma=0.1) last_epoch=3 last_lr=[0.001, 0.0001]`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("{}({}) last_epoch={} last_lr={}", type_name_, arguments(), last_epoch_,
                       detail::lr::list_to_string(last_lr_));
  }

  /// Writes to_string() to `stream`.
  friend std::ostream& operator<<(std::ostream& stream, const Scheduler& scheduler) {
    return stream << scheduler.to_string();
  }

 protected:
  /// Copies the state; the copy sets the lrs of the same optimizer. Protected, so that only a
  /// whole derived scheduler is copied (never sliced to its base).
  Scheduler(const Scheduler&) = default;
  /// Moves the state; the result sets the lrs of the same optimizer.
  Scheduler(Scheduler&&) noexcept = default;
  /// Copy assignment, protected like the copy constructor.
  Scheduler& operator=(const Scheduler&) = default;
  /// Move assignment, protected like the move constructor.
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
  virtual void save_state(detail::lr::ArchiveWriter& writer) const = 0;
  /// Reads what the subclass adds; with `apply` false it only validates (and must throw
  /// Error for anything it would not accept), with `apply` true it commits.
  virtual void load_state(detail::lr::ArchiveReader& reader, bool apply) = 0;

  /// Throws Error when parameter groups were added to the optimizer since construction. Every
  /// step begins here; the first step after construction also warns (once per process, as
  /// Python) when the optimizer has not stepped since the scheduler was made.
  void check_group_count() const {
    detail::lr::check_group_count(*optimizer_, base_lrs_.size(), type_name_);
    if (step_count_ == 1 && optimizer_fingerprint_) {
      if (detail::lr::step_fingerprint(*optimizer_) == *optimizer_fingerprint_) {
        detail::lr::warn_step_before_optimizer(type_name_);
      }
      optimizer_fingerprint_.reset();  // checked once, as Python checks only the first step
    }
  }

  /// Sets the lr (and momentum, when given) of every group and records `last_lr_`.
  void apply(const std::vector<double>& lrs, const std::vector<double>& momentums = {}) {
    detail::lr::set_group_lrs(*optimizer_, lrs);
    detail::lr::set_group_momentums(*optimizer_, momentums);
    last_lr_ = detail::lr::group_lrs(*optimizer_);
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

  torch::optim::Optimizer* optimizer_;  ///< The optimizer whose lrs this scheduler sets (never null).
  std::string type_name_;               ///< The class name, as in Python: `"StepLR"`.
  /// Every group's `initial_lr` (Python keeps it in the parameter group), shared by all the
  /// schedulers of the same optimizer.
  std::shared_ptr<detail::lr::InitialLrs> initial_lrs_;
  std::vector<double> base_lrs_;  ///< The initial lr of every group (Python's `base_lrs`).
  int64_t last_epoch_ = -1;       ///< The index of the last epoch (Python's `last_epoch`).
  int64_t step_count_ = 0;        ///< The steps taken since the initial step (Python's `_step_count`).
  std::vector<double> last_lr_;   ///< The lr of every group after the last step (`get_last_lr()`).
  /// detail::lr::step_fingerprint() when the scheduler was made (unset for composites).
  mutable std::optional<std::vector<std::uint64_t>> optimizer_fingerprint_;

 private:
  template <class Rule>
  friend class RuleScheduler;
  friend class CompositeScheduler;

  /// Attaches to `optimizer`; throws Error when it has no parameter groups or its options
  /// have no learning rate. Changes nothing. Only RuleScheduler and CompositeScheduler derive
  /// from Scheduler directly: each finishes its own construction.
  Scheduler(torch::optim::Optimizer& optimizer, std::string type_name)
      : optimizer_(&optimizer), type_name_(std::move(type_name)) {
    (void)detail::lr::check_optimizer(optimizer, type_name_);
  }

  /// What Python's `_LRScheduler.__init__` ends with: `param_group.setdefault('initial_lr',
  /// param_group['lr'])` for every group (with `initial_lrs`, sets them instead: OneCycleLR),
  /// `base_lrs = [group['initial_lr'] ...]`, then `_initial_step()` (to epoch 0).
  void start(const std::vector<double>* initial_lrs = nullptr) {
    initial_lrs_ = detail::lr::shared_initial_lrs(*optimizer_);
    auto& values = initial_lrs_->values;
    const std::size_t group_count = optimizer_->param_groups().size();
    for (std::size_t index = values.size(); index < group_count; ++index) {
      values.push_back(detail::lr::group_lr(*optimizer_, index));
    }
    if (initial_lrs != nullptr) {
      std::copy(initial_lrs->begin(), initial_lrs->end(), values.begin());
    }
    base_lrs_.assign(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(group_count));
    initial_step();
    optimizer_fingerprint_ = detail::lr::step_fingerprint(*optimizer_);
  }

  /// Python's `_initial_step()`: resets the step count and steps to epoch 0.
  void initial_step() {
    step_count_ = 0;
    step();
  }

  void save_to(detail::lr::ArchiveWriter& writer) const {
    writer.write("type", type_name_);
    writer.write("last_epoch", last_epoch_);
    writer.write("step_count", step_count_);
    writer.write("base_lrs", base_lrs_);
    writer.write("last_lr", last_lr_);
    writer.write("initial_lrs", initial_lrs_ ? initial_lrs_->values : base_lrs_);
    writer.write("optimizer_lrs", detail::lr::group_lrs(*optimizer_));
    save_state(writer);
  }

  void load_from(detail::lr::ArchiveReader& reader, bool apply) {
    const auto type = reader.read<std::string>("type");
    TORCHKIT_CHECK(type == type_name_, "{}: the archive holds the state of a scheduler of type {}, not {}",
                   reader.owner(), type, type_name_);
    const auto last_epoch = reader.read<int64_t>("last_epoch");
    const auto step_count = reader.read<int64_t>("step_count");
    constexpr int64_t epoch_limit = detail::lr::max_count;  // exact as doubles; no run goes beyond
    TORCHKIT_CHECK(last_epoch >= -1 && last_epoch < epoch_limit,
                   "{}: last_epoch in the archive is {}; expected -1 <= last_epoch < 2^53", reader.owner(), last_epoch);
    TORCHKIT_CHECK(step_count >= 0 && step_count < epoch_limit,
                   "{}: step_count in the archive is {}; expected 0 <= step_count < 2^53", reader.owner(), step_count);
    auto base_lrs = reader.read<std::vector<double>>("base_lrs");
    auto last_lr = reader.read<std::vector<double>>("last_lr");
    auto initial_lrs = reader.read<std::vector<double>>("initial_lrs");
    const auto optimizer_lrs = reader.read<std::vector<double>>("optimizer_lrs");
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
        initial_lrs_ = detail::lr::shared_initial_lrs(*optimizer_);
      }
      initial_lrs_->values = std::move(initial_lrs);
      detail::lr::set_group_lrs(*optimizer_, optimizer_lrs);
    }
  }
};

/// A scheduler described by its options and a rule, the base of every scheduler but the
/// composites. `Rule` is a struct of static functions (the rules of the built-in schedulers
/// live in `torchkit::detail::lr`):
///
/// - `name` (the class name) and `Options`, whose `static constexpr auto fields()` lists each
///   field once: name, member, check. From that list RuleScheduler checks the options,
///   prints `arguments()`, and saves and loads them (validate all, then apply).
/// - either the multiplicative shape, `double factor(const Options&, int64_t epoch)` and
///   `double closed_factor(const Options&, int64_t epoch)`, or
///   `double lr(const View&, std::size_t group, double lr)` with, where Python has a closed
///   form, `double closed_form_lr(const View&, std::size_t group)`;
/// - optionally a `State` beside the options, made by `State prepare(const Options&, const
///   Optimizer&, std::string_view owner)` (checks across fields and against the optimizer);
///   `set_up(Optimizer&, const State&)` (changes made before the initial lrs are recorded);
///   `initial_lrs(const State&)` (initial lrs to set rather than record); `check_step(const
///   State&, int64_t epoch, std::string_view owner)` (an epoch the rule refuses);
///   `momentum(const View&, std::size_t group)` (with a State derived from
///   `detail::lr::Cycling`); `save(ArchiveWriter&, const State&)` and `load(ArchiveReader&,
///   State&)` (state beyond the options).
///
/// Why a rule rather than virtual functions of the final class: C++ runs a base's constructor
/// before the derived class exists, so a base cannot take Python's initial step through the
/// derived class's overrides, and every scheduler had to end its constructor with "record the
/// initial lrs, take the initial step". With static rules and the whole state held here,
/// everything the initial step needs exists when RuleScheduler's constructor runs, so it
/// finishes the construction itself: a scheduler's constructor only passes its options on.
template <class Rule>
class RuleScheduler : public Scheduler {
 public:
  using Options = typename Rule::Options;  ///< The options struct: the scheduler's arguments.
  /// What the rule computes from the options and the optimizer at construction (an empty
  /// struct for rules without one).
  using State = typename detail::lr::state_of<Rule>::type;
  /// Everything a rule's `lr()` may read: options, state, epoch, step count, base and initial lrs.
  using View = detail::lr::View<Rule>;

  /// The arguments, as given (after `load()`: as loaded).
  [[nodiscard]] const Options& options() const noexcept { return options_; }

 protected:
  /// Checks `options` (each field, then across fields and against the optimizer), then does
  /// what Python's constructor does: set-up, the initial lrs, the initial step. Throws Error,
  /// changing nothing, for anything the scheduler would not accept.
  RuleScheduler(torch::optim::Optimizer& optimizer, Options options)
      : Scheduler(optimizer, std::string(Rule::name)),
        options_(std::move(options)),
        state_(prepare(options_, optimizer, type_name_)) {
    if constexpr (requires { Rule::set_up(optimizer, state_); }) {
      Rule::set_up(optimizer, state_);
    }
    if constexpr (requires { Rule::initial_lrs(state_); }) {
      start(&Rule::initial_lrs(state_));
    } else {
      start();
    }
  }
  /// The View of the current step, for the rule's `lr()`, `closed_form_lr()` and `momentum()`.
  [[nodiscard]] View view() const {
    return View{options_, state_, last_epoch_, step_count_, base_lrs_, initial_lrs_->values};
  }

  [[nodiscard]] std::vector<double> get_lr() const override {
    if constexpr (checks_steps) {
      Rule::check_step(state_, last_epoch_, type_name_ + "::step");
    }
    auto lrs = detail::lr::group_lrs(*optimizer_);
    if constexpr (detail::lr::FactorRule<Rule>) {
      const double factor = Rule::factor(options_, last_epoch_);
      for (double& lr : lrs) {
        lr = lr * factor;
      }
    } else {
      const View now = view();
      for (std::size_t group = 0; group < lrs.size(); ++group) {
        lrs[group] = Rule::lr(now, group, lrs[group]);
      }
    }
    return lrs;
  }

  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    constexpr bool has_closed_form = requires(const View& at) { Rule::closed_form_lr(at, std::size_t{}); };
    if constexpr (detail::lr::FactorRule<Rule> || has_closed_form) {
      std::vector<double> lrs(base_lrs_.size());
      for (std::size_t group = 0; group < lrs.size(); ++group) {
        if constexpr (detail::lr::FactorRule<Rule>) {
          lrs[group] = base_lrs_[group] * Rule::closed_factor(options_, last_epoch_);
        } else {
          lrs[group] = Rule::closed_form_lr(view(), group);
        }
      }
      return lrs;
    } else {
      return std::nullopt;
    }
  }

 private:
  static constexpr bool checks_steps = requires(const State& state, std::string_view owner) {
    Rule::check_step(state, int64_t{}, owner);
  };

  static State prepare(const Options& options, const torch::optim::Optimizer& optimizer, std::string_view owner) {
    detail::lr::check_fields(options, owner);
    if constexpr (requires { Rule::prepare(options, optimizer, owner); }) {
      return Rule::prepare(options, optimizer, owner);
    } else {
      return State{};
    }
  }

  [[nodiscard]] std::vector<double> get_momentum() const override {
    std::vector<double> momentums;
    if constexpr (std::derived_from<State, detail::lr::Cycling>) {
      if (state_.cycle_momentum) {
        const View now = view();
        for (std::size_t group = 0; group < base_lrs_.size(); ++group) {
          momentums.push_back(Rule::momentum(now, group));
        }
      }
    }
    return momentums;
  }

  void check_next_step() const override {
    if constexpr (checks_steps) {
      Rule::check_step(state_, last_epoch_ + 1, type_name_ + "::step");
    }
  }

  [[nodiscard]] std::string arguments() const override { return detail::lr::format_fields(options_); }

  void save_state(detail::lr::ArchiveWriter& writer) const override {
    detail::lr::save_fields(writer, options_);
    if constexpr (requires { Rule::save(writer, state_); }) {
      Rule::save(writer, state_);
    }
    if constexpr (std::derived_from<State, detail::lr::Cycling>) {
      detail::lr::save_cycling(writer, state_, *optimizer_);
    }
  }

  void load_state(detail::lr::ArchiveReader& reader, bool apply) override {
    Options options = detail::lr::load_fields(reader, options_);
    State state = prepare(options, *optimizer_, reader.owner());
    if constexpr (requires { Rule::load(reader, state); }) {
      Rule::load(reader, state);
    }
    std::vector<double> momentums;
    if constexpr (std::derived_from<State, detail::lr::Cycling>) {
      momentums = detail::lr::load_cycling(reader, state, *optimizer_);
    }
    if (apply) {
      options_ = std::move(options);
      state_ = std::move(state);
      detail::lr::set_group_momentums(*optimizer_, momentums);
    }
  }

 protected:
  Options options_;  ///< The arguments, checked (after `load()`: as loaded).
  State state_;      ///< The rule's State, made from options_ by `Rule::prepare` (or empty).
};

}  // namespace torchkit::lr
// ---- end torchkit/lr/scheduler.hpp ----
// ---- begin torchkit/lr/decay.hpp ----
/// @file lr/decay.hpp
/// The decay family of torchkit::lr: the multiplicative schedulers (StepLR, MultiStepLR,
/// ConstantLR, LinearLR, ExponentialLR, PolynomialLR: a chainable factor and a closed form each),
/// CosineAnnealingLR and CosineAnnealingWarmRestarts.


#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

namespace torchkit::lr {

/// StepLR's arguments (Python's names and defaults; `step_size` is required).
struct StepLROptions {
  /// Period of learning rate decay, in epochs (> 0).
  std::optional<int64_t> step_size{};
  /// Multiplicative factor of learning rate decay (>= 0).
  double gamma = 0.1;

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("step_size", &StepLROptions::step_size, required<int64_t, check_count>),
                      field("gamma", &StepLROptions::gamma, check_finite_non_negative)};
  }
};

/// MultiStepLR's arguments.
struct MultiStepLROptions {
  /// Epochs at which to decay: >= 0 and increasing (a repeated milestone decays twice, as in
  /// Python, whose `Counter` counts it).
  std::vector<int64_t> milestones{};
  /// Multiplicative factor of learning rate decay (>= 0).
  double gamma = 0.1;

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("milestones", &MultiStepLROptions::milestones, check_milestones),
                      field("gamma", &MultiStepLROptions::gamma, check_finite_non_negative)};
  }
};

/// ConstantLR's arguments.
struct ConstantLROptions {
  /// The factor applied until `total_iters`, in (0, 1].
  double factor = 1.0 / 3;
  /// The number of epochs the factor applies (> 0).
  int64_t total_iters = 5;

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("factor", &ConstantLROptions::factor, check_factor),
                      field("total_iters", &ConstantLROptions::total_iters, check_count)};
  }
};

/// LinearLR's arguments.
struct LinearLROptions {
  /// The factor at epoch 0, in (0, 1].
  double start_factor = 1.0 / 3;
  /// The factor from epoch `total_iters` on, in [0, 1].
  double end_factor = 1.0;
  /// The number of epochs over which the factor changes linearly (> 0).
  int64_t total_iters = 5;

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("start_factor", &LinearLROptions::start_factor, check_factor),
                      field("end_factor", &LinearLROptions::end_factor, check_factor),
                      field("total_iters", &LinearLROptions::total_iters, check_count)};
  }
};

/// ExponentialLR's arguments (`gamma` is required).
struct ExponentialLROptions {
  /// Multiplicative factor of learning rate decay, applied every epoch (>= 0).
  std::optional<double> gamma{};

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("gamma", &ExponentialLROptions::gamma, required<double, check_finite_non_negative>)};
  }
};

/// PolynomialLR's arguments.
struct PolynomialLROptions {
  /// The number of epochs over which the lr decays to 0 (> 0).
  int64_t total_iters = 5;
  /// The power of the polynomial (>= 0).
  double power = 1.0;

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("total_iters", &PolynomialLROptions::total_iters, check_count),
                      field("power", &PolynomialLROptions::power, check_finite_non_negative)};
  }
};

/// CosineAnnealingLR's arguments (`T_max` is required; the names are Python's).
struct CosineAnnealingLROptions {
  /// Maximum number of iterations: the half period of the cosine (> 0).
  std::optional<int64_t> T_max{};  // NOLINT(readability-identifier-naming): Python's name
  /// Minimum learning rate (>= 0).
  double eta_min = 0.0;

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("T_max", &CosineAnnealingLROptions::T_max, required<int64_t, check_count>),
                      field("eta_min", &CosineAnnealingLROptions::eta_min, check_finite_non_negative)};
  }
};

/// CosineAnnealingWarmRestarts's arguments (`T_0` is required; the names are Python's).
struct CosineAnnealingWarmRestartsOptions {
  /// Number of iterations until the first restart (> 0).
  std::optional<int64_t> T_0{};  // NOLINT(readability-identifier-naming): Python's name
  /// The factor by which the period grows after each restart (>= 1).
  int64_t T_mult = 1;  // NOLINT(readability-identifier-naming): Python's name
  /// Minimum learning rate (>= 0).
  double eta_min = 0.0;

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("T_0", &CosineAnnealingWarmRestartsOptions::T_0, required<int64_t, check_count>),
                      field("T_mult", &CosineAnnealingWarmRestartsOptions::T_mult,
                            [](std::string_view owner, std::string_view, int64_t T_mult) {  // NOLINT
                              TORCHKIT_CHECK(T_mult >= 1, "{}: Expected integer T_mult >= 1, but got {}", owner,
                                             T_mult);
                            }),
                      field("eta_min", &CosineAnnealingWarmRestartsOptions::eta_min, check_finite_non_negative)};
  }
};

}  // namespace torchkit::lr

namespace torchkit::detail::lr {

struct StepLRRule {
  static constexpr std::string_view name = "StepLR";
  using Options = torchkit::lr::StepLROptions;
  static double factor(const Options& options, int64_t epoch) {
    return epoch == 0 || python_mod(epoch, *options.step_size) != 0 ? 1.0 : options.gamma;
  }
  static double closed_factor(const Options& options, int64_t epoch) {
    return std::pow(options.gamma, static_cast<double>(python_floor_div(epoch, *options.step_size)));
  }
};

struct MultiStepLRRule {
  static constexpr std::string_view name = "MultiStepLR";
  using Options = torchkit::lr::MultiStepLROptions;
  static double factor(const Options& options, int64_t epoch) {
    const auto count = std::count(options.milestones.begin(), options.milestones.end(), epoch);
    return count == 0 ? 1.0 : std::pow(options.gamma, static_cast<double>(count));
  }
  static double closed_factor(const Options& options, int64_t epoch) {
    return std::pow(options.gamma, static_cast<double>(bisect_right(options.milestones, epoch)));
  }
};

struct ConstantLRRule {
  static constexpr std::string_view name = "ConstantLR";
  using Options = torchkit::lr::ConstantLROptions;
  static double factor(const Options& options, int64_t epoch) {
    if (epoch == 0) {
      return options.factor;
    }
    return epoch == options.total_iters ? 1.0 / options.factor : 1.0;
  }
  static double closed_factor(const Options& options, int64_t epoch) {
    const double reached = epoch >= options.total_iters ? 1.0 : 0.0;
    return options.factor + reached * (1 - options.factor);
  }
};

struct LinearLRRule {
  static constexpr std::string_view name = "LinearLR";
  using Options = torchkit::lr::LinearLROptions;
  static double factor(const Options& options, int64_t epoch) {
    const auto& [start_factor, end_factor, total_iters] = options;
    if (epoch == 0) {
      return start_factor;
    }
    if (epoch > total_iters) {
      return 1.0;
    }
    return 1. + (end_factor - start_factor) / (static_cast<double>(total_iters) * start_factor +
                                               static_cast<double>(epoch - 1) * (end_factor - start_factor));
  }
  static double closed_factor(const Options& options, int64_t epoch) {
    const auto& [start_factor, end_factor, total_iters] = options;
    const auto reached = static_cast<double>(std::min(total_iters, epoch));
    return start_factor + (end_factor - start_factor) * reached / static_cast<double>(total_iters);
  }
};

struct ExponentialLRRule {
  static constexpr std::string_view name = "ExponentialLR";
  using Options = torchkit::lr::ExponentialLROptions;
  static double factor(const Options& options, int64_t epoch) { return epoch == 0 ? 1.0 : *options.gamma; }
  static double closed_factor(const Options& options, int64_t epoch) {
    return std::pow(*options.gamma, static_cast<double>(epoch));
  }
};

struct PolynomialLRRule {
  static constexpr std::string_view name = "PolynomialLR";
  using Options = torchkit::lr::PolynomialLROptions;
  static double factor(const Options& options, int64_t epoch) {
    if (epoch == 0 || epoch > options.total_iters) {
      return 1.0;
    }
    const auto total_iters = static_cast<double>(options.total_iters);
    return std::pow((1.0 - static_cast<double>(epoch) / total_iters) /
                        (1.0 - static_cast<double>(epoch - 1) / total_iters),
                    options.power);
  }
  static double closed_factor(const Options& options, int64_t epoch) {
    const auto reached = static_cast<double>(std::min(options.total_iters, epoch));
    return std::pow(1.0 - reached / static_cast<double>(options.total_iters), options.power);
  }
};

struct CosineAnnealingLRRule {
  static constexpr std::string_view name = "CosineAnnealingLR";
  using Options = torchkit::lr::CosineAnnealingLROptions;
  static double lr(const View<CosineAnnealingLRRule>& at, std::size_t group, double lr) {
    constexpr double pi = std::numbers::pi;
    const double eta_min = at.options.eta_min;
    const int64_t T_max = *at.options.T_max;  // NOLINT(readability-identifier-naming)
    const auto t_max = static_cast<double>(T_max);
    const auto epoch = static_cast<double>(at.last_epoch);
    const double base_lr = at.base_lrs[group];
    if (at.last_epoch == 0) {
      return lr;
    }
    if (at.step_count == 1 && at.last_epoch > 0) {
      return eta_min + (base_lr - eta_min) * (1 + std::cos(epoch * pi / t_max)) / 2;
    }
    if (python_mod(at.last_epoch - 1 - T_max, 2 * T_max) == 0) {
      return lr + (base_lr - eta_min) * (1 - std::cos(pi / t_max)) / 2;
    }
    return (1 + std::cos(pi * epoch / t_max)) / (1 + std::cos(pi * (epoch - 1) / t_max)) * (lr - eta_min) + eta_min;
  }
  static double closed_form_lr(const View<CosineAnnealingLRRule>& at, std::size_t group) {
    const double eta_min = at.options.eta_min;
    return eta_min + (at.base_lrs[group] - eta_min) *
                         (1 + std::cos(std::numbers::pi * static_cast<double>(at.last_epoch) /
                                       static_cast<double>(*at.options.T_max))) /
                         2;
  }
};

struct CosineAnnealingWarmRestartsRule {
  static constexpr std::string_view name = "CosineAnnealingWarmRestarts";
  using Options = torchkit::lr::CosineAnnealingWarmRestartsOptions;
  struct State {
    double T_cur = 0;  // NOLINT(readability-identifier-naming): Python's names
    int64_t T_i = 1;   // NOLINT(readability-identifier-naming)
  };
  // Python's initial step goes to epoch 0 of the first period.
  static State prepare(const Options& options, const torch::optim::Optimizer& /*optimizer*/,
                       std::string_view /*owner*/) {
    return State{.T_cur = 0, .T_i = *options.T_0};
  }
  static double lr_at(const Options& options, const State& state, double base_lr) {
    const double eta_min = options.eta_min;
    return eta_min +
           (base_lr - eta_min) * (1 + std::cos(std::numbers::pi * state.T_cur / static_cast<double>(state.T_i))) / 2;
  }
  static double lr(const View<CosineAnnealingWarmRestartsRule>& at, std::size_t group, double /*lr*/) {
    return lr_at(at.options, at.state, at.base_lrs[group]);
  }
  static void save(ArchiveWriter& writer, const State& state) {
    writer.write("T_cur", state.T_cur);
    writer.write("T_i", state.T_i);
  }
  static void load(ArchiveReader& reader, State& state) {
    state.T_cur = reader.read<double>("T_cur");
    state.T_i = reader.read<int64_t>("T_i");
    TORCHKIT_CHECK(state.T_i > 0, "{}: T_i in the archive must be positive, got {}", reader.owner(), state.T_i);
    TORCHKIT_CHECK(std::isfinite(state.T_cur) && state.T_cur >= -1,
                   "{}: T_cur in the archive must be finite and >= -1, got {}", reader.owner(), state.T_cur);
  }
};

}  // namespace torchkit::detail::lr

namespace torchkit::lr {

/// Decays each group's lr by `gamma` every `step_size` epochs
/// (`torch.optim.lr_scheduler.StepLR`). Throws Error for `step_size <= 0` or `gamma < 0`.
///
///     torchkit::lr::StepLR scheduler(optimizer, 30, 0.1);  // 0.05 → 0.005 at epoch 30 → ...
class StepLR final : public RuleScheduler<detail::lr::StepLRRule> {
 public:
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  StepLR(torch::optim::Optimizer& optimizer, int64_t step_size, double gamma = 0.1)
      : StepLR(optimizer, StepLROptions{.step_size = step_size, .gamma = gamma}) {}
  /// Schedules `optimizer`'s lrs, the arguments as StepLROptions (designated initialisers).
  StepLR(torch::optim::Optimizer& optimizer, const StepLROptions& options) : RuleScheduler(optimizer, options) {}
};

/// Decays each group's lr by `gamma` at each milestone epoch
/// (`torch.optim.lr_scheduler.MultiStepLR`). Throws Error for negative or unsorted milestones
/// or `gamma < 0`.
///
///     torchkit::lr::MultiStepLR scheduler(optimizer, {30, 80}, 0.1);
class MultiStepLR final : public RuleScheduler<detail::lr::MultiStepLRRule> {
 public:
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  MultiStepLR(torch::optim::Optimizer& optimizer, std::vector<int64_t> milestones, double gamma = 0.1)
      : MultiStepLR(optimizer, MultiStepLROptions{.milestones = std::move(milestones), .gamma = gamma}) {}
  /// Schedules `optimizer`'s lrs, the arguments as MultiStepLROptions (designated initialisers).
  MultiStepLR(torch::optim::Optimizer& optimizer, MultiStepLROptions options)
      : RuleScheduler(optimizer, std::move(options)) {}
};

/// Multiplies each group's lr by `factor` until epoch `total_iters`
/// (`torch.optim.lr_scheduler.ConstantLR`). Throws Error for a factor outside (0, 1] (Python
/// accepts 0 but then divides by it) or `total_iters <= 0`.
///
///     torchkit::lr::ConstantLR scheduler(optimizer, {.factor = 0.5, .total_iters = 4});
class ConstantLR final : public RuleScheduler<detail::lr::ConstantLRRule> {
 public:
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  explicit ConstantLR(torch::optim::Optimizer& optimizer, double factor = 1.0 / 3, int64_t total_iters = 5)
      : ConstantLR(optimizer, ConstantLROptions{.factor = factor, .total_iters = total_iters}) {}
  /// Schedules `optimizer`'s lrs, the arguments as ConstantLROptions (designated initialisers).
  ConstantLR(torch::optim::Optimizer& optimizer, const ConstantLROptions& options)
      : RuleScheduler(optimizer, options) {}
};

/// Changes each group's lr linearly from `start_factor` to `end_factor` times its initial lr
/// over `total_iters` epochs (`torch.optim.lr_scheduler.LinearLR`), the usual warm-up.
/// Throws Error for factors outside their range (a start factor of 0 would divide by zero) or
/// `total_iters <= 0`.
///
///     torchkit::lr::LinearLR warmup(optimizer, {.start_factor = 0.1, .total_iters = 5});
class LinearLR final : public RuleScheduler<detail::lr::LinearLRRule> {
 public:
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  explicit LinearLR(torch::optim::Optimizer& optimizer, double start_factor = 1.0 / 3, double end_factor = 1.0,
                    int64_t total_iters = 5)
      : LinearLR(optimizer, LinearLROptions{.start_factor = start_factor, .end_factor = end_factor,
                                            .total_iters = total_iters}) {}
  /// Schedules `optimizer`'s lrs, the arguments as LinearLROptions (designated initialisers).
  LinearLR(torch::optim::Optimizer& optimizer, const LinearLROptions& options) : RuleScheduler(optimizer, options) {}
};

/// Multiplies each group's lr by `gamma` every epoch (`torch.optim.lr_scheduler.ExponentialLR`).
///
///     torchkit::lr::ExponentialLR scheduler(optimizer, 0.95);
class ExponentialLR final : public RuleScheduler<detail::lr::ExponentialLRRule> {
 public:
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  ExponentialLR(torch::optim::Optimizer& optimizer, double gamma)
      : ExponentialLR(optimizer, ExponentialLROptions{.gamma = gamma}) {}
  /// Schedules `optimizer`'s lrs, the arguments as ExponentialLROptions (designated initialisers).
  ExponentialLR(torch::optim::Optimizer& optimizer, const ExponentialLROptions& options)
      : RuleScheduler(optimizer, options) {}
};

/// Decays each group's lr as `(1 - epoch / total_iters) ** power` times its initial lr
/// (`torch.optim.lr_scheduler.PolynomialLR`).
///
///     torchkit::lr::PolynomialLR scheduler(optimizer, {.total_iters = 4, .power = 1.0});
class PolynomialLR final : public RuleScheduler<detail::lr::PolynomialLRRule> {
 public:
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  explicit PolynomialLR(torch::optim::Optimizer& optimizer, int64_t total_iters = 5, double power = 1.0)
      : PolynomialLR(optimizer, PolynomialLROptions{.total_iters = total_iters, .power = power}) {}
  /// Schedules `optimizer`'s lrs, the arguments as PolynomialLROptions (designated initialisers).
  PolynomialLR(torch::optim::Optimizer& optimizer, const PolynomialLROptions& options)
      : RuleScheduler(optimizer, options) {}
};

/// Anneals each group's lr from its initial lr to `eta_min` along a cosine over `T_max` epochs
/// (and back up over the next `T_max`) with Python's recursive formula
/// (`torch.optim.lr_scheduler.CosineAnnealingLR`).
///
///     torchkit::lr::CosineAnnealingLR scheduler(optimizer, {.T_max = 100, .eta_min = 1e-5});
class CosineAnnealingLR final : public RuleScheduler<detail::lr::CosineAnnealingLRRule> {
 public:
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  CosineAnnealingLR(torch::optim::Optimizer& optimizer, int64_t T_max, double eta_min = 0.0)  // NOLINT
      : CosineAnnealingLR(optimizer, CosineAnnealingLROptions{.T_max = T_max, .eta_min = eta_min}) {}
  /// Schedules `optimizer`'s lrs, the arguments as CosineAnnealingLROptions (designated initialisers).
  CosineAnnealingLR(torch::optim::Optimizer& optimizer, const CosineAnnealingLROptions& options)
      : RuleScheduler(optimizer, options) {}
};

/// SGDR: cosine annealing from each group's initial lr to `eta_min`, restarting every `T_i`
/// epochs, `T_i` growing by `T_mult` after each restart
/// (`torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`). Besides `step()`, `step(epoch)`
/// accepts a fractional epoch, as in Python (`scheduler.step(epoch + i / iters)`).
///
///     torchkit::lr::CosineAnnealingWarmRestarts scheduler(optimizer, {.T_0 = 10, .T_mult = 2});
class CosineAnnealingWarmRestarts final : public RuleScheduler<detail::lr::CosineAnnealingWarmRestartsRule> {
 public:
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  CosineAnnealingWarmRestarts(torch::optim::Optimizer& optimizer, int64_t T_0, int64_t T_mult = 1,  // NOLINT
                              double eta_min = 0.0)
      : CosineAnnealingWarmRestarts(
            optimizer, CosineAnnealingWarmRestartsOptions{.T_0 = T_0, .T_mult = T_mult, .eta_min = eta_min}) {}
  /// Schedules `optimizer`'s lrs, the arguments as CosineAnnealingWarmRestartsOptions (designated initialisers).
  CosineAnnealingWarmRestarts(torch::optim::Optimizer& optimizer, const CosineAnnealingWarmRestartsOptions& options)
      : RuleScheduler(optimizer, options) {}

  /// One epoch (or batch) further; at the end of a period, restarts.
  void step() override {
    check_group_count();
    if (last_epoch_ < 0) {  // Python: `if epoch is None and self.last_epoch < 0: epoch = 0`
      step(0.0);
      return;
    }
    State next{.T_cur = state_.T_cur + 1, .T_i = state_.T_i};
    if (next.T_cur >= static_cast<double>(next.T_i)) {
      next.T_cur = next.T_cur - static_cast<double>(next.T_i);
      // Python's integers never overflow; int64 does after about 63 restarts with T_mult = 2.
      TORCHKIT_CHECK(!__builtin_mul_overflow(state_.T_i, options_.T_mult, &next.T_i),
                     "CosineAnnealingWarmRestarts::step: the next period T_i * T_mult = {} * {} does not fit in int64",
                     state_.T_i, options_.T_mult);
    }
    commit(last_epoch_ + 1, next);
  }

  /// Jumps to `epoch` (fractional epochs allowed), as Python's `scheduler.step(epoch)`.
  /// Throws Error for a negative or non-finite epoch: `Expected non-negative epoch, but got -1`.
  void step(double epoch) {
    check_group_count();
    TORCHKIT_CHECK(std::isfinite(epoch) && epoch >= 0,
                   "CosineAnnealingWarmRestarts::step: Expected non-negative epoch, but got {}", epoch);
    TORCHKIT_CHECK(epoch < static_cast<double>(detail::lr::max_count),
                   "CosineAnnealingWarmRestarts::step: epoch {} is beyond 2^53, the largest epoch a scheduler accepts",
                   epoch);
    const int64_t T_0 = *options_.T_0;       // NOLINT(readability-identifier-naming)
    const int64_t T_mult = options_.T_mult;  // NOLINT(readability-identifier-naming)
    State next{.T_cur = epoch, .T_i = T_0};
    if (epoch >= static_cast<double>(T_0)) {
      next.T_i = state_.T_i;
      if (T_mult == 1) {
        next.T_cur = std::fmod(epoch, static_cast<double>(T_0));
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
                   __builtin_mul_overflow(T_0, power, &next.T_i);
        TORCHKIT_CHECK(!overflow,
                       "CosineAnnealingWarmRestarts::step: the period at epoch {} (T_0={}, T_mult={}) does not fit "
                       "in int64",
                       epoch, T_0, T_mult);
        next.T_cur = epoch - static_cast<double>(restarted) / static_cast<double>(T_mult - 1);
      }
    }
    commit(static_cast<int64_t>(std::floor(epoch)), next);
  }

  /// Epochs since the last restart (Python's `T_cur`).
  [[nodiscard]] double T_cur() const noexcept { return state_.T_cur; }  // NOLINT(readability-identifier-naming)
  /// The current period (Python's `T_i`).
  [[nodiscard]] int64_t T_i() const noexcept { return state_.T_i; }  // NOLINT(readability-identifier-naming)

 private:
  using Rule = detail::lr::CosineAnnealingWarmRestartsRule;

  // Moves to `last_epoch` and the period position `next`, and sets the lrs there.
  void commit(int64_t last_epoch, const State& next) {
    std::vector<double> lrs;
    for (const double base_lr : base_lrs_) {
      lrs.push_back(Rule::lr_at(options_, next, base_lr));
    }
    last_epoch_ = last_epoch;
    state_ = next;
    apply(lrs);
  }
  void step_to(int64_t epoch) override { step(static_cast<double>(epoch)); }
};

}  // namespace torchkit::lr
// ---- end torchkit/lr/decay.hpp ----
// ---- begin torchkit/lr/lambda.hpp ----
/// @file lr/lambda.hpp
/// The lambda family of torchkit::lr: LambdaLR and MultiplicativeLR, driven by user functions.


#include <torch/optim/optimizer.h>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace torchkit::lr {

/// The argument of LambdaLR and MultiplicativeLR: one function per parameter group (one given
/// for all is copied to every group). Lambdas are not saved; load() checks their number.
struct LrLambdas {
  std::vector<LrLambda> lr_lambdas{};  ///< One function per parameter group, none empty.

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() { return std::tuple{detail::lr::field("lr_lambdas", &LrLambdas::lr_lambdas)}; }
};

}  // namespace torchkit::lr

namespace torchkit::detail::lr {

/// One function per group: `lambdas` itself (Python's list form, its count checked) or, with
/// `one_for_all`, its single function copied to every group.
[[nodiscard]] inline torchkit::lr::LrLambdas lambdas_for_groups(std::vector<torchkit::lr::LrLambda> lambdas,
                                                                bool one_for_all,
                                                                const torch::optim::Optimizer& optimizer,
                                                                std::string_view owner) {
  const std::size_t group_count = optimizer.param_groups().size();
  if (one_for_all) {
    TORCHKIT_CHECK(lambdas.size() == 1 && lambdas.front(), "{}: lr_lambda is empty", owner);
    return {std::vector<torchkit::lr::LrLambda>(group_count, lambdas.front())};
  }
  TORCHKIT_CHECK(lambdas.size() == group_count, "{}: Expected {} lr_lambdas, but got {}", owner, group_count,
                 lambdas.size());
  for (std::size_t index = 0; index < lambdas.size(); ++index) {
    TORCHKIT_CHECK(static_cast<bool>(lambdas[index]), "{}: lr_lambda[{}] is empty", owner, index);
  }
  return {std::move(lambdas)};
}

struct LambdaLRRule {
  static constexpr std::string_view name = "LambdaLR";
  using Options = torchkit::lr::LrLambdas;
  static double lr(const View<LambdaLRRule>& at, std::size_t group, double /*lr*/) {
    return at.base_lrs[group] * at.options.lr_lambdas[group](at.last_epoch);
  }
};

struct MultiplicativeLRRule {
  static constexpr std::string_view name = "MultiplicativeLR";
  using Options = torchkit::lr::LrLambdas;
  static double lr(const View<MultiplicativeLRRule>& at, std::size_t group, double lr) {
    return at.last_epoch > 0 ? lr * at.options.lr_lambdas[group](at.last_epoch) : lr;
  }
};

}  // namespace torchkit::detail::lr

namespace torchkit::lr {

/// What LambdaLR and MultiplicativeLR share: their constructors, one function for every
/// group or one per group (Python's `lr_lambda`, a function or a list). Throws Error for an
/// empty function or a list whose length is not the number of parameter groups.
template <class Rule>
class LambdaScheduler : public RuleScheduler<Rule> {
 public:
  /// Schedules `optimizer`'s lrs with `lr_lambda` for every parameter group.
  LambdaScheduler(torch::optim::Optimizer& optimizer, LrLambda lr_lambda)
      : RuleScheduler<Rule>(optimizer,
                            detail::lr::lambdas_for_groups({std::move(lr_lambda)}, true, optimizer, Rule::name)) {}
  /// Schedules `optimizer`'s lrs with one function per parameter group, in order.
  LambdaScheduler(torch::optim::Optimizer& optimizer, std::vector<LrLambda> lr_lambdas)
      : RuleScheduler<Rule>(optimizer,
                            detail::lr::lambdas_for_groups(std::move(lr_lambdas), false, optimizer, Rule::name)) {}
};

/// Sets each group's lr to its initial lr times `lr_lambda(epoch)`
/// (`torch.optim.lr_scheduler.LambdaLR`): one function for every group, or one per group.
///
///     torchkit::lr::LambdaLR scheduler(optimizer, [](int64_t epoch) { return std::pow(0.95, epoch); });
///     torchkit::lr::LambdaLR per_group(optimizer, {[](int64_t epoch) { return epoch / 30; },
///                                                  [](int64_t epoch) { return std::pow(0.95, epoch); }});
class LambdaLR final : public LambdaScheduler<detail::lr::LambdaLRRule> {
 public:
  using LambdaScheduler::LambdaScheduler;
};

/// Multiplies each group's lr by `lr_lambda(epoch)` every epoch from epoch 1 on
/// (`torch.optim.lr_scheduler.MultiplicativeLR`).
///
///     torchkit::lr::MultiplicativeLR scheduler(optimizer, [](int64_t) { return 0.95; });
class MultiplicativeLR final : public LambdaScheduler<detail::lr::MultiplicativeLRRule> {
 public:
  using LambdaScheduler::LambdaScheduler;
};

}  // namespace torchkit::lr
// ---- end torchkit/lr/lambda.hpp ----
// ---- begin torchkit/lr/cyclic.hpp ----
/// @file lr/cyclic.hpp
/// The cycling schedulers of torchkit::lr, stepped once per batch: OneCycleLR and CyclicLR, which
/// share the momentum set-up (detail::lr::Cycling).


#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <numbers>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace torchkit::lr {

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
  /// The number of steps (batches) per epoch, used with `epochs`.
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

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    using O = OneCycleLROptions;
    return std::tuple{
        field("max_lr", &O::max_lr, check_group_values),
        field("total_steps", &O::total_steps, if_given<int64_t, check_count>),
        field("epochs", &O::epochs, if_given<int64_t, check_count>),
        field("steps_per_epoch", &O::steps_per_epoch, if_given<int64_t, check_count>),
        field("pct_start", &O::pct_start,
              [](std::string_view owner, std::string_view, double pct_start) {
                TORCHKIT_CHECK(pct_start >= 0 && pct_start <= 1,
                               "{}: Expected float between 0 and 1 pct_start, but got {}", owner, pct_start);
              }),
        field("anneal_strategy", &O::anneal_strategy,
              [](std::string_view owner, std::string_view, const std::string& strategy) {
                TORCHKIT_CHECK(strategy == "cos" || strategy == "linear",
                               "{}: anneal_strategy must by one of 'cos' or 'linear', instead got {}", owner, strategy);
              }),
        field("cycle_momentum", &O::cycle_momentum),
        field("base_momentum", &O::base_momentum, check_group_values),
        field("max_momentum", &O::max_momentum, check_group_values),
        field("div_factor", &O::div_factor, check_positive),
        field("final_div_factor", &O::final_div_factor, check_positive),
        field("three_phase", &O::three_phase)};
  }
};

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

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    using O = CyclicLROptions;
    return std::tuple{field("base_lr", &O::base_lr, check_group_values),
                      field("max_lr", &O::max_lr, check_group_values),
                      field("step_size_up", &O::step_size_up, check_count),
                      field("step_size_down", &O::step_size_down, if_given<int64_t, check_count>),
                      field("mode", &O::mode),  // checked with scale_fn: ignored when there is one
                      field("gamma", &O::gamma, check_finite_non_negative),
                      field("scale_fn", &O::scale_fn),
                      field("scale_mode", &O::scale_mode),
                      field("cycle_momentum", &O::cycle_momentum),
                      field("base_momentum", &O::base_momentum, check_group_values),
                      field("max_momentum", &O::max_momentum, check_group_values)};
  }
};

}  // namespace torchkit::lr

namespace torchkit::detail::lr {

struct OneCycleLRRule {
  static constexpr std::string_view name = "OneCycleLR";
  using Options = torchkit::lr::OneCycleLROptions;
  /// One phase of the cycle: where it ends, and which per-group values it anneals between
  /// (lrs: 0 initial, 1 max, 2 min; momentums: 0 max, 1 base).
  struct Phase {
    double end_step;
    int start_lr;
    int end_lr;
    int start_momentum;
    int end_momentum;
  };
  struct State : Cycling {
    int64_t total_steps = 0;
    std::vector<double> initial_lrs, max_lrs, min_lrs;
    std::vector<Phase> phases;
  };

  static State prepare(const Options& options, const torch::optim::Optimizer& optimizer, std::string_view owner) {
    State state;
    if (options.total_steps) {
      state.total_steps = *options.total_steps;
    } else {
      TORCHKIT_CHECK(options.epochs || options.steps_per_epoch,
                     "{}: You must define either total_steps OR (epochs AND steps_per_epoch)", owner);
      TORCHKIT_CHECK(options.epochs.has_value(), "{}: Expected positive integer epochs, but got None", owner);
      TORCHKIT_CHECK(options.steps_per_epoch.has_value(), "{}: Expected positive integer steps_per_epoch, but got None",
                     owner);
      TORCHKIT_CHECK(!__builtin_mul_overflow(*options.epochs, *options.steps_per_epoch, &state.total_steps),
                     "{}: epochs * steps_per_epoch = {} * {} overflows", owner, *options.epochs,
                     *options.steps_per_epoch);
    }
    const auto total = static_cast<double>(state.total_steps);
    const double pct = options.pct_start;
    state.phases = options.three_phase ? std::vector<Phase>{{pct * total - 1, 0, 1, 0, 1},
                                                            {2 * pct * total - 2, 1, 0, 1, 0},
                                                            {total - 1, 0, 2, 0, 0}}
                                       : std::vector<Phase>{{pct * total - 1, 0, 1, 0, 1}, {total - 1, 1, 2, 1, 0}};
    const std::size_t group_count = optimizer.param_groups().size();
    state.max_lrs = options.max_lr.for_groups(group_count, "max_lr", owner);
    for (const double max_lr : state.max_lrs) {
      state.initial_lrs.push_back(max_lr / options.div_factor);
      state.min_lrs.push_back(state.initial_lrs.back() / options.final_div_factor);
    }
    static_cast<Cycling&>(state) =
        cycling(optimizer, options.cycle_momentum, options.base_momentum, options.max_momentum, owner);
    check_step(state, 0, owner);  // Python fails in its initial step for some arguments: fail before any change
    return state;
  }
  static void set_up(torch::optim::Optimizer& optimizer, const State& state) {
    set_group_momentums(optimizer, state.max_momentums);
  }
  static const std::vector<double>& initial_lrs(const State& state) { return state.initial_lrs; }

  // The phase of step `step_num`, and the fraction of it that is done. Throws where Python
  // divides by zero (a phase with no steps: pct_start 1 in two phases, e.g.).
  static std::pair<const Phase*, double> phase_at(const State& state, int64_t step_num, std::string_view owner) {
    double start_step = 0;
    const auto step = static_cast<double>(step_num);
    for (std::size_t index = 0; index < state.phases.size(); ++index) {
      const Phase& phase = state.phases[index];
      if (step <= phase.end_step || index + 1 == state.phases.size()) {
        TORCHKIT_CHECK(phase.end_step != start_step,
                       "{}: float division by zero at step {}: phase {} of the cycle has no steps (total_steps={})",
                       owner, step_num, index, state.total_steps);
        return {&phase, (step - start_step) / (phase.end_step - start_step)};
      }
      start_step = phase.end_step;
    }
    return {nullptr, 0.0};  // unreachable: the last phase always matches
  }
  // Python's check in get_lr(), and its division by zero, for step `step_num`.
  static void check_step(const State& state, int64_t step_num, std::string_view owner) {
    TORCHKIT_CHECK(step_num <= state.total_steps,
                   "{}: Tried to step {} times. The specified number of total steps is {}", owner, step_num + 1,
                   state.total_steps);
    (void)phase_at(state, step_num, owner);
  }
  static double anneal(const Options& options, double start, double end, double pct) {
    if (options.anneal_strategy == "cos") {
      const double cos_out = std::cos(std::numbers::pi * pct) + 1;
      return end + (start - end) / 2.0 * cos_out;
    }
    return (end - start) * pct + start;
  }
  static double lr(const View<OneCycleLRRule>& at, std::size_t group, double /*lr*/) {
    const auto [phase, pct] = phase_at(at.state, at.last_epoch, name);
    const double values[] = {at.initial_lrs[group], at.state.max_lrs[group], at.state.min_lrs[group]};
    return anneal(at.options, values[phase->start_lr], values[phase->end_lr], pct);
  }
  static double momentum(const View<OneCycleLRRule>& at, std::size_t group) {
    const auto [phase, pct] = phase_at(at.state, at.last_epoch, name);
    const double values[] = {at.state.max_momentums[group], at.state.base_momentums[group]};
    return anneal(at.options, values[phase->start_momentum], values[phase->end_momentum], pct);
  }
};

struct CyclicLRRule {
  static constexpr std::string_view name = "CyclicLR";
  using Options = torchkit::lr::CyclicLROptions;
  enum class Scale { triangular, triangular2, exp_range, custom };
  struct State : Cycling {
    std::vector<double> base_lrs, max_lrs;
    double total_size = 0;
    double step_ratio = 0;
    Scale scale = Scale::triangular;
    bool scale_by_cycle = true;
  };

  static State prepare(const Options& options, const torch::optim::Optimizer& optimizer, std::string_view owner) {
    const std::size_t group_count = optimizer.param_groups().size();
    State state;
    state.base_lrs = options.base_lr.for_groups(group_count, "base_lr", owner);
    state.max_lrs = options.max_lr.for_groups(group_count, "max_lr", owner);
    const auto up = static_cast<double>(options.step_size_up);
    state.total_size = up + static_cast<double>(options.step_size_down.value_or(options.step_size_up));
    state.step_ratio = up / state.total_size;
    if (options.scale_fn) {
      TORCHKIT_CHECK(options.scale_mode == "cycle" || options.scale_mode == "iterations",
                     "{}: scale_mode must be 'cycle' or 'iterations', got '{}'", owner, options.scale_mode);
      state.scale = Scale::custom;
      state.scale_by_cycle = options.scale_mode == "cycle";
    } else {
      TORCHKIT_CHECK(options.mode == "triangular" || options.mode == "triangular2" || options.mode == "exp_range",
                     "{}: mode is invalid and scale_fn is None: got mode '{}', expected 'triangular', "
                     "'triangular2' or 'exp_range'",
                     owner, options.mode);
      state.scale = options.mode == "triangular"    ? Scale::triangular
                    : options.mode == "triangular2" ? Scale::triangular2
                                                    : Scale::exp_range;
      state.scale_by_cycle = state.scale != Scale::exp_range;
    }
    static_cast<Cycling&>(state) =
        cycling(optimizer, options.cycle_momentum, options.base_momentum, options.max_momentum, owner);
    return state;
  }
  static void set_up(torch::optim::Optimizer& optimizer, const State& state) {
    set_group_lrs(optimizer, state.base_lrs);
    set_group_momentums(optimizer, state.base_momentums);
  }

  static double scale(const Options& options, Scale scale, double x) {
    switch (scale) {
      case Scale::triangular:
        return 1.;
      case Scale::triangular2:
        return 1 / std::pow(2., x - 1);
      case Scale::exp_range:
        return std::pow(options.gamma, x);
      case Scale::custom:
        break;
    }
    return options.scale_fn(x);
  }
  // Python's position in the cycle, and the amplitude scale of the current iteration.
  static std::pair<double, double> position(const View<CyclicLRRule>& at) {
    const auto epoch = static_cast<double>(at.last_epoch);
    const double cycle = std::floor(1 + epoch / at.state.total_size);
    const double x = 1. + epoch / at.state.total_size - cycle;
    const double ratio = at.state.step_ratio;
    const double scale_factor = x <= ratio ? x / ratio : (x - 1) / (ratio - 1);
    return {scale_factor, scale(at.options, at.state.scale, at.state.scale_by_cycle ? cycle : epoch)};
  }
  static double lr(const View<CyclicLRRule>& at, std::size_t group, double /*lr*/) {
    const auto [scale_factor, amplitude_scale] = position(at);
    const double base_height = (at.state.max_lrs[group] - at.base_lrs[group]) * scale_factor;
    return at.base_lrs[group] + base_height * amplitude_scale;
  }
  static double momentum(const View<CyclicLRRule>& at, std::size_t group) {
    const auto [scale_factor, amplitude_scale] = position(at);
    const double base_height = (at.state.max_momentums[group] - at.state.base_momentums[group]) * scale_factor;
    return at.state.max_momentums[group] - base_height * amplitude_scale;
  }
};

}  // namespace torchkit::detail::lr

namespace torchkit::lr {

/// The 1cycle policy: the lr rises from `max_lr / div_factor` to `max_lr` and anneals down to
/// `initial_lr / final_div_factor`, the momentum cycling the other way
/// (`torch.optim.lr_scheduler.OneCycleLR`). Step it once per batch; stepping more than
/// `total_steps` times throws Error (`Tried to step 102 times. The specified number of total
/// steps is 100`) and leaves everything unchanged.
///
///     torchkit::lr::OneCycleLR scheduler(optimizer, {.max_lr = 0.01, .epochs = 10, .steps_per_epoch = 100});
class OneCycleLR final : public RuleScheduler<detail::lr::OneCycleLRRule> {
 public:
  /// Schedules `optimizer`'s lrs, the first arguments in Python's order, the rest at their defaults.
  OneCycleLR(torch::optim::Optimizer& optimizer, GroupValues max_lr, int64_t total_steps)
      : OneCycleLR(optimizer, OneCycleLROptions{.max_lr = std::move(max_lr), .total_steps = total_steps}) {}
  /// Schedules `optimizer`'s lrs, the arguments as OneCycleLROptions (designated initialisers).
  OneCycleLR(torch::optim::Optimizer& optimizer, OneCycleLROptions options)
      : RuleScheduler(optimizer, std::move(options)) {}

  /// The number of steps in the cycle.
  [[nodiscard]] int64_t total_steps() const noexcept { return state_.total_steps; }
};

/// Cycles each group's lr between `base_lr` and `max_lr` (`torch.optim.lr_scheduler.CyclicLR`),
/// the momentum between `max_momentum` and `base_momentum`. Step it once per batch. Besides
/// torch 1.13's SGD/RMSprop momentum, it cycles Adam/AdamW's beta1 as torch 2.x does.
///
///     torchkit::lr::CyclicLR scheduler(optimizer, {.base_lr = 0.01, .max_lr = 0.1, .step_size_up = 20});
class CyclicLR final : public RuleScheduler<detail::lr::CyclicLRRule> {
 public:
  /// Schedules `optimizer`'s lrs, the first arguments in Python's order, the rest at their defaults.
  CyclicLR(torch::optim::Optimizer& optimizer, GroupValues base_lr, GroupValues max_lr, int64_t step_size_up = 2000)
      : CyclicLR(optimizer, CyclicLROptions{.base_lr = std::move(base_lr), .max_lr = std::move(max_lr),
                                            .step_size_up = step_size_up}) {}
  /// Schedules `optimizer`'s lrs, the arguments as CyclicLROptions (designated initialisers).
  CyclicLR(torch::optim::Optimizer& optimizer, CyclicLROptions options) : RuleScheduler(optimizer, std::move(options)) {
    base_lrs_ = state_.base_lrs;  // Python sets them after its initial step
  }
};

}  // namespace torchkit::lr
// ---- end torchkit/lr/cyclic.hpp ----
// ---- begin torchkit/lr/composite.hpp ----
/// @file lr/composite.hpp
/// The composites of torchkit::lr: SequentialLR and ChainedScheduler (CompositeScheduler), which
/// hold other schedulers through AnyScheduler.


#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace torchkit::detail::lr {
/// True for std::shared_ptr<S> with S a scheduler (AnyScheduler's shared form).
template <class T>
inline constexpr bool is_shared_scheduler_v = false;
template <class S>
inline constexpr bool is_shared_scheduler_v<std::shared_ptr<S>> = std::derived_from<S, torchkit::lr::Scheduler>;
}  // namespace torchkit::detail::lr

namespace torchkit::lr {

/// A scheduler of any type for SequentialLR and ChainedScheduler, with one of three ownerships:
/// - a scheduler variable (an lvalue) is referred to, as Python's composites refer to the
///   scheduler objects they are given: stepping the composite steps your object, and your
///   object must outlive the composite;
/// - a temporary or `std::move(scheduler)` is taken over (owned by the composite);
/// - a `std::shared_ptr` is shared.
/// The list is built left to right, so schedulers written inline are constructed in the order
/// written, as in Python. Anything else (a pointer, a const scheduler, ReduceLROnPlateau, a
/// composite's factory result) stops the build with a message that says what to write instead.
///
///     torchkit::lr::LinearLR warmup(optimizer, 0.1, 1.0, 5);          // Python's order:
///     torchkit::lr::CosineAnnealingLR cosine(optimizer, 95);          // schedulers first,
///     torchkit::lr::SequentialLR scheduler(optimizer, {warmup, cosine}, {5});   // then composed
class AnyScheduler {
 public:
  /// Shares `scheduler` with the caller. Throws Error when it is null.
  template <std::derived_from<Scheduler> S>
  AnyScheduler(std::shared_ptr<S> scheduler) : scheduler_(std::move(scheduler)) {  // NOLINT
    TORCHKIT_CHECK(scheduler_ != nullptr, "AnyScheduler: the scheduler pointer is null");
  }
  /// Refers to the caller's `scheduler` (not owned: it must outlive the composite), as Python's
  /// SequentialLR refers to the scheduler objects in its list.
  template <std::derived_from<Scheduler> S>
    requires(!std::is_const_v<S>)
  AnyScheduler(S& scheduler)  // NOLINT(google-explicit-constructor)
      : scheduler_(std::shared_ptr<Scheduler>(std::shared_ptr<Scheduler>(), &scheduler)) {}
  /// Takes over `scheduler` (a temporary, or `std::move(scheduler)`).
  template <std::derived_from<Scheduler> S>
    requires(!std::is_lvalue_reference_v<S>)
  AnyScheduler(S&& scheduler)  // NOLINT(google-explicit-constructor, bugprone-forwarding-reference-overload)
      : scheduler_(std::make_shared<S>(std::move(scheduler))) {}

  /// Everything else: a compile-time error that says what to write.
  template <class T>
    requires(!std::same_as<std::remove_cvref_t<T>, AnyScheduler> &&
             !std::derived_from<std::remove_cvref_t<T>, Scheduler> &&
             !detail::lr::is_shared_scheduler_v<std::remove_cvref_t<T>>)
  AnyScheduler(T&&) {  // NOLINT(google-explicit-constructor, bugprone-forwarding-reference-overload)
    using Given = std::remove_cvref_t<T>;
    static_assert(!std::is_pointer_v<Given>,
                  "torchkit::lr::AnyScheduler: pass the scheduler itself (SequentialLR s(opt, {warmup, cosine}, "
                  "{5})), std::move(it), or a std::shared_ptr — not a raw pointer");
    static_assert(!std::is_same_v<Given, ReduceLROnPlateau>,
                  "torchkit::lr::AnyScheduler: ReduceLROnPlateau steps on a metric and cannot be part of "
                  "SequentialLR or ChainedScheduler (as in Python); step it on its own");
    static_assert(std::is_pointer_v<Given> || std::is_same_v<Given, ReduceLROnPlateau>,
                  "torchkit::lr::AnyScheduler: expected a torchkit::lr scheduler (StepLR, LinearLR, ...), a "
                  "std::shared_ptr to one, or std::move(one)");
  }
  /// A const scheduler cannot be stepped by a composite.
  template <std::derived_from<Scheduler> S>
  AnyScheduler(const S&) {  // NOLINT(google-explicit-constructor)
    static_assert(sizeof(S) == 0,
                  "torchkit::lr::AnyScheduler: a const scheduler cannot be stepped by SequentialLR or "
                  "ChainedScheduler; pass a non-const scheduler variable, std::move(it), or a std::shared_ptr");
  }

  /// The scheduler (shared, owned or referred to).
  [[nodiscard]] const std::shared_ptr<Scheduler>& get() const noexcept { return scheduler_; }

 private:
  std::shared_ptr<Scheduler> scheduler_;
};

/// What SequentialLR and ChainedScheduler share: the schedulers of one optimizer, their
/// checks, their arguments and their nested save/load.
class CompositeScheduler : public Scheduler {
 public:
  /// The schedulers, in order.
  [[nodiscard]] const std::vector<std::shared_ptr<Scheduler>>& schedulers() const noexcept { return schedulers_; }

 protected:
  /// Takes the schedulers; throws Error (`{}` in `other_optimizer` is the index, Python's
  /// wording) when one belongs to another optimizer or has seen groups added since. Changes
  /// nothing: the composite's constructor continues.
  CompositeScheduler(torch::optim::Optimizer& optimizer, std::string type_name,
                     const std::vector<AnyScheduler>& schedulers, std::string_view other_optimizer)
      : Scheduler(optimizer, std::move(type_name)) {
    TORCHKIT_CHECK(!schedulers.empty(), "{}: expects at least one scheduler, got none", type_name_);
    for (std::size_t index = 0; index < schedulers.size(); ++index) {
      const auto& scheduler = schedulers[index].get();
      TORCHKIT_CHECK(&scheduler->optimizer() == &optimizer, "{}: {}", type_name_,
                     fmt::format(fmt::runtime(other_optimizer), index));
      TORCHKIT_CHECK(scheduler->base_lrs_.size() == optimizer.param_groups().size(),
                     "{}: the scheduler at index {} ({}) was created for {} parameter groups, the optimizer has {}",
                     type_name_, index, scheduler->type_name(), scheduler->base_lrs_.size(),
                     optimizer.param_groups().size());
      schedulers_.push_back(scheduler);
    }
    initial_lrs_ = detail::lr::shared_initial_lrs(optimizer);
    base_lrs_.assign(initial_lrs_->values.begin(),
                     initial_lrs_->values.begin() + static_cast<std::ptrdiff_t>(optimizer.param_groups().size()));
    last_epoch_ = 0;
  }

  /// The scheduler whose turn it is: `bisect_right(milestones, epoch)`.
  [[nodiscard]] Scheduler& scheduler(std::size_t index) const { return *schedulers_[index]; }
  // C++ lets a derived class reach a protected member only through its own type, so the
  // composites reach their schedulers' through these.
  /// Calls `scheduler.step_to(epoch)` (Python's `scheduler.step(epoch)`).
  static void step_inner_to(Scheduler& scheduler, int64_t epoch) { scheduler.step_to(epoch); }
  /// Calls `scheduler.check_next_step()`: throws the Error its next step would throw.
  static void check_inner_next_step(const Scheduler& scheduler) { scheduler.check_next_step(); }
  /// Moves `scheduler` back one epoch, undoing its initial step (as Python's SequentialLR).
  static void undo_initial_step(Scheduler& scheduler) { scheduler.last_epoch_ -= 1; }
  /// Takes `scheduler`'s initial step again (Python's `_initial_step()`: SequentialLR does it for
  /// its first scheduler at construction).
  static void restart(Scheduler& scheduler) { scheduler.initial_step(); }
  /// Whether `scheduler` is itself a SequentialLR or ChainedScheduler.
  static bool inner_is_composite(const Scheduler& scheduler) { return scheduler.is_composite(); }

  /// `schedulers=[StepLR(...) ..., ...]` and the composite's own arguments.
  [[nodiscard]] std::string schedulers_to_string() const {
    std::vector<std::string> names;
    for (const auto& scheduler : schedulers_) {
      names.push_back(scheduler->to_string());
    }
    return fmt::format("schedulers=[{}]", fmt::join(names, ", "));
  }

  void save_state(detail::lr::ArchiveWriter& writer) const override {
    writer.write("scheduler_count", static_cast<int64_t>(schedulers_.size()));
    for (std::size_t index = 0; index < schedulers_.size(); ++index) {
      writer.write_nested(fmt::format("schedulers/{}", index),
                          [&](detail::lr::ArchiveWriter& nested) { schedulers_[index]->save_to(nested); });
    }
  }
  void load_state(detail::lr::ArchiveReader& reader, bool apply) override {
    const auto count = reader.read<int64_t>("scheduler_count");
    TORCHKIT_CHECK(count == static_cast<int64_t>(schedulers_.size()),
                   "{}: the archive holds {} schedulers, this {} has {}", reader.owner(), count, type_name_,
                   schedulers_.size());
    for (std::size_t index = 0; index < schedulers_.size(); ++index) {
      auto nested = reader.read_nested(fmt::format("schedulers/{}", index));
      detail::lr::ArchiveReader nested_reader(nested, fmt::format("{} (schedulers[{}])", reader.owner(), index));
      schedulers_[index]->load_from(nested_reader, apply);
    }
  }

 private:
  [[nodiscard]] std::vector<double> get_lr() const override { return last_lr_; }
  [[nodiscard]] bool is_composite() const noexcept override { return true; }
  void step_to(int64_t /*epoch*/) override {
    detail::fail("{}::step: cannot jump to an epoch (Python's {}.step() takes no epoch)", type_name_, type_name_);
  }

  std::vector<std::shared_ptr<Scheduler>> schedulers_;
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
class SequentialLR final : public CompositeScheduler {
 public:
  /// Runs `schedulers` (all of `optimizer`) one after another, switching at each of the
  /// `milestones` (epochs, one fewer than the schedulers, sorted).
  SequentialLR(torch::optim::Optimizer& optimizer, std::vector<AnyScheduler> schedulers,
               std::vector<int64_t> milestones)
      : CompositeScheduler(optimizer, "SequentialLR", schedulers,
                           "Sequential Schedulers expects all schedulers to belong to the same optimizer, but got "
                           "schedulers at index {} to be different than the optimizer passed in."),
        milestones_(std::move(milestones)) {
    check_milestones(type_name_, milestones_);
    // Valid: now reset the lrs, "undo" the schedulers' initial steps and restart the first.
    detail::lr::set_group_lrs(optimizer, base_lrs_);
    for (const auto& each : this->schedulers()) {
      undo_initial_step(*each);
    }
    restart(scheduler(0));
    last_lr_ = scheduler(0).last_lr();
  }

  /// Steps the scheduler whose turn it is; at a milestone, starts the next one at epoch 0.
  void step() override {
    check_group_count();
    const int64_t epoch = last_epoch_ + 1;
    const std::size_t index = detail::lr::bisect_right(milestones_, epoch);
    Scheduler& current = scheduler(index);
    if (index > 0 && milestones_[index - 1] == epoch) {
      step_inner_to(current, 0);
    } else {
      check_inner_next_step(current);
      current.step();
    }
    last_epoch_ = epoch;
    last_lr_ = current.last_lr();
  }

  /// The epochs at which the next scheduler takes over.
  [[nodiscard]] const std::vector<int64_t>& milestones() const noexcept { return milestones_; }

 private:
  void check_milestones(std::string_view owner, const std::vector<int64_t>& milestones) const {
    TORCHKIT_CHECK(milestones.size() + 1 == schedulers().size(),
                   "{}: Sequential Schedulers expects number of schedulers provided to be one more than the number of "
                   "milestone points, but got number of schedulers {} and the number of milestones to be equal to {}",
                   owner, schedulers().size(), milestones.size());
    detail::lr::check_milestones(owner, "milestones", milestones);
    for (std::size_t index = 0; index < schedulers().size(); ++index) {
      TORCHKIT_CHECK(!inner_is_composite(*schedulers()[index]),
                     "{}: the scheduler at index {} is a {}, which cannot be restarted at a milestone; put it around "
                     "the SequentialLR instead",
                     owner, index, schedulers()[index]->type_name());
    }
  }
  void check_next_step() const override {
    const int64_t epoch = last_epoch_ + 1;
    const std::size_t index = detail::lr::bisect_right(milestones_, epoch);
    if (index == 0 || milestones_[index - 1] != epoch) {
      check_inner_next_step(scheduler(index));
    }
  }
  using CompositeScheduler::check_next_step;
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("{}, milestones={}", schedulers_to_string(), detail::lr::list_to_string(milestones_));
  }
  void save_state(detail::lr::ArchiveWriter& writer) const override {
    writer.write("milestones", milestones_);
    CompositeScheduler::save_state(writer);
  }
  void load_state(detail::lr::ArchiveReader& reader, bool apply) override {
    auto milestones = reader.read<std::vector<int64_t>>("milestones");
    check_milestones(reader.owner(), milestones);
    CompositeScheduler::load_state(reader, apply);
    if (apply) {
      milestones_ = std::move(milestones);
    }
  }

  std::vector<int64_t> milestones_;
};

/// Steps several schedulers of one optimizer together, each multiplying in its effect
/// (`torch.optim.lr_scheduler.ChainedScheduler`). Its `last_epoch()` counts its steps.
/// Throws Error (Python's wording) when the schedulers belong to different optimizers.
///
///     torchkit::lr::ChainedScheduler scheduler({torchkit::lr::ConstantLR(optimizer, {.factor = 0.1, .total_iters = 2}),
///                                               torchkit::lr::ExponentialLR(optimizer, 0.9)});
class ChainedScheduler final : public CompositeScheduler {
 public:
  /// Steps `schedulers` (all of one optimizer, at least one) together, in order.
  explicit ChainedScheduler(std::vector<AnyScheduler> schedulers)
      : CompositeScheduler(first_optimizer(schedulers), "ChainedScheduler", schedulers,
                           "ChainedScheduler expects all schedulers to belong to the same optimizer, but got "
                           "schedulers at index 0 and {} to be different") {
    last_lr_ = detail::lr::group_lrs(*optimizer_);
  }

  /// Steps every scheduler, in order. When one of them would refuse the step (OneCycleLR past
  /// its total steps), throws that Error before any of them moves.
  void step() override {
    check_group_count();
    check_next_step();
    for (const auto& scheduler : schedulers()) {
      scheduler->step();
    }
    ++last_epoch_;
    last_lr_ = detail::lr::group_lrs(*optimizer_);
  }

 private:
  static torch::optim::Optimizer& first_optimizer(const std::vector<AnyScheduler>& schedulers) {
    TORCHKIT_CHECK(!schedulers.empty(), "ChainedScheduler: expects at least one scheduler, got none");
    return schedulers.front().get()->optimizer();
  }
  void check_next_step() const override {
    for (const auto& scheduler : schedulers()) {
      check_inner_next_step(*scheduler);
    }
  }
  using CompositeScheduler::check_next_step;
  [[nodiscard]] std::string arguments() const override { return schedulers_to_string(); }
};

}  // namespace torchkit::lr
// ---- end torchkit/lr/composite.hpp ----
// ---- begin torchkit/lr/plateau.hpp ----
/// @file lr/plateau.hpp
/// ReduceLROnPlateau: reduces the lr when a metric stops improving (not a Scheduler: its step
/// takes the metric).


#include <ATen/core/Tensor.h>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace torchkit::lr {

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

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    using O = ReduceLROnPlateauOptions;
    return std::tuple{
        field("mode", &O::mode,
              [](std::string_view owner, std::string_view, const std::string& mode) {
                TORCHKIT_CHECK(mode == "min" || mode == "max", "{}: mode {} is unknown! (expected 'min' or 'max')",
                               owner, mode);
              }),
        field("factor", &O::factor,
              [](std::string_view owner, std::string_view, double factor) {
                TORCHKIT_CHECK(factor < 1.0, "{}: Factor should be < 1.0, got factor={}", owner, factor);
                TORCHKIT_CHECK(factor >= 0, "{}: Factor should be >= 0, got factor={}", owner, factor);
              }),
        field("patience", &O::patience, check_non_negative_count),
        field("threshold", &O::threshold, check_finite_non_negative),
        field("threshold_mode", &O::threshold_mode,
              [](std::string_view owner, std::string_view, const std::string& mode) {
                TORCHKIT_CHECK(mode == "rel" || mode == "abs",
                               "{}: threshold mode {} is unknown! (expected 'rel' or 'abs')", owner, mode);
              }),
        field("cooldown", &O::cooldown, check_non_negative_count),
        field("min_lr", &O::min_lr, check_group_values),
        field("eps", &O::eps, check_finite_non_negative)};
  }
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
  /// Watches a metric for `optimizer` with Python's default arguments (mode "min", factor 0.1,
  /// patience 10).
  explicit ReduceLROnPlateau(torch::optim::Optimizer& optimizer) : ReduceLROnPlateau(optimizer, {}) {}
  /// Watches a metric for `optimizer`, the arguments as ReduceLROnPlateauOptions (designated
  /// initialisers).
  ReduceLROnPlateau(torch::optim::Optimizer& optimizer, ReduceLROnPlateauOptions options)
      : optimizer_(&optimizer),
        options_(std::move(options)),
        min_lrs_(checked_min_lrs(options_, detail::lr::check_optimizer(optimizer, "ReduceLROnPlateau"),
                                 "ReduceLROnPlateau")),
        best_(worst(options_)),
        last_lr_(detail::lr::group_lrs(optimizer)) {}

  /// Takes the epoch's metric (e.g. the validation loss); reduces the lr of every group by
  /// `factor` (not below its `min_lr`) after more than `patience` epochs without improvement.
  void step(double metric) {
    detail::lr::check_group_count(*optimizer_, min_lrs_.size(), "ReduceLROnPlateau");
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
    last_lr_ = detail::lr::group_lrs(*optimizer_);
  }

  /// The metric as a one-element tensor (Python's `float(metrics)`; synchronises with its
  /// device). Throws Error for a tensor with more than one element.
  void step(const at::Tensor& metric) {
    TORCHKIT_CHECK(metric.defined() && metric.numel() == 1,
                   "ReduceLROnPlateau::step: the metric must be a one-element tensor, got {}",
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
  /// Whether cooldown epochs are left (bad epochs are not counted then).
  [[nodiscard]] bool in_cooldown() const noexcept { return cooldown_counter_ > 0; }
  /// The arguments, as given (after `load()`: as loaded).
  [[nodiscard]] const ReduceLROnPlateauOptions& options() const noexcept { return options_; }
  /// The optimizer whose learning rates this scheduler sets.
  [[nodiscard]] torch::optim::Optimizer& optimizer() const noexcept { return *optimizer_; }

  /// Writes the state (options, best, counters, epoch, and every group's current lr, which
  /// LibTorch's `optimizer.save()` does not keep) under the key `"lr_scheduler"`.
  void save(torch::serialize::OutputArchive& archive) const {
    detail::lr::ArchiveWriter(archive).write_nested("lr_scheduler", [&](detail::lr::ArchiveWriter& writer) {
      writer.write("type", std::string("ReduceLROnPlateau"));
      detail::lr::save_fields(writer, options_);
      writer.write("best", best_);
      writer.write("num_bad_epochs", num_bad_epochs_);
      writer.write("cooldown_counter", cooldown_counter_);
      writer.write("last_epoch", last_epoch_);
      writer.write("last_lr", last_lr_);
      writer.write("optimizer_lrs", detail::lr::group_lrs(*optimizer_));
    });
  }

  /// Restores the state written by `save()` and every group's lr; throws Error (changing
  /// nothing) for another kind of scheduler, a different number of parameter groups, or any
  /// value the constructor would refuse.
  void load(torch::serialize::InputArchive& archive) {
    const std::string owner = "ReduceLROnPlateau::load";
    torch::serialize::InputArchive state = detail::lr::ArchiveReader(archive, owner).read_nested("lr_scheduler");
    detail::lr::ArchiveReader reader(state, owner);
    const auto type = reader.read<std::string>("type");
    TORCHKIT_CHECK(type == "ReduceLROnPlateau",
                   "{}: the archive holds the state of a scheduler of type {}, not ReduceLROnPlateau", owner, type);
    auto options = detail::lr::load_fields(reader, options_);
    auto min_lrs = checked_min_lrs(options, optimizer_->param_groups().size(), owner);
    const auto best = reader.read<double>("best");
    const auto num_bad_epochs = reader.read<int64_t>("num_bad_epochs");
    const auto cooldown_counter = reader.read<int64_t>("cooldown_counter");
    const auto last_epoch = reader.read<int64_t>("last_epoch");
    auto last_lr = reader.read<std::vector<double>>("last_lr");
    const auto optimizer_lrs = reader.read<std::vector<double>>("optimizer_lrs");
    TORCHKIT_CHECK(last_lr.size() == min_lrs.size() && optimizer_lrs.size() == min_lrs.size(),
                   "{}: the archive was saved for {} parameter groups, the optimizer has {}", owner, last_lr.size(),
                   min_lrs.size());
    // Counters beyond 2^53 cannot come from a run, and would overflow the next step.
    for (const auto& [name, value] : {std::pair{"num_bad_epochs", num_bad_epochs},
                                      std::pair{"cooldown_counter", cooldown_counter},
                                      std::pair{"last_epoch", last_epoch}}) {
      TORCHKIT_CHECK(value >= 0 && value < detail::lr::max_count, "{}: {} in the archive is {}; expected 0 <= {} < 2^53",
                     owner, name, value, name);
    }
    options_ = std::move(options);
    min_lrs_ = std::move(min_lrs);
    best_ = best;
    num_bad_epochs_ = num_bad_epochs;
    cooldown_counter_ = cooldown_counter;
    last_epoch_ = last_epoch;
    last_lr_ = std::move(last_lr);
    detail::lr::set_group_lrs(*optimizer_, optimizer_lrs);
  }

  /// `ReduceLROnPlateau(mode='min', factor=0.1, ...) last_epoch=3 best=0.5 num_bad_epochs=1 last_lr=[0.1]`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("ReduceLROnPlateau({}) last_epoch={} best={} num_bad_epochs={} last_lr={}",
                       detail::lr::format_fields(options_), last_epoch_, best_, num_bad_epochs_,
                       detail::lr::list_to_string(last_lr_));
  }

  /// Writes to_string() to `stream`.
  friend std::ostream& operator<<(std::ostream& stream, const ReduceLROnPlateau& scheduler) {
    return stream << scheduler.to_string();
  }

 private:
  // Checks every field, then min_lr against the number of groups (Python's wording).
  static std::vector<double> checked_min_lrs(const ReduceLROnPlateauOptions& options, std::size_t group_count,
                                             std::string_view owner) {
    detail::lr::check_fields(options, owner);
    const auto& min_lr = options.min_lr;
    TORCHKIT_CHECK(min_lr.for_every_group() || min_lr.values().size() == group_count,
                   "{}: expected {} min_lrs, got {}", owner, group_count, min_lr.values().size());
    return min_lr.for_groups(group_count, "min_lr", owner);
  }

  static double worst(const ReduceLROnPlateauOptions& options) {
    return options.mode == "min" ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
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
      const double old_lr = detail::lr::group_lr(*optimizer_, index);
      const double new_lr = std::max(old_lr * options_.factor, min_lrs_[index]);
      if (old_lr - new_lr > options_.eps) {
        detail::lr::set_group_lr(*optimizer_, index, new_lr);
      }
    }
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
// ---- end torchkit/lr/plateau.hpp ----
// ---- begin torchkit/lr/swa.hpp ----
/// @file lr/swa.hpp
/// SWALR of torchkit::lr: the learning-rate schedule of stochastic weight averaging
/// (`torch.optim.swa_utils.SWALR`), annealing every group's lr to its SWA lr and holding it
/// there. Pair it with torchkit::AveragedModel (averaging.hpp).


#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace torchkit::lr {

/// SWALR's arguments (Python's names and defaults; `swa_lr` is required).
struct SWALROptions {
  /// The lr every group anneals to and then keeps: one value, or one per group (each finite,
  /// >= 0).
  GroupValues swa_lr{};
  /// The number of epochs (steps) the annealing takes (>= 0; 0 switches to `swa_lr` at once).
  int64_t anneal_epochs = 10;
  /// `"cos"` or `"linear"`: the shape of the annealing.
  std::string anneal_strategy = "cos";

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    using O = SWALROptions;
    return std::tuple{
        field("swa_lr", &O::swa_lr, check_group_values),
        field("anneal_epochs", &O::anneal_epochs,
              [](std::string_view owner, std::string_view, int64_t anneal_epochs) {
                TORCHKIT_CHECK(anneal_epochs >= 0, "{}: anneal_epochs must be equal or greater than 0, got {}", owner,
                               anneal_epochs);
                TORCHKIT_CHECK(anneal_epochs <= max_count,
                               "{}: anneal_epochs is {}; the largest count a scheduler accepts is 2^53 = {}", owner,
                               anneal_epochs, max_count);
              }),
        field("anneal_strategy", &O::anneal_strategy,
              [](std::string_view owner, std::string_view, const std::string& strategy) {
                TORCHKIT_CHECK(strategy == "cos" || strategy == "linear",
                               "{}: anneal_strategy must by one of 'cos' or 'linear', instead got {}", owner, strategy);
              })};
  }
};

}  // namespace torchkit::lr

namespace torchkit::detail::lr {

struct SWALRRule {
  static constexpr std::string_view name = "SWALR";
  using Options = torchkit::lr::SWALROptions;
  struct State {
    std::vector<double> swa_lrs;  // Python keeps them in the groups (`group['swa_lr']`)
  };

  static State prepare(const Options& options, const torch::optim::Optimizer& optimizer, std::string_view owner) {
    const std::size_t group_count = optimizer.param_groups().size();
    const auto& values = options.swa_lr.values();
    TORCHKIT_CHECK(options.swa_lr.for_every_group() || values.size() == group_count,
                   "{}: swa_lr must have the same length as optimizer.param_groups: swa_lr has {}, "
                   "optimizer.param_groups has {}",
                   owner, values.size(), group_count);
    return State{options.swa_lr.for_groups(group_count, "swa_lr", owner)};
  }

  /// Python's `_cosine_anneal` / `_linear_anneal`.
  static double anneal(const Options& options, double t) {
    return options.anneal_strategy == "cos" ? (1 - std::cos(std::numbers::pi * t)) / 2 : t;
  }

  /// Python's `get_lr()`: undo the previous step's mix to recover the lr the annealing started
  /// from, then mix it with the SWA lr at the current fraction. Driven by the step count, as
  /// Python's (`self._step_count - 1`), not by `last_epoch`.
  static double lr(const View<SWALRRule>& at, std::size_t group, double lr) {
    const int64_t anneal_epochs = at.options.anneal_epochs;
    int64_t step = at.step_count - 1;
    if (anneal_epochs == 0) {
      step = std::max<int64_t>(1, step);
    }
    const auto epochs = static_cast<double>(std::max<int64_t>(1, anneal_epochs));
    const double swa_lr = at.state.swa_lrs[group];
    const double prev_t = std::clamp(static_cast<double>(step - 1) / epochs, 0.0, 1.0);
    const double prev_alpha = anneal(at.options, prev_t);
    const double prev_lr = prev_alpha == 1 ? swa_lr : (lr - prev_alpha * swa_lr) / (1 - prev_alpha);
    const double t = std::clamp(static_cast<double>(step) / epochs, 0.0, 1.0);
    const double alpha = anneal(at.options, t);
    return swa_lr * alpha + prev_lr * (1 - alpha);
  }
};

}  // namespace torchkit::detail::lr

namespace torchkit::lr {

/// Anneals every parameter group's lr from its current value to its SWA lr over
/// `anneal_epochs` steps (cosine or linear), then keeps it there: the schedule of stochastic
/// weight averaging (`torch.optim.swa_utils.SWALR`, same arguments, defaults, errors and
/// values). Call `step()` once per epoch after `optimizer.step()`, once the averaging has
/// begun; the lr it starts from is the group's lr when the SWALR is constructed (e.g. where an
/// earlier scheduler left it).
///
/// Python's `last_epoch` argument is not carried over, as for the rest of torchkit::lr: resume
/// with `save()`/`load()`, which keep the SWA lrs, the step count and each group's lr.
///
/// @throws Error (changing nothing) when `swa_lr` is missing, negative or not finite, when a
///         per-group list's length differs from the optimizer's group count (Python's wording:
///         `swa_lr must have the same length as optimizer.param_groups: ...`), for
///         `anneal_epochs < 0` (`anneal_epochs must be equal or greater than 0, got -1`), or an
///         `anneal_strategy` other than "cos" and "linear".
///
///     torchkit::AveragedModel swa_model(model);
///     torchkit::lr::SWALR swa_scheduler(optimizer, 0.05, {.anneal_epochs = 5, .anneal_strategy = "linear"});
///     for (int epoch = 0; epoch < 100; ++epoch) {
///       train_one_epoch(model, optimizer);
///       if (epoch >= 75) {
///         swa_model.update_parameters(model);
///         swa_scheduler.step();
///       } else {
///         scheduler.step();
///       }
///     }
class SWALR final : public RuleScheduler<detail::lr::SWALRRule> {
 public:
  /// One SWA lr for every group.
  SWALR(torch::optim::Optimizer& optimizer, double swa_lr, SWALROptions options = {})
      : RuleScheduler(optimizer, with_swa_lr(std::move(options), swa_lr)) {}
  /// One SWA lr per group (Python's list form).
  SWALR(torch::optim::Optimizer& optimizer, std::vector<double> swa_lrs, SWALROptions options = {})
      : RuleScheduler(optimizer, with_swa_lr(std::move(options), std::move(swa_lrs))) {}
  /// Every argument in the options (`swa_lr` must be set there).
  SWALR(torch::optim::Optimizer& optimizer, SWALROptions options) : RuleScheduler(optimizer, std::move(options)) {}

  /// The SWA lr of every group (Python's `group['swa_lr']`).
  [[nodiscard]] const std::vector<double>& swa_lrs() const noexcept { return state_.swa_lrs; }

 private:
  static SWALROptions with_swa_lr(SWALROptions options, GroupValues swa_lr) {
    options.swa_lr = std::move(swa_lr);
    return options;
  }
};

}  // namespace torchkit::lr
// ---- end torchkit/lr/swa.hpp ----
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
///
/// Fine-tuning (FreezeOptions) — two differences from Python, both on purpose:
/// - **Frozen means frozen.** Python's `p.requires_grad = False` keeps `p.grad`; an optimizer built
///   before the freeze then still moves `p` (weight decay, momentum: LibTorch 1.13's `zero_grad`
///   zeroes gradients rather than resetting them, so the zero gradient stays defined). torchkit
///   resets the gradient of every newly frozen parameter to an undefined tensor, so no optimizer
///   touches it; `FreezeOptions{.clear_grads = false}` keeps Python's behaviour.
/// - **Frozen statistics.** In Python a frozen BatchNorm still updates its running mean and
///   variance whenever the model is in training mode. With `FreezeOptions{.freeze_norm_stats =
///   true}` the normalisation layers with running statistics that the call freezes (BatchNorm1d/2d/3d,
///   InstanceNorm1d/2d/3d with `track_running_stats`) are put in eval mode and remembered;
///   `torchkit::train(model)` (or a `TrainScope`) then sets training mode everywhere except in
///   them, as Python's usual `model.train(); freeze_bn(model)` recipe does. Their affine parameters
///   (and those of GroupNorm/LayerNorm) are frozen like any other parameter. LibTorch's own
///   `model->train()` does not know about them and puts them back in training mode: call
///   `torchkit::train(model)` instead (the layers stay remembered, so the next torchkit::train
///   freezes them again).


#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/functional/batchnorm.h>     // LibTorch's module headers below use these
#include <torch/nn/functional/instancenorm.h>  // without including them
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/instancenorm.h>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <ostream>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace torchkit {

/// One parameter's line in a FreezeReport: its name, size and `requires_grad` before and after.
struct ParameterFlag {
  std::string name;                   ///< Python's name (the first one for a tied tensor)
  std::int64_t numel = 0;                  ///< number of elements
  bool requires_grad_before = false;  ///< the flag before the call
  bool requires_grad = false;         ///< the flag after the call

  /// Whether the call changed this parameter's flag.
  [[nodiscard]] bool changed() const noexcept { return requires_grad_before != requires_grad; }
};

/// Every parameter of a model with its `requires_grad` flag (before and after a freeze call).
///
/// `to_string()` is exactly the tip's listing, one line per parameter:
/// `name: cnn.VGG_16.convolution1_1.weight,\t grad: True` (Python:
/// ``print('name: {0},\t grad: {1}'.format(name, value.requires_grad))``). `summary()` gives the
/// counts and what changed.
///
///     auto report = torchkit::freeze(net, {"cnn.VGG_16.convolution1_1"});
///     std::cout << report;             // the listing
///     std::cout << report.summary();   // 8 parameters (...): 6 trainable (...), 2 frozen (...); ...
struct FreezeReport {
  std::vector<ParameterFlag> parameters;  ///< in Python's named_parameters() order, each tensor once
  /// The normalisation layers with running statistics (BatchNorm1d/2d/3d, InstanceNorm with
  /// `track_running_stats`) whose statistics are frozen after the call (kept in eval mode by
  /// torchkit::train), by module name, in model order. Empty unless FreezeOptions::freeze_norm_stats
  /// was used on this model.
  std::vector<std::string> frozen_batchnorm;

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
  [[nodiscard]] std::int64_t frozen_elements() const noexcept { return elements(false); }
  /// Elements in the trainable parameters.
  [[nodiscard]] std::int64_t trainable_elements() const noexcept { return elements(true); }

  /// The tip's listing: `name: <name>,\t grad: True|False`, one line (ending in a newline) per parameter.
  [[nodiscard]] std::string to_string() const {
    std::string text;
    for (const auto& parameter : parameters) {
      text += fmt::format("name: {},\t grad: {}\n", parameter.name, parameter.requires_grad ? "True" : "False");
    }
    return text;
  }

  /// Counts and changes in one line (naming the first 8 changes), e.g.
  /// `8 parameters (1000 elements): 4 trainable (800 elements), 4 frozen (200 elements); 4 changed: a (frozen), ...`
  /// (and `; 2 normalisation layers with frozen statistics` when there are any).
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
    if (!frozen_batchnorm.empty()) {
      text += fmt::format("; {} normalisation layer{} with frozen statistics", frozen_batchnorm.size(),
                          frozen_batchnorm.size() == 1 ? "" : "s");
    }
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
  [[nodiscard]] std::int64_t elements(bool trainable) const noexcept {
    std::int64_t result = 0;
    for (const auto& parameter : parameters) {
      result += parameter.requires_grad == trainable ? parameter.numel : 0;
    }
    return result;
  }
};

namespace detail {
/// FreezeReport formats with `{fmt}` as its to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<FreezeReport> = true;
}  // namespace detail

/// What FreezeByName freezes.
enum class FreezeMode {
  matching,    ///< the matching parameters (as torchkit::freeze)
  all_except,  ///< every parameter but the matching ones, which become trainable (as torchkit::freeze_all_except)
};

/// How freeze, freeze_all_except and FreezeByName freeze (see the file comment for the two
/// differences from Python).
///
///     torchkit::freeze(model, {"backbone"}, {.freeze_norm_stats = true});
///     torchkit::train(model);  // training mode, except the backbone's BatchNorm layers
struct FreezeOptions {
  /// Also freeze the running statistics of the normalisation layers the call freezes: a
  /// BatchNorm1d/2d/3d or InstanceNorm1d/2d/3d with `track_running_stats` that a pattern reaches
  /// (one of its parameter or buffer names matches; freeze_all_except: none matches) and whose
  /// parameters are all frozen afterwards. They go to eval mode now and stay there under
  /// torchkit::train / TrainScope.
  bool freeze_norm_stats = false;
  /// Reset the gradient of every newly frozen parameter to an undefined tensor, so that an
  /// optimizer built before the freeze does not move it (weight decay, momentum). `false` keeps
  /// the gradient, as Python does.
  bool clear_grads = true;
};

namespace detail {

enum class FreezeAction { freeze, unfreeze, freeze_all_except };

/// The normalisation layers whose statistics are frozen, process-wide, keyed by module address
/// (with a weak reference, so that a new module at the address of a destroyed one is not
/// taken for it). Thread-safe.
class FrozenNormRegistry {
 public:
  static FrozenNormRegistry& instance() {
    static FrozenNormRegistry registry;
    return registry;
  }
  [[nodiscard]] bool contains(const torch::nn::Module& module) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto found = entries_.find(&module);
    return found != entries_.end() && alive(found->second, module);
  }
  void set(torch::nn::Module& module, bool frozen) {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end();) {  // forget destroyed modules
      it = it->second.owned && it->second.module.expired() ? entries_.erase(it) : std::next(it);
    }
    if (frozen) {
      std::weak_ptr<torch::nn::Module> weak = module.weak_from_this();
      const bool owned = !weak.expired();
      entries_[&module] = Entry{std::move(weak), owned};
    } else {
      entries_.erase(&module);
    }
  }

 private:
  struct Entry {
    std::weak_ptr<torch::nn::Module> module;
    bool owned = false;  // held by a shared_ptr when registered (modules inside a model always are)
  };
  static bool alive(const Entry& entry, const torch::nn::Module& module) {
    if (!entry.owned) {
      return true;
    }
    const auto held = entry.module.lock();
    return held && held.get() == &module;
  }
  std::mutex mutex_;
  std::unordered_map<const torch::nn::Module*, Entry> entries_;
};

/// Whether `module` is a normalisation layer with running statistics (whose training mode
/// decides whether they update).
[[nodiscard]] inline bool has_running_stats(const torch::nn::Module& module) {
  if (const auto* bn1 = dynamic_cast<const torch::nn::BatchNorm1dImpl*>(&module)) {
    return bn1->options.track_running_stats();
  }
  if (const auto* bn2 = dynamic_cast<const torch::nn::BatchNorm2dImpl*>(&module)) {
    return bn2->options.track_running_stats();
  }
  if (const auto* bn3 = dynamic_cast<const torch::nn::BatchNorm3dImpl*>(&module)) {
    return bn3->options.track_running_stats();
  }
  if (const auto* in1 = dynamic_cast<const torch::nn::InstanceNorm1dImpl*>(&module)) {
    return in1->options.track_running_stats();
  }
  if (const auto* in2 = dynamic_cast<const torch::nn::InstanceNorm2dImpl*>(&module)) {
    return in2->options.track_running_stats();
  }
  if (const auto* in3 = dynamic_cast<const torch::nn::InstanceNorm3dImpl*>(&module)) {
    return in3->options.track_running_stats();
  }
  return false;
}

/// A normalisation layer with running statistics inside a model.
struct NormLayer {
  std::string name;  ///< module path ("" for the model itself)
  torch::nn::Module* module = nullptr;
  std::vector<std::string> entry_names;  ///< its own parameters' and buffers' full names
  std::vector<std::size_t> parameters;   ///< its own parameters, as indices into the parameter table
};

[[nodiscard]] inline std::vector<NormLayer> norm_layers(const torch::nn::Module& model,
                                                        std::span<const ParameterEntry> table) {
  std::unordered_map<const void*, std::size_t> index_of;
  for (std::size_t i = 0; i < table.size(); ++i) {
    index_of.emplace(table[i].tensor.unsafeGetTensorImpl(), i);
  }
  std::vector<NormLayer> layers;
  // The model itself, then its descendants (named_modules(include_self) needs a model held by a
  // shared_ptr; a model by value is not).
  std::vector<std::pair<std::string, torch::nn::Module*>> modules{{"", const_cast<torch::nn::Module*>(&model)}};
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    modules.emplace_back(item.key(), item.value().get());
  }
  for (const auto& [name, module] : modules) {
    if (!has_running_stats(*module)) {
      continue;
    }
    NormLayer layer{name, module, {}, {}};
    const auto full = [&](const std::string& key) { return layer.name.empty() ? key : layer.name + "." + key; };
    for (const auto& parameter : module->named_parameters(/*recurse=*/false)) {
      layer.entry_names.push_back(full(parameter.key()));
      if (const auto found = index_of.find(parameter.value().unsafeGetTensorImpl()); found != index_of.end()) {
        layer.parameters.push_back(found->second);
      }
    }
    for (const auto& buffer : module->named_buffers(/*recurse=*/false)) {
      layer.entry_names.push_back(full(buffer.key()));
    }
    layers.push_back(std::move(layer));
  }
  return layers;
}

/// The names of the layers among `layers` whose statistics are frozen now.
[[nodiscard]] inline std::vector<std::string> frozen_norm_names(const std::vector<NormLayer>& layers) {
  std::vector<std::string> names;
  for (const auto& layer : layers) {
    if (FrozenNormRegistry::instance().contains(*layer.module)) {
      names.push_back(layer.name);
    }
  }
  return names;
}

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

/// What a freeze call changed beyond the flags: the norm layers whose statistics it froze or
/// released, with their training flag before (for FreezeByName to restore).
struct NormChange {
  torch::nn::Module* module = nullptr;
  bool was_frozen = false;
  bool was_training = false;
};

/// Validates every pattern and every planned change, then sets the flags (clearing the gradients
/// of newly frozen parameters, freezing or releasing norm statistics as `options` say). Throws
/// Error (prefixed with `context`) before changing anything. `model` is null for callers that
/// only have the table (no norm layers then).
[[nodiscard]] inline FreezeReport set_requires_grad_by_name(std::string_view context,
                                                            std::span<const ParameterEntry> table,
                                                            std::span<const NamePattern> patterns,
                                                            FreezeAction action, const FreezeOptions& options = {},
                                                            const torch::nn::Module* model = nullptr,
                                                            std::vector<NormChange>* norm_changes = nullptr) {
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
  // Which norm layers change: decided before anything is applied.
  std::vector<NormLayer> layers = model != nullptr ? norm_layers(*model, table) : std::vector<NormLayer>{};
  std::vector<std::pair<std::size_t, bool>> norm_plan;  // (layer, frozen afterwards)
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const NormLayer& layer = layers[l];
    bool reached = false;
    for (const auto& pattern : patterns) {
      for (const auto& name : layer.entry_names) {
        reached = reached || pattern.matches(name);
      }
    }
    bool all_frozen = true;
    for (const std::size_t index : layer.parameters) {
      all_frozen = all_frozen && !report.parameters[index].requires_grad;
    }
    if (action == FreezeAction::unfreeze) {
      if (reached) {
        norm_plan.emplace_back(l, false);
      }
    } else if (options.freeze_norm_stats && all_frozen &&
               (action == FreezeAction::freeze ? reached : !reached)) {
      norm_plan.emplace_back(l, true);
    }
  }
  for (std::size_t i = 0; i < table.size(); ++i) {
    if (report.parameters[i].changed()) {
      at::Tensor tensor = table[i].tensor;
      tensor.requires_grad_(report.parameters[i].requires_grad);
      if (!report.parameters[i].requires_grad && options.clear_grads && tensor.grad().defined()) {
        tensor.mutable_grad().reset();
      }
    }
  }
  auto& registry = FrozenNormRegistry::instance();
  for (const auto& [l, frozen] : norm_plan) {
    torch::nn::Module& module = *layers[l].module;
    const bool was_frozen = registry.contains(module);
    if (norm_changes != nullptr) {
      norm_changes->push_back(NormChange{layers[l].module, was_frozen, module.is_training()});
    }
    registry.set(module, frozen);
    if (frozen && module.is_training()) {
      module.eval();
    }
  }
  report.frozen_batchnorm = frozen_norm_names(layers);
  return report;
}

}  // namespace detail

/// Freezes (`requires_grad = false`) every parameter that one of `patterns` selects; the others
/// keep their flag. Python: `for name, p in net.named_parameters(): if name in no_grad:
/// p.requires_grad = False`.
///
/// @param model     a module, module holder or shared_ptr to a module
/// @param patterns  names, module paths, globs or torchkit::regex(...) (see NamePattern)
/// @param options   FreezeOptions: clear the frozen parameters' gradients (default: yes, unlike
///                  Python), freeze the running statistics of the norm layers frozen (default: no)
/// @returns         every parameter's flag before and after, the norm layers with frozen statistics
/// @throws Error    for an empty list, an empty pattern, a pattern that matches no parameter
///                  (the message lists the three closest names), or a selected trainable
///                  parameter that is not a leaf tensor (computed from other tensors: its flag
///                  cannot be turned off); the model is unchanged then.
///
///     const std::vector<std::string> no_grad{"cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution1_1.bias"};
///     auto report = torchkit::freeze(net, no_grad);
///     torchkit::freeze(net, {"cnn.VGG_16.convolution1_2", "*.bias"});
///     torchkit::freeze(resnet, {"conv1", "bn1", "layer1"}, {.freeze_norm_stats = true});
template <ModuleLike M>
FreezeReport freeze(M& model, const PatternList& patterns, const FreezeOptions& options = {}) {
  const auto table = detail::parameter_table(model, "freeze");
  return detail::set_requires_grad_by_name("freeze", table, patterns.patterns(), detail::FreezeAction::freeze, options,
                                           &module_of(model, "freeze"));
}

/// Makes every parameter that one of `patterns` selects trainable (`requires_grad = true`); the
/// others keep their flag. Python: `p.requires_grad = True` for the chosen names. Norm layers
/// whose statistics were frozen (FreezeOptions::freeze_norm_stats) and that a pattern reaches
/// get trainable statistics again (torchkit::train puts them in training mode).
///
/// @throws Error for an empty list, an empty pattern, a pattern that matches no parameter, or a
///         selected parameter that cannot require gradients (an integer dtype); the model is
///         unchanged then. (A non-leaf parameter always requires grad already, so unfreeze never
///         has to change one.)
///
///     torchkit::unfreeze(net, {"cnn.VGG_16.convolution1_2"});
template <ModuleLike M>
FreezeReport unfreeze(M& model, const PatternList& patterns) {
  const auto table = detail::parameter_table(model, "unfreeze");
  return detail::set_requires_grad_by_name("unfreeze", table, patterns.patterns(), detail::FreezeAction::unfreeze, {},
                                           &module_of(model, "unfreeze"));
}

/// Freezes every parameter except the ones `patterns` select, which are made trainable:
/// afterwards exactly the selected parameters have `requires_grad == true`. This is the tip's
/// loop (`if name in no_grad: False else: True`) seen from the other side, e.g. fine-tuning
/// only the classifier head.
///
/// @throws Error as unfreeze(), and for a trainable non-leaf parameter it would freeze (as
///         freeze()); the model is unchanged then.
///
///     torchkit::freeze_all_except(net, {"classifier"});
///     torchkit::freeze_all_except(net, {"classifier"}, {.freeze_norm_stats = true});  // and every BatchNorm outside it
template <ModuleLike M>
FreezeReport freeze_all_except(M& model, const PatternList& patterns, const FreezeOptions& options = {}) {
  const auto table = detail::parameter_table(model, "freeze_all_except");
  return detail::set_requires_grad_by_name("freeze_all_except", table, patterns.patterns(),
                                           detail::FreezeAction::freeze_all_except, options,
                                           &module_of(model, "freeze_all_except"));
}

/// RAII: freezes parameters by name on construction and, on destruction, restores every
/// parameter's `requires_grad` to what it was on construction (also the ones changed by hand
/// in between, and also when an exception unwinds). Non-copyable, non-movable. With
/// FreezeOptions::freeze_norm_stats it also restores the norm layers whose statistics it froze
/// (their training flag as found, and whether their statistics were frozen); gradients it
/// cleared (FreezeOptions::clear_grads) stay cleared.
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
  /// Freezes what `patterns` select (FreezeMode::matching) or everything else
  /// (FreezeMode::all_except).
  template <ModuleLike M>
  FreezeByName(M& model, const PatternList& patterns, FreezeMode mode = FreezeMode::matching,
               const FreezeOptions& options = {})
      : FreezeByName(detail::parameter_table(model, "FreezeByName"), patterns, mode, options,
                     module_of(model, "FreezeByName")) {}
  /// As above, FreezeMode::matching.
  template <ModuleLike M>
  FreezeByName(M& model, const PatternList& patterns, const FreezeOptions& options)
      : FreezeByName(model, patterns, FreezeMode::matching, options) {}

  FreezeByName(const FreezeByName&) = delete;
  FreezeByName& operator=(const FreezeByName&) = delete;
  FreezeByName(FreezeByName&&) = delete;
  FreezeByName& operator=(FreezeByName&&) = delete;

  /// Restores every parameter's flag. Never throws: a flag that can no longer be set (the
  /// tensor's dtype was changed to an integer type in the meantime) is left as it is.
  ~FreezeByName() {
    for (auto it = norm_changes_.rbegin(); it != norm_changes_.rend(); ++it) {
      try {
        detail::FrozenNormRegistry::instance().set(*it->module, it->was_frozen);
        if (it->module->is_training() != it->was_training) {
          it->module->train(it->was_training);
        }
      } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
      }
    }
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
  FreezeByName(std::vector<detail::ParameterEntry> table, const PatternList& patterns, FreezeMode mode,
               const FreezeOptions& options, const torch::nn::Module& model)
      : report_(detail::set_requires_grad_by_name(
            "FreezeByName", table, patterns.patterns(),
            mode == FreezeMode::matching ? detail::FreezeAction::freeze : detail::FreezeAction::freeze_all_except,
            options, &model, &norm_changes_)) {
    // set_requires_grad_by_name validated before changing anything; the report has every flag as found.
    saved_.reserve(table.size());
    for (std::size_t i = 0; i < table.size(); ++i) {
      saved_.emplace_back(table[i].tensor, report_.parameters[i].requires_grad_before);
    }
  }

  std::vector<detail::NormChange> norm_changes_;  // declared before report_: filled while it is made
  FreezeReport report_;
  std::vector<std::pair<at::Tensor, bool>> saved_;
};

/// Every parameter's name and `requires_grad`, changing nothing. Its `to_string()` (and
/// `operator<<`) is the tip's listing: Python
/// ``for name, value in net.named_parameters(): print('name: {0},\t grad: {1}'.format(name, value.requires_grad))``.
///
///     std::cout << torchkit::requires_grad_report(net);
///     // name: cnn.VGG_16.convolution1_1.weight,	 grad: True
///     // ...
template <ModuleLike M>
[[nodiscard]] FreezeReport requires_grad_report(const M& model) {
  const auto table = detail::parameter_table(model, "requires_grad_report");
  FreezeReport report = detail::flags_of(table);
  report.frozen_batchnorm = detail::frozen_norm_names(detail::norm_layers(module_of(model), table));
  return report;
}

/// Sets `model` to training mode (`on`) or eval mode, except the normalisation layers whose
/// statistics were frozen (FreezeOptions::freeze_norm_stats), which stay in eval mode:
/// `model->train(on)` for fine-tuning. Python has no single call for it; its recipe is
/// `model.train()` followed by `m.eval()` for every frozen BatchNorm. Call it wherever Python
/// code calls `model.train()`: LibTorch's `model->train()` puts the frozen layers back in
/// training mode (and their running statistics then drift).
///
/// @throws Error for an empty module holder or a null pointer (nothing changes then).
///
///     torchkit::freeze(model, {"backbone"}, {.freeze_norm_stats = true});
///     torchkit::train(model);           // the backbone's BatchNorm layers stay in eval mode
///     ... training steps ...
///     torchkit::train(model, false);    // everything in eval mode, as model->eval()
template <ModuleLike M>
void train(M& model, bool on = true) {
  torch::nn::Module& module = module_of(model, "train");
  module.train(on);
  if (!on) {
    return;
  }
  auto& registry = detail::FrozenNormRegistry::instance();
  if (registry.contains(module)) {
    module.eval();
  }
  for (const auto& child : module.modules(/*include_self=*/false)) {
    if (registry.contains(*child)) {
      child->eval();
    }
  }
}

/// RAII torchkit::train: on construction sets training mode (`on`) everywhere except the
/// normalisation layers with frozen statistics; on destruction gives every module of the model
/// its training flag as found (also when an exception unwinds). Non-copyable, non-movable.
///
/// Construction throws Error for an empty module holder or a null pointer.
///
///     {
///       torchkit::TrainScope training(model);
///       for (const auto& batch : loader) { ... }
///     }  // back in the mode it was in (e.g. eval)
class TrainScope {
 public:
  /// Records every module's training flag, then calls torchkit::train(model, on).
  template <ModuleLike M>
  explicit TrainScope(M& model, bool on = true) {
    torch::nn::Module& module = module_of(model, "TrainScope");
    saved_.emplace_back(&module, module.is_training());
    for (const auto& child : module.modules(/*include_self=*/false)) {
      saved_.emplace_back(child.get(), child->is_training());
    }
    torchkit::train(module, on);
  }
  TrainScope(const TrainScope&) = delete;
  TrainScope& operator=(const TrainScope&) = delete;
  TrainScope(TrainScope&&) = delete;
  TrainScope& operator=(TrainScope&&) = delete;

  /// Restores every module's training flag (each module alone: `train()` would recurse).
  ~TrainScope() {
    for (auto& [module, training] : saved_) {
      try {
        if (module->is_training() != training) {
          set_own_flag(*module, training);
        }
      } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
      }
    }
  }

 private:
  // Module::train(on) sets the module's flag and its children's; restoring a parent before its
  // children (saved_ is in pre-order) lets each child then get its own flag back.
  static void set_own_flag(torch::nn::Module& module, bool training) { module.train(training); }

  std::vector<std::pair<torch::nn::Module*, bool>> saved_;  // the model outlives the scope
};

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
  // Doxygen: the comment above the declaration documents `lr`, the one after it `weight_decay`.
  /// The group's own lr; unset: the optimizer's default.
  std::optional<double> lr{}, weight_decay{};  ///< the group's own weight decay; unset: the default
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

/// One optimizer group that ParamGroupBuilder::build makes: what ParamGroupBuilder::groups() returns.
struct ParamGroupPlan {
  std::string name;                     ///< as group_names()
  std::vector<std::string> parameters;  ///< the parameters' names, in model order
  std::optional<double> lr;             ///< the group's own lr (before the layer scale); unset: the defaults'
  std::optional<double> weight_decay;   ///< the group's own weight decay; unset: the defaults'
  std::optional<std::int64_t> layer_id;  ///< with layer_decay: the layer id (after frozen layers are dropped)
  double lr_scale = 1.0;                ///< with layer_decay: rate^(last layer id - layer_id); else 1
};

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
/// - `layer_decay(rate, layers)`: layer-wise lr decay, as timm's `param_groups_layer_decay`
///   (fine-tuning ViT, BEiT, ConvNeXt). `layers[i]` holds the patterns of layer id `i`
///   (embeddings 0, block `k` at `k + 1`, final norm and head last, as timm's `group_matcher`); a
///   parameter takes the id of the first layer that matches it. Frozen parameters are left out
///   *before* the ids are counted: a layer with no trainable parameter is dropped and the ids
///   after it close up, so that the last trainable layer keeps scale 1 (timm counts its layers
///   over every parameter, frozen or not). With `L` layers left, layer `i` gets
///   `scale = rate^(L - 1 - i)`, and every optimizer group made from it
///   `lr = (group's lr, else the defaults' lr) * scale`. Each add()/rest() group is then split
///   by layer (ascending), each part again by weight decay; only non-empty parts become
///   optimizer groups (groups() and describe() show which is which).
/// - `no_weight_decay_1d()`: timm's rule: every 1-D (or 0-D) tensor and every `*.bias` gets
///   weight decay 0, as if listed in no_weight_decay().
///
/// Every check runs in `build()` (and `describe()`, `group_names()`), which throw Error when a
/// pattern is empty or matches no parameter (listing the closest names), when a parameter is
/// claimed by no group and no `rest()` was given (naming it), when a group gets nothing because
/// earlier groups claimed all its matches, when an lr or weight decay is negative or not finite,
/// when `rest()` was given twice, when there are no groups, or when nothing is left to optimize;
/// with layer_decay, when a layer's pattern matches no parameter or a trainable parameter
/// matches no layer (add a catch-all last layer such as `{"*"}`, timm's "head" default).
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
  explicit ParamGroupBuilder(const M& model) : parameters_(detail::parameter_table(model, "ParamGroupBuilder")) {}

  /// Adds a group of the parameters that `patterns` select (and no earlier group claimed).
  ParamGroupBuilder& add(const PatternList& patterns, GroupOptions options = {}) {
    return add_group(patterns.patterns(), std::move(options));
  }

  /// Adds the group that collects every parameter no `add()` group claims. Without it, such a
  /// parameter is an error in build().
  ParamGroupBuilder& rest(GroupOptions options = {}) {
    groups_.push_back(Group{{}, std::move(options), /*is_rest=*/true});
    return *this;
  }

  /// Gives the parameters that `patterns` select weight decay 0 (e.g. biases and norm weights),
  /// splitting every group in two (see the class comment). May be called more than once.
  ParamGroupBuilder& no_weight_decay(const PatternList& patterns) {
    return add_no_weight_decay(patterns.patterns());
  }

  /// Whether frozen parameters (`requires_grad == false`) go into the groups too (default: no).
  ParamGroupBuilder& include_frozen(bool include = true) noexcept {
    include_frozen_ = include;
    return *this;
  }

  /// timm's weight-decay rule: 1-D (and 0-D) tensors and every parameter whose name ends in
  /// `.bias` get weight decay 0 (norm weights, biases, scalar gains), as if listed in
  /// no_weight_decay(); combines with it.
  ParamGroupBuilder& no_weight_decay_1d(bool on = true) noexcept {
    no_weight_decay_1d_ = on;
    return *this;
  }

  /// Layer-wise lr decay (timm's `layer_decay`): `layers[i]` holds the patterns of layer id `i`
  /// (first match wins); with `L` layers that hold trainable parameters, layer `i`'s groups get
  /// `lr * rate^(L - 1 - i)` (see the class comment for frozen layers and the groups made).
  /// Python (timm): `param_groups_layer_decay(model, weight_decay, no_weight_decay_list,
  /// layer_decay=rate)` plus the scheduler applying each group's `lr_scale`.
  ///
  /// @throws Error for `rate` outside (0, 1] or not finite, an empty `layers` or an empty layer,
  ///         or when layer_decay was already given; the builder is unchanged then. Patterns
  ///         are checked by build().
  ///
  ///     std::vector<std::vector<std::string>> layers{{"cls_token", "pos_embed", "patch_embed"}};
  ///     for (int k = 0; k < 12; ++k) layers.push_back({fmt::format("blocks.{}", k)});
  ///     layers.push_back({"*"});  // norm and head: scale 1
  ///     builder.rest().no_weight_decay_1d().layer_decay(0.75, layers);
  ParamGroupBuilder& layer_decay(double rate, std::vector<std::vector<std::string>> layers) {
    constexpr std::string_view context = "ParamGroupBuilder::layer_decay";
    TORCHKIT_CHECK(std::isfinite(rate) && rate > 0 && rate <= 1, "{}: rate must be in (0, 1], got {}", context, rate);
    TORCHKIT_CHECK(!layers.empty(), "{}: no layers given; layers[i] holds the patterns of layer id i", context);
    TORCHKIT_CHECK(layer_patterns_.empty(), "{}: layer_decay was already given ({} layers, rate {})", context,
                   layer_patterns_.size(), layer_rate_);
    std::vector<std::vector<NamePattern>> converted;
    converted.reserve(layers.size());
    for (std::size_t l = 0; l < layers.size(); ++l) {
      TORCHKIT_CHECK(!layers[l].empty(), "{}: layer {} of {} has no patterns", context, l, layers.size());
      converted.push_back(PatternList(layers[l]).patterns());
    }
    layer_patterns_ = std::move(converted);
    layer_rate_ = rate;
    return *this;
  }

  /// The optimizer groups build() makes, in its order: names, parameters, own options, layer
  /// id and lr scale. Throws as build().
  [[nodiscard]] std::vector<ParamGroupPlan> groups() const {
    std::vector<ParamGroupPlan> result;
    for (const auto& group : plan("ParamGroupBuilder::groups").groups) {
      ParamGroupPlan info{group.name, {}, group.lr, group.weight_decay, {}, group.scale};
      if (group.layer_id) {
        info.layer_id = static_cast<std::int64_t>(*group.layer_id);
      }
      for (const std::size_t member : group.members) {
        info.parameters.push_back(parameters_[member].name);
      }
      result.push_back(std::move(info));
    }
    return result;
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
    detail::check_finite_non_negative("ParamGroupBuilder::build", "the defaults' lr", static_cast<double>(defaults.lr()));
    detail::check_finite_non_negative("ParamGroupBuilder::build", "the defaults' weight_decay", static_cast<double>(defaults.weight_decay()));
    const auto planned = plan("ParamGroupBuilder::build");
    std::vector<torch::optim::OptimizerParamGroup> result;
    result.reserve(planned.groups.size());
    for (const auto& group : planned.groups) {
      auto options = std::make_unique<O>(defaults);
      if (group.layer_id) {
        options->lr((group.lr ? *group.lr : static_cast<double>(defaults.lr())) * group.scale);
      } else if (group.lr) {
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
    detail::check_finite_non_negative("ParamGroupBuilder::describe", "the defaults' lr", static_cast<double>(defaults.lr()));
    detail::check_finite_non_negative("ParamGroupBuilder::describe", "the defaults' weight_decay",
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
    std::optional<std::size_t> layer_id{};  // with layer_decay
    double scale = 1.0;
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
        detail::check_finite_non_negative(context, fmt::format("the lr of {}", where), *group.options.lr);
      }
      if (group.options.weight_decay) {
        detail::check_finite_non_negative(context, fmt::format("the weight_decay of {}", where), *group.options.weight_decay);
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
    if (no_weight_decay_1d_) {
      for (std::size_t i = 0; i < count; ++i) {
        const std::string& name = parameters_[i].name;
        no_decay[i] = parameters_[i].tensor.dim() <= 1 ||
                      (name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0);
      }
    }
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
    const bool split = !no_weight_decay_.empty() || no_weight_decay_1d_;
    if (!layer_patterns_.empty()) {
      plan_layers(context, owner, no_decay, split, result);
      return result;
    }
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

  /// With layer_decay: the layer of every grouped parameter (frozen ones left out before the
  /// layers are counted), then one optimizer group per (group, layer, weight decay) that has
  /// parameters.
  void plan_layers(std::string_view context, const std::vector<std::size_t>& owner, const std::vector<bool>& no_decay,
                   bool split, Plan& result) const {
    constexpr std::size_t none = static_cast<std::size_t>(-1);
    const std::size_t count = parameters_.size();
    std::vector<std::vector<bool>> matched(layer_patterns_.size());
    for (std::size_t l = 0; l < layer_patterns_.size(); ++l) {
      matched[l] = detail::select(fmt::format("{}: layer_decay layer {}", context, l), layer_patterns_[l], parameters_);
    }
    std::vector<std::size_t> layer_of(count, none);
    std::vector<bool> used(layer_patterns_.size(), false);
    std::vector<std::size_t> unmatched;
    for (std::size_t i = 0; i < count; ++i) {
      if (owner[i] == none) {
        continue;  // left out (frozen)
      }
      for (std::size_t l = 0; l < layer_patterns_.size() && layer_of[i] == none; ++l) {
        if (matched[l][i]) {
          layer_of[i] = l;
        }
      }
      if (layer_of[i] == none) {
        unmatched.push_back(i);
      } else {
        used[layer_of[i]] = true;
      }
    }
    TORCHKIT_CHECK(unmatched.empty(),
                   "{}: {} {}parameter(s) match no layer of layer_decay: {}; add their patterns to a layer, or end the "
                   "layers with a catch-all such as {{\"*\"}} (timm gives unmatched parameters the last layer id)",
                   context, unmatched.size(), include_frozen_ ? "" : "trainable ", list_names(unmatched));
    // Layer ids over the layers that hold parameters (frozen ones are already out).
    std::vector<std::size_t> id_of(layer_patterns_.size(), none);
    std::size_t layer_count = 0;
    for (std::size_t l = 0; l < layer_patterns_.size(); ++l) {
      if (used[l]) {
        id_of[l] = layer_count++;
      }
    }
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      for (std::size_t l = 0; l < layer_patterns_.size(); ++l) {
        if (!used[l]) {
          continue;
        }
        const std::size_t id = id_of[l];
        const double scale = std::pow(layer_rate_, static_cast<double>(layer_count - 1 - id));
        const std::string name = fmt::format("{}, layer {}", display_name(g), id);
        PlannedGroup decay{name, {}, groups_[g].options.lr, groups_[g].options.weight_decay, false, id, scale};
        PlannedGroup without_decay{name + " (no weight decay)", {}, groups_[g].options.lr, 0.0, true, id, scale};
        for (std::size_t i = 0; i < count; ++i) {
          if (owner[i] == g && layer_of[i] == l) {
            (split && no_decay[i] ? without_decay : decay).members.push_back(i);
          }
        }
        for (PlannedGroup* part : {&decay, &without_decay}) {
          if (!part->members.empty()) {
            result.groups.push_back(std::move(*part));
          }
        }
      }
    }
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
    std::int64_t elements = 0;
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
      std::int64_t group_elements = 0;
      for (const std::size_t member : group.members) {
        group_elements += parameters_[member].tensor.numel();
      }
      std::string lr_text = value(group.lr, false, true);
      if (group.layer_id) {
        const std::string base = group.lr ? fmt::format("{}", *group.lr) : defaults ? fmt::format("{}", defaults->first)
                                                                                     : std::string("default");
        lr_text = group.lr || defaults
                      ? fmt::format("{} ({} x {})", (group.lr ? *group.lr : defaults->first) * group.scale, base,
                                    group.scale)
                      : fmt::format("default x {}", group.scale);
        lr_text += fmt::format("  layer={} scale={}", *group.layer_id, group.scale);
      }
      text += fmt::format("group {}: {}  lr={}  weight_decay={}  {} parameter{} ({} elements)\n", index, group.name,
                          lr_text,
                          value(group.weight_decay, group.weight_decay_from_no_weight_decay, false),
                          group.members.size(), group.members.size() == 1 ? "" : "s", group_elements);
      for (const std::size_t member : group.members) {
        std::string shape;
        for (const std::int64_t size : parameters_[member].tensor.sizes()) {
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
  bool no_weight_decay_1d_ = false;
  std::vector<std::vector<NamePattern>> layer_patterns_;
  double layer_rate_ = 1.0;
};

}  // namespace torchkit
// ---- end torchkit/param_groups.hpp ----
// ---- begin torchkit/averaging.hpp ----
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
// ---- end torchkit/averaging.hpp ----
// ---- begin torchkit/checkpoint.hpp ----
/// @file checkpoint.hpp
/// Tip 7's resume: one checkpoint for a training run — the model, the optimizer (with every
/// group's options, which LibTorch 1.13's `Optimizer::load` does not restore), every scheduler,
/// the GradScaler, the epoch and step, the CPU random generator and the user's own key/values,
/// in one file. Loading validates everything before it changes anything.
///
/// Python:
///
///     torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
///                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
///                 "epoch": epoch}, "run.pt")
///     ...
///     checkpoint = torch.load("run.pt")
///     model.load_state_dict(checkpoint["model"]); optimizer.load_state_dict(checkpoint["optimizer"])
///     scheduler.load_state_dict(checkpoint["scheduler"]); scaler.load_state_dict(checkpoint["scaler"])
///
/// C++:
///
///     torchkit::save_checkpoint("run.pt", model, optimizer, {&warmup, &cosine},
///                               {.epoch = epoch, .grad_scaler = &scaler});
///     ...
///     auto resumed = torchkit::load_checkpoint("run.pt", model, optimizer, {&warmup, &cosine}, &scaler);
///     for (auto epoch = resumed.epoch + 1; epoch < epochs; ++epoch) ...


#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <c10/util/Type.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <fmt/format.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <typeinfo>
#include <unordered_set>
#include <utility>
#include <vector>

namespace torchkit {

/// What a checkpoint carries besides the model, the optimizer and the schedulers.
///
///     torchkit::save_checkpoint(path, model, optimizer, {&scheduler},
///                               {.epoch = 7, .step = 7000, .metadata = {{"run", "baseline"}}});
struct CheckpointExtras {
  std::int64_t epoch = 0;  ///< the last finished epoch (or whatever the caller counts)
  std::int64_t step = 0;   ///< the last finished optimizer step
  /// save_checkpoint: the scaler to save, if any. load_checkpoint: always null; whether the file
  /// holds a scaler is `has_grad_scaler`.
  GradScaler* grad_scaler = nullptr;
  std::map<std::string, std::string> metadata{};  ///< the caller's own key/values
  /// save_checkpoint: also save the default CPU random generator's state (restored on load), so
  /// that dropout and shuffling continue as in an uninterrupted run; CUDA generators are not
  /// saved. load_checkpoint: whether the file held the generator's state (then restored).
  bool rng_state = true;
  /// load_checkpoint: whether the file holds a GradScaler state.
  bool has_grad_scaler = false;
};

namespace detail::checkpoint {

inline constexpr std::int64_t format_version = 1;
inline constexpr std::string_view save_name = "save_checkpoint";
inline constexpr std::string_view load_name = "load_checkpoint";

/// Every parameter and buffer of a model with its name, each tensor once, in registration order.
[[nodiscard]] inline std::vector<NamedParameter> named_state_of(const torch::nn::Module& module) {
  std::vector<NamedParameter> result;
  std::unordered_set<const void*> seen;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (seen.insert(item.value().unsafeGetTensorImpl()).second) result.push_back({item.key(), item.value()});
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    if (item.value().defined() && seen.insert(item.value().unsafeGetTensorImpl()).second) {
      result.push_back({item.key(), item.value()});
    }
  }
  return result;
}

[[nodiscard]] inline std::string type_name_of(const torch::optim::Optimizer& optimizer) {
  return c10::demangle(typeid(optimizer).name());
}

[[nodiscard]] inline std::string type_name_of(const torch::optim::OptimizerOptions& options) {
  return c10::demangle(typeid(options).name());
}

/// A nested archive that shares the parent's compilation unit.
[[nodiscard]] inline torch::serialize::OutputArchive nested(torch::serialize::OutputArchive& parent) {
  return torch::serialize::OutputArchive(parent.compilation_unit());
}

inline void write_strings(torch::serialize::OutputArchive& archive, const std::string& key,
                          const std::vector<std::string>& values) {
  c10::List<std::string> list;
  for (const auto& value : values) list.push_back(value);
  archive.write(key, c10::IValue(list));
}

/// Reads a list of strings, or throws naming `what`.
[[nodiscard]] inline std::vector<std::string> read_strings(torch::serialize::InputArchive& archive,
                                                           const std::string& key, std::string_view what) {
  c10::IValue value;
  TORCHKIT_CHECK(archive.try_read(key, value) && value.isList(), "{}: the checkpoint has no {}", load_name, what);
  std::vector<std::string> result;
  for (const auto& item : value.toListRef()) {
    TORCHKIT_CHECK(item.isString(), "{}: the checkpoint's {} are not all strings", load_name, what);
    result.push_back(item.toStringRef());
  }
  return result;
}

[[nodiscard]] inline std::int64_t read_int(torch::serialize::InputArchive& archive, const std::string& key) {
  c10::IValue value;
  TORCHKIT_CHECK(archive.try_read(key, value) && value.isInt(), "{}: the checkpoint has no integer '{}'", load_name,
                 key);
  return value.toInt();
}

[[nodiscard]] inline torch::serialize::InputArchive read_nested(torch::serialize::InputArchive& archive,
                                                                const std::string& key, std::string_view what) {
  torch::serialize::InputArchive result;
  TORCHKIT_CHECK(archive.try_read(key, result), "{}: the checkpoint has no {} ('{}')", load_name, what, key);
  return result;
}

/// An in-memory copy of an object's state, written with `save(OutputArchive&)`, that can be
/// read back with `load(InputArchive&)`.
class Snapshot {
 public:
  template <class Save>
  explicit Snapshot(Save&& save) {
    torch::serialize::OutputArchive archive;
    save(archive);
    archive.save_to(bytes_);
  }
  [[nodiscard]] torch::serialize::InputArchive archive() {
    bytes_.clear();
    bytes_.seekg(0);
    torch::serialize::InputArchive archive;
    archive.load_from(bytes_);
    return archive;
  }

 private:
  std::stringstream bytes_;
};

/// Saves the optimizer's state and each group's options (LibTorch 1.13 restores neither lr nor
/// the other options of a group from its own archive).
inline void save_optimizer(torch::serialize::OutputArchive& archive, const torch::optim::Optimizer& optimizer) {
  archive.write("type", c10::IValue(type_name_of(optimizer)));
  auto state = nested(archive);
  optimizer.save(state);
  archive.write("state", state);
  std::vector<std::string> option_types;
  std::vector<std::int64_t> sizes;
  auto groups = nested(archive);
  for (std::size_t g = 0; g < optimizer.param_groups().size(); ++g) {
    const auto& group = optimizer.param_groups()[g];
    option_types.push_back(type_name_of(group.options()));
    sizes.push_back(static_cast<std::int64_t>(group.params().size()));
    auto options = nested(archive);
    group.options().serialize(options);
    groups.write(std::to_string(g), options);
  }
  write_strings(archive, "option_types", option_types);
  c10::List<std::int64_t> size_list;
  for (const auto size : sizes) size_list.push_back(size);
  archive.write("group_sizes", c10::IValue(size_list));
  archive.write("groups", groups);
}

/// Checks that the saved optimizer is of the same type with groups of the same sizes and option
/// types, and returns each group's options read into a clone of the live ones.
[[nodiscard]] inline std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> read_group_options(
    torch::serialize::InputArchive& archive, const torch::optim::Optimizer& optimizer) {
  c10::IValue type;
  TORCHKIT_CHECK(archive.try_read("type", type) && type.isString(), "{}: the checkpoint has no optimizer type",
                 load_name);
  TORCHKIT_CHECK(type.toStringRef() == type_name_of(optimizer),
                 "{}: the checkpoint holds a {} but the optimizer is a {}", load_name, type.toStringRef(),
                 type_name_of(optimizer));
  const auto option_types = read_strings(archive, "option_types", "optimizer option types");
  c10::IValue sizes;
  TORCHKIT_CHECK(archive.try_read("group_sizes", sizes) && sizes.isIntList(), "{}: the checkpoint has no group sizes",
                 load_name);
  const auto saved_sizes = sizes.toIntVector();
  const auto& groups = optimizer.param_groups();
  TORCHKIT_CHECK(saved_sizes.size() == groups.size() && option_types.size() == groups.size(),
                 "{}: the checkpoint's optimizer has {} parameter groups but the optimizer has {}", load_name,
                 saved_sizes.size(), groups.size());
  auto saved_groups = read_nested(archive, "groups", "optimizer groups");
  std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> result;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    TORCHKIT_CHECK(saved_sizes[g] == static_cast<std::int64_t>(groups[g].params().size()),
                   "{}: parameter group {} has {} tensors in the checkpoint but {} in the optimizer", load_name, g,
                   saved_sizes[g], groups[g].params().size());
    TORCHKIT_CHECK(option_types[g] == type_name_of(groups[g].options()),
                   "{}: parameter group {} has options {} in the checkpoint but {} in the optimizer", load_name, g,
                   option_types[g], type_name_of(groups[g].options()));
    auto saved = read_nested(saved_groups, std::to_string(g), "group options");
    auto options = groups[g].options().clone();
    try {
      options->serialize(saved);
    } catch (const c10::Error& error) {
      detail::fail("{}: the options of parameter group {} cannot be read: {}", load_name, g,
                   error.what_without_backtrace());
    }
    result.push_back(std::move(options));
  }
  return result;
}

/// Restores the optimizer's state and group options from `archive` (already validated by
/// read_group_options). LibTorch's own load may throw c10::Error.
inline void load_optimizer(torch::serialize::InputArchive& archive, torch::optim::Optimizer& optimizer,
                           std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> options) {
  auto state = read_nested(archive, "state", "optimizer state");
  optimizer.load(state);
  for (std::size_t g = 0; g < options.size(); ++g) optimizer.param_groups()[g].set_options(std::move(options[g]));
}

}  // namespace detail::checkpoint

/// Writes one checkpoint of a training run to `path`: the model's parameters and buffers (by
/// name), the optimizer (state and every group's options), each scheduler, and `extras` (epoch,
/// step, GradScaler, CPU random generator, metadata). The file is written beside `path` first
/// and then renamed over it, so an interrupted save leaves the previous checkpoint intact.
/// PyTorch: `torch.save({...state_dict()s...}, path)`.
///
/// @param path        the file (LibTorch's archive format, as `torch::save`)
/// @param model       a module, holder or shared_ptr
/// @param optimizer   the run's optimizer
/// @param schedulers  the run's schedulers, in a fixed order (load with the same order)
/// @param extras      epoch, step, grad_scaler, metadata, rng_state
/// @throws torchkit::Error for an empty/null model, a null scheduler, or a file that cannot be
///         written (naming the path); the previous file at `path` is then unchanged.
template <ModuleLike M>
void save_checkpoint(const std::string& path, const M& model, const torch::optim::Optimizer& optimizer,
                     std::vector<const lr::Scheduler*> schedulers = {}, const CheckpointExtras& extras = {}) {
  using namespace detail::checkpoint;
  const torch::nn::Module& module = module_of(model, save_name);
  for (std::size_t i = 0; i < schedulers.size(); ++i) {
    TORCHKIT_CHECK(schedulers[i] != nullptr, "{}: scheduler {} is null", save_name, i);
  }
  torch::serialize::OutputArchive archive;
  archive.write("torchkit_checkpoint", c10::IValue(format_version));
  {
    auto state = nested(archive);
    const auto named = named_state_of(module);
    std::vector<std::string> names;
    auto values = nested(archive);
    for (std::size_t i = 0; i < named.size(); ++i) {
      names.push_back(named[i].name);
      values.write(std::to_string(i), named[i].tensor.detach());
    }
    write_strings(state, "names", names);
    state.write("values", values);
    archive.write("model", state);
  }
  {
    auto state = nested(archive);
    save_optimizer(state, optimizer);
    archive.write("optimizer", state);
  }
  {
    auto state = nested(archive);
    std::vector<std::string> types;
    for (std::size_t i = 0; i < schedulers.size(); ++i) {
      types.push_back(schedulers[i]->type_name());
      auto one = nested(archive);
      schedulers[i]->save(one);
      state.write(std::to_string(i), one);
    }
    write_strings(state, "types", types);
    archive.write("schedulers", state);
  }
  if (extras.grad_scaler != nullptr) extras.grad_scaler->save(archive);
  archive.write("epoch", c10::IValue(extras.epoch));
  archive.write("step", c10::IValue(extras.step));
  std::vector<std::string> keys, values;
  for (const auto& [key, value] : extras.metadata) {
    keys.push_back(key);
    values.push_back(value);
  }
  write_strings(archive, "metadata_keys", keys);
  write_strings(archive, "metadata_values", values);
  if (extras.rng_state) {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    archive.write("cpu_rng_state", generator.get_state());
  }
  const std::string temporary = path + ".partial";
  try {
    archive.save_to(temporary);
  } catch (const c10::Error& error) {
    std::remove(temporary.c_str());
    detail::fail("{}: cannot write '{}': {}", save_name, path, error.what_without_backtrace());
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::remove(temporary.c_str());
    detail::fail("{}: cannot write '{}': {}", save_name, path, error.message());
  }
}

/// Restores a checkpoint written by save_checkpoint into the model, the optimizer, the
/// schedulers (same kinds, same order) and, when given, the GradScaler; returns the epoch, step
/// and metadata (and sets the CPU random generator when the file holds its state). Construct
/// everything as at the start of the run, then load: training continues bit for bit as the
/// saved run would have.
///
/// Everything is checked before anything changes: the model's parameter and buffer names,
/// shapes and dtypes, the optimizer's type, group count, group sizes and option types, the
/// schedulers' kinds and count, and each component's own validation. If a component still fails
/// while loading, the ones already loaded are put back as they were.
///
/// @param path         a file written by save_checkpoint
/// @param model        a module, holder or shared_ptr, built as in the saved run
/// @param optimizer    the run's optimizer, built as in the saved run
/// @param schedulers   the run's schedulers, in the order they were saved
/// @param grad_scaler  restored from the file when not null (the file must hold one)
/// @throws torchkit::Error for a file that cannot be read or is not a torchkit checkpoint, a
///         model, optimizer or scheduler list that differs from the saved one (naming the first
///         difference), a missing GradScaler state; nothing changes then.
template <ModuleLike M>
CheckpointExtras load_checkpoint(const std::string& path, M& model, torch::optim::Optimizer& optimizer,
                                 std::vector<lr::Scheduler*> schedulers = {}, GradScaler* grad_scaler = nullptr) {
  using namespace detail::checkpoint;
  torch::nn::Module& module = module_of(model, load_name);
  for (std::size_t i = 0; i < schedulers.size(); ++i) {
    TORCHKIT_CHECK(schedulers[i] != nullptr, "{}: scheduler {} is null", load_name, i);
  }
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& error) {
    detail::fail("{}: cannot read '{}': {}", load_name, path, error.what_without_backtrace());
  }
  c10::IValue version;
  TORCHKIT_CHECK(archive.try_read("torchkit_checkpoint", version) && version.isInt(),
                 "{}: '{}' is not a torchkit checkpoint (write it with save_checkpoint)", load_name, path);
  TORCHKIT_CHECK(version.toInt() == format_version, "{}: '{}' has checkpoint format {}, this torchkit reads {}",
                 load_name, path, version.toInt(), format_version);

  // The model: names, shapes, dtypes.
  auto model_state = read_nested(archive, "model", "model");
  const auto names = read_strings(model_state, "names", "parameter names");
  auto values = read_nested(model_state, "values", "parameter values");
  const auto live = named_state_of(module);
  std::vector<at::Tensor> saved;
  for (std::size_t i = 0; i < names.size(); ++i) {
    at::Tensor value;
    TORCHKIT_CHECK(values.try_read(std::to_string(i), value) && value.defined(),
                   "{}: the checkpoint has no value for '{}'", load_name, names[i]);
    saved.push_back(value);
  }
  for (std::size_t i = 0; i < std::min(names.size(), live.size()); ++i) {
    TORCHKIT_CHECK(names[i] == live[i].name,
                   "{}: the model's parameter/buffer {} is '{}' but the checkpoint's is '{}'; load into a model built "
                   "as the saved one",
                   load_name, i, live[i].name, names[i]);
    TORCHKIT_CHECK(saved[i].sizes() == live[i].tensor.sizes() && saved[i].scalar_type() == live[i].tensor.scalar_type(),
                   "{}: '{}' is {} {} in the checkpoint but {} {} in the model", load_name, names[i],
                   c10::toString(saved[i].scalar_type()), detail::shape_string(saved[i].sizes()),
                   c10::toString(live[i].tensor.scalar_type()), detail::shape_string(live[i].tensor.sizes()));
  }
  TORCHKIT_CHECK(names.size() == live.size(), "{}: the checkpoint has {} parameters and buffers but the model has {}",
                 load_name, names.size(), live.size());

  // The optimizer, the schedulers, the scaler: structure first.
  auto optimizer_state = read_nested(archive, "optimizer", "optimizer");
  auto group_options = read_group_options(optimizer_state, optimizer);
  auto scheduler_state = read_nested(archive, "schedulers", "schedulers");
  const auto types = read_strings(scheduler_state, "types", "scheduler types");
  TORCHKIT_CHECK(types.size() == schedulers.size(), "{}: the checkpoint has {} schedulers but {} were given",
                 load_name, types.size(), schedulers.size());
  for (std::size_t i = 0; i < types.size(); ++i) {
    TORCHKIT_CHECK(types[i] == schedulers[i]->type_name(), "{}: scheduler {} is a {} in the checkpoint but a {} here",
                   load_name, i, types[i], schedulers[i]->type_name());
  }
  CheckpointExtras extras;
  torch::serialize::InputArchive scaler_probe;
  extras.has_grad_scaler = archive.try_read("grad_scaler", scaler_probe);
  TORCHKIT_CHECK(grad_scaler == nullptr || extras.has_grad_scaler,
                 "{}: a GradScaler was given but the checkpoint holds none", load_name);
  extras.epoch = read_int(archive, "epoch");
  extras.step = read_int(archive, "step");
  const auto keys = read_strings(archive, "metadata_keys", "metadata keys");
  const auto metadata = read_strings(archive, "metadata_values", "metadata values");
  TORCHKIT_CHECK(keys.size() == metadata.size(), "{}: the checkpoint's metadata keys and values differ in number",
                 load_name);
  for (std::size_t i = 0; i < keys.size(); ++i) extras.metadata.emplace(keys[i], metadata[i]);
  at::Tensor rng;
  extras.rng_state = archive.try_read("cpu_rng_state", rng);

  // Then the loads, each component put back as it was if a later one fails.
  Snapshot optimizer_before([&](auto& out) { detail::checkpoint::save_optimizer(out, optimizer); });
  std::vector<Snapshot> schedulers_before;
  schedulers_before.reserve(schedulers.size());
  for (auto* scheduler : schedulers) schedulers_before.emplace_back([&](auto& out) { scheduler->save(out); });
  std::size_t loaded_schedulers = 0;
  try {
    load_optimizer(optimizer_state, optimizer, std::move(group_options));
    for (; loaded_schedulers < schedulers.size(); ++loaded_schedulers) {
      auto one = read_nested(scheduler_state, std::to_string(loaded_schedulers), "scheduler state");
      schedulers[loaded_schedulers]->load(one);
    }
    if (grad_scaler != nullptr) grad_scaler->load(archive);  // last: it changes nothing when it throws
  } catch (const std::exception& error) {
    for (std::size_t i = 0; i < loaded_schedulers; ++i) {
      auto before = schedulers_before[i].archive();
      schedulers[i]->load(before);
    }
    auto before = optimizer_before.archive();
    load_optimizer(before, optimizer, read_group_options(before, optimizer));
    const auto* c10_error = dynamic_cast<const c10::Error*>(&error);
    detail::fail("{}: '{}' does not fit: {}", load_name, path,
                 c10_error != nullptr ? c10_error->what_without_backtrace() : error.what());
  }
  {
    const at::NoGradGuard no_grad;
    for (std::size_t i = 0; i < live.size(); ++i) live[i].tensor.detach().copy_(saved[i]);
  }
  if (extras.rng_state) {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(rng);
  }
  return extras;
}

}  // namespace torchkit
// ---- end torchkit/checkpoint.hpp ----
// ---- begin torchkit/distributed.hpp ----
/// @file distributed.hpp
/// c10d helpers: the torchrun environment, a TCP store and a Gloo process group made from it,
/// global-norm gradient clipping over gradients sharded across ranks (FSDP / ZeRO style:
/// each rank holds some of the gradients; the norm is that of all of them together), and
/// data-parallel training (namespace torchkit::dist): broadcast_parameters, a bucketed
/// GradientReducer (DDP's gradient averaging), DistributedSampler, is_rank_zero.
///
///     auto group = torchkit::gloo_group_from_environment();   // under torchrun / tools/launch.sh
///     torchkit::dist::broadcast_parameters(model, *group);
///     torchkit::dist::GradientReducer reducer(model, *group);
///     loss.backward();
///     reducer.reduce();                                        // gradients averaged over the ranks
///     optimizer.step();
///
/// The c10d headers ship with LibTorch. Gloo's own headers do not always: the Gloo helpers
/// exist where `<gloo/algorithm.h>` is found (Debian: libgloo-dev) or TORCHKIT_WITH_GLOO is
/// defined to 1; clipping works with any group that has `allreduce` (Gloo, NCCL, MPI, yours).



#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/StringUtil.h>
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <iterator>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <ostream>
#include <streambuf>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#if __has_include(<torch/csrc/distributed/c10d/ProcessGroup.hpp>) && __has_include(<torch/csrc/distributed/c10d/TCPStore.hpp>)
/// 1 where LibTorch ships the c10d headers (ProcessGroup, TCPStore), else 0; the c10d helpers
/// exist only under 1.
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
/// 1 where LibTorch ships the c10d headers (ProcessGroup, TCPStore), else 0; the c10d helpers
/// exist only under 1.
#define TORCHKIT_HAS_C10D 0
#endif

#ifndef TORCHKIT_WITH_GLOO
#if TORCHKIT_HAS_C10D && __has_include(<gloo/algorithm.h>) && \
    __has_include(<torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>)
/// 1 when the Gloo helpers (make_gloo_group, gloo_group_from_environment, ...) are compiled: by default
/// where `<gloo/algorithm.h>` and c10d's ProcessGroupGloo.hpp are found. Define it to 0 or 1
/// before including to choose.
#define TORCHKIT_WITH_GLOO 1
#else
/// 1 when the Gloo helpers (make_gloo_group, gloo_group_from_environment, ...) are compiled: by default
/// where `<gloo/algorithm.h>` and c10d's ProcessGroupGloo.hpp are found. Define it to 0 or 1
/// before including to choose.
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
  /// Writes to_string() to `out`.
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
/// @throws torchkit::Error when the ranks do not all meet within `timeout` (one never started
///         or died, MASTER_ADDR is wrong) or rank 0 cannot listen on MASTER_PORT (in use).
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
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const char* reason = environment.rank == 0 ? "rank 0 hosts the store and waits for every rank"
                                             : "this rank connects to rank 0's store";
  try {
    auto store = detail::make_tcp_store(environment.master_addr, options);
    // LibTorch 1.13's server stops waiting for the workers at the timeout without an error
    // (2.x throws): every rank checks in, and rank 0 counts them.
    const std::string joined = "torchkit/store_from_environment/joined";
    int64_t count = store->add(joined, 1);
    while (environment.rank == 0 && count < environment.world_size) {
      TORCHKIT_CHECK(std::chrono::steady_clock::now() < deadline,
                     "store_from_environment: rank 0 of {} could not meet the other ranks at {}:{} within {} ms ({}): "
                     "{} of {} ranks arrived",
                     environment.world_size, environment.master_addr, environment.master_port, timeout.count(),
                     reason, count, environment.world_size);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      count = store->add(joined, 0);
    }
    return store;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    detail::fail("store_from_environment: rank {} of {} could not meet the other ranks at {}:{} within {} ms ({}): {}",
                 environment.rank, environment.world_size, environment.master_addr, environment.master_port,
                 timeout.count(), reason, error.what());
  }
}

#if TORCHKIT_WITH_GLOO
/// A Gloo process group (CPU tensors) of `world_size` ranks meeting through `store`; this
/// process is `rank`. A c10d::ProcessGroup in LibTorch 1.13, a c10d::Backend in 2.x; both work
/// with clip_grad_norm_. PyTorch: `dist.new_group(backend="gloo")`.
///
/// @throws torchkit::Error for a null store, world_size < 1, rank outside [0, world_size), and
///         when the other ranks do not all connect within `timeout` (one never started or died).
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
  try {
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
  } catch (const std::exception& error) {
    detail::fail("make_gloo_group: rank {} of {} could not connect to the other ranks within {} ms (a rank did not join, "
         "died, or the store is unreachable): {}",
         rank, world_size, timeout.count(), error.what());
  }
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

// ---------------------------------------------------------------------------------------------
// Data parallel (namespace torchkit::dist): one process per device, every rank the same model.
// ---------------------------------------------------------------------------------------------

namespace dist {

/// What DistributedSampler shuffles and drops; the defaults are PyTorch's.
struct DistributedSamplerOptions {
  bool shuffle = true;     ///< a new permutation every epoch (seed + epoch)
  int64_t seed = 0;        ///< the same on every rank
  bool drop_last = false;  ///< drop the tail instead of padding with indices from the start
};

/// The indices of the data set that one rank reads in an epoch, exactly those of PyTorch's
/// `torch.utils.data.DistributedSampler(dataset, num_replicas, rank, shuffle, seed, drop_last)`
/// with `set_epoch(e)`: a permutation from a generator seeded with `seed + epoch` (the
/// identity without shuffle), padded by repeating it from the start to a multiple of
/// `num_replicas` (or, with drop_last, cut to one), and every `num_replicas`-th index from
/// `rank` on. Every rank gets `size()` indices; together they cover the data set. The
/// permutation is LibTorch's CPU randperm, the same algorithm from PyTorch 1.13 to 2.x for
/// sizes below 2^32 / 20 (checked against Python 1.13's indices in tests/golden/).
///
/// @throws torchkit::Error when size < 0, num_replicas < 1 or rank is outside
///         [0, num_replicas).
///
///     torchkit::dist::DistributedSampler sampler(dataset_size, world_size, rank, {.seed = 7});
///     for (int64_t epoch = 0; epoch < epochs; ++epoch) {
///       sampler.set_epoch(epoch);
///       for (const int64_t index : sampler.indices()) { ... }
///     }
class DistributedSampler {
 public:
  /// The sampler of rank `rank` out of `num_replicas` (the world size) for a data set of `size`
  /// samples; `options` as PyTorch's keyword arguments (shuffle, seed, drop_last).
  DistributedSampler(int64_t size, int64_t num_replicas, int64_t rank, DistributedSamplerOptions options = {})
      : size_(size), num_replicas_(num_replicas), rank_(rank), options_(options) {
    TORCHKIT_CHECK(size >= 0, "DistributedSampler: the data set size must be >= 0, got {}", size);
    TORCHKIT_CHECK(num_replicas >= 1, "DistributedSampler: num_replicas must be >= 1, got {}", num_replicas);
    TORCHKIT_CHECK(rank >= 0 && rank < num_replicas,
                   "DistributedSampler: rank {} is outside [0, {}) (num_replicas = {})", rank, num_replicas,
                   num_replicas);
    if (options.drop_last && size % num_replicas != 0) {
      per_rank_ = size / num_replicas;  // Python: ceil((size - num_replicas) / num_replicas)
    } else {
      per_rank_ = size / num_replicas + (size % num_replicas != 0 ? 1 : 0);
    }
  }

  /// The epoch whose permutation indices() gives (PyTorch's `set_epoch`); any value.
  void set_epoch(int64_t epoch) noexcept { epoch_ = epoch; }
  /// The epoch set by set_epoch() (0 at first).
  [[nodiscard]] int64_t epoch() const noexcept { return epoch_; }
  /// How many indices each rank gets (Python's `len(sampler)`).
  [[nodiscard]] int64_t size() const noexcept { return per_rank_; }
  /// size() times num_replicas: the data set size after padding or dropping.
  [[nodiscard]] int64_t total_size() const noexcept { return per_rank_ * num_replicas_; }
  /// The number of ranks the data set is split among.
  [[nodiscard]] int64_t num_replicas() const noexcept { return num_replicas_; }
  /// This sampler's rank, in [0, num_replicas()).
  [[nodiscard]] int64_t rank() const noexcept { return rank_; }
  /// The options, as given.
  [[nodiscard]] const DistributedSamplerOptions& options() const noexcept { return options_; }

  /// This rank's indices for the current epoch, in the order Python yields them.
  [[nodiscard]] std::vector<int64_t> indices() const {
    std::vector<int64_t> order(static_cast<std::size_t>(size_));
    if (options_.shuffle) {
      // torch.Generator().manual_seed(seed + epoch); torch.randperm(size, generator=g)
      auto generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(options_.seed) +
                                                               static_cast<uint64_t>(epoch_));
      const at::Tensor permutation = at::randperm(size_, generator, at::TensorOptions().dtype(at::kLong));
      const int64_t* values = permutation.data_ptr<int64_t>();
      std::copy(values, values + size_, order.begin());
    } else {
      std::iota(order.begin(), order.end(), int64_t{0});
    }
    std::vector<int64_t> mine;
    mine.reserve(static_cast<std::size_t>(per_rank_));
    // Position k of the padded (or cut) list is order[k % size]: padding repeats from the start.
    for (int64_t k = rank_; k < total_size(); k += num_replicas_) {
      mine.push_back(order[static_cast<std::size_t>(k % size_)]);
    }
    return mine;
  }

 private:
  int64_t size_;
  int64_t num_replicas_;
  int64_t rank_;
  DistributedSamplerOptions options_;
  int64_t per_rank_ = 0;
  int64_t epoch_ = 0;
};

/// True in the process that should print summaries, reports and progress: RANK is unset (not
/// launched by torchrun or tools/launch.sh) or 0. Never throws; a malformed RANK counts as not
/// zero. PyTorch: `not dist.is_initialized() or dist.get_rank() == 0`.
///
///     if (torchkit::dist::is_rank_zero()) std::cout << torchkit::summary(model, {3, 32, 32});
[[nodiscard]] inline bool is_rank_zero() {
  const auto rank = torchkit::detail::get_environment("RANK");
  return !rank || rank->empty() || *rank == "0";
}

namespace detail {
struct NullBuffer : std::streambuf {
  int overflow(int c) override { return c; }
};
}  // namespace detail

/// std::cout on rank zero (see is_rank_zero), a stream that drops everything on the others:
/// print once per launch, not once per process.
///
///     torchkit::dist::rank_zero_out() << "epoch " << epoch << " loss " << loss << "\n";
[[nodiscard]] inline std::ostream& rank_zero_out() {
  if (is_rank_zero()) return std::cout;
  static detail::NullBuffer buffer;
  static std::ostream null(&buffer);
  return null;
}

/// fmt::print on rank zero only.
///
///     torchkit::dist::print("accuracy {:.1f}%\n", 100 * accuracy);
template <class... Args>
void print(fmt::format_string<Args...> format, Args&&... args) {
  if (is_rank_zero()) fmt::print(format, std::forward<Args>(args)...);
}

#if TORCHKIT_HAS_C10D

using torchkit::CollectiveGroup;
using torchkit::store_from_environment;
using torchkit::torchrun_environment;
using torchkit::TorchrunEnvironment;
#if TORCHKIT_WITH_GLOO
using torchkit::gloo_group_from_environment;
using torchkit::make_gloo_group;
#endif

/// A CollectiveGroup that can also broadcast: every c10d process group and backend.
template <class G>
concept BroadcastGroup = CollectiveGroup<G> && requires(G& group, std::vector<at::Tensor>& tensors) {
  group.broadcast(tensors, c10d::BroadcastOptions{})->wait();
};

namespace detail {

using torchkit::detail::fail;

/// Parameters (or parameters and buffers) of a module, each tensor once, registration order.
struct Entry {
  std::string name;
  at::Tensor tensor;
  bool buffer = false;
};

[[nodiscard]] inline std::vector<Entry> entries_of(const torch::nn::Module& module, bool with_buffers,
                                                   bool trainable_only) {
  std::vector<Entry> entries;
  std::unordered_set<const void*> seen;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (trainable_only && !item.value().requires_grad()) continue;
    if (seen.insert(item.value().unsafeGetTensorImpl()).second) entries.push_back({item.key(), item.value(), false});
  }
  if (with_buffers) {
    for (const auto& item : module.named_buffers(/*recurse=*/true)) {
      if (!item.value().defined()) continue;
      if (seen.insert(item.value().unsafeGetTensorImpl()).second) entries.push_back({item.key(), item.value(), true});
    }
  }
  return entries;
}

/// `4.weight parameter Float [5, 144]`: what must be equal on every rank.
[[nodiscard]] inline std::string describe(const Entry& entry) {
  return fmt::format("{} {} {} {}", entry.name, entry.buffer ? "buffer" : "parameter",
                     c10::toString(entry.tensor.scalar_type()), torchkit::detail::shape_string(entry.tensor.sizes()));
}

[[nodiscard]] inline std::vector<std::string> describe_all(const std::vector<Entry>& entries) {
  std::vector<std::string> lines;
  lines.reserve(entries.size());
  for (const auto& entry : entries) lines.push_back(describe(entry));
  return lines;
}

[[nodiscard]] inline std::string join_lines(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& line : lines) text += line + "\n";
  return text;
}

[[nodiscard]] inline std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t begin = 0;
  while (begin < text.size()) {
    const std::size_t end = text.find('\n', begin);
    lines.push_back(text.substr(begin, end - begin));
    begin = end == std::string::npos ? text.size() : end + 1;
  }
  return lines;
}

/// Where this rank's model first differs from the root's; empty when it does not.
[[nodiscard]] inline std::string first_difference(const std::vector<std::string>& mine,
                                                  const std::vector<std::string>& root, int root_rank) {
  const std::size_t common = std::min(mine.size(), root.size());
  for (std::size_t k = 0; k < common; ++k) {
    if (mine[k] != root[k]) {
      return fmt::format("entry {} is '{}' here but '{}' on rank {}", k, mine[k], root[k], root_rank);
    }
  }
  if (mine.size() == root.size()) return {};
  if (mine.size() > root.size()) {
    return fmt::format("this rank has {} parameters and buffers, rank {} has {}; the first extra one here is '{}'",
                       mine.size(), root_rank, root.size(), mine[common]);
  }
  return fmt::format("this rank has {} parameters and buffers, rank {} has {}; the first one missing here is '{}'",
                     mine.size(), root_rank, root.size(), root[common]);
}

/// FNV-1a, 62 bits (so that its negation fits an int64 tensor).
[[nodiscard]] inline int64_t fingerprint(const std::string& text) {
  uint64_t hash = 1469598103934665603ULL;
  for (const char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ULL;
  }
  return static_cast<int64_t>(hash >> 2);
}

/// Tensors of one dtype and device, flattened one after another into `flat` (plus `extra`
/// trailing elements): what one collective call moves.
struct Bucket {
  std::vector<std::size_t> members;  ///< indices into the entry list
  std::vector<int64_t> offsets;      ///< of each member in flat
  int64_t elements = 0;              ///< members' elements (flat has more when extra > 0)
  int64_t bytes = 0;
  at::Tensor flat;
  at::Tensor grads;  ///< GradientReducer: the reduced gradients, which the parameters' .grad share
};

/// Buckets of at most `cap` bytes (a bigger tensor gets one of its own), one dtype and device
/// each, filled in the order of `order`; `extra` elements are appended to each flat buffer.
[[nodiscard]] inline std::vector<Bucket> assign_buckets(const std::vector<at::Tensor>& tensors,
                                                        const std::vector<std::size_t>& order, int64_t cap,
                                                        bool flags) {
  std::vector<Bucket> buckets;
  std::vector<std::pair<std::pair<at::ScalarType, at::Device>, std::size_t>> open;  // key -> bucket
  for (const std::size_t index : order) {
    const at::Tensor& tensor = tensors[index];
    const std::pair<at::ScalarType, at::Device> key{tensor.scalar_type(), tensor.device()};
    auto found = std::find_if(open.begin(), open.end(), [&](const auto& item) { return item.first == key; });
    if (found == open.end()) {
      buckets.emplace_back();
      open.emplace_back(key, buckets.size() - 1);
      found = std::prev(open.end());
    }
    Bucket& bucket = buckets[found->second];
    bucket.members.push_back(index);
    bucket.offsets.push_back(bucket.elements);
    bucket.elements += tensor.numel();
    bucket.bytes += tensor.numel() * static_cast<int64_t>(tensor.element_size());
    if (bucket.bytes >= cap) open.erase(found);  // full: the next tensor of this kind opens another
  }
  for (auto& bucket : buckets) {
    const at::Tensor& first = tensors[bucket.members.front()];
    const int64_t extra = flags ? static_cast<int64_t>(bucket.members.size()) : 0;
    bucket.flat = at::empty({bucket.elements + extra}, first.options().requires_grad(false));
  }
  return buckets;
}

/// Waits for every started collective, then rethrows the first failure as an Error.
template <class Works>
void wait_all(Works& works, std::string_view function, int rank, int size) {
  std::string failure;
  for (auto& wait : works) {
    try {
      wait();
    } catch (const std::exception& error) {
      if (failure.empty()) failure = error.what();
    }
  }
  works.clear();
  if (!failure.empty()) {
    fail("{}: a collective failed on rank {} of {} (another rank died, did not take part, or the group's timeout "
         "passed); nothing was changed: {}",
         function, rank, size, failure);
  }
}

/// Starts `tensor`'s allreduce (or, with root >= 0, broadcast from root) and returns its wait.
template <class G>
[[nodiscard]] std::function<void()> start(G& group, const at::Tensor& tensor, std::optional<c10d::ReduceOp> op,
                                          int root = -1) {
  std::vector<at::Tensor> tensors{tensor};
  if (root >= 0) {
    c10d::BroadcastOptions options;
    options.rootRank = root;
    auto work = group.broadcast(tensors, options);
    auto held = std::make_shared<decltype(work)>(std::move(work));
    return [held] { (*held)->wait(); };
  } else {
    c10d::AllreduceOptions options;
    if (op) options.reduceOp = *op;
    auto work = group.allreduce(tensors, options);
    auto held = std::make_shared<decltype(work)>(std::move(work));
    return [held] { (*held)->wait(); };
  }
}

}  // namespace detail

/// Makes every rank's model equal to rank `root`'s: broadcasts all parameters and buffers
/// (batch-norm statistics included), flattened into one buffer per dtype and device, so that
/// data-parallel training starts from the same weights everywhere. First checks that every
/// rank holds the same structure (names, kinds, dtypes and shapes, registration order); if one
/// differs, every rank throws and no tensor is changed. A collective: every rank calls it.
/// PyTorch: what `DistributedDataParallel(model)` does at construction.
///
/// @throws torchkit::Error when root is outside [0, group size), a parameter or buffer is
///         sparse, the models differ across ranks (this rank's error names the first
///         difference), or a collective fails (a rank died or the group's timeout passed).
///
///     auto group = torchkit::dist::gloo_group_from_environment();
///     torchkit::dist::broadcast_parameters(model, *group);
template <ModuleLike M, BroadcastGroup G>
void broadcast_parameters(M& model, G& group, int root = 0) {
  constexpr std::string_view function = "broadcast_parameters";
  const int rank = group.getRank();
  const int size = group.getSize();
  TORCHKIT_CHECK(root >= 0 && root < size, "{}: root {} is outside [0, {}) (the ranks of the group)", function, root,
                 size);
  const auto entries = detail::entries_of(module_of(model), /*with_buffers=*/true, /*trainable_only=*/false);
  for (const auto& entry : entries) {
    TORCHKIT_CHECK(entry.tensor.layout() == at::kStrided, "{}: {} '{}' is not dense (layout {})", function,
                   entry.buffer ? "buffer" : "parameter", entry.name, c10::str(entry.tensor.layout()));
  }
  const at::NoGradGuard no_grad;
  const at::Device device = entries.empty() ? at::Device(at::kCPU) : entries.front().tensor.device();
  const auto options = at::TensorOptions().device(device);
  std::vector<std::function<void()>> works;
  // 1. The root's structure, to every rank.
  const auto mine = detail::describe_all(entries);
  const std::string text = detail::join_lines(mine);
  at::Tensor length = at::full({1}, static_cast<int64_t>(text.size()), options.dtype(at::kLong));
  works.push_back(detail::start(group, length, std::nullopt, root));
  detail::wait_all(works, function, rank, size);
  const int64_t root_length = length.to(at::kCPU).item<int64_t>();
  at::Tensor bytes = at::empty({root_length}, options.dtype(at::kByte));
  if (rank == root) {
    bytes.copy_(at::from_blob(const_cast<char*>(text.data()), {root_length}, at::kByte));
  }
  works.push_back(detail::start(group, bytes, std::nullopt, root));
  detail::wait_all(works, function, rank, size);
  const at::Tensor root_bytes = bytes.to(at::kCPU).contiguous();
  const std::string root_text(reinterpret_cast<const char*>(root_bytes.data_ptr<uint8_t>()),
                              static_cast<std::size_t>(root_length));
  const std::string difference = detail::first_difference(mine, detail::split_lines(root_text), root);
  // 2. Every rank learns which ranks differ, so that all of them throw.
  at::Tensor differs = at::zeros({size}, options.dtype(at::kLong));
  if (!difference.empty()) differs[rank] = 1;
  works.push_back(detail::start(group, differs, c10d::ReduceOp::SUM));
  detail::wait_all(works, function, rank, size);
  const at::Tensor flags = differs.to(at::kCPU);
  std::vector<int> differing;
  for (int r = 0; r < size; ++r) {
    if (flags[r].item<int64_t>() != 0) differing.push_back(r);
  }
  if (!differing.empty()) {
    std::string ranks;
    for (const int r : differing) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
    if (!difference.empty()) {
      detail::fail("{}: the model on rank {} differs from rank {}'s: {}; no parameter was changed on any rank",
                   function, rank, root, difference);
    }
    detail::fail("{}: the model on rank(s) {} differs from rank {}'s in the names, dtypes or shapes of its parameters "
                 "and buffers (that rank's error names the difference); no parameter was changed on any rank",
                 function, ranks, root);
  }
  if (entries.empty()) return;
  // 3. The values, one flat buffer per dtype and device (at most 25 MB each).
  std::vector<at::Tensor> tensors;
  std::vector<std::size_t> order;
  for (std::size_t k = 0; k < entries.size(); ++k) {
    tensors.push_back(entries[k].tensor);
    order.push_back(k);
  }
  auto buckets = detail::assign_buckets(tensors, order, int64_t{25} << 20, /*flags=*/false);
  for (auto& bucket : buckets) {
    if (rank == root) {
      for (std::size_t m = 0; m < bucket.members.size(); ++m) {
        const at::Tensor& tensor = tensors[bucket.members[m]];
        bucket.flat.narrow(0, bucket.offsets[m], tensor.numel()).copy_(tensor.reshape({-1}));
      }
    }
    works.push_back(detail::start(group, bucket.flat, std::nullopt, root));
  }
  detail::wait_all(works, function, rank, size);
  if (rank == root) return;
  for (const auto& bucket : buckets) {
    for (std::size_t m = 0; m < bucket.members.size(); ++m) {
      at::Tensor tensor = tensors[bucket.members[m]];
      tensor.copy_(bucket.flat.narrow(0, bucket.offsets[m], tensor.numel()).view(tensor.sizes()));
    }
  }
}

/// broadcast_parameters with the group held by pointer, as make_gloo_group returns it.
template <ModuleLike M, BroadcastGroup G>
void broadcast_parameters(M& model, const c10::intrusive_ptr<G>& group, int root = 0) {
  TORCHKIT_CHECK(group, "broadcast_parameters: the process group is null");
  broadcast_parameters(model, *group, root);
}

/// How GradientReducer buckets and averages.
struct ReducerOptions {
  /// Gradients are flattened into buffers of about this many bytes (a larger tensor gets one
  /// of its own), one all-reduce each; PyTorch's `bucket_cap_mb = 25`.
  int64_t bucket_bytes = int64_t{25} << 20;
  /// Divide the summed gradients by the number of ranks (false: keep the sum).
  bool average = true;
  /// false: a trainable parameter without a gradient on some rank is an error (on every
  /// rank). true (DDP's `find_unused_parameters=True`): it counts as a zero gradient there;
  /// a parameter without a gradient on every rank keeps none.
  bool find_unused_parameters = false;
  /// Gradient accumulation (DDP's `no_sync`): reduce() communicates on every k-th call only;
  /// the k - 1 calls before just count (the gradients keep accumulating locally).
  int64_t accumulation_steps = 1;
};

/// Averages the gradients of a model across the ranks of a group after `backward`, as
/// PyTorch's `DistributedDataParallel` does: the trainable parameters are assigned once, in
/// reverse registration order, to buckets of about `bucket_bytes` (one dtype and device each);
/// reduce() copies each bucket's gradients into one flat buffer, starts one SUM all-reduce
/// per bucket (all in flight together), waits, and writes the average back in one pass per
/// bucket. Each bucket carries one extra element per parameter saying whether this rank has
/// its gradient, so every rank sees the same unused parameters and acts the same. Gradients
/// are only written after every bucket arrived and was checked: a failure leaves them as they
/// were.
///
/// After reduce(), every gradient shares the reducer's gradient buffer (DDP's
/// `gradient_as_bucket_view`, without view tracking): zeroed in place and accumulated by the
/// next backward, it is packed with one copy per bucket. A gradient that was replaced (set to
/// none, assigned) is copied and pointed at the buffer again. The gradient tensor object is
/// thus replaced by reduce(); read `p.grad()` afresh, as optimizers do.
///
/// The constructor is a collective (it checks that every rank has the same trainable
/// parameters); so is each communicating reduce(). The group must outlive the reducer, unless
/// passed as an intrusive_ptr. After reduce() every rank holds the same gradients: clip them
/// with the one-process clip_grad_norm_(model, ...), then step.
///
/// @throws torchkit::Error when bucket_bytes <= 0 or accumulation_steps < 1, or the trainable
///         parameters differ across ranks (on every rank; run broadcast_parameters first).
///
///     torchkit::dist::broadcast_parameters(model, *group);
///     torchkit::dist::GradientReducer reducer(model, *group);
///     loss.backward();
///     reducer.reduce();
///     optimizer.step();
class GradientReducer {
 public:
  template <ModuleLike M, CollectiveGroup G>
  GradientReducer(M& model, G& group, ReducerOptions options = {})
      : GradientReducer(module_of(model), {group.getRank(), group.getSize()}, options,
                        [&group](const at::Tensor& tensor, c10d::ReduceOp op) {
                          return detail::start(group, tensor, op);
                        }) {}

  template <ModuleLike M, CollectiveGroup G>
  GradientReducer(M& model, const c10::intrusive_ptr<G>& group, ReducerOptions options = {})
      : GradientReducer(module_of(model), rank_and_size(group), options,
                        [group](const at::Tensor& tensor, c10d::ReduceOp op) {
                          return detail::start(*group, tensor, op);
                        }) {}

  /// After backward: averages (or sums) every trainable parameter's gradient across the ranks.
  /// With accumulation_steps = k, only every k-th call communicates; the others return false
  /// at once. Returns true when the gradients were reduced (step the optimizer then).
  ///
  /// @throws torchkit::Error when a gradient is sparse or its shape, dtype or device is not its
  ///         parameter's (this rank only: the others then wait until the group's timeout), when
  ///         a parameter has no gradient on some rank and find_unused_parameters is false
  ///         (every rank), or a collective fails. No gradient is changed then.
  ///
  ///     loss.backward();
  ///     if (reducer.reduce()) optimizer.step();
  bool reduce() {
    constexpr std::string_view function = "GradientReducer::reduce";
    if (++calls_ < options_.accumulation_steps) return false;
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const at::Tensor& param = params_[k];
      const at::Tensor& grad = param.grad();
      if (!grad.defined()) continue;
      TORCHKIT_CHECK(grad.layout() == at::kStrided, "{}: the gradient of '{}' is sparse; only dense gradients are "
                     "reduced; no gradient was changed", function, names_[k]);
      TORCHKIT_CHECK(grad.sizes() == param.sizes() && grad.scalar_type() == param.scalar_type() &&
                         grad.device() == param.device(),
                     "{}: the gradient of '{}' is {} {} on {}, its parameter {} {} on {}; no gradient was changed",
                     function, names_[k], c10::toString(grad.scalar_type()),
                     torchkit::detail::shape_string(grad.sizes()), grad.device().str(),
                     c10::toString(param.scalar_type()), torchkit::detail::shape_string(param.sizes()),
                     param.device().str());
    }
    calls_ = 0;
    const at::NoGradGuard no_grad;
    std::vector<std::function<void()>> works;
    // backed[b][m]: the gradient already lives in bucket b's gradient buffer (after an earlier
    // reduce(), while it is zeroed and accumulated in place): no per-tensor copy needed.
    std::vector<std::vector<bool>> backed(buckets_.size());
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      auto& bucket = buckets_[b];
      const auto count = static_cast<int64_t>(bucket.members.size());
      std::vector<double> present(bucket.members.size());
      bool all_backed = true;
      for (std::size_t m = 0; m < bucket.members.size(); ++m) {
        const at::Tensor& grad = params_[bucket.members[m]].grad();
        backed[b].push_back(in_buffer(grad, bucket, m));
        all_backed = all_backed && backed[b].back();
        present[m] = grad.defined() ? 1 : 0;
      }
      if (all_backed) {
        bucket.flat.narrow(0, 0, bucket.elements).copy_(bucket.grads);  // one copy for the bucket
      } else {
        for (std::size_t m = 0; m < bucket.members.size(); ++m) {
          const at::Tensor& grad = params_[bucket.members[m]].grad();
          at::Tensor slice = bucket.flat.narrow(0, bucket.offsets[m], params_[bucket.members[m]].numel());
          if (grad.defined()) {
            slice.view(grad.sizes()).copy_(grad);
          } else {
            slice.zero_();
          }
        }
      }
      bucket.flat.narrow(0, bucket.elements, count).copy_(at::tensor(present, at::TensorOptions().dtype(at::kDouble)));
      works.push_back(launch_(bucket.flat, c10d::ReduceOp::SUM));
    }
    detail::wait_all(works, function, rank_, size_);
    // Every rank now sees the same counts: check them all before writing any gradient.
    std::vector<std::vector<int64_t>> counts;
    for (const auto& bucket : buckets_) {
      const auto count = static_cast<int64_t>(bucket.members.size());
      const at::Tensor flags = bucket.flat.narrow(0, bucket.elements, count).to(at::kCPU, at::kDouble).contiguous();
      const double* values = flags.data_ptr<double>();
      counts.emplace_back();
      for (int64_t m = 0; m < count; ++m) counts.back().push_back(std::llround(values[m]));
    }
    if (!options_.find_unused_parameters) {
      for (std::size_t b = 0; b < buckets_.size(); ++b) {
        for (std::size_t m = 0; m < buckets_[b].members.size(); ++m) {
          const int64_t with = counts[b][m];
          if (with == size_) continue;
          const std::size_t k = buckets_[b].members[m];
          detail::fail("{}: parameter '{}' has no gradient on {} of {} ranks (this rank, {}: {}); it took no part in "
                       "the loss there. Freeze it, or pass find_unused_parameters = true to count it as zero (as "
                       "DDP does); no gradient was changed on any rank",
                       function, names_[k], size_ - with, size_, rank_,
                       params_[k].grad().defined() ? "has one" : "has none");
        }
      }
    }
    // The result into each bucket's gradient buffer in one pass; gradients not yet living there
    // are pointed at it (parameters no rank has a gradient for keep none).
    const at::Tensor divisor = at::scalar_tensor(static_cast<double>(size_), at::kDouble);
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      auto& bucket = buckets_[b];
      const at::Tensor summed = bucket.flat.narrow(0, 0, bucket.elements);
      if (options_.average) {
        at::div_out(bucket.grads, summed, divisor);
      } else {
        bucket.grads.copy_(summed);
      }
      for (std::size_t m = 0; m < bucket.members.size(); ++m) {
        if (counts[b][m] == 0 || backed[b][m]) continue;
        at::Tensor param = params_[bucket.members[m]];
        const at::Tensor place = bucket.grads.narrow(0, bucket.offsets[m], param.numel()).view(param.sizes());
        at::Tensor grad = at::empty({0}, place.options());
        grad.set_(place.storage(), place.storage_offset(), place.sizes(), place.strides());
        param.mutable_grad() = grad;
      }
    }
    return true;
  }

  /// How many buckets (all-reduce calls per reduce()).
  [[nodiscard]] int64_t buckets() const noexcept { return static_cast<int64_t>(buckets_.size()); }
  /// The parameter names of each bucket, in the order they are reduced.
  [[nodiscard]] std::vector<std::vector<std::string>> bucket_names() const {
    std::vector<std::vector<std::string>> names;
    for (const auto& bucket : buckets_) {
      names.emplace_back();
      for (const std::size_t k : bucket.members) names.back().push_back(names_[k]);
    }
    return names;
  }
  /// reduce() calls since the last communicating one (0 .. accumulation_steps - 1).
  [[nodiscard]] int64_t pending() const noexcept { return calls_; }
  [[nodiscard]] const ReducerOptions& options() const noexcept { return options_; }

 private:
  using Launch = std::function<std::function<void()>(const at::Tensor&, c10d::ReduceOp)>;

  template <class G>
  static std::pair<int, int> rank_and_size(const c10::intrusive_ptr<G>& group) {
    TORCHKIT_CHECK(group, "GradientReducer: the process group is null");
    return {group->getRank(), group->getSize()};
  }

  GradientReducer(torch::nn::Module& module, std::pair<int, int> rank_and_size, ReducerOptions options, Launch launch)
      : options_(options), rank_(rank_and_size.first), size_(rank_and_size.second), launch_(std::move(launch)) {
    constexpr std::string_view function = "GradientReducer";
    TORCHKIT_CHECK(options.bucket_bytes > 0, "{}: bucket_bytes must be > 0, got {}", function, options.bucket_bytes);
    TORCHKIT_CHECK(options.accumulation_steps >= 1, "{}: accumulation_steps must be >= 1, got {}", function,
                   options.accumulation_steps);
    const auto entries = detail::entries_of(module, /*with_buffers=*/false, /*trainable_only=*/true);
    for (const auto& entry : entries) {
      params_.push_back(entry.tensor);
      names_.push_back(entry.name);
    }
    // The same trainable parameters everywhere: max and min of a fingerprint and the count.
    const int64_t print = detail::fingerprint(detail::join_lines(detail::describe_all(entries)));
    const auto count = static_cast<int64_t>(entries.size());
    const at::Device device = params_.empty() ? at::Device(at::kCPU) : params_.front().device();
    at::Tensor check = at::tensor(std::vector<int64_t>{print, -print, count, -count}, at::kLong).to(device);
    std::vector<std::function<void()>> works;
    works.push_back(launch_(check, c10d::ReduceOp::MAX));
    detail::wait_all(works, function, rank_, size_);
    const at::Tensor seen = check.to(at::kCPU);
    const int64_t* values = seen.data_ptr<int64_t>();
    TORCHKIT_CHECK(values[0] == -values[1] && values[2] == -values[3],
                   "{}: the trainable parameters differ across the ranks (names, dtypes or shapes; this rank has {}, "
                   "the ranks have between {} and {}); make the models equal and call broadcast_parameters, which "
                   "names the difference",
                   function, count, -values[3], values[2]);
    std::vector<std::size_t> order(params_.size());
    std::iota(order.rbegin(), order.rend(), std::size_t{0});  // reverse registration order
    buckets_ = detail::assign_buckets(params_, order, options.bucket_bytes, /*flags=*/true);
    for (auto& bucket : buckets_) bucket.grads = at::zeros({bucket.elements}, bucket.flat.options());
  }

  /// Whether `grad` is member m's place in the bucket's gradient buffer (set by an earlier reduce).
  [[nodiscard]] bool in_buffer(const at::Tensor& grad, const detail::Bucket& bucket, std::size_t m) const {
    if (!grad.defined() || !grad.has_storage() || !grad.storage().is_alias_of(bucket.grads.storage())) return false;
    const at::Tensor& param = params_[bucket.members[m]];
    return grad.storage_offset() == bucket.grads.storage_offset() + bucket.offsets[m] &&
           grad.sizes() == param.sizes() && grad.is_contiguous();
  }

  ReducerOptions options_;
  int rank_;
  int size_;
  Launch launch_;
  std::vector<at::Tensor> params_;
  std::vector<std::string> names_;
  std::vector<detail::Bucket> buckets_;
  int64_t calls_ = 0;
};

/// One-shot form of GradientReducer: buckets and averages `model`'s gradients across `group`
/// (a collective). Building the buckets each call costs a little; keep a GradientReducer in a
/// training loop.
///
/// @throws torchkit::Error as GradientReducer and GradientReducer::reduce.
///
///     loss.backward();
///     torchkit::dist::allreduce_gradients(model, *group);
template <ModuleLike M, CollectiveGroup G>
void allreduce_gradients(M& model, G& group, ReducerOptions options = {}) {
  TORCHKIT_CHECK(options.accumulation_steps == 1,
                 "allreduce_gradients: accumulation_steps must be 1 in the one-shot form, got {}; keep a "
                 "GradientReducer for accumulation",
                 options.accumulation_steps);
  GradientReducer reducer(model, group, options);
  (void)reducer.reduce();
}

#endif  // TORCHKIT_HAS_C10D

}  // namespace dist

}  // namespace torchkit
// ---- end torchkit/distributed.hpp ----
// ---- begin torchkit/format.hpp ----
/// @file format.hpp
/// torchkit::Shape, a tensor shape that formats as Python prints it.
///
/// Every printable torchkit type (Summary, FreezeReport, NamePattern, PatternList, MemoryStats,
/// ClipGrad, OneHot, every scheduler of torchkit::lr) formats with `{fmt}` through its
/// `to_string()` wherever its own header is included: the formatter is in
/// detail/formatter.hpp, and each type is marked next to its definition. This header is only
/// needed for Shape; it still includes the headers of those types, so that code which included
/// it for them compiles as before.
///
///     fmt::print("{}\n", torchkit::summary(model, {3, 224, 224}));
///     fmt::print("input {}\n", torchkit::Shape(batch.sizes()));      // input [1, 3, 224, 224]
///
/// The string format spec applies to the text, so `{:>40}` pads a short text such as a
/// MemoryStats line.


#include <c10/util/ArrayRef.h>

#include <string>

namespace torchkit {

/// A tensor shape (or any list of sizes) that formats as Python prints a `torch.Size` list:
/// `[2, 3, 224, 224]`. It refers to the sizes it was given; keep those alive while formatting.
///
///     fmt::print("{}", torchkit::Shape(tensor.sizes()));   // [2, 3]
struct Shape {
  c10::IntArrayRef sizes;  ///< the sizes to print (not owned)
  /// Refers to `sizes_to_print`, which must outlive the Shape.
  explicit Shape(c10::IntArrayRef sizes_to_print) noexcept : sizes(sizes_to_print) {}
  /// `[2, 3, 224, 224]`; `[]` for a 0-d tensor.
  [[nodiscard]] std::string to_string() const { return detail::shape_string(sizes); }
};

namespace detail {
/// Shape formats with `{fmt}` as its to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<Shape> = true;
}  // namespace detail

}  // namespace torchkit
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

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace torchkit {

/// How to_mat reads a 3-d tensor: `[H, W, C]`, `[C, H, W]`, or `automatic` (decided by which
/// end dimension is a channel count of 1, 3 or 4; an error when both or neither are).
enum class ImageLayout {
  automatic,  ///< from the shape
  hwc,        ///< `[H, W, C]`
  chw,        ///< `[C, H, W]`
  Auto = automatic,  ///< the earlier spelling, kept so that existing code compiles
  HWC = hwc,         ///< the earlier spelling, kept so that existing code compiles
  CHW = chw,         ///< the earlier spelling, kept so that existing code compiles
};

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
  const auto element = static_cast<std::int64_t>(mat.elemSize1());
  const auto row_step = static_cast<std::int64_t>(mat.step[0]);
  TORCHKIT_CHECK(row_step % element == 0,
                 "{}: the Mat's row step of {} bytes is not a multiple of its element size {}", function,
                 row_step, element);
  const std::int64_t channels = mat.channels();
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

/// images_to_batch for Mats of one channel count and one size (or sizes a resize / center_crop
/// makes equal): `[N, C, H, W]`, each Mat read in place.
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

/// letterbox for a `cv::Mat` (CV_8U or CV_32F, 1, 3 or 4 channels, any step), read in place: the
/// detector's `letterbox(cv2.imread(path), (640, 640))` + to-tensor lines in one pass.
///
/// @throws Error for an empty Mat, another depth or channel count, and everything the tensor
///         letterbox rejects.
///
///     cv::Mat frame = cv::imread("street.jpg");
///     auto boxed = torchkit::letterbox(frame, {.image = {.bgr_to_rgb = true}});  // [1, 3, 640, 640]
///     auto boxes = boxed.to_original(detections);                              // frame pixels
[[nodiscard]] inline Letterbox letterbox(const cv::Mat& image, const LetterboxOptions& options = {}) {
  detail::check_image_mat("letterbox", image, "the Mat");
  const at::Tensor view = detail::mat_view("letterbox", image);
  return detail::letterbox_impl(view, options);
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
/// @param layout      how to read a 3-d tensor; `automatic` looks for the channel count (1, 3 or 4) at
///                    the end, then at the front, and throws when both ends could be channels.
/// @returns CV_8U for uint8 and bool, CV_8S, CV_16S, CV_32S, CV_64F for int8, int16, int32,
///          double, and CV_32F for float, half and bfloat16; as many channels as the tensor has.
/// @throws Error for an undefined or empty tensor, a batch of more than one image, an ambiguous
///         or unsupported shape, more than CV_CN_MAX channels, or an int64 tensor.
///
///     cv::Mat shown = torchkit::to_mat(batch.mul(255).clamp(0, 255).to(at::kByte));
[[nodiscard]] inline cv::Mat to_mat(const at::Tensor& chw_or_hwc, ImageLayout layout = ImageLayout::automatic) {
  TORCHKIT_CHECK(chw_or_hwc.defined(), "to_mat: the tensor is undefined");
  at::Tensor image = chw_or_hwc;
  const std::string shape = detail::shape_string(image.sizes());
  const auto is_channel_count = [](std::int64_t size) { return size == 1 || size == 3 || size == 4; };
  if (image.dim() == 4) {
    TORCHKIT_CHECK(image.size(0) == 1,
                   "to_mat: the tensor is a batch of {} images (shape {}); expected one image (take batch[i])",
                   image.size(0), shape);
    image = image.select(0, 0);
    if (layout == ImageLayout::automatic) {
      layout = ImageLayout::chw;  // a batch is [N, C, H, W]
    }
  } else if (image.dim() == 2) {
    TORCHKIT_CHECK(layout != ImageLayout::chw, "to_mat: a 2-d tensor (shape {}) cannot be [C, H, W]", shape);
    image = image.unsqueeze(-1);
    layout = ImageLayout::hwc;
  }
  TORCHKIT_CHECK(image.dim() == 3,
                 "to_mat: the tensor has shape {}; expected an image [H, W, C], [C, H, W], [1, C, H, W] or [H, W]",
                 shape);
  if (layout == ImageLayout::automatic) {
    const bool channels_last = is_channel_count(image.size(2));
    const bool channels_first = is_channel_count(image.size(0));
    TORCHKIT_CHECK(channels_last != channels_first,
                   "to_mat: cannot tell the channels of shape {}: {}; pass ImageLayout::hwc or ImageLayout::chw",
                   shape,
                   channels_last ? "both [H, W, C] and [C, H, W] fit"
                                 : "neither end is a channel count of 1, 3 or 4");
    layout = channels_last ? ImageLayout::hwc : ImageLayout::chw;
  }
  if (layout == ImageLayout::chw) {
    image = image.permute({1, 2, 0});
  }
  const std::int64_t height = image.size(0);
  const std::int64_t width = image.size(1);
  const std::int64_t channels = image.size(2);
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
