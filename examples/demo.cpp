// torchkit demo: trains a small CNN to tell four procedurally drawn shapes apart.
//
//   demo            full run (a few thousand images, a few epochs, well under a minute)
//   demo --quick    a short run used by the test suite
//
// The data set is built in: circles, squares, triangles and crosses of random size, position
// and colour on a noisy background, drawn from a fixed seed.
#include <torchkit/torchkit.hpp>

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

namespace {

constexpr int64_t kImageSize = 32;
constexpr int64_t kNumClasses = 4;
const char* const kClassNames[kNumClasses] = {"circle", "square", "triangle", "cross"};

struct ShapeDataset {
  at::Tensor images;  // [N, H, W, 3] uint8, as an image decoder would hand them over
  at::Tensor labels;  // [N] int64
};

/// Draws `count` images of random shapes. Everything comes from `generator`, so a seed gives
/// the same data set on every machine.
ShapeDataset make_shapes(int64_t count, at::Generator generator) {
  const auto options = torch::TensorOptions().dtype(torch::kFloat);
  const auto labels = torch::randint(0, kNumClasses, {count}, generator, torch::kLong);
  const auto centre_x = torch::rand({count, 1, 1}, generator, options) * 16 + 8;
  const auto centre_y = torch::rand({count, 1, 1}, generator, options) * 16 + 8;
  const auto radius = torch::rand({count, 1, 1}, generator, options) * 5 + 5;
  const auto coordinates = torch::arange(kImageSize, options);
  const auto dx = coordinates.view({1, 1, kImageSize}) - centre_x;  // [N, 1, W]
  const auto dy = coordinates.view({1, kImageSize, 1}) - centre_y;  // [N, H, 1]

  const auto circle = (dx * dx + dy * dy) <= radius * radius;
  const auto square = (dx.abs() <= radius * 0.8) & (dy.abs() <= radius * 0.8);
  const auto triangle = (dy >= -radius) & (dy <= radius) & (dx.abs() <= (dy + radius) * 0.5);
  const auto bar = radius * 0.3;
  const auto cross = ((dx.abs() <= bar) & (dy.abs() <= radius)) | ((dy.abs() <= bar) & (dx.abs() <= radius));
  const auto masks = torch::stack({circle, square, triangle, cross}, 1);  // [N, 4, H, W]
  const auto index = labels.view({count, 1, 1, 1}).expand({count, 1, kImageSize, kImageSize});
  const auto mask = masks.gather(1, index).squeeze(1).unsqueeze(-1).to(torch::kFloat);  // [N, H, W, 1]

  const auto foreground = torch::rand({count, 1, 1, 3}, generator, options) * 155 + 100;
  const auto background = torch::rand({count, kImageSize, kImageSize, 3}, generator, options) * 60;
  const auto images = (mask * foreground + (1 - mask) * background).clamp(0, 255).to(torch::kUInt8);
  return {images, labels};
}

/// A small VGG-style network: two convolution blocks, then a classifier.
struct ShapeNetImpl : torch::nn::Module {
  ShapeNetImpl() {
    features = register_module("features", torch::nn::Sequential(
        torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 16, 3).padding(1)),
        torch::nn::BatchNorm2d(16),
        torch::nn::ReLU(),
        torch::nn::MaxPool2d(2),
        torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 3).padding(1)),
        torch::nn::BatchNorm2d(32),
        torch::nn::ReLU(),
        torch::nn::MaxPool2d(2),
        torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3).padding(1)),
        torch::nn::ReLU(),
        torch::nn::AdaptiveAvgPool2d(1)));
    classifier = register_module("classifier", torch::nn::Sequential(
        torch::nn::Flatten(),
        torch::nn::Dropout(0.1),
        torch::nn::Linear(64, kNumClasses)));
  }
  at::Tensor forward(const at::Tensor& x) { return classifier->forward(features->forward(x)); }

  torch::nn::Sequential features{nullptr};
  torch::nn::Sequential classifier{nullptr};
};
TORCH_MODULE(ShapeNet);

/// uint8 [N, H, W, 3] images to normalised float [N, 3, H, W].
at::Tensor to_input(const at::Tensor& images) {
  return images.permute({0, 3, 1, 2}).to(torch::kFloat).div(255).sub(0.5).div(0.25).contiguous();
}

double accuracy(ShapeNet& model, const ShapeDataset& data) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  int64_t correct = 0;
  const int64_t count = data.labels.size(0);
  for (int64_t start = 0; start < count; start += 256) {
    const int64_t end = std::min(count, start + 256);
    const auto logits = model->forward(to_input(data.images.slice(0, start, end)));
    correct += logits.argmax(1).eq(data.labels.slice(0, start, end)).sum().item<int64_t>();
  }
  model->train(was_training);
  return static_cast<double>(correct) / static_cast<double>(count);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int64_t train_count = quick ? 1024 : 4096;
  const int64_t validation_count = quick ? 512 : 1024;
  const int epochs = quick ? 3 : 6;
  const int64_t batch_size = 64;

  torch::manual_seed(0);
  auto generator = at::detail::createCPUGenerator(/*seed=*/2024);
  const auto train = make_shapes(train_count, generator);
  const auto validation = make_shapes(validation_count, generator);
  std::printf("torchkit %s demo: %lld training and %lld validation images of %lld shapes\n",
              std::string(torchkit::version()).c_str(), static_cast<long long>(train_count),
              static_cast<long long>(validation_count), static_cast<long long>(kNumClasses));

  ShapeNet model;
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(3e-3));

  for (int epoch = 1; epoch <= epochs; ++epoch) {
    const auto started = std::chrono::steady_clock::now();
    model->train();
    const auto order = torch::randperm(train_count, torch::kLong);
    double loss_sum = 0;
    int64_t correct = 0;
    for (int64_t start = 0; start < train_count; start += batch_size) {
      const auto index = order.slice(0, start, std::min(train_count, start + batch_size));
      const auto inputs = to_input(train.images.index_select(0, index));
      const auto targets = train.labels.index_select(0, index);
      optimizer.zero_grad();
      const auto logits = model->forward(inputs);
      const auto loss = torch::nn::functional::cross_entropy(logits, targets);
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>() * static_cast<double>(index.size(0));
      correct += logits.argmax(1).eq(targets).sum().item<int64_t>();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::printf("epoch %d/%d  loss %.4f  train accuracy %5.1f%%  lr %.2e  %.1fs\n", epoch, epochs,
                loss_sum / static_cast<double>(train_count),
                100.0 * static_cast<double>(correct) / static_cast<double>(train_count),
                optimizer.param_groups()[0].options().get_lr(), seconds);
  }

  const double validation_accuracy = accuracy(model, validation);
  std::printf("validation accuracy %.1f%% (chance is %.1f%%)\n", 100 * validation_accuracy, 100.0 / kNumClasses);
  const auto first = to_input(validation.images.slice(0, 0, 1));
  {
    torch::NoGradGuard no_grad;
    model->eval();
    const auto predicted = model->forward(first).argmax(1).item<int64_t>();
    std::printf("single image: predicted %s, truth %s\n", kClassNames[predicted],
                kClassNames[validation.labels[0].item<int64_t>()]);
  }
  return validation_accuracy > 2.0 / kNumClasses ? 0 : 1;
}
