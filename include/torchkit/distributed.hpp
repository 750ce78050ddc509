#pragma once
/// @file distributed.hpp
/// c10d helpers (not written yet).

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
