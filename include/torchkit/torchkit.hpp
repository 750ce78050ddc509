#pragma once
/// @file torchkit.hpp
/// The umbrella header: every torchkit feature.
///
///     #include <torchkit/torchkit.hpp>
///
/// `torchkit/opencv.hpp` (cv::Mat adapters) is included too when TORCHKIT_WITH_OPENCV is
/// defined to 1; otherwise include it yourself where OpenCV is available.

#include <torchkit/version.hpp>
#include <torchkit/error.hpp>
#include <torchkit/concepts.hpp>

#include <torchkit/devices.hpp>
#include <torchkit/summary.hpp>
#include <torchkit/capture.hpp>
#include <torchkit/clip.hpp>
#include <torchkit/amp.hpp>
#include <torchkit/batch.hpp>
#include <torchkit/one_hot.hpp>
#include <torchkit/grad_mode.hpp>
#include <torchkit/memory.hpp>
#include <torchkit/lr.hpp>
#include <torchkit/name_pattern.hpp>
#include <torchkit/freeze.hpp>
#include <torchkit/param_groups.hpp>
#include <torchkit/averaging.hpp>
#include <torchkit/checkpoint.hpp>
#include <torchkit/distributed.hpp>
#include <torchkit/format.hpp>

#if defined(TORCHKIT_WITH_OPENCV) && TORCHKIT_WITH_OPENCV
#include <torchkit/opencv.hpp>
#endif
