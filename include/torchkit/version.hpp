#pragma once
/// @file version.hpp
/// torchkit's version, as macros and as a string.
///
/// The three TORCHKIT_VERSION_* macros below are the one place the version number is written.
/// The copies the packaging tools need (CMakeLists.txt's `project(VERSION)`,
/// ports/torchkit/vcpkg.json, conanfile.py) are checked against them by the CTest test
/// `version_consistent` (tests/packaging/check_version.py).

#include <string_view>

/// The major version number (X of X.Y.Z).
#define TORCHKIT_VERSION_MAJOR 0
/// The minor version number (Y of X.Y.Z).
#define TORCHKIT_VERSION_MINOR 1
/// The patch version number (Z of X.Y.Z).
#define TORCHKIT_VERSION_PATCH 0

/// The version as one number, major * 10000 + minor * 100 + patch (as TORCHKIT_TORCH_VERSION).
#define TORCHKIT_VERSION (TORCHKIT_VERSION_MAJOR * 10000 + TORCHKIT_VERSION_MINOR * 100 + TORCHKIT_VERSION_PATCH)

/// Internal: `x` as a string literal, unexpanded.
#define TORCHKIT_DETAIL_STRINGIFY_EXPANDED(x) #x
/// Internal: `x` as a string literal after macro expansion (a version macro -> its digits).
#define TORCHKIT_DETAIL_STRINGIFY(x) TORCHKIT_DETAIL_STRINGIFY_EXPANDED(x)

/// The version as a string literal, "major.minor.patch".
#define TORCHKIT_VERSION_STRING                                                                         \
  TORCHKIT_DETAIL_STRINGIFY(TORCHKIT_VERSION_MAJOR)                                                     \
  "." TORCHKIT_DETAIL_STRINGIFY(TORCHKIT_VERSION_MINOR) "." TORCHKIT_DETAIL_STRINGIFY(TORCHKIT_VERSION_PATCH)

namespace torchkit {

/// The library version as "major.minor.patch", built from the version macros.
///
///     std::cout << torchkit::version();   // 0.1.0
[[nodiscard]] constexpr std::string_view version() noexcept { return TORCHKIT_VERSION_STRING; }

static_assert(version().size() >= 5, "TORCHKIT_VERSION_* must be plain numbers");

}  // namespace torchkit
