#pragma once
/// @file checkpoint.hpp
/// Tip 7's resume: one checkpoint for a training run — the model, the optimizer (with every
/// group's options, which LibTorch 1.13's `Optimizer::load` does not restore), every scheduler,
/// the GradScaler, the epoch and step, the CPU random generator and the user's own key/values,
/// in one file. Loading validates everything before it changes anything.
///
/// Python:
///
///     torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
///                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
///                 "epoch": epoch}, "run.pt")
///     ...
///     checkpoint = torch.load("run.pt")
///     model.load_state_dict(checkpoint["model"]); optimizer.load_state_dict(checkpoint["optimizer"])
///     scheduler.load_state_dict(checkpoint["scheduler"]); scaler.load_state_dict(checkpoint["scaler"])
///
/// C++:
///
///     torchkit::save_checkpoint("run.pt", model, optimizer, {&warmup, &cosine},
///                               {.epoch = epoch, .grad_scaler = &scaler});
///     ...
///     auto resumed = torchkit::load_checkpoint("run.pt", model, optimizer, {&warmup, &cosine}, &scaler);
///     for (auto epoch = resumed.epoch + 1; epoch < epochs; ++epoch) ...

#include <torchkit/amp.hpp>
#include <torchkit/concepts.hpp>
#include <torchkit/detail/shape.hpp>
#include <torchkit/error.hpp>
#include <torchkit/lr.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <c10/util/Type.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <fmt/format.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <typeinfo>
#include <unordered_set>
#include <utility>
#include <vector>

namespace torchkit {

/// What a checkpoint carries besides the model, the optimizer and the schedulers.
///
///     torchkit::save_checkpoint(path, model, optimizer, {&scheduler},
///                               {.epoch = 7, .step = 7000, .metadata = {{"run", "baseline"}}});
struct CheckpointExtras {
  std::int64_t epoch = 0;  ///< the last finished epoch (or whatever the caller counts)
  std::int64_t step = 0;   ///< the last finished optimizer step
  /// save_checkpoint: the scaler to save, if any. load_checkpoint: always null; whether the file
  /// holds a scaler is `has_grad_scaler`.
  GradScaler* grad_scaler = nullptr;
  std::map<std::string, std::string> metadata{};  ///< the caller's own key/values
  /// save_checkpoint: also save the default CPU random generator's state (restored on load), so
  /// that dropout and shuffling continue as in an uninterrupted run; CUDA generators are not
  /// saved. load_checkpoint: whether the file held the generator's state (then restored).
  bool rng_state = true;
  /// load_checkpoint: whether the file holds a GradScaler state.
  bool has_grad_scaler = false;
};

namespace detail::checkpoint {

inline constexpr std::int64_t format_version = 1;
inline constexpr std::string_view save_name = "save_checkpoint";
inline constexpr std::string_view load_name = "load_checkpoint";

/// Every parameter and buffer of a model with its name, each tensor once, in registration order.
[[nodiscard]] inline std::vector<NamedParameter> named_state_of(const torch::nn::Module& module) {
  std::vector<NamedParameter> result;
  std::unordered_set<const void*> seen;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (seen.insert(item.value().unsafeGetTensorImpl()).second) result.push_back({item.key(), item.value()});
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    if (item.value().defined() && seen.insert(item.value().unsafeGetTensorImpl()).second) {
      result.push_back({item.key(), item.value()});
    }
  }
  return result;
}

[[nodiscard]] inline std::string type_name_of(const torch::optim::Optimizer& optimizer) {
  return c10::demangle(typeid(optimizer).name());
}

[[nodiscard]] inline std::string type_name_of(const torch::optim::OptimizerOptions& options) {
  return c10::demangle(typeid(options).name());
}

/// A nested archive that shares the parent's compilation unit.
[[nodiscard]] inline torch::serialize::OutputArchive nested(torch::serialize::OutputArchive& parent) {
  return torch::serialize::OutputArchive(parent.compilation_unit());
}

inline void write_strings(torch::serialize::OutputArchive& archive, const std::string& key,
                          const std::vector<std::string>& values) {
  c10::List<std::string> list;
  for (const auto& value : values) list.push_back(value);
  archive.write(key, c10::IValue(list));
}

/// Reads a list of strings, or throws naming `what`.
[[nodiscard]] inline std::vector<std::string> read_strings(torch::serialize::InputArchive& archive,
                                                           const std::string& key, std::string_view what) {
  c10::IValue value;
  TORCHKIT_CHECK(archive.try_read(key, value) && value.isList(), "{}: the checkpoint has no {}", load_name, what);
  std::vector<std::string> result;
  for (const auto& item : value.toListRef()) {
    TORCHKIT_CHECK(item.isString(), "{}: the checkpoint's {} are not all strings", load_name, what);
    result.push_back(item.toStringRef());
  }
  return result;
}

[[nodiscard]] inline std::int64_t read_int(torch::serialize::InputArchive& archive, const std::string& key) {
  c10::IValue value;
  TORCHKIT_CHECK(archive.try_read(key, value) && value.isInt(), "{}: the checkpoint has no integer '{}'", load_name,
                 key);
  return value.toInt();
}

[[nodiscard]] inline torch::serialize::InputArchive read_nested(torch::serialize::InputArchive& archive,
                                                                const std::string& key, std::string_view what) {
  torch::serialize::InputArchive result;
  TORCHKIT_CHECK(archive.try_read(key, result), "{}: the checkpoint has no {} ('{}')", load_name, what, key);
  return result;
}

/// An in-memory copy of an object's state, written with `save(OutputArchive&)`, that can be
/// read back with `load(InputArchive&)`.
class Snapshot {
 public:
  template <class Save>
  explicit Snapshot(Save&& save) {
    torch::serialize::OutputArchive archive;
    save(archive);
    archive.save_to(bytes_);
  }
  [[nodiscard]] torch::serialize::InputArchive archive() {
    bytes_.clear();
    bytes_.seekg(0);
    torch::serialize::InputArchive archive;
    archive.load_from(bytes_);
    return archive;
  }

