// Tests for freeze.hpp (tip 8) and the name patterns of detail/name_pattern.hpp.
#include <torchkit/freeze.hpp>

#include "test_support.hpp"
#include "vgg_tip_network.hpp"

#include <array>
#include <map>
#include <set>
#include <type_traits>

namespace {

using torchkit::test::message_of;
using torchkit::test::parameter_named;
using torchkit::test::tip_parameter_names;

const std::vector<std::string> kNoGrad{
    "cnn.VGG_16.convolution1_1.weight",
    "cnn.VGG_16.convolution1_1.bias",
    "cnn.VGG_16.convolution1_2.weight",
    "cnn.VGG_16.convolution1_2.bias",
};

/// The tip's listing, built by hand from (name, flag) pairs.
std::string listing(const std::vector<std::pair<std::string, bool>>& flags) {
  std::string text;
  for (const auto& [name, flag] : flags) {
    text += "name: " + name + ",\t grad: " + (flag ? "True" : "False") + "\n";
  }
  return text;
}

/// Every parameter's requires_grad by LibTorch's own names (tied tensors once per name).
std::map<std::string, bool> flags_of(const torch::nn::Module& module) {
  std::map<std::string, bool> flags;
  for (const auto& item : module.named_parameters()) {
    flags[item.key()] = item.value().requires_grad();
  }
  return flags;
}

/// The names whose flag is false.
std::set<std::string> frozen_names(const torch::nn::Module& module) {
  std::set<std::string> names;
  for (const auto& item : module.named_parameters()) {
    if (!item.value().requires_grad()) {
      names.insert(item.key());
    }
  }
  return names;
}


// A model unlike the tip's: a ModuleList of blocks and a ModuleDict of heads.
struct Backbone : torch::nn::Module {
  Backbone() {
    for (int i = 0; i < 3; ++i) {
      layers->push_back(torch::nn::Sequential(torch::nn::Linear(6, 6), torch::nn::LayerNorm(torch::nn::LayerNormOptions({6}))));
    }
    register_module("layers", layers);
    heads = register_module("heads", torch::nn::ModuleDict(torch::OrderedDict<std::string, std::shared_ptr<torch::nn::Module>>{
                                         {"classify", torch::nn::Linear(6, 3).ptr()},
                                         {"box", torch::nn::Linear(6, 4).ptr()}}));
  }
  torch::nn::ModuleList layers;
  torch::nn::ModuleDict heads{nullptr};
};

// A float parameter and an integer one (LibTorch lets one register any tensor).
struct MixedDtypes : torch::nn::Module {
  MixedDtypes() {
    scale = register_parameter("scale", torch::ones({2}), /*requires_grad=*/false);
    table = register_parameter("table", torch::arange(4, torch::kLong), /*requires_grad=*/false);
  }
  at::Tensor scale, table;
};

}  // namespace

TEST_CASE("tip 8: the listing before and after freezing the tip's no_grad list, as Python prints it") {
  const auto golden = torchkit::test::load_golden("freeze.json");
  auto net = torchkit::test::deterministic_network();

  const auto before = torchkit::requires_grad_report(net);
  std::vector<std::pair<std::string, bool>> expected_before;
  for (const auto& name : tip_parameter_names()) {
    expected_before.emplace_back(name, true);
  }
  CHECK(before.to_string() == listing(expected_before));
  CHECK(before.to_string() == golden.at("listing_before").get<std::string>());
  CHECK(before.changed().empty());
  std::ostringstream streamed;
  streamed << before;
  CHECK(streamed.str() == before.to_string());

  REQUIRE(golden.at("no_grad").get<std::vector<std::string>>() == kNoGrad);
  const auto report = torchkit::freeze(net, kNoGrad);
  CHECK(report.changed() == kNoGrad);
  std::vector<std::pair<std::string, bool>> expected_after;
  for (const auto& name : tip_parameter_names()) {
    expected_after.emplace_back(name, std::find(kNoGrad.begin(), kNoGrad.end(), name) == kNoGrad.end());
  }
  CHECK(report.to_string() == listing(expected_after));
  CHECK(report.to_string() == golden.at("listing_after").get<std::string>());
  CHECK(torchkit::requires_grad_report(net).to_string() == golden.at("listing_after").get<std::string>());
  for (const auto& name : tip_parameter_names()) {
    const bool should_train = std::find(kNoGrad.begin(), kNoGrad.end(), name) == kNoGrad.end();
    CHECK(parameter_named(*net, name).requires_grad() == should_train);
  }
}

