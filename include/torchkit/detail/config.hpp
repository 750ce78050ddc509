#pragma once
/// @file detail/config.hpp
/// The one place where differences between LibTorch versions and build flavours are handled.
///
/// - TORCHKIT_TORCH_VERSION       LibTorch's version as major * 10000 + minor * 100 + patch.
/// - TORCHKIT_TORCH_AT_LEAST(M,m) true for LibTorch M.m or newer.
/// - TORCHKIT_WITH_CUDA           1 when LibTorch's CUDA libraries are linked. The CMake package
///                                defines it when the Torch it finds was built with CUDA;
///                                single-header users define it themselves. 0 otherwise: then no
///                                CUDA symbol is ever referenced.

#include <torch/version.h>

#define TORCHKIT_TORCH_VERSION (TORCH_VERSION_MAJOR * 10000 + TORCH_VERSION_MINOR * 100 + TORCH_VERSION_PATCH)
#define TORCHKIT_TORCH_AT_LEAST(major, minor) (TORCHKIT_TORCH_VERSION >= ((major) * 10000 + (minor) * 100))

#ifndef TORCHKIT_WITH_CUDA
#define TORCHKIT_WITH_CUDA 0
#endif

static_assert(TORCHKIT_TORCH_AT_LEAST(1, 13), "torchkit needs LibTorch 1.13 or newer");
