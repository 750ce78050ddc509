#pragma once
/// @file detail/lr_support.hpp
/// Internals of lr.hpp: the initial learning rates every scheduler of one optimizer shares
/// (Python's `param_group['initial_lr']`), reading and writing a parameter group's lr and
/// momentum, Python's arithmetic helpers, and typed archive access for save/load.

#include <torchkit/detail/config.hpp>
#include <torchkit/error.hpp>

#include <ATen/core/ivalue.h>
#include <c10/util/Exception.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace torchkit::detail {

/// The initial lr of each parameter group of one optimizer: Python keeps it in
/// `param_group['initial_lr']`, set by the first scheduler (`setdefault`) and read by every
/// later one. LibTorch's parameter groups have no room for it, so it lives here, shared by
/// every scheduler of that optimizer while any of them is alive.
struct InitialLrs {
  std::vector<double> values;
};

/// The InitialLrs of `optimizer`: the live record when a scheduler of it exists, else a new,
/// empty one. Thread-safe.
[[nodiscard]] inline std::shared_ptr<InitialLrs> shared_initial_lrs(const torch::optim::Optimizer& optimizer) {
  static std::mutex mutex;
  static std::unordered_map<const torch::optim::Optimizer*, std::weak_ptr<InitialLrs>> records;
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto found = records.find(&optimizer); found != records.end()) {
    if (auto record = found->second.lock()) {
      return record;
    }
  }
  std::erase_if(records, [](const auto& entry) { return entry.second.expired(); });
  auto record = std::make_shared<InitialLrs>();
  records[&optimizer] = record;
  return record;
}

/// The lr of parameter group `index` (Python's `param_group['lr']`).
[[nodiscard]] inline double group_lr(const torch::optim::Optimizer& optimizer, std::size_t index) {
  try {
    return optimizer.param_groups()[index].options().get_lr();
  } catch (const c10::Error&) {
    fail("torchkit::lr: the options of param group {} do not implement get_lr(), so no scheduler "
         "can read or set their learning rate",
         index);
  }
}

/// Sets the lr of parameter group `index`.
inline void set_group_lr(torch::optim::Optimizer& optimizer, std::size_t index, double lr) {
  optimizer.param_groups()[index].options().set_lr(lr);
}

/// How an optimizer exposes momentum: Python's `'momentum' in optimizer.defaults` (SGD,
/// RMSprop) or `'betas' in optimizer.defaults` (Adam, AdamW: beta1 plays the momentum's role).
enum class MomentumKind { none, momentum, beta1 };

[[nodiscard]] inline MomentumKind momentum_kind(const torch::optim::OptimizerOptions& options) {
  if (dynamic_cast<const torch::optim::SGDOptions*>(&options) != nullptr ||
      dynamic_cast<const torch::optim::RMSpropOptions*>(&options) != nullptr) {
    return MomentumKind::momentum;
  }
  if (dynamic_cast<const torch::optim::AdamOptions*>(&options) != nullptr ||
      dynamic_cast<const torch::optim::AdamWOptions*>(&options) != nullptr) {
    return MomentumKind::beta1;
  }
  return MomentumKind::none;
}

/// The momentum kind shared by every parameter group (and the defaults) of `optimizer`; `none`
/// when any of them has none.
[[nodiscard]] inline MomentumKind momentum_kind(const torch::optim::Optimizer& optimizer) {
  const MomentumKind kind = momentum_kind(optimizer.defaults());
  for (const auto& group : optimizer.param_groups()) {
    if (momentum_kind(group.options()) != kind) {
      return MomentumKind::none;
    }
  }
  return kind;
}

/// The momentum (or beta1) of parameter group `index`; the kind must have been checked.
[[nodiscard]] inline double group_momentum(const torch::optim::Optimizer& optimizer, std::size_t index) {
  const auto& options = optimizer.param_groups()[index].options();
  if (const auto* sgd = dynamic_cast<const torch::optim::SGDOptions*>(&options)) {
    return sgd->momentum();
  }
  if (const auto* rmsprop = dynamic_cast<const torch::optim::RMSpropOptions*>(&options)) {
    return rmsprop->momentum();
  }
  if (const auto* adam = dynamic_cast<const torch::optim::AdamOptions*>(&options)) {
    return std::get<0>(adam->betas());
  }
  if (const auto* adamw = dynamic_cast<const torch::optim::AdamWOptions*>(&options)) {
    return std::get<0>(adamw->betas());
  }
  fail("torchkit::lr: param group {} has no momentum or betas", index);
}

/// Sets the momentum (SGD, RMSprop) or beta1 (Adam, AdamW, keeping beta2) of group `index`.
inline void set_group_momentum(torch::optim::Optimizer& optimizer, std::size_t index, double value) {
  auto& options = optimizer.param_groups()[index].options();
  if (auto* sgd = dynamic_cast<torch::optim::SGDOptions*>(&options)) {
    sgd->momentum(value);
  } else if (auto* rmsprop = dynamic_cast<torch::optim::RMSpropOptions*>(&options)) {
    rmsprop->momentum(value);
  } else if (auto* adam = dynamic_cast<torch::optim::AdamOptions*>(&options)) {
    adam->betas(std::make_tuple(value, std::get<1>(adam->betas())));
  } else if (auto* adamw = dynamic_cast<torch::optim::AdamWOptions*>(&options)) {
    adamw->betas(std::make_tuple(value, std::get<1>(adamw->betas())));
  } else {
    fail("torchkit::lr: param group {} has no momentum or betas", index);
  }
}

