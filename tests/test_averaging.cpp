// Tests for averaging.hpp: AveragedModel (SWA, EMA, with and without buffers) and update_bn
// against PyTorch 1.13's swa_utils (tests/golden/averaging.json, written by
// tests/golden/averaging_golden.py), ModelEma's warm-up against timm's formula written out,
// AveragedWeightsScope's exact restore, save/load, and every bad input.
#include <torchkit/averaging.hpp>

#include "test_support.hpp"

#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

using torchkit::test::message_of;

/// The golden generator's model, with the same names.
struct NetImpl : torch::nn::Module {
  NetImpl()
      : conv(register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 3, 3).padding(1)))),
        bn(register_module("bn", torch::nn::BatchNorm2d(3))),
        fc(register_module("fc", torch::nn::Linear(3 * 4 * 4, 2))) {}
  at::Tensor forward(const at::Tensor& x) { return fc->forward(torch::relu(bn->forward(conv->forward(x))).flatten(1)); }
  torch::nn::Conv2d conv;
  torch::nn::BatchNorm2d bn;
  torch::nn::Linear fc;
};
TORCH_MODULE(Net);

/// The generator's formula: ((k * 0.37 + t * 1.3 + i) mod 5) - 2.5 in float64, then float32.
at::Tensor pattern(int64_t numel, double t, double i) {
  const auto k = torch::arange(numel, torch::kDouble);
  return (torch::remainder(k * 0.37 + t * 1.3 + i, 5.0) - 2.5).to(torch::kFloat);
}

void set_state(Net& model, double t) {
  torch::NoGradGuard no_grad;
  int i = 0;
  for (auto& p : model->parameters()) p.copy_(pattern(p.numel(), t, i++).view_as(p));
  model->bn->running_mean.copy_(pattern(3, t, 10));
  model->bn->running_var.copy_(pattern(3, t, 11).abs() + 0.5);
  model->bn->num_batches_tracked.fill_(static_cast<int64_t>(t) * 3 + 1);
}

std::vector<double> flat(const std::vector<torchkit::NamedParameter>& named) {
  std::vector<double> values;
  for (const auto& item : named) {
    const auto wide = item.tensor.to(torch::kDouble).reshape(-1).contiguous();
    values.insert(values.end(), wide.data_ptr<double>(), wide.data_ptr<double>() + wide.numel());
  }
  return values;
}

void check_values(const std::vector<double>& actual, const nlohmann::json& expected, double tolerance) {
  REQUIRE(actual.size() == expected.size());
  for (std::size_t i = 0; i < actual.size(); ++i) {
    CAPTURE(i);
    CHECK(std::abs(actual[i] - expected[i].get<double>()) <= tolerance);
  }
}

/// Every parameter and buffer of the model, cloned.
std::vector<at::Tensor> snapshot(const Net& model) {
  std::vector<at::Tensor> values;
  for (const auto& p : model->parameters()) values.push_back(p.detach().clone());
  for (const auto& b : model->buffers()) values.push_back(b.detach().clone());
  return values;
}

bool same(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i], b[i])) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("AveragedModel matches PyTorch's SWA and EMA, with and without buffers") {
  const auto golden = torchkit::test::load_golden("averaging.json");
  const double decay = golden["ema_decay"].get<double>();
  const std::vector<std::pair<std::string, int>> cases = {{"swa", 5}, {"swa_buffers", 5}, {"ema", 6}, {"ema_buffers", 6}};
  for (const auto& [name, updates] : cases) {
    CAPTURE(name);
    const auto& expected = golden["cases"][name];
    Net model;
    set_state(model, 100);
    torchkit::AveragingOptions options;
    options.use_buffers = name.ends_with("_buffers");
    if (name.starts_with("ema")) options.ema_decay = decay;
    torchkit::AveragedModel averaged(model, options);
    CHECK(averaged.n_averaged() == 0);
    for (int t = 0; t < updates; ++t) {
      set_state(model, t);
      averaged.update_parameters(model);
    }
    CHECK(averaged.n_averaged() == expected["n_averaged"].get<int64_t>());
    // Same ATen operations in the same order: equal to float rounding of the stored doubles.
    check_values(flat(averaged.named_parameters()), expected["parameters"], 0.0);
    if (options.use_buffers) {
      check_values(flat(averaged.named_buffers()), expected["buffers"], 0.0);
    } else {
      // PyTorch 2.x keeps unaveraged buffers in sync with the model (1.13 did not).
      CHECK(torch::equal(averaged.named_buffers()[0].tensor, model->bn->running_mean));
      CHECK(averaged.named_buffers()[2].tensor.item<int64_t>() == model->bn->num_batches_tracked.item<int64_t>());
    }
  }
}

