// Tests for devices.hpp: VisibleDevices, parse_device_list, for_local_rank, best_device, and the
// probe that tells whether CUDA has already started.
#include <torchkit/devices.hpp>

#include "test_support.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using torchkit::Error;
using torchkit::VisibleDevices;
using torchkit::detail::CudaDriverState;
using torchkit::test::message_of;

// The environment is read and written here with the C library directly, independently of
// torchkit's own helpers.
std::optional<std::string> read_variable(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::nullopt : std::optional<std::string>(value);
}

void write_variable(const char* name, const std::optional<std::string>& value) {
  if (value) {
    REQUIRE(::setenv(name, value->c_str(), 1) == 0);
  } else {
    REQUIRE(::unsetenv(name) == 0);
  }
}

std::optional<std::string> visible() { return read_variable("CUDA_VISIBLE_DEVICES"); }

// Saves CUDA_VISIBLE_DEVICES and LOCAL_RANK, sets them for a test, puts them back afterwards.
class Environment {
 public:
  Environment(std::optional<std::string> visible_devices, std::optional<std::string> local_rank)
      : saved_visible_(read_variable("CUDA_VISIBLE_DEVICES")), saved_rank_(read_variable("LOCAL_RANK")) {
    write_variable("CUDA_VISIBLE_DEVICES", visible_devices);
    write_variable("LOCAL_RANK", local_rank);
  }
  ~Environment() {
    (void)(saved_visible_ ? ::setenv("CUDA_VISIBLE_DEVICES", saved_visible_->c_str(), 1)
                          : ::unsetenv("CUDA_VISIBLE_DEVICES"));
    (void)(saved_rank_ ? ::setenv("LOCAL_RANK", saved_rank_->c_str(), 1) : ::unsetenv("LOCAL_RANK"));
  }
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

 private:
  std::optional<std::string> saved_visible_, saved_rank_;
};

CudaDriverState answer_not_loaded() noexcept { return CudaDriverState::not_loaded; }
CudaDriverState answer_not_initialised() noexcept { return CudaDriverState::not_initialised; }
CudaDriverState answer_initialised() noexcept { return CudaDriverState::initialised; }

// Replaces the CUDA probe for one test, so that the environment logic is tested the same way on
// machines with and without a GPU; the real probe has tests of its own below.
class ScopedProbe {
 public:
  explicit ScopedProbe(torchkit::detail::CudaDriverProbe probe) : saved_(torchkit::detail::cuda_driver_probe()) {
    torchkit::detail::cuda_driver_probe() = probe;
  }
  ~ScopedProbe() { torchkit::detail::cuda_driver_probe() = saved_; }
  ScopedProbe(const ScopedProbe&) = delete;
  ScopedProbe& operator=(const ScopedProbe&) = delete;

 private:
  torchkit::detail::CudaDriverProbe saved_;
};

// Checks that `make` throws torchkit::Error mentioning every string of `expected`, and that
// CUDA_VISIBLE_DEVICES is what it was before.
template <class F>
void check_rejected(F&& make, const std::vector<std::string>& expected) {
  const auto before = visible();
  const std::string message = message_of<Error>(make);
  for (const auto& part : expected) {
    CHECK_MESSAGE(message.find(part) != std::string::npos, "'" << part << "' missing from: " << message);
  }
  CHECK(visible() == before);
}

const char* const kGpuUuid = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6";
const char* const kMigUuid = "MIG-4b6a6f1f-5fbe-5e57-a5e5-7d1a4f0c6e2b";
const char* const kOldMig = "MIG-GPU-8932f937-d72c-4106-c12f-20bd9faed9f6/1/2";

}  // namespace

TEST_CASE("parse_device_list reads numeric specs in priority order") {
  CHECK(torchkit::parse_device_list("0") == std::vector<int>{0});
  CHECK(torchkit::parse_device_list("0,1") == std::vector<int>{0, 1});
  CHECK(torchkit::parse_device_list("2,0") == std::vector<int>{2, 0});
  CHECK(torchkit::parse_device_list("10,3,7") == std::vector<int>{10, 3, 7});
  CHECK(torchkit::parse_device_list("").empty());
  // A second, independent reading: split on commas with the standard library.
  const std::string spec = "5,12,0,3";
  std::vector<int> expected;
  for (std::size_t start = 0; start <= spec.size();) {
    const auto comma = std::min(spec.find(',', start), spec.size());
    expected.push_back(std::stoi(spec.substr(start, comma - start)));
    start = comma + 1;
  }
  CHECK(torchkit::parse_device_list(spec) == expected);
}

