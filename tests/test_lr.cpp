// Tests for lr.hpp: every scheduler against PyTorch's own sequences (tests/golden/lr.json,
// written by lr_golden.py with torch 1.13), save/load resumption, and bad input.
#include <torchkit/lr.hpp>

#include "test_support.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>

namespace lr = torchkit::lr;
using nlohmann::json;
using torchkit::test::message_of;

namespace {

// The functions lr_golden.py names, written identically.
lr::LrLambda lambda_named(const std::string& name) {
  if (name == "exp095") {
    return [](int64_t epoch) { return std::pow(0.95, static_cast<double>(epoch)); };
  }
  if (name == "halve_every_30") {
    return [](int64_t epoch) { return std::pow(0.5, static_cast<double>(epoch / 30)); };
  }
  if (name == "inv_sqrt") {
    return [](int64_t epoch) { return 1.0 / std::sqrt(static_cast<double>(epoch + 1)); };
  }
  if (name == "warmup_10") {
    return [](int64_t epoch) { return std::min(1.0, static_cast<double>(epoch + 1) / 10); };
  }
  if (name == "const098") {
    return [](int64_t) { return 0.98; };
  }
  if (name == "alternate") {
    return [](int64_t epoch) { return epoch % 2 != 0 ? 0.9 : 1.05; };
  }
  throw std::runtime_error("unknown lambda " + name);
}

std::function<double(double)> scale_fn_named(const std::string& name) {
  if (name == "inverse_cycle") {
    return [](double x) { return 1 / (1 + 0.5 * x); };
  }
  if (name == "slow_decay") {
    return [](double x) { return std::pow(0.999, x); };
  }
  throw std::runtime_error("unknown scale_fn " + name);
}

// An optimizer with one parameter group per lr in the spec, as lr_golden.py builds it.
struct Setup {
  std::vector<at::Tensor> params;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
};

template <class Optimizer, class Options>
Setup make_with(const std::vector<double>& lrs, const Options& defaults) {
  Setup setup;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (const double lr : lrs) {
    setup.params.push_back(torch::zeros({2}, torch::requires_grad()));
    auto options = std::make_unique<Options>(defaults);
    options->lr(lr);
    groups.emplace_back(std::vector<at::Tensor>{setup.params.back()}, std::move(options));
  }
  setup.optimizer = std::make_unique<Optimizer>(groups, defaults);
  return setup;
}

Setup make_optimizer(const json& spec) {
  const auto lrs = spec.at("lrs").get<std::vector<double>>();
  const auto type = spec.at("type").get<std::string>();
  if (type == "sgd") {
    return make_with<torch::optim::SGD>(lrs, torch::optim::SGDOptions(lrs[0]).momentum(spec.value("momentum", 0.9)));
  }
  if (type == "rmsprop") {
    return make_with<torch::optim::RMSprop>(lrs,
                                            torch::optim::RMSpropOptions(lrs[0]).momentum(spec.value("momentum", 0.5)));
  }
  if (type == "adam") {
    return make_with<torch::optim::Adam>(lrs, torch::optim::AdamOptions(lrs[0]).betas({0.9, 0.999}));
  }
  if (type == "adamw") {
    return make_with<torch::optim::AdamW>(lrs, torch::optim::AdamWOptions(lrs[0]).betas({0.9, 0.99}));
  }
  if (type == "adagrad") {
    return make_with<torch::optim::Adagrad>(lrs, torch::optim::AdagradOptions(lrs[0]));
  }
  throw std::runtime_error("unknown optimizer " + type);
}

lr::GroupValues group_values(const json& value) {
  if (value.is_array()) {
    return value.get<std::vector<double>>();
  }
  return value.get<double>();
}

// The options of a golden case: every field the case gives, from the options' own field table
// (so the C++ defaults are the ones checked against Python's everywhere else). A key that names
// no field fails the test.
template <class Options>
Options options_from(const json& args) {
  Options options;
  std::set<std::string> known{"lr_lambda"};
  torchkit::detail::lr::for_each_field<Options>([&](const auto& field) {
    const std::string name(field.name);
    known.insert(name);
    auto& value = options.*field.member;
    using T = std::remove_cvref_t<decltype(value)>;
    if (!args.contains(name)) {
      return;
    }
    if constexpr (std::is_same_v<T, lr::GroupValues>) {
      value = group_values(args.at(name));
    } else if constexpr (std::is_same_v<T, std::function<double(double)>>) {
      value = scale_fn_named(args.at(name).get<std::string>());
    } else if constexpr (std::is_same_v<T, std::optional<int64_t>> || std::is_same_v<T, std::optional<double>>) {
      value = args.at(name).get<typename T::value_type>();
    } else if constexpr (!std::is_same_v<T, std::vector<lr::LrLambda>>) {
      value = args.at(name).get<T>();
    }
  });
  for (const auto& item : args.items()) {
    INFO("argument ", item.key());
    CHECK(known.contains(item.key()));
  }
  return options;
}

lr::ReduceLROnPlateauOptions plateau_options(const json& args) {
  return options_from<lr::ReduceLROnPlateauOptions>(args);
}

std::shared_ptr<lr::Scheduler> make_scheduler(torch::optim::Optimizer& optimizer, const json& spec) {
  const auto type = spec.at("type").get<std::string>();
  const json args = spec.value("args", json::object());
  if (type == "SequentialLR" || type == "ChainedScheduler") {
    std::vector<lr::AnyScheduler> inner;
    for (const auto& child : spec.at("schedulers")) {
      inner.emplace_back(make_scheduler(optimizer, child));
    }
    if (type == "SequentialLR") {
      return std::make_shared<lr::SequentialLR>(optimizer, std::move(inner),
                                                spec.at("milestones").get<std::vector<int64_t>>());
    }
    return std::make_shared<lr::ChainedScheduler>(std::move(inner));
  }
  if (type == "LambdaLR" || type == "MultiplicativeLR") {
    (void)options_from<lr::LrLambdas>(args);
    const json& names = args.at("lr_lambda");
    std::vector<lr::LrLambda> lambdas;
    for (const auto& name : names.is_array() ? names : json::array({names})) {
      lambdas.push_back(lambda_named(name.get<std::string>()));
    }
    if (!names.is_array()) {  // one function for every group: the other constructor
      return type == "LambdaLR" ? std::shared_ptr<lr::Scheduler>(std::make_shared<lr::LambdaLR>(optimizer, lambdas[0]))
                                : std::make_shared<lr::MultiplicativeLR>(optimizer, lambdas[0]);
    }
    if (type == "LambdaLR") {
      return std::make_shared<lr::LambdaLR>(optimizer, std::move(lambdas));
    }
    return std::make_shared<lr::MultiplicativeLR>(optimizer, std::move(lambdas));
  }
  const auto make = [&]<class S>(std::type_identity<S>) -> std::shared_ptr<lr::Scheduler> {
    return std::make_shared<S>(optimizer, options_from<typename S::Options>(args));
  };
  if (type == "StepLR") return make(std::type_identity<lr::StepLR>{});
  if (type == "MultiStepLR") return make(std::type_identity<lr::MultiStepLR>{});
  if (type == "ConstantLR") return make(std::type_identity<lr::ConstantLR>{});
  if (type == "LinearLR") return make(std::type_identity<lr::LinearLR>{});
  if (type == "ExponentialLR") return make(std::type_identity<lr::ExponentialLR>{});
  if (type == "PolynomialLR") return make(std::type_identity<lr::PolynomialLR>{});
  if (type == "CosineAnnealingLR") return make(std::type_identity<lr::CosineAnnealingLR>{});
  if (type == "CosineAnnealingWarmRestarts") return make(std::type_identity<lr::CosineAnnealingWarmRestarts>{});
  if (type == "OneCycleLR") return make(std::type_identity<lr::OneCycleLR>{});
  if (type == "CyclicLR") return make(std::type_identity<lr::CyclicLR>{});
  throw std::runtime_error("unknown scheduler " + type);
}

std::vector<double> lrs_of(const torch::optim::Optimizer& optimizer) {
  std::vector<double> lrs;
  for (const auto& group : optimizer.param_groups()) {
    lrs.push_back(group.options().get_lr());
  }
  return lrs;
}

std::vector<double> momentums_of(const torch::optim::Optimizer& optimizer) {
  std::vector<double> values;
  for (const auto& group : optimizer.param_groups()) {
    const auto& options = group.options();
    if (const auto* sgd = dynamic_cast<const torch::optim::SGDOptions*>(&options)) {
      values.push_back(sgd->momentum());
    } else if (const auto* rmsprop = dynamic_cast<const torch::optim::RMSpropOptions*>(&options)) {
      values.push_back(rmsprop->momentum());
    } else if (const auto* adam = dynamic_cast<const torch::optim::AdamOptions*>(&options)) {
      values.push_back(std::get<0>(adam->betas()));
    } else if (const auto* adamw = dynamic_cast<const torch::optim::AdamWOptions*>(&options)) {
      values.push_back(std::get<0>(adamw->betas()));
    }
  }
  return values;
}

bool close(double actual, double expected) {
  return actual == expected || std::abs(actual - expected) <= 1e-12 * std::max(std::abs(actual), std::abs(expected));
}

// The number of values that differ from the golden row by more than 1e-12 relative.
int mismatches(const std::vector<double>& actual, const json& expected) {
  if (actual.size() != expected.size()) {
    return 1000;
  }
  int count = 0;
  for (std::size_t index = 0; index < actual.size(); ++index) {
    count += close(actual[index], expected[index].get<double>()) ? 0 : 1;
  }
  return count;
}

std::string show(const std::vector<double>& values) {
  return fmt::format("[{}]", fmt::join(values, ", "));
}

// Checks the optimizer against golden row `step` (lrs, last_lr, momentums).
void check_row(const json& golden, std::size_t step, const torch::optim::Optimizer& optimizer,
               const std::vector<double>& last_lr) {
  const json& expected = golden.at("lrs").at(step);
  const auto lrs = lrs_of(optimizer);
  INFO("step ", step, ": lrs ", show(lrs), " expected ", expected.dump());
  CHECK(mismatches(lrs, expected) == 0);
  CHECK(mismatches(last_lr, golden.contains("last_lr") ? golden.at("last_lr").at(step) : expected) == 0);
  if (golden.contains("momentums")) {
    const auto momentums = momentums_of(optimizer);
    INFO("momentums ", show(momentums), " expected ", golden.at("momentums").at(step).dump());
    CHECK(mismatches(momentums, golden.at("momentums").at(step)) == 0);
  }
}

bool is_plateau(const json& golden) { return golden.at("scheduler").at("type") == "ReduceLROnPlateau"; }

// Runs a golden case from step `from` (exclusive) to its end, checking every step.
void continue_case(const json& golden, torch::optim::Optimizer& optimizer, lr::Scheduler& scheduler,
                   std::size_t from) {
  const std::size_t steps = golden.contains("step_epochs") ? golden.at("step_epochs").size()
                                                           : golden.at("steps").get<std::size_t>();
  for (std::size_t step = from + 1; step <= steps; ++step) {
    if (golden.contains("step_epochs") && !golden.at("step_epochs").at(step - 1).is_null()) {
      dynamic_cast<lr::CosineAnnealingWarmRestarts&>(scheduler).step(golden.at("step_epochs").at(step - 1).get<double>());
    } else {
      scheduler.step();
    }
    check_row(golden, step, optimizer, scheduler.last_lr());
    CHECK(scheduler.last_lr() == lrs_of(optimizer));
  }
}

void continue_plateau(const json& golden, torch::optim::Optimizer& optimizer, lr::ReduceLROnPlateau& scheduler,
                      std::size_t from) {
  const auto& metrics = golden.at("metrics");
  for (std::size_t step = from + 1; step <= metrics.size(); ++step) {
    scheduler.step(metrics.at(step - 1).get<double>());
    check_row(golden, step, optimizer, scheduler.last_lr());
    CHECK(scheduler.last_epoch() == static_cast<int64_t>(step));
  }
}

// tests/golden/lr.json, or the file TORCHKIT_LR_GOLDEN names (e.g. random argument sets from
// `lr_golden.py --random 500 --out ...`).
const json& golden() {
  static const json data = [] {
    if (const char* path = std::getenv("TORCHKIT_LR_GOLDEN"); path != nullptr && *path != '\0') {
      std::ifstream in(path);
      if (!in) {
        throw std::runtime_error(std::string("cannot open ") + path);
      }
      return json::parse(in);
    }
    return torchkit::test::load_golden("lr.json");
  }();
  return data;
}

bool custom_golden() {
  const char* path = std::getenv("TORCHKIT_LR_GOLDEN");
  return path != nullptr && *path != '\0';
}

std::string python_message(const json& error) {
  auto message = error.at("message").get<std::string>();
  if (!message.empty() && message.back() == '.') {
    message.pop_back();  // torchkit appends the offending value after Python's sentence
  }
  return message;
}

}  // namespace

