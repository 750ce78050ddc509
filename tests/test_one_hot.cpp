// Tests for one_hot.hpp: one_hot, OneHot, OneHotOptions.
#include <torchkit/one_hot.hpp>

#include "test_support.hpp"

#include <sstream>
#include <string>
#include <vector>

using torchkit::OneHotOptions;
using torchkit::test::load_golden;
using torchkit::test::message_of;
using torchkit::test::tensor_from_json;

namespace {

std::vector<int64_t> shape_of(const nlohmann::json& json) { return json.get<std::vector<int64_t>>(); }

at::ScalarType label_dtype_of(const std::string& name) {
  if (name == "uint8") return at::kByte;
  if (name == "int8") return at::kChar;
  if (name == "int16") return at::kShort;
  if (name == "int32") return at::kInt;
  return at::kLong;
}

at::Tensor golden_labels(const nlohmann::json& c) {
  return tensor_from_json(c["labels"], shape_of(c["shape"])).to(label_dtype_of(c["label_dtype"]));
}

bool same_dtype(const at::Tensor& tensor, at::ScalarType dtype) { return tensor.scalar_type() == dtype; }

}  // namespace

TEST_CASE("one_hot matches torch.nn.functional.one_hot for every label dtype and shape") {
  const auto golden = load_golden("one_hot.json");
  int plain_cases = 0;
  for (const auto& c : golden["cases"]) {
    if (c.contains("smoothing")) {
      continue;
    }
    ++plain_cases;
    const std::string name = c["name"];
    CAPTURE(name);
    const auto labels = golden_labels(c);
    const int64_t num_classes = c["num_classes"];
    const auto expected = tensor_from_json(c["expected"], shape_of(c["expected_shape"]));

    const auto result = torchkit::one_hot(labels, num_classes);
    CHECK(same_dtype(result, at::kFloat));  // float by default: no .to(kFloat) pass afterwards
    CHECK(result.sizes() == expected.sizes());
    CHECK(torch::equal(result.to(at::kDouble), expected));
    // Any output dtype, written directly.
    for (const auto dtype : {at::kDouble, at::kHalf, at::kBFloat16, at::kLong, at::kInt, at::kShort,
                             at::kChar, at::kByte, at::kBool}) {
      const auto typed = torchkit::one_hot(labels, num_classes, {.dtype = dtype});
      CHECK(same_dtype(typed, dtype));
      CHECK(torch::equal(typed, expected.to(dtype)));
    }
    // The functor gives the same.
    CHECK(torch::equal(torchkit::OneHot(num_classes)(labels), result));
  }
  CHECK(plain_cases >= 6);
}

TEST_CASE("one_hot smoothing gives CrossEntropyLoss(label_smoothing) targets; ignore_index gives zero rows") {
  const auto golden = load_golden("one_hot.json");
  int smoothed_cases = 0;
  for (const auto& c : golden["cases"]) {
    if (!c.contains("smoothing")) {
      continue;
    }
    ++smoothed_cases;
    const std::string name = c["name"];
    CAPTURE(name);
    const auto labels = golden_labels(c);
    const int64_t num_classes = c["num_classes"];
    OneHotOptions options{.smoothing = c["smoothing"].get<double>()};
    if (!c["ignore_index"].is_null()) {
      options.ignore_index = c["ignore_index"].get<int64_t>();
    }
    const auto expected = tensor_from_json(c["expected"], shape_of(c["expected_shape"]));

    const auto result = torchkit::one_hot(labels, num_classes, options);
    CHECK(result.sizes() == expected.sizes());
    CHECK(torch::allclose(result.to(at::kDouble), expected, 1e-7, 1e-7));
    options.dtype = at::kDouble;
    const auto exact = torchkit::one_hot(labels, num_classes, options);
    CHECK(torch::allclose(exact, expected, 1e-15, 1e-15));

    // Each kept row sums to 1; the loss with these targets is PyTorch's CrossEntropyLoss value.
    const auto logits = tensor_from_json(c["logits"], shape_of(c["expected_shape"]));
    const auto per_row = -(exact * logits.log_softmax(-1)).sum(-1).flatten();
    auto kept = torch::ones_like(per_row, torch::kBool);
    if (options.ignore_index.has_value()) {
      kept = labels.to(at::kLong).flatten().ne(*options.ignore_index);
    }
    const double loss = per_row.masked_select(kept).sum().item<double>() / kept.sum().item<double>();
    CHECK(loss == doctest::Approx(c["cross_entropy"].get<double>()).epsilon(1e-12));
    CHECK(torch::allclose(exact.sum(-1).flatten().masked_select(kept), torch::ones({1}, torch::kDouble)));
  }
  CHECK(smoothed_cases >= 4);
}

