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


// ---------------------------------------------------------------------------------------------
// Fine-tuning: frozen statistics, cleared gradients, torchkit::train / TrainScope
// ---------------------------------------------------------------------------------------------

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/instancenorm.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

namespace {

// conv (0) -> BatchNorm2d (1) -> relu (2) -> conv (3) -> BatchNorm2d (4) -> flatten (5) -> linear (6)
torch::nn::Sequential bn_net() {
  torch::manual_seed(3);
  return torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3)), torch::nn::BatchNorm2d(4),
                               torch::nn::ReLU(), torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3)),
                               torch::nn::BatchNorm2d(4), torch::nn::Flatten(), torch::nn::Linear(4 * 4 * 4, 3));
}

// Every parameter and buffer, cloned, by name.
std::map<std::string, at::Tensor> state_of(const torch::nn::Module& module) {
  std::map<std::string, at::Tensor> state;
  for (const auto& item : module.named_parameters()) {
    state[item.key()] = item.value().detach().clone();
  }
  for (const auto& item : module.named_buffers()) {
    state[item.key()] = item.value().detach().clone();
  }
  return state;
}

// The names whose tensors are bit-identical in the two states (torch::equal: same values, NaN aside).
std::set<std::string> unchanged(const std::map<std::string, at::Tensor>& before,
                                const std::map<std::string, at::Tensor>& after) {
  std::set<std::string> names;
  for (const auto& [name, tensor] : before) {
    if (torch::equal(tensor, after.at(name))) {
      names.insert(name);
    }
  }
  return names;
}

void train_steps(torch::nn::Sequential& net, torch::optim::Optimizer& optimizer, int steps) {
  for (int step = 0; step < steps; ++step) {
    optimizer.zero_grad();
    const at::Tensor input = torch::randn({8, 3, 8, 8});
    net->forward(input).pow(2).mean().backward();
    optimizer.step();
  }
}

const std::set<std::string> kFrozenPart{"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                        "1.num_batches_tracked"};

}  // namespace

TEST_CASE("frozen statistics: after k steps with torchkit::train, running stats and frozen parameters are bit-identical") {
  auto net = bn_net();
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-2));
  torchkit::train(net);
  train_steps(net, optimizer, 2);  // momentum buffers and gradients exist for every parameter
  const auto report = torchkit::freeze(net, {"0", "1"}, {.freeze_norm_stats = true});
  CHECK(report.frozen_batchnorm == std::vector<std::string>{"1"});
  CHECK(report.summary().find("; 1 normalisation layer with frozen statistics") != std::string::npos);
  CHECK_FALSE(net[1]->is_training());  // in eval at once: the model was in training mode
  CHECK_FALSE(net[0]->as<torch::nn::Conv2d>()->weight.grad().defined());  // cleared

  torchkit::train(net);
  CHECK(net->is_training());
  CHECK_FALSE(net[1]->is_training());
  CHECK(net[4]->is_training());
  const auto before = state_of(*net);
  train_steps(net, optimizer, 5);
  const auto same = unchanged(before, state_of(*net));
  for (const auto& name : kFrozenPart) {
    INFO(name);
    CHECK(same.contains(name));
  }
  // The rest trained: the other BatchNorm's statistics and every trainable parameter moved.
  for (const char* name : {"3.weight", "4.weight", "4.running_mean", "4.running_var", "4.num_batches_tracked", "6.weight"}) {
    INFO(name);
    CHECK_FALSE(same.contains(name));
  }
  CHECK(torchkit::requires_grad_report(net).frozen_batchnorm == std::vector<std::string>{"1"});

  // LibTorch's model->train() does not know: the layer trains again (documented), torchkit::train
  // freezes it again, since the layer stays remembered.
  net->train();
  CHECK(net[1]->is_training());
  torchkit::train(net);
  CHECK_FALSE(net[1]->is_training());
  torchkit::train(net, false);
  CHECK_FALSE(net->is_training());
  CHECK_FALSE(net[4]->is_training());
}

TEST_CASE("the Python trap, reproduced: without freeze_norm_stats a frozen BatchNorm's statistics drift") {
  auto net = bn_net();
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.05));
  const auto report = torchkit::freeze(net, {"0", "1"});
  CHECK(report.frozen_batchnorm.empty());
  torchkit::train(net);
  CHECK(net[1]->is_training());
  const auto before = state_of(*net);
  train_steps(net, optimizer, 3);
  const auto same = unchanged(before, state_of(*net));
  CHECK(same.contains("1.weight"));
  CHECK_FALSE(same.contains("1.running_mean"));
  CHECK_FALSE(same.contains("1.running_var"));
}

