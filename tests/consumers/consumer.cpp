// A tiny program that uses torchkit the way a downstream project would: one call of each tip,
// so that every feature is compiled, linked (no unresolved symbol, CUDA ones included) and run.
#include <torchkit/torchkit.hpp>

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

#include <iostream>

int main() {
  const torchkit::VisibleDevices devices("0");                         // tip 1
  torch::nn::Sequential model(torch::nn::Linear(4, 3), torch::nn::ReLU(), torch::nn::Linear(3, 2));
  const auto summary = torchkit::summary(model, {4});                  // tip 2
  const auto output = model->forward(torch::randn({5, 4}));
  output.sum().backward();
  const auto norm = torchkit::clip_grad_norm_(model, 1.0);             // tip 3
  const auto batch = torchkit::image_to_batch(torch::zeros({8, 8, 3}, torch::kUInt8));  // tip 4
  const auto targets = torchkit::one_hot(torch::tensor({0, 2, 1}), 3);  // tip 5
  {
    torchkit::NoGradScope no_grad;                                     // tip 6
    torchkit::EvalScope eval(model);
    torchkit::empty_cache();
  }
  const auto report = torchkit::freeze(model, {"0"});                  // tip 8
  torchkit::ParamGroupBuilder groups(model);                          // tip 9
  groups.add({"2.weight"}, {.lr = 0.1}).rest();
  const torch::optim::SGDOptions defaults(0.01);
  auto optimizer = groups.make<torch::optim::SGD>(defaults);
  torchkit::lr::StepLR schedule(optimizer, 10, 0.1);                   // tip 7
  schedule.step();

  const bool ok = summary.total_params() == 23 && norm.dim() == 0 && batch.sizes() == at::IntArrayRef({1, 3, 8, 8}) &&
                  targets.sizes() == at::IntArrayRef({3, 3}) && report.to_string().find("grad: False") != std::string::npos &&
                  optimizer.param_groups().size() == 2 && fmt::format("{}", torchkit::Shape(batch.sizes())) == "[1, 3, 8, 8]";
  if (!ok) {
    std::cerr << "unexpected results\n";
    return 1;
  }
  std::cout << "torchkit " << torchkit::version() << " ok\n";
  return 0;
}
