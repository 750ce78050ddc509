// Tests for amp.hpp: AutocastScope's dtypes and state against torch.autocast("cpu"), GradScaler
// and the scaler-aware clip_grad_norm_ against PyTorch 2.6's GradScaler("cpu") over 300-step
// training loops with inf/nan injected (tests/golden/amp.json, written by
// tests/golden/amp_golden.py), the fused kernels on every instruction set, and bad input.
#include <torchkit/amp.hpp>

#include "test_support.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using torchkit::test::message_of;
using Json = nlohmann::json;
namespace kernels = torchkit::detail::clip;
namespace autocast = torchkit::detail::autocast;

constexpr double infinity = std::numeric_limits<double>::infinity();
constexpr double nan = std::numeric_limits<double>::quiet_NaN();

double number_of(const Json& value) {
  if (value.is_string()) {
    const auto text = value.get<std::string>();
    if (text == "inf") return infinity;
    if (text == "-inf") return -infinity;
    if (text == "nan") return nan;
    throw std::runtime_error("bad number " + text);
  }
  return value.get<double>();
}

at::ScalarType dtype_named(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  throw std::runtime_error("unknown dtype " + name);
}

/// Same values bit for bit (NaN equals NaN of the same bits), same dtype and shape.
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return x.nbytes() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

/// Equal as doubles, NaN matching NaN, within a relative tolerance.
bool close_values(const at::Tensor& actual, const std::vector<double>& expected, double rtol, double atol = 0.0) {
  const at::Tensor flat = actual.detach().to(at::kDouble).contiguous().view(-1);
  if (flat.numel() != static_cast<std::int64_t>(expected.size())) return false;
  const double* values = flat.data_ptr<double>();
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const double a = values[i], e = expected[i];
    if (std::isnan(e) || std::isnan(a)) {
      if (std::isnan(e) != std::isnan(a)) return false;
      continue;
    }
    if (std::isinf(e) || std::isinf(a)) {
      if (a != e) return false;
      continue;
    }
    if (std::abs(a - e) > rtol * std::abs(e) + atol) return false;
  }
  return true;
}

std::vector<double> numbers_of(const Json& list) {
  std::vector<double> out;
  for (const auto& value : list) out.push_back(number_of(value));
  return out;
}

// ---------------------------------------------------------------------------------------------
// AutocastScope
// ---------------------------------------------------------------------------------------------

struct AutocastState {
  bool cpu_enabled;
  at::ScalarType cpu_dtype;
  bool cache;
  bool operator==(const AutocastState&) const = default;
};

AutocastState autocast_state() {
  return {autocast::is_enabled(at::kCPU), autocast::dtype(at::kCPU), autocast::is_cache_enabled()};
}

TEST_CASE("AutocastScope: op classes run in the dtype torch.autocast('cpu') gives them") {
  const Json golden = torchkit::test::load_golden("amp.json");
  torch::manual_seed(0);
  const at::Tensor a = torch::randn({4, 4}), b = torch::randn({4, 4}), batch = torch::randn({2, 4, 4});
  const at::Tensor image = torch::randn({1, 3, 8, 8}), weight = torch::randn({5, 3, 3, 3}), lin_w = torch::randn({6, 4});
  const std::map<std::string, std::function<at::Tensor()>> ops = {
      {"mm", [&] { return torch::mm(a, b); }},
      {"matmul", [&] { return torch::matmul(a, b); }},
      {"linear", [&] { return torch::nn::functional::linear(a, lin_w); }},
      {"conv2d", [&] { return torch::conv2d(image, weight); }},
      {"bmm", [&] { return torch::bmm(batch, batch); }},
      {"addmm", [&] { return torch::addmm(a, a, b); }},
      {"baddbmm", [&] { return torch::baddbmm(batch, batch, batch); }},
      {"sum", [&] { return a.sum(); }},
      {"mean", [&] { return a.mean(); }},
      {"relu", [&] { return torch::relu(a); }},
      {"add", [&] { return a + b; }},
      {"sum_of_mm", [&] { return torch::mm(a, b).sum(); }},
      {"mse_loss", [&] { return torch::mse_loss(a, b); }},
      {"binary_cross_entropy", [&] { return torch::binary_cross_entropy(torch::sigmoid(a), torch::sigmoid(b)); }},
  };
  int checked = 0;
  for (const auto& [name, expected] : golden.at("autocast").items()) {
    CAPTURE(name);
    if (name == "mm_disabled") {
      torchkit::AutocastScope off(at::kCPU, at::kBFloat16, /*enabled=*/false);
      CHECK(c10::toString(torch::mm(a, b).scalar_type()) == std::string("Float"));
      CHECK(expected.get<std::string>() == "float32");
      ++checked;
      continue;
    }
    REQUIRE(ops.count(name) == 1);
    torchkit::AutocastScope scope(at::kCPU);
    CHECK((scope.dtype() == at::kBFloat16));
    const at::ScalarType got = ops.at(name)().scalar_type();
    CHECK((got == dtype_named(expected.get<std::string>())));
    ++checked;
  }
  CHECK(checked >= 9);
  // Outside any scope, everything is float32 again.
  CHECK((torch::mm(a, b).scalar_type() == at::kFloat));
}

TEST_CASE("AutocastScope: restores enabled flag, dtype, cache and nesting exactly, also while unwinding") {
  const AutocastState outside = autocast_state();
  CHECK_FALSE(outside.cpu_enabled);
  {
    torchkit::AutocastScope outer(at::kCPU, at::kBFloat16, true, /*cache_enabled=*/false);
    CHECK(autocast::is_enabled(at::kCPU));
    CHECK_FALSE(autocast::is_cache_enabled());
    const AutocastState in_outer = autocast_state();
    {
      torchkit::AutocastScope inner(at::kCPU, {}, /*enabled=*/false);
      CHECK_FALSE(autocast::is_enabled(at::kCPU));
      CHECK(autocast::is_cache_enabled());
      CHECK((torch::mm(torch::ones({2, 2}), torch::ones({2, 2})).scalar_type() == at::kFloat));
    }
    CHECK(autocast_state() == in_outer);
    CHECK((torch::mm(torch::ones({2, 2}), torch::ones({2, 2})).scalar_type() == at::kBFloat16));
    try {
      torchkit::AutocastScope unwinding(at::kCPU, {}, false);
      throw std::runtime_error("unwind");
    } catch (const std::runtime_error&) {
    }
    CHECK(autocast_state() == in_outer);
  }
  CHECK(autocast_state() == outside);
  // A state set by hand (not the defaults) comes back too.
  autocast::set_enabled(at::kCPU, true);
  autocast::set_cache_enabled(false);
  {
    torchkit::AutocastScope scope(at::kCPU, {}, false, true);
    CHECK_FALSE(autocast::is_enabled(at::kCPU));
  }
  CHECK(autocast::is_enabled(at::kCPU));
  CHECK_FALSE(autocast::is_cache_enabled());
  autocast::set_enabled(at::kCPU, outside.cpu_enabled);
  autocast::set_cache_enabled(outside.cache);
  CHECK(autocast_state() == outside);
  // The nesting count is back to where it was: one more increment / decrement pair gives 1 / 0.
  CHECK(autocast::increment_nesting() == 1);
  CHECK(autocast::decrement_nesting() == 0);
}

