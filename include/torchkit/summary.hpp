#pragma once
/// @file summary.hpp
/// Tip 2: print a model summary: each layer's output shape and parameter count, mult-adds and
/// memory estimates, for any LibTorch module.
///
/// Python (pytorch-summary / torchinfo):
///
///     from torchinfo import summary
///     summary(model, input_size=(2, 3, 224, 224))
///
/// C++:
///
///     std::cout << torchkit::summary(net, {3, 224, 224}) << '\n';
///
/// LibTorch has no forward hooks. summary() runs one forward pass (in eval mode, without
/// gradients) and reconstructs the module calls: `Sequential` containers are walked child by
/// child, and for any other forward the ATen operators it runs are observed with thread-local
/// `at::RecordFunction` callbacks and attributed to the modules whose parameters they read
/// (parameter-free modules such as ReLU or MaxPool2d by the operator they run). See
/// detail/summary_build.hpp for the rules.
///
/// What the reconstruction cannot know, and what it does then:
/// - A functional call (`torch::relu(x)`) and a registered `ReLU` module run the same operator;
///   an operator is given to a parameter-free module only where one of that kind is registered
///   near the last module called, so a model mixing both may show a functional call as a
///   (recursive) call of the module.
/// - A parameter-free module that runs no operator of its own name (`Identity`, a custom
///   parameter-free module) is not seen: it appears with an empty shape, like a module never
///   called.
/// - Inside a custom forward, a container's output is the output of the last module call
///   inside it (an `x + identity` after its last layer is not seen; the shape is the same).
/// - Looping over a Sequential's children runs the same operators as calling it, and shows as
///   a call of the Sequential.
/// Sequential children and the model itself are exact: their outputs are what forward returned.

#include <torchkit/concepts.hpp>
#include <torchkit/detail/config.hpp>
#include <torchkit/detail/shape.hpp>
#include <torchkit/detail/summary_build.hpp>
#include <torchkit/detail/summary_format.hpp>
#include <torchkit/detail/summary_trace.hpp>
#include <torchkit/error.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <c10/util/Type.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace torchkit {

/// How Summary::to_string() lays the table out.
enum class SummaryStyle {
  Tree,  ///< torchinfo: `Layer (type:depth-idx)`, `├─Conv2d: 1-1`, depth-limited, footer in MB
  Flat,  ///< pytorch-summary: `Layer (type)  Output Shape  Param #`, `Conv2d-1`, batch as -1
};

/// Options of summary(). Designated initializers read well: `{.depth = 1, .batch_size = 4}`.
struct SummaryOptions {
  int depth = 3;                         ///< rows deeper than this are not printed (torchinfo's depth)
  int64_t batch_size = 2;                ///< prepended to each input_size (2, so BatchNorm works)
  c10::Device device = at::kCPU;         ///< where the generated inputs are made; the model must be there
  at::ScalarType dtype = at::kFloat;     ///< dtype of the generated inputs
  SummaryStyle style = SummaryStyle::Tree;
  std::vector<at::ScalarType> dtypes{};  ///< one dtype per input, overriding `dtype` (torchinfo's dtypes)
  bool show_mult_adds = false;           ///< Tree style: add torchinfo's "Mult-Adds" column
  bool show_trainable = false;           ///< Tree style: add torchinfo's "Trainable" column (True/False/Partial)
};

class Summary;

namespace detail::summary_impl {
struct SummaryAccess;
}  // namespace detail::summary_impl

/// A model summary: one row per module call, in call order, and totals counted as torchinfo
/// counts them. Printable (`to_string()`, `operator<<`).
///
///     auto info = torchkit::summary(net, {1, 28, 28});
///     std::cout << info << '\n';
///     int64_t params = info.total_params();
class Summary {
 public:
  /// One module call (or, for a module never called, the module itself).
  struct Row {
    std::string name;                   ///< dotted path (`features.0`); "" for the model itself
    std::string type;                   ///< short class name (`Conv2d`)
    int depth = 0;                      ///< 0 for the model, 1 for its children, ...
    std::vector<int64_t> output_shape;  ///< first tensor of the output; empty where unknown
    int64_t params = 0;                 ///< parameters of the module and its submodules, each once
    int64_t trainable_params = 0;       ///< of those, how many require grad
    int64_t mult_adds = 0;              ///< this call's (for a container: its leaf calls' sum)
    bool recursive = false;             ///< the module was called (or shown) before
  };

  /// One row per module call, in call order; modules never called appear too, with an empty
  /// shape, after the rows of their parent.
  [[nodiscard]] const std::vector<Row>& rows() const noexcept { return rows_; }

