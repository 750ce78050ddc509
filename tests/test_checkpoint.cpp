// Tests for checkpoint.hpp: a run resumed from a checkpoint continues bit for bit as the
// uninterrupted run (model, optimizer with cycled momentum and per-group options, schedulers,
// GradScaler, random generator), and every refused load leaves everything as it was.
#include <torchkit/checkpoint.hpp>

#include "test_support.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

using torchkit::test::message_of;

std::string temporary_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("torchkit_test_checkpoint_" + name)).string();
}

/// A training run: a model with dropout and batch norm (so the random generator and buffers
/// matter), SGD with momentum in two groups, OneCycleLR (cycles lr and momentum) and StepLR on a
/// second optimizer-free schedule, a GradScaler.
struct Run {
  explicit Run(std::uint64_t seed) {
    torch::manual_seed(seed);
    model = torch::nn::Sequential(torch::nn::Linear(6, 16), torch::nn::BatchNorm1d(16), torch::nn::ReLU(),
                                  torch::nn::Dropout(0.3), torch::nn::Linear(16, 3));
    auto parameters = model->parameters();
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<at::Tensor>(parameters.begin(), parameters.begin() + 2),
                        std::make_unique<torch::optim::SGDOptions>(
                            torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-3)));
    groups.emplace_back(std::vector<at::Tensor>(parameters.begin() + 2, parameters.end()),
                        std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(0.02).momentum(0.8)));
    optimizer = std::make_unique<torch::optim::SGD>(std::move(groups), torch::optim::SGDOptions(0.01));
    one_cycle = std::make_unique<torchkit::lr::OneCycleLR>(*optimizer, torchkit::lr::GroupValues{0.1, 0.05}, 40);
  }

  void train(int steps) {
    for (int i = 0; i < steps; ++i) {
      const auto input = torch::randn({8, 6});
      const auto target = torch::randint(0, 3, {8});
      optimizer->zero_grad();
      const auto loss = torch::nn::functional::cross_entropy(model->forward(input), target);
      scaler.scale(loss).backward();
      scaler.step(*optimizer);
      scaler.update();
      one_cycle->step();
    }
  }

  [[nodiscard]] std::vector<at::Tensor> values() const {
    std::vector<at::Tensor> result;
    for (const auto& p : model->parameters()) result.push_back(p.detach().clone());
    for (const auto& b : model->buffers()) result.push_back(b.detach().clone());
    return result;
  }

  /// Everything that describes the optimizer, the scheduler and the scaler, as text.
  [[nodiscard]] std::string state() const {
    std::ostringstream out;
    for (const auto& group : optimizer->param_groups()) {
      const auto& options = static_cast<const torch::optim::SGDOptions&>(group.options());
      out << options.lr() << ' ' << options.momentum() << ' ' << options.weight_decay() << ';';
    }
    // Momentum buffers, as sorted sums (the state's key type differs between LibTorch versions).
    std::vector<double> sums;
    for (const auto& entry : optimizer->state()) {
      const auto& buffer = static_cast<const torch::optim::SGDParamState&>(*entry.second).momentum_buffer();
      sums.push_back(buffer.defined() ? buffer.sum().template item<double>() : 0.0);
    }
    std::sort(sums.begin(), sums.end());
    for (const double sum : sums) out << sum << ',';
    out << one_cycle->to_string() << scaler.get_scale() << ' ' << scaler.growth_tracker();
    return out.str();
  }

  torch::nn::Sequential model{nullptr};
  std::unique_ptr<torch::optim::SGD> optimizer;
  std::unique_ptr<torchkit::lr::OneCycleLR> one_cycle;
  torchkit::GradScaler scaler{{.init_scale = 1024.0, .growth_interval = 3}};
};