TEST_CASE("AutocastScope: a CUDA scope on a LibTorch without CUDA is disabled; bad devices and dtypes throw") {
  const AutocastState before = autocast_state();
  if (!at::hasCUDA()) {
    torchkit::AutocastScope scope(at::kCUDA);
    CHECK((scope.dtype() == at::kHalf));
    CHECK_FALSE(scope.enabled());
    CHECK_FALSE(autocast::is_enabled(at::kCUDA));
  }
  CHECK(message_of<torchkit::Error>([] { torchkit::AutocastScope scope(at::kCPU, at::kFloat); })
            .find("AutocastScope: dtype Float is not supported by autocast on cpu") != std::string::npos);
  CHECK(message_of<torchkit::Error>([] { torchkit::AutocastScope scope(at::kMeta); })
            .find("AutocastScope: device type meta has no autocast here") != std::string::npos);
#if TORCHKIT_TORCH_AT_LEAST(2, 4)
  {
    torchkit::AutocastScope half(at::kCPU, at::kHalf);  // torch.autocast("cpu", torch.float16)
    CHECK((torch::mm(torch::ones({2, 2}), torch::ones({2, 2})).scalar_type() == at::kHalf));
  }
#else
  CHECK(message_of<torchkit::Error>([] { torchkit::AutocastScope scope(at::kCPU, at::kHalf); })
            .find("dtype Half is not supported by autocast on cpu; expected BFloat16") != std::string::npos);
#endif
  CHECK(autocast_state() == before);
}

// ---------------------------------------------------------------------------------------------
// GradScaler against PyTorch's GradScaler("cpu")
// ---------------------------------------------------------------------------------------------

/// The golden loops' parameters and their gradients, rebuilt bit for bit.
struct Loop {
  std::vector<at::Tensor> params;
  std::unique_ptr<torch::optim::SGD> optimizer;
  Json golden;

  explicit Loop(const Json& all) : golden(all) {
    int k = 0;
    for (const auto& shape_and_dtype : all.at("shapes")) {
      const auto shape = shape_and_dtype.at(0).get<std::vector<std::int64_t>>();
      const auto dtype = dtype_named(shape_and_dtype.at(1).get<std::string>());
      const std::int64_t numel = c10::multiply_integers(shape);
      at::Tensor p = (torch::arange(numel, torch::kFloat).reshape(shape) / 8 - k).to(dtype).requires_grad_(true);
      params.push_back(p);
      ++k;
    }
    optimizer = std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(0.05).momentum(0.9));
  }

  /// The scaled gradients of `step` (see amp_golden.py's gradients()).
  void set_gradients(int step, double scale) {
    std::int64_t offset = 0;
    for (std::size_t k = 0; k < params.size(); ++k) {
      const std::int64_t numel = params[k].numel();
      std::vector<float> values;
      for (std::int64_t i = 0; i < numel; ++i) {
        const std::int64_t j = offset + i;
        values.push_back(static_cast<float>(static_cast<double>((7 * j + 13 * step) % 101 - 50) / 16 *
                                            std::ldexp(1.0, step % 7 - 3)));
      }
      at::Tensor grad = (torch::tensor(values) * static_cast<float>(scale)).to(params[k].scalar_type());
      for (const auto& injected : golden.at("injected")) {
        if (injected.at(0).get<int>() == step && injected.at(1).get<std::size_t>() == k) {
          grad[injected.at(2).get<std::int64_t>()] = number_of(injected.at(3));
        }
      }
      params[k].mutable_grad() = grad.reshape(params[k].sizes()).clone();
      offset += numel;
    }
  }
};