  /// Parameters of the model, each tensor once (tied parameters count once).
  [[nodiscard]] int64_t total_params() const noexcept { return total_params_; }
  [[nodiscard]] int64_t trainable_params() const noexcept { return trainable_params_; }
  [[nodiscard]] int64_t non_trainable_params() const noexcept { return total_params_ - trainable_params_; }
  /// Sum of the leaf modules' mult-adds over all calls (torchinfo's "Total mult-adds").
  [[nodiscard]] int64_t total_mult_adds() const noexcept { return total_mult_adds_; }
  /// Bytes of the inputs of the forward pass.
  [[nodiscard]] int64_t input_bytes() const noexcept { return input_bytes_; }
  /// 2 x the bytes of the outputs of every call of a leaf module with parameters (activations
  /// and their gradients), torchinfo's "Forward/backward pass size".
  [[nodiscard]] int64_t forward_backward_bytes() const noexcept { return forward_backward_bytes_; }
  /// Bytes of the parameters, each tensor once.
  [[nodiscard]] int64_t param_bytes() const noexcept { return param_bytes_; }
  [[nodiscard]] int64_t total_bytes() const noexcept { return input_bytes_ + forward_backward_bytes_ + param_bytes_; }

  /// Whether a forward pass was run (false for `summary(model)`: parameters only).
  [[nodiscard]] bool has_forward_pass() const noexcept { return forward_pass_; }
  [[nodiscard]] const SummaryOptions& options() const noexcept { return options_; }

  /// The table in the style of the options.
  [[nodiscard]] std::string to_string() const { return to_string(options_.style); }
  /// The table in the given style.
  [[nodiscard]] std::string to_string(SummaryStyle style) const {
    return style == SummaryStyle::Flat ? flat_table() : tree_table();
  }

  friend std::ostream& operator<<(std::ostream& out, const Summary& summary) { return out << summary.to_string(); }

 private:
  friend struct detail::summary_impl::SummaryAccess;

  struct Layout {
    bool leaf = true;          ///< the module has no submodules
    bool called = false;       ///< a call seen in the forward pass
    bool placeholder = false;  ///< a container repeated to keep the tree a tree
    bool container = false;    ///< Sequential, ModuleList, ModuleDict: not shown in the Flat style
    int depth_index = 0;
    int64_t own_params = 0;    ///< parameters registered on the module itself (the Flat style's count)
  };

  Summary() = default;

  [[nodiscard]] std::string title_of(std::size_t row) const {
    const Row& r = rows_[row];
    if (r.depth == 0) {
      return r.type;
    }
    return layout_[row].placeholder ? fmt::format("{}: {}", r.type, r.depth)
                                    : fmt::format("{}: {}-{}", r.type, r.depth, layout_[row].depth_index);
  }

  /// torchinfo's leftover_params: a container's parameters not shown by the rows below it
  /// (leaf rows count their parameters, container rows their own leftover; repeated rows none).
  [[nodiscard]] std::vector<int64_t> leftover_params() const {
    std::vector<int64_t> leftover(rows_.size(), 0);
    for (std::size_t i = rows_.size(); i-- > 0;) {
      int64_t children = 0;
      for (std::size_t j = i + 1; j < rows_.size() && rows_[j].depth > rows_[i].depth; ++j) {
        if (!rows_[j].recursive) {
          children += layout_[j].leaf ? rows_[j].params : leftover[j];
        }
      }
      leftover[i] = rows_[i].params - children;
    }
    return leftover;
  }

