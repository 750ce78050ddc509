#pragma once
/// @file one_hot.hpp
/// tip 5  one_hot, OneHot.
///
/// Cross-entropy takes class indices, but losses such as MSE need one-hot targets. Python's
/// `F.one_hot(labels, C)` returns int64 (8 bytes a value) that then needs `.float()`: two passes
/// and three times the memory traffic of writing the float targets once, which is what
/// torchkit::one_hot does. It also smooths labels and skips an ignore index, and a bad label
/// gets an error that names it and where it is.

#include <torchkit/detail/shape.hpp>
#include <torchkit/detail/config.hpp>
#include <torchkit/detail/one_hot_kernel.hpp>
#include <torchkit/error.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace torchkit {

/// Options of one_hot and OneHot.
///
///     torchkit::OneHotOptions options{.smoothing = 0.1, .ignore_index = 255};
struct OneHotOptions {
  /// The output dtype: any floating dtype (Float by default), an integer dtype or Bool.
  at::ScalarType dtype = at::kFloat;
  /// Label smoothing in [0, 1): `1 - smoothing + smoothing / C` on the target class and
  /// `smoothing / C` elsewhere, the targets of `CrossEntropyLoss(label_smoothing=smoothing)`.
  /// Needs a floating dtype.
  double smoothing = 0.0;
  /// Labels equal to this value give an all-zero row (they may lie outside [0, C), e.g. 255 or
  /// -100), as `CrossEntropyLoss(ignore_index=…)` skips them.
  std::optional<std::int64_t> ignore_index{};
};

namespace detail {

inline void check_one_hot_options(std::string_view function, std::int64_t num_classes,
                                  const OneHotOptions& options) {
  TORCHKIT_CHECK(num_classes > 0, "{}: num_classes is {}; expected a positive number of classes",
                 function, num_classes);
  TORCHKIT_CHECK(std::isfinite(options.smoothing) && options.smoothing >= 0.0 && options.smoothing < 1.0,
                 "{}: smoothing is {}; expected a value in [0, 1)", function, options.smoothing);
  const auto dtype = options.dtype;
  const bool floating = dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16;
  const bool integral = dtype == at::kLong || dtype == at::kInt || dtype == at::kShort ||
                        dtype == at::kChar || dtype == at::kByte || dtype == at::kBool;
  TORCHKIT_CHECK(floating || integral,
                 "{}: output dtype {} is not supported; expected Float, Double, Half, BFloat16, an "
                 "integer dtype or Bool",
                 function, std::string(c10::toString(dtype)));
  TORCHKIT_CHECK(floating || options.smoothing == 0.0,
                 "{}: smoothing {} needs a floating output dtype, got {}", function,
                 options.smoothing, std::string(c10::toString(dtype)));
}

inline OneHotValues one_hot_values_of(std::int64_t num_classes, const OneHotOptions& options) {
  const double spread = options.smoothing / static_cast<double>(num_classes);
  return {1.0 - options.smoothing + spread, spread};
}

[[noreturn]] inline void fail_bad_label(std::int64_t label, std::int64_t flat_index, c10::IntArrayRef sizes,
                                        std::int64_t num_classes, const OneHotOptions& options) {
  if (options.ignore_index.has_value()) {
    fail("one_hot: label {} at index {} is outside [0, {}) and is not the ignore_index ({})", label,
         index_string(flat_index, sizes), num_classes, *options.ignore_index);
  }
  fail("one_hot: label {} at index {} is outside [0, {}); pass ignore_index={} to skip it", label,
       index_string(flat_index, sizes), num_classes, label);
}

/// The same computation with ATen operations (scatter), for labels off the CPU. One host sync:
/// the range check (`any()`); the bad label's position is only looked up on failure. Also used by
/// the tests as a second, independent implementation.
inline at::Tensor one_hot_with_aten_ops(const at::Tensor& labels, std::int64_t num_classes,
                                        const OneHotOptions& options) {
  const OneHotValues values = one_hot_values_of(num_classes, options);
  const at::Tensor wide = labels.to(at::kLong);
  const at::Tensor ignored = options.ignore_index.has_value()
                                 ? wide.eq(*options.ignore_index)
                                 : at::zeros_like(wide, at::TensorOptions().dtype(at::kBool));
  const at::Tensor bad = wide.lt(0).logical_or(wide.ge(num_classes)).logical_and(ignored.logical_not());
  if (bad.any().item<bool>()) {
    const std::int64_t first = bad.flatten().nonzero().select(0, 0).select(0, 0).item<std::int64_t>();
    fail_bad_label(wide.flatten().select(0, first).item<std::int64_t>(), first, labels.sizes(), num_classes,
                   options);
  }
  std::vector<std::int64_t> sizes = labels.sizes().vec();
  sizes.push_back(num_classes);
  at::Tensor result = at::full(sizes, values.off, labels.options().dtype(options.dtype));
  result.scatter_(-1, wide.masked_fill(ignored, 0).unsqueeze(-1), values.on);
  if (options.ignore_index.has_value()) {
    result.masked_fill_(ignored.unsqueeze(-1), 0);
  }
  return result;
}

template <class T>
struct TypeTag {
  using type = T;
};

template <class F>
decltype(auto) visit_label_type(at::ScalarType dtype, F&& visit) {
  switch (dtype) {
    case at::kByte: return visit(TypeTag<std::uint8_t>{});
    case at::kChar: return visit(TypeTag<std::int8_t>{});
    case at::kShort: return visit(TypeTag<std::int16_t>{});
    case at::kInt: return visit(TypeTag<std::int32_t>{});
    default: return visit(TypeTag<std::int64_t>{});  // kLong; one_hot checked the dtype
  }
}

template <class F>
decltype(auto) visit_one_hot_output_type(at::ScalarType dtype, F&& visit) {
  switch (dtype) {
    case at::kDouble: return visit(TypeTag<double>{});
    case at::kHalf: return visit(TypeTag<c10::Half>{});
    case at::kBFloat16: return visit(TypeTag<c10::BFloat16>{});
    case at::kLong: return visit(TypeTag<std::int64_t>{});
    case at::kInt: return visit(TypeTag<std::int32_t>{});
    case at::kShort: return visit(TypeTag<std::int16_t>{});
    case at::kChar: return visit(TypeTag<std::int8_t>{});
    case at::kByte: return visit(TypeTag<std::uint8_t>{});
    case at::kBool: return visit(TypeTag<bool>{});
    default: return visit(TypeTag<float>{});  // kFloat; check_one_hot_options checked the dtype
  }
}

}  // namespace detail