TEST_CASE("every scheduler reproduces PyTorch's sequence, per group, momentum included") {
  std::set<std::string> types;
  for (const auto& case_ : golden().at("cases")) {
    const auto name = case_.at("name").get<std::string>();
    INFO("case: ", name);
    types.insert(case_.at("scheduler").at("type").get<std::string>());
    for (const auto& child : case_.at("scheduler").value("schedulers", json::array())) {
      types.insert(child.at("type").get<std::string>());
    }
    auto setup = make_optimizer(case_.at("optimizer"));
    if (is_plateau(case_)) {
      lr::ReduceLROnPlateau scheduler(*setup.optimizer, plateau_options(case_.at("scheduler").at("args")));
      check_row(case_, 0, *setup.optimizer, scheduler.last_lr());
      continue_plateau(case_, *setup.optimizer, scheduler, 0);
      continue;
    }
    auto scheduler = make_scheduler(*setup.optimizer, case_.at("scheduler"));
    check_row(case_, 0, *setup.optimizer, scheduler->last_lr());
    continue_case(case_, *setup.optimizer, *scheduler, 0);
  }
  if (custom_golden()) {
    return;
  }
  CHECK(types == std::set<std::string>{"StepLR", "MultiStepLR", "ExponentialLR", "ConstantLR", "LinearLR",
                                       "PolynomialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts",
                                       "LambdaLR", "MultiplicativeLR", "OneCycleLR", "CyclicLR", "SequentialLR",
                                       "ChainedScheduler", "ReduceLROnPlateau"});
  CHECK(golden().at("cases").size() >= 60);
}

TEST_CASE("a run stopped at step k and resumed from archives continues exactly") {
  for (const auto& case_ : golden().at("cases")) {
    const auto name = case_.at("name").get<std::string>();
    for (const std::size_t stop : {std::size_t{0}, std::size_t{1}, std::size_t{73}}) {
      INFO("case: ", name, ", stopped after ", stop, " steps");
      std::stringstream checkpoint;
      {
        auto setup = make_optimizer(case_.at("optimizer"));
        torch::serialize::OutputArchive archive;
        if (is_plateau(case_)) {
          lr::ReduceLROnPlateau scheduler(*setup.optimizer, plateau_options(case_.at("scheduler").at("args")));
          for (std::size_t step = 0; step < stop; ++step) {
            scheduler.step(case_.at("metrics").at(step).get<double>());
          }
          setup.optimizer->save(archive);
          scheduler.save(archive);
        } else {
          auto scheduler = make_scheduler(*setup.optimizer, case_.at("scheduler"));
          for (std::size_t step = 0; step < stop; ++step) {
            if (case_.contains("step_epochs") && !case_.at("step_epochs").at(step).is_null()) {
              dynamic_cast<lr::CosineAnnealingWarmRestarts&>(*scheduler).step(
                  case_.at("step_epochs").at(step).get<double>());
            } else {
              scheduler->step();
            }
          }
          setup.optimizer->save(archive);
          scheduler->save(archive);
        }
        archive.save_to(checkpoint);
      }  // the first run's optimizer and schedulers are gone
      auto setup = make_optimizer(case_.at("optimizer"));
      torch::serialize::InputArchive archive;
      archive.load_from(checkpoint);
      if (is_plateau(case_)) {
        lr::ReduceLROnPlateau scheduler(*setup.optimizer, plateau_options(case_.at("scheduler").at("args")));
        setup.optimizer->load(archive);
        scheduler.load(archive);
        CHECK(scheduler.last_epoch() == static_cast<int64_t>(stop));
        continue_plateau(case_, *setup.optimizer, scheduler, stop);
      } else {
        auto scheduler = make_scheduler(*setup.optimizer, case_.at("scheduler"));
        setup.optimizer->load(archive);
        scheduler->load(archive);
        check_row(case_, stop, *setup.optimizer, scheduler->last_lr());
        continue_case(case_, *setup.optimizer, *scheduler, stop);
      }
    }
  }
}

