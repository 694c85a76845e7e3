// Argument checks of the ternary ops (docs/design.md §2), shared by the CPU and CUDA entry
// points so both raise the same one-line RuntimeError for the same mistake. Each check names
// the op, the argument, what was expected and what was given.
#pragma once

#include <torch/csrc/stable/tensor.h>

#include <cstdint>
#include <optional>
#include <string>

#include "ternary/bt2.h"

namespace bitttt::ternary {
// Internal linkage, like bt2.h's helpers these call: each extension compiles its own copy.
namespace {

// Sizes of a checked call: x is [M, K] once its leading dims are flattened, packed is [N, Kp/4].
struct TernaryShape {
  int64_t M, K, N, Kp;
};

inline void check_packed(const char* op, const torch::stable::Tensor& packed, int64_t K) {
  using torch::headeronly::ScalarType;
  STD_TORCH_CHECK(packed.scalar_type() == ScalarType::Byte, op, ": packed must be uint8 (BT2), got ",
                  torch::headeronly::toString(packed.scalar_type()));
  STD_TORCH_CHECK(packed.dim() == 2, op, ": packed must be 2-D [N, Kp/4], got ", packed.dim(), " dims");
  STD_TORCH_CHECK(packed.is_contiguous(), op, ": packed must be contiguous; call .contiguous() on it");
  const int64_t Kp = bt2_padded_k(K);
  STD_TORCH_CHECK(packed.size(1) * kBT2WeightsPerByte == Kp, op, ": x.shape[-1]=", K,
                  " does not fit packed with ", packed.size(1), " bytes per row (K=", K,
                  " needs ", Kp / kBT2WeightsPerByte, "); repack the weight with pack_ternary");
}

// ternary_linear(x, packed, w_scale, bias): dtypes and shapes (devices: see check_same_cuda_device).
inline TernaryShape check_ternary_linear(const torch::stable::Tensor& x, const torch::stable::Tensor& packed,
                                         const torch::stable::Tensor& w_scale,
                                         const std::optional<torch::stable::Tensor>& bias) {
  using torch::headeronly::ScalarType;
  const ScalarType dtype = x.scalar_type();
  STD_TORCH_CHECK(dtype == ScalarType::Float || dtype == ScalarType::BFloat16,
                  "ternary_linear: x must be float32 or bfloat16, got ", torch::headeronly::toString(dtype));
  STD_TORCH_CHECK(x.dim() >= 1, "ternary_linear: x must have at least 1 dim [..., K]");
  const int64_t K = x.size(x.dim() - 1);
  check_packed("ternary_linear", packed, K);
  const int64_t N = packed.size(0);
  STD_TORCH_CHECK(w_scale.scalar_type() == ScalarType::Float && w_scale.dim() == 1 && w_scale.size(0) == N,
                  "ternary_linear: w_scale must be float32 [N=", N, "], got ",
                  torch::headeronly::toString(w_scale.scalar_type()), " with ", w_scale.dim(), " dims and ",
                  w_scale.numel(), " elements");
  if (bias.has_value()) {
    STD_TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "ternary_linear: bias must be [N=", N, "], got ",
                    bias->dim(), " dims and ", bias->numel(), " elements");
    STD_TORCH_CHECK(bias->device() == x.device(), "ternary_linear: bias must be on the same device as x");
  }
  const int64_t M = K == 0 ? x.numel() : x.numel() / K;  // K == 0: every row is empty
  return {M, K, N, bt2_padded_k(K)};
}

// ternary_matmul_int8(x, packed): dtypes and shapes.
inline TernaryShape check_ternary_matmul_int8(const torch::stable::Tensor& x, const torch::stable::Tensor& packed) {
  using torch::headeronly::ScalarType;
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Char, "ternary_matmul_int8: x must be int8, got ",
                  torch::headeronly::toString(x.scalar_type()));
  STD_TORCH_CHECK(x.dim() == 2, "ternary_matmul_int8: x must be 2-D [M, K], got ", x.dim(), " dims");
  const int64_t M = x.size(0), K = x.size(1);
  check_packed("ternary_matmul_int8", packed, K);
  return {M, K, packed.size(0), bt2_padded_k(K)};
}

inline std::string device_name(const torch::stable::Device& d) {
  if (d.is_cpu()) return "cpu";
  return (d.is_cuda() ? std::string("cuda:") : std::string("device type ") + std::to_string(int(d.type())) + ":") +
         std::to_string(d.index());
}

// CUDA entry points: the dispatcher sends a call here when any tensor is on CUDA, so a CPU
// tensor (or one on another GPU) among the arguments must be refused, not dereferenced.
inline void check_same_cuda_device(const char* op, const torch::stable::Tensor& x, const char* name,
                                   const torch::stable::Tensor& t) {
  STD_TORCH_CHECK(x.device().is_cuda(), op, ": x must be on a CUDA device like ", name, " (", device_name(t.device()),
                  "), got ", device_name(x.device()));
  STD_TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device ", device_name(x.device()),
                  ", got ", device_name(t.device()));
}

}  // namespace
}  // namespace bitttt::ternary
