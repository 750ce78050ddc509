#pragma once
/// @file batch.hpp
/// tip 4  to_batch, from_batch, image_to_batch, images_to_batch.
///
/// A model trained on `[N, C, H, W]` batches gets one decoded image `[H, W, C]` (BGR uint8 from
/// `cv2.imread`) at test time. The Python way is `image.unsqueeze(0)` (or `view(1, *size)`,
/// `np.newaxis`) plus, in practice, `permute`, `float()`, `/ 255` and a per-channel normalisation:
/// five or six full passes over the image. `image_to_batch` does all of it in one pass.

#include <torchkit/detail/shape.hpp>
#include <torchkit/detail/config.hpp>
#include <torchkit/detail/image_kernel.hpp>
#include <torchkit/error.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace torchkit {

/// Adds the leading batch dimension: `[C, H, W]` → `[1, C, H, W]`. A view (no copy), like
/// Python's `sample.unsqueeze(0)` or `sample.view(1, *sample.size())`.
///
/// @throws Error for an undefined tensor.
///
///     auto batch = torchkit::to_batch(image);  // [3, 224, 224] -> [1, 3, 224, 224]
[[nodiscard]] inline at::Tensor to_batch(const at::Tensor& sample) {
  TORCHKIT_CHECK(sample.defined(), "to_batch: the sample is an undefined tensor");
  return sample.unsqueeze(0);
}

/// Removes the leading batch dimension of a batch of one: `[1, C, H, W]` → `[C, H, W]`. A view
/// (no copy), like Python's `batch.squeeze(0)`, except that it refuses a batch of several
/// samples instead of silently returning it unchanged.
///
/// @throws Error for an undefined or 0-dim tensor, and unless the batch size is 1.
///
///     auto image = torchkit::from_batch(model->forward(torchkit::to_batch(input)));
[[nodiscard]] inline at::Tensor from_batch(const at::Tensor& batch) {
  TORCHKIT_CHECK(batch.defined(), "from_batch: the batch is an undefined tensor");
  TORCHKIT_CHECK(batch.dim() >= 1, "from_batch: expected a batch [1, ...], got a 0-dim tensor");
  TORCHKIT_CHECK(batch.size(0) == 1,
                 "from_batch: the batch holds {} samples (shape {}); expected exactly 1 "
                 "(take one sample with batch[i] or batch.unbind(0))",
                 batch.size(0), detail::shape_string(batch.sizes()));
  return batch.select(0, 0);
}

/// How image_to_batch turns pixels into model input:
/// `output[c] = (pixel[c] * scale - mean[c]) / std[c]`, where `c` is the OUTPUT channel (after
/// the optional BGR → RGB swap), as torchvision's `ToTensor()` + `Normalize(mean, std)` and
/// OpenCV's `blobFromImage(image, scale, size, mean, swapRB)` order them.
///
///     torchkit::ImageOptions imagenet{.bgr_to_rgb = true,
///                                     .mean = {0.485, 0.456, 0.406},
///                                     .std = {0.229, 0.224, 0.225}};
struct ImageOptions {
  /// Reverse the first three channels (OpenCV's BGR / BGRA to RGB / RGBA). No effect on 1 channel.
  bool bgr_to_rgb = false;
  /// Multiplies every pixel first (1/255 maps uint8 to [0, 1]; use 1 for float images in [0, 1]).
  double scale = 1.0 / 255;
  /// Subtracted after scaling: empty (0), one value for every channel, or one per channel.
  ::std::vector<double> mean{};
  /// Divides last: empty (1), one value for every channel, or one per channel; never 0.
  ::std::vector<double> std{};
  /// The output dtype: Float (default), Half, BFloat16 or Double.
  at::ScalarType dtype = at::kFloat;
  /// Where the batch is made. CPU (default) keeps the image's own device. A CUDA device uploads
  /// the image as it is (uint8: 4× fewer bytes than float) and normalises it there.
  c10::Device device = at::kCPU;
};

