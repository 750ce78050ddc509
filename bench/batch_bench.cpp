// Benchmarks for tips 4 and 5, each torchkit hot path beside the LibTorch (and OpenCV) way, all
// on one thread:
//
//   ImageToBatch/*   a BGR uint8 image (224x224 and 1920x1080) to a normalised RGB float
//                    [1, 3, H, W] batch (ImageNet mean/std):
//                      Torchkit        torchkit::image_to_batch on an [H, W, 3] tensor
//                      TorchkitMat     torchkit::image_to_batch on the cv::Mat
//                      LibTorchChain   from_blob -> permute -> flip (BGR->RGB) -> to(kFloat) -> div
//                                      -> sub -> div -> unsqueeze -> contiguous
//                      BlobFromImage   cv::dnn::blobFromImage(mat, 1/255, {}, mean * 255, swapRB)
//                                      (OpenCV 4.6 has no per-channel std: it does less work)
//                      Floor           allocate the output and write its bytes once (memset)
//                      FloorStores     allocate the output and fill it with ordinary vector stores
//                      FloorReused     memset into an output allocated once, outside the loop
//   Classifier/*     a 1920x1080 BGR uint8 frame -> shorter side 256 (antialiased bilinear) ->
//                    center crop 224 -> normalised RGB float [1, 3, 224, 224]:
//                      Torchkit        torchkit::image_to_batch with resize + center_crop (tensor)
//                      TorchkitMat     the same from the cv::Mat
//                      LibTorchOps     permute -> float -> at::_upsample_bilinear2d_aa (what
//                                      F.interpolate(antialias=True) runs) -> round -> slice ->
//                                      flip -> div -> sub -> div -> contiguous
//                      OpenCVArea      cv::resize(INTER_AREA) -> ROI -> blobFromImage(swapRB)
//                      OpenCVLinear    cv::resize(INTER_LINEAR, no antialias) -> ROI -> blobFromImage
//                      Floor           allocate the [1, 3, 224, 224] output and memset it
//   OneHot/*         65,536 int64 labels, C = 10 and 1000, to float targets:
//                      Torchkit        torchkit::one_hot(labels, C)
//                      LibTorchToFloat torch::one_hot(labels, C).to(kFloat)
//                      LibTorch        torch::one_hot(labels, C) (int64 result, no conversion)
//                      Floor           allocate the [N, C] float output and memset it
//
// Every variant allocates its own output each iteration, as a caller would. The counter
// `page_faults` (minor faults per iteration, from getrusage) shows how much of the time is the
// kernel handing out fresh pages: glibc serves large blocks with mmap and returns them to the OS,
// so fresh multi-MB outputs and temporaries may fault on first touch (4 KB at a time), depending on
// the allocator's state. `--keep_heap` (glibc only) turns that off (no mmap, no trimming), so that
// after the first iteration no variant faults and the timings show the computation alone:
//
//     batch_bench --keep_heap --benchmark_filter=ImageToBatch
#include <torchkit/batch.hpp>
#include <torchkit/one_hot.hpp>
#if TORCHKIT_WITH_OPENCV
#include <torchkit/opencv.hpp>
#include <opencv2/core.hpp>
#include <opencv2/dnn.hpp>
#include <opencv2/imgproc.hpp>
#endif

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <sys/resource.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace {

const std::vector<double> kMean = {0.485, 0.456, 0.406};
const std::vector<double> kStd = {0.229, 0.224, 0.225};

long minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

/// Reports minor page faults per iteration; construct before the loop, call finish() after.
struct FaultCounter {
  long start = minor_faults();
  void finish(benchmark::State& state) const {
    state.counters["page_faults"] =
        benchmark::Counter(static_cast<double>(minor_faults() - start), benchmark::Counter::kAvgIterations);
  }
};

/// A deterministic BGR uint8 image [H, W, 3] (contiguous).
at::Tensor bgr_image(int64_t width, int64_t height) {
  auto generator = at::detail::createCPUGenerator(/*seed=*/42);
  return at::randint(0, 256, {height, width, 3}, generator, at::TensorOptions().dtype(at::kByte));
}

torchkit::ImageOptions imagenet_options() {
  return torchkit::ImageOptions{.bgr_to_rgb = true, .mean = kMean, .std = kStd};
}

/// The LibTorch way, op by op.
at::Tensor libtorch_chain(const at::Tensor& hwc, const at::Tensor& mean, const at::Tensor& std) {
  return torch::from_blob(hwc.data_ptr(), hwc.sizes(), torch::kByte)
      .permute({2, 0, 1})
      .flip({0})  // BGR -> RGB
      .to(torch::kFloat)
      .div(255)
      .sub(mean)
      .div(std)
      .unsqueeze(0)
      .contiguous();
}

void set_image_labels(benchmark::State& state, int64_t width, int64_t height) {
  const double bytes_out = static_cast<double>(width * height * 3 * 4);
  state.counters["MB_out"] = bytes_out / 1e6;
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * width * height * 3 * 5);  // read 1 + write 4
}

