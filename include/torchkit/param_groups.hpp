#pragma once
/// @file param_groups.hpp
/// Tip 9: per-layer learning rates. `ParamGroupBuilder` splits a model's parameters into
/// optimizer parameter groups by name (torchkit::NamePattern: exact name, module path, glob,
/// torchkit::regex), each with its own `lr` / `weight_decay`, everything else inherited from the
/// optimizer's default options — Python's
/// `optim.Adam([{"params": conv1, "lr": 0.01}, {"params": conv2, "lr": 0.001}], weight_decay=1e-3)`.

#include <torchkit/concepts.hpp>
#include <torchkit/detail/name_pattern.hpp>
#include <torchkit/detail/validate.hpp>
#include <torchkit/name_pattern.hpp>
#include <torchkit/error.hpp>

#include <ATen/core/Tensor.h>
#include <c10/util/Type.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <fmt/format.h>

#include <algorithm>
#include <concepts>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <typeinfo>
#include <utility>
#include <vector>

namespace torchkit {

/// A group's own settings. Options left unset inherit the optimizer's defaults (the tip's
/// "global" settings outside the list); every other option (betas, eps, momentum, ...) always
/// comes from the defaults.
///
///     builder.add({"*convolution1*"}, {.lr = 0.01, .name = "conv1"});
struct GroupOptions {
  // The `{}` initialisers let `{.lr = 0.01}` compile without -Wmissing-field-initializers warnings.
  // Doxygen: the comment above the declaration documents `lr`, the one after it `weight_decay`.
  /// The group's own lr; unset: the optimizer's default.
  std::optional<double> lr{}, weight_decay{};  ///< the group's own weight decay; unset: the default
  std::string name{};  ///< shown by describe() and group_names(); defaults to the group's patterns
};

/// Gives every parameter group of `optimizer` exactly the options of the matching group in
/// `groups` (the groups the optimizer was built from, or meant to have), in order.
///
/// Why: from LibTorch 2.14 on, the optimizer constructor and `add_param_group` merge each group's
/// options with the optimizer's defaults *by comparison*: an option equal to its options type's
/// constructor default is taken as "not set" and replaced by the optimizer's default. A group's
/// `weight_decay = 0` then gets the default's decay, and an explicit `lr = 0.01` for RMSprop or
/// Adagrad (their constructor default) gets the optimizer's lr. LibTorch 1.13 and 2.6 keep the
/// group's options as given; calling this there changes nothing.
///
/// Shapes: `groups.size()` must equal the optimizer's group count and each group must hold the
/// same tensors (by identity, in order) as the optimizer's group of that index. Groups without
/// options are skipped (they inherit the defaults on every LibTorch).
///
/// @throws Error when the group counts, a group's tensors or a group's options type differ;
///         then no group is changed.
///
/// PyTorch equivalent: none needed (Python keeps a group's explicit values).
///
///     auto groups = builder.build(defaults);
///     torch::optim::RMSprop optimizer(groups, defaults);
///     torchkit::restore_group_options(optimizer, groups);
inline void restore_group_options(torch::optim::Optimizer& optimizer,
                                  const std::vector<torch::optim::OptimizerParamGroup>& groups) {
  constexpr std::string_view context = "restore_group_options";
  auto& actual = optimizer.param_groups();
  TORCHKIT_CHECK(actual.size() == groups.size(), "{}: the optimizer has {} parameter group{} but {} {} given", context,
                 actual.size(), actual.size() == 1 ? "" : "s", groups.size(), groups.size() == 1 ? "was" : "were");
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const auto& mine = actual[g].params();
    const auto& wanted = groups[g].params();
    TORCHKIT_CHECK(mine.size() == wanted.size(), "{}: group {} of the optimizer has {} tensors, the given group {}",
                   context, g, mine.size(), wanted.size());
    for (std::size_t t = 0; t < mine.size(); ++t) {
      TORCHKIT_CHECK(mine[t].unsafeGetTensorImpl() == wanted[t].unsafeGetTensorImpl(),
                     "{}: tensor {} of group {} is not the tensor the optimizer holds there; pass the groups the "
                     "optimizer was built from, in order",
                     context, t, g);
    }
    if (groups[g].has_options() && actual[g].has_options()) {
      const auto& from = groups[g].options();
      const auto& to = actual[g].options();
      TORCHKIT_CHECK(typeid(from) == typeid(to), "{}: group {} has options of type {} but the optimizer's are {}",
                     context, g, c10::demangle(typeid(from).name()), c10::demangle(typeid(to).name()));
    }
  }
  for (std::size_t g = 0; g < groups.size(); ++g) {
    if (groups[g].has_options()) {
      actual[g].set_options(groups[g].options().clone());
    }
  }
}

