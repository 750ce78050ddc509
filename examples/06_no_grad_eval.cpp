// Tip 6: evaluate without autograd, so that validation does not run out of memory; hand the
// cached memory back afterwards.
//
// Python:
//
//     model.eval()
//     with torch.no_grad():
//         for images, labels in val_loader:
//             outputs = model(images)
//     model.train()
//     torch.cuda.empty_cache()
//
// C++: the scopes restore what they found, also when validation throws, and EvalScope gives
// every submodule back its own mode (here a deliberately frozen batch norm stays in eval).
#include <torchkit/devices.hpp>
#include <torchkit/grad_mode.hpp>
#include <torchkit/memory.hpp>

#include <torch/torch.h>

#include <iomanip>
#include <iostream>

namespace {

struct ClassifierImpl : torch::nn::Module {
  ClassifierImpl() {
    body = register_module("body", torch::nn::Sequential(
        torch::nn::Linear(16, 64), torch::nn::BatchNorm1d(64), torch::nn::ReLU(), torch::nn::Dropout(0.3),
        torch::nn::Linear(64, 64), torch::nn::BatchNorm1d(64), torch::nn::ReLU()));
    head = register_module("head", torch::nn::Linear(64, 3));
  }
  at::Tensor forward(const at::Tensor& x) { return head(body->forward(x)); }
  torch::nn::Sequential body{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Classifier);

void print_modes(const char* when, const torch::nn::Module& model) {
  std::cout << when << ":";
  for (const auto& item : model.named_modules("model")) {
    std::cout << " " << item.key() << "=" << (item.value()->is_training() ? "train" : "eval");
  }
  std::cout << "\n";
}

}  // namespace

int main() {
  torch::manual_seed(0);
  at::set_num_threads(1);
  const c10::Device device = torchkit::best_device();
  std::cout << "device: " << device << "\n";

  // A toy problem: three Gaussian blobs in 16 dimensions.
  const auto centres = torch::randn({3, 16}) * 3;
  const auto make = [&](int64_t count) {
    const auto labels = torch::randint(0, 3, {count}, torch::kLong);
    const auto inputs = centres.index_select(0, labels) + torch::randn({count, 16});
    return std::pair{inputs.to(device), labels.to(device)};
  };
  const auto [train_x, train_y] = make(512);
  const auto [val_x, val_y] = make(2048);

  Classifier model;
  model->to(device);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  for (int step = 0; step < 30; ++step) {
    optimizer.zero_grad();
    const auto loss = torch::nn::functional::cross_entropy(model->forward(train_x), train_y);
    loss.backward();
    optimizer.step();
  }
  // Fine-tuning practice: keep the second batch norm frozen (running statistics fixed).
  model->body[5]->eval();
  print_modes("before validation", *model);

  {
    torchkit::EvalScope eval(model);    // model.eval(), undone at the closing brace
    torchkit::NoGradScope no_grad;      // with torch.no_grad():
    print_modes("during validation", *model);
    const auto logits = model->forward(val_x);
    const auto accuracy = logits.argmax(1).eq(val_y).to(torch::kFloat).mean().item<float>();
    std::cout << "validation accuracy: " << std::fixed << std::setprecision(3) << accuracy
              << ", logits.requires_grad() = " << std::boolalpha << logits.requires_grad() << "\n";
  }
  print_modes("after validation", *model);
  std::cout << "grad mode after validation: " << std::boolalpha << c10::GradMode::is_enabled() << "\n";

  // With autograd on, the same forward pass keeps its graph (and its activations) alive.
  const auto logits = model->forward(val_x);
  std::cout << "without the scopes, logits.requires_grad() = " << logits.requires_grad() << "\n";

  // torch.inference_mode(): stricter and faster still, for pure inference.
  {
    torchkit::InferenceScope inference;
    torchkit::EvalScope eval(model);
    const auto predictions = model->forward(val_x).argmax(1);
    std::cout << "inference-mode predictions: is_inference() = " << predictions.is_inference() << "\n";
  }

  // torch.cuda.empty_cache(): a no-op without CUDA, as in Python.
  torchkit::empty_cache();
  if (device.is_cuda()) {
    std::cout << "CUDA memory after empty_cache: " << torchkit::memory_stats() << "\n";
  } else {
    std::cout << "no CUDA device: empty_cache() did nothing and memory_stats() is not available\n";
  }
  return 0;
}
