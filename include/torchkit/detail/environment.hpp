#pragma once
/// @file detail/environment.hpp
/// Reading and writing this process's environment variables (POSIX and Windows).

#include <torchkit/error.hpp>

#include <cerrno>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

namespace torchkit::detail {

/// The value of the environment variable `name`, or nullopt when it is not set (an empty value
/// is a value: `CUDA_VISIBLE_DEVICES=""` hides every GPU).
[[nodiscard]] inline std::optional<std::string> get_environment(const char* name) {
  const char* value = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): documented by callers
  if (value == nullptr) {
    return std::nullopt;
  }
  return std::string(value);
}

/// Sets the environment variable `name` to `value`, or unsets it when `value` is nullopt.
/// Returns false when the C library refuses (out of memory); never throws.
inline bool set_environment_noexcept(const char* name, const std::optional<std::string>& value) noexcept {
#if defined(_WIN32)
  // _putenv_s with an empty value removes the variable on Windows; an empty value cannot be kept.
  return _putenv_s(name, value ? value->c_str() : "") == 0;
#else
  if (value) {
    return ::setenv(name, value->c_str(), /*overwrite=*/1) == 0;
  }
  return ::unsetenv(name) == 0;
#endif
}

/// Sets (or, for nullopt, unsets) the environment variable `name`; throws Error, prefixed with
/// `owner` (the public name that was called), when the C library refuses.
inline void set_environment(std::string_view owner, const char* name, const std::optional<std::string>& value) {
  if (!set_environment_noexcept(name, value)) {
    const int error = errno;
    fail("{}: could not {} the environment variable {}: {}", owner, value ? "set" : "unset", name,
         std::generic_category().message(error));
  }
}

}  // namespace torchkit::detail
