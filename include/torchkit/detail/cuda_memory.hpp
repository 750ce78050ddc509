#pragma once
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

#include <torchkit/detail/config.hpp>

#if TORCHKIT_WITH_CUDA

#include <torchkit/detail/cuda_driver.hpp>
#include <torchkit/error.hpp>

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