TEST_CASE("AveragedModel: an independent computation of the SWA mean and the EMA") {
  Net model;
  torchkit::AveragedModel swa(model);
  torchkit::AveragedModel ema(model, {.ema_decay = 0.75});
  std::vector<at::Tensor> history;
  for (int t = 0; t < 4; ++t) {
    set_state(model, t);
    history.push_back(model->fc->weight.detach().to(torch::kDouble).clone());
    swa.update_parameters(model);
    ema.update_parameters(model);
  }
  const auto mean = (history[0] + history[1] + history[2] + history[3]) / 4;
  CHECK(torch::allclose(swa.named_parameters()[4].tensor.to(torch::kDouble), mean, 0, 1e-6));
  auto running = history[0];
  for (int t = 1; t < 4; ++t) running = 0.75 * running + 0.25 * history[t];
  CHECK(torch::allclose(ema.named_parameters()[4].tensor.to(torch::kDouble), running, 0, 1e-6));
  CHECK(swa.named_parameters()[4].name == "fc.weight");
  CHECK(fmt::format("{}", swa) == "AveragedModel(swa, n_averaged=4, parameters=6, buffers=3, use_buffers=false)");
  std::ostringstream out;
  out << ema;
  CHECK(out.str() == "AveragedModel(ema_decay=0.75, n_averaged=4, parameters=6, buffers=3, use_buffers=false)");
}

TEST_CASE("update_bn matches PyTorch and restores momentum and every training flag") {
  const auto golden = torchkit::test::load_golden("averaging.json")["cases"]["update_bn"];
  Net model;
  set_state(model, 3);
  model->eval();
  model->fc->train();  // a module whose own flag differs from the root's
  std::vector<at::Tensor> batches;
  for (int b = 0; b < 3; ++b) batches.push_back(pattern(4 * 2 * 4 * 4, b, 20).view({4, 2, 4, 4}));
  torchkit::update_bn(batches, model);
  check_values(flat({{"mean", model->bn->running_mean}}), golden["running_mean"], 1e-6);
  check_values(flat({{"var", model->bn->running_var}}), golden["running_var"], 1e-6);
  CHECK(model->bn->num_batches_tracked.item<int64_t>() == golden["num_batches_tracked"].get<int64_t>());
  REQUIRE(model->bn->options.momentum().has_value());
  CHECK(*model->bn->options.momentum() == golden["momentum"].get<double>());
  CHECK_FALSE(model->is_training());
  CHECK_FALSE(model->bn->is_training());
  CHECK(model->fc->is_training());

  // Pairs (input, target) and torch::data::Example give the same statistics.
  Net again;
  set_state(again, 3);
  std::vector<std::pair<at::Tensor, at::Tensor>> pairs;
  std::vector<torch::data::Example<>> examples;
  for (const auto& input : batches) {
    pairs.emplace_back(input, torch::zeros({4}));
    examples.emplace_back(input, torch::zeros({4}));
  }
  torchkit::update_bn(pairs, again);
  CHECK(torch::equal(again->bn->running_var, model->bn->running_var));
  set_state(again, 3);
  torchkit::update_bn(examples, *again);
  CHECK(torch::equal(again->bn->running_mean, model->bn->running_mean));

  // No BatchNorm: nothing changes.
  torch::nn::Sequential plain(torch::nn::Linear(2, 2));
  plain->eval();
  torchkit::update_bn(std::vector<at::Tensor>{torch::ones({1, 2})}, plain);
  CHECK_FALSE(plain->is_training());
}

TEST_CASE("update_bn restores momentum and flags when the forward throws") {
  Net model;
  model->eval();
  const std::vector<at::Tensor> wrong = {torch::ones({2, 5, 4, 4})};  // 5 channels: the conv throws
  CHECK_THROWS(torchkit::update_bn(wrong, model));
  CHECK(*model->bn->options.momentum() == 0.1);
  CHECK_FALSE(model->is_training());
}

TEST_CASE("AveragedWeightsScope swaps the averages in and the model's values back bit for bit") {
  Net model;
  set_state(model, 1);
  torchkit::AveragedModel ema(model, {.ema_decay = 0.5, .use_buffers = true});
  ema.update_parameters(model);
  set_state(model, 2);
  ema.update_parameters(model);
  set_state(model, 7);
  const auto before = snapshot(model);
  {
    torchkit::AveragedWeightsScope scope(model, ema);
    CHECK(torch::equal(model->conv->weight, ema.named_parameters()[0].tensor));
    CHECK(torch::equal(model->bn->running_var, ema.named_buffers()[1].tensor));
    torch::NoGradGuard no_grad;
    model->fc->weight.add_(1.0);  // changes inside the scope are discarded
  }
  CHECK(same(snapshot(model), before));
  try {
    torchkit::AveragedWeightsScope scope(model, ema);
    throw std::runtime_error("evaluation failed");
  } catch (const std::runtime_error&) {
  }
  CHECK(same(snapshot(model), before));
}

