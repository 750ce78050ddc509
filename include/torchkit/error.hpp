#pragma once
/// @file error.hpp
/// torchkit::Error, the one exception type for bad arguments, and TORCHKIT_CHECK.

#include <torchkit/detail/formatter.hpp>  // {fmt} for every printable torchkit type

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace torchkit {

/// Thrown for every bad argument: the message names the offending value, where it is, and
/// what was expected.
///
///     try { torchkit::parse_device_list("0,,1"); }
///     catch (const torchkit::Error& e) { std::cerr << e.what(); }
class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

/// Throws torchkit::Error with a fmt-formatted message.
template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace detail
}  // namespace torchkit

/// Throws torchkit::Error with the fmt-formatted message when `condition` is false. The message
/// arguments are only evaluated on failure.
///
///     TORCHKIT_CHECK(max_norm > 0, "clip_grad_norm_: max_norm must be > 0, got {}", max_norm);
#define TORCHKIT_CHECK(condition, ...)            \
  do {                                            \
    if (!(condition)) {                           \
      ::torchkit::detail::fail(__VA_ARGS__);      \
    }                                             \
  } while (false)
