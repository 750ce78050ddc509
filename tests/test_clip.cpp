// Tests for clip.hpp: clip_grad_norm_, grad_norm, clip_grad_value_ and ClipGrad against
// PyTorch's values (tests/golden/clip.json, written by tests/golden/clip_golden.py), the fast
// path against the reference path, and every bad input.
#include <torchkit/clip.hpp>

#include "test_support.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <list>
#include <span>
#include <sstream>
#include <string>
#include <vector>

namespace {

using torchkit::test::message_of;
using Json = nlohmann::json;

constexpr double infinity = std::numeric_limits<double>::infinity();

at::ScalarType dtype_named(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  throw std::runtime_error("unknown dtype " + name);
}

double number_of(const Json& value) {
  if (value.is_string()) {
    const auto text = value.get<std::string>();
    if (text == "inf") return infinity;
    if (text == "-inf") return -infinity;
    if (text == "nan") return std::numeric_limits<double>::quiet_NaN();
    throw std::runtime_error("bad number " + text);
  }
  return value.get<double>();
}

/// A gradient with exactly the golden values, laid out as the golden file says.
at::Tensor gradient_from(const Json& param) {
  const auto shape = param["shape"].get<std::vector<int64_t>>();
  const auto dtype = dtype_named(param["dtype"].get<std::string>());
  std::vector<double> values;
  for (const auto& value : param["grad"]) values.push_back(number_of(value));
  const at::Tensor contiguous = torch::tensor(values, torch::kDouble).reshape(shape).to(dtype);
  const auto layout = param["layout"].get<std::string>();
  if (layout == "transposed") {
    at::Tensor laid = torch::empty({shape[1], shape[0]}, dtype).t();
    laid.copy_(contiguous);
    REQUIRE(!laid.is_contiguous());
    REQUIRE(laid.is_non_overlapping_and_dense());
    return laid;
  }
  if (layout == "strided") {
    at::Tensor laid = torch::zeros({shape[0], shape[1] * 2}, dtype).slice(1, 0, shape[1] * 2, 2);
    laid.copy_(contiguous);
    REQUIRE(!laid.is_non_overlapping_and_dense());
    return laid;
  }
  return contiguous;
}

/// Parameters with the golden gradients (fresh copies each call).
std::vector<at::Tensor> parameters_from(const Json& params) {
  std::vector<at::Tensor> result;
  for (const auto& param : params) {
    const auto shape = param["shape"].get<std::vector<int64_t>>();
    const auto dtype = dtype_named(param["dtype"].get<std::string>());
    at::Tensor parameter = torch::zeros(shape, torch::TensorOptions().dtype(dtype).requires_grad(true));
    if (!param["grad"].is_null()) {
      parameter.mutable_grad() = gradient_from(param);
    }
    result.push_back(parameter);
  }
  return result;
}

/// Relative tolerance for one rounding step (or a different summation order) in `dtype`.
double tolerance_for(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return 1e-12;
    case at::kFloat: return 2e-6;
    case at::kHalf: return 2e-3;
    default: return 1.6e-2;  // bfloat16
  }
}

/// The tolerance for a whole set: that of its least precise gradient dtype (the total and the
/// coefficient carry its rounding into every gradient).
double set_tolerance(const Json& params) {
  double tolerance = 0;
  for (const auto& param : params) {
    tolerance = std::max(tolerance, tolerance_for(dtype_named(param["dtype"].get<std::string>())));
  }
  return tolerance;
}

bool close(double actual, double expected, double tolerance) {
  if (std::isnan(expected)) return std::isnan(actual);
  if (std::isinf(expected)) return actual == expected;
  return std::abs(actual - expected) <= tolerance * std::max(std::abs(expected), 1e-30);
}

/// Every element of `actual` within tolerance of the golden values (one rounding of the
/// element's dtype, plus the coefficient's own rounding).
void check_values(const at::Tensor& actual, const Json& expected, const std::string& where,
                  double set_tolerance = 0) {
  const at::Tensor flat = actual.to(at::kDouble).contiguous().reshape(-1);
  REQUIRE(flat.numel() == static_cast<int64_t>(expected.size()));
  const double tolerance = 2 * std::max(tolerance_for(actual.scalar_type()), set_tolerance);
  const double* data = flat.data_ptr<double>();
  int mismatches = 0;
  for (int64_t i = 0; i < flat.numel(); ++i) {
    if (!close(data[i], number_of(expected[static_cast<std::size_t>(i)]), tolerance) && mismatches++ < 3) {
      FAIL_CHECK(where << " element " << i << ": " << data[i] << " != " << number_of(expected[static_cast<std::size_t>(i)]));
    }
  }
  CHECK(mismatches == 0);
}

std::vector<at::Tensor> gradients_of(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params) grads.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());
  return grads;
}

void check_unchanged(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& before) {
  REQUIRE(params.size() == before.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (!before[i].defined()) {
      CHECK(!params[i].grad().defined());
      continue;
    }
    // Bit-identical, NaN included.
    const at::Tensor now = params[i].grad();
    CHECK(((now == before[i]) | (now.isnan() & before[i].isnan())).all().item<bool>());
    CHECK(now.signbit().equal(before[i].signbit()));
  }
}

struct Model : torch::nn::Module {
  Model() {
    first = register_module("first", torch::nn::Linear(6, 4));
    second = register_module("second", torch::nn::Linear(4, 3));
  }
  at::Tensor forward(const at::Tensor& x) { return second->forward(torch::relu(first->forward(x))); }
  torch::nn::Linear first{nullptr}, second{nullptr};
};

void backward_once(Model& model, int64_t seed = 0) {
  torch::manual_seed(seed);
  model.zero_grad();
  model.forward(torch::randn({5, 6})).pow(2).sum().backward();
}

}  // namespace

TEST_CASE("clip_grad_norm_ matches PyTorch on every golden set, norm type and path") {
  const Json golden = torchkit::test::load_golden("clip.json");
  REQUIRE(golden["cases"].size() >= 5);
  for (const auto& item : golden["cases"]) {
    const auto set = item["set"].get<std::string>();
    for (const auto& result : item["results"]) {
      const double p = number_of(result["norm_type"]);
      for (const bool foreach : {true, false}) {
        CAPTURE(set);
        CAPTURE(p);
        CAPTURE(foreach);
        auto params = parameters_from(item["params"]);
        const at::Tensor total = torchkit::clip_grad_norm_(params, result["max_norm"].get<double>(), p,
                                                           {.foreach = foreach});
        const auto dtype = dtype_named(result["total_dtype"].get<std::string>());
        CHECK(total.dim() == 0);
        CHECK((total.scalar_type() == dtype));
        CHECK(total.device().is_cpu());
        const double tolerance = set_tolerance(item["params"]);
        CHECK(close(total.item<double>(), result["total"].get<double>(), tolerance));
        for (std::size_t i = 0; i < params.size(); ++i) {
          if (result["clipped"][i].is_null()) {
            CHECK(!params[i].grad().defined());
          } else {
            check_values(params[i].grad(), result["clipped"][i], set + " parameter " + std::to_string(i), tolerance);
          }
        }
      }
    }
  }
}