TEST_CASE("parse_device_list rejects malformed specs, naming them") {
  struct Case {
    const char* spec;
    std::vector<std::string> expected;
  };
  const std::vector<Case> cases = {
      {"0,,1", {"\"0,,1\"", "entry 1 is empty"}},
      {",0", {"\",0\"", "entry 0 is empty"}},
      {"0,", {"\"0,\"", "entry 1 is empty"}},
      {",", {"entry 0 is empty"}},
      {"a", {"\"a\"", "not a device index"}},
      {"1a", {"\"1a\"", "not a device index"}},
      {"+1", {"\"+1\"", "not a device index"}},
      {"0x1", {"\"0x1\"", "not a device index"}},
      {"-1", {"\"-1\"", "negative"}},
      {"0,-1", {"\"-1\"", "entry 1", "negative"}},
      {"1,1", {"\"1,1\"", "device 1 is listed twice", "entries 0 and 1"}},
      {"0,2,0", {"device 0 is listed twice", "entries 0 and 2"}},
      {"0, 1", {"\"0, 1\"", "entry 1", "white space"}},
      {" 0", {"white space"}},
      {"0 ", {"white space"}},
      {"0,\t1", {"white space"}},
      {"01", {"\"01\"", "leading zero", "write 1"}},
      {"99999999999", {"\"99999999999\"", "too large"}},
      {"GPU-", {"\"GPU-\"", "not a valid GPU-<uuid>"}},
      {"GPU-12x!", {"\"GPU-12x!\"", "not a valid GPU-<uuid>"}},
  };
  for (const auto& test : cases) {
    CAPTURE(test.spec);
    auto expected = test.expected;
    expected.push_back("parse_device_list");
    check_rejected([&] { (void)torchkit::parse_device_list(test.spec); }, expected);
  }
  check_rejected([] { (void)torchkit::parse_device_list(kGpuUuid); },
                 {"parse_device_list", kGpuUuid, "UUID", "numeric specs only"});
  check_rejected([] { (void)torchkit::parse_device_list(std::string("0,") + kMigUuid); },
                 {"entry 1", kMigUuid, "UUID"});
}

TEST_CASE("VisibleDevices sets CUDA_VISIBLE_DEVICES and unsets it again when it was not set") {
  ScopedProbe probe(answer_not_initialised);
  Environment environment(std::nullopt, std::nullopt);
  {
    VisibleDevices devices("0,1");
    CHECK(visible() == "0,1");
    CHECK(devices.spec() == "0,1");
    CHECK_FALSE(devices.previous().has_value());
  }
  CHECK_FALSE(visible().has_value());
}

TEST_CASE("VisibleDevices restores the previous value, also an empty one") {
  ScopedProbe probe(answer_not_initialised);
  Environment environment("3", std::nullopt);
  {
    VisibleDevices devices("1");
    CHECK(visible() == "1");
    CHECK(devices.previous() == "3");
  }
  CHECK(visible() == "3");

  write_variable("CUDA_VISIBLE_DEVICES", "");
  {
    VisibleDevices devices("0");
    CHECK(visible() == "0");
  }
  CHECK(visible() == "");  // set and empty, not unset
}

TEST_CASE("VisibleDevices restores the environment while an exception unwinds") {
  ScopedProbe probe(answer_not_initialised);
  Environment environment("5", std::nullopt);
  bool reached = false;
  try {
    VisibleDevices devices("0");
    reached = visible() == "0";
    throw std::runtime_error("training failed");
  } catch (const std::runtime_error&) {
  }
  CHECK(reached);
  CHECK(visible() == "5");

  write_variable("CUDA_VISIBLE_DEVICES", std::nullopt);
  try {
    VisibleDevices devices({1, 0});
    throw 42;
  } catch (int) {
  }
  CHECK_FALSE(visible().has_value());
}

