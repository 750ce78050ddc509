// One table of every documented bad input of every public torchkit function. Each row must
// throw torchkit::Error, with a message that names the bad value, and leave everything it
// touched exactly as it was: the model (parameter values bit for bit, requires_grad flags,
// gradients, buffers, every module's training flag), the optimizer (every group's tensors, lr,
// weight decay, momentum), the environment variables torchkit reads, the input tensors (and
// Mats), the grad mode, the global RNG and whatever else a row registers (schedulers, groups).
//
// A second test case reads the public headers (include/torchkit/*.hpp) and fails when a
// function documented with `@throws` has no row here.
#include <torchkit/torchkit.hpp>

#if defined(TORCHKIT_BAD_INPUT_WITH_OPENCV) && TORCHKIT_BAD_INPUT_WITH_OPENCV
#include <torchkit/opencv.hpp>
#define TORCHKIT_BAD_INPUT_OPENCV 1
#else
#define TORCHKIT_BAD_INPUT_OPENCV 0
#endif

#include "test_support.hpp"

#if TORCHKIT_WITH_GLOO
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#endif

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <typeinfo>
#include <utility>
#include <vector>

#include <unistd.h>

namespace {

namespace lr = torchkit::lr;
constexpr double nan = std::numeric_limits<double>::quiet_NaN();
constexpr double infinity = std::numeric_limits<double>::infinity();

// ---------------------------------------------------------------------------------------------
// The fixture: a fresh small model with gradients, an optimizer, inputs, and what rows add.
// ---------------------------------------------------------------------------------------------

/// The environment variables torchkit reads (devices.hpp, distributed.hpp).
constexpr const char* environment_names[] = {"CUDA_VISIBLE_DEVICES", "LOCAL_RANK",  "RANK",       "WORLD_SIZE",
                                             "LOCAL_WORLD_SIZE",     "MASTER_ADDR", "MASTER_PORT"};

std::optional<std::string> environment(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::nullopt : std::optional<std::string>(value);
}

void set_environment(const char* name, const std::optional<std::string>& value) {
  if (value) {
    ::setenv(name, value->c_str(), 1);
  } else {
    ::unsetenv(name);
  }
}

struct Fixture {
  Fixture() {
    for (const char* name : environment_names) {
      saved_environment.emplace_back(name, environment(name));
    }
    torch::manual_seed(0);
    // conv -> batch norm -> relu -> flatten -> linear: 0.weight [4, 3, 3, 3], 0.bias [4],
    // 1.weight [4], 1.bias [4], 4.weight [5, 144], 4.bias [5]; buffers in 1.
    model = torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3)), torch::nn::BatchNorm2d(4),
                                  torch::nn::ReLU(), torch::nn::Flatten(), torch::nn::Linear(4 * 6 * 6, 5));
    const at::Tensor input = torch::rand({2, 3, 8, 8});
    model->forward(input).pow(2).sum().backward();
    // Mixed state, so that a function that resets it to something uniform is noticed: the batch
    // norm deliberately in eval mode, the conv bias frozen (with a gradient from before).
    model->ptr(1)->eval();
    model->ptr<torch::nn::Conv2dImpl>(0)->bias.requires_grad_(false);

    const auto parameters = model->named_parameters();
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<at::Tensor>{parameters["0.weight"], parameters["0.bias"]},
                        std::make_unique<torch::optim::SGDOptions>(
                            torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(1e-4)));
    groups.emplace_back(std::vector<at::Tensor>{parameters["1.weight"], parameters["1.bias"], parameters["4.weight"],
                                                parameters["4.bias"]},
                        std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(0.01).momentum(0.8)));
    optimizer = std::make_unique<torch::optim::SGD>(std::move(groups), torch::optim::SGDOptions(0.05).momentum(0.5));

    tensors["labels"] = torch::tensor({0, 3, 1, 2}, torch::kLong);
    tensors["image"] = torch::randint(0, 256, {4, 5, 3}, torch::kByte);
  }
  ~Fixture() {
    for (auto cleanup = cleanups.rbegin(); cleanup != cleanups.rend(); ++cleanup) {
      (*cleanup)();
    }
    probes.clear();
    schedulers.clear();  // before the optimizers they point to
    keep.clear();
    for (const auto& [name, value] : saved_environment) {
      set_environment(name.c_str(), value);
    }
  }
  Fixture(const Fixture&) = delete;
  Fixture& operator=(const Fixture&) = delete;
  Fixture(Fixture&&) = delete;
  Fixture& operator=(Fixture&&) = delete;

  /// The parameter called `name` (LibTorch's lookup).
  [[nodiscard]] at::Tensor parameter(const std::string& name) const {
    const auto parameters = model->named_parameters();
    const at::Tensor* found = parameters.find(name);
    if (found == nullptr) throw std::runtime_error("the fixture has no parameter " + name);
    return *found;
  }
  /// Makes a T that lives as long as the fixture (schedulers, groups, archives).
  template <class T, class... Args>
  std::shared_ptr<T> hold(Args&&... args) {
    auto object = std::make_shared<T>(std::forward<Args>(args)...);
    keep.push_back(object);
    return object;
  }
  /// The object hold() made `index`-th, as the T it was made as.
  template <class T>
  T& held(std::size_t index) {
    return *std::static_pointer_cast<T>(keep.at(index));
  }
  /// The object hold() made last, as the T it was made as.
  template <class T>
  T& last_held() {
    return *std::static_pointer_cast<T>(keep.back());
  }
  /// Makes a scheduler that lives as long as the fixture, and probes its state (to_string():
  /// arguments, last_epoch, last_lr).
  template <class S, class... Args>
  std::shared_ptr<S> add_scheduler(Args&&... args) {
    auto scheduler = std::make_shared<S>(std::forward<Args>(args)...);
    schedulers.push_back(scheduler);
    probe(fmt::format("scheduler {} ({})", schedulers.size() - 1, scheduler->type_name()),
          [scheduler] { return scheduler->to_string(); });
    return scheduler;
  }
  /// Adds state to compare before and after the call.
  void probe(std::string name, std::function<std::string()> describe) {
    probes.emplace_back(std::move(name), std::move(describe));
  }

  std::vector<std::pair<std::string, std::optional<std::string>>> saved_environment;
  torch::nn::Sequential model{nullptr};
  std::unique_ptr<torch::optim::SGD> optimizer;
  std::map<std::string, at::Tensor> tensors;
#if TORCHKIT_BAD_INPUT_OPENCV
  std::map<std::string, cv::Mat> mats;
#endif
  std::vector<std::pair<std::string, std::function<std::string()>>> probes;
  std::vector<std::shared_ptr<void>> keep;
  std::vector<std::shared_ptr<torchkit::lr::Scheduler>> schedulers;
  std::vector<std::function<void()>> cleanups;
};

// ---------------------------------------------------------------------------------------------
// Snapshots: everything a row could change, captured before the call and compared after it.
// ---------------------------------------------------------------------------------------------

/// Bit-for-bit equality (torch::equal, and the raw bytes so that NaN equals the same NaN),
/// with the same dtype, shape, layout and device.
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes() || a.layout() != b.layout() ||
      a.device() != b.device()) {
    return false;
  }
  if (a.is_meta()) return true;
  at::Tensor x = (a.layout() == at::kStrided ? a : a.to_dense()).detach().cpu().contiguous();
  at::Tensor y = (b.layout() == at::kStrided ? b : b.to_dense()).detach().cpu().contiguous();
  if (torch::equal(x, y)) return true;
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

std::string describe(const at::Tensor& tensor) {
  if (!tensor.defined()) return "undefined";
  return fmt::format("{} {} {}", c10::toString(tensor.scalar_type()), torchkit::detail::shape_string(tensor.sizes()),
                     c10::str(tensor.layout()));
}

int64_t version_of(const at::Tensor& tensor) {
  return tensor.defined() && !tensor.is_inference() ? static_cast<int64_t>(tensor._version()) : -1;
}

at::Tensor copy_of(const at::Tensor& tensor) {
  const at::NoGradGuard no_grad;
  return tensor.defined() ? tensor.clone() : at::Tensor();
}

struct TensorRecord {
  const void* impl = nullptr;
  at::Tensor value;
  bool requires_grad = false;
  int64_t version = -1;
  const void* grad_impl = nullptr;
  at::Tensor grad;
  int64_t grad_version = -1;
};

TensorRecord record_of(const at::Tensor& tensor, bool with_grad) {
  TensorRecord record;
  if (!tensor.defined()) return record;
  record.impl = tensor.unsafeGetTensorImpl();
  record.value = copy_of(tensor);
  record.requires_grad = tensor.requires_grad();
  record.version = version_of(tensor);
  if (with_grad) {
    const at::Tensor& grad = tensor.unsafeGetTensorImpl()->grad();
    record.grad_impl = grad.defined() ? grad.unsafeGetTensorImpl() : nullptr;
    record.grad = copy_of(grad);
    record.grad_version = version_of(grad);
  }
  return record;
}

void compare_records(const std::string& what, const TensorRecord& before, const TensorRecord& after,
                     std::vector<std::string>& differences) {
  if (before.impl != after.impl) differences.push_back(what + ": a different tensor object");
  if (!same_bits(before.value, after.value)) {
    differences.push_back(
        fmt::format("{}: value changed ({} -> {})", what, describe(before.value), describe(after.value)));
  }
  if (before.requires_grad != after.requires_grad) {
    differences.push_back(fmt::format("{}: requires_grad {} -> {}", what, before.requires_grad, after.requires_grad));
  }
  if (before.version != after.version) {
    differences.push_back(fmt::format("{}: version counter {} -> {}", what, before.version, after.version));
  }
  if (before.grad_impl != after.grad_impl) differences.push_back(what + ": the gradient was replaced");
  if (!same_bits(before.grad, after.grad)) {
    differences.push_back(
        fmt::format("{}: gradient changed ({} -> {})", what, describe(before.grad), describe(after.grad)));
  }
  if (before.grad_version != after.grad_version) {
    differences.push_back(fmt::format("{}: gradient version {} -> {}", what, before.grad_version, after.grad_version));
  }
}

std::string optimizer_state(const torch::optim::Optimizer& optimizer) {
  std::string text = fmt::format("{} groups, {} states;", optimizer.param_groups().size(), optimizer.state().size());
  for (std::size_t g = 0; g < optimizer.param_groups().size(); ++g) {
    const auto& group = optimizer.param_groups()[g];
    text += fmt::format(" group {}: {} tensors [", g, group.params().size());
    for (const auto& tensor : group.params()) {
      text += fmt::format("{} ", static_cast<const void*>(tensor.unsafeGetTensorImpl()));
    }
    text += "]";
    if (!group.has_options()) continue;
    const auto& options = group.options();
    text += fmt::format(" {}", typeid(options).name());
    if (const auto* sgd = dynamic_cast<const torch::optim::SGDOptions*>(&options)) {
      text += fmt::format(" lr={} weight_decay={} momentum={} dampening={} nesterov={}", sgd->lr(), sgd->weight_decay(),
                          sgd->momentum(), sgd->dampening(), sgd->nesterov());
    } else if (const auto* adam = dynamic_cast<const torch::optim::AdamOptions*>(&options)) {
      text += fmt::format(" lr={} weight_decay={} beta1={} beta2={}", adam->lr(), adam->weight_decay(),
                          std::get<0>(adam->betas()), std::get<1>(adam->betas()));
    } else {
      text += fmt::format(" lr={}", options.get_lr());
    }
  }
  return text;
}

#if TORCHKIT_BAD_INPUT_OPENCV
struct MatRecord {
  const void* data = nullptr;
  int type = 0;
  std::vector<int> sizes;
  std::vector<unsigned char> bytes;
};

MatRecord record_of(const cv::Mat& mat) {
  MatRecord record;
  record.data = mat.data;
  record.type = mat.type();
  record.sizes.assign(mat.size.p, mat.size.p + mat.dims);
  if (!mat.empty()) {
    const cv::Mat dense = mat.isContinuous() ? mat : mat.clone();
    record.bytes.assign(dense.datastart, dense.datastart + dense.total() * dense.elemSize());
  }
  return record;
}

bool operator==(const MatRecord& a, const MatRecord& b) {
  return a.data == b.data && a.type == b.type && a.sizes == b.sizes && a.bytes == b.bytes;
}
#endif

struct Snapshot {
  std::vector<std::pair<std::string, TensorRecord>> parameters;
  std::vector<std::pair<std::string, TensorRecord>> buffers;
  std::vector<std::pair<std::string, bool>> training;
  std::string optimizer;
  std::vector<std::pair<std::string, std::optional<std::string>>> environment;
  std::vector<std::pair<std::string, TensorRecord>> tensors;
#if TORCHKIT_BAD_INPUT_OPENCV
  std::vector<std::pair<std::string, MatRecord>> mats;
#endif
  std::vector<std::pair<std::string, std::string>> probes;
  bool grad_mode = true;
  bool inference_mode = false;
  at::Tensor rng_state;
  torchkit::detail::CudaDriverProbe cuda_probe = nullptr;
};

Snapshot snapshot(Fixture& fixture) {
  Snapshot snapshot;
  for (const auto& item : fixture.model->named_parameters(/*recurse=*/true)) {
    snapshot.parameters.emplace_back(item.key(), record_of(item.value(), /*with_grad=*/true));
  }
  for (const auto& item : fixture.model->named_buffers(/*recurse=*/true)) {
    snapshot.buffers.emplace_back(item.key(), record_of(item.value(), /*with_grad=*/false));
  }
  for (const auto& item : fixture.model->named_modules(/*name_prefix=*/"", /*include_self=*/true)) {
    snapshot.training.emplace_back(item.key(), item.value()->is_training());
  }
  snapshot.optimizer = optimizer_state(*fixture.optimizer);
  for (const char* name : environment_names) {
    snapshot.environment.emplace_back(name, environment(name));
  }
  for (const auto& [name, tensor] : fixture.tensors) {
    snapshot.tensors.emplace_back(name, record_of(tensor, /*with_grad=*/true));
  }
#if TORCHKIT_BAD_INPUT_OPENCV
  for (const auto& [name, mat] : fixture.mats) {
    snapshot.mats.emplace_back(name, record_of(mat));
  }
#endif
  for (const auto& [name, describe_state] : fixture.probes) {
    snapshot.probes.emplace_back(name, describe_state());
  }
  snapshot.grad_mode = c10::GradMode::is_enabled();
  snapshot.inference_mode = c10::InferenceMode::is_enabled();
  snapshot.rng_state = at::detail::getDefaultCPUGenerator().get_state();
  snapshot.cuda_probe = torchkit::detail::cuda_driver_probe();
  return snapshot;
}

template <class T, class Compare>
void compare_lists(const std::string& what, const std::vector<std::pair<std::string, T>>& before,
                   const std::vector<std::pair<std::string, T>>& after, std::vector<std::string>& differences,
                   Compare compare) {
  if (before.size() != after.size()) {
    differences.push_back(fmt::format("{}: {} entries -> {}", what, before.size(), after.size()));
    return;
  }
  for (std::size_t i = 0; i < before.size(); ++i) {
    if (before[i].first != after[i].first) {
      differences.push_back(fmt::format("{} {}: renamed to {}", what, before[i].first, after[i].first));
      continue;
    }
    compare(fmt::format("{} '{}'", what, before[i].first), before[i].second, after[i].second);
  }
}

std::string shown(const std::optional<std::string>& value) { return value ? "\"" + *value + "\"" : "unset"; }

std::vector<std::string> differences_between(const Snapshot& before, const Snapshot& after) {
  std::vector<std::string> differences;
  const auto tensors = [&](const std::string& what, const TensorRecord& a, const TensorRecord& b) {
    compare_records(what, a, b, differences);
  };
  compare_lists("parameter", before.parameters, after.parameters, differences, tensors);
  compare_lists("buffer", before.buffers, after.buffers, differences, tensors);
  compare_lists("module", before.training, after.training, differences,
                [&](const std::string& what, bool a, bool b) {
                  if (a != b) differences.push_back(fmt::format("{}: is_training {} -> {}", what, a, b));
                });
  if (before.optimizer != after.optimizer) {
    differences.push_back(fmt::format("optimizer: {} -> {}", before.optimizer, after.optimizer));
  }
  compare_lists("environment variable", before.environment, after.environment, differences,
                [&](const std::string& what, const std::optional<std::string>& a, const std::optional<std::string>& b) {
                  if (a != b) differences.push_back(fmt::format("{}: {} -> {}", what, shown(a), shown(b)));
                });
  compare_lists("input tensor", before.tensors, after.tensors, differences, tensors);
#if TORCHKIT_BAD_INPUT_OPENCV
  compare_lists("input Mat", before.mats, after.mats, differences,
                [&](const std::string& what, const MatRecord& a, const MatRecord& b) {
                  if (!(a == b)) differences.push_back(what + ": changed");
                });
#endif
  compare_lists("probe", before.probes, after.probes, differences,
                [&](const std::string& what, const std::string& a, const std::string& b) {
                  if (a != b) differences.push_back(fmt::format("{}: {} -> {}", what, a, b));
                });
  if (before.grad_mode != after.grad_mode) differences.push_back("grad mode changed");
  if (before.inference_mode != after.inference_mode) differences.push_back("inference mode changed");
  if (!same_bits(before.rng_state, after.rng_state)) differences.push_back("the global CPU RNG state changed");
  if (before.cuda_probe != after.cuda_probe) differences.push_back("the CUDA driver probe changed");
  return differences;
}

// ---------------------------------------------------------------------------------------------
// The table.
// ---------------------------------------------------------------------------------------------

struct Row {
  std::string function{};  ///< "<header>:<name as declared>", e.g. "clip.hpp:clip_grad_norm_"
  std::string input{};     ///< the bad input, in a few words
  std::string message{};   ///< what the Error's message must contain (it names the bad value)
  std::function<void(Fixture&)> call{};
  std::function<void(Fixture&)> setup{};  ///< runs before the snapshot (optional)
};

using Rows = std::vector<Row>;

void append(Rows& rows, Rows more) {
  for (auto& row : more) rows.push_back(std::move(row));
}

/// A model's parameters plus one more tensor (for tensor-range rows).
std::vector<at::Tensor> parameters_and(const Fixture& f, at::Tensor extra) {
  auto list = f.model->parameters();
  list.push_back(std::move(extra));
  return list;
}

/// Sets one gradient of the fixture's model to `grad`.
void set_grad(Fixture& f, const std::string& name, at::Tensor grad) {
  f.parameter(name).mutable_grad() = std::move(grad);
}

/// An inf in the linear layer's gradient (the total norm is inf).
void infinite_grad(Fixture& f) {
  at::Tensor grad = f.parameter("4.weight").grad().clone();
  grad[0][0] = infinity;
  set_grad(f, "4.weight", grad);
}

/// A gradient that is an inference tensor.
void inference_grad(Fixture& f) {
  at::Tensor grad;
  {
    c10::InferenceMode inference;
    grad = torch::ones({5});
  }
  set_grad(f, "4.bias", grad);
}

