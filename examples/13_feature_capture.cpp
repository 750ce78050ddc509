// Tip 2, beyond torchinfo: feature maps from the middle of a network, and a Grad-CAM heat map,
// without forward hooks (LibTorch has none) and without rewriting the model's forward.
//
// Python:
//
//     feats = {}
//     model.features[3].register_forward_hook(lambda m, i, o: feats.__setitem__("f", o))
//     score = model(image)[0, label]
//     grad = torch.autograd.grad(score, feats["f"])[0]
//     cam = torch.relu((grad.mean((2, 3), keepdim=True) * feats["f"]).sum(1))
//
// C++ (torchkit):
//
//     torchkit::FeatureCapture capture(model, {"features.3"});
//     at::Tensor score = model->forward(image)[0][label];
//     const at::Tensor& features = capture.outputs()[0].second;
//     at::Tensor grad = torch::autograd::grad({score}, {features})[0];
//
// The program trains a small CNN for a few seconds to tell whether a noisy 32x32 image holds a
// bright square, prints the shapes of the feature maps of its
// middle layers (torchkit::capture), and computes the Grad-CAM heat map of one test image
// (torchkit::FeatureCapture). It checks that the heat map is hottest near the square, and
// writes it as grad_cam.png (with OpenCV) or grad_cam.pgm (without).
#include <torchkit/capture.hpp>
#include <torchkit/summary.hpp>

#include <torch/torch.h>

#if defined(TORCHKIT_WITH_OPENCV) && TORCHKIT_WITH_OPENCV
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

namespace {

/// Noisy images, label 1 with a bright 6x6 square somewhere, label 0 without (`always`: every
/// image has one). The squares' top-left corners go to `corners`.
std::pair<at::Tensor, at::Tensor> make_batch(std::int64_t count, std::vector<std::pair<int, int>>* corners = nullptr,
                                             bool always = false) {
  at::Tensor images = torch::rand({count, 1, 32, 32}) * 0.5;
  at::Tensor labels = torch::empty({count}, torch::kLong);
  for (std::int64_t i = 0; i < count; ++i) {
    const int label = always ? 1 : static_cast<int>(torch::randint(0, 2, {1}).item<int64_t>());
    labels[i] = label;
    if (label == 1) {
      const int y = static_cast<int>(torch::randint(0, 27, {1}).item<int64_t>());
      const int x = static_cast<int>(torch::randint(0, 27, {1}).item<int64_t>());
      images[i][0].slice(0, y, y + 6).slice(1, x, x + 6).fill_(1.0);
      if (corners != nullptr) {
        corners->emplace_back(y, x);
      }
    }
  }
  return {images, labels};
}

/// A small CNN: a convolutional backbone (`features`), global average pooling, a linear head.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    using torch::nn::Conv2dOptions;
    features = register_module(
        "features", torch::nn::Sequential(torch::nn::Conv2d(Conv2dOptions(1, 8, 3).padding(1)), torch::nn::ReLU(),
                                          torch::nn::MaxPool2d(2), torch::nn::Conv2d(Conv2dOptions(8, 16, 3).padding(1)),
                                          torch::nn::ReLU()));
    pool = register_module("pool", torch::nn::AdaptiveAvgPool2d(1));
    fc = register_module("fc", torch::nn::Linear(16, 2));
  }
  at::Tensor forward(const at::Tensor& x) { return fc(torch::flatten(pool(features->forward(x)), 1)); }
  torch::nn::Sequential features{nullptr};
  torch::nn::AdaptiveAvgPool2d pool{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(Net);

}  // namespace

int main() {
  torch::manual_seed(0);
  Net model;
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-2));
  for (int step = 0; step < 150; ++step) {
    auto [images, labels] = make_batch(32);
    optimizer.zero_grad();
    const at::Tensor loss = torch::nn::functional::cross_entropy(model->forward(images), labels);
    loss.backward();
    optimizer.step();
  }
  model->eval();
  {
    torch::NoGradGuard no_grad;
    auto [images, labels] = make_batch(256);
    const double accuracy = model->forward(images).argmax(1).eq(labels).to(torch::kDouble).mean().item<double>();
    std::cout << "accuracy on 256 new images: " << accuracy << '\n';
    if (accuracy < 0.9) {
      std::cerr << "the model did not learn the task\n";
      return 1;
    }
  }

  // Feature maps from the middle of the network: the first block's layers by name.
  std::vector<std::pair<int, int>> corners;
  auto [image, label] = make_batch(1, &corners, /*always=*/true);
  {
    torch::NoGradGuard no_grad;
    for (const auto& [name, features] : torchkit::capture(model, {"features.1", "features.2", "features.4"}, image)) {
      std::cout << "features " << name << ": " << features.sizes() << '\n';
    }
  }

  // Grad-CAM: the gradient of the class score with respect to the last convolutional block's
  // output (after its ReLU), averaged per channel, weighs the channels of that output.
  torchkit::FeatureCapture capture(model, {"features.4"});
  const at::Tensor score = model->forward(image)[0][label[0].item<int64_t>()];
  const at::Tensor& features = capture.outputs()[0].second;  // [1, 16, 16, 16]
  const at::Tensor grad = torch::autograd::grad({score}, {features})[0];
  at::Tensor cam = torch::relu((grad.mean({2, 3}, /*keepdim=*/true) * features).sum(1, /*keepdim=*/true)).detach();
  cam = torch::nn::functional::interpolate(
      cam, torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{32, 32}).mode(torch::kBilinear).align_corners(false));
  cam = cam / cam.max().clamp_min(1e-12);

  // The hottest pixel should lie on (or next to) the square.
  const auto hottest = cam.flatten().argmax().item<int64_t>();
  const int row = static_cast<int>(hottest / 32);
  const int column = static_cast<int>(hottest % 32);
  const auto [top, left] = corners.front();
  std::cout << "square at rows " << top << ".." << top + 5 << ", columns " << left << ".." << left + 5
            << "; Grad-CAM peak at (" << row << ", " << column << ")\n";
  const bool near = row >= top - 4 && row <= top + 9 && column >= left - 4 && column <= left + 9;

  const at::Tensor pixels = (cam[0][0] * 255).round().to(torch::kByte).contiguous();
#if defined(TORCHKIT_WITH_OPENCV) && TORCHKIT_WITH_OPENCV
  cv::Mat gray(32, 32, CV_8UC1, pixels.data_ptr<std::uint8_t>());
  cv::Mat heat;
  cv::applyColorMap(gray, heat, cv::COLORMAP_JET);
  cv::resize(heat, heat, cv::Size(256, 256), 0, 0, cv::INTER_NEAREST);
  cv::imwrite("grad_cam.png", heat);
  std::cout << "wrote grad_cam.png\n";
#else
  std::ofstream out("grad_cam.pgm", std::ios::binary);
  out << "P5\n32 32\n255\n";
  out.write(reinterpret_cast<const char*>(pixels.data_ptr<std::uint8_t>()), 32 * 32);
  std::cout << "wrote grad_cam.pgm (build with OpenCV for a coloured PNG)\n";
#endif
  if (!near) {
    std::cerr << "the Grad-CAM peak is not near the square\n";
    return 1;
  }
  return 0;
}