void BM_ImageToBatch_Torchkit(benchmark::State& state) {
  const auto image = bgr_image(state.range(0), state.range(1));
  const auto options = imagenet_options();
  FaultCounter faults;
  for (auto _ : state) {
    auto batch = torchkit::image_to_batch(image, options);
    benchmark::DoNotOptimize(batch.data_ptr());
  }
  faults.finish(state);
  set_image_labels(state, state.range(0), state.range(1));
}

void BM_ImageToBatch_LibTorchChain(benchmark::State& state) {
  const auto image = bgr_image(state.range(0), state.range(1));
  const auto mean = torch::tensor(kMean, torch::kFloat).view({3, 1, 1});
  const auto std = torch::tensor(kStd, torch::kFloat).view({3, 1, 1});
  FaultCounter faults;
  for (auto _ : state) {
    auto batch = libtorch_chain(image, mean, std);
    benchmark::DoNotOptimize(batch.data_ptr());
  }
  faults.finish(state);
  set_image_labels(state, state.range(0), state.range(1));
}

#if TORCHKIT_WITH_OPENCV
cv::Mat mat_of(const at::Tensor& image) {
  return cv::Mat(static_cast<int>(image.size(0)), static_cast<int>(image.size(1)), CV_8UC3, image.data_ptr());
}

void BM_ImageToBatch_TorchkitMat(benchmark::State& state) {
  const auto image = bgr_image(state.range(0), state.range(1));
  const cv::Mat mat = mat_of(image);
  const auto options = imagenet_options();
  FaultCounter faults;
  for (auto _ : state) {
    auto batch = torchkit::image_to_batch(mat, options);
    benchmark::DoNotOptimize(batch.data_ptr());
  }
  faults.finish(state);
  set_image_labels(state, state.range(0), state.range(1));
}

void BM_ImageToBatch_BlobFromImage(benchmark::State& state) {
  const auto image = bgr_image(state.range(0), state.range(1));
  const cv::Mat mat = mat_of(image);
  // blobFromImage subtracts the mean before scaling, in output (RGB) order.
  const cv::Scalar mean(kMean[0] * 255, kMean[1] * 255, kMean[2] * 255);
  FaultCounter faults;
  for (auto _ : state) {
    cv::Mat blob = cv::dnn::blobFromImage(mat, 1.0 / 255, cv::Size(), mean, /*swapRB=*/true, /*crop=*/false, CV_32F);
    benchmark::DoNotOptimize(blob.data);
  }
  faults.finish(state);
  set_image_labels(state, state.range(0), state.range(1));
}
#endif

void BM_ImageToBatch_Floor(benchmark::State& state) {
  const int64_t width = state.range(0);
  const int64_t height = state.range(1);
  FaultCounter faults;
  for (auto _ : state) {
    auto batch = at::empty({1, 3, height, width}, at::kFloat);
    std::memset(batch.data_ptr(), 0, static_cast<std::size_t>(batch.nbytes()));
    benchmark::DoNotOptimize(batch.data_ptr());
  }
  faults.finish(state);
  set_image_labels(state, width, height);
}

// Writing the output once with ordinary vector stores (ATen's fill_ with a value other than 0):
// what any computed output costs. memset of zeros (Floor) can use `rep stosb`, which writes lines
// without reading them first; a kernel that computes its values cannot (non-temporal stores were
// measured slower here).
void BM_ImageToBatch_FloorStores(benchmark::State& state) {
  const int64_t width = state.range(0);
  const int64_t height = state.range(1);
  FaultCounter faults;
  for (auto _ : state) {
    auto batch = at::empty({1, 3, height, width}, at::kFloat);
    batch.fill_(0.5);
    benchmark::DoNotOptimize(batch.data_ptr());
    benchmark::ClobberMemory();
  }
  faults.finish(state);
  set_image_labels(state, width, height);
}

