// Tests for version.hpp, error.hpp and concepts.hpp.
#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
#include <torchkit/version.hpp>

#include "test_support.hpp"

#include <list>
#include <span>

TEST_CASE("version: the string and the number are built from the three macros") {
  // The number itself is checked against CMake, vcpkg and Conan by tests/packaging/check_version.py.
  CHECK(torchkit::version() ==
        fmt::format("{}.{}.{}", TORCHKIT_VERSION_MAJOR, TORCHKIT_VERSION_MINOR, TORCHKIT_VERSION_PATCH));
  CHECK(std::string_view(TORCHKIT_VERSION_STRING) == torchkit::version());
  CHECK(TORCHKIT_VERSION == TORCHKIT_VERSION_MAJOR * 10000 + TORCHKIT_VERSION_MINOR * 100 + TORCHKIT_VERSION_PATCH);
  static_assert(torchkit::version() == TORCHKIT_VERSION_STRING);  // usable at compile time
  CHECK(TORCHKIT_TORCH_AT_LEAST(1, 13));
}

TEST_CASE("Error is an invalid_argument and TORCHKIT_CHECK formats lazily") {
  static_assert(std::is_base_of_v<std::invalid_argument, torchkit::Error>);
  int evaluated = 0;
  auto count = [&] { return ++evaluated; };
  TORCHKIT_CHECK(true, "never {}", count());
  CHECK(evaluated == 0);
  const auto message = torchkit::test::message_of<torchkit::Error>(
      [&] { TORCHKIT_CHECK(1 + 1 == 3, "value {} at {} is not {}", 2, "[0]", count()); });
  CHECK(message == "value 2 at [0] is not 1");
  CHECK(evaluated == 1);
}

TEST_CASE("concepts accept what users hold") {
  static_assert(torchkit::TensorRange<std::vector<at::Tensor>>);
  static_assert(torchkit::TensorRange<std::vector<at::Tensor>&>);
  static_assert(torchkit::TensorRange<std::span<const at::Tensor>>);
  static_assert(torchkit::TensorRange<std::list<at::Tensor>>);
  static_assert(!torchkit::TensorRange<std::vector<int>>);
  static_assert(!torchkit::TensorRange<at::Tensor>);

  static_assert(torchkit::ModuleLike<torch::nn::Module>);
  static_assert(torchkit::ModuleLike<torch::nn::LinearImpl>);
  static_assert(torchkit::ModuleLike<torch::nn::Linear>);
  static_assert(torchkit::ModuleLike<const torch::nn::Linear&>);
  static_assert(torchkit::ModuleLike<torch::nn::Sequential>);
  static_assert(torchkit::ModuleLike<std::shared_ptr<torch::nn::Module>>);
  static_assert(torchkit::ModuleLike<std::shared_ptr<torch::nn::Conv2dImpl>>);
  static_assert(!torchkit::ModuleLike<std::shared_ptr<int>>);
  static_assert(!torchkit::ModuleLike<at::Tensor>);
  static_assert(!torchkit::ModuleLike<std::vector<at::Tensor>>);

  static_assert(torchkit::OptimizerOptions<torch::optim::SGDOptions>);
  static_assert(torchkit::OptimizerOptions<torch::optim::AdamOptions>);
  static_assert(torchkit::OptimizerOptions<torch::optim::AdamWOptions>);
  static_assert(torchkit::OptimizerOptions<torch::optim::RMSpropOptions>);
  static_assert(torchkit::OptimizerOptions<torch::optim::AdagradOptions>);
  static_assert(!torchkit::OptimizerOptions<torch::optim::LBFGSOptions>);
  static_assert(!torchkit::OptimizerOptions<int>);
}

TEST_CASE("module_of reaches the module behind every form") {
  torch::nn::Linear holder(3, 2);
  std::shared_ptr<torch::nn::LinearImpl> pointer = holder.ptr();
  CHECK(&torchkit::module_of(holder) == holder.get());
  CHECK(&torchkit::module_of(pointer) == holder.get());
  CHECK(&torchkit::module_of(*holder) == holder.get());
  const torch::nn::Linear& const_holder = holder;
  CHECK(&torchkit::module_of(const_holder) == holder.get());

  torch::nn::Linear empty{nullptr};
  CHECK_THROWS_WITH_AS((void)torchkit::module_of(empty), doctest::Contains("empty"), torchkit::Error);
  std::shared_ptr<torch::nn::Module> null;
  CHECK_THROWS_WITH_AS((void)torchkit::module_of(null), doctest::Contains("null"), torchkit::Error);
}

TEST_CASE("named_parameters_of lists a tied tensor once, under its first name") {
  auto model = std::make_shared<torchkit::test::TiedModel>();
  // LibTorch lists the tied weight twice (once per owner) ...
  CHECK(model->named_parameters().size() == 4);
  // ... Python, and torchkit, once.
  const auto named = torchkit::named_parameters_of(model);
  REQUIRE(named.size() == 3);
  CHECK(named[0].name == "encoder.weight");
  CHECK(named[1].name == "encoder.bias");
  CHECK(named[2].name == "decoder.bias");
  CHECK(named[0].tensor.is_same(model->encoder->weight));

  const auto parameters = torchkit::parameters_of(*model);
  REQUIRE(parameters.size() == 3);
  CHECK(parameters[2].is_same(model->decoder->bias));
}

TEST_CASE("parameters_of keeps a range as given") {
  auto a = torch::ones({2});
  auto b = torch::zeros({3});
  std::vector<at::Tensor> tensors{a, b, a};
  const auto result = torchkit::parameters_of(tensors);
  REQUIRE(result.size() == 3);
  CHECK(result[0].is_same(a));
  CHECK(result[2].is_same(a));
  auto filtered = tensors | std::views::filter([](const at::Tensor& t) { return t.numel() == 3; });
  const auto only_b = torchkit::parameters_of(filtered);
  REQUIRE(only_b.size() == 1);
  CHECK(only_b[0].is_same(b));
}