/// One optimizer group that ParamGroupBuilder::build makes: what ParamGroupBuilder::groups() returns.
struct ParamGroupPlan {
  std::string name;                     ///< as group_names()
  std::vector<std::string> parameters;  ///< the parameters' names, in model order
  std::optional<double> lr;             ///< the group's own lr (before the layer scale); unset: the defaults'
  std::optional<double> weight_decay;   ///< the group's own weight decay; unset: the defaults'
  std::optional<std::int64_t> layer_id;  ///< with layer_decay: the layer id (after frozen layers are dropped)
  double lr_scale = 1.0;                ///< with layer_decay: rate^(last layer id - layer_id); else 1
};

/// Builds optimizer parameter groups by parameter name.
///
/// - `add(patterns, options)` declares a group; a parameter joins the FIRST group (in the order
///   given) one of whose patterns matches it.
/// - `rest(options)` declares the group that collects every parameter no other group claims.
///   When nothing is left over, it adds no optimizer group (so the tip's two groups plus `rest()`
///   give Python's two optimizer groups).
/// - `no_weight_decay(patterns)` (e.g. `{"*.bias", "*norm*.weight"}`): every group is split in
///   two consecutive optimizer groups, as common Python recipes do: first the parameters with
///   the group's weight decay, then the matching ones with weight decay 0 (same lr). Both parts
///   are always emitted (one may be empty), so the optimizer groups of `add()` group `i` are
///   `2 i` and `2 i + 1`; without no_weight_decay it is `i`.
/// - Frozen parameters (`requires_grad == false`, read at build time) are left out, as the tip's
///   `filter(lambda p: p.requires_grad, ...)`; `include_frozen()` keeps them. An `add()` group
///   whose every match is frozen is kept, empty, so that the group indices stay as declared.
/// - A tied tensor appears once, and a pattern matches it under any of its names.
/// - `layer_decay(rate, layers)`: layer-wise lr decay, as timm's `param_groups_layer_decay`
///   (fine-tuning ViT, BEiT, ConvNeXt). `layers[i]` holds the patterns of layer id `i`
///   (embeddings 0, block `k` at `k + 1`, final norm and head last, as timm's `group_matcher`); a
///   parameter takes the id of the first layer that matches it. Frozen parameters are left out
///   *before* the ids are counted: a layer with no trainable parameter is dropped and the ids
///   after it close up, so that the last trainable layer keeps scale 1 (timm counts its layers
///   over every parameter, frozen or not). With `L` layers left, layer `i` gets
///   `scale = rate^(L - 1 - i)`, and every optimizer group made from it
///   `lr = (group's lr, else the defaults' lr) * scale`. Each add()/rest() group is then split
///   by layer (ascending), each part again by weight decay; only non-empty parts become
///   optimizer groups (groups() and describe() show which is which).
/// - `no_weight_decay_1d()`: timm's rule: every 1-D (or 0-D) tensor and every `*.bias` gets
///   weight decay 0, as if listed in no_weight_decay().
///
/// Every check runs in `build()` (and `describe()`, `group_names()`), which throw Error when a
/// pattern is empty or matches no parameter (listing the closest names), when a parameter is
/// claimed by no group and no `rest()` was given (naming it), when a group gets nothing because
/// earlier groups claimed all its matches, when an lr or weight decay is negative or not finite,
/// when `rest()` was given twice, when there are no groups, or when nothing is left to optimize;
/// with layer_decay, when a layer's pattern matches no parameter or a trainable parameter
/// matches no layer (add a catch-all last layer such as `{"*"}`, timm's "head" default).
///
/// The builder lists the model's parameters (names and tensors) when it is constructed and keeps
/// the tensors alive; after registering or replacing parameters, construct a new builder.
///
///     torchkit::ParamGroupBuilder builder(net);
///     builder.add({"*convolution1*"}, {.lr = 0.01}).add({"*convolution2*"}, {.lr = 0.001}).rest();
///     const auto defaults = torch::optim::AdamOptions(1e-3).weight_decay(1e-3);
///     auto optimizer = builder.make<torch::optim::Adam>(defaults);
///     std::cout << builder.describe(defaults);
class ParamGroupBuilder {
 public:
  /// Reads `model`'s parameters (a module, module holder or shared_ptr to a module).
  template <ModuleLike M>
  explicit ParamGroupBuilder(const M& model) : parameters_(detail::parameter_table(model, "ParamGroupBuilder")) {}

