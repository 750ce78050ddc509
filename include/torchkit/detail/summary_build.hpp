#pragma once
/// @file detail/summary_build.hpp
/// Stage 2 of summary.hpp, building rows: the module tree of a model, and the turning of what
/// the forward pass was seen to do (detail/summary_trace.hpp) into one Summary::Row per module
/// call, with parameter counts, mult-adds and the totals. Nothing here prints anything
/// (detail/summary_format.hpp draws the tables).
///
/// LibTorch has no forward hooks, so module calls are reconstructed:
/// - `Sequential` containers are walked exactly: each child is run by summary itself, so its
///   call and its output are known exactly.
/// - Inside any other forward (a "region"), the top-level ATen operators are recorded
///   (detail/summary_trace.hpp) and attributed to the region's submodules: an operator that
///   reads a module's own parameters or buffers (or tensors computed only from them, such as
///   `weight.t()`) belongs to that module; an operator that reads none is matched to a
///   parameter-free leaf module (ReLU, Dropout, MaxPool2d, Flatten, ...) by the operator's name,
///   searching the module tree outwards from the last module called. Container modules are
///   called for the span of their descendants' calls and output what the last of them output.
/// - A module called again gets a new row marked recursive. A module never called still gets a
///   row, with an empty shape.
///
/// A new per-row value (for a new column) is computed here, in SummaryBuilder::finish(), into a
/// new Summary::Row field. A layer type whose operators are named unlike the class goes in
/// operator_keys_of_type(). SummaryBuilder is a template over the row type (Summary::Row) so
/// that this header compiles on its own.

#include <torchkit/concepts.hpp>
#include <torchkit/detail/config.hpp>
#include <torchkit/detail/summary_trace.hpp>

#include <fmt/format.h>

