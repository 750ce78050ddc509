#pragma once
/// @file batch.hpp
/// tip 4  to_batch, from_batch, image_to_batch, images_to_batch.
///
/// A model trained on `[N, C, H, W]` batches gets one decoded image `[H, W, C]` (BGR uint8 from
/// `cv2.imread`) at test time. The Python way is `image.unsqueeze(0)` (or `view(1, *size)`,
/// `np.newaxis`) plus, in practice, `permute`, `float()`, `/ 255` and a per-channel normalisation:
/// five or six full passes over the image. `image_to_batch` does all of it in one pass, and with
/// `ImageOptions::resize` / `center_crop` also torchvision's `Resize` and `CenterCrop` (same
/// numbers as the tensor path of torchvision), computing only the pixels that survive the crop.
/// `letterbox` is the detector's version: scale to fit, pad symmetrically, map boxes back.

#include <torchkit/detail/shape.hpp>
#include <torchkit/detail/config.hpp>
#include <torchkit/detail/image_kernel.hpp>
#include <torchkit/detail/resize_kernel.hpp>
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
#include <optional>
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

/// How a resize computes pixels, with torchvision's names (`InterpolationMode.NEAREST`, ...).
enum class Interpolation {
  nearest,   ///< the nearest input pixel (`floor(i * in / out)`); never antialiased
  bilinear,  ///< linear in each direction (a triangle filter widened by the scale when antialiased)
  bicubic,   ///< Keys' cubic (a = -0.75; a = -0.5 when antialiased, as ATen and PIL); uint8 results clamped
  Nearest = nearest,    ///< the spelling of DESIGN.md, kept as an alias
  Bilinear = bilinear,  ///< the spelling of DESIGN.md, kept as an alias
  Bicubic = bicubic,    ///< the spelling of DESIGN.md, kept as an alias
};

/// torchvision's `Resize`: to a fixed `size` (`{height, width}`), or the shorter side to
/// `shorter_side` keeping the aspect ratio (`Resize(256)`; the longer side is
/// `int(shorter_side * long / short)`, then capped at `max_size` as torchvision does). Exactly one
/// of `shorter_side` and `size`. A uint8 image is resized in float and rounded back to 0..255 (half
/// to even), as torchvision's `F.resize` returns a uint8 tensor, before scale / mean / std.
///
///     torchkit::Resize{.shorter_side = 256}                     // transforms.Resize(256)
///     torchkit::Resize{.size = {{224, 224}}, .interpolation = torchkit::Interpolation::bicubic}
struct Resize {
  ::std::optional<std::int64_t> shorter_side{};           ///< `Resize(int)`: the shorter side's new length
  ::std::optional<std::array<std::int64_t, 2>> size{};    ///< `Resize((h, w))`: `{height, width}`
  ::std::optional<std::int64_t> max_size{};               ///< with shorter_side: cap on the longer side
  Interpolation interpolation = Interpolation::bilinear;  ///< torchvision's default
  bool antialias = true;  ///< as torchvision >= 0.17 (and PIL); ignored for nearest
};

