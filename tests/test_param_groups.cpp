// Tests for param_groups.hpp (tip 9).
#include <torchkit/param_groups.hpp>
#include <torchkit/freeze.hpp>

#include "test_support.hpp"
#include "vgg_tip_network.hpp"

#include <cmath>
#include <functional>
#include <limits>
#include <map>

namespace {

using torchkit::test::message_of;
using torchkit::test::parameter_named;

/// Whether `build` accepts these options (checked without compiling the call).
template <class O>
concept BuildableWith = requires(const torchkit::ParamGroupBuilder& builder, const O& options) { builder.build(options); };

/// Optimizer options with weight decay but no learning rate.
struct NoLearningRateOptions : torch::optim::OptimizerOptions {
  [[nodiscard]] double weight_decay() const { return 0.0; }
  NoLearningRateOptions& weight_decay(double /*value*/) { return *this; }
};


/// The tensors of an optimizer group, compared by identity with `expected` (names in `net`).
void check_members(const torch::optim::OptimizerParamGroup& group, const torch::nn::Module& net,
                   const std::vector<std::string>& expected) {
  REQUIRE(group.params().size() == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    CHECK_MESSAGE(group.params()[i].is_same(parameter_named(net, expected[i])), expected[i]);
  }
}

template <class O>
const O& options_of(const torch::optim::OptimizerParamGroup& group) {
  return dynamic_cast<const O&>(const_cast<torch::optim::OptimizerParamGroup&>(group).options());
}

/// Every option of every optimizer group equals the planned group's (the options types'
/// operator== compares every field).
template <class Options>
void check_options_read_back(const torch::optim::Optimizer& optimizer,
                             const std::vector<torch::optim::OptimizerParamGroup>& groups) {
  REQUIRE(optimizer.param_groups().size() == groups.size());
  for (std::size_t g = 0; g < groups.size(); ++g) {
    CAPTURE(g);
    CHECK(options_of<Options>(optimizer.param_groups()[g]) == options_of<Options>(groups[g]));
  }
}

/// Every parameter's value and gradient, by name.
struct Snapshot {
  std::map<std::string, at::Tensor> values, grads;
};
Snapshot snapshot(const torch::nn::Module& net) {
  Snapshot result;
  for (const auto& item : net.named_parameters()) {
    result.values[item.key()] = item.value().detach().clone();
    if (item.value().grad().defined()) {
      result.grads[item.key()] = item.value().grad().detach().clone();
    }
  }
  return result;
}

at::Tensor golden_parameter(const nlohmann::json& values, const at::Tensor& like) {
  return torch::tensor(values.get<std::vector<double>>(), torch::kDouble).reshape(like.sizes());
}

// The first step of each optimizer, by hand (default betas/alpha/eps, no momentum), for one
// parameter p with gradient g in a group with learning rate lr and weight decay wd.
at::Tensor sgd_first_step(const at::Tensor& p, const at::Tensor& g, double lr, double wd) {
  return p - lr * (g + wd * p);
}
at::Tensor adam_first_step(const at::Tensor& p, const at::Tensor& g, double lr, double wd) {
  const double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  const auto decayed = g + wd * p;
  const auto m = (1 - beta1) * decayed;
  const auto v = (1 - beta2) * decayed * decayed;
  return p - (lr / (1 - beta1)) * m / (v.sqrt() / std::sqrt(1 - beta2) + eps);
}
at::Tensor adamw_first_step(const at::Tensor& p, const at::Tensor& g, double lr, double wd) {
  const double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  const auto m = (1 - beta1) * g;
  const auto v = (1 - beta2) * g * g;
  return p * (1 - lr * wd) - (lr / (1 - beta1)) * m / (v.sqrt() / std::sqrt(1 - beta2) + eps);
}
at::Tensor rmsprop_first_step(const at::Tensor& p, const at::Tensor& g, double lr, double wd) {
  const double alpha = 0.99, eps = 1e-8;
  const auto decayed = g + wd * p;
  const auto square_average = (1 - alpha) * decayed * decayed;
  return p - lr * decayed / (square_average.sqrt() + eps);
}
at::Tensor adagrad_first_step(const at::Tensor& p, const at::Tensor& g, double lr, double wd) {
  const double eps = 1e-10;
  const auto decayed = g + wd * p;
  const auto sum = decayed * decayed;
  return p - lr * decayed / (sum.sqrt() + eps);
}

/// Builds three groups on the tip's network with its first layer frozen, takes one optimizer
/// step, and compares every parameter with the hand-computed update of the group it belongs to
/// (decided here from the names, independently of torchkit's matching).
template <class Optimizer, class Options>
void check_first_step(const Options& defaults,
                      const std::function<at::Tensor(const at::Tensor&, const at::Tensor&, double, double)>& update) {
  auto net = torchkit::test::deterministic_network();
  (void)torchkit::freeze(net, {"cnn.VGG_16.convolution1_1"});

  torchkit::ParamGroupBuilder builder(net);
  builder.add({"*convolution1*"}, {.lr = 0.01})
      .add({"cnn.VGG_16.convolution2_1"}, {.lr = 0.003, .weight_decay = 0.02})
      .rest({.weight_decay = 0.0});
  auto groups = builder.build(defaults);
  REQUIRE(groups.size() == 3);
  check_members(groups[0], *net, {"cnn.VGG_16.convolution1_2.weight", "cnn.VGG_16.convolution1_2.bias"});
  check_members(groups[1], *net, {"cnn.VGG_16.convolution2_1.weight", "cnn.VGG_16.convolution2_1.bias"});
  check_members(groups[2], *net, {"cnn.VGG_16.convolution2_2.weight", "cnn.VGG_16.convolution2_2.bias"});
  CHECK(options_of<Options>(groups[0]).lr() == 0.01);
  CHECK(options_of<Options>(groups[0]).weight_decay() == defaults.weight_decay());
  CHECK(options_of<Options>(groups[1]).lr() == 0.003);
  CHECK(options_of<Options>(groups[1]).weight_decay() == 0.02);
  CHECK(options_of<Options>(groups[2]).lr() == defaults.lr());
  CHECK(options_of<Options>(groups[2]).weight_decay() == 0.0);

  auto optimizer = builder.make<Optimizer>(defaults);
  check_options_read_back<Options>(optimizer, groups);
  optimizer.zero_grad();
  net->forward(torchkit::test::deterministic_input()).pow(2).mean().backward();
  const Snapshot before = snapshot(*net);
  optimizer.step();

  for (const auto& item : net->named_parameters()) {
    const std::string& name = item.key();
    const at::Tensor& p0 = before.values.at(name);
    if (name.starts_with("cnn.VGG_16.convolution1_1.")) {
      CHECK_MESSAGE(torch::equal(item.value(), p0), name);  // frozen: bit-identical
      CHECK_MESSAGE(before.grads.count(name) == 0, name);
      continue;
    }
    double lr = defaults.lr();
    double wd = defaults.weight_decay();
    if (name.starts_with("cnn.VGG_16.convolution1_2.")) {
      lr = 0.01;
    } else if (name.starts_with("cnn.VGG_16.convolution2_1.")) {
      lr = 0.003;
      wd = 0.02;
    } else {
      wd = 0.0;
    }
    const auto expected = update(p0, before.grads.at(name), lr, wd);
    CHECK_MESSAGE(!torch::equal(item.value(), p0), name);
    CHECK_MESSAGE(torch::allclose(item.value(), expected, 1e-12, 1e-15), name);
  }
}

}  // namespace

