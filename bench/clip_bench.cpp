// Tip 3: gradient clipping. torchkit::clip_grad_norm_ beside LibTorch's
// torch::nn::utils::clip_grad_norm_, in the same binary at the same thread count, on four
// gradient sets:
//   a_2000x512  2,000 tensors of 512 floats (norm/bias-heavy models, adapters); also as
//               a_2000x512_interleaved, each gradient allocated beside its parameter
//   b_bert      the 199 parameter shapes of a 12-layer BERT-base scaled down 8x (1.8M floats)
//   c_resnet50  ResNet-50's 161 parameter shapes (25.6M floats)
//   d_8x4M      8 tensors of 4M floats
// and, per set, the floor: one plain read pass and one scale pass over as many bytes in one
// contiguous tensor, done by LibTorch (`at::norm` + `mul_`, floor_libtorch) and by torchkit's
// own kernels (floor_kernels); and the in-place floor (floor_in_place): the same two passes over
// the set's own gradients, wherever they lie, after visiting every parameter through LibTorch's
// accessors, and nothing else: the least any clip of the set costs (its vs_floor is the best a
// clip could show). Every CPU benchmark runs on 1 and 2 intra-op threads (/threads:N).
//
// torchkit's rows carry the ratios directly, measured in the same run at the same thread count,
// every time as the best of five rounds (the same statistic on both sides of a ratio; the floor
// right after torchkit, so that both see the machine in the same state):
//   vs_libtorch  LibTorch's time / torchkit's (above 1: torchkit is faster)
//   vs_floor     torchkit's time / floor_kernels' (1 is the memory floor)
// The fast path runs with the best kernels this CPU has (torchkit) and, pinned, with every
// other instruction set it has (torchkit_isa_avx2, ...), so each path is measured here.
//
// Every set is allocated on first use, once. Each iteration clips to 0.999 of the norm the
// previous one returned, so every call really scales (a norm below max_norm would let torchkit
// skip the multiply by 1 that LibTorch always does); the values shrink by 0.999 per call and
// are restored before each benchmark and every 4,096 calls (before they could underflow).
//
// On a_2000x512 and b_bert also: clip_grad_value_ (the clamp kernels) and clip_grad_norm_ with
// norm_type = inf and a max_norm above the norm (the max-magnitude kernels), each beside LibTorch's.
//
// With a CUDA device, the same sets run on it too (names ending in /cuda); skipped otherwise.
#include <torchkit/clip.hpp>

#include "gradient_sets.hpp"

#include <benchmark/benchmark.h>
#include <torch/cuda.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

using torchkit_bench::Shapes;
using Run = torchkit::detail::clip::Run;

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
      {"a_2000x512", torchkit_bench::many_small_shapes},
      {"a_2000x512_interleaved", torchkit_bench::many_small_shapes},
      {"b_bert", torchkit_bench::bert_shapes},
      {"c_resnet50", torchkit_bench::resnet50_shapes},
      {"d_8x4M", torchkit_bench::large_shapes},
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

/// A CPU row without ratio counters: `call(set)` once an iteration on `name`'s set, at the row's
/// thread count.
template <class Call>
void each_call(benchmark::State& state, const std::string& name, Call call) {
  at::set_num_threads(static_cast<int>(state.range(0)));
  auto& set = gradient_set(name, at::kCPU);
  for (auto _ : state) {
    call(set);
  }
  finish(state, set);
}

/// Runs `step` `iterations` times after a warm-up and returns the fastest of five rounds, in
/// seconds per call (the ratio counters' reference times).
double seconds_per_call(const std::function<void()>& step, int iterations) {
  for (int i = 0; i < iterations; ++i) step();
  double best = 1e30;
  for (int round = 0; round < 5; ++round) {
    const auto begin = std::chrono::steady_clock::now();
    for (int i = 0; i < iterations; ++i) step();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count());
  }
  return best / iterations;
}

/// LibTorch's clip for one set at one thread count, measured once.
struct References {
  double libtorch = 0;
};

/// Iterations per round of seconds_per_call: about 20 ms a round.
int round_iterations(const GradientSet& set) {
  return static_cast<int>(std::clamp<int64_t>(200'000'000 / (set.elements + 1), 3, 2000));  // ~0.1 ns an element
}

void clip_with_libtorch(GradientSet& set, double& norm, const c10::Device& device) {
  norm = torch::nn::utils::clip_grad_norm_(set.params, norm * shrink) * shrink;
  synchronize(device);
}

