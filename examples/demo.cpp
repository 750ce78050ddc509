// torchkit demo: trains a small CNN to tell four procedurally drawn shapes apart, using every
// torchkit feature the way a training script would.
//
//   demo                 full run (a few thousand images, two stages, well under a minute)
//   demo --quick         a short run, used by the test suite
//   demo --gpus 0,1      which GPUs the process may see (tip 1; default "0")
//
// The data set is built in: circles, squares, triangles and crosses of random size, position
// and colour on a noisy background, drawn from a fixed seed.
//
// Stage 1 trains the whole network with a warm-up + cosine learning-rate schedule. Stage 2
// fine-tunes it on noisier images (mixed with clean ones) with its first block frozen (its
// batch-norm statistics too) and two learning rates, and evaluates an EMA of the weights beside
// the trained ones.
//
//   tip 1  VisibleDevices, best_device        tip 6  NoGradScope, EvalScope, empty_cache, memory_stats
//   tip 2  summary                            tip 7  lr::SequentialLR(LinearLR, CosineAnnealingLR), lr::StepLR
//   tip 3  ClipGrad (clip_grad_norm_)          tip 8  FreezeByName (frozen BatchNorm), train, requires_grad_report
//   tip 4  images_to_batch, image_to_batch    tip 9  ParamGroupBuilder
//   tip 5  one_hot (label-smoothed targets)  fine-tuning  ModelEma, AveragedWeightsScope
//   mixed precision  AutocastScope (bfloat16 on the CPU), GradScaler, ClipGrad(optimizer, scaler) in stage 1
#include <torchkit/torchkit.hpp>

