#pragma once
/// @file freeze.hpp
/// tip 8  freeze, unfreeze, FreezeByName, requires_grad_report, trainable_parameters (not written yet).

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