TEST_CASE("ModelEma follows timm's warm-up and averages with it") {
  Net model;
  torchkit::ModelEma ema(model, {.decay = 0.99, .warmup = true});
  CHECK(ema.decay_at(1) == 0.0);  // the first update copies
  for (const int64_t t : {2, 3, 10, 1000, 100000}) {
    const double step = static_cast<double>(t - 1);
    const double expected = std::clamp(1.0 - std::pow(1.0 + step, -2.0 / 3.0), 0.0, 0.99);
    CHECK(ema.decay_at(t) == expected);
  }
  torchkit::ModelEma plain(model, {.decay = 0.9});
  CHECK(plain.decay_at(5) == 0.9);
  set_state(model, 0);
  ema.update(model);
  const auto first = model->fc->bias.detach().clone();
  set_state(model, 1);
  ema.update(model);
  const double d = ema.decay_at(2);
  CHECK(torch::allclose(ema.named_parameters()[5].tensor, d * first + (1 - d) * model->fc->bias, 0, 1e-7));
  CHECK(ema.n_averaged() == 2);
}

TEST_CASE("save and load round trip; a refused load changes nothing") {
  Net model;
  torchkit::AveragedModel swa(model, {.use_buffers = true});
  for (int t = 0; t < 3; ++t) {
    set_state(model, t);
    swa.update_parameters(model);
  }
  std::stringstream stream;
  {
    torch::serialize::OutputArchive archive;
    swa.save(archive);
    archive.save_to(stream);
  }
  Net other;
  torchkit::AveragedModel restored(other, {.use_buffers = true});
  {
    torch::serialize::InputArchive archive;
    archive.load_from(stream);
    restored.load(archive);
  }
  CHECK(restored.n_averaged() == 3);
  CHECK(flat(restored.named_parameters()) == flat(swa.named_parameters()));
  CHECK(flat(restored.named_buffers()) == flat(swa.named_buffers()));

  // An archive from a model of another structure: refused, nothing changes.
  torch::nn::Sequential small(torch::nn::Linear(2, 2));
  torchkit::AveragedModel foreign(small);
  std::stringstream foreign_stream;
  {
    torch::serialize::OutputArchive archive;
    foreign.save(archive);
    archive.save_to(foreign_stream);
  }
  const auto values = flat(restored.named_parameters());
  torch::serialize::InputArchive archive;
  archive.load_from(foreign_stream);
  const auto message = message_of<torchkit::Error>([&] { restored.load(archive); });
  CHECK(message.find("AveragedModel::load") == 0);
  CHECK(message.find("'0.weight'") != std::string::npos);
  CHECK(flat(restored.named_parameters()) == values);
  CHECK(restored.n_averaged() == 3);
  torch::serialize::InputArchive empty;
  CHECK(message_of<torchkit::Error>([&] { restored.load(empty); }).find("no 'averaged_model'") != std::string::npos);
}

TEST_CASE("bad input: torchkit::Error naming the value, nothing changed") {
  Net model;
  CHECK(message_of<torchkit::Error>([&] { torchkit::AveragedModel bad(model, {.ema_decay = 1.5}); }) ==
        "AveragedModel: ema_decay must be in [0, 1], got 1.5");
  CHECK(message_of<torchkit::Error>([&] { torchkit::AveragedModel bad(model, {.ema_decay = NAN}); })
            .find("ema_decay must be in [0, 1], got nan") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { torchkit::ModelEma bad(model, {.decay = -0.1}); }) ==
        "ModelEma: decay must be in [0, 1], got -0.1");
  CHECK(message_of<torchkit::Error>([&] { torchkit::ModelEma bad(model, {.decay = 0.5, .min_decay = 0.6}); }) ==
        "ModelEma: min_decay (0.6) must be <= decay (0.5)");
  CHECK(message_of<torchkit::Error>([&] { torchkit::ModelEma bad(model, {.warmup_gamma = 0}); }) ==
        "ModelEma: warmup_gamma must be a finite number > 0, got 0");
  CHECK(message_of<torchkit::Error>([&] { torchkit::ModelEma bad(model, {.warmup_power = -1}); }) ==
        "ModelEma: warmup_power must be a finite number > 0, got -1");
  Net null_holder(nullptr);
  CHECK(message_of<torchkit::Error>([&] { torchkit::AveragedModel bad(null_holder); }).find("AveragedModel:") == 0);

  torchkit::AveragedModel swa(model);
  swa.update_parameters(model);
  const auto values = flat(swa.named_parameters());
  torch::nn::Sequential other(torch::nn::Linear(2, 2));
  const auto message = message_of<torchkit::Error>([&] { swa.update_parameters(other); });
  CHECK(message.find("AveragedModel::update_parameters: the model's parameter 0 is '0.weight' but the averaged "
                     "model's is 'conv.weight'") == 0);
  CHECK(flat(swa.named_parameters()) == values);
  CHECK(swa.n_averaged() == 1);
  Net wider;
  {
    torch::NoGradGuard no_grad;
    wider->fc = wider->replace_module("fc", torch::nn::Linear(3 * 4 * 4, 3));
  }
  CHECK(message_of<torchkit::Error>([&] { swa.update_parameters(wider); })
            .find("parameter 'fc.weight' has shape [3, 48] in the model but [2, 48] in the averaged model") !=
        std::string::npos);
  const auto before = snapshot(wider);
  CHECK(message_of<torchkit::Error>([&] { torchkit::AveragedWeightsScope scope(wider, swa); })
            .find("AveragedWeightsScope: parameter 'fc.weight' has shape") == 0);
  CHECK(same(snapshot(wider), before));
}