TEST_CASE("grad_norm returns the same total and changes nothing") {
  const Json golden = torchkit::test::load_golden("clip.json");
  for (const auto& item : golden["cases"]) {
    for (const auto& result : item["results"]) {
      const double p = number_of(result["norm_type"]);
      auto params = parameters_from(item["params"]);
      const auto before = gradients_of(params);
      const at::Tensor total = torchkit::grad_norm(params, p);
      const auto dtype = dtype_named(result["total_dtype"].get<std::string>());
      CHECK((total.scalar_type() == dtype));
      CHECK(close(total.item<double>(), result["total"].get<double>(), set_tolerance(item["params"])));
      check_unchanged(params, before);
    }
  }
}

TEST_CASE("a max_norm above the total leaves every gradient bit-identical") {
  const Json golden = torchkit::test::load_golden("clip.json");
  for (const auto& item : golden["cases"]) {
    for (const bool foreach : {true, false}) {
      auto params = parameters_from(item["params"]);
      const auto before = gradients_of(params);
      const double total = torchkit::grad_norm(params).item<double>();
      const at::Tensor returned = torchkit::clip_grad_norm_(params, total * 4 + 1, 2.0, {.foreach = foreach});
      CHECK(close(returned.item<double>(), total, set_tolerance(item["params"])));
      check_unchanged(params, before);
    }
  }
}

TEST_CASE("clip_grad_value_ matches PyTorch") {
  const Json golden = torchkit::test::load_golden("clip.json");
  int checked = 0;
  for (const auto& item : golden["cases"]) {
    for (const auto& result : item["value_results"]) {
      auto params = parameters_from(item["params"]);
      torchkit::clip_grad_value_(params, result["clip_value"].get<double>());
      for (std::size_t i = 0; i < params.size(); ++i) {
        if (!result["clipped"][i].is_null()) {
          check_values(params[i].grad(), result["clipped"][i], item["set"].get<std::string>());
          ++checked;
        }
      }
    }
  }
  CHECK(checked > 10);
}

TEST_CASE("clip_grad_value_ keeps NaN and clamps infinities") {
  auto param = torch::zeros({5}, torch::requires_grad());
  param.mutable_grad() = torch::tensor({-infinity, -0.25, std::nan(""), 3.0, infinity});
  torchkit::clip_grad_value_(std::vector<at::Tensor>{param}, 1.0);
  const auto grad = param.grad();
  CHECK(grad[0].item<double>() == -1.0);
  CHECK(grad[1].item<double>() == -0.25);
  CHECK(std::isnan(grad[2].item<double>()));
  CHECK(grad[3].item<double>() == 1.0);
  CHECK(grad[4].item<double>() == 1.0);
}

TEST_CASE("both paths agree on large gradients split over runs and threads") {
  torch::manual_seed(7);
  auto make = [] {
    std::vector<at::Tensor> params;
    const std::vector<std::pair<std::vector<int64_t>, at::ScalarType>> specs = {
        {{300000}, at::kFloat}, {{513, 129}, at::kDouble}, {{70001}, at::kHalf},
        {{65536}, at::kBFloat16}, {{3}, at::kFloat},     {{0}, at::kFloat}};
    for (const auto& [shape, dtype] : specs) {
      auto p = torch::zeros(shape, torch::TensorOptions().dtype(dtype).requires_grad(true));
      p.mutable_grad() = torch::randn(shape).to(dtype);
      params.push_back(p);
    }
    return params;
  };
  const auto original = make();
  const int threads = at::get_num_threads();
  for (const double p : {2.0, 1.0, 3.5, infinity, 0.0}) {
    for (const int thread_count : {1, 2}) {
      CAPTURE(p);
      CAPTURE(thread_count);
      at::set_num_threads(thread_count);
      auto fast = make();
      auto reference = make();
      for (std::size_t i = 0; i < fast.size(); ++i) {
        fast[i].mutable_grad().copy_(original[i].grad());
        reference[i].mutable_grad().copy_(original[i].grad());
      }
      const double total = torchkit::grad_norm(original, p).item<double>();
      const auto fast_total = torchkit::clip_grad_norm_(fast, total / 3, p);
      const auto reference_total = torchkit::clip_grad_norm_(reference, total / 3, p, {.foreach = false});
      CHECK((fast_total.scalar_type() == at::kDouble));
      // LibTorch's CPU norms add float elements one by one into one float: over 300000
      // elements of p = 3.5 that drifts by ~6e-5. The fast path keeps many partial sums.
      const double tolerance = 2e-4;
      CHECK(close(fast_total.item<double>(), reference_total.item<double>(), tolerance));
      for (std::size_t i = 0; i < fast.size(); ++i) {
        const auto dtype = fast[i].grad().scalar_type();
        const bool agree = at::allclose(fast[i].grad().to(at::kDouble), reference[i].grad().to(at::kDouble),
                                        2 * tolerance_for(dtype) + tolerance, 1e-30);
        if (!agree) {
          const auto difference = (fast[i].grad().to(at::kDouble) - reference[i].grad().to(at::kDouble)).abs();
          const auto index = difference.argmax().item<int64_t>();
          FAIL_CHECK("parameter " << i << " element " << index << ": " << fast[i].grad().reshape(-1)[index].item<double>()
                                  << " vs " << reference[i].grad().reshape(-1)[index].item<double>());
        }
      }
    }
  }
  at::set_num_threads(threads);
}

/// The bits of a tensor, as integers of the same width (so that NaNs compare too).
at::Tensor bits_of(const at::Tensor& tensor) {
  switch (tensor.element_size()) {
    case 2: return tensor.view(at::kShort);
    case 4: return tensor.view(at::kInt);
    default: return tensor.view(at::kLong);
  }
}

