// Tips 8 and 9: selecting parameters by name, beside the hand-written LibTorch loops, on one
// thread. The model is a ResNet-50-shaped tree (4 stages of 3/4/6/3 bottleneck blocks, conv +
// batch-norm pairs, downsample branches): 161 parameters named like torchvision's
// (`layer3.4.bn2.weight`), with tiny tensors, so that the name handling is what is measured.
//
//   Freeze/TorchkitNames      torchkit::freeze with the tip's list of full names (12 names)
//   Freeze/LibTorchNames      the tip's loop: named_parameters(), look each name up in an
//                             unordered_set, requires_grad_(false)
//   Freeze/TorchkitModulePath torchkit::freeze(model, {"conv1", "bn1", "layer1"}) (module paths)
//   Freeze/LibTorchPrefix     the same by hand: starts_with(prefix + ".") for each prefix
//   Freeze/TorchkitGlob       torchkit::freeze(model, {"*.bn?.*"})
//   Freeze/LibTorchSubstring  the same by hand: name.find(".bn") (what most Python code does)
//   Groups/Torchkit           ParamGroupBuilder: {"layer1*", "layer2*"} lr 0.01, rest() -> build(AdamOptions)
//   Groups/LibTorch           the tip's loop: `if "layer1" in name` into vectors, then
//                             OptimizerParamGroup with cloned AdamOptions
//   Report/Torchkit           requires_grad_report(model).to_string()
//   Report/LibTorch           the tip's print loop into a string with fmt::format
//
// torchkit does more per call (every pattern checked for a match, tied tensors deduplicated,
// every flag validated before any changes); the ratios show what that costs.
#include <torchkit/freeze.hpp>
#include <torchkit/param_groups.hpp>

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <string>
#include <unordered_set>
#include <vector>

