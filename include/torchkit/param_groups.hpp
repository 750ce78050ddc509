#pragma once
/// @file param_groups.hpp
/// tip 9  ParamGroupBuilder (not written yet).

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
