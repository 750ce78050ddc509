#pragma once
/// @file lr/lambda.hpp
/// The lambda family of torchkit::lr: LambdaLR and MultiplicativeLR, driven by user functions.

#include <torchkit/lr/scheduler.hpp>

#include <torch/optim/optimizer.h>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace torchkit::lr {

/// The argument of LambdaLR and MultiplicativeLR: one function per parameter group (one given
/// for all is copied to every group). Lambdas are not saved; load() checks their number.
struct LrLambdas {
  std::vector<LrLambda> lr_lambdas{};  ///< One function per parameter group, none empty.

  /// The field table: each field's name, member and check, once.
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

/// What LambdaLR and MultiplicativeLR share: their constructors, one function for every
/// group or one per group (Python's `lr_lambda`, a function or a list). Throws Error for an
/// empty function or a list whose length is not the number of parameter groups.
template <class Rule>
class LambdaScheduler : public RuleScheduler<Rule> {
 public:
  /// Schedules `optimizer`'s lrs with `lr_lambda` for every parameter group.
  LambdaScheduler(torch::optim::Optimizer& optimizer, LrLambda lr_lambda)
      : RuleScheduler<Rule>(optimizer,
                            detail::lr::lambdas_for_groups({std::move(lr_lambda)}, true, optimizer, Rule::name)) {}
  /// Schedules `optimizer`'s lrs with one function per parameter group, in order.
  LambdaScheduler(torch::optim::Optimizer& optimizer, std::vector<LrLambda> lr_lambdas)
      : RuleScheduler<Rule>(optimizer,
                            detail::lr::lambdas_for_groups(std::move(lr_lambdas), false, optimizer, Rule::name)) {}
};

/// Sets each group's lr to its initial lr times `lr_lambda(epoch)`
/// (`torch.optim.lr_scheduler.LambdaLR`): one function for every group, or one per group.
///
///     torchkit::lr::LambdaLR scheduler(optimizer, [](int64_t epoch) { return std::pow(0.95, epoch); });
///     torchkit::lr::LambdaLR per_group(optimizer, {[](int64_t epoch) { return epoch / 30; },
///                                                  [](int64_t epoch) { return std::pow(0.95, epoch); }});
class LambdaLR final : public LambdaScheduler<detail::lr::LambdaLRRule> {
 public:
  using LambdaScheduler::LambdaScheduler;
};

/// Multiplies each group's lr by `lr_lambda(epoch)` every epoch from epoch 1 on
/// (`torch.optim.lr_scheduler.MultiplicativeLR`).
///
///     torchkit::lr::MultiplicativeLR scheduler(optimizer, [](int64_t) { return 0.95; });
class MultiplicativeLR final : public LambdaScheduler<detail::lr::MultiplicativeLRRule> {
 public:
  using LambdaScheduler::LambdaScheduler;
};

}  // namespace torchkit::lr
