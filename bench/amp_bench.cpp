// Mixed precision: the scaler-aware clip, torchkit::clip_grad_norm_(optimizer, max_norm, 2,
// scaler) (unscale + non-finite check + norm + clip in one read pass and one write pass),
// beside the same recipe written with LibTorch ops, in the same binary at the same thread count:
//
//   libtorch_recipe  `g.mul_(inv_scale)` per gradient, an `isfinite(g).all()` check per gradient
//                    (one host read for all), then torch::nn::utils::clip_grad_norm_ — what a
//                    LibTorch user writes for Python's `scaler.unscale_(opt); clip_grad_norm_(...)`
//                    (LibTorch 1.13 has no CPU `_amp_foreach_non_finite_check_and_unscale_`)
//   torchkit         the scaler-aware clip_grad_norm_
//   floor            two passes over as many bytes in one contiguous tensor with torchkit's own
//                    kernels: a norm read pass and a scale pass (the least the job can cost)
//   floor_in_place   the scaled clip's own two fused passes over the set's gradients where they
//                    lie, after visiting every parameter through LibTorch's accessors, and
//                    nothing else (the least the scaled clip of that set can cost; its vs_floor
//                    is the best ratio a scaled clip could show)
//
// on two float32 gradient sets (as bench/clip_bench.cpp): a_2000x512 (2,000 tensors of 512) and
// b_bert (the 199 shapes of BERT-base scaled down 8x). torchkit's rows carry the ratios measured
// in the same run, each side as the best of five rounds (the floor right after torchkit):
// vs_libtorch (LibTorch's time / torchkit's) and vs_floor (torchkit's / floor's).
//
// Each iteration: the scale alternates between 2 and 0.5 (update(new_scale): exact, no drift)
// and the gradients are clipped to 0.999 of their unscaled norm, so both factors always
// multiply (the values shrink by 0.999 a call); they are restored before each benchmark.
//
// GradScaler::unscale_ alone (Python's `scaler.unscale_(opt)`, one read-write pass that also
// finds inf/nan), on the same sets, as unscale/<set>/{libtorch, torchkit, floor}:
//   libtorch  LibTorch 2.x: `at::_amp_foreach_non_finite_check_and_unscale_` on the CPU (what
//             Python's GradScaler("cpu") runs); LibTorch 1.13, which has no CPU kernel for it:
//             `g.mul_(inv_scale)` and `isfinite(g).all()` per gradient, the flags stacked
//   torchkit  scaler.unscale_(optimizer), then update(new_scale) (the scale alternates 2, 0.5)
//   floor     one scale pass over as many bytes in one contiguous tensor (torchkit's kernel)
#include <torchkit/amp.hpp>

#include "gradient_sets.hpp"

#include <benchmark/benchmark.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/sgd.h>
#include <torch/torch.h>

#if __has_include(<ATen/ops/_amp_foreach_non_finite_check_and_unscale_cpu_dispatch.h>)
#define AMP_BENCH_ATEN_CPU_UNSCALE 1  // LibTorch 2.x: ATen's fused unscale runs on the CPU
#else
#define AMP_BENCH_ATEN_CPU_UNSCALE 0
#endif

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using Run = torchkit::detail::clip::Run;

constexpr double shrink = 0.999;

struct Set {
  std::vector<at::Tensor> params;
  std::vector<at::Tensor> initial;  // the gradients' first values
  std::unique_ptr<torch::optim::SGD> optimizer;
  at::Tensor flat;
  int64_t elements = 0;
  double norm = 0;  // the norm of the gradients as they are now (scaled), tracked from the clips

  /// Back to the first values, scaled by 2 (the scale the first iteration unscales).
  void restore() {
    const at::NoGradGuard no_grad;
    for (std::size_t k = 0; k < params.size(); ++k) params[k].mutable_grad().copy_(initial[k]).mul_(2.0);
    norm = torchkit::grad_norm(params).item<double>();
  }
};

