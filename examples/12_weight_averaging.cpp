// Tips 6 and 7 for fine-tuning: evaluate averaged weights. An exponential moving average of the
// weights (timm's ModelEma) and stochastic weight averaging over the last epochs usually
// generalise better than the last weights of a noisy run; both are evaluated beside them.
//
// Python:
//
//     ema = torch.optim.swa_utils.AveragedModel(model, avg_fn=ema_avg)    # or timm's ModelEmaV3
//     swa = torch.optim.swa_utils.AveragedModel(model)
//     for epoch in range(epochs):
//         train_one_epoch(model); ema.update_parameters(model)
//         if epoch >= swa_start: swa.update_parameters(model)
//     torch.optim.swa_utils.update_bn(train_loader, swa)
//     evaluate(model); evaluate(ema); evaluate(swa)
//
// C++: the averages live beside the model; AveragedWeightsScope puts them into the model while
// it is evaluated and gives the trained weights back afterwards, bit for bit.
#include <torchkit/averaging.hpp>
#include <torchkit/grad_mode.hpp>

#include <torch/torch.h>

#include <cstdint>
#include <iomanip>
#include <iostream>
#include <vector>

namespace {

/// Two noisy classes in 8 dimensions, separable by a plane; labels flipped with 20 % chance.
std::pair<at::Tensor, at::Tensor> make_data(std::int64_t n, std::uint64_t seed) {
  torch::manual_seed(seed);
  const auto inputs = torch::randn({n, 8});
  auto labels = (inputs.matmul(torch::linspace(-1, 1, 8)) > 0).to(torch::kLong);
  const auto flip = torch::rand({n}) < 0.2;
  labels = torch::where(flip, 1 - labels, labels);
  return {inputs, labels};
}

double accuracy(torch::nn::Sequential& model, const at::Tensor& inputs, const at::Tensor& labels) {
  torchkit::EvalScope eval(model);
  torchkit::NoGradScope no_grad;
  return model->forward(inputs).argmax(1).eq(labels).to(torch::kDouble).mean().item<double>();
}

}  // namespace

int main() {
  torch::manual_seed(0);
  torch::nn::Sequential model(torch::nn::Linear(8, 32), torch::nn::BatchNorm1d(32), torch::nn::ReLU(),
                              torch::nn::Linear(32, 2));
  const auto [train_x, train_y] = make_data(2048, 1);
  const auto [test_x, test_y] = make_data(4096, 2);
  // A large learning rate and small batches: the last weights wander, their averages do not.
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.2).momentum(0.9));

  torchkit::ModelEma ema(model, {.decay = 0.99, .warmup = true});
  torchkit::AveragedModel swa(model);
  const int epochs = 12, swa_start = 6;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    const auto order = torch::randperm(train_x.size(0));
    for (std::int64_t begin = 0; begin < train_x.size(0); begin += 16) {
      const auto index = order.slice(0, begin, begin + 16);
      optimizer.zero_grad();
      torch::nn::functional::cross_entropy(model->forward(train_x.index_select(0, index)),
                                           train_y.index_select(0, index))
          .backward();
      optimizer.step();
      ema.update(model);  // after every optimizer step
    }
    if (epoch >= swa_start) swa.update_parameters(model);  // once an epoch, late in training
  }

  std::cout << std::fixed << std::setprecision(4);
  const double raw = accuracy(model, test_x, test_y);
  double with_ema = 0, with_swa = 0;
  {
    torchkit::AveragedWeightsScope averaged(model, ema);  // EMA weights and statistics in `model`
    with_ema = accuracy(model, test_x, test_y);
  }
  {
    torchkit::AveragedWeightsScope averaged(model, swa);
    // SWA averages only the weights: recompute the batch-norm statistics for them.
    std::vector<at::Tensor> batches;
    for (std::int64_t begin = 0; begin < train_x.size(0); begin += 256) batches.push_back(train_x.slice(0, begin, begin + 256));
    torchkit::update_bn(batches, model);
    with_swa = accuracy(model, test_x, test_y);
  }
  const double back = accuracy(model, test_x, test_y);  // the trained weights are back
  std::cout << "test accuracy, last weights: " << raw << "\n"
            << "test accuracy, " << ema << ": " << with_ema << "\n"
            << "test accuracy, " << swa << ": " << with_swa << "\n"
            << "after the scopes, last weights again: " << back << "\n";
  // The best any model can do here is 0.8 (20 % of the labels are flipped).
  const bool ok = back == raw && with_ema > 0.7 && with_swa > 0.7;
  std::cout << (ok ? "ok" : "FAILED") << "\n";
  return ok ? 0 : 1;
}