TEST_CASE("one_hot reproduces the tip: class_num = 8, batch_size = 4, scatter_ of ones") {
  const int64_t class_num = 8;
  const int64_t batch_size = 4;
  const auto label = torch::randint(0, 1000, {batch_size}, torch::kLong) % class_num;
  // The tip's Python: torch.zeros(batch_size, class_num).scatter_(1, label.resize_(batch_size, 1), 1)
  const auto tip = torch::zeros({batch_size, class_num}).scatter_(1, label.view({batch_size, 1}), 1);
  CHECK(torch::equal(torchkit::one_hot(label, class_num), tip));
}

TEST_CASE("one_hot agrees with the ATen-operations path (used for GPU labels)") {
  torch::manual_seed(3);
  for (const auto label_dtype : {at::kByte, at::kChar, at::kShort, at::kInt, at::kLong}) {
    for (const double smoothing : {0.0, 0.25}) {
      for (const bool ignore : {false, true}) {
        const std::string label_type = c10::toString(label_dtype);
        CAPTURE(label_type);
        CAPTURE(smoothing);
        CAPTURE(ignore);
        auto labels = torch::randint(0, 7, {5, 6, 7}, torch::kLong);
        if (ignore) {
          labels.masked_fill_(torch::rand({5, 6, 7}) < 0.2, 100);
        }
        labels = labels.to(label_dtype);
        OneHotOptions options{.smoothing = smoothing};
        if (ignore) {
          options.ignore_index = 100;
        }
        const auto reference = torchkit::detail::one_hot_with_aten_ops(labels, 7, options);
        CHECK(torch::equal(torchkit::one_hot(labels, 7, options), reference));
        // Non-contiguous labels.
        const auto transposed = labels.transpose(0, 2);
        CHECK(torch::equal(torchkit::one_hot(transposed, 7, options),
                           torchkit::detail::one_hot_with_aten_ops(transposed, 7, options)));
      }
    }
  }
}

TEST_CASE("one_hot: ignore_index inside the class range also gives zero rows") {
  const auto labels = torch::tensor({0, 1, 2, 1}, torch::kLong);
  const auto result = torchkit::one_hot(labels, 3, {.smoothing = 0.3, .ignore_index = 1});
  CHECK(torch::equal(result[1], torch::zeros({3})));
  CHECK(torch::equal(result[3], torch::zeros({3})));
  CHECK(result[0][0].item<float>() == doctest::Approx(0.8));
  CHECK(result[0][1].item<float>() == doctest::Approx(0.1));
}

TEST_CASE("one_hot: large inputs on several threads, and empty inputs") {
  const int previous = at::get_num_threads();
  const auto labels = torch::randint(0, 1000, {20000}, torch::kInt);
  at::set_num_threads(2);
  const auto parallel = torchkit::one_hot(labels, 1000);
  at::set_num_threads(1);
  const auto single = torchkit::one_hot(labels, 1000);
  at::set_num_threads(previous);
  CHECK(torch::equal(parallel, single));
  CHECK(torch::equal(single, torch::one_hot(labels.to(at::kLong), 1000).to(at::kFloat)));

  const auto empty = torchkit::one_hot(torch::zeros({0, 3}, torch::kLong), 5);
  CHECK(empty.sizes() == at::IntArrayRef{0, 3, 5});
}