  /// Adds a group of the parameters that `patterns` select (and no earlier group claimed).
  ParamGroupBuilder& add(const PatternList& patterns, GroupOptions options = {}) {
    return add_group(patterns.patterns(), std::move(options));
  }

  /// Adds the group that collects every parameter no `add()` group claims. Without it, such a
  /// parameter is an error in build().
  ParamGroupBuilder& rest(GroupOptions options = {}) {
    groups_.push_back(Group{{}, std::move(options), /*is_rest=*/true});
    return *this;
  }

  /// Gives the parameters that `patterns` select weight decay 0 (e.g. biases and norm weights),
  /// splitting every group in two (see the class comment). May be called more than once.
  ParamGroupBuilder& no_weight_decay(const PatternList& patterns) {
    return add_no_weight_decay(patterns.patterns());
  }

  /// Whether frozen parameters (`requires_grad == false`) go into the groups too (default: no).
  ParamGroupBuilder& include_frozen(bool include = true) noexcept {
    include_frozen_ = include;
    return *this;
  }

  /// timm's weight-decay rule: 1-D (and 0-D) tensors and every parameter whose name ends in
  /// `.bias` get weight decay 0 (norm weights, biases, scalar gains), as if listed in
  /// no_weight_decay(); combines with it.
  ParamGroupBuilder& no_weight_decay_1d(bool on = true) noexcept {
    no_weight_decay_1d_ = on;
    return *this;
  }