TEST_CASE("tip 9: two groups with their own lr; weight_decay and every other option from the defaults") {
  auto net = torchkit::test::deterministic_network();
  torchkit::ParamGroupBuilder builder(net);
  builder.add({"*convolution1*"}, {.lr = 0.01}).add({"*convolution2*"}, {.lr = 0.001});

  const auto defaults = torch::optim::AdamOptions(1e-3).weight_decay(1e-3).betas({0.8, 0.88}).eps(1e-6).amsgrad(true);
  const auto groups = builder.build(defaults);
  REQUIRE(groups.size() == 2);
  check_members(groups[0], *net,
                {"cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution1_1.bias", "cnn.VGG_16.convolution1_2.weight",
                 "cnn.VGG_16.convolution1_2.bias"});
  check_members(groups[1], *net,
                {"cnn.VGG_16.convolution2_1.weight", "cnn.VGG_16.convolution2_1.bias", "cnn.VGG_16.convolution2_2.weight",
                 "cnn.VGG_16.convolution2_2.bias"});
  const double lrs[] = {0.01, 0.001};
  for (std::size_t i = 0; i < groups.size(); ++i) {
    const auto& options = options_of<torch::optim::AdamOptions>(groups[i]);
    CHECK(options.lr() == lrs[i]);
    CHECK(options.weight_decay() == 1e-3);
    CHECK(std::get<0>(options.betas()) == 0.8);
    CHECK(std::get<1>(options.betas()) == 0.88);
    CHECK(options.eps() == 1e-6);
    CHECK(options.amsgrad());
  }
  CHECK(builder.group_names() == std::vector<std::string>{"\"*convolution1*\"", "\"*convolution2*\""});
}

TEST_CASE("tip 9: two Adam steps with the tip's groups match Python") {
  const auto golden = torchkit::test::load_golden("param_groups.json").at("tip9_adam_two_steps");
  auto net = torchkit::test::deterministic_network();
  torchkit::ParamGroupBuilder builder(net);
  builder.add({"*convolution1*"}, {.lr = 0.01}).add({"*convolution2*"}, {.lr = 0.001}).rest();
  const auto defaults = torch::optim::AdamOptions(1e-3).weight_decay(1e-3);
  auto optimizer = builder.make<torch::optim::Adam>(defaults);
  REQUIRE(optimizer.param_groups().size() == 2);  // as in Python: rest() found nothing left over

  const auto input = torchkit::test::deterministic_input();
  for (int step = 0; step < 2; ++step) {
    optimizer.zero_grad();
    net->forward(input).pow(2).mean().backward();
    optimizer.step();
  }
  for (const auto& item : net->named_parameters()) {
    CHECK_MESSAGE(torch::allclose(item.value(), golden_parameter(golden.at(item.key()), item.value()), 1e-10, 1e-12),
                  item.key());
  }
}

TEST_CASE("one step of SGD, Adam, AdamW, RMSprop and Adagrad equals the hand-computed update of each group") {
  SUBCASE("SGD") {
    check_first_step<torch::optim::SGD>(torch::optim::SGDOptions(0.002).weight_decay(0.001), sgd_first_step);
  }
  SUBCASE("Adam") {
    check_first_step<torch::optim::Adam>(torch::optim::AdamOptions(0.002).weight_decay(0.001), adam_first_step);
  }
  SUBCASE("AdamW") {
    check_first_step<torch::optim::AdamW>(torch::optim::AdamWOptions(0.002).weight_decay(0.001), adamw_first_step);
  }
  SUBCASE("RMSprop") {
    check_first_step<torch::optim::RMSprop>(torch::optim::RMSpropOptions(0.002).weight_decay(0.001), rmsprop_first_step);
  }
  SUBCASE("Adagrad") {
    check_first_step<torch::optim::Adagrad>(torch::optim::AdagradOptions(0.002).weight_decay(0.001), adagrad_first_step);
  }
}