void BM_ImageToBatch_FloorReused(benchmark::State& state) {
  const int64_t width = state.range(0);
  const int64_t height = state.range(1);
  auto batch = at::empty({1, 3, height, width}, at::kFloat);
  FaultCounter faults;
  for (auto _ : state) {
    std::memset(batch.data_ptr(), 0, static_cast<std::size_t>(batch.nbytes()));
    benchmark::DoNotOptimize(batch.data_ptr());
    benchmark::ClobberMemory();
  }
  faults.finish(state);
  set_image_labels(state, width, height);
}

torchkit::ImageOptions classifier_options() {
  return torchkit::ImageOptions{.resize = torchkit::Resize{.shorter_side = 256},
                                .center_crop = {{224, 224}},
                                .bgr_to_rgb = true,
                                .mean = kMean,
                                .std = kStd};
}

/// torchvision's Resize(256) + CenterCrop(224) + ToTensor + Normalize with LibTorch ops.
at::Tensor libtorch_classifier(const at::Tensor& hwc, const at::Tensor& mean, const at::Tensor& std) {
  const int64_t height = hwc.size(0);
  const int64_t width = hwc.size(1);
  const int64_t new_h = height <= width ? 256 : 256 * height / width;
  const int64_t new_w = height <= width ? 256 * width / height : 256;
  const at::Tensor planes = hwc.permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat);
  const at::Tensor resized = at::_upsample_bilinear2d_aa(planes, {new_h, new_w}, false).round_().clamp_(0, 255);
  const auto centre = [](int64_t d) { return d % 2 == 0 || (d / 2) % 2 == 0 ? d / 2 : d / 2 + 1; };
  const int64_t top = centre(new_h - 224);
  const int64_t left = centre(new_w - 224);
  return resized.slice(2, top, top + 224)
      .slice(3, left, left + 224)
      .flip({1})
      .div(255)
      .sub(mean)
      .div(std)
      .contiguous();
}

void set_classifier_labels(benchmark::State& state) {
  state.counters["MB_out"] = 224.0 * 224 * 3 * 4 / 1e6;
}

void BM_Classifier_Torchkit(benchmark::State& state) {
  const auto image = bgr_image(1920, 1080);
  const auto options = classifier_options();
  for (auto _ : state) {
    auto batch = torchkit::image_to_batch(image, options);
    benchmark::DoNotOptimize(batch.data_ptr());
  }
  set_classifier_labels(state);
}

void BM_Classifier_LibTorchOps(benchmark::State& state) {
  const auto image = bgr_image(1920, 1080);
  const auto mean = torch::tensor(kMean, torch::kFloat).view({3, 1, 1});
  const auto std = torch::tensor(kStd, torch::kFloat).view({3, 1, 1});
  for (auto _ : state) {
    auto batch = libtorch_classifier(image, mean, std);
    benchmark::DoNotOptimize(batch.data_ptr());
  }
  set_classifier_labels(state);
}

#if TORCHKIT_WITH_OPENCV
/// OpenCV's way: resize the shorter side to 256, take the centre 224 x 224 ROI, blobFromImage
/// (which has no per-channel std: it does a little less work than the others).
cv::Mat opencv_classifier(const cv::Mat& bgr, int interpolation) {
  const int new_h = bgr.rows <= bgr.cols ? 256 : 256 * bgr.rows / bgr.cols;
  const int new_w = bgr.rows <= bgr.cols ? 256 * bgr.cols / bgr.rows : 256;
  cv::Mat resized;
  cv::resize(bgr, resized, cv::Size(new_w, new_h), 0, 0, interpolation);
  const cv::Mat roi = resized(cv::Rect((new_w - 224) / 2, (new_h - 224) / 2, 224, 224));
  const cv::Scalar mean(kMean[0] * 255, kMean[1] * 255, kMean[2] * 255);
  return cv::dnn::blobFromImage(roi, 1.0 / 255, cv::Size(), mean, /*swapRB=*/true, /*crop=*/false, CV_32F);
}