Rows batch_rows() {
  Rows rows{
      {"batch.hpp:to_batch", "undefined sample", "to_batch: the sample is an undefined tensor",
       [](Fixture&) { (void)torchkit::to_batch(at::Tensor()); }},
      {"batch.hpp:from_batch", "undefined batch", "from_batch: the batch is an undefined tensor",
       [](Fixture&) { (void)torchkit::from_batch(at::Tensor()); }},
      {"batch.hpp:from_batch", "0-dim tensor", "from_batch: expected a batch [1, ...], got a 0-dim tensor",
       [](Fixture& f) { (void)torchkit::from_batch(f.tensors.at("scalar")); },
       [](Fixture& f) { f.tensors["scalar"] = torch::tensor(3.0); }},
      {"batch.hpp:from_batch", "batch of 2", "from_batch: the batch holds 2 samples (shape [2, 3])",
       [](Fixture& f) { (void)torchkit::from_batch(f.tensors.at("pair")); },
       [](Fixture& f) { f.tensors["pair"] = torch::ones({2, 3}); }},
      {"batch.hpp:image_to_batch", "undefined image", "image_to_batch: the image is an undefined tensor",
       [](Fixture&) { (void)torchkit::image_to_batch(at::Tensor()); }},
      {"batch.hpp:image_to_batch", "sparse image", "image_to_batch: the image is not a dense tensor",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("sparse")); },
       [](Fixture& f) { f.tensors["sparse"] = torch::ones({4, 5, 3}).to_sparse(); }},
      {"batch.hpp:image_to_batch", "2-d image [4, 5]", "image_to_batch: the image has shape [4, 5] (2 dimensions)",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("gray")); },
       [](Fixture& f) { f.tensors["gray"] = torch::zeros({4, 5}, torch::kByte); }},
      {"batch.hpp:image_to_batch", "empty image [0, 5, 3]", "image_to_batch: the image is empty (shape [0, 5, 3])",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("empty")); },
       [](Fixture& f) { f.tensors["empty"] = torch::zeros({0, 5, 3}, torch::kByte); }},
      {"batch.hpp:image_to_batch", "2 channels", "image_to_batch: the image has 2 channels (shape [4, 5, 2])",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("two")); },
       [](Fixture& f) { f.tensors["two"] = torch::zeros({4, 5, 2}, torch::kByte); }},
      {"batch.hpp:image_to_batch", "double image", "image_to_batch: the image has dtype Double",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("double")); },
       [](Fixture& f) { f.tensors["double"] = torch::zeros({4, 5, 3}, torch::kDouble); }},
      {"batch.hpp:image_to_batch", "scale = inf", "image_to_batch: scale is inf",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("image"), {.scale = infinity}); }},
      {"batch.hpp:image_to_batch", "2 means for 3 channels",
       "image_to_batch: mean has 2 values for an image of 3 channels",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("image"), {.mean = {0.1, 0.2}}); }},
      {"batch.hpp:image_to_batch", "4 stds for 3 channels",
       "image_to_batch: std has 4 values for an image of 3 channels",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("image"), {.std = {1, 1, 1, 1}}); }},
      {"batch.hpp:image_to_batch", "mean[1] = nan", "image_to_batch: mean[1] is nan",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("image"), {.mean = {0.5, nan, 0.5}}); }},
      {"batch.hpp:image_to_batch", "std[1] = 0", "image_to_batch: std[1] is 0",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("image"), {.std = {0.2, 0.0, 0.2}}); }},
      {"batch.hpp:image_to_batch", "output dtype Int", "image_to_batch: output dtype Int is not supported",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("image"), {.dtype = at::kInt}); }},
      {"batch.hpp:images_to_batch", "no images", "images_to_batch: no images",
       [](Fixture&) { (void)torchkit::images_to_batch(std::span<const at::Tensor>()); }},
      {"batch.hpp:images_to_batch", "image 1 of another shape",
       "images_to_batch: image 1 has shape [4, 6, 3] but image 0 has [4, 5, 3]",
       [](Fixture& f) { (void)torchkit::images_to_batch({f.tensors.at("image"), f.tensors.at("wide")}); },
       [](Fixture& f) { f.tensors["wide"] = torch::zeros({4, 6, 3}, torch::kByte); }},
      {"batch.hpp:images_to_batch", "image 1 on another device (meta)",
       "images_to_batch: image 1 is on meta but image 0 is on cpu",
       [](Fixture& f) { (void)torchkit::images_to_batch({f.tensors.at("image"), f.tensors.at("meta")}); },
       [](Fixture& f) {
         f.tensors["meta"] = torch::empty({4, 5, 3}, torch::TensorOptions().dtype(torch::kByte).device(at::kMeta));
       }},
      {"batch.hpp:images_to_batch", "image 1 with 2 channels", "images_to_batch: image 1 has 2 channels",
       [](Fixture& f) { (void)torchkit::images_to_batch({f.tensors.at("image"), f.tensors.at("two")}); },
       [](Fixture& f) { f.tensors["two"] = torch::zeros({4, 5, 2}, torch::kByte); }},
      {"batch.hpp:images_to_batch", "std = 0 for both images", "images_to_batch: std[0] is 0",
       [](Fixture& f) {
         (void)torchkit::images_to_batch({f.tensors.at("image"), f.tensors.at("image")}, {.std = {0.0}});
       }},
      {"batch.hpp:images_to_batch", "image 1 undefined", "images_to_batch: image 1 is an undefined tensor",
       [](Fixture& f) { (void)torchkit::images_to_batch({f.tensors.at("image"), at::Tensor()}); }},
      // resize / center_crop (issue 13)
      {"batch.hpp:image_to_batch", "resize with neither shorter_side nor size",
       "image_to_batch: resize has neither shorter_side nor size",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("image"), {.resize = torchkit::Resize{}}); }},
      {"batch.hpp:image_to_batch", "resize with both shorter_side and size",
       "image_to_batch: resize has both shorter_side and size",
       [](Fixture& f) {
         (void)torchkit::image_to_batch(f.tensors.at("image"),
                                        {.resize = torchkit::Resize{.shorter_side = 3, .size = {{3, 3}}}});
       }},
      {"batch.hpp:image_to_batch", "resize.size {0, 5}", "image_to_batch: resize.size is {0, 5}",
       [](Fixture& f) {
         (void)torchkit::image_to_batch(f.tensors.at("image"), {.resize = torchkit::Resize{.size = {{0, 5}}}});
       }},
      {"batch.hpp:image_to_batch", "resize.shorter_side -3", "image_to_batch: resize.shorter_side is -3",
       [](Fixture& f) {
         (void)torchkit::image_to_batch(f.tensors.at("image"), {.resize = torchkit::Resize{.shorter_side = -3}});
       }},
      {"batch.hpp:image_to_batch", "max_size with a fixed size",
       "image_to_batch: resize.max_size is 100 with a fixed size {4, 4}",
       [](Fixture& f) {
         (void)torchkit::image_to_batch(f.tensors.at("image"),
                                        {.resize = torchkit::Resize{.size = {{4, 4}}, .max_size = 100}});
       }},
      {"batch.hpp:image_to_batch", "max_size 8 = shorter_side 8",
       "image_to_batch: resize.max_size is 8 but shorter_side is 8",
       [](Fixture& f) {
         (void)torchkit::image_to_batch(f.tensors.at("image"),
                                        {.resize = torchkit::Resize{.shorter_side = 8, .max_size = 8}});
       }},
      {"batch.hpp:image_to_batch", "interpolation 7", "image_to_batch: resize.interpolation is 7, not an Interpolation",
       [](Fixture& f) {
         (void)torchkit::image_to_batch(
             f.tensors.at("image"),
             {.resize = torchkit::Resize{.shorter_side = 3, .interpolation = static_cast<torchkit::Interpolation>(7)}});
       }},
      {"batch.hpp:image_to_batch", "center_crop {0, 3}", "image_to_batch: center_crop is {0, 3}",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.tensors.at("image"), {.center_crop = {{0, 3}}}); }},
      {"batch.hpp:image_to_batch", "empty image with a resize", "image_to_batch: the image is empty (shape [0, 5, 3])",
       [](Fixture& f) {
         (void)torchkit::image_to_batch(f.tensors.at("empty"), {.resize = torchkit::Resize{.shorter_side = 3}});
       },
       [](Fixture& f) { f.tensors["empty"] = torch::zeros({0, 5, 3}, torch::kByte); }},
      {"batch.hpp:images_to_batch", "image 1 ends another size after the resize",
       "images_to_batch: image 1 (shape [4, 6, 3]) becomes 3x4 after the resize and crop but image 0 (shape [4, 5, "
       "3]) becomes 3x3",
       [](Fixture& f) {
         (void)torchkit::images_to_batch({f.tensors.at("image"), f.tensors.at("wide")},
                                         {.resize = torchkit::Resize{.shorter_side = 3}});
       },
       [](Fixture& f) { f.tensors["wide"] = torch::zeros({4, 6, 3}, torch::kByte); }},
      {"batch.hpp:images_to_batch", "image 1 with 1 channel under a resize",
       "images_to_batch: image 1 has 1 channels (shape [4, 5, 1]) but image 0 has 3",
       [](Fixture& f) {
         (void)torchkit::images_to_batch({f.tensors.at("image"), f.tensors.at("gray1")},
                                         {.resize = torchkit::Resize{.size = {{2, 2}}}});
       },
       [](Fixture& f) { f.tensors["gray1"] = torch::zeros({4, 5, 1}, torch::kByte); }},
      // letterbox
      {"batch.hpp:letterbox", "size {0, 640}", "letterbox: size is {0, 640}",
       [](Fixture& f) { (void)torchkit::letterbox(f.tensors.at("image"), {.size = {0, 640}}); }},
      {"batch.hpp:letterbox", "pad_value nan", "letterbox: pad_value is nan",
       [](Fixture& f) { (void)torchkit::letterbox(f.tensors.at("image"), {.pad_value = nan}); }},
      {"batch.hpp:letterbox", "interpolation 5", "letterbox: interpolation is 5, not an Interpolation",
       [](Fixture& f) {
         (void)torchkit::letterbox(f.tensors.at("image"), {.interpolation = static_cast<torchkit::Interpolation>(5)});
       }},
      {"batch.hpp:letterbox", "image options with a resize", "letterbox: options.image has a resize",
       [](Fixture& f) {
         (void)torchkit::letterbox(f.tensors.at("image"),
                                   {.image = {.resize = torchkit::Resize{.shorter_side = 3}}});
       }},
      {"batch.hpp:letterbox", "empty image [0, 5, 3]", "letterbox: the image is empty (shape [0, 5, 3])",
       [](Fixture& f) { (void)torchkit::letterbox(f.tensors.at("empty")); },
       [](Fixture& f) { f.tensors["empty"] = torch::zeros({0, 5, 3}, torch::kByte); }},
      {"batch.hpp:letterbox", "2 channels", "letterbox: the image has 2 channels (shape [4, 5, 2])",
       [](Fixture& f) { (void)torchkit::letterbox(f.tensors.at("two")); },
       [](Fixture& f) { f.tensors["two"] = torch::zeros({4, 5, 2}, torch::kByte); }},
      {"batch.hpp:letterbox", "std 0", "letterbox: std[0] is 0",
       [](Fixture& f) { (void)torchkit::letterbox(f.tensors.at("image"), {.image = {.std = {0.0}}}); }},
      {"batch.hpp:Letterbox::to_original", "undefined boxes", "Letterbox::to_original: the boxes are an undefined tensor",
       [](Fixture&) { (void)torchkit::Letterbox{}.to_original(at::Tensor()); }},
      {"batch.hpp:Letterbox::to_original", "boxes [2, 3]", "Letterbox::to_original: boxes have shape [2, 3]",
       [](Fixture& f) { (void)torchkit::Letterbox{}.to_original(f.tensors.at("boxes3")); },
       [](Fixture& f) { f.tensors["boxes3"] = torch::ones({2, 3}); }},
      {"batch.hpp:Letterbox::to_original", "int64 boxes", "Letterbox::to_original: boxes have dtype Long",
       [](Fixture& f) { (void)torchkit::Letterbox{}.to_original(f.tensors.at("long_boxes")); },
       [](Fixture& f) { f.tensors["long_boxes"] = torch::ones({2, 4}, torch::kLong); }},
  };
  if (!at::hasCUDA()) {
    rows.push_back({"batch.hpp:image_to_batch", "device cuda on a LibTorch without CUDA",
                    "image_to_batch: device cuda:0 was asked for, but this LibTorch has no CUDA support",
                    [](Fixture& f) {
                      (void)torchkit::image_to_batch(f.tensors.at("image"), {.device = c10::Device(at::kCUDA, 0)});
                    }});
  }
  return rows;
}

/// A GradScaler held by the fixture (probed: scale, growth tracker, options), `scaled` when
/// scale() has run, so that unscale_/step/update get past their first check.
torchkit::GradScaler& held_scaler(Fixture& f, bool scaled, torchkit::GradScalerOptions options = {}) {
  auto scaler = f.hold<torchkit::GradScaler>(options);
  f.probe("GradScaler", [scaler] { return scaler->to_string(); });
  if (scaled) (void)scaler->scale(torch::tensor(1.0f));
  return *scaler;
}

/// An archive holding a "grad_scaler" written by `fill`, held by the fixture, ready to load.
torch::serialize::InputArchive& held_scaler_archive(Fixture& f,
                                                   const std::function<void(torch::serialize::OutputArchive&)>& fill) {
  torch::serialize::OutputArchive out;
  fill(out);
  std::stringstream bytes;
  out.save_to(bytes);
  auto in = f.hold<torch::serialize::InputArchive>();
  in->load_from(bytes);
  return *in;
}

Rows amp_rows() {
  const auto autocast_probe = [](Fixture& f) {
    f.probe("autocast", [] {
      namespace autocast = torchkit::detail::autocast;
      return fmt::format("cpu {} {} cache {}", autocast::is_enabled(at::kCPU),
                         c10::toString(autocast::dtype(at::kCPU)), autocast::is_cache_enabled());
    });
  };
  const auto sparse_bias = [](Fixture& f) {
    held_scaler(f, true);
    set_grad(f, "4.bias", f.parameter("4.bias").grad().to_sparse());
  };
  const auto int_bias = [](Fixture& f) {
    held_scaler(f, true);
    set_grad(f, "4.bias", torch::ones({5}, torch::kInt));
  };
  const auto stepped = [](Fixture& f) {
    auto& scaler = held_scaler(f, true);
    (void)scaler.step(*f.optimizer);
  };
  return {
      // AutocastScope
      {"amp.hpp:AutocastScope", "dtype float32 on the CPU",
       "AutocastScope: dtype Float is not supported by autocast on cpu",
       [](Fixture&) { torchkit::AutocastScope scope(at::kCPU, at::kFloat); }, autocast_probe},
      {"amp.hpp:AutocastScope", "device meta", "AutocastScope: device type meta has no autocast here",
       [](Fixture&) { torchkit::AutocastScope scope(at::kMeta); }, autocast_probe},
      // GradScaler
      {"amp.hpp:GradScaler::GradScaler", "growth_factor = 1", "GradScaler: growth_factor must be a finite number > 1, got 1",
       [](Fixture&) { torchkit::GradScaler scaler({.growth_factor = 1.0}); }},
      {"amp.hpp:GradScaler::GradScaler", "backoff_factor = 1.5", "GradScaler: backoff_factor must be in (0, 1), got 1.5",
       [](Fixture&) { torchkit::GradScaler scaler({.backoff_factor = 1.5}); }},
      {"amp.hpp:GradScaler::GradScaler", "backoff_factor = nan", "GradScaler: backoff_factor must be in (0, 1), got nan",
       [](Fixture&) { torchkit::GradScaler scaler({.backoff_factor = nan}); }},
      {"amp.hpp:GradScaler::GradScaler", "growth_interval = 0",
       "GradScaler: growth_interval must be in [1, 2147483647] (the growth tracker is int32), got 0",
       [](Fixture&) { torchkit::GradScaler scaler({.growth_interval = 0}); }},
      {"amp.hpp:GradScaler::GradScaler", "growth_interval = 2^31 (beyond the int32 tracker)",
       "GradScaler: growth_interval must be in [1, 2147483647] (the growth tracker is int32), got 2147483648",
       [](Fixture&) { torchkit::GradScaler scaler({.growth_interval = std::int64_t{1} << 31}); }},
      {"amp.hpp:GradScaler::GradScaler", "init_scale = inf",
       "GradScaler: init_scale (the scale) must be a finite number > 0 that float32 holds (from 1e-45 to "
       "3.4028235e+38), got inf",
       [](Fixture&) { torchkit::GradScaler scaler({.init_scale = infinity}); }},
      {"amp.hpp:GradScaler::GradScaler", "init_scale = 1e39 (finite, beyond float32)",
       "GradScaler: init_scale (the scale) must be a finite number > 0 that float32 holds (from 1e-45 to "
       "3.4028235e+38), got 1e+39",
       [](Fixture&) { torchkit::GradScaler scaler({.init_scale = 1e39}); }},
      {"amp.hpp:GradScaler::scale", "an undefined loss", "GradScaler::scale: the loss is an undefined tensor",
       [](Fixture& f) { (void)f.last_held<torchkit::GradScaler>().scale(at::Tensor()); },
       [](Fixture& f) { held_scaler(f, false); }},
      {"amp.hpp:GradScaler::scale", "an int64 loss", "GradScaler::scale: the loss has dtype Long",
       [](Fixture& f) { (void)f.last_held<torchkit::GradScaler>().scale(f.tensors.at("labels")); },
       [](Fixture& f) { held_scaler(f, false); }},
      {"amp.hpp:GradScaler::unscale_", "scale() never called", "GradScaler::unscale_: scale() was never called",
       [](Fixture& f) { f.last_held<torchkit::GradScaler>().unscale_(*f.optimizer); },
       [](Fixture& f) { held_scaler(f, false); }},
      {"amp.hpp:GradScaler::unscale_", "twice in one step",
       "GradScaler::unscale_: unscale_() has already been called on this optimizer since the last update()",
       [](Fixture& f) { f.last_held<torchkit::GradScaler>().unscale_(*f.optimizer); },
       [](Fixture& f) { held_scaler(f, true).unscale_(*f.optimizer); }},
      {"amp.hpp:GradScaler::unscale_", "after step()", "GradScaler::unscale_: unscale_() is being called after step()",
       [](Fixture& f) { f.last_held<torchkit::GradScaler>().unscale_(*f.optimizer); }, stepped},
      {"amp.hpp:GradScaler::unscale_", "an int32 gradient",
       "GradScaler::unscale_: the gradient of parameter 5 of the optimizer has dtype Int",
       [](Fixture& f) { f.last_held<torchkit::GradScaler>().unscale_(*f.optimizer); }, int_bias},
      {"amp.hpp:GradScaler::unscale_", "a sparse gradient",
       "GradScaler::unscale_: the gradient of parameter 5 of the optimizer is sparse",
       [](Fixture& f) { f.last_held<torchkit::GradScaler>().unscale_(*f.optimizer); }, sparse_bias},
      {"amp.hpp:GradScaler::step", "scale() never called", "GradScaler::step: scale() was never called",
       [](Fixture& f) { (void)f.last_held<torchkit::GradScaler>().step(*f.optimizer); },
       [](Fixture& f) { held_scaler(f, false); }},
      {"amp.hpp:GradScaler::step", "twice in one step",
       "GradScaler::step: step() has already been called on this optimizer since the last update()",
       [](Fixture& f) { (void)f.last_held<torchkit::GradScaler>().step(*f.optimizer); }, stepped},
      {"amp.hpp:GradScaler::step", "a sparse gradient", "GradScaler::step: the gradient of parameter 5 of the optimizer is sparse",
       [](Fixture& f) { (void)f.last_held<torchkit::GradScaler>().step(*f.optimizer); }, sparse_bias},
      {"amp.hpp:GradScaler::step", "no parameter has a gradient",
       "GradScaler::step: no parameter of the optimizer has a gradient",
       [](Fixture& f) { (void)f.last_held<torchkit::GradScaler>().step(f.held<torch::optim::SGD>(0)); },
       [](Fixture& f) {
         (void)f.hold<torch::optim::SGD>(std::vector<at::Tensor>{torch::zeros({2}, torch::requires_grad())}, 0.1);
         held_scaler(f, true);
       }},
      {"amp.hpp:GradScaler::update", "scale() never called", "GradScaler::update: scale() was never called",
       [](Fixture& f) { f.last_held<torchkit::GradScaler>().update(); }, [](Fixture& f) { held_scaler(f, false); }},
      {"amp.hpp:GradScaler::update", "new_scale = 0",
       "GradScaler::update: new_scale must be a finite number > 0 that float32 holds (from 1e-45 to 3.4028235e+38), "
       "got 0",
       [](Fixture& f) { f.last_held<torchkit::GradScaler>().update(0.0); }, stepped},
      {"amp.hpp:GradScaler::update", "new_scale = -inf",
       "GradScaler::update: new_scale must be a finite number > 0 that float32 holds (from 1e-45 to 3.4028235e+38), "
       "got -inf",
       [](Fixture& f) { f.last_held<torchkit::GradScaler>().update(-infinity); }, stepped},
      {"amp.hpp:GradScaler::update", "new_scale = 1e-50 (0 in float32)",
       "GradScaler::update: new_scale must be a finite number > 0 that float32 holds (from 1e-45 to 3.4028235e+38), "
       "got 1e-50",
       [](Fixture& f) { f.last_held<torchkit::GradScaler>().update(1e-50); }, stepped},
      {"amp.hpp:GradScaler::update", "no unscale_/step since the last update",
       "GradScaler::update: no inf checks were recorded since the last update()",
       [](Fixture& f) { f.last_held<torchkit::GradScaler>().update(); }, [](Fixture& f) { held_scaler(f, true); }},
      {"amp.hpp:GradScaler::load", "no grad_scaler in the archive", "GradScaler::load: the archive has no 'grad_scaler'",
       [](Fixture& f) { f.held<torchkit::GradScaler>(1).load(f.held<torch::serialize::InputArchive>(0)); },
       [](Fixture& f) {
         (void)held_scaler_archive(f, [](torch::serialize::OutputArchive& out) { out.write("x", c10::IValue(1.0)); });
         held_scaler(f, true);
       }},
      {"amp.hpp:GradScaler::load", "saved by a disabled scaler",
       "GradScaler::load: the archive was saved by a disabled GradScaler",
       [](Fixture& f) { f.held<torchkit::GradScaler>(1).load(f.held<torch::serialize::InputArchive>(0)); },
       [](Fixture& f) {
         (void)held_scaler_archive(f, [](torch::serialize::OutputArchive& out) {
           torchkit::GradScaler({.enabled = false}).save(out);
         });
         held_scaler(f, true);
       }},
      {"amp.hpp:GradScaler::load", "growth_factor 0.5 in the archive",
       "GradScaler::load: growth_factor must be a finite number > 1, got 0.5",
       [](Fixture& f) { f.held<torchkit::GradScaler>(1).load(f.held<torch::serialize::InputArchive>(0)); },
       [](Fixture& f) {
         (void)held_scaler_archive(f, [](torch::serialize::OutputArchive& out) {
           torch::serialize::OutputArchive nested(out.compilation_unit());
           nested.write("enabled", c10::IValue(true));
           nested.write("scale", c10::IValue(8.0));
           nested.write("growth_factor", c10::IValue(0.5));
           nested.write("backoff_factor", c10::IValue(0.5));
           nested.write("growth_interval", c10::IValue(std::int64_t{10}));
           nested.write("_growth_tracker", c10::IValue(std::int64_t{0}));
           out.write("grad_scaler", nested);
         });
         held_scaler(f, true);
       }},
      {"amp.hpp:GradScaler::load", "scale given as an integer",
       "GradScaler::load: 'scale' in the archive should be a float",
       [](Fixture& f) { f.held<torchkit::GradScaler>(1).load(f.held<torch::serialize::InputArchive>(0)); },
       [](Fixture& f) {
         (void)held_scaler_archive(f, [](torch::serialize::OutputArchive& out) {
           torch::serialize::OutputArchive nested(out.compilation_unit());
           nested.write("enabled", c10::IValue(true));
           nested.write("scale", c10::IValue(std::int64_t{8}));
           out.write("grad_scaler", nested);
         });
         held_scaler(f, true);
       }},
      // The scaler-aware clip_grad_norm_
      {"amp.hpp:clip_grad_norm_", "max_norm = 0", "clip_grad_norm_: max_norm must be a positive number, got 0",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(*f.optimizer, 0.0, 2.0, f.last_held<torchkit::GradScaler>()); },
       [](Fixture& f) { held_scaler(f, true); }},
      {"amp.hpp:clip_grad_norm_", "norm_type = nan", "clip_grad_norm_: norm_type must be 0, a positive number or inf, got nan",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(*f.optimizer, 1.0, nan, f.last_held<torchkit::GradScaler>()); },
       [](Fixture& f) { held_scaler(f, true); }},
      {"amp.hpp:clip_grad_norm_", "scale() never called", "clip_grad_norm_: scale() was never called",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(*f.optimizer, 1.0, 2.0, f.last_held<torchkit::GradScaler>()); },
       [](Fixture& f) { held_scaler(f, false); }},
      {"amp.hpp:clip_grad_norm_", "after scaler.step()", "clip_grad_norm_: the scaler already stepped this optimizer",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(*f.optimizer, 1.0, 2.0, f.last_held<torchkit::GradScaler>()); },
       stepped},
      {"amp.hpp:clip_grad_norm_", "a sparse gradient",
       "clip_grad_norm_: the gradient of parameter 5 of the optimizer is sparse",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(*f.optimizer, 1.0, 2.0, f.last_held<torchkit::GradScaler>()); },
       sparse_bias},
      {"amp.hpp:clip_grad_norm_", "an int32 gradient",
       "clip_grad_norm_: the gradient of parameter 5 of the optimizer has dtype Int",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(*f.optimizer, 1.0, 2.0, f.last_held<torchkit::GradScaler>()); },
       int_bias},
      {"amp.hpp:clip_grad_norm_", "a misshapen gradient",
       "clip_grad_norm_: the gradient of parameter 5 has shape [6] but the parameter has shape [5]",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(*f.optimizer, 1.0, 2.0, f.last_held<torchkit::GradScaler>()); },
       [](Fixture& f) {
         held_scaler(f, true);
         set_grad(f, "4.bias", torch::ones({6}));
       }},
      {"amp.hpp:clip_grad_norm_", "error_if_nonfinite, an inf gradient",
       "clip_grad_norm_: the total norm of order 2 of the unscaled gradients is inf (non-finite)",
       [](Fixture& f) {
         (void)torchkit::clip_grad_norm_(*f.optimizer, 1.0, 2.0, f.last_held<torchkit::GradScaler>(),
                                         {.error_if_nonfinite = true});
       },
       [](Fixture& f) {
         held_scaler(f, true);
         infinite_grad(f);
       }},
  };
}

