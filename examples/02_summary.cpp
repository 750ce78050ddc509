// Tip 2: print a model summary, Keras-style: every layer's output shape and parameter count.
//
// Python (pytorch-summary, and its maintained successor torchinfo):
//
//     from torchsummary import summary
//     summary(your_model, input_size=(channels, H, W))
//
//     from torchinfo import summary
//     summary(your_model, input_size=(2, channels, H, W), depth=3)
//
// C++: the same one line, for any LibTorch module (here a VGG-style network whose forward is
// custom code around two Sequentials). LibTorch has no forward hooks; torchkit observes the
// ATen operators of one forward pass instead and leaves the model exactly as it was.
#include <torchkit/summary.hpp>

#include <torch/torch.h>

#include <iostream>

namespace {

// VGG's layout, narrow so that the example is quick: conv-conv-pool blocks, then a classifier.
struct VGGImpl : torch::nn::Module {
  VGGImpl() {
    using torch::nn::Conv2d;
    using torch::nn::Conv2dOptions;
    using torch::nn::MaxPool2d;
    using torch::nn::ReLU;
    features = register_module(
        "features",
        torch::nn::Sequential(Conv2d(Conv2dOptions(3, 8, 3).padding(1)), ReLU(true), Conv2d(Conv2dOptions(8, 8, 3).padding(1)),
                              ReLU(true), MaxPool2d(2),  //
                              Conv2d(Conv2dOptions(8, 16, 3).padding(1)), ReLU(true),
                              Conv2d(Conv2dOptions(16, 16, 3).padding(1)), ReLU(true), MaxPool2d(2),  //
                              Conv2d(Conv2dOptions(16, 32, 3).padding(1)), ReLU(true), MaxPool2d(2)));
    avgpool = register_module("avgpool", torch::nn::AdaptiveAvgPool2d(7));
    classifier = register_module(
        "classifier", torch::nn::Sequential(torch::nn::Linear(32 * 7 * 7, 256), ReLU(true), torch::nn::Dropout(0.5),
                                            torch::nn::Linear(256, 256), ReLU(true), torch::nn::Dropout(0.5),
                                            torch::nn::Linear(256, 10)));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor out = avgpool(features->forward(x));
    return classifier->forward(torch::flatten(out, 1));
  }
  torch::nn::Sequential features{nullptr};
  torch::nn::AdaptiveAvgPool2d avgpool{nullptr};
  torch::nn::Sequential classifier{nullptr};
};
TORCH_MODULE(VGG);

}  // namespace

int main() {
  torch::manual_seed(0);
  VGG net;

  // torchinfo's table: the module tree, output shapes, parameters, mult-adds, memory.
  const torchkit::Summary info = torchkit::summary(net, {3, 224, 224});
  std::cout << info << "\n\n";

  // pytorch-summary's table: one line per layer, the batch dimension as -1.
  std::cout << info.to_string(torchkit::SummaryStyle::flat) << "\n\n";

  // The numbers, for code: e.g. check a model's size before training it.
  std::cout << "parameters: " << info.total_params() << " (" << info.trainable_params() << " trainable), "
            << "mult-adds: " << info.total_mult_adds() << ", features.0 outputs [";
  for (const auto& row : info.rows()) {
    if (row.name == "features.0") {
      for (std::size_t i = 0; i < row.output_shape.size(); ++i) {
        std::cout << (i > 0 ? ", " : "") << row.output_shape[i];
      }
    }
  }
  std::cout << "]\n";
  return info.total_params() > 0 && net->is_training() ? 0 : 1;  // the model is still in training mode
}