namespace detail {

/// Checks one image and returns a description of its pixels.
inline ImageSource image_source_of(std::string_view function, const at::Tensor& image,
                                   std::string_view which) {
  TORCHKIT_CHECK(image.defined(), "{}: {} is an undefined tensor", function, which);
  TORCHKIT_CHECK(image.layout() == at::kStrided,
                 "{}: {} is not a dense tensor (sparse or another layout); expected a strided tensor",
                 function, which);
  TORCHKIT_CHECK(image.dim() == 3,
                 "{}: {} has shape {} ({} dimensions); expected an image [H, W, C] "
                 "(for a grayscale [H, W] image use unsqueeze(-1))",
                 function, which, shape_string(image.sizes()), image.dim());
  TORCHKIT_CHECK(image.size(0) > 0 && image.size(1) > 0,
                 "{}: {} is empty (shape {}); expected H > 0 and W > 0", function, which,
                 shape_string(image.sizes()));
  const std::int64_t channels = image.size(2);
  TORCHKIT_CHECK(channels == 1 || channels == 3 || channels == 4,
                 "{}: {} has {} channels (shape {}); expected 1, 3 or 4 channels in the last "
                 "dimension of [H, W, C]",
                 function, which, channels, shape_string(image.sizes()));
  TORCHKIT_CHECK(image.scalar_type() == at::kByte || image.scalar_type() == at::kFloat,
                 "{}: {} has dtype {}; expected uint8 (Byte) or float (Float)", function, which,
                 std::string(c10::toString(image.scalar_type())));
  ImageSource source;
  source.dtype = image.scalar_type();
  source.height = image.size(0);
  source.width = image.size(1);
  source.channels = channels;
  source.row_stride = image.stride(0);
  source.pixel_stride = image.stride(1);
  source.channel_stride = image.stride(2);
  return source;
}

/// Checks the options and turns them into the per-channel multiplier and offset of the pass.
inline ImageTransform image_transform_of(std::string_view function, std::int64_t channels,
                                         const ImageOptions& options) {
  TORCHKIT_CHECK(std::isfinite(options.scale), "{}: scale is {}; expected a finite number",
                 function, options.scale);
  const auto check_count = [&](const std::vector<double>& values, std::string_view name) {
    TORCHKIT_CHECK(values.empty() || values.size() == 1 || static_cast<std::int64_t>(values.size()) == channels,
                   "{}: {} has {} values for an image of {} channels; expected 0, 1 or {} "
                   "(one per channel)",
                   function, name, values.size(), channels, channels);
  };
  check_count(options.mean, "mean");
  check_count(options.std, "std");
  for (std::size_t i = 0; i < options.mean.size(); ++i) {
    TORCHKIT_CHECK(std::isfinite(options.mean[i]), "{}: mean[{}] is {}; expected a finite number",
                   function, i, options.mean[i]);
  }
  for (std::size_t i = 0; i < options.std.size(); ++i) {
    TORCHKIT_CHECK(std::isfinite(options.std[i]) && options.std[i] != 0,
                   "{}: std[{}] is {}; every std must be finite and non-zero", function, i,
                   options.std[i]);
  }
  const auto dtype = options.dtype;
  TORCHKIT_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble,
                 "{}: output dtype {} is not supported; expected Float, Half, BFloat16 or Double",
                 function, std::string(c10::toString(dtype)));

  ImageTransform transform;
  transform.channels = static_cast<int>(channels);
  const auto value_of = [](const std::vector<double>& values, std::int64_t channel, double fallback) {
    if (values.empty()) {
      return fallback;
    }
    return values.size() == 1 ? values[0] : values[static_cast<std::size_t>(channel)];
  };
  for (int source = 0; source < transform.channels; ++source) {
    const int destination = options.bgr_to_rgb && channels >= 3 && source < 3 ? 2 - source : source;
    const double mean = value_of(options.mean, destination, 0.0);
    const double deviation = value_of(options.std, destination, 1.0);
    transform.destination[source] = destination;
    transform.multiplier[source] = options.scale / deviation;
    transform.offset[source] = -mean / deviation;
  }
  return transform;
}

/// The device the batch is made on: `options.device`, or the image's own device when
/// `options.device` is the CPU.
inline c10::Device batch_device_of(const at::Tensor& image, const ImageOptions& options) {
  return options.device.is_cpu() ? image.device() : options.device;
}

