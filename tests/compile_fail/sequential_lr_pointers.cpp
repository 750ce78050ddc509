// SequentialLR with pointers to schedulers: Python passes the objects themselves.
// expect: pass the scheduler itself .*not a raw pointer
#include <torchkit/lr.hpp>

void compose(torch::optim::Optimizer& optimizer) {
  torchkit::lr::LinearLR warmup(optimizer, 0.1, 1.0, 5);
  torchkit::lr::CosineAnnealingLR cosine(optimizer, 95);
  torchkit::lr::SequentialLR scheduler(optimizer, {&warmup, &cosine}, {5});
}
