#pragma once
/// @file devices.hpp
/// Tip 1: choose which GPUs this process sees: VisibleDevices (CUDA_VISIBLE_DEVICES as an RAII
/// guard that refuses to act too late), parse_device_list, best_device.
///
/// Python:
///
///     import os
///     os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"   # before anything touches CUDA

#include <torchkit/detail/config.hpp>
#include <torchkit/detail/cuda_driver.hpp>
#include <torchkit/detail/environment.hpp>
#include <torchkit/error.hpp>

#include <c10/core/Device.h>
#include <torch/cuda.h>

#include <charconv>
#include <cstddef>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace torchkit {

namespace detail {

inline constexpr const char* visible_devices_variable = "CUDA_VISIBLE_DEVICES";

/// `value` in double quotes, or `unset` for nullopt: how error messages show a variable.
inline std::string quoted_environment_value(const std::optional<std::string>& value) {
  return value ? fmt::format("\"{}\"", *value) : std::string("unset");
}

/// One entry of a device spec: a device index, or a `GPU-`/`MIG-` UUID.
struct DeviceEntry {
  std::string text;
  std::optional<int> index;  ///< set for numeric entries
};

/// Splits and validates a CUDA_VISIBLE_DEVICES spec. `caller` starts every error message.
/// Accepts "" (no devices), comma-separated device indices ("0,1"), and `GPU-<uuid>` /
/// `MIG-<uuid>` entries (MIG also in the older `MIG-GPU-<uuid>/<gi>/<ci>` form).
[[nodiscard]] inline std::vector<DeviceEntry> split_device_spec(std::string_view spec, std::string_view caller) {
  std::vector<DeviceEntry> entries;
  if (spec.empty()) {
    return entries;
  }
  constexpr std::string_view expected =
      "expected comma-separated device indices such as \"0,1\" (priority order), "
      "\"GPU-<uuid>\" or \"MIG-<uuid>\" entries, or \"\" to hide every GPU";
  std::size_t position = 0;
  for (std::size_t index = 0;; ++index) {
    const std::size_t comma = spec.find(',', position);
    const std::string_view text =
        spec.substr(position, comma == std::string_view::npos ? std::string_view::npos : comma - position);
    TORCHKIT_CHECK(!text.empty(), "{}: malformed device spec \"{}\": entry {} is empty; {}", caller, spec, index,
                   expected);
    const std::size_t space = text.find_first_of(" \t\r\n\v\f");
    TORCHKIT_CHECK(space == std::string_view::npos,
                   "{}: malformed device spec \"{}\": entry {} (\"{}\") contains white space; write the "
                   "entries without spaces (\"0,1\")",
                   caller, spec, index, text);
    DeviceEntry entry{std::string(text), std::nullopt};
    if (text.starts_with("GPU-") || text.starts_with("MIG-")) {
      const std::string_view uuid = text.substr(4);
      const bool valid_uuid =
          !uuid.empty() && uuid.find_first_not_of("0123456789abcdefABCDEF-GPUgpu/") == std::string_view::npos;
      TORCHKIT_CHECK(valid_uuid,
                     "{}: malformed device spec \"{}\": entry {} (\"{}\") is not a valid {}<uuid> (hexadecimal "
                     "digits and dashes, as `nvidia-smi -L` prints them)",
                     caller, spec, index, text, text.substr(0, 4));
    } else {
      TORCHKIT_CHECK(!text.starts_with('-'),
                     "{}: malformed device spec \"{}\": entry {} (\"{}\") is negative; device indices start at 0 "
                     "(CUDA would silently hide every device from there on; use \"\" to hide every GPU)",
                     caller, spec, index, text);
      int value = 0;
      const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
      TORCHKIT_CHECK(error != std::errc::result_out_of_range,
                     "{}: malformed device spec \"{}\": entry {} (\"{}\") is too large for a device index", caller,
                     spec, index, text);
      TORCHKIT_CHECK(error == std::errc() && end == text.data() + text.size(),
                     "{}: malformed device spec \"{}\": entry {} (\"{}\") is not a device index; {}", caller, spec,
                     index, text, expected);
      TORCHKIT_CHECK(text.size() == 1 || text.front() != '0',
                     "{}: malformed device spec \"{}\": entry {} (\"{}\") has a leading zero; write {}", caller,
                     spec, index, text, value);
      entry.index = value;
    }
    for (std::size_t earlier = 0; earlier < entries.size(); ++earlier) {
      TORCHKIT_CHECK(entries[earlier].text != entry.text,
                     "{}: malformed device spec \"{}\": device {} is listed twice (entries {} and {}); list each "
                     "device once",
                     caller, spec, entry.text, earlier, index);
    }
    entries.push_back(std::move(entry));
    if (comma == std::string_view::npos) {
      break;
    }
    position = comma + 1;
  }
  return entries;
}

/// The spec for a list of device indices; validates them (non-negative, no duplicates).
[[nodiscard]] inline std::string device_spec_from_ids(std::span<const int> ids, std::string_view caller) {
  std::string spec;
  for (std::size_t index = 0; index < ids.size(); ++index) {
    TORCHKIT_CHECK(ids[index] >= 0,
                   "{}: device index {} at position {} is negative; device indices start at 0 (pass an empty "
                   "list to hide every GPU)",
                   caller, ids[index], index);
    for (std::size_t earlier = 0; earlier < index; ++earlier) {
      TORCHKIT_CHECK(ids[earlier] != ids[index],
                     "{}: device {} is listed twice (positions {} and {}); list each device once", caller,
                     ids[index], earlier, index);
    }
    if (index > 0) {
      spec += ',';
    }
    spec += std::to_string(ids[index]);
  }
  return spec;
}

}  // namespace detail

