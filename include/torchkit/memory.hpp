#pragma once
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

#include <torchkit/detail/config.hpp>
#include <torchkit/detail/cuda_memory.hpp>
#include <torchkit/error.hpp>

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
