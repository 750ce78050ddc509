// The gradient sets the clipping, mixed-precision and distributed benchmarks share (one
// definition of each model's parameter shapes), and the in-place floor: what any clip of a set's
// gradients costs at least, wherever they lie.
#pragma once

#include <torchkit/clip.hpp>

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace torchkit_bench {

using Shapes = std::vector<std::vector<int64_t>>;

/// 2,000 tensors of 512 floats: norm/bias-heavy models, adapters.
inline Shapes many_small_shapes() { return Shapes(2000, std::vector<int64_t>{512}); }

/// The 199 parameter shapes of a 12-layer BERT-base scaled down 8x (1.8M floats), so that it
/// fits in the L3 cache as a real model's gradients fit in a GPU's: hidden 768 -> 96,
/// intermediate 3072 -> 384, vocabulary 30522 -> 3815.
inline Shapes bert_shapes() {
  const int64_t hidden = 96, intermediate = 384, vocabulary = 3815, positions = 512;
  Shapes shapes = {{vocabulary, hidden}, {positions, hidden}, {2, hidden}, {hidden}, {hidden}};
  for (int layer = 0; layer < 12; ++layer) {
    for (int projection = 0; projection < 3; ++projection) {  // query, key, value
      shapes.push_back({hidden, hidden});
      shapes.push_back({hidden});
    }
    shapes.push_back({hidden, hidden});  // attention output
    shapes.push_back({hidden});
    shapes.push_back({hidden});  // attention LayerNorm
    shapes.push_back({hidden});
    shapes.push_back({intermediate, hidden});
    shapes.push_back({intermediate});
    shapes.push_back({hidden, intermediate});
    shapes.push_back({hidden});
    shapes.push_back({hidden});  // output LayerNorm
    shapes.push_back({hidden});
  }
  shapes.push_back({hidden, hidden});  // pooler
  shapes.push_back({hidden});
  return shapes;
}

/// ResNet-50's 161 parameter shapes (25.6M floats).
inline Shapes resnet50_shapes() {
  Shapes shapes = {{64, 3, 7, 7}, {64}, {64}};
  int64_t in_channels = 64;
  const std::pair<int64_t, int> stages[] = {{64, 3}, {128, 4}, {256, 6}, {512, 3}};
  for (const auto& [planes, blocks] : stages) {
    for (int block = 0; block < blocks; ++block) {
      for (const auto& shape : Shapes{{planes, in_channels, 1, 1}, {planes}, {planes}, {planes, planes, 3, 3},
                                      {planes}, {planes}, {planes * 4, planes, 1, 1}, {planes * 4}, {planes * 4}}) {
        shapes.push_back(shape);
      }
      if (block == 0) {  // downsample
        shapes.push_back({planes * 4, in_channels, 1, 1});
        shapes.push_back({planes * 4});
        shapes.push_back({planes * 4});
      }
      in_channels = planes * 4;
    }
  }
  shapes.push_back({1000, 2048});
  shapes.push_back({1000});
  return shapes;
}

/// 8 tensors of 4M floats.
inline Shapes large_shapes() { return Shapes(8, std::vector<int64_t>{int64_t{1} << 22}); }

/// The in-place floor's first step, what any clip must do besides the two passes: visit every
/// parameter and read its gradient's data pointer, element count and dtype through LibTorch's
/// own accessors, into `runs` (one run per gradient; no checks).
inline void gather_runs(const std::vector<at::Tensor>& params, std::vector<torchkit::detail::clip::Run>& runs) {
  runs.resize(params.size());
  for (std::size_t k = 0; k < params.size(); ++k) {
    const at::Tensor& grad = params[k].grad();
    runs[k] = torchkit::detail::clip::Run{grad.data_ptr(), grad.numel(), k, grad.scalar_type()};
  }
}

}  // namespace torchkit_bench
