#pragma once
/// @file memory.hpp
/// tip 6  empty_cache, memory_stats, reset_peak_memory_stats (not written yet).

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