/// The same computation with ATen operations, for batches made off the CPU (a CUDA device) and
/// for float images that require grad (so that autograd sees it). Also used by the tests as a
/// second, independent implementation.
inline at::Tensor images_to_batch_with_aten_ops(std::span<const at::Tensor> images,
                                                const ImageTransform& transform,
                                                const ImageOptions& options, c10::Device device) {
  const std::int64_t channels = transform.channels;
  std::vector<double> multiplier(static_cast<std::size_t>(channels));
  std::vector<double> offset(static_cast<std::size_t>(channels));
  std::vector<std::int64_t> source_of(static_cast<std::size_t>(channels));
  for (int source = 0; source < transform.channels; ++source) {
    const auto destination = static_cast<std::size_t>(transform.destination[source]);
    multiplier[destination] = transform.multiplier[source];
    offset[destination] = transform.offset[source];
    source_of[destination] = source;
  }
  const auto compute = options.dtype == at::kDouble ? at::kDouble : at::kFloat;
  const auto coefficients = [&](const std::vector<double>& values) {
    return at::tensor(values, at::TensorOptions().dtype(at::kDouble))
        .to(compute)
        .to(device)
        .view({channels, 1, 1});
  };
  const at::Tensor multiplier_tensor = coefficients(multiplier);
  const at::Tensor offset_tensor = coefficients(offset);
  const bool reorder = !std::is_sorted(source_of.begin(), source_of.end());
  const at::Tensor order = at::tensor(source_of, at::TensorOptions().dtype(at::kLong)).to(device);

  std::vector<at::Tensor> batch;
  batch.reserve(images.size());
  for (const at::Tensor& image : images) {
    // Upload as it is: a uint8 image is 4× fewer bytes than its float batch.
    at::Tensor planes = image.to(device).permute({2, 0, 1});
    if (reorder) {
      planes = planes.index_select(0, order);
    }
    batch.push_back((planes.to(compute) * multiplier_tensor + offset_tensor).to(options.dtype));
  }
  return at::stack(batch).contiguous();
}

/// Writes every image into `batch` ([N, C, H, W], contiguous, on the CPU) in one fused pass,
/// parallel over rows.
template <class Out>
void fill_batch_on_cpu(std::span<const ImageSource> sources, const ImageTransform& transform,
                       Out* batch) {
  const std::int64_t height = sources[0].height;
  const std::int64_t width = sources[0].width;
  const std::int64_t image_size = transform.channels * height * width;
  const std::int64_t rows = static_cast<std::int64_t>(sources.size()) * height;
  // At least ~64K values per task, so that small images stay on one thread.
  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 16) / (width * transform.channels));
  at::parallel_for(0, rows, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end;) {
      const std::int64_t image = row / height;
      const std::int64_t y_begin = row % height;
      const std::int64_t y_end = std::min(height, y_begin + (end - row));
      convert_image_rows_for<Out>(sources[static_cast<std::size_t>(image)], transform,
                                  batch + image * image_size, y_begin, y_end);
      row += y_end - y_begin;
    }
  });
}

inline at::Tensor images_to_batch_impl(std::string_view function, std::span<const at::Tensor> images,
                                       const ImageOptions& options) {
  TORCHKIT_CHECK(!images.empty(), "{}: no images; expected at least one [H, W, C] image", function);
  std::vector<ImageSource> sources;
  sources.reserve(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) {
    const std::string which = images.size() == 1 ? std::string("the image") : fmt::format("image {}", i);
    sources.push_back(image_source_of(function, images[i], which));
    if (i > 0) {
      TORCHKIT_CHECK(images[i].sizes() == images[0].sizes(),
                     "{}: image {} has shape {} but image 0 has {}; every image of a batch must "
                     "have the same height, width and channel count",
                     function, i, shape_string(images[i].sizes()), shape_string(images[0].sizes()));
      TORCHKIT_CHECK(images[i].device() == images[0].device(),
                     "{}: image {} is on {} but image 0 is on {}; every image must be on one device",
                     function, i, images[i].device().str(), images[0].device().str());
    }
  }
  const ImageTransform transform = image_transform_of(function, sources[0].channels, options);
  const c10::Device device = batch_device_of(images[0], options);

  bool needs_autograd = false;
  for (const at::Tensor& image : images) {
    needs_autograd = needs_autograd || (image.requires_grad() && at::GradMode::is_enabled());
  }
  if (!device.is_cpu() || !images[0].is_cpu() || needs_autograd) {
    TORCHKIT_CHECK(!device.is_cuda() || at::hasCUDA(),
                   "{}: device {} was asked for, but this LibTorch has no CUDA support or no GPU",
                   function, device.str());
    return images_to_batch_with_aten_ops(images, transform, options, device);
  }

  const std::int64_t count = static_cast<std::int64_t>(images.size());
  at::Tensor batch = at::empty({count, sources[0].channels, sources[0].height, sources[0].width},
                               at::TensorOptions().dtype(options.dtype));
  for (std::size_t i = 0; i < images.size(); ++i) {
    sources[i].data = images[i].data_ptr();
  }
  switch (options.dtype) {
    case at::kFloat:
      fill_batch_on_cpu<float>(sources, transform, batch.data_ptr<float>());
      break;
    case at::kDouble:
      fill_batch_on_cpu<double>(sources, transform, batch.data_ptr<double>());
      break;
    case at::kHalf:
      fill_batch_on_cpu<c10::Half>(sources, transform, batch.data_ptr<c10::Half>());
      break;
    default:  // BFloat16; image_transform_of rejected everything else
      fill_batch_on_cpu<c10::BFloat16>(sources, transform, batch.data_ptr<c10::BFloat16>());
      break;
  }
  return batch;
}

}  // namespace detail

