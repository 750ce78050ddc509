#pragma once
/// @file lr.hpp
/// tip 7  namespace torchkit::lr: PyTorch's learning-rate scheduler family
/// (`torch.optim.lr_scheduler`) for LibTorch optimizers, with Python's argument names,
/// defaults, errors and values (the same recursive "chainable" formulas, so the learning rates
/// agree with Python's to the last bits).
///
///     torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
///     torchkit::lr::StepLR scheduler(optimizer, 10, 0.1);   // lr_scheduler.StepLR(optimizer, 10, 0.1)
///     for (int epoch = 0; epoch < 30; ++epoch) {
///       train(...);
///       scheduler.step();
///     }
///
/// Every scheduler takes the optimizer first and records each parameter group's initial lr
/// the way Python does (`param_group['initial_lr']`): the first scheduler of an optimizer
/// records it, later ones read it, so that chained and sequential schedules start from the
/// same base. LibTorch's parameter groups have no room for it, so torchkit keeps it beside the
/// optimizer while any scheduler of that optimizer is alive.
///
/// Not carried over from Python: `last_epoch` and `verbose` constructor arguments (resume with
/// `load()` instead), and `step(epoch)` except for CosineAnnealingWarmRestarts. Where Python
/// would leave a scheduler half-updated by an error (e.g. OneCycleLR stepped too often), the
/// torchkit scheduler throws before changing anything.

#include <torchkit/detail/config.hpp>
#include <torchkit/detail/lr_support.hpp>
#include <torchkit/error.hpp>

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <numbers>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace torchkit::lr {

/// A value for every parameter group, or a list with one value per group: Python's
/// "float or list" arguments (`max_lr`, `base_momentum`, `min_lr`, ...).
///
///     torchkit::lr::GroupValues same = 0.1;            // every group
///     torchkit::lr::GroupValues each = {0.1, 0.01};    // group 0, group 1
class GroupValues {
 public:
  /// Not given (for required arguments).
  GroupValues() = default;
  /// One value for every group.
  GroupValues(double value) : values_{value}, for_every_group_(true) {}  // NOLINT(google-explicit-constructor)
  /// One value per group.
  GroupValues(std::initializer_list<double> values) : values_(values) {}
  /// One value per group.
  GroupValues(std::vector<double> values) : values_(std::move(values)) {}  // NOLINT(google-explicit-constructor)

  /// Whether no value was given.
  [[nodiscard]] bool empty() const noexcept { return values_.empty(); }
  /// Whether one value was given for every group (rather than a list).
  [[nodiscard]] bool for_every_group() const noexcept { return for_every_group_; }
  /// The values as given.
  [[nodiscard]] const std::vector<double>& values() const noexcept { return values_; }

  /// One value per group (Python's `_format_param`). Throws Error when a list has the wrong
  /// length: `expected 2 values for max_lr, got 3`.
  [[nodiscard]] std::vector<double> for_groups(std::size_t group_count, std::string_view name,
                                               std::string_view owner) const {
    TORCHKIT_CHECK(!values_.empty(), "{}: {} is required", owner, name);
    if (for_every_group_) {
      return std::vector<double>(group_count, values_.front());
    }
    TORCHKIT_CHECK(values_.size() == group_count, "{}: expected {} values for {}, got {}", owner, group_count, name,
                   values_.size());
    return values_;
  }

  [[nodiscard]] std::string to_string() const {
    if (values_.empty()) {
      return "None";
    }
    return for_every_group_ ? fmt::format("{}", values_.front()) : detail::list_to_string(values_);
  }

 private:
  std::vector<double> values_;
  bool for_every_group_ = false;
};

/// A function of the epoch (LambdaLR: the factor applied to the initial lr; MultiplicativeLR:
/// the factor applied to the current lr).
using LrLambda = std::function<double(int64_t epoch)>;

/// The common base of every epoch-driven scheduler (Python's `_LRScheduler`), so that
/// SequentialLR and ChainedScheduler can hold any of them.
///
/// A custom scheduler derives from it, implements `get_lr()` (and `arguments()`), and calls
/// `record_initial_lrs()` and then `initial_step()` at the end of its constructor, as
/// Python's `_LRScheduler.__init__` does.
class Scheduler {
 public:
  virtual ~Scheduler() = default;

  /// Advances one epoch (or batch) and sets the new lr of every parameter group, as Python's
  /// `scheduler.step()`. Call it after `optimizer.step()`.
  virtual void step() {
    check_group_count();
    advance(std::nullopt);
  }

  /// The lr of every parameter group after the last step (Python's `get_last_lr()`).
  [[nodiscard]] std::vector<double> last_lr() const { return last_lr_; }
  /// The index of the last epoch: 0 after construction, +1 per step (Python's `last_epoch`).
  [[nodiscard]] int64_t last_epoch() const noexcept { return last_epoch_; }
  /// The initial lr of every parameter group (Python's `base_lrs`).
  [[nodiscard]] const std::vector<double>& base_lrs() const noexcept { return base_lrs_; }
  /// The optimizer whose learning rates this scheduler sets.
  [[nodiscard]] torch::optim::Optimizer& optimizer() const noexcept { return *optimizer_; }
  /// The class name, as in Python: `"StepLR"`.
  [[nodiscard]] const std::string& type_name() const noexcept { return type_name_; }

  /// Writes the scheduler's state (Python's `state_dict()`: hyperparameters, epoch, base and
  /// last lrs, and what Python keeps in the parameter groups) under the key `"lr_scheduler"`,
  /// so it can sit beside the optimizer's state in the same archive. It includes every group's
  /// current lr (and the momentum OneCycleLR/CyclicLR cycle), which LibTorch's
  /// `optimizer.save()`/`load()` do not restore. Lambdas are not saved.
  ///
  ///     torch::serialize::OutputArchive archive;
  ///     optimizer.save(archive);
  ///     scheduler.save(archive);
  ///     archive.save_to("checkpoint.pt");
  void save(torch::serialize::OutputArchive& archive) const {
    torch::serialize::OutputArchive state(archive.compilation_unit());
    detail::ArchiveWriter writer(state);
    save_to(writer);
    archive.write("lr_scheduler", state);
  }

  /// Restores the state written by `save()` (Python's `load_state_dict()`), and the lr (and
  /// cycled momentum) of every parameter group. Construct the optimizer and the scheduler as
  /// at the start of the run, then load both; the schedule continues exactly where the saved
  /// run stopped. Throws Error (and changes nothing) when the
  /// archive holds another kind of scheduler or a different number of parameter groups.
  ///
  ///     torch::serialize::InputArchive archive;
  ///     archive.load_from("checkpoint.pt");
  ///     optimizer.load(archive);
  ///     scheduler.load(archive);
  void load(torch::serialize::InputArchive& archive) {
    detail::ArchiveReader outer(archive, type_name_ + "::load");
    torch::serialize::InputArchive state = outer.read_archive("lr_scheduler");
    detail::ArchiveReader reader(state, type_name_ + "::load");
    load_from(reader, /*apply=*/false);  // validates everything first
    load_from(reader, /*apply=*/true);
  }

  /// `StepLR(step_size=10, gamma=0.1) last_epoch=3 last_lr=[0.001, 0.0001]`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("{}({}) last_epoch={} last_lr={}", type_name_, arguments(), last_epoch_,
                       detail::list_to_string(last_lr_));
  }

  friend std::ostream& operator<<(std::ostream& stream, const Scheduler& scheduler) {
    return stream << scheduler.to_string();
  }

 protected:
  /// Attaches to `optimizer`; throws Error when it has no parameter groups or its options
  /// have no learning rate. Changes nothing.
  Scheduler(torch::optim::Optimizer& optimizer, std::string type_name)
      : optimizer_(&optimizer), type_name_(std::move(type_name)) {
    TORCHKIT_CHECK(!optimizer.param_groups().empty(),
                   "{}: the optimizer has no parameter groups; give it parameters before creating a scheduler",
                   type_name_);
    for (std::size_t index = 0; index < optimizer.param_groups().size(); ++index) {
      (void)detail::group_lr(optimizer, index);
    }
  }
  Scheduler(const Scheduler&) = default;
  Scheduler(Scheduler&&) noexcept = default;
  Scheduler& operator=(const Scheduler&) = default;
  Scheduler& operator=(Scheduler&&) noexcept = default;

  /// The new lr of every group at `last_epoch_` (Python's chainable `get_lr()`).
  [[nodiscard]] virtual std::vector<double> get_lr() const = 0;
  /// The lr of every group at `last_epoch_` from the closed form, where Python has one
  /// (`_get_closed_form_lr`, used by SequentialLR at a milestone).
  [[nodiscard]] virtual std::optional<std::vector<double>> closed_form_lr() const { return std::nullopt; }
  /// The new momentum (or beta1) of every group, for schedulers that cycle it; else empty.
  [[nodiscard]] virtual std::vector<double> get_momentum() const { return {}; }
  /// The arguments for to_string(): `step_size=10, gamma=0.1`.
  [[nodiscard]] virtual std::string arguments() const = 0;
  /// Python's `scheduler.step(epoch)` (the deprecated form SequentialLR uses at a milestone):
  /// jumps to `epoch`, with the closed form where there is one.
  virtual void step_to(int64_t epoch) {
    check_group_count();
    advance(epoch);
  }
  /// Throws the Error the next `step()` would throw, changing nothing (OneCycleLR past its
  /// total steps); lets composites refuse a step before any of their schedulers moves.
  virtual void check_next_step() const {}
  /// Whether this is a SequentialLR or ChainedScheduler (which cannot follow a milestone).
  [[nodiscard]] virtual bool is_composite() const noexcept { return false; }
  /// Writes what the subclass adds to the state.
  virtual void save_state(detail::ArchiveWriter& /*writer*/) const {}
  /// Reads what the subclass adds; with `apply` false it only validates (and must throw
  /// Error for anything it would not accept), with `apply` true it commits.
  virtual void load_state(detail::ArchiveReader& /*reader*/, bool /*apply*/) {}

  /// Python's `param_group.setdefault('initial_lr', param_group['lr'])` for every group, then
  /// `base_lrs = [group['initial_lr'] ...]`. With `overwrite`, sets them instead (OneCycleLR).
  void record_initial_lrs(const std::vector<double>* overwrite = nullptr) {
    initial_lrs_ = detail::shared_initial_lrs(*optimizer_);
    auto& values = initial_lrs_->values;
    const std::size_t group_count = optimizer_->param_groups().size();
    for (std::size_t index = values.size(); index < group_count; ++index) {
      values.push_back(detail::group_lr(*optimizer_, index));
    }
    if (overwrite != nullptr) {
      std::copy(overwrite->begin(), overwrite->end(), values.begin());
    }
    base_lrs_.assign(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(group_count));
  }

  /// Python's `_initial_step()`: resets the step count and takes the first step (to epoch 0).
  void initial_step() {
    step_count_ = 0;
    step();
  }

  /// Throws Error when parameter groups were added to the optimizer since construction.
  void check_group_count() const {
    TORCHKIT_CHECK(optimizer_->param_groups().size() == base_lrs_.size(),
                   "{}: the optimizer has {} parameter groups, but had {} when the scheduler was created",
                   type_name_, optimizer_->param_groups().size(), base_lrs_.size());
  }

  /// The current lr of every group (Python's `[group['lr'] for group in param_groups]`).
  [[nodiscard]] std::vector<double> group_lrs() const {
    std::vector<double> lrs(optimizer_->param_groups().size());
    for (std::size_t index = 0; index < lrs.size(); ++index) {
      lrs[index] = detail::group_lr(*optimizer_, index);
    }
    return lrs;
  }

  /// The current momentum (or beta1) of every group; the optimizer must have one.
  [[nodiscard]] std::vector<double> group_momentums() const {
    std::vector<double> momentums(optimizer_->param_groups().size());
    for (std::size_t index = 0; index < momentums.size(); ++index) {
      momentums[index] = detail::group_momentum(*optimizer_, index);
    }
    return momentums;
  }

  /// Sets the lr (and momentum, when given) of every group and records `last_lr_`.
  void apply(const std::vector<double>& lrs, const std::vector<double>& momentums = {}) {
    for (std::size_t index = 0; index < lrs.size(); ++index) {
      detail::set_group_lr(*optimizer_, index, lrs[index]);
    }
    for (std::size_t index = 0; index < momentums.size(); ++index) {
      detail::set_group_momentum(*optimizer_, index, momentums[index]);
    }
    last_lr_ = group_lrs();
  }

  /// Python's `_LRScheduler.step(epoch)`: counts the step, moves `last_epoch_` (by one, or to
  /// `epoch`), computes and applies the new values. Nothing changes when computing throws.
  void advance(std::optional<int64_t> epoch) {
    const int64_t previous_epoch = last_epoch_;
    const int64_t previous_count = step_count_;
    ++step_count_;
    last_epoch_ = epoch ? *epoch : last_epoch_ + 1;
    std::vector<double> lrs;
    std::vector<double> momentums;
    try {
      std::optional<std::vector<double>> closed_form;
      if (epoch) {
        closed_form = closed_form_lr();
      }
      lrs = closed_form ? std::move(*closed_form) : get_lr();
      momentums = get_momentum();
    } catch (...) {
      last_epoch_ = previous_epoch;
      step_count_ = previous_count;
      throw;
    }
    apply(lrs, momentums);
  }

  torch::optim::Optimizer* optimizer_;
  std::string type_name_;
  std::shared_ptr<detail::InitialLrs> initial_lrs_;
  std::vector<double> base_lrs_;
  int64_t last_epoch_ = -1;
  int64_t step_count_ = 0;
  std::vector<double> last_lr_;

 private:
  friend class SequentialLR;
  friend class ChainedScheduler;

  void save_to(detail::ArchiveWriter& writer) const {
    writer.write_string("type", type_name_);
    writer.write_int("last_epoch", last_epoch_);
    writer.write_int("step_count", step_count_);
    writer.write_doubles("base_lrs", base_lrs_);
    writer.write_doubles("last_lr", last_lr_);
    writer.write_doubles("initial_lrs", initial_lrs_ ? initial_lrs_->values : base_lrs_);
    writer.write_doubles("optimizer_lrs", group_lrs());
    save_state(writer);
  }

  void load_from(detail::ArchiveReader& reader, bool apply) {
    const std::string type = reader.read_string("type");
    TORCHKIT_CHECK(type == type_name_, "{}: the archive holds the state of a {}, not of a {}", reader.owner(), type,
                   type_name_);
    const int64_t last_epoch = reader.read_int("last_epoch");
    const int64_t step_count = reader.read_int("step_count");
    constexpr int64_t epoch_limit = detail::max_count;  // exact as doubles; no run goes beyond
    TORCHKIT_CHECK(last_epoch >= -1 && last_epoch < epoch_limit,
                   "{}: last_epoch in the archive is {}; expected -1 <= last_epoch < 2^53", reader.owner(), last_epoch);
    TORCHKIT_CHECK(step_count >= 0 && step_count < epoch_limit,
                   "{}: step_count in the archive is {}; expected 0 <= step_count < 2^53", reader.owner(), step_count);
    auto base_lrs = reader.read_doubles("base_lrs");
    auto last_lr = reader.read_doubles("last_lr");
    auto initial_lrs = reader.read_doubles("initial_lrs");
    const auto optimizer_lrs = reader.read_doubles("optimizer_lrs");
    const std::size_t group_count = optimizer_->param_groups().size();
    TORCHKIT_CHECK(base_lrs.size() == group_count && last_lr.size() == group_count &&
                       initial_lrs.size() >= group_count && optimizer_lrs.size() == group_count,
                   "{}: the archive was saved for {} parameter groups, the optimizer has {}", reader.owner(),
                   base_lrs.size(), group_count);
    load_state(reader, apply);
    if (apply) {
      last_epoch_ = last_epoch;
      step_count_ = step_count;
      base_lrs_ = std::move(base_lrs);
      last_lr_ = std::move(last_lr);
      if (!initial_lrs_) {
        initial_lrs_ = detail::shared_initial_lrs(*optimizer_);
      }
      initial_lrs_->values = std::move(initial_lrs);
      for (std::size_t index = 0; index < group_count; ++index) {
        detail::set_group_lr(*optimizer_, index, optimizer_lrs[index]);
      }
    }
  }
};


