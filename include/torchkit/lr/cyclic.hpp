#pragma once
/// @file lr/cyclic.hpp
/// The cycling schedulers of torchkit::lr, stepped once per batch: OneCycleLR and CyclicLR, which
/// share the momentum set-up (detail::lr::Cycling).

#include <torchkit/lr/scheduler.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <numbers>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace torchkit::lr {

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
  /// The number of steps (batches) per epoch, used with `epochs`.
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

  /// The field table: each field's name, member and check, once.
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

  /// The field table: each field's name, member and check, once.
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
  /// Schedules `optimizer`'s lrs, the first arguments in Python's order, the rest at their defaults.
  OneCycleLR(torch::optim::Optimizer& optimizer, GroupValues max_lr, int64_t total_steps)
      : OneCycleLR(optimizer, OneCycleLROptions{.max_lr = std::move(max_lr), .total_steps = total_steps}) {}
  /// Schedules `optimizer`'s lrs, the arguments as OneCycleLROptions (designated initialisers).
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
  /// Schedules `optimizer`'s lrs, the first arguments in Python's order, the rest at their defaults.
  CyclicLR(torch::optim::Optimizer& optimizer, GroupValues base_lr, GroupValues max_lr, int64_t step_size_up = 2000)
      : CyclicLR(optimizer, CyclicLROptions{.base_lr = std::move(base_lr), .max_lr = std::move(max_lr),
                                            .step_size_up = step_size_up}) {}
  /// Schedules `optimizer`'s lrs, the arguments as CyclicLROptions (designated initialisers).
  CyclicLR(torch::optim::Optimizer& optimizer, CyclicLROptions options) : RuleScheduler(optimizer, std::move(options)) {
    base_lrs_ = state_.base_lrs;  // Python sets them after its initial step
  }
};

}  // namespace torchkit::lr