TEST_CASE("Python's errors, with Python's wording, and the optimizer left as it was") {
  for (const auto& error : golden().at("errors")) {
    const json& spec = error.at("scheduler");
    INFO("scheduler: ", spec.dump(), "\nPython: ", error.at("message").get<std::string>());
    auto setup = make_optimizer(error.at("optimizer"));
    auto& optimizer = *setup.optimizer;
    const auto lrs_before = lrs_of(optimizer);
    const auto momentums_before = momentums_of(optimizer);
    std::string message;
    if (spec.at("type") == "ReduceLROnPlateau") {
      message = message_of<torchkit::Error>(
          [&] { lr::ReduceLROnPlateau scheduler(optimizer, plateau_options(spec.at("args"))); });
    } else if (spec.contains("other_optimizer_at")) {
      auto other = make_optimizer(error.at("optimizer"));
      const auto first = std::make_shared<lr::StepLR>(optimizer, 3);
      const auto second = std::make_shared<lr::ExponentialLR>(*other.optimizer, 0.9);
      const auto lrs_with_schedulers = lrs_of(optimizer);
      message = message_of<torchkit::Error>([&] {
        if (spec.at("type") == "SequentialLR") {
          lr::SequentialLR scheduler(optimizer, {first, second}, {3});
        } else {
          lr::ChainedScheduler scheduler({first, second});
        }
      });
      CHECK(lrs_of(optimizer) == lrs_with_schedulers);
    } else if (error.contains("step_epoch")) {
      lr::CosineAnnealingWarmRestarts scheduler(optimizer, {.T_0 = 5});
      const auto lrs_constructed = lrs_of(optimizer);
      message = message_of<torchkit::Error>([&] { scheduler.step(error.at("step_epoch").get<double>()); });
      CHECK(lrs_of(optimizer) == lrs_constructed);
      CHECK(scheduler.last_epoch() == 0);
    } else if (error.at("steps").get<int>() > 0) {
      auto scheduler = make_scheduler(optimizer, spec);
      const int steps = error.at("steps").get<int>();
      for (int step = 0; step < steps - 1; ++step) {
        scheduler->step();
      }
      // The failing step changes nothing: not the lrs, the momentum, nor the epoch.
      const auto lrs_last = lrs_of(optimizer);
      const auto momentums_last = momentums_of(optimizer);
      const auto epoch_last = scheduler->last_epoch();
      message = message_of<torchkit::Error>([&] { scheduler->step(); });
      CHECK(lrs_of(optimizer) == lrs_last);
      CHECK(momentums_of(optimizer) == momentums_last);
      CHECK(scheduler->last_epoch() == epoch_last);
      CHECK(scheduler->last_lr() == lrs_last);
      // ... again and again.
      CHECK_THROWS_AS(scheduler->step(), torchkit::Error);
      CHECK(scheduler->last_epoch() == epoch_last);
    } else {
      message = message_of<torchkit::Error>([&] { (void)make_scheduler(optimizer, spec); });
    }
    INFO("torchkit: ", message);
    CHECK(message.find(python_message(error)) != std::string::npos);
    if (!spec.contains("other_optimizer_at") && error.at("steps").get<int>() == 0 && !error.contains("step_epoch") &&
        spec.at("type") != "SequentialLR") {
      CHECK(lrs_of(optimizer) == lrs_before);
      CHECK(momentums_of(optimizer) == momentums_before);
    }
  }
  CHECK((custom_golden() || golden().at("errors").size() >= 30));
}

TEST_CASE("bad arguments Python lets through (or crashes on later) throw Error naming the value") {
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.025}}});
  auto& optimizer = *setup.optimizer;
  const auto lrs_before = lrs_of(optimizer);
  const auto momentums_before = momentums_of(optimizer);
  struct Bad {
    std::function<void()> construct;
    std::vector<std::string> parts;
  };
  const std::vector<Bad> bad{
      {[&] { lr::StepLR s(optimizer, 0); }, {"StepLR", "step_size", "positive", "got 0"}},
      {[&] { lr::StepLR s(optimizer, -3, 0.5); }, {"StepLR", "step_size", "got -3"}},
      {[&] { lr::StepLR s(optimizer, lr::StepLROptions{}); }, {"StepLR", "step_size is required"}},
      {[&] { lr::StepLR s(optimizer, 5, -0.1); }, {"StepLR", "gamma", "got -0.1"}},
      {[&] { lr::MultiStepLR s(optimizer, {30, 10}); }, {"MultiStepLR", "increasing", "10", "[30, 10]"}},
      {[&] { lr::MultiStepLR s(optimizer, {-1, 10}); }, {"MultiStepLR", ">= 0", "-1", "[-1, 10]"}},
      {[&] { lr::MultiStepLR s(optimizer, {5, 10}, std::nan("")); }, {"MultiStepLR", "gamma", "nan"}},
      {[&] { lr::ConstantLR s(optimizer, 0.0); }, {"ConstantLR", "factor=0"}},
      {[&] { lr::ConstantLR s(optimizer, 0.5, 0); }, {"ConstantLR", "total_iters", "got 0"}},
      {[&] { lr::LinearLR s(optimizer, 0.0); }, {"LinearLR", "start_factor=0"}},
      {[&] { lr::LinearLR s(optimizer, {.total_iters = -2}); }, {"LinearLR", "total_iters", "got -2"}},
      {[&] { lr::ExponentialLR s(optimizer, lr::ExponentialLROptions{}); }, {"ExponentialLR", "gamma is required"}},
      {[&] { lr::ExponentialLR s(optimizer, -0.9); }, {"ExponentialLR", "gamma", "got -0.9"}},
      {[&] { lr::PolynomialLR s(optimizer, 0); }, {"PolynomialLR", "total_iters", "got 0"}},
      {[&] { lr::PolynomialLR s(optimizer, {.power = -1.0}); }, {"PolynomialLR", "power", "got -1"}},
      {[&] { lr::CosineAnnealingLR s(optimizer, 0); }, {"CosineAnnealingLR", "T_max", "got 0"}},
      {[&] { lr::CosineAnnealingLR s(optimizer, {.T_max = -10}); }, {"CosineAnnealingLR", "T_max", "got -10"}},
      {[&] { lr::CosineAnnealingLR s(optimizer, lr::CosineAnnealingLROptions{}); }, {"T_max is required"}},
      {[&] { lr::CosineAnnealingLR s(optimizer, 10, -1e-3); }, {"CosineAnnealingLR", "eta_min", "got -0.001"}},
      {[&] { lr::CosineAnnealingWarmRestarts s(optimizer, lr::CosineAnnealingWarmRestartsOptions{}); },
       {"T_0 is required"}},
      {[&] { lr::LambdaLR s(optimizer, lr::LrLambda{}); }, {"LambdaLR", "lr_lambda is empty"}},
      {[&] { lr::MultiplicativeLR s(optimizer, std::vector<lr::LrLambda>{lambda_named("exp095"), {}}); },
       {"MultiplicativeLR", "lr_lambda[1] is empty"}},
      {[&] { lr::OneCycleLR s(optimizer, lr::OneCycleLROptions{.total_steps = 10}); }, {"OneCycleLR", "max_lr is required"}},
      {[&] { lr::OneCycleLR s(optimizer, {.max_lr = 0.1, .epochs = 3}); },
       {"OneCycleLR", "Expected positive integer steps_per_epoch, but got None"}},
      {[&] { lr::OneCycleLR s(optimizer, {.max_lr = 0.1, .total_steps = 10, .div_factor = 0}); },
       {"OneCycleLR", "div_factor", "got 0"}},
      {[&] { lr::OneCycleLR s(optimizer, {.max_lr = {0.1, -0.2}, .total_steps = 10}); },
       {"OneCycleLR", "max_lr", "-0.2", "param group 1"}},
      {[&] { lr::CyclicLR s(optimizer, 0.01, 0.1, 0); }, {"CyclicLR", "step_size_up", "got 0"}},
      {[&] { lr::CyclicLR s(optimizer, {.base_lr = 0.01, .max_lr = 0.1, .step_size_down = -4}); },
       {"CyclicLR", "step_size_down", "got -4"}},
      {[&] { lr::CyclicLR s(optimizer, {.max_lr = 0.1}); }, {"CyclicLR", "base_lr is required"}},
      {[&] {
         lr::CyclicLR s(optimizer, {.base_lr = 0.01, .max_lr = 0.1, .scale_fn = [](double) { return 1.0; },
                                    .scale_mode = "epochs"});
       },
       {"CyclicLR", "scale_mode", "'epochs'"}},
      {[&] { lr::ReduceLROnPlateau s(optimizer, {.factor = -0.5}); }, {"ReduceLROnPlateau", "factor=-0.5"}},
      {[&] { lr::ReduceLROnPlateau s(optimizer, {.patience = -1}); }, {"ReduceLROnPlateau", "patience", "got -1"}},
      {[&] { lr::ReduceLROnPlateau s(optimizer, {.cooldown = -2}); }, {"ReduceLROnPlateau", "cooldown", "got -2"}},
      {[&] { lr::ReduceLROnPlateau s(optimizer, {.min_lr = {0.1, -1.0}}); }, {"ReduceLROnPlateau", "min_lr", "-1"}},
      {[&] { lr::SequentialLR s(optimizer, {}, {}); }, {"SequentialLR", "at least one scheduler"}},
      {[&] { lr::ChainedScheduler s({}); }, {"ChainedScheduler", "at least one scheduler"}},
      {[&] { lr::ChainedScheduler s({std::shared_ptr<lr::StepLR>{}}); }, {"null"}},
  };
  for (std::size_t index = 0; index < bad.size(); ++index) {
    INFO("bad input #", index);
    const auto message = message_of<torchkit::Error>(bad[index].construct);
    for (const auto& part : bad[index].parts) {
      INFO("message: ", message, "\nexpected to contain: ", part);
      CHECK(message.find(part) != std::string::npos);
    }
    CHECK(lrs_of(optimizer) == lrs_before);
    CHECK(momentums_of(optimizer) == momentums_before);
  }
}