Rows clip_rows() {
  const auto nan_in_last_weight = [](Fixture& f) {
    at::Tensor grad = f.parameter("4.weight").grad().clone();
    grad[1][2] = nan;
    set_grad(f, "4.weight", grad);
  };
  return {
      // clip_grad_norm_
      {"clip.hpp:clip_grad_norm_", "max_norm = -1", "clip_grad_norm_: max_norm must be a positive number, got -1",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, -1.0); }},
      {"clip.hpp:clip_grad_norm_", "max_norm = 0", "clip_grad_norm_: max_norm must be a positive number, got 0",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 0.0); }},
      {"clip.hpp:clip_grad_norm_", "max_norm = nan", "clip_grad_norm_: max_norm must be a positive number, got nan",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model->parameters(), nan); }},
      {"clip.hpp:clip_grad_norm_", "norm_type = -1",
       "clip_grad_norm_: norm_type must be 0, a positive number or inf, got -1",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1.0, -1.0); }},
      {"clip.hpp:clip_grad_norm_", "norm_type = nan",
       "clip_grad_norm_: norm_type must be 0, a positive number or inf, got nan",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1.0, nan); }},
      {"clip.hpp:clip_grad_norm_", "a sparse gradient (the last one)",
       "clip_grad_norm_: the gradient of parameter 5 ('4.bias') is sparse",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1e-3); },
       [](Fixture& f) { set_grad(f, "4.bias", f.parameter("4.bias").grad().to_sparse()); }},
      {"clip.hpp:clip_grad_norm_", "a gradient of shape [3] for a parameter [4]",
       "clip_grad_norm_: the gradient of parameter 3 ('1.bias') has shape [3] but the parameter has shape [4]",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1e-3); },
       [](Fixture& f) { set_grad(f, "1.bias", torch::ones({3})); }},
      {"clip.hpp:clip_grad_norm_", "an undefined parameter (after the model's)",
       "clip_grad_norm_: parameter 6 is an undefined tensor",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(parameters_and(f, at::Tensor()), 1e-3); }},
      {"clip.hpp:clip_grad_norm_", "an int64 gradient",
       "clip_grad_norm_: the gradient of parameter 5 ('4.bias') has dtype Long",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1e-3); },
       [](Fixture& f) { set_grad(f, "4.bias", torch::ones({5}, torch::kLong)); }},
      {"clip.hpp:clip_grad_norm_", "an inference-tensor gradient",
       "clip_grad_norm_: the gradient of parameter 5 ('4.bias') is an inference tensor",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1e-3); }, inference_grad},
      {"clip.hpp:clip_grad_norm_", "error_if_nonfinite, an inf gradient (fast path)",
       "clip_grad_norm_: the total norm of order 2 of the gradients is inf (non-finite), so they cannot be clipped; "
       "the first non-finite gradient is that of parameter 4 ('4.weight')",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1e-3, 2.0, {.error_if_nonfinite = true}); },
       infinite_grad},
      {"clip.hpp:clip_grad_norm_", "error_if_nonfinite, an inf gradient (reference path)",
       "the first non-finite gradient is that of parameter 4 ('4.weight')",
       [](Fixture& f) {
         (void)torchkit::clip_grad_norm_(f.model, 1e-3, 1.0, {.error_if_nonfinite = true, .foreach = false});
       },
       infinite_grad},
      // grad_norm
      {"clip.hpp:grad_norm", "norm_type = -0.5", "grad_norm: norm_type must be 0, a positive number or inf, got -0.5",
       [](Fixture& f) { (void)torchkit::grad_norm(f.model, -0.5); }},
      {"clip.hpp:grad_norm", "norm_type = nan", "grad_norm: norm_type must be 0, a positive number or inf, got nan",
       [](Fixture& f) { (void)torchkit::grad_norm(f.model->parameters(), nan); }},
      {"clip.hpp:grad_norm", "a sparse gradient", "grad_norm: the gradient of parameter 0 ('0.weight') is sparse",
       [](Fixture& f) { (void)torchkit::grad_norm(f.model); },
       [](Fixture& f) { set_grad(f, "0.weight", f.parameter("0.weight").grad().to_sparse()); }},
      {"clip.hpp:grad_norm", "a misshapen gradient",
       "grad_norm: the gradient of parameter 5 ('4.bias') has shape [5, 1] but the parameter has shape [5]",
       [](Fixture& f) { (void)torchkit::grad_norm(f.model); },
       [](Fixture& f) { set_grad(f, "4.bias", torch::ones({5, 1})); }},
      // clip_grad_value_
      {"clip.hpp:clip_grad_value_", "clip_value = -0.1", "clip_grad_value_: clip_value must be >= 0, got -0.1",
       [](Fixture& f) { torchkit::clip_grad_value_(f.model, -0.1); }},
      {"clip.hpp:clip_grad_value_", "clip_value = nan", "clip_grad_value_: clip_value must be >= 0, got nan",
       [](Fixture& f) { torchkit::clip_grad_value_(f.model->parameters(), nan); }},
      {"clip.hpp:clip_grad_value_", "a sparse gradient (the last one)",
       "clip_grad_value_: the gradient of parameter 5 ('4.bias') is sparse",
       [](Fixture& f) { torchkit::clip_grad_value_(f.model, 1e-6); },
       [](Fixture& f) { set_grad(f, "4.bias", f.parameter("4.bias").grad().to_sparse()); }},
      {"clip.hpp:clip_grad_value_", "a misshapen gradient (the last one)",
       "clip_grad_value_: the gradient of parameter 5 ('4.bias') has shape [6] but the parameter has shape [5]",
       [](Fixture& f) { torchkit::clip_grad_value_(f.model, 1e-6); },
       [](Fixture& f) { set_grad(f, "4.bias", torch::ones({6})); }},
      {"clip.hpp:clip_grad_value_", "an inference-tensor gradient",
       "clip_grad_value_: the gradient of parameter 5 ('4.bias') is an inference tensor",
       [](Fixture& f) { torchkit::clip_grad_value_(f.model, 1e-6); }, inference_grad},
      // ClipGrad
      {"clip.hpp:ClipGrad::ClipGrad", "max_norm = 0", "ClipGrad: max_norm must be a positive number, got 0",
       [](Fixture&) { torchkit::ClipGrad clip(0.0); }},
      {"clip.hpp:ClipGrad::ClipGrad", "max_norm = nan", "ClipGrad: max_norm must be a positive number, got nan",
       [](Fixture&) { torchkit::ClipGrad clip(nan); }},
      {"clip.hpp:ClipGrad::ClipGrad", "norm_type = -3",
       "ClipGrad: norm_type must be 0, a positive number or inf, got -3",
       [](Fixture&) { torchkit::ClipGrad clip(1.0, -3.0); }},
      {"clip.hpp:ClipGrad::ClipGrad", "norm_type = -inf",
       "ClipGrad: norm_type must be 0, a positive number or inf, got -inf",
       [](Fixture&) { torchkit::ClipGrad clip(1.0, -infinity); }},
      {"clip.hpp:ClipGrad::operator()", "error_if_nonfinite, an inf gradient",
       "clip_grad_norm_: the total norm of order 2 of the gradients is inf (non-finite)",
       [](Fixture& f) {
         (void)f.last_held<torchkit::ClipGrad>()(f.model);
       },
       [](Fixture& f) {
         infinite_grad(f);
         auto clip = f.hold<torchkit::ClipGrad>(1.0, 2.0, torchkit::ClipOptions{.error_if_nonfinite = true});
         f.probe("ClipGrad", [clip] { return clip->to_string(); });
       }},
      {"clip.hpp:clip_grad_norm_", "error_if_nonfinite, a nan gradient, inf-norm (fast path)",
       "clip_grad_norm_: the total norm of order inf of the gradients is nan (non-finite)",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1e-3, infinity, {.error_if_nonfinite = true}); },
       nan_in_last_weight},
      {"clip.hpp:clip_grad_norm_", "error_if_nonfinite, a nan gradient, inf-norm (reference path)",
       "clip_grad_norm_: the total norm of order inf of the gradients is nan (non-finite)",
       [](Fixture& f) {
         (void)torchkit::clip_grad_norm_(f.model, 1e-3, infinity, {.error_if_nonfinite = true, .foreach = false});
       },
       nan_in_last_weight},
      {"clip.hpp:clip_grad_norm_", "error_if_nonfinite, a nan in a bfloat16 gradient, p = 3",
       "clip_grad_norm_: the total norm of order 3 of the gradients is nan (non-finite)",
       [](Fixture& f) {
         const std::vector<at::Tensor> params{f.tensors.at("p")};
         (void)torchkit::clip_grad_norm_(params, 1e-3, 3.0, {.error_if_nonfinite = true});
       },
       [](Fixture& f) {
         at::Tensor p = torch::zeros({7}, torch::TensorOptions().dtype(at::kBFloat16).requires_grad(true));
         p.mutable_grad() = torch::tensor({1.0, 2.0, nan, 4.0, 5.0, 6.0, 7.0}).to(at::kBFloat16);
         f.tensors["p"] = p;
       }},
      {"clip.hpp:clip_grad_norm_", "error_if_nonfinite, inf in a transposed gradient",
       "the first non-finite gradient is that of parameter 4 ('4.weight')",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1e-3, 2.0, {.error_if_nonfinite = true}); },
       [](Fixture& f) {
         at::Tensor grad = f.parameter("4.weight").grad().t().contiguous().t();
         grad[3][100] = infinity;
         set_grad(f, "4.weight", grad);
       }},
      {"clip.hpp:grad_norm", "error_if_nonfinite, an inf gradient",
       "grad_norm: the total norm of order 2 of the gradients is inf",
       [](Fixture& f) { (void)torchkit::grad_norm(f.model, 2.0, {.error_if_nonfinite = true}); }, infinite_grad},
  };
}

Rows devices_rows() {
  const auto cuda_started = [](Fixture& f) {
    using torchkit::detail::CudaDriverState;
    auto& probe = torchkit::detail::cuda_driver_probe();
    const auto previous = probe;
    probe = []() noexcept { return CudaDriverState::initialised; };
    f.cleanups.push_back([previous] { torchkit::detail::cuda_driver_probe() = previous; });
    set_environment("CUDA_VISIBLE_DEVICES", "0,1");
    set_environment("LOCAL_RANK", "1");
  };
  return {
      // parse_device_list
      {"devices.hpp:parse_device_list", "\"0,,1\"",
       "parse_device_list: malformed device spec \"0,,1\": entry 1 is empty",
       [](Fixture&) { (void)torchkit::parse_device_list("0,,1"); }},
      {"devices.hpp:parse_device_list", "\"a\"",
       "parse_device_list: malformed device spec \"a\": entry 0 (\"a\") is not a device index",
       [](Fixture&) { (void)torchkit::parse_device_list("a"); }},
      {"devices.hpp:parse_device_list", "\"-1\"", "entry 0 (\"-1\") is negative",
       [](Fixture&) { (void)torchkit::parse_device_list("-1"); }},
      {"devices.hpp:parse_device_list", "\"1,1\"",
       "malformed device spec \"1,1\": device 1 is listed twice (entries 0 and 1)",
       [](Fixture&) { (void)torchkit::parse_device_list("1,1"); }},
      {"devices.hpp:parse_device_list", "\"0, 1\"", "entry 1 (\" 1\") contains white space",
       [](Fixture&) { (void)torchkit::parse_device_list("0, 1"); }},
      {"devices.hpp:parse_device_list", "\"01\"", "entry 0 (\"01\") has a leading zero",
       [](Fixture&) { (void)torchkit::parse_device_list("01"); }},
      {"devices.hpp:parse_device_list", "\"99999999999\"", "entry 0 (\"99999999999\") is too large for a device index",
       [](Fixture&) { (void)torchkit::parse_device_list("99999999999"); }},
      {"devices.hpp:parse_device_list", "a UUID",
       "parse_device_list: entry 1 of \"0,GPU-8f3e\" (\"GPU-8f3e\") is a UUID",
       [](Fixture&) { (void)torchkit::parse_device_list("0,GPU-8f3e"); }},
      {"devices.hpp:parse_device_list", "a malformed UUID", "entry 0 (\"GPU-x!\") is not a valid GPU-<uuid>",
       [](Fixture&) { (void)torchkit::parse_device_list("GPU-x!"); }},
      // VisibleDevices
      {"devices.hpp:VisibleDevices", "\"0,,1\" (CUDA_VISIBLE_DEVICES set)",
       "VisibleDevices: malformed device spec \"0,,1\": entry 1 is empty",
       [](Fixture&) { torchkit::VisibleDevices devices("0,,1"); },
       [](Fixture&) { set_environment("CUDA_VISIBLE_DEVICES", "3,5"); }},
      {"devices.hpp:VisibleDevices", "\"a\" (CUDA_VISIBLE_DEVICES unset)",
       "VisibleDevices: malformed device spec \"a\": entry 0 (\"a\") is not a device index",
       [](Fixture&) { torchkit::VisibleDevices devices("a"); },
       [](Fixture&) { set_environment("CUDA_VISIBLE_DEVICES", std::nullopt); }},
      {"devices.hpp:VisibleDevices", "\"-1\"",
       "VisibleDevices: malformed device spec \"-1\": entry 0 (\"-1\") is negative",
       [](Fixture&) { torchkit::VisibleDevices devices("-1"); }},
      {"devices.hpp:VisibleDevices", "\"1,1\"",
       "VisibleDevices: malformed device spec \"1,1\": device 1 is listed twice",
       [](Fixture&) { torchkit::VisibleDevices devices("1,1"); }},
      {"devices.hpp:VisibleDevices", "\"1 \"",
       "VisibleDevices: malformed device spec \"1 \": entry 0 (\"1 \") contains white space",
       [](Fixture&) { torchkit::VisibleDevices devices("1 "); }},
      {"devices.hpp:VisibleDevices", "ids {-1}", "VisibleDevices: device index -1 at position 0 is negative",
       [](Fixture&) { torchkit::VisibleDevices devices({-1}); }},
      {"devices.hpp:VisibleDevices", "ids {2, 0, 2}", "VisibleDevices: device 2 is listed twice (positions 0 and 2)",
       [](Fixture&) { torchkit::VisibleDevices devices({2, 0, 2}); },
       [](Fixture&) { set_environment("CUDA_VISIBLE_DEVICES", "0"); }},
      {"devices.hpp:VisibleDevices", "\"1\" after CUDA started",
       "VisibleDevices(\"1\"): CUDA is already initialised in this process",
       [](Fixture&) { torchkit::VisibleDevices devices("1"); }, cuda_started},
      {"devices.hpp:VisibleDevices", "ids {1} after CUDA started",
       "VisibleDevices(\"1\"): CUDA is already initialised in this process",
       [](Fixture&) { torchkit::VisibleDevices devices({1}); }, cuda_started},
      // VisibleDevices::for_local_rank
      {"devices.hpp:VisibleDevices::for_local_rank", "LOCAL_RANK unset",
       "VisibleDevices::for_local_rank: LOCAL_RANK is not set",
       [](Fixture&) { (void)torchkit::VisibleDevices::for_local_rank(); },
       [](Fixture&) { set_environment("LOCAL_RANK", std::nullopt); set_environment("CUDA_VISIBLE_DEVICES", "3,5"); }},
      {"devices.hpp:VisibleDevices::for_local_rank", "LOCAL_RANK=\"one\"",
       "VisibleDevices::for_local_rank: LOCAL_RANK=\"one\" is not a non-negative integer",
       [](Fixture&) { (void)torchkit::VisibleDevices::for_local_rank(); },
       [](Fixture&) { set_environment("LOCAL_RANK", "one"); set_environment("CUDA_VISIBLE_DEVICES", std::nullopt); }},
      {"devices.hpp:VisibleDevices::for_local_rank", "LOCAL_RANK=\"-1\"",
       "VisibleDevices::for_local_rank: LOCAL_RANK=\"-1\" is not a non-negative integer",
       [](Fixture&) { (void)torchkit::VisibleDevices::for_local_rank(); },
       [](Fixture&) { set_environment("LOCAL_RANK", "-1"); }},
      {"devices.hpp:VisibleDevices::for_local_rank", "LOCAL_RANK=2 with CUDA_VISIBLE_DEVICES=\"3,5\"",
       "VisibleDevices::for_local_rank: LOCAL_RANK=2 is beyond the 2 device(s) of CUDA_VISIBLE_DEVICES=\"3,5\"",
       [](Fixture&) { (void)torchkit::VisibleDevices::for_local_rank(); },
       [](Fixture&) { set_environment("LOCAL_RANK", "2"); set_environment("CUDA_VISIBLE_DEVICES", "3,5"); }},
      {"devices.hpp:VisibleDevices::for_local_rank", "CUDA_VISIBLE_DEVICES=\"0,,1\"",
       "VisibleDevices::for_local_rank (the current CUDA_VISIBLE_DEVICES): malformed device spec \"0,,1\"",
       [](Fixture&) { (void)torchkit::VisibleDevices::for_local_rank(); },
       [](Fixture&) { set_environment("LOCAL_RANK", "0"); set_environment("CUDA_VISIBLE_DEVICES", "0,,1"); }},
      {"devices.hpp:VisibleDevices::for_local_rank", "devices {4, 5}, LOCAL_RANK=3",
       "VisibleDevices::for_local_rank: LOCAL_RANK=3 is beyond the device list of 2 entries",
       [](Fixture&) { (void)torchkit::VisibleDevices::for_local_rank({4, 5}); },
       [](Fixture&) { set_environment("LOCAL_RANK", "3"); }},
      {"devices.hpp:VisibleDevices::for_local_rank", "devices {4, 4}",
       "VisibleDevices::for_local_rank: device 4 is listed twice (positions 0 and 1)",
       [](Fixture&) { (void)torchkit::VisibleDevices::for_local_rank({4, 4}); },
       [](Fixture&) { set_environment("LOCAL_RANK", "0"); }},
      {"devices.hpp:VisibleDevices::for_local_rank", "LOCAL_RANK=1 after CUDA started",
       "VisibleDevices(\"1\"): CUDA is already initialised in this process",
       [](Fixture&) { (void)torchkit::VisibleDevices::for_local_rank(); }, cuda_started},
      {"devices.hpp:VisibleDevices::for_local_rank", "devices {}",
       "LOCAL_RANK=0 is beyond the device list of 0 entries (valid local ranks: none)",
       [](Fixture&) { (void)torchkit::VisibleDevices::for_local_rank(std::span<const int>()); },
       [](Fixture&) { set_environment("LOCAL_RANK", "0"); }},
  };
}

torchkit::TorchrunEnvironment environment_from(std::map<std::string, std::string> variables) {
  return torchkit::torchrun_environment([&](std::string_view name) -> std::optional<std::string> {
    const auto found = variables.find(std::string(name));
    if (found == variables.end()) return std::nullopt;
    return found->second;
  });
}

std::map<std::string, std::string> torchrun_with(const std::string& name, std::optional<std::string> value) {
  std::map<std::string, std::string> variables{
      {"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "host"}, {"MASTER_PORT", "29500"}};
  if (value) {
    variables[name] = *value;
  } else {
    variables.erase(name);
  }
  return variables;
}

#if TORCHKIT_HAS_C10D
/// A one-rank CollectiveGroup that counts its allreduce calls.
struct SoloGroup {
  struct Work {
    bool wait() { return true; }
  };
  std::unique_ptr<Work> allreduce(std::vector<at::Tensor>& /*tensors*/, const c10d::AllreduceOptions& /*options*/) {
    ++calls;
    return std::make_unique<Work>();
  }
  [[nodiscard]] int getRank() const { return 0; }
  [[nodiscard]] int getSize() const { return 1; }
  int calls = 0;
};
static_assert(torchkit::CollectiveGroup<SoloGroup>);

/// The fixture's SoloGroup (made by solo_group_setup); its allreduce count is probed.
SoloGroup& solo_group(Fixture& f) { return f.held<SoloGroup>(0); }
void solo_group_setup(Fixture& f) {
  auto group = f.hold<SoloGroup>();
  f.probe("allreduce calls", [group] { return std::to_string(group->calls); });
}
#endif

Rows distributed_rows() {
  Rows rows{
      {"distributed.hpp:torchrun_environment", "RANK missing", "torchrun_environment: RANK is not set",
       [](Fixture&) { (void)environment_from(torchrun_with("RANK", std::nullopt)); }},
      {"distributed.hpp:torchrun_environment", "WORLD_SIZE missing", "torchrun_environment: WORLD_SIZE is not set",
       [](Fixture&) { (void)environment_from(torchrun_with("WORLD_SIZE", std::nullopt)); }},
      {"distributed.hpp:torchrun_environment", "MASTER_ADDR missing", "torchrun_environment: MASTER_ADDR is not set",
       [](Fixture&) { (void)environment_from(torchrun_with("MASTER_ADDR", std::nullopt)); }},
      {"distributed.hpp:torchrun_environment", "MASTER_ADDR empty", "torchrun_environment: MASTER_ADDR is empty",
       [](Fixture&) { (void)environment_from(torchrun_with("MASTER_ADDR", "")); }},
      {"distributed.hpp:torchrun_environment", "MASTER_PORT missing", "torchrun_environment: MASTER_PORT is not set",
       [](Fixture&) { (void)environment_from(torchrun_with("MASTER_PORT", std::nullopt)); }},
      {"distributed.hpp:torchrun_environment", "MASTER_PORT=70000",
       "torchrun_environment: MASTER_PORT='70000' is not an integer in [1, 65535]",
       [](Fixture&) { (void)environment_from(torchrun_with("MASTER_PORT", "70000")); }},
      {"distributed.hpp:torchrun_environment", "RANK=abc", "torchrun_environment: RANK='abc' is not an integer in [0, ",
       [](Fixture&) { (void)environment_from(torchrun_with("RANK", "abc")); }},
      {"distributed.hpp:torchrun_environment", "RANK=1x", "torchrun_environment: RANK='1x' is not an integer",
       [](Fixture&) { (void)environment_from(torchrun_with("RANK", "1x")); }},
      {"distributed.hpp:torchrun_environment", "RANK=2 of WORLD_SIZE=2",
       "torchrun_environment: RANK=2 is not below WORLD_SIZE=2",
       [](Fixture&) { (void)environment_from(torchrun_with("RANK", "2")); }},
      {"distributed.hpp:torchrun_environment", "WORLD_SIZE=0",
       "torchrun_environment: WORLD_SIZE='0' is not an integer in [1, ",
       [](Fixture&) { (void)environment_from(torchrun_with("WORLD_SIZE", "0")); }},
      {"distributed.hpp:torchrun_environment", "LOCAL_RANK=5 of LOCAL_WORLD_SIZE=2",
       "torchrun_environment: LOCAL_RANK=5 is not below LOCAL_WORLD_SIZE=2",
       [](Fixture&) {
         auto variables = torchrun_with("LOCAL_RANK", "5");
         variables["LOCAL_WORLD_SIZE"] = "2";
         (void)environment_from(variables);
       }},
      {"distributed.hpp:torchrun_environment", "process environment: RANK=5, WORLD_SIZE=2",
       "torchrun_environment: RANK=5 is not below WORLD_SIZE=2",
       [](Fixture&) { (void)torchkit::torchrun_environment(); },
       [](Fixture&) {
         set_environment("WORLD_SIZE", "2");
         set_environment("RANK", "5");
         set_environment("MASTER_ADDR", "127.0.0.1");
         set_environment("MASTER_PORT", "29500");
       }},
      {"distributed.hpp:torchrun_environment", "WORLD_SIZE=2147483648",
       "WORLD_SIZE='2147483648' is not an integer in [1, 2147483647]",
       [](Fixture&) { (void)environment_from(torchrun_with("WORLD_SIZE", "2147483648")); }},
  };
#if TORCHKIT_HAS_C10D
  append(rows, {
      {"distributed.hpp:clip_grad_norm_", "max_norm = 0", "clip_grad_norm_: max_norm must be a positive number, got 0",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 0.0, 2.0, solo_group(f)); }, solo_group_setup},
      {"distributed.hpp:clip_grad_norm_", "norm_type = -2",
       "clip_grad_norm_: norm_type must be 0, a positive number or inf, got -2",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1.0, -2.0, solo_group(f)); }, solo_group_setup},
      {"distributed.hpp:clip_grad_norm_", "a misshapen gradient",
       "clip_grad_norm_: the gradient of parameter 5 ('4.bias') has shape [3] but the parameter has shape [5]",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1e-3, 2.0, solo_group(f)); },
       [](Fixture& f) {
         solo_group_setup(f);
         set_grad(f, "4.bias", torch::ones({3}));
       }},
      {"distributed.hpp:clip_grad_norm_", "a sparse gradient",
       "clip_grad_norm_: the gradient of parameter 5 ('4.bias') is sparse",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1e-3, 2.0, solo_group(f)); },
       [](Fixture& f) {
         solo_group_setup(f);
         set_grad(f, "4.bias", f.parameter("4.bias").grad().to_sparse());
       }},
      {"distributed.hpp:clip_grad_norm_", "error_if_nonfinite, an inf gradient on this rank",
       "clip_grad_norm_ (rank 0 of 1, global norm): the total norm of order 2 of the gradients is inf (non-finite)",
       [](Fixture& f) {
         SoloGroup group;
         (void)torchkit::clip_grad_norm_(f.model, 1e-3, 2.0, group, {.error_if_nonfinite = true});
       },
       infinite_grad},
      {"distributed.hpp:clip_grad_norm_", "a null process group", "clip_grad_norm_: the process group is null",
       [](Fixture& f) {
         const c10::intrusive_ptr<c10d::ProcessGroup> null_group;
         (void)torchkit::clip_grad_norm_(f.model, 1.0, 2.0, null_group);
       }},
      {"distributed.hpp:grad_norm", "norm_type = nan",
       "grad_norm: norm_type must be 0, a positive number or inf, got nan",
       [](Fixture& f) { (void)torchkit::grad_norm(f.model, nan, solo_group(f)); }, solo_group_setup},
  });
