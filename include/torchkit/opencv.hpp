#pragma once
/// @file opencv.hpp
/// tip 4  cv::Mat adapters: image_to_batch straight from a `cv::Mat` (as `cv::imread` returns it),
/// as_tensor (a Mat's pixels as a tensor, no copy) and to_mat (a tensor back to a Mat).
///
/// The only torchkit header that needs OpenCV (core). Include it explicitly where OpenCV is
/// available (or define TORCHKIT_WITH_OPENCV=1 before including torchkit.hpp).
///
///     cv::Mat bgr = cv::imread("cat.png");                 // [h, w, c] BGR uint8
///     auto input = torchkit::image_to_batch(bgr, {.bgr_to_rgb = true});  // [1, c, h, w] float

#include <torchkit/batch.hpp>
#include <torchkit/detail/shape.hpp>
#include <torchkit/error.hpp>

#include <ATen/ATen.h>
#include <opencv2/core.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace torchkit {

/// How to_mat reads a 3-d tensor: `[H, W, C]`, `[C, H, W]`, or `automatic` (decided by which
/// end dimension is a channel count of 1, 3 or 4; an error when both or neither are).
enum class ImageLayout {
  automatic,  ///< from the shape
  hwc,        ///< `[H, W, C]`
  chw,        ///< `[C, H, W]`
  Auto = automatic,  ///< the earlier spelling, kept so that existing code compiles
  HWC = hwc,         ///< the earlier spelling, kept so that existing code compiles
  CHW = chw,         ///< the earlier spelling, kept so that existing code compiles
};

namespace detail {

/// The tensor dtype of an OpenCV depth, or Undefined where there is none.
inline at::ScalarType dtype_of_cv_depth(int depth) {
  switch (depth) {
    case CV_8U: return at::kByte;
    case CV_8S: return at::kChar;
    case CV_16S: return at::kShort;
    case CV_32S: return at::kInt;
    case CV_32F: return at::kFloat;
    case CV_64F: return at::kDouble;
    case CV_16F: return at::kHalf;
    default: return at::ScalarType::Undefined;
  }
}

/// The Mat's pixels as a `[rows, cols, channels]` tensor with the Mat's strides (any step, so a
/// ROI too). No copy and no ownership: the Mat's data must outlive the tensor.
inline at::Tensor mat_view(std::string_view function, const cv::Mat& mat) {
  TORCHKIT_CHECK(!mat.empty(), "{}: the Mat is empty ({}x{}, type {}); expected an image", function,
                 mat.rows, mat.cols, cv::typeToString(mat.type()));
  TORCHKIT_CHECK(mat.dims == 2, "{}: the Mat has {} dimensions; expected a 2-d image Mat", function, mat.dims);
  const at::ScalarType dtype = dtype_of_cv_depth(mat.depth());
  TORCHKIT_CHECK(dtype != at::ScalarType::Undefined, "{}: the Mat's type {} has no tensor dtype", function,
                 cv::typeToString(mat.type()));
  const auto element = static_cast<std::int64_t>(mat.elemSize1());
  const auto row_step = static_cast<std::int64_t>(mat.step[0]);
  TORCHKIT_CHECK(row_step % element == 0,
                 "{}: the Mat's row step of {} bytes is not a multiple of its element size {}", function,
                 row_step, element);
  const std::int64_t channels = mat.channels();
  return at::from_blob(mat.data, {mat.rows, mat.cols, channels}, {row_step / element, channels, 1},
                       at::TensorOptions().dtype(dtype));
}

/// Checks what image_to_batch accepts, with OpenCV's names for the types.
inline void check_image_mat(std::string_view function, const cv::Mat& mat, std::string_view which) {
  TORCHKIT_CHECK(!mat.empty(), "{}: {} is empty ({}x{}); expected an image", function, which, mat.rows, mat.cols);
  TORCHKIT_CHECK(mat.depth() == CV_8U || mat.depth() == CV_32F,
                 "{}: {} has type {}; expected CV_8U or CV_32F pixels (CV_8UC3, CV_32FC3, ...)", function,
                 which, cv::typeToString(mat.type()));
  TORCHKIT_CHECK(mat.channels() == 1 || mat.channels() == 3 || mat.channels() == 4,
                 "{}: {} has {} channels (type {}); expected 1, 3 or 4", function, which, mat.channels(),
                 cv::typeToString(mat.type()));
}

inline int cv_depth_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kByte:
    case at::kBool: return CV_8U;
    case at::kChar: return CV_8S;
    case at::kShort: return CV_16S;
    case at::kInt: return CV_32S;
    case at::kDouble: return CV_64F;
    case at::kFloat:
    case at::kHalf:
    case at::kBFloat16: return CV_32F;
    default: return -1;
  }
}

}  // namespace detail

