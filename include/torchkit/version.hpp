#pragma once
/// @file version.hpp
/// torchkit's version, as macros and as a string.

#include <string_view>

#define TORCHKIT_VERSION_MAJOR 0
#define TORCHKIT_VERSION_MINOR 1
#define TORCHKIT_VERSION_PATCH 0

namespace torchkit {

/// The library version as "major.minor.patch".
///
///     std::cout << torchkit::version();   // 0.1.0
[[nodiscard]] constexpr std::string_view version() noexcept { return "0.1.0"; }

}  // namespace torchkit
