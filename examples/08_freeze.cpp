// Tip 8: freeze some layers' parameters by name.
//
// The Python tip:
//   net = Network()
//   for name, value in net.named_parameters():
//       print('name: {0},\t grad: {1}'.format(name, value.requires_grad))
//   no_grad = ['cnn.VGG_16.convolution1_1.weight', 'cnn.VGG_16.convolution1_1.bias',
//              'cnn.VGG_16.convolution1_2.weight', 'cnn.VGG_16.convolution1_2.bias']
//   for name, value in net.named_parameters():
//       if name in no_grad:
//           value.requires_grad = False
//       else:
//           value.requires_grad = True
//   optimizer = optim.Adam(filter(lambda p: p.requires_grad, net.parameters()), lr=0.01)
#include <torchkit/freeze.hpp>

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

  // for name, value in net.named_parameters(): print('name: {0},\t grad: {1}'.format(...))
  std::cout << torchkit::requires_grad_report(net) << '\n';

  // The layers to freeze. A module path ("cnn.VGG_16.convolution1_1"), a glob ("*convolution1*")
  // or torchkit::regex("...") would do as well; a typo throws instead of freezing nothing.
  const std::vector<std::string> no_grad{
      "cnn.VGG_16.convolution1_1.weight",
      "cnn.VGG_16.convolution1_1.bias",
      "cnn.VGG_16.convolution1_2.weight",
      "cnn.VGG_16.convolution1_2.bias",
  };
  const torchkit::FreezeReport report = torchkit::freeze(net, no_grad);
  std::cout << report << report.summary() << "\n\n";

  // optimizer = optim.Adam(filter(lambda p: p.requires_grad, net.parameters()), lr=0.01)
  torch::optim::Adam optimizer(torchkit::trainable_parameters(net), torch::optim::AdamOptions(0.01));

  // A few steps on random data: the frozen block does not move.
  const auto frozen_before = net->cnn->VGG_16->convolution1_1->weight.clone();
  const auto trained_before = net->cnn->VGG_16->convolution2_2->weight.clone();
  const auto images = torch::randn({4, 3, 16, 16});
  const auto targets = torch::rand({4, 32});
  for (int step = 0; step < 3; ++step) {
    optimizer.zero_grad();
    const auto loss = torch::mse_loss(net->forward(images).mean({2, 3}), targets);
    loss.backward();
    optimizer.step();
    std::cout << "step " << step << "  loss " << loss.item<double>() << '\n';
  }
  const bool frozen_unchanged = torch::equal(frozen_before, net->cnn->VGG_16->convolution1_1->weight);
  const bool trained_changed = !torch::equal(trained_before, net->cnn->VGG_16->convolution2_2->weight);
  std::cout << "convolution1_1 unchanged: " << std::boolalpha << frozen_unchanged
            << ", convolution2_2 trained: " << trained_changed << "\n\n";

  // A typo is an error that names the closest parameters; the flags stay as they were.
  try {
    (void)torchkit::freeze(net, {"cnn.VGG_16.convolution2_1.weigth"});
  } catch (const torchkit::Error& error) {
    std::cout << "error: " << error.what() << "\n\n";
  }

  // Temporarily train the last layer only; every flag comes back at the end of the scope.
  {
    torchkit::FreezeByName head_only(net, {"cnn.VGG_16.convolution2_2"}, torchkit::FreezeMode::all_except);
    std::cout << "inside the scope: " << head_only.report().summary() << '\n';
  }
  std::cout << "after the scope:  " << torchkit::requires_grad_report(net).summary() << '\n';
  return frozen_unchanged && trained_changed ? 0 : 1;
}