TEST_CASE("every instruction set the CPU has gives the same bits as the portable kernels") {
  namespace kernels = torchkit::detail::clip;
  using kernels::Isa;
  const auto best = kernels::cpu_isa();
  MESSAGE("kernels on this CPU: portable up to " << std::string(kernels::isa_name(best)));
  torch::manual_seed(23);
  // Sizes around every vector, block and conversion-buffer boundary, and a run's length.
  const std::vector<int64_t> sizes = {0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 511, 512, 513, 4099, 65536};
  const std::vector<double> orders = {0.0, 1.0, 2.0, 3.5, infinity};
  for (const auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    for (const int64_t size : sizes) {
      // Values of every magnitude, exact zeros, and (for the max-norm) a NaN in some tensors.
      auto values = (torch::randn({size}, at::kDouble) * torch::pow(10.0, torch::randint(-3, 4, {size}, at::kDouble)));
      if (size > 4) values.index_put_({torch::indexing::Slice(0, size, 5)}, 0.0);
      const auto source = values.to(dtype);
      std::vector<double> portable_partials;
      at::Tensor portable_scaled, portable_clamped;
      for (int level = 0; level <= static_cast<int>(best); ++level) {
        const auto isa = static_cast<Isa>(level);
        CAPTURE(std::string(kernels::isa_name(isa)));
        CAPTURE(std::string(c10::toString(dtype)));
        CAPTURE(size);
        const kernels::ForceIsa pin(isa);
        REQUIRE(kernels::active_isa() == isa);
        std::vector<double> partials;
        for (const double p : orders) {
          partials.push_back(kernels::reduce(dtype, kernels::norm_kind_of(p), source.data_ptr(), size, p));
        }
        auto scaled = source.clone();
        kernels::scale(dtype, scaled.data_ptr(), size, 0.3);
        auto clamped = source.clone();
        kernels::clamp(dtype, clamped.data_ptr(), size, 0.7);
        // The batched form over runs gives the same partials as one call per run.
        const std::vector<kernels::Run> runs = {{source.data_ptr(), size / 2, 0, dtype},
                                                {static_cast<char*>(source.data_ptr()) + size / 2 * source.element_size(),
                                                 size - size / 2, 0, dtype}};
        double batched[2] = {};
        kernels::reduce_runs(runs.data(), 2, kernels::NormKind::two, 2.0, batched);
        CHECK(batched[0] == kernels::reduce(dtype, kernels::NormKind::two, runs[0].data, runs[0].size, 2.0));
        CHECK(batched[1] == kernels::reduce(dtype, kernels::NormKind::two, runs[1].data, runs[1].size, 2.0));
        if (isa == Isa::portable) {
          portable_partials = partials;
          portable_scaled = scaled;
          portable_clamped = clamped;
          // An independent check of the portable kernels: ATen in double.
          const auto wide = source.to(at::kDouble);
          CHECK(partials[0] == static_cast<double>(wide.ne(0).sum().item<int64_t>()));
          CHECK(close(partials[1], wide.abs().sum().item<double>(), 1e-5));
          CHECK(close(partials[2], wide.square().sum().item<double>(), 1e-5));
          CHECK(partials[4] == (size == 0 ? 0.0 : wide.abs().max().item<double>()));
          // (LibTorch's own mul_ by a 0-dim double: float16/bfloat16 round the factor first up
          // to LibTorch 2.0, not from 2.1: the kernels follow the LibTorch at hand.)
          CHECK(torch::equal(scaled, source.mul(at::scalar_tensor(0.3, at::kDouble))));
          // (In float: LibTorch 1.13 has no float16 clamp on the CPU; the bound rounded first.)
          const double bound = at::scalar_tensor(0.7, at::kDouble).to(dtype).item<double>();
          CHECK(torch::equal(clamped, source.to(at::kDouble).clamp(-bound, bound).to(dtype)));
          continue;
        }
        for (std::size_t k = 0; k < orders.size(); ++k) {
          CAPTURE(orders[k]);
          // Bit for bit (NaN compares as NaN).
          CHECK(std::bit_cast<std::uint64_t>(partials[k]) == std::bit_cast<std::uint64_t>(portable_partials[k]));
        }
        CHECK(torch::equal(bits_of(scaled), bits_of(portable_scaled)));
        CHECK(torch::equal(bits_of(clamped), bits_of(portable_clamped)));
      }
    }
  }
}

TEST_CASE("every instruction set gives the same bits on NaN, infinities, signed zeros, subnormals and bounds") {
  // The 64-byte (AVX-512) kernels compare magnitudes' bits as integers instead of the values
  // (see lanes_above in detail/clip_kernels.hpp): every special value, at every lane position
  // and in the scalar tail, must still give the portable kernels' bits.
  namespace kernels = torchkit::detail::clip;
  using kernels::Isa;
  const auto best = kernels::cpu_isa();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double specials[] = {nan,  -nan,        infinity, -infinity, 0.0,    -0.0,   1e-310, -1e-310, 1e-40,
                             -1e-40, 0.7,       -0.7,     0.69999,   0.70001, 1e30,  -1e30,  1.0,    -2.5};
  const std::vector<double> bounds = {0.7, 0.0, -0.0, infinity, 1e-40, 1e30};
  const std::vector<double> orders = {0.0, 1.0, 2.0, 3.5, infinity};
  for (const auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    // 3 x 18 values: every special at many lane positions of a 64-byte vector, then a tail.
    const int64_t size = 3 * static_cast<int64_t>(std::size(specials)) + 5;
    auto values = torch::empty({size}, at::kDouble);
    for (int64_t i = 0; i < size; ++i) {
      values[i] = specials[(i * 7) % static_cast<int64_t>(std::size(specials))];
    }
    auto source = values.to(dtype);
    if (dtype == at::kFloat) {  // a NaN with a payload: the clamp must keep it
      source.view(at::kInt)[3] = 0x7FC12345;
      source.view(at::kInt)[size - 2] = static_cast<int32_t>(0xFFA00001u);
    }
    for (const bool with_nan : {true, false}) {
      const auto input = with_nan ? source : source.masked_fill(source.isnan(), 0.5);
      std::vector<double> portable_partials;
      std::vector<at::Tensor> portable_clamped;
      at::Tensor portable_scaled;
      for (int level = 0; level <= static_cast<int>(best); ++level) {
        const auto isa = static_cast<Isa>(level);
        CAPTURE(std::string(kernels::isa_name(isa)));
        CAPTURE(std::string(c10::toString(dtype)));
        CAPTURE(with_nan);
        const kernels::ForceIsa pin(isa);
        std::vector<double> partials;
        for (const double p : orders) {
          partials.push_back(kernels::reduce(dtype, kernels::norm_kind_of(p), input.data_ptr(), size, p));
        }
        auto scaled = input.clone();
        kernels::scale(dtype, scaled.data_ptr(), size, 0.3);
        std::vector<at::Tensor> clamped;
        for (const double bound : bounds) {
          clamped.push_back(input.clone());
          kernels::clamp(dtype, clamped.back().data_ptr(), size, bound);
        }
        if (isa == Isa::portable) {
          portable_partials = partials;
          portable_scaled = scaled;
          portable_clamped = clamped;
          // The portable kernels against ATen in double.
          const auto wide = input.to(at::kDouble);
          CHECK(partials[0] == static_cast<double>(wide.ne(0).sum().item<int64_t>()));
          if (with_nan) {
            CHECK(std::isnan(partials[4]));
          } else {
            CHECK(partials[4] == wide.abs().max().item<double>());
          }
          if (dtype == at::kFloat || dtype == at::kDouble) {  // ATen's clamp keeps NaN payloads
            for (std::size_t b = 0; b < bounds.size(); ++b) {
              if (std::signbit(bounds[b])) continue;  // (limits +0.0 then -0.0: compared across paths)
              CAPTURE(bounds[b]);
              const double bound = at::scalar_tensor(bounds[b], at::kDouble).to(dtype).item<double>();
              CHECK(torch::equal(bits_of(clamped[b]), bits_of(input.clamp(-bound, bound))));
            }
          }
          continue;
        }
        for (std::size_t k = 0; k < orders.size(); ++k) {
          CAPTURE(orders[k]);
          if (std::isnan(portable_partials[k])) {  // (a sum's NaN keeps the payload of whichever came first)
            CHECK(std::isnan(partials[k]));
          } else {
            CHECK(std::bit_cast<std::uint64_t>(partials[k]) == std::bit_cast<std::uint64_t>(portable_partials[k]));
          }
        }
        CHECK(torch::equal(bits_of(scaled), bits_of(portable_scaled)));
        for (std::size_t b = 0; b < bounds.size(); ++b) {
          CAPTURE(bounds[b]);
          CHECK(torch::equal(bits_of(clamped[b]), bits_of(portable_clamped[b])));
        }
      }
    }
  }
}