  [[nodiscard]] std::string tree_table() const {
    namespace impl = detail::summary_impl;
    constexpr std::size_t column_width = 25;
    const int max_depth = options_.depth;
    std::vector<std::string> titles;
    if (forward_pass_) {
      titles.emplace_back("Output Shape");
    }
    titles.emplace_back("Param #");
    const bool mult_adds_column = forward_pass_ && options_.show_mult_adds;
    if (mult_adds_column) {
      titles.emplace_back("Mult-Adds");
    }
    if (options_.show_trainable) {
      titles.emplace_back("Trainable");
    }
    std::size_t name_width = 40;
    {
      std::size_t longest = 0;
      for (std::size_t i = 0; i < rows_.size(); ++i) {
        longest = std::max(longest, impl::characters(title_of(i)) + static_cast<std::size_t>(rows_[i].depth) * 5 + 1);
      }
      if (longest >= name_width) {
        name_width = (longest + 4) / 5 * 5;
      }
    }
    const std::string divider(titles.size() * column_width + name_width, '=');
    auto format_row = [&](const std::string& name, const std::vector<std::string>& values) {
      std::string line = impl::pad_right(name, name_width) + " ";
      for (const std::string& value : values) {
        line += impl::pad_right(value, column_width) + " ";
      }
      line.erase(line.find_last_not_of(' ') + 1);
      return line + "\n";
    };

    std::vector<std::size_t> visible;
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      if (rows_[i].depth <= max_depth) {
        visible.push_back(i);
      }
    }
    const std::vector<int64_t> leftover = leftover_params();
    std::string table = divider + "\n" + format_row("Layer (type:depth-idx)", titles) + divider + "\n";
    for (std::size_t v = 0; v < visible.size(); ++v) {
      const std::size_t i = visible[v];
      const Row& row = rows_[i];
      // Which tree lines go on below this row: level l continues where a later row of depth l
      // follows before any shallower one.
      std::vector<bool> continues(static_cast<std::size_t>(row.depth), false);
      for (int level = 1; level <= row.depth; ++level) {
        for (std::size_t w = v + 1; w < visible.size(); ++w) {
          const int depth = rows_[visible[w]].depth;
          if (depth < level) {
            break;
          }
          if (depth == level) {
            continues[static_cast<std::size_t>(level - 1)] = true;
            break;
          }
        }
      }
      const bool at_max_depth = row.depth == max_depth;
      std::vector<std::string> values;
      if (forward_pass_) {
        values.push_back(row.output_shape.empty() ? "--" : detail::shape_string(row.output_shape));
      }
      if (row.params == 0) {
        values.emplace_back("--");
      } else if (row.recursive) {
        values.emplace_back("(recursive)");
      } else if (at_max_depth || layout_[i].leaf) {
        const std::string count = impl::with_thousands(row.params);
        values.push_back(row.trainable_params > 0 ? count : "(" + count + ")");
      } else {
        values.push_back(leftover[i] > 0 ? impl::with_thousands(leftover[i]) : "--");
      }
      if (mult_adds_column) {
        values.push_back(row.mult_adds > 0 && (layout_[i].leaf || at_max_depth) ? impl::with_thousands(row.mult_adds) : "--");
      }
      if (options_.show_trainable) {
        values.emplace_back(row.params == 0               ? "--"
                            : row.trainable_params == 0   ? "False"
                            : row.trainable_params == row.params ? "True"
                                                          : "Partial");
      }
      table += format_row(impl::tree_prefix(continues) + title_of(i), values);
    }
    table += divider + "\n";
    table += "Total params: " + impl::with_thousands(total_params_) + "\n";
    table += "Trainable params: " + impl::with_thousands(trainable_params_) + "\n";
    table += "Non-trainable params: " + impl::with_thousands(non_trainable_params()) + "\n";
    if (forward_pass_) {
      table += "Total mult-adds" + impl::mult_adds_with_unit(total_mult_adds_) + "\n" + divider + "\n";
      table += "Input size (MB): " + impl::megabytes(input_bytes_) + "\n";
      table += "Forward/backward pass size (MB): " + impl::megabytes(forward_backward_bytes_) + "\n";
      table += "Params size (MB): " + impl::megabytes(param_bytes_) + "\n";
      table += "Estimated Total Size (MB): " + impl::megabytes(total_bytes()) + "\n";
    }
    return table + divider;
  }

  [[nodiscard]] std::string flat_table() const {
    namespace impl = detail::summary_impl;
    const std::string thin(64, '-');
    const std::string thick(64, '=');
    auto line = [](const std::string& name, const std::string& shape, const std::string& params) {
      return impl::pad_left(name, 20) + "  " + impl::pad_left(shape, 25) + " " + impl::pad_left(params, 15) + "\n";
    };
    // pytorch-summary numbers a module when its forward returns: children before parents.
    std::vector<std::size_t> order;
    {
      std::vector<std::size_t> pending;
      auto emit_down_to = [&](int depth) {
        while (!pending.empty() && rows_[pending.back()].depth >= depth) {
          order.push_back(pending.back());
          pending.pop_back();
        }
      };
      for (std::size_t i = 0; i < rows_.size(); ++i) {
        emit_down_to(rows_[i].depth);
        pending.push_back(i);
      }
      emit_down_to(0);
    }
    std::string table = thin + "\n" + line("Layer (type)", "Output Shape", "Param #") + thick + "\n";
    int number = 0;
    for (const std::size_t i : order) {
      const Row& row = rows_[i];
      const Layout& layout = layout_[i];
      if (layout.container || layout.placeholder || (forward_pass_ && !layout.called)) {
        continue;
      }
      std::vector<int64_t> shape = row.output_shape;
      if (batch_synthesized_ && !shape.empty()) {
        shape[0] = -1;
      }
      const std::string params = row.recursive && layout.own_params > 0 ? "(recursive)" : impl::with_thousands(layout.own_params);
      table += line(fmt::format("{}-{}", row.type, ++number), shape.empty() ? "--" : detail::shape_string(shape), params);
    }
    table += thick + "\n";
    table += "Total params: " + impl::with_thousands(total_params_) + "\n";
    table += "Trainable params: " + impl::with_thousands(trainable_params_) + "\n";
    table += "Non-trainable params: " + impl::with_thousands(non_trainable_params()) + "\n";
    table += thin + "\n";
    if (forward_pass_) {
      table += "Input size (MB): " + impl::megabytes(input_bytes_) + "\n";
      table += "Forward/backward pass size (MB): " + impl::megabytes(forward_backward_bytes_) + "\n";
      table += "Params size (MB): " + impl::megabytes(param_bytes_) + "\n";
      table += "Estimated Total Size (MB): " + impl::megabytes(total_bytes()) + "\n";
      table += thin;
    }
    return table;
  }

  std::vector<Row> rows_;
  std::vector<Layout> layout_;
  int64_t total_params_ = 0;
  int64_t trainable_params_ = 0;
  int64_t total_mult_adds_ = 0;
  int64_t input_bytes_ = 0;
  int64_t forward_backward_bytes_ = 0;
  int64_t param_bytes_ = 0;
  bool forward_pass_ = false;
  bool batch_synthesized_ = false;
  SummaryOptions options_;
};

