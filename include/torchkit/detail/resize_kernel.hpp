#pragma once
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

#include <torchkit/detail/clip_kernels.hpp>
#include <torchkit/detail/image_kernel.hpp>

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
