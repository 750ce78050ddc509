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
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// lr/scheduler.hpp: GroupValues, the field tables, Scheduler and RuleScheduler

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
    return for_every_group_ ? fmt::format("{}", values_.front()) : detail::lr::list_to_string(values_);
  }

 private:
  std::vector<double> values_;
  bool for_every_group_ = false;
};

/// A function of the epoch (LambdaLR: the factor applied to the initial lr; MultiplicativeLR:
/// the factor applied to the current lr).
using LrLambda = std::function<double(int64_t epoch)>;

}  // namespace torchkit::lr

namespace torchkit::detail::lr {

/// A GroupValues argument that must be given, every value finite and >= 0.
inline void check_group_values(std::string_view owner, std::string_view name, const torchkit::lr::GroupValues& value) {
  TORCHKIT_CHECK(!value.empty(), "{}: {} is required", owner, name);
  check_finite_non_negative(owner, name, value.values());
}

}  // namespace torchkit::detail::lr

namespace torchkit::lr {

template <class Rule>
class RuleScheduler;
class CompositeScheduler;

/// The common base of every epoch-driven scheduler (Python's `_LRScheduler`), so that
/// SequentialLR and ChainedScheduler can hold any of them. Its two direct kinds are
/// RuleScheduler (a scheduler described by its options and a rule: every scheduler of Python's
/// family but the composites) and CompositeScheduler (SequentialLR, ChainedScheduler); a new
/// scheduler derives from RuleScheduler.
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
    detail::lr::ArchiveWriter(archive).write_nested("lr_scheduler", [&](auto& writer) { save_to(writer); });
  }

  /// Restores the state written by `save()` (Python's `load_state_dict()`), and the lr (and
  /// cycled momentum) of every parameter group. Construct the optimizer and the scheduler as
  /// at the start of the run, then load both; the schedule continues exactly where the saved
  /// run stopped. Throws Error (and changes nothing) when the archive holds another kind of
  /// scheduler, a different number of parameter groups, or any value the constructor would
  /// refuse.
  ///
  ///     torch::serialize::InputArchive archive;
  ///     archive.load_from("checkpoint.pt");
  ///     optimizer.load(archive);
  ///     scheduler.load(archive);
  void load(torch::serialize::InputArchive& archive) {
    const std::string owner = type_name_ + "::load";
    torch::serialize::InputArchive state = detail::lr::ArchiveReader(archive, owner).read_nested("lr_scheduler");
    detail::lr::ArchiveReader reader(state, owner);
    load_from(reader, /*apply=*/false);  // validates everything first
    load_from(reader, /*apply=*/true);
  }

  /// `StepLR(step_size=10, gamma=0.1) last_epoch=3 last_lr=[0.001, 0.0001]`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("{}({}) last_epoch={} last_lr={}", type_name_, arguments(), last_epoch_,
                       detail::lr::list_to_string(last_lr_));
  }

  friend std::ostream& operator<<(std::ostream& stream, const Scheduler& scheduler) {
    return stream << scheduler.to_string();
  }

 protected:
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
  virtual void save_state(detail::lr::ArchiveWriter& writer) const = 0;
  /// Reads what the subclass adds; with `apply` false it only validates (and must throw
  /// Error for anything it would not accept), with `apply` true it commits.
  virtual void load_state(detail::lr::ArchiveReader& reader, bool apply) = 0;

  /// Throws Error when parameter groups were added to the optimizer since construction.
  void check_group_count() const {
    detail::lr::check_group_count(*optimizer_, base_lrs_.size(), type_name_);
  }

  /// Sets the lr (and momentum, when given) of every group and records `last_lr_`.
  void apply(const std::vector<double>& lrs, const std::vector<double>& momentums = {}) {
    detail::lr::set_group_lrs(*optimizer_, lrs);
    detail::lr::set_group_momentums(*optimizer_, momentums);
    last_lr_ = detail::lr::group_lrs(*optimizer_);
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
  std::shared_ptr<detail::lr::InitialLrs> initial_lrs_;
  std::vector<double> base_lrs_;
  int64_t last_epoch_ = -1;
  int64_t step_count_ = 0;
  std::vector<double> last_lr_;

 private:
  template <class Rule>
  friend class RuleScheduler;
  friend class CompositeScheduler;

  /// Attaches to `optimizer`; throws Error when it has no parameter groups or its options
  /// have no learning rate. Changes nothing. Only RuleScheduler and CompositeScheduler derive
  /// from Scheduler directly: each finishes its own construction.
  Scheduler(torch::optim::Optimizer& optimizer, std::string type_name)
      : optimizer_(&optimizer), type_name_(std::move(type_name)) {
    (void)detail::lr::check_optimizer(optimizer, type_name_);
  }

  /// What Python's `_LRScheduler.__init__` ends with: `param_group.setdefault('initial_lr',
  /// param_group['lr'])` for every group (with `initial_lrs`, sets them instead: OneCycleLR),
  /// `base_lrs = [group['initial_lr'] ...]`, then `_initial_step()` (to epoch 0).
  void start(const std::vector<double>* initial_lrs = nullptr) {
    initial_lrs_ = detail::lr::shared_initial_lrs(*optimizer_);
    auto& values = initial_lrs_->values;
    const std::size_t group_count = optimizer_->param_groups().size();
    for (std::size_t index = values.size(); index < group_count; ++index) {
      values.push_back(detail::lr::group_lr(*optimizer_, index));
    }
    if (initial_lrs != nullptr) {
      std::copy(initial_lrs->begin(), initial_lrs->end(), values.begin());
    }
    base_lrs_.assign(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(group_count));
    initial_step();
  }

  /// Python's `_initial_step()`: resets the step count and steps to epoch 0.
  void initial_step() {
    step_count_ = 0;
    step();
  }

  void save_to(detail::lr::ArchiveWriter& writer) const {
    writer.write("type", type_name_);
    writer.write("last_epoch", last_epoch_);
    writer.write("step_count", step_count_);
    writer.write("base_lrs", base_lrs_);
    writer.write("last_lr", last_lr_);
    writer.write("initial_lrs", initial_lrs_ ? initial_lrs_->values : base_lrs_);
    writer.write("optimizer_lrs", detail::lr::group_lrs(*optimizer_));
    save_state(writer);
  }

  void load_from(detail::lr::ArchiveReader& reader, bool apply) {
    const auto type = reader.read<std::string>("type");
    TORCHKIT_CHECK(type == type_name_, "{}: the archive holds the state of a scheduler of type {}, not {}",
                   reader.owner(), type, type_name_);
    const auto last_epoch = reader.read<int64_t>("last_epoch");
    const auto step_count = reader.read<int64_t>("step_count");
    constexpr int64_t epoch_limit = detail::lr::max_count;  // exact as doubles; no run goes beyond
    TORCHKIT_CHECK(last_epoch >= -1 && last_epoch < epoch_limit,
                   "{}: last_epoch in the archive is {}; expected -1 <= last_epoch < 2^53", reader.owner(), last_epoch);
    TORCHKIT_CHECK(step_count >= 0 && step_count < epoch_limit,
                   "{}: step_count in the archive is {}; expected 0 <= step_count < 2^53", reader.owner(), step_count);
    auto base_lrs = reader.read<std::vector<double>>("base_lrs");
    auto last_lr = reader.read<std::vector<double>>("last_lr");
    auto initial_lrs = reader.read<std::vector<double>>("initial_lrs");
    const auto optimizer_lrs = reader.read<std::vector<double>>("optimizer_lrs");
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
        initial_lrs_ = detail::lr::shared_initial_lrs(*optimizer_);
      }
      initial_lrs_->values = std::move(initial_lrs);
      detail::lr::set_group_lrs(*optimizer_, optimizer_lrs);
    }
  }
};

/// A scheduler described by its options and a rule, the base of every scheduler but the
/// composites. `Rule` is a struct of static functions (the rules of the built-in schedulers
/// live in `torchkit::detail::lr`):
///
/// - `name` (the class name) and `Options`, whose `static constexpr auto fields()` lists each
///   field once: name, member, check. From that list RuleScheduler checks the options,
///   prints `arguments()`, and saves and loads them (validate all, then apply).
/// - either the multiplicative shape, `double factor(const Options&, int64_t epoch)` and
///   `double closed_factor(const Options&, int64_t epoch)`, or
///   `double lr(const View&, std::size_t group, double lr)` with, where Python has a closed
///   form, `double closed_form_lr(const View&, std::size_t group)`;
/// - optionally a `State` beside the options, made by `State prepare(const Options&, const
///   Optimizer&, std::string_view owner)` (checks across fields and against the optimizer);
///   `set_up(Optimizer&, const State&)` (changes made before the initial lrs are recorded);
///   `initial_lrs(const State&)` (initial lrs to set rather than record); `check_step(const
///   State&, int64_t epoch, std::string_view owner)` (an epoch the rule refuses);
///   `momentum(const View&, std::size_t group)` (with a State derived from
///   `detail::lr::Cycling`); `save(ArchiveWriter&, const State&)` and `load(ArchiveReader&,
///   State&)` (state beyond the options).
///
/// Why a rule rather than virtual functions of the final class: C++ runs a base's constructor
/// before the derived class exists, so a base cannot take Python's initial step through the
/// derived class's overrides, and every scheduler had to end its constructor with "record the
/// initial lrs, take the initial step". With static rules and the whole state held here,
/// everything the initial step needs exists when RuleScheduler's constructor runs, so it
/// finishes the construction itself: a scheduler's constructor only passes its options on.
template <class Rule>
class RuleScheduler : public Scheduler {
 public:
  using Options = typename Rule::Options;
  using State = typename detail::lr::state_of<Rule>::type;
  using View = detail::lr::View<Rule>;

