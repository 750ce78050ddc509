#pragma once
/// @file detail/validate.hpp
/// The shared argument validators: one check, one message, for every header that takes a
/// finite non-negative number (scheduler factors and bounds, parameter-group learning rates and
/// weight decays). Messages start with `owner`, the public name of the function or class that
/// was called ("StepLR", "ParamGroupBuilder::build"), as every torchkit::Error does.

#include <torchkit/error.hpp>

#include <cmath>
#include <cstddef>
#include <string_view>
#include <vector>

namespace torchkit::detail {

/// Throws torchkit::Error "<owner>: <name> must be a finite number >= 0, got <value>" unless
/// `value` is finite and >= 0 (nan, ±inf and negatives are refused; -0.0 is accepted).
inline void check_finite_non_negative(std::string_view owner, std::string_view name, double value) {
  TORCHKIT_CHECK(std::isfinite(value) && value >= 0, "{}: {} must be a finite number >= 0, got {}", owner, name,
                 value);
}

/// The per-param-group form: "<owner>: <name> must be finite numbers >= 0, got <value> for param
/// group <index>", naming the first bad entry.
inline void check_finite_non_negative(std::string_view owner, std::string_view name,
                                      const std::vector<double>& values) {
  for (std::size_t index = 0; index < values.size(); ++index) {
    TORCHKIT_CHECK(std::isfinite(values[index]) && values[index] >= 0,
                   "{}: {} must be finite numbers >= 0, got {} for param group {}", owner, name, values[index],
                   index);
  }
}

}  // namespace torchkit::detail
