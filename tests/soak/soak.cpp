// Soak test (CTest configuration "soak", not in the default run): a small model trained for many
// steps through every stateful part of torchkit at once — clip_grad_norm_ (ClipGrad), a
// SequentialLR schedule, freeze/unfreeze every few steps, a summary now and then, EvalScope +
// NoGradScope validation, one_hot targets and images_to_batch inputs — first on one thread, then
// on two threads with a model each. After a warm-up, the process's resident memory and the
// number of live CPU allocations (a counting allocator wrapped around LibTorch's own, so every
// tensor's storage is counted) must not grow: nothing torchkit keeps may accumulate.
//
//   soak [--steps N]   (default 20000 per model)
#include <torchkit/torchkit.hpp>

#include <torch/torch.h>

#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_set>
#include <mutex>
#include <vector>

namespace {

/// LibTorch's CPU allocator with a count of live allocations.
class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* inner) : inner_(inner) {}

#if TORCHKIT_TORCH_AT_LEAST(2, 3)
  c10::DataPtr allocate(std::size_t bytes) override { return wrap(inner_->allocate(bytes)); }
  void copy_data(void* destination, const void* source, std::size_t bytes) const override {
    std::memcpy(destination, source, bytes);
  }
#else
  c10::DataPtr allocate(std::size_t bytes) const override { return wrap(inner_->allocate(bytes)); }
#endif

  // raw_allocate()/raw_deallocate() (used by oneDNN) go through this deleter.
  [[nodiscard]] c10::DeleterFnPtr raw_deleter() const override { return &CountingAllocator::release; }

  [[nodiscard]] static std::int64_t live() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<std::int64_t>(live_.size());
  }

 private:
  // LibTorch's raw_allocate() requires data == context, so the wrapper keeps the inner
  // allocator's pointer as both and calls its deleter (the same function for every block).
  // oneDNN frees some blocks through raw_deallocate() that it allocated before this allocator
  // was installed: only pointers this allocator handed out are counted.
  static void release(void* data) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      live_.erase(data);
    }
    inner_deleter_.load()(data);
  }

  static c10::DataPtr wrap(c10::DataPtr inner) {
    void* data = inner.get();
    if (data == nullptr) return inner;  // an empty allocation
    if (inner.get_context() != data) throw std::runtime_error("soak: the CPU allocator's context is not its data");
    inner_deleter_.store(inner.get_deleter());
    const c10::Device device = inner.device();
    (void)inner.release_context();  // the wrapper frees it now
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      live_.insert(data);
    }
    return {data, data, &CountingAllocator::release, device};
  }

  c10::Allocator* inner_;
  static inline std::mutex mutex_;
  static inline std::unordered_set<void*> live_;
  static inline std::atomic<c10::DeleterFnPtr> inner_deleter_{nullptr};
};

std::int64_t resident_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

struct Net : torch::nn::Module {
  Net() {
    features = register_module("features", torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3).padding(1)),
                                                                  torch::nn::BatchNorm2d(8), torch::nn::ReLU(),
                                                                  torch::nn::AdaptiveAvgPool2d(1)));
    head = register_module("head", torch::nn::Linear(8, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head->forward(features->forward(x).flatten(1)); }
  torch::nn::Sequential features{nullptr};
  torch::nn::Linear head{nullptr};
};