TEST_CASE("one_hot names the first bad label, its index and the valid range") {
  auto labels = torch::zeros({5, 21}, torch::kByte);
  labels[3][17] = 255;
  labels[4][2] = 200;
  const auto message = message_of<torchkit::Error>([&] { (void)torchkit::one_hot(labels, 21); });
  CHECK(message == "one_hot: label 255 at index [3, 17] is outside [0, 21); pass ignore_index=255 to skip it");
  // With 255 ignored, the next bad label is named, and the message says it is not the ignore index.
  const auto next = message_of<torchkit::Error>([&] { (void)torchkit::one_hot(labels, 21, {.ignore_index = 255}); });
  CHECK(next == "one_hot: label 200 at index [4, 2] is outside [0, 21) and is not the ignore_index (255)");
  // The first bad label in row-major order, also when several threads find bad labels.
  const auto many = torch::randint(0, 10, {50000}, torch::kLong);
  many[40000] = -1;
  many[30001] = 10;
  many[45000] = 12;
  const int previous = at::get_num_threads();
  at::set_num_threads(2);
  const auto first = message_of<torchkit::Error>([&] { (void)torchkit::one_hot(many, 10); });
  at::set_num_threads(previous);
  CHECK(first == "one_hot: label 10 at index [30001] is outside [0, 10); pass ignore_index=10 to skip it");
  // Negative labels; the ATen path gives the same message.
  const auto negative = torch::tensor({1, -3, 2}, torch::kInt);
  const auto negative_message = message_of<torchkit::Error>([&] { (void)torchkit::one_hot(negative, 4); });
  CHECK(negative_message == "one_hot: label -3 at index [1] is outside [0, 4); pass ignore_index=-3 to skip it");
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::detail::one_hot_with_aten_ops(negative, 4, {}); }) ==
        negative_message);
  // A label equal to num_classes.
  CHECK_THROWS_WITH_AS((void)torchkit::one_hot(torch::tensor({4}), 4), doctest::Contains("label 4 at index [0]"),
                       torchkit::Error);
  // The labels are left as they were.
  CHECK(labels[3][17].item<int>() == 255);
}

TEST_CASE("one_hot rejects bad arguments, naming the value") {
  const auto labels = torch::tensor({0, 1, 2});
  const auto throws = [&](const at::Tensor& input, int64_t num_classes, const OneHotOptions& options,
                          const std::string& part) {
    CAPTURE(part);
    const auto message = message_of<torchkit::Error>([&] { (void)torchkit::one_hot(input, num_classes, options); });
    CHECK(message.find(part) != std::string::npos);
  };
  throws(at::Tensor(), 3, {}, "undefined");
  throws(torch::tensor({0.0f, 1.0f}), 3, {}, "dtype Float");
  throws(torch::tensor({0.0, 1.0}, torch::kDouble), 3, {}, "dtype Double");
  throws(torch::tensor({true, false}), 3, {}, "dtype Bool");
  throws(labels, 0, {}, "num_classes is 0");
  throws(labels, -1, {}, "num_classes is -1");
  throws(labels, 3, {.smoothing = 1.0}, "smoothing is 1");
  throws(labels, 3, {.smoothing = -0.1}, "smoothing is -0.1");
  throws(labels, 3, {.smoothing = std::nan("")}, "smoothing is nan");
  throws(labels, 3, {.dtype = at::kComplexFloat}, "output dtype ComplexFloat");
  throws(labels, 3, {.dtype = at::kLong, .smoothing = 0.1}, "smoothing 0.1 needs a floating output dtype, got Long");
}

TEST_CASE("OneHot checks its options once and prints them") {
  const torchkit::OneHot encode(10, {.smoothing = 0.1, .ignore_index = 255});
  CHECK(encode.num_classes() == 10);
  CHECK(encode.options().smoothing == 0.1);
  CHECK(encode.to_string() == "OneHot(num_classes=10, dtype=Float, smoothing=0.1, ignore_index=255)");
  std::ostringstream out;
  out << torchkit::OneHot(3);
  CHECK(out.str() == "OneHot(num_classes=3, dtype=Float, smoothing=0, ignore_index=none)");
  const auto labels = torch::tensor({1, 255, 9}, torch::kByte);
  CHECK(torch::equal(encode(labels), torchkit::one_hot(labels, 10, encode.options())));

  CHECK_THROWS_WITH_AS(torchkit::OneHot(0), doctest::Contains("OneHot: num_classes is 0"), torchkit::Error);
  CHECK_THROWS_WITH_AS(torchkit::OneHot(3, {.smoothing = 1.5}), doctest::Contains("smoothing is 1.5"), torchkit::Error);
}
