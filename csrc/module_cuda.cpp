// bitttt._C_cuda: the CUDA implementations of the schemas bitttt._C defines (each kernel file
// registers its own), plus what the build and the runtime know about CUDA. Loading it does not
// create a CUDA context: nothing here touches a device until an op runs or device_count() asks.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <string>

namespace py = pybind11;

#ifndef BITTTT_CUDA_ARCHS
#define BITTTT_CUDA_ARCHS "unknown"
#endif

namespace {

py::dict build_info() {
  py::dict info;
  info["archs"] = std::string(BITTTT_CUDA_ARCHS);
  info["cuda_compiled"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
  return info;
}

// 0 when no driver or no device: a CUDA build must still import and report on a CPU machine.
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  return n;
}

}  // namespace

PYBIND11_MODULE(_C_cuda, mod) {
  mod.doc() = "bitttt CUDA kernels (registered as torch.ops.bitttt.* for CUDA tensors) and CUDA build information";
  mod.def("build_info", &build_info, "CUDA architectures and toolkit this module was compiled for.");
  mod.def("device_count", &device_count, "CUDA devices the runtime sees (0 without a driver or device).");
}
