#pragma once
/// @file format.hpp
/// torchkit::Shape, a tensor shape that formats as Python prints it.
///
/// Every printable torchkit type (Summary, FreezeReport, NamePattern, PatternList, MemoryStats,
/// ClipGrad, OneHot, every scheduler of torchkit::lr) formats with `{fmt}` through its
/// `to_string()` wherever its own header is included: the formatter is in
/// detail/formatter.hpp, and each type is marked next to its definition. This header is only
/// needed for Shape; it still includes the headers of those types, so that code which included
/// it for them compiles as before.
///
///     fmt::print("{}\n", torchkit::summary(model, {3, 224, 224}));
///     fmt::print("input {}\n", torchkit::Shape(batch.sizes()));      // input [1, 3, 224, 224]
///
/// The string format spec applies to the text, so `{:>40}` pads a short text such as a
/// MemoryStats line.

#include <torchkit/clip.hpp>
#include <torchkit/detail/formatter.hpp>
#include <torchkit/detail/shape.hpp>
#include <torchkit/freeze.hpp>
#include <torchkit/lr.hpp>
#include <torchkit/memory.hpp>
#include <torchkit/name_pattern.hpp>
#include <torchkit/one_hot.hpp>
#include <torchkit/summary.hpp>

#include <c10/util/ArrayRef.h>

#include <string>

namespace torchkit {

/// A tensor shape (or any list of sizes) that formats as Python prints a `torch.Size` list:
/// `[2, 3, 224, 224]`. It refers to the sizes it was given; keep those alive while formatting.
///
///     fmt::print("{}", torchkit::Shape(tensor.sizes()));   // [2, 3]
struct Shape {
  c10::IntArrayRef sizes;  ///< the sizes to print (not owned)
  /// Refers to `sizes_to_print`, which must outlive the Shape.
  explicit Shape(c10::IntArrayRef sizes_to_print) noexcept : sizes(sizes_to_print) {}
  /// `[2, 3, 224, 224]`; `[]` for a 0-d tensor.
  [[nodiscard]] std::string to_string() const { return detail::shape_string(sizes); }
};

namespace detail {
/// Shape formats with `{fmt}` as its to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<Shape> = true;
}  // namespace detail

}  // namespace torchkit