Set& set_named(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Set>> cache;
  auto& slot = cache[name];
  if (!slot) {
    slot = std::make_unique<Set>();
    torch::manual_seed(0);
    const auto shapes = name == "a_2000x512" ? torchkit_bench::many_small_shapes() : torchkit_bench::bert_shapes();
    for (const auto& shape : shapes) {
      slot->params.push_back(torch::zeros(shape, torch::requires_grad()));
      slot->elements += slot->params.back().numel();
    }
    // Parameters, then their gradients, as a model is built and then backpropagated (as
    // clip_bench's sets); the saved first values after them, not between the gradients.
    for (auto& param : slot->params) param.mutable_grad() = torch::empty_like(param).uniform_(-1, 1);
    for (auto& param : slot->params) slot->initial.push_back(param.grad().clone());
    slot->optimizer = std::make_unique<torch::optim::SGD>(slot->params, 0.1);
    slot->flat = torch::empty({slot->elements}).uniform_(-1, 1);
  }
  return *slot;
}

/// Unscales every gradient by `inv` with `mul_` and checks each with `isfinite(g).all()`;
/// returns whether all are finite (a bool tensor, not read on the host).
at::Tensor unscale_by_ops(Set& set, const at::Tensor& inv) {
  std::vector<at::Tensor> finite;
  finite.reserve(set.params.size());
  for (auto& param : set.params) {
    at::Tensor& grad = param.mutable_grad();
    grad.mul_(inv);
    finite.push_back(at::isfinite(grad).all());
  }
  return at::stack(finite).all();
}

/// One scaled step of the LibTorch recipe: unscale by mul_, isfinite check, clip.
void libtorch_step(Set& set, double& scale) {
  const at::NoGradGuard no_grad;
  const at::Tensor inv = at::scalar_tensor(static_cast<float>(1.0 / scale));
  bool found_inf = !unscale_by_ops(set, inv).item<bool>();  // (not const: DoNotOptimize(const&) is deprecated)
  benchmark::DoNotOptimize(found_inf);
  // Clip to 0.999 of the unscaled norm: the gradients then have norm max_norm.
  const double max_norm = set.norm / scale * shrink;
  benchmark::DoNotOptimize(torch::nn::utils::clip_grad_norm_(set.params, max_norm));
  set.norm = max_norm;
  scale = 1.0 / scale;  // 2, 0.5, 2, ...
}

/// The same step with torchkit (the scaler's scale set to `scale` by update(new_scale)).
void torchkit_step(Set& set, torchkit::GradScaler& scaler, double& scale) {
  const double max_norm = set.norm / scale * shrink;
  benchmark::DoNotOptimize(torchkit::clip_grad_norm_(*set.optimizer, max_norm, 2.0, scaler));
  set.norm = max_norm;
  scale = 1.0 / scale;
  scaler.update(scale);  // a new step, with the next scale
}

void floor_step(Set& set, double& factor) {
  using namespace torchkit::detail::clip;
  benchmark::DoNotOptimize(reduce(at::kFloat, NormKind::two, set.flat.data_ptr(), set.elements, 2.0));
  scale(at::kFloat, set.flat.data_ptr(), set.elements, factor);
  factor = 1.0 / factor;
}

/// The in-place floor of the scaled clip: its two fused passes (unscale + inf/nan check + norm,
/// then unscale x clip) over the set's own gradients, wherever they lie, their pointers gathered
/// each call through LibTorch's accessors (torchkit_bench::gather_runs), and nothing else: the
/// least the scaled clip of this set costs on one thread. The inverse scale alternates 0.5, 2.
void in_place_floor_step(Set& set, std::vector<Run>& runs, std::vector<double>& partials, float& inv) {
  using namespace torchkit::detail::clip;
  torchkit_bench::gather_runs(set.params, runs);
  partials.resize(runs.size());
  const auto count = static_cast<std::int64_t>(runs.size());
  unsigned char nonfinite = 0;
  unscale_reduce_runs(runs.data(), count, NormKind::two, 2.0, inv, partials.data(), &nonfinite);
  benchmark::DoNotOptimize(partials.data());
  benchmark::DoNotOptimize(nonfinite);
  unscale_scale_runs(runs.data(), count, inv, 1.0);
  inv = 1.0f / inv;
}

