// What every CUDA kernel file needs: the current torch stream of a tensor's device, a device
// guard, and error checks that raise a one-line RuntimeError like the CPU checks do.
#pragma once

#include <cuda_runtime.h>

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/macros.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/shim_utils.h>

namespace bitttt::cuda {

// The stream torch uses for this device now: kernels run there, ordered with torch's own work.
inline cudaStream_t current_stream(int32_t device_index) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream));
  return static_cast<cudaStream_t>(stream);
}

// Launch errors surface at the launch (bad configuration) or at the next sync (faults);
// check right after each launch so the message names the kernel.
#define BITTTT_CUDA_CHECK(expr, what)                                                         \
  do {                                                                                       \
    cudaError_t bitttt_err_ = (expr);                                                        \
    STD_TORCH_CHECK(bitttt_err_ == cudaSuccess, "bitttt: ", what, ": ", cudaGetErrorString(bitttt_err_)); \
  } while (0)

#define BITTTT_CUDA_CHECK_LAUNCH(what) BITTTT_CUDA_CHECK(cudaGetLastError(), what)

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace bitttt::cuda