TEST_CASE("tip 8: Adam on trainable_parameters leaves the frozen weights bit-identical and matches Python") {
  const auto golden = torchkit::test::load_golden("freeze.json");
  auto net = torchkit::test::deterministic_network();
  (void)torchkit::freeze(net, kNoGrad);
  std::map<std::string, at::Tensor> initial;
  for (const auto& item : net->named_parameters()) {
    initial[item.key()] = item.value().detach().clone();
  }

  const auto trainable = torchkit::trainable_parameters(net);
  REQUIRE(trainable.size() == 4);
  CHECK(trainable[0].is_same(net->cnn->VGG_16->convolution2_1->weight));
  CHECK(trainable[3].is_same(net->cnn->VGG_16->convolution2_2->bias));
  torch::optim::Adam optimizer(trainable, torch::optim::AdamOptions(0.01));
  optimizer.zero_grad();
  const auto loss = net->forward(torchkit::test::deterministic_input()).pow(2).mean();
  CHECK(loss.item<double>() == doctest::Approx(golden.at("loss").get<double>()).epsilon(1e-12));
  loss.backward();
  optimizer.step();

  for (const auto& item : net->named_parameters()) {
    const auto& name = item.key();
    const auto expected = torch::tensor(golden.at("after_adam_step").at(name).get<std::vector<double>>(), torch::kDouble)
                              .reshape(item.value().sizes());
    if (std::find(kNoGrad.begin(), kNoGrad.end(), name) != kNoGrad.end()) {
      CHECK_MESSAGE(torch::equal(item.value(), initial[name]), name);
      CHECK_MESSAGE(!item.value().grad().defined(), name);
    } else {
      CHECK_MESSAGE(!torch::equal(item.value(), initial[name]), name);
      CHECK_MESSAGE(torch::allclose(item.value(), expected, 1e-10, 1e-12), name);
    }
  }
}

TEST_CASE("FreezeReport counts parameters and elements, and summarises what changed") {
  auto net = torchkit::test::deterministic_network();
  const auto report = torchkit::freeze(net, {"cnn.VGG_16.convolution1_1", "cnn.VGG_16.convolution2_2.bias"});
  int64_t frozen_elements = 0;
  int64_t trainable_elements = 0;
  for (const auto& item : net->named_parameters()) {
    (item.value().requires_grad() ? trainable_elements : frozen_elements) += item.value().numel();
  }
  CHECK(frozen_elements == 4 * 3 * 3 * 3 + 4 + 6);
  CHECK(report.frozen_count() == 3);
  CHECK(report.trainable_count() == 5);
  CHECK(report.frozen_elements() == frozen_elements);
  CHECK(report.trainable_elements() == trainable_elements);
  REQUIRE(report.parameters.size() == 8);
  CHECK(report.parameters[0].name == "cnn.VGG_16.convolution1_1.weight");
  CHECK(report.parameters[0].numel == 108);
  CHECK(report.parameters[0].requires_grad_before);
  CHECK_FALSE(report.parameters[0].requires_grad);
  CHECK(report.parameters[0].changed());
  CHECK_FALSE(report.parameters[2].changed());
  CHECK(report.changed() == std::vector<std::string>{"cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution1_1.bias",
                                                     "cnn.VGG_16.convolution2_2.bias"});
  CHECK(report.summary() ==
        fmt::format("8 parameters ({} elements): 5 trainable ({} elements), 3 frozen ({} elements); 3 changed: "
                    "cnn.VGG_16.convolution1_1.weight (frozen), cnn.VGG_16.convolution1_1.bias (frozen), "
                    "cnn.VGG_16.convolution2_2.bias (frozen)",
                    frozen_elements + trainable_elements, trainable_elements, frozen_elements));

  // Freezing what is already frozen changes nothing, and says so.
  const auto again = torchkit::freeze(net, {"cnn.VGG_16.convolution1_1"});
  CHECK(again.changed().empty());
  CHECK(again.summary().ends_with("; nothing changed"));
  CHECK(again.frozen_count() == 3);
}