/// The device indices of a numeric CUDA_VISIBLE_DEVICES spec, in priority order.
///
/// @throws Error for a malformed spec (`"0,,1"`, `"a"`, `"-1"`, `"1,1"`, spaces) and for
///         `GPU-`/`MIG-` UUID entries, which have no index.
///
///     auto ids = torchkit::parse_device_list("2,0");   // {2, 0}
///     auto none = torchkit::parse_device_list("");     // {}: every GPU hidden
[[nodiscard]] inline std::vector<int> parse_device_list(std::string_view spec) {
  const auto entries = detail::split_device_spec(spec, "parse_device_list");
  std::vector<int> ids;
  ids.reserve(entries.size());
  for (std::size_t index = 0; index < entries.size(); ++index) {
    TORCHKIT_CHECK(entries[index].index.has_value(),
                   "parse_device_list: entry {} of \"{}\" (\"{}\") is a UUID, not a device index; "
                   "parse_device_list takes numeric specs only (VisibleDevices accepts UUIDs)",
                   index, spec, entries[index].text);
    ids.push_back(*entries[index].index);
  }
  return ids;
}

/// True when CUDA has been started in this process (by LibTorch or any other library), so that
/// CUDA_VISIBLE_DEVICES can no longer change which GPUs it sees. Like Python's
/// `torch.cuda.is_initialized()`, but it also notices CUDA started outside LibTorch. Never
/// starts CUDA itself.
[[nodiscard]] inline bool cuda_initialized() noexcept { return detail::cuda_driver_initialised(); }

/// RAII: sets CUDA_VISIBLE_DEVICES for this process and, on destruction (also during exception
/// unwinding), restores the value it found, or unsets the variable when it was not set.
///
/// The order of the list is priority order: with "1,0", `cuda:0` is physical GPU 1. An empty
/// spec hides every GPU. CUDA reads the variable once, when it starts, so a VisibleDevices must
/// be created before anything touches CUDA (`torch::cuda::is_available()`,
/// `torch::cuda::device_count()`, `best_device()`, the first CUDA tensor, ...); when CUDA has
/// already started and the spec differs from the current value, the constructor throws instead
/// of silently doing nothing. Changing the environment is not thread-safe: create it at start-up,
/// before other threads run. Non-copyable, non-movable; nest guards, do not interleave them.
///
/// @throws Error for a malformed spec (`"0,,1"`, `"a"`, `"-1"`, `"1,1"`, spaces) or when CUDA is
///         already initialised; the environment is then unchanged.
///
///     int main() {
///       torchkit::VisibleDevices devices("0,1");   // os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"
///       auto device = torchkit::best_device();     // cuda:0 = physical GPU 0
///       ...
///     }
class VisibleDevices {
 public:
  /// Makes the devices of `spec` visible: `"0"`, `"0,1"`, `""` (none), `"GPU-<uuid>"`,
  /// `"MIG-<uuid>"`, or a comma-separated mix.
  explicit VisibleDevices(std::string_view spec) : VisibleDevices(validated(spec), Validated{}) {}

  /// Makes the devices with these indices visible, in this priority order: `{1, 0}`.
  explicit VisibleDevices(std::initializer_list<int> ids)
      : VisibleDevices(std::span<const int>(ids.begin(), ids.size())) {}

  /// Makes the devices with these indices visible, in this priority order.
  explicit VisibleDevices(std::span<const int> ids)
      : VisibleDevices(detail::device_spec_from_ids(ids, "VisibleDevices"), Validated{}) {}

  VisibleDevices(const VisibleDevices&) = delete;
  VisibleDevices& operator=(const VisibleDevices&) = delete;
  VisibleDevices(VisibleDevices&&) = delete;
  VisibleDevices& operator=(VisibleDevices&&) = delete;

  /// Restores CUDA_VISIBLE_DEVICES to the value found on construction (or unsets it).
  ~VisibleDevices() { (void)detail::set_environment_noexcept(detail::visible_devices_variable, previous_); }

  /// The spec this guard set, e.g. `"0,1"`.
  [[nodiscard]] const std::string& spec() const noexcept { return spec_; }

  /// The value CUDA_VISIBLE_DEVICES had before (nullopt: it was not set); restored on destruction.
  [[nodiscard]] const std::optional<std::string>& previous() const noexcept { return previous_; }