  /// Layer-wise lr decay (timm's `layer_decay`): `layers[i]` holds the patterns of layer id `i`
  /// (first match wins); with `L` layers that hold trainable parameters, layer `i`'s groups get
  /// `lr * rate^(L - 1 - i)` (see the class comment for frozen layers and the groups made).
  /// Python (timm): `param_groups_layer_decay(model, weight_decay, no_weight_decay_list,
  /// layer_decay=rate)` plus the scheduler applying each group's `lr_scale`.
  ///
  /// @throws Error for `rate` outside (0, 1] or not finite, an empty `layers` or an empty layer,
  ///         or when layer_decay was already given; the builder is unchanged then. Patterns
  ///         are checked by build().
  ///
  ///     std::vector<std::vector<std::string>> layers{{"cls_token", "pos_embed", "patch_embed"}};
  ///     for (int k = 0; k < 12; ++k) layers.push_back({fmt::format("blocks.{}", k)});
  ///     layers.push_back({"*"});  // norm and head: scale 1
  ///     builder.rest().no_weight_decay_1d().layer_decay(0.75, layers);
  ParamGroupBuilder& layer_decay(double rate, std::vector<std::vector<std::string>> layers) {
    constexpr std::string_view context = "ParamGroupBuilder::layer_decay";
    TORCHKIT_CHECK(std::isfinite(rate) && rate > 0 && rate <= 1, "{}: rate must be in (0, 1], got {}", context, rate);
    TORCHKIT_CHECK(!layers.empty(), "{}: no layers given; layers[i] holds the patterns of layer id i", context);
    TORCHKIT_CHECK(layer_patterns_.empty(), "{}: layer_decay was already given ({} layers, rate {})", context,
                   layer_patterns_.size(), layer_rate_);
    std::vector<std::vector<NamePattern>> converted;
    converted.reserve(layers.size());
    for (std::size_t l = 0; l < layers.size(); ++l) {
      TORCHKIT_CHECK(!layers[l].empty(), "{}: layer {} of {} has no patterns", context, l, layers.size());
      converted.push_back(PatternList(layers[l]).patterns());
    }
    layer_patterns_ = std::move(converted);
    layer_rate_ = rate;
    return *this;
  }

  /// The optimizer groups build() makes, in its order: names, parameters, own options, layer
  /// id and lr scale. Throws as build().
  [[nodiscard]] std::vector<ParamGroupPlan> groups() const {
    std::vector<ParamGroupPlan> result;
    for (const auto& group : plan("ParamGroupBuilder::groups").groups) {
      ParamGroupPlan info{group.name, {}, group.lr, group.weight_decay, {}, group.scale};
      if (group.layer_id) {
        info.layer_id = static_cast<std::int64_t>(*group.layer_id);
      }
      for (const std::size_t member : group.members) {
        info.parameters.push_back(parameters_[member].name);
      }
      result.push_back(std::move(info));
    }
    return result;
  }

  /// The parameter groups for a LibTorch optimizer whose options have `lr` and `weight_decay`
  /// (SGD, Adam, AdamW, RMSprop, Adagrad). Each group's options are a copy of `defaults` with
  /// the group's lr / weight decay set where the group gives them. Pass the same `defaults` to
  /// the optimizer, and then call restore_group_options(optimizer, groups): LibTorch 2.14's
  /// optimizer constructor overwrites group options that equal their type's default. make()
  /// does both.
  ///
  /// @throws Error see the class comment; nothing is built then.
  ///
  ///     torch::optim::SGD optimizer(builder.build(torch::optim::SGDOptions(0.1)), torch::optim::SGDOptions(0.1));
  template <OptimizerOptions O>
  [[nodiscard]] std::vector<torch::optim::OptimizerParamGroup> build(const O& defaults) const {
    detail::check_finite_non_negative("ParamGroupBuilder::build", "the defaults' lr", static_cast<double>(defaults.lr()));
    detail::check_finite_non_negative("ParamGroupBuilder::build", "the defaults' weight_decay", static_cast<double>(defaults.weight_decay()));
    const auto planned = plan("ParamGroupBuilder::build");
    std::vector<torch::optim::OptimizerParamGroup> result;
    result.reserve(planned.groups.size());
    for (const auto& group : planned.groups) {
      auto options = std::make_unique<O>(defaults);
      if (group.layer_id) {
        options->lr((group.lr ? *group.lr : static_cast<double>(defaults.lr())) * group.scale);
      } else if (group.lr) {
        options->lr(*group.lr);
      }
      if (group.weight_decay) {
        options->weight_decay(*group.weight_decay);
      }
      std::vector<at::Tensor> tensors;
      tensors.reserve(group.members.size());
      for (const std::size_t member : group.members) {
        tensors.push_back(parameters_[member].tensor);
      }
      result.emplace_back(std::move(tensors), std::unique_ptr<torch::optim::OptimizerOptions>(std::move(options)));
    }
    return result;
  }