#include <ATen/core/Tensor.h>
#include <c10/util/irange.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/parameterdict.h>
#include <torch/nn/modules/container/parameterlist.h>
#include <torch/nn/modules/container/sequential.h>

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace torchkit::detail::summary {

/// The class name a Python user would see: `torch::nn::Conv2dImpl` -> `Conv2d`,
/// `(anonymous namespace)::NetImpl` -> `Net`, `ns::Block<3>` -> `Block<3>`.
inline std::string short_type_name(std::string_view full) {
  std::size_t start = 0;
  int nesting = 0;
  for (std::size_t i = 0; i < full.size(); ++i) {
    const char c = full[i];
    if (c == '<' || c == '(') {
      ++nesting;
    } else if (c == '>' || c == ')') {
      --nesting;
    } else if (nesting == 0 && c == ':' && i + 1 < full.size() && full[i + 1] == ':') {
      start = i + 2;
      ++i;
    }
  }
  std::string name(full.substr(start));
  const std::size_t template_start = std::min(name.find('<'), name.size());
  constexpr std::string_view impl = "Impl";
  if (template_start > impl.size() && name.compare(template_start - impl.size(), impl.size(), impl) == 0) {
    name.erase(template_start - impl.size(), impl.size());
  }
  return name;
}

/// An operator or class name reduced for matching: namespace dropped, underscores dropped,
/// lower case. `aten::max_pool2d` -> `maxpool2d`, `MaxPool2d` -> `maxpool2d`, `aten::relu_` -> `relu`.
inline std::string operator_key(std::string_view name) {
  if (const auto colons = name.rfind("::"); colons != std::string_view::npos) {
    name.remove_prefix(colons + 2);
  }
  std::string key;
  key.reserve(name.size());
  for (const char c : name) {
    if (c != '_') {
      key.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    }
  }
  return key;
}

/// The operator keys a parameter-free module of this type shows up as. Most LibTorch modules
/// run the operator named like the class; the rest are listed here.
inline std::vector<std::string> operator_keys_of_type(const std::string& type) {
  const std::string key = operator_key(type.substr(0, type.find('<')));
  std::vector<std::string> keys{key, key + "withindices"};
  static const std::map<std::string, std::vector<std::string>, std::less<>> extra{
      {"dropout1d", {"featuredropout", "dropout"}},
      {"dropout2d", {"featuredropout", "dropout2d"}},
      {"dropout3d", {"featuredropout", "dropout3d"}},
      {"relu6", {"hardtanh", "relu6"}},
      {"softmax2d", {"softmax"}},
      {"softmin", {"softmax"}},
      {"zeropad1d", {"constantpadnd", "padenum", "pad"}},
      {"zeropad2d", {"constantpadnd", "padenum", "pad"}},
      {"zeropad3d", {"constantpadnd", "padenum", "pad"}},
      {"upsample", {"upsample"}},
      {"instancenorm1d", {"instancenorm"}},
      {"instancenorm2d", {"instancenorm"}},
      {"instancenorm3d", {"instancenorm"}},
      {"batchnorm1d", {"batchnorm"}},
      {"batchnorm2d", {"batchnorm"}},
      {"batchnorm3d", {"batchnorm"}},
      {"fold", {"col2im"}},
      {"unfold", {"im2col"}},
      {"bceloss", {"binarycrossentropy"}},
      {"bcewithlogitsloss", {"binarycrossentropywithlogits"}},
      {"nllloss", {"nllloss2d", "nlllossnd"}},
      {"kldivloss", {"kldiv"}},
  };
  if (const auto found = extra.find(key); found != extra.end()) {
    keys.insert(keys.end(), found->second.begin(), found->second.end());
  }
  if (key.find("pad") != std::string::npos) {
    keys.emplace_back("padenum");
    keys.emplace_back("pad");
  }
  return keys;
}

/// The key an observed operator is looked up by (all `upsample_*` operators share one).
inline std::string observed_operator_key(std::string_view name) {
  std::string key = operator_key(name);
  if (key.rfind("upsample", 0) == 0) {
    key = "upsample";
  }
  return key;
}

/// A parameter registered on a module itself.
struct OwnParameter {
  std::string name;  ///< as registered (`weight`, `weight_ih_l0`)
  const c10::TensorImpl* impl = nullptr;
  std::int64_t count = 0;
  bool trainable = false;
};

/// One module of the model, in pre-order (index 0 is the model itself).
struct ModuleNode {
  torch::nn::Module* module = nullptr;
  std::string name;  ///< dotted path, "" for the model itself
  std::string type;  ///< short class name
  int depth = 0;
  int parent = -1;
  std::vector<int> children;
  int subtree_end = 0;         ///< nodes [index, subtree_end) are this module and its descendants
  bool sequential = false;     ///< a Sequential: its children are walked exactly
  bool callable = true;        ///< false for ModuleList, ModuleDict, ParameterList, ParameterDict
  std::int64_t params = 0;          ///< parameters of the module and its descendants, each once
  std::int64_t trainable_params = 0;
  std::int64_t own_params = 0;      ///< parameters registered on this module itself
  std::vector<OwnParameter> own_parameters;
  std::vector<int> own_state;  ///< state indices of its own parameters and buffers
  std::vector<std::int64_t> kernel_size;  ///< a convolution's kernel (its weight's spatial sizes); empty otherwise
  bool leaf() const { return children.empty(); }
};

/// The mult-adds of one operator over a forward pass (Count::Operators).
struct OperatorTotal {
  std::string name;            ///< "aten::linear"
  std::int64_t calls = 0;      ///< how many times it ran (at the top level of a forward)
  std::int64_t mult_adds = 0;  ///< the sum of its calls' mult-adds
};

/// The output of one call as capture sees it (capture.hpp).
struct CallOutput {
  at::Tensor tensor;          ///< undefined where none was seen
  std::int64_t version = 0;   ///< the tensor's version counter when it was the call's output
  bool exact = false;         ///< what the forward returned (a Sequential child, the model)
  std::string problem;        ///< why the output cannot be trusted ("" when it can)
};

/// The totals of a summary, counted as torchinfo counts them.
struct SummaryTotals {
  std::int64_t total_params = 0;            ///< each parameter tensor once
  std::int64_t trainable_params = 0;
  std::int64_t total_mult_adds = 0;         ///< leaf calls' mult-adds
  std::int64_t forward_backward_bytes = 0;  ///< 2 x the outputs of leaf calls with parameters
  std::int64_t param_bytes = 0;
};

/// Builds the rows of one summary (`Row` is Summary::Row, the one row model): the module tree,
/// the observed calls, and per row its counts and torchinfo's layout fields.
template <class Row>
class SummaryBuilder {
 public:
  explicit SummaryBuilder(torch::nn::Module& root) : root_(root) {
    add_node(root, "", 0, -1);
    count_subtree_parameters();
    call_count_.assign(nodes_.size(), 0);
    appeared_.assign(nodes_.size(), false);
    capture_node_.assign(nodes_.size(), false);
    recorder_.listener = this;
    recorder_.on_recorded = [](void* self) { static_cast<SummaryBuilder*>(self)->attribute_recorded(); };
  }
  // The recorder calls back into this object: it stays where it was made.
  SummaryBuilder(const SummaryBuilder&) = delete;
  SummaryBuilder& operator=(const SummaryBuilder&) = delete;
  SummaryBuilder(SummaryBuilder&&) = delete;
  SummaryBuilder& operator=(SummaryBuilder&&) = delete;
  ~SummaryBuilder() = default;

  const std::vector<ModuleNode>& nodes() const { return nodes_; }
  const std::vector<Row>& rows() const { return rows_; }
  Recorder& recorder() { return recorder_; }

  /// Count::Operators: mult-adds from the matmul-like operators each call ran (set before the
  /// forward pass).
  void count_operators(bool on) {
    count_operators_ = on;
    recorder_.count_operators = on;
  }
  /// capture: keep the output tensors of the calls of the `selected` modules (one flag per node;
  /// set before the pass). Operators are attributed as they end (attribute_recorded), so each
  /// selected call holds only its latest output; every other operator output is let go at once,
  /// as in a plain forward pass.
  void keep_outputs(const std::vector<bool>& selected) {
    recorder_.keep_outputs = true;
    for (std::size_t node = 0; node < nodes_.size() && node < selected.size(); ++node) {
      capture_node_[node] = selected[node];
    }
  }
  /// capture: the output of each row's call.
  const std::vector<CallOutput>& call_outputs() const { return call_outputs_; }
  /// The module node of each row.
  const std::vector<int>& row_nodes() const { return row_nodes_; }
  /// capture: the exact output of a call (what its forward returned).
  void set_output_tensor(int row, const at::Tensor& tensor) {
    if (recorder_.keep_outputs && tensor.defined() && capture_node_[static_cast<std::size_t>(row_nodes_[static_cast<std::size_t>(row)])]) {
      call_outputs_[static_cast<std::size_t>(row)] =
          CallOutput{tensor, static_cast<std::int64_t>(tensor._version()), /*exact=*/true, ""};
    }
  }

  /// Count::Operators: each counted operator's calls and mult-adds, in order of first call.
  const std::vector<OperatorTotal>& operator_totals() const { return operator_totals_; }

  /// Appends the row of a new call of `node`; returns its index.
  int open_call(int node) {
    Row row;
    row.depth = nodes_[static_cast<std::size_t>(node)].depth;
    row.called = true;
    ++call_count_[static_cast<std::size_t>(node)];
    // Recursive: this module object had a row before (a module registered twice is one module).
    row.recursive = !seen_modules_.insert(nodes_[static_cast<std::size_t>(node)].module).second;
    appeared_[static_cast<std::size_t>(node)] = true;
    push_row(node, std::move(row));
    return static_cast<int>(rows_.size()) - 1;
  }

  void set_input(int row, std::vector<std::int64_t> shape) { rows_[static_cast<std::size_t>(row)].input_shape = std::move(shape); }

  void set_output(int row, std::vector<std::int64_t> shape, std::int64_t element_size) {
    rows_[static_cast<std::size_t>(row)].output_shape = std::move(shape);
    rows_[static_cast<std::size_t>(row)].output_element_size = element_size;
  }

  /// The output of the last recorded operator of the region (used where a forward returns
  /// something that is no tensor and no tuple of tensors).
  const OpRecord* last_output_of_region() const {
    for (auto op = recorder_.ops.rbegin(); op != recorder_.ops.rend(); ++op) {
      if (op->has_output) {
        return &*op;
      }
    }
    return nullptr;
  }

  /// Attributes the operators recorded while `region_node`'s forward ran to its descendants
  /// (those not attributed yet as they ended; see attribute_recorded) and closes the region.
  ///
  /// Count::Operators: an operator's mult-adds go to the call it is attributed to; one that is
  /// attributed to no module (`q.matmul(k)` inside an attention's custom forward) goes to the
  /// innermost open call of a module with submodules (the attention), else to the region's call.
  void attribute_region(int region_node) {
    if (!region_.active || region_.id != recorder_.regions) {
      begin_region(region_node);
    }
    while (region_.done < recorder_.ops.size()) {
      attribute_op(region_.done++);
    }
    region_.active = false;
    region_.open.clear();
    watches_.clear();
  }

  /// Attributes the operators recorded since the last call (the recorder calls it as each
  /// operator ends). A region is always opened by the call of its module (open_call), so the
  /// last row is the region's call. Attributing an operator reads only it and what came before,
  /// so doing it now gives the same rows as doing it after the region.
  void attribute_recorded() {
    if (!region_.active || region_.id != recorder_.regions) {
      begin_region(row_nodes_.empty() ? 0 : row_nodes_.back());
    }
    while (region_.done < recorder_.ops.size()) {
      attribute_op(region_.done++);
    }
  }

  /// Adds the rows of modules never called, numbers the rows, fills in each row's module
  /// (name, type, counts) and computes mult-adds and the totals. Call once, after the forward
  /// pass (or without one, for the parameters-only summary).
  void finish() {
    if (rows_.empty() || row_nodes_.front() != 0) {
      insert_row(0, 0, Row{});
      appeared_[0] = true;
      seen_modules_.insert(nodes_[0].module);
    }
    add_rows_of_modules_never_called();
    number_rows();
    describe_modules();
    compute_mult_adds();
    count_totals();
  }

  /// The finished rows (moved out).
  std::vector<Row> take_rows() { return std::move(rows_); }
  /// Count::Operators: the mult-adds of the operators attributed to each row's call itself.
  const std::vector<std::int64_t>& own_operator_mult_adds() const { return own_mult_adds_; }
  const SummaryTotals& totals() const { return totals_; }

 private:
  void push_row(int node, Row row) {
    rows_.push_back(std::move(row));
    row_nodes_.push_back(node);
    own_mult_adds_.push_back(0);
    call_outputs_.emplace_back();
  }
  void insert_row(std::size_t position, int node, Row row) {
    rows_.insert(rows_.begin() + static_cast<std::ptrdiff_t>(position), std::move(row));
    row_nodes_.insert(row_nodes_.begin() + static_cast<std::ptrdiff_t>(position), node);
    own_mult_adds_.insert(own_mult_adds_.begin() + static_cast<std::ptrdiff_t>(position), 0);
    call_outputs_.insert(call_outputs_.begin() + static_cast<std::ptrdiff_t>(position), CallOutput{});
  }

  void begin_region(int region_node) {
    region_.active = true;
    region_.id = recorder_.regions;
    region_.node = region_node;
    region_.row = static_cast<int>(rows_.size()) - 1;  // open_call(region_node) came last
    region_.context = region_node;
    region_.open.clear();
    region_.done = 0;
    watches_.clear();
  }

  /// Attributes the region's operator `index` (all before it are attributed).
  void attribute_op(std::size_t index) {
    OpRecord& op = recorder_.ops[index];
    const int region_node = region_.node;
    std::vector<OpenCall>& open = region_.open;
    int module = -1;
    if (op.has_output && !op.prepares_state()) {
      const bool reads_state = !op.state_read.empty();
      module = reads_state ? owner_of(op, region_node, open) : parameter_free_module_for(op, region_node, region_.context);
      if (module >= 0) {
        watches_.clear();  // an operator of a module ends the look at what follows an output
        record_event(region_node, module, op, reads_state, open);
      }
      region_.context = module >= 0 ? module : region_.context;
    }
    if (module < 0 && !watches_.empty()) {
      check_watched_outputs(op);
    }
    if (count_operators_ && op.cost.counted) {
      charge_operator(op, module >= 0 ? innermost_open_row(open, /*with_submodules=*/false, region_.row)
                                      : innermost_open_row(open, /*with_submodules=*/true, region_.row));
    }
    if (recorder_.keep_outputs) {  // held by the calls whose output it is; nothing else needs them
      op.output = at::Tensor();
      std::vector<const c10::TensorImpl*>().swap(op.inputs);
    }
  }

  /// A LibTorch layer without submodules (Conv2d, BatchNorm2d, ReLU): its forward is known to
  /// end with the operator that makes its output.
  bool builtin_leaf(int node) const {
    const ModuleNode& module = nodes_[static_cast<std::size_t>(node)];
    return module.leaf() && module.module->name().rfind("torch::nn::", 0) == 0;
  }

  /// Whether `node`'s output is known to be the output of an operator of `owner` (a LibTorch
  /// layer): `node` is that layer, or a Sequential whose last call is (a Sequential whose last
  /// call is) that layer.
  bool output_known(int node, int owner) const {
    if (owner < 0 || !builtin_leaf(owner)) {
      return false;
    }
    for (int ancestor = owner; ancestor != node; ancestor = nodes_[static_cast<std::size_t>(ancestor)].parent) {
      const int parent = nodes_[static_cast<std::size_t>(ancestor)].parent;
      if (parent < 0 || exact_sequential(nodes_[static_cast<std::size_t>(parent)].module) == nullptr) {
        return false;
      }
    }
    return true;
  }

  /// capture: a reconstructed call output is the output of the last operator attributed to the
  /// call. For a module with a forward of its own (a container, a custom layer), operators that
  /// come after it and are attributed to no module may still belong to that forward
  /// (`return conv(x) + x`): where one of them reads the output, the output is not known.
  /// `op` is such an operator (attributed to no module, after the watched outputs).
  void check_watched_outputs(const OpRecord& op) {
    for (std::size_t i = 0; i < watches_.size();) {
      const OutputWatch& watch = watches_[i];
      if (std::find(op.inputs.begin(), op.inputs.end(), watch.impl) == op.inputs.end()) {
        ++i;
        continue;
      }
      call_outputs_[static_cast<std::size_t>(watch.row)].problem = fmt::format(
          "its last recognised operation is {}, but {} (part of no module) reads that result right after it, "
          "and may belong to its forward (`return layer(x) + x`) as well as to its caller's",
          recorder_.ops[watch.op].name, op.name);
      watches_.erase(watches_.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }

  /// The row of the innermost open call of a callable module (with submodules, if asked), else
  /// `fallback`.
  template <class Open>
  int innermost_open_row(const Open& open, bool with_submodules, int fallback) const {
    for (auto call = open.rbegin(); call != open.rend(); ++call) {
      const ModuleNode& node = nodes_[static_cast<std::size_t>(call->node)];
      if (node.callable && (!with_submodules || !node.leaf())) {
        return call->row;
      }
    }
    return fallback;
  }

  void charge_operator(const OpRecord& op, int row) {
    if (row >= 0) {
      own_mult_adds_[static_cast<std::size_t>(row)] += op.mult_adds;
    }
    auto [entry, inserted] = operator_index_.emplace(op.name, operator_totals_.size());
    if (inserted) {
      operator_totals_.push_back(OperatorTotal{op.name, 0, 0});
    }
    OperatorTotal& total = operator_totals_[entry->second];
    ++total.calls;
    total.mult_adds += op.mult_adds;
  }
  const ModuleNode& node_of_row(std::size_t row) const { return nodes_[static_cast<std::size_t>(row_nodes_[row])]; }

  struct OpenCall {
    int node;
    int row;
    std::vector<int> state_read;     ///< state read by this call so far
    std::vector<int> called_children;
  };

  int add_node(torch::nn::Module& module, std::string name, int depth, int parent) {
    const int index = static_cast<int>(nodes_.size());
    {
      ModuleNode node;
      node.module = &module;
      node.name = std::move(name);
      node.type = short_type_name(module.name());
      node.depth = depth;
      node.parent = parent;
      node.sequential = dynamic_cast<torch::nn::SequentialImpl*>(&module) != nullptr;
      node.callable = dynamic_cast<torch::nn::ModuleListImpl*>(&module) == nullptr &&
                      dynamic_cast<torch::nn::ModuleDictImpl*>(&module) == nullptr &&
                      dynamic_cast<torch::nn::ParameterListImpl*>(&module) == nullptr &&
                      dynamic_cast<torch::nn::ParameterDictImpl*>(&module) == nullptr;
      nodes_.push_back(std::move(node));
    }
    {
      ModuleNode& node = nodes_.back();
      for (const auto& item : module.named_parameters(/*recurse=*/false)) {
        const at::Tensor& parameter = item.value();
        node.own_params += parameter.numel();
        node.own_parameters.push_back(
            OwnParameter{item.key(), parameter.unsafeGetTensorImpl(), parameter.numel(), parameter.requires_grad()});
        if (item.key() == "weight" && parameter.dim() >= 3 && node.type.find("Conv") != std::string::npos) {
          node.kernel_size.assign(parameter.sizes().begin() + 2, parameter.sizes().end());
        }
        add_state(index, parameter);
      }
      for (const auto& item : module.named_buffers(/*recurse=*/false)) {
        add_state(index, item.value());
      }
    }
    const std::string prefix = nodes_.back().name.empty() ? "" : nodes_.back().name + ".";
    for (const auto& child : module.named_children()) {
      const int child_index = add_node(*child.value(), prefix + child.key(), depth + 1, index);
      nodes_[static_cast<std::size_t>(index)].children.push_back(child_index);
    }
    ModuleNode& node = nodes_[static_cast<std::size_t>(index)];
    node.subtree_end = static_cast<int>(nodes_.size());
    if (node.leaf() && node.own_state.empty()) {
      for (const std::string& key : operator_keys_of_type(node.type)) {
        parameter_free_by_key_[key].push_back(index);
      }
    }
    return index;
  }

  /// Parameters of each module and its descendants, each tensor once.
  void count_subtree_parameters() {
    bool shared = false;
    for (const ModuleNode& node : nodes_) {
      for (const int state : node.own_state) {
        shared = shared || state_owners_[static_cast<std::size_t>(state)].size() > 1;
      }
    }
    if (!shared) {  // every parameter has one owner: sum bottom-up
      for (std::size_t index = nodes_.size(); index-- > 0;) {
        ModuleNode& node = nodes_[index];
        for (const OwnParameter& parameter : node.own_parameters) {
          node.params += parameter.count;
          node.trainable_params += parameter.trainable ? parameter.count : 0;
        }
        for (const int child : node.children) {
          node.params += nodes_[static_cast<std::size_t>(child)].params;
          node.trainable_params += nodes_[static_cast<std::size_t>(child)].trainable_params;
        }
      }
      return;
    }
    for (ModuleNode& node : nodes_) {  // tied parameters: count each tensor once per subtree
      std::unordered_set<const c10::TensorImpl*> seen;
      const int first = static_cast<int>(&node - nodes_.data());
      for (int other = first; other < node.subtree_end; ++other) {
        for (const OwnParameter& parameter : nodes_[static_cast<std::size_t>(other)].own_parameters) {
          if (seen.insert(parameter.impl).second) {
            node.params += parameter.count;
            node.trainable_params += parameter.trainable ? parameter.count : 0;
          }
        }
      }
    }
  }

  void add_state(int node, const at::Tensor& tensor) {
    if (!tensor.defined()) {
      return;
    }
    const auto [entry, inserted] =
        recorder_.state_index.emplace(tensor.unsafeGetTensorImpl(), static_cast<int>(state_owners_.size()));
    if (inserted) {
      state_owners_.emplace_back();
    }
    auto& owners = state_owners_[static_cast<std::size_t>(entry->second)];
    if (std::find(owners.begin(), owners.end(), node) == owners.end()) {
      owners.push_back(node);
      nodes_[static_cast<std::size_t>(node)].own_state.push_back(entry->second);
    }
  }

  bool strictly_below(int node, int ancestor) const {
    return node > ancestor && node < nodes_[static_cast<std::size_t>(ancestor)].subtree_end;
  }

  static bool contains(const std::vector<int>& values, int value) {
    return std::find(values.begin(), values.end(), value) != values.end();
  }

  /// The module whose own state the operator reads most of (below the region's module).
  int owner_of(const OpRecord& op, int region_node, const std::vector<OpenCall>& open) const {
    int best = -1;
    std::size_t best_score = 0;
    int best_rank = 0;
    for (const int state : op.state_read) {
      for (const int candidate : state_owners_[static_cast<std::size_t>(state)]) {
        if (!strictly_below(candidate, region_node)) {
          continue;
        }
        const auto& own = nodes_[static_cast<std::size_t>(candidate)].own_state;
        std::size_t score = 0;
        for (const int read : op.state_read) {
          score += contains(own, read) ? 1 : 0;
        }
        // Ties: a module whose call is open, then one not called yet, then registration order.
        const bool is_open = std::any_of(open.begin(), open.end(), [&](const OpenCall& call) { return call.node == candidate; });
        const int rank = is_open ? 2 : (call_count_[static_cast<std::size_t>(candidate)] == 0 ? 1 : 0);
        if (best < 0 || score > best_score || (score == best_score && rank > best_rank) ||
            (score == best_score && rank == best_rank && candidate < best)) {
          best = candidate;
          best_score = score;
          best_rank = rank;
        }
      }
    }
    return best;
  }

  /// Whether every module with parameters registered before `node` in its parent has been
  /// called: a parameter-free module is usually called after the layers registered before it.
  bool plausible_next(int node) const {
    const int parent = nodes_[static_cast<std::size_t>(node)].parent;
    for (int other = parent + 1; other < node; ++other) {
      if (!nodes_[static_cast<std::size_t>(other)].own_state.empty() && call_count_[static_cast<std::size_t>(other)] == 0) {
        return false;
      }
    }
    return true;
  }

  /// The parameter-free leaf module an operator that reads no module state belongs to, or -1.
  int parameter_free_module_for(const OpRecord& op, int region_node, int context) const {
    const auto found = parameter_free_by_key_.find(observed_operator_key(op.name));
    if (found == parameter_free_by_key_.end()) {
      return -1;
    }
    const std::vector<int>& candidates = found->second;
    auto pick = [&](auto&& accept) {
      int first = -1;
      for (const int candidate : candidates) {
        if (!accept(candidate)) {
          continue;
        }
        if (candidate > context) {
          return candidate;
        }
        if (first < 0) {
          first = candidate;
        }
      }
      return first;
    };
    int scope = context == region_node ? region_node : nodes_[static_cast<std::size_t>(context)].parent;
    int called_before = -1;
    while (true) {
      const int fresh = pick([&](int candidate) {
        return strictly_below(candidate, scope) && call_count_[static_cast<std::size_t>(candidate)] == 0 &&
               (called_before < 0 || plausible_next(candidate));
      });
      if (fresh >= 0) {
        return fresh;
      }
      if (called_before < 0) {
        called_before = pick([&](int candidate) {
          return strictly_below(candidate, scope) && call_count_[static_cast<std::size_t>(candidate)] > 0;
        });
      }
      if (scope == region_node) {
        return called_before;
      }
      scope = nodes_[static_cast<std::size_t>(scope)].parent;
    }
  }

  /// Opens, continues or closes the calls an attributed operator implies.
  void record_event(int region_node, int module, const OpRecord& op, bool reads_state, std::vector<OpenCall>& open) {
    // The chain of modules from the region's child down to `module`.
    std::vector<int> chain;
    for (int node = module; node != region_node; node = nodes_[static_cast<std::size_t>(node)].parent) {
      chain.push_back(node);
    }
    std::reverse(chain.begin(), chain.end());

    std::size_t matched = 0;
    while (matched < open.size() && matched < chain.size() && open[matched].node == chain[matched]) {
      ++matched;
    }
    bool continuation = false;
    if (matched == chain.size()) {
      // `module` is open: the operator continues its call if it reads state the call has not
      // read yet (`x * weight + bias`), or, for a module with submodules (MultiheadAttention),
      // if none of them has been called yet in this call (the in-projections of q, k and v all
      // read in_proj_weight). Otherwise it is a new call of the module.
      const OpenCall& call = open[matched - 1];
      const bool new_state = std::none_of(op.state_read.begin(), op.state_read.end(),
                                          [&](int state) { return contains(call.state_read, state); });
      const bool before_submodules = !nodes_[static_cast<std::size_t>(module)].leaf() && call.called_children.empty();
      continuation = reads_state && (new_state || before_submodules);
      if (!continuation) {
        matched = chain.size() - 1;
      }
    }
    if (!continuation && reads_state && chain.size() >= 2 && matched == chain.size() - 1) {
      // A module with parameters called again inside the same call of its parent: the parent
      // was called again (`block(block(x))`), unless the parent cannot be called (ModuleList).
      const OpenCall& parent_call = open[matched - 1];
      if (nodes_[static_cast<std::size_t>(parent_call.node)].callable && contains(parent_call.called_children, module)) {
        matched -= 1;
      }
    }
    open.resize(matched);
    for (std::size_t i = matched; i < chain.size(); ++i) {
      const int node = chain[i];
      int row = -1;
      if (nodes_[static_cast<std::size_t>(node)].callable) {
        row = open_call(node);
        rows_[static_cast<std::size_t>(row)].input_shape = op.input_shape;
      } else {
        Row record;
        record.depth = nodes_[static_cast<std::size_t>(node)].depth;
        record.placeholder = appeared_[static_cast<std::size_t>(node)];
        record.recursive = !seen_modules_.insert(nodes_[static_cast<std::size_t>(node)].module).second;
        appeared_[static_cast<std::size_t>(node)] = true;
        push_row(node, std::move(record));
        row = static_cast<int>(rows_.size()) - 1;
      }
      if (i > 0) {
        open[i - 1].called_children.push_back(node);
      }
      open.push_back(OpenCall{node, row, {}, {}});
    }
    OpenCall& call = open.back();
    call.state_read.insert(call.state_read.end(), op.state_read.begin(), op.state_read.end());
    for (const OpenCall& entry : open) {
      if (nodes_[static_cast<std::size_t>(entry.node)].callable) {
        set_output(entry.row, op.output_shape, op.output_element_size);
        if (recorder_.keep_outputs && op.output.defined() && capture_node_[static_cast<std::size_t>(entry.node)]) {
          call_outputs_[static_cast<std::size_t>(entry.row)] = CallOutput{op.output, op.output_version, false, ""};
          if (!output_known(entry.node, module)) {
            watches_.push_back(OutputWatch{entry.row, op.output.unsafeGetTensorImpl(),
                                           static_cast<std::size_t>(&op - recorder_.ops.data())});
          }
        }
      }
    }
  }

  void add_rows_of_modules_never_called() {
    for (std::size_t node = 1; node < nodes_.size(); ++node) {
      if (appeared_[node]) {
        continue;
      }
      const int parent = nodes_[node].parent;
      std::size_t position = 0;
      while (row_nodes_[position] != parent) {
        ++position;
      }
      const int parent_depth = rows_[position].depth;
      ++position;
      while (position < rows_.size() && rows_[position].depth > parent_depth) {
        ++position;
      }
      Row row;
      row.depth = nodes_[node].depth;
      row.recursive = !seen_modules_.insert(nodes_[node].module).second;
      insert_row(position, static_cast<int>(node), std::move(row));
      appeared_[node] = true;
    }
  }

  void number_rows() {
    std::vector<int> counters;
    for (Row& row : rows_) {
      if (row.depth == 0 || row.placeholder) {
        continue;
      }
      if (counters.size() <= static_cast<std::size_t>(row.depth)) {
        counters.resize(static_cast<std::size_t>(row.depth) + 1, 0);
      }
      row.depth_index = ++counters[static_cast<std::size_t>(row.depth)];
    }
  }

  /// torchinfo's rule (torchinfo 1.7, layer_info.py, LayerInfo.calculate_macs; the layer type
  /// tests are its `"Conv" in class_name` / `"Linear" in class_name`), per parameter of a leaf module: `weight`/`bias` of a Conv: count times
  /// N times the spatial output size; of a Linear: count times prod(output[:-1]); of anything
  /// else: count times output[0]; other parameters named `*weight*`/`*bias*` (RNN weights such as
  /// `weight_ih_l0`): count times prod(output[:2]).
  std::int64_t leaf_mult_adds(const ModuleNode& node, const std::vector<std::int64_t>& output) const {
    if (output.empty()) {
      return 0;
    }
    auto product = [&](std::size_t begin, std::size_t end) {
      std::int64_t result = 1;
      for (std::size_t i = begin; i < std::min(end, output.size()); ++i) {
        result *= output[i];
      }
      return result;
    };
    const bool conv = node.type.find("Conv") != std::string::npos;
    const bool linear = node.type.find("Linear") != std::string::npos;
    std::int64_t total = 0;
    for (const OwnParameter& parameter : node.own_parameters) {
      const std::string& name = parameter.name;
      const std::int64_t count = parameter.count;
      if (name == "weight" || name == "bias") {
        if (conv) {
          total += count * output[0] * product(2, output.size());
        } else if (linear) {
          total += count * product(0, output.size() - 1);
        } else {
          total += count * output[0];
        }
      } else if (name.find("weight") != std::string::npos || name.find("bias") != std::string::npos) {
        total += count * product(0, 2);
      }
    }
    return total;
  }

  /// What each row shows of its module: name, type, counts, whether it is a leaf or a container.
  void describe_modules() {
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      const ModuleNode& node = node_of_row(i);
      Row& row = rows_[i];
      row.name = node.name;
      row.type = node.type;
      row.params = node.params;
      row.trainable_params = node.trainable_params;
      row.own_params = node.own_params;
      row.kernel_size = node.kernel_size;
      row.leaf = node.leaf();
      row.container = node.sequential || !node.callable;
    }
  }

  void compute_mult_adds() {
    if (count_operators_) {
      // A call's mult-adds are those of the operators attributed to it and to the calls nested in it.
      for (std::size_t i = 0; i < rows_.size(); ++i) {
        std::int64_t sum = own_mult_adds_[i];
        for (std::size_t j = i + 1; j < rows_.size() && rows_[j].depth > rows_[i].depth; ++j) {
          sum += own_mult_adds_[j];
        }
        rows_[i].mult_adds = sum;
      }
      return;
    }
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      const ModuleNode& node = node_of_row(i);
      rows_[i].mult_adds = node.leaf() ? leaf_mult_adds(node, rows_[i].output_shape) : 0;
    }
    // A container's mult-adds are those of the leaf calls nested in its call.
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      if (rows_[i].leaf) {
        continue;
      }
      std::int64_t sum = 0;
      for (std::size_t j = i + 1; j < rows_.size() && rows_[j].depth > rows_[i].depth; ++j) {
        if (rows_[j].leaf) {
          sum += rows_[j].mult_adds;
        }
      }
      rows_[i].mult_adds = sum;
    }
  }

  /// torchinfo's totals: parameters (each tensor once) and their bytes; mult-adds of the leaf
  /// calls; 2 x the output bytes of every call of a leaf module with parameters.
  void count_totals() {
    for (const std::int64_t mult_adds : own_mult_adds_) {
      totals_.total_mult_adds += count_operators_ ? mult_adds : 0;
    }
    for (const Row& row : rows_) {
      if (row.leaf && row.called) {
        totals_.total_mult_adds += count_operators_ ? 0 : row.mult_adds;
        if (row.params > 0 && !row.output_shape.empty()) {
          std::int64_t elements = 1;
          for (const std::int64_t size : row.output_shape) {
            elements *= size;
          }
          totals_.forward_backward_bytes += 2 * row.output_element_size * elements;
        }
      }
    }
    for (const NamedParameter& parameter : named_parameters_of(root_)) {
      const std::int64_t count = parameter.tensor.numel();
      totals_.total_params += count;
      totals_.trainable_params += parameter.tensor.requires_grad() ? count : 0;
      totals_.param_bytes += count * static_cast<std::int64_t>(parameter.tensor.element_size());
    }
  }

  std::vector<ModuleNode> nodes_;
  std::vector<std::vector<int>> state_owners_;  ///< state index -> nodes owning it directly
  std::unordered_map<std::string, std::vector<int>> parameter_free_by_key_;
  std::vector<int> call_count_;
  std::vector<bool> appeared_;
  std::unordered_set<const torch::nn::Module*> seen_modules_;
  torch::nn::Module& root_;
  std::vector<Row> rows_;
  std::vector<int> row_nodes_;  ///< the module node of each row
  SummaryTotals totals_;
  Recorder recorder_;
  bool count_operators_ = false;
  std::vector<std::int64_t> own_mult_adds_;  ///< per row: Count::Operators mult-adds of the call itself
  std::vector<OperatorTotal> operator_totals_;
  std::unordered_map<std::string, std::size_t> operator_index_;
  std::vector<CallOutput> call_outputs_;    ///< per row: capture's view of the call's output
  std::vector<bool> capture_node_;          ///< capture: per node, whether its calls' outputs are kept
  /// The region whose operators are being attributed, and the attribution's state.
  struct RegionState {
    bool active = false;
    std::uint64_t id = 0;  ///< Recorder::regions when it began
    int node = 0;          ///< the module whose forward the region is
    int row = -1;          ///< the row of that call
    int context = 0;       ///< the module the last attributed operator was given
    std::vector<OpenCall> open;
    std::size_t done = 0;  ///< operators of the region attributed so far
  };
  RegionState region_;
  /// capture: a reconstructed output of a selected call whose following operators of no module
  /// are checked for reading it (until an operator of a module comes).
  struct OutputWatch {
    int row;
    const c10::TensorImpl* impl;  ///< kept unique: the call's output holds the tensor
    std::size_t op;               ///< the operator that made it
  };
  std::vector<OutputWatch> watches_;
};

}  // namespace torchkit::detail::summary