TEST_CASE("float16/bfloat16 gradients are scaled as this LibTorch's mul_ by a 0-dim double tensor scales them") {
  // clip_grad_norm_ multiplies each gradient by the coefficient, a 0-dim tensor of the total's
  // dtype (double for a set with a double gradient): LibTorch 1.13 rounds it to a 16-bit
  // gradient's type first, 2.1 and newer multiply by it as a float.
  namespace kernels = torchkit::detail::clip;
  const auto finite = [](const at::Tensor& t) { return at::isfinite(t.to(at::kFloat)); };
  for (const auto dtype : {at::kBFloat16, at::kHalf}) {
    const auto all = torch::arange(0, 65536, at::kInt).to(at::kShort).view(dtype);
    const auto source = all.masked_select(finite(all));
    for (const double factor : {0.33371234, 0.3, 1.0 / 3.0, 0.999}) {
      CAPTURE(std::string(c10::toString(dtype)));
      CAPTURE(factor);
      const auto expected = source.clone().mul_(torch::scalar_tensor(factor, at::kDouble));
      auto scaled = source.clone();
      kernels::scale(dtype, scaled.data_ptr(), scaled.numel(), factor);
      CHECK(torch::equal(scaled.view(at::kShort), expected.view(at::kShort)));
    }
  }
}

TEST_CASE("the bfloat16 and float16 conversions of every path round as c10 does") {
  namespace kernels = torchkit::detail::clip;
  // Every 16-bit pattern (NaNs and infinities included), scaled by factors that round up, down
  // and to ties, and clamped: each path against c10's scalar conversions.
  auto all = torch::arange(0, 65536, at::kInt).to(at::kShort);
  for (const auto dtype : {at::kBFloat16, at::kHalf}) {
    const auto source = all.view(dtype);
    for (const double factor : {0.3, 1.0 + 1.0 / 256, 0.5 + 1.0 / 512, 3.0}) {
      auto expected = source.clone();
      for (int64_t i = 0; i < expected.numel(); ++i) {
        auto* data = static_cast<std::uint16_t*>(expected.data_ptr()) + i;
        // The factor rounded to the element type first on LibTorch up to 2.0, as a float on 2.1
        // and newer (the next test checks that choice against LibTorch's own mul_).
        const auto single = static_cast<float>(factor);
        if (dtype == at::kHalf) {
          const float rounded =
              kernels::mul_rounds_factor_to_element_type ? static_cast<float>(c10::Half(single)) : single;
          *data = c10::Half(static_cast<float>(c10::Half(*data, c10::Half::from_bits())) * rounded).x;
        } else {
          const float rounded =
              kernels::mul_rounds_factor_to_element_type ? static_cast<float>(c10::BFloat16(single)) : single;
          *data = c10::BFloat16(static_cast<float>(c10::BFloat16(*data, c10::BFloat16::from_bits())) * rounded).x;
        }
      }
      for (int level = 0; level <= static_cast<int>(kernels::cpu_isa()); ++level) {
        CAPTURE(std::string(kernels::isa_name(static_cast<kernels::Isa>(level))));
        CAPTURE(std::string(c10::toString(dtype)));
        CAPTURE(factor);
        const kernels::ForceIsa pin(static_cast<kernels::Isa>(level));
        auto scaled = source.clone();
        kernels::scale(dtype, scaled.data_ptr(), scaled.numel(), factor);
        CHECK(torch::equal(scaled.view(at::kShort), expected.view(at::kShort)));
      }
    }
  }
}

TEST_CASE("clip_grad_norm_ returns the same total and gradients on every instruction set") {
  namespace kernels = torchkit::detail::clip;
  torch::manual_seed(29);
  auto make = [] {
    std::vector<at::Tensor> params;
    for (const auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
      for (const int64_t size : {int64_t{100003}, int64_t{512}, int64_t{1}}) {
        auto p = torch::zeros({size}, torch::TensorOptions().dtype(dtype).requires_grad(true));
        torch::manual_seed(size);
        p.mutable_grad() = torch::randn({size}).to(dtype);
        params.push_back(p);
      }
    }
    return params;
  };
  std::vector<at::Tensor> first;
  at::Tensor first_total;
  for (int level = 0; level <= static_cast<int>(kernels::cpu_isa()); ++level) {
    CAPTURE(std::string(kernels::isa_name(static_cast<kernels::Isa>(level))));
    const kernels::ForceIsa pin(static_cast<kernels::Isa>(level));
    auto params = make();
    const auto total = torchkit::clip_grad_norm_(params, 1.0);
    if (level == 0) {
      first = params;
      first_total = total;
      continue;
    }
    CHECK(torch::equal(total, first_total));
    for (std::size_t i = 0; i < params.size(); ++i) CHECK(torch::equal(params[i].grad(), first[i].grad()));
  }
}