  /// The optimizer itself, built from build(defaults), with every group's options exactly as
  /// planned on every LibTorch (see restore_group_options for the LibTorch 2.14 trap that the
  /// plain `Optimizer(builder.build(defaults), defaults)` falls into). Prefer it to build().
  ///
  /// @throws Error as build(); nothing is built then.
  ///
  ///     auto optimizer = builder.make<torch::optim::AdamW>(torch::optim::AdamWOptions(1e-3).weight_decay(0.05));
  template <class Optimizer, OptimizerOptions O>
    requires std::derived_from<Optimizer, torch::optim::Optimizer> &&
             std::constructible_from<Optimizer, std::vector<torch::optim::OptimizerParamGroup>, O>
  [[nodiscard]] Optimizer make(const O& defaults) const {
    const auto groups = build(defaults);
    Optimizer optimizer(groups, defaults);
    restore_group_options(optimizer, groups);
    return optimizer;
  }

  /// The names of the optimizer groups build() makes, in its order (for logging per group).
  [[nodiscard]] std::vector<std::string> group_names() const {
    std::vector<std::string> names;
    for (const auto& group : plan("ParamGroupBuilder::group_names").groups) {
      names.push_back(group.name);
    }
    return names;
  }

  /// A printable table of the optimizer groups build() makes: each group's options (unset ones
  /// shown as `default`), then its parameters with their shapes; then the frozen parameters left
  /// out. Throws as build().
  [[nodiscard]] std::string describe() const { return describe_with("ParamGroupBuilder::describe", std::nullopt); }

  /// As describe(), with the values the groups inherit from `defaults` filled in.
  ///
  ///     std::cout << builder.describe(torch::optim::AdamOptions(1e-3).weight_decay(1e-3));
  template <OptimizerOptions O>
  [[nodiscard]] std::string describe(const O& defaults) const {
    detail::check_finite_non_negative("ParamGroupBuilder::describe", "the defaults' lr", static_cast<double>(defaults.lr()));
    detail::check_finite_non_negative("ParamGroupBuilder::describe", "the defaults' weight_decay",
                static_cast<double>(defaults.weight_decay()));
    return describe_with("ParamGroupBuilder::describe",
                         std::pair<double, double>{static_cast<double>(defaults.lr()),
                                                   static_cast<double>(defaults.weight_decay())});
  }

 private:
  struct Group {
    std::vector<NamePattern> patterns;  // empty for rest()
    GroupOptions options;
    bool is_rest = false;
  };

  struct PlannedGroup {
    std::string name;
    std::vector<std::size_t> members;  // indices into parameters_
    std::optional<double> lr, weight_decay;
    bool weight_decay_from_no_weight_decay = false;
    std::optional<std::size_t> layer_id{};  // with layer_decay
    double scale = 1.0;
  };

  struct Plan {
    std::vector<PlannedGroup> groups;
    std::vector<std::size_t> left_out;  // frozen parameters not in any group
  };

  ParamGroupBuilder& add_group(std::vector<NamePattern> patterns, GroupOptions options) {
    groups_.push_back(Group{std::move(patterns), std::move(options), /*is_rest=*/false});
    return *this;
  }

  ParamGroupBuilder& add_no_weight_decay(std::vector<NamePattern> patterns) {
    no_weight_decay_.push_back(std::move(patterns));
    return *this;
  }

  [[nodiscard]] std::string display_name(std::size_t index) const {
    const Group& group = groups_[index];
    if (!group.options.name.empty()) {
      return group.options.name;
    }
    if (group.is_rest) {
      return "rest";
    }
    std::string name;
    for (const auto& pattern : group.patterns) {
      name += (name.empty() ? "" : ", ") + pattern.to_string();
    }
    return name;
  }