bool same(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i], b[i])) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("a resumed run continues bit for bit as the uninterrupted one") {
  const auto path = temporary_path("resume.pt");
  Run uninterrupted(1);
  uninterrupted.train(20);

  Run first_half(1);
  first_half.train(10);
  torchkit::save_checkpoint(path, first_half.model, *first_half.optimizer, {first_half.one_cycle.get()},
                            {.epoch = 4, .step = 10, .grad_scaler = &first_half.scaler,
                             .metadata = {{"run", "resume test"}, {"note", "ü"}}});
  torch::manual_seed(999);  // whatever happens to the generator between the runs

  Run resumed(2);  // another initialisation: everything must come from the file
  const auto extras = torchkit::load_checkpoint(path, resumed.model, *resumed.optimizer, {resumed.one_cycle.get()},
                                                &resumed.scaler);
  CHECK(extras.epoch == 4);
  CHECK(extras.step == 10);
  CHECK(extras.has_grad_scaler);
  CHECK(extras.rng_state);
  CHECK(extras.metadata.at("run") == "resume test");
  CHECK(extras.metadata.at("note") == "ü");
  CHECK(resumed.state() == first_half.state());
  CHECK(same(resumed.values(), first_half.values()));

  resumed.train(10);
  CHECK(same(resumed.values(), uninterrupted.values()));
  CHECK(resumed.state() == uninterrupted.state());
  std::filesystem::remove(path);
}

TEST_CASE("every refused load leaves the model, the optimizer, the schedulers and the scaler unchanged") {
  const auto path = temporary_path("refused.pt");
  Run saved(1);
  saved.train(5);
  torchkit::save_checkpoint(path, saved.model, *saved.optimizer, {saved.one_cycle.get()},
                            {.grad_scaler = &saved.scaler});

  Run target(3);
  target.train(2);
  const auto values = target.values();
  const auto state = target.state();
  const auto unchanged = [&] { return same(target.values(), values) && target.state() == state; };

  SUBCASE("another model") {
    torch::nn::Sequential other(torch::nn::Linear(6, 3));
    torch::optim::SGD optimizer(other->parameters(), 0.1);
    const auto message = message_of<torchkit::Error>([&] { (void)torchkit::load_checkpoint(path, other, optimizer); });
    CHECK(message == "load_checkpoint: '0.weight' is Float [16, 6] in the checkpoint but Float [3, 6] in the model");
    CHECK(unchanged());
  }
  SUBCASE("another optimizer type") {
    torch::optim::Adam adam(target.model->parameters(), 0.1);
    CHECK(message_of<torchkit::Error>([&] { (void)torchkit::load_checkpoint(path, target.model, adam); })
              .find("load_checkpoint: the checkpoint holds a torch::optim::SGD but the optimizer is a "
                    "torch::optim::Adam") == 0);
    CHECK(unchanged());
  }
  SUBCASE("other schedulers") {
    torchkit::lr::StepLR step(*target.optimizer, 3);
    const auto before = step.to_string();
    CHECK(message_of<torchkit::Error>([&] {
            (void)torchkit::load_checkpoint(path, target.model, *target.optimizer, {&step}, &target.scaler);
          }) == "load_checkpoint: scheduler 0 is a OneCycleLR in the checkpoint but a StepLR here");
    CHECK(message_of<torchkit::Error>([&] {
            (void)torchkit::load_checkpoint(path, target.model, *target.optimizer, {}, &target.scaler);
          }) == "load_checkpoint: the checkpoint has 1 schedulers but 0 were given");
    CHECK(step.to_string() == before);
    CHECK(unchanged());
  }
  SUBCASE("a scheduler that refuses its state after the optimizer was loaded: both put back") {
    // A OneCycleLR on a one-group optimizer: the checkpoint's has two groups, which only the
    // scheduler's own load notices.
    torch::optim::SGD single(target.model->parameters(), torch::optim::SGDOptions(0.3).momentum(0.5));
    torchkit::lr::OneCycleLR foreign(single, torchkit::lr::GroupValues{0.1}, 40);
    const auto foreign_before = foreign.to_string();
    const auto message = message_of<torchkit::Error>([&] {
      (void)torchkit::load_checkpoint(path, target.model, *target.optimizer, {&foreign}, &target.scaler);
    });
    CHECK(message.find("load_checkpoint: '" + path + "' does not fit: OneCycleLR::load") == 0);
    CHECK(foreign.to_string() == foreign_before);
    CHECK(unchanged());
  }
  SUBCASE("a scaler asked for but not saved") {
    const auto no_scaler = temporary_path("no_scaler.pt");
    torchkit::save_checkpoint(no_scaler, saved.model, *saved.optimizer, {saved.one_cycle.get()});
    CHECK(message_of<torchkit::Error>([&] {
            (void)torchkit::load_checkpoint(no_scaler, target.model, *target.optimizer, {target.one_cycle.get()},
                                            &target.scaler);
          }) == "load_checkpoint: a GradScaler was given but the checkpoint holds none");
    CHECK(unchanged());
    std::filesystem::remove(no_scaler);
  }
  SUBCASE("not a checkpoint, no file") {
    const auto plain = temporary_path("plain.pt");
    torch::save(target.model, plain);
    CHECK(message_of<torchkit::Error>([&] {
            (void)torchkit::load_checkpoint(plain, target.model, *target.optimizer);
          }) == "load_checkpoint: '" + plain + "' is not a torchkit checkpoint (write it with save_checkpoint)");
    std::filesystem::remove(plain);
    CHECK(message_of<torchkit::Error>([&] {
            (void)torchkit::load_checkpoint(temporary_path("missing.pt"), target.model, *target.optimizer);
          }).find("load_checkpoint: cannot read '") == 0);
    CHECK(unchanged());
  }
  std::filesystem::remove(path);
}