void run_golden_loop(const std::string& name) {
  const Json all = torchkit::test::load_golden("amp.json");
  const Json& run = all.at("runs").at(name);
  Loop loop(all);
  torchkit::GradScaler scaler({.init_scale = 1024.0, .growth_factor = 2.0, .backoff_factor = 0.5,
                               .growth_interval = 10});
  const double max_norm = run.at("max_norm").get<double>();
  const double norm_type = number_of(run.at("norm_type"));
  const int new_scale_step = all.at("new_scale_step").get<int>();
  int skipped = 0, clipped_exactly = 0;
  const auto& steps = run.at("steps");
  REQUIRE(steps.size() == 300);
  for (int step = 0; step < static_cast<int>(steps.size()); ++step) {
    CAPTURE(step);
    const Json& expected = steps[static_cast<std::size_t>(step)];
    const at::Tensor scaled = scaler.scale(torch::tensor(1.0f));
    CHECK(scaled.item<double>() == expected.at("scale_used").get<double>());
    loop.set_gradients(step, scaler.get_scale());
    double norm = 0.0;
    if (run.at("clip").get<bool>()) {
      const at::Tensor total = torchkit::clip_grad_norm_(*loop.optimizer, max_norm, norm_type, scaler);
      CHECK((total.scalar_type() == at::kFloat));
      norm = total.item<double>();
      const double expected_norm = number_of(expected.at("norm"));
      if (std::isfinite(expected_norm)) {
        CHECK(norm == doctest::Approx(expected_norm).epsilon(1e-6));
      } else {
        CHECK(std::isnan(norm) == std::isnan(expected_norm));
        CHECK(std::isinf(norm) == std::isinf(expected_norm));
      }
    }
    const bool stepped = scaler.step(*loop.optimizer);
    CHECK(stepped == !expected.at("found_inf").get<bool>());
    if (!stepped) ++skipped;
    // Gradients after unscaling (and clipping): bit for bit where no clip coefficient was
    // applied (the unscale is the same formula); to float rounding where one was. A LibTorch
    // whose mul_ rounds the float coefficient to bfloat16 first (1.13; PyTorch 2.6 does not)
    // multiplies the bfloat16 gradient by a coefficient one bfloat16 step away at most.
    for (std::size_t k = 0; k < loop.params.size(); ++k) {
      CAPTURE(k);
      const auto values = numbers_of(expected.at("grads").at(k));
      const bool exact = !run.at("clip").get<bool>() || (std::isfinite(norm) && norm <= max_norm);
      if (exact) ++clipped_exactly;
      const bool rounded_coefficient =
          kernels::mul_rounds_factor_to_element_type && loop.params[k].scalar_type() == at::kBFloat16;
      CHECK(close_values(loop.params[k].grad(), values, exact ? 0.0 : rounded_coefficient ? 1.0 / 64 : 2e-6));
    }
    if (step == new_scale_step) {
      scaler.update(512.0);
    } else {
      scaler.update();
    }
    CHECK(scaler.get_scale() == expected.at("scale").get<double>());
    CHECK(scaler.growth_tracker() == expected.at("growth_tracker").get<std::int64_t>());
    // The float32 parameters after SGD with momentum (skipped steps leave them alone). The
    // bfloat16 one is not compared: LibTorch's C++ SGD and Python's SGD round a bfloat16
    // parameter's updates differently (on 1.13, 2.6 and 2.14, with bit-identical gradients), and
    // that is LibTorch's optimizer, not torchkit.
    for (std::size_t k = 0; k < loop.params.size(); ++k) {
      CAPTURE(k);
      if (loop.params[k].scalar_type() == at::kBFloat16) continue;
      CHECK(close_values(loop.params[k], numbers_of(expected.at("params").at(k)), 1e-5, 1e-5));
    }
  }
  CHECK(skipped == 8);  // every injected step skips
  CHECK(clipped_exactly > 0);
  const Json& state = run.at("state_dict");
  CHECK(scaler.get_scale() == state.at("scale").get<double>());
  CHECK(scaler.growth_tracker() == state.at("_growth_tracker").get<std::int64_t>());
}

TEST_CASE("GradScaler + clip_grad_norm_(optimizer, ..., scaler): 300 steps equal PyTorch 2.6's recipe (L2)") {
  run_golden_loop("clip_l2");
}

TEST_CASE("GradScaler + clip_grad_norm_(optimizer, ..., scaler): 300 steps equal PyTorch 2.6's recipe (inf-norm)") {
  run_golden_loop("clip_inf");
}

TEST_CASE("GradScaler without clipping (step unscales): 300 steps equal PyTorch 2.6 bit for bit") {
  run_golden_loop("step_only");
}

// ---------------------------------------------------------------------------------------------
// The fused path against the unfused one, on every instruction set
// ---------------------------------------------------------------------------------------------

std::vector<at::Tensor> mixed_gradients_params(std::uint64_t seed, bool with_inf) {
  torch::manual_seed(static_cast<std::int64_t>(seed));
  std::vector<at::Tensor> params;
  const std::vector<std::pair<std::vector<std::int64_t>, at::ScalarType>> specs = {
      {{300, 257}, at::kFloat},  {{70001}, at::kFloat}, {{1000, 3}, at::kBFloat16}, {{1537}, at::kHalf},
      {{129, 7}, at::kDouble},   {{0}, at::kFloat},     {{17}, at::kBFloat16},      {{5, 3}, at::kFloat}};
  for (const auto& [shape, dtype] : specs) {
    at::Tensor p = torch::zeros(shape, dtype).requires_grad_(true);
    at::Tensor grad = (torch::randn(shape) * 4096).to(dtype);
    p.mutable_grad() = grad;
    params.push_back(p);
  }
  // A transposed (dense, not contiguous) and a strided (not dense) gradient.
  at::Tensor t = torch::zeros({40, 30}).requires_grad_(true);
  t.mutable_grad() = (torch::randn({30, 40}) * 4096).t();
  params.push_back(t);
  at::Tensor s = torch::zeros({20, 10}).requires_grad_(true);
  s.mutable_grad() = (torch::randn({20, 20}) * 4096).slice(1, 0, 20, 2);
  params.push_back(s);
  if (with_inf) params[3].mutable_grad()[100] = infinity;
  return params;
}

std::vector<at::Tensor> grads_of(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params) grads.push_back(p.grad().clone());
  return grads;
}

TEST_CASE("scaler-aware clip: fused = unscale_ then clip_grad_norm_, the same bits on every instruction set") {
  for (const bool with_inf : {false, true}) {
    for (const double norm_type : {2.0, 1.0, infinity, 3.0}) {
      for (const double max_norm : {1.0, 1e9}) {
        CAPTURE(with_inf);
        CAPTURE(norm_type);
        CAPTURE(max_norm);
        // Unfused: unscale_, then clip (torchkit's plain clip).
        auto reference_params = mixed_gradients_params(7, with_inf);
        torch::optim::SGD reference_optimizer(reference_params, 0.1);
        torchkit::GradScaler reference_scaler({.init_scale = 4096.0});
        (void)reference_scaler.scale(torch::tensor(1.0));
        reference_scaler.unscale_(reference_optimizer);
        const at::Tensor reference_norm = torchkit::clip_grad_norm_(reference_params, max_norm, norm_type);
        const auto reference = grads_of(reference_params);
        // Python's formula on the same values: unscaled by mul_ with the float inverse.
        std::vector<at::Tensor> by_ops;
        for (const auto& p : mixed_gradients_params(7, with_inf)) {
          by_ops.push_back(p.grad().mul(torch::scalar_tensor(1.0f / 4096.0f)).to(p.grad().scalar_type()));
        }
        at::Tensor fused_norm_first;
        std::vector<at::Tensor> fused_first;
        for (int level = 0; level <= static_cast<int>(kernels::cpu_isa()); ++level) {
          const kernels::ForceIsa pin(static_cast<kernels::Isa>(level));
          CAPTURE(kernels::isa_name(static_cast<kernels::Isa>(level)));
          auto params = mixed_gradients_params(7, with_inf);
          torch::optim::SGD optimizer(params, 0.1);
          torchkit::GradScaler scaler({.init_scale = 4096.0});
          (void)scaler.scale(torch::tensor(1.0));
          const at::Tensor norm = torchkit::clip_grad_norm_(optimizer, max_norm, norm_type, scaler);
          const auto fused = grads_of(params);
          if (level == 0) {
            fused_norm_first = norm;
            fused_first = fused;
            const double a = norm.item<double>(), b = reference_norm.item<double>();
            if (std::isfinite(b)) {
              CHECK(a == doctest::Approx(b).epsilon(1e-6));
            } else {
              CHECK(std::isnan(a) == std::isnan(b));
            }
            // The L2 read pass keeps reduce's lanes and order: the fused clip gives the unfused
            // one's bits, every dtype (both multiply float16/bfloat16 gradients by the
            // coefficient as this LibTorch's mul_ does).
            if (norm_type == 2.0) CHECK(same_bits(norm, reference_norm));
            for (std::size_t k = 0; k < fused.size(); ++k) {
              CAPTURE(k);
              if (norm_type == 2.0) CHECK(same_bits(fused[k], reference[k]));
              if (max_norm > 1e8 && !with_inf) {
                // No clipping: both are exactly the unscaled values.
                CHECK(same_bits(fused[k], reference[k]));
                CHECK(same_bits(fused[k], by_ops[k]));
              } else if (fused[k].scalar_type() == at::kBFloat16 || fused[k].scalar_type() == at::kHalf) {
                CHECK(torch::allclose(fused[k].to(at::kDouble), reference[k].to(at::kDouble), 1e-2, 1e-6, true));
              } else {
                CHECK(torch::allclose(fused[k].to(at::kDouble), reference[k].to(at::kDouble), 1e-5, 1e-9, true));
              }
            }
          } else {
            CHECK(same_bits(norm, fused_norm_first));
            for (std::size_t k = 0; k < fused.size(); ++k) CHECK(same_bits(fused[k], fused_first[k]));
          }
          CHECK(scaler.step(optimizer) == !with_inf);
        }
      }
    }
  }
}

