#pragma once
/// @file lr/scheduler.hpp
/// The base of torchkit::lr (tip 7): GroupValues, Scheduler (Python's `_LRScheduler`) and
/// RuleScheduler, which every scheduler with an options struct derives from: the options' field
/// table gives the checks, to_string() and save/load, a rule of static functions the values.

#include <torchkit/detail/config.hpp>
#include <torchkit/detail/lr_support.hpp>
#include <torchkit/error.hpp>

#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <fmt/format.h>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
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

  /// The values as Python prints the argument: `0.1` for one value, `[0.1, 0.01]` for a list,
  /// `None` when not given.
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

  /// Writes to_string() to `stream`.
  friend std::ostream& operator<<(std::ostream& stream, const Scheduler& scheduler) {
    return stream << scheduler.to_string();
  }

 protected:
  /// Copies the state; the copy sets the lrs of the same optimizer. Protected, so that only a
  /// whole derived scheduler is copied (never sliced to its base).
  Scheduler(const Scheduler&) = default;
  /// Moves the state; the result sets the lrs of the same optimizer.
  Scheduler(Scheduler&&) noexcept = default;
  /// Copy assignment, protected like the copy constructor.
  Scheduler& operator=(const Scheduler&) = default;
  /// Move assignment, protected like the move constructor.
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

  /// Throws Error when parameter groups were added to the optimizer since construction. Every
  /// step begins here; the first step after construction also warns (once per process, as
  /// Python) when the optimizer has not stepped since the scheduler was made.
  void check_group_count() const {
    detail::lr::check_group_count(*optimizer_, base_lrs_.size(), type_name_);
    if (step_count_ == 1 && optimizer_fingerprint_) {
      if (detail::lr::step_fingerprint(*optimizer_) == *optimizer_fingerprint_) {
        detail::lr::warn_step_before_optimizer(type_name_);
      }
      optimizer_fingerprint_.reset();  // checked once, as Python checks only the first step
    }
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

  torch::optim::Optimizer* optimizer_;  ///< The optimizer whose lrs this scheduler sets (never null).
  std::string type_name_;               ///< The class name, as in Python: `"StepLR"`.
  /// Every group's `initial_lr` (Python keeps it in the parameter group), shared by all the
  /// schedulers of the same optimizer.
  std::shared_ptr<detail::lr::InitialLrs> initial_lrs_;
  std::vector<double> base_lrs_;  ///< The initial lr of every group (Python's `base_lrs`).
  int64_t last_epoch_ = -1;       ///< The index of the last epoch (Python's `last_epoch`).
  int64_t step_count_ = 0;        ///< The steps taken since the initial step (Python's `_step_count`).
  std::vector<double> last_lr_;   ///< The lr of every group after the last step (`get_last_lr()`).
  /// detail::lr::step_fingerprint() when the scheduler was made (unset for composites).
  mutable std::optional<std::vector<std::uint64_t>> optimizer_fingerprint_;

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
    optimizer_fingerprint_ = detail::lr::step_fingerprint(*optimizer_);
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
  using Options = typename Rule::Options;  ///< The options struct: the scheduler's arguments.
  /// What the rule computes from the options and the optimizer at construction (an empty
  /// struct for rules without one).
  using State = typename detail::lr::state_of<Rule>::type;
  /// Everything a rule's `lr()` may read: options, state, epoch, step count, base and initial lrs.
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
  /// The View of the current step, for the rule's `lr()`, `closed_form_lr()` and `momentum()`.
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
  Options options_;  ///< The arguments, checked (after `load()`: as loaded).
  State state_;      ///< The rule's State, made from options_ by `Rule::prepare` (or empty).
};

}  // namespace torchkit::lr