void floor_pass(GradientSet& set, double& factor) {
  using namespace torchkit::detail::clip;
  benchmark::DoNotOptimize(reduce(at::kFloat, NormKind::two, set.flat.data_ptr(), set.elements, 2.0));
  scale(at::kFloat, set.flat.data_ptr(), set.elements, factor);
  factor = 1 / factor;  // 0.5, 2, 0.5, ...: exact, no decay
}

/// floor_pass's time per call, measured as the ratio counters' reference.
double floor_seconds(GradientSet& set) {
  double factor = 0.5;
  return seconds_per_call([&] { floor_pass(set, factor); }, round_iterations(set));
}

/// The in-place floor: the two passes over the gradients where they lie (separate allocations),
/// their pointers gathered each call through LibTorch's accessors (torchkit_bench::gather_runs)
/// and nothing else: no checks, no per-gradient norms, no result tensor. The least any clip of
/// this set can cost on one thread; its ratio to floor_pass is the best vs_floor a clip could show.
void in_place_floor_pass(GradientSet& set, std::vector<Run>& runs, std::vector<double>& partials, double& factor) {
  using namespace torchkit::detail::clip;
  torchkit_bench::gather_runs(set.params, runs);
  partials.resize(runs.size());
  const auto count = static_cast<std::int64_t>(runs.size());
  reduce_runs(runs.data(), count, NormKind::two, 2.0, partials.data());
  benchmark::DoNotOptimize(partials.data());
  scale_runs(runs.data(), count, factor);
  factor = 1 / factor;  // 0.5, 2, 0.5, ...: exact, no decay
}

const References& references(const std::string& name, int threads) {
  static std::map<std::pair<std::string, int>, References> cache;
  auto [slot, inserted] = cache.try_emplace({name, threads});
  if (inserted) {
    at::set_num_threads(threads);
    auto& set = gradient_set(name, at::kCPU);
    double norm = set.restore();
    slot->second.libtorch = seconds_per_call([&] { clip_with_libtorch(set, norm, at::kCPU); }, round_iterations(set));
    set.restore();
  }
  return slot->second;
}

using Isa = torchkit::detail::clip::Isa;

void torchkit_clip(benchmark::State& state, const std::string& name, c10::Device device, int isa) {
  const int threads = static_cast<int>(state.range(0));
  std::optional<torchkit::detail::clip::ForceIsa> pin;
  if (isa >= 0) pin.emplace(static_cast<Isa>(isa));
  const References* reference = device.is_cpu() ? &references(name, threads) : nullptr;
  at::set_num_threads(threads);
  auto& set = gradient_set(name, device);
  double norm = set.restore();
  std::int64_t calls = 0;
  const auto step = [&] {
    norm = torchkit::clip_grad_norm_(set.params, norm * shrink).item<double>() * shrink;
    synchronize(device);
    if (++calls % 4096 == 0) norm = set.restore();
  };
  for (auto _ : state) {
    step();
  }
  finish(state, set);
  if (reference != nullptr) {
    const double seconds = seconds_per_call(step, round_iterations(set));
    state.counters["vs_libtorch"] = reference->libtorch / seconds;
    state.counters["vs_floor"] = seconds / floor_seconds(set);
  }
}

void libtorch_clip(benchmark::State& state, const std::string& name, c10::Device device) {
  at::set_num_threads(static_cast<int>(state.range(0)));
  auto& set = gradient_set(name, device);
  double norm = set.restore();
  for (auto _ : state) {
    clip_with_libtorch(set, norm, device);
  }
  finish(state, set);
}

