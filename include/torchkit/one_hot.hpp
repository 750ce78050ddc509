#pragma once
/// @file one_hot.hpp
/// tip 5  one_hot, OneHot (not written yet).

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