void BM_Classifier_TorchkitMat(benchmark::State& state) {
  const auto image = bgr_image(1920, 1080);
  const cv::Mat mat = mat_of(image);
  const auto options = classifier_options();
  for (auto _ : state) {
    auto batch = torchkit::image_to_batch(mat, options);
    benchmark::DoNotOptimize(batch.data_ptr());
  }
  set_classifier_labels(state);
}

void BM_Classifier_OpenCVArea(benchmark::State& state) {
  const auto image = bgr_image(1920, 1080);
  const cv::Mat mat = mat_of(image);
  for (auto _ : state) {
    cv::Mat blob = opencv_classifier(mat, cv::INTER_AREA);
    benchmark::DoNotOptimize(blob.data);
  }
  set_classifier_labels(state);
}

void BM_Classifier_OpenCVLinear(benchmark::State& state) {
  const auto image = bgr_image(1920, 1080);
  const cv::Mat mat = mat_of(image);
  for (auto _ : state) {
    cv::Mat blob = opencv_classifier(mat, cv::INTER_LINEAR);
    benchmark::DoNotOptimize(blob.data);
  }
  set_classifier_labels(state);
}
#endif

void BM_Classifier_Floor(benchmark::State& state) {
  for (auto _ : state) {
    auto batch = at::empty({1, 3, 224, 224}, at::kFloat);
    std::memset(batch.data_ptr(), 0, static_cast<std::size_t>(batch.nbytes()));
    benchmark::DoNotOptimize(batch.data_ptr());
  }
  set_classifier_labels(state);
}

BENCHMARK(BM_Classifier_Torchkit)->Unit(benchmark::kMicrosecond);
#if TORCHKIT_WITH_OPENCV
BENCHMARK(BM_Classifier_TorchkitMat)->Unit(benchmark::kMicrosecond);
#endif
BENCHMARK(BM_Classifier_LibTorchOps)->Unit(benchmark::kMicrosecond);
#if TORCHKIT_WITH_OPENCV
BENCHMARK(BM_Classifier_OpenCVArea)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Classifier_OpenCVLinear)->Unit(benchmark::kMicrosecond);
#endif
BENCHMARK(BM_Classifier_Floor)->Unit(benchmark::kMicrosecond);

constexpr int64_t kLabels = 65536;

at::Tensor labels_for(int64_t num_classes) {
  auto generator = at::detail::createCPUGenerator(/*seed=*/7);
  return at::randint(0, num_classes, {kLabels}, generator, at::TensorOptions().dtype(at::kLong));
}

void set_one_hot_labels(benchmark::State& state, int64_t num_classes) {
  state.counters["MB_out"] = static_cast<double>(kLabels * num_classes * 4) / 1e6;
}

void BM_OneHot_Torchkit(benchmark::State& state) {
  const int64_t num_classes = state.range(0);
  const auto labels = labels_for(num_classes);
  FaultCounter faults;
  for (auto _ : state) {
    auto targets = torchkit::one_hot(labels, num_classes);
    benchmark::DoNotOptimize(targets.data_ptr());
  }
  faults.finish(state);
  set_one_hot_labels(state, num_classes);
}

void BM_OneHot_LibTorchToFloat(benchmark::State& state) {
  const int64_t num_classes = state.range(0);
  const auto labels = labels_for(num_classes);
  FaultCounter faults;
  for (auto _ : state) {
    auto targets = torch::one_hot(labels, num_classes).to(torch::kFloat);
    benchmark::DoNotOptimize(targets.data_ptr());
  }
  faults.finish(state);
  set_one_hot_labels(state, num_classes);
}

void BM_OneHot_LibTorch(benchmark::State& state) {
  const int64_t num_classes = state.range(0);
  const auto labels = labels_for(num_classes);
  FaultCounter faults;
  for (auto _ : state) {
    auto targets = torch::one_hot(labels, num_classes);
    benchmark::DoNotOptimize(targets.data_ptr());
  }
  faults.finish(state);
  set_one_hot_labels(state, num_classes);
}

void BM_OneHot_Floor(benchmark::State& state) {
  const int64_t num_classes = state.range(0);
  FaultCounter faults;
  for (auto _ : state) {
    auto targets = at::empty({kLabels, num_classes}, at::kFloat);
    std::memset(targets.data_ptr(), 0, static_cast<std::size_t>(targets.nbytes()));
    benchmark::DoNotOptimize(targets.data_ptr());
  }
  faults.finish(state);
  set_one_hot_labels(state, num_classes);
}