TEST_CASE("summary() names the first eight changes and counts the others") {
  torch::nn::Sequential sequential;
  for (int i = 0; i < 12; ++i) {
    sequential->push_back(torch::nn::Linear(2, 1));
  }
  const auto report = torchkit::freeze(sequential, {"*"});
  CHECK(report.changed().size() == 24);
  CHECK(report.summary() ==
        "24 parameters (36 elements): 0 trainable (0 elements), 24 frozen (36 elements); 24 changed: 0.weight (frozen), "
        "0.bias (frozen), 1.weight (frozen), 1.bias (frozen), 2.weight (frozen), 2.bias (frozen), 3.weight (frozen), "
        "3.bias (frozen) and 16 more");
  CHECK(torchkit::unfreeze(sequential, {"11"}).summary() ==
        "24 parameters (36 elements): 2 trainable (3 elements), 22 frozen (33 elements); 2 changed: 11.weight "
        "(trainable), 11.bias (trainable)");
}

TEST_CASE("a module path covers every parameter below it, and only at a dot") {
  torch::nn::Sequential sequential;
  for (int i = 0; i < 12; ++i) {
    sequential->push_back(torch::nn::Linear(1, 1));
  }
  auto report = torchkit::freeze(sequential, {"1"});
  CHECK(report.changed() == std::vector<std::string>{"1.weight", "1.bias"});
  CHECK(frozen_names(*sequential) == std::set<std::string>{"1.weight", "1.bias"});

  (void)torchkit::unfreeze(sequential, {"*"});
  report = torchkit::freeze(sequential, {"1."});  // a trailing dot reads as the module path
  CHECK(report.changed() == std::vector<std::string>{"1.weight", "1.bias"});

  // An exact name is also its own "module path"; a prefix that is not a whole component is no match.
  (void)torchkit::unfreeze(sequential, {"*"});
  CHECK(torchkit::freeze(sequential, {"10.bias"}).changed() == std::vector<std::string>{"10.bias"});
  CHECK_THROWS_AS(torchkit::freeze(sequential, {"1.w"}), torchkit::Error);
}