TEST_CASE("GradScaler::unscale_: the same bits on every instruction set, equal to mul_ by the inverse scale") {
  std::vector<at::Tensor> first;
  for (int level = 0; level <= static_cast<int>(kernels::cpu_isa()); ++level) {
    const kernels::ForceIsa pin(static_cast<kernels::Isa>(level));
    auto params = mixed_gradients_params(11, false);
    torch::optim::SGD optimizer(params, 0.1);
    torchkit::GradScaler scaler({.init_scale = 3.0});  // an inverse that is not a power of two
    (void)scaler.scale(torch::tensor(1.0));
    const auto before = grads_of(params);
    scaler.unscale_(optimizer);
    const float inv = static_cast<float>(1.0 / 3.0);
    for (std::size_t k = 0; k < params.size(); ++k) {
      CAPTURE(k);
      const at::Tensor expected = before[k].scalar_type() == at::kDouble
                                      ? before[k] * static_cast<double>(inv)
                                      : (before[k].to(at::kFloat) * inv).to(before[k].scalar_type());
      CHECK(same_bits(params[k].grad(), expected));
      if (level > 0) CHECK(same_bits(params[k].grad(), first[k]));
    }
    if (level == 0) first = grads_of(params);
    CHECK(scaler.step(optimizer));
  }
}