/// One-hot encodes class labels: `labels.sizes() + [num_classes]`, 1 at each label's class and 0
/// elsewhere, written straight in the chosen dtype (float by default) in one pass.
///
/// The Python equivalent is `F.one_hot(labels, num_classes).float()` (or the tip's
/// `torch.zeros(batch_size, class_num).scatter_(1, label, 1)`); with smoothing, the targets
/// that `CrossEntropyLoss(label_smoothing=smoothing)` uses.
///
/// @param labels       class indices of any integer dtype (uint8, int8, int16, int32, int64) and
///                     any shape; the result stays on their device.
/// @param num_classes  C, the length of each one-hot row; every label must be in [0, C) or equal
///                     to `options.ignore_index`.
/// @param options      output dtype, label smoothing, ignore index (see OneHotOptions).
/// @throws Error for an undefined tensor, non-integer labels, `num_classes <= 0`, smoothing
///         outside [0, 1), an unsupported dtype, and a label outside [0, C): the message names the
///         first such label, its index in `labels` and the valid range. On the CPU the check runs
///         in the same pass that writes the output; on a GPU it costs one host sync.
///
///     auto labels = torch::tensor({3, 4, 2, 1});                 // batch_size = 4
///     auto targets = torchkit::one_hot(labels, 8);                // [4, 8] float
///     auto loss = torch::mse_loss(model->forward(x), targets);
[[nodiscard]] inline at::Tensor one_hot(const at::Tensor& labels, std::int64_t num_classes,
                                        const OneHotOptions& options = {}) {
  TORCHKIT_CHECK(labels.defined(), "one_hot: labels is an undefined tensor");
  TORCHKIT_CHECK(labels.layout() == at::kStrided,
                 "one_hot: labels is not a dense tensor (sparse or another layout); expected a strided tensor");
  const auto label_type = labels.scalar_type();
  TORCHKIT_CHECK(label_type == at::kByte || label_type == at::kChar || label_type == at::kShort ||
                     label_type == at::kInt || label_type == at::kLong,
                 "one_hot: labels have dtype {}; expected class indices of an integer dtype (uint8, "
                 "int8, int16, int32 or int64)",
                 std::string(c10::toString(label_type)));
  detail::check_one_hot_options("one_hot", num_classes, options);
  if (!labels.is_cpu()) {
    return detail::one_hot_with_aten_ops(labels, num_classes, options);
  }

  std::vector<std::int64_t> sizes = labels.sizes().vec();
  sizes.push_back(num_classes);
  at::Tensor result = at::empty(sizes, at::TensorOptions().dtype(options.dtype));
  const std::int64_t count = labels.numel();
  if (count == 0) {
    return result;
  }
  // Non-contiguous labels are copied once (they are 1/C of the output or less).
  const at::Tensor dense = labels.contiguous();
  const detail::OneHotValues values = detail::one_hot_values_of(num_classes, options);
  const std::int64_t bad = detail::visit_label_type(label_type, [&](auto label_tag) {
    using Label = typename decltype(label_tag)::type;
    const Label* label_data = static_cast<const Label*>(dense.data_ptr());
    return detail::visit_one_hot_output_type(options.dtype, [&](auto output_tag) {
      using Out = typename decltype(output_tag)::type;
      return detail::one_hot_on_cpu<Label, Out>(label_data, count, num_classes, values,
                                                options.ignore_index,
                                                static_cast<Out*>(result.data_ptr()));
    });
  });
  if (bad >= 0) {
    const std::int64_t label = detail::visit_label_type(label_type, [&](auto label_tag) {
      using Label = typename decltype(label_tag)::type;
      return static_cast<std::int64_t>(static_cast<const Label*>(dense.data_ptr())[bad]);
    });
    detail::fail_bad_label(label, bad, labels.sizes(), num_classes, options);
  }
  return result;
}

