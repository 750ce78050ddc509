// A const scheduler cannot be stepped by a composite.
// expect: a const scheduler cannot be stepped by SequentialLR or ChainedScheduler
#include <torchkit/lr.hpp>

void compose(torch::optim::Optimizer& optimizer) {
  const torchkit::lr::LinearLR warmup(optimizer, 0.1, 1.0, 5);
  torchkit::lr::CosineAnnealingLR cosine(optimizer, 95);
  torchkit::lr::SequentialLR scheduler(optimizer, {warmup, cosine}, {5});
}
