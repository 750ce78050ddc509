#pragma once
/// @file lr/decay.hpp
/// The decay family of torchkit::lr: the multiplicative schedulers (StepLR, MultiStepLR,
/// ConstantLR, LinearLR, ExponentialLR, PolynomialLR: a chainable factor and a closed form each),
/// CosineAnnealingLR and CosineAnnealingWarmRestarts.

#include <torchkit/lr/scheduler.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

namespace torchkit::lr {

/// StepLR's arguments (Python's names and defaults; `step_size` is required).
struct StepLROptions {
  /// Period of learning rate decay, in epochs (> 0).
  std::optional<int64_t> step_size{};
  /// Multiplicative factor of learning rate decay (>= 0).
  double gamma = 0.1;

  /// The field table: each field's name, member and check, once.
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

  /// The field table: each field's name, member and check, once.
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

  /// The field table: each field's name, member and check, once.
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

  /// The field table: each field's name, member and check, once.
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

  /// The field table: each field's name, member and check, once.
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

  /// The field table: each field's name, member and check, once.
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

  /// The field table: each field's name, member and check, once.
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

  /// The field table: each field's name, member and check, once.
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
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  StepLR(torch::optim::Optimizer& optimizer, int64_t step_size, double gamma = 0.1)
      : StepLR(optimizer, StepLROptions{.step_size = step_size, .gamma = gamma}) {}
  /// Schedules `optimizer`'s lrs, the arguments as StepLROptions (designated initialisers).
  StepLR(torch::optim::Optimizer& optimizer, const StepLROptions& options) : RuleScheduler(optimizer, options) {}
};

/// Decays each group's lr by `gamma` at each milestone epoch
/// (`torch.optim.lr_scheduler.MultiStepLR`). Throws Error for negative or unsorted milestones
/// or `gamma < 0`.
///
///     torchkit::lr::MultiStepLR scheduler(optimizer, {30, 80}, 0.1);
class MultiStepLR final : public RuleScheduler<detail::lr::MultiStepLRRule> {
 public:
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  MultiStepLR(torch::optim::Optimizer& optimizer, std::vector<int64_t> milestones, double gamma = 0.1)
      : MultiStepLR(optimizer, MultiStepLROptions{.milestones = std::move(milestones), .gamma = gamma}) {}
  /// Schedules `optimizer`'s lrs, the arguments as MultiStepLROptions (designated initialisers).
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
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  explicit ConstantLR(torch::optim::Optimizer& optimizer, double factor = 1.0 / 3, int64_t total_iters = 5)
      : ConstantLR(optimizer, ConstantLROptions{.factor = factor, .total_iters = total_iters}) {}
  /// Schedules `optimizer`'s lrs, the arguments as ConstantLROptions (designated initialisers).
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
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  explicit LinearLR(torch::optim::Optimizer& optimizer, double start_factor = 1.0 / 3, double end_factor = 1.0,
                    int64_t total_iters = 5)
      : LinearLR(optimizer, LinearLROptions{.start_factor = start_factor, .end_factor = end_factor,
                                            .total_iters = total_iters}) {}
  /// Schedules `optimizer`'s lrs, the arguments as LinearLROptions (designated initialisers).
  LinearLR(torch::optim::Optimizer& optimizer, const LinearLROptions& options) : RuleScheduler(optimizer, options) {}
};

/// Multiplies each group's lr by `gamma` every epoch (`torch.optim.lr_scheduler.ExponentialLR`).
///
///     torchkit::lr::ExponentialLR scheduler(optimizer, 0.95);
class ExponentialLR final : public RuleScheduler<detail::lr::ExponentialLRRule> {
 public:
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  ExponentialLR(torch::optim::Optimizer& optimizer, double gamma)
      : ExponentialLR(optimizer, ExponentialLROptions{.gamma = gamma}) {}
  /// Schedules `optimizer`'s lrs, the arguments as ExponentialLROptions (designated initialisers).
  ExponentialLR(torch::optim::Optimizer& optimizer, const ExponentialLROptions& options)
      : RuleScheduler(optimizer, options) {}
};

/// Decays each group's lr as `(1 - epoch / total_iters) ** power` times its initial lr
/// (`torch.optim.lr_scheduler.PolynomialLR`).
///
///     torchkit::lr::PolynomialLR scheduler(optimizer, {.total_iters = 4, .power = 1.0});
class PolynomialLR final : public RuleScheduler<detail::lr::PolynomialLRRule> {
 public:
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  explicit PolynomialLR(torch::optim::Optimizer& optimizer, int64_t total_iters = 5, double power = 1.0)
      : PolynomialLR(optimizer, PolynomialLROptions{.total_iters = total_iters, .power = power}) {}
  /// Schedules `optimizer`'s lrs, the arguments as PolynomialLROptions (designated initialisers).
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
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  CosineAnnealingLR(torch::optim::Optimizer& optimizer, int64_t T_max, double eta_min = 0.0)  // NOLINT
      : CosineAnnealingLR(optimizer, CosineAnnealingLROptions{.T_max = T_max, .eta_min = eta_min}) {}
  /// Schedules `optimizer`'s lrs, the arguments as CosineAnnealingLROptions (designated initialisers).
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
  /// Schedules `optimizer`'s lrs, the arguments in Python's order.
  CosineAnnealingWarmRestarts(torch::optim::Optimizer& optimizer, int64_t T_0, int64_t T_mult = 1,  // NOLINT
                              double eta_min = 0.0)
      : CosineAnnealingWarmRestarts(
            optimizer, CosineAnnealingWarmRestartsOptions{.T_0 = T_0, .T_mult = T_mult, .eta_min = eta_min}) {}
  /// Schedules `optimizer`'s lrs, the arguments as CosineAnnealingWarmRestartsOptions (designated initialisers).
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
  using Rule = detail::lr::CosineAnnealingWarmRestartsRule;

  // Moves to `last_epoch` and the period position `next`, and sets the lrs there.
  void commit(int64_t last_epoch, const State& next) {
    std::vector<double> lrs;
    for (const double base_lr : base_lrs_) {
      lrs.push_back(Rule::lr_at(options_, next, base_lr));
    }
    last_epoch_ = last_epoch;
    state_ = next;
    apply(lrs);
  }
  void step_to(int64_t epoch) override { step(static_cast<double>(epoch)); }
};

}  // namespace torchkit::lr