/// How image_to_batch turns pixels into model input:
/// `output[c] = (pixel[c] * scale - mean[c]) / std[c]`, where `c` is the OUTPUT channel (after
/// the optional BGR → RGB swap), as torchvision's `ToTensor()` + `Normalize(mean, std)` and
/// OpenCV's `blobFromImage(image, scale, size, mean, swapRB)` order them.
///
///     torchkit::ImageOptions imagenet{.bgr_to_rgb = true,
///                                     .mean = {0.485, 0.456, 0.406},
///                                     .std = {0.229, 0.224, 0.225}};
struct ImageOptions {
  /// torchvision's `Resize`, applied first (none: the image's own size).
  ::std::optional<Resize> resize{};
  /// torchvision's `CenterCrop((height, width))` after the resize: the window at
  /// `round((H - height) / 2)` (half to even, as Python's round), and zero pixels around the image
  /// where the crop is larger (`(crop - H) // 2` before, the rest after). Without a resize and
  /// inside the image it is a view: no pixel outside the crop is read.
  ::std::optional<std::array<std::int64_t, 2>> center_crop{};
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
  const bool looks_chw = image.size(0) == 1 || image.size(0) == 3 || image.size(0) == 4;
  TORCHKIT_CHECK(channels == 1 || channels == 3 || channels == 4,
                 "{}: {} has {} channels (shape {}); expected 1, 3 or 4 channels in the last "
                 "dimension of [H, W, C]{}",
                 function, which, channels, shape_string(image.sizes()),
                 looks_chw ? "; it looks like a CHW tensor [C, H, W]: pass image.permute({1, 2, 0}) (the decoded-image "
                             "layout [H, W, C] is expected)"
                           : "");
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

/// The resize of one image, or none: the output size of Resize for an `height x width` image,
/// checked (torchvision's `_compute_resized_output_size`).
inline std::array<std::int64_t, 2> resized_size_of(std::string_view function, const Resize& resize,
                                                   std::int64_t height, std::int64_t width) {
  TORCHKIT_CHECK(resize.shorter_side.has_value() != resize.size.has_value(),
                 "{}: resize has {}; expected exactly one of shorter_side (Resize(int)) and size "
                 "(Resize((h, w)))",
                 function, resize.size.has_value() ? "both shorter_side and size" : "neither shorter_side nor size");
  const auto mode = static_cast<int>(resize.interpolation);
  TORCHKIT_CHECK(mode >= 0 && mode <= 2,
                 "{}: resize.interpolation is {}, not an Interpolation; expected nearest, bilinear or bicubic "
                 "(for uint8 and float images alike)",
                 function, mode);
  if (resize.size.has_value()) {
    const auto [h, w] = *resize.size;
    TORCHKIT_CHECK(h > 0 && w > 0, "{}: resize.size is {{{}, {}}}; expected a positive height and width",
                   function, h, w);
    TORCHKIT_CHECK(!resize.max_size.has_value(),
                   "{}: resize.max_size is {} with a fixed size {{{}, {}}}; max_size only applies with "
                   "shorter_side (as torchvision's Resize)",
                   function, *resize.max_size, h, w);
    return {h, w};
  }
  const std::int64_t requested = *resize.shorter_side;
  TORCHKIT_CHECK(requested > 0, "{}: resize.shorter_side is {}; expected a positive length", function, requested);
  const bool wide = width > height;
  const std::int64_t short_side = wide ? height : width;
  const std::int64_t long_side = wide ? width : height;
  std::int64_t new_short = requested;
  auto new_long = static_cast<std::int64_t>(static_cast<double>(requested * long_side) / static_cast<double>(short_side));
  if (resize.max_size.has_value()) {
    const std::int64_t max_size = *resize.max_size;
    TORCHKIT_CHECK(max_size > requested,
                   "{}: resize.max_size is {} but shorter_side is {}; max_size must be larger than the "
                   "requested shorter side",
                   function, max_size, requested);
    if (new_long > max_size) {
      new_short = static_cast<std::int64_t>(static_cast<double>(max_size * new_short) / static_cast<double>(new_long));
      new_long = max_size;
    }
  }
  new_short = std::max<std::int64_t>(new_short, 1);
  new_long = std::max<std::int64_t>(new_long, 1);
  return wide ? std::array<std::int64_t, 2>{new_short, new_long} : std::array<std::int64_t, 2>{new_long, new_short};
}

/// torchvision's center_crop offset along one axis of `size` pixels for a crop of `crop`:
/// negative where the crop is larger (that many zero pixels before the image).
[[nodiscard]] inline std::int64_t center_crop_offset(std::int64_t size, std::int64_t crop) noexcept {
  if (crop > size) {
    return -((crop - size) / 2);
  }
  const std::int64_t difference = size - crop;  // round(difference / 2.0), half to even
  const std::int64_t half = difference / 2;
  return difference % 2 == 0 || half % 2 == 0 ? half : half + 1;
}

/// The geometry of one image's resize and crop (nullopt: neither, or a crop inside the image
/// without a resize, which the caller takes as a view).
inline std::optional<resize::Plan> plan_of(std::string_view function, const ImageOptions& options,
                                           std::int64_t height, std::int64_t width) {
  if (options.center_crop.has_value()) {
    const auto [h, w] = *options.center_crop;
    TORCHKIT_CHECK(h > 0 && w > 0, "{}: center_crop is {{{}, {}}}; expected a positive height and width",
                   function, h, w);
  }
  if (!options.resize.has_value() && !options.center_crop.has_value()) {
    return std::nullopt;
  }
  resize::Plan plan;
  plan.resized_h = height;
  plan.resized_w = width;
  if (options.resize.has_value()) {
    const auto size = resized_size_of(function, *options.resize, height, width);
    plan.resized_h = size[0];
    plan.resized_w = size[1];
    plan.filter = static_cast<resize::Filter>(static_cast<int>(options.resize->interpolation));
    plan.antialias = options.resize->antialias;
  }
  plan.out_h = plan.resized_h;
  plan.out_w = plan.resized_w;
  if (options.center_crop.has_value()) {
    plan.out_h = (*options.center_crop)[0];
    plan.out_w = (*options.center_crop)[1];
    plan.top = center_crop_offset(plan.resized_h, plan.out_h);
    plan.left = center_crop_offset(plan.resized_w, plan.out_w);
  }
  return plan;
}

/// Whether a plan reads the image as it is (no resize): then only a window, and a view does it.
[[nodiscard]] inline bool is_window_of_image(const resize::Plan& plan, std::int64_t height, std::int64_t width) {
  return plan.resized_h == height && plan.resized_w == width && plan.top >= 0 && plan.left >= 0 &&
         plan.top + plan.out_h <= height && plan.left + plan.out_w <= width;
}

/// A plan's resize, crop and padding with ATen operations: `planes` `[C, H, W]` (any dtype) to
/// `[C, out_h, out_w]` float (uint8 images rounded back to 0..255 after the resize, as torchvision).
inline at::Tensor resize_with_aten_ops(const at::Tensor& planes, const resize::Plan& plan, bool bytes) {
  at::Tensor x = planes.to(at::kFloat).unsqueeze(0);
  const std::vector<std::int64_t> size{plan.resized_h, plan.resized_w};
  if (plan.resized_h != planes.size(1) || plan.resized_w != planes.size(2)) {
    switch (plan.filter) {
      case resize::Filter::nearest: x = at::upsample_nearest2d(x, size); break;
      case resize::Filter::bilinear:
        x = plan.antialias ? at::_upsample_bilinear2d_aa(x, size, false) : at::upsample_bilinear2d(x, size, false);
        break;
      case resize::Filter::bicubic:
        x = plan.antialias ? at::_upsample_bicubic2d_aa(x, size, false) : at::upsample_bicubic2d(x, size, false);
        break;
    }
    if (bytes) {
      x = x.clamp(0, 255).round();
    }
  }
  const std::int64_t right = plan.out_w - plan.resized_w + plan.left;
  const std::int64_t bottom = plan.out_h - plan.resized_h + plan.top;
  x = at::constant_pad_nd(x, {-plan.left, right, -plan.top, bottom}, plan.pad_value);
  return x.squeeze(0);
}

/// The same computation with ATen operations, for batches made off the CPU (a CUDA device) and
/// for float images that require grad (so that autograd sees it). Also used by the tests as a
/// second, independent implementation. `plans`: none, or one resize/crop per image.
inline at::Tensor images_to_batch_with_aten_ops(std::span<const at::Tensor> images,
                                                const ImageTransform& transform,
                                                const ImageOptions& options, c10::Device device,
                                                std::span<const resize::Plan> plans = {}) {
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
  for (std::size_t i = 0; i < images.size(); ++i) {
    const at::Tensor& image = images[i];
    // Upload as it is: a uint8 image is 4× fewer bytes than its float batch.
    at::Tensor planes = image.to(device).permute({2, 0, 1});
    if (!plans.empty()) {
      planes = resize_with_aten_ops(planes, plans[i], image.scalar_type() == at::kByte);
    }
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

/// Writes the images into `batch` (`[N, C, H, W]` of Out, contiguous, on the CPU): those with a
/// plan through the resize pass, the rest through the fused conversion (several at once).
template <class Out>
void fill_batch_on_cpu(std::span<const ImageSource> sources, std::span<const std::optional<resize::Plan>> plans,
                       const ImageTransform& transform, Out* batch, std::int64_t image_size) {
  bool any_plan = false;
  for (const auto& plan : plans) {
    any_plan = any_plan || plan.has_value();
  }
  if (!any_plan) {
    fill_batch_on_cpu<Out>(sources, transform, batch);
    return;
  }
  for (std::size_t i = 0; i < sources.size(); ++i) {
    Out* output = batch + static_cast<std::int64_t>(i) * image_size;
    if (plans[i].has_value()) {
      resize::resize_image<Out>(sources[i], *plans[i], transform, output);
    } else {
      fill_batch_on_cpu<Out>(sources.subspan(i, 1), transform, output);
    }
  }
}

/// image_to_batch / images_to_batch / letterbox. `given`: one plan per image (letterbox), or
/// empty (the plans come from options.resize / options.center_crop).
inline at::Tensor images_to_batch_impl(std::string_view function, std::span<const at::Tensor> images,
                                       const ImageOptions& options, std::span<const resize::Plan> given = {}) {
  TORCHKIT_CHECK(!images.empty(), "{}: no images; expected at least one [H, W, C] image", function);
  std::vector<ImageSource> sources;
  std::vector<at::Tensor> views(images.begin(), images.end());
  std::vector<std::optional<resize::Plan>> plans(images.size());
  sources.reserve(images.size());
  const bool resizes = options.resize.has_value() || !given.empty();
  std::array<std::int64_t, 2> first_size{};
  for (std::size_t i = 0; i < images.size(); ++i) {
    const std::string which = images.size() == 1 ? std::string("the image") : fmt::format("image {}", i);
    sources.push_back(image_source_of(function, images[i], which));
    const std::int64_t height = sources[i].height;
    const std::int64_t width = sources[i].width;
    plans[i] = given.empty() ? plan_of(function, options, height, width) : std::optional<resize::Plan>(given[i]);
    if (plans[i].has_value() && is_window_of_image(*plans[i], height, width)) {
      // A crop inside the image: read in place through a view.
      const resize::Plan& plan = *plans[i];
      views[i] = images[i].slice(0, plan.top, plan.top + plan.out_h).slice(1, plan.left, plan.left + plan.out_w);
      sources[i] = image_source_of(function, views[i], which);
      plans[i].reset();
    }
    const std::array<std::int64_t, 2> size =
        plans[i].has_value() ? std::array<std::int64_t, 2>{plans[i]->out_h, plans[i]->out_w}
                             : std::array<std::int64_t, 2>{sources[i].height, sources[i].width};
    if (i == 0) {
      first_size = size;
      continue;
    }
    if (!resizes && !options.center_crop.has_value()) {
      TORCHKIT_CHECK(images[i].sizes() == images[0].sizes(),
                     "{}: image {} has shape {} but image 0 has {}; every image of a batch must "
                     "have the same height, width and channel count (or pass a resize that makes them equal)",
                     function, i, shape_string(images[i].sizes()), shape_string(images[0].sizes()));
    }
    TORCHKIT_CHECK(sources[i].channels == sources[0].channels,
                   "{}: image {} has {} channels (shape {}) but image 0 has {} (shape {}); every image of a "
                   "batch must have the same channel count",
                   function, i, sources[i].channels, shape_string(images[i].sizes()), sources[0].channels,
                   shape_string(images[0].sizes()));
    TORCHKIT_CHECK(size == first_size,
                   "{}: image {} (shape {}) becomes {}x{} after the resize and crop but image 0 (shape {}) "
                   "becomes {}x{}; use a resize to a fixed size or a center_crop so that every image ends "
                   "the same size",
                   function, i, shape_string(images[i].sizes()), size[0], size[1], shape_string(images[0].sizes()),
                   first_size[0], first_size[1]);
    TORCHKIT_CHECK(images[i].device() == images[0].device(),
                   "{}: image {} is on {} but image 0 is on {}; every image must be on one device",
                   function, i, images[i].device().str(), images[0].device().str());
  }
  const ImageTransform transform = image_transform_of(function, sources[0].channels, options);
  const c10::Device device = batch_device_of(images[0], options);

  bool needs_autograd = false;
  for (const at::Tensor& image : images) {
    needs_autograd = needs_autograd || (image.requires_grad() && at::GradMode::is_enabled());
  }
  bool any_plan = false;
  for (const auto& plan : plans) {
    any_plan = any_plan || plan.has_value();
  }
  if (!device.is_cpu() || !images[0].is_cpu() || needs_autograd) {
    TORCHKIT_CHECK(!device.is_cuda() || at::hasCUDA(),
                   "{}: device {} was asked for, but this LibTorch has no CUDA support or no GPU",
                   function, device.str());
    std::vector<resize::Plan> aten_plans;
    if (any_plan) {
      for (std::size_t i = 0; i < plans.size(); ++i) {
        resize::Plan identity;
        identity.resized_h = identity.out_h = sources[i].height;
        identity.resized_w = identity.out_w = sources[i].width;
        aten_plans.push_back(plans[i].value_or(identity));
      }
    }
    return images_to_batch_with_aten_ops(views, transform, options, device, aten_plans);
  }

  const std::int64_t count = static_cast<std::int64_t>(images.size());
  const std::int64_t channels = sources[0].channels;
  at::Tensor batch = at::empty({count, channels, first_size[0], first_size[1]},
                               at::TensorOptions().dtype(options.dtype));
  for (std::size_t i = 0; i < views.size(); ++i) {
    sources[i].data = views[i].data_ptr();
  }
  const std::int64_t image_size = channels * first_size[0] * first_size[1];
  switch (options.dtype) {
    case at::kFloat:
      fill_batch_on_cpu<float>(sources, plans, transform, batch.data_ptr<float>(), image_size);
      break;
    case at::kDouble:
      fill_batch_on_cpu<double>(sources, plans, transform, batch.data_ptr<double>(), image_size);
      break;
    case at::kHalf:
      fill_batch_on_cpu<c10::Half>(sources, plans, transform, batch.data_ptr<c10::Half>(), image_size);
      break;
    default:  // BFloat16; image_transform_of rejected everything else
      fill_batch_on_cpu<c10::BFloat16>(sources, plans, transform, batch.data_ptr<c10::BFloat16>(), image_size);
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
/// With `options.resize` / `options.center_crop` it is torchvision's
/// `Resize(...)` → `CenterCrop(...)` → `ToTensor()` → `Normalize(...)` (tensor path, within 1e-5
/// for float images and one level for uint8 ones), and only the pixels inside the crop are
/// computed, still in one pass over the output.
///
/// @throws Error for an undefined or empty image, a channel count other than 1, 3 or 4, a dtype
///         other than uint8/float, a mean or std of the wrong length, a std of 0, a non-finite
///         option or an unsupported output dtype; for a resize with neither or both of
///         shorter_side and size, a non-positive size or shorter_side, max_size with a fixed size
///         or not larger than shorter_side, an interpolation that is not an Interpolation, and a
///         non-positive center_crop.
///
///     at::Tensor image = decode("cat.png");  // [H, W, 3] uint8, BGR (see opencv.hpp for cv::Mat)
///     auto input = torchkit::image_to_batch(image, {.bgr_to_rgb = true,
///                                                   .mean = {0.485, 0.456, 0.406},
///                                                   .std = {0.229, 0.224, 0.225}});
///     auto logits = model->forward(input);  // input: [1, 3, H, W] float
///
///     // transforms.Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)])
///     auto classifier_input = torchkit::image_to_batch(image, {.resize = torchkit::Resize{.shorter_side = 256},
///                                                              .center_crop = {{224, 224}},
///                                                              .bgr_to_rgb = true,
///                                                              .mean = {0.485, 0.456, 0.406},
///                                                              .std = {0.229, 0.224, 0.225}});
[[nodiscard]] inline at::Tensor image_to_batch(const at::Tensor& hwc, const ImageOptions& options = {}) {
  return detail::images_to_batch_impl("image_to_batch", std::span<const at::Tensor>(&hwc, 1), options);
}

/// Several images `[H, W, C]` to a batch `[N, C, H, W]`, each as image_to_batch does it, written
/// straight into the batch (no per-image tensors, no `at::stack` copy). The images may differ in
/// size when the resize / center_crop makes them equal. The Python equivalent is
/// `torch.stack([transform(img) for img in images])`.
///
/// @throws Error for an empty list, images of different channel counts or devices, images that
///         end up different sizes (without a resize or crop: of different shapes), and
///         everything image_to_batch rejects (the message names the image's position).
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

/// Options of letterbox(): the detector convention (YOLOv5/v8's `letterbox`): scale the image to
/// fit `size` keeping its aspect ratio, pad the rest symmetrically with `pad_value`.
///
///     torchkit::LetterboxOptions{.size = {640, 640}, .image = {.bgr_to_rgb = true}}
struct LetterboxOptions {
  /// The output `{height, width}`.
  std::array<std::int64_t, 2> size{640, 640};
  /// The border's pixel value, before scale / mean / std (114: YOLO's grey).
  double pad_value = 114;
  /// Whether a small image may be enlarged (false: scale at most 1, YOLO's `scaleup=False`).
  bool scale_up = true;
  /// How the scaled image is computed; bilinear without antialias is cv2's INTER_LINEAR, as the
  /// detectors' Python code resizes.
  Interpolation interpolation = Interpolation::bilinear;
  /// Antialias when shrinking (false, as cv2.resize; true matches torchvision's F.resize).
  bool antialias = false;
  /// scale / mean / std / BGR → RGB / dtype / device of the batch (resize and center_crop must be
  /// empty: the letterbox decides the geometry).
  ImageOptions image{};
};

/// What letterbox() made: the batch and where the image lies in it.
struct Letterbox {
  at::Tensor batch;   ///< `[1, C, size[0], size[1]]`, as image_to_batch makes it
  double scale = 1;   ///< letterboxed pixel = original pixel * scale + pad
  std::int64_t pad_top = 0;   ///< border rows above the image (the odd row goes below)
  std::int64_t pad_left = 0;  ///< border columns left of the image (the odd column goes right)
  std::array<std::int64_t, 2> original_size{};  ///< the image's `{height, width}`
  std::array<std::int64_t, 2> resized_size{};   ///< the scaled image's `{height, width}` inside the border

  /// Boxes predicted on the letterboxed image back to the original image: `x' = (x - pad_left) /
  /// scale`, `y' = (y - pad_top) / scale`, clamped to the image (`[0, width]`, `[0, height]`), as
  /// YOLO's `scale_boxes`. A new tensor; the input is not changed.
  ///
  /// @param boxes_xyxy  `[..., K]` floating point, K >= 4: columns 0-3 are x1, y1, x2, y2; the
  ///                    rest (score, class) are copied unchanged.
  /// @throws Error for an undefined tensor, fewer than 4 columns or an integer dtype.
  ///
  ///     auto boxes = letterboxed.to_original(detections);  // [N, 6] -> [N, 6] in image pixels
  [[nodiscard]] at::Tensor to_original(const at::Tensor& boxes_xyxy) const {
    TORCHKIT_CHECK(boxes_xyxy.defined(), "Letterbox::to_original: the boxes are an undefined tensor");
    TORCHKIT_CHECK(boxes_xyxy.dim() >= 1 && boxes_xyxy.size(-1) >= 4,
                   "Letterbox::to_original: boxes have shape {}; expected [..., 4] (x1, y1, x2, y2, then "
                   "anything)",
                   detail::shape_string(boxes_xyxy.sizes()));
    TORCHKIT_CHECK(at::isFloatingType(boxes_xyxy.scalar_type()),
                   "Letterbox::to_original: boxes have dtype {}; expected a floating point dtype",
                   std::string(c10::toString(boxes_xyxy.scalar_type())));
    at::Tensor result = boxes_xyxy.clone();
    const auto map = [&](std::int64_t column, std::int64_t pad, std::int64_t limit) {
      at::Tensor values = result.select(-1, column);
      values.copy_(((values - static_cast<double>(pad)) / scale).clamp(0, static_cast<double>(limit)));
    };
    map(0, pad_left, original_size[1]);
    map(1, pad_top, original_size[0]);
    map(2, pad_left, original_size[1]);
    map(3, pad_top, original_size[0]);
    return result;
  }
};

namespace detail {

/// The letterbox geometry of an `height x width` image (YOLOv5's arithmetic: `r = min(H / h, W /
/// w)`, the scaled size `round(w * r)` (half to even), the padding split with the odd pixel last).
inline resize::Plan letterbox_plan(const LetterboxOptions& options, std::int64_t height, std::int64_t width,
                                   double& scale) {
  const auto [out_h, out_w] = options.size;
  scale = std::min(static_cast<double>(out_h) / static_cast<double>(height),
                   static_cast<double>(out_w) / static_cast<double>(width));
  if (!options.scale_up) {
    scale = std::min(scale, 1.0);
  }
  resize::Plan plan;
  plan.resized_w = std::clamp<std::int64_t>(static_cast<std::int64_t>(std::nearbyint(static_cast<double>(width) * scale)),
                                            1, out_w);
  plan.resized_h = std::clamp<std::int64_t>(
      static_cast<std::int64_t>(std::nearbyint(static_cast<double>(height) * scale)), 1, out_h);
  plan.out_h = out_h;
  plan.out_w = out_w;
  plan.top = -((out_h - plan.resized_h) / 2);
  plan.left = -((out_w - plan.resized_w) / 2);
  plan.filter = static_cast<resize::Filter>(static_cast<int>(options.interpolation));
  plan.antialias = options.antialias;
  plan.pad_value = options.pad_value;
  return plan;
}

inline Letterbox letterbox_impl(const at::Tensor& hwc, const LetterboxOptions& options) {
  const auto [out_h, out_w] = options.size;
  TORCHKIT_CHECK(out_h > 0 && out_w > 0, "letterbox: size is {{{}, {}}}; expected a positive height and width",
                 out_h, out_w);
  TORCHKIT_CHECK(std::isfinite(options.pad_value), "letterbox: pad_value is {}; expected a finite number",
                 options.pad_value);
  const auto mode = static_cast<int>(options.interpolation);
  TORCHKIT_CHECK(mode >= 0 && mode <= 2,
                 "letterbox: interpolation is {}, not an Interpolation; expected nearest, bilinear or bicubic",
                 mode);
  TORCHKIT_CHECK(!options.image.resize.has_value() && !options.image.center_crop.has_value(),
                 "letterbox: options.image has a {}; the letterbox decides the geometry (leave resize and "
                 "center_crop empty)",
                 options.image.resize.has_value() ? "resize" : "center_crop");
  const ImageSource source = image_source_of("letterbox", hwc, "the image");
  Letterbox result;
  const resize::Plan plan = letterbox_plan(options, source.height, source.width, result.scale);
  result.batch = images_to_batch_impl("letterbox", std::span<const at::Tensor>(&hwc, 1), options.image,
                                      std::span<const resize::Plan>(&plan, 1));
  result.pad_top = -plan.top;
  result.pad_left = -plan.left;
  result.original_size = {source.height, source.width};
  result.resized_size = {plan.resized_h, plan.resized_w};
  return result;
}

}  // namespace detail

/// The detector's input: the image scaled to fit `options.size` keeping its aspect ratio
/// (`scale = min(H / h, W / w)`, at most 1 without `scale_up`), the scaled size rounded half to
/// even, centred with `pad_value` borders (the odd row / column at the bottom / right), then
/// scale / mean / std / BGR → RGB as image_to_batch, in one pass. The Python equivalent is
/// YOLOv5's `letterbox(img, (640, 640), auto=False)` (cv2.resize INTER_LINEAR +
/// cv2.copyMakeBorder with 114) followed by the to-tensor lines; uint8 images match it within one
/// level (cv2 computes INTER_LINEAR in fixed point).
///
/// @returns the batch `[1, C, H, W]`, the scale, the padding and the sizes; `to_original` maps
///          predicted boxes back.
/// @throws Error for a non-positive size, a non-finite pad_value, an unknown interpolation,
///         options.image with a resize or center_crop, and everything image_to_batch rejects.
///
///     auto boxed = torchkit::letterbox(frame, {.size = {640, 640}, .image = {.bgr_to_rgb = true}});
///     auto detections = model->forward(boxed.batch);         // boxes in letterboxed pixels
///     auto boxes = boxed.to_original(detections);            // boxes in the frame's pixels
[[nodiscard]] inline Letterbox letterbox(const at::Tensor& hwc, const LetterboxOptions& options = {}) {
  return detail::letterbox_impl(hwc, options);
}

}  // namespace torchkit
