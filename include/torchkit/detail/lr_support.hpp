#pragma once
/// @file detail/lr_support.hpp
/// Internals of the schedulers (lr/*.hpp): the initial learning rates every scheduler of one
/// optimizer shares (Python's `param_group['initial_lr']`), reading and writing the groups' lr
/// and momentum, Python's arithmetic helpers, the checks every scheduler's fields use, and
/// typed archive access for save/load.

#include <torchkit/detail/config.hpp>
#include <torchkit/detail/validate.hpp>
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
#include <atomic>
#include <concepts>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace torchkit::detail::lr {

// ---------------------------------------------------------------------------------------------
// The optimizer's parameter groups
// ---------------------------------------------------------------------------------------------

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

/// The lr of every group (Python's `[group['lr'] for group in optimizer.param_groups]`).
[[nodiscard]] inline std::vector<double> group_lrs(const torch::optim::Optimizer& optimizer) {
  std::vector<double> lrs(optimizer.param_groups().size());
  for (std::size_t index = 0; index < lrs.size(); ++index) {
    lrs[index] = group_lr(optimizer, index);
  }
  return lrs;
}

/// Sets the lr of parameter group `index`.
inline void set_group_lr(torch::optim::Optimizer& optimizer, std::size_t index, double lr) {
  optimizer.param_groups()[index].options().set_lr(lr);
}

/// Sets the lr of the first `lrs.size()` groups.
inline void set_group_lrs(torch::optim::Optimizer& optimizer, const std::vector<double>& lrs) {
  for (std::size_t index = 0; index < lrs.size(); ++index) {
    set_group_lr(optimizer, index, lrs[index]);
  }
}

/// What every scheduler checks when it is created: the optimizer has parameter groups, and
/// each group's options have a readable lr. Returns the number of groups.
inline std::size_t check_optimizer(const torch::optim::Optimizer& optimizer, std::string_view owner) {
  TORCHKIT_CHECK(!optimizer.param_groups().empty(),
                 "{}: the optimizer has no parameter groups; give it parameters before creating a scheduler", owner);
  for (std::size_t index = 0; index < optimizer.param_groups().size(); ++index) {
    try {
      (void)optimizer.param_groups()[index].options().get_lr();
    } catch (const c10::Error&) {
      fail("{}: the options of param group {} do not implement get_lr(), so no scheduler can read or set their "
           "learning rate",
           owner, index);
    }
  }
  return optimizer.param_groups().size();
}

/// Throws Error when parameter groups were added to the optimizer since the scheduler
/// `type_name` (which had `expected` of them) was created: its `step()` refuses.
inline void check_group_count(const torch::optim::Optimizer& optimizer, std::size_t expected,
                              std::string_view type_name) {
  TORCHKIT_CHECK(optimizer.param_groups().size() == expected,
                 "{}::step: the optimizer has {} parameter groups, but had {} when the scheduler was created",
                 type_name, optimizer.param_groups().size(), expected);
}

/// What changes when `optimizer.step()` runs: how many parameters have optimizer state, and the
/// first element of every parameter on the CPU (raw bits). LibTorch's optimizers update
/// parameters through `.data()`, which bumps no version counter, so the values themselves are
/// compared. Accelerator parameters are not read (that would sync the device): there only the
/// state count tells.
[[nodiscard]] inline std::vector<std::uint64_t> step_fingerprint(const torch::optim::Optimizer& optimizer) {
  std::vector<std::uint64_t> print{static_cast<std::uint64_t>(optimizer.state().size())};
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& parameter : group.params()) {
      if (!parameter.defined() || !parameter.device().is_cpu() || parameter.numel() == 0 ||
          !parameter.has_storage()) {
        continue;
      }
      std::uint64_t bits = 0;
      std::memcpy(&bits, parameter.data_ptr(), std::min<std::size_t>(sizeof(bits), parameter.element_size()));
      print.push_back(bits);
    }
  }
  return print;
}

/// Whether the step-order warning was given in this process (Python warns once).
[[nodiscard]] inline std::atomic<bool>& step_order_warned() {
  static std::atomic<bool> warned{false};
  return warned;
}

