// A tiny program that uses torchkit the way a downstream project would.
#include <torchkit/torchkit.hpp>

#include <torch/nn/modules/linear.h>

#include <iostream>

int main() {
  torch::nn::Linear model(4, 2);
  const auto parameters = torchkit::parameters_of(model);
  if (parameters.size() != 2) {
    std::cerr << "expected 2 parameters, got " << parameters.size() << "\n";
    return 1;
  }
  std::cout << "torchkit " << torchkit::version() << " ok\n";
  return 0;
}