  /// The arguments, as given (after `load()`: as loaded).
  [[nodiscard]] const Options& options() const noexcept { return options_; }

 protected:
  /// Checks `options` (each field, then across fields and against the optimizer), then does
  /// what Python's constructor does: set-up, the initial lrs, the initial step. Throws Error,
  /// changing nothing, for anything the scheduler would not accept.
  RuleScheduler(torch::optim::Optimizer& optimizer, Options options)
      : Scheduler(optimizer, std::string(Rule::name)),
        options_(std::move(options)),
        state_(prepare(options_, optimizer, type_name_)) {
    if constexpr (requires { Rule::set_up(optimizer, state_); }) {
      Rule::set_up(optimizer, state_);
    }
    if constexpr (requires { Rule::initial_lrs(state_); }) {
      start(&Rule::initial_lrs(state_));
    } else {
      start();
    }
  }
  [[nodiscard]] View view() const {
    return View{options_, state_, last_epoch_, step_count_, base_lrs_, initial_lrs_->values};
  }

  [[nodiscard]] std::vector<double> get_lr() const override {
    if constexpr (checks_steps) {
      Rule::check_step(state_, last_epoch_, type_name_ + "::step");
    }
    auto lrs = detail::lr::group_lrs(*optimizer_);
    if constexpr (detail::lr::FactorRule<Rule>) {
      const double factor = Rule::factor(options_, last_epoch_);
      for (double& lr : lrs) {
        lr = lr * factor;
      }
    } else {
      const View now = view();
      for (std::size_t group = 0; group < lrs.size(); ++group) {
        lrs[group] = Rule::lr(now, group, lrs[group]);
      }
    }
    return lrs;
  }

  [[nodiscard]] std::optional<std::vector<double>> closed_form_lr() const override {
    constexpr bool has_closed_form = requires(const View& at) { Rule::closed_form_lr(at, std::size_t{}); };
    if constexpr (detail::lr::FactorRule<Rule> || has_closed_form) {
      std::vector<double> lrs(base_lrs_.size());
      for (std::size_t group = 0; group < lrs.size(); ++group) {
        if constexpr (detail::lr::FactorRule<Rule>) {
          lrs[group] = base_lrs_[group] * Rule::closed_factor(options_, last_epoch_);
        } else {
          lrs[group] = Rule::closed_form_lr(view(), group);
        }
      }
      return lrs;
    } else {
      return std::nullopt;
    }
  }

 private:
  static constexpr bool checks_steps = requires(const State& state, std::string_view owner) {
    Rule::check_step(state, int64_t{}, owner);
  };

  static State prepare(const Options& options, const torch::optim::Optimizer& optimizer, std::string_view owner) {
    detail::lr::check_fields(options, owner);
    if constexpr (requires { Rule::prepare(options, optimizer, owner); }) {
      return Rule::prepare(options, optimizer, owner);
    } else {
      return State{};
    }
  }

  [[nodiscard]] std::vector<double> get_momentum() const override {
    std::vector<double> momentums;
    if constexpr (std::derived_from<State, detail::lr::Cycling>) {
      if (state_.cycle_momentum) {
        const View now = view();
        for (std::size_t group = 0; group < base_lrs_.size(); ++group) {
          momentums.push_back(Rule::momentum(now, group));
        }
      }
    }
    return momentums;
  }

  void check_next_step() const override {
    if constexpr (checks_steps) {
      Rule::check_step(state_, last_epoch_ + 1, type_name_ + "::step");
    }
  }

  [[nodiscard]] std::string arguments() const override { return detail::lr::format_fields(options_); }

  void save_state(detail::lr::ArchiveWriter& writer) const override {
    detail::lr::save_fields(writer, options_);
    if constexpr (requires { Rule::save(writer, state_); }) {
      Rule::save(writer, state_);
    }
    if constexpr (std::derived_from<State, detail::lr::Cycling>) {
      detail::lr::save_cycling(writer, state_, *optimizer_);
    }
  }

  void load_state(detail::lr::ArchiveReader& reader, bool apply) override {
    Options options = detail::lr::load_fields(reader, options_);
    State state = prepare(options, *optimizer_, reader.owner());
    if constexpr (requires { Rule::load(reader, state); }) {
      Rule::load(reader, state);
    }
    std::vector<double> momentums;
    if constexpr (std::derived_from<State, detail::lr::Cycling>) {
      momentums = detail::lr::load_cycling(reader, state, *optimizer_);
    }
    if (apply) {
      options_ = std::move(options);
      state_ = std::move(state);
      detail::lr::set_group_momentums(*optimizer_, momentums);
    }
  }

 protected:
  Options options_;
  State state_;
};

// lr/decay.hpp: the multiplicative family and cosine annealing

/// StepLR's arguments (Python's names and defaults; `step_size` is required).
struct StepLROptions {
  /// Period of learning rate decay, in epochs (> 0).
  std::optional<int64_t> step_size{};
  /// Multiplicative factor of learning rate decay (>= 0).
  double gamma = 0.1;

  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("step_size", &StepLROptions::step_size, required<int64_t, check_count>),
                      field("gamma", &StepLROptions::gamma, check_finite_non_negative)};
  }
};

/// MultiStepLR's arguments.
struct MultiStepLROptions {
  /// Epochs at which to decay: >= 0 and increasing (a repeated milestone decays twice, as in
  /// Python, whose `Counter` counts it).
  std::vector<int64_t> milestones{};
  /// Multiplicative factor of learning rate decay (>= 0).
  double gamma = 0.1;

  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("milestones", &MultiStepLROptions::milestones, check_milestones),
                      field("gamma", &MultiStepLROptions::gamma, check_finite_non_negative)};
  }
};

/// ConstantLR's arguments.
struct ConstantLROptions {
  /// The factor applied until `total_iters`, in (0, 1].
  double factor = 1.0 / 3;
  /// The number of epochs the factor applies (> 0).
  int64_t total_iters = 5;

  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("factor", &ConstantLROptions::factor, check_factor),
                      field("total_iters", &ConstantLROptions::total_iters, check_count)};
  }
};

/// LinearLR's arguments.
struct LinearLROptions {
  /// The factor at epoch 0, in (0, 1].
  double start_factor = 1.0 / 3;
  /// The factor from epoch `total_iters` on, in [0, 1].
  double end_factor = 1.0;
  /// The number of epochs over which the factor changes linearly (> 0).
  int64_t total_iters = 5;

  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("start_factor", &LinearLROptions::start_factor, check_factor),
                      field("end_factor", &LinearLROptions::end_factor, check_factor),
                      field("total_iters", &LinearLROptions::total_iters, check_count)};
  }
};

/// ExponentialLR's arguments (`gamma` is required).
struct ExponentialLROptions {
  /// Multiplicative factor of learning rate decay, applied every epoch (>= 0).
  std::optional<double> gamma{};

  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("gamma", &ExponentialLROptions::gamma, required<double, check_finite_non_negative>)};
  }
};

/// PolynomialLR's arguments.
struct PolynomialLROptions {
  /// The number of epochs over which the lr decays to 0 (> 0).
  int64_t total_iters = 5;
  /// The power of the polynomial (>= 0).
  double power = 1.0;

  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("total_iters", &PolynomialLROptions::total_iters, check_count),
                      field("power", &PolynomialLROptions::power, check_finite_non_negative)};
  }
};

/// CosineAnnealingLR's arguments (`T_max` is required; the names are Python's).
struct CosineAnnealingLROptions {
  /// Maximum number of iterations: the half period of the cosine (> 0).
  std::optional<int64_t> T_max{};  // NOLINT(readability-identifier-naming): Python's name
  /// Minimum learning rate (>= 0).
  double eta_min = 0.0;

  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("T_max", &CosineAnnealingLROptions::T_max, required<int64_t, check_count>),
                      field("eta_min", &CosineAnnealingLROptions::eta_min, check_finite_non_negative)};
  }
};

/// CosineAnnealingWarmRestarts's arguments (`T_0` is required; the names are Python's).
struct CosineAnnealingWarmRestartsOptions {
  /// Number of iterations until the first restart (> 0).
  std::optional<int64_t> T_0{};  // NOLINT(readability-identifier-naming): Python's name
  /// The factor by which the period grows after each restart (>= 1).
  int64_t T_mult = 1;  // NOLINT(readability-identifier-naming): Python's name
  /// Minimum learning rate (>= 0).
  double eta_min = 0.0;