  [[nodiscard]] std::string list_names(const std::vector<std::size_t>& indices, std::size_t limit = 5) const {
    std::string text;
    for (std::size_t i = 0; i < std::min(limit, indices.size()); ++i) {
      text += fmt::format("{}\"{}\"", i == 0 ? "" : ", ", parameters_[indices[i]].name);
    }
    if (indices.size() > limit) {
      text += fmt::format(" and {} more", indices.size() - limit);
    }
    return text;
  }

  /// Checks everything and decides which parameter goes where. Changes nothing.
  [[nodiscard]] Plan plan(std::string_view context) const {
    constexpr std::size_t none = static_cast<std::size_t>(-1);
    TORCHKIT_CHECK(!groups_.empty(),
                   "{}: no groups were declared; call add({{patterns}}, options) for each group and/or rest(options)",
                   context);
    const std::size_t count = parameters_.size();

    // Options, patterns, matches.
    std::size_t rest_index = none;
    std::vector<std::vector<bool>> matched(groups_.size());
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      const Group& group = groups_[g];
      const std::string where = fmt::format("group {} ({})", g, display_name(g));
      if (group.options.lr) {
        detail::check_finite_non_negative(context, fmt::format("the lr of {}", where), *group.options.lr);
      }
      if (group.options.weight_decay) {
        detail::check_finite_non_negative(context, fmt::format("the weight_decay of {}", where), *group.options.weight_decay);
      }
      if (group.is_rest) {
        TORCHKIT_CHECK(rest_index == none,
                       "{}: rest() was given twice (groups {} and {}); one group collects the parameters no other "
                       "group claims",
                       context, rest_index, g);
        rest_index = g;
        continue;
      }
      matched[g] = detail::select(fmt::format("{}: {}", context, where), group.patterns, parameters_);
    }
    std::vector<bool> no_decay(count, false);
    if (no_weight_decay_1d_) {
      for (std::size_t i = 0; i < count; ++i) {
        const std::string& name = parameters_[i].name;
        no_decay[i] = parameters_[i].tensor.dim() <= 1 ||
                      (name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0);
      }
    }
    for (const auto& patterns : no_weight_decay_) {
      const auto selected = detail::select(fmt::format("{}: no_weight_decay", context), patterns, parameters_);
      for (std::size_t i = 0; i < count; ++i) {
        no_decay[i] = no_decay[i] || selected[i];
      }
    }