namespace {

struct BottleneckImpl : torch::nn::Module {
  BottleneckImpl(int64_t channels, bool downsample) {
    conv1 = register_module("conv1", torch::nn::Linear(torch::nn::LinearOptions(channels, channels).bias(false)));
    bn1 = register_module("bn1", torch::nn::BatchNorm1d(channels));
    conv2 = register_module("conv2", torch::nn::Linear(torch::nn::LinearOptions(channels, channels).bias(false)));
    bn2 = register_module("bn2", torch::nn::BatchNorm1d(channels));
    conv3 = register_module("conv3", torch::nn::Linear(torch::nn::LinearOptions(channels, channels).bias(false)));
    bn3 = register_module("bn3", torch::nn::BatchNorm1d(channels));
    if (downsample) {
      register_module("downsample",
                      torch::nn::Sequential(torch::nn::Linear(torch::nn::LinearOptions(channels, channels).bias(false)),
                                            torch::nn::BatchNorm1d(channels)));
    }
  }
  torch::nn::Linear conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::BatchNorm1d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
};
TORCH_MODULE(Bottleneck);

struct ResNetShapedImpl : torch::nn::Module {
  ResNetShapedImpl() {
    constexpr int64_t channels = 4;
    register_module("conv1", torch::nn::Linear(torch::nn::LinearOptions(channels, channels).bias(false)));
    register_module("bn1", torch::nn::BatchNorm1d(channels));
    const int blocks[] = {3, 4, 6, 3};
    for (int stage = 0; stage < 4; ++stage) {
      torch::nn::ModuleList layer;
      for (int block = 0; block < blocks[stage]; ++block) {
        layer->push_back(Bottleneck(channels, block == 0));
      }
      register_module("layer" + std::to_string(stage + 1), layer);
    }
    register_module("fc", torch::nn::Linear(channels, 10));
  }
};
TORCH_MODULE(ResNetShaped);

ResNetShaped& model() {
  static ResNetShaped instance;
  return instance;
}

const std::vector<std::string>& tip_names() {
  static const std::vector<std::string> names{
      "conv1.weight",          "bn1.weight",         "bn1.bias",           "layer1.0.conv1.weight",
      "layer1.0.bn1.weight",   "layer1.0.bn1.bias",  "layer1.0.conv2.weight", "layer1.0.bn2.weight",
      "layer1.0.bn2.bias",     "layer1.0.conv3.weight", "layer1.0.bn3.weight", "layer1.0.bn3.bias"};
  return names;
}

void reset(ResNetShaped& net) {
  for (auto& parameter : net->parameters()) {
    parameter.requires_grad_(true);
  }
}

void BM_FreezeTorchkitNames(benchmark::State& state) {
  at::set_num_threads(1);
  auto& net = model();
  reset(net);
  for (auto _ : state) {
    auto report = torchkit::freeze(net, tip_names());
    benchmark::DoNotOptimize(report);
  }
}
BENCHMARK(BM_FreezeTorchkitNames)->Name("Freeze/TorchkitNames");

void BM_FreezeLibTorchNames(benchmark::State& state) {
  at::set_num_threads(1);
  auto& net = model();
  reset(net);
  for (auto _ : state) {
    const std::unordered_set<std::string> no_grad(tip_names().begin(), tip_names().end());
    for (auto& item : net->named_parameters()) {
      if (no_grad.count(item.key()) != 0) {
        item.value().requires_grad_(false);
      }
    }
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_FreezeLibTorchNames)->Name("Freeze/LibTorchNames");

void BM_FreezeTorchkitModulePath(benchmark::State& state) {
  at::set_num_threads(1);
  auto& net = model();
  reset(net);
  for (auto _ : state) {
    auto report = torchkit::freeze(net, {"conv1", "bn1", "layer1"});
    benchmark::DoNotOptimize(report);
  }
}
BENCHMARK(BM_FreezeTorchkitModulePath)->Name("Freeze/TorchkitModulePath");

void BM_FreezeLibTorchPrefix(benchmark::State& state) {
  at::set_num_threads(1);
  auto& net = model();
  reset(net);
  const std::vector<std::string> prefixes{"conv1.", "bn1.", "layer1."};
  for (auto _ : state) {
    for (auto& item : net->named_parameters()) {
      for (const auto& prefix : prefixes) {
        if (item.key().starts_with(prefix)) {
          item.value().requires_grad_(false);
          break;
        }
      }
    }
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_FreezeLibTorchPrefix)->Name("Freeze/LibTorchPrefix");

void BM_FreezeTorchkitGlob(benchmark::State& state) {
  at::set_num_threads(1);
  auto& net = model();
  reset(net);
  for (auto _ : state) {
    auto report = torchkit::freeze(net, {"*.bn?.*"});
    benchmark::DoNotOptimize(report);
  }
}
BENCHMARK(BM_FreezeTorchkitGlob)->Name("Freeze/TorchkitGlob");

void BM_FreezeLibTorchSubstring(benchmark::State& state) {
  at::set_num_threads(1);
  auto& net = model();
  reset(net);
  for (auto _ : state) {
    for (auto& item : net->named_parameters()) {
      if (item.key().find(".bn") != std::string::npos) {
        item.value().requires_grad_(false);
      }
    }
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_FreezeLibTorchSubstring)->Name("Freeze/LibTorchSubstring");

void BM_GroupsTorchkit(benchmark::State& state) {
  at::set_num_threads(1);
  auto& net = model();
  reset(net);
  const auto defaults = torch::optim::AdamOptions(1e-3).weight_decay(1e-3);
  for (auto _ : state) {
    torchkit::ParamGroupBuilder builder(net);
    builder.add({"layer1*"}, {.lr = 0.01}).add({"layer2*"}, {.lr = 0.001}).rest();
    auto groups = builder.build(defaults);
    benchmark::DoNotOptimize(groups);
  }
}
BENCHMARK(BM_GroupsTorchkit)->Name("Groups/Torchkit");

void BM_GroupsLibTorch(benchmark::State& state) {
  at::set_num_threads(1);
  auto& net = model();
  reset(net);
  const auto defaults = torch::optim::AdamOptions(1e-3).weight_decay(1e-3);
  for (auto _ : state) {
    std::vector<at::Tensor> layer1, layer2, rest;
    for (auto& item : net->named_parameters()) {
      if (item.key().find("layer1") != std::string::npos) {
        layer1.push_back(item.value());
      } else if (item.key().find("layer2") != std::string::npos) {
        layer2.push_back(item.value());
      } else {
        rest.push_back(item.value());
      }
    }
    std::vector<torch::optim::OptimizerParamGroup> groups;
    auto first = std::make_unique<torch::optim::AdamOptions>(defaults);
    first->lr(0.01);
    groups.emplace_back(std::move(layer1), std::unique_ptr<torch::optim::OptimizerOptions>(std::move(first)));
    auto second = std::make_unique<torch::optim::AdamOptions>(defaults);
    second->lr(0.001);
    groups.emplace_back(std::move(layer2), std::unique_ptr<torch::optim::OptimizerOptions>(std::move(second)));
    groups.emplace_back(std::move(rest), std::unique_ptr<torch::optim::OptimizerOptions>(
                                             std::make_unique<torch::optim::AdamOptions>(defaults)));
    benchmark::DoNotOptimize(groups);
  }
}
BENCHMARK(BM_GroupsLibTorch)->Name("Groups/LibTorch");

void BM_ReportTorchkit(benchmark::State& state) {
  at::set_num_threads(1);
  auto& net = model();
  reset(net);
  for (auto _ : state) {
    auto text = torchkit::requires_grad_report(net).to_string();
    benchmark::DoNotOptimize(text);
  }
}
BENCHMARK(BM_ReportTorchkit)->Name("Report/Torchkit");

void BM_ReportLibTorch(benchmark::State& state) {
  at::set_num_threads(1);
  auto& net = model();
  reset(net);
  for (auto _ : state) {
    std::string text;
    for (const auto& item : net->named_parameters()) {
      text += fmt::format("name: {},\t grad: {}\n", item.key(), item.value().requires_grad() ? "True" : "False");
    }
    benchmark::DoNotOptimize(text);
  }
}
BENCHMARK(BM_ReportLibTorch)->Name("Report/LibTorch");

}  // namespace

BENCHMARK_MAIN();