  static constexpr auto fields() {
    using namespace detail::lr;
    return std::tuple{field("T_0", &CosineAnnealingWarmRestartsOptions::T_0, required<int64_t, check_count>),
                      field("T_mult", &CosineAnnealingWarmRestartsOptions::T_mult,
                            [](std::string_view owner, std::string_view, int64_t T_mult) {  // NOLINT
                              TORCHKIT_CHECK(T_mult >= 1, "{}: Expected integer T_mult >= 1, but got {}", owner,
                                             T_mult);
                            }),
                      field("eta_min", &CosineAnnealingWarmRestartsOptions::eta_min, check_finite_non_negative)};
  }
};

}  // namespace torchkit::lr

namespace torchkit::detail::lr {

struct StepLRRule {
  static constexpr std::string_view name = "StepLR";
  using Options = torchkit::lr::StepLROptions;
  static double factor(const Options& options, int64_t epoch) {
    return epoch == 0 || python_mod(epoch, *options.step_size) != 0 ? 1.0 : options.gamma;
  }
  static double closed_factor(const Options& options, int64_t epoch) {
    return std::pow(options.gamma, static_cast<double>(python_floor_div(epoch, *options.step_size)));
  }
};

struct MultiStepLRRule {
  static constexpr std::string_view name = "MultiStepLR";
  using Options = torchkit::lr::MultiStepLROptions;
  static double factor(const Options& options, int64_t epoch) {
    const auto count = std::count(options.milestones.begin(), options.milestones.end(), epoch);
    return count == 0 ? 1.0 : std::pow(options.gamma, static_cast<double>(count));
  }
  static double closed_factor(const Options& options, int64_t epoch) {
    return std::pow(options.gamma, static_cast<double>(bisect_right(options.milestones, epoch)));
  }
};

struct ConstantLRRule {
  static constexpr std::string_view name = "ConstantLR";
  using Options = torchkit::lr::ConstantLROptions;
  static double factor(const Options& options, int64_t epoch) {
    if (epoch == 0) {
      return options.factor;
    }
    return epoch == options.total_iters ? 1.0 / options.factor : 1.0;
  }
  static double closed_factor(const Options& options, int64_t epoch) {
    const double reached = epoch >= options.total_iters ? 1.0 : 0.0;
    return options.factor + reached * (1 - options.factor);
  }
};

struct LinearLRRule {
  static constexpr std::string_view name = "LinearLR";
  using Options = torchkit::lr::LinearLROptions;
  static double factor(const Options& options, int64_t epoch) {
    const auto& [start_factor, end_factor, total_iters] = options;
    if (epoch == 0) {
      return start_factor;
    }
    if (epoch > total_iters) {
      return 1.0;
    }
    return 1. + (end_factor - start_factor) / (static_cast<double>(total_iters) * start_factor +
                                               static_cast<double>(epoch - 1) * (end_factor - start_factor));
  }
  static double closed_factor(const Options& options, int64_t epoch) {
    const auto& [start_factor, end_factor, total_iters] = options;
    const auto reached = static_cast<double>(std::min(total_iters, epoch));
    return start_factor + (end_factor - start_factor) * reached / static_cast<double>(total_iters);
  }
};

struct ExponentialLRRule {
  static constexpr std::string_view name = "ExponentialLR";
  using Options = torchkit::lr::ExponentialLROptions;
  static double factor(const Options& options, int64_t epoch) { return epoch == 0 ? 1.0 : *options.gamma; }
  static double closed_factor(const Options& options, int64_t epoch) {
    return std::pow(*options.gamma, static_cast<double>(epoch));
  }
};

struct PolynomialLRRule {
  static constexpr std::string_view name = "PolynomialLR";
  using Options = torchkit::lr::PolynomialLROptions;
  static double factor(const Options& options, int64_t epoch) {
    if (epoch == 0 || epoch > options.total_iters) {
      return 1.0;
    }
    const auto total_iters = static_cast<double>(options.total_iters);
    return std::pow((1.0 - static_cast<double>(epoch) / total_iters) /
                        (1.0 - static_cast<double>(epoch - 1) / total_iters),
                    options.power);
  }
  static double closed_factor(const Options& options, int64_t epoch) {
    const auto reached = static_cast<double>(std::min(options.total_iters, epoch));
    return std::pow(1.0 - reached / static_cast<double>(options.total_iters), options.power);
  }
};

struct CosineAnnealingLRRule {
  static constexpr std::string_view name = "CosineAnnealingLR";
  using Options = torchkit::lr::CosineAnnealingLROptions;
  static double lr(const View<CosineAnnealingLRRule>& at, std::size_t group, double lr) {
    constexpr double pi = std::numbers::pi;
    const double eta_min = at.options.eta_min;
    const int64_t T_max = *at.options.T_max;  // NOLINT(readability-identifier-naming)
    const auto t_max = static_cast<double>(T_max);
    const auto epoch = static_cast<double>(at.last_epoch);
    const double base_lr = at.base_lrs[group];
    if (at.last_epoch == 0) {
      return lr;
    }
    if (at.step_count == 1 && at.last_epoch > 0) {
      return eta_min + (base_lr - eta_min) * (1 + std::cos(epoch * pi / t_max)) / 2;
    }
    if (python_mod(at.last_epoch - 1 - T_max, 2 * T_max) == 0) {
      return lr + (base_lr - eta_min) * (1 - std::cos(pi / t_max)) / 2;
    }
    return (1 + std::cos(pi * epoch / t_max)) / (1 + std::cos(pi * (epoch - 1) / t_max)) * (lr - eta_min) + eta_min;
  }
  static double closed_form_lr(const View<CosineAnnealingLRRule>& at, std::size_t group) {
    const double eta_min = at.options.eta_min;
    return eta_min + (at.base_lrs[group] - eta_min) *
                         (1 + std::cos(std::numbers::pi * static_cast<double>(at.last_epoch) /
                                       static_cast<double>(*at.options.T_max))) /
                         2;
  }
};

struct CosineAnnealingWarmRestartsRule {
  static constexpr std::string_view name = "CosineAnnealingWarmRestarts";
  using Options = torchkit::lr::CosineAnnealingWarmRestartsOptions;
  struct State {
    double T_cur = 0;  // NOLINT(readability-identifier-naming): Python's names
    int64_t T_i = 1;   // NOLINT(readability-identifier-naming)
  };
  // Python's initial step goes to epoch 0 of the first period.
  static State prepare(const Options& options, const torch::optim::Optimizer& /*optimizer*/,
                       std::string_view /*owner*/) {
    return State{.T_cur = 0, .T_i = *options.T_0};
  }
  static double lr_at(const Options& options, const State& state, double base_lr) {
    const double eta_min = options.eta_min;
    return eta_min +
           (base_lr - eta_min) * (1 + std::cos(std::numbers::pi * state.T_cur / static_cast<double>(state.T_i))) / 2;
  }
  static double lr(const View<CosineAnnealingWarmRestartsRule>& at, std::size_t group, double /*lr*/) {
    return lr_at(at.options, at.state, at.base_lrs[group]);
  }
  static void save(ArchiveWriter& writer, const State& state) {
    writer.write("T_cur", state.T_cur);
    writer.write("T_i", state.T_i);
  }
  static void load(ArchiveReader& reader, State& state) {
    state.T_cur = reader.read<double>("T_cur");
    state.T_i = reader.read<int64_t>("T_i");
    TORCHKIT_CHECK(state.T_i > 0, "{}: T_i in the archive must be positive, got {}", reader.owner(), state.T_i);
    TORCHKIT_CHECK(std::isfinite(state.T_cur) && state.T_cur >= -1,
                   "{}: T_cur in the archive must be finite and >= -1, got {}", reader.owner(), state.T_cur);
  }
};

}  // namespace torchkit::detail::lr

