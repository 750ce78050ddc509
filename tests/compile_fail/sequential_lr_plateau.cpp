// ReduceLROnPlateau steps on a metric; Python does not allow it in SequentialLR either.
// expect: ReduceLROnPlateau steps on a metric and cannot be part of SequentialLR or ChainedScheduler
#include <torchkit/lr.hpp>

void compose(torch::optim::Optimizer& optimizer) {
  torchkit::lr::ReduceLROnPlateau plateau(optimizer);
  torchkit::lr::ChainedScheduler scheduler({plateau});
}