/// Python's warning for `scheduler.step()` before any `optimizer.step()`, once per process,
/// through LibTorch's warning handler (TORCH_WARN: printed to stderr by default; silence or
/// capture it with a c10::WarningUtils::WarningHandlerGuard — c10::Warning:: in LibTorch 1.13).
inline void warn_step_before_optimizer(std::string_view type_name) {
  if (step_order_warned().exchange(true)) return;
  TORCH_WARN(type_name, "::step: called before the optimizer's step(); call optimizer.step() first and then "
             "scheduler.step(), or the first value of the schedule is skipped (PyTorch warns the same: \"Detected "
             "call of `lr_scheduler.step()` before `optimizer.step()`\")");
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

/// The momentum (or beta1) of every group; the kind must have been checked.
[[nodiscard]] inline std::vector<double> group_momentums(const torch::optim::Optimizer& optimizer) {
  std::vector<double> momentums;
  for (const auto& group : optimizer.param_groups()) {
    const auto& options = group.options();
    if (const auto* sgd = dynamic_cast<const torch::optim::SGDOptions*>(&options)) {
      momentums.push_back(sgd->momentum());
    } else if (const auto* rmsprop = dynamic_cast<const torch::optim::RMSpropOptions*>(&options)) {
      momentums.push_back(rmsprop->momentum());
    } else if (const auto* adam = dynamic_cast<const torch::optim::AdamOptions*>(&options)) {
      momentums.push_back(std::get<0>(adam->betas()));
    } else if (const auto* adamw = dynamic_cast<const torch::optim::AdamWOptions*>(&options)) {
      momentums.push_back(std::get<0>(adamw->betas()));
    } else {
      fail("torchkit::lr: param group {} has no momentum or betas", momentums.size());
    }
  }
  return momentums;
}

/// Sets the momentum (SGD, RMSprop) or beta1 (Adam, AdamW, keeping beta2) of the first
/// `momentums.size()` groups; the kind must have been checked.
inline void set_group_momentums(torch::optim::Optimizer& optimizer, const std::vector<double>& momentums) {
  for (std::size_t index = 0; index < momentums.size(); ++index) {
    auto& options = optimizer.param_groups()[index].options();
    const double value = momentums[index];
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
}

// ---------------------------------------------------------------------------------------------
// Python's arithmetic
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// The checks of the options' fields: `(owner, name, value)`, throwing Error naming both
// ---------------------------------------------------------------------------------------------

/// The largest count of epochs or steps a scheduler accepts: 2^53, where epochs stop being exact
/// as doubles (no run gets there); it keeps every epoch computation clear of int64 overflow.
inline constexpr int64_t max_count = int64_t{1} << 53;

/// A count of epochs or steps: in [1, 2^53] (Python's wording for the lower bound).
inline void check_count(std::string_view owner, std::string_view name, int64_t value) {
  TORCHKIT_CHECK(value > 0, "{}: Expected positive integer {}, but got {}", owner, name, value);
  TORCHKIT_CHECK(value <= max_count, "{}: {} is {}; the largest count a scheduler accepts is 2^53 = {}", owner, name,
                 value, max_count);
}

/// The schedulers' finite, non-negative numbers: the one check of detail/validate.hpp.
using torchkit::detail::check_finite_non_negative;

/// A count that may be 0 (patience, cooldown), with the one number check of detail/validate.hpp.
inline void check_non_negative_count(std::string_view owner, std::string_view name, int64_t value) {
  check_finite_non_negative(owner, name, static_cast<double>(value));
}

/// A divisor: finite and > 0.
inline void check_positive(std::string_view owner, std::string_view name, double value) {
  TORCHKIT_CHECK(std::isfinite(value) && value > 0, "{}: {} must be a finite number > 0, got {}", owner, name, value);
}

/// A multiplicative factor of ConstantLR (`factor`) or LinearLR (`start_factor`, `end_factor`)
/// in [0, 1], with Python's wording; 0 only for `end_factor`, since the lr is divided by the others.
inline void check_factor(std::string_view owner, std::string_view name, double value) {
  const bool divisor = name != "end_factor";
  TORCHKIT_CHECK(value <= 1.0 && (divisor ? value > 0 : value >= 0),
                 "{}: {} multiplicative factor expected to be between 0 and 1{}, got {}={}", owner,
                 name == "factor" ? "Constant" : divisor ? "Starting" : "Ending",
                 divisor ? " (0 excluded: the lr is divided by it)" : "", name, value);
}

/// Milestones must be >= 0 and sorted (equal neighbours are allowed: Python counts them).
inline void check_milestones(std::string_view owner, std::string_view name, const std::vector<int64_t>& milestones) {
  for (std::size_t index = 0; index < milestones.size(); ++index) {
    TORCHKIT_CHECK(milestones[index] >= 0, "{}: {} must be >= 0, got {}[{}] = {} in {}", owner, name, name, index,
                   milestones[index], list_to_string(milestones));
    TORCHKIT_CHECK(index == 0 || milestones[index - 1] <= milestones[index],
                   "{}: {} must be increasing, got {}[{}] = {} after {} in {}", owner, name, name, index,
                   milestones[index], milestones[index - 1], list_to_string(milestones));
  }
}

/// `Check` for a field that must be given (`std::optional` without a default).
template <class T, void (*Check)(std::string_view, std::string_view, T)>
void required(std::string_view owner, std::string_view name, const std::optional<T>& value) {
  TORCHKIT_CHECK(value.has_value(), "{}: {} is required", owner, name);
  Check(owner, name, *value);
}

/// `Check` for a field that may be left out.
template <class T, void (*Check)(std::string_view, std::string_view, T)>
void if_given(std::string_view owner, std::string_view name, const std::optional<T>& value) {
  if (value) {
    Check(owner, name, *value);
  }
}

// ---------------------------------------------------------------------------------------------
// Typed archive access
// ---------------------------------------------------------------------------------------------

/// The types a scheduler's state holds; a field of another type (a function) is not saved.
template <class T>
concept Archivable = std::is_same_v<T, int64_t> || std::is_same_v<T, double> || std::is_same_v<T, bool> ||
                     std::is_same_v<T, std::string> || std::is_same_v<T, std::vector<double>> ||
                     std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::optional<int64_t>> ||
                     std::is_same_v<T, std::optional<double>>;

/// Writes typed values under string keys of an archive (the scheduler's state).
class ArchiveWriter {
 public:
  explicit ArchiveWriter(torch::serialize::OutputArchive& archive) : archive_(archive) {}

  template <Archivable T>
  void write(const std::string& key, const T& value) {
    archive_.write(key, to_ivalue(value));
  }
  /// A nested archive, written by `fill(ArchiveWriter&)`.
  template <class Fill>
  void write_nested(const std::string& key, Fill&& fill) {
    torch::serialize::OutputArchive nested(archive_.compilation_unit());
    ArchiveWriter writer(nested);
    std::forward<Fill>(fill)(writer);
    archive_.write(key, nested);
  }

 private:
  template <class T>
  static c10::IValue to_ivalue(const T& value) {
    if constexpr (std::is_same_v<T, std::vector<double>> || std::is_same_v<T, std::vector<int64_t>>) {
      return c10::IValue(c10::List<typename T::value_type>(value));
    } else if constexpr (std::is_same_v<T, std::optional<int64_t>> || std::is_same_v<T, std::optional<double>>) {
      return value ? c10::IValue(*value) : c10::IValue();
    } else {
      return c10::IValue(value);
    }
  }

  torch::serialize::OutputArchive& archive_;
};

/// Reads typed values written by ArchiveWriter; every missing key or wrong type throws Error
/// naming the key and `owner` (the public function loading: `StepLR::load`).
class ArchiveReader {
 public:
  ArchiveReader(torch::serialize::InputArchive& archive, std::string owner)
      : archive_(archive), owner_(std::move(owner)) {}

  template <Archivable T>
  [[nodiscard]] T read(const std::string& key) {
    const c10::IValue value = read_value(key);
    if constexpr (std::is_same_v<T, int64_t>) {
      check(value.isInt(), key, "an integer", value);
      return value.toInt();
    } else if constexpr (std::is_same_v<T, double>) {
      check(value.isDouble(), key, "a float", value);
      return value.toDouble();
    } else if constexpr (std::is_same_v<T, bool>) {
      check(value.isBool(), key, "a bool", value);
      return value.toBool();
    } else if constexpr (std::is_same_v<T, std::string>) {
      check(value.isString(), key, "a string", value);
      return value.toStringRef();
    } else if constexpr (std::is_same_v<T, std::vector<double>>) {
      if (value.isList() && value.toListRef().empty()) {
        return {};
      }
      check(value.isDoubleList(), key, "a list of floats", value);
      return value.toDoubleVector();
    } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
      if (value.isList() && value.toListRef().empty()) {
        return {};
      }
      check(value.isIntList(), key, "a list of integers", value);
      return value.toIntVector();
    } else {
      if (value.isNone()) {
        return std::nullopt;
      }
      if constexpr (std::is_same_v<T, std::optional<int64_t>>) {
        check(value.isInt(), key, "an integer or None", value);
        return value.toInt();
      } else {
        check(value.isDouble(), key, "a float or None", value);
        return value.toDouble();
      }
    }
  }
  /// A float, or a list of floats (a GroupValues).
  [[nodiscard]] c10::IValue read_number_or_list(const std::string& key) {
    c10::IValue value = read_value(key);
    check(value.isDouble() || value.isDoubleList() || (value.isList() && value.toListRef().empty()), key,
          "a float or a list of floats", value);
    return value;
  }
  /// The nested archive under `key`.
  [[nodiscard]] torch::serialize::InputArchive read_nested(const std::string& key) {
    torch::serialize::InputArchive nested;
    TORCHKIT_CHECK(archive_.try_read(key, nested), "{}: the archive has no '{}'", owner_, key);
    return nested;
  }

  [[nodiscard]] const std::string& owner() const noexcept { return owner_; }

 private:
  [[nodiscard]] c10::IValue read_value(const std::string& key) {
    c10::IValue value;
    TORCHKIT_CHECK(archive_.try_read(key, value), "{}: the archive has no '{}' (was it saved by this kind of scheduler?)",
                   owner_, key);
    return value;
  }
  void check(bool ok, const std::string& key, std::string_view expected, const c10::IValue& value) const {
    TORCHKIT_CHECK(ok, "{}: '{}' in the archive should be {}, got a value of type {}", owner_, key, expected,
                   value.tagKind());
  }

  torch::serialize::InputArchive& archive_;
  std::string owner_;
};

// ---------------------------------------------------------------------------------------------
// The options' field tables, and what a scheduler's rule sees
// ---------------------------------------------------------------------------------------------

/// A value per parameter group, one for all or a list (torchkit::lr::GroupValues).
template <class T>
concept PerGroup = requires(const T& value) {
  { value.for_every_group() } -> std::same_as<bool>;
  { value.values() } -> std::same_as<const std::vector<double>&>;
  { value.to_string() } -> std::same_as<std::string>;
};

/// How a field's check takes its value: scalars by value, the rest by reference.
template <class T>
using CheckArgument = std::conditional_t<std::is_scalar_v<T>, T, const T&>;
template <class T>
using Check = void (*)(std::string_view owner, std::string_view name, CheckArgument<T> value);

/// One field of an options struct: Python's name, the member, and its check (none: any value).
/// Each options struct lists its fields once, in `static constexpr auto fields()`; the checks
/// at construction and load, the arguments in to_string(), the saved state and the tests'
/// per-field lists all come from that list.
template <class Options, class T>
struct Field {
  std::string_view name;
  T Options::*member;
  Check<T> check;
};

template <class Options, class T>
constexpr Field<Options, T> field(std::string_view name, T Options::*member,
                                  std::type_identity_t<Check<T>> check = nullptr) {
  return {name, member, check};
}

/// Calls `visit(field)` for every field of `Options`, in order.
template <class Options, class Visit>
void for_each_field(Visit&& visit) {
  std::apply([&](const auto&... fields) { (visit(fields), ...); }, Options::fields());
}

/// Runs every field's check: Error names `owner` (the public function) and the field.
template <class Options>
void check_fields(const Options& options, std::string_view owner) {
  for_each_field<Options>([&](const auto& field) {
    if (field.check != nullptr) {
      field.check(owner, field.name, options.*field.member);
    }
  });
}

template <class T>
inline constexpr bool is_function_v = false;
template <class R, class... A>
inline constexpr bool is_function_v<std::function<R(A...)>> = true;
template <class T>
inline constexpr bool is_function_list_v = false;
template <class R, class... A>
inline constexpr bool is_function_list_v<std::vector<std::function<R(A...)>>> = true;

/// A field's value in to_string(): strings quoted, lists in brackets, functions as
/// `<function>`, an optional not given as `None`.
template <class T>
[[nodiscard]] std::string format_field(const T& value) {
  if constexpr (std::is_same_v<T, std::string>) {
    return fmt::format("'{}'", value);
  } else if constexpr (PerGroup<T>) {
    return value.to_string();
  } else if constexpr (is_function_v<T>) {
    return value ? "<function>" : "None";
  } else if constexpr (is_function_list_v<T>) {
    return fmt::format("[{} functions]", value.size());
  } else if constexpr (std::is_same_v<T, std::optional<int64_t>> || std::is_same_v<T, std::optional<double>>) {
    return value ? fmt::format("{}", *value) : "None";
  } else if constexpr (std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::vector<double>>) {
    return list_to_string(value);
  } else {
    return fmt::format("{}", value);
  }
}

/// `step_size=10, gamma=0.1`.
template <class Options>
[[nodiscard]] std::string format_fields(const Options& options) {
  std::string text;
  for_each_field<Options>([&](const auto& field) {
    text += fmt::format("{}{}={}", text.empty() ? "" : ", ", field.name, format_field(options.*field.member));
  });
  return text;
}

/// Writes every field under its name. A function is not saved: the archive records whether
/// there was one (or how many), and load() requires the same.
template <class Options>
void save_fields(ArchiveWriter& writer, const Options& options) {
  for_each_field<Options>([&](const auto& field) {
    const std::string key(field.name);
    const auto& value = options.*field.member;
    using T = std::remove_cvref_t<decltype(value)>;
    if constexpr (PerGroup<T>) {
      if (value.for_every_group()) {
        writer.write(key, value.values().front());
      } else {
        writer.write(key, value.values());
      }
    } else if constexpr (is_function_v<T>) {
      writer.write(key, static_cast<bool>(value));
    } else if constexpr (is_function_list_v<T>) {
      writer.write(key, static_cast<int64_t>(value.size()));
    } else {
      writer.write(key, value);
    }
  });
}

/// `options` with every field read back from the archive (functions kept, after checking that
/// the archive was saved with as many).
template <class Options>
[[nodiscard]] Options load_fields(ArchiveReader& reader, Options options) {
  for_each_field<Options>([&](const auto& field) {
    const std::string key(field.name);
    auto& value = options.*field.member;
    using T = std::remove_cvref_t<decltype(value)>;
    if constexpr (PerGroup<T>) {
      const c10::IValue saved = reader.read_number_or_list(key);
      value = saved.isDouble() ? T(saved.toDouble())
                               : T(saved.isDoubleList() ? saved.toDoubleVector() : std::vector<double>{});
    } else if constexpr (is_function_v<T>) {
      const bool saved = reader.read<bool>(key);
      TORCHKIT_CHECK(saved == static_cast<bool>(value),
                     "{}: the archive was saved {} a {}, this scheduler has {}; construct it as the saved one was",
                     reader.owner(), saved ? "with" : "without", key, value ? "one" : "none");
    } else if constexpr (is_function_list_v<T>) {
      const auto saved = reader.read<int64_t>(key);
      TORCHKIT_CHECK(saved == static_cast<int64_t>(value.size()),
                     "{}: the archive was saved with {} {}, this scheduler has {}; construct it as the saved one was",
                     reader.owner(), saved, key, value.size());
    } else {
      value = reader.read<T>(key);
    }
  });
  return options;
}

/// A rule's state when it has none beyond its options.
struct NoState {};

template <class Rule>
struct state_of {
  using type = NoState;
};
template <class Rule>
  requires requires { typename Rule::State; }
struct state_of<Rule> {
  using type = typename Rule::State;
};

/// What a rule sees at a step: Python's `self` inside `get_lr()`.
template <class Rule>
struct View {
  const typename Rule::Options& options;
  const typename state_of<Rule>::type& state;
  int64_t last_epoch;
  int64_t step_count;
  const std::vector<double>& base_lrs;
  const std::vector<double>& initial_lrs;
};

/// The multiplicative shape (StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR,
/// PolynomialLR): every group's lr is multiplied by `factor(options, epoch)` at each step
/// (Python's chainable `get_lr()`), and is `base_lr * closed_factor(options, epoch)` in
/// closed form (`_get_closed_form_lr`).
template <class Rule>
concept FactorRule = requires(const typename Rule::Options& options, int64_t epoch) {
  { Rule::factor(options, epoch) } -> std::same_as<double>;
  { Rule::closed_factor(options, epoch) } -> std::same_as<double>;
};

/// What OneCycleLR and CyclicLR share: the momentum (or Adam's beta1) they cycle inversely to
/// the lr. A rule whose State derives from it gets the set-up, the per-step momentum and its
/// save/load from RuleScheduler.
struct Cycling {
  bool cycle_momentum = false;
  bool use_beta1 = false;
  std::vector<double> base_momentums;
  std::vector<double> max_momentums;
};

/// The momentum set-up of a cycling scheduler: with `cycle_momentum`, the optimizer must have a
/// momentum (Python's error), and `base`/`max` give one value per group.
template <PerGroup Values>
[[nodiscard]] Cycling cycling(const torch::optim::Optimizer& optimizer, bool cycle_momentum, const Values& base,
                              const Values& max, std::string_view owner) {
  Cycling cycling;
  cycling.cycle_momentum = cycle_momentum;
  if (cycle_momentum) {
    const auto kind = momentum_kind(optimizer);
    TORCHKIT_CHECK(kind != MomentumKind::none,
                   "{}: optimizer must support momentum with `cycle_momentum` option enabled (SGD, RMSprop, Adam or "
                   "AdamW); pass cycle_momentum=false",
                   owner);
    cycling.use_beta1 = kind == MomentumKind::beta1;
    const std::size_t group_count = optimizer.param_groups().size();
    cycling.base_momentums = base.for_groups(group_count, "base_momentum", owner);
    cycling.max_momentums = max.for_groups(group_count, "max_momentum", owner);
  }
  return cycling;
}

/// Saves what a cycling scheduler keeps in the optimizer: the momentum of every group.
inline void save_cycling(ArchiveWriter& writer, const Cycling& state, const torch::optim::Optimizer& optimizer) {
  writer.write("use_beta1", state.use_beta1);
  writer.write("optimizer_momentums", state.cycle_momentum ? group_momentums(optimizer) : std::vector<double>{});
}

/// The momentums save_cycling() wrote, after checking that `optimizer` has the kind of momentum
/// the archive cycles and one value per group (none without cycling).
[[nodiscard]] inline std::vector<double> load_cycling(ArchiveReader& reader, const Cycling& state,
                                                      const torch::optim::Optimizer& optimizer) {
  const bool use_beta1 = reader.read<bool>("use_beta1");
  TORCHKIT_CHECK(!state.cycle_momentum || use_beta1 == state.use_beta1,
                 "{}: the archive cycles the {}, which this optimizer does not have", reader.owner(),
                 use_beta1 ? "beta1 of betas" : "momentum");
  auto momentums = reader.read<std::vector<double>>("optimizer_momentums");
  const std::size_t group_count = optimizer.param_groups().size();
  TORCHKIT_CHECK(momentums.size() == (state.cycle_momentum ? group_count : 0),
                 "{}: 'optimizer_momentums' has {} values for {} parameter groups", reader.owner(), momentums.size(),
                 group_count);
  return momentums;
}

}  // namespace torchkit::detail::lr
