// Tip 3: gradient clipping. torchkit::clip_grad_norm_ beside LibTorch's
// torch::nn::utils::clip_grad_norm_, in the same binary at the same thread count (1), on four
// gradient sets:
//   a_2000x512  2,000 tensors of 512 floats (norm/bias-heavy models, adapters); also as
//               a_2000x512_interleaved, each gradient allocated beside its parameter
//   b_bert      the 199 parameter shapes of a 12-layer BERT-base scaled down 8x (1.8M floats)
//   c_resnet50  ResNet-50's 161 parameter shapes (25.6M floats)
//   d_8x4M      8 tensors of 4M floats
// and, per set, the floor: one plain read pass and one scale pass over as many bytes in one
// contiguous tensor, done by LibTorch (`at::norm` + `mul_`, floor_libtorch) and by torchkit's
// own kernels (floor_kernels). Ratios: time(x) / time(floor_libtorch).
//
// Every set is allocated on first use, once. Each iteration clips to 0.999 of the norm the
// previous one returned, so every call really scales (a norm below max_norm would let torchkit
// skip the multiply by 1 that LibTorch always does); the values shrink by 0.999 per call and
// are restored before each benchmark.
//
// With a CUDA device, the same sets run on it too (names ending in /cuda); skipped otherwise.
#include <torchkit/clip.hpp>

#include <benchmark/benchmark.h>
#include <torch/cuda.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

using Shapes = std::vector<std::vector<int64_t>>;

Shapes many_small_shapes() { return Shapes(2000, std::vector<int64_t>{512}); }

Shapes bert_shapes() {
  // BERT-base scaled down 8x so it fits in the L3 cache as a real model's gradients fit in a
  // GPU's: hidden 768 -> 96, intermediate 3072 -> 384, vocabulary 30522 -> 3815.
  const int64_t hidden = 96, intermediate = 384, vocabulary = 3815, positions = 512;
  Shapes shapes = {{vocabulary, hidden}, {positions, hidden}, {2, hidden}, {hidden}, {hidden}};
  for (int layer = 0; layer < 12; ++layer) {
    for (int projection = 0; projection < 3; ++projection) {  // query, key, value
      shapes.push_back({hidden, hidden});
      shapes.push_back({hidden});
    }
    shapes.push_back({hidden, hidden});  // attention output
    shapes.push_back({hidden});
    shapes.push_back({hidden});  // attention LayerNorm
    shapes.push_back({hidden});
    shapes.push_back({intermediate, hidden});
    shapes.push_back({intermediate});
    shapes.push_back({hidden, intermediate});
    shapes.push_back({hidden});
    shapes.push_back({hidden});  // output LayerNorm
    shapes.push_back({hidden});
  }
  shapes.push_back({hidden, hidden});  // pooler
  shapes.push_back({hidden});
  return shapes;
}

Shapes resnet50_shapes() {
  Shapes shapes = {{64, 3, 7, 7}, {64}, {64}};
  int64_t in_channels = 64;
  const std::pair<int64_t, int> stages[] = {{64, 3}, {128, 4}, {256, 6}, {512, 3}};
  for (const auto& [planes, blocks] : stages) {
    for (int block = 0; block < blocks; ++block) {
      shapes.push_back({planes, in_channels, 1, 1});
      shapes.push_back({planes});
      shapes.push_back({planes});
      shapes.push_back({planes, planes, 3, 3});
      shapes.push_back({planes});
      shapes.push_back({planes});
      shapes.push_back({planes * 4, planes, 1, 1});
      shapes.push_back({planes * 4});
      shapes.push_back({planes * 4});
      if (block == 0) {  // downsample
        shapes.push_back({planes * 4, in_channels, 1, 1});
        shapes.push_back({planes * 4});
        shapes.push_back({planes * 4});
      }
      in_channels = planes * 4;
    }
  }
  shapes.push_back({1000, 2048});
  shapes.push_back({1000});
  return shapes;
}

Shapes large_shapes() { return Shapes(8, std::vector<int64_t>{int64_t{1} << 22}); }

struct GradientSet {
  std::vector<at::Tensor> params;
  at::Tensor flat;  // one contiguous tensor with as many elements, for the floor
  int64_t elements = 0;
  double initial_norm = 0;

  /// Scales the gradients back to their initial norm (outside the timed loop).
  double restore() {
    const double norm = torchkit::grad_norm(params).item<double>();
    for (auto& param : params) param.mutable_grad().mul_(initial_norm / norm);
    return initial_norm;
  }
};

constexpr double shrink = 0.999;

const std::map<std::string, std::function<Shapes()>>& set_shapes() {
  static const std::map<std::string, std::function<Shapes()>> shapes = {
      {"a_2000x512", many_small_shapes},
      {"a_2000x512_interleaved", many_small_shapes},
      {"b_bert", bert_shapes},
      {"c_resnet50", resnet50_shapes},
      {"d_8x4M", large_shapes},
  };
  return shapes;
}

/// The set on `device`, built on first use.
GradientSet& gradient_set(const std::string& name, const c10::Device& device) {
  static std::map<std::pair<std::string, std::string>, std::unique_ptr<GradientSet>> cache;
  auto& slot = cache[{name, device.str()}];
  if (!slot) {
    slot = std::make_unique<GradientSet>();
    torch::manual_seed(0);
    const auto options = torch::TensorOptions().dtype(torch::kFloat).device(device);
    // Parameters first, then their gradients, as a model is built and then backpropagated;
    // the "_interleaved" set allocates each gradient right after its parameter instead, which
    // scatters the gradients through memory (the hardware prefetcher then helps less).
    const bool interleaved = name.ends_with("_interleaved");
    for (const auto& shape : set_shapes().at(name)()) {
      auto param = torch::zeros(shape, options.requires_grad(true));
      if (interleaved) param.mutable_grad() = torch::empty(shape, options).uniform_(-1, 1);
      slot->elements += param.numel();
      slot->params.push_back(param);
    }
    if (!interleaved) {
      for (auto& param : slot->params) param.mutable_grad() = torch::empty_like(param).uniform_(-1, 1);
    }
    slot->flat = torch::empty({slot->elements}, options).uniform_(-1, 1);
    slot->initial_norm = torchkit::grad_norm(slot->params).item<double>();
  }
  return *slot;
}