namespace torchkit::lr {

/// Decays each group's lr by `gamma` every `step_size` epochs
/// (`torch.optim.lr_scheduler.StepLR`). Throws Error for `step_size <= 0` or `gamma < 0`.
///
///     torchkit::lr::StepLR scheduler(optimizer, 30, 0.1);  // 0.05 → 0.005 at epoch 30 → ...
class StepLR final : public RuleScheduler<detail::lr::StepLRRule> {
 public:
  StepLR(torch::optim::Optimizer& optimizer, int64_t step_size, double gamma = 0.1)
      : StepLR(optimizer, StepLROptions{.step_size = step_size, .gamma = gamma}) {}
  StepLR(torch::optim::Optimizer& optimizer, const StepLROptions& options) : RuleScheduler(optimizer, options) {}
};

/// Decays each group's lr by `gamma` at each milestone epoch
/// (`torch.optim.lr_scheduler.MultiStepLR`). Throws Error for negative or unsorted milestones
/// or `gamma < 0`.
///
///     torchkit::lr::MultiStepLR scheduler(optimizer, {30, 80}, 0.1);
class MultiStepLR final : public RuleScheduler<detail::lr::MultiStepLRRule> {
 public:
  MultiStepLR(torch::optim::Optimizer& optimizer, std::vector<int64_t> milestones, double gamma = 0.1)
      : MultiStepLR(optimizer, MultiStepLROptions{.milestones = std::move(milestones), .gamma = gamma}) {}
  MultiStepLR(torch::optim::Optimizer& optimizer, MultiStepLROptions options)
      : RuleScheduler(optimizer, std::move(options)) {}
};

/// Multiplies each group's lr by `factor` until epoch `total_iters`
/// (`torch.optim.lr_scheduler.ConstantLR`). Throws Error for a factor outside (0, 1] (Python
/// accepts 0 but then divides by it) or `total_iters <= 0`.
///
///     torchkit::lr::ConstantLR scheduler(optimizer, {.factor = 0.5, .total_iters = 4});
class ConstantLR final : public RuleScheduler<detail::lr::ConstantLRRule> {
 public:
  explicit ConstantLR(torch::optim::Optimizer& optimizer, double factor = 1.0 / 3, int64_t total_iters = 5)
      : ConstantLR(optimizer, ConstantLROptions{.factor = factor, .total_iters = total_iters}) {}
  ConstantLR(torch::optim::Optimizer& optimizer, const ConstantLROptions& options)
      : RuleScheduler(optimizer, options) {}
};

/// Changes each group's lr linearly from `start_factor` to `end_factor` times its initial lr
/// over `total_iters` epochs (`torch.optim.lr_scheduler.LinearLR`), the usual warm-up.
/// Throws Error for factors outside their range (a start factor of 0 would divide by zero) or
/// `total_iters <= 0`.
///
///     torchkit::lr::LinearLR warmup(optimizer, {.start_factor = 0.1, .total_iters = 5});
class LinearLR final : public RuleScheduler<detail::lr::LinearLRRule> {
 public:
  explicit LinearLR(torch::optim::Optimizer& optimizer, double start_factor = 1.0 / 3, double end_factor = 1.0,
                    int64_t total_iters = 5)
      : LinearLR(optimizer, LinearLROptions{.start_factor = start_factor, .end_factor = end_factor,
                                            .total_iters = total_iters}) {}
  LinearLR(torch::optim::Optimizer& optimizer, const LinearLROptions& options) : RuleScheduler(optimizer, options) {}
};

/// Multiplies each group's lr by `gamma` every epoch (`torch.optim.lr_scheduler.ExponentialLR`).
///
///     torchkit::lr::ExponentialLR scheduler(optimizer, 0.95);
class ExponentialLR final : public RuleScheduler<detail::lr::ExponentialLRRule> {
 public:
  ExponentialLR(torch::optim::Optimizer& optimizer, double gamma)
      : ExponentialLR(optimizer, ExponentialLROptions{.gamma = gamma}) {}
  ExponentialLR(torch::optim::Optimizer& optimizer, const ExponentialLROptions& options)
      : RuleScheduler(optimizer, options) {}
};

/// Decays each group's lr as `(1 - epoch / total_iters) ** power` times its initial lr
/// (`torch.optim.lr_scheduler.PolynomialLR`).
///
///     torchkit::lr::PolynomialLR scheduler(optimizer, {.total_iters = 4, .power = 1.0});
class PolynomialLR final : public RuleScheduler<detail::lr::PolynomialLRRule> {
 public:
  explicit PolynomialLR(torch::optim::Optimizer& optimizer, int64_t total_iters = 5, double power = 1.0)
      : PolynomialLR(optimizer, PolynomialLROptions{.total_iters = total_iters, .power = power}) {}
  PolynomialLR(torch::optim::Optimizer& optimizer, const PolynomialLROptions& options)
      : RuleScheduler(optimizer, options) {}
};

/// Anneals each group's lr from its initial lr to `eta_min` along a cosine over `T_max` epochs
/// (and back up over the next `T_max`) with Python's recursive formula
/// (`torch.optim.lr_scheduler.CosineAnnealingLR`).
///
///     torchkit::lr::CosineAnnealingLR scheduler(optimizer, {.T_max = 100, .eta_min = 1e-5});
class CosineAnnealingLR final : public RuleScheduler<detail::lr::CosineAnnealingLRRule> {
 public:
  CosineAnnealingLR(torch::optim::Optimizer& optimizer, int64_t T_max, double eta_min = 0.0)  // NOLINT
      : CosineAnnealingLR(optimizer, CosineAnnealingLROptions{.T_max = T_max, .eta_min = eta_min}) {}
  CosineAnnealingLR(torch::optim::Optimizer& optimizer, const CosineAnnealingLROptions& options)
      : RuleScheduler(optimizer, options) {}
};

/// SGDR: cosine annealing from each group's initial lr to `eta_min`, restarting every `T_i`
/// epochs, `T_i` growing by `T_mult` after each restart
/// (`torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`). Besides `step()`, `step(epoch)`
/// accepts a fractional epoch, as in Python (`scheduler.step(epoch + i / iters)`).
///
///     torchkit::lr::CosineAnnealingWarmRestarts scheduler(optimizer, {.T_0 = 10, .T_mult = 2});
class CosineAnnealingWarmRestarts final : public RuleScheduler<detail::lr::CosineAnnealingWarmRestartsRule> {
 public:
  CosineAnnealingWarmRestarts(torch::optim::Optimizer& optimizer, int64_t T_0, int64_t T_mult = 1,  // NOLINT
                              double eta_min = 0.0)
      : CosineAnnealingWarmRestarts(
            optimizer, CosineAnnealingWarmRestartsOptions{.T_0 = T_0, .T_mult = T_mult, .eta_min = eta_min}) {}
  CosineAnnealingWarmRestarts(torch::optim::Optimizer& optimizer, const CosineAnnealingWarmRestartsOptions& options)
      : RuleScheduler(optimizer, options) {}

  /// One epoch (or batch) further; at the end of a period, restarts.
  void step() override {
    check_group_count();
    if (last_epoch_ < 0) {  // Python: `if epoch is None and self.last_epoch < 0: epoch = 0`
      step(0.0);
      return;
    }
    State next{.T_cur = state_.T_cur + 1, .T_i = state_.T_i};
    if (next.T_cur >= static_cast<double>(next.T_i)) {
      next.T_cur = next.T_cur - static_cast<double>(next.T_i);
      // Python's integers never overflow; int64 does after about 63 restarts with T_mult = 2.
      TORCHKIT_CHECK(!__builtin_mul_overflow(state_.T_i, options_.T_mult, &next.T_i),
                     "CosineAnnealingWarmRestarts::step: the next period T_i * T_mult = {} * {} does not fit in int64",
                     state_.T_i, options_.T_mult);
    }
    commit(last_epoch_ + 1, next);
  }

  /// Jumps to `epoch` (fractional epochs allowed), as Python's `scheduler.step(epoch)`.
  /// Throws Error for a negative or non-finite epoch: `Expected non-negative epoch, but got -1`.
  void step(double epoch) {
    check_group_count();
    TORCHKIT_CHECK(std::isfinite(epoch) && epoch >= 0,
                   "CosineAnnealingWarmRestarts::step: Expected non-negative epoch, but got {}", epoch);
    TORCHKIT_CHECK(epoch < static_cast<double>(detail::lr::max_count),
                   "CosineAnnealingWarmRestarts::step: epoch {} is beyond 2^53, the largest epoch a scheduler accepts",
                   epoch);
    const int64_t T_0 = *options_.T_0;       // NOLINT(readability-identifier-naming)
    const int64_t T_mult = options_.T_mult;  // NOLINT(readability-identifier-naming)
    State next{.T_cur = epoch, .T_i = T_0};
    if (epoch >= static_cast<double>(T_0)) {
      next.T_i = state_.T_i;
      if (T_mult == 1) {
        next.T_cur = std::fmod(epoch, static_cast<double>(T_0));
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
                   __builtin_mul_overflow(T_0, power, &next.T_i);
        TORCHKIT_CHECK(!overflow,
                       "CosineAnnealingWarmRestarts::step: the period at epoch {} (T_0={}, T_mult={}) does not fit "
                       "in int64",
                       epoch, T_0, T_mult);
        next.T_cur = epoch - static_cast<double>(restarted) / static_cast<double>(T_mult - 1);
      }
    }
    commit(static_cast<int64_t>(std::floor(epoch)), next);
  }

  /// Epochs since the last restart (Python's `T_cur`).
  [[nodiscard]] double T_cur() const noexcept { return state_.T_cur; }  // NOLINT(readability-identifier-naming)
  /// The current period (Python's `T_i`).
  [[nodiscard]] int64_t T_i() const noexcept { return state_.T_i; }  // NOLINT(readability-identifier-naming)

