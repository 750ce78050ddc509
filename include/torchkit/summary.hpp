#pragma once
/// @file summary.hpp
/// tip 2  Summary, summary() (not written yet).

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