#include <torch/torch.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

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
ShapeDataset make_shapes(int64_t count, double noise, at::Generator generator) {
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
  const auto background = torch::rand({count, kImageSize, kImageSize, 3}, generator, options) * noise;
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

// Tip 4: uint8 [H, W, 3] images to the normalised float [N, 3, H, W] the network takes, in one
// fused pass (instead of permute -> to(float) -> div -> sub -> div -> contiguous).
const torchkit::ImageOptions kImageOptions{.mean = {0.5, 0.5, 0.5}, .std = {0.25, 0.25, 0.25}};

at::Tensor to_input(const at::Tensor& images, c10::Device device) {
  const std::vector<at::Tensor> list = images.unbind(0);  // views, no copies
  auto options = kImageOptions;
  options.device = device;
  return torchkit::images_to_batch(std::span<const at::Tensor>(list), options);
}

struct Evaluation {
  double loss = 0;
  double accuracy = 0;
};

// Tip 6: validation under EvalScope (dropout and batch norm in eval mode, every module's own
// flag restored afterwards) and NoGradScope (no autograd graph, far less memory).
Evaluation evaluate(ShapeNet& model, const ShapeDataset& data, c10::Device device) {
  torchkit::EvalScope eval(model);
  torchkit::NoGradScope no_grad;
  double loss_sum = 0;
  int64_t correct = 0;
  const int64_t count = data.labels.size(0);
  for (int64_t start = 0; start < count; start += 256) {
    const int64_t end = std::min(count, start + 256);
    const auto logits = model->forward(to_input(data.images.slice(0, start, end), device));
    const auto labels = data.labels.slice(0, start, end).to(device);
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
    correct += logits.argmax(1).eq(labels).sum().item<int64_t>();
  }
  return {loss_sum / static_cast<double>(count), static_cast<double>(correct) / static_cast<double>(count)};
}

struct Training {
  int64_t batch_size = 64;
  double label_smoothing = 0.1;
  torchkit::ModelEma* ema = nullptr;  // updated after every optimizer step when given
  torchkit::GradScaler* scaler = nullptr;  // mixed precision (bfloat16 autocast on the CPU) when given
  int64_t* skipped_steps = nullptr;        // steps the scaler skipped (inf/nan gradients)
};

// One epoch: label-smoothed one-hot targets (tip 5), gradient clipping every step (tip 3).
std::pair<double, double> train_one_epoch(ShapeNet& model, torch::optim::Optimizer& optimizer, torchkit::ClipGrad& clip,
                                          const ShapeDataset& data, const Training& training, c10::Device device) {
  // model->train(), except the normalisation layers whose statistics are frozen (tip 8).
  torchkit::train(model);
  const int64_t count = data.labels.size(0);
  const auto order = torch::randperm(count, torch::kLong);
  double loss_sum = 0;
  int64_t correct = 0;
  for (int64_t start = 0; start < count; start += training.batch_size) {
    const auto index = order.slice(0, start, std::min(count, start + training.batch_size));
    const auto inputs = to_input(data.images.index_select(0, index), device);
    const auto labels = data.labels.index_select(0, index).to(device);
    // Tip 5: one-hot targets, written directly as float, with label smoothing.
    const auto targets = torchkit::one_hot(labels, kNumClasses, {.smoothing = training.label_smoothing});
    optimizer.zero_grad();
    at::Tensor logits;
    {
      // Mixed precision: with torch.autocast("cpu", dtype=torch.bfloat16) (convolutions, linears).
      std::optional<torchkit::AutocastScope> autocast;
      if (training.scaler != nullptr && device.is_cpu()) autocast.emplace(at::kCPU, at::kBFloat16);
      logits = model->forward(inputs).to(at::kFloat);
    }
    const auto loss = -(targets * torch::log_softmax(logits, 1)).sum(1).mean();
    if (training.scaler != nullptr) {
      // scaler.scale(loss).backward(); scaler.unscale_(opt); clip_grad_norm_(...); scaler.step(opt); scaler.update()
      training.scaler->scale(loss).backward();
      clip(optimizer, *training.scaler);  // Tip 3 on the unscaled gradients
      if (!training.scaler->step(optimizer) && training.skipped_steps != nullptr) ++*training.skipped_steps;
      training.scaler->update();
    } else {
      loss.backward();
      clip(model);  // Tip 3: nn.utils.clip_grad_norm_(model.parameters(), max_norm, norm_type=2)
      optimizer.step();
    }
    if (training.ema != nullptr) {
      training.ema->update(model);  // timm's ModelEmaV3.update(model) after each step
    }
    loss_sum += loss.item<double>() * static_cast<double>(index.size(0));
    correct += logits.argmax(1).eq(labels).sum().item<int64_t>();
  }
  return {loss_sum / static_cast<double>(count), static_cast<double>(correct) / static_cast<double>(count)};
}

std::string lrs_to_string(const std::vector<double>& lrs) {
  return fmt::format("{:.2e}", fmt::join(lrs, "/"));
}

void print_epoch(const char* stage, int epoch, int epochs, std::pair<double, double> train, const Evaluation& validation,
                 const std::vector<double>& lrs, double seconds) {
  fmt::print("{} epoch {}/{}  loss {:.4f}  train {:5.1f}%  validation {:5.1f}%  lr {}  {:.1f}s\n", stage, epoch, epochs,
             train.first, 100 * train.second, 100 * validation.accuracy, lrs_to_string(lrs), seconds);
}

double seconds_since(std::chrono::steady_clock::time_point started) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string gpus = "0";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--gpus") == 0 && i + 1 < argc) {
      gpus = argv[++i];
    } else {
      fmt::print(stderr, "usage: {} [--quick] [--gpus SPEC]\n", argv[0]);
      return 2;
    }
  }

  // Tip 1: choose the GPUs before anything touches CUDA (os.environ["CUDA_VISIBLE_DEVICES"] = "0").
  const torchkit::VisibleDevices visible_devices(gpus);
  const c10::Device device = torchkit::best_device();

  const int64_t train_count = quick ? 1024 : 4096;
  const int64_t validation_count = quick ? 512 : 1024;
  const int train_epochs = quick ? 3 : 5;
  const int fine_tune_epochs = quick ? 1 : 2;

  torch::manual_seed(0);
  auto generator = at::detail::createCPUGenerator(/*seed=*/2024);
  const auto train = make_shapes(train_count, /*noise=*/60, generator);
  const auto validation = make_shapes(validation_count, /*noise=*/60, generator);
  const auto noisy_validation = make_shapes(validation_count, /*noise=*/100, generator);
  // Fine-tuning data: new noisy images mixed with half of the clean ones, so the network
  // learns the noise without forgetting the clean images.
  const auto noisy = make_shapes(train_count / 2, /*noise=*/100, generator);
  const ShapeDataset fine_tune_train{torch::cat({noisy.images, train.images.slice(0, 0, train_count / 2)}),
                                     torch::cat({noisy.labels, train.labels.slice(0, 0, train_count / 2)})};
  fmt::print("torchkit {} demo on {} (CUDA_VISIBLE_DEVICES=\"{}\"): {} training and {} validation images of {} shapes\n\n",
             torchkit::version(), device.str(), visible_devices.spec(), train_count, validation_count, kNumClasses);

  ShapeNet model;
  // Tip 2: the model summary (torchsummary's summary(model, input_size=(3, 32, 32))).
  fmt::print("{}\n\n", torchkit::summary(model, {3, kImageSize, kImageSize}));
  model->to(device);

  // Stage 1: the whole network; warm-up + cosine schedule (tip 7), stepped once per epoch.
  torchkit::ClipGrad clip(/*max_norm=*/1.0, /*norm_type=*/2.0);
  torchkit::GradScaler scaler;  // stage 1 trains in mixed precision
  int64_t skipped_steps = 0;
  {
    torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(3e-3).weight_decay(1e-4));
    torchkit::lr::SequentialLR schedule(
        optimizer,
        {torchkit::lr::LinearLR(optimizer, {.start_factor = 0.2, .total_iters = 1}),
         torchkit::lr::CosineAnnealingLR(optimizer, {.T_max = train_epochs - 1, .eta_min = 1e-4})},
        /*milestones=*/{1});
    for (int epoch = 1; epoch <= train_epochs; ++epoch) {
      const auto started = std::chrono::steady_clock::now();
      const auto lrs = schedule.last_lr();
      const auto result =
          train_one_epoch(model, optimizer, clip, train, {.scaler = &scaler, .skipped_steps = &skipped_steps}, device);
      const auto evaluation = evaluate(model, validation, device);
      schedule.step();
      print_epoch("train", epoch, train_epochs, result, evaluation, lrs, seconds_since(started));
    }
  }
  fmt::print("gradient clipping: {} of {} steps clipped to norm {} (last norm {:.3f})\n", clip.clipped_steps(),
             clip.steps(), 1.0, clip.last_norm());
  fmt::print("mixed precision (stage 1): {} autocast, loss scale {}, {} skipped steps\n",
             device.is_cpu() ? "bfloat16" : "no", scaler.get_scale(), skipped_steps);
  const auto before_fine_tuning = evaluate(model, noisy_validation, device);

  // Stage 2: fine-tune on noisier images with the first block (conv + batch norm) frozen, its
  // running statistics too (tip 8), and two learning rates (tip 9); the tip's StepLR halves them
  // every epoch. An EMA of the weights (timm's warm-up) is evaluated beside the raw weights.
  {
    const torchkit::FreezeByName frozen(model, {"features.0", "features.1"}, {.freeze_norm_stats = true});
    fmt::print("\nfine-tuning with the first block frozen:\n{}{}\n", frozen.report().to_string(),
               frozen.report().summary());
    torchkit::ParamGroupBuilder groups(model);
    groups.add({"features"}, {.lr = 3e-4, .name = "features"})
        .add({"classifier"}, {.lr = 1e-3, .name = "classifier"})
        .no_weight_decay({"*.bias"});
    const auto defaults = torch::optim::AdamWOptions(1e-3).weight_decay(1e-4);
    fmt::print("{}\n", groups.describe(defaults));
    auto optimizer = groups.make<torch::optim::AdamW>(defaults);
    torchkit::lr::StepLR schedule(optimizer, /*step_size=*/1, /*gamma=*/0.5);
    const auto frozen_weight = model->features[0]->as<torch::nn::Conv2d>()->weight.clone();
    const auto frozen_mean = model->features[1]->as<torch::nn::BatchNorm2d>()->running_mean.clone();
    torchkit::ModelEma ema(model, {.decay = 0.99, .warmup = true});
    for (int epoch = 1; epoch <= fine_tune_epochs; ++epoch) {
      const auto started = std::chrono::steady_clock::now();
      const auto lrs = schedule.last_lr();
      const auto result =
          train_one_epoch(model, optimizer, clip, fine_tune_train, {.label_smoothing = 0.05, .ema = &ema}, device);
      const auto evaluation = evaluate(model, noisy_validation, device);
      schedule.step();
      print_epoch("fine-tune", epoch, fine_tune_epochs, result, evaluation, lrs, seconds_since(started));
    }
    const auto raw = evaluate(model, noisy_validation, device);
    Evaluation averaged;
    {
      const torchkit::AveragedWeightsScope swapped(model, ema);  // the EMA weights, until the scope ends
      averaged = evaluate(model, noisy_validation, device);
    }
    fmt::print("noisy validation accuracy: {:.1f}% with the trained weights, {:.1f}% with their EMA ({} updates)\n",
               100 * raw.accuracy, 100 * averaged.accuracy, ema.n_averaged());
    const bool unchanged = model->features[0]->as<torch::nn::Conv2d>()->weight.equal(frozen_weight) &&
                           model->features[1]->as<torch::nn::BatchNorm2d>()->running_mean.equal(frozen_mean);
    fmt::print("first block (weights and batch-norm statistics) unchanged by fine-tuning: {}\n",
               unchanged ? "yes" : "NO");
    if (!unchanged) {
      return 1;
    }
  }  // FreezeByName restores every requires_grad flag here

  // Tip 6: hand cached GPU memory back once the big evaluation tensors are gone.
  torchkit::empty_cache();
  if (device.is_cuda()) {
    fmt::print("GPU memory: {}\n", torchkit::memory_stats());
  }

  const auto final_clean = evaluate(model, validation, device);
  const auto final_noisy = evaluate(model, noisy_validation, device);
  fmt::print("\nvalidation accuracy: {:.1f}% on clean images, {:.1f}% on noisy images ({:.1f}% before fine-tuning); "
             "chance is {:.1f}%\n",
             100 * final_clean.accuracy, 100 * final_noisy.accuracy, 100 * before_fine_tuning.accuracy,
             100.0 / kNumClasses);

  // Tip 4: a single decoded image ([H, W, C] uint8) to a batch of one ([1, C, H, W] float).
  const at::Tensor image = validation.images[0];
  auto single_options = kImageOptions;
  single_options.device = device;
  const at::Tensor batch = torchkit::image_to_batch(image, single_options);
  {
    torchkit::EvalScope eval(model);
    torchkit::NoGradScope no_grad;
    const auto predicted = model->forward(batch).argmax(1).item<int64_t>();
    fmt::print("single image {} -> batch {}: predicted {}, truth {}\n", torchkit::Shape(image.sizes()),
               torchkit::Shape(batch.sizes()), kClassNames[predicted], kClassNames[validation.labels[0].item<int64_t>()]);
  }
  // Clearly above chance on both, or the demo failed.
  return final_clean.accuracy > 2.0 / kNumClasses && final_noisy.accuracy > 2.0 / kNumClasses ? 0 : 1;
}