namespace detail::summary_impl {

/// Builds a Summary from a finished SummaryBuilder.
struct SummaryAccess {
  static Summary make(SummaryBuilder& builder, const torch::nn::Module& root, SummaryOptions options,
                      int64_t input_bytes, bool forward_pass, bool batch_synthesized) {
    Summary summary;
    const std::vector<ModuleNode>& nodes = builder.nodes();
    for (const RowRecord& record : builder.rows()) {
      const ModuleNode& node = nodes[static_cast<std::size_t>(record.node)];
      summary.rows_.push_back(Summary::Row{node.name, node.type, record.depth, record.output_shape, node.params,
                                           node.trainable_params, record.mult_adds, record.recursive});
      Summary::Layout layout;
      layout.leaf = node.leaf();
      layout.called = record.called;
      layout.placeholder = record.placeholder;
      layout.container = node.sequential || !node.callable;
      layout.depth_index = record.depth_index;
      layout.own_params = node.own_params;
      summary.layout_.push_back(layout);
      if (node.leaf() && record.called) {
        summary.total_mult_adds_ += record.mult_adds;
        if (node.params > 0 && !record.output_shape.empty()) {
          int64_t elements = 1;
          for (const int64_t size : record.output_shape) {
            elements *= size;
          }
          summary.forward_backward_bytes_ += 2 * record.output_element_size * elements;
        }
      }
    }
    for (const NamedParameter& parameter : named_parameters_of(root)) {
      const int64_t count = parameter.tensor.numel();
      summary.total_params_ += count;
      summary.trainable_params_ += parameter.tensor.requires_grad() ? count : 0;
      summary.param_bytes_ += count * static_cast<int64_t>(parameter.tensor.element_size());
    }
    summary.input_bytes_ = input_bytes;
    summary.forward_pass_ = forward_pass;
    summary.batch_synthesized_ = batch_synthesized;
    summary.options_ = std::move(options);
    return summary;
  }
};

template <class M>
concept AnyModuleModel = std::same_as<std::remove_cvref_t<M>, torch::nn::AnyModule>;

/// What summary() accepts: a module, a module holder, a shared_ptr to a module, an AnyModule.
template <class M>
concept SummaryModel = ModuleLike<M> || AnyModuleModel<M>;

/// The object whose `forward` summary calls: the module itself in its concrete type.
template <class M>
decltype(auto) forward_target(M& model) {
  using Model = std::remove_cvref_t<M>;
  if constexpr (AnyModuleModel<M>) {
    TORCHKIT_CHECK(!model.is_empty(), "summary: the AnyModule is empty");
    return (model);
  } else if constexpr (is_module_holder_v<Model>) {
    TORCHKIT_CHECK(!model.is_empty(), "summary: the module holder is empty (it was constructed with nullptr)");
    return *model;
  } else if constexpr (is_module_pointer_v<Model>) {
    TORCHKIT_CHECK(model != nullptr, "summary: the module pointer is null");
    return *model;
  } else {
    return (model);
  }
}

/// The module as a Sequential when it is exactly one (not a subclass with a forward of its own):
/// then summary walks its children itself.
inline torch::nn::SequentialImpl* exact_sequential(torch::nn::Module* module) {
  return module != nullptr && typeid(*module) == typeid(torch::nn::SequentialImpl)
             ? dynamic_cast<torch::nn::SequentialImpl*>(module)
             : nullptr;
}

template <class M>
torch::nn::Module& root_module(M& model) {
  if constexpr (AnyModuleModel<M>) {
    TORCHKIT_CHECK(!model.is_empty(), "summary: the AnyModule is empty");
    return *model.ptr();
  } else {
    return module_of(model);
  }
}

/// The shape and element size of the first tensor in what a forward returned.
struct OutputShape {
  std::vector<int64_t> shape;
  int64_t element_size = 0;
};

inline std::optional<OutputShape> shape_of(const at::Tensor& tensor) {
  if (!tensor.defined()) {
    return std::nullopt;
  }
  const auto sizes = tensor.sizes();
  return OutputShape{std::vector<int64_t>(sizes.begin(), sizes.end()), static_cast<int64_t>(tensor.element_size())};
}

template <class T>
inline constexpr bool is_tuple_v = false;
template <class... T>
inline constexpr bool is_tuple_v<std::tuple<T...>> = true;
template <class A, class B>
inline constexpr bool is_tuple_v<std::pair<A, B>> = true;

template <class T>
std::optional<OutputShape> first_output(T& value) {
  using Value = std::remove_cvref_t<T>;
  if constexpr (std::is_same_v<Value, at::Tensor>) {
    return shape_of(value);
  } else if constexpr (is_tuple_v<Value>) {
    std::optional<OutputShape> found;
    std::apply([&](auto&... elements) { ((found = found ? found : first_output(elements)), ...); }, value);
    return found;
  } else if constexpr (std::is_same_v<Value, std::vector<at::Tensor>>) {
    return value.empty() ? std::nullopt : shape_of(value.front());
  } else if constexpr (std::is_same_v<Value, torch::nn::AnyValue>) {
    if (auto* tensor = value.template try_get<at::Tensor>()) {
      return shape_of(*tensor);
    }
    if (auto* lstm = value.template try_get<std::tuple<at::Tensor, std::tuple<at::Tensor, at::Tensor>>>()) {
      return shape_of(std::get<0>(*lstm));
    }
    if (auto* pair = value.template try_get<std::tuple<at::Tensor, at::Tensor>>()) {
      return shape_of(std::get<0>(*pair));
    }
    if (auto* tensors = value.template try_get<std::vector<at::Tensor>>()) {
      return tensors->empty() ? std::nullopt : shape_of(tensors->front());
    }
    return std::nullopt;
  } else {
    return std::nullopt;
  }
}

/// Sets a call's output: what the forward returned, else the last operator's output.
template <class T>
void set_call_output(SummaryBuilder& builder, int row, T& result) {
  if (auto output = first_output(result)) {
    builder.set_output(row, std::move(output->shape), output->element_size);
  } else if (const OpRecord* op = builder.last_output_of_region()) {
    builder.set_output(row, op->output_shape, op->output_element_size);
  }
}

/// Calls `call` (a forward) as the region of `node`'s call in `row`, then attributes the
/// operators it ran to `node`'s submodules.
template <class Call>
void run_region(SummaryBuilder& builder, int node, int row, Call&& call) {
  using Result = decltype(call());
  if constexpr (std::is_void_v<Result>) {
    {
      RecordingRegion region(builder.recorder());
      call();
    }
    builder.attribute_region(node);
    int dummy = 0;
    set_call_output(builder, row, dummy);
  } else {
    std::optional<std::decay_t<Result>> result;
    {
      RecordingRegion region(builder.recorder());
      result.emplace(call());
    }
    builder.attribute_region(node);
    set_call_output(builder, row, *result);
  }
}

template <class... Args>
torch::nn::AnyValue walk_sequential(SummaryBuilder& builder, int node, torch::nn::SequentialImpl& sequential,
                                    Args&&... inputs);

/// Sets the output of a walked Sequential's call: what it returned, else its last child's output.
inline void set_sequential_output(SummaryBuilder& builder, int row, torch::nn::AnyValue& output) {
  if (auto shape = first_output(output)) {
    builder.set_output(row, std::move(shape->shape), shape->element_size);
    return;
  }
  const auto& rows = builder.rows();
  const int depth = rows[static_cast<std::size_t>(row)].depth;
  for (std::size_t i = rows.size(); i-- > static_cast<std::size_t>(row) + 1;) {
    if (rows[i].depth == depth + 1) {
      builder.set_output(row, rows[i].output_shape, rows[i].output_element_size);
      return;
    }
  }
}

/// Runs one child of a Sequential as its own call.
template <class... Args>
torch::nn::AnyValue run_sequential_child(SummaryBuilder& builder, int node, torch::nn::AnyModule& child,
                                         Args&&... inputs) {
  const int row = builder.open_call(node);
  if (auto* sequential = exact_sequential(child.ptr().get())) {
    torch::nn::AnyValue output = walk_sequential(builder, node, *sequential, std::forward<Args>(inputs)...);
    set_sequential_output(builder, row, output);
    return output;
  }
  std::optional<torch::nn::AnyValue> output;
  {
    RecordingRegion region(builder.recorder());
    output.emplace(child.any_forward(std::forward<Args>(inputs)...));
  }
  builder.attribute_region(node);
  set_call_output(builder, row, *output);
  return std::move(*output);
}

/// Runs a Sequential child by child, as `Sequential::forward` does.
template <class... Args>
torch::nn::AnyValue walk_sequential(SummaryBuilder& builder, int node, torch::nn::SequentialImpl& sequential,
                                    Args&&... inputs) {
  const std::vector<int> children = builder.nodes()[static_cast<std::size_t>(node)].children;
  if (sequential.is_empty()) {
    throw std::runtime_error("Cannot call forward() on an empty Sequential");
  }
  TORCHKIT_CHECK(children.size() == sequential.size(),
                 "summary: the Sequential '{}' has {} modules but {} registered children",
                 builder.nodes()[static_cast<std::size_t>(node)].name, sequential.size(), children.size());
  auto module = sequential.begin();
  torch::nn::AnyValue value = run_sequential_child(builder, children[0], *module, std::forward<Args>(inputs)...);
  std::size_t index = 1;
  for (++module; module != sequential.end(); ++module, ++index) {
    value = run_sequential_child(builder, children[index], *module, std::move(value));
  }
  return value;
}

/// Thrown (and passed on unchanged) where the model's forward does not take the inputs.
class ForwardSignatureError : public Error {
 public:
  using Error::Error;
};

/// The error for a model whose forward summary cannot call with the inputs.
template <class Target>
ForwardSignatureError forward_signature_error(const std::string& what, const std::string& tried) {
  if constexpr (std::is_same_v<Target, torch::nn::Module>) {
    return ForwardSignatureError(fmt::format(
        "summary: the model is passed as torch::nn::Module, which has no forward(); pass it as its own type "
        "(Net, std::shared_ptr<NetImpl>) or as a torch::nn::AnyModule; inputs tried: {}",
        tried));
  } else {
    return ForwardSignatureError(
        fmt::format("summary: {}::forward does not take {}; inputs tried: {}", c10::demangle(typeid(Target).name()), what, tried));
  }
}

/// Whether summary can run the model on arguments of these types: a forward that takes them,
/// or a Sequential or AnyModule (they check the arguments when called).
template <class M, class... Args>
bool can_run(M& model) {
  using Target = std::remove_cvref_t<decltype(forward_target(model))>;
  if constexpr (AnyModuleModel<M> || std::is_same_v<Target, torch::nn::SequentialImpl> ||
                requires(Target& target) { target.forward(std::declval<Args>()...); }) {
    return true;
  } else {
    return exact_sequential(&root_module(model)) != nullptr;
  }
}

/// Runs the model's forward on `inputs...` as the model's call (row 0). A Sequential is walked
/// child by child; any other forward is one region.
template <class M, class... Args>
void run_model(SummaryBuilder& builder, M& model, Args&&... inputs) {
  auto& target = forward_target(model);
  using Target = std::remove_cvref_t<decltype(target)>;
  const int row = builder.open_call(0);
  if (auto* sequential = exact_sequential(&root_module(model))) {
    torch::nn::AnyValue output = walk_sequential(builder, 0, *sequential, std::forward<Args>(inputs)...);
    set_sequential_output(builder, row, output);
  } else if constexpr (AnyModuleModel<M>) {
    run_region(builder, 0, row, [&] { return target.any_forward(std::forward<Args>(inputs)...); });
  } else if constexpr (requires { target.forward(std::forward<Args>(inputs)...); }) {
    run_region(builder, 0, row, [&]() -> decltype(auto) { return target.forward(std::forward<Args>(inputs)...); });
  } else {
    throw forward_signature_error<Target>("these arguments", "");  // can_run() said no before
  }
}

inline constexpr std::size_t max_tensor_inputs = 8;

/// Calls run_model with the tensors of `inputs` as separate arguments.
template <class M, std::size_t N = 1>
void run_model_on_tensors(SummaryBuilder& builder, M& model, std::vector<at::Tensor>& inputs, const std::string& tried) {
  if (inputs.size() == N) {
    [&]<std::size_t... I>(std::index_sequence<I...> /*unused*/) {
      if (!can_run<M, decltype(((void)I, inputs[0]))...>(model)) {
        using Target = std::remove_cvref_t<decltype(forward_target(model))>;
        throw forward_signature_error<Target>(fmt::format("{} tensor argument{}", N, N == 1 ? "" : "s"), tried);
      }
      run_model(builder, model, inputs[I]...);
    }(std::make_index_sequence<N>{});
  } else if constexpr (N < max_tensor_inputs) {
    run_model_on_tensors<M, N + 1>(builder, model, inputs, tried);
  } else {
    throw ForwardSignatureError(fmt::format("summary: at most {} inputs are supported, got {}; inputs tried: {}",
                                            max_tensor_inputs, inputs.size(), tried));
  }
}

/// RAII: remembers every module's own training flag and restores each one on destruction (the
/// model first, then its submodules in pre-order, so that each ends up with its own flag).
class TrainingModeGuard {
 public:
  explicit TrainingModeGuard(torch::nn::Module& root) : root_(root), root_training_(root.is_training()) {
    for (const auto& module : root.modules(/*include_self=*/false)) {
      modes_.emplace_back(module, module->is_training());
    }
  }
  ~TrainingModeGuard() {
    try {
      root_.train(root_training_);
      for (const auto& [module, training] : modes_) {
        if (module->is_training() != training) {
          module->train(training);
        }
      }
    } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
    }
  }
  TrainingModeGuard(const TrainingModeGuard&) = delete;
  TrainingModeGuard& operator=(const TrainingModeGuard&) = delete;
  TrainingModeGuard(TrainingModeGuard&&) = delete;
  TrainingModeGuard& operator=(TrainingModeGuard&&) = delete;

