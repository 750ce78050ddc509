// Tip 2: what a model summary costs, beside the LibTorch way of running the model once.
//
// torchkit::summary runs one forward pass with thread-local operator callbacks installed and
// then attributes the operators to modules; the LibTorch baseline is one plain forward pass of
// the same model on the same input, in eval mode under no-grad. Target: summary at most 3x the
// forward pass. Count::Operators (mult-adds per operator) and torchkit::capture (feature maps
// from the middle of the network) run the same observed pass; target: within 1.2x of the plain
// forward pass. The model is a ResNet-18 (torchvision's layout and forward, 11.7M parameters),
// the input 1x3x64x64 and 1x3x224x224; one intra-op thread for both.
#include <torchkit/capture.hpp>
#include <torchkit/summary.hpp>

#include <benchmark/benchmark.h>
#include <torch/torch.h>

namespace {

struct BasicBlockImpl : torch::nn::Module {
  BasicBlockImpl(int64_t inplanes, int64_t planes, int64_t stride) {
    using torch::nn::Conv2dOptions;
    conv1 = register_module("conv1", torch::nn::Conv2d(Conv2dOptions(inplanes, planes, 3).stride(stride).padding(1).bias(false)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(planes));
    relu = register_module("relu", torch::nn::ReLU(torch::nn::ReLUOptions(true)));
    conv2 = register_module("conv2", torch::nn::Conv2d(Conv2dOptions(planes, planes, 3).padding(1).bias(false)));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(planes));
    if (stride != 1 || inplanes != planes) {
      downsample = register_module(
          "downsample", torch::nn::Sequential(torch::nn::Conv2d(Conv2dOptions(inplanes, planes, 1).stride(stride).bias(false)),
                                              torch::nn::BatchNorm2d(planes)));
    }
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor identity = x;
    at::Tensor out = relu(bn1(conv1(x)));
    out = bn2(conv2(out));
    if (downsample) {
      identity = downsample->forward(x);
    }
    out += identity;
    return relu(out);
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::ReLU relu{nullptr};
  torch::nn::Sequential downsample{nullptr};
};
TORCH_MODULE(BasicBlock);

struct ResNet18Impl : torch::nn::Module {
  ResNet18Impl() {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 64, 7).stride(2).padding(3).bias(false)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(64));
    relu = register_module("relu", torch::nn::ReLU(torch::nn::ReLUOptions(true)));
    maxpool = register_module("maxpool", torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(3).stride(2).padding(1)));
    layer1 = register_module("layer1", torch::nn::Sequential(BasicBlock(64, 64, 1), BasicBlock(64, 64, 1)));
    layer2 = register_module("layer2", torch::nn::Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128, 1)));
    layer3 = register_module("layer3", torch::nn::Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256, 1)));
    layer4 = register_module("layer4", torch::nn::Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512, 1)));
    avgpool = register_module("avgpool", torch::nn::AdaptiveAvgPool2d(1));
    fc = register_module("fc", torch::nn::Linear(512, 1000));
  }
  at::Tensor forward(at::Tensor x) {
    x = maxpool(relu(bn1(conv1(x))));
    x = layer4->forward(layer3->forward(layer2->forward(layer1->forward(x))));
    return fc(torch::flatten(avgpool(x), 1));
  }
  torch::nn::Conv2d conv1{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::ReLU relu{nullptr};
  torch::nn::MaxPool2d maxpool{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};
  torch::nn::AdaptiveAvgPool2d avgpool{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(ResNet18);

ResNet18& model() {
  static ResNet18 resnet = [] {
    torch::manual_seed(0);
    return ResNet18();
  }();
  return resnet;
}

// torchkit: the summary of one forward pass, batch 1.
void BM_Summary_torchkit(benchmark::State& state) {
  at::set_num_threads(1);
  const int64_t size = state.range(0);
  for (auto _ : state) {
    torchkit::Summary summary = torchkit::summary(model(), {3, size, size}, {.batch_size = 1});
    benchmark::DoNotOptimize(summary.total_mult_adds());
  }
}
BENCHMARK(BM_Summary_torchkit)->Arg(64)->Arg(224)->Unit(benchmark::kMillisecond);

// torchkit: the summary with mult-adds counted per operator (Count::Operators).
void BM_SummaryOperators_torchkit(benchmark::State& state) {
  at::set_num_threads(1);
  const int64_t size = state.range(0);
  for (auto _ : state) {
    torchkit::Summary summary =
        torchkit::summary(model(), {3, size, size}, {.batch_size = 1, .count = torchkit::Count::operators});
    benchmark::DoNotOptimize(summary.total_mult_adds());
  }
}
BENCHMARK(BM_SummaryOperators_torchkit)->Arg(224)->Unit(benchmark::kMillisecond);

// torchkit: module outputs from one forward pass, in eval mode under no-grad like the baseline.
// Arg 0: layer2 and layer3 (operators are attributed as they end, so each open selected call
// holds only its latest output and every other output is freed as in the plain pass); arg 1: fc only.
void BM_Capture_torchkit(benchmark::State& state) {
  at::set_num_threads(1);
  const int64_t size = 224;
  const at::Tensor input = torch::rand({1, 3, size, size});
  const torchkit::PatternList patterns =
      state.range(0) == 0 ? torchkit::PatternList{"layer2", "layer3"} : torchkit::PatternList{"fc"};
  model()->eval();
  for (auto _ : state) {
    torch::NoGradGuard no_grad;
    torchkit::CapturedOutputs features = torchkit::capture(model(), patterns, input);
    benchmark::DoNotOptimize(features.back().second.data_ptr());
  }
  model()->train();
}
BENCHMARK(BM_Capture_torchkit)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

// LibTorch: one plain forward pass of the same model and input, in eval mode under no-grad.
void BM_Forward_LibTorch(benchmark::State& state) {
  at::set_num_threads(1);
  const int64_t size = state.range(0);
  const at::Tensor input = torch::rand({1, 3, size, size});
  model()->eval();
  for (auto _ : state) {
    torch::NoGradGuard no_grad;
    at::Tensor output = model()->forward(input);
    benchmark::DoNotOptimize(output.data_ptr());
  }
  model()->train();
}
BENCHMARK(BM_Forward_LibTorch)->Arg(64)->Arg(224)->Unit(benchmark::kMillisecond);

// torchkit without a forward pass: the parameter table only (the module tree and the counts).
void BM_SummaryParametersOnly_torchkit(benchmark::State& state) {
  for (auto _ : state) {
    torchkit::Summary summary = torchkit::summary(model());
    benchmark::DoNotOptimize(summary.total_params());
  }
}
BENCHMARK(BM_SummaryParametersOnly_torchkit)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
