#pragma once
/// @file lr/composite.hpp
/// The composites of torchkit::lr: SequentialLR and ChainedScheduler (CompositeScheduler), which
/// hold other schedulers through AnyScheduler.

#include <torchkit/lr/scheduler.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace torchkit::detail::lr {
/// True for std::shared_ptr<S> with S a scheduler (AnyScheduler's shared form).
template <class T>
inline constexpr bool is_shared_scheduler_v = false;
template <class S>
inline constexpr bool is_shared_scheduler_v<std::shared_ptr<S>> = std::derived_from<S, torchkit::lr::Scheduler>;
}  // namespace torchkit::detail::lr

namespace torchkit::lr {

/// A scheduler of any type for SequentialLR and ChainedScheduler, with one of three ownerships:
/// - a scheduler variable (an lvalue) is referred to, as Python's composites refer to the
///   scheduler objects they are given: stepping the composite steps your object, and your
///   object must outlive the composite;
/// - a temporary or `std::move(scheduler)` is taken over (owned by the composite);
/// - a `std::shared_ptr` is shared.
/// The list is built left to right, so schedulers written inline are constructed in the order
/// written, as in Python. Anything else (a pointer, a const scheduler, ReduceLROnPlateau, a
/// composite's factory result) stops the build with a message that says what to write instead.
///
///     torchkit::lr::LinearLR warmup(optimizer, 0.1, 1.0, 5);          // Python's order:
///     torchkit::lr::CosineAnnealingLR cosine(optimizer, 95);          // schedulers first,
///     torchkit::lr::SequentialLR scheduler(optimizer, {warmup, cosine}, {5});   // then composed
class AnyScheduler {
 public:
  /// Shares `scheduler` with the caller. Throws Error when it is null.
  template <std::derived_from<Scheduler> S>
  AnyScheduler(std::shared_ptr<S> scheduler) : scheduler_(std::move(scheduler)) {  // NOLINT
    TORCHKIT_CHECK(scheduler_ != nullptr, "AnyScheduler: the scheduler pointer is null");
  }
  /// Refers to the caller's `scheduler` (not owned: it must outlive the composite), as Python's
  /// SequentialLR refers to the scheduler objects in its list.
  template <std::derived_from<Scheduler> S>
    requires(!std::is_const_v<S>)
  AnyScheduler(S& scheduler)  // NOLINT(google-explicit-constructor)
      : scheduler_(std::shared_ptr<Scheduler>(std::shared_ptr<Scheduler>(), &scheduler)) {}
  /// Takes over `scheduler` (a temporary, or `std::move(scheduler)`).
  template <std::derived_from<Scheduler> S>
    requires(!std::is_lvalue_reference_v<S>)
  AnyScheduler(S&& scheduler)  // NOLINT(google-explicit-constructor, bugprone-forwarding-reference-overload)
      : scheduler_(std::make_shared<S>(std::move(scheduler))) {}

  /// Everything else: a compile-time error that says what to write.
  template <class T>
    requires(!std::same_as<std::remove_cvref_t<T>, AnyScheduler> &&
             !std::derived_from<std::remove_cvref_t<T>, Scheduler> &&
             !detail::lr::is_shared_scheduler_v<std::remove_cvref_t<T>>)
  AnyScheduler(T&&) {  // NOLINT(google-explicit-constructor, bugprone-forwarding-reference-overload)
    using Given = std::remove_cvref_t<T>;
    static_assert(!std::is_pointer_v<Given>,
                  "torchkit::lr::AnyScheduler: pass the scheduler itself (SequentialLR s(opt, {warmup, cosine}, "
                  "{5})), std::move(it), or a std::shared_ptr — not a raw pointer");
    static_assert(!std::is_same_v<Given, ReduceLROnPlateau>,
                  "torchkit::lr::AnyScheduler: ReduceLROnPlateau steps on a metric and cannot be part of "
                  "SequentialLR or ChainedScheduler (as in Python); step it on its own");
    static_assert(std::is_pointer_v<Given> || std::is_same_v<Given, ReduceLROnPlateau>,
                  "torchkit::lr::AnyScheduler: expected a torchkit::lr scheduler (StepLR, LinearLR, ...), a "
                  "std::shared_ptr to one, or std::move(one)");
  }
  /// A const scheduler cannot be stepped by a composite.
  template <std::derived_from<Scheduler> S>
  AnyScheduler(const S&) {  // NOLINT(google-explicit-constructor)
    static_assert(sizeof(S) == 0,
                  "torchkit::lr::AnyScheduler: a const scheduler cannot be stepped by SequentialLR or "
                  "ChainedScheduler; pass a non-const scheduler variable, std::move(it), or a std::shared_ptr");
  }

  /// The scheduler (shared, owned or referred to).
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
  // C++ lets a derived class reach a protected member only through its own type, so the
  // composites reach their schedulers' through these.
  /// Calls `scheduler.step_to(epoch)` (Python's `scheduler.step(epoch)`).
  static void step_inner_to(Scheduler& scheduler, int64_t epoch) { scheduler.step_to(epoch); }
  /// Calls `scheduler.check_next_step()`: throws the Error its next step would throw.
  static void check_inner_next_step(const Scheduler& scheduler) { scheduler.check_next_step(); }
  /// Moves `scheduler` back one epoch, undoing its initial step (as Python's SequentialLR).
  static void undo_initial_step(Scheduler& scheduler) { scheduler.last_epoch_ -= 1; }
  /// Takes `scheduler`'s initial step again (Python's `_initial_step()`: SequentialLR does it for
  /// its first scheduler at construction).
  static void restart(Scheduler& scheduler) { scheduler.initial_step(); }
  /// Whether `scheduler` is itself a SequentialLR or ChainedScheduler.
  static bool inner_is_composite(const Scheduler& scheduler) { return scheduler.is_composite(); }

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
  /// Runs `schedulers` (all of `optimizer`) one after another, switching at each of the
  /// `milestones` (epochs, one fewer than the schedulers, sorted).
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
      step_inner_to(current, 0);
    } else {
      check_inner_next_step(current);
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
      TORCHKIT_CHECK(!inner_is_composite(*schedulers()[index]),
                     "{}: the scheduler at index {} is a {}, which cannot be restarted at a milestone; put it around "
                     "the SequentialLR instead",
                     owner, index, schedulers()[index]->type_name());
    }
  }
  void check_next_step() const override {
    const int64_t epoch = last_epoch_ + 1;
    const std::size_t index = detail::lr::bisect_right(milestones_, epoch);
    if (index == 0 || milestones_[index - 1] != epoch) {
      check_inner_next_step(scheduler(index));
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
  /// Steps `schedulers` (all of one optimizer, at least one) together, in order.
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
      check_inner_next_step(*scheduler);
    }
  }
  using CompositeScheduler::check_next_step;
  [[nodiscard]] std::string arguments() const override { return schedulers_to_string(); }
};

}  // namespace torchkit::lr