 private:
  std::stringstream bytes_;
};

/// Saves the optimizer's state and each group's options (LibTorch 1.13 restores neither lr nor
/// the other options of a group from its own archive).
inline void save_optimizer(torch::serialize::OutputArchive& archive, const torch::optim::Optimizer& optimizer) {
  archive.write("type", c10::IValue(type_name_of(optimizer)));
  auto state = nested(archive);
  optimizer.save(state);
  archive.write("state", state);
  std::vector<std::string> option_types;
  std::vector<std::int64_t> sizes;
  auto groups = nested(archive);
  for (std::size_t g = 0; g < optimizer.param_groups().size(); ++g) {
    const auto& group = optimizer.param_groups()[g];
    option_types.push_back(type_name_of(group.options()));
    sizes.push_back(static_cast<std::int64_t>(group.params().size()));
    auto options = nested(archive);
    group.options().serialize(options);
    groups.write(std::to_string(g), options);
  }
  write_strings(archive, "option_types", option_types);
  c10::List<std::int64_t> size_list;
  for (const auto size : sizes) size_list.push_back(size);
  archive.write("group_sizes", c10::IValue(size_list));
  archive.write("groups", groups);
}

/// Checks that the saved optimizer is of the same type with groups of the same sizes and option
/// types, and returns each group's options read into a clone of the live ones.
[[nodiscard]] inline std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> read_group_options(
    torch::serialize::InputArchive& archive, const torch::optim::Optimizer& optimizer) {
  c10::IValue type;
  TORCHKIT_CHECK(archive.try_read("type", type) && type.isString(), "{}: the checkpoint has no optimizer type",
                 load_name);
  TORCHKIT_CHECK(type.toStringRef() == type_name_of(optimizer),
                 "{}: the checkpoint holds a {} but the optimizer is a {}", load_name, type.toStringRef(),
                 type_name_of(optimizer));
  const auto option_types = read_strings(archive, "option_types", "optimizer option types");
  c10::IValue sizes;
  TORCHKIT_CHECK(archive.try_read("group_sizes", sizes) && sizes.isIntList(), "{}: the checkpoint has no group sizes",
                 load_name);
  const auto saved_sizes = sizes.toIntVector();
  const auto& groups = optimizer.param_groups();
  TORCHKIT_CHECK(saved_sizes.size() == groups.size() && option_types.size() == groups.size(),
                 "{}: the checkpoint's optimizer has {} parameter groups but the optimizer has {}", load_name,
                 saved_sizes.size(), groups.size());
  auto saved_groups = read_nested(archive, "groups", "optimizer groups");
  std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> result;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    TORCHKIT_CHECK(saved_sizes[g] == static_cast<std::int64_t>(groups[g].params().size()),
                   "{}: parameter group {} has {} tensors in the checkpoint but {} in the optimizer", load_name, g,
                   saved_sizes[g], groups[g].params().size());
    TORCHKIT_CHECK(option_types[g] == type_name_of(groups[g].options()),
                   "{}: parameter group {} has options {} in the checkpoint but {} in the optimizer", load_name, g,
                   option_types[g], type_name_of(groups[g].options()));
    auto saved = read_nested(saved_groups, std::to_string(g), "group options");
    auto options = groups[g].options().clone();
    try {
      options->serialize(saved);
    } catch (const c10::Error& error) {
      detail::fail("{}: the options of parameter group {} cannot be read: {}", load_name, g,
                   error.what_without_backtrace());
    }
    result.push_back(std::move(options));
  }
  return result;
}