// ---------------------------------------------------------------------------------------------
// StepLR
// ---------------------------------------------------------------------------------------------

/// StepLR's arguments (Python's names and defaults; `step_size` is required).
struct StepLROptions {
  /// Period of learning rate decay, in epochs (> 0).
  std::optional<int64_t> step_size{};
  /// Multiplicative factor of learning rate decay (>= 0).
  double gamma = 0.1;
};

/// Decays each group's lr by `gamma` every `step_size` epochs
/// (`torch.optim.lr_scheduler.StepLR`). Throws Error for `step_size <= 0` or `gamma < 0`.
///
///     torchkit::lr::StepLR scheduler(optimizer, 30, 0.1);  // 0.05 → 0.005 at epoch 30 → ...
class StepLR final : public Scheduler {
 public:
  StepLR(torch::optim::Optimizer& optimizer, int64_t step_size, double gamma = 0.1)
      : StepLR(optimizer, StepLROptions{.step_size = step_size, .gamma = gamma}) {}
  StepLR(torch::optim::Optimizer& optimizer, const StepLROptions& options)
      : Scheduler(optimizer, "StepLR"), options_(options) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const StepLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const StepLROptions& options) {
    TORCHKIT_CHECK(options.step_size.has_value(), "StepLR: step_size is required");
    detail::check_positive("StepLR", "step_size", *options.step_size);
    detail::check_non_negative("StepLR", "gamma", options.gamma);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    if (last_epoch_ == 0 || detail::python_mod(last_epoch_, *options_.step_size) != 0) {
      return lrs;
    }
    for (double& lr : lrs) {
      lr = lr * options_.gamma;
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    std::vector<double> lrs;
    const auto exponent = static_cast<double>(detail::python_floor_div(last_epoch_, *options_.step_size));
    for (const double base_lr : base_lrs_) {
      lrs.push_back(base_lr * std::pow(options_.gamma, exponent));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("step_size={}, gamma={}", *options_.step_size, options_.gamma);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_int("step_size", *options_.step_size);
    writer.write_double("gamma", options_.gamma);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    StepLROptions options{.step_size = reader.read_int("step_size"), .gamma = reader.read_double("gamma")};
    validate(options);
    if (apply) {
      options_ = options;
    }
  }

  StepLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// MultiStepLR
// ---------------------------------------------------------------------------------------------

/// MultiStepLR's arguments.
struct MultiStepLROptions {
  /// Epochs at which to decay: >= 0 and increasing (a repeated milestone decays twice, as in
  /// Python, whose `Counter` counts it).
  std::vector<int64_t> milestones{};
  /// Multiplicative factor of learning rate decay (>= 0).
  double gamma = 0.1;
};

/// Decays each group's lr by `gamma` at each milestone epoch
/// (`torch.optim.lr_scheduler.MultiStepLR`). Throws Error for negative or unsorted milestones
/// or `gamma < 0`.
///
///     torchkit::lr::MultiStepLR scheduler(optimizer, {30, 80}, 0.1);
class MultiStepLR final : public Scheduler {
 public:
  MultiStepLR(torch::optim::Optimizer& optimizer, std::vector<int64_t> milestones, double gamma = 0.1)
      : MultiStepLR(optimizer, MultiStepLROptions{.milestones = std::move(milestones), .gamma = gamma}) {}
  MultiStepLR(torch::optim::Optimizer& optimizer, MultiStepLROptions options)
      : Scheduler(optimizer, "MultiStepLR"), options_(std::move(options)) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const MultiStepLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const MultiStepLROptions& options) {
    detail::check_milestones("MultiStepLR", options.milestones);
    detail::check_non_negative("MultiStepLR", "gamma", options.gamma);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    const auto count = std::count(options_.milestones.begin(), options_.milestones.end(), last_epoch_);
    if (count == 0) {
      return lrs;
    }
    for (double& lr : lrs) {
      lr = lr * std::pow(options_.gamma, static_cast<double>(count));
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    std::vector<double> lrs;
    const auto exponent = static_cast<double>(detail::bisect_right(options_.milestones, last_epoch_));
    for (const double base_lr : base_lrs_) {
      lrs.push_back(base_lr * std::pow(options_.gamma, exponent));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("milestones={}, gamma={}", detail::list_to_string(options_.milestones), options_.gamma);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_ints("milestones", options_.milestones);
    writer.write_double("gamma", options_.gamma);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    MultiStepLROptions options{.milestones = reader.read_ints("milestones"), .gamma = reader.read_double("gamma")};
    validate(options);
    if (apply) {
      options_ = std::move(options);
    }
  }

  MultiStepLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// ConstantLR
// ---------------------------------------------------------------------------------------------

/// ConstantLR's arguments.
struct ConstantLROptions {
  /// The factor applied until `total_iters`, in (0, 1].
  double factor = 1.0 / 3;
  /// The number of epochs the factor applies (> 0).
  int64_t total_iters = 5;
};

/// Multiplies each group's lr by `factor` until epoch `total_iters`
/// (`torch.optim.lr_scheduler.ConstantLR`). Throws Error for a factor outside (0, 1] (Python
/// accepts 0 but then divides by it) or `total_iters <= 0`.
///
///     torchkit::lr::ConstantLR scheduler(optimizer, {.factor = 0.5, .total_iters = 4});
class ConstantLR final : public Scheduler {
 public:
  explicit ConstantLR(torch::optim::Optimizer& optimizer, double factor = 1.0 / 3, int64_t total_iters = 5)
      : ConstantLR(optimizer, ConstantLROptions{.factor = factor, .total_iters = total_iters}) {}
  ConstantLR(torch::optim::Optimizer& optimizer, const ConstantLROptions& options)
      : Scheduler(optimizer, "ConstantLR"), options_(options) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const ConstantLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const ConstantLROptions& options) {
    TORCHKIT_CHECK(options.factor > 0 && options.factor <= 1.0,
                   "ConstantLR: Constant multiplicative factor expected to be between 0 and 1 (0 excluded), got "
                   "factor={}",
                   options.factor);
    detail::check_positive("ConstantLR", "total_iters", options.total_iters);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    if (last_epoch_ == 0) {
      for (double& lr : lrs) {
        lr = lr * options_.factor;
      }
      return lrs;
    }
    if (last_epoch_ != options_.total_iters) {
      return lrs;
    }
    for (double& lr : lrs) {
      lr = lr * (1.0 / options_.factor);
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    std::vector<double> lrs;
    const double reached = last_epoch_ >= options_.total_iters ? 1.0 : 0.0;
    for (const double base_lr : base_lrs_) {
      lrs.push_back(base_lr * (options_.factor + reached * (1 - options_.factor)));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("factor={}, total_iters={}", options_.factor, options_.total_iters);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_double("factor", options_.factor);
    writer.write_int("total_iters", options_.total_iters);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    ConstantLROptions options{.factor = reader.read_double("factor"), .total_iters = reader.read_int("total_iters")};
    validate(options);
    if (apply) {
      options_ = options;
    }
  }

  ConstantLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// LinearLR
// ---------------------------------------------------------------------------------------------

/// LinearLR's arguments.
struct LinearLROptions {
  /// The factor at epoch 0, in (0, 1].
  double start_factor = 1.0 / 3;
  /// The factor from epoch `total_iters` on, in [0, 1].
  double end_factor = 1.0;
  /// The number of epochs over which the factor changes linearly (> 0).
  int64_t total_iters = 5;
};

/// Changes each group's lr linearly from `start_factor` to `end_factor` times its initial lr
/// over `total_iters` epochs (`torch.optim.lr_scheduler.LinearLR`), the usual warm-up.
/// Throws Error for factors outside their range (a start factor of 0 would divide by zero) or
/// `total_iters <= 0`.
///
///     torchkit::lr::LinearLR warmup(optimizer, {.start_factor = 0.1, .total_iters = 5});
class LinearLR final : public Scheduler {
 public:
  explicit LinearLR(torch::optim::Optimizer& optimizer, double start_factor = 1.0 / 3, double end_factor = 1.0,
                    int64_t total_iters = 5)
      : LinearLR(optimizer, LinearLROptions{.start_factor = start_factor, .end_factor = end_factor,
                                            .total_iters = total_iters}) {}
  LinearLR(torch::optim::Optimizer& optimizer, const LinearLROptions& options)
      : Scheduler(optimizer, "LinearLR"), options_(options) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const LinearLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const LinearLROptions& options) {
    TORCHKIT_CHECK(options.start_factor > 0 && options.start_factor <= 1.0,
                   "LinearLR: Starting multiplicative factor expected to be between 0 and 1 (0 excluded: the lr is "
                   "divided by it), got start_factor={}",
                   options.start_factor);
    TORCHKIT_CHECK(options.end_factor >= 0 && options.end_factor <= 1.0,
                   "LinearLR: Ending multiplicative factor expected to be between 0 and 1, got end_factor={}",
                   options.end_factor);
    detail::check_positive("LinearLR", "total_iters", options.total_iters);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    const auto& [start_factor, end_factor, total_iters] = options_;
    if (last_epoch_ == 0) {
      for (double& lr : lrs) {
        lr = lr * start_factor;
      }
      return lrs;
    }
    if (last_epoch_ > total_iters) {
      return lrs;
    }
    const double factor =
        1. + (end_factor - start_factor) / (static_cast<double>(total_iters) * start_factor +
                                            static_cast<double>(last_epoch_ - 1) * (end_factor - start_factor));
    for (double& lr : lrs) {
      lr = lr * factor;
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    std::vector<double> lrs;
    const auto& [start_factor, end_factor, total_iters] = options_;
    const auto reached = static_cast<double>(std::min(total_iters, last_epoch_));
    for (const double base_lr : base_lrs_) {
      lrs.push_back(base_lr *
                    (start_factor + (end_factor - start_factor) * reached / static_cast<double>(total_iters)));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("start_factor={}, end_factor={}, total_iters={}", options_.start_factor, options_.end_factor,
                       options_.total_iters);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_double("start_factor", options_.start_factor);
    writer.write_double("end_factor", options_.end_factor);
    writer.write_int("total_iters", options_.total_iters);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    LinearLROptions options{.start_factor = reader.read_double("start_factor"),
                            .end_factor = reader.read_double("end_factor"),
                            .total_iters = reader.read_int("total_iters")};
    validate(options);
    if (apply) {
      options_ = options;
    }
  }

  LinearLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// ExponentialLR
// ---------------------------------------------------------------------------------------------

/// ExponentialLR's arguments (`gamma` is required).
struct ExponentialLROptions {
  /// Multiplicative factor of learning rate decay, applied every epoch (>= 0).
  std::optional<double> gamma{};
};

/// Multiplies each group's lr by `gamma` every epoch (`torch.optim.lr_scheduler.ExponentialLR`).
///
///     torchkit::lr::ExponentialLR scheduler(optimizer, 0.95);
class ExponentialLR final : public Scheduler {
 public:
  ExponentialLR(torch::optim::Optimizer& optimizer, double gamma)
      : ExponentialLR(optimizer, ExponentialLROptions{.gamma = gamma}) {}
  ExponentialLR(torch::optim::Optimizer& optimizer, const ExponentialLROptions& options)
      : Scheduler(optimizer, "ExponentialLR"), options_(options) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const ExponentialLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const ExponentialLROptions& options) {
    TORCHKIT_CHECK(options.gamma.has_value(), "ExponentialLR: gamma is required");
    detail::check_non_negative("ExponentialLR", "gamma", *options.gamma);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    if (last_epoch_ == 0) {
      return lrs;
    }
    for (double& lr : lrs) {
      lr = lr * *options_.gamma;
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    std::vector<double> lrs;
    for (const double base_lr : base_lrs_) {
      lrs.push_back(base_lr * std::pow(*options_.gamma, static_cast<double>(last_epoch_)));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override { return fmt::format("gamma={}", *options_.gamma); }
  void save_state(detail::ArchiveWriter& writer) const override { writer.write_double("gamma", *options_.gamma); }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    ExponentialLROptions options{.gamma = reader.read_double("gamma")};
    validate(options);
    if (apply) {
      options_ = options;
    }
  }

  ExponentialLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// PolynomialLR
// ---------------------------------------------------------------------------------------------

/// PolynomialLR's arguments.
struct PolynomialLROptions {
  /// The number of epochs over which the lr decays to 0 (> 0).
  int64_t total_iters = 5;
  /// The power of the polynomial (>= 0).
  double power = 1.0;
};

/// Decays each group's lr as `(1 - epoch / total_iters) ** power` times its initial lr
/// (`torch.optim.lr_scheduler.PolynomialLR`).
///
///     torchkit::lr::PolynomialLR scheduler(optimizer, {.total_iters = 4, .power = 1.0});
class PolynomialLR final : public Scheduler {
 public:
  explicit PolynomialLR(torch::optim::Optimizer& optimizer, int64_t total_iters = 5, double power = 1.0)
      : PolynomialLR(optimizer, PolynomialLROptions{.total_iters = total_iters, .power = power}) {}
  PolynomialLR(torch::optim::Optimizer& optimizer, const PolynomialLROptions& options)
      : Scheduler(optimizer, "PolynomialLR"), options_(options) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const PolynomialLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const PolynomialLROptions& options) {
    detail::check_positive("PolynomialLR", "total_iters", options.total_iters);
    detail::check_non_negative("PolynomialLR", "power", options.power);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    if (last_epoch_ == 0 || last_epoch_ > options_.total_iters) {
      return lrs;
    }
    const auto total_iters = static_cast<double>(options_.total_iters);
    const double decay_factor =
        std::pow((1.0 - static_cast<double>(last_epoch_) / total_iters) /
                     (1.0 - static_cast<double>(last_epoch_ - 1) / total_iters),
                 options_.power);
    for (double& lr : lrs) {
      lr = lr * decay_factor;
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    std::vector<double> lrs;
    const auto reached = static_cast<double>(std::min(options_.total_iters, last_epoch_));
    for (const double base_lr : base_lrs_) {
      lrs.push_back(base_lr *
                    std::pow(1.0 - reached / static_cast<double>(options_.total_iters), options_.power));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("total_iters={}, power={}", options_.total_iters, options_.power);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_int("total_iters", options_.total_iters);
    writer.write_double("power", options_.power);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    PolynomialLROptions options{.total_iters = reader.read_int("total_iters"), .power = reader.read_double("power")};
    validate(options);
    if (apply) {
      options_ = options;
    }
  }

  PolynomialLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// CosineAnnealingLR
// ---------------------------------------------------------------------------------------------

/// CosineAnnealingLR's arguments (`T_max` is required; the names are Python's).
struct CosineAnnealingLROptions {
  /// Maximum number of iterations: the half period of the cosine (> 0).
  std::optional<int64_t> T_max{};  // NOLINT(readability-identifier-naming): Python's name
  /// Minimum learning rate (>= 0).
  double eta_min = 0.0;
};

/// Anneals each group's lr from its initial lr to `eta_min` along a cosine over `T_max` epochs
/// (and back up over the next `T_max`) with Python's recursive formula
/// (`torch.optim.lr_scheduler.CosineAnnealingLR`).
///
///     torchkit::lr::CosineAnnealingLR scheduler(optimizer, {.T_max = 100, .eta_min = 1e-5});
class CosineAnnealingLR final : public Scheduler {
 public:
  CosineAnnealingLR(torch::optim::Optimizer& optimizer, int64_t T_max, double eta_min = 0.0)  // NOLINT
      : CosineAnnealingLR(optimizer, CosineAnnealingLROptions{.T_max = T_max, .eta_min = eta_min}) {}
  CosineAnnealingLR(torch::optim::Optimizer& optimizer, const CosineAnnealingLROptions& options)
      : Scheduler(optimizer, "CosineAnnealingLR"), options_(options) {
    validate(options_);
    record_initial_lrs();
    initial_step();
  }

  [[nodiscard]] const CosineAnnealingLROptions& options() const noexcept { return options_; }

 private:
  static void validate(const CosineAnnealingLROptions& options) {
    TORCHKIT_CHECK(options.T_max.has_value(), "CosineAnnealingLR: T_max is required");
    detail::check_positive("CosineAnnealingLR", "T_max", *options.T_max);
    detail::check_non_negative("CosineAnnealingLR", "eta_min", options.eta_min);
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    constexpr double pi = std::numbers::pi;
    const double eta_min = options_.eta_min;
    const int64_t T_max = *options_.T_max;  // NOLINT(readability-identifier-naming)
    const auto t_max = static_cast<double>(T_max);
    const auto epoch = static_cast<double>(last_epoch_);
    auto lrs = group_lrs();
    if (last_epoch_ == 0) {
      return lrs;
    }
    if (step_count_ == 1 && last_epoch_ > 0) {
      for (std::size_t index = 0; index < lrs.size(); ++index) {
        lrs[index] = eta_min + (base_lrs_[index] - eta_min) * (1 + std::cos(epoch * pi / t_max)) / 2;
      }
      return lrs;
    }
    if (detail::python_mod(last_epoch_ - 1 - T_max, 2 * T_max) == 0) {
      for (std::size_t index = 0; index < lrs.size(); ++index) {
        lrs[index] = lrs[index] + (base_lrs_[index] - eta_min) * (1 - std::cos(pi / t_max)) / 2;
      }
      return lrs;
    }
    for (double& lr : lrs) {
      lr = (1 + std::cos(pi * epoch / t_max)) / (1 + std::cos(pi * (epoch - 1) / t_max)) * (lr - eta_min) + eta_min;
    }
    return lrs;
  }
  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    constexpr double pi = std::numbers::pi;
    std::vector<double> lrs;
    const double eta_min = options_.eta_min;
    for (const double base_lr : base_lrs_) {
      lrs.push_back(eta_min + (base_lr - eta_min) *
                                  (1 + std::cos(pi * static_cast<double>(last_epoch_) /
                                                static_cast<double>(*options_.T_max))) /
                                  2);
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("T_max={}, eta_min={}", *options_.T_max, options_.eta_min);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_int("T_max", *options_.T_max);
    writer.write_double("eta_min", options_.eta_min);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    CosineAnnealingLROptions options{.T_max = reader.read_int("T_max"), .eta_min = reader.read_double("eta_min")};
    validate(options);
    if (apply) {
      options_ = options;
    }
  }

  CosineAnnealingLROptions options_;
};

// ---------------------------------------------------------------------------------------------
// CosineAnnealingWarmRestarts
// ---------------------------------------------------------------------------------------------

/// CosineAnnealingWarmRestarts's arguments (`T_0` is required; the names are Python's).
struct CosineAnnealingWarmRestartsOptions {
  /// Number of iterations until the first restart (> 0).
  std::optional<int64_t> T_0{};  // NOLINT(readability-identifier-naming): Python's name
  /// The factor by which the period grows after each restart (>= 1).
  int64_t T_mult = 1;  // NOLINT(readability-identifier-naming): Python's name
  /// Minimum learning rate (>= 0).
  double eta_min = 0.0;
};

/// SGDR: cosine annealing from each group's initial lr to `eta_min`, restarting every `T_i`
/// epochs, `T_i` growing by `T_mult` after each restart
/// (`torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`). Besides `step()`, `step(epoch)`
/// accepts a fractional epoch, as in Python (`scheduler.step(epoch + i / iters)`).
///
///     torchkit::lr::CosineAnnealingWarmRestarts scheduler(optimizer, {.T_0 = 10, .T_mult = 2});
class CosineAnnealingWarmRestarts final : public Scheduler {
 public:
  CosineAnnealingWarmRestarts(torch::optim::Optimizer& optimizer, int64_t T_0, int64_t T_mult = 1,  // NOLINT
                              double eta_min = 0.0)
      : CosineAnnealingWarmRestarts(
            optimizer, CosineAnnealingWarmRestartsOptions{.T_0 = T_0, .T_mult = T_mult, .eta_min = eta_min}) {}
  CosineAnnealingWarmRestarts(torch::optim::Optimizer& optimizer, const CosineAnnealingWarmRestartsOptions& options)
      : Scheduler(optimizer, "CosineAnnealingWarmRestarts"), options_(options) {
    validate(options_);
    T_i_ = *options_.T_0;
    T_cur_ = static_cast<double>(last_epoch_);
    record_initial_lrs();
    initial_step();
  }

  /// One epoch (or batch) further; at the end of a period, restarts.
  void step() override {
    check_group_count();
    if (last_epoch_ < 0) {  // Python: `if epoch is None and self.last_epoch < 0: epoch = 0`
      step(0.0);
      return;
    }
    double T_cur = T_cur_ + 1;  // NOLINT(readability-identifier-naming)
    int64_t T_i = T_i_;         // NOLINT(readability-identifier-naming)
    if (T_cur >= static_cast<double>(T_i)) {
      T_cur = T_cur - static_cast<double>(T_i);
      // Python's integers never overflow; int64 does after about 63 restarts with T_mult = 2.
      TORCHKIT_CHECK(!__builtin_mul_overflow(T_i, options_.T_mult, &T_i),
                     "CosineAnnealingWarmRestarts: the next period T_i * T_mult = {} * {} does not fit in int64",
                     T_i_, options_.T_mult);
    }
    commit(last_epoch_ + 1, T_cur, T_i);
  }

  /// Jumps to `epoch` (fractional epochs allowed), as Python's `scheduler.step(epoch)`.
  /// Throws Error for a negative or non-finite epoch: `Expected non-negative epoch, but got -1`.
  void step(double epoch) {
    check_group_count();
    TORCHKIT_CHECK(std::isfinite(epoch) && epoch >= 0,
                   "CosineAnnealingWarmRestarts: Expected non-negative epoch, but got {}", epoch);
    TORCHKIT_CHECK(epoch < static_cast<double>(detail::max_count),
                   "CosineAnnealingWarmRestarts: epoch {} is beyond 2^53, the largest epoch a scheduler accepts", epoch);
    const int64_t T_0 = *options_.T_0;       // NOLINT(readability-identifier-naming)
    const int64_t T_mult = options_.T_mult;  // NOLINT(readability-identifier-naming)
    double T_cur = 0;                        // NOLINT(readability-identifier-naming)
    int64_t T_i = T_i_;                      // NOLINT(readability-identifier-naming)
    if (epoch >= static_cast<double>(T_0)) {
      if (T_mult == 1) {
        T_cur = std::fmod(epoch, static_cast<double>(T_0));
      } else {
        const double periods = epoch / static_cast<double>(T_0) * static_cast<double>(T_mult - 1) + 1;
        const auto n = static_cast<int64_t>(std::log(periods) / std::log(static_cast<double>(T_mult)));
        int64_t power = 1;
        bool overflow = false;
        for (int64_t i = 0; i < n && !overflow; ++i) {
          overflow = __builtin_mul_overflow(power, T_mult, &power);
        }
        int64_t restarted = 0;  // T_0 * (power - 1): the epochs before the current period
        overflow = overflow || __builtin_mul_overflow(T_0, power - 1, &restarted) ||
                   __builtin_mul_overflow(T_0, power, &T_i);
        TORCHKIT_CHECK(!overflow, "CosineAnnealingWarmRestarts: the period at epoch {} (T_0={}, T_mult={}) does not fit "
                       "in int64", epoch, T_0, T_mult);
        T_cur = epoch - static_cast<double>(restarted) / static_cast<double>(T_mult - 1);
      }
    } else {
      T_i = T_0;
      T_cur = epoch;
    }
    commit(static_cast<int64_t>(std::floor(epoch)), T_cur, T_i);
  }

  /// Epochs since the last restart (Python's `T_cur`).
  [[nodiscard]] double T_cur() const noexcept { return T_cur_; }  // NOLINT(readability-identifier-naming)
  /// The current period (Python's `T_i`).
  [[nodiscard]] int64_t T_i() const noexcept { return T_i_; }  // NOLINT(readability-identifier-naming)
  [[nodiscard]] const CosineAnnealingWarmRestartsOptions& options() const noexcept { return options_; }

 private:
  static void validate(const CosineAnnealingWarmRestartsOptions& options) {
    TORCHKIT_CHECK(options.T_0.has_value(), "CosineAnnealingWarmRestarts: T_0 is required");
    TORCHKIT_CHECK(*options.T_0 > 0, "CosineAnnealingWarmRestarts: Expected positive integer T_0, but got {}",
                   *options.T_0);
    TORCHKIT_CHECK(options.T_mult >= 1, "CosineAnnealingWarmRestarts: Expected integer T_mult >= 1, but got {}",
                   options.T_mult);
    detail::check_non_negative("CosineAnnealingWarmRestarts", "eta_min", options.eta_min);
  }
  [[nodiscard]] std::vector<double> lrs_at(double T_cur, int64_t T_i) const {  // NOLINT
    std::vector<double> lrs;
    const double eta_min = options_.eta_min;
    for (const double base_lr : base_lrs_) {
      lrs.push_back(eta_min + (base_lr - eta_min) *
                                  (1 + std::cos(std::numbers::pi * T_cur / static_cast<double>(T_i))) / 2);
    }
    return lrs;
  }
  void commit(int64_t last_epoch, double T_cur, int64_t T_i) {  // NOLINT(readability-identifier-naming)
    const auto lrs = lrs_at(T_cur, T_i);
    last_epoch_ = last_epoch;
    T_cur_ = T_cur;
    T_i_ = T_i;
    apply(lrs);
  }
  [[nodiscard]] std::vector<double> get_lr() const override { return lrs_at(T_cur_, T_i_); }
  void step_to(int64_t epoch) override { step(static_cast<double>(epoch)); }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("T_0={}, T_mult={}, eta_min={}", *options_.T_0, options_.T_mult, options_.eta_min);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_int("T_0", *options_.T_0);
    writer.write_int("T_mult", options_.T_mult);
    writer.write_double("eta_min", options_.eta_min);
    writer.write_double("T_cur", T_cur_);
    writer.write_int("T_i", T_i_);
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    CosineAnnealingWarmRestartsOptions options{
        .T_0 = reader.read_int("T_0"), .T_mult = reader.read_int("T_mult"), .eta_min = reader.read_double("eta_min")};
    validate(options);
    const double T_cur = reader.read_double("T_cur");  // NOLINT(readability-identifier-naming)
    const int64_t T_i = reader.read_int("T_i");        // NOLINT(readability-identifier-naming)
    TORCHKIT_CHECK(T_i > 0, "{}: T_i in the archive must be positive, got {}", reader.owner(), T_i);
    TORCHKIT_CHECK(std::isfinite(T_cur) && T_cur >= -1, "{}: T_cur in the archive must be finite and >= -1, got {}",
                   reader.owner(), T_cur);
    if (apply) {
      options_ = options;
      T_cur_ = T_cur;
      T_i_ = T_i;
    }
  }

  CosineAnnealingWarmRestartsOptions options_;
  double T_cur_ = -1;  // NOLINT(readability-identifier-naming)
  int64_t T_i_ = 1;    // NOLINT(readability-identifier-naming)
};

// ---------------------------------------------------------------------------------------------
// LambdaLR and MultiplicativeLR
// ---------------------------------------------------------------------------------------------


/// Sets each group's lr to its initial lr times `lr_lambda(epoch)`
/// (`torch.optim.lr_scheduler.LambdaLR`): one function for every group, or one per group.
///
///     torchkit::lr::LambdaLR scheduler(optimizer, [](int64_t epoch) { return std::pow(0.95, epoch); });
///     torchkit::lr::LambdaLR per_group(optimizer, {[](int64_t epoch) { return epoch / 30; },
///                                                  [](int64_t epoch) { return std::pow(0.95, epoch); }});
class LambdaLR final : public Scheduler {
 public:
  LambdaLR(torch::optim::Optimizer& optimizer, LrLambda lr_lambda)
      : LambdaLR(optimizer, std::vector<LrLambda>{std::move(lr_lambda)}, true) {}
  LambdaLR(torch::optim::Optimizer& optimizer, std::vector<LrLambda> lr_lambdas)
      : LambdaLR(optimizer, std::move(lr_lambdas), false) {}

 private:
  LambdaLR(torch::optim::Optimizer& optimizer, std::vector<LrLambda> lr_lambdas, bool one_for_all)
      : Scheduler(optimizer, "LambdaLR"),
        lr_lambdas_(detail::lambdas_for_groups(std::move(lr_lambdas), one_for_all, optimizer.param_groups().size(),
                                               "LambdaLR")) {
    record_initial_lrs();
    initial_step();
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    std::vector<double> lrs;
    for (std::size_t index = 0; index < base_lrs_.size(); ++index) {
      lrs.push_back(base_lrs_[index] * lr_lambdas_[index](last_epoch_));
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override { return fmt::format("lr_lambdas={}", lr_lambdas_.size()); }

  std::vector<LrLambda> lr_lambdas_;
};

/// Multiplies each group's lr by `lr_lambda(epoch)` every epoch from epoch 1 on
/// (`torch.optim.lr_scheduler.MultiplicativeLR`).
///
///     torchkit::lr::MultiplicativeLR scheduler(optimizer, [](int64_t) { return 0.95; });
class MultiplicativeLR final : public Scheduler {
 public:
  MultiplicativeLR(torch::optim::Optimizer& optimizer, LrLambda lr_lambda)
      : MultiplicativeLR(optimizer, std::vector<LrLambda>{std::move(lr_lambda)}, true) {}
  MultiplicativeLR(torch::optim::Optimizer& optimizer, std::vector<LrLambda> lr_lambdas)
      : MultiplicativeLR(optimizer, std::move(lr_lambdas), false) {}

 private:
  MultiplicativeLR(torch::optim::Optimizer& optimizer, std::vector<LrLambda> lr_lambdas, bool one_for_all)
      : Scheduler(optimizer, "MultiplicativeLR"),
        lr_lambdas_(detail::lambdas_for_groups(std::move(lr_lambdas), one_for_all, optimizer.param_groups().size(),
                                               "MultiplicativeLR")) {
    record_initial_lrs();
    initial_step();
  }
  [[nodiscard]] std::vector<double> get_lr() const override {
    auto lrs = group_lrs();
    if (last_epoch_ > 0) {
      for (std::size_t index = 0; index < lrs.size(); ++index) {
        lrs[index] = lrs[index] * lr_lambdas_[index](last_epoch_);
      }
    }
    return lrs;
  }
  [[nodiscard]] std::string arguments() const override { return fmt::format("lr_lambdas={}", lr_lambdas_.size()); }

  std::vector<LrLambda> lr_lambdas_;
};

// ---------------------------------------------------------------------------------------------
// OneCycleLR
// ---------------------------------------------------------------------------------------------

/// OneCycleLR's arguments (Python's names and defaults). `max_lr` is required, and either
/// `total_steps` or both `epochs` and `steps_per_epoch`.
struct OneCycleLROptions {
  /// The peak lr: one value, or one per group.
  GroupValues max_lr{};
  /// The total number of steps in the cycle.
  std::optional<int64_t> total_steps{};
  /// With `steps_per_epoch`, gives `total_steps = epochs * steps_per_epoch` when `total_steps`
  /// is not set.
  std::optional<int64_t> epochs{};
  std::optional<int64_t> steps_per_epoch{};
  /// The fraction of the cycle spent increasing the lr, in [0, 1].
  double pct_start = 0.3;
  /// `"cos"` or `"linear"`.
  std::string anneal_strategy = "cos";
  /// Cycle the momentum (SGD, RMSprop) or beta1 (Adam, AdamW) inversely to the lr.
  bool cycle_momentum = true;
  /// The momentum at the lr's peak.
  GroupValues base_momentum = 0.85;
  /// The momentum at the start and end of the cycle.
  GroupValues max_momentum = 0.95;
  /// The initial lr is `max_lr / div_factor` (> 0).
  double div_factor = 25.;
  /// The final lr is `initial_lr / final_div_factor` (> 0).
  double final_div_factor = 1e4;
  /// Three phases (up, down to the initial lr, annihilation) instead of two, as in the paper.
  bool three_phase = false;
};

/// The 1cycle policy: the lr rises from `max_lr / div_factor` to `max_lr` and anneals down to
/// `initial_lr / final_div_factor`, the momentum cycling the other way
/// (`torch.optim.lr_scheduler.OneCycleLR`). Step it once per batch; stepping more than
/// `total_steps` times throws Error (`Tried to step 102 times. The specified number of total
/// steps is 100`) and leaves everything unchanged.
///
///     torchkit::lr::OneCycleLR scheduler(optimizer, {.max_lr = 0.01, .epochs = 10, .steps_per_epoch = 100});
class OneCycleLR final : public Scheduler {
 public:
  OneCycleLR(torch::optim::Optimizer& optimizer, GroupValues max_lr, int64_t total_steps)
      : OneCycleLR(optimizer, OneCycleLROptions{.max_lr = std::move(max_lr), .total_steps = total_steps}) {}
  OneCycleLR(torch::optim::Optimizer& optimizer, OneCycleLROptions options)
      : Scheduler(optimizer, "OneCycleLR"), options_(std::move(options)) {
    const std::size_t group_count = optimizer.param_groups().size();
    Config config = configure(options_, group_count, "OneCycleLR");
    if (config.cycle_momentum) {
      const auto kind = detail::momentum_kind(optimizer);
      TORCHKIT_CHECK(kind != detail::MomentumKind::none,
                     "OneCycleLR: optimizer must support momentum with `cycle_momentum` option enabled (SGD, "
                     "RMSprop, Adam or AdamW); pass cycle_momentum=false");
      config.use_beta1 = kind == detail::MomentumKind::beta1;
    }
    check_step(config, 0);  // Python fails in the initial step for some arguments: fail before any change
    // Everything is valid: from here on the optimizer changes.
    config_ = std::move(config);
    if (config_.cycle_momentum) {
      for (std::size_t index = 0; index < group_count; ++index) {
        detail::set_group_momentum(optimizer, index, config_.max_momentums[index]);
      }
    }
    record_initial_lrs(&config_.initial_lrs);
    initial_step();
  }

  /// The number of steps in the cycle.
  [[nodiscard]] int64_t total_steps() const noexcept { return config_.total_steps; }
  [[nodiscard]] const OneCycleLROptions& options() const noexcept { return options_; }

 private:
  struct Phase {
    double end_step;
    // Which per-group values the phase anneals between: 0 initial lr, 1 max lr, 2 min lr;
    // momentum: 0 max momentum, 1 base momentum.
    int start_lr;
    int end_lr;
    int start_momentum;
    int end_momentum;
  };
  struct Config {
    int64_t total_steps = 0;
    double pct_start = 0.3;
    bool three_phase = false;
    bool anneal_cos = true;
    bool cycle_momentum = true;
    bool use_beta1 = false;
    std::vector<double> initial_lrs, max_lrs, min_lrs, base_momentums, max_momentums;
    std::vector<Phase> phases;
  };

  static std::vector<Phase> phases_for(int64_t total_steps, double pct_start, bool three_phase) {
    const auto total = static_cast<double>(total_steps);
    if (three_phase) {
      return {Phase{pct_start * total - 1, 0, 1, 0, 1}, Phase{2 * pct_start * total - 2, 1, 0, 1, 0},
              Phase{total - 1, 0, 2, 0, 0}};
    }
    return {Phase{pct_start * total - 1, 0, 1, 0, 1}, Phase{total - 1, 1, 2, 1, 0}};
  }

  static Config configure(const OneCycleLROptions& options, std::size_t group_count, std::string_view owner) {
    Config config;
    if (options.total_steps) {
      TORCHKIT_CHECK(*options.total_steps > 0, "{}: Expected positive integer total_steps, but got {}", owner,
                     *options.total_steps);
      config.total_steps = *options.total_steps;
    } else {
      TORCHKIT_CHECK(options.epochs || options.steps_per_epoch,
                     "{}: You must define either total_steps OR (epochs AND steps_per_epoch)", owner);
      TORCHKIT_CHECK(options.epochs && *options.epochs > 0, "{}: Expected positive integer epochs, but got {}", owner,
                     options.epochs ? fmt::format("{}", *options.epochs) : std::string("None"));
      TORCHKIT_CHECK(options.steps_per_epoch && *options.steps_per_epoch > 0,
                     "{}: Expected positive integer steps_per_epoch, but got {}", owner,
                     options.steps_per_epoch ? fmt::format("{}", *options.steps_per_epoch) : std::string("None"));
      TORCHKIT_CHECK(*options.epochs <= std::numeric_limits<int64_t>::max() / *options.steps_per_epoch,
                     "{}: epochs * steps_per_epoch = {} * {} overflows", owner, *options.epochs,
                     *options.steps_per_epoch);
      config.total_steps = *options.epochs * *options.steps_per_epoch;
    }
    TORCHKIT_CHECK(options.pct_start >= 0 && options.pct_start <= 1,
                   "{}: Expected float between 0 and 1 pct_start, but got {}", owner, options.pct_start);
    TORCHKIT_CHECK(options.anneal_strategy == "cos" || options.anneal_strategy == "linear",
                   "{}: anneal_strategy must by one of 'cos' or 'linear', instead got {}", owner,
                   options.anneal_strategy);
    TORCHKIT_CHECK(std::isfinite(options.div_factor) && options.div_factor > 0,
                   "{}: div_factor must be a positive number, got {}", owner, options.div_factor);
    TORCHKIT_CHECK(std::isfinite(options.final_div_factor) && options.final_div_factor > 0,
                   "{}: final_div_factor must be a positive number, got {}", owner, options.final_div_factor);
    config.pct_start = options.pct_start;
    config.three_phase = options.three_phase;
    config.anneal_cos = options.anneal_strategy == "cos";
    config.phases = phases_for(config.total_steps, config.pct_start, config.three_phase);
    config.max_lrs = options.max_lr.for_groups(group_count, "max_lr", owner);
    detail::check_non_negative(owner, "max_lr", config.max_lrs);
    for (const double max_lr : config.max_lrs) {
      config.initial_lrs.push_back(max_lr / options.div_factor);
      config.min_lrs.push_back(config.initial_lrs.back() / options.final_div_factor);
    }
    config.cycle_momentum = options.cycle_momentum;
    if (config.cycle_momentum) {
      config.max_momentums = options.max_momentum.for_groups(group_count, "max_momentum", owner);
      config.base_momentums = options.base_momentum.for_groups(group_count, "base_momentum", owner);
      detail::check_non_negative(owner, "max_momentum", config.max_momentums);
      detail::check_non_negative(owner, "base_momentum", config.base_momentums);
    }
    return config;
  }

  [[nodiscard]] double anneal(double start, double end, double pct) const {
    if (config_.anneal_cos) {
      const double cos_out = std::cos(std::numbers::pi * pct) + 1;
      return end + (start - end) / 2.0 * cos_out;
    }
    return (end - start) * pct + start;
  }

  // The phase of step `step_num`, and the fraction of it that is done. Throws where Python
  // divides by zero (a phase with no steps: pct_start 1 in two phases, e.g.).
  [[nodiscard]] static std::pair<const Phase*, double> phase_at(const Config& config, int64_t step_num) {
    double start_step = 0;
    const auto step = static_cast<double>(step_num);
    for (std::size_t index = 0; index < config.phases.size(); ++index) {
      const Phase& phase = config.phases[index];
      if (step <= phase.end_step || index + 1 == config.phases.size()) {
        TORCHKIT_CHECK(phase.end_step != start_step,
                       "OneCycleLR: float division by zero at step {}: phase {} of the cycle has no steps "
                       "(pct_start={}, total_steps={})",
                       step_num, index, config.pct_start, config.total_steps);
        return {&phase, (step - start_step) / (phase.end_step - start_step)};
      }
      start_step = phase.end_step;
    }
    return {nullptr, 0.0};  // unreachable: the last phase always matches
  }

  // Python's check in get_lr(), and its division by zero, for step `step_num`.
  static void check_step(const Config& config, int64_t step_num) {
    TORCHKIT_CHECK(step_num <= config.total_steps,
                   "OneCycleLR: Tried to step {} times. The specified number of total steps is {}", step_num + 1,
                   config.total_steps);
    (void)phase_at(config, step_num);
  }

  void check_next_step() const override { check_step(config_, last_epoch_ + 1); }

  [[nodiscard]] std::vector<double> get_lr() const override {
    check_step(config_, last_epoch_);
    const auto [phase, pct] = phase_at(config_, last_epoch_);
    std::vector<double> lrs;
    for (std::size_t index = 0; index < base_lrs_.size(); ++index) {
      const double values[] = {initial_lrs_->values[index], config_.max_lrs[index], config_.min_lrs[index]};
      lrs.push_back(anneal(values[phase->start_lr], values[phase->end_lr], pct));
    }
    return lrs;
  }
  [[nodiscard]] std::vector<double> get_momentum() const override {
    if (!config_.cycle_momentum) {
      return {};
    }
    const auto [phase, pct] = phase_at(config_, last_epoch_);
    std::vector<double> momentums;
    for (std::size_t index = 0; index < base_lrs_.size(); ++index) {
      const double values[] = {config_.max_momentums[index], config_.base_momentums[index]};
      momentums.push_back(anneal(values[phase->start_momentum], values[phase->end_momentum], pct));
    }
    return momentums;
  }
  [[nodiscard]] std::string arguments() const override {
    return fmt::format(
        "max_lr={}, total_steps={}, pct_start={}, anneal_strategy='{}', cycle_momentum={}, base_momentum={}, "
        "max_momentum={}, div_factor={}, final_div_factor={}, three_phase={}",
        detail::list_to_string(config_.max_lrs), config_.total_steps, config_.pct_start,
        config_.anneal_cos ? "cos" : "linear", config_.cycle_momentum,
        detail::list_to_string(config_.base_momentums), detail::list_to_string(config_.max_momentums),
        options_.div_factor, options_.final_div_factor, config_.three_phase);
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_int("total_steps", config_.total_steps);
    writer.write_double("pct_start", config_.pct_start);
    writer.write_bool("three_phase", config_.three_phase);
    writer.write_string("anneal_strategy", config_.anneal_cos ? "cos" : "linear");
    writer.write_bool("cycle_momentum", config_.cycle_momentum);
    writer.write_bool("use_beta1", config_.use_beta1);
    writer.write_double("div_factor", options_.div_factor);
    writer.write_double("final_div_factor", options_.final_div_factor);
    writer.write_doubles("max_lrs", config_.max_lrs);
    writer.write_doubles("min_lrs", config_.min_lrs);
    writer.write_doubles("base_momentums", config_.base_momentums);
    writer.write_doubles("max_momentums", config_.max_momentums);
    writer.write_doubles("optimizer_momentums", config_.cycle_momentum ? group_momentums() : std::vector<double>{});
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    const std::size_t group_count = optimizer_->param_groups().size();
    OneCycleLROptions options = options_;
    options.total_steps = reader.read_int("total_steps");
    options.pct_start = reader.read_double("pct_start");
    options.three_phase = reader.read_bool("three_phase");
    options.anneal_strategy = reader.read_string("anneal_strategy");
    options.cycle_momentum = reader.read_bool("cycle_momentum");
    options.div_factor = reader.read_double("div_factor");
    options.final_div_factor = reader.read_double("final_div_factor");
    options.max_lr = reader.read_doubles("max_lrs");
    options.base_momentum = reader.read_doubles("base_momentums");
    options.max_momentum = reader.read_doubles("max_momentums");
    Config config = configure(options, group_count, reader.owner());
    config.use_beta1 = reader.read_bool("use_beta1");
    config.initial_lrs = base_lrs_;  // not used after construction: get_lr reads the shared ones
    config.min_lrs = reader.read_doubles("min_lrs");
    TORCHKIT_CHECK(config.min_lrs.size() == group_count, "{}: 'min_lrs' has {} values for {} parameter groups",
                   reader.owner(), config.min_lrs.size(), group_count);
    const auto momentums =
        detail::read_cycled_momentums(reader, *optimizer_, config.cycle_momentum, config.use_beta1, group_count);
    if (apply) {
      options_ = std::move(options);
      config_ = std::move(config);
      for (std::size_t index = 0; index < momentums.size(); ++index) {
        detail::set_group_momentum(*optimizer_, index, momentums[index]);
      }
    }
  }

  OneCycleLROptions options_;
  Config config_;
};

// ---------------------------------------------------------------------------------------------
// CyclicLR
// ---------------------------------------------------------------------------------------------

/// CyclicLR's arguments (Python's names and defaults; `base_lr` and `max_lr` are required).
struct CyclicLROptions {
  /// The lower lr boundary: one value, or one per group.
  GroupValues base_lr{};
  /// The upper lr boundary: one value, or one per group.
  GroupValues max_lr{};
  /// Iterations in the increasing half of a cycle (> 0).
  int64_t step_size_up = 2000;
  /// Iterations in the decreasing half (> 0); `step_size_up` when not set.
  std::optional<int64_t> step_size_down{};
  /// `"triangular"`, `"triangular2"` or `"exp_range"`; ignored when `scale_fn` is set.
  std::string mode = "triangular";
  /// The constant of `"exp_range"`: the amplitude scales by `gamma ** iterations`.
  double gamma = 1.0;
  /// A custom amplitude scale (0 <= scale_fn(x) <= 1), called with the cycle number or the
  /// iteration (`scale_mode`). Not saved by `save()`.
  std::function<double(double)> scale_fn{};
  /// `"cycle"` or `"iterations"`: what `scale_fn` is called with.
  std::string scale_mode = "cycle";
  /// Cycle the momentum (SGD, RMSprop) or beta1 (Adam, AdamW) inversely to the lr.
  bool cycle_momentum = true;
  /// The momentum at the lr's peak.
  GroupValues base_momentum = 0.8;
  /// The momentum at the start of a cycle.
  GroupValues max_momentum = 0.9;
};

/// Cycles each group's lr between `base_lr` and `max_lr` (`torch.optim.lr_scheduler.CyclicLR`),
/// the momentum between `max_momentum` and `base_momentum`. Step it once per batch. Besides
/// torch 1.13's SGD/RMSprop momentum, it cycles Adam/AdamW's beta1 as torch 2.x does.
///
///     torchkit::lr::CyclicLR scheduler(optimizer, {.base_lr = 0.01, .max_lr = 0.1, .step_size_up = 20});
class CyclicLR final : public Scheduler {
 public:
  CyclicLR(torch::optim::Optimizer& optimizer, GroupValues base_lr, GroupValues max_lr, int64_t step_size_up = 2000)
      : CyclicLR(optimizer, CyclicLROptions{.base_lr = std::move(base_lr), .max_lr = std::move(max_lr),
                                            .step_size_up = step_size_up}) {}
  CyclicLR(torch::optim::Optimizer& optimizer, CyclicLROptions options)
      : Scheduler(optimizer, "CyclicLR"), options_(std::move(options)) {
    const std::size_t group_count = optimizer.param_groups().size();
    Config config = configure(options_, group_count, "CyclicLR");
    if (config.cycle_momentum) {
      const auto kind = detail::momentum_kind(optimizer);
      TORCHKIT_CHECK(kind != detail::MomentumKind::none,
                     "CyclicLR: optimizer must support momentum with `cycle_momentum` option enabled (SGD, RMSprop, "
                     "Adam or AdamW); pass cycle_momentum=false");
      config.use_beta1 = kind == detail::MomentumKind::beta1;
    }
    // Everything is valid: from here on the optimizer changes.
    config_ = std::move(config);
    for (std::size_t index = 0; index < group_count; ++index) {
      detail::set_group_lr(optimizer, index, config_.base_lrs[index]);
      if (config_.cycle_momentum) {
        detail::set_group_momentum(optimizer, index, config_.base_momentums[index]);
      }
    }
    record_initial_lrs();
    initial_step();
    base_lrs_ = config_.base_lrs;  // Python sets them after the initial step
  }

  [[nodiscard]] const CyclicLROptions& options() const noexcept { return options_; }

 private:
  struct Config {
    std::vector<double> base_lrs, max_lrs, base_momentums, max_momentums;
    int64_t step_size_up = 0;
    int64_t step_size_down = 0;
    double total_size = 0;
    double step_ratio = 0;
    int scale = 0;  // 0 triangular, 1 triangular2, 2 exp_range, 3 custom
    bool scale_by_cycle = true;
    bool cycle_momentum = true;
    bool use_beta1 = false;
  };

  static Config configure(const CyclicLROptions& options, std::size_t group_count, std::string_view owner) {
    Config config;
    config.base_lrs = options.base_lr.for_groups(group_count, "base_lr", owner);
    detail::check_non_negative(owner, "base_lr", config.base_lrs);
    config.max_lrs = options.max_lr.for_groups(group_count, "max_lr", owner);
    detail::check_non_negative(owner, "max_lr", config.max_lrs);
    detail::check_positive(owner, "step_size_up", options.step_size_up);
    if (options.step_size_down) {
      detail::check_positive(owner, "step_size_down", *options.step_size_down);
    }
    config.step_size_up = options.step_size_up;
    config.step_size_down = options.step_size_down.value_or(options.step_size_up);
    const auto up = static_cast<double>(config.step_size_up);
    config.total_size = up + static_cast<double>(config.step_size_down);
    config.step_ratio = up / config.total_size;
    if (options.scale_fn) {
      TORCHKIT_CHECK(options.scale_mode == "cycle" || options.scale_mode == "iterations",
                     "{}: scale_mode must be 'cycle' or 'iterations', got '{}'", owner, options.scale_mode);
      config.scale = 3;
      config.scale_by_cycle = options.scale_mode == "cycle";
    } else {
      TORCHKIT_CHECK(options.mode == "triangular" || options.mode == "triangular2" || options.mode == "exp_range",
                     "{}: mode is invalid and scale_fn is None: got mode '{}', expected 'triangular', "
                     "'triangular2' or 'exp_range'",
                     owner, options.mode);
      config.scale = options.mode == "triangular" ? 0 : options.mode == "triangular2" ? 1 : 2;
      config.scale_by_cycle = config.scale != 2;
    }
    TORCHKIT_CHECK(std::isfinite(options.gamma) && options.gamma >= 0, "{}: gamma must be a finite number >= 0, got {}",
                   owner, options.gamma);
    config.cycle_momentum = options.cycle_momentum;
    if (config.cycle_momentum) {
      config.base_momentums = options.base_momentum.for_groups(group_count, "base_momentum", owner);
      config.max_momentums = options.max_momentum.for_groups(group_count, "max_momentum", owner);
      detail::check_non_negative(owner, "base_momentum", config.base_momentums);
      detail::check_non_negative(owner, "max_momentum", config.max_momentums);
    }
    return config;
  }

  [[nodiscard]] double scale(double x) const {
    switch (config_.scale) {
      case 0:
        return 1.;
      case 1:
        return 1 / std::pow(2., x - 1);
      case 2:
        return std::pow(options_.gamma, x);
      default:
        return options_.scale_fn(x);
    }
  }

  // Python's cycle, the position in it, and the amplitude scale of the current iteration.
  struct Position {
    double scale_factor;
    double amplitude_scale;
  };
  [[nodiscard]] Position position() const {
    const auto epoch = static_cast<double>(last_epoch_);
    const double cycle = std::floor(1 + epoch / config_.total_size);
    const double x = 1. + epoch / config_.total_size - cycle;
    const double scale_factor = x <= config_.step_ratio ? x / config_.step_ratio : (x - 1) / (config_.step_ratio - 1);
    return {scale_factor, scale(config_.scale_by_cycle ? cycle : epoch)};
  }

  [[nodiscard]] std::vector<double> get_lr() const override {
    const auto [scale_factor, amplitude_scale] = position();
    std::vector<double> lrs;
    for (std::size_t index = 0; index < base_lrs_.size(); ++index) {
      const double base_height = (config_.max_lrs[index] - base_lrs_[index]) * scale_factor;
      lrs.push_back(base_lrs_[index] + base_height * amplitude_scale);
    }
    return lrs;
  }
  [[nodiscard]] std::vector<double> get_momentum() const override {
    if (!config_.cycle_momentum) {
      return {};
    }
    const auto [scale_factor, amplitude_scale] = position();
    std::vector<double> momentums;
    for (std::size_t index = 0; index < base_lrs_.size(); ++index) {
      const double base_height = (config_.max_momentums[index] - config_.base_momentums[index]) * scale_factor;
      momentums.push_back(config_.max_momentums[index] - base_height * amplitude_scale);
    }
    return momentums;
  }
  [[nodiscard]] std::string arguments() const override {
    static constexpr const char* modes[] = {"triangular", "triangular2", "exp_range", "custom scale_fn"};
    return fmt::format(
        "base_lr={}, max_lr={}, step_size_up={}, step_size_down={}, mode='{}', gamma={}, scale_mode='{}', "
        "cycle_momentum={}, base_momentum={}, max_momentum={}",
        detail::list_to_string(config_.base_lrs), detail::list_to_string(config_.max_lrs), config_.step_size_up,
        config_.step_size_down, modes[config_.scale], options_.gamma, config_.scale_by_cycle ? "cycle" : "iterations",
        config_.cycle_momentum, detail::list_to_string(config_.base_momentums),
        detail::list_to_string(config_.max_momentums));
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_doubles("max_lrs", config_.max_lrs);
    writer.write_int("step_size_up", config_.step_size_up);
    writer.write_int("step_size_down", config_.step_size_down);
    writer.write_string("mode", options_.mode);
    writer.write_double("gamma", options_.gamma);
    writer.write_bool("custom_scale_fn", config_.scale == 3);
    writer.write_string("scale_mode", config_.scale_by_cycle ? "cycle" : "iterations");
    writer.write_bool("cycle_momentum", config_.cycle_momentum);
    writer.write_bool("use_beta1", config_.use_beta1);
    writer.write_doubles("base_momentums", config_.base_momentums);
    writer.write_doubles("max_momentums", config_.max_momentums);
    writer.write_doubles("optimizer_momentums", config_.cycle_momentum ? group_momentums() : std::vector<double>{});
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    const std::size_t group_count = optimizer_->param_groups().size();
    CyclicLROptions options = options_;
    options.base_lr = reader.read_doubles("base_lrs");
    options.max_lr = reader.read_doubles("max_lrs");
    options.step_size_up = reader.read_int("step_size_up");
    options.step_size_down = reader.read_int("step_size_down");
    options.mode = reader.read_string("mode");
    options.gamma = reader.read_double("gamma");
    options.scale_mode = reader.read_string("scale_mode");
    options.cycle_momentum = reader.read_bool("cycle_momentum");
    options.base_momentum = reader.read_doubles("base_momentums");
    options.max_momentum = reader.read_doubles("max_momentums");
    const bool custom = reader.read_bool("custom_scale_fn");
    TORCHKIT_CHECK(custom == static_cast<bool>(options_.scale_fn),
                   "{}: the archive was saved {} a custom scale_fn, this scheduler has {}; construct it as the saved "
                   "one was",
                   reader.owner(), custom ? "with" : "without", options_.scale_fn ? "one" : "none");
    Config config = configure(options, group_count, reader.owner());
    config.use_beta1 = reader.read_bool("use_beta1");
    const auto momentums =
        detail::read_cycled_momentums(reader, *optimizer_, config.cycle_momentum, config.use_beta1, group_count);
    if (apply) {
      options_ = std::move(options);
      config_ = std::move(config);
      for (std::size_t index = 0; index < momentums.size(); ++index) {
        detail::set_group_momentum(*optimizer_, index, momentums[index]);
      }
    }
  }

  CyclicLROptions options_;
  Config config_;
};

// ---------------------------------------------------------------------------------------------
// SequentialLR and ChainedScheduler
// ---------------------------------------------------------------------------------------------

/// A scheduler of any type for SequentialLR and ChainedScheduler: a `std::shared_ptr` to one
/// (shared with the caller), or a scheduler moved in. The list is built left to right, so
/// schedulers written inline are constructed in the order written, as in Python.
///
///     {torchkit::lr::LinearLR(optimizer, {.start_factor = 0.1}), std::move(cosine), shared_step}
class AnyScheduler {
 public:
  /// Shares `scheduler` with the caller. Throws Error when it is null.
  template <std::derived_from<Scheduler> S>
  AnyScheduler(std::shared_ptr<S> scheduler) : scheduler_(std::move(scheduler)) {  // NOLINT
    TORCHKIT_CHECK(scheduler_ != nullptr, "torchkit::lr: a scheduler pointer is null");
  }
  /// Takes over `scheduler` (pass a temporary or `std::move(scheduler)`; an lvalue would be
  /// copied, so that stepping the composite would not step the caller's object).
  template <std::derived_from<Scheduler> S>
    requires(!std::is_lvalue_reference_v<S>)
  AnyScheduler(S&& scheduler)  // NOLINT(google-explicit-constructor, bugprone-forwarding-reference-overload)
      : scheduler_(std::make_shared<S>(std::move(scheduler))) {}

  [[nodiscard]] const std::shared_ptr<Scheduler>& get() const noexcept { return scheduler_; }

 private:
  std::shared_ptr<Scheduler> scheduler_;
};

/// Runs schedulers one after another, switching at the milestones
/// (`torch.optim.lr_scheduler.SequentialLR`), e.g. a linear warm-up, then cosine annealing.
/// At construction it resets every group's lr to its initial lr and restarts the first
/// scheduler; at each milestone the next one starts from epoch 0 (its closed form), as in
/// Python. Throws Error (Python's wording) when a scheduler belongs to another optimizer or
/// the number of milestones is not one less than the number of schedulers, and for negative
/// or unsorted milestones; a SequentialLR or ChainedScheduler cannot be one of the schedulers.
///
///     torchkit::lr::SequentialLR scheduler(
///         optimizer,
///         {torchkit::lr::LinearLR(optimizer, {.start_factor = 0.1, .total_iters = 5}),
///          torchkit::lr::CosineAnnealingLR(optimizer, {.T_max = 95})},
///         {5});
class SequentialLR final : public Scheduler {
 public:
  SequentialLR(torch::optim::Optimizer& optimizer, std::vector<AnyScheduler> schedulers,
               std::vector<int64_t> milestones)
      : Scheduler(optimizer, "SequentialLR"), milestones_(std::move(milestones)) {
    TORCHKIT_CHECK(!schedulers.empty(), "SequentialLR: expects at least one scheduler, got none");
    for (std::size_t index = 0; index < schedulers.size(); ++index) {
      const auto& scheduler = schedulers[index].get();
      TORCHKIT_CHECK(&scheduler->optimizer() == &optimizer,
                     "SequentialLR: Sequential Schedulers expects all schedulers to belong to the same optimizer, "
                     "but got schedulers at index {} to be different than the optimizer passed in.",
                     index);
      TORCHKIT_CHECK(!scheduler->is_composite(),
                     "SequentialLR: the scheduler at index {} is a {}, which cannot be restarted at a milestone; "
                     "put it around the SequentialLR instead",
                     index, scheduler->type_name());
    }
    TORCHKIT_CHECK(milestones_.size() + 1 == schedulers.size(),
                   "SequentialLR: Sequential Schedulers expects number of schedulers provided to be one more than "
                   "the number of milestone points, but got number of schedulers {} and the number of milestones "
                   "to be equal to {}",
                   schedulers.size(), milestones_.size());
    detail::check_milestones("SequentialLR", milestones_);
    for (auto& scheduler : schedulers) {
      schedulers_.push_back(scheduler.get());
    }
    check_group_counts();
    initial_lrs_ = detail::shared_initial_lrs(optimizer);
    const std::size_t group_count = optimizer.param_groups().size();
    base_lrs_.assign(initial_lrs_->values.begin(),
                     initial_lrs_->values.begin() + static_cast<std::ptrdiff_t>(group_count));
    // Valid: now reset the lrs, "undo" the schedulers' initial steps and restart the first.
    last_epoch_ = 0;
    for (std::size_t index = 0; index < group_count; ++index) {
      detail::set_group_lr(optimizer, index, base_lrs_[index]);
    }
    for (const auto& scheduler : schedulers_) {
      scheduler->last_epoch_ -= 1;
    }
    schedulers_.front()->initial_step();
    last_lr_ = schedulers_.front()->last_lr();
  }

  /// Steps the scheduler whose turn it is; at a milestone, starts the next one at epoch 0.
  void step() override {
    check_group_count();
    const int64_t epoch = last_epoch_ + 1;
    const std::size_t index = detail::bisect_right(milestones_, epoch);
    const auto& scheduler = schedulers_[index];
    if (index > 0 && milestones_[index - 1] == epoch) {
      scheduler->step_to(0);
    } else {
      scheduler->check_next_step();
      scheduler->step();
    }
    last_epoch_ = epoch;
    last_lr_ = scheduler->last_lr();
  }

  /// The schedulers, in order.
  [[nodiscard]] const std::vector<std::shared_ptr<Scheduler>>& schedulers() const noexcept { return schedulers_; }
  /// The epochs at which the next scheduler takes over.
  [[nodiscard]] const std::vector<int64_t>& milestones() const noexcept { return milestones_; }

 private:
  void check_group_counts() const {
    for (const auto& scheduler : schedulers_) {
      scheduler->check_group_count();
    }
  }
  void check_next_step() const override {
    const int64_t epoch = last_epoch_ + 1;
    const std::size_t index = detail::bisect_right(milestones_, epoch);
    if (index == 0 || milestones_[index - 1] != epoch) {
      schedulers_[index]->check_next_step();
    }
  }
  [[nodiscard]] std::vector<double> get_lr() const override { return last_lr_; }
  [[nodiscard]] bool is_composite() const noexcept override { return true; }
  void step_to(int64_t /*epoch*/) override {
    detail::fail("SequentialLR: cannot jump to an epoch (Python's SequentialLR.step() takes no epoch)");
  }
  [[nodiscard]] std::string arguments() const override {
    std::vector<std::string> names;
    for (const auto& scheduler : schedulers_) {
      names.push_back(scheduler->to_string());
    }
    return fmt::format("schedulers=[{}], milestones={}", fmt::join(names, ", "),
                       detail::list_to_string(milestones_));
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_ints("milestones", milestones_);
    writer.write_int("scheduler_count", static_cast<int64_t>(schedulers_.size()));
    for (std::size_t index = 0; index < schedulers_.size(); ++index) {
      torch::serialize::OutputArchive nested(writer.archive().compilation_unit());
      detail::ArchiveWriter nested_writer(nested);
      schedulers_[index]->save_to(nested_writer);
      writer.archive().write(fmt::format("schedulers/{}", index), nested);
    }
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    auto milestones = reader.read_ints("milestones");
    const int64_t count = reader.read_int("scheduler_count");
    TORCHKIT_CHECK(count == static_cast<int64_t>(schedulers_.size()),
                   "{}: the archive holds {} schedulers, this SequentialLR has {}", reader.owner(), count,
                   schedulers_.size());
    TORCHKIT_CHECK(milestones.size() + 1 == schedulers_.size(), "{}: the archive holds {} milestones for {} schedulers",
                   reader.owner(), milestones.size(), schedulers_.size());
    detail::check_milestones(reader.owner(), milestones);
    for (std::size_t index = 0; index < schedulers_.size(); ++index) {
      auto nested = reader.read_archive(fmt::format("schedulers/{}", index));
      detail::ArchiveReader nested_reader(nested, fmt::format("{} (schedulers[{}])", reader.owner(), index));
      schedulers_[index]->load_from(nested_reader, apply);
    }
    if (apply) {
      milestones_ = std::move(milestones);
    }
  }

  std::vector<std::shared_ptr<Scheduler>> schedulers_;
  std::vector<int64_t> milestones_;
};

/// Steps several schedulers of one optimizer together, each multiplying in its effect
/// (`torch.optim.lr_scheduler.ChainedScheduler`). Its `last_epoch()` counts its steps.
/// Throws Error (Python's wording) when the schedulers belong to different optimizers.
///
///     torchkit::lr::ChainedScheduler scheduler({torchkit::lr::ConstantLR(optimizer, {.factor = 0.1, .total_iters = 2}),
///                                               torchkit::lr::ExponentialLR(optimizer, 0.9)});
class ChainedScheduler final : public Scheduler {
 public:
  explicit ChainedScheduler(std::vector<AnyScheduler> schedulers)
      : Scheduler(first_optimizer(schedulers), "ChainedScheduler") {
    for (std::size_t index = 1; index < schedulers.size(); ++index) {
      TORCHKIT_CHECK(&schedulers[index].get()->optimizer() == optimizer_,
                     "ChainedScheduler: ChainedScheduler expects all schedulers to belong to the same optimizer, but "
                     "got schedulers at index {} and {} to be different",
                     0, index);
    }
    for (auto& scheduler : schedulers) {
      schedulers_.push_back(scheduler.get());
    }
    for (const auto& scheduler : schedulers_) {
      scheduler->check_group_count();
    }
    initial_lrs_ = detail::shared_initial_lrs(*optimizer_);
    const std::size_t group_count = optimizer_->param_groups().size();
    base_lrs_.assign(initial_lrs_->values.begin(),
                     initial_lrs_->values.begin() + static_cast<std::ptrdiff_t>(group_count));
    last_epoch_ = 0;
    last_lr_ = group_lrs();
  }

  /// Steps every scheduler, in order. When one of them would refuse the step (OneCycleLR past
  /// its total steps), throws that Error before any of them moves.
  void step() override {
    check_group_count();
    check_next_step();
    for (const auto& scheduler : schedulers_) {
      scheduler->step();
    }
    ++last_epoch_;
    last_lr_ = group_lrs();
  }

  /// The schedulers, in order.
  [[nodiscard]] const std::vector<std::shared_ptr<Scheduler>>& schedulers() const noexcept { return schedulers_; }

 private:
  static torch::optim::Optimizer& first_optimizer(const std::vector<AnyScheduler>& schedulers) {
    TORCHKIT_CHECK(!schedulers.empty(), "ChainedScheduler: expects at least one scheduler, got none");
    return schedulers.front().get()->optimizer();
  }
  void check_next_step() const override {
    for (const auto& scheduler : schedulers_) {
      scheduler->check_next_step();
    }
  }
  [[nodiscard]] std::vector<double> get_lr() const override { return last_lr_; }
  [[nodiscard]] bool is_composite() const noexcept override { return true; }
  void step_to(int64_t /*epoch*/) override {
    detail::fail("ChainedScheduler: cannot jump to an epoch (Python's ChainedScheduler.step() takes no epoch)");
  }
  [[nodiscard]] std::string arguments() const override {
    std::vector<std::string> names;
    for (const auto& scheduler : schedulers_) {
      names.push_back(scheduler->to_string());
    }
    return fmt::format("schedulers=[{}]", fmt::join(names, ", "));
  }
  void save_state(detail::ArchiveWriter& writer) const override {
    writer.write_int("scheduler_count", static_cast<int64_t>(schedulers_.size()));
    for (std::size_t index = 0; index < schedulers_.size(); ++index) {
      torch::serialize::OutputArchive nested(writer.archive().compilation_unit());
      detail::ArchiveWriter nested_writer(nested);
      schedulers_[index]->save_to(nested_writer);
      writer.archive().write(fmt::format("schedulers/{}", index), nested);
    }
  }
  void load_state(detail::ArchiveReader& reader, bool apply) override {
    const int64_t count = reader.read_int("scheduler_count");
    TORCHKIT_CHECK(count == static_cast<int64_t>(schedulers_.size()),
                   "{}: the archive holds {} schedulers, this ChainedScheduler has {}", reader.owner(), count,
                   schedulers_.size());
    for (std::size_t index = 0; index < schedulers_.size(); ++index) {
      auto nested = reader.read_archive(fmt::format("schedulers/{}", index));
      detail::ArchiveReader nested_reader(nested, fmt::format("{} (schedulers[{}])", reader.owner(), index));
      schedulers_[index]->load_from(nested_reader, apply);
    }
  }

  std::vector<std::shared_ptr<Scheduler>> schedulers_;
};

// ---------------------------------------------------------------------------------------------
// ReduceLROnPlateau
// ---------------------------------------------------------------------------------------------

/// ReduceLROnPlateau's arguments (Python's names and defaults).
struct ReduceLROnPlateauOptions {
  /// `"min"`: reduce when the metric stops decreasing; `"max"`: when it stops increasing.
  std::string mode = "min";
  /// The lr is multiplied by it on a plateau, in [0, 1).
  double factor = 0.1;
  /// Epochs without improvement tolerated before reducing (>= 0).
  int64_t patience = 10;
  /// What counts as an improvement (>= 0), relative or absolute (`threshold_mode`).
  double threshold = 1e-4;
  /// `"rel"` or `"abs"`.
  std::string threshold_mode = "rel";
  /// Epochs to wait after a reduction before counting bad epochs again (>= 0).
  int64_t cooldown = 0;
  /// Lower bound of the lr: one value, or one per group (>= 0).
  GroupValues min_lr = 0.0;
  /// A reduction smaller than this is skipped (>= 0).
  double eps = 1e-8;
};

/// Reduces the lr when a metric has stopped improving
/// (`torch.optim.lr_scheduler.ReduceLROnPlateau`). Not a Scheduler: `step` takes the metric.
/// Throws Error with Python's wording for a bad mode, threshold mode, factor (`Factor should be
/// < 1.0.`) or min_lr list.
///
///     torchkit::lr::ReduceLROnPlateau scheduler(optimizer, {.mode = "min", .patience = 5});
///     for (...) { train(...); scheduler.step(validation_loss); }
class ReduceLROnPlateau {
 public:
  explicit ReduceLROnPlateau(torch::optim::Optimizer& optimizer) : ReduceLROnPlateau(optimizer, {}) {}
  ReduceLROnPlateau(torch::optim::Optimizer& optimizer, ReduceLROnPlateauOptions options)
      : optimizer_(&optimizer), options_(std::move(options)) {
    TORCHKIT_CHECK(!optimizer.param_groups().empty(),
                   "ReduceLROnPlateau: the optimizer has no parameter groups; give it parameters before creating a "
                   "scheduler");
    min_lrs_ = validate(options_, optimizer.param_groups().size(), "ReduceLROnPlateau");
    last_lr_ = group_lrs();
    reset();
  }

  /// Takes the epoch's metric (e.g. the validation loss); reduces the lr of every group by
  /// `factor` (not below its `min_lr`) after more than `patience` epochs without improvement.
  void step(double metric) {
    TORCHKIT_CHECK(optimizer_->param_groups().size() == min_lrs_.size(),
                   "ReduceLROnPlateau: the optimizer has {} parameter groups, but had {} when the scheduler was "
                   "created",
                   optimizer_->param_groups().size(), min_lrs_.size());
    const double current = metric;
    last_epoch_ = last_epoch_ + 1;
    if (is_better(current, best_)) {
      best_ = current;
      num_bad_epochs_ = 0;
    } else {
      num_bad_epochs_ += 1;
    }
    if (in_cooldown()) {
      cooldown_counter_ -= 1;
      num_bad_epochs_ = 0;  // ignore any bad epochs in cooldown
    }
    if (num_bad_epochs_ > options_.patience) {
      reduce_lr();
      cooldown_counter_ = options_.cooldown;
      num_bad_epochs_ = 0;
    }
    last_lr_ = group_lrs();
  }

  /// The metric as a one-element tensor (Python's `float(metrics)`; synchronises with its
  /// device). Throws Error for a tensor with more than one element.
  void step(const at::Tensor& metric) {
    TORCHKIT_CHECK(metric.defined() && metric.numel() == 1,
                   "ReduceLROnPlateau: the metric must be a one-element tensor, got {}",
                   metric.defined() ? fmt::format("shape [{}]", fmt::join(metric.sizes(), ", ")) : "an undefined tensor");
    step(metric.item<double>());
  }

  /// The lr of every group after the last step (at construction: the current lrs).
  [[nodiscard]] std::vector<double> last_lr() const { return last_lr_; }
  /// The number of steps taken.
  [[nodiscard]] int64_t last_epoch() const noexcept { return last_epoch_; }
  /// The best metric so far (+inf in "min" mode, -inf in "max" mode before the first step).
  [[nodiscard]] double best() const noexcept { return best_; }
  /// Epochs since the last improvement (reset by a reduction and in cooldown).
  [[nodiscard]] int64_t num_bad_epochs() const noexcept { return num_bad_epochs_; }
  /// Epochs of cooldown left.
  [[nodiscard]] int64_t cooldown_counter() const noexcept { return cooldown_counter_; }
  [[nodiscard]] bool in_cooldown() const noexcept { return cooldown_counter_ > 0; }
  [[nodiscard]] const ReduceLROnPlateauOptions& options() const noexcept { return options_; }
  [[nodiscard]] torch::optim::Optimizer& optimizer() const noexcept { return *optimizer_; }

  /// Writes the state (options, best, counters, epoch, and every group's current lr, which
  /// LibTorch's `optimizer.save()` does not keep) under the key `"lr_scheduler"`.
  void save(torch::serialize::OutputArchive& archive) const {
    torch::serialize::OutputArchive state(archive.compilation_unit());
    detail::ArchiveWriter writer(state);
    writer.write_string("type", "ReduceLROnPlateau");
    writer.write_string("mode", options_.mode);
    writer.write_double("factor", options_.factor);
    writer.write_int("patience", options_.patience);
    writer.write_double("threshold", options_.threshold);
    writer.write_string("threshold_mode", options_.threshold_mode);
    writer.write_int("cooldown", options_.cooldown);
    writer.write_doubles("min_lrs", min_lrs_);
    writer.write_double("eps", options_.eps);
    writer.write_double("best", best_);
    writer.write_int("num_bad_epochs", num_bad_epochs_);
    writer.write_int("cooldown_counter", cooldown_counter_);
    writer.write_int("last_epoch", last_epoch_);
    writer.write_doubles("last_lr", last_lr_);
    writer.write_doubles("optimizer_lrs", group_lrs());
    archive.write("lr_scheduler", state);
  }

  /// Restores the state written by `save()` and every group's lr; throws Error (changing
  /// nothing) for another kind of scheduler or a different number of parameter groups.
  void load(torch::serialize::InputArchive& archive) {
    detail::ArchiveReader outer(archive, "ReduceLROnPlateau::load");
    torch::serialize::InputArchive state = outer.read_archive("lr_scheduler");
    detail::ArchiveReader reader(state, "ReduceLROnPlateau::load");
    const std::string type = reader.read_string("type");
    TORCHKIT_CHECK(type == "ReduceLROnPlateau", "{}: the archive holds the state of a {}, not of a ReduceLROnPlateau",
                   reader.owner(), type);
    ReduceLROnPlateauOptions options{.mode = reader.read_string("mode"),
                                     .factor = reader.read_double("factor"),
                                     .patience = reader.read_int("patience"),
                                     .threshold = reader.read_double("threshold"),
                                     .threshold_mode = reader.read_string("threshold_mode"),
                                     .cooldown = reader.read_int("cooldown"),
                                     .min_lr = reader.read_doubles("min_lrs"),
                                     .eps = reader.read_double("eps")};
    auto min_lrs = validate(options, optimizer_->param_groups().size(), reader.owner());
    const double best = reader.read_double("best");
    const int64_t num_bad_epochs = reader.read_int("num_bad_epochs");
    const int64_t cooldown_counter = reader.read_int("cooldown_counter");
    const int64_t last_epoch = reader.read_int("last_epoch");
    auto last_lr = reader.read_doubles("last_lr");
    const auto optimizer_lrs = reader.read_doubles("optimizer_lrs");
    TORCHKIT_CHECK(last_lr.size() == min_lrs.size() && optimizer_lrs.size() == min_lrs.size(),
                   "{}: the archive was saved for {} parameter groups, the optimizer has {}", reader.owner(),
                   last_lr.size(), min_lrs.size());
    // Counters beyond 2^53 cannot come from a run, and would overflow the next step.
    const auto check_counter = [&](std::string_view name, int64_t value) {
      TORCHKIT_CHECK(value >= 0 && value < detail::max_count, "{}: {} in the archive is {}; expected 0 <= {} < 2^53",
                     reader.owner(), name, value, name);
    };
    check_counter("num_bad_epochs", num_bad_epochs);
    check_counter("cooldown_counter", cooldown_counter);
    check_counter("last_epoch", last_epoch);
    options_ = std::move(options);
    min_lrs_ = std::move(min_lrs);
    best_ = best;
    num_bad_epochs_ = num_bad_epochs;
    cooldown_counter_ = cooldown_counter;
    last_epoch_ = last_epoch;
    last_lr_ = std::move(last_lr);
    for (std::size_t index = 0; index < optimizer_lrs.size(); ++index) {
      detail::set_group_lr(*optimizer_, index, optimizer_lrs[index]);
    }
  }

  /// `ReduceLROnPlateau(mode='min', factor=0.1, ...) last_epoch=3 best=0.5 num_bad_epochs=1 last_lr=[0.1]`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format(
        "ReduceLROnPlateau(mode='{}', factor={}, patience={}, threshold={}, threshold_mode='{}', cooldown={}, "
        "min_lr={}, eps={}) last_epoch={} best={} num_bad_epochs={} last_lr={}",
        options_.mode, options_.factor, options_.patience, options_.threshold, options_.threshold_mode,
        options_.cooldown, detail::list_to_string(min_lrs_), options_.eps, last_epoch_, best_, num_bad_epochs_,
        detail::list_to_string(last_lr_));
  }

  friend std::ostream& operator<<(std::ostream& stream, const ReduceLROnPlateau& scheduler) {
    return stream << scheduler.to_string();
  }

 private:
  static std::vector<double> validate(const ReduceLROnPlateauOptions& options, std::size_t group_count,
                                      std::string_view owner) {
    TORCHKIT_CHECK(options.factor < 1.0, "{}: Factor should be < 1.0, got factor={}", owner, options.factor);
    TORCHKIT_CHECK(options.factor >= 0, "{}: Factor should be >= 0, got factor={}", owner, options.factor);
    TORCHKIT_CHECK(options.mode == "min" || options.mode == "max", "{}: mode {} is unknown! (expected 'min' or 'max')",
                   owner, options.mode);
    TORCHKIT_CHECK(options.threshold_mode == "rel" || options.threshold_mode == "abs",
                   "{}: threshold mode {} is unknown! (expected 'rel' or 'abs')", owner, options.threshold_mode);
    TORCHKIT_CHECK(options.patience >= 0, "{}: patience must be >= 0, got {}", owner, options.patience);
    TORCHKIT_CHECK(options.cooldown >= 0, "{}: cooldown must be >= 0, got {}", owner, options.cooldown);
    detail::check_non_negative(owner, "threshold", options.threshold);
    detail::check_non_negative(owner, "eps", options.eps);
    TORCHKIT_CHECK(!options.min_lr.empty(), "{}: min_lr is empty; give one value or one per group", owner);
    std::vector<double> min_lrs;
    if (options.min_lr.for_every_group()) {
      min_lrs.assign(group_count, options.min_lr.values().front());
    } else {
      TORCHKIT_CHECK(options.min_lr.values().size() == group_count, "{}: expected {} min_lrs, got {}", owner,
                     group_count, options.min_lr.values().size());
      min_lrs = options.min_lr.values();
    }
    detail::check_non_negative(owner, "min_lr", min_lrs);
    return min_lrs;
  }

  void reset() {
    best_ = options_.mode == "min" ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
    cooldown_counter_ = 0;
    num_bad_epochs_ = 0;
  }

  [[nodiscard]] bool is_better(double a, double best) const {
    const bool relative = options_.threshold_mode == "rel";
    if (options_.mode == "min") {
      return relative ? a < best * (1. - options_.threshold) : a < best - options_.threshold;
    }
    return relative ? a > best * (options_.threshold + 1.) : a > best + options_.threshold;
  }

  void reduce_lr() {
    for (std::size_t index = 0; index < min_lrs_.size(); ++index) {
      const double old_lr = detail::group_lr(*optimizer_, index);
      const double new_lr = std::max(old_lr * options_.factor, min_lrs_[index]);
      if (old_lr - new_lr > options_.eps) {
        detail::set_group_lr(*optimizer_, index, new_lr);
      }
    }
  }

  [[nodiscard]] std::vector<double> group_lrs() const {
    std::vector<double> lrs(optimizer_->param_groups().size());
    for (std::size_t index = 0; index < lrs.size(); ++index) {
      lrs[index] = detail::group_lr(*optimizer_, index);
    }
    return lrs;
  }

  torch::optim::Optimizer* optimizer_;
  ReduceLROnPlateauOptions options_;
  std::vector<double> min_lrs_;
  double best_ = 0;
  int64_t num_bad_epochs_ = 0;
  int64_t cooldown_counter_ = 0;
  int64_t last_epoch_ = 0;
  std::vector<double> last_lr_;
};

}  // namespace torchkit::lr
