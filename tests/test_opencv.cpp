// Tests for opencv.hpp: image_to_batch / images_to_batch / letterbox from cv::Mat, as_tensor, to_mat.
// The reference is OpenCV's own cv::dnn::blobFromImage(s) (same scale, mean and swapRB).
#include <torchkit/opencv.hpp>

#include "test_support.hpp"

#include <opencv2/core.hpp>
#include <opencv2/dnn.hpp>
#include <opencv2/imgproc.hpp>

#include <string>
#include <vector>

using torchkit::ImageLayout;
using torchkit::ImageOptions;
using torchkit::test::message_of;

namespace {

cv::Mat random_mat(int rows, int cols, int type) {
  cv::Mat mat(rows, cols, type);
  cv::theRNG().state = 12345 + static_cast<uint64_t>(rows * 1000 + cols + type);
  if (CV_MAT_DEPTH(type) == CV_8U) {
    cv::randu(mat, cv::Scalar::all(0), cv::Scalar::all(256));
  } else {
    cv::randu(mat, cv::Scalar::all(0), cv::Scalar::all(255));
  }
  return mat;
}

/// A 4-d blob Mat [N, C, H, W] (CV_32F) as a tensor (a copy).
at::Tensor tensor_of_blob(const cv::Mat& blob) {
  REQUIRE(blob.dims == 4);
  return at::from_blob(const_cast<float*>(blob.ptr<float>()), {blob.size[0], blob.size[1], blob.size[2], blob.size[3]},
                       at::TensorOptions().dtype(at::kFloat))
      .clone();
}

/// blobFromImage(image, scale, size, mean, swapRB) computes (pixel - mean) * scale per output
/// channel; image_to_batch computes pixel * scale - mean': the same with mean' = mean * scale.
ImageOptions options_like_blob(double scale, const cv::Scalar& mean, bool swap, int channels) {
  ImageOptions options{.bgr_to_rgb = swap, .scale = scale};
  for (int c = 0; c < channels; ++c) {
    options.mean.push_back(mean[c] * scale);
  }
  return options;
}
}  // namespace

TEST_CASE("image_to_batch(cv::Mat) matches cv::dnn::blobFromImage") {
  const cv::Scalar mean(103.53, 116.28, 123.675, 50.0);
  for (const int type : {CV_8UC3, CV_8UC1, CV_8UC4, CV_32FC3, CV_32FC1, CV_32FC4}) {
    for (const bool swap : {false, true}) {
      const std::string type_name = cv::typeToString(type);
      CAPTURE(type_name);
      CAPTURE(swap);
      const cv::Mat image = random_mat(31, 45, type);
      const double scale = 1.0 / 57.0;
      // torchkit's rule: swapping channels does nothing to a one-channel image, and its mean is
      // mean[0]. OpenCV's own swapRB on one channel differs between versions (4.6 subtracts
      // mean[2], 4.10 mean[0]), so the reference for that case is OpenCV without the swap.
      const bool blob_swap = swap && image.channels() > 1;
      // OpenCV 4.6 normalises a CV_32F input Mat in place: give it a copy.
      const cv::Mat blob = cv::dnn::blobFromImage(image.clone(), scale, cv::Size(), mean, blob_swap, false, CV_32F);
      const auto batch = torchkit::image_to_batch(image, options_like_blob(scale, mean, swap, image.channels()));
      const auto expected = tensor_of_blob(blob);
      CHECK(batch.sizes() == expected.sizes());
      CHECK(torch::allclose(batch, expected, 1e-5, 1e-4));
    }
  }
}

TEST_CASE("image_to_batch(cv::Mat) reads a ROI of a larger Mat in place") {
  const cv::Mat full = random_mat(120, 200, CV_8UC3);
  const cv::Mat roi = full(cv::Rect(13, 7, 150, 96));  // step is the full row, 600 bytes
  REQUIRE(!roi.isContinuous());
  // The tensor the fused pass reads is the ROI's memory, not a copy.
  const at::Tensor view = torchkit::as_tensor(roi);
  CHECK(view.data_ptr() == static_cast<void*>(roi.data));
  CHECK(view.sizes() == at::IntArrayRef{96, 150, 3});
  CHECK(view.strides() == at::IntArrayRef{600, 3, 1});

  const cv::Scalar mean(104, 117, 123);
  const cv::Mat blob = cv::dnn::blobFromImage(roi, 1.0 / 255, cv::Size(), mean, true, false, CV_32F);
  const auto batch = torchkit::image_to_batch(roi, options_like_blob(1.0 / 255, mean, true, 3));
  CHECK(torch::allclose(batch, tensor_of_blob(blob), 1e-5, 1e-5));
  // And the same as the tensor path with per-channel std.
  const ImageOptions imagenet{.bgr_to_rgb = true, .mean = {0.485, 0.456, 0.406}, .std = {0.229, 0.224, 0.225}};
  CHECK(torch::equal(torchkit::image_to_batch(roi, imagenet), torchkit::image_to_batch(roi.clone(), imagenet)));
  CHECK(torch::equal(torchkit::image_to_batch(roi, imagenet), torchkit::image_to_batch(view, imagenet)));
}

