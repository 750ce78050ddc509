#pragma once
/// @file detail/shape.hpp
/// Shapes and multi-dimensional indices in messages and tables, as Python prints lists: `[3, 17]`.

#include <c10/util/ArrayRef.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace torchkit::detail {

/// `[2, 3, 4]` for sizes {2, 3, 4}; `[]` for a 0-dim tensor.
[[nodiscard]] inline std::string shape_string(c10::IntArrayRef sizes) {
  std::string text = "[";
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    if (i > 0) {
      text += ", ";
    }
    text += std::to_string(sizes[i]);
  }
  text += "]";
  return text;
}

/// The multi-dimensional (row-major) index of element `flat_index` of a tensor of shape `sizes`,
/// as `[3, 17]`.
[[nodiscard]] inline std::string index_string(std::int64_t flat_index, c10::IntArrayRef sizes) {
  std::string text;
  for (std::size_t i = sizes.size(); i-- > 0;) {
    const std::int64_t size = sizes[i] > 0 ? sizes[i] : 1;
    const std::string coordinate = std::to_string(flat_index % size);
    flat_index /= size;
    text = (i + 1 < sizes.size() ? coordinate + ", " : coordinate) + text;
  }
  return "[" + text + "]";
}

}  // namespace torchkit::detail