/// A Mat's pixels as an `[H, W, C]` tensor that shares the Mat's memory (no copy, any step, so a
/// ROI works) and keeps the Mat's buffer alive as long as the tensor lives. Like Python's
/// `torch.from_numpy(cv2.imread(path))`.
///
/// @throws Error for an empty Mat, a Mat of more than 2 dimensions, or a depth without a tensor
///         dtype (CV_16U).
///
///     cv::Mat bgr = cv::imread("cat.png");
///     at::Tensor hwc = torchkit::as_tensor(bgr);  // [h, w, 3] uint8, same memory
[[nodiscard]] inline at::Tensor as_tensor(const cv::Mat& mat) {
  const at::Tensor view = detail::mat_view("as_tensor", mat);
  auto owner = std::make_shared<cv::Mat>(mat);  // shares (and so keeps) the Mat's buffer
  return at::from_blob(
      mat.data, view.sizes(), view.strides(), [owner](void*) {}, view.options());
}

/// image_to_batch for a `cv::Mat` (CV_8U or CV_32F, 1, 3 or 4 channels, any step): the Mat's
/// pixels are read in place by the fused pass, without a copy of the Mat first.
/// OpenCV's nearest equivalent is `cv::dnn::blobFromImage(mat, scale, {}, mean, swapRB)`, which
/// has no per-channel std and makes several passes.
///
/// @throws Error for an empty Mat, another depth or channel count, and everything the tensor
///         image_to_batch rejects.
///
///     cv::Mat bgr = cv::imread("cat.png");
///     auto input = torchkit::image_to_batch(bgr(cv::Rect(10, 10, 224, 224)),  // a ROI, no copy
///                                           {.bgr_to_rgb = true, .mean = {0.485, 0.456, 0.406},
///                                            .std = {0.229, 0.224, 0.225}});
[[nodiscard]] inline at::Tensor image_to_batch(const cv::Mat& image, const ImageOptions& options = {}) {
  detail::check_image_mat("image_to_batch", image, "the Mat");
  const at::Tensor view = detail::mat_view("image_to_batch", image);
  return detail::images_to_batch_impl("image_to_batch", std::span<const at::Tensor>(&view, 1), options);
}

/// images_to_batch for Mats of one channel count and one size (or sizes a resize / center_crop
/// makes equal): `[N, C, H, W]`, each Mat read in place.
/// OpenCV's nearest equivalent is `cv::dnn::blobFromImages`.
///
///     std::vector<cv::Mat> frames = ...;
///     auto batch = torchkit::images_to_batch(std::span<const cv::Mat>(frames), {.bgr_to_rgb = true});
[[nodiscard]] inline at::Tensor images_to_batch(std::span<const cv::Mat> images, const ImageOptions& options = {}) {
  std::vector<at::Tensor> views;
  views.reserve(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) {
    detail::check_image_mat("images_to_batch", images[i], fmt::format("Mat {}", i));
    views.push_back(detail::mat_view("images_to_batch", images[i]));
  }
  return detail::images_to_batch_impl("images_to_batch", views, options);
}

/// letterbox for a `cv::Mat` (CV_8U or CV_32F, 1, 3 or 4 channels, any step), read in place: the
/// detector's `letterbox(cv2.imread(path), (640, 640))` + to-tensor lines in one pass.
///
/// @throws Error for an empty Mat, another depth or channel count, and everything the tensor
///         letterbox rejects.
///
///     cv::Mat frame = cv::imread("street.jpg");
///     auto boxed = torchkit::letterbox(frame, {.image = {.bgr_to_rgb = true}});  // [1, 3, 640, 640]
///     auto boxes = boxed.to_original(detections);                              // frame pixels
[[nodiscard]] inline Letterbox letterbox(const cv::Mat& image, const LetterboxOptions& options = {}) {
  detail::check_image_mat("letterbox", image, "the Mat");
  const at::Tensor view = detail::mat_view("letterbox", image);
  return detail::letterbox_impl(view, options);
}

/// images_to_batch for a `std::vector<cv::Mat>`.
[[nodiscard]] inline at::Tensor images_to_batch(const std::vector<cv::Mat>& images, const ImageOptions& options = {}) {
  return images_to_batch(std::span<const cv::Mat>(images), options);
}

