// Tip 4: give a model trained on (batch_size, c, h, w) a single image.
//
// Python:
//
//     import cv2, torch
//     image = cv2.imread(img_path)
//     image = torch.tensor(image)
//     print(image.size())                 # torch.Size([h, w, c])
//     img = image.view(1, *image.size())
//     print(img.size())                   # torch.Size([1, h, w, c])
//
//     img = image.unsqueeze(dim=0)        # torch.Size([1, h, w, c])
//     img = img.squeeze(dim=0)            # torch.Size([h, w, c])
//
//     import numpy as np
//     img = cv2.imread(img_path)[np.newaxis, :, :, :]   # (1, h, w, c)
//
// Adding the batch dimension to [h, w, c] is not yet what the model wants: it takes
// [1, c, h, w] float, RGB, normalised. In Python that is permute, float, / 255, a BGR -> RGB swap
// and Normalize: five or six passes. torchkit::image_to_batch does all of it in one.
#include <torchkit/batch.hpp>
#include <torchkit/opencv.hpp>

#include <opencv2/imgcodecs.hpp>

#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>

namespace {

std::string size_of(const at::Tensor& tensor) {
  std::ostringstream out;
  out << "torch.Size(" << tensor.sizes() << ")";
  return out.str();
}

}  // namespace

int main() {
  const std::string path = std::string(TORCHKIT_EXAMPLE_DATA_DIR) + "/test_image.png";
  // image = cv2.imread(img_path)
  const cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR);
  if (bgr.empty()) {
    std::cerr << "cannot read " << path << "\n";
    return 1;
  }

  // image = torch.tensor(image); print(image.size())
  const at::Tensor image = torchkit::as_tensor(bgr);  // the Mat's pixels, no copy
  std::cout << "image:                   " << size_of(image) << "   [h, w, c]\n";

  // img = image.view(1, *image.size()) / image.unsqueeze(dim=0) / image[np.newaxis, ...]
  const at::Tensor img = torchkit::to_batch(image);
  std::cout << "to_batch(image):         " << size_of(img) << "   [1, h, w, c]\n";
  std::cout << "  same as view(1, ...):  " << std::boolalpha
            << torch::equal(img, image.view({1, image.size(0), image.size(1), image.size(2)})) << "\n";

  // img = img.squeeze(dim=0)
  std::cout << "from_batch(img):         " << size_of(torchkit::from_batch(img)) << "   [h, w, c]\n";

  // What the model really takes: [1, c, h, w] float, RGB, ImageNet-normalised, in one pass.
  const torchkit::ImageOptions options{
      .bgr_to_rgb = true, .mean = {0.485, 0.456, 0.406}, .std = {0.229, 0.224, 0.225}};
  const at::Tensor batch = torchkit::image_to_batch(bgr, options);
  std::cout << "image_to_batch(bgr):     " << size_of(batch) << "   [1, c, h, w] " << batch.scalar_type() << "\n";

  // The same as the Python chain, op by op.
  const at::Tensor mean = torch::tensor({0.485, 0.456, 0.406}, torch::kFloat).view({3, 1, 1});
  const at::Tensor std = torch::tensor({0.229, 0.224, 0.225}, torch::kFloat).view({3, 1, 1});
  const at::Tensor chain = ((image.permute({2, 0, 1}).flip(0).to(torch::kFloat) / 255 - mean) / std).unsqueeze(0);
  std::cout << "  same as the chain:     " << torch::allclose(batch, chain, 1e-5, 1e-6) << "\n";

  // A crop (a ROI of the Mat) goes in without a copy; the batch comes back out as a Mat.
  const at::Tensor crop = torchkit::image_to_batch(bgr(cv::Rect(8, 4, 32, 24)), options);
  std::cout << "image_to_batch(roi):     " << size_of(crop) << "\n";
  const cv::Mat back = torchkit::to_mat(torchkit::image_to_batch(bgr, {.scale = 1.0}).to(at::kByte));
  std::cout << "to_mat(batch):           " << back.rows << " x " << back.cols << " x " << back.channels()
            << ", equal to the image: " << (cv::norm(back, bgr, cv::NORM_INF) == 0) << "\n";

  const bool ok = torch::allclose(batch, chain, 1e-5, 1e-6) && batch.size(0) == 1 && batch.size(1) == 3 &&
                  batch.size(2) == bgr.rows && batch.size(3) == bgr.cols;
  return ok ? 0 : 1;
}