TEST_CASE("a parameter frozen after the optimizer was built stays bit-identical (SGD momentum + weight decay, AdamW)") {
  const auto run = [](auto make_optimizer, bool clear_grads) {
    auto net = bn_net();
    auto optimizer = make_optimizer(net->parameters());
    torchkit::train(net);
    train_steps(net, optimizer, 3);
    (void)torchkit::freeze(net, {"0", "6.bias"}, {.clear_grads = clear_grads});
    const auto before = state_of(*net);
    train_steps(net, optimizer, 4);
    return unchanged(before, state_of(*net));
  };
  const auto sgd = [](std::vector<at::Tensor> parameters) {
    return torch::optim::SGD(std::move(parameters), torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-2));
  };
  const auto adamw = [](std::vector<at::Tensor> parameters) {
    return torch::optim::AdamW(std::move(parameters), torch::optim::AdamWOptions(1e-2).weight_decay(0.05));
  };
  for (const bool use_adamw : {false, true}) {
    const std::string optimizer_name = use_adamw ? "AdamW" : "SGD";
    INFO(optimizer_name);
    const auto same = use_adamw ? run(adamw, true) : run(sgd, true);
    for (const char* name : {"0.weight", "0.bias", "6.bias"}) {
      INFO(name);
      CHECK(same.contains(name));
    }
    CHECK_FALSE(same.contains("6.weight"));
    // clear_grads = false is Python's behaviour: on LibTorch 1.13 zero_grad() zeroes the gradient,
    // which stays defined, and the optimizer's momentum / weight decay keep moving the "frozen"
    // parameters. From 2.0 on zero_grad() resets gradients to undefined (set_to_none), so the
    // trap is gone there and the parameters stay put either way.
    const auto python = use_adamw ? run(adamw, false) : run(sgd, false);
#if TORCHKIT_TORCH_AT_LEAST(2, 0)
    CHECK(python.contains("0.weight"));
    CHECK(python.contains("6.bias"));
#else
    CHECK_FALSE(python.contains("0.weight"));
    CHECK_FALSE(python.contains("6.bias"));
#endif
  }
}

TEST_CASE("freeze_all_except with frozen statistics: BatchNorm without affine, InstanceNorm, GroupNorm, LayerNorm") {
  torch::nn::Sequential net(
      torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3)),                                         // 0
      torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(4).affine(false)),                     // 1: no parameters
      torch::nn::InstanceNorm2d(torch::nn::InstanceNorm2dOptions(4).affine(true).track_running_stats(true)),  // 2
      torch::nn::InstanceNorm2d(torch::nn::InstanceNorm2dOptions(4).affine(true)),                // 3: no running stats
      torch::nn::GroupNorm(torch::nn::GroupNormOptions(2, 4)),                                    // 4
      torch::nn::Flatten(),                                                                       // 5
      torch::nn::LayerNorm(torch::nn::LayerNormOptions({144})),                                   // 6
      torch::nn::Linear(144, 2),                                                                  // 7
      torch::nn::BatchNorm1d(2));                                                                 // 8: in the head
  net->train();
  const auto report = torchkit::freeze_all_except(net, {"7", "8"}, {.freeze_norm_stats = true});
  CHECK(report.frozen_batchnorm == std::vector<std::string>{"1", "2"});
  CHECK(torchkit::trainable_parameters(net).size() == 4);  // 7 and 8's weights and biases
  CHECK_FALSE(net[4]->as<torch::nn::GroupNorm>()->weight.requires_grad());
  CHECK_FALSE(net[6]->as<torch::nn::LayerNorm>()->weight.requires_grad());
  torchkit::train(net);
  CHECK_FALSE(net[1]->is_training());
  CHECK_FALSE(net[2]->is_training());
  CHECK(net[3]->is_training());
  CHECK(net[8]->is_training());
  const auto before = state_of(*net);
  torch::optim::SGD optimizer(torchkit::trainable_parameters(net), torch::optim::SGDOptions(0.1));
  for (int step = 0; step < 3; ++step) {
    optimizer.zero_grad();
    net->forward(torch::randn({4, 3, 8, 8})).pow(2).mean().backward();
    optimizer.step();
  }
  const auto same = unchanged(before, state_of(*net));
  for (const char* name : {"1.running_mean", "1.running_var", "2.running_mean", "2.running_var", "2.weight", "4.weight",
                           "6.bias"}) {
    INFO(name);
    CHECK(same.contains(name));
  }
  CHECK_FALSE(same.contains("8.running_mean"));

  // unfreeze releases the statistics of the layers a pattern reaches.
  const auto released = torchkit::unfreeze(net, {"2"});
  CHECK(released.frozen_batchnorm == std::vector<std::string>{"1"});
  torchkit::train(net);
  CHECK(net[2]->is_training());
  CHECK_FALSE(net[1]->is_training());
}