TEST_CASE("build is constrained to options with lr and weight_decay") {
  static_assert(BuildableWith<torch::optim::SGDOptions>);
  static_assert(BuildableWith<torch::optim::AdamOptions>);
  static_assert(BuildableWith<torch::optim::AdamWOptions>);
  static_assert(BuildableWith<torch::optim::RMSpropOptions>);
  static_assert(BuildableWith<torch::optim::AdagradOptions>);
  static_assert(!BuildableWith<torch::optim::LBFGSOptions>);  // has lr, no weight_decay
  static_assert(!BuildableWith<NoLearningRateOptions>);
  static_assert(!BuildableWith<double>);
  NoLearningRateOptions options;  // the type itself is usable; build just refuses it
  CHECK(options.weight_decay() == 0.0);
}

TEST_CASE("no_weight_decay splits every group into a decay part and a no-decay part, matching Python") {
  const auto golden = torchkit::test::load_golden("param_groups.json").at("no_weight_decay_adamw_two_steps");
  auto net = torchkit::test::deterministic_network();
  torchkit::ParamGroupBuilder builder(net);
  builder.add({"*convolution1*"}, {.lr = 0.01, .name = "conv1"})
      .add({"*convolution2*"}, {.lr = 0.001, .name = "conv2"})
      .no_weight_decay({"*.bias"});
  const auto defaults = torch::optim::AdamWOptions(1e-3).weight_decay(0.05);
  auto groups = builder.build(defaults);
  REQUIRE(groups.size() == 4);
  check_members(groups[0], *net, {"cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution1_2.weight"});
  check_members(groups[1], *net, {"cnn.VGG_16.convolution1_1.bias", "cnn.VGG_16.convolution1_2.bias"});
  check_members(groups[2], *net, {"cnn.VGG_16.convolution2_1.weight", "cnn.VGG_16.convolution2_2.weight"});
  check_members(groups[3], *net, {"cnn.VGG_16.convolution2_1.bias", "cnn.VGG_16.convolution2_2.bias"});
  const double lrs[] = {0.01, 0.01, 0.001, 0.001};
  const double decays[] = {0.05, 0.0, 0.05, 0.0};
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(options_of<torch::optim::AdamWOptions>(groups[i]).lr() == lrs[i]);
    CHECK(options_of<torch::optim::AdamWOptions>(groups[i]).weight_decay() == decays[i]);
  }
  CHECK(builder.group_names() ==
        std::vector<std::string>{"conv1", "conv1 (no weight decay)", "conv2", "conv2 (no weight decay)"});

  auto optimizer = builder.make<torch::optim::AdamW>(defaults);
  check_options_read_back<torch::optim::AdamWOptions>(optimizer, groups);
  const auto input = torchkit::test::deterministic_input();
  for (int step = 0; step < 2; ++step) {
    optimizer.zero_grad();
    net->forward(input).pow(2).mean().backward();
    optimizer.step();
  }
  for (const auto& item : net->named_parameters()) {
    CHECK_MESSAGE(torch::allclose(item.value(), golden_parameter(golden.at(item.key()), item.value()), 1e-10, 1e-12),
                  item.key());
  }
}

TEST_CASE("no_weight_decay gives weight decay 0 even where the group sets one: one SGD step by hand") {
  auto net = torchkit::test::deterministic_network();
  torchkit::ParamGroupBuilder builder(net);
  builder.add({"cnn.VGG_16.convolution1_1"}, {.lr = 0.1, .weight_decay = 0.5})
      .rest({.lr = 0.05})
      .no_weight_decay({"*.bias"})
      .no_weight_decay({torchkit::regex(".*2_2\\.weight")});
  const auto defaults = torch::optim::SGDOptions(0.01).weight_decay(0.2);
  auto optimizer = builder.make<torch::optim::SGD>(defaults);
  REQUIRE(optimizer.param_groups().size() == 4);

  optimizer.zero_grad();
  net->forward(torchkit::test::deterministic_input()).pow(2).mean().backward();
  const Snapshot before = snapshot(*net);
  optimizer.step();
  for (const auto& item : net->named_parameters()) {
    const std::string& name = item.key();
    const bool first = name.starts_with("cnn.VGG_16.convolution1_1.");
    const bool no_decay = name.ends_with(".bias") || name == "cnn.VGG_16.convolution2_2.weight";
    const double lr = first ? 0.1 : 0.05;
    const double wd = no_decay ? 0.0 : (first ? 0.5 : 0.2);
    const auto expected = sgd_first_step(before.values.at(name), before.grads.at(name), lr, wd);
    CHECK_MESSAGE(torch::allclose(item.value(), expected, 1e-12, 1e-15), name);
  }
}

TEST_CASE("the first matching group wins; rest() collects the others where it was declared") {
  auto net = torchkit::test::deterministic_network();
  {
    torchkit::ParamGroupBuilder builder(net);
    builder.add({"*.weight"}, {.lr = 0.1}).add({"cnn.VGG_16.convolution1_1"}, {.lr = 0.2}).rest({.lr = 0.3});
    const auto groups = builder.build(torch::optim::SGDOptions(0.01));
    REQUIRE(groups.size() == 3);
    check_members(groups[0], *net,
                  {"cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution1_2.weight",
                   "cnn.VGG_16.convolution2_1.weight", "cnn.VGG_16.convolution2_2.weight"});
    check_members(groups[1], *net, {"cnn.VGG_16.convolution1_1.bias"});
    check_members(groups[2], *net,
                  {"cnn.VGG_16.convolution1_2.bias", "cnn.VGG_16.convolution2_1.bias", "cnn.VGG_16.convolution2_2.bias"});
    CHECK(options_of<torch::optim::SGDOptions>(groups[2]).lr() == 0.3);
  }
  {
    torchkit::ParamGroupBuilder builder(net);
    builder.rest({.lr = 0.5, .name = "backbone"}).add({"*convolution2_2*"}, {.lr = 0.1});
    const auto groups = builder.build(torch::optim::SGDOptions(0.01));
    REQUIRE(groups.size() == 2);
    CHECK(groups[0].params().size() == 6);
    check_members(groups[1], *net, {"cnn.VGG_16.convolution2_2.weight", "cnn.VGG_16.convolution2_2.bias"});
    CHECK(builder.group_names() == std::vector<std::string>{"backbone", "\"*convolution2_2*\""});
  }
}