 private:
  void commit(int64_t last_epoch, const State& next) {
    std::vector<double> lrs;
    for (const double base_lr : base_lrs_) {
      lrs.push_back(Rule::lr_at(options_, next, base_lr));
    }
    last_epoch_ = last_epoch;
    state_ = next;
    apply(lrs);
  }
  using Rule = detail::lr::CosineAnnealingWarmRestartsRule;
  void step_to(int64_t epoch) override { step(static_cast<double>(epoch)); }
};

// lr/lambda.hpp: LambdaLR and MultiplicativeLR

/// The argument of LambdaLR and MultiplicativeLR: one function per parameter group (one given
/// for all is copied to every group). Lambdas are not saved; load() checks their number.
struct LrLambdas {
  std::vector<LrLambda> lr_lambdas{};

  static constexpr auto fields() { return std::tuple{detail::lr::field("lr_lambdas", &LrLambdas::lr_lambdas)}; }
};

}  // namespace torchkit::lr

namespace torchkit::detail::lr {

/// One function per group: `lambdas` itself (Python's list form, its count checked) or, with
/// `one_for_all`, its single function copied to every group.
[[nodiscard]] inline torchkit::lr::LrLambdas lambdas_for_groups(std::vector<torchkit::lr::LrLambda> lambdas,
                                                                bool one_for_all,
                                                                const torch::optim::Optimizer& optimizer,
                                                                std::string_view owner) {
  const std::size_t group_count = optimizer.param_groups().size();
  if (one_for_all) {
    TORCHKIT_CHECK(lambdas.size() == 1 && lambdas.front(), "{}: lr_lambda is empty", owner);
    return {std::vector<torchkit::lr::LrLambda>(group_count, lambdas.front())};
  }
  TORCHKIT_CHECK(lambdas.size() == group_count, "{}: Expected {} lr_lambdas, but got {}", owner, group_count,
                 lambdas.size());
  for (std::size_t index = 0; index < lambdas.size(); ++index) {
    TORCHKIT_CHECK(static_cast<bool>(lambdas[index]), "{}: lr_lambda[{}] is empty", owner, index);
  }
  return {std::move(lambdas)};
}

struct LambdaLRRule {
  static constexpr std::string_view name = "LambdaLR";
  using Options = torchkit::lr::LrLambdas;
  static double lr(const View<LambdaLRRule>& at, std::size_t group, double /*lr*/) {
    return at.base_lrs[group] * at.options.lr_lambdas[group](at.last_epoch);
  }
};

struct MultiplicativeLRRule {
  static constexpr std::string_view name = "MultiplicativeLR";
  using Options = torchkit::lr::LrLambdas;
  static double lr(const View<MultiplicativeLRRule>& at, std::size_t group, double lr) {
    return at.last_epoch > 0 ? lr * at.options.lr_lambdas[group](at.last_epoch) : lr;
  }
};

}  // namespace torchkit::detail::lr

namespace torchkit::lr {

/// Sets each group's lr to its initial lr times `lr_lambda(epoch)`
/// (`torch.optim.lr_scheduler.LambdaLR`): one function for every group, or one per group.
///
///     torchkit::lr::LambdaLR scheduler(optimizer, [](int64_t epoch) { return std::pow(0.95, epoch); });
///     torchkit::lr::LambdaLR per_group(optimizer, {[](int64_t epoch) { return epoch / 30; },
///                                                  [](int64_t epoch) { return std::pow(0.95, epoch); }});
class LambdaLR final : public RuleScheduler<detail::lr::LambdaLRRule> {
 public:
  LambdaLR(torch::optim::Optimizer& optimizer, LrLambda lr_lambda)
      : RuleScheduler(optimizer, detail::lr::lambdas_for_groups({std::move(lr_lambda)}, true, optimizer, Rule::name)) {}
  LambdaLR(torch::optim::Optimizer& optimizer, std::vector<LrLambda> lr_lambdas)
      : RuleScheduler(optimizer, detail::lr::lambdas_for_groups(std::move(lr_lambdas), false, optimizer, Rule::name)) {}

 private:
  using Rule = detail::lr::LambdaLRRule;
};

/// Multiplies each group's lr by `lr_lambda(epoch)` every epoch from epoch 1 on
/// (`torch.optim.lr_scheduler.MultiplicativeLR`).
///
///     torchkit::lr::MultiplicativeLR scheduler(optimizer, [](int64_t) { return 0.95; });
class MultiplicativeLR final : public RuleScheduler<detail::lr::MultiplicativeLRRule> {
 public:
  MultiplicativeLR(torch::optim::Optimizer& optimizer, LrLambda lr_lambda)
      : RuleScheduler(optimizer, detail::lr::lambdas_for_groups({std::move(lr_lambda)}, true, optimizer, Rule::name)) {}
  MultiplicativeLR(torch::optim::Optimizer& optimizer, std::vector<LrLambda> lr_lambdas)
      : RuleScheduler(optimizer, detail::lr::lambdas_for_groups(std::move(lr_lambdas), false, optimizer, Rule::name)) {}

 private:
  using Rule = detail::lr::MultiplicativeLRRule;
};

// lr/cyclic.hpp: OneCycleLR and CyclicLR

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

  static constexpr auto fields() {
    using namespace detail::lr;
    using O = OneCycleLROptions;
    return std::tuple{
        field("max_lr", &O::max_lr, check_group_values),
        field("total_steps", &O::total_steps, if_given<int64_t, check_count>),
        field("epochs", &O::epochs, if_given<int64_t, check_count>),
        field("steps_per_epoch", &O::steps_per_epoch, if_given<int64_t, check_count>),
        field("pct_start", &O::pct_start,
              [](std::string_view owner, std::string_view, double pct_start) {
                TORCHKIT_CHECK(pct_start >= 0 && pct_start <= 1,
                               "{}: Expected float between 0 and 1 pct_start, but got {}", owner, pct_start);
              }),
        field("anneal_strategy", &O::anneal_strategy,
              [](std::string_view owner, std::string_view, const std::string& strategy) {
                TORCHKIT_CHECK(strategy == "cos" || strategy == "linear",
                               "{}: anneal_strategy must by one of 'cos' or 'linear', instead got {}", owner, strategy);
              }),
        field("cycle_momentum", &O::cycle_momentum),
        field("base_momentum", &O::base_momentum, check_group_values),
        field("max_momentum", &O::max_momentum, check_group_values),
        field("div_factor", &O::div_factor, check_positive),
        field("final_div_factor", &O::final_div_factor, check_positive),
        field("three_phase", &O::three_phase)};
  }
};

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

  static constexpr auto fields() {
    using namespace detail::lr;
    using O = CyclicLROptions;
    return std::tuple{field("base_lr", &O::base_lr, check_group_values),
                      field("max_lr", &O::max_lr, check_group_values),
                      field("step_size_up", &O::step_size_up, check_count),
                      field("step_size_down", &O::step_size_down, if_given<int64_t, check_count>),
                      field("mode", &O::mode),  // checked with scale_fn: ignored when there is one
                      field("gamma", &O::gamma, check_finite_non_negative),
                      field("scale_fn", &O::scale_fn),
                      field("scale_mode", &O::scale_mode),
                      field("cycle_momentum", &O::cycle_momentum),
                      field("base_momentum", &O::base_momentum, check_group_values),
                      field("max_momentum", &O::max_momentum, check_group_values)};
  }
};

}  // namespace torchkit::lr

namespace torchkit::detail::lr {

struct OneCycleLRRule {
  static constexpr std::string_view name = "OneCycleLR";
  using Options = torchkit::lr::OneCycleLROptions;
  /// One phase of the cycle: where it ends, and which per-group values it anneals between
  /// (lrs: 0 initial, 1 max, 2 min; momentums: 0 max, 1 base).
  struct Phase {
    double end_step;
    int start_lr;
    int end_lr;
    int start_momentum;
    int end_momentum;
  };
  struct State : Cycling {
    int64_t total_steps = 0;
    std::vector<double> initial_lrs, max_lrs, min_lrs;
    std::vector<Phase> phases;
  };