TEST_CASE("a BatchNorm frozen only in part keeps training statistics; a norm model by itself") {
  auto net = bn_net();
  const auto report = torchkit::freeze(net, {"1.weight"}, {.freeze_norm_stats = true});
  CHECK(report.frozen_batchnorm.empty());  // 1.bias still trains: its statistics do too
  torch::nn::BatchNorm1d alone(3);
  CHECK(torchkit::freeze(alone, {"weight", "bias"}, {.freeze_norm_stats = true}).frozen_batchnorm ==
        std::vector<std::string>{""});
  torchkit::train(alone);
  CHECK_FALSE(alone->is_training());
}

TEST_CASE("FreezeByName restores frozen statistics and training flags; TrainScope restores every flag") {
  auto net = bn_net();
  net->eval();
  {
    torchkit::FreezeByName frozen(net, {"0", "1"}, {.freeze_norm_stats = true});
    CHECK(frozen.report().frozen_batchnorm == std::vector<std::string>{"1"});
    {
      torchkit::TrainScope training(net);
      CHECK(net->is_training());
      CHECK_FALSE(net[1]->is_training());
      CHECK(net[4]->is_training());
    }
    CHECK_FALSE(net->is_training());
    CHECK_FALSE(net[4]->is_training());
  }
  CHECK(torchkit::requires_grad_report(net).frozen_batchnorm.empty());
  CHECK(torchkit::trainable_parameters(net).size() == 10);
  torchkit::train(net);
  CHECK(net[1]->is_training());

  // all_except, and a scope left by an exception.
  net->train();
  {
    torchkit::FreezeByName frozen(net, {"6"}, torchkit::FreezeMode::all_except, {.freeze_norm_stats = true});
    CHECK(frozen.report().frozen_batchnorm == std::vector<std::string>{"1", "4"});
    CHECK_FALSE(net[4]->is_training());
  }
  CHECK(net[1]->is_training());
  CHECK(net[4]->is_training());
  net[4]->eval();
  CHECK_THROWS_AS(
      [&] {
        torchkit::TrainScope training(net);
        throw std::runtime_error("leaves the scope");
      }(),
      std::runtime_error);
  CHECK(net->is_training());
  CHECK_FALSE(net[4]->is_training());
  CHECK(net[3]->is_training());
}

TEST_CASE("train and TrainScope: Error for an empty holder or a null pointer") {
  torch::nn::Sequential empty{nullptr};
  CHECK_THROWS_WITH_AS(torchkit::train(empty), doctest::Contains("train: the module holder is empty"), torchkit::Error);
  std::shared_ptr<torch::nn::Module> null;
  CHECK_THROWS_WITH_AS(torchkit::TrainScope scope(null), doctest::Contains("TrainScope: the module pointer is null"),
                       torchkit::Error);
}

TEST_CASE("a pattern that matches nothing says what to write instead") {
  struct TinyImpl : torch::nn::Module {
    TinyImpl() {
      register_module("features", torch::nn::Sequential(torch::nn::Linear(4, 4), torch::nn::ReLU()));
      register_module("classifier", torch::nn::Linear(4, 2));
    }
  };
  auto tiny = std::make_shared<TinyImpl>();
  // A regular expression written as a name.
  const auto regex_like = torchkit::test::message_of<torchkit::Error>([&] { (void)torchkit::freeze(tiny, "features\\.\\d+"); });
  CHECK(regex_like.find("matches no parameter") != std::string::npos);
  CHECK(regex_like.find("; it looks like a regular expression: write torchkit::regex(\"features\\.\\d+\")") !=
        std::string::npos);
  const auto anchored = torchkit::test::message_of<torchkit::Error>([&] { (void)torchkit::freeze(tiny, "^classifier"); });
  CHECK(anchored.find("write torchkit::regex(\"^classifier\")") != std::string::npos);
  // A prefix the model does not have (the model's own variable name, DataParallel's "module.").
  const auto prefixed = torchkit::test::message_of<torchkit::Error>([&] { (void)torchkit::freeze(tiny, "model.features.0"); });
  CHECK(prefixed.find("; the model has no top-level module \"model\": did you mean \"features.0\"") != std::string::npos);
  const auto module_prefix = torchkit::test::message_of<torchkit::Error>([&] { (void)torchkit::freeze(tiny, "module.classifier.*"); });
  CHECK(module_prefix.find("did you mean \"classifier.*\"") != std::string::npos);
  // A plain typo gets only the closest names.
  const auto typo = torchkit::test::message_of<torchkit::Error>([&] { (void)torchkit::freeze(tiny, "clasifier"); });
  CHECK(typo.find("the closest names are \"classifier.weight\"") != std::string::npos);
  CHECK(typo.find("did you mean") == std::string::npos);
  CHECK(typo.find("regular expression") == std::string::npos);
  for (const auto& p : tiny->parameters()) CHECK(p.requires_grad());
}