 private:
  torch::nn::Module& root_;
  bool root_training_;
  std::vector<std::pair<std::shared_ptr<torch::nn::Module>, bool>> modes_;
};

/// The inputs as an error names them: "[2, 3, 224, 224], [2, 10] (Long)" (dtype where not float).
inline std::string describe_shapes(const std::vector<at::Tensor>& tensors) {
  std::string text;
  for (const at::Tensor& tensor : tensors) {
    text += (text.empty() ? "" : ", ") + detail::shape_string(tensor.sizes());
    if (tensor.scalar_type() != at::kFloat) {
      text += fmt::format(" ({})", c10::toString(tensor.scalar_type()));
    }
  }
  return text;
}

template <class T>
std::string describe_argument(const T& value) {
  using Value = std::remove_cvref_t<T>;
  if constexpr (std::is_same_v<Value, at::Tensor>) {
    return value.defined() ? detail::shape_string(value.sizes()) : "undefined tensor";
  } else if constexpr (std::is_same_v<Value, std::vector<at::Tensor>>) {
    return "[" + describe_shapes(value) + "]";
  } else if constexpr (std::is_arithmetic_v<Value>) {
    return fmt::format("{}", value);
  } else {
    return c10::demangle(typeid(Value).name());
  }
}

template <class T>
int64_t bytes_of_argument(const T& value) {
  using Value = std::remove_cvref_t<T>;
  if constexpr (std::is_same_v<Value, at::Tensor>) {
    return value.defined() ? static_cast<int64_t>(value.nbytes()) : 0;
  } else if constexpr (std::is_same_v<Value, std::vector<at::Tensor>>) {
    int64_t bytes = 0;
    for (const at::Tensor& tensor : value) {
      bytes += tensor.defined() ? static_cast<int64_t>(tensor.nbytes()) : 0;
    }
    return bytes;
  } else {
    return 0;
  }
}

