// Averaging gradients across 2 ranks over Gloo (TCP on loopback), ResNet-50's 161 parameter
// shapes (25.6M floats, 102 MB): torchkit::dist::GradientReducer (25 MB buckets, every bucket's
// all-reduce in flight at once, the average written on the way back) beside the naive way, one
// all-reduce per gradient tensor, waited for in turn, then divided:
//
//     for (auto& p : model->parameters()) { std::vector<at::Tensor> t{p.grad()};
//                                           group->allreduce(t)->wait(); p.grad().div_(2); }
//
// and beside the same per-tensor all-reduces all started before the first wait.
//
// The two ranks are two threads of this process, each with its own Gloo group (a HashStore for
// the rendezvous; the data goes through Gloo's TCP transport). Rank 0 runs the benchmark; rank 1
// follows every iteration through a queue of commands.
#include <torchkit/distributed.hpp>

#include "gradient_sets.hpp"

#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <torch/torch.h>

#if TORCHKIT_WITH_GLOO
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#endif

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <utility>
#include <string>
#include <thread>
#include <vector>

#if TORCHKIT_WITH_GLOO
namespace {

using torchkit_bench::Shapes;

/// A module holding one parameter per shape (no forward), each with a gradient.
struct GradientsImpl : torch::nn::Module {
  GradientsImpl(const Shapes& shapes, int rank) {
    torch::manual_seed(rank);
    int index = 0;
    for (const auto& shape : shapes) {
      auto& p = register_parameter(fmt::format("p{}", index++), torch::zeros(shape));
      p.mutable_grad() = torch::randn(shape);
      elements += p.numel();
    }
  }
  int64_t elements = 0;
};
TORCH_MODULE(Gradients);

enum class Way { bucketed, per_tensor, per_tensor_all_started, floor };
enum class Set { resnet50, small };

/// One rank's gradients and reducer for one set of shapes.
struct Job {
  Job(const Shapes& shapes, int rank, const c10::intrusive_ptr<c10d::ProcessGroupGloo>& group)
      : model(shapes, rank), reducer(model, group), flat(torch::randn({model->elements})) {}
  Gradients model;
  torchkit::dist::GradientReducer reducer;
  at::Tensor flat;  ///< as many floats in one tensor: one all-reduce, no copies (the floor)
};

/// One rank: its group and a job per set.
struct Rank {
  Rank(const c10::intrusive_ptr<c10d::Store>& store, int rank)
      : group(torchkit::make_gloo_group(store, rank, 2, std::chrono::seconds(120))),
        resnet50(torchkit_bench::resnet50_shapes(), rank, group),
        small(torchkit_bench::many_small_shapes(), rank, group) {}

  Job& job(Set set) { return set == Set::resnet50 ? resnet50 : small; }

  void run(Set set, Way way) {
    Job& work_on = job(set);
    if (way == Way::bucketed) {
      work_on.reducer.reduce();
      return;
    }
    if (way == Way::floor) {
      std::vector<at::Tensor> tensors{work_on.flat};
      group->allreduce(tensors)->wait();
      work_on.flat.div_(2);
      return;
    }
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& p : work_on.model->parameters()) {
      std::vector<at::Tensor> tensors{p.grad()};
      auto work = group->allreduce(tensors);
      if (way == Way::per_tensor) {
        work->wait();
        p.grad().div_(2);
      } else {
        works.push_back(work);
      }
    }
    for (auto& work : works) work->wait();
    if (way == Way::per_tensor_all_started) {
      for (auto& p : work_on.model->parameters()) p.grad().div_(2);
    }
  }

  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  Job resnet50;
  Job small;
};

using Command = std::optional<std::pair<Set, Way>>;

/// Rank 1, on its own thread: runs what rank 0 posts, until told to stop.
class Follower {
 public:
  explicit Follower(c10::intrusive_ptr<c10d::Store> store) : thread_([this, store] { loop(store); }) {}
  ~Follower() {
    post(std::nullopt);
    thread_.join();
  }
  Follower(const Follower&) = delete;
  Follower& operator=(const Follower&) = delete;
  void post(Command command) {
    const std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(command);
    ready_.notify_one();
  }

 private:
  void loop(const c10::intrusive_ptr<c10d::Store>& store) {
    Rank rank(store, 1);
    for (;;) {
      std::unique_lock<std::mutex> lock(mutex_);
      ready_.wait(lock, [&] { return !queue_.empty(); });
      const auto command = queue_.front();
      queue_.pop_front();
      lock.unlock();
      if (!command) return;
      rank.run(command->first, command->second);
    }
  }
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Command> queue_;
  std::thread thread_;
};

void run_benchmark(benchmark::State& state, Rank& leader, Follower& follower, Set set, Way way) {
  for (auto _ : state) {
    follower.post(std::pair{set, way});
    leader.run(set, way);
  }
  Job& job = leader.job(set);
  state.SetBytesProcessed(state.iterations() * job.model->elements * 4);
  const double calls = way == Way::bucketed ? static_cast<double>(job.reducer.buckets())
                       : way == Way::floor  ? 1.0
                                            : static_cast<double>(job.model->parameters().size());
  state.counters["allreduces"] = calls;
}

}  // namespace

int main(int argc, char** argv) {
  at::set_num_threads(1);
  benchmark::Initialize(&argc, argv);
  auto store = c10::make_intrusive<c10d::HashStore>();
  Follower follower(store);
  Rank leader(store, 0);
  std::printf("2 ranks over Gloo on loopback. resnet50: %zu tensors, %lld floats, %lld buckets of <= 25 MB; "
              "small: %zu tensors of 512 floats, %lld bucket(s)\n",
              leader.resnet50.model->parameters().size(), static_cast<long long>(leader.resnet50.model->elements),
              static_cast<long long>(leader.resnet50.reducer.buckets()), leader.small.model->parameters().size(),
              static_cast<long long>(leader.small.reducer.buckets()));
  const std::pair<const char*, Set> sets[] = {{"resnet50", Set::resnet50}, {"2000x512", Set::small}};
  const std::pair<const char*, Way> ways[] = {{"bucketed (GradientReducer)", Way::bucketed},
                                              {"per_tensor (wait each)", Way::per_tensor},
                                              {"per_tensor (all started, then wait)", Way::per_tensor_all_started},
                                              {"floor (one flat tensor, no copies)", Way::floor}};
  for (const auto& [set_name, set] : sets) {
    for (const auto& [way_name, way] : ways) {
      benchmark::RegisterBenchmark((std::string("allreduce/") + set_name + "/" + way_name).c_str(),
                                   [&leader, &follower, set = set, way = way](benchmark::State& state) {
                                     run_benchmark(state, leader, follower, set, way);
                                   })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
#else
int main() {
  std::puts("distributed_bench: this LibTorch has no Gloo headers (Debian: libgloo-dev); nothing to run");
  return 0;
}
#endif
