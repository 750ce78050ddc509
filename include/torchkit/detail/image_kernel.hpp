#pragma once
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

#include <torchkit/detail/clip_kernels.hpp>

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