TEST_CASE("a rest() group with nothing left over adds no optimizer group, also with no_weight_decay") {
  auto net = torchkit::test::deterministic_network();
  torchkit::ParamGroupBuilder builder(net);
  builder.add({"*convolution1*"}, {.lr = 0.01}).add({"*convolution2*"}, {.lr = 0.001}).rest({.lr = 0.5});
  CHECK(builder.build(torch::optim::SGDOptions(0.1)).size() == 2);
  builder.no_weight_decay({"*.bias"});
  CHECK(builder.group_names() == std::vector<std::string>{"\"*convolution1*\"", "\"*convolution1*\" (no weight decay)",
                                                          "\"*convolution2*\"", "\"*convolution2*\" (no weight decay)"});
  // Once something is left over, rest() is there, split like the others.
  (void)torchkit::freeze(net, {"cnn.VGG_16.convolution2_2"});
  torchkit::ParamGroupBuilder partial(net);
  partial.include_frozen().add({"*convolution1*"}).add({"cnn.VGG_16.convolution2_1"}).rest({.lr = 0.5}).no_weight_decay({"*.bias"});
  const auto groups = partial.build(torch::optim::SGDOptions(0.1));
  REQUIRE(groups.size() == 6);
  check_members(groups[4], *net, {"cnn.VGG_16.convolution2_2.weight"});
  check_members(groups[5], *net, {"cnn.VGG_16.convolution2_2.bias"});
  CHECK(options_of<torch::optim::SGDOptions>(groups[5]).lr() == 0.5);
  CHECK(options_of<torch::optim::SGDOptions>(groups[5]).weight_decay() == 0.0);
}

TEST_CASE("frozen parameters are left out unless include_frozen(); a group of frozen matches stays, empty") {
  auto net = torchkit::test::deterministic_network();
  (void)torchkit::freeze(net, {"cnn.VGG_16.convolution1_1"});
  torchkit::ParamGroupBuilder builder(net);
  builder.add({"cnn.VGG_16.convolution1_1"}, {.lr = 0.1}).add({"*convolution1*"}, {.lr = 0.2}).rest();
  auto groups = builder.build(torch::optim::AdamOptions(0.01));
  REQUIRE(groups.size() == 3);
  CHECK(groups[0].params().empty());
  check_members(groups[1], *net, {"cnn.VGG_16.convolution1_2.weight", "cnn.VGG_16.convolution1_2.bias"});
  CHECK(groups[2].params().size() == 4);
  torch::optim::Adam optimizer(std::move(groups), torch::optim::AdamOptions(0.01));  // LibTorch takes the empty group

  builder.include_frozen();
  groups = builder.build(torch::optim::AdamOptions(0.01));
  check_members(groups[0], *net, {"cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution1_1.bias"});
  CHECK(groups[1].params().size() == 2);

  // Frozen flags are read at build time.
  builder.include_frozen(false);
  (void)torchkit::unfreeze(net, {"*"});
  CHECK(builder.build(torch::optim::AdamOptions(0.01))[0].params().size() == 2);
}

TEST_CASE("a tied tensor appears once and is matched under any of its names") {
  auto model = std::make_shared<torchkit::test::TiedModel>();
  torchkit::ParamGroupBuilder builder(model);
  builder.add({"decoder.weight"}, {.lr = 0.5}).rest();
  auto groups = builder.build(torch::optim::SGDOptions(0.1));
  REQUIRE(groups.size() == 2);
  REQUIRE(groups[0].params().size() == 1);
  CHECK(groups[0].params()[0].is_same(model->encoder->weight));
  REQUIRE(groups[1].params().size() == 2);
  CHECK(groups[1].params()[0].is_same(model->encoder->bias));
  CHECK(groups[1].params()[1].is_same(model->decoder->bias));
  // LibTorch refuses a tensor in two groups; this must construct.
  torch::optim::SGD optimizer(std::move(groups), torch::optim::SGDOptions(0.1));
  CHECK(optimizer.param_groups().size() == 2);
}

TEST_CASE("describe() prints groups, options and parameters") {
  torch::nn::Sequential model(torch::nn::Linear(2, 3), torch::nn::ReLU(), torch::nn::Linear(3, 1));
  model[2]->as<torch::nn::Linear>()->bias.requires_grad_(false);
  torchkit::ParamGroupBuilder builder(model);
  builder.add({"0"}, {.lr = 0.1, .name = "first"}).rest().no_weight_decay({"*.bias"});
  CHECK(builder.describe(torch::optim::SGDOptions(0.01).weight_decay(0.001)) ==
        "4 optimizer groups, 3 parameters (12 elements)\n"
        "group 0: first  lr=0.1  weight_decay=0.001 (default)  1 parameter (6 elements)\n"
        "    0.weight  [3, 2]\n"
        "group 1: first (no weight decay)  lr=0.1  weight_decay=0 (no_weight_decay)  1 parameter (3 elements)\n"
        "    0.bias    [3]\n"
        "group 2: rest  lr=0.01 (default)  weight_decay=0.001 (default)  1 parameter (3 elements)\n"
        "    2.weight  [1, 3]\n"
        "group 3: rest (no weight decay)  lr=0.01 (default)  weight_decay=0 (no_weight_decay)  0 parameters (0 elements)\n"
        "left out (frozen): \"2.bias\"\n");
  const auto plain = builder.describe();
  CHECK(plain.find("group 0: first  lr=0.1  weight_decay=default  1 parameter (6 elements)\n") != std::string::npos);
  CHECK(plain.find("group 2: rest  lr=default  weight_decay=default") != std::string::npos);
}

