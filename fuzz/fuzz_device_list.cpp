// Fuzz target: the CUDA_VISIBLE_DEVICES parser (parse_device_list). Any text either parses to
// distinct non-negative indices that print back to a spec parsing to the same list, or throws
// torchkit::Error.
#include "fuzz_support.hpp"

#include <torchkit/devices.hpp>

#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view spec(reinterpret_cast<const char*>(data), size);
  std::vector<int> ids;
  if (!torchkit::fuzz::accepts([&] { ids = torchkit::parse_device_list(spec); })) {
    return 0;
  }
  const std::set<int> distinct(ids.begin(), ids.end());
  torchkit::fuzz::require(distinct.size() == ids.size(), "indices are distinct");
  std::string printed;
  for (const int id : ids) {
    torchkit::fuzz::require(id >= 0, "indices are non-negative");
    printed += (printed.empty() ? "" : ",") + std::to_string(id);
  }
  std::vector<int> again;
  torchkit::fuzz::require(torchkit::fuzz::accepts([&] { again = torchkit::parse_device_list(printed); }),
                          "the printed list parses");
  torchkit::fuzz::require(again == ids, "the printed list parses to the same indices");
  return 0;
}