TEST_CASE("an optimizer with no parameter groups, or groups added later") {
  torch::optim::SGD empty(std::vector<torch::optim::OptimizerParamGroup>{}, torch::optim::SGDOptions(0.1));
  REQUIRE(empty.param_groups().empty());
  for (const auto& make : std::vector<std::function<void()>>{
           [&] { lr::StepLR s(empty, 10); }, [&] { lr::CosineAnnealingLR s(empty, 10); },
           [&] { lr::OneCycleLR s(empty, 0.1, 10); }, [&] { lr::CyclicLR s(empty, 0.01, 0.1); },
           [&] { lr::LambdaLR s(empty, lambda_named("exp095")); }, [&] { lr::ReduceLROnPlateau s(empty); }}) {
    const auto message = message_of<torchkit::Error>(make);
    CHECK(message.find("no parameter groups") != std::string::npos);
  }

  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1}}});
  lr::StepLR scheduler(*setup.optimizer, 2);
  lr::ReduceLROnPlateau plateau(*setup.optimizer);
  setup.optimizer->add_param_group(torch::optim::OptimizerParamGroup({torch::zeros({1}, torch::requires_grad())}));
  const auto message = message_of<torchkit::Error>([&] { scheduler.step(); });
  CHECK(message.find("2 parameter groups, but had 1") != std::string::npos);
  CHECK(scheduler.last_epoch() == 0);
  CHECK_THROWS_AS(plateau.step(1.0), torchkit::Error);
}

TEST_CASE("options whose lr cannot be read are an Error, not a crash") {
  struct NoLrOptions : torch::optim::OptimizerCloneableOptions<NoLrOptions> {};
  struct NoLrOptimizer : torch::optim::Optimizer {
    explicit NoLrOptimizer(std::vector<at::Tensor> params)
        : Optimizer({torch::optim::OptimizerParamGroup(std::move(params))}, std::make_unique<NoLrOptions>()) {}
    at::Tensor step(LossClosure) override { return {}; }
    void save(torch::serialize::OutputArchive&) const override {}
    void load(torch::serialize::InputArchive&) override {}
  };
  NoLrOptimizer optimizer({torch::zeros({1}, torch::requires_grad())});
  const auto message = message_of<torchkit::Error>([&] { lr::StepLR s(optimizer, 3); });
  CHECK(message.find("param group 0") != std::string::npos);
  CHECK(message.find("get_lr") != std::string::npos);
}

TEST_CASE("the tip's positional form and the designated-initializer form agree") {
  auto a = make_optimizer({{"type", "adam"}, {"lrs", {0.001, 0.01}}});
  auto b = make_optimizer({{"type", "adam"}, {"lrs", {0.001, 0.01}}});
  lr::StepLR positional(*a.optimizer, 10, 0.1);
  lr::StepLR designated(*b.optimizer, {.step_size = 10, .gamma = 0.1});
  for (int epoch = 0; epoch < 35; ++epoch) {
    CHECK(positional.last_lr() == designated.last_lr());
    positional.step();
    designated.step();
  }
  CHECK(positional.last_epoch() == 35);
  CHECK(close(positional.last_lr()[0], 0.001 * 0.1 * 0.1 * 0.1));
  CHECK(positional.options().step_size == 10);
  CHECK(positional.base_lrs() == std::vector<double>{0.001, 0.01});
  CHECK(&positional.optimizer() == a.optimizer.get());

  auto c = make_optimizer({{"type", "sgd"}, {"lrs", {0.1}}});
  lr::CosineAnnealingLR cosine(*c.optimizer, {.T_max = 100, .eta_min = 1e-5});
  CHECK(cosine.options().T_max == 100);
  for (int epoch = 0; epoch < 100; ++epoch) {
    cosine.step();
  }
  CHECK(close(cosine.last_lr()[0], 1e-5));
  CHECK(cosine.type_name() == "CosineAnnealingLR");
}

TEST_CASE("schedulers of one optimizer share each group's initial lr, as Python's initial_lr") {
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.02}}});
  auto& optimizer = *setup.optimizer;
  {
    lr::ConstantLR constant(optimizer, {.factor = 0.5, .total_iters = 3});
    CHECK(lrs_of(optimizer) == std::vector<double>{0.05, 0.01});
    // The second scheduler's base is the recorded initial lr, not the lr ConstantLR has set.
    lr::CosineAnnealingLR cosine(optimizer, 10);
    CHECK(cosine.base_lrs() == std::vector<double>{0.1, 0.02});
    // A second optimizer is independent.
    auto other = make_optimizer({{"type", "sgd"}, {"lrs", {0.3, 0.3}}});
    lr::StepLR step(*other.optimizer, 2);
    CHECK(step.base_lrs() == std::vector<double>{0.3, 0.3});
  }
  // Once no scheduler of the optimizer is left, a new one records the lr it finds.
  lr::ExponentialLR exponential(optimizer, 0.9);
  CHECK(exponential.base_lrs() == std::vector<double>{0.05, 0.01});
}