  /// One GPU per process, the torchrun convention: reads LOCAL_RANK (set by torchrun for each
  /// process on a node) and makes the LOCAL_RANK-th device of the current CUDA_VISIBLE_DEVICES
  /// visible (so a scheduler's "2,3" is respected: local rank 1 gets GPU 3), or device LOCAL_RANK
  /// when CUDA_VISIBLE_DEVICES is not set.
  ///
  /// @throws Error when LOCAL_RANK is unset, not a non-negative integer, or beyond the list.
  ///
  ///     auto devices = torchkit::VisibleDevices::for_local_rank();   // LOCAL_RANK=1 -> "1"
  [[nodiscard]] static VisibleDevices for_local_rank() {
    const auto current = detail::get_environment(detail::visible_devices_variable);
    if (!current) {
      const int rank = local_rank();
      return VisibleDevices(std::to_string(rank), Validated{});
    }
    const auto entries = detail::split_device_spec(
        *current, "VisibleDevices::for_local_rank (the current CUDA_VISIBLE_DEVICES)");
    const auto rank = static_cast<std::size_t>(local_rank());
    TORCHKIT_CHECK(rank < entries.size(),
                   "VisibleDevices::for_local_rank: LOCAL_RANK={} is beyond the {} device(s) of "
                   "CUDA_VISIBLE_DEVICES=\"{}\" (valid local ranks: {}); start at most that many processes "
                   "per node (torchrun --nproc-per-node)",
                   rank, entries.size(), *current, valid_ranks(entries.size()));
    return VisibleDevices(entries[rank].text, Validated{});
  }

  /// Like for_local_rank(), with the devices of this node given: local rank k gets `devices[k]`.
  ///
  ///     auto devices = torchkit::VisibleDevices::for_local_rank({4, 5, 6, 7});   // LOCAL_RANK=1 -> "5"
  [[nodiscard]] static VisibleDevices for_local_rank(std::span<const int> devices) {
    (void)detail::device_spec_from_ids(devices, "VisibleDevices::for_local_rank");
    const auto rank = static_cast<std::size_t>(local_rank());
    TORCHKIT_CHECK(rank < devices.size(),
                   "VisibleDevices::for_local_rank: LOCAL_RANK={} is beyond the device list of {} entr{} "
                   "(valid local ranks: {})",
                   rank, devices.size(), devices.size() == 1 ? "y" : "ies", valid_ranks(devices.size()));
    return VisibleDevices(std::to_string(devices[rank]), Validated{});
  }

  /// Like for_local_rank(std::span<const int>), for a braced list.
  [[nodiscard]] static VisibleDevices for_local_rank(std::initializer_list<int> devices) {
    return for_local_rank(std::span<const int>(devices.begin(), devices.size()));
  }

 private:
  struct Validated {};

  // `spec` is valid here. Refuses to act when CUDA has started and the value would change.
  VisibleDevices(std::string spec, Validated)
      : spec_(std::move(spec)), previous_(detail::get_environment(detail::visible_devices_variable)) {
    if (previous_ != spec_ && detail::cuda_driver_initialised()) {
      detail::fail(
          "VisibleDevices(\"{}\"): CUDA is already initialised in this process, so setting "
          "CUDA_VISIBLE_DEVICES now would silently do nothing (CUDA read it once, at start-up, when it was {}). "
          "Create the VisibleDevices before anything touches CUDA (torch::cuda::is_available(), device_count(), "
          "best_device(), the first CUDA tensor), or set CUDA_VISIBLE_DEVICES in the environment that starts "
          "the program",
          spec_, detail::quoted_environment_value(previous_));
    }
    detail::set_environment("VisibleDevices", detail::visible_devices_variable, spec_);
  }

  static std::string validated(std::string_view spec) {
    (void)detail::split_device_spec(spec, "VisibleDevices");
    return std::string(spec);
  }

  static int local_rank() {
    const auto value = detail::get_environment("LOCAL_RANK");
    TORCHKIT_CHECK(value.has_value(),
                   "VisibleDevices::for_local_rank: LOCAL_RANK is not set; torchrun (torch.distributed.run) sets "
                   "it for every process it starts. Launch with torchrun, or choose the device yourself: "
                   "VisibleDevices(\"0\")");
    int rank = -1;
    const auto [end, error] = std::from_chars(value->data(), value->data() + value->size(), rank);
    TORCHKIT_CHECK(error == std::errc() && end == value->data() + value->size() && rank >= 0,
                   "VisibleDevices::for_local_rank: LOCAL_RANK=\"{}\" is not a non-negative integer", *value);
    return rank;
  }

  static std::string valid_ranks(std::size_t count) {
    return count == 0 ? std::string("none") : fmt::format("0..{}", count - 1);
  }

  std::string spec_;
  std::optional<std::string> previous_;
};

/// The device to run on: `cuda:0` where CUDA is available, else `cpu` (Python:
/// `torch.device("cuda" if torch.cuda.is_available() else "cpu")`). Starts CUDA when LibTorch
/// has it, so create any VisibleDevices first.
///
///     auto model = Net();
///     model->to(torchkit::best_device());
[[nodiscard]] inline c10::Device best_device() {
  if (torch::cuda::is_available()) {
    return c10::Device(c10::DeviceType::CUDA, 0);
  }
  return c10::Device(c10::DeviceType::CPU);
}

}  // namespace torchkit