TEST_CASE("build names what is wrong: unmatched pattern, unclaimed parameter, bad lr or weight decay, ...") {
  auto net = torchkit::test::deterministic_network();
  const auto flags_before = torchkit::requires_grad_report(net).to_string();
  const auto defaults = torch::optim::AdamOptions(1e-3).weight_decay(1e-3);

  SUBCASE("a pattern that matches nothing lists the closest names") {
    torchkit::ParamGroupBuilder builder(net);
    builder.add({"*convolution1*"}, {.lr = 0.01}).add({"cnn.VGG_16.convolution2_3"}, {.lr = 0.001}).rest();
    const auto message = message_of<torchkit::Error>([&] { (void)builder.build(defaults); });
    CHECK(message ==
          "ParamGroupBuilder::build: group 1 (\"cnn.VGG_16.convolution2_3\"): pattern \"cnn.VGG_16.convolution2_3\" "
          "(pattern 1 of 1) matches no parameter of the model (8 parameters); the closest names are "
          "\"cnn.VGG_16.convolution2_1.weight\", \"cnn.VGG_16.convolution2_1.bias\", \"cnn.VGG_16.convolution2_2.weight\"");
    CHECK_THROWS_WITH_AS((void)builder.describe(), doctest::Contains("ParamGroupBuilder::describe: group 1"), torchkit::Error);
  }
  SUBCASE("a no_weight_decay pattern that matches nothing") {
    torchkit::ParamGroupBuilder builder(net);
    builder.rest().no_weight_decay({"*.bias", "*norm*.weight"});
    CHECK_THROWS_WITH_AS((void)builder.build(defaults),
                         doctest::Contains("no_weight_decay: pattern \"*norm*.weight\" (pattern 2 of 2) matches no parameter"),
                         torchkit::Error);
  }
  SUBCASE("a trainable parameter in no group, without rest()") {
    torchkit::ParamGroupBuilder builder(net);
    builder.add({"*convolution1*"}, {.lr = 0.01}).add({"cnn.VGG_16.convolution2_2.bias"});
    const auto message = message_of<torchkit::Error>([&] { (void)builder.build(defaults); });
    CHECK(message ==
          "ParamGroupBuilder::build: 3 trainable parameter(s) belong to no group: \"cnn.VGG_16.convolution2_1.weight\", "
          "\"cnn.VGG_16.convolution2_1.bias\", \"cnn.VGG_16.convolution2_2.weight\"; add a group that matches them, or "
          "call rest(options) to collect the parameters no group claims");
    // Frozen ones need no group.
    (void)torchkit::freeze(net, {"cnn.VGG_16.convolution2_1", "cnn.VGG_16.convolution2_2.weight"});
    CHECK(builder.build(defaults).size() == 2);
    (void)torchkit::unfreeze(net, {"*"});
  }
  SUBCASE("negative, NaN or infinite lr and weight decay") {
    torchkit::ParamGroupBuilder negative_lr(net);
    negative_lr.add({"*convolution1*"}, {.lr = 0.01}).add({"*"}, {.lr = -0.1});
    CHECK(message_of<torchkit::Error>([&] { (void)negative_lr.build(defaults); }) ==
          "ParamGroupBuilder::build: the lr of group 1 (\"*\") must be a finite number >= 0, got -0.1");

    torchkit::ParamGroupBuilder nan_decay(net);
    nan_decay.rest({.weight_decay = std::numeric_limits<double>::quiet_NaN(), .name = "everything"});
    CHECK(message_of<torchkit::Error>([&] { (void)nan_decay.build(defaults); }) ==
          "ParamGroupBuilder::build: the weight_decay of group 0 (everything) must be a finite number >= 0, got nan");

    torchkit::ParamGroupBuilder fine(net);
    fine.rest();
    CHECK(message_of<torchkit::Error>([&] { (void)fine.build(torch::optim::SGDOptions(-0.5)); }) ==
          "ParamGroupBuilder::build: the defaults' lr must be a finite number >= 0, got -0.5");
    CHECK_THROWS_WITH_AS((void)fine.build(torch::optim::SGDOptions(0.1).weight_decay(-1)),
                         doctest::Contains("the defaults' weight_decay must be a finite number >= 0, got -1"), torchkit::Error);
    CHECK_THROWS_WITH_AS((void)fine.describe(torch::optim::SGDOptions(std::numeric_limits<double>::infinity())),
                         doctest::Contains("the defaults' lr must be a finite number >= 0, got inf"), torchkit::Error);
  }
  SUBCASE("empty patterns, empty lists, invalid regexes") {
    torchkit::ParamGroupBuilder empty_pattern(net);
    empty_pattern.add({"*convolution1*", ""}).rest();
    CHECK(message_of<torchkit::Error>([&] { (void)empty_pattern.build(defaults); }) ==
          "ParamGroupBuilder::build: group 0 (\"*convolution1*\", \"\"): pattern 2 of 2 is empty; expected a parameter "
          "name, module path, glob or torchkit::regex(...)");
    torchkit::ParamGroupBuilder empty_list(net);
    empty_list.add(std::vector<std::string>{}).rest();
    CHECK_THROWS_WITH_AS((void)empty_list.build(defaults), doctest::Contains("no patterns given"), torchkit::Error);
    CHECK_THROWS_WITH_AS((void)torchkit::regex("*conv"), doctest::Contains("\"*conv\" is not a valid regular expression"),
                         torchkit::Error);
  }
  SUBCASE("no groups, rest() twice, a shadowed group, nothing to optimize") {
    torchkit::ParamGroupBuilder none(net);
    CHECK_THROWS_WITH_AS((void)none.build(defaults), doctest::Contains("no groups were declared"), torchkit::Error);

    torchkit::ParamGroupBuilder twice(net);
    twice.rest({.lr = 0.1}).rest({.lr = 0.2});
    CHECK_THROWS_WITH_AS((void)twice.build(defaults), doctest::Contains("rest() was given twice (groups 0 and 1)"),
                         torchkit::Error);

    torchkit::ParamGroupBuilder shadowed(net);
    shadowed.add({"*convolution1*"}).add({"cnn.VGG_16.convolution1_1.bias"}, {.lr = 0.5}).rest();
    CHECK(message_of<torchkit::Error>([&] { (void)shadowed.build(defaults); }) ==
          "ParamGroupBuilder::build: group 1 (\"cnn.VGG_16.convolution1_1.bias\") gets no parameter: every parameter it "
          "matches (\"cnn.VGG_16.convolution1_1.bias\") was claimed by an earlier group, and a parameter joins the "
          "first group that matches it; reorder the groups or narrow the earlier patterns");

    (void)torchkit::freeze(net, {"*"});
    torchkit::ParamGroupBuilder frozen(net);
    frozen.rest();
    CHECK_THROWS_WITH_AS((void)frozen.build(defaults), doctest::Contains("nothing to optimize: all 8 parameters are frozen"),
                         torchkit::Error);
    CHECK(frozen.include_frozen().build(defaults).size() == 1);
    (void)torchkit::unfreeze(net, {"*"});

    torch::nn::ReLU no_parameters;
    torchkit::ParamGroupBuilder empty_model(no_parameters);
    empty_model.rest();
    CHECK(message_of<torchkit::Error>([&] { (void)empty_model.build(defaults); }) ==
          "ParamGroupBuilder::build: nothing to optimize: the model has no parameters");
  }
  CHECK(torchkit::requires_grad_report(net).to_string() == flags_before);
}

