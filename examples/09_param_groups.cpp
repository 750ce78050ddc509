// Tip 9: a different learning rate for different layers.
//
// The Python tip:
//   conv1_params = []
//   conv2_params = []
//   for name, parms in net.named_parameters():
//       if "convolution1" in name:
//           conv1_params += [parms]
//       else:
//           conv2_params += [parms]
//   optimizer = optim.Adam(
//       [
//           {"params": conv1_params, 'lr': 0.01},
//           {"params": conv2_params, 'lr': 0.001},
//       ],
//       weight_decay=1e-3,
//   )
// Options given outside the list (weight_decay here, and lr when a group sets none) are the
// "global" defaults every group inherits.
#include <torchkit/param_groups.hpp>

#include <torch/torch.h>

#include <iostream>

namespace {

// The first two blocks of a VGG-16, named as in the tip: cnn.VGG_16.convolution1_1.weight, ...
struct VGG16Impl : torch::nn::Module {
  VGG16Impl() {
    using torch::nn::Conv2d;
    using torch::nn::Conv2dOptions;
    convolution1_1 = register_module("convolution1_1", Conv2d(Conv2dOptions(3, 16, 3).padding(1)));
    convolution1_2 = register_module("convolution1_2", Conv2d(Conv2dOptions(16, 16, 3).padding(1)));
    convolution2_1 = register_module("convolution2_1", Conv2d(Conv2dOptions(16, 32, 3).padding(1)));
    convolution2_2 = register_module("convolution2_2", Conv2d(Conv2dOptions(32, 32, 3).padding(1)));
  }
  at::Tensor forward(at::Tensor x) {
    x = torch::relu(convolution1_2(torch::relu(convolution1_1(x))));
    x = torch::max_pool2d(x, 2);
    return torch::relu(convolution2_2(torch::relu(convolution2_1(x))));
  }
  torch::nn::Conv2d convolution1_1{nullptr}, convolution1_2{nullptr}, convolution2_1{nullptr}, convolution2_2{nullptr};
};
TORCH_MODULE(VGG16);

struct CNNImpl : torch::nn::Module {
  CNNImpl() { VGG_16 = register_module("VGG_16", VGG16()); }
  at::Tensor forward(const at::Tensor& x) { return VGG_16(x); }
  VGG16 VGG_16{nullptr};
};
TORCH_MODULE(CNN);

struct NetworkImpl : torch::nn::Module {
  NetworkImpl() { cnn = register_module("cnn", CNN()); }
  at::Tensor forward(const at::Tensor& x) { return cnn(x); }
  CNN cnn{nullptr};
};
TORCH_MODULE(Network);

}  // namespace

int main() {
  torch::manual_seed(0);
  Network net;

  // The two groups of the tip; rest() would collect anything neither pattern names.
  torchkit::ParamGroupBuilder builder(net);
  builder.add({"*convolution1*"}, {.lr = 0.01, .name = "conv1"}).add({"*convolution2*"}, {.lr = 0.001, .name = "conv2"});

  // weight_decay=1e-3 outside the list; Adam's default lr (1e-3) for groups that set none.
  const auto defaults = torch::optim::AdamOptions(1e-3).weight_decay(1e-3);
  std::cout << builder.describe(defaults) << '\n';
  // make() builds the optimizer with every group exactly as planned on every LibTorch (2.14's
  // constructor would replace group options equal to their type's default).
  auto optimizer = builder.make<torch::optim::Adam>(defaults);

  const auto images = torch::randn({4, 3, 16, 16});
  const auto targets = torch::rand({4, 32});
  for (int step = 0; step < 3; ++step) {
    optimizer.zero_grad();
    const auto loss = torch::mse_loss(net->forward(images).mean({2, 3}), targets);
    loss.backward();
    optimizer.step();
    std::cout << "step " << step << "  loss " << loss.item<double>() << '\n';
  }

  const auto names = builder.group_names();
  for (std::size_t i = 0; i < optimizer.param_groups().size(); ++i) {
    auto& group = optimizer.param_groups()[i];
    const auto& options = static_cast<const torch::optim::AdamOptions&>(group.options());
    std::cout << names[i] << ": " << group.params().size() << " tensors, lr " << options.lr() << ", weight_decay "
              << options.weight_decay() << '\n';
  }

  // A common refinement: no weight decay on biases (each group is split in two).
  torchkit::ParamGroupBuilder refined(net);
  refined.add({"*convolution1*"}, {.lr = 0.01}).add({"*convolution2*"}, {.lr = 0.001}).no_weight_decay({"*.bias"});
  std::cout << '\n' << refined.describe(defaults);
  return optimizer.param_groups().size() == 2 ? 0 : 1;
}
