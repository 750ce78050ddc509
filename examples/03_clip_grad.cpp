// Tip 3: clip the gradient norm between backward() and step().
//
// The tip, in Python:
//
//     optimizer.zero_grad()
//     loss, hidden = model(data, hidden, targets)
//     loss.backward()
//     nn.utils.clip_grad_norm_(model.parameters(), max_norm=20, norm_type=2)
//     optimizer.step()
//
// The same with torchkit: torchkit::clip_grad_norm_(model, 20, 2), or a ClipGrad functor that
// also counts how often it had to clip. A small recurrent model is trained on a toy sequence
// task whose gradients explode now and then, which is what the clipping is for.
#include <torchkit/clip.hpp>

#include <torch/torch.h>

#include <cmath>
#include <cstdio>

namespace {

struct ModelImpl : torch::nn::Module {
  ModelImpl() {
    rnn = register_module("rnn", torch::nn::RNN(torch::nn::RNNOptions(1, 32).num_layers(2)));
    head = register_module("head", torch::nn::Linear(32, 1));
  }
  at::Tensor forward(const at::Tensor& data) {
    const auto output = std::get<0>(rnn->forward(data));  // [time, batch, hidden]
    return head->forward(output[-1]);                    // predict from the last step
  }
  torch::nn::RNN rnn{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Model);

}  // namespace

int main() {
  torch::manual_seed(0);
  Model model;
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  torchkit::ClipGrad clip(/*max_norm=*/20.0, /*norm_type=*/2.0);

  double first_loss = 0, last_loss = 0;
  for (int step = 0; step < 60; ++step) {
    // Sum of a noisy sequence of 50 steps: long sequences make RNN gradients explode.
    const auto data = torch::randn({50, 16, 1}) * 2;
    const auto targets = data.sum(0);

    optimizer.zero_grad();
    const auto loss = torch::mse_loss(model->forward(data), targets);
    loss.backward();
    // nn.utils.clip_grad_norm_(model.parameters(), max_norm=20, norm_type=2)
    const at::Tensor norm = clip(model);
    optimizer.step();

    if (step == 0) first_loss = loss.item<double>();
    last_loss = loss.item<double>();
    if (step % 10 == 0) {
      std::printf("step %2d  loss %8.3f  gradient norm %8.3f%s\n", step, loss.item<double>(), norm.item<double>(),
                  norm.item<double>() > 20 ? "  (clipped to 20)" : "");
    }
  }
  std::printf("%s\n", clip.to_string().c_str());
  std::printf("clipped %lld of %lld steps\n", static_cast<long long>(clip.clipped_steps()),
              static_cast<long long>(clip.steps()));

  // The one-call form, with the norm computed by grad_norm before and after.
  optimizer.zero_grad();
  const auto data = torch::randn({50, 16, 1}) * 2;
  torch::mse_loss(model->forward(data), data.sum(0)).backward();
  const double before = torchkit::grad_norm(model).item<double>();
  torchkit::clip_grad_norm_(model, /*max_norm=*/1.0, /*norm_type=*/2.0);
  const double after = torchkit::grad_norm(model).item<double>();
  std::printf("one call: norm %.3f -> %.3f (max_norm 1)\n", before, after);

  const bool ok = clip.steps() == 60 && std::isfinite(last_loss) && after <= 1.0 + 1e-4 &&
                  (before <= 1.0 || std::abs(after - 1.0) < 1e-3);
  std::printf("first loss %.3f, last loss %.3f\n", first_loss, last_loss);
  return ok ? 0 : 1;
}
