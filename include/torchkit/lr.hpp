#pragma once
/// @file lr.hpp
/// tip 7  namespace torchkit::lr: PyTorch's learning-rate scheduler family
/// (`torch.optim.lr_scheduler`) for LibTorch optimizers, with Python's argument names,
/// defaults, errors and values (the same recursive "chainable" formulas, so the learning rates
/// agree with Python's to the last bits).
///
///     torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
///     torchkit::lr::StepLR scheduler(optimizer, 10, 0.1);   // lr_scheduler.StepLR(optimizer, 10, 0.1)
///     for (int epoch = 0; epoch < 30; ++epoch) {
///       train(...);
///       scheduler.step();
///     }
///
/// Every scheduler takes the optimizer first and records each parameter group's initial lr
/// the way Python does (`param_group['initial_lr']`): the first scheduler of an optimizer
/// records it, later ones read it, so that chained and sequential schedules start from the
/// same base. LibTorch's parameter groups have no room for it, so torchkit keeps it beside the
/// optimizer while any scheduler of that optimizer is alive.
///
/// Not carried over from Python: `last_epoch` and `verbose` constructor arguments (resume with
/// `load()` instead), and `step(epoch)` except for CosineAnnealingWarmRestarts. Where Python
/// would leave a scheduler half-updated by an error (e.g. OneCycleLR stepped too often), the
/// torchkit scheduler throws before changing anything.
///
/// The family lives in include/torchkit/lr/: scheduler.hpp (the base), decay.hpp, lambda.hpp,
/// cyclic.hpp, composite.hpp, plateau.hpp and swa.hpp (SWALR); this header includes them all.

#include <torchkit/lr/scheduler.hpp>
#include <torchkit/lr/decay.hpp>
#include <torchkit/lr/lambda.hpp>
#include <torchkit/lr/cyclic.hpp>
#include <torchkit/lr/composite.hpp>
#include <torchkit/lr/plateau.hpp>
#include <torchkit/lr/swa.hpp>