  static State prepare(const Options& options, const torch::optim::Optimizer& optimizer, std::string_view owner) {
    State state;
    if (options.total_steps) {
      state.total_steps = *options.total_steps;
    } else {
      TORCHKIT_CHECK(options.epochs || options.steps_per_epoch,
                     "{}: You must define either total_steps OR (epochs AND steps_per_epoch)", owner);
      TORCHKIT_CHECK(options.epochs.has_value(), "{}: Expected positive integer epochs, but got None", owner);
      TORCHKIT_CHECK(options.steps_per_epoch.has_value(), "{}: Expected positive integer steps_per_epoch, but got None",
                     owner);
      TORCHKIT_CHECK(!__builtin_mul_overflow(*options.epochs, *options.steps_per_epoch, &state.total_steps),
                     "{}: epochs * steps_per_epoch = {} * {} overflows", owner, *options.epochs,
                     *options.steps_per_epoch);
    }
    const auto total = static_cast<double>(state.total_steps);
    const double pct = options.pct_start;
    state.phases = options.three_phase ? std::vector<Phase>{{pct * total - 1, 0, 1, 0, 1},
                                                            {2 * pct * total - 2, 1, 0, 1, 0},
                                                            {total - 1, 0, 2, 0, 0}}
                                       : std::vector<Phase>{{pct * total - 1, 0, 1, 0, 1}, {total - 1, 1, 2, 1, 0}};
    const std::size_t group_count = optimizer.param_groups().size();
    state.max_lrs = options.max_lr.for_groups(group_count, "max_lr", owner);
    for (const double max_lr : state.max_lrs) {
      state.initial_lrs.push_back(max_lr / options.div_factor);
      state.min_lrs.push_back(state.initial_lrs.back() / options.final_div_factor);
    }
    static_cast<Cycling&>(state) =
        cycling(optimizer, options.cycle_momentum, options.base_momentum, options.max_momentum, owner);
    check_step(state, 0, owner);  // Python fails in its initial step for some arguments: fail before any change
    return state;
  }
  static void set_up(torch::optim::Optimizer& optimizer, const State& state) {
    set_group_momentums(optimizer, state.max_momentums);
  }
  static const std::vector<double>& initial_lrs(const State& state) { return state.initial_lrs; }

  // The phase of step `step_num`, and the fraction of it that is done. Throws where Python
  // divides by zero (a phase with no steps: pct_start 1 in two phases, e.g.).
  static std::pair<const Phase*, double> phase_at(const State& state, int64_t step_num, std::string_view owner) {
    double start_step = 0;
    const auto step = static_cast<double>(step_num);
    for (std::size_t index = 0; index < state.phases.size(); ++index) {
      const Phase& phase = state.phases[index];
      if (step <= phase.end_step || index + 1 == state.phases.size()) {
        TORCHKIT_CHECK(phase.end_step != start_step,
                       "{}: float division by zero at step {}: phase {} of the cycle has no steps (total_steps={})",
                       owner, step_num, index, state.total_steps);
        return {&phase, (step - start_step) / (phase.end_step - start_step)};
      }
      start_step = phase.end_step;
    }
    return {nullptr, 0.0};  // unreachable: the last phase always matches
  }
  // Python's check in get_lr(), and its division by zero, for step `step_num`.
  static void check_step(const State& state, int64_t step_num, std::string_view owner) {
    TORCHKIT_CHECK(step_num <= state.total_steps,
                   "{}: Tried to step {} times. The specified number of total steps is {}", owner, step_num + 1,
                   state.total_steps);
    (void)phase_at(state, step_num, owner);
  }
  static double anneal(const Options& options, double start, double end, double pct) {
    if (options.anneal_strategy == "cos") {
      const double cos_out = std::cos(std::numbers::pi * pct) + 1;
      return end + (start - end) / 2.0 * cos_out;
    }
    return (end - start) * pct + start;
  }
  static double lr(const View<OneCycleLRRule>& at, std::size_t group, double /*lr*/) {
    const auto [phase, pct] = phase_at(at.state, at.last_epoch, name);
    const double values[] = {at.initial_lrs[group], at.state.max_lrs[group], at.state.min_lrs[group]};
    return anneal(at.options, values[phase->start_lr], values[phase->end_lr], pct);
  }
  static double momentum(const View<OneCycleLRRule>& at, std::size_t group) {
    const auto [phase, pct] = phase_at(at.state, at.last_epoch, name);
    const double values[] = {at.state.max_momentums[group], at.state.base_momentums[group]};
    return anneal(at.options, values[phase->start_momentum], values[phase->end_momentum], pct);
  }
};

struct CyclicLRRule {
  static constexpr std::string_view name = "CyclicLR";
  using Options = torchkit::lr::CyclicLROptions;
  enum class Scale { triangular, triangular2, exp_range, custom };
  struct State : Cycling {
    std::vector<double> base_lrs, max_lrs;
    double total_size = 0;
    double step_ratio = 0;
    Scale scale = Scale::triangular;
    bool scale_by_cycle = true;
  };

  static State prepare(const Options& options, const torch::optim::Optimizer& optimizer, std::string_view owner) {
    const std::size_t group_count = optimizer.param_groups().size();
    State state;
    state.base_lrs = options.base_lr.for_groups(group_count, "base_lr", owner);
    state.max_lrs = options.max_lr.for_groups(group_count, "max_lr", owner);
    const auto up = static_cast<double>(options.step_size_up);
    state.total_size = up + static_cast<double>(options.step_size_down.value_or(options.step_size_up));
    state.step_ratio = up / state.total_size;
    if (options.scale_fn) {
      TORCHKIT_CHECK(options.scale_mode == "cycle" || options.scale_mode == "iterations",
                     "{}: scale_mode must be 'cycle' or 'iterations', got '{}'", owner, options.scale_mode);
      state.scale = Scale::custom;
      state.scale_by_cycle = options.scale_mode == "cycle";
    } else {
      TORCHKIT_CHECK(options.mode == "triangular" || options.mode == "triangular2" || options.mode == "exp_range",
                     "{}: mode is invalid and scale_fn is None: got mode '{}', expected 'triangular', "
                     "'triangular2' or 'exp_range'",
                     owner, options.mode);
      state.scale = options.mode == "triangular"    ? Scale::triangular
                    : options.mode == "triangular2" ? Scale::triangular2
                                                    : Scale::exp_range;
      state.scale_by_cycle = state.scale != Scale::exp_range;
    }
    static_cast<Cycling&>(state) =
        cycling(optimizer, options.cycle_momentum, options.base_momentum, options.max_momentum, owner);
    return state;
  }
  static void set_up(torch::optim::Optimizer& optimizer, const State& state) {
    set_group_lrs(optimizer, state.base_lrs);
    set_group_momentums(optimizer, state.base_momentums);
  }

  static double scale(const Options& options, Scale scale, double x) {
    switch (scale) {
      case Scale::triangular:
        return 1.;
      case Scale::triangular2:
        return 1 / std::pow(2., x - 1);
      case Scale::exp_range:
        return std::pow(options.gamma, x);
      case Scale::custom:
        break;
    }
    return options.scale_fn(x);
  }
  // Python's position in the cycle, and the amplitude scale of the current iteration.
  static std::pair<double, double> position(const View<CyclicLRRule>& at) {
    const auto epoch = static_cast<double>(at.last_epoch);
    const double cycle = std::floor(1 + epoch / at.state.total_size);
    const double x = 1. + epoch / at.state.total_size - cycle;
    const double ratio = at.state.step_ratio;
    const double scale_factor = x <= ratio ? x / ratio : (x - 1) / (ratio - 1);
    return {scale_factor, scale(at.options, at.state.scale, at.state.scale_by_cycle ? cycle : epoch)};
  }
  static double lr(const View<CyclicLRRule>& at, std::size_t group, double /*lr*/) {
    const auto [scale_factor, amplitude_scale] = position(at);
    const double base_height = (at.state.max_lrs[group] - at.base_lrs[group]) * scale_factor;
    return at.base_lrs[group] + base_height * amplitude_scale;
  }
  static double momentum(const View<CyclicLRRule>& at, std::size_t group) {
    const auto [scale_factor, amplitude_scale] = position(at);
    const double base_height = (at.state.max_momentums[group] - at.state.base_momentums[group]) * scale_factor;
    return at.state.max_momentums[group] - base_height * amplitude_scale;
  }
};

}  // namespace torchkit::detail::lr

namespace torchkit::lr {

/// The 1cycle policy: the lr rises from `max_lr / div_factor` to `max_lr` and anneals down to
/// `initial_lr / final_div_factor`, the momentum cycling the other way
/// (`torch.optim.lr_scheduler.OneCycleLR`). Step it once per batch; stepping more than
/// `total_steps` times throws Error (`Tried to step 102 times. The specified number of total
/// steps is 100`) and leaves everything unchanged.
///
///     torchkit::lr::OneCycleLR scheduler(optimizer, {.max_lr = 0.01, .epochs = 10, .steps_per_epoch = 100});
class OneCycleLR final : public RuleScheduler<detail::lr::OneCycleLRRule> {
 public:
  OneCycleLR(torch::optim::Optimizer& optimizer, GroupValues max_lr, int64_t total_steps)
      : OneCycleLR(optimizer, OneCycleLROptions{.max_lr = std::move(max_lr), .total_steps = total_steps}) {}
  OneCycleLR(torch::optim::Optimizer& optimizer, OneCycleLROptions options)
      : RuleScheduler(optimizer, std::move(options)) {}

