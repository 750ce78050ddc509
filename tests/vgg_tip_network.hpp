#pragma once
/// The model of tips 8 and 9: the first two blocks of a (narrow) VGG-16 whose parameters are
/// named exactly as in the tip (`cnn.VGG_16.convolution1_1.weight`, ...). The same model is
/// built by tests/golden/freeze_golden.py, with the same deterministic parameters and input.

#include <torch/torch.h>

#include <cmath>

namespace torchkit::test {

struct VGG16Impl : torch::nn::Module {
  VGG16Impl() {
    using torch::nn::Conv2d;
    using torch::nn::Conv2dOptions;
    convolution1_1 = register_module("convolution1_1", Conv2d(Conv2dOptions(3, 4, 3).padding(1)));
    convolution1_2 = register_module("convolution1_2", Conv2d(Conv2dOptions(4, 4, 3).padding(1)));
    convolution2_1 = register_module("convolution2_1", Conv2d(Conv2dOptions(4, 6, 3).padding(1)));
    convolution2_2 = register_module("convolution2_2", Conv2d(Conv2dOptions(6, 6, 3).padding(1)));
  }
  at::Tensor forward(at::Tensor x) {
    x = torch::tanh(convolution1_1(x));
    x = torch::tanh(convolution1_2(x));
    x = torch::avg_pool2d(x, {2, 2});
    x = torch::tanh(convolution2_1(x));
    return torch::tanh(convolution2_2(x));
  }
  torch::nn::Conv2d convolution1_1{nullptr}, convolution1_2{nullptr}, convolution2_1{nullptr}, convolution2_2{nullptr};
};
TORCH_MODULE(VGG16);

struct CNNImpl : torch::nn::Module {
  CNNImpl() { VGG_16 = register_module("VGG_16", VGG16()); }
  at::Tensor forward(const at::Tensor& x) { return VGG_16(x); }
  VGG16 VGG_16{nullptr};  // NOLINT(readability-identifier-naming): the tip's name
};
TORCH_MODULE(CNN);

struct NetworkImpl : torch::nn::Module {
  NetworkImpl() { cnn = register_module("cnn", CNN()); }
  at::Tensor forward(const at::Tensor& x) { return cnn(x); }
  CNN cnn{nullptr};
};
TORCH_MODULE(Network);

/// The tip's network in double precision with parameters p_k = 0.1 sin(0.37 i + k) (k: the
/// parameter's position, i: the flat element index), as freeze_golden.py makes it.
inline Network deterministic_network() {
  Network net;
  net->to(torch::kDouble);
  torch::NoGradGuard no_grad;
  int64_t k = 0;
  for (auto& parameter : net->parameters()) {
    const auto i = torch::arange(parameter.numel(), torch::kDouble);
    parameter.copy_((0.1 * torch::sin(0.37 * i + static_cast<double>(k))).reshape(parameter.sizes()));
    ++k;
  }
  return net;
}

/// The input freeze_golden.py uses: sin(0.11 i) shaped [2, 3, 8, 8].
inline at::Tensor deterministic_input() {
  return torch::sin(0.11 * torch::arange(2 * 3 * 8 * 8, torch::kDouble)).reshape({2, 3, 8, 8});
}

/// The tip's eight parameter names, in order.
inline const std::vector<std::string>& tip_parameter_names() {
  static const std::vector<std::string> names{
      "cnn.VGG_16.convolution1_1.weight", "cnn.VGG_16.convolution1_1.bias", "cnn.VGG_16.convolution1_2.weight",
      "cnn.VGG_16.convolution1_2.bias",   "cnn.VGG_16.convolution2_1.weight", "cnn.VGG_16.convolution2_1.bias",
      "cnn.VGG_16.convolution2_2.weight", "cnn.VGG_16.convolution2_2.bias"};
  return names;
}

/// The parameter of `net` called `name` (LibTorch's lookup, independent of torchkit).
inline at::Tensor parameter_named(const torch::nn::Module& net, const std::string& name) {
  const auto parameters = net.named_parameters();
  const at::Tensor* found = parameters.find(name);
  if (found == nullptr) {
    throw std::runtime_error("no parameter " + name);
  }
  return *found;
}

}  // namespace torchkit::test
