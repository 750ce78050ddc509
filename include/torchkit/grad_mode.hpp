#pragma once
/// @file grad_mode.hpp
/// tip 6  NoGradScope, InferenceScope, EvalScope (not written yet).

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