  /// The number of steps in the cycle.
  [[nodiscard]] int64_t total_steps() const noexcept { return state_.total_steps; }
};

/// Cycles each group's lr between `base_lr` and `max_lr` (`torch.optim.lr_scheduler.CyclicLR`),
/// the momentum between `max_momentum` and `base_momentum`. Step it once per batch. Besides
/// torch 1.13's SGD/RMSprop momentum, it cycles Adam/AdamW's beta1 as torch 2.x does.
///
///     torchkit::lr::CyclicLR scheduler(optimizer, {.base_lr = 0.01, .max_lr = 0.1, .step_size_up = 20});
class CyclicLR final : public RuleScheduler<detail::lr::CyclicLRRule> {
 public:
  CyclicLR(torch::optim::Optimizer& optimizer, GroupValues base_lr, GroupValues max_lr, int64_t step_size_up = 2000)
      : CyclicLR(optimizer, CyclicLROptions{.base_lr = std::move(base_lr), .max_lr = std::move(max_lr),
                                            .step_size_up = step_size_up}) {}
  CyclicLR(torch::optim::Optimizer& optimizer, CyclicLROptions options) : RuleScheduler(optimizer, std::move(options)) {
    base_lrs_ = state_.base_lrs;  // Python sets them after its initial step
  }
};

// lr/composite.hpp: SequentialLR and ChainedScheduler

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
    TORCHKIT_CHECK(scheduler_ != nullptr, "AnyScheduler: the scheduler pointer is null");
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

/// What SequentialLR and ChainedScheduler share: the schedulers of one optimizer, their
/// checks, their arguments and their nested save/load.
class CompositeScheduler : public Scheduler {
 public:
  /// The schedulers, in order.
  [[nodiscard]] const std::vector<std::shared_ptr<Scheduler>>& schedulers() const noexcept { return schedulers_; }

 protected:
  /// Takes the schedulers; throws Error (`{}` in `other_optimizer` is the index, Python's
  /// wording) when one belongs to another optimizer or has seen groups added since. Changes
  /// nothing: the composite's constructor continues.
  CompositeScheduler(torch::optim::Optimizer& optimizer, std::string type_name,
                     const std::vector<AnyScheduler>& schedulers, std::string_view other_optimizer)
      : Scheduler(optimizer, std::move(type_name)) {
    TORCHKIT_CHECK(!schedulers.empty(), "{}: expects at least one scheduler, got none", type_name_);
    for (std::size_t index = 0; index < schedulers.size(); ++index) {
      const auto& scheduler = schedulers[index].get();
      TORCHKIT_CHECK(&scheduler->optimizer() == &optimizer, "{}: {}", type_name_,
                     fmt::format(fmt::runtime(other_optimizer), index));
      TORCHKIT_CHECK(scheduler->base_lrs_.size() == optimizer.param_groups().size(),
                     "{}: the scheduler at index {} ({}) was created for {} parameter groups, the optimizer has {}",
                     type_name_, index, scheduler->type_name(), scheduler->base_lrs_.size(),
                     optimizer.param_groups().size());
      schedulers_.push_back(scheduler);
    }
    initial_lrs_ = detail::lr::shared_initial_lrs(optimizer);
    base_lrs_.assign(initial_lrs_->values.begin(),
                     initial_lrs_->values.begin() + static_cast<std::ptrdiff_t>(optimizer.param_groups().size()));
    last_epoch_ = 0;
  }

  /// The scheduler whose turn it is: `bisect_right(milestones, epoch)`.
  [[nodiscard]] Scheduler& scheduler(std::size_t index) const { return *schedulers_[index]; }
  static void step_to(Scheduler& scheduler, int64_t epoch) { scheduler.step_to(epoch); }
  static void check_next_step(const Scheduler& scheduler) { scheduler.check_next_step(); }
  static void undo_initial_step(Scheduler& scheduler) { scheduler.last_epoch_ -= 1; }
  static void restart(Scheduler& scheduler) { scheduler.initial_step(); }
  static bool is_composite(const Scheduler& scheduler) { return scheduler.is_composite(); }

  /// `schedulers=[StepLR(...) ..., ...]` and the composite's own arguments.
  [[nodiscard]] std::string schedulers_to_string() const {
    std::vector<std::string> names;
    for (const auto& scheduler : schedulers_) {
      names.push_back(scheduler->to_string());
    }
    return fmt::format("schedulers=[{}]", fmt::join(names, ", "));
  }

  void save_state(detail::lr::ArchiveWriter& writer) const override {
    writer.write("scheduler_count", static_cast<int64_t>(schedulers_.size()));
    for (std::size_t index = 0; index < schedulers_.size(); ++index) {
      writer.write_nested(fmt::format("schedulers/{}", index),
                          [&](detail::lr::ArchiveWriter& nested) { schedulers_[index]->save_to(nested); });
    }
  }
  void load_state(detail::lr::ArchiveReader& reader, bool apply) override {
    const auto count = reader.read<int64_t>("scheduler_count");
    TORCHKIT_CHECK(count == static_cast<int64_t>(schedulers_.size()),
                   "{}: the archive holds {} schedulers, this {} has {}", reader.owner(), count, type_name_,
                   schedulers_.size());
    for (std::size_t index = 0; index < schedulers_.size(); ++index) {
      auto nested = reader.read_nested(fmt::format("schedulers/{}", index));
      detail::lr::ArchiveReader nested_reader(nested, fmt::format("{} (schedulers[{}])", reader.owner(), index));
      schedulers_[index]->load_from(nested_reader, apply);
    }
  }

 private:
  [[nodiscard]] std::vector<double> get_lr() const override { return last_lr_; }
  [[nodiscard]] bool is_composite() const noexcept override { return true; }
  void step_to(int64_t /*epoch*/) override {
    detail::fail("{}::step: cannot jump to an epoch (Python's {}.step() takes no epoch)", type_name_, type_name_);
  }

  std::vector<std::shared_ptr<Scheduler>> schedulers_;
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
class SequentialLR final : public CompositeScheduler {
 public:
  SequentialLR(torch::optim::Optimizer& optimizer, std::vector<AnyScheduler> schedulers,
               std::vector<int64_t> milestones)
      : CompositeScheduler(optimizer, "SequentialLR", schedulers,
                           "Sequential Schedulers expects all schedulers to belong to the same optimizer, but got "
                           "schedulers at index {} to be different than the optimizer passed in."),
        milestones_(std::move(milestones)) {
    check_milestones(type_name_, milestones_);
    // Valid: now reset the lrs, "undo" the schedulers' initial steps and restart the first.
    detail::lr::set_group_lrs(optimizer, base_lrs_);
    for (const auto& each : this->schedulers()) {
      undo_initial_step(*each);
    }
    restart(scheduler(0));
    last_lr_ = scheduler(0).last_lr();
  }

  /// Steps the scheduler whose turn it is; at a milestone, starts the next one at epoch 0.
  void step() override {
    check_group_count();
    const int64_t epoch = last_epoch_ + 1;
    const std::size_t index = detail::lr::bisect_right(milestones_, epoch);
    Scheduler& current = scheduler(index);
    if (index > 0 && milestones_[index - 1] == epoch) {
      step_to(current, 0);
    } else {
      check_next_step(current);
      current.step();
    }
    last_epoch_ = epoch;
    last_lr_ = current.last_lr();
  }

  /// The epochs at which the next scheduler takes over.
  [[nodiscard]] const std::vector<int64_t>& milestones() const noexcept { return milestones_; }

 private:
  void check_milestones(std::string_view owner, const std::vector<int64_t>& milestones) const {
    TORCHKIT_CHECK(milestones.size() + 1 == schedulers().size(),
                   "{}: Sequential Schedulers expects number of schedulers provided to be one more than the number of "
                   "milestone points, but got number of schedulers {} and the number of milestones to be equal to {}",
                   owner, schedulers().size(), milestones.size());
    detail::lr::check_milestones(owner, "milestones", milestones);
    for (std::size_t index = 0; index < schedulers().size(); ++index) {
      TORCHKIT_CHECK(!is_composite(*schedulers()[index]),
                     "{}: the scheduler at index {} is a {}, which cannot be restarted at a milestone; put it around "
                     "the SequentialLR instead",
                     owner, index, schedulers()[index]->type_name());
    }
  }
  void check_next_step() const override {
    const int64_t epoch = last_epoch_ + 1;
    const std::size_t index = detail::lr::bisect_right(milestones_, epoch);
    if (index == 0 || milestones_[index - 1] != epoch) {
      check_next_step(scheduler(index));
    }
  }
  using CompositeScheduler::check_next_step;
  [[nodiscard]] std::string arguments() const override {
    return fmt::format("{}, milestones={}", schedulers_to_string(), detail::lr::list_to_string(milestones_));
  }
  void save_state(detail::lr::ArchiveWriter& writer) const override {
    writer.write("milestones", milestones_);
    CompositeScheduler::save_state(writer);
  }
  void load_state(detail::lr::ArchiveReader& reader, bool apply) override {
    auto milestones = reader.read<std::vector<int64_t>>("milestones");
    check_milestones(reader.owner(), milestones);
    CompositeScheduler::load_state(reader, apply);
    if (apply) {
      milestones_ = std::move(milestones);
    }
  }

