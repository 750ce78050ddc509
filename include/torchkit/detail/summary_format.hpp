#pragma once
/// @file detail/summary_format.hpp
/// Internals of summary.hpp: the number and table formatting torchinfo and pytorch-summary use
/// (Python's `{:,}`, `{:.2f}`, left/right alignment by characters, the `├─`/`└─` tree).

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace torchkit::detail::summary_impl {

/// Python's `f"{value:,}"`: 21840 -> "21,840".
inline std::string with_thousands(int64_t value) {
  const std::string digits = std::to_string(value < 0 ? -value : value);
  std::string result;
  result.reserve(digits.size() + digits.size() / 3 + 1);
  if (value < 0) {
    result.push_back('-');
  }
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) {
      result.push_back(',');
    }
    result.push_back(digits[i]);
  }
  return result;
}

/// Python's `f"{value:,.2f}"`: 1234.5 -> "1,234.50".
inline std::string with_thousands_2f(double value) {
  std::string text = fmt::format("{:.2f}", value);
  const std::size_t sign = (!text.empty() && text[0] == '-') ? 1 : 0;
  const std::size_t point = text.find('.');
  std::string result = text.substr(0, sign);
  const std::string integer = text.substr(sign, point - sign);
  for (std::size_t i = 0; i < integer.size(); ++i) {
    if (i > 0 && (integer.size() - i) % 3 == 0) {
      result.push_back(',');
    }
    result.push_back(integer[i]);
  }
  result += text.substr(point);
  return result;
}

/// torchinfo's "Total mult-adds" value with its unit: " (M): 0.98", " (G): 8.18", " (M): 0".
/// The unit is T, G or M (the largest one the value reaches, M at least); a whole number is
/// printed without decimals, as torchinfo does.
inline std::string mult_adds_with_unit(int64_t count) {
  const auto value = static_cast<double>(count);
  const char* unit = "M";
  double scaled = value / 1e6;
  if (value >= 1e12) {
    unit = "T";
    scaled = value / 1e12;
  } else if (value >= 1e9) {
    unit = "G";
    scaled = value / 1e9;
  }
  const std::string number = scaled == std::floor(scaled) && std::abs(scaled) < 9.0e15
                                 ? with_thousands(static_cast<int64_t>(scaled))
                                 : with_thousands_2f(scaled);
  return fmt::format(" ({}): {}", unit, number);
}

/// Bytes as megabytes (1e6), two decimals: 113600 -> "0.11".
inline std::string megabytes(int64_t bytes) { return fmt::format("{:.2f}", static_cast<double>(bytes) / 1e6); }

/// Characters (code points) of a UTF-8 string: "├─" is 2.
inline std::size_t characters(std::string_view text) {
  std::size_t count = 0;
  for (const char c : text) {
    count += (static_cast<unsigned char>(c) & 0xC0U) != 0x80U ? 1 : 0;
  }
  return count;
}

inline std::string pad_right(std::string text, std::size_t width) {
  const std::size_t length = characters(text);
  if (length < width) {
    text.append(width - length, ' ');
  }
  return text;
}

inline std::string pad_left(const std::string& text, std::size_t width) {
  const std::size_t length = characters(text);
  return length < width ? std::string(width - length, ' ') + text : text;
}

/// The tree glyphs in front of a row: one entry per level below the root, true where the line
/// of that level goes on below this row; the last entry is this row's own level.
inline std::string tree_prefix(const std::vector<bool>& continues) {
  std::string prefix;
  for (std::size_t level = 0; level < continues.size(); ++level) {
    if (level > 0) {
      prefix += "    ";
    }
    const bool own_level = level + 1 == continues.size();
    if (own_level) {
      prefix += continues[level] ? "├─" : "└─";
    } else {
      prefix += continues[level] ? "│" : " ";
    }
  }
  return prefix;
}

}  // namespace torchkit::detail::summary_impl