/// Restores the optimizer's state and group options from `archive` (already validated by
/// read_group_options). LibTorch's own load may throw c10::Error.
inline void load_optimizer(torch::serialize::InputArchive& archive, torch::optim::Optimizer& optimizer,
                           std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> options) {
  auto state = read_nested(archive, "state", "optimizer state");
  optimizer.load(state);
  for (std::size_t g = 0; g < options.size(); ++g) optimizer.param_groups()[g].set_options(std::move(options[g]));
}

}  // namespace detail::checkpoint

/// Writes one checkpoint of a training run to `path`: the model's parameters and buffers (by
/// name), the optimizer (state and every group's options), each scheduler, and `extras` (epoch,
/// step, GradScaler, CPU random generator, metadata). The file is written beside `path` first
/// and then renamed over it, so an interrupted save leaves the previous checkpoint intact.
/// PyTorch: `torch.save({...state_dict()s...}, path)`.
///
/// @param path        the file (LibTorch's archive format, as `torch::save`)
/// @param model       a module, holder or shared_ptr
/// @param optimizer   the run's optimizer
/// @param schedulers  the run's schedulers, in a fixed order (load with the same order)
/// @param extras      epoch, step, grad_scaler, metadata, rng_state
/// @throws torchkit::Error for an empty/null model, a null scheduler, or a file that cannot be
///         written (naming the path); the previous file at `path` is then unchanged.
template <ModuleLike M>
void save_checkpoint(const std::string& path, const M& model, const torch::optim::Optimizer& optimizer,
                     std::vector<const lr::Scheduler*> schedulers = {}, const CheckpointExtras& extras = {}) {
  using namespace detail::checkpoint;
  const torch::nn::Module& module = module_of(model, save_name);
  for (std::size_t i = 0; i < schedulers.size(); ++i) {
    TORCHKIT_CHECK(schedulers[i] != nullptr, "{}: scheduler {} is null", save_name, i);
  }
  torch::serialize::OutputArchive archive;
  archive.write("torchkit_checkpoint", c10::IValue(format_version));
  {
    auto state = nested(archive);
    const auto named = named_state_of(module);
    std::vector<std::string> names;
    auto values = nested(archive);
    for (std::size_t i = 0; i < named.size(); ++i) {
      names.push_back(named[i].name);
      values.write(std::to_string(i), named[i].tensor.detach());
    }
    write_strings(state, "names", names);
    state.write("values", values);
    archive.write("model", state);
  }
  {
    auto state = nested(archive);
    save_optimizer(state, optimizer);
    archive.write("optimizer", state);
  }
  {
    auto state = nested(archive);
    std::vector<std::string> types;
    for (std::size_t i = 0; i < schedulers.size(); ++i) {
      types.push_back(schedulers[i]->type_name());
      auto one = nested(archive);
      schedulers[i]->save(one);
      state.write(std::to_string(i), one);
    }
    write_strings(state, "types", types);
    archive.write("schedulers", state);
  }
  if (extras.grad_scaler != nullptr) extras.grad_scaler->save(archive);
  archive.write("epoch", c10::IValue(extras.epoch));
  archive.write("step", c10::IValue(extras.step));
  std::vector<std::string> keys, values;
  for (const auto& [key, value] : extras.metadata) {
    keys.push_back(key);
    values.push_back(value);
  }
  write_strings(archive, "metadata_keys", keys);
  write_strings(archive, "metadata_values", values);
  if (extras.rng_state) {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    archive.write("cpu_rng_state", generator.get_state());
  }
  const std::string temporary = path + ".partial";
  try {
    archive.save_to(temporary);
  } catch (const c10::Error& error) {
    std::remove(temporary.c_str());
    detail::fail("{}: cannot write '{}': {}", save_name, path, error.what_without_backtrace());
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::remove(temporary.c_str());
    detail::fail("{}: cannot write '{}': {}", save_name, path, error.message());
  }
}