TEST_CASE("restore_group_options: groups mean what they say, also where the constructor overwrites them") {
  // RMSprop's constructor default lr is 0.01 and SGD's weight_decay is 0: LibTorch 2.14's
  // optimizer constructor takes such group values as "not set" and puts the defaults' there.
  auto net = torchkit::test::deterministic_network();
  torchkit::ParamGroupBuilder builder(net);
  builder.add({"*convolution1*"}, {.lr = 0.01}).rest({.weight_decay = 0.0});
  const auto defaults = torch::optim::RMSpropOptions(0.002).weight_decay(0.001).momentum(0.5);
  const auto groups = builder.build(defaults);
  REQUIRE(groups.size() == 2);

  torch::optim::RMSprop optimizer(groups, defaults);
  const bool overwritten = !(options_of<torch::optim::RMSpropOptions>(optimizer.param_groups()[0]) ==
                             options_of<torch::optim::RMSpropOptions>(groups[0])) ||
                           !(options_of<torch::optim::RMSpropOptions>(optimizer.param_groups()[1]) ==
                             options_of<torch::optim::RMSpropOptions>(groups[1]));
#if TORCHKIT_TORCH_AT_LEAST(2, 14)
  CHECK(overwritten);  // the trap this function exists for
#else
  CHECK_FALSE(overwritten);
#endif
  torchkit::restore_group_options(optimizer, groups);
  check_options_read_back<torch::optim::RMSpropOptions>(optimizer, groups);
  CHECK(options_of<torch::optim::RMSpropOptions>(optimizer.param_groups()[0]).lr() == 0.01);
  CHECK(options_of<torch::optim::RMSpropOptions>(optimizer.param_groups()[0]).momentum() == 0.5);
  CHECK(options_of<torch::optim::RMSpropOptions>(optimizer.param_groups()[1]).weight_decay() == 0.0);

  // make() gives the same groups directly, for SGD's weight_decay = 0 too.
  const auto sgd_defaults = torch::optim::SGDOptions(0.1).weight_decay(0.2).momentum(0.9);
  auto sgd = builder.make<torch::optim::SGD>(sgd_defaults);
  check_options_read_back<torch::optim::SGDOptions>(sgd, builder.build(sgd_defaults));
  CHECK(options_of<torch::optim::SGDOptions>(sgd.param_groups()[1]).weight_decay() == 0.0);
  CHECK(options_of<torch::optim::SGDOptions>(sgd.param_groups()[1]).lr() == 0.1);
}

TEST_CASE("restore_group_options refuses groups that are not the optimizer's, changing nothing") {
  auto net = torchkit::test::deterministic_network();
  torchkit::ParamGroupBuilder builder(net);
  builder.add({"*convolution1*"}, {.lr = 0.05}).rest();
  const auto defaults = torch::optim::SGDOptions(0.1);
  auto optimizer = builder.make<torch::optim::SGD>(defaults);
  const auto groups = builder.build(defaults);
  const auto unchanged = [&] {
    CHECK(options_of<torch::optim::SGDOptions>(optimizer.param_groups()[0]).lr() == 0.05);
    CHECK(options_of<torch::optim::SGDOptions>(optimizer.param_groups()[1]).lr() == 0.1);
  };

  std::vector<torch::optim::OptimizerParamGroup> one{groups[0]};
  one[0].set_options(std::make_unique<torch::optim::SGDOptions>(0.7));
  CHECK(message_of<torchkit::Error>([&] { torchkit::restore_group_options(optimizer, one); }) ==
        "restore_group_options: the optimizer has 2 parameter groups but 1 was given");
  unchanged();

  std::vector<torch::optim::OptimizerParamGroup> swapped{groups[1], groups[0]};
  CHECK_THROWS_WITH_AS(torchkit::restore_group_options(optimizer, swapped),
                       doctest::Contains("restore_group_options: tensor 0 of group 0 is not the tensor the optimizer holds there"),
                       torchkit::Error);
  unchanged();

  std::vector<torch::optim::OptimizerParamGroup> shorter{groups[0], groups[1]};
  shorter[1].params().pop_back();
  CHECK_THROWS_WITH_AS(torchkit::restore_group_options(optimizer, shorter),
                       doctest::Contains("group 1 of the optimizer has 4 tensors, the given group 3"), torchkit::Error);
  unchanged();

  std::vector<torch::optim::OptimizerParamGroup> other_tensors{groups[0], groups[1]};
  other_tensors[1].params()[0] = other_tensors[1].params()[0].detach().clone();
  other_tensors[0].set_options(std::make_unique<torch::optim::SGDOptions>(0.7));
  CHECK_THROWS_WITH_AS(torchkit::restore_group_options(optimizer, other_tensors),
                       doctest::Contains("tensor 0 of group 1 is not the tensor the optimizer holds there"),
                       torchkit::Error);
  unchanged();

  std::vector<torch::optim::OptimizerParamGroup> adam_options{groups[0], groups[1]};
  adam_options[1].set_options(std::make_unique<torch::optim::AdamOptions>(0.7));
  CHECK_THROWS_WITH_AS(torchkit::restore_group_options(optimizer, adam_options),
                       doctest::Contains("group 1 has options of type torch::optim::AdamOptions but the optimizer's are "
                                         "torch::optim::SGDOptions"),
                       torchkit::Error);
  unchanged();
}