void image_sizes(benchmark::internal::Benchmark* benchmark) {
  benchmark->Args({224, 224})->Args({1920, 1080})->Unit(benchmark::kMicrosecond);
}

void class_counts(benchmark::internal::Benchmark* benchmark) {
  benchmark->Arg(10)->Arg(1000)->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_ImageToBatch_Torchkit)->Apply(image_sizes);
#if TORCHKIT_WITH_OPENCV
BENCHMARK(BM_ImageToBatch_TorchkitMat)->Apply(image_sizes);
#endif
BENCHMARK(BM_ImageToBatch_LibTorchChain)->Apply(image_sizes);
#if TORCHKIT_WITH_OPENCV
BENCHMARK(BM_ImageToBatch_BlobFromImage)->Apply(image_sizes);
#endif
BENCHMARK(BM_ImageToBatch_Floor)->Apply(image_sizes);
BENCHMARK(BM_ImageToBatch_FloorStores)->Apply(image_sizes);
BENCHMARK(BM_ImageToBatch_FloorReused)->Apply(image_sizes);

BENCHMARK(BM_OneHot_Torchkit)->Apply(class_counts);
BENCHMARK(BM_OneHot_LibTorchToFloat)->Apply(class_counts);
BENCHMARK(BM_OneHot_LibTorch)->Apply(class_counts);
BENCHMARK(BM_OneHot_Floor)->Apply(class_counts);

/// Every way computes the same thing: checked once before timing.
void check_same_results() {
  const auto image = bgr_image(64, 48);
  const auto ours = torchkit::image_to_batch(image, imagenet_options());
  const auto chain = libtorch_chain(image, torch::tensor(kMean, torch::kFloat).view({3, 1, 1}),
                                    torch::tensor(kStd, torch::kFloat).view({3, 1, 1}));
  bool same = torch::allclose(ours, chain, 1e-5, 1e-5);
#if TORCHKIT_WITH_OPENCV
  const cv::Scalar mean(kMean[0] * 255, kMean[1] * 255, kMean[2] * 255);
  const cv::Mat blob = cv::dnn::blobFromImage(mat_of(image), 1.0 / 255, cv::Size(), mean, true, false, CV_32F);
  const auto unit_std = torchkit::image_to_batch(image, {.bgr_to_rgb = true, .mean = kMean});
  same = same && torch::allclose(unit_std, at::from_blob(blob.data, {1, 3, 48, 64}, at::kFloat), 1e-5, 1e-5);
#endif
  // The classifier pipeline: torchkit and the LibTorch ops within one uint8 level.
  const auto frame = bgr_image(640, 360);
  const auto mean_planes = torch::tensor(kMean, torch::kFloat).view({3, 1, 1});
  const auto std_planes = torch::tensor(kStd, torch::kFloat).view({3, 1, 1});
  same = same && torch::allclose(torchkit::image_to_batch(frame, classifier_options()),
                                 libtorch_classifier(frame, mean_planes, std_planes), 0,
                                 1.0 / 255 / 0.224 + 1e-5);
  const auto labels = labels_for(10);
  same = same && torch::equal(torchkit::one_hot(labels, 10), torch::one_hot(labels, 10).to(torch::kFloat));
  if (!same) {
    std::fprintf(stderr, "batch_bench: the implementations disagree\n");
    std::exit(1);
  }
}

/// Removes `--keep_heap` from the arguments; when it was there, makes glibc keep freed memory in
/// the heap (no mmap for large blocks, no trimming), so that reused outputs do not page-fault.
void apply_keep_heap(int& argc, char** argv) {
  bool keep_heap = false;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--keep_heap") == 0) {
      keep_heap = true;
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  if (keep_heap) {
#if defined(__GLIBC__)
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
    std::fprintf(stderr, "batch_bench: --keep_heap: glibc keeps freed memory (no mmap, no trim)\n");
#else
    std::fprintf(stderr, "batch_bench: --keep_heap needs glibc; ignored\n");
#endif
  }
}

}  // namespace

int main(int argc, char** argv) {
  apply_keep_heap(argc, argv);
  at::set_num_threads(1);
#if TORCHKIT_WITH_OPENCV
  cv::setNumThreads(1);
#endif
  check_same_results();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
