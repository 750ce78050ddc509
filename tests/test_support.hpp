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

}  // namespace torchkit::test