TEST_CASE("globs: * any run of characters (dots too), ? one character, and a matched module path covers its children") {
  auto net = torchkit::test::deterministic_network();
  CHECK(torchkit::freeze(net, {"*.bias"}).changed() ==
        std::vector<std::string>{"cnn.VGG_16.convolution1_1.bias", "cnn.VGG_16.convolution1_2.bias",
                                 "cnn.VGG_16.convolution2_1.bias", "cnn.VGG_16.convolution2_2.bias"});
  (void)torchkit::unfreeze(net, {"*"});
  CHECK(frozen_names(*net).empty());

  CHECK(torchkit::freeze(net, {"cnn.VGG_16.convolution?_1"}).changed() ==
        std::vector<std::string>{"cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution1_1.bias",
                                 "cnn.VGG_16.convolution2_1.weight", "cnn.VGG_16.convolution2_1.bias"});
  (void)torchkit::unfreeze(net, {"*"});

  // The tip 9 way of naming a block.
  CHECK(torchkit::freeze(net, {"*convolution2*"}).changed() ==
        std::vector<std::string>{"cnn.VGG_16.convolution2_1.weight", "cnn.VGG_16.convolution2_1.bias",
                                 "cnn.VGG_16.convolution2_2.weight", "cnn.VGG_16.convolution2_2.bias"});
  (void)torchkit::unfreeze(net, {"*"});

  CHECK(torchkit::freeze(net, {"c?n.*_2.w*"}).changed() ==
        std::vector<std::string>{"cnn.VGG_16.convolution1_2.weight", "cnn.VGG_16.convolution2_2.weight"});

  // Glob matching itself, against hand-picked cases.
  using torchkit::detail::glob_match;
  CHECK(glob_match("*", ""));
  CHECK(glob_match("a*b*c", "aXXbYYc"));
  CHECK(glob_match("a*b*c", "abc"));
  CHECK_FALSE(glob_match("a*b*c", "acb"));
  CHECK(glob_match("a?c", "abc"));
  CHECK_FALSE(glob_match("a?c", "ac"));
  CHECK(glob_match("**.bias", "x.y.bias"));
  CHECK_FALSE(glob_match("*.bias", "x.biasx"));
  CHECK(glob_match("*a*a*a", "aaaa"));
  // A '*' in the text is a plain character; the pattern's '*' still matches any run after it
  // (regression: fuzz/regressions/fuzz_name_pattern/glob-star-in-name).
  CHECK(glob_match("a*", "a*bc"));
  CHECK(glob_match(std::string_view("\0*", 2), std::string_view("\0*x\0", 4)));
  CHECK(glob_match("*x", "*yx"));
  CHECK_FALSE(glob_match("a*c", "a*b"));
}

TEST_CASE("torchkit::regex matches whole names") {
  auto net = torchkit::test::deterministic_network();
  CHECK(torchkit::freeze(net, {torchkit::regex(R"(cnn\.VGG_16\.convolution\d_2\.weight)")}).changed() ==
        std::vector<std::string>{"cnn.VGG_16.convolution1_2.weight", "cnn.VGG_16.convolution2_2.weight"});
  // Only a full match counts: "convolution1" is inside every conv1 name but is not a whole name.
  const auto message = message_of<torchkit::Error>([&] { (void)torchkit::freeze(net, {torchkit::regex("convolution1")}); });
  CHECK(message.find("regex(\"convolution1\")") != std::string::npos);
  // Patterns of every kind mix in one call.
  (void)torchkit::unfreeze(net, {"*"});
  const auto report = torchkit::freeze(
      net, {"cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution2_1", "*2_2.bias", torchkit::regex(".*1_2\\.bias")});
  CHECK(report.changed() ==
        std::vector<std::string>{"cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution1_2.bias",
                                 "cnn.VGG_16.convolution2_1.weight", "cnn.VGG_16.convolution2_1.bias",
                                 "cnn.VGG_16.convolution2_2.bias"});
  CHECK(torchkit::regex("a.c").kind() == torchkit::NamePattern::Kind::regex);
  CHECK(torchkit::NamePattern("a.c").kind() == torchkit::NamePattern::Kind::name);
  CHECK(torchkit::NamePattern("a*").kind() == torchkit::NamePattern::Kind::glob);
}