#endif
#if TORCHKIT_WITH_GLOO
  append(rows, {
      {"distributed.hpp:make_gloo_group", "a null store", "make_gloo_group: the store is null",
       [](Fixture&) { (void)torchkit::make_gloo_group({}, 0, 1); }},
      {"distributed.hpp:make_gloo_group", "world_size = 0", "make_gloo_group: world_size must be >= 1, got 0",
       [](Fixture&) { (void)torchkit::make_gloo_group(c10::make_intrusive<c10d::HashStore>(), 0, 0); }},
      {"distributed.hpp:make_gloo_group", "rank 2 of 2", "make_gloo_group: rank 2 is outside [0, 2)",
       [](Fixture&) { (void)torchkit::make_gloo_group(c10::make_intrusive<c10d::HashStore>(), 2, 2); }},
      {"distributed.hpp:make_gloo_group", "rank -1", "make_gloo_group: rank -1 is outside [0, 1)",
       [](Fixture&) { (void)torchkit::make_gloo_group(c10::make_intrusive<c10d::HashStore>(), -1, 1); }},
      {"distributed.hpp:gloo_group_from_environment", "RANK unset in the environment",
       "torchrun_environment: RANK is not set",
       [](Fixture&) { (void)torchkit::gloo_group_from_environment(std::chrono::seconds(5)); },
       [](Fixture&) {
         set_environment("WORLD_SIZE", "1");
         set_environment("RANK", std::nullopt);
       }},
      {"distributed.hpp:store_from_environment", "rank 1 of 2 finds no rank 0 within 1 s",
       "store_from_environment: rank 1 of 2 could not meet the other ranks at 127.0.0.1:",
       [](Fixture&) {
         const std::string port = std::to_string(20000 + static_cast<int>((::getpid() + 7) % 20000));
         (void)torchkit::store_from_environment(
             environment_from({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", port}}),
             std::chrono::seconds(1));
       }},
      {"distributed.hpp:make_gloo_group", "rank 1 of 2 never joins",
       "make_gloo_group: rank 0 of 2 could not connect to the other ranks within 1000 ms",
       [](Fixture&) {
         (void)torchkit::make_gloo_group(c10::make_intrusive<c10d::HashStore>(), 0, 2, std::chrono::seconds(1));
       }},
  });
#endif
  append(rows, {
      {"distributed.hpp:DistributedSampler", "rank 2 of num_replicas 2",
       "DistributedSampler: rank 2 is outside [0, 2) (num_replicas = 2)",
       [](Fixture&) { (void)torchkit::dist::DistributedSampler(10, 2, 2); }},
      {"distributed.hpp:DistributedSampler", "rank -1", "DistributedSampler: rank -1 is outside [0, 4)",
       [](Fixture&) { (void)torchkit::dist::DistributedSampler(10, 4, -1); }},
      {"distributed.hpp:DistributedSampler", "num_replicas 0", "DistributedSampler: num_replicas must be >= 1, got 0",
       [](Fixture&) { (void)torchkit::dist::DistributedSampler(10, 0, 0); }},
      {"distributed.hpp:DistributedSampler", "size -5", "DistributedSampler: the data set size must be >= 0, got -5",
       [](Fixture&) { (void)torchkit::dist::DistributedSampler(-5, 1, 0); }},
  });
#if TORCHKIT_WITH_GLOO
  const auto solo_gloo = [] { return torchkit::make_gloo_group(c10::make_intrusive<c10d::HashStore>(), 0, 1); };
  append(rows, {
      {"distributed.hpp:GradientReducer", "bucket_bytes = 0", "GradientReducer: bucket_bytes must be > 0, got 0",
       [solo_gloo](Fixture& f) { torchkit::dist::GradientReducer reducer(f.model, solo_gloo(), {.bucket_bytes = 0}); }},
      {"distributed.hpp:GradientReducer", "bucket_bytes = -1", "GradientReducer: bucket_bytes must be > 0, got -1",
       [solo_gloo](Fixture& f) {
         torchkit::dist::GradientReducer reducer(f.model, solo_gloo(), {.bucket_bytes = -1});
       }},
      {"distributed.hpp:GradientReducer", "accumulation_steps = 0",
       "GradientReducer: accumulation_steps must be >= 1, got 0",
       [solo_gloo](Fixture& f) {
         torchkit::dist::GradientReducer reducer(f.model, solo_gloo(), {.accumulation_steps = 0});
       }},
      {"distributed.hpp:GradientReducer", "a null group", "GradientReducer: the process group is null",
       [](Fixture& f) {
         const c10::intrusive_ptr<c10d::ProcessGroupGloo> none;
         torchkit::dist::GradientReducer reducer(f.model, none);
       }},
      {"distributed.hpp:GradientReducer::reduce", "a sparse gradient",
       "GradientReducer::reduce: the gradient of '4.bias' is sparse",
       [solo_gloo](Fixture& f) {
         torchkit::dist::GradientReducer reducer(f.model, solo_gloo());
         (void)reducer.reduce();
       },
       [](Fixture& f) { set_grad(f, "4.bias", f.parameter("4.bias").grad().to_sparse()); }},
      {"distributed.hpp:GradientReducer::reduce", "a misshapen gradient",
       "GradientReducer::reduce: the gradient of '4.bias' is Float [3] on cpu, its parameter Float [5] on cpu",
       [solo_gloo](Fixture& f) {
         torchkit::dist::GradientReducer reducer(f.model, solo_gloo());
         (void)reducer.reduce();
       },
       [](Fixture& f) { set_grad(f, "4.bias", torch::ones({3})); }},
      {"distributed.hpp:GradientReducer::reduce", "a parameter without a gradient",
       "GradientReducer::reduce: parameter '4.bias' has no gradient on 1 of 1 ranks (this rank, 0: has none)",
       [solo_gloo](Fixture& f) {
         torchkit::dist::GradientReducer reducer(f.model, solo_gloo());
         (void)reducer.reduce();
       },
       [](Fixture& f) { set_grad(f, "4.bias", at::Tensor()); }},
      {"distributed.hpp:allreduce_gradients", "accumulation_steps = 2",
       "allreduce_gradients: accumulation_steps must be 1 in the one-shot form, got 2",
       [solo_gloo](Fixture& f) {
         auto group = solo_gloo();
         torchkit::dist::allreduce_gradients(f.model, *group, {.accumulation_steps = 2});
       }},
      {"distributed.hpp:allreduce_gradients", "bucket_bytes = 0", "GradientReducer: bucket_bytes must be > 0, got 0",
       [solo_gloo](Fixture& f) {
         auto group = solo_gloo();
         torchkit::dist::allreduce_gradients(f.model, *group, {.bucket_bytes = 0});
       }},
      {"distributed.hpp:broadcast_parameters", "root 1 of a group of 1",
       "broadcast_parameters: root 1 is outside [0, 1)",
       [solo_gloo](Fixture& f) { torchkit::dist::broadcast_parameters(f.model, solo_gloo(), 1); }},
      {"distributed.hpp:broadcast_parameters", "a null group", "broadcast_parameters: the process group is null",
       [](Fixture& f) {
         const c10::intrusive_ptr<c10d::ProcessGroupGloo> none;
         torchkit::dist::broadcast_parameters(f.model, none);
       }},
      {"distributed.hpp:broadcast_parameters", "rank 1 (the root) holds another model",
       "broadcast_parameters: the model on rank 0 differs from rank 1's: entry 0 is '0.weight parameter Float "
       "[4, 3, 3, 3]' here but '0.weight parameter Float [2, 2]' on rank 1; no parameter was changed",
       [](Fixture& f) {
         auto store = c10::make_intrusive<c10d::HashStore>();
         std::thread root([&] {
           try {
             torchkit::dist::broadcast_parameters(f.held<torch::nn::Sequential>(0),
                                                  torchkit::make_gloo_group(store, 1, 2, std::chrono::seconds(30)), 1);
           } catch (const torchkit::Error&) {  // the root throws too
           }
         });
         struct Join {
           std::thread& thread;
           ~Join() { thread.join(); }
         } join{root};
         torchkit::dist::broadcast_parameters(f.model, torchkit::make_gloo_group(store, 0, 2, std::chrono::seconds(30)),
                                              1);
       },
       [](Fixture& f) { (void)f.hold<torch::nn::Sequential>(torch::nn::Linear(2, 2)); }},
  });
#endif
  return rows;
}

/// Registers an int64 parameter "steps" (frozen) in the fixture's model.
void integer_parameter(Fixture& f) {
  f.model->register_parameter("steps", torch::arange(3, torch::kLong), /*requires_grad=*/false);
}

/// Registers a parameter "derived" that is not a leaf (computed from another tensor; a non-leaf
/// always requires grad, so only freezing it can fail).
void non_leaf_parameter(Fixture& f) {
  const at::Tensor leaf = torch::ones({2}, torch::requires_grad());
  f.model->register_parameter("derived", leaf * 2, /*requires_grad=*/true);
}

Rows freeze_rows() {
  return {
      {"freeze.hpp:freeze", "no patterns", "freeze: no patterns given",
       [](Fixture& f) { (void)torchkit::freeze(f.model, std::vector<std::string>{}); }},
      {"freeze.hpp:freeze", "an empty pattern (the second)", "freeze: pattern 2 of 2 is empty",
       [](Fixture& f) { (void)torchkit::freeze(f.model, {"0", ""}); }},
      {"freeze.hpp:freeze", "a typo \"4.wieght\"",
       "freeze: pattern \"4.wieght\" (pattern 2 of 2) matches no parameter of the model (6 parameters); the closest "
       "names are \"4.weight\"",
       [](Fixture& f) { (void)torchkit::freeze(f.model, std::vector<std::string>{"0", "4.wieght"}); }},
      {"freeze.hpp:freeze", "a glob matching nothing",
       "freeze: pattern \"*.gamma\" (pattern 1 of 1) matches no parameter",
       [](Fixture& f) { (void)torchkit::freeze(f.model, {"*.gamma"}); }},
      {"freeze.hpp:freeze", "a regex matching nothing",
       "freeze: pattern regex(\"conv.*\") (pattern 1 of 1) matches no parameter",
       [](Fixture& f) { (void)torchkit::freeze(f.model, {torchkit::regex("conv.*")}); }},
      {"freeze.hpp:freeze", "a range with a pattern matching nothing",
       "freeze: pattern \"5\" (pattern 2 of 2) matches no parameter",
       [](Fixture& f) { (void)torchkit::freeze(f.model, std::set<std::string>{"0", "5"}); }},
      {"freeze.hpp:unfreeze", "a pattern matching nothing",
       "unfreeze: pattern \"9\" (pattern 1 of 1) matches no parameter",
       [](Fixture& f) { (void)torchkit::unfreeze(f.model, {"9"}); }},
      {"freeze.hpp:unfreeze", "\"*\" selecting an int64 parameter",
       "unfreeze: parameter \"steps\" has dtype Long, which cannot require gradients",
       [](Fixture& f) { (void)torchkit::unfreeze(f.model, {"*"}); }, integer_parameter},
      {"freeze.hpp:freeze", "a non-leaf parameter", "freeze: parameter \"derived\" is not a leaf tensor",
       [](Fixture& f) { (void)torchkit::freeze(f.model, {"0.weight", "derived"}); }, non_leaf_parameter},
      {"freeze.hpp:freeze_all_except", "no patterns", "freeze_all_except: no patterns given",
       [](Fixture& f) { (void)torchkit::freeze_all_except(f.model, std::vector<std::string>{}); }},
      {"freeze.hpp:freeze_all_except", "a pattern matching nothing",
       "freeze_all_except: pattern \"head\" (pattern 1 of 1) matches no parameter",
       [](Fixture& f) { (void)torchkit::freeze_all_except(f.model, {"head"}); }},
      {"freeze.hpp:freeze_all_except", "keeping an int64 parameter trainable",
       "freeze_all_except: parameter \"steps\" has dtype Long, which cannot require gradients",
       [](Fixture& f) { (void)torchkit::freeze_all_except(f.model, {"4", "steps"}); }, integer_parameter},
      {"freeze.hpp:freeze_all_except", "a non-leaf parameter it would freeze",
       "freeze_all_except: parameter \"derived\" is not a leaf tensor",
       [](Fixture& f) { (void)torchkit::freeze_all_except(f.model, {"4"}); }, non_leaf_parameter},
      {"freeze.hpp:FreezeByName", "a pattern matching nothing",
       "FreezeByName: pattern \"nope\" (pattern 1 of 1) matches no parameter",
       [](Fixture& f) { torchkit::FreezeByName frozen(f.model, {"nope"}); }},
      {"freeze.hpp:FreezeByName", "all_except keeping an int64 parameter trainable",
       "FreezeByName: parameter \"steps\" has dtype Long, which cannot require gradients",
       [](Fixture& f) { torchkit::FreezeByName frozen(f.model, {"steps"}, torchkit::FreezeMode::all_except); },
       integer_parameter},
      {"name_pattern.hpp:regex", "\"4.(weight\"",
       "regex: \"4.(weight\" is not a valid regular expression",
       [](Fixture&) { (void)torchkit::regex("4.(weight"); }},
      {"detail/name_pattern.hpp:NamePattern::NamePattern", "a null const char*",
       "NamePattern: the pattern is a null pointer",
       [](Fixture&) { torchkit::NamePattern pattern(static_cast<const char*>(nullptr)); }},
      {"concepts.hpp:module_of", "an empty module holder", "module_of: the module holder is empty",
       [](Fixture&) {
         torch::nn::Linear empty{nullptr};
         (void)torchkit::module_of(empty);
       }},
      // Fine-tuning: the options change nothing on an error; train / TrainScope need a module.
      {"freeze.hpp:freeze", "freeze_norm_stats with a pattern matching nothing",
       "freeze: pattern \"9\" (pattern 2 of 2) matches no parameter",
       [](Fixture& f) { (void)torchkit::freeze(f.model, {"1", "9"}, {.freeze_norm_stats = true}); }},
      {"freeze.hpp:freeze_all_except", "freeze_norm_stats with a pattern matching nothing",
       "freeze_all_except: pattern \"head\" (pattern 1 of 1) matches no parameter",
       [](Fixture& f) { (void)torchkit::freeze_all_except(f.model, {"head"}, {.freeze_norm_stats = true}); }},
      {"freeze.hpp:FreezeByName", "freeze_norm_stats with a pattern matching nothing",
       "FreezeByName: pattern \"2\" (pattern 1 of 1) matches no parameter",
       [](Fixture& f) { torchkit::FreezeByName frozen(f.model, {"2"}, {.freeze_norm_stats = true}); }},
      {"freeze.hpp:train", "an empty module holder", "train: the module holder is empty",
       [](Fixture&) {
         torch::nn::Sequential empty{nullptr};
         torchkit::train(empty);
       }},
      {"freeze.hpp:train", "a null module pointer", "train: the module pointer is null",
       [](Fixture&) {
         std::shared_ptr<torch::nn::Module> null;
         torchkit::train(null, false);
       }},
      {"freeze.hpp:TrainScope", "a null module pointer", "TrainScope: the module pointer is null",
       [](Fixture&) {
         std::shared_ptr<torch::nn::Module> null;
         torchkit::TrainScope scope(null);
       }},
      {"freeze.hpp:freeze", "an empty regex", "freeze: pattern 1 of 1 is empty",
       [](Fixture& f) { (void)torchkit::freeze(f.model, {torchkit::regex("")}); }},
  };
}

Rows checkpoint_rows() {
  const auto path = [] {
    return (std::filesystem::temp_directory_path() / "torchkit_bad_input_checkpoint.pt").string();
  };
  return {
      {"checkpoint.hpp:save_checkpoint", "a path in a directory that does not exist",
       "save_checkpoint: cannot write '/nonexistent-directory/run.pt'",
       [](Fixture& f) { torchkit::save_checkpoint("/nonexistent-directory/run.pt", f.model, *f.optimizer); }},
      {"checkpoint.hpp:save_checkpoint", "a null scheduler", "save_checkpoint: scheduler 0 is null",
       [path](Fixture& f) { torchkit::save_checkpoint(path(), f.model, *f.optimizer, {nullptr}); }},
      {"checkpoint.hpp:load_checkpoint", "a file that does not exist", "load_checkpoint: cannot read '/nonexistent-directory/run.pt'",
       [](Fixture& f) { (void)torchkit::load_checkpoint("/nonexistent-directory/run.pt", f.model, *f.optimizer); }},
      {"checkpoint.hpp:load_checkpoint", "a checkpoint of another model",
       "load_checkpoint: '0.weight' is Float [2, 3] in the checkpoint but Float [4, 3, 3, 3] in the model",
       [path](Fixture& f) { (void)torchkit::load_checkpoint(path(), f.model, *f.optimizer); },
       [path](Fixture&) {
         torch::nn::Sequential other(torch::nn::Linear(3, 2));
         torch::optim::SGD optimizer(other->parameters(), 0.1);
         torchkit::save_checkpoint(path(), other, optimizer);
       }},
  };
}

Rows averaging_rows() {
  // An average of the fixture's model, probed (its values and n_averaged) so that a refused call
  // that changed it is noticed.
  const auto averaged_of_model = [](Fixture& f) {
    auto averaged = f.hold<torchkit::AveragedModel>(f.model, torchkit::AveragingOptions{.use_buffers = true});
    averaged->update_parameters(f.model);
    f.probe("averaged model", [averaged] {
      std::vector<double> sums;
      for (const auto& item : averaged->named_parameters()) sums.push_back(item.tensor.sum().item<double>());
      for (const auto& item : averaged->named_buffers()) sums.push_back(item.tensor.sum().item<double>());
      return fmt::format("{} {}", averaged->to_string(), fmt::join(sums, " "));
    });
  };
  return {
      {"averaging.hpp:AveragedModel", "ema_decay 1.5", "AveragedModel: ema_decay must be in [0, 1], got 1.5",
       [](Fixture& f) { torchkit::AveragedModel bad(f.model, {.ema_decay = 1.5}); }},
      {"averaging.hpp:AveragedModel", "an empty module holder", "AveragedModel: the module holder is empty",
       [](Fixture&) {
         torch::nn::Sequential empty{nullptr};
         torchkit::AveragedModel bad(empty);
       }},
      {"averaging.hpp:AveragedModel", "update_parameters with a model of another structure",
       "AveragedModel::update_parameters: the model's parameter 0 is '0.weight' but the averaged model's is "
       "'weight'",
       [](Fixture& f) { f.last_held<torchkit::AveragedModel>().update_parameters(f.model); },
       [](Fixture& f) {
         auto averaged = f.hold<torchkit::AveragedModel>(torch::nn::Linear(2, 2));
         f.probe("foreign average", [averaged] { return averaged->to_string(); });
       }},
      {"averaging.hpp:AveragedModel::load", "an archive without the entry",
       "AveragedModel::load: the archive has no 'averaged_model' entry",
       [](Fixture& f) {
         torch::serialize::InputArchive empty;
         f.held<torchkit::AveragedModel>(0).load(empty);
       },
       averaged_of_model},
      {"averaging.hpp:AveragedModel::load", "an archive of another model",
       "AveragedModel::load: the model's parameter 0 is 'weight' but the averaged model's is '0.weight'",
       [](Fixture& f) { f.held<torchkit::AveragedModel>(0).load(f.last_held<torch::serialize::InputArchive>()); },
       [averaged_of_model](Fixture& f) {
         averaged_of_model(f);
         torchkit::AveragedModel foreign(torch::nn::Linear(2, 2));
         std::stringstream stream;
         torch::serialize::OutputArchive out;
         foreign.save(out);
         out.save_to(stream);
         f.hold<torch::serialize::InputArchive>()->load_from(stream);
       }},
      {"averaging.hpp:ModelEma", "decay -0.5", "ModelEma: decay must be in [0, 1], got -0.5",
       [](Fixture& f) { torchkit::ModelEma bad(f.model, {.decay = -0.5}); }},
      {"averaging.hpp:ModelEma", "min_decay above decay", "ModelEma: min_decay (0.5) must be <= decay (0.25)",
       [](Fixture& f) { torchkit::ModelEma bad(f.model, {.decay = 0.25, .min_decay = 0.5}); }},
      {"averaging.hpp:ModelEma", "warmup_gamma nan", "ModelEma: warmup_gamma must be a finite number > 0, got nan",
       [](Fixture& f) { torchkit::ModelEma bad(f.model, {.warmup_gamma = nan}); }},
      {"averaging.hpp:ModelEma", "warmup_power 0", "ModelEma: warmup_power must be a finite number > 0, got 0",
       [](Fixture& f) { torchkit::ModelEma bad(f.model, {.warmup_power = 0}); }},
      {"averaging.hpp:AveragedWeightsScope", "an average of another model",
       "AveragedWeightsScope: the model's parameter 0 is '0.weight' but the averaged model's is 'weight'",
       [](Fixture& f) { torchkit::AveragedWeightsScope scope(f.model, f.last_held<torchkit::AveragedModel>()); },
       [](Fixture& f) { (void)f.hold<torchkit::AveragedModel>(torch::nn::Linear(2, 2)); }},
      {"averaging.hpp:update_bn", "an empty module holder", "update_bn: the module holder is empty",
       [](Fixture& f) {
         torch::nn::Sequential empty{nullptr};
         torchkit::update_bn(std::vector<at::Tensor>{f.tensors.at("image")}, empty);
       }},
  };
}

Rows grad_mode_memory_rows() {
  return {
      {"grad_mode.hpp:EvalScope", "an empty module holder", "EvalScope: the module holder is empty",
       [](Fixture&) {
         torch::nn::Sequential empty{nullptr};
         torchkit::EvalScope eval(empty);
       }},
      {"grad_mode.hpp:EvalScope", "a null module pointer", "EvalScope: the module pointer is null",
       [](Fixture&) {
         std::shared_ptr<torch::nn::Module> null;
         torchkit::EvalScope eval(null);
       }},
#if TORCHKIT_WITH_CUDA
      // With CUDA: "CUDA is not available" (no GPU) or "CUDA device index 100 does not exist".
      {"memory.hpp:memory_stats", "device 100", "100", [](Fixture&) { (void)torchkit::memory_stats(100); }},
      {"memory.hpp:reset_peak_memory_stats", "device 100", "100",
       [](Fixture&) { torchkit::reset_peak_memory_stats(100); }},
#else
      {"memory.hpp:memory_stats", "any device, CPU-only LibTorch", "memory_stats(device=-1): CUDA is not available",
       [](Fixture&) { (void)torchkit::memory_stats(); }},
      {"memory.hpp:memory_stats", "device 3, CPU-only LibTorch", "memory_stats(device=3): CUDA is not available",
       [](Fixture&) { (void)torchkit::memory_stats(3); }},
      {"memory.hpp:reset_peak_memory_stats", "any device, CPU-only LibTorch",
       "reset_peak_memory_stats(device=-1): CUDA is not available",
       [](Fixture&) { torchkit::reset_peak_memory_stats(); }},
#endif
  };
}

Rows one_hot_rows() {
  return {
      {"one_hot.hpp:one_hot", "undefined labels", "one_hot: labels is an undefined tensor",
       [](Fixture&) { (void)torchkit::one_hot(at::Tensor(), 4); }},
      {"one_hot.hpp:one_hot", "sparse labels", "one_hot: labels is not a dense tensor",
       [](Fixture& f) { (void)torchkit::one_hot(f.tensors.at("sparse"), 4); },
       [](Fixture& f) { f.tensors["sparse"] = f.tensors.at("labels").to_sparse(); }},
      {"one_hot.hpp:one_hot", "float labels", "one_hot: labels have dtype Float",
       [](Fixture& f) { (void)torchkit::one_hot(f.tensors.at("float"), 4); },
       [](Fixture& f) { f.tensors["float"] = torch::tensor({0.0f, 1.0f}); }},
      {"one_hot.hpp:one_hot", "num_classes = 0", "one_hot: num_classes is 0",
       [](Fixture& f) { (void)torchkit::one_hot(f.tensors.at("labels"), 0); }},
      {"one_hot.hpp:one_hot", "smoothing = 1", "one_hot: smoothing is 1; expected a value in [0, 1)",
       [](Fixture& f) { (void)torchkit::one_hot(f.tensors.at("labels"), 4, {.smoothing = 1.0}); }},
      {"one_hot.hpp:one_hot", "smoothing = nan", "one_hot: smoothing is nan",
       [](Fixture& f) { (void)torchkit::one_hot(f.tensors.at("labels"), 4, {.smoothing = nan}); }},
      {"one_hot.hpp:one_hot", "output dtype ComplexFloat", "one_hot: output dtype ComplexFloat is not supported",
       [](Fixture& f) { (void)torchkit::one_hot(f.tensors.at("labels"), 4, {.dtype = at::kComplexFloat}); }},
      {"one_hot.hpp:one_hot", "smoothing with an integer dtype",
       "one_hot: smoothing 0.1 needs a floating output dtype, got Long",
       [](Fixture& f) { (void)torchkit::one_hot(f.tensors.at("labels"), 4, {.dtype = at::kLong, .smoothing = 0.1}); }},
      {"one_hot.hpp:one_hot", "label 7 of 4 classes",
       "one_hot: label 7 at index [1, 0] is outside [0, 4); pass ignore_index=7 to skip it",
       [](Fixture& f) { (void)torchkit::one_hot(f.tensors.at("grid"), 4); },
       [](Fixture& f) { f.tensors["grid"] = torch::tensor({0, 1, 7, 2}, torch::kInt).reshape({2, 2}); }},
      {"one_hot.hpp:one_hot", "label -1 with ignore_index 255",
       "one_hot: label -1 at index [2] is outside [0, 4) and is not the ignore_index (255)",
       [](Fixture& f) { (void)torchkit::one_hot(f.tensors.at("negative"), 4, {.ignore_index = 255}); },
       [](Fixture& f) { f.tensors["negative"] = torch::tensor({255, 0, -1, 3}, torch::kShort); }},
      {"one_hot.hpp:OneHot::OneHot", "num_classes = -3", "OneHot: num_classes is -3",
       [](Fixture&) { torchkit::OneHot encode(-3); }},
      {"one_hot.hpp:OneHot::OneHot", "smoothing = -0.1", "OneHot: smoothing is -0.1",
       [](Fixture&) { torchkit::OneHot encode(10, {.smoothing = -0.1}); }},
      {"one_hot.hpp:OneHot::OneHot", "output dtype ComplexDouble",
       "OneHot: output dtype ComplexDouble is not supported",
       [](Fixture&) { torchkit::OneHot encode(10, {.dtype = at::kComplexDouble}); }},
      {"one_hot.hpp:OneHot::OneHot", "smoothing with Bool",
       "OneHot: smoothing 0.2 needs a floating output dtype, got Bool",
       [](Fixture&) { torchkit::OneHot encode(10, {.dtype = at::kBool, .smoothing = 0.2}); }},
      {"one_hot.hpp:OneHot::operator()", "label 3 of 3 classes", "one_hot: label 3 at index [1] is outside [0, 3)",
       [](Fixture& f) { (void)torchkit::OneHot(3)(f.tensors.at("labels")); }},
      {"one_hot.hpp:one_hot", "uint8 label 255 with ignore_index -1",
       "one_hot: label 255 at index [1] is outside [0, 4) and is not the ignore_index (-1)",
       [](Fixture& f) { (void)torchkit::one_hot(f.tensors.at("u8"), 4, {.ignore_index = -1}); },
       [](Fixture& f) { f.tensors["u8"] = torch::tensor({1, 255}, torch::kByte); }},
  };
}

/// Parameter groups with the fixture optimizer's tensors and SGD options of lr 0.5 (AdamOptions
/// for group `adam_group`).
std::vector<torch::optim::OptimizerParamGroup> groups_like(const Fixture& f, std::size_t adam_group = 99) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (std::size_t g = 0; g < f.optimizer->param_groups().size(); ++g) {
    const auto& params = f.optimizer->param_groups()[g].params();
    if (g == adam_group) {
      groups.emplace_back(params, std::make_unique<torch::optim::AdamOptions>(torch::optim::AdamOptions(0.5)));
    } else {
      groups.emplace_back(params, std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(0.5)));
    }
  }
  return groups;
}

