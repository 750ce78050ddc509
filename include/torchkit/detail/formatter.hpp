#pragma once
/// @file detail/formatter.hpp
/// `{fmt}` support for every printable torchkit type, with no extra include: each public header
/// that defines a printable type (one with `to_string()`) marks it right after the type with
///
///     template <> inline constexpr bool detail::formats_with_to_string<Summary> = true;
///
/// and this header (included by error.hpp, so by every torchkit header) turns each marked type
/// into a fmt::formatter that prints `to_string()`; the string format spec applies to that text,
/// so `{:>40}` pads it. Written against fmt 9's formatter API (a `format` member taking any
/// FormatContext), which fmt 10 and 11 keep.

#include <fmt/format.h>

#include <concepts>
#include <string>
#include <string_view>

namespace torchkit {

namespace lr {
class Scheduler;
class ReduceLROnPlateau;
}  // namespace lr

namespace detail {

/// True for the torchkit types that format through their `to_string()`; specialised next to
/// each such type.
template <class T>
inline constexpr bool formats_with_to_string = false;

/// The schedulers of torchkit::lr: every class derived from lr::Scheduler, and
/// ReduceLROnPlateau (named here by forward declaration, so that lr.hpp needs no marker).
template <class T>
concept PrintableScheduler =
    std::derived_from<T, ::torchkit::lr::Scheduler> || std::same_as<T, ::torchkit::lr::ReduceLROnPlateau>;

/// What the formatter below accepts.
template <class T>
concept Printable = formats_with_to_string<T> || PrintableScheduler<T>;

}  // namespace detail
}  // namespace torchkit

/// Formats every torchkit::detail::Printable type with its `to_string()`.
template <class T>
  requires torchkit::detail::Printable<T>
struct fmt::formatter<T> : fmt::formatter<std::string_view> {
  template <class FormatContext>
  auto format(const T& value, FormatContext& context) const -> decltype(context.out()) {
    const std::string text = value.to_string();
    return fmt::formatter<std::string_view>::format(std::string_view(text), context);
  }
};
