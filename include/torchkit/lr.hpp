#pragma once
/// @file lr.hpp
/// tip 7  namespace torchkit::lr: the scheduler family (not written yet).

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