// ---------------------------------------------------------------------------------------------
// layer_decay and no_weight_decay_1d, against a transcription of timm's rule
// (tests/golden/layer_decay.json, written by layer_decay_golden.py)
// ---------------------------------------------------------------------------------------------

#include <torch/optim/adamw.h>
#include <torchkit/lr/decay.hpp>

namespace {

// A module whose parameters have exactly the given dotted names and shapes (the modules on the
// way are plain torch::nn::Module).
std::shared_ptr<torch::nn::Module> module_with(const nlohmann::json& params) {
  auto root = std::make_shared<torch::nn::Module>();
  std::map<std::string, std::shared_ptr<torch::nn::Module>> modules{{"", root}};
  for (const auto& param : params) {
    const auto name = param.at("name").get<std::string>();
    std::string prefix;
    std::size_t start = 0;
    for (std::size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', start)) {
      const std::string part = name.substr(start, dot - start);
      const std::string path = prefix.empty() ? part : prefix + "." + part;
      if (!modules.contains(path)) {
        modules[path] = modules[prefix]->register_module(part, std::make_shared<torch::nn::Module>());
      }
      prefix = path;
      start = dot + 1;
    }
    modules[prefix]->register_parameter(name.substr(start), torch::zeros(param.at("shape").get<std::vector<int64_t>>()));
  }
  return root;
}

// The layers of timm's ViT group_matcher: stem, one per block, the final norm, then the rest.
std::vector<std::vector<std::string>> vit_layers(int depth) {
  std::vector<std::vector<std::string>> layers{{"cls_token", "pos_embed", "patch_embed"}};
  for (int k = 0; k < depth; ++k) {
    layers.push_back({fmt::format("blocks.{}", k)});
  }
  layers.push_back({"norm"});
  layers.push_back({"*"});
  return layers;
}

bool same_double(double actual, double expected) {
  return actual == expected || std::abs(actual - expected) <= 1e-15 * std::abs(expected);
}

}  // namespace

TEST_CASE("layer_decay: per-parameter layer id, lr and weight decay equal timm's rule on ViT name lists") {
  const auto golden = torchkit::test::load_golden("layer_decay.json");
  REQUIRE(golden.at("cases").size() >= 5);
  for (const auto& case_ : golden.at("cases")) {
    INFO("case: ", case_.at("name").get<std::string>());
    const auto model = module_with(case_.at("params"));
    if (!case_.at("frozen").empty()) {
      (void)torchkit::freeze(model, case_.at("frozen").get<std::vector<std::string>>());
    }
    const double base_lr = case_.at("base_lr").get<double>();
    const double weight_decay = case_.at("weight_decay").get<double>();
    torchkit::ParamGroupBuilder builder(model);
    builder.rest()
        .no_weight_decay_1d()
        .no_weight_decay({"cls_token", "pos_embed"})
        .layer_decay(case_.at("rate").get<double>(), vit_layers(case_.at("depth").get<int>()));
    const auto defaults = torch::optim::AdamWOptions(base_lr).weight_decay(weight_decay);
    auto optimizer = builder.make<torch::optim::AdamW>(defaults);
    const auto plans = builder.groups();
    REQUIRE(plans.size() == optimizer.param_groups().size());

    struct Actual {
      std::int64_t layer_id;
      double lr, weight_decay;
    };
    std::map<std::string, Actual> actual;
    for (std::size_t g = 0; g < plans.size(); ++g) {
      const auto& options = static_cast<const torch::optim::AdamWOptions&>(optimizer.param_groups()[g].options());
      REQUIRE(plans[g].parameters.size() == optimizer.param_groups()[g].params().size());
      for (std::size_t p = 0; p < plans[g].parameters.size(); ++p) {
        CHECK(optimizer.param_groups()[g].params()[p].is_same(parameter_named(*model, plans[g].parameters[p])));
        actual[plans[g].parameters[p]] = Actual{plans[g].layer_id.value(), options.lr(), options.weight_decay()};
      }
    }
    CHECK(actual.size() == case_.at("expected").size());
    for (const auto& expected : case_.at("expected")) {
      const auto name = expected.at("name").get<std::string>();
      INFO("parameter: ", name);
      REQUIRE(actual.contains(name));
      CHECK(actual.at(name).layer_id == expected.at("layer_id").get<std::int64_t>());
      CHECK(same_double(actual.at(name).lr, expected.at("lr").get<double>()));
      CHECK(actual.at(name).weight_decay == expected.at("weight_decay").get<double>());
    }
  }
}

