// Tests for format.hpp: every printable torchkit type formats with {fmt} as its to_string().
#include <torchkit/format.hpp>

#include "test_support.hpp"

#include <sstream>

namespace {

template <class T>
std::string streamed(const T& value) {
  std::ostringstream stream;
  stream << value;
  return stream.str();
}

}  // namespace

TEST_CASE("Shape formats as Python prints a list of sizes") {
  const auto tensor = torch::zeros({2, 3, 4});
  CHECK(fmt::format("{}", torchkit::Shape(tensor.sizes())) == "[2, 3, 4]");
  CHECK(fmt::format("{}", torchkit::Shape(torch::zeros({}).sizes())) == "[]");
  const std::vector<int64_t> sizes{1, 3, 224, 224};
  CHECK(fmt::format("input {}", torchkit::Shape(sizes)) == "input [1, 3, 224, 224]");
  // The string format spec applies to the text.
  CHECK(fmt::format("{:>8}|", torchkit::Shape(tensor.sizes())) == "[2, 3, 4]|");
  CHECK(fmt::format("{:>12}|", torchkit::Shape(tensor.sizes())) == "   [2, 3, 4]|");
  CHECK(fmt::format("{:<12}|", torchkit::Shape(tensor.sizes())) == "[2, 3, 4]   |");
}

TEST_CASE("Summary, reports and schedulers format as their to_string()") {
  torch::nn::Sequential model(torch::nn::Linear(4, 3), torch::nn::ReLU(), torch::nn::Linear(3, 2));

  const auto summary = torchkit::summary(model, {4});
  CHECK(fmt::format("{}", summary) == summary.to_string());
  CHECK(fmt::format("{}", summary) == streamed(summary));
  CHECK(fmt::format("{}", summary).find("Total params: 23") != std::string::npos);

  const auto report = torchkit::requires_grad_report(model);
  CHECK(fmt::format("{}", report) == report.to_string());
  CHECK(fmt::format("{}", report).find("name: 0.weight,\t grad: True") != std::string::npos);
  const auto frozen = torchkit::freeze(model, {"0"});
  CHECK(fmt::format("{}", frozen) == frozen.to_string());
  CHECK(fmt::format("{}", frozen).find("name: 0.bias,\t grad: False") != std::string::npos);

  const torchkit::NamePattern pattern = torchkit::regex("2\\..*");
  CHECK(fmt::format("{}", pattern) == pattern.to_string());

  const torchkit::MemoryStats stats{.allocated = 512, .reserved = 2048, .peak_allocated = 1536, .peak_reserved = 4096};
  CHECK(fmt::format("{}", stats) == stats.to_string());
  CHECK(fmt::format("{}", stats) == streamed(stats));

  torchkit::ClipGrad clip(20.0);
  CHECK(fmt::format("{}", clip) == clip.to_string());
  CHECK(fmt::format("{}", clip).find("max_norm=20") != std::string::npos);

  const torchkit::OneHot encoder(10, {.smoothing = 0.1});
  CHECK(fmt::format("{}", encoder) == encoder.to_string());

  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  torchkit::lr::StepLR step(optimizer, 10, 0.5);
  CHECK(fmt::format("{}", step) == step.to_string());
  CHECK(fmt::format("{}", step) == streamed(step));
  // Through the base class too.
  const torchkit::lr::Scheduler& base = step;
  CHECK(fmt::format("{}", base) == step.to_string());
  torchkit::lr::ReduceLROnPlateau plateau(optimizer);
  CHECK(fmt::format("{}", plateau) == plateau.to_string());
}

TEST_CASE("types without a formatter stay unformattable") {
  static_assert(fmt::is_formattable<torchkit::Summary>::value);
  static_assert(fmt::is_formattable<torchkit::lr::CosineAnnealingLR>::value);
  static_assert(fmt::is_formattable<torchkit::Shape>::value);
  static_assert(!fmt::is_formattable<torchkit::SummaryOptions>::value);
  static_assert(!fmt::is_formattable<torchkit::Error>::value);
}