TEST_CASE("a set large enough to be split over threads gives the same bits on one and two threads") {
  namespace kernels = torchkit::detail::clip;
  REQUIRE(kernels::parallel_min_elements <= 3 * (int64_t{1} << 20));
  auto make = [] {
    std::vector<at::Tensor> params;
    const std::vector<std::pair<int64_t, at::ScalarType>> specs = {
        {int64_t{1} << 21, at::kFloat}, {(int64_t{1} << 19) + 7, at::kDouble}, {300001, at::kBFloat16}, {5, at::kFloat}};
    torch::manual_seed(31);
    for (const auto& [size, dtype] : specs) {
      auto p = torch::zeros({size}, torch::TensorOptions().dtype(dtype).requires_grad(true));
      p.mutable_grad() = torch::randn({size}).to(dtype);
      params.push_back(p);
    }
    return params;
  };
  const int threads = at::get_num_threads();
  for (const double p : {2.0, 1.0, infinity}) {
    CAPTURE(p);
    at::set_num_threads(1);
    auto one = make();
    const auto one_total = torchkit::clip_grad_norm_(one, 10.0, p);
    at::set_num_threads(2);
    auto two = make();
    const auto two_total = torchkit::clip_grad_norm_(two, 10.0, p);
    CHECK(torch::equal(one_total, two_total));
    for (std::size_t i = 0; i < one.size(); ++i) CHECK(torch::equal(one[i].grad(), two[i].grad()));
  }
  at::set_num_threads(threads);
}

TEST_CASE("the fast path is as accurate as float64 on a large float32 gradient") {
  torch::manual_seed(11);
  auto param = torch::zeros({1000003}, torch::requires_grad());
  param.mutable_grad() = torch::randn({1000003});
  const std::vector<at::Tensor> params = {param};
  for (const double p : {2.0, 1.0, 3.5, 0.5, infinity, 0.0}) {
    CAPTURE(p);
    // (The 0-"norm" of a set counts the gradients with a non-zero element: here 1.)
    const double exact = p == 0.0 ? 1.0 : at::norm(param.grad().to(at::kDouble), p).item<double>();
    // One rounding to float32 of the result; for fractional p also PyTorch's float 1/p
    // exponent (|ln total| * 3e-8).
    const bool fractional = p == 3.5 || p == 0.5;
    CHECK(close(torchkit::grad_norm(params, p).item<double>(), exact, fractional ? 2e-6 : 2e-7));
  }
}

TEST_CASE("the accelerator path (_foreach kernels) agrees with the CPU kernels") {
  // The path taken for CUDA gradients, run on CPU tensors through a detail switch.
  const Json golden = torchkit::test::load_golden("clip.json");
  for (const auto& item : golden["cases"]) {
    for (const auto& result : item["results"]) {
      const double p = number_of(result["norm_type"]);
      // On the CPU, LibTorch 1.13's _foreach_norm accumulates float16/bfloat16 in their own
      // precision (CUDA's accumulates in float): compare float32/float64 sets only.
      bool reduced = false;
      for (const auto& param : item["params"]) {
        const auto dtype = dtype_named(param["dtype"].get<std::string>());
        reduced = reduced || dtype == at::kHalf || dtype == at::kBFloat16;
      }
      if (reduced) continue;
      CAPTURE(item["set"].get<std::string>());
      CAPTURE(p);
      auto params = parameters_from(item["params"]);
      const auto collected = torchkit::detail::clip::collect(params, "test", true);
      const at::Tensor total = torchkit::detail::clip::norm_and_clip(
          collected, p, result["max_norm"].get<double>(), {}, "test", /*cpu_through_foreach=*/true);
      const auto dtype = dtype_named(result["total_dtype"].get<std::string>());
      CHECK((total.scalar_type() == dtype));
      CHECK(close(total.item<double>(), result["total"].get<double>(), tolerance_for(dtype)));
      for (std::size_t i = 0; i < params.size(); ++i) {
        if (!result["clipped"][i].is_null()) check_values(params[i].grad(), result["clipped"][i], "foreach path");
      }
    }
  }
}

TEST_CASE("collect lays out every gradient's runs in order, the unusual ones among the usual") {
  namespace kernels = torchkit::detail::clip;
  // Small (one run), large (several runs: more than the room made for one run per parameter),
  // empty, undefined, transposed (dense, not contiguous), strided (not dense) and inference
  // gradients, mixed.
  torch::manual_seed(5);
  std::vector<at::Tensor> params;
  const auto add = [&](std::vector<int64_t> shape, const std::string& kind) {
    auto param = torch::zeros(shape, torch::requires_grad());
    if (kind == "transposed") {
      param.mutable_grad() = torch::randn({shape[1], shape[0]}).t();
    } else if (kind == "strided") {
      param.mutable_grad() = torch::randn({shape[0], shape[1] * 2}).slice(1, 0, shape[1] * 2, 2);
    } else if (kind == "inference") {
      const c10::InferenceMode guard;
      param.mutable_grad() = torch::randn(shape);
    } else if (kind != "none") {
      param.mutable_grad() = torch::randn(shape);
    }
    params.push_back(param);
  };
  add({512}, "small");
  add({300001}, "large");
  add({7}, "small");
  add({0}, "empty");
  add({9}, "none");
  add({40, 30}, "transposed");
  for (int i = 0; i < 12; ++i) add({200000}, "large");
  add({65536}, "small");
  add({65537}, "large");
  add({5, 6}, "inference");
  add({4, 3}, "strided");
  add({3}, "small");
  for (const bool with_strided : {true, false}) {
    CAPTURE(with_strided);
    auto used = params;
    if (!with_strided) used.erase(used.end() - 2);
    const auto collected = kernels::collect(used, "test", /*mutating=*/false);
    std::size_t expected_gradients = 0;
    std::int64_t expected_elements = 0;
    for (const auto& param : used) {
      if (!param.grad().defined()) continue;
      ++expected_gradients;
      if (param.grad().is_non_overlapping_and_dense()) expected_elements += param.grad().numel();
    }
    REQUIRE(collected.gradients.size() == expected_gradients);
    REQUIRE(collected.run_begin.size() == expected_gradients + 1);
    CHECK(collected.run_begin.front() == 0);
    CHECK(collected.run_begin.back() == collected.runs.size());
    CHECK(collected.run_elements_total == expected_elements);
    CHECK(collected.runs_cover_all == !with_strided);
    std::size_t position = 0;
    for (std::size_t k = 0; k < collected.gradients.size(); ++k) {
      const auto& gradient = collected.gradients[k];
      while (!used[position].grad().defined()) ++position;
      CAPTURE(position);
      CHECK(gradient.index == position);
      const at::Tensor& grad = used[position].grad();
      CHECK(gradient.grad == &used[position].grad());
      CHECK(gradient.numel == grad.numel());
      CHECK((gradient.dtype == grad.scalar_type()));
      CHECK(gradient.is_cpu);
      CHECK(!gradient.tracked);
      const bool dense = grad.is_non_overlapping_and_dense() && grad.numel() > 0;
      CHECK((gradient.data == (dense ? grad.data_ptr() : nullptr)));
      // The runs: consecutive pieces of at most run_elements from the first element on.
      std::int64_t covered = 0;
      for (std::size_t r = collected.run_begin[k]; r < collected.run_begin[k + 1]; ++r) {
        const auto& run = collected.runs[r];
        CHECK(run.gradient == k);
        CHECK((run.dtype == grad.scalar_type()));
        CHECK(run.size > 0);
        CHECK(run.size <= kernels::run_elements);
        CHECK(run.data == static_cast<void*>(static_cast<float*>(grad.data_ptr()) + covered));
        covered += run.size;
      }
      CHECK(covered == (dense ? grad.numel() : 0));
      ++position;
    }
  }
}

