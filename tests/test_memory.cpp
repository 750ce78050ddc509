// Tests for memory.hpp: empty_cache, memory_stats, reset_peak_memory_stats, MemoryStats.
#include <torchkit/memory.hpp>

#include "test_support.hpp"

#include <sstream>
#include <string>

namespace {

using torchkit::MemoryStats;
using torchkit::test::message_of;

constexpr std::int64_t kMiB = 1024 * 1024;

void check_contains(const std::string& message, const std::vector<std::string>& parts) {
  for (const auto& part : parts) {
    CHECK_MESSAGE(message.find(part) != std::string::npos, "'" << part << "' missing from: " << message);
  }
}

}  // namespace

TEST_CASE("MemoryStats prints sizes in binary units") {
  const MemoryStats stats{512, 2 * kMiB, 1536, 3 * 1024 * kMiB};
  const std::string expected = "allocated 512 B (peak 1.50 KiB), reserved 2.00 MiB (peak 3.00 GiB)";
  CHECK(stats.to_string() == expected);
  std::ostringstream stream;
  stream << stats;
  CHECK(stream.str() == expected);
  CHECK(MemoryStats{}.to_string() == "allocated 0 B (peak 0 B), reserved 0 B (peak 0 B)");

  CHECK(torchkit::detail::format_bytes(1023) == "1023 B");
  CHECK(torchkit::detail::format_bytes(1024) == "1.00 KiB");
  CHECK(torchkit::detail::format_bytes(kMiB + kMiB / 4) == "1.25 MiB");
  CHECK(torchkit::detail::format_bytes(5 * 1024 * 1024 * kMiB) == "5.00 TiB");
  CHECK(torchkit::detail::format_bytes(-2048) == "-2.00 KiB");

  CHECK(MemoryStats{1, 2, 3, 4} == MemoryStats{1, 2, 3, 4});
  CHECK_FALSE(MemoryStats{1, 2, 3, 4} == MemoryStats{1, 2, 3, 5});
}

#if !TORCHKIT_WITH_CUDA

TEST_CASE("without CUDA: empty_cache does nothing, the statistics throw a clear error") {
  CHECK_NOTHROW(torchkit::empty_cache());
  CHECK_NOTHROW(torchkit::empty_cache());

  check_contains(message_of<torchkit::Error>([] { (void)torchkit::memory_stats(); }),
                 {"memory_stats(device=-1)", "CUDA is not available", "TORCHKIT_WITH_CUDA"});
  check_contains(message_of<torchkit::Error>([] { (void)torchkit::memory_stats(3); }),
                 {"memory_stats(device=3)", "CUDA is not available"});
  check_contains(message_of<torchkit::Error>([] { torchkit::reset_peak_memory_stats(); }),
                 {"reset_peak_memory_stats(device=-1)", "CUDA is not available"});
  check_contains(message_of<torchkit::Error>([] { torchkit::reset_peak_memory_stats(1); }),
                 {"reset_peak_memory_stats(device=1)"});
}

#else  // TORCHKIT_WITH_CUDA

TEST_CASE("with CUDA but no GPU, the statistics throw a clear error") {
  if (c10::cuda::device_count() > 0) {
    return;
  }
  CHECK_NOTHROW(torchkit::empty_cache());
  check_contains(message_of<torchkit::Error>([] { (void)torchkit::memory_stats(); }),
                 {"memory_stats(device=-1)", "no GPU is visible"});
  check_contains(message_of<torchkit::Error>([] { torchkit::reset_peak_memory_stats(0); }),
                 {"reset_peak_memory_stats(device=0)", "no GPU is visible"});
}

TEST_CASE("empty_cache hands freed blocks back: reserved drops") {
  if (c10::cuda::device_count() == 0) {
    MESSAGE("no GPU: skipped");
    return;
  }
  const auto device = at::TensorOptions().device(at::kCUDA, 0).dtype(at::kByte);
  torchkit::empty_cache();
  const MemoryStats start = torchkit::memory_stats(0);
  MemoryStats with_tensor;
  {
    const auto block = at::empty({64 * kMiB}, device);
    with_tensor = torchkit::memory_stats(0);
    // 64 MiB is a multiple of every allocator rounding: the counters move by exactly that.
    CHECK(with_tensor.allocated == start.allocated + 64 * kMiB);
    CHECK(with_tensor.reserved >= start.reserved + 64 * kMiB);
    CHECK(with_tensor.peak_allocated >= with_tensor.allocated);
  }
  const MemoryStats freed = torchkit::memory_stats(0);
  CHECK(freed.allocated == start.allocated);
  CHECK(freed.reserved == with_tensor.reserved);  // cached, not returned
  torchkit::empty_cache();
  const MemoryStats emptied = torchkit::memory_stats(0);
  CHECK(emptied.allocated == start.allocated);
  CHECK(emptied.reserved <= freed.reserved - 64 * kMiB);
  MESSAGE("reserved: " << freed.reserved << " -> " << emptied.reserved << " bytes after empty_cache");
  // -1 is the current device.
  CHECK(torchkit::memory_stats(-1) == torchkit::memory_stats(c10::cuda::current_device()));
}

TEST_CASE("peak statistics and their reset") {
  if (c10::cuda::device_count() == 0) {
    MESSAGE("no GPU: skipped");
    return;
  }
  const auto device = at::TensorOptions().device(at::kCUDA, 0).dtype(at::kByte);
  torchkit::reset_peak_memory_stats(0);
  const MemoryStats start = torchkit::memory_stats(0);
  CHECK(start.peak_allocated == start.allocated);
  { const auto block = at::empty({32 * kMiB}, device); }
  const MemoryStats after = torchkit::memory_stats(0);
  CHECK(after.allocated == start.allocated);
  CHECK(after.peak_allocated >= start.allocated + 32 * kMiB);
  torchkit::reset_peak_memory_stats();
  const MemoryStats reset = torchkit::memory_stats(0);
  CHECK(reset.peak_allocated == reset.allocated);
  CHECK(reset.peak_reserved == reset.reserved);
}

TEST_CASE("a device index that does not exist is named in the error") {
  if (c10::cuda::device_count() == 0) {
    MESSAGE("no GPU: skipped");
    return;
  }
  const int count = c10::cuda::device_count();
  const auto missing = static_cast<c10::DeviceIndex>(count);
  check_contains(message_of<torchkit::Error>([&] { (void)torchkit::memory_stats(missing); }),
                 {"memory_stats", "CUDA device index " + std::to_string(count) + " does not exist",
                  "0.." + std::to_string(count - 1)});
  check_contains(message_of<torchkit::Error>([] { (void)torchkit::memory_stats(-2); }),
                 {"CUDA device index -2 does not exist"});
  check_contains(message_of<torchkit::Error>([&] { torchkit::reset_peak_memory_stats(missing); }),
                 {"reset_peak_memory_stats", "CUDA device index " + std::to_string(count)});
}

#endif  // TORCHKIT_WITH_CUDA