void torchkit_reference_clip(benchmark::State& state, const std::string& name, c10::Device device) {
  at::set_num_threads(static_cast<int>(state.range(0)));
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
  at::set_num_threads(static_cast<int>(state.range(0)));
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

// The same two passes with torchkit's kernels over the one contiguous buffer (CPU, one thread:
// the kernels themselves are single-threaded; the fast path splits the work).
void floor_kernels(benchmark::State& state, const std::string& name) {
  double factor = 0.5;
  each_call(state, name, [&](GradientSet& set) { floor_pass(set, factor); });
}

// The in-place floor (see in_place_floor_pass), with its ratio to floor_kernels.
void floor_in_place(benchmark::State& state, const std::string& name) {
  at::set_num_threads(static_cast<int>(state.range(0)));
  auto& set = gradient_set(name, at::kCPU);
  set.restore();
  std::vector<Run> runs;
  std::vector<double> partials;
  double factor = 0.5;
  const auto step = [&] { in_place_floor_pass(set, runs, partials, factor); };
  for (auto _ : state) {
    step();
  }
  finish(state, set);
  const double seconds = seconds_per_call(step, round_iterations(set));
  state.counters["vs_floor"] = seconds / floor_seconds(set);
}

// What any clip of these parameters must do besides the two passes: visit every parameter and
// read its gradient's data pointer, element count and dtype through LibTorch's own accessors
// (torchkit_bench::gather_runs, the in-place floor's first step).
void floor_metadata(benchmark::State& state, const std::string& name) {
  std::vector<Run> runs;
  each_call(state, name, [&](GradientSet& set) {
    torchkit_bench::gather_runs(set.params, runs);
    benchmark::DoNotOptimize(runs.data());
  });
}

void torchkit_clip_value(benchmark::State& state, const std::string& name) {
  // Reads and writes every element, changes none.
  each_call(state, name, [](GradientSet& set) { torchkit::clip_grad_value_(set.params, 10.0); });
}

void libtorch_clip_value(benchmark::State& state, const std::string& name) {
  each_call(state, name, [](GradientSet& set) { torch::nn::utils::clip_grad_value_(set.params, 10.0); });
}

// The max-norm (norm_type = inf) with a max_norm above the norm: both sides compute the norm
// and leave the gradients as they are (the comparison of magnitudes, not the scale pass).
constexpr double unreachable_max_norm = 1e30;
constexpr double infinity = std::numeric_limits<double>::infinity();

void torchkit_clip_inf(benchmark::State& state, const std::string& name) {
  each_call(state, name, [](GradientSet& set) {
    benchmark::DoNotOptimize(torchkit::clip_grad_norm_(set.params, unreachable_max_norm, infinity));
  });
}

void libtorch_clip_inf(benchmark::State& state, const std::string& name) {
  each_call(state, name, [](GradientSet& set) {
    benchmark::DoNotOptimize(torch::nn::utils::clip_grad_norm_(set.params, unreachable_max_norm, infinity));
  });
}

template <class... Args>
void add(const std::string& name, bool cpu, Args&&... args) {
  auto* benchmark = benchmark::RegisterBenchmark(name.c_str(), std::forward<Args>(args)...);
  benchmark->Unit(benchmark::kMicrosecond)->UseRealTime()->ArgName("threads");
  if (cpu) {
    benchmark->Arg(1)->Arg(2);
  } else {
    benchmark->Arg(1);
  }
}

void register_all() {
  std::vector<c10::Device> devices = {at::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(at::kCUDA, 0);
  const auto best = torchkit::detail::clip::cpu_isa();
  for (const auto& device : devices) {
    const bool cpu = device.is_cpu();
    const std::string suffix = cpu ? "" : "/cuda";
    for (const auto& [name, shapes] : set_shapes()) {
      const std::string prefix = "clip_grad_norm/" + name + "/";
      add(prefix + "torchkit" + suffix, cpu, torchkit_clip, name, device, -1);
      add(prefix + "libtorch" + suffix, cpu, libtorch_clip, name, device);
      add(prefix + "floor_libtorch" + suffix, cpu, floor_libtorch, name, device);
      if (cpu) {
        add(prefix + "floor_kernels", cpu, floor_kernels, name);
        add(prefix + "torchkit_reference_path", cpu, torchkit_reference_clip, name, device);
        add(prefix + "floor_metadata", cpu, floor_metadata, name);
        add(prefix + "floor_in_place", cpu, floor_in_place, name);
        for (int isa = 0; isa < static_cast<int>(best); ++isa) {
          add(prefix + "torchkit_isa_" + torchkit::detail::clip::isa_name(static_cast<Isa>(isa)), cpu, torchkit_clip,
              name, device, isa);
        }
      }
    }
  }
  for (const std::string name : {"a_2000x512", "b_bert"}) {
    add("clip_grad_value/" + name + "/torchkit", true, torchkit_clip_value, name);
    add("clip_grad_value/" + name + "/libtorch", true, libtorch_clip_value, name);
    add("clip_grad_norm_inf/" + name + "/torchkit", true, torchkit_clip_inf, name);
    add("clip_grad_norm_inf/" + name + "/libtorch", true, libtorch_clip_inf, name);
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
