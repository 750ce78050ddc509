#pragma once
/// Helpers shared by torchkit's tests: golden fixtures and tensor comparison.

#include <torch/torch.h>
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace torchkit::test {

/// Reads tests/golden/<name> (JSON written by the generator scripts beside it).
inline nlohmann::json load_golden(const std::string& name) {
  const std::string path = std::string(TORCHKIT_TEST_DATA_DIR) + "/" + name;
  std::ifstream in(path);
  if (!in) {
    throw std::runtime_error("cannot open golden file " + path);
  }
  return nlohmann::json::parse(in);
}

/// A tensor from a JSON array (nested lists) of numbers, as double.
inline at::Tensor tensor_from_json(const nlohmann::json& values, const std::vector<int64_t>& shape) {
  std::vector<double> flat;
  // Depth-first, left to right: flattens nested lists in row-major order.
  std::vector<std::pair<const nlohmann::json*, std::size_t>> frames{{&values, 0}};
  if (!values.is_array()) {
    flat.push_back(values.get<double>());
  } else {
    while (!frames.empty()) {
      auto& [node, index] = frames.back();
      if (index == node->size()) {
        frames.pop_back();
        continue;
      }
      const nlohmann::json& child = (*node)[index++];
      if (child.is_array()) {
        frames.emplace_back(&child, 0);
      } else {
        flat.push_back(child.get<double>());
      }
    }
  }
  return torch::tensor(flat, torch::kDouble).reshape(shape);
}

/// Throws `T` and returns its message, or fails the test when nothing is thrown.
template <class Exception = std::exception, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Exception& e) {
    return e.what();
  }
  FAIL("expected an exception, none was thrown");
  return {};
}

/// Holds a weight it is given (so two modules can share one tensor) and a bias of its own.
struct TiedLinear : torch::nn::Module {
  explicit TiedLinear(const at::Tensor& shared_weight) {
    weight = register_parameter("weight", shared_weight);
    bias = register_parameter("bias", torch::zeros({shared_weight.size(0)}));
  }
  at::Tensor weight, bias;
};

/// A weight-tied model, as in language models: the decoder's weight is the encoder's.
/// LibTorch's named_parameters() lists that tensor twice (encoder.weight, decoder.weight);
/// Python lists it once.
struct TiedModel : torch::nn::Module {
  TiedModel() {
    encoder = register_module("encoder", torch::nn::Linear(4, 4));
    decoder = register_module("decoder", std::make_shared<TiedLinear>(encoder->weight));
  }
  torch::nn::Linear encoder{nullptr};
  std::shared_ptr<TiedLinear> decoder;
};

}  // namespace torchkit::test