Rows param_groups_rows() {
  using torchkit::ParamGroupBuilder;
  using torch::optim::SGDOptions;
  return {
      // layer_decay (checked when called) and its checks in build
      {"param_groups.hpp:ParamGroupBuilder::layer_decay", "rate 0",
       "ParamGroupBuilder::layer_decay: rate must be in (0, 1], got 0",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).rest().layer_decay(0.0, {{"0"}, {"*"}}); }},
      {"param_groups.hpp:ParamGroupBuilder::layer_decay", "rate 1.5",
       "ParamGroupBuilder::layer_decay: rate must be in (0, 1], got 1.5",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).rest().layer_decay(1.5, {{"0"}, {"*"}}); }},
      {"param_groups.hpp:ParamGroupBuilder::layer_decay", "rate nan",
       "ParamGroupBuilder::layer_decay: rate must be in (0, 1], got nan",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).rest().layer_decay(nan, {{"0"}, {"*"}}); }},
      {"param_groups.hpp:ParamGroupBuilder::layer_decay", "no layers",
       "ParamGroupBuilder::layer_decay: no layers given",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).rest().layer_decay(0.5, {}); }},
      {"param_groups.hpp:ParamGroupBuilder::layer_decay", "an empty layer",
       "ParamGroupBuilder::layer_decay: layer 1 of 2 has no patterns",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).rest().layer_decay(0.5, {{"0"}, {}}); }},
      {"param_groups.hpp:ParamGroupBuilder::layer_decay", "given twice",
       "ParamGroupBuilder::layer_decay: layer_decay was already given (1 layers, rate 0.5)",
       [](Fixture& f) {
         ParamGroupBuilder builder(f.model);
         builder.rest().layer_decay(0.5, {{"*"}});
         builder.layer_decay(0.7, {{"*"}});
       }},
      {"param_groups.hpp:ParamGroupBuilder::build", "parameters in no layer of layer_decay",
       "ParamGroupBuilder::build: 2 trainable parameter(s) match no layer of layer_decay: \"4.weight\", \"4.bias\"",
       [](Fixture& f) {
         (void)ParamGroupBuilder(f.model).rest().layer_decay(0.5, {{"0"}, {"1"}}).build(SGDOptions(0.1));
       }},
      {"param_groups.hpp:ParamGroupBuilder::build", "a layer_decay pattern matching nothing",
       "ParamGroupBuilder::build: layer_decay layer 0: pattern \"conv\" (pattern 1 of 1) matches no parameter",
       [](Fixture& f) {
         (void)ParamGroupBuilder(f.model).rest().layer_decay(0.5, {{"conv"}, {"*"}}).build(SGDOptions(0.1));
       }},
      // build
      {"param_groups.hpp:ParamGroupBuilder::build", "defaults' lr = -0.1",
       "ParamGroupBuilder::build: the defaults' lr must be a finite number >= 0, got -0.1",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).rest().build(SGDOptions(-0.1)); }},
      {"param_groups.hpp:ParamGroupBuilder::build", "defaults' weight_decay = nan",
       "ParamGroupBuilder::build: the defaults' weight_decay must be a finite number >= 0, got nan",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).rest().build(SGDOptions(0.1).weight_decay(nan)); }},
      {"param_groups.hpp:ParamGroupBuilder::build", "a group lr = -1",
       "ParamGroupBuilder::build: the lr of group 0 (\"0\") must be a finite number >= 0, got -1",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).add({"0"}, {.lr = -1.0}).rest().build(SGDOptions(0.1)); }},
      {"param_groups.hpp:ParamGroupBuilder::build", "a group weight_decay = inf",
       "ParamGroupBuilder::build: the weight_decay of group 1 (head) must be a finite number >= 0, got inf",
       [](Fixture& f) {
         (void)ParamGroupBuilder(f.model)
             .add({"0"})
             .add({"4"}, {.weight_decay = infinity, .name = "head"})
             .rest()
             .build(SGDOptions(0.1));
       }},
      {"param_groups.hpp:ParamGroupBuilder::build", "no groups", "ParamGroupBuilder::build: no groups were declared",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).build(SGDOptions(0.1)); }},
      {"param_groups.hpp:ParamGroupBuilder::build", "rest() twice",
       "ParamGroupBuilder::build: rest() was given twice (groups 1 and 2)",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).add({"0"}).rest().rest().build(SGDOptions(0.1)); }},
      {"param_groups.hpp:ParamGroupBuilder::build", "a pattern matching nothing",
       "ParamGroupBuilder::build: group 0 (\"conv\"): pattern \"conv\" (pattern 1 of 1) matches no parameter",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).add({"conv"}).rest().build(SGDOptions(0.1)); }},
      {"param_groups.hpp:ParamGroupBuilder::build", "an empty pattern",
       "ParamGroupBuilder::build: group 0 (\"0\", \"\"): pattern 2 of 2 is empty",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).add({"0", ""}).rest().build(SGDOptions(0.1)); }},
      {"param_groups.hpp:ParamGroupBuilder::build", "parameters in no group, no rest()",
       "ParamGroupBuilder::build: 4 trainable parameter(s) belong to no group: \"1.weight\", \"1.bias\", \"4.weight\", "
       "\"4.bias\"",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).add({"0"}).build(SGDOptions(0.1)); }},
      {"param_groups.hpp:ParamGroupBuilder::build", "a group left with nothing",
       "ParamGroupBuilder::build: group 1 (\"4\") gets no parameter: every parameter it matches (\"4.weight\", "
       "\"4.bias\") was claimed by an earlier group",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).add({"*"}).add({"4"}).build(SGDOptions(0.1)); }},
      {"param_groups.hpp:ParamGroupBuilder::build", "every parameter frozen",
       "ParamGroupBuilder::build: nothing to optimize: all 6 parameters are frozen",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).rest().build(SGDOptions(0.1)); },
       [](Fixture& f) {
         for (auto& parameter : f.model->parameters()) parameter.requires_grad_(false);
       }},
      {"param_groups.hpp:ParamGroupBuilder::build", "a model without parameters",
       "ParamGroupBuilder::build: nothing to optimize: the model has no parameters",
       [](Fixture&) { (void)ParamGroupBuilder(torch::nn::ReLU()).rest().build(SGDOptions(0.1)); }},
      {"param_groups.hpp:ParamGroupBuilder::build", "a no_weight_decay pattern matching nothing",
       "ParamGroupBuilder::build: no_weight_decay: pattern \"*.beta\" (pattern 1 of 1) matches no parameter",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).rest().no_weight_decay({"*.beta"}).build(SGDOptions(0.1)); }},
      // make
      {"param_groups.hpp:ParamGroupBuilder::make", "defaults' lr = -1",
       "ParamGroupBuilder::build: the defaults' lr must be a finite number >= 0, got -1",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).rest().make<torch::optim::SGD>(SGDOptions(-1.0)); }},
      {"param_groups.hpp:ParamGroupBuilder::make", "a pattern matching nothing",
       "ParamGroupBuilder::build: group 0 (\"fc\"): pattern \"fc\" (pattern 1 of 1) matches no parameter",
       [](Fixture& f) {
         (void)ParamGroupBuilder(f.model).add({"fc"}, {.lr = 0.1}).rest().make<torch::optim::Adam>(
             torch::optim::AdamOptions(1e-3));
       }},
      // describe, group_names
      {"param_groups.hpp:ParamGroupBuilder::describe", "no groups",
       "ParamGroupBuilder::describe: no groups were declared",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).describe(); }},
      {"param_groups.hpp:ParamGroupBuilder::describe", "defaults' weight_decay = -1",
       "ParamGroupBuilder::describe: the defaults' weight_decay must be a finite number >= 0, got -1",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).rest().describe(SGDOptions(0.1).weight_decay(-1.0)); }},
      {"param_groups.hpp:ParamGroupBuilder::group_names", "a group lr = nan",
       "ParamGroupBuilder::group_names: the lr of group 0 (\"0\") must be a finite number >= 0, got nan",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).add({"0"}, {.lr = nan}).rest().group_names(); }},
      // restore_group_options
      {"param_groups.hpp:restore_group_options", "3 groups for an optimizer of 2",
       "restore_group_options: the optimizer has 2 parameter groups but 3 were given",
       [](Fixture& f) {
         auto groups = groups_like(f);
         groups.emplace_back(std::vector<at::Tensor>{f.parameter("4.bias")});
         torchkit::restore_group_options(*f.optimizer, groups);
       }},
      {"param_groups.hpp:restore_group_options", "group 1 with one tensor fewer",
       "restore_group_options: group 1 of the optimizer has 4 tensors, the given group 3",
       [](Fixture& f) {
         auto groups = groups_like(f);
         groups[1].params().pop_back();
         torchkit::restore_group_options(*f.optimizer, groups);
       }},
      {"param_groups.hpp:restore_group_options", "group 1's tensors in another order",
       "restore_group_options: tensor 0 of group 1 is not the tensor the optimizer holds there",
       [](Fixture& f) {
         auto groups = groups_like(f);
         std::reverse(groups[1].params().begin(), groups[1].params().end());
         torchkit::restore_group_options(*f.optimizer, groups);
       }},
      {"param_groups.hpp:restore_group_options", "group 1's options are AdamOptions (group 0's are fine)",
       "restore_group_options: group 1 has options of type torch::optim::AdamOptions but the optimizer's are "
       "torch::optim::SGDOptions",
       [](Fixture& f) {
         torchkit::restore_group_options(*f.optimizer, groups_like(f, /*adam_group=*/1));
       }},
      {"param_groups.hpp:ParamGroupBuilder::build", "defaults' lr = inf",
       "ParamGroupBuilder::build: the defaults' lr must be a finite number >= 0, got inf",
       [](Fixture& f) { (void)ParamGroupBuilder(f.model).rest().build(torch::optim::AdamOptions(infinity)); }},
  };
}

Rows summary_rows() {
  return {
      {"summary.hpp:summary", "input_size {3, 9, 9} (the Linear expects 144 features)",
       "summary: the forward pass of Sequential failed for input shapes [2, 3, 9, 9]",
       [](Fixture& f) { (void)torchkit::summary(f.model, {3, 9, 9}); }},
      {"summary.hpp:summary", "two inputs for a one-input model",
       "summary: the forward pass of Sequential failed for input shapes [2, 3, 8, 8], [2, 4]",
       [](Fixture& f) { (void)torchkit::summary(f.model, {{3, 8, 8}, {4}}); }},
      {"summary.hpp:summary", "no input sizes", "summary: input_sizes is empty",
       [](Fixture& f) { (void)torchkit::summary(f.model, std::vector<std::vector<int64_t>>{}); }},
      {"summary.hpp:summary", "an empty input_size", "summary: input_size 0 is empty",
       [](Fixture& f) { (void)torchkit::summary(f.model, std::vector<int64_t>{}); }},
      {"summary.hpp:summary", "dimension 0", "summary: dimension 1 of input_size 0 is 0 in [3, 0, 8]",
       [](Fixture& f) { (void)torchkit::summary(f.model, {3, 0, 8}); }},
      {"summary.hpp:summary", "batch_size 0", "summary: SummaryOptions::batch_size is 0, expected >= 1",
       [](Fixture& f) { (void)torchkit::summary(f.model, {3, 8, 8}, {.batch_size = 0}); }},
      {"summary.hpp:summary", "depth -1", "summary: SummaryOptions::depth is -1, expected >= 0",
       [](Fixture& f) { (void)torchkit::summary(f.model, {3, 8, 8}, {.depth = -1}); }},
      {"summary.hpp:summary", "2 dtypes for 1 input", "summary: SummaryOptions::dtypes has 2 entries for 1 inputs",
       [](Fixture& f) { (void)torchkit::summary(f.model, {3, 8, 8}, {.dtypes = {at::kFloat, at::kDouble}}); }},
      {"summary.hpp:summary", "inputs on meta, the model on the CPU",
       "summary: parameter '0.weight' is on cpu but the inputs would be made on meta",
       [](Fixture& f) { (void)torchkit::summary(f.model, {3, 8, 8}, {.device = c10::Device(at::kMeta)}); }},
      {"summary.hpp:summary", "an empty AnyModule", "summary: the AnyModule is empty",
       [](Fixture&) {
         torch::nn::AnyModule empty;
         (void)torchkit::summary(empty, {3});
       }},
      {"summary.hpp:summary", "a null module pointer", "summary: the module pointer is null",
       [](Fixture&) {
         std::shared_ptr<torch::nn::LinearImpl> null;
         (void)torchkit::summary(null, {3});
       }},
      {"summary.hpp:summary_of", "an input the model rejects",
       "summary: the forward pass of Sequential failed for input shapes [2, 3, 9, 9]",
       [](Fixture& f) { (void)torchkit::summary_of(f.model, f.tensors.at("input")); },
       [](Fixture& f) { f.tensors["input"] = torch::rand({2, 3, 9, 9}); }},
      {"summary.hpp:summary_of", "an argument forward does not take",
       "summary: torch::nn::LinearImpl::forward does not take these arguments; inputs tried: 7",
       [](Fixture& f) {
         auto linear = f.model->ptr<torch::nn::LinearImpl>(4);
         (void)torchkit::summary_of(linear, 7);
       }},
      {"summary.hpp:summary_of", "depth -2", "summary: SummaryOptions::depth is -2, expected >= 0",
       [](Fixture& f) { (void)torchkit::summary_of({.depth = -2}, f.model, f.tensors.at("input")); },
       [](Fixture& f) { f.tensors["input"] = torch::rand({2, 3, 8, 8}); }},
      {"summary.hpp:summary", "a column listed twice", "summary: SummaryOptions::columns lists output_size twice (at 0 and 1)",
       [](Fixture& f) {
         (void)torchkit::summary(f.model, {3, 8, 8},
                                 {.columns = {torchkit::Column::output_size, torchkit::Column::output_size}});
       }},
      {"summary.hpp:summary", "an unknown column", "summary: SummaryOptions::columns[1] is 7, which is no Column",
       [](Fixture& f) {
         (void)torchkit::summary(f.model, {3, 8, 8},
                                 {.columns = {torchkit::Column::num_params, static_cast<torchkit::Column>(7)}});
       }},
      {"summary.hpp:summary_of", "a column listed twice", "summary: SummaryOptions::columns lists mult_adds twice",
       [](Fixture& f) {
         (void)torchkit::summary_of({.columns = {torchkit::Column::mult_adds, torchkit::Column::MultAdds}}, f.model,
                                    f.tensors.at("input"));
       },
       [](Fixture& f) { f.tensors["input"] = torch::rand({2, 3, 8, 8}); }},
      {"summary.hpp:summary", "inputs on cuda:0",
       "summary: parameter '0.weight' is on cpu but the inputs would be made on cuda:0",
       [](Fixture& f) { (void)torchkit::summary(f.model, {3, 8, 8}, {.device = c10::Device(at::kCUDA, 0)}); }},
  };
}

// ---------------------------------------------------------------------------------------------
// lr.hpp
// ---------------------------------------------------------------------------------------------

/// An optimizer whose options have no learning rate (no get_lr()).
struct NoLrOptions : torch::optim::OptimizerCloneableOptions<NoLrOptions> {};
struct NoLrOptimizer : torch::optim::Optimizer {
  explicit NoLrOptimizer(std::vector<at::Tensor> params)
      : Optimizer({torch::optim::OptimizerParamGroup(std::move(params))}, std::make_unique<NoLrOptions>()) {}
  at::Tensor step(LossClosure /*closure*/) override { return {}; }
  void save(torch::serialize::OutputArchive& /*archive*/) const override {}
  void load(torch::serialize::InputArchive& /*archive*/) override {}
};

/// An optimizer whose options have no lr, held by the fixture (last in `keep`).
NoLrOptimizer& no_lr_optimizer(Fixture& f) {
  return *f.hold<NoLrOptimizer>(std::vector<at::Tensor>{torch::zeros({1}, torch::requires_grad())});
}

/// An optimizer without parameter groups.
torch::optim::SGD& empty_optimizer(Fixture& f) {
  return *f.hold<torch::optim::SGD>(std::vector<torch::optim::OptimizerParamGroup>{}, torch::optim::SGDOptions(0.1));
}

/// An Adagrad optimizer (no momentum) over the fixture's parameters.
torch::optim::Adagrad& adagrad(Fixture& f) {
  return *f.hold<torch::optim::Adagrad>(f.model->parameters(), torch::optim::AdagradOptions(0.1));
}

/// Registers a scheduler's state (to_string: arguments, last_epoch, last_lr) as a probe.
template <class S>
std::shared_ptr<S> probed(Fixture& f, std::shared_ptr<S> scheduler, const std::string& name) {
  f.probe(name, [scheduler] { return scheduler->to_string(); });
  return scheduler;
}

/// The archive written to memory and read back.
std::shared_ptr<torch::serialize::InputArchive> reopened(Fixture& f, torch::serialize::OutputArchive& out) {
  std::stringstream stream;
  out.save_to(stream);
  auto in = f.hold<torch::serialize::InputArchive>();
  in->load_from(stream);
  return in;
}

/// A scheduler state written by hand: `entries` under "lr_scheduler".
using Entries = std::vector<std::pair<std::string, c10::IValue>>;
std::shared_ptr<torch::serialize::InputArchive> handmade_archive(Fixture& f, const Entries& entries) {
  torch::serialize::OutputArchive out;
  torch::serialize::OutputArchive state(out.compilation_unit());
  for (const auto& [key, value] : entries) state.write(key, value);
  out.write("lr_scheduler", state);
  return reopened(f, out);
}

c10::IValue doubles(std::vector<double> values) { return c10::IValue(c10::List<double>(values)); }

/// The base entries every Scheduler writes, for the fixture's two groups.
Entries scheduler_entries(const std::string& type) {
  return {{"type", c10::IValue(type)},        {"last_epoch", c10::IValue(int64_t{7})},
          {"step_count", c10::IValue(int64_t{8})}, {"base_lrs", doubles({0.1, 0.01})},
          {"last_lr", doubles({0.2, 0.02})},  {"initial_lrs", doubles({0.1, 0.01})},
          {"optimizer_lrs", doubles({0.3, 0.03})}};
}

/// The archive of the scheduler `make` builds on a second optimizer like the fixture's.
template <class Make>
std::shared_ptr<torch::serialize::InputArchive> saved_state(Fixture& f, Make make, int groups = 2) {
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  for (int g = 0; g < groups; ++g) {
    param_groups.emplace_back(std::vector<at::Tensor>{torch::zeros({2}, torch::requires_grad())},
                              std::make_unique<torch::optim::SGDOptions>(
                                  torch::optim::SGDOptions(0.1 / (g + 1)).momentum(0.9)));
  }
  torch::optim::SGD other(std::move(param_groups), torch::optim::SGDOptions(0.1));
  auto scheduler = make(other);
  scheduler.step();
  torch::serialize::OutputArchive out;
  scheduler.save(out);
  return reopened(f, out);
}

/// A model whose forward ends with operations of no module after its layer (`linear(x) * 2 + x`).
struct TrailingOpsNetImpl : torch::nn::Module {
  TrailingOpsNetImpl() {
    inner = register_module("inner", torch::nn::Sequential(torch::nn::Linear(4, 4)));
    list = register_module("list", torch::nn::ModuleList(torch::nn::Linear(4, 4)));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor y = inner->forward(x);
    return y * 2 + x;
  }
  torch::nn::Sequential inner{nullptr};
  torch::nn::ModuleList list{nullptr};
};

struct WrapperNetImpl : torch::nn::Module {
  WrapperNetImpl() { body = register_module("body", std::make_shared<TrailingOpsNetImpl>()); }
  torch::Tensor forward(const torch::Tensor& x) { return body->forward(x).relu(); }
  std::shared_ptr<TrailingOpsNetImpl> body;
};

