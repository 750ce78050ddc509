// Tip 6: the cost of entering and leaving the evaluation scopes, beside the LibTorch way.
//
// - EvalScope (every module's own flag recorded and restored) against `model->eval(); ...;
//   model->train();` (LibTorch's way, which forgets modules that were deliberately in eval).
// - NoGradScope against torch::NoGradGuard, and the forward pass of a small network with each.
#include <torchkit/grad_mode.hpp>

#include <benchmark/benchmark.h>
#include <torch/torch.h>

namespace {

// One block of a ResNet-sized module tree.
struct BlockImpl : torch::nn::Module {
  BlockImpl() {
    layers = register_module("layers", torch::nn::Sequential(
        torch::nn::Linear(32, 32), torch::nn::BatchNorm1d(32), torch::nn::ReLU(), torch::nn::Dropout(0.1),
        torch::nn::Linear(32, 32), torch::nn::ReLU()));
  }
  at::Tensor forward(const at::Tensor& x) { return layers->forward(x); }
  torch::nn::Sequential layers{nullptr};
};
TORCH_MODULE(Block);

// 16 blocks of 8 modules each: about 130 modules in all.
torch::nn::Sequential make_model() {
  torch::nn::Sequential model;
  for (int block = 0; block < 16; ++block) {
    model->push_back(Block());
  }
  model->train();
  return model;
}

void BM_EvalScope(benchmark::State& state) {
  at::set_num_threads(1);
  auto model = make_model();
  for (auto _ : state) {
    torchkit::EvalScope eval(model);
    benchmark::DoNotOptimize(model->is_training());
  }
}
BENCHMARK(BM_EvalScope);

void BM_LibTorch_eval_then_train(benchmark::State& state) {
  at::set_num_threads(1);
  auto model = make_model();
  for (auto _ : state) {
    model->eval();
    benchmark::DoNotOptimize(model->is_training());
    model->train();
  }
}
BENCHMARK(BM_LibTorch_eval_then_train);

void BM_NoGradScope(benchmark::State& state) {
  for (auto _ : state) {
    torchkit::NoGradScope no_grad;
    benchmark::DoNotOptimize(c10::GradMode::is_enabled());
  }
}
BENCHMARK(BM_NoGradScope);

void BM_LibTorch_NoGradGuard(benchmark::State& state) {
  for (auto _ : state) {
    torch::NoGradGuard no_grad;
    benchmark::DoNotOptimize(c10::GradMode::is_enabled());
  }
}
BENCHMARK(BM_LibTorch_NoGradGuard);

// A whole validation step: scopes plus a forward pass over a batch of 64.
void BM_Validation_torchkit(benchmark::State& state) {
  at::set_num_threads(1);
  torch::manual_seed(0);
  auto model = make_model();
  const auto input = torch::randn({64, 32});
  for (auto _ : state) {
    torchkit::EvalScope eval(model);
    torchkit::NoGradScope no_grad;
    benchmark::DoNotOptimize(model->forward(input).data_ptr());
  }
}
BENCHMARK(BM_Validation_torchkit);

void BM_Validation_LibTorch(benchmark::State& state) {
  at::set_num_threads(1);
  torch::manual_seed(0);
  auto model = make_model();
  const auto input = torch::randn({64, 32});
  for (auto _ : state) {
    model->eval();
    {
      torch::NoGradGuard no_grad;
      benchmark::DoNotOptimize(model->forward(input).data_ptr());
    }
    model->train();
  }
}
BENCHMARK(BM_Validation_LibTorch);

}  // namespace

BENCHMARK_MAIN();