void synchronize(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

void finish(benchmark::State& state, const GradientSet& set) {
  // Bytes read for the norm plus bytes read and written by the scale pass.
  state.SetBytesProcessed(state.iterations() * set.elements * static_cast<int64_t>(sizeof(float)) * 3);
  state.counters["tensors"] = static_cast<double>(set.params.size());
}

void torchkit_clip(benchmark::State& state, const std::string& name, c10::Device device) {
  at::set_num_threads(1);
  auto& set = gradient_set(name, device);
  double norm = set.restore();
  for (auto _ : state) {
    norm = torchkit::clip_grad_norm_(set.params, norm * shrink).item<double>() * shrink;
    synchronize(device);
  }
  finish(state, set);
}

void libtorch_clip(benchmark::State& state, const std::string& name, c10::Device device) {
  at::set_num_threads(1);
  auto& set = gradient_set(name, device);
  double norm = set.restore();
  for (auto _ : state) {
    norm = torch::nn::utils::clip_grad_norm_(set.params, norm * shrink) * shrink;
    synchronize(device);
  }
  finish(state, set);
}

void torchkit_reference_clip(benchmark::State& state, const std::string& name, c10::Device device) {
  at::set_num_threads(1);
  auto& set = gradient_set(name, device);
  double norm = set.restore();
  for (auto _ : state) {
    norm = torchkit::clip_grad_norm_(set.params, norm * shrink, 2.0, {.foreach = false}).item<double>() * shrink;
    synchronize(device);
  }
  finish(state, set);
}

// The floor: LibTorch reading every byte once for the norm, then scaling every byte once.
void floor_libtorch(benchmark::State& state, const std::string& name, c10::Device device) {
  at::set_num_threads(1);
  auto& set = gradient_set(name, device);
  double factor = 0.5;
  for (auto _ : state) {
    benchmark::DoNotOptimize(at::norm(set.flat).data_ptr());
    set.flat.mul_(factor);
    factor = 1 / factor;  // 0.5, 2, 0.5, ...: exact, no decay
    synchronize(device);
  }
  finish(state, set);
}

// The same two passes with torchkit's kernels over the one contiguous buffer (CPU only).
void floor_kernels(benchmark::State& state, const std::string& name) {
  at::set_num_threads(1);
  auto& set = gradient_set(name, at::kCPU);
  double factor = 0.5;
  for (auto _ : state) {
    using namespace torchkit::detail::clip;
    benchmark::DoNotOptimize(reduce(at::kFloat, NormKind::two, set.flat.data_ptr(), set.elements, 2.0));
    scale(at::kFloat, set.flat.data_ptr(), set.elements, factor);
    factor = 1 / factor;
  }
  finish(state, set);
}

void torchkit_clip_value(benchmark::State& state, const std::string& name) {
  at::set_num_threads(1);
  auto& set = gradient_set(name, at::kCPU);
  for (auto _ : state) {
    torchkit::clip_grad_value_(set.params, 10.0);  // reads and writes every element, changes none
  }
  finish(state, set);
}

void libtorch_clip_value(benchmark::State& state, const std::string& name) {
  at::set_num_threads(1);
  auto& set = gradient_set(name, at::kCPU);
  for (auto _ : state) {
    torch::nn::utils::clip_grad_value_(set.params, 10.0);
  }
  finish(state, set);
}

void register_all() {
  std::vector<c10::Device> devices = {at::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(at::kCUDA, 0);
  for (const auto& device : devices) {
    const std::string suffix = device.is_cuda() ? "/cuda" : "";
    for (const auto& [name, shapes] : set_shapes()) {
      const std::string prefix = "clip_grad_norm/" + name + "/";
      benchmark::RegisterBenchmark((prefix + "torchkit" + suffix).c_str(), torchkit_clip, name, device)
          ->Unit(benchmark::kMicrosecond)->UseRealTime();
      benchmark::RegisterBenchmark((prefix + "libtorch" + suffix).c_str(), libtorch_clip, name, device)
          ->Unit(benchmark::kMicrosecond)->UseRealTime();
      benchmark::RegisterBenchmark((prefix + "floor_libtorch" + suffix).c_str(), floor_libtorch, name, device)
          ->Unit(benchmark::kMicrosecond)->UseRealTime();
      if (device.is_cpu()) {
        benchmark::RegisterBenchmark((prefix + "floor_kernels").c_str(), floor_kernels, name)
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
        benchmark::RegisterBenchmark((prefix + "torchkit_reference_path").c_str(), torchkit_reference_clip, name,
                                     device)
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
      }
    }
  }
  for (const std::string name : {"a_2000x512", "b_bert"}) {
    benchmark::RegisterBenchmark(("clip_grad_value/" + name + "/torchkit").c_str(), torchkit_clip_value, name)
        ->Unit(benchmark::kMicrosecond)->UseRealTime();
    benchmark::RegisterBenchmark(("clip_grad_value/" + name + "/libtorch").c_str(), libtorch_clip_value, name)
        ->Unit(benchmark::kMicrosecond)->UseRealTime();
  }
}

}  // namespace

int main(int argc, char** argv) {
  at::set_num_threads(1);
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