/// The model of the capture rows that need one of their own: made in the rows' setup, before the
/// snapshot, because making it draws from the global RNG.
std::shared_ptr<WrapperNetImpl>& wrapper_net() {
  static std::shared_ptr<WrapperNetImpl> net;
  return net;
}

void make_wrapper_net(Fixture& f) {
  wrapper_net() = std::make_shared<WrapperNetImpl>();
  f.tensors["input"] = torch::rand({2, 4});
}

Rows capture_rows() {
  return {
      {"capture.hpp:capture", "no patterns", "capture: no patterns given",
       [](Fixture& f) { (void)torchkit::capture(f.model, torchkit::PatternList{}, f.tensors.at("input")); },
       [](Fixture& f) { f.tensors["input"] = torch::rand({2, 3, 8, 8}); }},
      {"capture.hpp:capture", "an empty pattern", "capture: pattern \"\" is empty",
       [](Fixture& f) { (void)torchkit::capture(f.model, {""}, f.tensors.at("input")); },
       [](Fixture& f) { f.tensors["input"] = torch::rand({2, 3, 8, 8}); }},
      {"capture.hpp:capture", "a pattern matching no module",
       "capture: pattern \"7\" matches no module of Sequential; closest module names: \"0\"",
       [](Fixture& f) { (void)torchkit::capture(f.model, {"7"}, f.tensors.at("input")); },
       [](Fixture& f) { f.tensors["input"] = torch::rand({2, 3, 8, 8}); }},
      {"capture.hpp:capture", "an input the model rejects", "capture: the forward pass of Sequential failed",
       [](Fixture& f) { (void)torchkit::capture(f.model, {"0"}, f.tensors.at("input")); },
       [](Fixture& f) { f.tensors["input"] = torch::rand({2, 3, 9, 9}); }},
      {"capture.hpp:capture", "an argument forward does not take",
       "WrapperNetImpl::forward does not take these arguments; inputs tried: 7",
       [](Fixture&) { (void)torchkit::capture(wrapper_net(), {"body"}, 7); }, make_wrapper_net},
      {"capture.hpp:capture", "a ModuleList", "capture: pattern \"body.list\" matches 'body.list', a ModuleList",
       [](Fixture& f) { (void)torchkit::capture(wrapper_net(), {"body.list"}, f.tensors.at("input")); }, make_wrapper_net},
      {"capture.hpp:capture", "a module never called", "capture: module 'body.list.0' (Linear) was never called",
       [](Fixture& f) { (void)torchkit::capture(wrapper_net(), {"body.list.0"}, f.tensors.at("input")); },
       make_wrapper_net},
      {"capture.hpp:capture", "a module whose forward ends with operations of no module",
       "capture: the output of 'body' (TrailingOpsNet) cannot be identified",
       [](Fixture& f) { (void)torchkit::capture(wrapper_net(), {"body"}, f.tensors.at("input")); }, make_wrapper_net},
      {"capture.hpp:FeatureCapture::FeatureCapture", "a pattern matching no module",
       "FeatureCapture: pattern \"conv\" matches no module of Sequential",
       [](Fixture& f) { torchkit::FeatureCapture capture(f.model, {"conv"}); }},
      {"capture.hpp:FeatureCapture::FeatureCapture", "no patterns", "FeatureCapture: no patterns given",
       [](Fixture& f) { torchkit::FeatureCapture capture(f.model, torchkit::PatternList{}); }},
      {"capture.hpp:FeatureCapture::outputs", "no forward call", "FeatureCapture::outputs: module '0' (Conv2d) was never called",
       [](Fixture& f) {
         torchkit::FeatureCapture capture(f.model, {"0"});
         (void)capture.outputs();
       }},
  };
}

Rows lr_constructor_rows() {
  return {
      {"lr.hpp:StepLR", "step_size = 0", "StepLR: Expected positive integer step_size, but got 0",
       [](Fixture& f) { lr::StepLR s(*f.optimizer, 0); }},
      {"lr.hpp:StepLR", "gamma = -0.1", "StepLR: gamma must be a finite number >= 0, got -0.1",
       [](Fixture& f) { lr::StepLR s(*f.optimizer, 3, -0.1); }},
      {"lr.hpp:StepLR", "no step_size", "StepLR: step_size is required",
       [](Fixture& f) { lr::StepLR s(*f.optimizer, lr::StepLROptions{}); }},
      {"lr.hpp:StepLR", "an optimizer without parameter groups", "StepLR: the optimizer has no parameter groups",
       [](Fixture& f) { lr::StepLR s(empty_optimizer(f), 3); }},
      {"lr.hpp:StepLR", "an optimizer whose options have no lr",
       "StepLR: the options of param group 0 do not implement get_lr()",
       [](Fixture& f) { lr::StepLR s(f.last_held<NoLrOptimizer>(), 3); },
       [](Fixture& f) { (void)no_lr_optimizer(f); }},
      {"lr.hpp:MultiStepLR", "milestones {5, 3}",
       "MultiStepLR: milestones must be increasing, got milestones[1] = 3 after 5 in [5, 3]",
       [](Fixture& f) { lr::MultiStepLR s(*f.optimizer, {5, 3}); }},
      {"lr.hpp:MultiStepLR", "milestones {-1, 4}",
       "MultiStepLR: milestones must be >= 0, got milestones[0] = -1 in [-1, 4]",
       [](Fixture& f) { lr::MultiStepLR s(*f.optimizer, {-1, 4}); }},
      {"lr.hpp:MultiStepLR", "gamma = nan", "MultiStepLR: gamma must be a finite number >= 0, got nan",
       [](Fixture& f) { lr::MultiStepLR s(*f.optimizer, {2}, nan); }},
      {"lr.hpp:ConstantLR", "factor = 0",
       "ConstantLR: Constant multiplicative factor expected to be between 0 and 1 (0 excluded: the lr is divided by it), "
       "got factor=0",
       [](Fixture& f) { lr::ConstantLR s(*f.optimizer, 0.0); }},
      {"lr.hpp:ConstantLR", "factor = 1.5", "got factor=1.5", [](Fixture& f) { lr::ConstantLR s(*f.optimizer, 1.5); }},
      {"lr.hpp:ConstantLR", "total_iters = 0", "ConstantLR: Expected positive integer total_iters, but got 0",
       [](Fixture& f) { lr::ConstantLR s(*f.optimizer, {.factor = 0.5, .total_iters = 0}); }},
      {"lr.hpp:LinearLR", "start_factor = 0",
       "LinearLR: Starting multiplicative factor expected to be between 0 and 1 (0 excluded: the lr is divided by it), "
       "got start_factor=0",
       [](Fixture& f) { lr::LinearLR s(*f.optimizer, 0.0); }},
      {"lr.hpp:LinearLR", "end_factor = 1.5",
       "LinearLR: Ending multiplicative factor expected to be between 0 and 1, got end_factor=1.5",
       [](Fixture& f) { lr::LinearLR s(*f.optimizer, {.start_factor = 0.5, .end_factor = 1.5}); }},
      {"lr.hpp:LinearLR", "total_iters = -1", "LinearLR: Expected positive integer total_iters, but got -1",
       [](Fixture& f) { lr::LinearLR s(*f.optimizer, 0.5, 1.0, -1); }},
      {"lr.hpp:ExponentialLR", "gamma = -0.5", "ExponentialLR: gamma must be a finite number >= 0, got -0.5",
       [](Fixture& f) { lr::ExponentialLR s(*f.optimizer, -0.5); }},
      {"lr.hpp:ExponentialLR", "no gamma", "ExponentialLR: gamma is required",
       [](Fixture& f) { lr::ExponentialLR s(*f.optimizer, lr::ExponentialLROptions{}); }},
      {"lr.hpp:PolynomialLR", "total_iters = 0", "PolynomialLR: Expected positive integer total_iters, but got 0",
       [](Fixture& f) { lr::PolynomialLR s(*f.optimizer, 0); }},
      {"lr.hpp:PolynomialLR", "power = -1", "PolynomialLR: power must be a finite number >= 0, got -1",
       [](Fixture& f) { lr::PolynomialLR s(*f.optimizer, {.total_iters = 4, .power = -1.0}); }},
      {"lr.hpp:CosineAnnealingLR", "T_max = 0", "CosineAnnealingLR: Expected positive integer T_max, but got 0",
       [](Fixture& f) { lr::CosineAnnealingLR s(*f.optimizer, 0); }},
      {"lr.hpp:CosineAnnealingLR", "eta_min = -0.001",
       "CosineAnnealingLR: eta_min must be a finite number >= 0, got -0.001",
       [](Fixture& f) { lr::CosineAnnealingLR s(*f.optimizer, 10, -1e-3); }},
      {"lr.hpp:CosineAnnealingLR", "no T_max", "CosineAnnealingLR: T_max is required",
       [](Fixture& f) { lr::CosineAnnealingLR s(*f.optimizer, lr::CosineAnnealingLROptions{}); }},
      {"lr.hpp:CosineAnnealingWarmRestarts", "T_0 = 0",
       "CosineAnnealingWarmRestarts: Expected positive integer T_0, but got 0",
       [](Fixture& f) { lr::CosineAnnealingWarmRestarts s(*f.optimizer, 0); }},
      {"lr.hpp:CosineAnnealingWarmRestarts", "T_mult = 0",
       "CosineAnnealingWarmRestarts: Expected integer T_mult >= 1, but got 0",
       [](Fixture& f) { lr::CosineAnnealingWarmRestarts s(*f.optimizer, 10, 0); }},
      {"lr.hpp:CosineAnnealingWarmRestarts", "eta_min = -1",
       "CosineAnnealingWarmRestarts: eta_min must be a finite number >= 0, got -1",
       [](Fixture& f) { lr::CosineAnnealingWarmRestarts s(*f.optimizer, 10, 1, -1.0); }},
      {"lr.hpp:LambdaLR", "an empty lr_lambda", "LambdaLR: lr_lambda is empty",
       [](Fixture& f) { lr::LambdaLR s(*f.optimizer, lr::LrLambda{}); }},
      {"lr.hpp:LambdaLR", "3 lr_lambdas for 2 groups", "LambdaLR: Expected 2 lr_lambdas, but got 3",
       [](Fixture& f) {
         const lr::LrLambda one = [](int64_t) { return 1.0; };
         lr::LambdaLR s(*f.optimizer, std::vector<lr::LrLambda>{one, one, one});
       }},
      {"lr.hpp:MultiplicativeLR", "lr_lambda[1] empty", "MultiplicativeLR: lr_lambda[1] is empty",
       [](Fixture& f) {
         lr::MultiplicativeLR s(*f.optimizer, std::vector<lr::LrLambda>{[](int64_t) { return 0.9; }, lr::LrLambda{}});
       }},
      {"lr.hpp:SWALR", "no swa_lr", "SWALR: swa_lr is required",
       [](Fixture& f) { lr::SWALR s(*f.optimizer, lr::SWALROptions{}); }},
      {"lr.hpp:SWALR", "swa_lr = -0.1", "SWALR: swa_lr must be finite numbers >= 0, got -0.1",
       [](Fixture& f) { lr::SWALR s(*f.optimizer, -0.1); }},
      {"lr.hpp:SWALR", "3 swa_lrs for 2 groups",
       "SWALR: swa_lr must have the same length as optimizer.param_groups: swa_lr has 3, optimizer.param_groups has 2",
       [](Fixture& f) { lr::SWALR s(*f.optimizer, std::vector<double>{0.1, 0.2, 0.3}); }},
      {"lr.hpp:SWALR", "anneal_epochs = -1", "SWALR: anneal_epochs must be equal or greater than 0, got -1",
       [](Fixture& f) { lr::SWALR s(*f.optimizer, 0.05, {.anneal_epochs = -1}); }},
      {"lr.hpp:SWALR", "anneal_strategy = \"cosine\"",
       "SWALR: anneal_strategy must by one of 'cos' or 'linear', instead got cosine",
       [](Fixture& f) { lr::SWALR s(*f.optimizer, 0.05, {.anneal_strategy = "cosine"}); }},
      {"lr.hpp:OneCycleLR", "no max_lr", "OneCycleLR: max_lr is required",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, lr::OneCycleLROptions{.total_steps = 10}); }},
      {"lr.hpp:OneCycleLR", "total_steps = 0", "OneCycleLR: Expected positive integer total_steps, but got 0",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, 0.1, 0); }},
      {"lr.hpp:OneCycleLR", "neither total_steps nor epochs",
       "OneCycleLR: You must define either total_steps OR (epochs AND steps_per_epoch)",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, {.max_lr = 0.1}); }},
      {"lr.hpp:OneCycleLR", "epochs = 0", "OneCycleLR: Expected positive integer epochs, but got 0",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, {.max_lr = 0.1, .epochs = 0, .steps_per_epoch = 10}); }},
      {"lr.hpp:OneCycleLR", "epochs without steps_per_epoch",
       "OneCycleLR: Expected positive integer steps_per_epoch, but got None",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, {.max_lr = 0.1, .epochs = 3}); }},
      {"lr.hpp:OneCycleLR", "pct_start = 1.5", "OneCycleLR: Expected float between 0 and 1 pct_start, but got 1.5",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, {.max_lr = 0.1, .total_steps = 10, .pct_start = 1.5}); }},
      {"lr.hpp:OneCycleLR", "anneal_strategy = \"cosine\"",
       "OneCycleLR: anneal_strategy must by one of 'cos' or 'linear', instead got cosine",
       [](Fixture& f) {
         lr::OneCycleLR s(*f.optimizer, {.max_lr = 0.1, .total_steps = 10, .anneal_strategy = "cosine"});
       }},
      {"lr.hpp:OneCycleLR", "div_factor = 0", "OneCycleLR: div_factor must be a finite number > 0, got 0",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, {.max_lr = 0.1, .total_steps = 10, .div_factor = 0}); }},
      {"lr.hpp:OneCycleLR", "final_div_factor = -1", "OneCycleLR: final_div_factor must be a finite number > 0, got -1",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, {.max_lr = 0.1, .total_steps = 10, .final_div_factor = -1}); }},
      {"lr.hpp:OneCycleLR", "3 max_lrs for 2 groups", "OneCycleLR: expected 2 values for max_lr, got 3",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, {0.1, 0.2, 0.3}, 10); }},
      {"lr.hpp:OneCycleLR", "max_lr {0.1, -0.2}",
       "OneCycleLR: max_lr must be finite numbers >= 0, got -0.2 for param group 1",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, {0.1, -0.2}, 10); }},
      {"lr.hpp:OneCycleLR", "base_momentum = -0.1",
       "OneCycleLR: base_momentum must be finite numbers >= 0, got -0.1 for param group 0",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, {.max_lr = 0.1, .total_steps = 10, .base_momentum = -0.1}); }},
      {"lr.hpp:OneCycleLR", "pct_start = 1 with total_steps = 1 (a phase of no steps)",
       "OneCycleLR: float division by zero at step 0: phase 0 of the cycle has no steps (total_steps=1)",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, {.max_lr = 0.1, .total_steps = 1, .pct_start = 1.0}); }},
      {"lr.hpp:OneCycleLR", "cycle_momentum with Adagrad",
       "OneCycleLR: optimizer must support momentum with `cycle_momentum` option enabled",
       [](Fixture& f) { lr::OneCycleLR s(adagrad(f), 0.1, 10); }},
      {"lr.hpp:CyclicLR", "no base_lr", "CyclicLR: base_lr is required",
       [](Fixture& f) { lr::CyclicLR s(*f.optimizer, {.max_lr = 0.1}); }},
      {"lr.hpp:CyclicLR", "step_size_up = 0", "CyclicLR: Expected positive integer step_size_up, but got 0",
       [](Fixture& f) { lr::CyclicLR s(*f.optimizer, 0.01, 0.1, 0); }},
      {"lr.hpp:CyclicLR", "step_size_down = -4", "CyclicLR: Expected positive integer step_size_down, but got -4",
       [](Fixture& f) { lr::CyclicLR s(*f.optimizer, {.base_lr = 0.01, .max_lr = 0.1, .step_size_down = -4}); }},
      {"lr.hpp:CyclicLR", "mode = \"linear\"", "CyclicLR: mode is invalid and scale_fn is None: got mode 'linear'",
       [](Fixture& f) { lr::CyclicLR s(*f.optimizer, {.base_lr = 0.01, .max_lr = 0.1, .mode = "linear"}); }},
      {"lr.hpp:CyclicLR", "scale_mode = \"epochs\" with a scale_fn",
       "CyclicLR: scale_mode must be 'cycle' or 'iterations', got 'epochs'",
       [](Fixture& f) {
         lr::CyclicLR s(*f.optimizer, {.base_lr = 0.01, .max_lr = 0.1, .scale_fn = [](double) { return 1.0; },
                                       .scale_mode = "epochs"});
       }},
      {"lr.hpp:CyclicLR", "gamma = -1", "CyclicLR: gamma must be a finite number >= 0, got -1",
       [](Fixture& f) { lr::CyclicLR s(*f.optimizer, {.base_lr = 0.01, .max_lr = 0.1, .gamma = -1.0}); }},
      {"lr.hpp:CyclicLR", "1 max_lr value for 2 groups", "CyclicLR: expected 2 values for max_lr, got 1",
       [](Fixture& f) { lr::CyclicLR s(*f.optimizer, 0.01, std::vector<double>{0.1}); }},
      {"lr.hpp:CyclicLR", "max_momentum = nan",
       "CyclicLR: max_momentum must be finite numbers >= 0, got nan for param group 0",
       [](Fixture& f) { lr::CyclicLR s(*f.optimizer, {.base_lr = 0.01, .max_lr = 0.1, .max_momentum = nan}); }},
      {"lr.hpp:CyclicLR", "cycle_momentum with Adagrad",
       "CyclicLR: optimizer must support momentum with `cycle_momentum` option enabled",
       [](Fixture& f) { lr::CyclicLR s(adagrad(f), 0.01, 0.1); }},
      {"lr.hpp:ReduceLROnPlateau", "mode = \"minimum\"", "ReduceLROnPlateau: mode minimum is unknown!",
       [](Fixture& f) { lr::ReduceLROnPlateau s(*f.optimizer, {.mode = "minimum"}); }},
      {"lr.hpp:ReduceLROnPlateau", "threshold_mode = \"relative\"",
       "ReduceLROnPlateau: threshold mode relative is unknown!",
       [](Fixture& f) { lr::ReduceLROnPlateau s(*f.optimizer, {.threshold_mode = "relative"}); }},
      {"lr.hpp:ReduceLROnPlateau", "factor = 1", "ReduceLROnPlateau: Factor should be < 1.0, got factor=1",
       [](Fixture& f) { lr::ReduceLROnPlateau s(*f.optimizer, {.factor = 1.0}); }},
      {"lr.hpp:ReduceLROnPlateau", "factor = -0.5", "ReduceLROnPlateau: Factor should be >= 0, got factor=-0.5",
       [](Fixture& f) { lr::ReduceLROnPlateau s(*f.optimizer, {.factor = -0.5}); }},
      {"lr.hpp:ReduceLROnPlateau", "patience = -1", "ReduceLROnPlateau: patience must be a finite number >= 0, got -1",
       [](Fixture& f) { lr::ReduceLROnPlateau s(*f.optimizer, {.patience = -1}); }},
      {"lr.hpp:ReduceLROnPlateau", "cooldown = -2", "ReduceLROnPlateau: cooldown must be a finite number >= 0, got -2",
       [](Fixture& f) { lr::ReduceLROnPlateau s(*f.optimizer, {.cooldown = -2}); }},
      {"lr.hpp:ReduceLROnPlateau", "threshold = -0.0001",
       "ReduceLROnPlateau: threshold must be a finite number >= 0, got -0.0001",
       [](Fixture& f) { lr::ReduceLROnPlateau s(*f.optimizer, {.threshold = -1e-4}); }},
      {"lr.hpp:ReduceLROnPlateau", "eps = nan", "ReduceLROnPlateau: eps must be a finite number >= 0, got nan",
       [](Fixture& f) { lr::ReduceLROnPlateau s(*f.optimizer, {.eps = nan}); }},
      {"lr.hpp:ReduceLROnPlateau", "an empty min_lr list", "ReduceLROnPlateau: min_lr is required",
       [](Fixture& f) { lr::ReduceLROnPlateau s(*f.optimizer, {.min_lr = std::vector<double>{}}); }},
      {"lr.hpp:ReduceLROnPlateau", "3 min_lrs for 2 groups", "ReduceLROnPlateau: expected 2 min_lrs, got 3",
       [](Fixture& f) { lr::ReduceLROnPlateau s(*f.optimizer, {.min_lr = {0.0, 0.0, 0.0}}); }},
      {"lr.hpp:ReduceLROnPlateau", "min_lr {0.1, -1}",
       "ReduceLROnPlateau: min_lr must be finite numbers >= 0, got -1 for param group 1",
       [](Fixture& f) { lr::ReduceLROnPlateau s(*f.optimizer, {.min_lr = {0.1, -1.0}}); }},
      {"lr.hpp:ReduceLROnPlateau", "an optimizer without parameter groups",
       "ReduceLROnPlateau: the optimizer has no parameter groups",
       [](Fixture& f) { lr::ReduceLROnPlateau s(empty_optimizer(f)); }},
      {"lr.hpp:ReduceLROnPlateau", "an optimizer whose options have no lr", "do not implement get_lr()",
       [](Fixture& f) { lr::ReduceLROnPlateau s(f.last_held<NoLrOptimizer>()); },
       [](Fixture& f) { (void)no_lr_optimizer(f); }},
      {"lr.hpp:OneCycleLR", "epochs * steps_per_epoch overflows",
       "OneCycleLR: epochs * steps_per_epoch = 1099511627776 * 1073741824 overflows",
       [](Fixture& f) {
         lr::OneCycleLR s(*f.optimizer, {.max_lr = 0.1, .epochs = int64_t{1} << 40, .steps_per_epoch = int64_t{1} << 30});
       }},
      {"lr.hpp:OneCycleLR", "max_lr = nan", "OneCycleLR: max_lr must be finite numbers >= 0, got nan for param group 0",
       [](Fixture& f) { lr::OneCycleLR s(*f.optimizer, nan, 10); }},
      {"lr.hpp:CyclicLR", "base_lr {0.01, -0.01}",
       "CyclicLR: base_lr must be finite numbers >= 0, got -0.01 for param group 1",
       [](Fixture& f) { lr::CyclicLR s(*f.optimizer, {0.01, -0.01}, 0.1); }},
  };
}

/// Two shared schedulers of the fixture's optimizer (LinearLR, then ExponentialLR), probed.
void two_schedulers(Fixture& f) {
  f.add_scheduler<lr::LinearLR>(*f.optimizer, 0.5);
  f.add_scheduler<lr::ExponentialLR>(*f.optimizer, 0.9);
}

/// The fixture's first scheduler, a CosineAnnealingWarmRestarts.
lr::CosineAnnealingWarmRestarts& warm_restarts(Fixture& f) {
  return dynamic_cast<lr::CosineAnnealingWarmRestarts&>(*f.schedulers.at(0));
}