TEST_CASE("composites take schedulers moved in or shared, and step the shared ones") {
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {1.0}}});
  auto& optimizer = *setup.optimizer;
  auto exponential = std::make_shared<lr::ExponentialLR>(optimizer, 0.9);
  lr::ConstantLR constant(optimizer, {.factor = 0.1, .total_iters = 2});
  lr::ChainedScheduler chained({std::move(constant), exponential});
  // ExponentialLR was created first (lr 1), then ConstantLR (lr 0.1); each step applies both.
  CHECK(close(chained.last_lr()[0], 0.1));
  chained.step();
  CHECK(close(chained.last_lr()[0], 0.09));
  CHECK(exponential->last_epoch() == 1);
  chained.step();
  chained.step();
  CHECK(close(chained.last_lr()[0], 0.729));
  CHECK(exponential->last_epoch() == 3);
  CHECK(chained.last_epoch() == 3);
  CHECK(chained.schedulers().size() == 2);
  CHECK(chained.schedulers()[1] == exponential);

  // A composite cannot be restarted at a milestone.
  auto inner = std::make_shared<lr::ChainedScheduler>(std::vector<lr::AnyScheduler>{lr::StepLR(optimizer, 5)});
  const auto message = message_of<torchkit::Error>(
      [&] { lr::SequentialLR s(optimizer, {lr::StepLR(optimizer, 3), inner}, {3}); });
  CHECK(message.find("index 1 is a ChainedScheduler") != std::string::npos);
  const auto unsorted = message_of<torchkit::Error>([&] {
    lr::SequentialLR s(optimizer, {lr::StepLR(optimizer, 3), lr::StepLR(optimizer, 3), lr::StepLR(optimizer, 3)},
                       {10, 4});
  });
  CHECK(unsorted.find("milestones must be increasing") != std::string::npos);
  CHECK(unsorted.find("[10, 4]") != std::string::npos);
}

TEST_CASE("Python's order: schedulers built first, then composed, the composite steps them") {
  // Python:  warm = LinearLR(opt, 0.1, 1.0, 5); cos = CosineAnnealingLR(opt, 95)
  //          s = SequentialLR(opt, [warm, cos], [5])
  auto python_order = make_optimizer({{"type", "sgd"}, {"lrs", {1.0, 0.5}}});
  lr::LinearLR warm(*python_order.optimizer, 0.1, 1.0, 5);
  lr::CosineAnnealingLR cos(*python_order.optimizer, 95);
  lr::SequentialLR sequential(*python_order.optimizer, {warm, cos}, {5});
  // The same schedule written with temporaries (owned by the composite).
  auto inline_form = make_optimizer({{"type", "sgd"}, {"lrs", {1.0, 0.5}}});
  lr::SequentialLR owned(*inline_form.optimizer,
                         {lr::LinearLR(*inline_form.optimizer, 0.1, 1.0, 5), lr::CosineAnnealingLR(*inline_form.optimizer, 95)},
                         {5});
  for (int epoch = 0; epoch < 30; ++epoch) {
    CHECK(sequential.last_lr() == owned.last_lr());
    sequential.step();
    owned.step();
  }
  // The composite refers to the caller's objects, as Python's does: they moved with it.
  CHECK(&sequential.schedulers()[0]->optimizer() == python_order.optimizer.get());
  CHECK(sequential.schedulers()[0].get() == &warm);
  CHECK(sequential.schedulers()[1].get() == &cos);
  CHECK(cos.last_epoch() == 25);

  // An AnyScheduler copies as a handle (the catch-all constructor does not take it over).
  lr::AnyScheduler handle = std::make_shared<lr::StepLR>(*python_order.optimizer, 3);
  lr::AnyScheduler copy = handle;
  CHECK(copy.get() == handle.get());

  // ChainedScheduler([a, b]) the same way.
  auto chained_setup = make_optimizer({{"type", "sgd"}, {"lrs", {1.0}}});
  lr::ConstantLR constant(*chained_setup.optimizer, 0.1, 2);
  lr::ExponentialLR exponential(*chained_setup.optimizer, 0.9);
  lr::ChainedScheduler chained({constant, exponential});
  chained.step();
  CHECK(close(chained.last_lr()[0], 0.09));
  CHECK(exponential.last_epoch() == 1);
  CHECK(constant.last_epoch() == 1);
}

namespace {
/// Collects LibTorch warnings (the handler's interface changed in LibTorch 2.0).
struct WarningCollector : c10::WarningHandler {
#if TORCHKIT_TORCH_AT_LEAST(2, 0)
  void process(const c10::Warning& warning) override { messages.push_back(warning.msg()); }
#else
  void process(const c10::SourceLocation&, const std::string& message, const bool) override {
    messages.push_back(message);
  }
#endif
  std::vector<std::string> messages;
};
}  // namespace

TEST_CASE("a scheduler stepped before its optimizer warns once, through LibTorch's warning handler") {
  WarningCollector collector;
#if TORCHKIT_TORCH_AT_LEAST(2, 0)
  const c10::WarningUtils::WarningHandlerGuard guard(&collector);
#else
  const c10::Warning::WarningHandlerGuard guard(&collector);
#endif
  torchkit::detail::lr::step_order_warned() = false;
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1}}});
  auto& optimizer = *setup.optimizer;
  for (auto& group : optimizer.param_groups()) {
    for (auto& p : group.params()) p.mutable_grad() = torch::ones_like(p);
  }
  lr::StepLR right_order(optimizer, 2);
  optimizer.step();
  right_order.step();  // optimizer first: no warning
  CHECK_MESSAGE(collector.messages.empty(), (collector.messages.empty() ? std::string() : collector.messages[0]));

  lr::StepLR wrong_order(optimizer, 2);
  wrong_order.step();  // before any optimizer.step() since it was made
  REQUIRE(collector.messages.size() == 1);
  CHECK(collector.messages[0].find("StepLR::step: called before the optimizer's step(); call optimizer.step() first") ==
        0);
  lr::ExponentialLR again(optimizer, 0.9);
  again.step();
  CHECK(collector.messages.size() == 1);  // once per process, as Python
}

TEST_CASE("the warm-up + cosine schedule of the example") {
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1}}});
  auto& optimizer = *setup.optimizer;
  lr::SequentialLR schedule(optimizer,
                            {lr::LinearLR(optimizer, {.start_factor = 0.1, .total_iters = 5}),
                             lr::CosineAnnealingLR(optimizer, {.T_max = 45})},
                            {5});
  std::vector<double> lrs{schedule.last_lr()[0]};
  for (int epoch = 1; epoch <= 50; ++epoch) {
    schedule.step();
    lrs.push_back(schedule.last_lr()[0]);
  }
  CHECK(close(lrs[0], 0.01));
  CHECK(close(lrs[1], 0.028));
  CHECK(close(lrs[5], 0.1));  // the milestone: cosine starts at its closed form, the initial lr
  for (int epoch = 6; epoch <= 50; ++epoch) {
    const double closed_form = 0.1 * (1 + std::cos(std::numbers::pi * (epoch - 5) / 45)) / 2;
    CHECK(std::abs(lrs[epoch] - closed_form) <= 1e-12 * 0.1);
  }
  CHECK(schedule.last_epoch() == 50);
  CHECK(schedule.milestones() == std::vector<int64_t>{5});
}

TEST_CASE("CyclicLR cycles Adam's beta1 as it cycles SGD's momentum (torch 2.x), keeping beta2") {
  static const json committed = torchkit::test::load_golden("lr.json");
  const json* sgd_case = nullptr;
  for (const auto& case_ : committed.at("cases")) {
    if (case_.at("name") == "CyclicLR triangular2 lists") {
      sgd_case = &case_;
    }
  }
  REQUIRE(sgd_case != nullptr);
  auto setup = make_optimizer({{"type", "adam"}, {"lrs", {0.5, 0.5}}});
  auto scheduler = make_scheduler(*setup.optimizer, sgd_case->at("scheduler"));
  for (std::size_t step = 0; step <= 200; ++step) {
    INFO("step ", step);
    CHECK(mismatches(lrs_of(*setup.optimizer), sgd_case->at("lrs").at(step)) == 0);
    CHECK(mismatches(momentums_of(*setup.optimizer), sgd_case->at("momentums").at(step)) == 0);
    for (const auto& group : setup.optimizer->param_groups()) {
      CHECK(std::get<1>(static_cast<const torch::optim::AdamOptions&>(group.options()).betas()) == 0.999);
    }
    scheduler->step();
  }
  // Adagrad has neither: Python's error.
  auto adagrad = make_optimizer({{"type", "adagrad"}, {"lrs", {0.1}}});
  CHECK_THROWS_WITH_AS(lr::CyclicLR(*adagrad.optimizer, 0.01, 0.1),
                       doctest::Contains("optimizer must support momentum with `cycle_momentum` option enabled"),
                       torchkit::Error);
  lr::CyclicLR without(*adagrad.optimizer, {.base_lr = 0.01, .max_lr = 0.1, .cycle_momentum = false});
  CHECK(without.last_lr() == std::vector<double>{0.01});
}

