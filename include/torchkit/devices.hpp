#pragma once
/// @file devices.hpp
/// tip 1  VisibleDevices, parse_device_list, best_device (not written yet).

#include <torchkit/concepts.hpp>
#include <torchkit/error.hpp>
