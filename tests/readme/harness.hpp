// The names README.md's snippets use, declared for tests/readme/extract_snippets.py's generated
// sources. The snippets are compiled, not run: what they call must exist with the types shown.
#pragma once
#include <torch/torch.h>
#include <torchkit/torchkit.hpp>

#include <cstdint>
#include <iostream>
#include <vector>

namespace torchkit_readme {

/// Stand-ins for the user's own code in the data-parallel snippet (declared only).
template <class Indices>
std::vector<Indices> batches_of(const Indices& indices);
template <class Model, class Batch>
at::Tensor loss_of(Model& model, const Batch& batch);

}  // namespace torchkit_readme

// Declared at the top of every "body" snippet (a macro, so each snippet sees fresh objects).
#define README_HARNESS_NAMES                                                         \
  torch::nn::Sequential model(torch::nn::Conv2d(3, 8, 3), torch::nn::Flatten());    \
  auto& net = model;                                                                 \
  torch::optim::SGD optimizer(model->parameters(), 0.1);                             \
  [[maybe_unused]] torch::optim::AdamOptions defaults(1e-3);                         \
  [[maybe_unused]] at::Tensor image = torch::zeros({224, 224, 3}, torch::kUInt8);    \
  [[maybe_unused]] at::Tensor labels = torch::zeros({8}, torch::kLong);              \
  [[maybe_unused]] at::Tensor boxes = torch::zeros({3, 6});                          \
  [[maybe_unused]] const std::int64_t C = 10;                                        \
  [[maybe_unused]] const std::int64_t epochs = 1;                                    \
  [[maybe_unused]] const std::int64_t dataset_size = 64;                             \
  (void)net;                                                                         \
  (void)optimizer;