/// Python's `scaler.unscale_(opt)` the LibTorch way (see the top of this file); the inverse
/// scale alternates 0.5, 2 (exact, no drift).
void libtorch_unscale(Set& set, float& inv) {
  const at::NoGradGuard no_grad;
  const at::Tensor inv_tensor = at::full({1}, inv);
#if AMP_BENCH_ATEN_CPU_UNSCALE
  std::vector<at::Tensor> grads;
  grads.reserve(set.params.size());
  for (auto& param : set.params) grads.push_back(param.grad());
  at::Tensor found = at::zeros({1});
  at::_amp_foreach_non_finite_check_and_unscale_(grads, found, inv_tensor);
  benchmark::DoNotOptimize(found.data_ptr());
#else
  benchmark::DoNotOptimize(unscale_by_ops(set, inv_tensor).data_ptr());
#endif
  inv = 1.0f / inv;
}

/// GradScaler::unscale_, then the next step with the other scale (2, 0.5, ...).
void torchkit_unscale(Set& set, torchkit::GradScaler& scaler, double& scale) {
  scaler.unscale_(*set.optimizer);
  scale = 1.0 / scale;
  scaler.update(scale);
}

void unscale_floor_step(Set& set, double& factor) {
  torchkit::detail::clip::scale(at::kFloat, set.flat.data_ptr(), set.elements, factor);
  factor = 1.0 / factor;
}

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

/// `floor(set, factor)`'s time per call (factor alternating from 0.5), the vs_floor reference.
template <class Floor>
double floor_seconds(Set& set, Floor floor, int iterations) {
  double factor = 0.5;
  return seconds_per_call([&] { floor(set, factor); }, iterations);
}

/// Iterations per round of the ratio counters: rounds of ~20 ms (about 0.1 ns an element), or
/// single calls in a smoke run.
int round_iterations(const benchmark::State& state, const Set& set) {
  return state.max_iterations > 10 ? static_cast<int>(std::clamp<int64_t>(200'000'000 / (set.elements + 1), 3, 2000))
                                   : 1;
}

/// LibTorch's time per call for one family ("scaled_clip" or "unscale"), set and thread count,
/// measured once.
double libtorch_seconds(const std::string& family, const std::string& name, int threads, int iterations) {
  static std::map<std::tuple<std::string, std::string, int>, double> cache;
  auto [slot, inserted] = cache.try_emplace({family, name, threads}, 0.0);
  if (inserted) {
    Set& set = set_named(name);
    set.restore();
    double scale = 2.0;
    float inv = 0.5f;
    slot->second = family == "unscale" ? seconds_per_call([&] { libtorch_unscale(set, inv); }, iterations)
                                       : seconds_per_call([&] { libtorch_step(set, scale); }, iterations);
  }
  return slot->second;
}

/// `accesses`: how many times each byte is read or written (3 for a read pass and a
/// read-write pass, 2 for one read-write pass).
void finish(benchmark::State& state, const Set& set, int accesses = 3) {
  state.SetBytesProcessed(state.iterations() * set.elements * static_cast<int64_t>(sizeof(float)) * accesses);
  state.counters["tensors"] = static_cast<double>(set.params.size());
}

/// A row without ratio counters: `step(set, value)` timed, `value` (the scale, inverse or
/// factor a step alternates) starting at `first`, the gradients restored first.
template <class T, class Step>
void run_plain(benchmark::State& state, const std::string& name, int accesses, T first, Step step) {
  at::set_num_threads(static_cast<int>(state.range(0)));
  Set& set = set_named(name);
  set.restore();
  T value = first;
  for (auto _ : state) step(set, value);
  finish(state, set, accesses);
}