TEST_CASE("unfreeze and freeze_all_except") {
  auto net = torchkit::test::deterministic_network();
  (void)torchkit::freeze(net, {"*"});
  CHECK(torchkit::trainable_parameters(net).empty());

  auto report = torchkit::unfreeze(net, {"cnn.VGG_16.convolution2_2"});
  CHECK(report.changed() == std::vector<std::string>{"cnn.VGG_16.convolution2_2.weight", "cnn.VGG_16.convolution2_2.bias"});
  CHECK(report.trainable_count() == 2);
  CHECK(parameter_named(*net, "cnn.VGG_16.convolution2_2.weight").requires_grad());

  // Afterwards exactly the selected parameters are trainable, whatever they were before.
  report = torchkit::freeze_all_except(net, {"cnn.VGG_16.convolution1_1.bias", "cnn.VGG_16.convolution2_1"});
  CHECK(report.changed() == std::vector<std::string>{"cnn.VGG_16.convolution1_1.bias", "cnn.VGG_16.convolution2_1.weight",
                                                     "cnn.VGG_16.convolution2_1.bias", "cnn.VGG_16.convolution2_2.weight",
                                                     "cnn.VGG_16.convolution2_2.bias"});
  std::set<std::string> expected_frozen(tip_parameter_names().begin(), tip_parameter_names().end());
  expected_frozen.erase("cnn.VGG_16.convolution1_1.bias");
  expected_frozen.erase("cnn.VGG_16.convolution2_1.weight");
  expected_frozen.erase("cnn.VGG_16.convolution2_1.bias");
  CHECK(frozen_names(*net) == expected_frozen);

  // Any range of patterns works: std::array, std::set, a vector of NamePattern.
  const std::array<std::string, 1> head{"cnn.VGG_16.convolution2_2"};
  CHECK(torchkit::freeze_all_except(net, head).trainable_count() == 2);
  const std::vector<torchkit::NamePattern> patterns{"*.bias", torchkit::regex(".*1_1\\.weight")};
  CHECK(torchkit::unfreeze(net, patterns).trainable_count() == 6);
  const std::set<std::string> conv1{"*convolution1*"};
  CHECK(torchkit::freeze(net, conv1).trainable_count() == 3);
}

TEST_CASE("the tip's loop, by hand, gives the same flags as freeze on a model it does not know") {
  // Independent check on a model shaped unlike the tip's: Python's loop
  // `for name, p in net.named_parameters(): p.requires_grad = name not in no_grad`.
  auto by_torchkit = std::make_shared<Backbone>();
  auto by_hand = std::make_shared<Backbone>();
  const std::vector<std::string> no_grad{"layers.0.0.weight", "layers.0.0.bias", "layers.0.1.weight", "layers.0.1.bias",
                                         "layers.1.0.weight"};
  for (auto& item : by_hand->named_parameters()) {
    item.value().requires_grad_(std::find(no_grad.begin(), no_grad.end(), item.key()) == no_grad.end());
  }
  const auto report = torchkit::freeze(by_torchkit, {"layers.0", "layers.1.0.weight"});
  CHECK(report.changed() == no_grad);
  CHECK(flags_of(*by_torchkit) == flags_of(*by_hand));
  CHECK(torchkit::requires_grad_report(by_torchkit).to_string() == torchkit::requires_grad_report(by_hand).to_string());

  // Fine-tune the heads only.
  (void)torchkit::freeze_all_except(by_torchkit, {"heads"});
  CHECK(frozen_names(*by_torchkit).size() == 12);
  const auto trainable = torchkit::trainable_parameters(by_torchkit);
  const auto heads = by_torchkit->heads->parameters();
  REQUIRE(trainable.size() == heads.size());
  for (std::size_t i = 0; i < heads.size(); ++i) {
    CHECK(trainable[i].is_same(heads[i]));
  }
}

