// Fuzz target: image_to_batch's options and inputs. Any image dtype, rank, channel count and
// strides, any scale / mean / std / BGR swap / output dtype: image_to_batch either throws
// torchkit::Error or returns [1, C, H, W] of the asked dtype equal to the same arithmetic in
// ATen ops, and never changes the image.
#include "fuzz_support.hpp"

#include <torchkit/batch.hpp>

#include <fuzzer/FuzzedDataProvider.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr std::array image_dtypes{at::kByte, at::kFloat, at::kDouble, at::kInt, at::kHalf, at::kBool};
constexpr std::array output_dtypes{at::kFloat, at::kHalf, at::kBFloat16, at::kDouble, at::kInt, at::kByte};

double fuzzed_value(FuzzedDataProvider& input) {
  switch (input.ConsumeIntegralInRange(0, 7)) {
    case 0: return std::numeric_limits<double>::quiet_NaN();
    case 1: return std::numeric_limits<double>::infinity();
    case 2: return 0.0;
    case 3: return -input.ConsumeProbability<double>();
    default: return input.ConsumeFloatingPointInRange<double>(0.001, 300.0);
  }
}

std::vector<double> fuzzed_values(FuzzedDataProvider& input) {
  std::vector<double> values(input.ConsumeIntegralInRange(0, 5));
  for (auto& value : values) value = fuzzed_value(input);
  return values;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider input(data, size);
  at::manual_seed(0);  // the same pixels for the same input: runs repeat exactly
  const auto image_dtype = image_dtypes[input.ConsumeIntegralInRange<std::size_t>(0, image_dtypes.size() - 1)];
  std::vector<int64_t> shape(input.ConsumeIntegralInRange(1, 4));
  for (auto& extent : shape) extent = input.ConsumeIntegralInRange<int64_t>(0, 6);
  at::Tensor image = at::randint(0, 256, shape, at::kInt).to(image_dtype);
  if (shape.size() == 3 && input.ConsumeBool()) {  // a crop: not contiguous, read in place
    image = image.slice(1, 0, std::max<int64_t>(0, shape[1] - 1));
  }
  torchkit::ImageOptions options;
  options.bgr_to_rgb = input.ConsumeBool();
  options.scale = input.ConsumeBool() ? 1.0 / 255 : fuzzed_value(input);
  options.mean = fuzzed_values(input);
  options.std = fuzzed_values(input);
  options.dtype = output_dtypes[input.ConsumeIntegralInRange<std::size_t>(0, output_dtypes.size() - 1)];

  const at::Tensor copy = image.clone();
  at::Tensor batch;
  const bool accepted = torchkit::fuzz::accepts([&] { batch = torchkit::image_to_batch(image, options); });
  torchkit::fuzz::require(at::equal(image, copy), "image_to_batch leaves its image unchanged");
  if (!accepted) return 0;

  torchkit::fuzz::require(image.dim() == 3, "an accepted image is H x W x C");
  const int64_t channels = image.size(2);
  torchkit::fuzz::require(batch.sizes().vec() == std::vector<int64_t>{1, channels, image.size(0), image.size(1)},
                          "the batch is [1, C, H, W]");
  torchkit::fuzz::require(batch.scalar_type() == options.dtype, "dtype is the asked one");

  // The same arithmetic in ATen ops, in double.
  at::Tensor expected = image.to(at::kDouble).permute({2, 0, 1});
  if (options.bgr_to_rgb && channels >= 3) {
    expected = at::cat({expected.slice(0, 0, 3).flip({0}), expected.slice(0, 3)});
  }
  const auto per_channel = [&](const std::vector<double>& values, double fallback) {
    std::vector<double> full(static_cast<std::size_t>(channels), fallback);
    for (std::size_t c = 0; c < full.size(); ++c) {
      if (values.size() == 1) full[c] = values[0];
      else if (c < values.size()) full[c] = values[c];
    }
    return at::tensor(full, at::kDouble).reshape({channels, 1, 1});
  };
  const at::Tensor scaled = expected * options.scale;
  const at::Tensor mean = per_channel(options.mean, 0.0);
  const at::Tensor std = per_channel(options.std, 1.0);
  const at::Tensor reference = ((scaled - mean) / std).to(options.dtype).to(at::kDouble);
  const at::Tensor actual = batch[0].to(at::kDouble);
  // torchkit computes in float: allow float rounding of the operands (which cancellation can
  // make large beside the result) and the output dtype's own rounding.
  const double output_eps = options.dtype == at::kHalf ? 1e-3 : options.dtype == at::kBFloat16 ? 8e-3 : 1e-6;
  const at::Tensor tolerance =
      output_eps * reference.abs() + 1e-6 * (scaled.abs() + mean.abs()) / std.abs() + 1e-6;
  const at::Tensor same = (actual == reference) | (actual.isnan() & reference.isnan()) |
                          ((actual - reference).abs() <= tolerance);
  torchkit::fuzz::require(same.all().item<bool>(), "the batch equals the ATen arithmetic");
  return 0;
}
