#pragma once
/// @file format.hpp
/// fmt::formatter specialisations (not written yet).

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
