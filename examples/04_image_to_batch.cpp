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
//
// A classifier also wants the image resized and cropped exactly as in training:
//
//     from torchvision import transforms as T
//     import torchvision.transforms.functional as F
//     x = torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1)   # BGR -> RGB, CHW
//     x = F.resize(x, 256, antialias=True)                              # T.Resize(256)
//     x = F.center_crop(x, 224)                                         # T.CenterCrop(224)
//     x = F.normalize(x.float() / 255, mean, std).unsqueeze(0)          # ToTensor + Normalize
//
// and a detector wants a letterbox (YOLO's `letterbox(image, (640, 640))`), then its boxes
// mapped back to the image.
#include <torchkit/batch.hpp>
#include <torchkit/opencv.hpp>

#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <cstdint>
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

  // The classifier pipeline: Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize, one pass
  // that computes only the 224 x 224 pixels that survive the crop.
  const at::Tensor classifier_input = torchkit::image_to_batch(
      bgr, {.resize = torchkit::Resize{.shorter_side = 256},  // F.resize(x, 256, antialias=True)
            .center_crop = {{224, 224}},                      // F.center_crop(x, 224)
            .bgr_to_rgb = true,
            .mean = {0.485, 0.456, 0.406},  // F.normalize(x.float() / 255, mean, std)
            .std = {0.229, 0.224, 0.225}});
  std::cout << "resize 256, crop 224:    " << size_of(classifier_input) << "\n";
  // The same with ATen's own antialiased interpolation, op by op (what torchvision runs).
  const at::Tensor planes = image.permute({2, 0, 1}).flip(0).unsqueeze(0).to(torch::kFloat);
  const int64_t short_side = std::min(bgr.rows, bgr.cols);
  const int64_t new_h = bgr.rows == short_side ? 256 : 256 * bgr.rows / short_side;
  const int64_t new_w = bgr.cols == short_side ? 256 : 256 * bgr.cols / short_side;
  const at::Tensor resized = at::_upsample_bilinear2d_aa(planes, {new_h, new_w}, false).round().clamp(0, 255);
  const auto centre = [](int64_t d) { return d % 2 == 0 || (d / 2) % 2 == 0 ? d / 2 : d / 2 + 1; };  // round(d / 2)
  const int64_t top = centre(new_h - 224);
  const int64_t left = centre(new_w - 224);
  const at::Tensor cropped = resized.slice(2, top, top + 224).slice(3, left, left + 224);
  const at::Tensor reference = (cropped / 255 - mean) / std;
  const bool classifier_ok = torch::allclose(classifier_input, reference, 0, 1.0 / 255 / 0.224 + 1e-5);
  std::cout << "  same as torchvision:   " << classifier_ok << " (within one uint8 level)\n";

  // The detector pipeline: letterbox to 640 x 640, a box predicted there, back on the image.
  const torchkit::Letterbox boxed = torchkit::letterbox(bgr, {.size = {640, 640}, .image = {.bgr_to_rgb = true}});
  std::cout << "letterbox(bgr):          " << size_of(boxed.batch) << ", scale " << boxed.scale << ", pad top "
            << boxed.pad_top << ", left " << boxed.pad_left << "\n";
  const at::Tensor box = torch::tensor({{4.0, 2.0, 20.0, 30.0}}, torch::kDouble);  // x1 y1 x2 y2 on the image
  const at::Tensor on_letterbox =
      box * boxed.scale + torch::tensor({boxed.pad_left, boxed.pad_top, boxed.pad_left, boxed.pad_top}).to(at::kDouble);
  const at::Tensor back_on_image = boxed.to_original(on_letterbox);
  const bool round_trip = torch::allclose(back_on_image, box, 0, 1e-9);
  std::cout << "  box " << on_letterbox[0][0].item<double>() << "," << on_letterbox[0][1].item<double>()
            << " ... back to the image: " << back_on_image[0][0].item<double>() << ","
            << back_on_image[0][1].item<double>() << " (round trip " << round_trip << ")\n";

  const bool ok = torch::allclose(batch, chain, 1e-5, 1e-6) && batch.size(0) == 1 && batch.size(1) == 3 &&
                  batch.size(2) == bgr.rows && batch.size(3) == bgr.cols && classifier_ok && round_trip;
  return ok ? 0 : 1;
}