TEST_CASE("save_checkpoint replaces the file only when the new one is complete") {
  const auto path = temporary_path("replace.pt");
  Run run(1);
  torchkit::save_checkpoint(path, run.model, *run.optimizer, {}, {.epoch = 1});
  const auto message = message_of<torchkit::Error>([&] {
    torchkit::save_checkpoint("/nonexistent-directory/run.pt", run.model, *run.optimizer);
  });
  CHECK(message.find("save_checkpoint: cannot write '/nonexistent-directory/run.pt'") == 0);
  CHECK(message_of<torchkit::Error>([&] { torchkit::save_checkpoint(path, run.model, *run.optimizer, {nullptr}); }) ==
        "save_checkpoint: scheduler 0 is null");
  const auto extras = torchkit::load_checkpoint(path, run.model, *run.optimizer);
  CHECK(extras.epoch == 1);
  CHECK_FALSE(extras.has_grad_scaler);
  CHECK(!std::filesystem::exists(path + ".partial"));
  std::filesystem::remove(path);
}

TEST_CASE("every group's options are restored, also without a scheduler (LibTorch 1.13's load does not)") {
  const auto path = temporary_path("options.pt");
  Run saved(1);
  saved.train(3);
  auto& options = static_cast<torch::optim::SGDOptions&>(saved.optimizer->param_groups()[1].options());
  options.lr(0.123).weight_decay(0.01).momentum(0.7).nesterov(true);
  torchkit::save_checkpoint(path, saved.model, *saved.optimizer);
  Run resumed(2);
  (void)torchkit::load_checkpoint(path, resumed.model, *resumed.optimizer);
  const auto& loaded = static_cast<const torch::optim::SGDOptions&>(resumed.optimizer->param_groups()[1].options());
  CHECK(loaded.lr() == 0.123);
  CHECK(loaded.weight_decay() == 0.01);
  CHECK(loaded.momentum() == 0.7);
  CHECK(loaded.nesterov());
  CHECK(static_cast<const torch::optim::SGDOptions&>(resumed.optimizer->param_groups()[0].options()).lr() ==
        static_cast<const torch::optim::SGDOptions&>(saved.optimizer->param_groups()[0].options()).lr());
  std::filesystem::remove(path);
}