TEST_CASE("VisibleDevices nests") {
  ScopedProbe probe(answer_not_initialised);
  Environment environment(std::nullopt, std::nullopt);
  {
    VisibleDevices outer("0,1");
    {
      VisibleDevices middle("1");
      {
        VisibleDevices inner("");
        CHECK(visible() == "");
        CHECK(inner.previous() == "1");
      }
      CHECK(visible() == "1");
    }
    CHECK(visible() == "0,1");
  }
  CHECK_FALSE(visible().has_value());
}

TEST_CASE("VisibleDevices takes a list of indices, in priority order") {
  ScopedProbe probe(answer_not_initialised);
  Environment environment(std::nullopt, std::nullopt);
  {
    VisibleDevices devices({1, 0});
    CHECK(visible() == "1,0");
    CHECK(devices.spec() == "1,0");
  }
  {
    VisibleDevices devices{3};
    CHECK(visible() == "3");
  }
  const std::vector<int> ids = {2, 7, 4};
  {
    VisibleDevices devices(ids);  // std::span<const int> from a vector
    CHECK(visible() == "2,7,4");
    CHECK(torchkit::parse_device_list(devices.spec()) == ids);  // round trip
  }
  {
    VisibleDevices devices(std::span<const int>{});
    CHECK(visible() == "");  // hide every GPU
  }
  CHECK_FALSE(visible().has_value());

  static_assert(!std::is_copy_constructible_v<VisibleDevices>);
  static_assert(!std::is_move_constructible_v<VisibleDevices>);
  static_assert(!std::is_copy_assignable_v<VisibleDevices>);
  static_assert(!std::is_move_assignable_v<VisibleDevices>);
  static_assert(!std::is_convertible_v<std::string_view, VisibleDevices>);  // explicit
}

TEST_CASE("VisibleDevices accepts GPU and MIG UUIDs") {
  ScopedProbe probe(answer_not_initialised);
  Environment environment(std::nullopt, std::nullopt);
  for (const std::string& spec : {std::string(kGpuUuid), std::string(kMigUuid), std::string(kOldMig),
                                 std::string("1,") + kGpuUuid, std::string("GPU-8932f937")}) {
    CAPTURE(spec);
    VisibleDevices devices(spec);
    CHECK(visible() == spec);
  }
  CHECK_FALSE(visible().has_value());
  check_rejected([] { VisibleDevices devices(std::string(kGpuUuid) + "," + kGpuUuid); },
                 {"VisibleDevices", kGpuUuid, "listed twice"});
}

TEST_CASE("VisibleDevices rejects malformed specs and leaves the environment alone") {
  ScopedProbe probe(answer_not_initialised);
  for (const auto& start : {std::optional<std::string>(), std::optional<std::string>("7")}) {
    Environment environment(start, std::nullopt);
    check_rejected([] { VisibleDevices devices("0,,1"); }, {"VisibleDevices", "\"0,,1\"", "empty"});
    check_rejected([] { VisibleDevices devices("a"); }, {"VisibleDevices", "\"a\"", "not a device index"});
    check_rejected([] { VisibleDevices devices("-1"); }, {"VisibleDevices", "\"-1\"", "negative"});
    check_rejected([] { VisibleDevices devices("1,1"); }, {"VisibleDevices", "\"1,1\"", "listed twice"});
    check_rejected([] { VisibleDevices devices("0, 1"); }, {"VisibleDevices", "\"0, 1\"", "white space"});
    check_rejected([] { VisibleDevices devices(" "); }, {"VisibleDevices", "white space"});
    check_rejected([] { VisibleDevices devices({-1}); }, {"VisibleDevices", "device index -1", "negative"});
    check_rejected([] { VisibleDevices devices({0, 2, 2}); },
                   {"VisibleDevices", "device 2 is listed twice", "positions 1 and 2"});
    CHECK(visible() == start);
  }
}