TEST_CASE("FreezeByName restores every flag it found, also when an exception unwinds") {
  static_assert(!std::is_copy_constructible_v<torchkit::FreezeByName>);
  static_assert(!std::is_copy_assignable_v<torchkit::FreezeByName>);
  static_assert(!std::is_move_constructible_v<torchkit::FreezeByName>);
  static_assert(!std::is_move_assignable_v<torchkit::FreezeByName>);

  auto net = torchkit::test::deterministic_network();
  // A mixed starting state: restoring must bring back this, not "all trainable".
  (void)torchkit::freeze(net, {"cnn.VGG_16.convolution2_2.bias", "cnn.VGG_16.convolution1_1.weight"});
  const auto found = flags_of(*net);
  {
    torchkit::FreezeByName frozen(net, {"cnn.VGG_16.convolution1_*"});
    CHECK(frozen.report().changed() == std::vector<std::string>{"cnn.VGG_16.convolution1_1.bias",
                                                                "cnn.VGG_16.convolution1_2.weight",
                                                                "cnn.VGG_16.convolution1_2.bias"});
    CHECK(frozen.report().frozen_count() == 5);
    // Flags changed by hand inside the scope are restored too.
    parameter_named(*net, "cnn.VGG_16.convolution2_2.bias").requires_grad_(true);
    parameter_named(*net, "cnn.VGG_16.convolution2_1.weight").requires_grad_(false);
  }
  CHECK(flags_of(*net) == found);

  try {
    torchkit::FreezeByName frozen(net, std::vector<std::string>{"*"});
    CHECK(torchkit::trainable_parameters(net).empty());
    throw std::runtime_error("training failed");
  } catch (const std::runtime_error&) {
  }
  CHECK(flags_of(*net) == found);

  {
    torchkit::FreezeByName head_only(net, {"cnn.VGG_16.convolution2_2"}, torchkit::FreezeMode::all_except);
    CHECK(frozen_names(*net).size() == 6);
    CHECK(head_only.report().trainable_count() == 2);
  }
  CHECK(flags_of(*net) == found);

  // A failed construction changes nothing (and there is nothing to restore).
  CHECK_THROWS_AS(torchkit::FreezeByName(net, {"cnn.VGG_16.convolution1_*", "cnn.VGG_16.convolution3"}), torchkit::Error);
  CHECK(flags_of(*net) == found);
}

TEST_CASE("tied parameters are listed once and selected under any of their names") {
  auto model = std::make_shared<torchkit::test::TiedModel>();
  const auto report = torchkit::requires_grad_report(model);
  CHECK(report.to_string() == listing({{"encoder.weight", true}, {"encoder.bias", true}, {"decoder.bias", true}}));

  // "decoder.weight" is the encoder's weight under its second name.
  auto changed = torchkit::freeze(model, {"decoder.weight"});
  CHECK(changed.changed() == std::vector<std::string>{"encoder.weight"});
  CHECK_FALSE(model->encoder->weight.requires_grad());
  (void)torchkit::unfreeze(model, {"*"});

  // The table behind the patterns lists what named_parameters_of lists, with the other names.
  const auto table = torchkit::detail::parameter_table(model);
  const auto named = torchkit::named_parameters_of(model);
  REQUIRE(table.size() == named.size());
  for (std::size_t i = 0; i < named.size(); ++i) {
    CHECK(table[i].name == named[i].name);
    CHECK(table[i].tensor.is_same(named[i].tensor));
  }
  CHECK(table[0].other_names == std::vector<std::string>{"decoder.weight"});
  CHECK(table[1].other_names.empty());

  changed = torchkit::freeze(model, {"decoder"});
  CHECK(changed.changed() == std::vector<std::string>{"encoder.weight", "decoder.bias"});
  CHECK(torchkit::trainable_parameters(model).size() == 1);
  CHECK(torchkit::trainable_parameters(model)[0].is_same(model->encoder->bias));
}

TEST_CASE("trainable_parameters takes every ParameterSource") {
  torch::nn::Linear linear(3, 2);
  linear->bias.requires_grad_(false);
  const auto from_holder = torchkit::trainable_parameters(linear);
  REQUIRE(from_holder.size() == 1);
  CHECK(from_holder[0].is_same(linear->weight));
  CHECK(torchkit::trainable_parameters(linear.ptr()).size() == 1);
  CHECK(torchkit::trainable_parameters(*linear).size() == 1);

  auto a = torch::ones({2}, torch::requires_grad());
  auto b = torch::ones({2});
  std::vector<at::Tensor> tensors{b, a, at::Tensor()};
  const auto from_range = torchkit::trainable_parameters(tensors);
  REQUIRE(from_range.size() == 1);
  CHECK(from_range[0].is_same(a));
}

