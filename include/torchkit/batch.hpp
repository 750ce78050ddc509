#pragma once
/// @file batch.hpp
/// tip 4  to_batch, from_batch, image_to_batch, images_to_batch (not written yet).

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