TEST_CASE("VisibleDevices refuses to act once CUDA has started") {
  Environment environment("0,1", std::nullopt);
  {
    ScopedProbe probe(answer_initialised);
    CHECK(torchkit::cuda_initialized());
    check_rejected([] { VisibleDevices devices("1"); },
                   {"VisibleDevices(\"1\")", "already initialised", "would silently do nothing", "\"0,1\""});
    check_rejected([] { VisibleDevices devices({1}); }, {"VisibleDevices(\"1\")", "already initialised"});
    write_variable("CUDA_VISIBLE_DEVICES", std::nullopt);
    check_rejected([] { VisibleDevices devices(""); }, {"already initialised", "when it was unset"});
    // Asking for what CUDA already uses changes nothing and is allowed.
    write_variable("CUDA_VISIBLE_DEVICES", "0,1");
    {
      VisibleDevices same("0,1");
      CHECK(visible() == "0,1");
    }
    CHECK(visible() == "0,1");
    // A malformed spec is reported as such, before the CUDA check.
    check_rejected([] { VisibleDevices devices("0,,1"); }, {"empty"});
  }
  for (const auto answer : {&answer_not_loaded, &answer_not_initialised}) {
    ScopedProbe probe(answer);
    CHECK_FALSE(torchkit::cuda_initialized());
    VisibleDevices devices("1");
    CHECK(visible() == "1");
  }
  CHECK(visible() == "0,1");
}

TEST_CASE("for_local_rank picks the LOCAL_RANK-th device") {
  ScopedProbe probe(answer_not_initialised);
  {
    Environment environment(std::nullopt, "1");
    {
      auto devices = VisibleDevices::for_local_rank();
      CHECK(visible() == "1");
      CHECK(devices.spec() == "1");
    }
    CHECK_FALSE(visible().has_value());
  }
  {
    // A scheduler already restricted the node's GPUs: local rank 1 gets the second of them.
    Environment environment("2,3", "1");
    {
      auto devices = VisibleDevices::for_local_rank();
      CHECK(visible() == "3");
    }
    CHECK(visible() == "2,3");
  }
  {
    Environment environment(std::string("1,") + kGpuUuid, "1");
    auto devices = VisibleDevices::for_local_rank();
    CHECK(visible() == kGpuUuid);
  }
  {
    Environment environment(std::nullopt, "2");
    {
      auto devices = VisibleDevices::for_local_rank({4, 5, 6, 7});
      CHECK(visible() == "6");
    }
    const std::vector<int> node = {1, 0};
    {
      write_variable("LOCAL_RANK", "0");
      auto devices = VisibleDevices::for_local_rank(node);
      CHECK(visible() == "1");
    }
    CHECK_FALSE(visible().has_value());
  }
  {
    Environment environment("0,1,2,3", "3");
    auto devices = VisibleDevices::for_local_rank({3, 2, 1, 0});  // the list wins over the environment
    CHECK(visible() == "0");
  }
}

TEST_CASE("for_local_rank rejects a missing, malformed or too large LOCAL_RANK") {
  ScopedProbe probe(answer_not_initialised);
  for (const auto& start : {std::optional<std::string>(), std::optional<std::string>("0,1")}) {
    Environment environment(start, std::nullopt);
    check_rejected([] { (void)VisibleDevices::for_local_rank(); }, {"for_local_rank", "LOCAL_RANK is not set"});
    check_rejected([] { (void)VisibleDevices::for_local_rank({0, 1}); }, {"LOCAL_RANK is not set", "torchrun"});
    for (const char* rank : {"abc", "-1", "", " 1", "1 ", "1.0", "0x1", "99999999999"}) {
      CAPTURE(rank);
      write_variable("LOCAL_RANK", rank);
      check_rejected([] { (void)VisibleDevices::for_local_rank(); },
                     {"LOCAL_RANK=\"" + std::string(rank) + "\"", "not a non-negative integer"});
      check_rejected([] { (void)VisibleDevices::for_local_rank({0, 1}); },
                     {"LOCAL_RANK=\"" + std::string(rank) + "\""});
    }
    write_variable("LOCAL_RANK", "4");
    check_rejected([] { (void)VisibleDevices::for_local_rank({0, 1}); },
                   {"LOCAL_RANK=4", "beyond the device list of 2 entries", "0..1"});
    check_rejected([] { (void)VisibleDevices::for_local_rank(std::span<const int>{}); },
                   {"LOCAL_RANK=4", "valid local ranks: none"});
    write_variable("LOCAL_RANK", "0");
    check_rejected([] { (void)VisibleDevices::for_local_rank({0, 0}); }, {"for_local_rank", "listed twice"});
    check_rejected([] { (void)VisibleDevices::for_local_rank({-3}); }, {"for_local_rank", "-3"});
    CHECK(visible() == start);
    CHECK(read_variable("LOCAL_RANK") == "0");
  }
  {
    Environment environment("2,3", "2");
    check_rejected([] { (void)VisibleDevices::for_local_rank(); },
                   {"LOCAL_RANK=2", "CUDA_VISIBLE_DEVICES=\"2,3\"", "0..1", "nproc-per-node"});
  }
  {
    Environment environment("", "0");
    check_rejected([] { (void)VisibleDevices::for_local_rank(); }, {"LOCAL_RANK=0", "valid local ranks: none"});
  }
  {
    Environment environment("0,,1", "0");
    check_rejected([] { (void)VisibleDevices::for_local_rank(); },
                   {"the current CUDA_VISIBLE_DEVICES", "\"0,,1\"", "empty"});
  }
  {
    ScopedProbe started(answer_initialised);
    Environment environment("0,1", "1");
    check_rejected([] { (void)VisibleDevices::for_local_rank(); }, {"VisibleDevices(\"1\")", "already initialised"});
  }
}