TEST_CASE("layer_decay: frozen layers are dropped before counting, so the last trainable layer keeps scale 1") {
  const auto golden = torchkit::test::load_golden("layer_decay.json");
  const auto model = module_with(golden.at("cases").at(0).at("params"));  // depth 12
  (void)torchkit::freeze(model, {"cls_token", "pos_embed", "patch_embed", "blocks.0", "blocks.1"});
  torchkit::ParamGroupBuilder builder(model);
  builder.rest().layer_decay(0.5, vit_layers(12));
  const auto plans = builder.groups();
  // blocks.2 .. blocks.11, norm, head: 12 layers, ids 0..11.
  REQUIRE(plans.size() == 12);
  CHECK(plans.front().name == "rest, layer 0");
  CHECK(plans.front().parameters.front() == "blocks.2.norm1.weight");
  CHECK(plans.front().lr_scale == std::pow(0.5, 11));
  CHECK(plans.back().layer_id == 11);
  CHECK(plans.back().lr_scale == 1.0);
  CHECK(plans.back().parameters == std::vector<std::string>{"head.weight", "head.bias"});
  // include_frozen() counts them again.
  builder.include_frozen();
  CHECK(builder.groups().size() == 15);
  CHECK(builder.groups().front().lr_scale == std::pow(0.5, 14));
}

TEST_CASE("layer_decay with add() groups: each group's own lr times the layer scale; describe shows layer and scale") {
  const auto golden = torchkit::test::load_golden("layer_decay.json");
  const auto model = module_with(golden.at("cases").at(4).at("params"));  // depth 4
  torchkit::ParamGroupBuilder builder(model);
  builder.add({"head"}, {.lr = 0.01, .name = "head"}).rest().no_weight_decay_1d().layer_decay(0.5, vit_layers(4));
  const auto defaults = torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(1e-4);
  auto optimizer = builder.make<torch::optim::SGD>(defaults);
  const auto plans = builder.groups();
  REQUIRE(plans.size() == optimizer.param_groups().size());
  CHECK(plans[0].name == "head, layer 6");
  CHECK(plans[1].name == "head, layer 6 (no weight decay)");
  std::vector<double> scales;
  for (std::size_t g = 0; g < plans.size(); ++g) {
    const auto& options = static_cast<const torch::optim::SGDOptions&>(optimizer.param_groups()[g].options());
    const double own = plans[g].lr.value_or(0.1);
    INFO(plans[g].name);
    CHECK(options.lr() == own * plans[g].lr_scale);
    CHECK(options.momentum() == 0.9);  // every option complete, from the defaults
    CHECK(options.weight_decay() == (plans[g].name.ends_with("(no weight decay)") ? 0.0 : 1e-4));
    scales.push_back(plans[g].lr_scale);
  }
  const auto text = builder.describe(defaults);
  CHECK(text.find("group 0: head, layer 6  lr=0.01 (0.01 x 1)  layer=6 scale=1  weight_decay=0.0001") != std::string::npos);
  CHECK(text.find("rest, layer 0  lr=0.0015625 (0.1 x 0.015625)  layer=0 scale=0.015625") != std::string::npos);
  CHECK(builder.describe().find("lr=default x 0.015625") != std::string::npos);

  // The torchkit schedulers keep each group's ratio: lr_g(t) / lr_g(0) is the same for every group.
  std::vector<double> initial;
  for (const auto& group : optimizer.param_groups()) {
    initial.push_back(group.options().get_lr());
  }
  torchkit::lr::CosineAnnealingLR cosine(optimizer, 50);
  for (int step = 0; step < 30; ++step) {
    cosine.step();
    const auto lrs = cosine.last_lr();
    for (std::size_t g = 1; g < lrs.size(); ++g) {
      CHECK(std::abs(lrs[g] / initial[g] - lrs[0] / initial[0]) <= 1e-12);
    }
  }
}

TEST_CASE("no_weight_decay_1d: 1-D tensors and biases get weight decay 0, without layer_decay too") {
  torchkit::test::Network net;
  torchkit::ParamGroupBuilder builder(net);
  builder.rest().no_weight_decay_1d();
  const auto plans = builder.groups();
  REQUIRE(plans.size() == 2);
  for (const auto& name : plans[1].parameters) {
    CHECK(name.ends_with(".bias"));
  }
  CHECK(plans[1].weight_decay == 0.0);
  CHECK_FALSE(plans[0].layer_id.has_value());
}

TEST_CASE("layer_decay bad input: rate, empty layers, twice, unmatched parameters, patterns matching nothing") {
  const auto golden = torchkit::test::load_golden("layer_decay.json");
  const auto model = module_with(golden.at("cases").at(4).at("params"));
  torchkit::ParamGroupBuilder builder(model);
  builder.rest();
  for (const double rate : {0.0, -0.5, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    CHECK_THROWS_WITH_AS(builder.layer_decay(rate, vit_layers(4)),
                         doctest::Contains("ParamGroupBuilder::layer_decay: rate must be in (0, 1], got"),
                         torchkit::Error);
  }
  CHECK_THROWS_WITH_AS(builder.layer_decay(0.5, {}), doctest::Contains("layer_decay: no layers given"), torchkit::Error);
  CHECK_THROWS_WITH_AS(builder.layer_decay(0.5, {{"blocks.0"}, {}}),
                       doctest::Contains("layer_decay: layer 1 of 2 has no patterns"), torchkit::Error);
  CHECK(builder.groups().size() == 1);  // unchanged: no layer decay
  builder.layer_decay(0.5, {{"blocks"}, {"norm"}});
  CHECK_THROWS_WITH_AS(builder.layer_decay(0.5, vit_layers(4)),
                       doctest::Contains("layer_decay was already given (2 layers, rate 0.5)"), torchkit::Error);
  CHECK_THROWS_WITH_AS((void)builder.groups(),
                       doctest::Contains("ParamGroupBuilder::groups: 6 trainable parameter(s) match no layer of "
                                         "layer_decay: \"cls_token\", \"pos_embed\""),
                       torchkit::Error);
  torchkit::ParamGroupBuilder typo(model);
  typo.rest().layer_decay(0.5, {{"blcks"}, {"*"}});
  CHECK_THROWS_WITH_AS((void)typo.build(torch::optim::SGDOptions(0.1)),
                       doctest::Contains("ParamGroupBuilder::build: layer_decay layer 0: pattern \"blcks\" (pattern 1 of "
                                         "1) matches no parameter"),
                       torchkit::Error);
}