/// Python's `a % b` for integers (the result has the sign of `b`).
[[nodiscard]] constexpr int64_t python_mod(int64_t a, int64_t b) noexcept {
  const int64_t remainder = a % b;
  return (remainder != 0 && ((remainder < 0) != (b < 0))) ? remainder + b : remainder;
}

/// Python's `a // b` for integers (rounds toward negative infinity).
[[nodiscard]] constexpr int64_t python_floor_div(int64_t a, int64_t b) noexcept {
  const int64_t quotient = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? quotient - 1 : quotient;
}

/// Python's `bisect.bisect_right(sorted_values, value)`.
[[nodiscard]] inline std::size_t bisect_right(const std::vector<int64_t>& sorted_values, int64_t value) {
  return static_cast<std::size_t>(std::upper_bound(sorted_values.begin(), sorted_values.end(), value) -
                                  sorted_values.begin());
}

/// `[a, b, c]` with each double in its shortest round-trip form.
template <class T>
[[nodiscard]] std::string list_to_string(const std::vector<T>& values) {
  return fmt::format("[{}]", fmt::join(values, ", "));
}

/// The largest count of epochs or steps a scheduler accepts: 2^53, where epochs stop being exact
/// as doubles (no run gets there); it keeps every epoch computation clear of int64 overflow.
inline constexpr int64_t max_count = int64_t{1} << 53;

/// A count of epochs or steps: in [1, 2^53].
inline void check_positive(std::string_view owner, std::string_view name, int64_t value) {
  TORCHKIT_CHECK(value > 0, "{}: {} must be a positive integer, got {}", owner, name, value);
  TORCHKIT_CHECK(value <= max_count, "{}: {} is {}; the largest count a scheduler accepts is 2^53 = {}", owner, name,
                 value, max_count);
}

inline void check_non_negative(std::string_view owner, std::string_view name, double value) {
  TORCHKIT_CHECK(std::isfinite(value) && value >= 0, "{}: {} must be a finite number >= 0, got {}", owner, name,
                 value);
}

inline void check_non_negative(std::string_view owner, std::string_view name, const std::vector<double>& values) {
  for (std::size_t index = 0; index < values.size(); ++index) {
    TORCHKIT_CHECK(std::isfinite(values[index]) && values[index] >= 0,
                   "{}: {} must be finite numbers >= 0, got {} for param group {}", owner, name, values[index],
                   index);
  }
}

/// Milestones must be >= 0 and sorted (equal neighbours are allowed: Python counts them).
inline void check_milestones(std::string_view owner, const std::vector<int64_t>& milestones) {
  for (std::size_t index = 0; index < milestones.size(); ++index) {
    TORCHKIT_CHECK(milestones[index] >= 0, "{}: milestones must be >= 0, got milestones[{}] = {} in {}", owner,
                   index, milestones[index], list_to_string(milestones));
    TORCHKIT_CHECK(index == 0 || milestones[index - 1] <= milestones[index],
                   "{}: milestones must be increasing, got milestones[{}] = {} after {} in {}", owner, index,
                   milestones[index], milestones[index - 1], list_to_string(milestones));
  }
}

inline std::vector<std::function<double(int64_t)>> lambdas_for_groups(std::vector<std::function<double(int64_t)>> lambdas, bool one_for_all,
                                                std::size_t group_count, std::string_view owner) {
  if (one_for_all) {
    TORCHKIT_CHECK(lambdas.size() == 1 && lambdas.front(), "{}: lr_lambda is empty", owner);
    return std::vector<std::function<double(int64_t)>>(group_count, lambdas.front());
  }
  TORCHKIT_CHECK(lambdas.size() == group_count, "{}: Expected {} lr_lambdas, but got {}", owner, group_count,
                 lambdas.size());
  for (std::size_t index = 0; index < lambdas.size(); ++index) {
    TORCHKIT_CHECK(static_cast<bool>(lambdas[index]), "{}: lr_lambda[{}] is empty", owner, index);
  }
  return lambdas;
}

/// Writes typed values under string keys of an archive (the scheduler's state).
class ArchiveWriter {
 public:
  explicit ArchiveWriter(torch::serialize::OutputArchive& archive) : archive_(archive) {}

