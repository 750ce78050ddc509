#pragma once
/// @file lr/plateau.hpp
/// ReduceLROnPlateau: reduces the lr when a metric stops improving (not a Scheduler: its step
/// takes the metric).

#include <torchkit/lr/scheduler.hpp>

#include <ATen/core/Tensor.h>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace torchkit::lr {

/// ReduceLROnPlateau's arguments (Python's names and defaults).
struct ReduceLROnPlateauOptions {
  /// `"min"`: reduce when the metric stops decreasing; `"max"`: when it stops increasing.
  std::string mode = "min";
  /// The lr is multiplied by it on a plateau, in [0, 1).
  double factor = 0.1;
  /// Epochs without improvement tolerated before reducing (>= 0).
  int64_t patience = 10;
  /// What counts as an improvement (>= 0), relative or absolute (`threshold_mode`).
  double threshold = 1e-4;
  /// `"rel"` or `"abs"`.
  std::string threshold_mode = "rel";
  /// Epochs to wait after a reduction before counting bad epochs again (>= 0).
  int64_t cooldown = 0;
  /// Lower bound of the lr: one value, or one per group (>= 0).
  GroupValues min_lr = 0.0;
  /// A reduction smaller than this is skipped (>= 0).
  double eps = 1e-8;

  /// The field table: each field's name, member and check, once.
  static constexpr auto fields() {
    using namespace detail::lr;
    using O = ReduceLROnPlateauOptions;
    return std::tuple{
        field("mode", &O::mode,
              [](std::string_view owner, std::string_view, const std::string& mode) {
                TORCHKIT_CHECK(mode == "min" || mode == "max", "{}: mode {} is unknown! (expected 'min' or 'max')",
                               owner, mode);
              }),
        field("factor", &O::factor,
              [](std::string_view owner, std::string_view, double factor) {
                TORCHKIT_CHECK(factor < 1.0, "{}: Factor should be < 1.0, got factor={}", owner, factor);
                TORCHKIT_CHECK(factor >= 0, "{}: Factor should be >= 0, got factor={}", owner, factor);
              }),
        field("patience", &O::patience, check_non_negative_count),
        field("threshold", &O::threshold, check_finite_non_negative),
        field("threshold_mode", &O::threshold_mode,
              [](std::string_view owner, std::string_view, const std::string& mode) {
                TORCHKIT_CHECK(mode == "rel" || mode == "abs",
                               "{}: threshold mode {} is unknown! (expected 'rel' or 'abs')", owner, mode);
              }),
        field("cooldown", &O::cooldown, check_non_negative_count),
        field("min_lr", &O::min_lr, check_group_values),
        field("eps", &O::eps, check_finite_non_negative)};
  }
};

/// Reduces the lr when a metric has stopped improving
/// (`torch.optim.lr_scheduler.ReduceLROnPlateau`). Not a Scheduler: `step` takes the metric.
/// Throws Error with Python's wording for a bad mode, threshold mode, factor (`Factor should be
/// < 1.0.`) or min_lr list.
///
///     torchkit::lr::ReduceLROnPlateau scheduler(optimizer, {.mode = "min", .patience = 5});
///     for (...) { train(...); scheduler.step(validation_loss); }
class ReduceLROnPlateau {
 public:
  /// Watches a metric for `optimizer` with Python's default arguments (mode "min", factor 0.1,
  /// patience 10).
  explicit ReduceLROnPlateau(torch::optim::Optimizer& optimizer) : ReduceLROnPlateau(optimizer, {}) {}
  /// Watches a metric for `optimizer`, the arguments as ReduceLROnPlateauOptions (designated
  /// initialisers).
  ReduceLROnPlateau(torch::optim::Optimizer& optimizer, ReduceLROnPlateauOptions options)
      : optimizer_(&optimizer),
        options_(std::move(options)),
        min_lrs_(checked_min_lrs(options_, detail::lr::check_optimizer(optimizer, "ReduceLROnPlateau"),
                                 "ReduceLROnPlateau")),
        best_(worst(options_)),
        last_lr_(detail::lr::group_lrs(optimizer)) {}

