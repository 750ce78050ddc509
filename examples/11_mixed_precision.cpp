// Mixed precision: bfloat16 autocast on the CPU, dynamic loss scaling, and clipping the
// unscaled gradients.
//
// The recipe, in Python (PyTorch 2.x):
//
//     scaler = torch.amp.GradScaler("cpu")
//     for data, target in batches:
//         optimizer.zero_grad()
//         with torch.autocast("cpu", dtype=torch.bfloat16):
//             loss = F.cross_entropy(model(data), target)
//         scaler.scale(loss).backward()
//         scaler.unscale_(optimizer)
//         torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
//         scaler.step(optimizer)        # skipped when a gradient is inf or nan
//         scaler.update()
//
// The same with torchkit:
//
//     torchkit::GradScaler scaler;
//     ...
//         optimizer.zero_grad();
//         at::Tensor loss;
//         {
//           torchkit::AutocastScope autocast(at::kCPU);     // bfloat16 on the CPU
//           loss = torch::cross_entropy_loss(model->forward(data), target);
//         }
//         scaler.scale(loss).backward();
//         torchkit::clip_grad_norm_(optimizer, 1.0, 2.0, scaler);  // unscale_ + clip, fused
//         scaler.step(optimizer);
//         scaler.update();
//
// A small classifier learns three Gaussian clusters. One step gets an inf written into a
// gradient (as an overflow in float16 would): the scaler skips that step and halves the scale.
#include <torchkit/amp.hpp>

#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <limits>

int main() {
  torch::manual_seed(0);
  const int64_t classes = 3, per_class = 200;
  const auto centres = torch::tensor({{2.0f, 0.0f}, {-1.0f, 1.7f}, {-1.0f, -1.7f}});
  const auto labels = torch::arange(classes).repeat_interleave(per_class);
  const auto points = centres.index_select(0, labels) + torch::randn({classes * per_class, 2}) * 0.6;

  torch::nn::Sequential model(torch::nn::Linear(2, 32), torch::nn::ReLU(), torch::nn::Linear(32, 32),
                              torch::nn::ReLU(), torch::nn::Linear(32, classes));
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  torchkit::GradScaler scaler({.growth_interval = 50});  // 65536 at first; x2 after 50 clean steps

  int skipped = 0;
  for (int step = 0; step < 200; ++step) {
    const auto batch = torch::randint(classes * per_class, {64});
    optimizer.zero_grad();
    at::Tensor loss;
    {
      // with torch.autocast("cpu", dtype=torch.bfloat16):
      torchkit::AutocastScope autocast(at::kCPU);
      const at::Tensor logits = model->forward(points.index_select(0, batch));  // bfloat16 linears
      loss = torch::nn::functional::cross_entropy(logits.to(at::kFloat), labels.index_select(0, batch));
    }
    scaler.scale(loss).backward();  // scaler.scale(loss).backward()
    if (step == 120) {
      // An overflowing gradient: this step must be skipped.
      model->parameters()[0].mutable_grad()[0][0] = std::numeric_limits<float>::infinity();
    }
    // scaler.unscale_(optimizer); clip_grad_norm_(model.parameters(), 1.0)
    const double norm = torchkit::clip_grad_norm_(optimizer, 1.0, 2.0, scaler).item<double>();
    const bool stepped = scaler.step(optimizer);  // scaler.step(optimizer)
    if (!stepped) ++skipped;
    scaler.update();  // scaler.update()
    if (step % 40 == 0 || !stepped) {
      std::printf("step %3d  loss %.4f  grad norm %8.4f  scale %g%s\n", step, loss.item<double>(), norm,
                  scaler.get_scale(), stepped ? "" : "  (skipped: inf/nan gradient)");
    }
  }

  at::Tensor predictions;
  {
    torch::NoGradGuard no_grad;
    torchkit::AutocastScope autocast(at::kCPU);
    predictions = model->forward(points).argmax(1);
  }
  const double accuracy = predictions.eq(labels).to(at::kFloat).mean().item<double>();
  std::printf("skipped steps: %d, final scale: %g, accuracy: %.1f%% (chance: 33.3%%)\n", skipped,
              scaler.get_scale(), 100 * accuracy);
  if (skipped != 1 || accuracy < 0.85) {
    std::printf("unexpected: expected exactly 1 skipped step and accuracy >= 85%%\n");
    return 1;
  }
  return 0;
}