TEST_CASE("images_to_batch(cv::Mat) matches cv::dnn::blobFromImages") {
  const std::vector<cv::Mat> images{random_mat(20, 33, CV_8UC3), random_mat(20, 33, CV_8UC3),
                                    random_mat(40, 50, CV_8UC3)(cv::Rect(5, 5, 33, 20))};
  const cv::Scalar mean(10, 20, 30);
  const cv::Mat blob = cv::dnn::blobFromImages(images, 0.5, cv::Size(), mean, true, false, CV_32F);
  const auto batch = torchkit::images_to_batch(images, options_like_blob(0.5, mean, true, 3));
  CHECK(batch.sizes() == at::IntArrayRef{3, 3, 20, 33});
  CHECK(torch::allclose(batch, tensor_of_blob(blob), 1e-5, 1e-4));

  const std::vector<cv::Mat> mixed{random_mat(20, 33, CV_8UC3), random_mat(21, 33, CV_8UC3)};
  CHECK_THROWS_WITH_AS((void)torchkit::images_to_batch(mixed), doctest::Contains("image 1 has shape [21, 33, 3]"),
                       torchkit::Error);
  const std::vector<cv::Mat> bad{random_mat(20, 33, CV_8UC3), random_mat(20, 33, CV_8UC2)};
  CHECK_THROWS_WITH_AS((void)torchkit::images_to_batch(bad), doctest::Contains("Mat 1 has 2 channels (type CV_8UC2)"),
                       torchkit::Error);
}

TEST_CASE("as_tensor keeps the Mat's buffer alive") {
  at::Tensor tensor;
  cv::Mat copy;
  {
    const cv::Mat image = random_mat(8, 9, CV_32FC3);
    copy = image.clone();
    tensor = torchkit::as_tensor(image);
  }  // the Mat header is gone; its buffer lives on in the tensor
  CHECK(torch::equal(tensor, torchkit::as_tensor(copy)));
  CHECK((tensor.scalar_type() == at::kFloat));
  CHECK_THROWS_WITH_AS((void)torchkit::as_tensor(cv::Mat()), doctest::Contains("empty"), torchkit::Error);
  CHECK_THROWS_WITH_AS((void)torchkit::as_tensor(cv::Mat(2, 2, CV_16UC1)), doctest::Contains("CV_16UC1"),
                       torchkit::Error);
}

TEST_CASE("image_to_batch(cv::Mat) rejects bad Mats, naming the type") {
  const auto throws = [](const cv::Mat& mat, const ImageOptions& options, const std::string& part) {
    CAPTURE(part);
    const auto message = message_of<torchkit::Error>([&] { (void)torchkit::image_to_batch(mat, options); });
    CHECK(message.find(part) != std::string::npos);
  };
  throws(cv::Mat(), {}, "empty");
  throws(cv::Mat(4, 4, CV_8UC2, cv::Scalar::all(0)), {}, "2 channels (type CV_8UC2)");
  throws(cv::Mat(4, 4, CV_16UC3, cv::Scalar::all(0)), {}, "type CV_16UC3");
  throws(cv::Mat(4, 4, CV_64FC3, cv::Scalar::all(0)), {}, "type CV_64FC3");
  throws(cv::Mat(4, 4, CV_8UC3, cv::Scalar::all(0)), {.mean = {1, 2}}, "mean has 2 values");
  throws(cv::Mat(4, 4, CV_8UC3, cv::Scalar::all(0)), {.std = {1, 0, 1}}, "std[1] is 0");
  const int sizes[] = {2, 3, 4};
  throws(cv::Mat(3, sizes, CV_8UC1, cv::Scalar::all(0)), {}, "3 dimensions");
}

