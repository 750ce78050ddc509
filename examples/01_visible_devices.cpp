// Tip 1: choose which GPUs the process sees.
//
// Python:
//
//     import os
//     os.environ["CUDA_VISIBLE_DEVICES"] = "0"       # one GPU
//     os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"     # two GPUs; the order is the priority order
//     # ... and only then touch CUDA:
//     device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
//
// The catch the tip warns about: CUDA reads the variable once, when it starts. Set it later and
// nothing happens, silently. torchkit::VisibleDevices sets it for the scope it lives in and
// throws instead of doing nothing when CUDA has already started.
#include <torchkit/devices.hpp>

#include <cstdlib>
#include <iostream>
#include <string>

namespace {

std::string current_value() {
  const char* value = std::getenv("CUDA_VISIBLE_DEVICES");
  if (value == nullptr) {
    return "(unset)";
  }
  std::string quoted = "\"";
  quoted.append(value).push_back('"');
  return quoted;
}

}  // namespace

int main() {
  std::cout << "CUDA_VISIBLE_DEVICES at start: " << current_value() << "\n";

  // os.environ["CUDA_VISIBLE_DEVICES"] = "0"
  {
    torchkit::VisibleDevices devices("0");
    std::cout << "inside VisibleDevices(\"0\"):   " << current_value() << "\n";

    // os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"   (nested: restored to "0" at the closing brace)
    {
      torchkit::VisibleDevices two({0, 1});
      std::cout << "inside VisibleDevices({0, 1}): " << current_value() << "\n";
    }
    // Priority order: with "1,0", cuda:0 is physical GPU 1.
    {
      torchkit::VisibleDevices swapped("1,0");
      const auto order = torchkit::parse_device_list(swapped.spec());
      std::cout << "inside VisibleDevices(\"1,0\"): cuda:0 -> physical GPU " << order[0]
                << ", cuda:1 -> physical GPU " << order[1] << "\n";
    }
    std::cout << "back in VisibleDevices(\"0\"):  " << current_value() << "\n";
  }
  std::cout << "after the scope:              " << current_value() << "\n";

  // Mistakes are reported, and change nothing.
  for (const char* spec : {"0,,1", "1,1", "0, 1"}) {
    try {
      torchkit::VisibleDevices devices(spec);
    } catch (const torchkit::Error& error) {
      std::cout << "rejected: " << error.what() << "\n";
    }
  }

  // With torchrun, each process takes the GPU of its LOCAL_RANK (set by torchrun; not set here,
  // so the error explains).
  if (std::getenv("LOCAL_RANK") == nullptr) {
    try {
      auto devices = torchkit::VisibleDevices::for_local_rank();
    } catch (const torchkit::Error& error) {
      std::cout << "for_local_rank: " << error.what() << "\n";
    }
  }

  // Set the devices for the whole program first, then touch CUDA.
  torchkit::VisibleDevices devices("0");
  const c10::Device device = torchkit::best_device();  // starts CUDA where there is one
  std::cout << "best device: " << device << " (CUDA initialised: " << std::boolalpha
            << torchkit::cuda_initialized() << ")\n";

  // Too late now, if CUDA started: this throws instead of silently doing nothing.
  try {
    torchkit::VisibleDevices late("1");
    std::cout << "VisibleDevices(\"1\") after best_device(): accepted, CUDA had not started ("
              << current_value() << ")\n";
  } catch (const torchkit::Error& error) {
    std::cout << "VisibleDevices(\"1\") after best_device(): " << error.what() << "\n";
  }
  return 0;
}