  /// Takes the epoch's metric (e.g. the validation loss); reduces the lr of every group by
  /// `factor` (not below its `min_lr`) after more than `patience` epochs without improvement.
  void step(double metric) {
    detail::lr::check_group_count(*optimizer_, min_lrs_.size(), "ReduceLROnPlateau");
    const double current = metric;
    last_epoch_ = last_epoch_ + 1;
    if (is_better(current, best_)) {
      best_ = current;
      num_bad_epochs_ = 0;
    } else {
      num_bad_epochs_ += 1;
    }
    if (in_cooldown()) {
      cooldown_counter_ -= 1;
      num_bad_epochs_ = 0;  // ignore any bad epochs in cooldown
    }
    if (num_bad_epochs_ > options_.patience) {
      reduce_lr();
      cooldown_counter_ = options_.cooldown;
      num_bad_epochs_ = 0;
    }
    last_lr_ = detail::lr::group_lrs(*optimizer_);
  }

  /// The metric as a one-element tensor (Python's `float(metrics)`; synchronises with its
  /// device). Throws Error for a tensor with more than one element.
  void step(const at::Tensor& metric) {
    TORCHKIT_CHECK(metric.defined() && metric.numel() == 1,
                   "ReduceLROnPlateau::step: the metric must be a one-element tensor, got {}",
                   metric.defined() ? fmt::format("shape [{}]", fmt::join(metric.sizes(), ", ")) : "an undefined tensor");
    step(metric.item<double>());
  }

  /// The lr of every group after the last step (at construction: the current lrs).
  [[nodiscard]] std::vector<double> last_lr() const { return last_lr_; }
  /// The number of steps taken.
  [[nodiscard]] int64_t last_epoch() const noexcept { return last_epoch_; }
  /// The best metric so far (+inf in "min" mode, -inf in "max" mode before the first step).
  [[nodiscard]] double best() const noexcept { return best_; }
  /// Epochs since the last improvement (reset by a reduction and in cooldown).
  [[nodiscard]] int64_t num_bad_epochs() const noexcept { return num_bad_epochs_; }
  /// Epochs of cooldown left.
  [[nodiscard]] int64_t cooldown_counter() const noexcept { return cooldown_counter_; }
  /// Whether cooldown epochs are left (bad epochs are not counted then).
  [[nodiscard]] bool in_cooldown() const noexcept { return cooldown_counter_ > 0; }
  /// The arguments, as given (after `load()`: as loaded).
  [[nodiscard]] const ReduceLROnPlateauOptions& options() const noexcept { return options_; }
  /// The optimizer whose learning rates this scheduler sets.
  [[nodiscard]] torch::optim::Optimizer& optimizer() const noexcept { return *optimizer_; }

  /// Writes the state (options, best, counters, epoch, and every group's current lr, which
  /// LibTorch's `optimizer.save()` does not keep) under the key `"lr_scheduler"`.
  void save(torch::serialize::OutputArchive& archive) const {
    detail::lr::ArchiveWriter(archive).write_nested("lr_scheduler", [&](detail::lr::ArchiveWriter& writer) {
      writer.write("type", std::string("ReduceLROnPlateau"));
      detail::lr::save_fields(writer, options_);
      writer.write("best", best_);
      writer.write("num_bad_epochs", num_bad_epochs_);
      writer.write("cooldown_counter", cooldown_counter_);
      writer.write("last_epoch", last_epoch_);
      writer.write("last_lr", last_lr_);
      writer.write("optimizer_lrs", detail::lr::group_lrs(*optimizer_));
    });
  }

