// Tip 7: decay the learning rate.
//
// The tip, in Python:
//
//     from torch.optim import lr_scheduler
//     optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
//     scheduler = lr_scheduler.StepLR(optimizer, 10, 0.1)   # lr x 0.1 every 10 epochs
//     for epoch in range(num_epochs):
//         train(...)
//         scheduler.step()
//
// and a linear warm-up followed by cosine annealing:
//
//     warmup = lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=5)
//     cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=25, eta_min=1e-5)
//     scheduler = lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[5])
//
// With torchkit::lr the C++ reads the same, and the learning rates are Python's to the last bit.
// The run is checkpointed halfway (torchkit::save_checkpoint: model, optimizer, schedulers, epoch)
// and resumed into freshly built objects, which continue exactly as the uninterrupted run.
#include <torchkit/checkpoint.hpp>
#include <torchkit/lr.hpp>

#include <torch/torch.h>

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace {

// One epoch of a tiny regression: fit y = 3x - 1 with a linear layer.
double train_one_epoch(torch::nn::Linear& model, torch::optim::Optimizer& optimizer, const at::Tensor& x,
                       const at::Tensor& y) {
  optimizer.zero_grad();
  auto loss = torch::mse_loss(model(x), y);
  loss.backward();
  optimizer.step();
  return loss.item<double>();
}

}  // namespace

int main() {
  torch::manual_seed(0);
  const auto x = torch::linspace(-1, 1, 64).unsqueeze(1);
  const auto y = 3 * x - 1;

  // --- The tip: StepLR(optimizer, 10, 0.1) with Adam(lr=0.001). ---
  fmt::print("StepLR(optimizer, 10, 0.1), Adam lr=0.001\n");
  torch::nn::Linear model(1, 1);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(0.001));
  torchkit::lr::StepLR scheduler(optimizer, 10, 0.1);
  for (int epoch = 0; epoch < 30; ++epoch) {
    const double lr = scheduler.last_lr()[0];  // the lr this epoch trains with
    const double loss = train_one_epoch(model, optimizer, x, y);
    scheduler.step();
    fmt::print("  epoch {:2}  lr {:.0e}  loss {:.4f}\n", epoch, lr, loss);
    const double expected = 0.001 * std::pow(0.1, epoch / 10);
    if (std::abs(lr - expected) > 1e-12 * expected) {
      fmt::print(stderr, "unexpected lr {} at epoch {}, expected {}\n", lr, epoch, expected);
      return EXIT_FAILURE;
    }
  }

  // --- Warm-up + cosine: LinearLR for 5 epochs, then CosineAnnealingLR, via SequentialLR, built
  // in Python's order (the schedulers first, then the composite over them). ---
  fmt::print("\nLinearLR warm-up (5 epochs) then CosineAnnealingLR (25 epochs), SGD lr=0.1\n");
  const std::string checkpoint = (std::filesystem::temp_directory_path() / "torchkit_07_lr_decay.pt").string();
  struct Run {
    torch::nn::Linear model{1, 1};
    torch::optim::SGD sgd{model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9)};
    torchkit::lr::LinearLR warmup{sgd, 0.1, 1.0, 5};
    torchkit::lr::CosineAnnealingLR cosine{sgd, 25, 1e-5};
    torchkit::lr::SequentialLR schedule{sgd, {warmup, cosine}, /*milestones=*/{5}};
  };
  Run run;
  double last_loss = 0;
  for (int epoch = 0; epoch < 30; ++epoch) {
    const double lr = run.schedule.last_lr()[0];
    last_loss = train_one_epoch(run.model, run.sgd, x, y);
    run.schedule.step();
    fmt::print("  epoch {:2}  lr {:.6f}  {}  loss {:.6f}\n", epoch, lr, epoch < 5 ? "warm-up" : "cosine ", last_loss);
    if (epoch == 14) {
      torchkit::save_checkpoint(checkpoint, run.model, run.sgd, {&run.schedule}, {.epoch = epoch});
    }
  }
  fmt::print("  {}\n", run.schedule.to_string());
  if (!(last_loss < 1e-2)) {
    fmt::print(stderr, "the model did not fit: loss {}\n", last_loss);
    return EXIT_FAILURE;
  }

  // Resume from the checkpoint written after epoch 14 into new objects (another initialisation).
  torch::manual_seed(1);
  Run resumed;
  const auto extras = torchkit::load_checkpoint(checkpoint, resumed.model, resumed.sgd, {&resumed.schedule});
  double resumed_loss = 0;
  for (auto epoch = extras.epoch + 1; epoch < 30; ++epoch) {
    resumed_loss = train_one_epoch(resumed.model, resumed.sgd, x, y);
    resumed.schedule.step();
  }
  std::filesystem::remove(checkpoint);
  fmt::print("  resumed after epoch {}: final loss {:.6f} (uninterrupted {:.6f})\n", extras.epoch, resumed_loss,
             last_loss);
  if (resumed_loss != last_loss || resumed.schedule.last_lr() != run.schedule.last_lr()) {
    fmt::print(stderr, "the resumed run differs from the uninterrupted one\n");
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}
