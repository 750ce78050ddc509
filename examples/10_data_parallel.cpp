// Data parallel: the next step after tip 1's "0,1" — one process per device, the same model in
// each, every process training on its share of each batch, gradients averaged across them.
//
// In Python:
//
//     dist.init_process_group("gloo")                    # torchrun sets RANK, WORLD_SIZE, ...
//     model = DistributedDataParallel(model)             # broadcast weights, bucketed all-reduce
//     sampler = DistributedSampler(dataset, seed=0)
//     for epoch in range(epochs):
//         sampler.set_epoch(epoch)
//         for x, y in DataLoader(dataset, batch_size=32, sampler=sampler):
//             optimizer.zero_grad()
//             F.cross_entropy(model(x), y).backward()     # DDP averages the gradients here
//             nn.utils.clip_grad_norm_(model.parameters(), 1.0)
//             optimizer.step()
//
// With torchkit (torchkit::dist): gloo_group_from_environment(), broadcast_parameters(),
// GradientReducer::reduce() after backward, DistributedSampler, rank_zero_out().
//
//     bash tools/launch.sh -n 2 build/examples/10_data_parallel     # two processes over Gloo
//     build/examples/10_data_parallel                               # one process
//
// Under the launcher, rank 0 also trains the same model on one process with the whole global
// batches, and prints both final accuracies: data parallel on N processes is the same training.
#include <torchkit/clip.hpp>
#include <torchkit/distributed.hpp>

#include <torch/torch.h>

#if TORCHKIT_WITH_GLOO
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#endif

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct ClassifierImpl : torch::nn::Module {
  ClassifierImpl() {
    hidden1 = register_module("hidden1", torch::nn::Linear(2, 32));
    hidden2 = register_module("hidden2", torch::nn::Linear(32, 32));
    out = register_module("out", torch::nn::Linear(32, 3));
  }
  at::Tensor forward(const at::Tensor& x) {
    return out(torch::tanh(hidden2(torch::tanh(hidden1(x)))));
  }
  torch::nn::Linear hidden1{nullptr}, hidden2{nullptr}, out{nullptr};
};
TORCH_MODULE(Classifier);

/// Three interleaved spiral arms, `per_class` noisy points each: the same on every rank.
std::pair<at::Tensor, at::Tensor> spirals(int64_t per_class, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<at::Tensor> points;
  std::vector<at::Tensor> labels;
  for (int64_t c = 0; c < 3; ++c) {
    const at::Tensor radius = torch::linspace(0.1, 1.0, per_class);
    const at::Tensor angle = torch::linspace(0.0, 4.0, per_class) + 2.1 * static_cast<double>(c) +
                             0.6 * at::randn({per_class}, generator);
    points.push_back(torch::stack({radius * torch::sin(angle), radius * torch::cos(angle)}, 1));
    labels.push_back(torch::full({per_class}, c, torch::kLong));
  }
  return {torch::cat(points), torch::cat(labels)};
}

double accuracy(Classifier& model, const at::Tensor& x, const at::Tensor& y) {
  const torch::NoGradGuard no_grad;
  return model->forward(x).argmax(1).eq(y).to(torch::kDouble).mean().item<double>();
}

/// Rows `indices[from, from + count)` of x and y.
std::pair<at::Tensor, at::Tensor> rows(const at::Tensor& x, const at::Tensor& y, const std::vector<int64_t>& indices,
                                       int64_t from, int64_t count) {
  const at::Tensor picked = torch::tensor(std::vector<int64_t>(indices.begin() + from, indices.begin() + from + count));
  return {x.index_select(0, picked), y.index_select(0, picked)};
}

}  // namespace

