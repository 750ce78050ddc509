#pragma once
/// @file opencv.hpp
/// tip 4  cv::Mat adapters (not written yet). Include it explicitly; it needs OpenCV.

#include <torchkit/batch.hpp>
