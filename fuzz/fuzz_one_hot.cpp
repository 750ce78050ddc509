// Fuzz target: one_hot's validation and result. Labels of any dtype and small shape, any
// num_classes, output dtype, smoothing and ignore_index: one_hot either throws torchkit::Error
// or returns labels.shape + [C] of the asked dtype, equal to a plain loop's targets.
#include "fuzz_support.hpp"

#include <torchkit/one_hot.hpp>

#include <fuzzer/FuzzedDataProvider.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

namespace {

constexpr std::array label_dtypes{at::kByte, at::kChar, at::kShort, at::kInt, at::kLong, at::kBool, at::kFloat, at::kHalf};
constexpr std::array output_dtypes{at::kFloat, at::kDouble, at::kHalf, at::kBFloat16, at::kLong, at::kInt,
                                   at::kByte,  at::kBool,   at::kComplexFloat};

double fuzzed_smoothing(FuzzedDataProvider& input) {
  switch (input.ConsumeIntegralInRange(0, 5)) {
    case 0: return std::numeric_limits<double>::quiet_NaN();
    case 1: return 1.0;
    case 2: return -0.1;
    case 3: return input.ConsumeProbability<double>();
    default: return 0.0;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider input(data, size);
  const auto label_dtype = label_dtypes[input.ConsumeIntegralInRange<std::size_t>(0, label_dtypes.size() - 1)];
  std::vector<int64_t> shape(input.ConsumeIntegralInRange(0, 3));
  int64_t count = 1;
  for (auto& extent : shape) {
    extent = input.ConsumeIntegralInRange<int64_t>(0, 5);
    count *= extent;
  }
  std::vector<int64_t> values(static_cast<std::size_t>(count));
  for (auto& value : values) value = input.ConsumeIntegralInRange<int64_t>(-3, 300);
  const at::Tensor labels = at::tensor(values, at::kLong).reshape(shape).to(label_dtype);
  const int64_t num_classes = input.ConsumeBool() ? input.ConsumeIntegralInRange<int64_t>(-2, 260)
                                                  : input.ConsumeIntegralInRange<int64_t>(1, 12);
  torchkit::OneHotOptions options;
  options.dtype = output_dtypes[input.ConsumeIntegralInRange<std::size_t>(0, output_dtypes.size() - 1)];
  options.smoothing = fuzzed_smoothing(input);
  if (input.ConsumeBool()) options.ignore_index = input.ConsumeIntegralInRange<int64_t>(-100, 300);
  const bool transposed = shape.size() == 2 && input.ConsumeBool();

  const at::Tensor given = transposed ? labels.t() : labels;
  const at::Tensor copy = given.clone();
  at::Tensor targets;
  const bool accepted = torchkit::fuzz::accepts([&] { targets = torchkit::one_hot(given, num_classes, options); });
  torchkit::fuzz::require(at::equal(given, copy), "one_hot leaves its labels unchanged");
  if (!accepted) return 0;

  auto expected_shape = given.sizes().vec();
  expected_shape.push_back(num_classes);
  torchkit::fuzz::require(targets.sizes().vec() == expected_shape, "shape is labels.shape + [C]");
  torchkit::fuzz::require(targets.scalar_type() == options.dtype, "dtype is the asked one");
  torchkit::fuzz::require(at::isIntegralType(given.scalar_type(), /*includeBool=*/true), "labels were integers");

  // The same targets from a plain loop over the labels, in double.
  const at::Tensor flat = given.reshape({-1}).to(at::kLong).contiguous();
  const at::Tensor reference = at::zeros({flat.numel(), num_classes}, at::kDouble);
  const double smoothing = options.smoothing;
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const int64_t label = flat[i].item<int64_t>();
    if (options.ignore_index && label == *options.ignore_index) continue;
    torchkit::fuzz::require(label >= 0 && label < num_classes, "an accepted label is in [0, C)");
    reference[i].fill_(smoothing / static_cast<double>(num_classes));
    reference[i][label] = 1.0 - smoothing + smoothing / static_cast<double>(num_classes);
  }
  const double tolerance = options.dtype == at::kHalf || options.dtype == at::kBFloat16 ? 1e-2 : 1e-6;
  const at::Tensor actual = targets.reshape({-1, num_classes}).to(at::kDouble);
  torchkit::fuzz::require(at::allclose(actual, reference.to(options.dtype).to(at::kDouble), tolerance, tolerance),
                          "targets equal the plain loop's");
  return 0;
}