  std::vector<int64_t> milestones_;
};

/// Steps several schedulers of one optimizer together, each multiplying in its effect
/// (`torch.optim.lr_scheduler.ChainedScheduler`). Its `last_epoch()` counts its steps.
/// Throws Error (Python's wording) when the schedulers belong to different optimizers.
///
///     torchkit::lr::ChainedScheduler scheduler({torchkit::lr::ConstantLR(optimizer, {.factor = 0.1, .total_iters = 2}),
///                                               torchkit::lr::ExponentialLR(optimizer, 0.9)});
class ChainedScheduler final : public CompositeScheduler {
 public:
  explicit ChainedScheduler(std::vector<AnyScheduler> schedulers)
      : CompositeScheduler(first_optimizer(schedulers), "ChainedScheduler", schedulers,
                           "ChainedScheduler expects all schedulers to belong to the same optimizer, but got "
                           "schedulers at index 0 and {} to be different") {
    last_lr_ = detail::lr::group_lrs(*optimizer_);
  }

  /// Steps every scheduler, in order. When one of them would refuse the step (OneCycleLR past
  /// its total steps), throws that Error before any of them moves.
  void step() override {
    check_group_count();
    check_next_step();
    for (const auto& scheduler : schedulers()) {
      scheduler->step();
    }
    ++last_epoch_;
    last_lr_ = detail::lr::group_lrs(*optimizer_);
  }

 private:
  static torch::optim::Optimizer& first_optimizer(const std::vector<AnyScheduler>& schedulers) {
    TORCHKIT_CHECK(!schedulers.empty(), "ChainedScheduler: expects at least one scheduler, got none");
    return schedulers.front().get()->optimizer();
  }
  void check_next_step() const override {
    for (const auto& scheduler : schedulers()) {
      check_next_step(*scheduler);
    }
  }
  using CompositeScheduler::check_next_step;
  [[nodiscard]] std::string arguments() const override { return schedulers_to_string(); }
};

// lr/plateau.hpp: ReduceLROnPlateau

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

  static constexpr auto fields() {
    using namespace detail::lr;
    using O = ReduceLROnPlateauOptions;
    return std::tuple{
        field("mode", &O::mode,
              [](std::string_view owner, std::string_view, const std::string& mode) {
                TORCHKIT_CHECK(mode == "min" || mode == "max", "{}: mode {} is unknown! (expected 'min' or 'max')",
                               owner, mode);
              }),
        field("factor", &O::factor,
              [](std::string_view owner, std::string_view, double factor) {
                TORCHKIT_CHECK(factor < 1.0, "{}: Factor should be < 1.0, got factor={}", owner, factor);
                TORCHKIT_CHECK(factor >= 0, "{}: Factor should be >= 0, got factor={}", owner, factor);
              }),
        field("patience", &O::patience, check_non_negative_count),
        field("threshold", &O::threshold, check_finite_non_negative),
        field("threshold_mode", &O::threshold_mode,
              [](std::string_view owner, std::string_view, const std::string& mode) {
                TORCHKIT_CHECK(mode == "rel" || mode == "abs",
                               "{}: threshold mode {} is unknown! (expected 'rel' or 'abs')", owner, mode);
              }),
        field("cooldown", &O::cooldown, check_non_negative_count),
        field("min_lr", &O::min_lr, check_group_values),
        field("eps", &O::eps, check_finite_non_negative)};
  }
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
      : optimizer_(&optimizer),
        options_(std::move(options)),
        min_lrs_(checked_min_lrs(options_, detail::lr::check_optimizer(optimizer, "ReduceLROnPlateau"),
                                 "ReduceLROnPlateau")),
        best_(worst(options_)),
        last_lr_(detail::lr::group_lrs(optimizer)) {}

  /// Takes the epoch's metric (e.g. the validation loss); reduces the lr of every group by
  /// `factor` (not below its `min_lr`) after more than `patience` epochs without improvement.
  void step(double metric) {
    detail::lr::check_group_count(*optimizer_, min_lrs_.size(), "ReduceLROnPlateau");
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
    last_lr_ = detail::lr::group_lrs(*optimizer_);
  }

  /// The metric as a one-element tensor (Python's `float(metrics)`; synchronises with its
  /// device). Throws Error for a tensor with more than one element.
  void step(const at::Tensor& metric) {
    TORCHKIT_CHECK(metric.defined() && metric.numel() == 1,
                   "ReduceLROnPlateau::step: the metric must be a one-element tensor, got {}",
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
    detail::lr::ArchiveWriter(archive).write_nested("lr_scheduler", [&](detail::lr::ArchiveWriter& writer) {
      writer.write("type", std::string("ReduceLROnPlateau"));
      detail::lr::save_fields(writer, options_);
      writer.write("best", best_);
      writer.write("num_bad_epochs", num_bad_epochs_);
      writer.write("cooldown_counter", cooldown_counter_);
      writer.write("last_epoch", last_epoch_);
      writer.write("last_lr", last_lr_);
      writer.write("optimizer_lrs", detail::lr::group_lrs(*optimizer_));
    });
  }

  /// Restores the state written by `save()` and every group's lr; throws Error (changing
  /// nothing) for another kind of scheduler, a different number of parameter groups, or any
  /// value the constructor would refuse.
  void load(torch::serialize::InputArchive& archive) {
    const std::string owner = "ReduceLROnPlateau::load";
    torch::serialize::InputArchive state = detail::lr::ArchiveReader(archive, owner).read_nested("lr_scheduler");
    detail::lr::ArchiveReader reader(state, owner);
    const auto type = reader.read<std::string>("type");
    TORCHKIT_CHECK(type == "ReduceLROnPlateau",
                   "{}: the archive holds the state of a scheduler of type {}, not ReduceLROnPlateau", owner, type);
    auto options = detail::lr::load_fields(reader, options_);
    auto min_lrs = checked_min_lrs(options, optimizer_->param_groups().size(), owner);
    const auto best = reader.read<double>("best");
    const auto num_bad_epochs = reader.read<int64_t>("num_bad_epochs");
    const auto cooldown_counter = reader.read<int64_t>("cooldown_counter");
    const auto last_epoch = reader.read<int64_t>("last_epoch");
    auto last_lr = reader.read<std::vector<double>>("last_lr");
    const auto optimizer_lrs = reader.read<std::vector<double>>("optimizer_lrs");
    TORCHKIT_CHECK(last_lr.size() == min_lrs.size() && optimizer_lrs.size() == min_lrs.size(),
                   "{}: the archive was saved for {} parameter groups, the optimizer has {}", owner, last_lr.size(),
                   min_lrs.size());
    // Counters beyond 2^53 cannot come from a run, and would overflow the next step.
    for (const auto& [name, value] : {std::pair{"num_bad_epochs", num_bad_epochs},
                                      std::pair{"cooldown_counter", cooldown_counter},
                                      std::pair{"last_epoch", last_epoch}}) {
      TORCHKIT_CHECK(value >= 0 && value < detail::lr::max_count, "{}: {} in the archive is {}; expected 0 <= {} < 2^53",
                     owner, name, value, name);
    }
    options_ = std::move(options);
    min_lrs_ = std::move(min_lrs);
    best_ = best;
    num_bad_epochs_ = num_bad_epochs;
    cooldown_counter_ = cooldown_counter;
    last_epoch_ = last_epoch;
    last_lr_ = std::move(last_lr);
    detail::lr::set_group_lrs(*optimizer_, optimizer_lrs);
  }

  /// `ReduceLROnPlateau(mode='min', factor=0.1, ...) last_epoch=3 best=0.5 num_bad_epochs=1 last_lr=[0.1]`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("ReduceLROnPlateau({}) last_epoch={} best={} num_bad_epochs={} last_lr={}",
                       detail::lr::format_fields(options_), last_epoch_, best_, num_bad_epochs_,
                       detail::lr::list_to_string(last_lr_));
  }

  friend std::ostream& operator<<(std::ostream& stream, const ReduceLROnPlateau& scheduler) {
    return stream << scheduler.to_string();
  }

 private:
  // Checks every field, then min_lr against the number of groups (Python's wording).
  static std::vector<double> checked_min_lrs(const ReduceLROnPlateauOptions& options, std::size_t group_count,
                                             std::string_view owner) {
    detail::lr::check_fields(options, owner);
    const auto& min_lr = options.min_lr;
    TORCHKIT_CHECK(min_lr.for_every_group() || min_lr.values().size() == group_count,
                   "{}: expected {} min_lrs, got {}", owner, group_count, min_lr.values().size());
    return min_lr.for_groups(group_count, "min_lr", owner);
  }

  static double worst(const ReduceLROnPlateauOptions& options) {
    return options.mode == "min" ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
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
      const double old_lr = detail::lr::group_lr(*optimizer_, index);
      const double new_lr = std::max(old_lr * options_.factor, min_lrs_[index]);
      if (old_lr - new_lr > options_.eps) {
        detail::lr::set_group_lr(*optimizer_, index, new_lr);
      }
    }
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