TEST_CASE("OneCycleLR: Python's step limit, with epochs and steps_per_epoch") {
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1}}});
  lr::OneCycleLR scheduler(*setup.optimizer, {.max_lr = 0.1, .epochs = 3, .steps_per_epoch = 4});
  CHECK(scheduler.total_steps() == 12);
  CHECK(close(scheduler.last_lr()[0], 0.1 / 25));
  for (int step = 0; step < 12; ++step) {
    scheduler.step();  // Python allows total_steps steps after construction
  }
  CHECK_THROWS_WITH_AS(scheduler.step(),
                       doctest::Contains("Tried to step 14 times. The specified number of total steps is 12"),
                       torchkit::Error);
  // pct_start = 1 leaves the last phase without steps: Python divides by zero there.
  auto other = make_optimizer({{"type", "sgd"}, {"lrs", {0.1}}});
  lr::OneCycleLR full(*other.optimizer, {.max_lr = 0.1, .total_steps = 5, .pct_start = 1.0});
  for (int step = 0; step < 4; ++step) {
    full.step();
  }
  CHECK(close(full.last_lr()[0], 0.1));
  CHECK_THROWS_WITH_AS(full.step(), doctest::Contains("division by zero"), torchkit::Error);
  CHECK(full.last_epoch() == 4);
}

TEST_CASE("OneCycleLR refuses before anything moves: at construction and inside composites") {
  // Python divides by zero in the initial step here; torchkit fails before changing the optimizer.
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.2}}});
  auto& optimizer = *setup.optimizer;
  const auto lrs_before = lrs_of(optimizer);
  const auto momentums_before = momentums_of(optimizer);
  CHECK_THROWS_WITH_AS(lr::OneCycleLR(optimizer, {.max_lr = 1.0, .total_steps = 1, .pct_start = 1.0}),
                       doctest::Contains("division by zero at step 0"), torchkit::Error);
  CHECK(lrs_of(optimizer) == lrs_before);
  CHECK(momentums_of(optimizer) == momentums_before);

  auto exponential = std::make_shared<lr::ExponentialLR>(optimizer, 0.5);
  auto one_cycle = std::make_shared<lr::OneCycleLR>(optimizer, 1.0, 3);
  lr::ChainedScheduler chained({exponential, one_cycle});
  for (int step = 0; step < 3; ++step) {
    chained.step();
  }
  const auto lrs_last = lrs_of(optimizer);
  const auto momentums_last = momentums_of(optimizer);
  CHECK_THROWS_WITH_AS(chained.step(), doctest::Contains("Tried to step 5 times"), torchkit::Error);
  CHECK(exponential->last_epoch() == 3);  // the first scheduler did not move either
  CHECK(one_cycle->last_epoch() == 3);
  CHECK(chained.last_epoch() == 3);
  CHECK(lrs_of(optimizer) == lrs_last);
  CHECK(momentums_of(optimizer) == momentums_last);

  auto other = make_optimizer({{"type", "sgd"}, {"lrs", {0.1}}});
  lr::SequentialLR sequential(*other.optimizer,
                              {lr::OneCycleLR(*other.optimizer, 1.0, 4), lr::ExponentialLR(*other.optimizer, 0.5)},
                              {10});
  for (int step = 0; step < 4; ++step) {
    sequential.step();
  }
  const auto lr_last = lrs_of(*other.optimizer);
  CHECK_THROWS_WITH_AS(sequential.step(), doctest::Contains("Tried to step 6 times"), torchkit::Error);
  CHECK(sequential.last_epoch() == 4);
  CHECK(lrs_of(*other.optimizer) == lr_last);
}

TEST_CASE("ReduceLROnPlateau takes a one-element tensor metric") {
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.01}}});
  lr::ReduceLROnPlateau scheduler(*setup.optimizer, {.patience = 0});
  scheduler.step(torch::tensor(1.0));
  CHECK(scheduler.best() == 1.0);
  scheduler.step(torch::tensor({2.0}));
  CHECK(close(scheduler.last_lr()[0], 0.01));
  CHECK(scheduler.num_bad_epochs() == 0);
  CHECK_THROWS_WITH_AS(scheduler.step(torch::ones({2})), doctest::Contains("one-element tensor, got shape [2]"),
                       torchkit::Error);
  CHECK(scheduler.last_epoch() == 2);
  CHECK(scheduler.to_string().find("ReduceLROnPlateau(mode='min', factor=0.1, patience=0") == 0);
}

TEST_CASE("load refuses another scheduler's state or another group count, changing nothing") {
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.01}}});
  lr::StepLR step(*setup.optimizer, 3);
  step.step();
  torch::serialize::OutputArchive out;
  step.save(out);
  std::stringstream stream;
  out.save_to(stream);

  auto other = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.01}}});
  lr::ExponentialLR exponential(*other.optimizer, 0.5);
  exponential.step();
  torch::serialize::InputArchive in;
  in.load_from(stream);
  const auto message = message_of<torchkit::Error>([&] { exponential.load(in); });
  CHECK(message.find("ExponentialLR::load: the archive holds the state of a scheduler of type StepLR, not ExponentialLR") !=
        std::string::npos);
  CHECK(exponential.last_epoch() == 1);
  CHECK(lrs_of(*other.optimizer) == std::vector<double>{0.05, 0.005});

  auto three = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.01, 0.001}}});
  lr::StepLR step3(*three.optimizer, 7);
  const auto groups = message_of<torchkit::Error>([&] { step3.load(in); });
  CHECK(groups.find("saved for 2 parameter groups, the optimizer has 3") != std::string::npos);
  CHECK(step3.last_epoch() == 0);
  CHECK(step3.options().step_size == 7);

  // Python's load_state_dict restores the hyperparameters too.
  auto same = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.01}}});
  lr::StepLR step_other(*same.optimizer, 50, 0.9);
  step_other.load(in);
  CHECK(step_other.options().step_size == 3);
  CHECK(step_other.options().gamma == 0.1);
  CHECK(step_other.last_epoch() == 1);

  torch::serialize::InputArchive empty;
  CHECK_THROWS_WITH_AS(step_other.load(empty), doctest::Contains("no 'lr_scheduler'"), torchkit::Error);
}