TEST_CASE("to_mat turns tensors back into Mats") {
  const cv::Mat image = random_mat(17, 23, CV_8UC3);
  // [H, W, C] uint8 -> CV_8UC3, equal pixels, its own buffer.
  const cv::Mat back = torchkit::to_mat(torchkit::as_tensor(image));
  CHECK(back.type() == CV_8UC3);
  CHECK(back.data != image.data);
  CHECK(cv::norm(back, image, cv::NORM_INF) == 0);

  // A [1, C, H, W] batch from image_to_batch -> CV_32FC3 with the same values.
  const cv::Mat floats = torchkit::to_mat(torchkit::image_to_batch(image, {.scale = 1.0}));
  cv::Mat expected;
  image.convertTo(expected, CV_32F);
  CHECK(floats.type() == CV_32FC3);
  CHECK(cv::norm(floats, expected, cv::NORM_INF) == 0);

  // [C, H, W] is recognised; half is widened to float; [H, W] is one channel.
  const auto chw = torchkit::as_tensor(image).permute({2, 0, 1});
  CHECK(cv::norm(torchkit::to_mat(chw), image, cv::NORM_INF) == 0);
  CHECK(torchkit::to_mat(chw.to(at::kHalf)).type() == CV_32FC3);
  CHECK(torchkit::to_mat(torch::zeros({5, 6}, torch::kInt)).type() == CV_32SC1);
  CHECK(torchkit::to_mat(torch::zeros({5, 6, 2}, torch::kDouble), ImageLayout::HWC).type() == CV_64FC2);

  // Ambiguous shapes need the layout spelled out.
  const auto small = torch::rand({3, 4, 3});
  CHECK_THROWS_WITH_AS((void)torchkit::to_mat(small), doctest::Contains("ImageLayout::hwc"), torchkit::Error);
  const cv::Mat as_chw = torchkit::to_mat(small, ImageLayout::CHW);
  CHECK(as_chw.rows == 4);
  CHECK(as_chw.cols == 3);
  CHECK(as_chw.channels() == 3);
  CHECK(as_chw.at<cv::Vec3f>(1, 2)[0] == small[0][1][2].item<float>());

  CHECK_THROWS_WITH_AS((void)torchkit::to_mat(torch::zeros({2, 3, 4, 4})), doctest::Contains("batch of 2 images"),
                       torchkit::Error);
  CHECK_THROWS_WITH_AS((void)torchkit::to_mat(torch::zeros({5, 6, 3}, torch::kLong)), doctest::Contains("dtype Long"),
                       torchkit::Error);
  CHECK_THROWS_WITH_AS((void)torchkit::to_mat(torch::zeros({5, 6, 7})), doctest::Contains("neither end"),
                       torchkit::Error);
  CHECK_THROWS_WITH_AS((void)torchkit::to_mat(at::Tensor()), doctest::Contains("undefined"), torchkit::Error);
  CHECK_THROWS_WITH_AS((void)torchkit::to_mat(torch::zeros({0, 6, 3})), doctest::Contains("empty"), torchkit::Error);
}

TEST_CASE("letterbox(cv::Mat) matches cv::resize INTER_LINEAR + cv::copyMakeBorder, for a ROI too") {
  // The detectors' letterbox written with OpenCV's C++ API (resize_golden.py does it with cv2).
  const cv::Mat large = random_mat(420, 700, CV_8UC3);
  for (const cv::Mat& frame : {large, cv::Mat(large(cv::Rect(13, 7, 517, 333)))}) {
    const torchkit::Letterbox boxed = torchkit::letterbox(frame, {.size = {320, 320}, .image = {.scale = 1.0}});
    const double r = std::min(320.0 / frame.rows, 320.0 / frame.cols);
    const int width = static_cast<int>(std::nearbyint(frame.cols * r));
    const int height = static_cast<int>(std::nearbyint(frame.rows * r));
    cv::Mat resized;
    cv::resize(frame, resized, cv::Size(width, height), 0, 0, cv::INTER_LINEAR);
    const int top = (320 - height) / 2;
    const int left = (320 - width) / 2;
    cv::Mat padded;
    cv::copyMakeBorder(resized, padded, top, 320 - height - top, left, 320 - width - left, cv::BORDER_CONSTANT,
                       cv::Scalar::all(114));
    CHECK(boxed.pad_top == top);
    CHECK(boxed.pad_left == left);
    CHECK(boxed.scale == doctest::Approx(r));
    const at::Tensor expected = torchkit::as_tensor(padded).permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);
    REQUIRE(boxed.batch.sizes() == expected.sizes());
    const auto difference = (boxed.batch - expected).abs();
    CHECK(difference.max().item<double>() <= 1.0);  // cv2's fixed point: one level at most
    CHECK(difference.mean().item<double>() <= 0.2);
  }
}

TEST_CASE("image_to_batch(cv::Mat) with a resize and crop equals the tensor path; Mats may differ in size") {
  const cv::Mat a = random_mat(90, 120, CV_8UC3);
  const cv::Mat b = random_mat(61, 47, CV_8UC3);
  const ImageOptions options{.resize = torchkit::Resize{.shorter_side = 40}, .center_crop = {{32, 32}},
                             .bgr_to_rgb = true, .mean = {0.485, 0.456, 0.406}, .std = {0.229, 0.224, 0.225}};
  const auto from_mat = torchkit::image_to_batch(a, options);
  CHECK(torch::equal(from_mat, torchkit::image_to_batch(torchkit::as_tensor(a), options)));
  const auto batch = torchkit::images_to_batch(std::vector<cv::Mat>{a, b}, options);
  REQUIRE(batch.sizes() == at::IntArrayRef{2, 3, 32, 32});
  CHECK(torch::equal(batch[0], from_mat[0]));
  CHECK(torch::equal(batch[1], torchkit::image_to_batch(b, options)[0]));
}