TEST_CASE("the host coefficient equals PyTorch's tensor ops bit for bit") {
  torch::manual_seed(3);
  const auto totals = at::cat({torch::rand({400}) * 100, torch::rand({100}) * 1e-5, torch::randn({100}).exp() * 1e4,
                               torch::tensor({0.0, 1e-6, 1.0, 20.0, 19.999999, 1e30, infinity,
                                              std::numeric_limits<double>::quiet_NaN()})}).to(at::kDouble);
  const std::vector<double> max_norms = {1e-3, 0.5, 1.0, 20.0, 123.456, 1e6};
  int compared = 0;
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    const auto typed = totals.to(dtype);
    for (int64_t i = 0; i < typed.numel(); ++i) {
      const at::Tensor total = typed[i].clone();
      for (const double max_norm : max_norms) {
        const double expected = torchkit::detail::clip::clip_coefficient(total, max_norm).item<double>();
        const double actual = torchkit::detail::clip::host_clip_coefficient(total.item<double>(), max_norm, dtype);
        if (std::isnan(expected)) {
          CHECK(std::isnan(actual));
        } else if (actual != expected) {
          FAIL_CHECK("total " << total.item<double>() << " max_norm " << max_norm << ": " << actual << " != " << expected);
        }
        ++compared;
      }
    }
  }
  CHECK(compared > 7000);
}

TEST_CASE("no gradients: norm 0 as a CPU float, nothing touched") {
  std::vector<at::Tensor> none;
  auto total = torchkit::clip_grad_norm_(none, 1.0);
  CHECK(total.dim() == 0);
  CHECK((total.scalar_type() == at::kFloat));
  CHECK(total.item<double>() == 0.0);

  std::vector<at::Tensor> without = {torch::ones({3}, torch::requires_grad()), torch::ones({2}, torch::requires_grad())};
  for (const bool foreach : {true, false}) {
    total = torchkit::clip_grad_norm_(without, 1e-3, 2.0, {.error_if_nonfinite = true, .foreach = foreach});
    CHECK(total.item<double>() == 0.0);
    CHECK(!without[0].grad().defined());
    CHECK(without[0].equal(torch::ones({3})));
  }
  CHECK(torchkit::grad_norm(without, 0.0).item<double>() == 0.0);
  torchkit::clip_grad_value_(without, 0.1);
  CHECK(!without[1].grad().defined());
}

TEST_CASE("accepts a module, a holder, a shared_ptr, parameters() and any tensor range") {
  auto model = std::make_shared<Model>();
  backward_once(*model);
  const auto params = model->parameters();
  const double expected = torchkit::grad_norm(params).item<double>();
  CHECK(expected > 0);
  CHECK(torchkit::grad_norm(*model).item<double>() == expected);
  CHECK(torchkit::grad_norm(model).item<double>() == expected);
  CHECK(torchkit::grad_norm(model->parameters()).item<double>() == expected);
  CHECK(torchkit::grad_norm(std::span<const at::Tensor>(params)).item<double>() == expected);
  CHECK(torchkit::grad_norm(std::list<at::Tensor>(params.begin(), params.end())).item<double>() == expected);
  // A range producing tensors by value.
  auto by_value = params | std::views::transform([](const at::Tensor& t) { return t; });
  CHECK(torchkit::grad_norm(by_value).item<double>() == expected);

  torch::nn::Linear linear(3, 2);
  linear->forward(torch::ones({1, 3})).sum().backward();
  const double linear_norm = torchkit::grad_norm(linear->parameters()).item<double>();
  CHECK(torchkit::clip_grad_norm_(linear, linear_norm / 2).item<double>() == linear_norm);
  CHECK(close(torchkit::grad_norm(linear).item<double>(), linear_norm / 2, 1e-5));

  // clip via the module equals clip via the range
  auto other = std::make_shared<Model>();
  backward_once(*other);
  for (std::size_t i = 0; i < params.size(); ++i) other->parameters()[i].data().copy_(params[i].data());
  backward_once(*model, 3);
  backward_once(*other, 3);
  torchkit::clip_grad_norm_(model, 0.5);
  torchkit::clip_grad_norm_(other->parameters(), 0.5);
  for (std::size_t i = 0; i < params.size(); ++i) {
    CHECK(model->parameters()[i].grad().equal(other->parameters()[i].grad()));
  }
  CHECK(close(torchkit::grad_norm(model).item<double>(), 0.5, 1e-5));
}