    // Assignment: the first matching group wins; rest() takes the others.
    Plan result;
    std::vector<std::size_t> owner(count, none);
    std::vector<std::size_t> unclaimed;
    std::size_t assigned = 0;
    for (std::size_t i = 0; i < count; ++i) {
      if (!include_frozen_ && !parameters_[i].tensor.requires_grad()) {
        result.left_out.push_back(i);
        continue;
      }
      for (std::size_t g = 0; g < groups_.size() && owner[i] == none; ++g) {
        if (!groups_[g].is_rest && matched[g][i]) {
          owner[i] = g;
        }
      }
      if (owner[i] == none) {
        owner[i] = rest_index;
      }
      if (owner[i] == none) {
        unclaimed.push_back(i);
      } else {
        ++assigned;
      }
    }
    TORCHKIT_CHECK(unclaimed.empty(),
                   "{}: {} {}parameter(s) belong to no group: {}; add a group that matches them, or call rest(options) "
                   "to collect the parameters no group claims",
                   context, unclaimed.size(), include_frozen_ ? "" : "trainable ", list_names(unclaimed));
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      if (groups_[g].is_rest) {
        continue;
      }
      std::vector<std::size_t> taken_earlier;
      bool owns_any = false;
      for (std::size_t i = 0; i < count; ++i) {
        owns_any = owns_any || owner[i] == g;
        if (matched[g][i] && owner[i] != none && owner[i] != g) {
          taken_earlier.push_back(i);
        }
      }
      TORCHKIT_CHECK(owns_any || taken_earlier.empty(),
                     "{}: group {} ({}) gets no parameter: every parameter it matches ({}) was claimed by an earlier "
                     "group, and a parameter joins the first group that matches it; reorder the groups or narrow "
                     "the earlier patterns",
                     context, g, display_name(g), list_names(taken_earlier));
    }
    TORCHKIT_CHECK(count > 0, "{}: nothing to optimize: the model has no parameters", context);
    TORCHKIT_CHECK(assigned > 0,
                   "{}: nothing to optimize: all {} parameters are frozen (requires_grad == false); unfreeze some, "
                   "or call include_frozen() to put frozen parameters into the groups",
                   context, count);

    // The optimizer groups, in the order given; each split in two when no_weight_decay was used.
    // A rest() group that collects nothing adds none (a catch-all with nothing left over).
    const bool split = !no_weight_decay_.empty() || no_weight_decay_1d_;
    if (!layer_patterns_.empty()) {
      plan_layers(context, owner, no_decay, split, result);
      return result;
    }
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      PlannedGroup decay{display_name(g), {}, groups_[g].options.lr, groups_[g].options.weight_decay, false};
      PlannedGroup without_decay{display_name(g) + " (no weight decay)", {}, groups_[g].options.lr, 0.0, true};
      for (std::size_t i = 0; i < count; ++i) {
        if (owner[i] == g) {
          (split && no_decay[i] ? without_decay : decay).members.push_back(i);
        }
      }
      if (groups_[g].is_rest && decay.members.empty() && without_decay.members.empty()) {
        continue;
      }
      result.groups.push_back(std::move(decay));
      if (split) {
        result.groups.push_back(std::move(without_decay));
      }
    }
    return result;
  }

  /// With layer_decay: the layer of every grouped parameter (frozen ones left out before the
  /// layers are counted), then one optimizer group per (group, layer, weight decay) that has
  /// parameters.
  void plan_layers(std::string_view context, const std::vector<std::size_t>& owner, const std::vector<bool>& no_decay,
                   bool split, Plan& result) const {
    constexpr std::size_t none = static_cast<std::size_t>(-1);
    const std::size_t count = parameters_.size();
    std::vector<std::vector<bool>> matched(layer_patterns_.size());
    for (std::size_t l = 0; l < layer_patterns_.size(); ++l) {
      matched[l] = detail::select(fmt::format("{}: layer_decay layer {}", context, l), layer_patterns_[l], parameters_);
    }
    std::vector<std::size_t> layer_of(count, none);
    std::vector<bool> used(layer_patterns_.size(), false);
    std::vector<std::size_t> unmatched;
    for (std::size_t i = 0; i < count; ++i) {
      if (owner[i] == none) {
        continue;  // left out (frozen)
      }
      for (std::size_t l = 0; l < layer_patterns_.size() && layer_of[i] == none; ++l) {
        if (matched[l][i]) {
          layer_of[i] = l;
        }
      }
      if (layer_of[i] == none) {
        unmatched.push_back(i);
      } else {
        used[layer_of[i]] = true;
      }
    }
    TORCHKIT_CHECK(unmatched.empty(),
                   "{}: {} {}parameter(s) match no layer of layer_decay: {}; add their patterns to a layer, or end the "
                   "layers with a catch-all such as {{\"*\"}} (timm gives unmatched parameters the last layer id)",
                   context, unmatched.size(), include_frozen_ ? "" : "trainable ", list_names(unmatched));
    // Layer ids over the layers that hold parameters (frozen ones are already out).
    std::vector<std::size_t> id_of(layer_patterns_.size(), none);
    std::size_t layer_count = 0;
    for (std::size_t l = 0; l < layer_patterns_.size(); ++l) {
      if (used[l]) {
        id_of[l] = layer_count++;
      }
    }
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      for (std::size_t l = 0; l < layer_patterns_.size(); ++l) {
        if (!used[l]) {
          continue;
        }
        const std::size_t id = id_of[l];
        const double scale = std::pow(layer_rate_, static_cast<double>(layer_count - 1 - id));
        const std::string name = fmt::format("{}, layer {}", display_name(g), id);
        PlannedGroup decay{name, {}, groups_[g].options.lr, groups_[g].options.weight_decay, false, id, scale};
        PlannedGroup without_decay{name + " (no weight decay)", {}, groups_[g].options.lr, 0.0, true, id, scale};
        for (std::size_t i = 0; i < count; ++i) {
          if (owner[i] == g && layer_of[i] == l) {
            (split && no_decay[i] ? without_decay : decay).members.push_back(i);
          }
        }
        for (PlannedGroup* part : {&decay, &without_decay}) {
          if (!part->members.empty()) {
            result.groups.push_back(std::move(*part));
          }
        }
      }
    }
  }

  [[nodiscard]] std::string describe_with(std::string_view context,
                                          std::optional<std::pair<double, double>> defaults) const {
    const Plan planned = plan(context);
    const auto value = [&](const std::optional<double>& own, bool forced, bool is_lr) -> std::string {
      if (own) {
        return forced ? fmt::format("{} (no_weight_decay)", *own) : fmt::format("{}", *own);
      }
      if (!defaults) {
        return "default";
      }
      return fmt::format("{} (default)", is_lr ? defaults->first : defaults->second);
    };
    std::size_t width = 0;
    std::size_t total = 0;
    std::int64_t elements = 0;
    for (const auto& group : planned.groups) {
      for (const std::size_t member : group.members) {
        width = std::max(width, parameters_[member].name.size());
        elements += parameters_[member].tensor.numel();
        ++total;
      }
    }
    std::string text = fmt::format("{} optimizer group{}, {} parameter{} ({} elements){}\n", planned.groups.size(),
                                   planned.groups.size() == 1 ? "" : "s", total, total == 1 ? "" : "s", elements,
                                   include_frozen_ ? ", frozen parameters included" : "");
    for (std::size_t index = 0; index < planned.groups.size(); ++index) {
      const PlannedGroup& group = planned.groups[index];
      std::int64_t group_elements = 0;
      for (const std::size_t member : group.members) {
        group_elements += parameters_[member].tensor.numel();
      }
      std::string lr_text = value(group.lr, false, true);
      if (group.layer_id) {
        const std::string base = group.lr ? fmt::format("{}", *group.lr) : defaults ? fmt::format("{}", defaults->first)
                                                                                     : std::string("default");
        lr_text = group.lr || defaults
                      ? fmt::format("{} ({} x {})", (group.lr ? *group.lr : defaults->first) * group.scale, base,
                                    group.scale)
                      : fmt::format("default x {}", group.scale);
        lr_text += fmt::format("  layer={} scale={}", *group.layer_id, group.scale);
      }
      text += fmt::format("group {}: {}  lr={}  weight_decay={}  {} parameter{} ({} elements)\n", index, group.name,
                          lr_text,
                          value(group.weight_decay, group.weight_decay_from_no_weight_decay, false),
                          group.members.size(), group.members.size() == 1 ? "" : "s", group_elements);
      for (const std::size_t member : group.members) {
        std::string shape;
        for (const std::int64_t size : parameters_[member].tensor.sizes()) {
          shape += fmt::format("{}{}", shape.empty() ? "" : ", ", size);
        }
        text += fmt::format("    {:<{}}  [{}]\n", parameters_[member].name, width, shape);
      }
    }
    if (!planned.left_out.empty()) {
      text += fmt::format("left out (frozen): {}\n", list_names(planned.left_out, planned.left_out.size()));
    }
    return text;
  }

  std::vector<detail::ParameterEntry> parameters_;
  std::vector<Group> groups_;
  std::vector<std::vector<NamePattern>> no_weight_decay_;
  bool include_frozen_ = false;
  bool no_weight_decay_1d_ = false;
  std::vector<std::vector<NamePattern>> layer_patterns_;
  double layer_rate_ = 1.0;
};

}  // namespace torchkit
