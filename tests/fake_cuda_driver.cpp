// A stand-in for the CUDA driver library, for test_devices: it has the driver's soname
// (libcuda.so.1, set by tests/CMakeLists.txt) and the two driver entry points torchkit's probe
// cares about, with the driver's behaviour: cuDeviceGetCount answers CUDA_ERROR_NOT_INITIALIZED
// until cuInit has run. Plain C functions and no static constructors, so it unloads cleanly.
extern "C" {

namespace {
int initialised = 0;
}

__attribute__((visibility("default"))) int cuInit(unsigned int flags) {
  if (flags != 0) {
    return 1;  // CUDA_ERROR_INVALID_VALUE, as the driver
  }
  initialised = 1;
  return 0;  // CUDA_SUCCESS
}

__attribute__((visibility("default"))) int cuDeviceGetCount(int* count) {
  if (initialised == 0) {
    return 3;  // CUDA_ERROR_NOT_INITIALIZED
  }
  if (count == nullptr) {
    return 1;  // CUDA_ERROR_INVALID_VALUE
  }
  *count = 2;
  return 0;
}

}  // extern "C"