inline void check_options(const SummaryOptions& options) {
  TORCHKIT_CHECK(options.depth >= 0, "summary: SummaryOptions::depth is {}, expected >= 0", options.depth);
}

/// Runs `run(builder)` (the forward pass) with the model in eval mode, under no-grad, with the
/// operator callbacks installed; restores everything, also when the forward throws.
template <class M, class Run>
Summary observe(M& model, const SummaryOptions& options, const std::string& tried, int64_t input_bytes,
                bool batch_synthesized, Run&& run) {
  torch::nn::Module& root = root_module(model);
  SummaryBuilder builder(root);
  {
    TrainingModeGuard training(root);
    root.eval();
    at::NoGradGuard no_grad;
    ObservationScope observation(builder.recorder());
    try {
      run(builder);
    } catch (const ForwardSignatureError&) {
      throw;
    } catch (const c10::Error& error) {
      throw Error(fmt::format("summary: the forward pass of {} failed for input shapes {}: {}",
                              builder.nodes().front().type, tried, error.what_without_backtrace()));
    } catch (const std::exception& error) {
      throw Error(fmt::format("summary: the forward pass of {} failed for input shapes {}: {}",
                              builder.nodes().front().type, tried, error.what()));
    }
  }
  builder.finish();
  return SummaryAccess::make(builder, root, options, input_bytes, /*forward_pass=*/true, batch_synthesized);
}