Rows lr_composite_and_step_rows() {
  return {
      {"lr.hpp:SequentialLR", "no schedulers", "SequentialLR: expects at least one scheduler, got none",
       [](Fixture& f) { lr::SequentialLR s(*f.optimizer, {}, {}); }},
      {"lr.hpp:SequentialLR", "2 schedulers, 0 milestones",
       "but got number of schedulers 2 and the number of milestones to be equal to 0",
       [](Fixture& f) { lr::SequentialLR s(*f.optimizer, {f.schedulers.at(0), f.schedulers.at(1)}, {}); },
       two_schedulers},
      {"lr.hpp:SequentialLR", "milestones {-3}", "SequentialLR: milestones must be >= 0, got milestones[0] = -3",
       [](Fixture& f) { lr::SequentialLR s(*f.optimizer, {f.schedulers.at(0), f.schedulers.at(1)}, {-3}); },
       two_schedulers},
      {"lr.hpp:SequentialLR", "a scheduler of another optimizer",
       "SequentialLR: Sequential Schedulers expects all schedulers to belong to the same optimizer, but got schedulers "
       "at index 1",
       [](Fixture& f) { lr::SequentialLR s(*f.optimizer, {f.schedulers.at(0), f.schedulers.at(1)}, {3}); },
       [](Fixture& f) {
         f.add_scheduler<lr::LinearLR>(*f.optimizer, 0.5);
         auto& other = adagrad(f);
         f.add_scheduler<lr::ExponentialLR>(other, 0.9);
       }},
      {"lr.hpp:SequentialLR", "a ChainedScheduler inside",
       "SequentialLR: the scheduler at index 1 is a ChainedScheduler",
       [](Fixture& f) { lr::SequentialLR s(*f.optimizer, {f.schedulers.at(0), f.schedulers.at(2)}, {3}); },
       [](Fixture& f) {
         two_schedulers(f);
         f.add_scheduler<lr::ChainedScheduler>(std::vector<lr::AnyScheduler>{f.schedulers.at(1)});
       }},
      {"lr.hpp:ChainedScheduler", "no schedulers", "ChainedScheduler: expects at least one scheduler, got none",
       [](Fixture&) { lr::ChainedScheduler s({}); }},
      {"lr.hpp:ChainedScheduler", "schedulers of two optimizers",
       "ChainedScheduler: ChainedScheduler expects all schedulers to belong to the same optimizer, but got schedulers "
       "at index 0 and 1 to be different",
       [](Fixture& f) { lr::ChainedScheduler s({f.schedulers.at(0), f.schedulers.at(1)}); },
       [](Fixture& f) {
         f.add_scheduler<lr::LinearLR>(*f.optimizer, 0.5);
         auto& other = adagrad(f);
         f.add_scheduler<lr::ExponentialLR>(other, 0.9);
       }},
      {"lr.hpp:AnyScheduler", "a null shared_ptr", "AnyScheduler: the scheduler pointer is null",
       [](Fixture&) { lr::AnyScheduler any(std::shared_ptr<lr::StepLR>{}); }},
      {"lr.hpp:Scheduler::step", "OneCycleLR(total_steps = 2) stepped a third time",
       "OneCycleLR::step: Tried to step 4 times. The specified number of total steps is 2",
       [](Fixture& f) { f.schedulers.at(0)->step(); },
       [](Fixture& f) {
         auto s = f.add_scheduler<lr::OneCycleLR>(*f.optimizer, 0.1, 2);
         s->step();
         s->step();
       }},
      {"lr.hpp:Scheduler::step", "SequentialLR over an exhausted OneCycleLR",
       "OneCycleLR::step: Tried to step 4 times. The specified number of total steps is 2",
       [](Fixture& f) { f.schedulers.at(1)->step(); },
       [](Fixture& f) {
         auto one = f.add_scheduler<lr::OneCycleLR>(*f.optimizer, 0.1, 2);
         auto sequential = f.add_scheduler<lr::SequentialLR>(*f.optimizer, std::vector<lr::AnyScheduler>{one},
                                                              std::vector<int64_t>{});
         sequential->step();
         sequential->step();
       }},
      {"lr.hpp:Scheduler::step", "ChainedScheduler over an exhausted OneCycleLR (ExponentialLR first)",
       "OneCycleLR::step: Tried to step 4 times. The specified number of total steps is 2",
       [](Fixture& f) { f.schedulers.at(2)->step(); },
       [](Fixture& f) {
         auto exponential = f.add_scheduler<lr::ExponentialLR>(*f.optimizer, 0.9);
         auto one = f.add_scheduler<lr::OneCycleLR>(*f.optimizer, 0.1, 2);
         auto chained = f.add_scheduler<lr::ChainedScheduler>(std::vector<lr::AnyScheduler>{exponential, one});
         chained->step();
         chained->step();
       }},
      {"lr.hpp:Scheduler::step", "a parameter group added after construction",
       "StepLR::step: the optimizer has 3 parameter groups, but had 2 when the scheduler was created",
       [](Fixture& f) { f.schedulers.at(0)->step(); },
       [](Fixture& f) {
         f.add_scheduler<lr::StepLR>(*f.optimizer, 2);
         f.optimizer->add_param_group(torch::optim::OptimizerParamGroup({torch::zeros({1}, torch::requires_grad())}));
       }},
      {"lr.hpp:CosineAnnealingWarmRestarts::step", "epoch = -1",
       "CosineAnnealingWarmRestarts::step: Expected non-negative epoch, but got -1",
       [](Fixture& f) { warm_restarts(f).step(-1.0); },
       [](Fixture& f) {
         auto s = f.add_scheduler<lr::CosineAnnealingWarmRestarts>(*f.optimizer, 4);
         s->step();
       }},
      {"lr.hpp:CosineAnnealingWarmRestarts::step", "epoch = nan",
       "CosineAnnealingWarmRestarts::step: Expected non-negative epoch, but got nan",
       [](Fixture& f) { warm_restarts(f).step(nan); },
       [](Fixture& f) { f.add_scheduler<lr::CosineAnnealingWarmRestarts>(*f.optimizer, 4); }},
      {"lr.hpp:ReduceLROnPlateau::step", "a metric of 2 elements",
       "ReduceLROnPlateau::step: the metric must be a one-element tensor, got shape [2]",
       [](Fixture& f) { f.held<lr::ReduceLROnPlateau>(0).step(f.tensors.at("metric")); },
       [](Fixture& f) {
         auto s = f.hold<lr::ReduceLROnPlateau>(*f.optimizer, lr::ReduceLROnPlateauOptions{.patience = 0});
         probed(f, s, "ReduceLROnPlateau");
         s->step(1.0);
         f.tensors["metric"] = torch::ones({2});
       }},
      {"lr.hpp:ReduceLROnPlateau::step", "an undefined metric",
       "ReduceLROnPlateau::step: the metric must be a one-element tensor, got an undefined tensor",
       [](Fixture& f) { f.held<lr::ReduceLROnPlateau>(0).step(at::Tensor()); },
       [](Fixture& f) { probed(f, f.hold<lr::ReduceLROnPlateau>(*f.optimizer), "ReduceLROnPlateau"); }},
      {"lr.hpp:ReduceLROnPlateau::step", "a parameter group added after construction",
       "ReduceLROnPlateau::step: the optimizer has 3 parameter groups, but had 2 when the scheduler was created",
       [](Fixture& f) { f.held<lr::ReduceLROnPlateau>(0).step(5.0); },
       [](Fixture& f) {
         probed(f, f.hold<lr::ReduceLROnPlateau>(*f.optimizer), "ReduceLROnPlateau");
         f.optimizer->add_param_group(torch::optim::OptimizerParamGroup({torch::zeros({1}, torch::requires_grad())}));
       }},
      {"lr.hpp:SequentialLR", "a parameter group added after its schedulers",
       "SequentialLR: the scheduler at index 0 (LinearLR) was created for 2 parameter groups, the optimizer has 3",
       [](Fixture& f) { lr::SequentialLR s(*f.optimizer, {f.schedulers.at(0), f.schedulers.at(1)}, {3}); },
       [](Fixture& f) {
         two_schedulers(f);
         f.optimizer->add_param_group(torch::optim::OptimizerParamGroup({torch::zeros({1}, torch::requires_grad())}));
       }},
      {"lr.hpp:ChainedScheduler", "a parameter group added after its schedulers",
       "ChainedScheduler: the scheduler at index 0 (LinearLR) was created for 2 parameter groups, the optimizer has 3",
       [](Fixture& f) { lr::ChainedScheduler s({f.schedulers.at(0), f.schedulers.at(1)}); },
       [](Fixture& f) {
         two_schedulers(f);
         f.optimizer->add_param_group(torch::optim::OptimizerParamGroup({torch::zeros({1}, torch::requires_grad())}));
       }},
      {"lr.hpp:CosineAnnealingWarmRestarts::step", "epoch = inf", "Expected non-negative epoch, but got inf",
       [](Fixture& f) { warm_restarts(f).step(infinity); },
       [](Fixture& f) { f.add_scheduler<lr::CosineAnnealingWarmRestarts>(*f.optimizer, 4); }},
  };
}

/// The fixture's StepLR(step_size 3), stepped once, probed; `archive` is kept after it.
void step_lr_and(Fixture& f, const std::function<std::shared_ptr<torch::serialize::InputArchive>(Fixture&)>& archive) {
  auto s = f.add_scheduler<lr::StepLR>(*f.optimizer, 3);
  s->step();
  (void)archive(f);
}
std::shared_ptr<lr::Scheduler> loading(Fixture& f) { return f.schedulers.at(0); }
torch::serialize::InputArchive& archive_of(Fixture& f) {
  return f.last_held<torch::serialize::InputArchive>();
}

Rows lr_load_rows() {
  return {
      {"lr.hpp:Scheduler::load", "an archive without a scheduler", "StepLR::load: the archive has no 'lr_scheduler'",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) { step_lr_and(f, [](Fixture& g) { return g.hold<torch::serialize::InputArchive>(); }); }},
      {"lr.hpp:Scheduler::load", "an ExponentialLR's state",
       "StepLR::load: the archive holds the state of a scheduler of type ExponentialLR, not StepLR",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) {
         step_lr_and(f, [](Fixture& g) {
           return saved_state(g, [](torch::optim::Optimizer& o) { return lr::ExponentialLR(o, 0.5); });
         });
       }},
      {"lr.hpp:Scheduler::load", "a state saved for 1 parameter group",
       "StepLR::load: the archive was saved for 1 parameter groups, the optimizer has 2",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) {
         step_lr_and(f, [](Fixture& g) {
           return saved_state(g, [](torch::optim::Optimizer& o) { return lr::StepLR(o, 5); }, 1);
         });
       }},
      {"lr.hpp:Scheduler::load", "step_size = 0 in the archive",
       "StepLR::load: Expected positive integer step_size, but got 0",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) {
         step_lr_and(f, [](Fixture& g) {
           auto entries = scheduler_entries("StepLR");
           entries.emplace_back("step_size", c10::IValue(int64_t{0}));
           entries.emplace_back("gamma", c10::IValue(0.1));
           return handmade_archive(g, entries);
         });
       }},
      {"lr.hpp:Scheduler::load", "gamma stored as an integer",
       "StepLR::load: 'gamma' in the archive should be a float, got a value of type Int",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) {
         step_lr_and(f, [](Fixture& g) {
           auto entries = scheduler_entries("StepLR");
           entries.emplace_back("step_size", c10::IValue(int64_t{2}));
           entries.emplace_back("gamma", c10::IValue(int64_t{1}));
           return handmade_archive(g, entries);
         });
       }},
      {"lr.hpp:Scheduler::load", "an archive with only the type",
       "StepLR::load: the archive has no 'last_epoch' (was it saved by this kind of scheduler?)",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) {
         step_lr_and(f, [](Fixture& g) { return handmade_archive(g, {{"type", c10::IValue(std::string("StepLR"))}}); });
       }},
      {"lr.hpp:Scheduler::load", "CosineAnnealingWarmRestarts: T_i = 0 in the archive",
       "CosineAnnealingWarmRestarts::load: T_i in the archive must be positive, got 0",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) {
         auto s = f.add_scheduler<lr::CosineAnnealingWarmRestarts>(*f.optimizer, 4);
         s->step();
         auto entries = scheduler_entries("CosineAnnealingWarmRestarts");
         entries.emplace_back("T_0", c10::IValue(int64_t{4}));
         entries.emplace_back("T_mult", c10::IValue(int64_t{1}));
         entries.emplace_back("eta_min", c10::IValue(0.0));
         entries.emplace_back("T_cur", c10::IValue(1.0));
         entries.emplace_back("T_i", c10::IValue(int64_t{0}));
         (void)handmade_archive(f, entries);
       }},
      {"lr.hpp:Scheduler::load", "CyclicLR: saved without a custom scale_fn, loaded with one",
       "CyclicLR::load: the archive was saved without a scale_fn, this scheduler has one",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) {
         const lr::CyclicLROptions options{.base_lr = 0.01, .max_lr = 0.1, .scale_fn = [](double) { return 0.5; }};
         auto s = f.add_scheduler<lr::CyclicLR>(*f.optimizer, options);
         s->step();
         (void)saved_state(f, [](torch::optim::Optimizer& o) { return lr::CyclicLR(o, 0.01, 0.1); });
       }},
      {"lr.hpp:Scheduler::load", "ChainedScheduler: a state of 2 schedulers into 1",
       "ChainedScheduler::load: the archive holds 2 schedulers, this ChainedScheduler has 1",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) {
         auto chained =
             f.add_scheduler<lr::ChainedScheduler>(std::vector<lr::AnyScheduler>{lr::ExponentialLR(*f.optimizer, 0.9)});
         chained->step();
         (void)saved_state(f, [](torch::optim::Optimizer& o) {
           return lr::ChainedScheduler({lr::ExponentialLR(o, 0.9), lr::StepLR(o, 2)});
         });
       }},
      {"lr.hpp:Scheduler::load", "SequentialLR: a nested scheduler's bad value",
       "SequentialLR::load (schedulers[1]): gamma must be a finite number >= 0, got -2",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) {
         auto sequential = f.add_scheduler<lr::SequentialLR>(*f.optimizer,
                                      std::vector<lr::AnyScheduler>{lr::LinearLR(*f.optimizer, 0.5),
                                                                    lr::ExponentialLR(*f.optimizer, 0.9)},
                                      std::vector<int64_t>{2});
         sequential->step();
         torch::serialize::OutputArchive out;
         torch::serialize::OutputArchive state(out.compilation_unit());
         for (const auto& [key, value] : scheduler_entries("SequentialLR")) state.write(key, value);
         state.write("milestones", c10::IValue(c10::List<int64_t>({2})));
         state.write("scheduler_count", c10::IValue(int64_t{2}));
         torch::serialize::OutputArchive first(out.compilation_unit());
         for (const auto& [key, value] : scheduler_entries("LinearLR")) first.write(key, value);
         first.write("start_factor", c10::IValue(0.5));
         first.write("end_factor", c10::IValue(1.0));
         first.write("total_iters", c10::IValue(int64_t{5}));
         state.write("schedulers/0", first);
         torch::serialize::OutputArchive second(out.compilation_unit());
         for (const auto& [key, value] : scheduler_entries("ExponentialLR")) second.write(key, value);
         second.write("gamma", c10::IValue(-2.0));
         state.write("schedulers/1", second);
         out.write("lr_scheduler", state);
         (void)reopened(f, out);
       }},
      {"lr.hpp:Scheduler::load", "OneCycleLR: a state cycling SGD's momentum into an Adam optimizer",
       "OneCycleLR::load: the archive cycles the momentum, which this optimizer does not have",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) {
         std::vector<torch::optim::OptimizerParamGroup> groups;
         groups.emplace_back(std::vector<at::Tensor>{f.parameter("0.weight"), f.parameter("0.bias")});
         groups.emplace_back(std::vector<at::Tensor>{f.parameter("4.weight"), f.parameter("4.bias")});
         auto& adam = *f.hold<torch::optim::Adam>(std::move(groups), torch::optim::AdamOptions(1e-3));
         auto s = f.add_scheduler<lr::OneCycleLR>(adam, 0.1, 10);
         s->step();
         f.probe("Adam", [&adam] { return optimizer_state(adam); });
         (void)saved_state(f, [](torch::optim::Optimizer& o) { return lr::OneCycleLR(o, 0.1, 10); });
       }},
      {"lr.hpp:ReduceLROnPlateau::load", "an archive without a scheduler",
       "ReduceLROnPlateau::load: the archive has no 'lr_scheduler'",
       [](Fixture& f) { f.held<lr::ReduceLROnPlateau>(0).load(archive_of(f)); },
       [](Fixture& f) {
         probed(f, f.hold<lr::ReduceLROnPlateau>(*f.optimizer), "ReduceLROnPlateau");
         (void)f.hold<torch::serialize::InputArchive>();
       }},
      {"lr.hpp:ReduceLROnPlateau::load", "a StepLR's state",
       "ReduceLROnPlateau::load: the archive holds the state of a scheduler of type StepLR, not ReduceLROnPlateau",
       [](Fixture& f) { f.held<lr::ReduceLROnPlateau>(0).load(archive_of(f)); },
       [](Fixture& f) {
         probed(f, f.hold<lr::ReduceLROnPlateau>(*f.optimizer), "ReduceLROnPlateau");
         (void)saved_state(f, [](torch::optim::Optimizer& o) { return lr::StepLR(o, 5); });
       }},
      {"lr.hpp:ReduceLROnPlateau::load", "a state saved for 1 parameter group",
       "ReduceLROnPlateau::load: the archive was saved for 1 parameter groups, the optimizer has 2",
       [](Fixture& f) { f.held<lr::ReduceLROnPlateau>(0).load(archive_of(f)); },
       [](Fixture& f) {
         auto s = probed(f, f.hold<lr::ReduceLROnPlateau>(*f.optimizer, lr::ReduceLROnPlateauOptions{.patience = 0}),
                         "ReduceLROnPlateau");
         s->step(1.0);
         s->step(2.0);
         std::vector<torch::optim::OptimizerParamGroup> one;
         one.emplace_back(std::vector<at::Tensor>{torch::zeros({2}, torch::requires_grad())});
         torch::optim::SGD other(std::move(one), torch::optim::SGDOptions(0.1));
         lr::ReduceLROnPlateau saved(other);
         torch::serialize::OutputArchive out;
         saved.save(out);
         (void)reopened(f, out);
       }},
      {"lr.hpp:ReduceLROnPlateau::load", "factor = 2 in the archive",
       "ReduceLROnPlateau::load: Factor should be < 1.0, got factor=2",
       [](Fixture& f) { f.held<lr::ReduceLROnPlateau>(0).load(archive_of(f)); },
       [](Fixture& f) {
         auto s = probed(f, f.hold<lr::ReduceLROnPlateau>(*f.optimizer, lr::ReduceLROnPlateauOptions{.patience = 0}),
                         "ReduceLROnPlateau");
         s->step(1.0);
         (void)handmade_archive(f, {{"type", c10::IValue(std::string("ReduceLROnPlateau"))},
                                    {"mode", c10::IValue(std::string("min"))},
                                    {"factor", c10::IValue(2.0)},
                                    {"patience", c10::IValue(int64_t{1})},
                                    {"threshold", c10::IValue(1e-4)},
                                    {"threshold_mode", c10::IValue(std::string("rel"))},
                                    {"cooldown", c10::IValue(int64_t{0})},
                                    {"min_lr", doubles({0.0, 0.0})},
                                    {"eps", c10::IValue(1e-8)},
                                    {"best", c10::IValue(0.5)},
                                    {"num_bad_epochs", c10::IValue(int64_t{0})},
                                    {"cooldown_counter", c10::IValue(int64_t{0})},
                                    {"last_epoch", c10::IValue(int64_t{9})},
                                    {"last_lr", doubles({0.5, 0.5})},
                                    {"optimizer_lrs", doubles({0.5, 0.5})}});
       }},
      {"lr.hpp:ReduceLROnPlateau::load", "patience stored as a float",
       "ReduceLROnPlateau::load: 'patience' in the archive should be an integer, got a value of type Double",
       [](Fixture& f) { f.held<lr::ReduceLROnPlateau>(0).load(archive_of(f)); },
       [](Fixture& f) {
         probed(f, f.hold<lr::ReduceLROnPlateau>(*f.optimizer), "ReduceLROnPlateau");
         (void)handmade_archive(f, {{"type", c10::IValue(std::string("ReduceLROnPlateau"))},
                                    {"mode", c10::IValue(std::string("max"))},
                                    {"factor", c10::IValue(0.5)},
                                    {"patience", c10::IValue(1.5)}});
       }},
      {"lr.hpp:Scheduler::load", "'lr_scheduler' is a number, not a nested archive",
       "StepLR::load: the archive has no 'lr_scheduler'",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) {
         f.add_scheduler<lr::StepLR>(*f.optimizer, 3);
         torch::serialize::OutputArchive out;
         out.write("lr_scheduler", c10::IValue(int64_t{3}));
         (void)reopened(f, out);
       }},
      {"lr.hpp:Scheduler::load", "base_lrs as integers",
       "StepLR::load: 'base_lrs' in the archive should be a list of floats",
       [](Fixture& f) { loading(f)->load(archive_of(f)); },
       [](Fixture& f) {
         f.add_scheduler<lr::StepLR>(*f.optimizer, 3);
         auto entries = scheduler_entries("StepLR");
         entries[3].second = c10::IValue(c10::List<int64_t>({1, 2}));
         entries.emplace_back("step_size", c10::IValue(int64_t{2}));
         entries.emplace_back("gamma", c10::IValue(0.5));
         (void)handmade_archive(f, entries);
       }},
  };
}