#ifdef TORCHKIT_FAKE_CUDA_DRIVER
TEST_CASE("the probe asks a loaded CUDA driver whether cuInit has run") {
  // The real probe, against a stand-in driver library with the soname libcuda.so.1.
  REQUIRE((torchkit::detail::cuda_driver_probe() == &torchkit::detail::probe_cuda_driver));
  if (void* real = ::dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD); real != nullptr) {
    ::dlclose(real);
    MESSAGE("a real CUDA driver is loaded in this process; the stand-in driver test is skipped");
    return;
  }
  CHECK(torchkit::detail::probe_cuda_driver() == CudaDriverState::not_loaded);
  CHECK_FALSE(torchkit::cuda_initialized());

  void* driver = ::dlopen(TORCHKIT_FAKE_CUDA_DRIVER, RTLD_NOW | RTLD_LOCAL);
  REQUIRE_MESSAGE(driver != nullptr, ::dlerror());
  CHECK(torchkit::detail::probe_cuda_driver() == CudaDriverState::not_initialised);
  CHECK_FALSE(torchkit::cuda_initialized());
  {
    Environment environment("0,1", std::nullopt);
    {
      VisibleDevices devices("1");  // loaded but not started: still in time
      CHECK(visible() == "1");
    }
    auto* cu_init = reinterpret_cast<int (*)(unsigned int)>(::dlsym(driver, "cuInit"));
    REQUIRE((cu_init != nullptr));
    REQUIRE(cu_init(0) == 0);
    CHECK(torchkit::detail::probe_cuda_driver() == CudaDriverState::initialised);
    CHECK(torchkit::cuda_initialized());
    check_rejected([] { VisibleDevices devices("1"); }, {"already initialised", "\"0,1\""});
    CHECK(visible() == "0,1");
  }
  ::dlclose(driver);
  // Unloaded again, so that a real driver loaded later in this process is not shadowed.
  CHECK(torchkit::detail::probe_cuda_driver() == CudaDriverState::not_loaded);
}
#endif

// Last in this file: on a machine with a GPU, this starts CUDA for the rest of the process.
TEST_CASE("best_device is cuda:0 where CUDA is available, else cpu; starting CUDA is noticed") {
  const c10::Device device = torchkit::best_device();
  if (torch::cuda::is_available()) {
    CHECK(device == c10::Device("cuda:0"));
    // The real probe now sees the driver started by LibTorch, and VisibleDevices refuses.
    CHECK(torchkit::detail::probe_cuda_driver() == CudaDriverState::initialised);
    CHECK(torchkit::cuda_initialized());
    const auto current = visible();
    const std::string other = current == "0" ? "" : "0";
    check_rejected([&] { VisibleDevices devices(other); }, {"already initialised"});
    CHECK(visible() == current);
  } else {
    CHECK(device == c10::Device("cpu"));
    CHECK(device.is_cpu());
  }
  const auto tensor = at::ones({2}, at::TensorOptions().device(device));
  CHECK(tensor.device() == device);
}