TEST_CASE("a pattern that matches nothing names the three closest parameters, and nothing changes") {
  auto net = torchkit::test::deterministic_network();
  const auto found = flags_of(*net);

  // A misspelt parameter name.
  auto message = message_of<torchkit::Error>(
      [&] { (void)torchkit::freeze(net, {"cnn.VGG_16.convolution1_1", "cnn.VGG_16.convolution1_1.weigth"}); });
  CHECK(message ==
        "freeze: pattern \"cnn.VGG_16.convolution1_1.weigth\" (pattern 2 of 2) matches no parameter of the model (8 "
        "parameters); the closest names are \"cnn.VGG_16.convolution1_1.weight\", \"cnn.VGG_16.convolution1_2.weight\", "
        "\"cnn.VGG_16.convolution2_1.weight\"");
  CHECK(flags_of(*net) == found);  // the valid first pattern was not applied

  // A misspelt module path finds its module's parameters.
  message = message_of<torchkit::Error>([&] { (void)torchkit::unfreeze(net, {"cnn.VGG_16.convolution1_3"}); });
  CHECK(message.find("unfreeze: pattern \"cnn.VGG_16.convolution1_3\"") == 0);
  CHECK(message.ends_with("the closest names are \"cnn.VGG_16.convolution1_1.weight\", \"cnn.VGG_16.convolution1_1.bias\", "
                          "\"cnn.VGG_16.convolution1_2.weight\""));

  message = message_of<torchkit::Error>([&] { (void)torchkit::freeze_all_except(net, {"*convolution3*"}); });
  CHECK(message.find("freeze_all_except: pattern \"*convolution3*\"") == 0);
  CHECK(flags_of(*net) == found);

  // The edit distance itself.
  CHECK(torchkit::detail::edit_distance("kitten", "sitting") == 3);
  CHECK(torchkit::detail::edit_distance("", "abc") == 3);
  CHECK(torchkit::detail::edit_distance("weight", "weight") == 0);

  // A model without parameters says so.
  torch::nn::ReLU relu;
  message = message_of<torchkit::Error>([&] { (void)torchkit::freeze(relu, {"weight"}); });
  CHECK(message.find("(the model has no parameters)") != std::string::npos);
}

TEST_CASE("empty patterns, empty lists, invalid regexes, null pointers: Error naming them, model unchanged") {
  auto net = torchkit::test::deterministic_network();
  const auto found = flags_of(*net);

  auto message = message_of<torchkit::Error>([&] { (void)torchkit::freeze(net, {"cnn.VGG_16.convolution1_1", ""}); });
  CHECK(message == "freeze: pattern 2 of 2 is empty; expected a parameter name, module path, glob or torchkit::regex(...)");
  CHECK(flags_of(*net) == found);

  message = message_of<torchkit::Error>([&] { (void)torchkit::freeze(net, std::vector<std::string>{}); });
  CHECK(message.find("freeze: no patterns given") == 0);
  message = message_of<torchkit::Error>([&] { (void)torchkit::freeze_all_except(net, {}); });
  CHECK(message.find("freeze_all_except: no patterns given") == 0);
  CHECK(flags_of(*net) == found);

  message = message_of<torchkit::Error>([&] { (void)torchkit::regex("cnn.(VGG"); });
  CHECK(message.find("regex: \"cnn.(VGG\" is not a valid regular expression") == 0);
  message = message_of<torchkit::Error>([&] { (void)torchkit::freeze(net, {torchkit::regex("")}); });
  CHECK(message.find("pattern 1 of 1 is empty") != std::string::npos);

  const char* null_pattern = nullptr;
  CHECK_THROWS_WITH_AS(torchkit::NamePattern{null_pattern}, doctest::Contains("null pointer"), torchkit::Error);

  torchkit::test::Network empty{nullptr};
  CHECK_THROWS_WITH_AS(torchkit::freeze(empty, {"cnn"}), doctest::Contains("empty"), torchkit::Error);
  CHECK(flags_of(*net) == found);
}