#if TORCHKIT_BAD_INPUT_OPENCV
Rows opencv_rows() {
  return {
      {"opencv.hpp:as_tensor", "an empty Mat", "as_tensor: the Mat is empty (0x0, type CV_8UC1)",
       [](Fixture& f) { (void)torchkit::as_tensor(f.mats.at("empty")); },
       [](Fixture& f) { f.mats["empty"] = cv::Mat(); }},
      {"opencv.hpp:as_tensor", "a 3-d Mat", "as_tensor: the Mat has 3 dimensions",
       [](Fixture& f) { (void)torchkit::as_tensor(f.mats.at("cube")); },
       [](Fixture& f) {
         const int sizes[] = {2, 3, 4};
         f.mats["cube"] = cv::Mat(3, sizes, CV_8U, cv::Scalar(7));
       }},
      {"opencv.hpp:as_tensor", "a CV_16UC3 Mat", "as_tensor: the Mat's type CV_16UC3 has no tensor dtype",
       [](Fixture& f) { (void)torchkit::as_tensor(f.mats.at("u16")); },
       [](Fixture& f) { f.mats["u16"] = cv::Mat(4, 5, CV_16UC3, cv::Scalar(1, 2, 3)); }},
      {"opencv.hpp:letterbox", "an empty Mat", "letterbox: the Mat is empty (0x0)",
       [](Fixture& f) { (void)torchkit::letterbox(f.mats.at("empty")); },
       [](Fixture& f) { f.mats["empty"] = cv::Mat(); }},
      {"opencv.hpp:letterbox", "a CV_8UC2 Mat", "letterbox: the Mat has 2 channels (type CV_8UC2)",
       [](Fixture& f) { (void)torchkit::letterbox(f.mats.at("two")); },
       [](Fixture& f) { f.mats["two"] = cv::Mat(4, 5, CV_8UC2, cv::Scalar(1, 2)); }},
      {"opencv.hpp:letterbox", "size {640, -1} (a good Mat)", "letterbox: size is {640, -1}",
       [](Fixture& f) { (void)torchkit::letterbox(f.mats.at("good"), {.size = {640, -1}}); },
       [](Fixture& f) { f.mats["good"] = cv::Mat(4, 5, CV_8UC3, cv::Scalar(1, 2, 3)); }},
      {"opencv.hpp:image_to_batch", "an empty Mat", "image_to_batch: the Mat is empty (0x0)",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.mats.at("empty")); },
       [](Fixture& f) { f.mats["empty"] = cv::Mat(); }},
      {"opencv.hpp:image_to_batch", "a CV_16UC3 Mat",
       "image_to_batch: the Mat has type CV_16UC3; expected CV_8U or CV_32F",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.mats.at("u16")); },
       [](Fixture& f) { f.mats["u16"] = cv::Mat(4, 5, CV_16UC3, cv::Scalar(1, 2, 3)); }},
      {"opencv.hpp:image_to_batch", "a CV_8UC2 Mat", "image_to_batch: the Mat has 2 channels (type CV_8UC2)",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.mats.at("two")); },
       [](Fixture& f) { f.mats["two"] = cv::Mat(4, 5, CV_8UC2, cv::Scalar(1, 2)); }},
      {"opencv.hpp:image_to_batch", "std = 0 (a good Mat)", "image_to_batch: std[0] is 0",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.mats.at("bgr"), {.std = {0.0}}); },
       [](Fixture& f) { f.mats["bgr"] = cv::Mat(4, 5, CV_8UC3, cv::Scalar(10, 20, 30)); }},
      {"opencv.hpp:image_to_batch", "2 means for a 3-channel Mat ROI",
       "image_to_batch: mean has 2 values for an image of 3 channels",
       [](Fixture& f) { (void)torchkit::image_to_batch(f.mats.at("bgr")(cv::Rect(1, 1, 3, 2)), {.mean = {0.1, 0.2}}); },
       [](Fixture& f) { f.mats["bgr"] = cv::Mat(4, 5, CV_8UC3, cv::Scalar(10, 20, 30)); }},
      {"opencv.hpp:images_to_batch", "Mat 1 of type CV_16UC3", "images_to_batch: Mat 1 has type CV_16UC3",
       [](Fixture& f) { (void)torchkit::images_to_batch(std::vector<cv::Mat>{f.mats.at("bgr"), f.mats.at("u16")}); },
       [](Fixture& f) {
         f.mats["bgr"] = cv::Mat(4, 5, CV_8UC3, cv::Scalar(10, 20, 30));
         f.mats["u16"] = cv::Mat(4, 5, CV_16UC3, cv::Scalar(1, 2, 3));
       }},
      {"opencv.hpp:images_to_batch", "Mats of two sizes",
       "images_to_batch: image 1 has shape [2, 5, 3] but image 0 has [4, 5, 3]",
       [](Fixture& f) { (void)torchkit::images_to_batch(std::vector<cv::Mat>{f.mats.at("bgr"), f.mats.at("short")}); },
       [](Fixture& f) {
         f.mats["bgr"] = cv::Mat(4, 5, CV_8UC3, cv::Scalar(10, 20, 30));
         f.mats["short"] = cv::Mat(2, 5, CV_8UC3, cv::Scalar(10, 20, 30));
       }},
      {"opencv.hpp:to_mat", "an undefined tensor", "to_mat: the tensor is undefined",
       [](Fixture&) { (void)torchkit::to_mat(at::Tensor()); }},
      {"opencv.hpp:to_mat", "a batch of 2 images", "to_mat: the tensor is a batch of 2 images (shape [2, 3, 4, 5])",
       [](Fixture& f) { (void)torchkit::to_mat(f.tensors.at("batch")); },
       [](Fixture& f) { f.tensors["batch"] = torch::zeros({2, 3, 4, 5}); }},
      {"opencv.hpp:to_mat", "an ambiguous shape [3, 4, 3]",
       "to_mat: cannot tell the channels of shape [3, 4, 3]: both [H, W, C] and [C, H, W] fit",
       [](Fixture& f) { (void)torchkit::to_mat(f.tensors.at("ambiguous")); },
       [](Fixture& f) { f.tensors["ambiguous"] = torch::zeros({3, 4, 3}); }},
      {"opencv.hpp:to_mat", "no channel count at either end [5, 4, 6]",
       "to_mat: cannot tell the channels of shape [5, 4, 6]: neither end is a channel count",
       [](Fixture& f) { (void)torchkit::to_mat(f.tensors.at("odd")); },
       [](Fixture& f) { f.tensors["odd"] = torch::zeros({5, 4, 6}); }},
      {"opencv.hpp:to_mat", "a 5-d tensor", "to_mat: the tensor has shape [1, 1, 2, 2, 3]",
       [](Fixture& f) { (void)torchkit::to_mat(f.tensors.at("five")); },
       [](Fixture& f) { f.tensors["five"] = torch::zeros({1, 1, 2, 2, 3}); }},
      {"opencv.hpp:to_mat", "a 2-d tensor as CHW", "to_mat: a 2-d tensor (shape [4, 5]) cannot be [C, H, W]",
       [](Fixture& f) { (void)torchkit::to_mat(f.tensors.at("plane"), torchkit::ImageLayout::CHW); },
       [](Fixture& f) { f.tensors["plane"] = torch::zeros({4, 5}); }},
      {"opencv.hpp:to_mat", "an empty image [4, 0, 3] as HWC", "to_mat: the tensor is empty (shape [4, 0, 3])",
       [](Fixture& f) { (void)torchkit::to_mat(f.tensors.at("empty"), torchkit::ImageLayout::HWC); },
       [](Fixture& f) { f.tensors["empty"] = torch::zeros({4, 0, 3}); }},
      {"opencv.hpp:to_mat", "600 channels", "to_mat: 600 channels (shape [2, 2, 600]) is more than OpenCV's 512",
       [](Fixture& f) { (void)torchkit::to_mat(f.tensors.at("deep"), torchkit::ImageLayout::HWC); },
       [](Fixture& f) { f.tensors["deep"] = torch::zeros({2, 2, 600}); }},
      {"opencv.hpp:to_mat", "an int64 tensor", "to_mat: dtype Long has no OpenCV depth",
       [](Fixture& f) { (void)torchkit::to_mat(f.tensors.at("long")); },
       [](Fixture& f) { f.tensors["long"] = torch::zeros({6, 5, 3}, torch::kLong); }},
  };
}
#endif


/// Every row that runs.
Rows regression_rows();

Rows all_rows() {
  Rows rows;
  append(rows, batch_rows());
  append(rows, clip_rows());
  append(rows, amp_rows());
  append(rows, devices_rows());
  append(rows, distributed_rows());
  append(rows, freeze_rows());
  append(rows, averaging_rows());
  append(rows, checkpoint_rows());
  append(rows, grad_mode_memory_rows());
  append(rows, one_hot_rows());
  append(rows, param_groups_rows());
  append(rows, summary_rows());
  append(rows, capture_rows());
  append(rows, lr_constructor_rows());
  append(rows, lr_composite_and_step_rows());
  append(rows, lr_load_rows());
#if TORCHKIT_BAD_INPUT_OPENCV
  append(rows, opencv_rows());
#endif
  append(rows, regression_rows());
  return rows;
}

/// Rows that exposed library bugs when the table was first written (each `// Was:` says what went
/// wrong before the fix); they stay as regression rows.
Rows regression_rows() {
  // An internally overlapping gradient (expanded, stride 0, e.g. `p.mutable_grad() =
  // torch::full({1}, 3.0).expand({5})`) has the parameter's shape and a float dtype, so it passes
  // every check in detail::clip::collect. The clip then writes every other gradient first and
  // only fails when it writes this one (copy_/mul_/clamp into overlapping memory): LibTorch's
  // c10::Error escapes instead of torchkit::Error, and the other gradients are already scaled,
  // against "No gradient changes when it throws" / "nothing changes when it throws".
  const auto expanded_grad = [](Fixture& f) { set_grad(f, "4.bias", torch::full({1}, 3.0).expand({5})); };
  Rows rows{
      // Was: c10::Error ("more than one element of the written-to tensor refers to a single memory
      // location") after gradients 0..4 were scaled in place (fast path, raw-memory scaling).
      {"clip.hpp:clip_grad_norm_", "an expanded (stride-0, overlapping) gradient",
       "clip_grad_norm_: the gradient of parameter 5 ('4.bias')",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1e-3); }, expanded_grad},
      // Was: the same on the reference path (foreach = false): mul_ of gradients 0..4 done, then
      // c10::Error from mul_ on the overlapping one.
      {"clip.hpp:clip_grad_norm_", "an expanded (stride-0, overlapping) gradient, foreach = false",
       "clip_grad_norm_: the gradient of parameter 5 ('4.bias')",
       [](Fixture& f) { (void)torchkit::clip_grad_norm_(f.model, 1e-3, 2.0, {.foreach = false}); }, expanded_grad},
      // Was: clip_grad_value_ clamps gradients 0..4 in place, then copy_ into the overlapping one
      // throws c10::Error.
      {"clip.hpp:clip_grad_value_", "an expanded (stride-0, overlapping) gradient",
       "clip_grad_value_: the gradient of parameter 5 ('4.bias')",
       [](Fixture& f) { torchkit::clip_grad_value_(f.model, 1e-3); }, expanded_grad},
      // Was: CosineAnnealingWarmRestarts::step(epoch) rejects negative and non-finite epochs but
      // not a finite epoch beyond int64: step(1e30) with T_mult = 2 overflows `power` (T_i becomes
      // 0, every lr becomes NaN) and `static_cast<int64_t>(floor(epoch))` is undefined
      // (last_epoch = INT64_MIN here); nothing is thrown.
      {"lr.hpp:CosineAnnealingWarmRestarts::step", "epoch = 1e30 (beyond int64)", "1e+30",
       [](Fixture& f) { warm_restarts(f).step(1e30); },
       [](Fixture& f) { f.add_scheduler<lr::CosineAnnealingWarmRestarts>(*f.optimizer, 1, 2); }},
  };
#if TORCHKIT_HAS_C10D
  // Was: distributed clip_grad_norm_ scales through the same FastPass: the allreduce runs, gradients
  // 0..4 are scaled, then c10::Error.
  rows.push_back({"distributed.hpp:clip_grad_norm_", "an expanded (stride-0, overlapping) gradient",
                  "clip_grad_norm_: the gradient of parameter 5 ('4.bias')",
                  [](Fixture& f) {
                    SoloGroup group;
                    (void)torchkit::clip_grad_norm_(f.model, 1e-3, 2.0, group);
                  },
                  expanded_grad});
#endif
  return rows;
}

/// Runs one row: it must throw torchkit::Error containing row.message and change nothing.
void check_row(const Row& row) {
  INFO("row: ", row.function, " | ", row.input);
  CHECK_MESSAGE(!row.message.empty(), "a row must give the message it expects");
  CHECK_MESSAGE(static_cast<bool>(row.call), "a row must give the call");
  if (row.message.empty() || !row.call) return;
  Fixture fixture;
  if (row.setup) {
    try {
      row.setup(fixture);
    } catch (const std::exception& error) {
      FAIL_CHECK("the row's setup threw: ", error.what());
      return;
    }
  }
  const Snapshot before = snapshot(fixture);
  bool threw_error = false;
  std::string message;
  std::string other;
  try {
    row.call(fixture);
  } catch (const torchkit::Error& error) {
    threw_error = true;
    message = error.what();
  } catch (const c10::Error& error) {
    other = fmt::format("c10::Error: {}", error.what_without_backtrace());
  } catch (const std::exception& error) {
    other = fmt::format("{}: {}", c10::demangle(typeid(error).name()), error.what());
  } catch (...) {
    other = "an exception of an unknown type";
  }
  CHECK_MESSAGE(threw_error, "expected torchkit::Error, got ", other.empty() ? std::string("no exception") : other);
  CHECK_MESSAGE(message.find(row.message) != std::string::npos, "message: ", message,
                "\nexpected it to contain: ", row.message);
  const auto differences = differences_between(before, snapshot(fixture));
  std::string listed;
  for (const auto& difference : differences) listed += "\n  " + difference;
  CHECK_MESSAGE(differences.empty(), "the failed call changed state:", listed);
}

// ---------------------------------------------------------------------------------------------
// The coverage check: which functions the public headers document with @throws.
// ---------------------------------------------------------------------------------------------

bool is_identifier_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_'; }

/// The text with comments and string/character literals replaced by spaces (newlines kept),
/// so that braces and keywords inside them do not count.
std::string code_only(const std::string& text) {
  std::string out = text;
  const std::size_t n = text.size();
  const auto blank = [&](std::size_t from, std::size_t to) {
    for (std::size_t k = from; k < std::min(to, n); ++k) {
      if (out[k] != '\n') out[k] = ' ';
    }
  };
  std::size_t i = 0;
  while (i < n) {
    const char c = text[i];
    const char next = i + 1 < n ? text[i + 1] : '\0';
    if (c == '/' && next == '/') {
      const std::size_t end = std::min(text.find('\n', i), n);
      blank(i, end);
      i = end;
    } else if (c == '/' && next == '*') {
      const std::size_t close = text.find("*/", i + 2);
      const std::size_t end = close == std::string::npos ? n : close + 2;
      blank(i, end);
      i = end;
    } else if (c == 'R' && next == '"' && (i == 0 || !is_identifier_char(text[i - 1])) &&
               text.find('(', i + 2) != std::string::npos) {
      const std::size_t open = text.find('(', i + 2);
      const std::string close = ")" + text.substr(i + 2, open - i - 2) + "\"";
      const std::size_t found = text.find(close, open + 1);
      const std::size_t end = found == std::string::npos ? n : found + close.size();
      blank(i, end);
      i = end;
    } else if (c == '"' || (c == '\'' && (i == 0 || !is_identifier_char(text[i - 1])))) {
      std::size_t j = i + 1;
      while (j < n && text[j] != c && text[j] != '\n') {
        j += text[j] == '\\' ? 2 : 1;
      }
      blank(i, j + 1);
      i = j + 1;
    } else {
      ++i;
    }
  }
  return out;
}

std::size_t skip_spaces(const std::string& s, std::size_t pos) {
  while (pos < s.size() && std::isspace(static_cast<unsigned char>(s[pos])) != 0) ++pos;
  return pos;
}

/// For each line, the classes (and structs) it lies in: "ParamGroupBuilder", "A::B", or "".
std::vector<std::string> class_scope_of_lines(const std::string& code) {
  std::vector<std::string> scopes{""};
  std::vector<std::pair<std::string, int>> stack;  // class name, brace depth of its body
  std::optional<std::string> pending;              // a class head whose '{' comes next
  int depth = 0;
  const auto current = [&] {
    std::string scope;
    for (const auto& [name, level] : stack) scope += (scope.empty() ? "" : "::") + name;
    return scope;
  };
  for (std::size_t i = 0; i < code.size();) {
    const char c = code[i];
    if (c == '\n') {
      scopes.push_back(current());
      ++i;
      continue;
    }
    const bool word_start = std::isalpha(static_cast<unsigned char>(c)) != 0 || c == '_';
    if (word_start && (i == 0 || !is_identifier_char(code[i - 1]))) {
      std::size_t end = i;
      while (end < code.size() && is_identifier_char(code[end])) ++end;
      const std::string word = code.substr(i, end - i);
      i = end;
      if (word == "class" || word == "struct") {
        const std::size_t name_begin = skip_spaces(code, end);
        std::size_t name_end = name_begin;
        while (name_end < code.size() && is_identifier_char(code[name_end])) ++name_end;
        if (name_end > name_begin) {
          std::size_t after = skip_spaces(code, name_end);
          const char after_final = after + 5 < code.size() ? code[after + 5] : ' ';
          if (code.compare(after, 5, "final") == 0 && !is_identifier_char(after_final)) {
            after = skip_spaces(code, after + 5);
          }
          const bool base_clause = after < code.size() && code[after] == ':' &&
                                   (after + 1 >= code.size() || code[after + 1] != ':');
          const bool body = base_clause || (after < code.size() && code[after] == '{');
          if (body) pending = code.substr(name_begin, name_end - name_begin);
        }
      }
      continue;
    }
    if (c == '{') {
      ++depth;
      if (pending) {
        stack.emplace_back(*pending, depth);
        pending.reset();
      }
    } else if (c == '}') {
      if (!stack.empty() && stack.back().second == depth) stack.pop_back();
      --depth;
    } else if (c == ';') {
      pending.reset();
    }
    ++i;
  }
  return scopes;
}

/// The index just past the bracket that closes the one at `pos`.
std::size_t skip_balanced(const std::string& s, std::size_t pos, char open, char close) {
  int level = 0;
  for (; pos < s.size(); ++pos) {
    if (s[pos] == open) ++level;
    if (s[pos] == close && --level == 0) return pos + 1;
  }
  return s.size();
}

/// The name a declaration declares: "summary" for `template <...> requires ... [[nodiscard]]
/// Summary summary(...)`, "EvalScope" for `class EvalScope {`; "" when none is found.
std::string declared_name(const std::string& declaration) {
  const std::string& s = declaration;
  std::size_t pos = 0;
  for (;;) {
    pos = skip_spaces(s, pos);
    const auto keyword = [&](std::string_view word) {
      return s.compare(pos, word.size(), word) == 0 &&
             (pos + word.size() >= s.size() || !is_identifier_char(s[pos + word.size()]));
    };
    if (keyword("template")) {
      pos = skip_spaces(s, pos + 8);
      if (pos < s.size() && s[pos] == '<') pos = skip_balanced(s, pos, '<', '>');
    } else if (keyword("requires")) {
      pos += 8;
      for (;;) {  // primary (&& | || primary)*
        pos = skip_spaces(s, pos);
        if (pos < s.size() && s[pos] == '(') {
          pos = skip_balanced(s, pos, '(', ')');
        } else {
          while (pos < s.size() && (is_identifier_char(s[pos]) || s[pos] == ':' || s[pos] == '!')) ++pos;
          pos = skip_spaces(s, pos);
          if (pos < s.size() && s[pos] == '<') pos = skip_balanced(s, pos, '<', '>');
        }
        pos = skip_spaces(s, pos);
        if (s.compare(pos, 2, "&&") == 0 || s.compare(pos, 2, "||") == 0) {
          pos += 2;
          continue;
        }
        break;
      }
    } else if (s.compare(pos, 2, "[[") == 0) {
      const std::size_t end = s.find("]]", pos);
      pos = end == std::string::npos ? s.size() : end + 2;
    } else {
      break;
    }
  }
  const std::string rest = s.substr(pos);
  const std::size_t paren = rest.find('(');
  for (const std::string_view head : {std::string_view("class "), std::string_view("struct ")}) {
    if (rest.compare(0, head.size(), head) == 0 && (paren == std::string::npos || rest.find('{') < paren)) {
      std::size_t begin = skip_spaces(rest, head.size());
      std::size_t end = begin;
      while (end < rest.size() && is_identifier_char(rest[end])) ++end;
      return rest.substr(begin, end - begin);
    }
  }
  if (paren == std::string::npos) return "";
  if (const std::size_t op = rest.rfind("operator", paren); op != std::string::npos) {
    std::string symbols = rest.substr(op + 8, paren - op - 8);
    std::erase_if(symbols, [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; });
    const bool is_operator_name = std::none_of(symbols.begin(), symbols.end(), is_identifier_char) &&
                                  (op == 0 || !is_identifier_char(rest[op - 1]));
    if (is_operator_name) {
      if (symbols.empty() && rest.compare(paren, 2, "()") == 0) return "operator()";
      return "operator" + symbols;
    }
  }
  std::size_t end = paren;
  while (end > 0 && std::isspace(static_cast<unsigned char>(rest[end - 1])) != 0) --end;
  std::size_t begin = end;
  // The identifier, with any qualification (`NamePattern::matches`, `~Guard`).
  while (begin > 0 && (is_identifier_char(rest[begin - 1]) || rest[begin - 1] == ':' || rest[begin - 1] == '~')) {
    --begin;
  }
  while (begin < end && rest[begin] == ':') ++begin;
  return rest.substr(begin, end - begin);
}

struct Documented {
  std::string function;  ///< "<header>:<qualified name>"
  int line = 0;          ///< of the declaration, 1-based
};

struct HeaderScan {
  std::vector<Documented> documented;
  std::vector<std::string> unparsed;  ///< "<header>:<line>" of @throws blocks without a declaration
  std::size_t throws_lines = 0;       ///< lines with "@throws" in a /// comment
};

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::string line;
  std::istringstream in(text);
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

void scan_header(const std::filesystem::path& path, HeaderScan& scan) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  const std::string header = path.filename().string();
  const std::vector<std::string> lines = lines_of(text);
  const std::vector<std::string> code = lines_of(code_only(text));
  const std::vector<std::string> scopes = class_scope_of_lines(code_only(text));
  const auto is_doc = [&](std::size_t index) {
    const std::string& line = lines[index];
    const std::size_t first = line.find_first_not_of(" \t");
    return first != std::string::npos && line.compare(first, 3, "///") == 0;
  };
  for (std::size_t index = 0; index < lines.size();) {
    if (!is_doc(index)) {
      ++index;
      continue;
    }
    bool throws = false;
    for (; index < lines.size() && is_doc(index); ++index) {
      if (lines[index].find("@throws") != std::string::npos) {
        throws = true;
        ++scan.throws_lines;
      }
    }
    if (!throws) continue;
    // The declaration: the lines after the block up to the one that opens a body or ends it.
    std::string declaration;
    for (std::size_t k = index; k < std::min(code.size(), index + 12); ++k) {
      declaration += code[k] + " ";
      if (code[k].find_first_of("{;") != std::string::npos) break;
    }
    const std::string name = declared_name(declaration);
    if (name.empty()) {
      scan.unparsed.push_back(fmt::format("{}:{}", header, index + 1));
      continue;
    }
    const std::string& scope = index < scopes.size() ? scopes[index] : scopes.back();
    scan.documented.push_back(
        {fmt::format("{}:{}{}{}", header, scope, scope.empty() ? "" : "::", name), static_cast<int>(index + 1)});
  }
}

}  // namespace

TEST_CASE("every documented bad input throws torchkit::Error naming the value and changes nothing") {
  const Rows rows = all_rows();
  MESSAGE("bad-input rows: ", rows.size());
  std::set<std::string> functions;
  for (const auto& row : rows) functions.insert(row.function);
  MESSAGE("functions covered: ", functions.size());
  for (const auto& row : rows) {
    check_row(row);
  }
}

TEST_CASE("every function documented with @throws in a public header has a row") {
  const std::filesystem::path directory =
      std::filesystem::path(TORCHKIT_TEST_DATA_DIR) / ".." / ".." / "include" / "torchkit";
  REQUIRE(std::filesystem::is_directory(directory));
  HeaderScan scan;
  std::size_t headers = 0;
  for (const auto& entry : std::filesystem::directory_iterator(directory)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".hpp") continue;
#if !TORCHKIT_BAD_INPUT_OPENCV
    if (entry.path().filename() == "opencv.hpp") continue;  // OpenCV is not linked: no rows for it
#endif
    scan_header(entry.path(), scan);
    ++headers;
  }
  CHECK(headers >= 15);

  std::string found;
  for (const auto& documented : scan.documented) {
    found += fmt::format("\n  {} (line {})", documented.function, documented.line);
  }
  MESSAGE("functions documented with @throws: ", scan.documented.size(), found);
  // A broken parser must not pass vacuously: every @throws block resolves to a declaration, and
  // there are as many as the headers have (30 today, 27 of them outside opencv.hpp).
  CHECK_MESSAGE(scan.unparsed.empty(), "@throws blocks with no declaration found after them: ",
                fmt::format("{}", fmt::join(scan.unparsed, ", ")));
  CHECK(scan.documented.size() == scan.throws_lines);
  CHECK(scan.documented.size() >= (TORCHKIT_BAD_INPUT_OPENCV ? 28u : 25u));

  // Functions compiled out in this configuration cannot have rows.
  std::set<std::string> compiled_out;
#if !TORCHKIT_HAS_C10D
  compiled_out.insert("distributed.hpp:clip_grad_norm_");
#endif
#if !TORCHKIT_WITH_GLOO
  compiled_out.insert("distributed.hpp:make_gloo_group");
#endif

  std::set<std::string> covered;
  for (const auto& row : all_rows()) covered.insert(row.function);
  std::vector<std::string> missing;
  for (const auto& documented : scan.documented) {
    if (!covered.contains(documented.function) && !compiled_out.contains(documented.function)) {
      missing.push_back(fmt::format("{} (line {})", documented.function, documented.line));
    }
  }
  CHECK_MESSAGE(missing.empty(), "documented @throws without a row in tests/test_bad_input.cpp:\n  ",
                fmt::format("{}", fmt::join(missing, "\n  ")));

  // And every row names a header that exists.
  for (const auto& function : covered) {
    const std::string header = function.substr(0, function.find(':'));
    CHECK_MESSAGE(std::filesystem::is_regular_file(directory / header), "row for ", function, ": no header ", header);
  }
}