/// A decoded image `[H, W, C]` to a model input `[1, C, H, W]`: HWC → CHW, uint8 → float,
/// `(pixel * scale - mean[c]) / std[c]` and the optional BGR → RGB swap, in one fused pass (on the
/// CPU: one read of each pixel, one sequential write of each output value, parallel over rows).
///
/// The Python equivalent is
/// `((torch.from_numpy(img).permute(2, 0, 1).float() * scale - mean) / std).unsqueeze(0)`
/// (with `img[..., ::-1]` first for BGR → RGB), or torchvision's `Normalize(mean, std)(ToTensor()(img)).unsqueeze(0)`.
///
/// @param hwc      uint8 or float, 1, 3 or 4 channels, any strides: a crop `image.slice(0, y0, y1)
///                 .slice(1, x0, x1)` is read in place, without a copy.
/// @param options  scale, mean, std, channel swap, output dtype and device (see ImageOptions).
/// @returns a new contiguous `[1, C, H, W]` tensor of `options.dtype`, on `options.device` (or
///          on the image's device when that is the CPU). It does not track gradients unless the
///          image requires grad.
/// @throws Error for an undefined or empty image, a channel count other than 1, 3 or 4, a dtype
///         other than uint8/float, a mean or std of the wrong length, a std of 0, a non-finite
///         option or an unsupported output dtype.
///
///     at::Tensor image = decode("cat.png");  // [H, W, 3] uint8, BGR (see opencv.hpp for cv::Mat)
///     auto input = torchkit::image_to_batch(image, {.bgr_to_rgb = true,
///                                                   .mean = {0.485, 0.456, 0.406},
///                                                   .std = {0.229, 0.224, 0.225}});
///     auto logits = model->forward(input);  // input: [1, 3, H, W] float
[[nodiscard]] inline at::Tensor image_to_batch(const at::Tensor& hwc, const ImageOptions& options = {}) {
  return detail::images_to_batch_impl("image_to_batch", std::span<const at::Tensor>(&hwc, 1), options);
}

/// Several images of one size `[H, W, C]` to a batch `[N, C, H, W]`, each as image_to_batch does
/// it, written straight into the batch (no per-image tensors, no `at::stack` copy). The Python
/// equivalent is `torch.stack([transform(img) for img in images])`.
///
/// @throws Error for an empty list, images of different shapes or devices, and everything
///         image_to_batch rejects (the message names the image's position).
///
///     std::vector<at::Tensor> frames = ...;  // each [480, 640, 3] uint8
///     auto batch = torchkit::images_to_batch(frames, {.bgr_to_rgb = true});  // [N, 3, 480, 640]
[[nodiscard]] inline at::Tensor images_to_batch(std::span<const at::Tensor> hwcs, const ImageOptions& options = {}) {
  return detail::images_to_batch_impl("images_to_batch", hwcs, options);
}

/// images_to_batch for a braced list: `images_to_batch({left, right}, options)`.
[[nodiscard]] inline at::Tensor images_to_batch(std::initializer_list<at::Tensor> hwcs,
                                                const ImageOptions& options = {}) {
  return detail::images_to_batch_impl("images_to_batch",
                                      std::span<const at::Tensor>(hwcs.begin(), hwcs.size()), options);
}

}  // namespace torchkit