  /// Restores the state written by `save()` and every group's lr; throws Error (changing
  /// nothing) for another kind of scheduler, a different number of parameter groups, or any
  /// value the constructor would refuse.
  void load(torch::serialize::InputArchive& archive) {
    const std::string owner = "ReduceLROnPlateau::load";
    torch::serialize::InputArchive state = detail::lr::ArchiveReader(archive, owner).read_nested("lr_scheduler");
    detail::lr::ArchiveReader reader(state, owner);
    const auto type = reader.read<std::string>("type");
    TORCHKIT_CHECK(type == "ReduceLROnPlateau",
                   "{}: the archive holds the state of a scheduler of type {}, not ReduceLROnPlateau", owner, type);
    auto options = detail::lr::load_fields(reader, options_);
    auto min_lrs = checked_min_lrs(options, optimizer_->param_groups().size(), owner);
    const auto best = reader.read<double>("best");
    const auto num_bad_epochs = reader.read<int64_t>("num_bad_epochs");
    const auto cooldown_counter = reader.read<int64_t>("cooldown_counter");
    const auto last_epoch = reader.read<int64_t>("last_epoch");
    auto last_lr = reader.read<std::vector<double>>("last_lr");
    const auto optimizer_lrs = reader.read<std::vector<double>>("optimizer_lrs");
    TORCHKIT_CHECK(last_lr.size() == min_lrs.size() && optimizer_lrs.size() == min_lrs.size(),
                   "{}: the archive was saved for {} parameter groups, the optimizer has {}", owner, last_lr.size(),
                   min_lrs.size());
    // Counters beyond 2^53 cannot come from a run, and would overflow the next step.
    for (const auto& [name, value] : {std::pair{"num_bad_epochs", num_bad_epochs},
                                      std::pair{"cooldown_counter", cooldown_counter},
                                      std::pair{"last_epoch", last_epoch}}) {
      TORCHKIT_CHECK(value >= 0 && value < detail::lr::max_count, "{}: {} in the archive is {}; expected 0 <= {} < 2^53",
                     owner, name, value, name);
    }
    options_ = std::move(options);
    min_lrs_ = std::move(min_lrs);
    best_ = best;
    num_bad_epochs_ = num_bad_epochs;
    cooldown_counter_ = cooldown_counter;
    last_epoch_ = last_epoch;
    last_lr_ = std::move(last_lr);
    detail::lr::set_group_lrs(*optimizer_, optimizer_lrs);
  }

  /// `ReduceLROnPlateau(mode='min', factor=0.1, ...) last_epoch=3 best=0.5 num_bad_epochs=1 last_lr=[0.1]`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("ReduceLROnPlateau({}) last_epoch={} best={} num_bad_epochs={} last_lr={}",
                       detail::lr::format_fields(options_), last_epoch_, best_, num_bad_epochs_,
                       detail::lr::list_to_string(last_lr_));
  }

  /// Writes to_string() to `stream`.
  friend std::ostream& operator<<(std::ostream& stream, const ReduceLROnPlateau& scheduler) {
    return stream << scheduler.to_string();
  }

 private:
  // Checks every field, then min_lr against the number of groups (Python's wording).
  static std::vector<double> checked_min_lrs(const ReduceLROnPlateauOptions& options, std::size_t group_count,
                                             std::string_view owner) {
    detail::lr::check_fields(options, owner);
    const auto& min_lr = options.min_lr;
    TORCHKIT_CHECK(min_lr.for_every_group() || min_lr.values().size() == group_count,
                   "{}: expected {} min_lrs, got {}", owner, group_count, min_lr.values().size());
    return min_lr.for_groups(group_count, "min_lr", owner);
  }

  static double worst(const ReduceLROnPlateauOptions& options) {
    return options.mode == "min" ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
  }

  [[nodiscard]] bool is_better(double a, double best) const {
    const bool relative = options_.threshold_mode == "rel";
    if (options_.mode == "min") {
      return relative ? a < best * (1. - options_.threshold) : a < best - options_.threshold;
    }
    return relative ? a > best * (options_.threshold + 1.) : a > best + options_.threshold;
  }

  void reduce_lr() {
    for (std::size_t index = 0; index < min_lrs_.size(); ++index) {
      const double old_lr = detail::lr::group_lr(*optimizer_, index);
      const double new_lr = std::max(old_lr * options_.factor, min_lrs_[index]);
      if (old_lr - new_lr > options_.eps) {
        detail::lr::set_group_lr(*optimizer_, index, new_lr);
      }
    }
  }

  torch::optim::Optimizer* optimizer_;
  ReduceLROnPlateauOptions options_;
  std::vector<double> min_lrs_;
  double best_ = 0;
  int64_t num_bad_epochs_ = 0;
  int64_t cooldown_counter_ = 0;
  int64_t last_epoch_ = 0;
  std::vector<double> last_lr_;
};

}  // namespace torchkit::lr