/// Trains one model for `steps` steps; returns {resident KiB, live allocations} after the
/// warm-up and at the end of the run (sampled at the same point of a step).
void train(int steps, std::uint64_t seed, std::vector<std::int64_t>& samples) {
  torch::manual_seed(seed);
  auto model = std::make_shared<Net>();
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  torchkit::lr::SequentialLR schedule(optimizer,
                                      {torchkit::lr::LinearLR(optimizer, {.start_factor = 0.1, .total_iters = 50}),
                                       torchkit::lr::CosineAnnealingLR(optimizer, {.T_max = steps, .eta_min = 1e-4})},
                                      {50});
  torchkit::ClipGrad clip(1.0);
  std::vector<at::Tensor> images;
  for (int i = 0; i < 8; ++i) images.push_back(torch::randint(0, 256, {12, 12, 3}, torch::kByte));
  const at::Tensor labels = torch::randint(0, 4, {8}, torch::kLong);
  const int warm_up = steps / 10;
  for (int step = 0; step < steps; ++step) {
    const at::Tensor batch = torchkit::images_to_batch(images, {.mean = {0.5}, .std = {0.25}});
    const at::Tensor targets = torchkit::one_hot(labels, 4, {.smoothing = 0.1});
    optimizer.zero_grad();
    const auto loss = torch::mse_loss(model->forward(batch).softmax(1), targets);
    loss.backward();
    (void)clip(model);
    optimizer.step();
    schedule.step();
    // Sampled before the freeze below: freeze() resets the frozen parameters' gradients (its
    // clear_grads default), so after it two gradient tensors fewer are alive until the next
    // backward; sampling at the same point of every step compares like with like.
    if (step == warm_up || step == steps - 1) {
      samples.push_back(resident_kib());
      samples.push_back(CountingAllocator::live());
    }
    if (step % 50 == 0) {
      (void)torchkit::freeze(model, {"features.0"});
      (void)torchkit::unfreeze(model, {"features.0"});
      torchkit::EvalScope eval(model);
      torchkit::NoGradScope no_grad;
      (void)model->forward(batch).argmax(1);
    }
    if (step % 500 == 0) {
      (void)torchkit::summary(model, {3, 12, 12}).to_string();
    }
  }
  if (clip.steps() != static_cast<std::int64_t>(steps)) throw std::runtime_error("ClipGrad counted the wrong number of steps");
}

bool flat(const char* what, std::int64_t warm, std::int64_t end, std::int64_t allowed) {
  const bool ok = end - warm <= allowed;
  std::printf("soak: %-28s after warm-up %8lld, at the end %8lld (%s, allowed growth %lld)\n", what,
              static_cast<long long>(warm), static_cast<long long>(end), ok ? "flat" : "GROWS",
              static_cast<long long>(allowed));
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 20000;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atoi(argv[i + 1]);
  }
  if (steps < 100) {
    std::fprintf(stderr, "soak: --steps must be >= 100\n");
    return 2;
  }
  static CountingAllocator counting(c10::GetCPUAllocator());
  c10::SetCPUAllocator(&counting, /*priority=*/100);
  torch::set_num_threads(1);

  bool ok = true;
  const auto began = std::chrono::steady_clock::now();
  std::vector<std::int64_t> one;
  train(steps, 1, one);
  ok = flat("one thread: resident KiB", one[0], one[2], 4096) && ok;
  ok = flat("one thread: live allocations", one[1], one[3], 0) && ok;

  const std::int64_t live_before_threads = CountingAllocator::live();
  std::vector<std::int64_t> first, second;
  std::exception_ptr errors[2];
  std::thread a([&] { try { train(steps, 2, first); } catch (...) { errors[0] = std::current_exception(); } });
  std::thread b([&] { try { train(steps, 3, second); } catch (...) { errors[1] = std::current_exception(); } });
  a.join();
  b.join();
  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  // Both threads sample the process-wide figures at their own warm-up and end; the later of
  // the two warm-ups against the earlier end brackets a stretch where both run.
  ok = flat("two threads: resident KiB", std::max(first[0], second[0]), std::max(first[2], second[2]), 8192) && ok;
  // Every tensor of both runs is gone once they return: as many live allocations as before.
  ok = flat("two threads: live allocations", live_before_threads, CountingAllocator::live(), 0) && ok;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  std::printf("soak: %d steps on one thread, then %d steps on each of two threads, in %.1f s: %s\n", steps, steps,
              seconds, ok ? "passed" : "FAILED");
  return ok ? 0 : 1;
}
