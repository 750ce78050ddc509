#pragma once
/// @file detail/autocast.hpp
/// The autocast switches of LibTorch, one spelling for every supported version (amp.hpp's
/// AutocastScope). LibTorch 1.13 has a function per device (`set_cpu_enabled`,
/// `set_autocast_cpu_dtype`; CUDA is the unnamed `set_enabled` / `set_autocast_gpu_dtype`);
/// 2.x takes the device type (`set_autocast_enabled(device, on)`, `set_autocast_dtype(device,
/// dtype)`) and deprecates the per-device names (2.4 on). The cache and nesting calls are the
/// same in both.

#include <torchkit/detail/config.hpp>

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