/// A tensor image back to a new `cv::Mat` (a copy with its own buffer, continuous), values
/// unchanged (no de-normalisation, no channel swap).
///
/// @param chw_or_hwc  `[H, W, C]`, `[C, H, W]`, a batch of one `[1, C, H, W]` (as image_to_batch
///                    returns), or `[H, W]`; on any device (a GPU tensor is copied to the host,
///                    which waits for it).
/// @param layout      how to read a 3-d tensor; `automatic` looks for the channel count (1, 3 or 4) at
///                    the end, then at the front, and throws when both ends could be channels.
/// @returns CV_8U for uint8 and bool, CV_8S, CV_16S, CV_32S, CV_64F for int8, int16, int32,
///          double, and CV_32F for float, half and bfloat16; as many channels as the tensor has.
/// @throws Error for an undefined or empty tensor, a batch of more than one image, an ambiguous
///         or unsupported shape, more than CV_CN_MAX channels, or an int64 tensor.
///
///     cv::Mat shown = torchkit::to_mat(batch.mul(255).clamp(0, 255).to(at::kByte));
[[nodiscard]] inline cv::Mat to_mat(const at::Tensor& chw_or_hwc, ImageLayout layout = ImageLayout::automatic) {
  TORCHKIT_CHECK(chw_or_hwc.defined(), "to_mat: the tensor is undefined");
  at::Tensor image = chw_or_hwc;
  const std::string shape = detail::shape_string(image.sizes());
  const auto is_channel_count = [](std::int64_t size) { return size == 1 || size == 3 || size == 4; };
  if (image.dim() == 4) {
    TORCHKIT_CHECK(image.size(0) == 1,
                   "to_mat: the tensor is a batch of {} images (shape {}); expected one image (take batch[i])",
                   image.size(0), shape);
    image = image.select(0, 0);
    if (layout == ImageLayout::automatic) {
      layout = ImageLayout::chw;  // a batch is [N, C, H, W]
    }
  } else if (image.dim() == 2) {
    TORCHKIT_CHECK(layout != ImageLayout::chw, "to_mat: a 2-d tensor (shape {}) cannot be [C, H, W]", shape);
    image = image.unsqueeze(-1);
    layout = ImageLayout::hwc;
  }
  TORCHKIT_CHECK(image.dim() == 3,
                 "to_mat: the tensor has shape {}; expected an image [H, W, C], [C, H, W], [1, C, H, W] or [H, W]",
                 shape);
  if (layout == ImageLayout::automatic) {
    const bool channels_last = is_channel_count(image.size(2));
    const bool channels_first = is_channel_count(image.size(0));
    TORCHKIT_CHECK(channels_last != channels_first,
                   "to_mat: cannot tell the channels of shape {}: {}; pass ImageLayout::hwc or ImageLayout::chw",
                   shape,
                   channels_last ? "both [H, W, C] and [C, H, W] fit"
                                 : "neither end is a channel count of 1, 3 or 4");
    layout = channels_last ? ImageLayout::hwc : ImageLayout::chw;
  }
  if (layout == ImageLayout::chw) {
    image = image.permute({1, 2, 0});
  }
  const std::int64_t height = image.size(0);
  const std::int64_t width = image.size(1);
  const std::int64_t channels = image.size(2);
  TORCHKIT_CHECK(height > 0 && width > 0 && channels > 0, "to_mat: the tensor is empty (shape {})", shape);
  TORCHKIT_CHECK(channels <= CV_CN_MAX, "to_mat: {} channels (shape {}) is more than OpenCV's {}", channels,
                 shape, CV_CN_MAX);
  const int depth = detail::cv_depth_of(image.scalar_type());
  TORCHKIT_CHECK(depth >= 0,
                 "to_mat: dtype {} has no OpenCV depth; expected uint8, int8, int16, int32, float, "
                 "double, half, bfloat16 or bool",
                 std::string(c10::toString(image.scalar_type())));
  TORCHKIT_CHECK(height <= INT32_MAX && width <= INT32_MAX, "to_mat: shape {} is too large for a cv::Mat", shape);

  cv::Mat mat(static_cast<int>(height), static_cast<int>(width), CV_MAKETYPE(depth, static_cast<int>(channels)));
  const at::Tensor destination = detail::mat_view("to_mat", mat);
  // One copy: from any device, any strides, converting half/bfloat16 to float.
  destination.copy_(image.detach());
  return mat;
}

}  // namespace torchkit
