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
/// (parameter-free modules such as ReLU or MaxPool2d by the operator they run).
///
/// This header holds the public types and entry points only. The work is done in three stages,
/// one detail header each, as torchinfo splits it: running the model
/// (detail/summary_trace.hpp), building the rows (detail/summary_build.hpp, which has the
/// reconstruction rules), drawing the tables (detail/summary_format.hpp).
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
#include <c10/util/Exception.h>
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace torchkit {

/// How Summary::to_string() lays the table out.
enum class SummaryStyle {
  tree,  ///< torchinfo: `Layer (type:depth-idx)`, `├─Conv2d: 1-1`, depth-limited, footer in MB
  flat,  ///< pytorch-summary: `Layer (type)  Output Shape  Param #`, `Conv2d-1`, batch as -1
  Tree = tree,  ///< the earlier spelling, kept so that existing code compiles
  Flat = flat,  ///< the earlier spelling, kept so that existing code compiles
};

/// A column of the Tree table (torchinfo's `col_names`), in SummaryOptions::columns.
enum class Column {
  input_size,      ///< "Input Shape": the first tensor the call read (`[2, 1, 28, 28]`)
  output_size,     ///< "Output Shape"
  num_params,      ///< "Param #"
  params_percent,  ///< "Param %": the row's parameter count over the total (` 20.83%`)
  kernel_size,     ///< "Kernel Shape": a convolution's kernel (`[5, 5]`); "--" for other layers
  mult_adds,       ///< "Mult-Adds"
  trainable,       ///< "Trainable": True/False/Partial
  InputSize = input_size,          ///< DESIGN.md's spelling
  OutputSize = output_size,        ///< DESIGN.md's spelling
  NumParams = num_params,          ///< DESIGN.md's spelling
  ParamsPercent = params_percent,  ///< DESIGN.md's spelling
  KernelSize = kernel_size,        ///< DESIGN.md's spelling
  MultAdds = mult_adds,            ///< DESIGN.md's spelling
  Trainable = trainable,           ///< DESIGN.md's spelling
};

/// How summary() counts mult-adds.
enum class Count {
  /// torchinfo's rule: from each leaf module's parameters and output shape (a Conv's weight
  /// times the output's spatial size, a Linear's weight times its rows, ...). Matrix products
  /// that are no module (`q.matmul(k)` in an attention's forward) are not seen.
  modules,
  /// From every matmul-like operator the forward pass runs, by its input shapes (fvcore's rule:
  /// the products only, no bias additions): `linear`, `matmul`, `mm`, `addmm`, `bmm`, `baddbmm`,
  /// `addbmm`, `mv`, `addmv`, `dot`, `conv*`/`conv_transpose*` (groups, dilation, stride),
  /// `scaled_dot_product_attention` (LibTorch 2.x), `einsum` with one or two operands, and the
  /// recurrent `lstm`/`gru`/`rnn_*` operators and cells (rows x steps x every weight matrix).
  /// Each operator counts for the module whose forward ran it; one that reads no module's
  /// parameters counts for the innermost module with submodules whose call is open (the
  /// attention block), else for the module whose forward is being observed.
  /// Summary::operator_totals() lists the totals per operator.
  operators,
  Modules = modules,      ///< DESIGN.md's spelling
  Operators = operators,  ///< DESIGN.md's spelling
};

/// Options of summary(). Designated initializers read well: `{.depth = 1, .batch_size = 4}`.
struct SummaryOptions {
  int depth = 3;                         ///< rows deeper than this are not printed (torchinfo's depth)
  std::int64_t batch_size = 2;           ///< prepended to each input_size (2, so BatchNorm works)
  c10::Device device = at::kCPU;         ///< where the generated inputs are made; the model must be there
  at::ScalarType dtype = at::kFloat;     ///< dtype of the generated inputs
  SummaryStyle style = SummaryStyle::tree;  ///< the table's layout: torchinfo's tree or pytorch-summary's flat
  std::vector<at::ScalarType> dtypes{};  ///< one dtype per input, overriding `dtype` (torchinfo's dtypes)
  bool show_mult_adds = false;           ///< Tree style: add torchinfo's "Mult-Adds" column
  bool show_trainable = false;           ///< Tree style: add torchinfo's "Trainable" column (True/False/Partial)
  Count count = Count::modules;          ///< how mult-adds are counted (rows, totals, the Mult-Adds column)
  /// Tree style: the columns, in this order, as torchinfo's `col_names` (each at most once).
  /// Empty: Output Shape (with a forward pass) and Param #, plus the two flags above.
  std::vector<Column> columns{};
  bool show_var_names = false;  ///< Tree style: `Conv2d (conv1): 1-1` (torchinfo's row_settings "var_names")
  bool ascii_only = false;      ///< Tree style: `|--`, `'--`, `|` for the tree lines (torchinfo's "ascii_only")
};

class Summary;

namespace detail {
namespace summary {
struct SummaryAccess;
}  // namespace summary
/// The earlier name of detail::summary (internal; kept for code that reached into it).
namespace summary_impl = summary;
}  // namespace detail

/// A model summary: one row per module call, in call order, and totals counted as torchinfo
/// counts them. Printable (`to_string()`, `operator<<`, `{fmt}`).
///
///     auto info = torchkit::summary(net, {1, 28, 28});
///     std::cout << info << '\n';
///     std::int64_t params = info.total_params();
class Summary {
 public:
  /// One module call (or, for a module never called, the module itself): torchinfo's LayerInfo.
  struct Row {
    std::string name;                        ///< dotted path (`features.0`); "" for the model itself
    std::string type;                        ///< short class name (`Conv2d`)
    int depth = 0;                           ///< 0 for the model, 1 for its children, ...
    std::vector<std::int64_t> output_shape;  ///< first tensor of the output; empty where unknown
    std::vector<std::int64_t> input_shape;   ///< first tensor the call read; empty where unknown
    std::vector<std::int64_t> kernel_size;   ///< a convolution's kernel (`{5, 5}`); empty for other modules
    std::int64_t params = 0;                 ///< parameters of the module and its submodules, each once
    std::int64_t trainable_params = 0;       ///< of those, how many require grad
    std::int64_t mult_adds = 0;              ///< this call's (for a container: its leaf calls' sum)
    bool recursive = false;                  ///< the module was called (or shown) before
    int depth_index = 0;                     ///< torchinfo's depth-idx (the 3 of `Conv2d: 1-3`); 0 for none
    bool leaf = true;                        ///< the module has no submodules
    bool called = false;                     ///< a call seen in the forward pass
    bool placeholder = false;                ///< a ModuleList/ModuleDict shown again to keep the tree a tree
    bool container = false;                  ///< Sequential, ModuleList, ModuleDict: not in the Flat style
    std::int64_t own_params = 0;             ///< parameters registered on the module itself (Flat's count)
    std::int64_t output_element_size = 0;    ///< bytes per element of the output
  };

  /// The mult-adds of one operator over the forward pass: name (`aten::linear`), calls, mult-adds.
  using OperatorTotal = detail::summary::OperatorTotal;

  /// One row per module call, in call order; modules never called appear too, with an empty
  /// shape, after the rows of their parent.
  [[nodiscard]] const std::vector<Row>& rows() const noexcept { return rows_; }

  /// Parameters of the model, each tensor once (tied parameters count once).
  [[nodiscard]] std::int64_t total_params() const noexcept { return totals_.total_params; }
  /// Of total_params(), those that require grad.
  [[nodiscard]] std::int64_t trainable_params() const noexcept { return totals_.trainable_params; }
  /// Of total_params(), those that do not require grad (frozen).
  [[nodiscard]] std::int64_t non_trainable_params() const noexcept {
    return totals_.total_params - totals_.trainable_params;
  }
  /// Sum of the leaf modules' mult-adds over all calls (torchinfo's "Total mult-adds").
  [[nodiscard]] std::int64_t total_mult_adds() const noexcept { return totals_.total_mult_adds; }
  /// Count::Operators: each counted operator (`aten::conv2d`, `aten::bmm`, ...) with its calls and
  /// mult-adds, in order of first call; their mult-adds sum to total_mult_adds(). Empty for
  /// Count::Modules.
  [[nodiscard]] const std::vector<OperatorTotal>& operator_totals() const noexcept { return operator_totals_; }
  /// Bytes of the inputs of the forward pass.
  [[nodiscard]] std::int64_t input_bytes() const noexcept { return input_bytes_; }
  /// 2 x the bytes of the outputs of every call of a leaf module with parameters (activations
  /// and their gradients), torchinfo's "Forward/backward pass size".
  [[nodiscard]] std::int64_t forward_backward_bytes() const noexcept { return totals_.forward_backward_bytes; }
  /// Bytes of the parameters, each tensor once.
  [[nodiscard]] std::int64_t param_bytes() const noexcept { return totals_.param_bytes; }
  /// input_bytes() + forward_backward_bytes() + param_bytes(): torchinfo's "Estimated Total Size".
  [[nodiscard]] std::int64_t total_bytes() const noexcept {
    return input_bytes_ + totals_.forward_backward_bytes + totals_.param_bytes;
  }

  /// Whether a forward pass was run (false for `summary(model)`: parameters only).
  [[nodiscard]] bool has_forward_pass() const noexcept { return forward_pass_; }
  /// The options summary() was called with.
  [[nodiscard]] const SummaryOptions& options() const noexcept { return options_; }

  /// The table in the style of the options.
  [[nodiscard]] std::string to_string() const { return to_string(options_.style); }
  /// The table in the given style (drawn by detail/summary_format.hpp).
  [[nodiscard]] std::string to_string(SummaryStyle style) const {
    return style == SummaryStyle::flat ? detail::summary::flat_table(*this, batch_synthesized_)
                                       : detail::summary::tree_table(*this);
  }

  /// Writes to_string() (the table in the options' style) to `out`.
  friend std::ostream& operator<<(std::ostream& out, const Summary& summary) { return out << summary.to_string(); }

 private:
  friend struct detail::summary::SummaryAccess;

  Summary() = default;

  std::vector<Row> rows_;
  detail::summary::SummaryTotals totals_;
  std::vector<OperatorTotal> operator_totals_;
  std::int64_t input_bytes_ = 0;
  bool forward_pass_ = false;
  bool batch_synthesized_ = false;  ///< the batch dimension was made by summary(): Flat prints it as -1
  SummaryOptions options_;
};

namespace detail {
/// Summary formats with `{fmt}` as its to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<Summary> = true;
}  // namespace detail

namespace detail::summary {

/// Makes a Summary from a finished builder.
struct SummaryAccess {
  static Summary make(SummaryBuilder<Summary::Row>& builder, SummaryOptions options, std::int64_t input_bytes,
                      bool forward_pass, bool batch_synthesized) {
    Summary summary;
    summary.rows_ = builder.take_rows();
    summary.totals_ = builder.totals();
    summary.operator_totals_ = builder.operator_totals();
    summary.input_bytes_ = input_bytes;
    summary.forward_pass_ = forward_pass;
    summary.batch_synthesized_ = batch_synthesized;
    summary.options_ = std::move(options);
    return summary;
  }
};

inline void check_options(const SummaryOptions& options) {
  TORCHKIT_CHECK(options.depth >= 0, "summary: SummaryOptions::depth is {}, expected >= 0", options.depth);
  for (std::size_t i = 0; i < options.columns.size(); ++i) {
    const auto value = static_cast<int>(options.columns[i]);
    TORCHKIT_CHECK(value >= static_cast<int>(Column::input_size) && value <= static_cast<int>(Column::trainable),
                   "summary: SummaryOptions::columns[{}] is {}, which is no Column (expected input_size .. trainable)", i,
                   value);
    for (std::size_t j = 0; j < i; ++j) {
      TORCHKIT_CHECK(options.columns[j] != options.columns[i],
                     "summary: SummaryOptions::columns lists {} twice (at {} and {}); give each column once",
                     detail::summary::column_key(value), j, i);
    }
  }
}

/// Runs the model through `run` (stage 1) into a builder (stage 2) and makes the Summary.
template <class M, class Run>
Summary observe(M& model, const SummaryOptions& options, const std::string& tried, std::int64_t input_bytes,
                bool batch_synthesized, Run&& run) {
  torch::nn::Module& root = root_module(model);
  SummaryBuilder<Summary::Row> builder(root);
  builder.count_operators(options.count == Count::operators);
  run_forward_pass(builder, root, tried, [&] { run(builder); });
  return SummaryAccess::make(builder, options, input_bytes, /*forward_pass=*/true, batch_synthesized);
}

}  // namespace detail::summary

/// torchsummary's `summary(model, input_size=(C, H, W))`: runs one forward pass on an input of
/// shape `{batch_size, input_size...}` and summarises every module call.
///
/// The model (a module, a holder such as `Net` or `torch::nn::Sequential`, a
/// `std::shared_ptr<NetImpl>`, or a `torch::nn::AnyModule`) must be passed as its own type so
/// that its `forward` can be called. It is left exactly as it was: the pass runs in eval mode
/// under no-grad, and every module's training flag is restored, also when forward throws.
///
/// @throws Error for an empty `input_size`, a dimension < 1, a batch size < 1, an unknown or
///         repeated column in `options.columns`, a model whose
///         parameters are not on `options.device`, a forward that does not take the input or
///         throws (the message names the input shapes tried).
///
///     torchkit::Summary info = torchkit::summary(net, {3, 224, 224});
///     std::cout << info << '\n';
template <class M>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::vector<std::vector<std::int64_t>> input_sizes, SummaryOptions options = {}) {
  namespace impl = detail::summary;
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
  std::int64_t input_bytes = 0;
  for (std::size_t input = 0; input < input_sizes.size(); ++input) {
    std::vector<std::int64_t> shape{options.batch_size};
    shape.insert(shape.end(), input_sizes[input].begin(), input_sizes[input].end());
    const at::ScalarType dtype = options.dtypes.empty() ? options.dtype : options.dtypes[input];
    try {
      inputs.push_back(impl::make_input(shape, dtype, options.device));
    } catch (const c10::Error& error) {
      throw Error(fmt::format("summary: cannot make an input of shape {} ({}) on {}: {}", detail::shape_string(shape),
                              c10::toString(dtype), options.device.str(), error.what_without_backtrace()));
    }
    input_bytes += static_cast<std::int64_t>(inputs.back().nbytes());
  }
  const std::string tried = impl::describe_shapes(inputs);
  return impl::observe(model, options, tried, input_bytes, /*batch_synthesized=*/true,
                       [&](auto& builder) { impl::run_model_on_tensors(builder, model, inputs, tried); });
}

