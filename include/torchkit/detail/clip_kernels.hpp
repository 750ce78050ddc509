#pragma once
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

#include <torchkit/detail/config.hpp>

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