TEST_CASE("counts beyond 2^53 and periods that overflow int64 are refused, changing nothing") {
  // Found by fuzz/fuzz_lr_archive.cpp (fuzz/regressions/fuzz_lr_archive/): Python's integers
  // never overflow, int64 does; every such case is an Error before anything moves.
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.01}}});
  CHECK_THROWS_WITH_AS(lr::CosineAnnealingLR(*setup.optimizer, int64_t{1} << 60),
                       doctest::Contains("T_max is 1152921504606846976; the largest count a scheduler accepts is 2^53"),
                       torchkit::Error);
  CHECK_THROWS_WITH_AS(lr::StepLR(*setup.optimizer, std::numeric_limits<int64_t>::max()),
                       doctest::Contains("step_size is 9223372036854775807"), torchkit::Error);

  lr::CosineAnnealingWarmRestarts warm(*setup.optimizer, 1, int64_t{1} << 40);
  warm.step(3.5);
  const auto before = warm.to_string();
  const auto lrs = lrs_of(*setup.optimizer);
  CHECK_THROWS_WITH_AS(warm.step(8.0e15), doctest::Contains("does not fit in int64"), torchkit::Error);
  CHECK_THROWS_WITH_AS(warm.step(1e30), doctest::Contains("beyond 2^53"), torchkit::Error);
  CHECK(warm.to_string() == before);
  CHECK(lrs_of(*setup.optimizer) == lrs);

  // An archive whose last_epoch would overflow the next step.
  lr::StepLR step(*setup.optimizer, 3);
  torch::serialize::OutputArchive out;
  step.save(out);
  std::stringstream stream;
  out.save_to(stream);
  torch::serialize::InputArchive saved;
  saved.load_from(stream);
  torch::serialize::InputArchive saved_state;
  REQUIRE(saved.try_read("lr_scheduler", saved_state));
  torch::serialize::OutputArchive corrupted_state;
  for (const auto& key : saved_state.keys()) {
    c10::IValue value;
    REQUIRE(saved_state.try_read(key, value));
    corrupted_state.write(key, key == "last_epoch" ? c10::IValue(std::numeric_limits<int64_t>::max()) : value);
  }
  torch::serialize::OutputArchive corrupted;
  corrupted.write("lr_scheduler", corrupted_state);
  std::stringstream corrupted_bytes;
  corrupted.save_to(corrupted_bytes);
  torch::serialize::InputArchive in;
  in.load_from(corrupted_bytes);
  const auto step_before = step.to_string();
  CHECK_THROWS_WITH_AS(step.load(in), doctest::Contains("last_epoch in the archive is 9223372036854775807"),
                       torchkit::Error);
  CHECK(step.to_string() == step_before);
}

TEST_CASE("to_string and operator<<") {
  auto setup = make_optimizer({{"type", "adam"}, {"lrs", {0.001, 0.01}}});
  lr::StepLR scheduler(*setup.optimizer, 10, 0.1);
  std::ostringstream stream;
  stream << scheduler;
  CHECK(stream.str() == "StepLR(step_size=10, gamma=0.1) last_epoch=0 last_lr=[0.001, 0.01]");
  CHECK(scheduler.to_string() == stream.str());
  lr::SequentialLR sequential(*setup.optimizer, {lr::LinearLR(*setup.optimizer), lr::ExponentialLR(*setup.optimizer, 0.5)},
                              {5});
  CHECK(sequential.to_string().find("SequentialLR(schedulers=[LinearLR(start_factor=") == 0);
}

namespace {

// The keys of the state `scheduler.save()` writes.
template <class S>
std::set<std::string> saved_keys(const S& scheduler) {
  torch::serialize::OutputArchive out;
  scheduler.save(out);
  std::stringstream bytes;
  out.save_to(bytes);
  torch::serialize::InputArchive in;
  in.load_from(bytes);
  torch::serialize::InputArchive state;
  REQUIRE(in.try_read("lr_scheduler", state));
  const auto keys = state.keys();
  return {keys.begin(), keys.end()};
}

// Every field of the scheduler's options table is printed by to_string() and saved by save().
template <class S>
void check_described(const S& scheduler) {
  INFO(scheduler.to_string());
  const auto keys = saved_keys(scheduler);
  std::size_t fields = 0;
  torchkit::detail::lr::for_each_field<std::remove_cvref_t<decltype(scheduler.options())>>([&](const auto& field) {
    const std::string name(field.name);
    INFO("field ", name);
    CHECK(scheduler.to_string().find(name + "=") != std::string::npos);
    CHECK(keys.contains(name));
    ++fields;
  });
  CHECK(fields > 0);
}

}  // namespace

TEST_CASE("each options struct's field table drives to_string, save and load") {
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.01}}});
  auto& optimizer = *setup.optimizer;
  check_described(lr::StepLR(optimizer, 3));
  check_described(lr::MultiStepLR(optimizer, {2, 4}));
  check_described(lr::ConstantLR(optimizer));
  check_described(lr::LinearLR(optimizer));
  check_described(lr::ExponentialLR(optimizer, 0.9));
  check_described(lr::PolynomialLR(optimizer));
  check_described(lr::CosineAnnealingLR(optimizer, 10));
  check_described(lr::CosineAnnealingWarmRestarts(optimizer, 10));
  check_described(lr::LambdaLR(optimizer, lambda_named("exp095")));
  check_described(lr::MultiplicativeLR(optimizer, lambda_named("const098")));
  check_described(lr::OneCycleLR(optimizer, 0.1, 10));
  check_described(lr::CyclicLR(optimizer, 0.01, 0.1));
  lr::ReduceLROnPlateau plateau(optimizer);
  check_described(plateau);

  // load() reads every field back, and refuses a value the field's check refuses, naming the
  // public function and the field.
  lr::LinearLR saved(optimizer, {.start_factor = 0.25, .end_factor = 0.75, .total_iters = 7});
  torch::serialize::OutputArchive out;
  saved.save(out);
  std::stringstream bytes;
  out.save_to(bytes);
  torch::serialize::InputArchive in;
  in.load_from(bytes);
  lr::LinearLR loaded(optimizer);
  loaded.load(in);
  CHECK(loaded.options().start_factor == 0.25);
  CHECK(loaded.options().end_factor == 0.75);
  CHECK(loaded.options().total_iters == 7);
  CHECK(loaded.to_string() == saved.to_string());

  // A custom scale_fn is not saved: loading requires the scheduler to have one again.
  const auto with_fn = lr::CyclicLR(optimizer, {.base_lr = 0.01, .max_lr = 0.1, .scale_fn = scale_fn_named("slow_decay")});
  torch::serialize::OutputArchive fn_out;
  with_fn.save(fn_out);
  std::stringstream fn_bytes;
  fn_out.save_to(fn_bytes);
  torch::serialize::InputArchive fn_in;
  fn_in.load_from(fn_bytes);
  lr::CyclicLR without(optimizer, 0.01, 0.1);
  CHECK_THROWS_WITH_AS(without.load(fn_in),
                       doctest::Contains("CyclicLR::load: the archive was saved with a scale_fn, this scheduler has none"),
                       torchkit::Error);
}

namespace {

// A scheduler written as the built-in ones are: an options struct with its field table, and a
// rule (here the multiplicative shape). Its constructor only passes the options on.
struct HalvingOptions {
  int64_t every = 2;
  static constexpr auto fields() {
    return std::tuple{torchkit::detail::lr::field("every", &HalvingOptions::every, torchkit::detail::lr::check_count)};
  }
};

struct HalvingRule {
  static constexpr std::string_view name = "Halving";
  using Options = HalvingOptions;
  static double factor(const Options& options, int64_t epoch) {
    return epoch > 0 && epoch % options.every == 0 ? 0.5 : 1.0;
  }
  static double closed_factor(const Options& options, int64_t epoch) {
    return std::pow(0.5, static_cast<double>(epoch / options.every));
  }
};

class Halving final : public lr::RuleScheduler<HalvingRule> {
 public:
  Halving(torch::optim::Optimizer& optimizer, HalvingOptions options) : RuleScheduler(optimizer, options) {}
};

}  // namespace

TEST_CASE("a new scheduler is an options table and a rule: RuleScheduler finishes its construction") {
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.8, 0.2}}});
  auto& optimizer = *setup.optimizer;
  Halving halving(optimizer, {.every = 2});
  CHECK(halving.last_epoch() == 0);  // the initial step, taken by the base
  CHECK(halving.base_lrs() == std::vector<double>{0.8, 0.2});
  halving.step();
  halving.step();
  CHECK(halving.last_lr() == std::vector<double>{0.4, 0.1});
  CHECK(halving.to_string() == "Halving(every=2) last_epoch=2 last_lr=[0.4, 0.1]");
  CHECK_THROWS_WITH_AS(Halving(optimizer, {.every = 0}),
                       doctest::Contains("Halving: Expected positive integer every, but got 0"), torchkit::Error);
  CHECK(lrs_of(optimizer) == std::vector<double>{0.4, 0.1});

  // At a milestone SequentialLR starts it from its closed form.
  auto other = make_optimizer({{"type", "sgd"}, {"lrs", {1.0}}});
  lr::SequentialLR sequential(*other.optimizer,
                              {lr::ConstantLR(*other.optimizer, {.factor = 0.5, .total_iters = 10}),
                               Halving(*other.optimizer, {.every = 1})},
                              {3});
  const std::vector<double> expected{0.5, 0.5, 0.5, 1.0, 0.5, 0.25};
  for (std::size_t epoch = 0; epoch < expected.size(); ++epoch) {
    INFO("epoch ", epoch);
    CHECK(sequential.last_lr()[0] == expected[epoch]);
    sequential.step();
  }
}