TEST_CASE("fused unscale kernels: inf and nan found at every position, on every instruction set") {
  // The float/double kernels check finiteness on vector lanes (and on the scalar tail): place
  // one special value at the start, in the middle, in the last full block and in the tail.
  const auto check_dtype = [](auto type_tag) {
    using T = decltype(type_tag);
    (void)type_tag;
    const T specials[] = {std::numeric_limits<T>::infinity(), -std::numeric_limits<T>::infinity(),
                          std::numeric_limits<T>::quiet_NaN(), -std::numeric_limits<T>::quiet_NaN(),
                          std::numeric_limits<T>::max(), -std::numeric_limits<T>::denorm_min()};
    const auto dtype = std::is_same_v<T, float> ? at::kFloat : at::kDouble;
    for (int level = 0; level <= static_cast<int>(kernels::cpu_isa()); ++level) {
      const kernels::ForceIsa pin(static_cast<kernels::Isa>(level));
      CAPTURE(kernels::isa_name(static_cast<kernels::Isa>(level)));
      for (const std::int64_t size : {1, 7, 16, 31, 32, 33, 64, 100, 257}) {
        for (const std::int64_t position : {std::int64_t{0}, size / 2, std::max<std::int64_t>(0, size - 33), size - 1}) {
          for (const T special : specials) {
            for (const float inv : {0.5f, 1.0f}) {
              CAPTURE(size);
              CAPTURE(position);
              CAPTURE(static_cast<double>(special));
              CAPTURE(inv);
              std::vector<T> values(static_cast<std::size_t>(size));
              for (std::int64_t i = 0; i < size; ++i) values[static_cast<std::size_t>(i)] = static_cast<T>(0.25 * (i % 7) - 0.5);
              values[static_cast<std::size_t>(position)] = special;
              const bool expected = !std::isfinite(special);
              const kernels::Run run{values.data(), size, 0, dtype};
              std::vector<T> unscaled = values;
              for (auto& value : unscaled) value = inv == 1.0f ? value : static_cast<T>(value * static_cast<T>(inv));
              unsigned char found = 2;
              for (const double p : {2.0, 1.0, infinity, 3.0}) {
                CAPTURE(p);
                const auto kind = kernels::norm_kind_of(p);
                double partial = 0;
                found = 2;
                kernels::unscale_reduce_runs(&run, 1, kind, p, inv, &partial, &found);
                CHECK(found == (expected ? 1 : 0));
                // The partial is the plain reduction of the unscaled values, bit for bit.
                const double plain = kernels::reduce(dtype, kind, unscaled.data(), size, p);
                CHECK((std::isnan(partial) ? std::isnan(plain) : partial == plain));
              }
              // unscale_runs (writes) flags the same.
              found = 2;
              kernels::unscale_runs(&run, 1, inv, &found);
              CHECK(found == (expected ? 1 : 0));
            }
          }
        }
      }
    }
  };
  check_dtype(0.0f);
  check_dtype(0.0);

  // Many runs in one call (one flag for them all): a special value in any one run is found,
  // and a clean call after one that found some reports none.
  const std::vector<std::int64_t> sizes = {64, 33, 100, 7, 512, 257};
  for (int level = 0; level <= static_cast<int>(kernels::cpu_isa()); ++level) {
    const kernels::ForceIsa pin(static_cast<kernels::Isa>(level));
    CAPTURE(kernels::isa_name(static_cast<kernels::Isa>(level)));
    for (std::size_t dirty = 0; dirty <= sizes.size(); ++dirty) {  // sizes.size(): all clean
      for (const float special : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::quiet_NaN()}) {
        CAPTURE(dirty);
        CAPTURE(special);
        std::vector<std::vector<float>> values;
        std::vector<kernels::Run> runs;
        for (std::size_t r = 0; r < sizes.size(); ++r) {
          values.emplace_back(static_cast<std::size_t>(sizes[r]), 0.75f);
          if (r == dirty) values.back()[static_cast<std::size_t>(sizes[r] * 2 / 3)] = special;
        }
        for (std::size_t r = 0; r < sizes.size(); ++r) runs.emplace_back(values[r].data(), sizes[r], r, at::kFloat);
        std::vector<double> partials(runs.size());
        unsigned char found = 2;
        kernels::unscale_reduce_runs(runs.data(), static_cast<std::int64_t>(runs.size()), kernels::NormKind::two, 2.0,
                                     0.5f, partials.data(), &found);
        CHECK(found == (dirty < sizes.size() ? 1 : 0));
        for (std::size_t r = 0; r < sizes.size(); ++r) {
          if (r == dirty) continue;
          const std::vector<float> unscaled(static_cast<std::size_t>(sizes[r]), 0.375f);
          CHECK(partials[r] == kernels::reduce(at::kFloat, kernels::NormKind::two, unscaled.data(), sizes[r], 2.0));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Semantics: once per step, skipping, update, save/load, disabled
// ---------------------------------------------------------------------------------------------

struct Small {
  at::Tensor w = torch::ones({3}).requires_grad_(true);
  torch::optim::SGD optimizer{std::vector<at::Tensor>{w}, 0.5};
  void grad(std::vector<float> values) { w.mutable_grad() = torch::tensor(values); }
};

TEST_CASE("GradScaler: skips a step with inf/nan, backs off, grows after growth_interval clean steps") {
  Small s;
  torchkit::GradScaler scaler({.init_scale = 8.0, .growth_interval = 2});
  CHECK(scaler.get_scale() == 8.0);  // before scale(): init_scale
  CHECK(scaler.scale(torch::tensor(2.0f)).item<float>() == 16.0f);
  s.grad({8, 16, nan});
  CHECK_FALSE(scaler.step(s.optimizer));
  CHECK(torch::equal(s.w, torch::ones({3})));  // not stepped
  scaler.update();
  CHECK(scaler.get_scale() == 4.0);
  CHECK(scaler.growth_tracker() == 0);
  for (int step = 0; step < 2; ++step) {
    (void)scaler.scale(torch::tensor(1.0f));
    s.grad({4, 4, 4});
    scaler.unscale_(s.optimizer);
    CHECK(torch::equal(s.w.grad(), torch::ones({3})));
    CHECK(scaler.step(s.optimizer));
    scaler.update();
  }
  CHECK(scaler.get_scale() == 8.0);
  CHECK(scaler.growth_tracker() == 0);
  CHECK(torch::allclose(s.w, torch::zeros({3})));  // two steps of 0.5 * 1
  CHECK(scaler.to_string() ==
        "GradScaler(scale=8, growth_tracker=0, growth_factor=2, backoff_factor=0.5, growth_interval=2, enabled=true)");
  CHECK(fmt::format("{}", scaler) == scaler.to_string());
}

TEST_CASE("GradScaler: growth that would overflow float32 keeps the scale") {
  Small s;
  torchkit::GradScaler scaler({.init_scale = 3e38, .growth_interval = 1});
  (void)scaler.scale(torch::tensor(1.0f));
  s.grad({1, 1, 1});
  CHECK(scaler.step(s.optimizer));
  scaler.update();
  CHECK(scaler.get_scale() == static_cast<double>(3e38f));
}

TEST_CASE("GradScaler: unscale_ once per step, step once per update, clip after unscale_ just clips") {
  Small s;
  torchkit::GradScaler scaler({.init_scale = 2.0});
  (void)scaler.scale(torch::tensor(1.0f));
  s.grad({6, 8, 0});
  scaler.unscale_(s.optimizer);
  const at::Tensor unscaled = s.w.grad().clone();
  CHECK(message_of<torchkit::Error>([&] { scaler.unscale_(s.optimizer); })
            .find("GradScaler::unscale_: unscale_() has already been called on this optimizer") != std::string::npos);
  CHECK(torch::equal(s.w.grad(), unscaled));
  // Already unscaled: the scaler-aware clip clips without unscaling again (norm 5 -> 1).
  const at::Tensor norm = torchkit::clip_grad_norm_(s.optimizer, 1.0, 2.0, scaler);
  CHECK(norm.item<double>() == doctest::Approx(5.0));
  CHECK(s.w.grad().norm().item<double>() == doctest::Approx(1.0).epsilon(1e-5));
  CHECK(scaler.step(s.optimizer));
  CHECK(message_of<torchkit::Error>([&] { (void)scaler.step(s.optimizer); })
            .find("GradScaler::step: step() has already been called on this optimizer since the last update()") !=
        std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { scaler.unscale_(s.optimizer); })
            .find("unscale_() is being called after step()") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::clip_grad_norm_(s.optimizer, 1.0, 2.0, scaler); })
            .find("clip_grad_norm_: the scaler already stepped this optimizer") != std::string::npos);
  scaler.update();
  (void)scaler.scale(torch::tensor(1.0f));
  s.grad({2, 2, 2});
  scaler.unscale_(s.optimizer);  // a new step
  CHECK(torch::equal(s.w.grad(), torch::ones({3})));
}

TEST_CASE("GradScaler: two optimizers, either one's inf skips only its own step and backs off once") {
  at::Tensor a = torch::ones({2}).requires_grad_(true), b = torch::ones({2}).requires_grad_(true);
  torch::optim::SGD first(std::vector<at::Tensor>{a}, 1.0), second(std::vector<at::Tensor>{b}, 1.0);
  torchkit::GradScaler scaler({.init_scale = 4.0});
  (void)scaler.scale(torch::tensor(1.0f));
  a.mutable_grad() = torch::tensor({4.0f, 4.0f});
  b.mutable_grad() = torch::tensor({4.0f, std::numeric_limits<float>::infinity()});
  CHECK(scaler.step(first));
  CHECK_FALSE(scaler.step(second));
  CHECK(torch::equal(a, torch::zeros({2})));
  CHECK(torch::equal(b, torch::ones({2})));
  scaler.update();
  CHECK(scaler.get_scale() == 2.0);
}

TEST_CASE("GradScaler: save and load through the archive, beside the optimizer") {
  Small s;
  torchkit::GradScaler scaler({.init_scale = 64.0, .growth_factor = 4.0, .backoff_factor = 0.25, .growth_interval = 5});
  for (int step = 0; step < 3; ++step) {
    (void)scaler.scale(torch::tensor(1.0f));
    s.grad({1, 1, 1});
    (void)scaler.step(s.optimizer);
    scaler.update();
  }
  torch::serialize::OutputArchive out;
  s.optimizer.save(out);
  scaler.save(out);
  std::stringstream bytes;
  out.save_to(bytes);
  torch::serialize::InputArchive in;
  in.load_from(bytes);
  torchkit::GradScaler restored;
  restored.load(in);
  CHECK(restored.get_scale() == 64.0);
  CHECK(restored.growth_tracker() == 3);
  CHECK(restored.get_growth_factor() == 4.0);
  CHECK(restored.get_backoff_factor() == 0.25);
  CHECK(restored.get_growth_interval() == 5);
  // Two more clean steps grow the restored scaler exactly as the original.
  for (auto* each : {&scaler, &restored}) {
    for (int step = 0; step < 2; ++step) {
      (void)each->scale(torch::tensor(1.0f));
      s.grad({1, 1, 1});
      (void)each->step(s.optimizer);
      each->update();
    }
  }
  CHECK(restored.get_scale() == 256.0);
  CHECK(scaler.get_scale() == 256.0);
  // Disabled scalers save a marker and load nothing; an enabled one refuses their archive.
  torchkit::GradScaler disabled({.enabled = false});
  torch::serialize::OutputArchive off;
  disabled.save(off);
  std::stringstream off_bytes;
  off.save_to(off_bytes);
  torch::serialize::InputArchive off_in;
  off_in.load_from(off_bytes);
  torchkit::GradScaler fresh;
  CHECK(message_of<torchkit::Error>([&] { fresh.load(off_in); })
            .find("GradScaler::load: the archive was saved by a disabled GradScaler") != std::string::npos);
  CHECK(fresh.get_scale() == 65536.0);
}

/// An archive holding a "grad_scaler" with these values, as GradScaler::save writes it.
torch::serialize::InputArchive scaler_archive(double scale, std::int64_t growth_interval, std::int64_t tracker) {
  torch::serialize::OutputArchive out;
  torch::serialize::OutputArchive nested(out.compilation_unit());
  nested.write("enabled", c10::IValue(true));
  nested.write("scale", c10::IValue(scale));
  nested.write("growth_factor", c10::IValue(3.0));
  nested.write("backoff_factor", c10::IValue(0.25));
  nested.write("growth_interval", c10::IValue(growth_interval));
  nested.write("_growth_tracker", c10::IValue(tracker));
  out.write("grad_scaler", nested);
  std::stringstream bytes;
  out.save_to(bytes);
  torch::serialize::InputArchive in;
  in.load_from(bytes);
  return in;
}

TEST_CASE("GradScaler::load: values the float32 scale or the int32 tracker cannot hold are refused, nothing changes") {
  for (const bool scaled : {false, true}) {
    CAPTURE(scaled);
    torchkit::GradScaler scaler({.init_scale = 8.0});
    if (scaled) (void)scaler.scale(torch::tensor(1.0f));
    const auto unchanged = [&] {
      CHECK(scaler.get_scale() == 8.0);
      CHECK(scaler.growth_tracker() == 0);
      CHECK(scaler.get_growth_factor() == 2.0);
      CHECK(scaler.get_backoff_factor() == 0.5);
      CHECK(scaler.get_growth_interval() == 2000);
    };
    auto too_long = scaler_archive(100.0, std::int64_t{1} << 40, std::int64_t{1} << 33);
    CHECK(message_of<torchkit::Error>([&] { scaler.load(too_long); })
              .find("GradScaler::load: growth_interval must be in [1, 2147483647] (the growth tracker is int32), got "
                    "1099511627776") != std::string::npos);
    unchanged();
    auto too_large = scaler_archive(1e39, 10, 2);
    CHECK(message_of<torchkit::Error>([&] { scaler.load(too_large); })
              .find("GradScaler::load: init_scale (the scale) must be a finite number > 0 that float32 holds") !=
          std::string::npos);
    unchanged();
    auto fine = scaler_archive(100.0, 10, 2);
    scaler.load(fine);
    CHECK(scaler.get_scale() == 100.0);
    CHECK(scaler.growth_tracker() == 2);
    CHECK(scaler.get_growth_interval() == 10);
  }
}

TEST_CASE("GradScaler: not copyable (a copy would share the scale tensor), movable") {
  static_assert(!std::is_copy_constructible_v<torchkit::GradScaler>);
  static_assert(!std::is_copy_assignable_v<torchkit::GradScaler>);
  static_assert(std::is_nothrow_move_constructible_v<torchkit::GradScaler>);
  torchkit::GradScaler first({.init_scale = 8.0});
  (void)first.scale(torch::tensor(1.0f));
  torchkit::GradScaler moved = std::move(first);
  CHECK(moved.get_scale() == 8.0);
  moved.update(4.0);
  CHECK(moved.get_scale() == 4.0);
}

TEST_CASE("GradScaler: update() changes the scale in place, as Python's: a pending backward refuses it") {
  for (const bool with_new_scale : {false, true}) {
    CAPTURE(with_new_scale);
    Small s;
    torchkit::GradScaler scaler({.init_scale = 4.0});
    (void)scaler.scale(torch::tensor(1.0f));
    s.grad({1, 2, 3});
    CHECK(scaler.step(s.optimizer));
    const at::Tensor pending = scaler.scale((s.w * s.w).sum());  // saves the scale for backward
    if (with_new_scale) {
      scaler.update(8.0);
    } else {
      scaler.update();
    }
    CHECK(message_of<c10::Error>([&] { pending.backward(); }).find("modified by an inplace operation") !=
          std::string::npos);
  }
}

TEST_CASE("GradScaler: a first scale() inside InferenceMode still makes a scale that trains") {
  Small s;
  torchkit::GradScaler scaler({.init_scale = 4.0});
  {
    const c10::InferenceMode inference;
    CHECK(scaler.scale(torch::tensor(1.0f)).item<float>() == 4.0f);
  }
  scaler.scale((s.w * s.w).sum()).backward();  // saves the scale for backward
  CHECK(torch::equal(s.w.grad(), torch::full({3}, 8.0f)));
  CHECK(scaler.step(s.optimizer));
  scaler.update(2.0);
  CHECK(scaler.get_scale() == 2.0);
}

TEST_CASE("scaler-aware clip, error_if_nonfinite: the unscaled norm decides, on the fast and the reference path") {
  for (const bool foreach : {true, false}) {
    CAPTURE(foreach);
    // 6.5536e19 unscaled by 65536 is 1e15: finite, though the scaled values' squares overflow.
    Small s;
    torchkit::GradScaler scaler;
    (void)scaler.scale(torch::tensor(1.0f));
    s.w.mutable_grad() = torch::full({3}, 6.5536e19f);
    const at::Tensor norm =
        torchkit::clip_grad_norm_(s.optimizer, 1.0, 2.0, scaler, {.error_if_nonfinite = true, .foreach = foreach});
    CHECK(norm.item<double>() == doctest::Approx(std::sqrt(3.0) * 1e15).epsilon(1e-6));
    CHECK(scaler.step(s.optimizer));
    // A real inf: refused in the same words on both paths, nothing changed.
    Small t;
    torchkit::GradScaler other;
    (void)other.scale(torch::tensor(1.0f));
    t.grad({1, std::numeric_limits<float>::infinity(), 3});
    const at::Tensor before = t.w.grad().clone();
    const std::string message = message_of<torchkit::Error>([&] {
      (void)torchkit::clip_grad_norm_(t.optimizer, 1.0, 2.0, other, {.error_if_nonfinite = true, .foreach = foreach});
    });
    CHECK(message.find("clip_grad_norm_: the total norm of order 2 of the unscaled gradients is inf (non-finite)") !=
          std::string::npos);
    CHECK(torch::equal(t.w.grad(), before));
    CHECK_FALSE(other.step(t.optimizer));  // unscales now, finds the inf, skips
  }
}

TEST_CASE("scaler-aware clip with a parameter listed twice equals unscale_ then clip_grad_norm_, as in Python") {
  // Python's unscale_ unscales a twice-listed parameter's gradient twice and its clip counts
  // it twice; the fused clip then takes the op-by-op recipe. The optimizer's list is checked
  // on every call: a duplicate added later is noticed.
  const auto run = [](bool fused, bool add_duplicate_later) {
    at::Tensor w = torch::zeros({4}).requires_grad_(true);
    at::Tensor v = torch::zeros({2}).requires_grad_(true);
    torch::optim::SGD optimizer(std::vector<at::Tensor>{w, v}, 0.1);
    if (!add_duplicate_later) optimizer.add_param_group(torch::optim::OptimizerParamGroup({w}));
    torchkit::GradScaler scaler({.init_scale = 4.0});
    std::vector<double> norms;
    for (int step = 0; step < 2; ++step) {
      if (step == 1 && add_duplicate_later) optimizer.add_param_group(torch::optim::OptimizerParamGroup({w}));
      (void)scaler.scale(torch::tensor(1.0f));
      w.mutable_grad() = torch::tensor({0.0f, 4.0f, 8.0f, 12.0f});
      v.mutable_grad() = torch::tensor({3.0f, 5.0f});
      if (fused) {
        norms.push_back(torchkit::clip_grad_norm_(optimizer, 1.0, 2.0, scaler).item<double>());
      } else {
        scaler.unscale_(optimizer);
        std::vector<at::Tensor> listed;
        for (const auto& group : optimizer.param_groups()) {
          for (const auto& p : group.params()) listed.push_back(p);
        }
        norms.push_back(torchkit::clip_grad_norm_(listed, 1.0, 2.0).item<double>());
      }
      (void)scaler.step(optimizer);
      scaler.update(4.0);
    }
    return std::make_tuple(norms, w.grad().clone(), v.grad().clone());
  };
  for (const bool later : {false, true}) {
    CAPTURE(later);
    const auto [fused_norms, fused_w, fused_v] = run(true, later);
    const auto [norms, w, v] = run(false, later);
    CHECK(fused_norms == norms);
    CHECK(same_bits(fused_w, w));
    CHECK(same_bits(fused_v, v));
  }
  // Without the duplicate: 1 unscale, norm of [0, 1, 2, 3, 0.75, 1.25].
  at::Tensor w = torch::zeros({4}).requires_grad_(true);
  torch::optim::SGD optimizer(std::vector<at::Tensor>{w}, 0.1);
  torchkit::GradScaler scaler({.init_scale = 4.0});
  (void)scaler.scale(torch::tensor(1.0f));
  w.mutable_grad() = torch::tensor({0.0f, 4.0f, 8.0f, 12.0f});
  CHECK(torchkit::clip_grad_norm_(optimizer, 100.0, 2.0, scaler).item<double>() == doctest::Approx(std::sqrt(14.0)));
}

TEST_CASE("GradScaler: disabled is a pass-through") {
  Small s;
  torchkit::GradScaler scaler({.enabled = false});
  const at::Tensor loss = torch::tensor(3.0f);
  CHECK(scaler.scale(loss).is_same(loss));
  const at::Tensor integer = torch::tensor(3);  // returned untouched, unchecked, as Python does
  CHECK(scaler.scale(integer).is_same(integer));
  CHECK_FALSE(scaler.is_enabled());
  CHECK(scaler.get_scale() == 1.0);
  s.grad({6, 8, 0});
  scaler.unscale_(s.optimizer);
  CHECK(torch::equal(s.w.grad(), torch::tensor({6.0f, 8.0f, 0.0f})));
  CHECK(torchkit::clip_grad_norm_(s.optimizer, 5.0, 2.0, scaler).item<double>() == doctest::Approx(10.0));
  CHECK(scaler.step(s.optimizer));
  scaler.update();
  CHECK(s.w.grad().norm().item<double>() == doctest::Approx(5.0).epsilon(1e-5));
}

TEST_CASE("ClipGrad(optimizer, scaler): the scaler-aware clip, counted like ClipGrad(params)") {
  auto params = mixed_gradients_params(3, false);
  auto twin = mixed_gradients_params(3, false);
  torch::optim::SGD optimizer(params, 0.1), twin_optimizer(twin, 0.1);
  torchkit::GradScaler scaler({.init_scale = 4096.0}), twin_scaler({.init_scale = 4096.0});
  torchkit::ClipGrad clip(1.0);
  const auto fresh = mixed_gradients_params(3, false);
  for (int step = 0; step < 3; ++step) {
    CAPTURE(step);
    for (std::size_t k = 0; k < params.size(); ++k) {  // new scaled gradients, as a backward pass gives
      params[k].mutable_grad().copy_(fresh[k].grad());
      twin[k].mutable_grad().copy_(fresh[k].grad());
    }
    for (auto* each : {&scaler, &twin_scaler}) (void)each->scale(torch::tensor(1.0f));
    if (step == 1) params[0].mutable_grad()[0][0] = infinity, twin[0].mutable_grad()[0][0] = infinity;
    const at::Tensor norm = clip(optimizer, scaler);
    const at::Tensor expected = torchkit::clip_grad_norm_(twin_optimizer, 1.0, 2.0, twin_scaler);
    CHECK(same_bits(norm, expected));
    for (std::size_t k = 0; k < params.size(); ++k) CHECK(same_bits(params[k].grad(), twin[k].grad()));
    CHECK(scaler.step(optimizer) == (step != 1));
    CHECK(twin_scaler.step(twin_optimizer) == (step != 1));
    scaler.update();
    twin_scaler.update();
    if (step != 1) CHECK(clip.last_norm() == norm.item<double>());
  }
  CHECK(clip.steps() == 3);
  CHECK(clip.clipped_steps() == 3);  // norms far above 1, and the inf one
  CHECK(scaler.get_scale() == twin_scaler.get_scale());
}

TEST_CASE("GradScaler: bad input throws naming the value and changes nothing") {
  const auto throws_with = [](auto&& call, const std::string& text) {
    const std::string message = message_of<torchkit::Error>(call);
    CAPTURE(message);
    CHECK(message.find(text) != std::string::npos);
  };
  throws_with([] { torchkit::GradScaler scaler({.growth_factor = 1.0}); },
              "GradScaler: growth_factor must be a finite number > 1, got 1");
  throws_with([] { torchkit::GradScaler scaler({.backoff_factor = 1.0}); },
              "GradScaler: backoff_factor must be in (0, 1), got 1");
  throws_with([] { torchkit::GradScaler scaler({.backoff_factor = 0.0}); },
              "GradScaler: backoff_factor must be in (0, 1), got 0");
  throws_with([] { torchkit::GradScaler scaler({.growth_interval = 0}); },
              "GradScaler: growth_interval must be in [1, 2147483647] (the growth tracker is int32), got 0");
  throws_with([] { torchkit::GradScaler scaler({.growth_interval = std::int64_t{1} << 31}); },
              "GradScaler: growth_interval must be in [1, 2147483647] (the growth tracker is int32), got 2147483648");
  const std::string scale_range = "must be a finite number > 0 that float32 holds (from 1e-45 to 3.4028235e+38), got ";
  throws_with([] { torchkit::GradScaler scaler({.init_scale = -1.0}); },
              "GradScaler: init_scale (the scale) " + scale_range + "-1");
  // Finite doubles that float32 cannot hold: the scale tensor would be inf or 0.
  throws_with([] { torchkit::GradScaler scaler({.init_scale = 1e39}); },
              "GradScaler: init_scale (the scale) " + scale_range + "1e+39");
  throws_with([] { torchkit::GradScaler scaler({.init_scale = 1e-50}); },
              "GradScaler: init_scale (the scale) " + scale_range + "1e-50");
  CHECK(torchkit::GradScaler({.init_scale = 3.4028234663852886e38}).get_scale() == 3.4028234663852886e38);
  Small s;
  torchkit::GradScaler scaler;
  s.grad({1, 2, 3});
  throws_with([&] { (void)scaler.step(s.optimizer); }, "GradScaler::step: scale() was never called");
  throws_with([&] { scaler.unscale_(s.optimizer); }, "GradScaler::unscale_: scale() was never called");
  throws_with([&] { scaler.update(); }, "GradScaler::update: scale() was never called");
  throws_with([&] { (void)torchkit::clip_grad_norm_(s.optimizer, 1.0, 2.0, scaler); },
              "clip_grad_norm_: scale() was never called");
  throws_with([&] { (void)scaler.scale(torch::tensor(1)); }, "GradScaler::scale: the loss has dtype Long");
  (void)scaler.scale(torch::tensor(1.0f));
  throws_with([&] { scaler.update(); }, "GradScaler::update: no inf checks were recorded since the last update()");
  throws_with([&] { scaler.update(0.0); }, "GradScaler::update: new_scale " + scale_range + "0");
  throws_with([&] { scaler.update(nan); }, "GradScaler::update: new_scale " + scale_range + "nan");
  throws_with([&] { scaler.update(3.5e38); }, "GradScaler::update: new_scale " + scale_range + "3.5e+38");
  throws_with([&] { scaler.update(1e-50); }, "GradScaler::update: new_scale " + scale_range + "1e-50");
  const at::Tensor before = s.w.grad().clone();
  s.w.mutable_grad() = torch::tensor({1, 2, 3}, torch::kInt);
  throws_with([&] { scaler.unscale_(s.optimizer); },
              "GradScaler::unscale_: the gradient of parameter 0 of the optimizer has dtype Int");
  s.w.mutable_grad() = before.to_sparse();
  throws_with([&] { (void)scaler.step(s.optimizer); },
              "GradScaler::step: the gradient of parameter 0 of the optimizer is sparse");
  throws_with([&] { (void)torchkit::clip_grad_norm_(s.optimizer, 1.0, 2.0, scaler); },
              "clip_grad_norm_: the gradient of parameter 0 of the optimizer is sparse");
  s.w.mutable_grad() = before;
  throws_with([&] { (void)torchkit::clip_grad_norm_(s.optimizer, 0.0, 2.0, scaler); },
              "clip_grad_norm_: max_norm must be a positive number, got 0");
  // Nothing changed: the scaler still takes a full step.
  CHECK(torch::equal(s.w.grad(), before));
  CHECK(torch::equal(s.w, torch::ones({3})));
  CHECK(scaler.get_scale() == 65536.0);
  CHECK(scaler.step(s.optimizer));
  scaler.update();
}

}  // namespace
