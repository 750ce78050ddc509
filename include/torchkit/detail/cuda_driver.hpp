#pragma once
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