TEST_CASE("a tied parameter counts once through a module, twice when listed twice, as in Python") {
  auto param = torch::zeros({4}, torch::requires_grad());
  param.mutable_grad() = torch::tensor({3.0f, 0.0f, 4.0f, 0.0f});
  std::vector<at::Tensor> twice = {param, param};
  CHECK(close(torchkit::grad_norm(twice).item<double>(), std::sqrt(50.0), 1e-6));
  // Python's loop scales the shared gradient twice; so do both paths.
  auto reference_param = torch::zeros({4}, torch::requires_grad());
  reference_param.mutable_grad() = param.grad().clone();
  std::vector<at::Tensor> reference_twice = {reference_param, reference_param};
  torchkit::clip_grad_norm_(twice, 1.0);
  torchkit::clip_grad_norm_(reference_twice, 1.0, 2.0, {.foreach = false});
  CHECK(at::allclose(param.grad(), reference_param.grad(), 1e-6, 0));
  CHECK(param.grad()[0].item<double>() < 3.0 / std::sqrt(50.0));
}

TEST_CASE("version counters: bumped for gradients in a graph, as Python's detach().mul_()") {
  // A gradient made with create_graph is part of a graph: autograd must see the change.
  auto x = torch::tensor({3.0, 4.0, 12.0}, torch::requires_grad());
  auto grads = torch::autograd::grad({(x * x).sum() / 2}, {x}, {}, true, /*create_graph=*/true);
  // grads[0] == x (as a graph node); saving it in another op then clipping it must be caught.
  x.mutable_grad() = grads[0];
  const auto version = x.grad()._version();
  torchkit::clip_grad_norm_(std::vector<at::Tensor>{x}, 1.0);
  CHECK(x.grad()._version() > version);
  CHECK(close(x.grad().norm().item<double>(), 1.0, 1e-6));
  // x.grad() came from a graph that saved x: a reference cycle (PyTorch's create_graph
  // warning). Break it, as PyTorch's docs advise, or LeakSanitizer rightly reports it.
  x.mutable_grad() = at::Tensor();
  // A plain gradient is scaled in place, like LibTorch's clip_grad_norm_ (through .data()).
  auto param = torch::zeros({3}, torch::requires_grad());
  param.mutable_grad() = torch::tensor({3.0f, 4.0f, 12.0f});
  torchkit::clip_grad_norm_(std::vector<at::Tensor>{param}, 1.0);
  CHECK(close(param.grad().norm().item<double>(), 1.0, 1e-5));
}

TEST_CASE("error_if_nonfinite names the first non-finite gradient and changes nothing") {
  const Json golden = torchkit::test::load_golden("clip.json");
  for (const auto& item : golden["nonfinite"]) {
    for (const auto& result : item["results"]) {
      const double p = number_of(result["norm_type"]);
      for (const bool foreach : {true, false}) {
        CAPTURE(p);
        CAPTURE(foreach);
        auto params = parameters_from(item["params"]);
        const auto before = gradients_of(params);
        if (result["raises"].get<bool>()) {
          const auto message = message_of<torchkit::Error>([&] {
            (void)torchkit::clip_grad_norm_(params, 1.0, p, {.error_if_nonfinite = true, .foreach = foreach});
          });
          CHECK(message.find("clip_grad_norm_") != std::string::npos);
          CHECK(message.find(fmt::format("order {}", p)) != std::string::npos);
          CAPTURE(message);
          CHECK(message.find("is nan") != std::string::npos);
          CHECK(message.find("parameter 2") != std::string::npos);  // the first non-finite one
          CHECK(message.find("holds nan or inf") != std::string::npos);
          check_unchanged(params, before);
        }
        // Without the flag: PyTorch's result (the gradients scaled by nan).
        const auto total = torchkit::clip_grad_norm_(params, 1.0, p, {.foreach = foreach});
        const double expected = number_of(result["total"]);
        CHECK(close(total.item<double>(), expected, 1e-6));
        if (std::isnan(expected)) {
          CHECK(params[0].grad().isnan().all().item<bool>());
        }
      }
    }
  }
}

TEST_CASE("error_if_nonfinite names a module's parameter") {
  Model model;
  backward_once(model);
  model.second->bias.mutable_grad()[1] = infinity;
  const auto before = model.first->weight.grad().clone();
  const auto message = message_of<torchkit::Error>(
      [&] { (void)torchkit::clip_grad_norm_(model, 1.0, 2.0, {.error_if_nonfinite = true}); });
  CHECK(message.find("is inf") != std::string::npos);
  CHECK(message.find("parameter 3 ('second.bias')") != std::string::npos);
  CHECK(model.first->weight.grad().equal(before));
  CHECK(std::isinf(model.second->bias.grad()[1].item<double>()));
}

TEST_CASE("error_if_nonfinite reports a total that overflows its dtype") {
  auto param = torch::zeros({4}, torch::TensorOptions().dtype(at::kHalf).requires_grad(true));
  param.mutable_grad() = torch::full({4}, 60000.0, at::kHalf);  // each finite, the norm is not
  const auto message = message_of<torchkit::Error>([&] {
    (void)torchkit::clip_grad_norm_(std::vector<at::Tensor>{param}, 1.0, 2.0, {.error_if_nonfinite = true});
  });
  CHECK(message.find("is inf") != std::string::npos);
  CHECK(message.find("overflows Half") != std::string::npos);
  CHECK(param.grad().equal(torch::full({4}, 60000.0, at::kHalf)));
}