TEST_CASE("a parameter that cannot require gradients is an error before anything changes") {
  auto model = std::make_shared<MixedDtypes>();
  const auto message = message_of<torchkit::Error>([&] { (void)torchkit::unfreeze(model, {"*"}); });
  CHECK(message == "unfreeze: parameter \"table\" has dtype Long, which cannot require gradients; only floating-point "
                   "and complex parameters can be made trainable");
  CHECK_FALSE(model->scale.requires_grad());  // "scale" comes first and was not changed either
  CHECK(torchkit::unfreeze(model, {"scale"}).changed() == std::vector<std::string>{"scale"});
  // Freezing an integer parameter that is already frozen is fine.
  CHECK(torchkit::freeze_all_except(model, {"scale"}).changed().empty());
}

// --- PatternList: every way of writing a list of patterns is the same one argument ---------

TEST_CASE("PatternList: braced lists, ranges of strings or patterns and single patterns select alike") {
  auto net = std::make_shared<torch::nn::Sequential>(torch::nn::Linear(3, 4), torch::nn::ReLU(), torch::nn::Linear(4, 2));
  auto frozen_names = [&](auto&& patterns) {
    const auto report = torchkit::freeze(*net, std::forward<decltype(patterns)>(patterns));
    (void)torchkit::unfreeze(*net, {"*"});
    return report.changed();
  };
  const std::vector<std::string> expected{"0.weight", "0.bias"};
  CHECK(frozen_names(std::initializer_list<torchkit::NamePattern>{"0"}) == expected);
  CHECK(frozen_names("0") == expected);                                   // one const char*
  CHECK(frozen_names(std::string("0")) == expected);                      // one std::string
  CHECK(frozen_names(std::string_view("0")) == expected);                 // one std::string_view
  CHECK(frozen_names(torchkit::regex("0\\..*")) == expected);             // one NamePattern
  CHECK(frozen_names(std::vector<std::string>{"0.weight", "0.bias"}) == expected);
  CHECK(frozen_names(std::vector<torchkit::NamePattern>{"0.weight", torchkit::regex("0\\.b.*")}) == expected);
  CHECK(frozen_names(std::array<std::string_view, 2>{"0.bias", "0.weight"}) == expected);
  CHECK(frozen_names(std::set<std::string>{"0.weight", "0.bias"}) == expected);
  CHECK(frozen_names(torchkit::PatternList{"0.weight", "0.bias"}) == expected);
  // Braced lists mixing strings and regexes, as every example writes them.
  CHECK(torchkit::freeze(*net, {"0.weight", torchkit::regex("0\\.b.*")}).changed() == expected);
  (void)torchkit::unfreeze(*net, {"*"});

  const torchkit::PatternList list{"0", "*.bias", torchkit::regex("2\\..*")};
  CHECK(list.size() == 3);
  CHECK(list.to_string() == R"("0", "*.bias", regex("2\..*"))");
  CHECK(torchkit::PatternList().empty());
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::freeze(*net, torchkit::PatternList{}); })
            .starts_with("freeze: no patterns given"));
}

TEST_CASE("{fmt} formats NamePattern, PatternList and FreezeReport with only freeze.hpp included") {
  auto net = std::make_shared<torch::nn::Sequential>(torch::nn::Linear(3, 4));
  const auto report = torchkit::requires_grad_report(*net);
  CHECK(fmt::format("{}", report) == report.to_string());
  CHECK(fmt::format("{}", torchkit::NamePattern("*.bias")) == "\"*.bias\"");
  CHECK(fmt::format("{:>14}", torchkit::regex("a.*")) == "  regex(\"a.*\")");  // the spec applies to the text
  CHECK(fmt::format("{}", torchkit::PatternList{"a", "b"}) == R"("a", "b")");
}