int main(int argc, char** argv) {
#if !TORCHKIT_WITH_GLOO
  (void)argc;
  (void)argv;
  std::puts("10_data_parallel: this LibTorch has no Gloo headers (Debian: libgloo-dev); nothing to run");
  return 0;
#else
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int64_t epochs = quick ? 12 : 40;
  constexpr int64_t global_batch = 48;

  // One process per rank: the launcher (or torchrun) sets the variables; alone, a world of one.
  const bool launched = std::getenv("WORLD_SIZE") != nullptr;
  const auto group = launched ? torchkit::dist::gloo_group_from_environment(std::chrono::seconds(60))
                              : torchkit::make_gloo_group(c10::make_intrusive<c10d::HashStore>(), 0, 1);
  const int rank = group->getRank();
  const int world = group->getSize();
  if (global_batch % world != 0) {
    torchkit::dist::print("10_data_parallel: the global batch of {} does not split over {} processes\n", global_batch,
                          world);
    return 1;
  }
  const int64_t batch = global_batch / world;
  auto& out = torchkit::dist::rank_zero_out();
  out << "data parallel over Gloo: " << world << " process(es), global batch " << global_batch << " (" << batch
      << " per process)\n";

  const auto [train_x, train_y] = spirals(320, 1);  // 960 points = 20 global batches
  const auto [test_x, test_y] = spirals(200, 2);
  const int64_t size = train_x.size(0);

  torch::manual_seed(1000 + rank);  // every rank starts elsewhere ...
  Classifier model;
  torchkit::dist::broadcast_parameters(model, group);  // ... until rank 0's weights reach all
  Classifier reference;                                // rank 0: the same start on one process
  {
    const torch::NoGradGuard no_grad;
    const auto from = model->named_parameters();
    for (auto& item : reference->named_parameters()) item.value().copy_(from[item.key()]);
  }
  torchkit::dist::GradientReducer reducer(model, group);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.2).momentum(0.9));
  torch::optim::SGD reference_optimizer(reference->parameters(), torch::optim::SGDOptions(0.2).momentum(0.9));
  const bool with_reference = rank == 0 && world > 1;

  std::vector<torchkit::dist::DistributedSampler> samplers;  // every rank's, for the reference
  for (int r = 0; r < world; ++r) samplers.emplace_back(size, world, r, torchkit::dist::DistributedSamplerOptions{});
  auto& sampler = samplers[static_cast<std::size_t>(rank)];
  for (int64_t epoch = 0; epoch < epochs; ++epoch) {
    std::vector<std::vector<int64_t>> shares;
    for (auto& each : samplers) {
      each.set_epoch(epoch);
      shares.push_back(each.indices());
    }
    const auto& mine = shares[static_cast<std::size_t>(rank)];
    double loss_sum = 0;
    int64_t steps = 0;
    for (int64_t from = 0; from + batch <= sampler.size(); from += batch, ++steps) {
      const auto [x, y] = rows(train_x, train_y, mine, from, batch);
      optimizer.zero_grad();
      const auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
      loss.backward();
      reducer.reduce();                          // gradients averaged over the processes
      torchkit::clip_grad_norm_(model, 1.0);     // tip 3 composes: every rank holds the same gradients
      optimizer.step();
      loss_sum += loss.item<double>();
      if (with_reference) {  // the whole global batch: every rank's share of this step, in one process
        std::vector<at::Tensor> xs, ys;
        for (const auto& share : shares) {
          auto [rx, ry] = rows(train_x, train_y, share, from, batch);
          xs.push_back(rx);
          ys.push_back(ry);
        }
        reference_optimizer.zero_grad();
        torch::nn::functional::cross_entropy(reference->forward(torch::cat(xs)), torch::cat(ys)).backward();
        torchkit::clip_grad_norm_(reference, 1.0);
        reference_optimizer.step();
      }
    }
    if (epoch % 4 == 3 || epoch + 1 == epochs) {
      torchkit::dist::print("epoch {:2d}: rank 0's mean loss {:.4f}\n", epoch + 1, loss_sum / static_cast<double>(steps));
    }
  }

  if (rank != 0) return 0;
  const double parallel = accuracy(model, test_x, test_y);
  std::printf("test accuracy, data parallel on %d process(es): %.2f%%\n", world, 100 * parallel);
  if (!with_reference) return parallel > 0.6 ? 0 : 1;  // chance: 33%
  const double single = accuracy(reference, test_x, test_y);
  double largest = 0;
  const auto trained = model->named_parameters();
  for (const auto& item : reference->named_parameters()) {
    largest = std::max(largest, (item.value() - trained[item.key()]).abs().max().item<double>());
  }
  std::printf("test accuracy, one process on the same global batches: %.2f%%\n", 100 * single);
  std::printf("largest parameter difference between the two: %.3g\n", largest);
  const bool same = parallel == single && largest < 1e-3 && parallel > 0.6;
  std::printf("%s\n", same ? "same training: OK" : "the two trainings differ");
  return same ? 0 : 1;
#endif
}
