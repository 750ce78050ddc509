#pragma once
/// @file format.hpp
/// {fmt} support: every printable torchkit type formats with `fmt::format("{}", value)`, and
/// tensor shapes format as Python prints them.
///
///     fmt::print("{}\n", torchkit::summary(model, {3, 224, 224}));
///     fmt::print("{}\n", torchkit::requires_grad_report(model));
///     fmt::print("input {}\n", torchkit::Shape(batch.sizes()));      // input [1, 3, 224, 224]
///
/// A printable type's text is its `to_string()`; the string format spec applies to it, so
/// `{:>40}` pads a short text such as a MemoryStats line.

#include <torchkit/clip.hpp>
#include <torchkit/detail/shape.hpp>
#include <torchkit/freeze.hpp>
#include <torchkit/lr.hpp>
#include <torchkit/memory.hpp>
#include <torchkit/one_hot.hpp>
#include <torchkit/summary.hpp>

#include <c10/util/ArrayRef.h>
#include <fmt/format.h>

#include <concepts>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace torchkit {

/// A tensor shape (or any list of sizes) that formats as Python prints a `torch.Size` list:
/// `[2, 3, 224, 224]`. It refers to the sizes it was given; keep those alive while formatting.
///
///     fmt::print("{}", torchkit::Shape(tensor.sizes()));   // [2, 3]
struct Shape {
  c10::IntArrayRef sizes;
  explicit Shape(c10::IntArrayRef sizes_to_print) noexcept : sizes(sizes_to_print) {}
  [[nodiscard]] std::string to_string() const { return detail::shape_string(sizes); }
};

namespace detail {

/// True for the torchkit types that format through their `to_string()`.
template <class T>
inline constexpr bool formats_with_to_string =
    std::same_as<T, Shape> || std::same_as<T, Summary> || std::same_as<T, FreezeReport> ||
    std::same_as<T, NamePattern> || std::same_as<T, MemoryStats> || std::same_as<T, ClipGrad> ||
    std::same_as<T, OneHot> || std::same_as<T, lr::ReduceLROnPlateau> || std::derived_from<T, lr::Scheduler>;

}  // namespace detail
}  // namespace torchkit

/// Formats Summary, FreezeReport, NamePattern, MemoryStats, ClipGrad, OneHot, every
/// scheduler of torchkit::lr and torchkit::Shape with their `to_string()`.
template <class T>
  requires torchkit::detail::formats_with_to_string<T>
struct fmt::formatter<T> : fmt::formatter<std::string_view> {
  template <class FormatContext>
  auto format(const T& value, FormatContext& context) const -> decltype(context.out()) {
    const std::string text = value.to_string();
    return fmt::formatter<std::string_view>::format(std::string_view(text), context);
  }
};
