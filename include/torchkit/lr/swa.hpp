#pragma once
/// @file lr/swa.hpp
/// SWALR of torchkit::lr: the learning-rate schedule of stochastic weight averaging
/// (`torch.optim.swa_utils.SWALR`), annealing every group's lr to its SWA lr and holding it
/// there. Pair it with torchkit::AveragedModel (averaging.hpp).

#include <torchkit/lr/scheduler.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace torchkit::lr {

/// SWALR's arguments (Python's names and defaults; `swa_lr` is required).
struct SWALROptions {
  /// The lr every group anneals to and then keeps: one value, or one per group (each finite,
  /// >= 0).
  GroupValues swa_lr{};
  /// The number of epochs (steps) the annealing takes (>= 0; 0 switches to `swa_lr` at once).
  int64_t anneal_epochs = 10;
  /// `"cos"` or `"linear"`: the shape of the annealing.
  std::string anneal_strategy = "cos";

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    using O = SWALROptions;
    return std::tuple{
        field("swa_lr", &O::swa_lr, check_group_values),
        field("anneal_epochs", &O::anneal_epochs,
              [](std::string_view owner, std::string_view, int64_t anneal_epochs) {
                TORCHKIT_CHECK(anneal_epochs >= 0, "{}: anneal_epochs must be equal or greater than 0, got {}", owner,
                               anneal_epochs);
                TORCHKIT_CHECK(anneal_epochs <= max_count,
                               "{}: anneal_epochs is {}; the largest count a scheduler accepts is 2^53 = {}", owner,
                               anneal_epochs, max_count);
              }),
        field("anneal_strategy", &O::anneal_strategy,
              [](std::string_view owner, std::string_view, const std::string& strategy) {
                TORCHKIT_CHECK(strategy == "cos" || strategy == "linear",
                               "{}: anneal_strategy must by one of 'cos' or 'linear', instead got {}", owner, strategy);
              })};
  }
};

}  // namespace torchkit::lr

namespace torchkit::detail::lr {

struct SWALRRule {
  static constexpr std::string_view name = "SWALR";
  using Options = torchkit::lr::SWALROptions;
  struct State {
    std::vector<double> swa_lrs;  // Python keeps them in the groups (`group['swa_lr']`)
  };

  static State prepare(const Options& options, const torch::optim::Optimizer& optimizer, std::string_view owner) {
    const std::size_t group_count = optimizer.param_groups().size();
    const auto& values = options.swa_lr.values();
    TORCHKIT_CHECK(options.swa_lr.for_every_group() || values.size() == group_count,
                   "{}: swa_lr must have the same length as optimizer.param_groups: swa_lr has {}, "
                   "optimizer.param_groups has {}",
                   owner, values.size(), group_count);
    return State{options.swa_lr.for_groups(group_count, "swa_lr", owner)};
  }

  /// Python's `_cosine_anneal` / `_linear_anneal`.
  static double anneal(const Options& options, double t) {
    return options.anneal_strategy == "cos" ? (1 - std::cos(std::numbers::pi * t)) / 2 : t;
  }

  /// Python's `get_lr()`: undo the previous step's mix to recover the lr the annealing started
  /// from, then mix it with the SWA lr at the current fraction. Driven by the step count, as
  /// Python's (`self._step_count - 1`), not by `last_epoch`.
  static double lr(const View<SWALRRule>& at, std::size_t group, double lr) {
    const int64_t anneal_epochs = at.options.anneal_epochs;
    int64_t step = at.step_count - 1;
    if (anneal_epochs == 0) {
      step = std::max<int64_t>(1, step);
    }
    const auto epochs = static_cast<double>(std::max<int64_t>(1, anneal_epochs));
    const double swa_lr = at.state.swa_lrs[group];
    const double prev_t = std::clamp(static_cast<double>(step - 1) / epochs, 0.0, 1.0);
    const double prev_alpha = anneal(at.options, prev_t);
    const double prev_lr = prev_alpha == 1 ? swa_lr : (lr - prev_alpha * swa_lr) / (1 - prev_alpha);
    const double t = std::clamp(static_cast<double>(step) / epochs, 0.0, 1.0);
    const double alpha = anneal(at.options, t);
    return swa_lr * alpha + prev_lr * (1 - alpha);
  }
};

}  // namespace torchkit::detail::lr

namespace torchkit::lr {

/// Anneals every parameter group's lr from its current value to its SWA lr over
/// `anneal_epochs` steps (cosine or linear), then keeps it there: the schedule of stochastic
/// weight averaging (`torch.optim.swa_utils.SWALR`, same arguments, defaults, errors and
/// values). Call `step()` once per epoch after `optimizer.step()`, once the averaging has
/// begun; the lr it starts from is the group's lr when the SWALR is constructed (e.g. where an
/// earlier scheduler left it).
///
/// Python's `last_epoch` argument is not carried over, as for the rest of torchkit::lr: resume
/// with `save()`/`load()`, which keep the SWA lrs, the step count and each group's lr.
///
/// @throws Error (changing nothing) when `swa_lr` is missing, negative or not finite, when a
///         per-group list's length differs from the optimizer's group count (Python's wording:
///         `swa_lr must have the same length as optimizer.param_groups: ...`), for
///         `anneal_epochs < 0` (`anneal_epochs must be equal or greater than 0, got -1`), or an
///         `anneal_strategy` other than "cos" and "linear".
///
///     torchkit::AveragedModel swa_model(model);
///     torchkit::lr::SWALR swa_scheduler(optimizer, 0.05, {.anneal_epochs = 5, .anneal_strategy = "linear"});
///     for (int epoch = 0; epoch < 100; ++epoch) {
///       train_one_epoch(model, optimizer);
///       if (epoch >= 75) {
///         swa_model.update_parameters(model);
///         swa_scheduler.step();
///       } else {
///         scheduler.step();
///       }
///     }
class SWALR final : public RuleScheduler<detail::lr::SWALRRule> {
 public:
  /// One SWA lr for every group.
  SWALR(torch::optim::Optimizer& optimizer, double swa_lr, SWALROptions options = {})
      : RuleScheduler(optimizer, with_swa_lr(std::move(options), swa_lr)) {}
  /// One SWA lr per group (Python's list form).
  SWALR(torch::optim::Optimizer& optimizer, std::vector<double> swa_lrs, SWALROptions options = {})
      : RuleScheduler(optimizer, with_swa_lr(std::move(options), std::move(swa_lrs))) {}
  /// Every argument in the options (`swa_lr` must be set there).
  SWALR(torch::optim::Optimizer& optimizer, SWALROptions options) : RuleScheduler(optimizer, std::move(options)) {}

  /// The SWA lr of every group (Python's `group['swa_lr']`).
  [[nodiscard]] const std::vector<double>& swa_lrs() const noexcept { return state_.swa_lrs; }

 private:
  static SWALROptions with_swa_lr(SWALROptions options, GroupValues swa_lr) {
    options.swa_lr = std::move(swa_lr);
    return options;
  }
};

}  // namespace torchkit::lr