/// A reusable one-hot encoder with fixed options, checked once at construction.
///
///     torchkit::OneHot encode(10, {.smoothing = 0.1});
///     auto targets = encode(labels);  // [N, 10] float
///     std::cout << encode;            // OneHot(num_classes=10, dtype=Float, smoothing=0.1, ignore_index=none)
class OneHot {
 public:
  /// @throws Error for `num_classes <= 0`, smoothing outside [0, 1) or an unsupported dtype.
  explicit OneHot(std::int64_t num_classes, OneHotOptions options = {})
      : num_classes_(num_classes), options_(std::move(options)) {
    detail::check_one_hot_options("OneHot", num_classes_, options_);
  }

  /// one_hot(labels, num_classes(), options()).
  [[nodiscard]] at::Tensor operator()(const at::Tensor& labels) const {
    return one_hot(labels, num_classes_, options_);
  }

  /// The number of classes, the length of the last output dimension.
  [[nodiscard]] std::int64_t num_classes() const { return num_classes_; }
  /// The options every call uses.
  [[nodiscard]] const OneHotOptions& options() const { return options_; }

  /// `OneHot(num_classes=10, dtype=Float, smoothing=0.1, ignore_index=255)`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("OneHot(num_classes={}, dtype={}, smoothing={}, ignore_index={})", num_classes_,
                       c10::toString(options_.dtype), options_.smoothing,
                       options_.ignore_index.has_value() ? std::to_string(*options_.ignore_index)
                                                         : std::string("none"));
  }

  /// Writes to_string().
  friend std::ostream& operator<<(std::ostream& out, const OneHot& encoder) {
    return out << encoder.to_string();
  }

 private:
  std::int64_t num_classes_;
  OneHotOptions options_;
};

namespace detail {
/// OneHot formats with `{fmt}` as its to_string() (detail/formatter.hpp).
template <>
inline constexpr bool formats_with_to_string<OneHot> = true;
}  // namespace detail

}  // namespace torchkit
