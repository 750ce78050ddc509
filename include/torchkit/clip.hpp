#pragma once
/// @file clip.hpp
/// tip 3  clip_grad_norm_, clip_grad_value_, grad_norm, ClipGrad (not written yet).

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
