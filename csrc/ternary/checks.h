// Argument checks of the ternary ops (docs/design.md §2), shared by the CPU and CUDA entry
// points so both raise the same one-line RuntimeError for the same mistake. Each check names
// the op, the argument, what was expected and what was given.
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "ternary/bt2.h"

namespace bitttt::ternary {
// Internal linkage, like bt2.h's helpers these call: each extension compiles its own copy.
namespace {

// Sizes of a checked call: x is [M, K] once its leading dims are flattened, packed is [N, Kp/4].
struct TernaryShape {
  int64_t M, K, N, Kp;
};

// The largest K the kernels take: their int32 dot products over Kp codes (each |x_q| <= 128
// times a code <= 2) stay within int32 up to Kp = 2^23, so no sum wraps around.
constexpr int64_t kMaxK = int64_t{1} << 23;

inline void check_packed(const char* op, const torch::stable::Tensor& packed, int64_t K) {
  using torch::headeronly::ScalarType;
  STD_TORCH_CHECK(packed.scalar_type() == ScalarType::Byte, op, ": packed must be uint8 (BT2), got ",
                  torch::headeronly::toString(packed.scalar_type()));
  STD_TORCH_CHECK(packed.dim() == 2, op, ": packed must be 2-D [N, Kp/4], got ", packed.dim(), " dims");
  STD_TORCH_CHECK(packed.is_contiguous(), op, ": packed must be contiguous; call .contiguous() on it");
  STD_TORCH_CHECK(K <= kMaxK, op, ": x.shape[-1]=", K, " is over the kernels' limit of K=", kMaxK,
                  " (their int32 sums would overflow); split the layer along K");
  const int64_t Kp = bt2_padded_k(K);
  STD_TORCH_CHECK(packed.size(1) * kBT2WeightsPerByte == Kp, op, ": x.shape[-1]=", K,
                  " does not fit packed with ", packed.size(1), " bytes per row (K=", K,
                  " needs ", Kp / kBT2WeightsPerByte, "); repack the weight with pack_ternary");
}

// The quantized activations take M * (Kp + 8) bytes: refuse a count whose size overflows
// int64 (x can be an expanded view of a few bytes) before anything is allocated.
inline void check_workspace(const char* op, const TernaryShape& s) {
  STD_TORCH_CHECK(s.M <= std::numeric_limits<int64_t>::max() / (s.Kp + 8) &&
                      s.M <= std::numeric_limits<int64_t>::max() / std::max<int64_t>(s.N, 1),
                  op, ": ", s.M, " tokens of K=", s.K, " and N=", s.N, " are too many for one call; split x");
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
    STD_TORCH_CHECK(bias->scalar_type() == ScalarType::Float || bias->scalar_type() == dtype,
                    "ternary_linear: bias must be float32 or x's dtype ", torch::headeronly::toString(dtype),
                    ", got ", torch::headeronly::toString(bias->scalar_type()));
    STD_TORCH_CHECK(bias->device() == x.device(), "ternary_linear: bias must be on the same device as x");
  }
  // Tokens = the product of the leading dims (not numel / K: K may be 0 with tokens left).
  int64_t M = 1;
  bool no_tokens = false;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) no_tokens = no_tokens || x.size(d) == 0;
  for (int64_t d = 0; d + 1 < x.dim() && !no_tokens; ++d) {
    STD_TORCH_CHECK(M <= std::numeric_limits<int64_t>::max() / x.size(d),  // only possible when K == 0
                    "ternary_linear: x's leading dims hold more than 2^63 tokens");
    M *= x.size(d);
  }
  if (no_tokens) M = 0;
  const TernaryShape shape{M, K, N, bt2_padded_k(K)};
  check_workspace("ternary_linear", shape);
  return shape;
}

// ternary_matmul_int8(x, packed): dtypes and shapes.
inline TernaryShape check_ternary_matmul_int8(const torch::stable::Tensor& x, const torch::stable::Tensor& packed) {
  using torch::headeronly::ScalarType;
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Char, "ternary_matmul_int8: x must be int8, got ",
                  torch::headeronly::toString(x.scalar_type()));
  STD_TORCH_CHECK(x.dim() == 2, "ternary_matmul_int8: x must be 2-D [M, K], got ", x.dim(), " dims");
  const int64_t M = x.size(0), K = x.size(1);
  check_packed("ternary_matmul_int8", packed, K);
  const TernaryShape shape{M, K, packed.size(0), bt2_padded_k(K)};
  check_workspace("ternary_matmul_int8", shape);
  return shape;
}

// K == 0: every dot product is empty, so y = 0 (+ bias) exactly, whatever w_scale holds.
// The entry points return this before any kernel runs: no kernel ever sees Kp == 0.
inline torch::stable::Tensor empty_k_output(const torch::stable::Tensor& x, const std::vector<int64_t>& sizes,
                                            torch::headeronly::ScalarType dtype,
                                            const std::optional<torch::stable::Tensor>& bias) {
  torch::stable::Tensor out = torch::stable::new_zeros(x, sizes, dtype);
  if (bias.has_value() && out.numel() > 0) torch::stable::copy_(out, *bias);  // broadcast over tokens, cast
  return out;
}

// The bias as every epilogue reads it: float32 and contiguous (none stays none).
inline std::optional<torch::stable::Tensor> bias_as_float32(const std::optional<torch::stable::Tensor>& bias) {
  if (!bias.has_value()) return std::nullopt;
  torch::stable::Tensor b = bias->scalar_type() == torch::headeronly::ScalarType::Float
                                ? *bias
                                : torch::stable::to(*bias, torch::headeronly::ScalarType::Float);
  return b.is_contiguous() ? b : torch::stable::contiguous(b);
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