/// The device check for generated inputs: the model's tensors must be where the inputs go.
inline void check_model_device(const torch::nn::Module& root, c10::Device device) {
  auto mismatch = [&](const at::Tensor& tensor) {
    return tensor.device().type() != device.type() ||
           (device.has_index() && tensor.device().has_index() && tensor.device().index() != device.index());
  };
  for (const auto& item : root.named_parameters(/*recurse=*/true)) {
    TORCHKIT_CHECK(!mismatch(item.value()),
                   "summary: parameter '{}' is on {} but the inputs would be made on {}; pass "
                   "SummaryOptions{{.device = ...}} with the model's device",
                   item.key(), item.value().device().str(), device.str());
  }
  for (const auto& item : root.named_buffers(/*recurse=*/true)) {
    TORCHKIT_CHECK(!mismatch(item.value()),
                   "summary: buffer '{}' is on {} but the inputs would be made on {}; pass "
                   "SummaryOptions{{.device = ...}} with the model's device",
                   item.key(), item.value().device().str(), device.str());
  }
}

/// A generated input: uniform [0, 1) from a private generator (the global one is not touched)
/// for floating dtypes, zeros for integer dtypes (valid indices for an Embedding).
inline at::Tensor make_input(const std::vector<int64_t>& shape, at::ScalarType dtype, c10::Device device) {
  at::Tensor input;
  if (at::isFloatingType(dtype) || at::isComplexType(dtype)) {
    at::Generator generator = at::detail::createCPUGenerator(/*seed_val=*/0);
    const at::ScalarType drawn = dtype == at::kDouble ? at::kDouble : at::kFloat;
    input = at::rand(shape, generator, at::TensorOptions().dtype(drawn)).to(dtype);
  } else {
    input = at::zeros(shape, at::TensorOptions().dtype(dtype));
  }
  return device.is_cpu() ? input : input.to(device);
}

}  // namespace detail::summary_impl