/// One input: `summary(net, {3, 224, 224})` (the batch dimension is prepended).
template <class M>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::vector<std::int64_t> input_size, SummaryOptions options = {}) {
  return summary(model, std::vector<std::vector<std::int64_t>>{std::move(input_size)}, std::move(options));
}

/// One input written in braces: `summary(net, {3, 224, 224})`, `summary(mlp, {784})`.
template <class M>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::initializer_list<std::int64_t> input_size, SummaryOptions options = {}) {
  return summary(model, std::vector<std::vector<std::int64_t>>{std::vector<std::int64_t>(input_size)}, std::move(options));
}

/// Several inputs written in braces: `summary(net, {{3, 32, 32}, {10, 4}})`. (Two 1-D inputs
/// read like one 2-D shape in braces; write them as `std::vector<std::vector<std::int64_t>>{{3}, {5}}`.)
template <class M>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary(M& model, std::initializer_list<std::initializer_list<std::int64_t>> input_sizes,
                              SummaryOptions options = {}) {
  std::vector<std::vector<std::int64_t>> sizes;
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
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary(M& model) {
  namespace impl = detail::summary;
  torch::nn::Module& root = impl::root_module(model);
  impl::SummaryBuilder<Summary::Row> builder(root);
  builder.finish();
  return impl::SummaryAccess::make(builder, SummaryOptions{}, 0, /*forward_pass=*/false, false);
}

/// torchinfo's `summary(model, input_data=...)`: summarises a forward pass on real inputs
/// (tensors or anything else the model's `forward` takes), shapes printed as given.
///
/// @throws Error when `forward` cannot be called with the inputs or throws (naming them), for a
///         negative depth, and an unknown or repeated column in `options.columns`.
///
///     auto info = torchkit::summary_of(lstm_net, tokens, lengths);
template <class M, class... Ts>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary_of(const SummaryOptions& options, M& model, Ts&&... example_inputs) {
  namespace impl = detail::summary;
  impl::check_options(options);
  std::string tried;
  ((tried += (tried.empty() ? "" : ", ") + impl::describe_argument(example_inputs)), ...);
  const std::int64_t input_bytes = (std::int64_t{0} + ... + impl::bytes_of_argument(example_inputs));
  return impl::observe(model, options, tried, input_bytes, /*batch_synthesized=*/false, [&](auto& builder) {
    if (!impl::can_run<M, Ts&&...>(model)) {
      using Target = std::remove_cvref_t<decltype(impl::forward_target(model))>;
      throw impl::forward_signature_error<Target>("these arguments", tried);
    }
    impl::run_model(builder, model, std::forward<Ts>(example_inputs)...);
  });
}

/// summary_of with default options.
template <class M, class... Ts>
  requires detail::summary::SummaryModel<M>
[[nodiscard]] Summary summary_of(M& model, Ts&&... example_inputs) {
  return summary_of(SummaryOptions{}, model, std::forward<Ts>(example_inputs)...);
}

}  // namespace torchkit