void BM_libtorch_recipe(benchmark::State& state, const std::string& name) {
  run_plain(state, name, 3, 2.0, libtorch_step);
}

/// torchkit's side of a family: `step(set, scaler, scale)` timed, then the ratio counters from
/// the best of five rounds on both sides, `floor(set, factor)` right after torchkit.
template <class Step, class Floor>
void run_torchkit(benchmark::State& state, const std::string& family, const std::string& name, Step step,
                  Floor floor) {
  const int threads = static_cast<int>(state.range(0));
  at::set_num_threads(threads);
  Set& set = set_named(name);
  const double libtorch = libtorch_seconds(family, name, threads, state.max_iterations > 10 ? 20 : 1);
  set.restore();
  double scale = 2.0;
  torchkit::GradScaler scaler({.init_scale = scale});
  (void)scaler.scale(torch::tensor(1.0f));
  for (auto _ : state) step(set, scaler, scale);
  const int iterations = round_iterations(state, set);
  set.restore();
  scale = 2.0;
  scaler.update(scale);
  const double seconds = seconds_per_call([&] { step(set, scaler, scale); }, iterations);
  state.counters["vs_libtorch"] = libtorch / seconds;
  state.counters["vs_floor"] = seconds / floor_seconds(set, floor, iterations);
  finish(state, set, family == "unscale" ? 2 : 3);
}

void BM_torchkit(benchmark::State& state, const std::string& name) {
  run_torchkit(state, "scaled_clip", name, torchkit_step, floor_step);
}

void BM_floor(benchmark::State& state, const std::string& name) { run_plain(state, name, 3, 0.5, floor_step); }

/// The in-place floor (in_place_floor_step), with its ratio to the floor: the best vs_floor the
/// scaled clip could show on this set.
void BM_floor_in_place(benchmark::State& state, const std::string& name) {
  at::set_num_threads(static_cast<int>(state.range(0)));
  Set& set = set_named(name);
  set.restore();
  std::vector<Run> runs;
  std::vector<double> partials;
  float inv = 0.5f;
  const auto step = [&] { in_place_floor_step(set, runs, partials, inv); };
  for (auto _ : state) step();
  const int iterations = round_iterations(state, set);
  const double seconds = seconds_per_call(step, iterations);  // (then the floor, as in run_torchkit)
  state.counters["vs_floor"] = seconds / floor_seconds(set, floor_step, iterations);
  finish(state, set);
}

void BM_unscale_libtorch(benchmark::State& state, const std::string& name) {
  run_plain(state, name, 2, 0.5f, libtorch_unscale);
}

void BM_unscale_torchkit(benchmark::State& state, const std::string& name) {
  run_torchkit(state, "unscale", name, torchkit_unscale, unscale_floor_step);
}

void BM_unscale_floor(benchmark::State& state, const std::string& name) {
  run_plain(state, name, 2, 0.5, unscale_floor_step);
}

using Benchmark = void (*)(benchmark::State&, const std::string&);

const bool registered = [] {
  const std::vector<std::pair<std::string, std::vector<std::pair<std::string, Benchmark>>>> families = {
      {"scaled_clip", {{"libtorch_recipe", BM_libtorch_recipe}, {"torchkit", BM_torchkit},
                       {"floor", BM_floor},
                       {"floor_in_place", BM_floor_in_place}}},
      {"unscale",
       {{"libtorch", BM_unscale_libtorch}, {"torchkit", BM_unscale_torchkit}, {"floor", BM_unscale_floor}}},
  };
  for (const auto& [family, rows] : families) {
    for (const std::string name : {"a_2000x512", "b_bert"}) {
      for (const auto& [label, function] : rows) {
        benchmark::RegisterBenchmark((family + "/" + name + "/" + label).c_str(), function, name)
            ->ArgName("threads")
            ->Arg(1)
            ->Arg(2)
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