  void write_int(const std::string& key, int64_t value) { archive_.write(key, c10::IValue(value)); }
  void write_double(const std::string& key, double value) { archive_.write(key, c10::IValue(value)); }
  void write_bool(const std::string& key, bool value) { archive_.write(key, c10::IValue(value)); }
  void write_string(const std::string& key, const std::string& value) { archive_.write(key, c10::IValue(value)); }
  void write_doubles(const std::string& key, const std::vector<double>& values) {
    c10::List<double> list;
    list.reserve(values.size());
    for (const double value : values) {
      list.push_back(value);
    }
    archive_.write(key, c10::IValue(std::move(list)));
  }
  void write_ints(const std::string& key, const std::vector<int64_t>& values) {
    c10::List<int64_t> list;
    list.reserve(values.size());
    for (const int64_t value : values) {
      list.push_back(value);
    }
    archive_.write(key, c10::IValue(std::move(list)));
  }
  void write_optional_int(const std::string& key, const std::optional<int64_t>& value) {
    archive_.write(key, value ? c10::IValue(*value) : c10::IValue());
  }

  [[nodiscard]] torch::serialize::OutputArchive& archive() noexcept { return archive_; }

 private:
  torch::serialize::OutputArchive& archive_;
};

/// Reads typed values written by ArchiveWriter; every missing key or wrong type throws Error
/// naming the key and `owner` (the scheduler being loaded).
class ArchiveReader {
 public:
  ArchiveReader(torch::serialize::InputArchive& archive, std::string owner)
      : archive_(archive), owner_(std::move(owner)) {}

  [[nodiscard]] int64_t read_int(const std::string& key) {
    const c10::IValue value = read(key);
    check(value.isInt(), key, "an integer", value);
    return value.toInt();
  }
  [[nodiscard]] double read_double(const std::string& key) {
    const c10::IValue value = read(key);
    check(value.isDouble(), key, "a float", value);
    return value.toDouble();
  }
  [[nodiscard]] bool read_bool(const std::string& key) {
    const c10::IValue value = read(key);
    check(value.isBool(), key, "a bool", value);
    return value.toBool();
  }
  [[nodiscard]] std::string read_string(const std::string& key) {
    const c10::IValue value = read(key);
    check(value.isString(), key, "a string", value);
    return value.toStringRef();
  }
  [[nodiscard]] std::vector<double> read_doubles(const std::string& key) {
    const c10::IValue value = read(key);
    if (value.isList() && value.toListRef().empty()) {
      return {};
    }
    check(value.isDoubleList(), key, "a list of floats", value);
    return value.toDoubleVector();
  }
  [[nodiscard]] std::vector<int64_t> read_ints(const std::string& key) {
    const c10::IValue value = read(key);
    if (value.isList() && value.toListRef().empty()) {
      return {};
    }
    check(value.isIntList(), key, "a list of integers", value);
    return value.toIntVector();
  }
  [[nodiscard]] std::optional<int64_t> read_optional_int(const std::string& key) {
    const c10::IValue value = read(key);
    if (value.isNone()) {
      return std::nullopt;
    }
    check(value.isInt(), key, "an integer or None", value);
    return value.toInt();
  }
  /// The nested archive under `key`.
  [[nodiscard]] torch::serialize::InputArchive read_archive(const std::string& key) {
    torch::serialize::InputArchive nested;
    TORCHKIT_CHECK(archive_.try_read(key, nested), "{}: the archive has no '{}'", owner_, key);
    return nested;
  }

  [[nodiscard]] const std::string& owner() const noexcept { return owner_; }

 private:
  [[nodiscard]] c10::IValue read(const std::string& key) {
    c10::IValue value;
    TORCHKIT_CHECK(archive_.try_read(key, value), "{}: the archive has no '{}' (was it saved by this kind of scheduler?)",
                   owner_, key);
    return value;
  }
  void check(bool ok, const std::string& key, std::string_view expected, const c10::IValue& value) const {
    TORCHKIT_CHECK(ok, "{}: '{}' in the archive should be {}, got a {}", owner_, key, expected, value.tagKind());
  }

  torch::serialize::InputArchive& archive_;
  std::string owner_;
};

/// Reads the group momentums a cycling scheduler (OneCycleLR, CyclicLR) saved, after checking
/// that `optimizer` has the kind of momentum the archive cycles (`use_beta1`: Adam's beta1,
/// else SGD's momentum) and that there is one value per group (none without cycling).
[[nodiscard]] inline std::vector<double> read_cycled_momentums(ArchiveReader& reader,
                                                               const torch::optim::Optimizer& optimizer,
                                                               bool cycle_momentum, bool use_beta1,
                                                               std::size_t group_count) {
  if (cycle_momentum) {
    TORCHKIT_CHECK(momentum_kind(optimizer) == (use_beta1 ? MomentumKind::beta1 : MomentumKind::momentum),
                   "{}: the archive cycles the {}, which this optimizer does not have", reader.owner(),
                   use_beta1 ? "beta1 of betas" : "momentum");
  }
  auto momentums = reader.read_doubles("optimizer_momentums");
  TORCHKIT_CHECK(momentums.size() == (cycle_momentum ? group_count : 0),
                 "{}: 'optimizer_momentums' has {} values for {} parameter groups", reader.owner(), momentums.size(),
                 group_count);
  return momentums;
}

}  // namespace torchkit::detail