// ---------------------------------------------------------------------------------------------
// SWALR (lr/swa.hpp) against torch.optim.swa_utils.SWALR (tests/golden/swa.json, swa_golden.py)
// ---------------------------------------------------------------------------------------------

namespace {

// swa_golden.py's optimizer: SGD (momentum 0.9) with three groups; `before` steps of
// CosineAnnealingLR(T_max=40, eta_min=0.001) first, so that SWALR starts where a scheduler left
// the lrs.
Setup swa_optimizer(const json& case_) {
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.03, 0.5}}, {"momentum", 0.9}});
  const auto before = case_.value("before", 0);
  if (before > 0) {
    lr::CosineAnnealingLR warm(*setup.optimizer, {.T_max = 40, .eta_min = 0.001});
    for (int step = 0; step < before; ++step) {
      warm.step();
    }
  }
  return setup;
}

}  // namespace

TEST_CASE("SWALR reproduces PyTorch 1.13's sequence, cos and linear, per group, to 1e-12") {
  static const json swa = torchkit::test::load_golden("swa.json");
  std::set<std::string> strategies;
  for (const auto& case_ : swa.at("cases")) {
    INFO("case: ", case_.at("args").dump(), " before=", case_.at("before").get<int>());
    auto setup = swa_optimizer(case_);
    const auto options = options_from<lr::SWALROptions>(case_.at("args"));
    strategies.insert(options.anneal_strategy);
    lr::SWALR scheduler(*setup.optimizer, options);
    check_row(case_, 0, *setup.optimizer, scheduler.last_lr());
    continue_case(case_, *setup.optimizer, scheduler, 0);
    CHECK(case_.at("steps").get<int>() >= 200);
  }
  CHECK(strategies == std::set<std::string>{"cos", "linear"});
  CHECK(swa.at("cases").size() >= 9);
}

TEST_CASE("SWALR: the scalar, per-group and options forms agree; swa_lrs() per group") {
  auto a = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.03}}});
  auto b = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.03}}});
  auto c = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.03}}});
  lr::SWALR scalar(*a.optimizer, 0.05, {.anneal_epochs = 4, .anneal_strategy = "linear"});
  lr::SWALR per_group(*b.optimizer, std::vector<double>{0.05, 0.05}, {.anneal_epochs = 4, .anneal_strategy = "linear"});
  lr::SWALR options(*c.optimizer, {.swa_lr = 0.05, .anneal_epochs = 4, .anneal_strategy = "linear"});
  CHECK(scalar.swa_lrs() == std::vector<double>{0.05, 0.05});
  CHECK(per_group.swa_lrs() == std::vector<double>{0.05, 0.05});
  for (int step = 0; step < 6; ++step) {
    scalar.step();
    per_group.step();
    options.step();
    CHECK(scalar.last_lr() == per_group.last_lr());
    CHECK(scalar.last_lr() == options.last_lr());
  }
  CHECK(scalar.last_lr() == std::vector<double>{0.05, 0.05});  // annealed, then held
  CHECK(scalar.to_string() ==
        "SWALR(swa_lr=0.05, anneal_epochs=4, anneal_strategy='linear') last_epoch=6 last_lr=[0.05, 0.05]");
  check_described(lr::SWALR(*a.optimizer, 0.05));
}

TEST_CASE("SWALR: a run stopped at step k and resumed from archives continues exactly") {
  static const json swa = torchkit::test::load_golden("swa.json");
  for (const auto& case_ : swa.at("cases")) {
    for (const std::size_t stop : {std::size_t{0}, std::size_t{1}, std::size_t{20}, std::size_t{151}}) {
      INFO("case: ", case_.at("args").dump(), " stopped after ", stop, " steps");
      std::stringstream checkpoint;
      {
        auto setup = swa_optimizer(case_);
        lr::SWALR scheduler(*setup.optimizer, options_from<lr::SWALROptions>(case_.at("args")));
        for (std::size_t step = 0; step < stop; ++step) {
          scheduler.step();
        }
        torch::serialize::OutputArchive archive;
        setup.optimizer->save(archive);
        scheduler.save(archive);
        archive.save_to(checkpoint);
      }
      // The resumed run is constructed with other arguments: load() restores the saved ones.
      auto setup = swa_optimizer(case_);
      lr::SWALR scheduler(*setup.optimizer, 0.9, {.anneal_epochs = 2});
      torch::serialize::InputArchive archive;
      archive.load_from(checkpoint);
      setup.optimizer->load(archive);
      scheduler.load(archive);
      CHECK(scheduler.last_epoch() == static_cast<int64_t>(stop));
      check_row(case_, stop, *setup.optimizer, scheduler.last_lr());
      continue_case(case_, *setup.optimizer, scheduler, stop);
    }
  }
}

TEST_CASE("SWALR: Python's errors, with Python's wording, and the optimizer left as it was") {
  static const json swa = torchkit::test::load_golden("swa.json");
  for (const auto& error : swa.at("errors")) {
    INFO("args: ", error.at("args").dump(), "\nPython: ", error.at("message").get<std::string>());
    const auto groups = error.at("groups").get<std::size_t>();
    const std::vector<double> all{0.1, 0.03, 0.5};
    auto setup = make_optimizer({{"type", "sgd"}, {"lrs", std::vector<double>(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(groups))}});
    const auto before = lrs_of(*setup.optimizer);
    const auto message = message_of<torchkit::Error>(
        [&] { lr::SWALR scheduler(*setup.optimizer, options_from<lr::SWALROptions>(error.at("args"))); });
    CHECK(message.find("SWALR: " + python_message(error)) != std::string::npos);
    CHECK(lrs_of(*setup.optimizer) == before);
  }
  // What Python lets through: a negative, infinite or missing SWA lr.
  auto setup = make_optimizer({{"type", "sgd"}, {"lrs", {0.1, 0.03}}});
  CHECK_THROWS_WITH_AS(lr::SWALR(*setup.optimizer, -0.5), doctest::Contains("SWALR: swa_lr"), torchkit::Error);
  CHECK_THROWS_WITH_AS(lr::SWALR(*setup.optimizer, std::vector<double>{0.1, std::numeric_limits<double>::infinity()}),
                       doctest::Contains("SWALR: swa_lr"), torchkit::Error);
  CHECK_THROWS_WITH_AS(lr::SWALR(*setup.optimizer, lr::SWALROptions{}), doctest::Contains("SWALR: swa_lr is required"),
                       torchkit::Error);
  CHECK(lrs_of(*setup.optimizer) == std::vector<double>{0.1, 0.03});
}

TEST_CASE("SWALR after a cosine inside SequentialLR: PyTorch 1.13's 'cosine, then SWA' schedule") {
  static const json swa = torchkit::test::load_golden("swa.json");
  REQUIRE(swa.at("sequential").size() >= 2);
  for (const auto& case_ : swa.at("sequential")) {
    INFO("case: ", case_.at("args").dump(), " milestone ", case_.at("milestone").get<int64_t>());
    auto setup = swa_optimizer(json::object());
    auto& optimizer = *setup.optimizer;
    lr::SequentialLR schedule(optimizer,
                              {lr::CosineAnnealingLR(optimizer, case_.at("T_max").get<int64_t>()),
                               lr::SWALR(optimizer, options_from<lr::SWALROptions>(case_.at("args")))},
                              {case_.at("milestone").get<int64_t>()});
    check_row(case_, 0, optimizer, schedule.last_lr());
    continue_case(case_, optimizer, schedule, 0);
  }
}
