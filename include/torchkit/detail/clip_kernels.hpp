#pragma once
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
