// Fuzz target: the name-pattern matcher (exact names, module paths, globs, torchkit::regex)
// against generated parameter names. Building a pattern either works or throws
// torchkit::Error (a bad regex); matching never throws, and a glob agrees with an independent
// matcher (dynamic programming over the whole name or any module path above it).
#include "fuzz_support.hpp"

#include <torchkit/detail/name_pattern.hpp>

#include <fuzzer/FuzzedDataProvider.h>

#include <array>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

/// `*` any run of characters (dots included), `?` exactly one character: the documented glob.
bool glob_reference(std::string_view pattern, std::string_view text) {
  // matched[j]: the pattern so far matches text[0, j).
  std::vector<char> matched(text.size() + 1, 0);
  matched[0] = 1;
  for (const char p : pattern) {
    std::vector<char> next(text.size() + 1, 0);
    if (p == '*') {
      char any = 0;
      for (std::size_t j = 0; j <= text.size(); ++j) {
        any = static_cast<char>(any | matched[j]);
        next[j] = any;
      }
    } else {
      for (std::size_t j = 0; j < text.size(); ++j) {
        next[j + 1] = static_cast<char>(matched[j] && (p == '?' || p == text[j]));
      }
    }
    matched = std::move(next);
  }
  return matched[text.size()] != 0;
}

/// `text` with every byte outside printable ASCII as \xNN.
std::string escaped(std::string_view text) {
  std::string out;
  for (const unsigned char c : text) {
    char buffer[8];
    std::snprintf(buffer, sizeof buffer, c >= 32 && c < 127 ? "%c" : "\\x%02x", c);
    out += buffer;
  }
  return out;
}

std::string generated_name(FuzzedDataProvider& input) {
  static constexpr std::array<std::string_view, 12> parts{
      "features", "conv", "bn", "0", "1", "10", "weight", "bias", "cnn", "VGG_16", "convolution1_1", "a.b"};
  std::string name;
  const int count = input.ConsumeIntegralInRange(1, 5);
  for (int i = 0; i < count; ++i) {
    if (!name.empty()) name += '.';
    if (input.ConsumeBool()) {
      name += parts[input.ConsumeIntegralInRange<std::size_t>(0, parts.size() - 1)];
    } else {
      name += input.ConsumeRandomLengthString(12);
    }
  }
  return name;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider input(data, size);
  const bool as_regex = input.ConsumeBool();
  const std::string text = input.ConsumeRandomLengthString(48);
  std::vector<std::string> names;
  const int count = input.ConsumeIntegralInRange(1, 8);
  for (int i = 0; i < count; ++i) names.push_back(generated_name(input));

  std::optional<torchkit::NamePattern> pattern;
  if (!torchkit::fuzz::accepts([&] { pattern.emplace(as_regex ? torchkit::regex(text) : torchkit::NamePattern(text)); })) {
    return 0;
  }
  for (const auto& name : names) {
    bool matched = false;
    torchkit::fuzz::require(torchkit::fuzz::accepts([&] { matched = pattern->matches(name); }),
                            "matches() does not throw");
    if (pattern->kind() == torchkit::NamePattern::Kind::glob) {
      bool expected = glob_reference(text, name);
      for (std::size_t dot = name.find('.'); !expected && dot != std::string::npos; dot = name.find('.', dot + 1)) {
        expected = glob_reference(text, std::string_view(name).substr(0, dot));
      }
      if (matched != expected) {
        std::fprintf(stderr, "fuzz: glob \"%s\" on \"%s\": torchkit %d, reference %d\n", escaped(text).c_str(),
                     escaped(name).c_str(), matched, expected);
      }
      torchkit::fuzz::require(matched == expected, "a glob agrees with the reference matcher");
    } else if (pattern->kind() == torchkit::NamePattern::Kind::name && !text.empty() && text.back() != '.') {
      const bool expected = name == text || (name.size() > text.size() && name.starts_with(text) && name[text.size()] == '.');
      torchkit::fuzz::require(matched == expected, "a name matches itself and what lies below it");
    }
  }
  return 0;
}