/// Restores a checkpoint written by save_checkpoint into the model, the optimizer, the
/// schedulers (same kinds, same order) and, when given, the GradScaler; returns the epoch, step
/// and metadata (and sets the CPU random generator when the file holds its state). Construct
/// everything as at the start of the run, then load: training continues bit for bit as the
/// saved run would have.
///
/// Everything is checked before anything changes: the model's parameter and buffer names,
/// shapes and dtypes, the optimizer's type, group count, group sizes and option types, the
/// schedulers' kinds and count, and each component's own validation. If a component still fails
/// while loading, the ones already loaded are put back as they were.
///
/// @param path         a file written by save_checkpoint
/// @param model        a module, holder or shared_ptr, built as in the saved run
/// @param optimizer    the run's optimizer, built as in the saved run
/// @param schedulers   the run's schedulers, in the order they were saved
/// @param grad_scaler  restored from the file when not null (the file must hold one)
/// @throws torchkit::Error for a file that cannot be read or is not a torchkit checkpoint, a
///         model, optimizer or scheduler list that differs from the saved one (naming the first
///         difference), a missing GradScaler state; nothing changes then.
template <ModuleLike M>
CheckpointExtras load_checkpoint(const std::string& path, M& model, torch::optim::Optimizer& optimizer,
                                 std::vector<lr::Scheduler*> schedulers = {}, GradScaler* grad_scaler = nullptr) {
  using namespace detail::checkpoint;
  torch::nn::Module& module = module_of(model, load_name);
  for (std::size_t i = 0; i < schedulers.size(); ++i) {
    TORCHKIT_CHECK(schedulers[i] != nullptr, "{}: scheduler {} is null", load_name, i);
  }
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& error) {
    detail::fail("{}: cannot read '{}': {}", load_name, path, error.what_without_backtrace());
  }
  c10::IValue version;
  TORCHKIT_CHECK(archive.try_read("torchkit_checkpoint", version) && version.isInt(),
                 "{}: '{}' is not a torchkit checkpoint (write it with save_checkpoint)", load_name, path);
  TORCHKIT_CHECK(version.toInt() == format_version, "{}: '{}' has checkpoint format {}, this torchkit reads {}",
                 load_name, path, version.toInt(), format_version);

  // The model: names, shapes, dtypes.
  auto model_state = read_nested(archive, "model", "model");
  const auto names = read_strings(model_state, "names", "parameter names");
  auto values = read_nested(model_state, "values", "parameter values");
  const auto live = named_state_of(module);
  std::vector<at::Tensor> saved;
  for (std::size_t i = 0; i < names.size(); ++i) {
    at::Tensor value;
    TORCHKIT_CHECK(values.try_read(std::to_string(i), value) && value.defined(),
                   "{}: the checkpoint has no value for '{}'", load_name, names[i]);
    saved.push_back(value);
  }
  for (std::size_t i = 0; i < std::min(names.size(), live.size()); ++i) {
    TORCHKIT_CHECK(names[i] == live[i].name,
                   "{}: the model's parameter/buffer {} is '{}' but the checkpoint's is '{}'; load into a model built "
                   "as the saved one",
                   load_name, i, live[i].name, names[i]);
    TORCHKIT_CHECK(saved[i].sizes() == live[i].tensor.sizes() && saved[i].scalar_type() == live[i].tensor.scalar_type(),
                   "{}: '{}' is {} {} in the checkpoint but {} {} in the model", load_name, names[i],
                   c10::toString(saved[i].scalar_type()), detail::shape_string(saved[i].sizes()),
                   c10::toString(live[i].tensor.scalar_type()), detail::shape_string(live[i].tensor.sizes()));
  }
  TORCHKIT_CHECK(names.size() == live.size(), "{}: the checkpoint has {} parameters and buffers but the model has {}",
                 load_name, names.size(), live.size());

  // The optimizer, the schedulers, the scaler: structure first.
  auto optimizer_state = read_nested(archive, "optimizer", "optimizer");
  auto group_options = read_group_options(optimizer_state, optimizer);
  auto scheduler_state = read_nested(archive, "schedulers", "schedulers");
  const auto types = read_strings(scheduler_state, "types", "scheduler types");
  TORCHKIT_CHECK(types.size() == schedulers.size(), "{}: the checkpoint has {} schedulers but {} were given",
                 load_name, types.size(), schedulers.size());
  for (std::size_t i = 0; i < types.size(); ++i) {
    TORCHKIT_CHECK(types[i] == schedulers[i]->type_name(), "{}: scheduler {} is a {} in the checkpoint but a {} here",
                   load_name, i, types[i], schedulers[i]->type_name());
  }
  CheckpointExtras extras;
  torch::serialize::InputArchive scaler_probe;
  extras.has_grad_scaler = archive.try_read("grad_scaler", scaler_probe);
  TORCHKIT_CHECK(grad_scaler == nullptr || extras.has_grad_scaler,
                 "{}: a GradScaler was given but the checkpoint holds none", load_name);
  extras.epoch = read_int(archive, "epoch");
  extras.step = read_int(archive, "step");
  const auto keys = read_strings(archive, "metadata_keys", "metadata keys");
  const auto metadata = read_strings(archive, "metadata_values", "metadata values");
  TORCHKIT_CHECK(keys.size() == metadata.size(), "{}: the checkpoint's metadata keys and values differ in number",
                 load_name);
  for (std::size_t i = 0; i < keys.size(); ++i) extras.metadata.emplace(keys[i], metadata[i]);
  at::Tensor rng;
  extras.rng_state = archive.try_read("cpu_rng_state", rng);

  // Then the loads, each component put back as it was if a later one fails.
  Snapshot optimizer_before([&](auto& out) { detail::checkpoint::save_optimizer(out, optimizer); });
  std::vector<Snapshot> schedulers_before;
  schedulers_before.reserve(schedulers.size());
  for (auto* scheduler : schedulers) schedulers_before.emplace_back([&](auto& out) { scheduler->save(out); });
  std::size_t loaded_schedulers = 0;
  try {
    load_optimizer(optimizer_state, optimizer, std::move(group_options));
    for (; loaded_schedulers < schedulers.size(); ++loaded_schedulers) {
      auto one = read_nested(scheduler_state, std::to_string(loaded_schedulers), "scheduler state");
      schedulers[loaded_schedulers]->load(one);
    }
    if (grad_scaler != nullptr) grad_scaler->load(archive);  // last: it changes nothing when it throws
  } catch (const std::exception& error) {
    for (std::size_t i = 0; i < loaded_schedulers; ++i) {
      auto before = schedulers_before[i].archive();
      schedulers[i]->load(before);
    }
    auto before = optimizer_before.archive();
    load_optimizer(before, optimizer, read_group_options(before, optimizer));
    const auto* c10_error = dynamic_cast<const c10::Error*>(&error);
    detail::fail("{}: '{}' does not fit: {}", load_name, path,
                 c10_error != nullptr ? c10_error->what_without_backtrace() : error.what());
  }
  {
    const at::NoGradGuard no_grad;
    for (std::size_t i = 0; i < live.size(); ++i) live[i].tensor.detach().copy_(saved[i]);
  }
  if (extras.rng_state) {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(rng);
  }
  return extras;
}

}  // namespace torchkit