/// torchsummary's `summary(model, input_size=(C, H, W))`: runs one forward pass on an input of
/// shape `{batch_size, input_size...}` and summarises every module call.
///
/// The model (a module, a holder such as `Net` or `torch::nn::Sequential`, a
/// `std::shared_ptr<NetImpl>`, or a `torch::nn::AnyModule`) must be passed as its own type so
/// that its `forward` can be called. It is left exactly as it was: the pass runs in eval mode
/// under no-grad, and every module's training flag is restored, also when forward throws.
///
/// @throws Error for an empty `input_size`, a dimension < 1, a batch size < 1, a model whose
///         parameters are not on `options.device`, a forward that does not take the input or
///         throws (the message names the input shapes tried).
///
///     torchkit::Summary info = torchkit::summary(net, {3, 224, 224});
///     std::cout << info << '\n';
template <class M>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::vector<std::vector<int64_t>> input_sizes, SummaryOptions options = {}) {
  namespace impl = detail::summary_impl;
  impl::check_options(options);
  TORCHKIT_CHECK(!input_sizes.empty(), "summary: input_sizes is empty; expected at least one input shape");
  TORCHKIT_CHECK(options.batch_size >= 1, "summary: SummaryOptions::batch_size is {}, expected >= 1", options.batch_size);
  TORCHKIT_CHECK(options.dtypes.empty() || options.dtypes.size() == input_sizes.size(),
                 "summary: SummaryOptions::dtypes has {} entries for {} inputs; give one dtype per input or none",
                 options.dtypes.size(), input_sizes.size());
  for (std::size_t input = 0; input < input_sizes.size(); ++input) {
    const auto& size = input_sizes[input];
    TORCHKIT_CHECK(!size.empty(), "summary: input_size {} is empty; expected the shape of one sample, e.g. {{3, 224, 224}}",
                   input);
    for (std::size_t dim = 0; dim < size.size(); ++dim) {
      TORCHKIT_CHECK(size[dim] >= 1, "summary: dimension {} of input_size {} is {} in {}; every dimension must be >= 1", dim,
                     input, size[dim], detail::shape_string(size));
    }
  }
  torch::nn::Module& root = impl::root_module(model);
  impl::check_model_device(root, options.device);

  std::vector<at::Tensor> inputs;
  int64_t input_bytes = 0;
  for (std::size_t input = 0; input < input_sizes.size(); ++input) {
    std::vector<int64_t> shape{options.batch_size};
    shape.insert(shape.end(), input_sizes[input].begin(), input_sizes[input].end());
    const at::ScalarType dtype = options.dtypes.empty() ? options.dtype : options.dtypes[input];
    try {
      inputs.push_back(impl::make_input(shape, dtype, options.device));
    } catch (const c10::Error& error) {
      throw Error(fmt::format("summary: cannot make an input of shape {} ({}) on {}: {}", detail::shape_string(shape),
                              c10::toString(dtype), options.device.str(), error.what_without_backtrace()));
    }
    input_bytes += static_cast<int64_t>(inputs.back().nbytes());
  }
  const std::string tried = impl::describe_shapes(inputs);
  return impl::observe(model, options, tried, input_bytes, /*batch_synthesized=*/true,
                       [&](impl::SummaryBuilder& builder) { impl::run_model_on_tensors(builder, model, inputs, tried); });
}

/// One input: `summary(net, {3, 224, 224})` (the batch dimension is prepended).
template <class M>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::vector<int64_t> input_size, SummaryOptions options = {}) {
  return summary(model, std::vector<std::vector<int64_t>>{std::move(input_size)}, std::move(options));
}

/// One input written in braces: `summary(net, {3, 224, 224})`, `summary(mlp, {784})`.
template <class M>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::initializer_list<int64_t> input_size, SummaryOptions options = {}) {
  return summary(model, std::vector<std::vector<int64_t>>{std::vector<int64_t>(input_size)}, std::move(options));
}

/// Several inputs written in braces: `summary(net, {{3, 32, 32}, {10, 4}})`. (Two 1-D inputs
/// read like one 2-D shape in braces; write them as `std::vector<std::vector<int64_t>>{{3}, {5}}`.)
template <class M>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::initializer_list<std::initializer_list<int64_t>> input_sizes,
                              SummaryOptions options = {}) {
  std::vector<std::vector<int64_t>> sizes;
  for (const auto& size : input_sizes) {
    sizes.emplace_back(size);
  }
  return summary(model, std::move(sizes), std::move(options));
}

/// Parameters only, no forward pass (torchinfo's `summary(model)`): one row per module, the
/// parameter counts and totals; no shapes, mult-adds or memory estimates.
///
///     std::cout << torchkit::summary(net) << '\n';
template <class M>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary(M& model) {
  namespace impl = detail::summary_impl;
  torch::nn::Module& root = impl::root_module(model);
  impl::SummaryBuilder builder(root);
  builder.finish();
  return impl::SummaryAccess::make(builder, root, SummaryOptions{}, 0, /*forward_pass=*/false, false);
}

/// torchinfo's `summary(model, input_data=...)`: summarises a forward pass on real inputs
/// (tensors or anything else the model's `forward` takes), shapes printed as given.
///
/// @throws Error when `forward` cannot be called with the inputs or throws (naming them).
///
///     auto info = torchkit::summary_of(lstm_net, tokens, lengths);
template <class M, class... Ts>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary_of(const SummaryOptions& options, M& model, Ts&&... example_inputs) {
  namespace impl = detail::summary_impl;
  impl::check_options(options);
  std::string tried;
  ((tried += (tried.empty() ? "" : ", ") + impl::describe_argument(example_inputs)), ...);
  const int64_t input_bytes = (int64_t{0} + ... + impl::bytes_of_argument(example_inputs));
  return impl::observe(model, options, tried, input_bytes, /*batch_synthesized=*/false, [&](impl::SummaryBuilder& builder) {
    if (!impl::can_run<M, Ts&&...>(model)) {
      using Target = std::remove_cvref_t<decltype(impl::forward_target(model))>;
      throw impl::forward_signature_error<Target>("these arguments", tried);
    }
    impl::run_model(builder, model, std::forward<Ts>(example_inputs)...);
  });
}

/// summary_of with default options.
template <class M, class... Ts>
  requires detail::summary_impl::SummaryModel<M>
[[nodiscard]] Summary summary_of(M& model, Ts&&... example_inputs) {
  return summary_of(SummaryOptions{}, model, std::forward<Ts>(example_inputs)...);
}

}  // namespace torchkit
