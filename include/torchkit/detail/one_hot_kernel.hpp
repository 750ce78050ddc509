#pragma once
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