TEST_CASE("bad input throws torchkit::Error naming the value and changes nothing") {
  Model model;
  backward_once(model);
  auto params = model.parameters();
  const auto before = gradients_of(params);
  auto expect_error = [&](auto&& call, const std::string& fragment) {
    const auto message = message_of<torchkit::Error>(call);
    CAPTURE(message);
    CHECK(message.find(fragment) != std::string::npos);
    check_unchanged(params, before);
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  expect_error([&] { (void)torchkit::clip_grad_norm_(params, 0.0); }, "max_norm must be a positive number, got 0");
  expect_error([&] { (void)torchkit::clip_grad_norm_(params, -2.5); }, "got -2.5");
  expect_error([&] { (void)torchkit::clip_grad_norm_(params, nan); }, "max_norm must be a positive number, got nan");
  expect_error([&] { (void)torchkit::clip_grad_norm_(params, 1.0, -1.0); }, "norm_type must be 0, a positive number or inf, got -1");
  expect_error([&] { (void)torchkit::clip_grad_norm_(params, 1.0, nan); }, "norm_type must be 0, a positive number or inf, got nan");
  expect_error([&] { (void)torchkit::clip_grad_norm_(params, 1.0, -infinity); }, "got -inf");
  expect_error([&] { (void)torchkit::grad_norm(params, -0.5); }, "grad_norm: norm_type must be 0, a positive number or inf, got -0.5");
  expect_error([&] { torchkit::clip_grad_value_(params, -0.1); }, "clip_grad_value_: clip_value must be >= 0, got -0.1");
  expect_error([&] { torchkit::clip_grad_value_(params, nan); }, "clip_value must be >= 0, got nan");
  expect_error([&] { torchkit::ClipGrad clip(0.0); }, "ClipGrad: max_norm must be a positive number, got 0");
  expect_error([&] { torchkit::ClipGrad clip(1.0, -3.0); }, "ClipGrad: norm_type must be 0, a positive number or inf, got -3");

  // A sparse gradient (after valid ones: nothing may change).
  auto sparse_param = torch::zeros({4, 4}, torch::requires_grad());
  sparse_param.mutable_grad() = torch::eye(4).to_sparse();
  auto with_sparse = params;
  with_sparse.push_back(sparse_param);
  expect_error([&] { (void)torchkit::clip_grad_norm_(with_sparse, 1e-3); }, "gradient of parameter 4 is sparse");
  expect_error([&] { torchkit::clip_grad_value_(with_sparse, 1e-3); }, "clip_grad_value_: the gradient of parameter 4 is sparse");
  expect_error([&] { (void)torchkit::clip_grad_norm_(with_sparse, 1e-3, 2.0, {.foreach = false}); }, "sparse");

  // A gradient whose shape differs from its parameter's.
  auto misshapen = torch::zeros({2, 3}, torch::requires_grad());
  misshapen.mutable_grad() = torch::ones({3, 2});
  auto with_misshapen = params;
  with_misshapen.insert(with_misshapen.begin() + 1, misshapen);
  expect_error([&] { (void)torchkit::clip_grad_norm_(with_misshapen, 1e-3); },
               "the gradient of parameter 1 has shape [3, 2] but the parameter has shape [2, 3]");
  expect_error([&] { torchkit::clip_grad_value_(with_misshapen, 1e-3); }, "has shape [3, 2]");
  CHECK(misshapen.grad().equal(torch::ones({3, 2})));

  // An undefined tensor among the parameters.
  auto with_undefined = params;
  with_undefined.emplace_back();
  expect_error([&] { (void)torchkit::clip_grad_norm_(with_undefined, 1e-3); }, "parameter 4 is an undefined tensor");

  // An integer gradient cannot be clipped.
  auto integer_param = torch::zeros({2}, torch::kFloat);
  integer_param.mutable_grad() = torch::ones({2}, torch::kLong);
  auto with_integer = params;
  with_integer.push_back(integer_param);
  expect_error([&] { (void)torchkit::clip_grad_norm_(with_integer, 1e-3); }, "has dtype Long");

  // Meta tensors hold no values: refused by name, not by a dispatcher error.
  at::Tensor meta_param = torch::zeros({3}, torch::TensorOptions().device(at::kMeta).requires_grad(true));
  meta_param.mutable_grad() = torch::empty({3}, torch::TensorOptions().device(at::kMeta));
  for (const bool foreach : {true, false}) {
    expect_error([&] { (void)torchkit::clip_grad_norm_(std::vector<at::Tensor>{meta_param}, 1.0, 2.0, {.foreach = foreach}); },
                 "clip_grad_norm_: the gradient of parameter 0 is on the meta device (a shape without values)");
  }
  expect_error([&] { (void)torchkit::grad_norm(std::vector<at::Tensor>{meta_param}); }, "is on the meta device");
  expect_error([&] { torchkit::clip_grad_value_(std::vector<at::Tensor>{meta_param}, 1.0); }, "is on the meta device");
}

TEST_CASE("ClipGrad counts steps and clipped steps and remembers the last norm") {
  Model model;
  torchkit::ClipGrad clip(1.0);
  CHECK(clip.steps() == 0);
  CHECK(clip.clipped_steps() == 0);
  CHECK(clip.last_norm() == 0.0);
  int expected_clipped = 0;
  for (int step = 0; step < 6; ++step) {
    backward_once(model, step);
    if (step % 2 == 1) {
      for (auto& p : model.parameters()) p.mutable_grad().mul_(1e-4);  // small: not clipped
    }
    const double before = torchkit::grad_norm(model).item<double>();
    if (before > 1.0) ++expected_clipped;
    const at::Tensor total = clip(model);
    CHECK(total.item<double>() == before);
    CHECK(clip.last_norm() == before);
    CHECK(torchkit::grad_norm(model).item<double>() <= 1.0 + 1e-5);
  }
  CHECK(expected_clipped == 3);
  CHECK(clip.steps() == 6);
  CHECK(clip.clipped_steps() == expected_clipped);
  CHECK(clip.max_norm() == 1.0);
  CHECK(clip.norm_type() == 2.0);
  const auto text = clip.to_string();
  CHECK(text.find("ClipGrad(max_norm=1, norm_type=2, steps=6, clipped_steps=3, last_norm=") == 0);
  std::ostringstream out;
  out << clip;
  CHECK(out.str() == text);

  torchkit::ClipGrad infinity_clip(0.25, infinity, {.error_if_nonfinite = true, .foreach = false});
  backward_once(model, 9);
  const double largest = torchkit::grad_norm(model, infinity).item<double>();
  CHECK(infinity_clip(model.parameters()).item<double>() == largest);
  CHECK(close(torchkit::grad_norm(model, infinity).item<double>(), 0.25, 1e-5));
  CHECK(infinity_clip.clipped_steps() == (largest > 0.25 ? 1 : 0));

  // A nan norm multiplies the gradients by nan (PyTorch's coefficient): counted as clipped.
  torchkit::ClipGrad nan_clip(1.0);
  backward_once(model, 10);
  model.parameters()[0].mutable_grad()[0] = std::numeric_limits<float>::quiet_NaN();
  CHECK(std::isnan(nan_clip(model).item<double>()));
  CHECK(nan_clip.clipped_steps() == 1);
}

TEST_CASE("gradients that require grad (create_graph) are clipped without recording autograd") {
  auto x = torch::tensor({1.0, 2.0}, torch::requires_grad());
  auto y = (x * x * x).sum();
  auto grads = torch::autograd::grad({y}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true);
  x.mutable_grad() = grads[0];
  REQUIRE(x.grad().requires_grad());
  const auto total = torchkit::clip_grad_norm_(std::vector<at::Tensor>{x}, 1.0);
  CHECK(!total.requires_grad());
  CHECK(close(total.item<double>(), std::sqrt(9.0 + 144.0), 1e-6));
  CHECK(close(x.grad().norm().item<double>(), 1.0, 1e-6));
  x.mutable_grad() = at::Tensor();  // break the x -> grad -> graph -> x cycle (see above)
}
