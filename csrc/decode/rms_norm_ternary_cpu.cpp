// rms_norm_ternary_linear: RMSNorm fused into the ternary layer's activation quantization, for
// the decode step (docs/design.md §4): y = ternary_linear(RMSNorm(x; weight, eps)), where
// RMSNorm is bitttt.nn.norm's (normalize in float32, round to x's dtype, times the weight in
// x's dtype). One call where the unfused path makes eight small ops and a tensor per norm.
// The BT2 kernels are called through their headers (csrc/ternary/bt2.h, dispatch.h).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "ternary/bt2.h"
#include "ternary/checks.h"
#include "ternary/dispatch.h"

namespace bitttt::decode {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
using namespace bitttt::ternary;

constexpr int64_t kMinMacsPerThread = 1 << 21;  // as ternary_linear_cpu: below this, one thread
constexpr int64_t kRowsPerTask = 64;

// One token: out[k] = dtype(dtype(x[k] * r) * w[k]), r = 1 / sqrt(mean(x²) + eps), all in float32.
template <typename LoadX, typename LoadW, typename Store>
void rms_norm_row(int64_t K, float eps, LoadX x, LoadW w, Store out) {
  float ss = 0.f;
  for (int64_t k = 0; k < K; ++k) ss += x(k) * x(k);
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(K) + eps);
  for (int64_t k = 0; k < K; ++k) out(k, x(k) * r, w(k));
}

Tensor rms_norm_ternary_linear_cpu(Tensor x, Tensor norm_weight, double eps, Tensor packed, Tensor w_scale,
                                   std::optional<Tensor> bias) {
  const TernaryShape shape = check_ternary_linear(x, packed, w_scale, bias);
  const int64_t M = shape.M, K = shape.K, N = shape.N, Kp = shape.Kp;
  const ScalarType dtype = x.scalar_type();
  STD_TORCH_CHECK(norm_weight.scalar_type() == dtype && norm_weight.dim() == 1 && norm_weight.size(0) == K,
                  "rms_norm_ternary_linear: norm_weight must be [K=", K, "] in x's dtype");
  STD_TORCH_CHECK(eps > 0, "rms_norm_ternary_linear: eps must be > 0, got ", eps);
  STD_TORCH_CHECK(!bias.has_value() || bias->scalar_type() == ScalarType::Float,
                  "rms_norm_ternary_linear: bias must be float32");
  STD_TORCH_CHECK(K > 0, "rms_norm_ternary_linear: K must be > 0");
  if (!x.is_contiguous()) x = torch::stable::contiguous(x);
  if (!norm_weight.is_contiguous()) norm_weight = torch::stable::contiguous(norm_weight);
  if (!w_scale.is_contiguous()) w_scale = torch::stable::contiguous(w_scale);

  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = N;
  Tensor out = torch::stable::new_empty(x, sizes, dtype);
  if (M == 0 || N == 0) return out;

  // Scratch: the normalized rows in x's dtype, then xq [M, Kp], x_scale [M], x_sum [M].
  const int64_t elt = dtype == ScalarType::Float ? 4 : 2;
  Tensor storage = torch::stable::new_empty(x, {M * K * elt + M * (Kp + 8)}, ScalarType::Char);
  int8_t* base = storage.mutable_data_ptr<int8_t>();
  void* normed = base;
  int8_t* xq = base + M * K * elt;
  float* x_scale = reinterpret_cast<float*>(xq + M * Kp);
  int32_t* x_sum = reinterpret_cast<int32_t*>(xq + M * Kp + 4 * M);

  const Bt2Kernels& kernels = active_kernels();
  const float e = static_cast<float>(eps);
  const void* x_p = x.const_data_ptr();
  const void* w_p = norm_weight.const_data_ptr();
  const int64_t quant_grain = std::max<int64_t>(1, kMinMacsPerThread / K);
  torch::stable::parallel_for(0, M, quant_grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      if (dtype == ScalarType::Float) {
        const float* xr = static_cast<const float*>(x_p) + m * K;
        const float* wr = static_cast<const float*>(w_p);
        float* o = static_cast<float*>(normed) + m * K;
        rms_norm_row(K, e, [&](int64_t k) { return xr[k]; }, [&](int64_t k) { return wr[k]; },
                     [&](int64_t k, float n, float w) { o[k] = w * n; });
        kernels.quantize_f32(o, K, Kp, xq + m * Kp, x_scale + m, x_sum + m);
      } else {
        const uint16_t* xr = static_cast<const uint16_t*>(x_p) + m * K;
        const uint16_t* wr = static_cast<const uint16_t*>(w_p);
        uint16_t* o = static_cast<uint16_t*>(normed) + m * K;
        rms_norm_row(K, e, [&](int64_t k) { return bf16_to_float(xr[k]); },
                     [&](int64_t k) { return bf16_to_float(wr[k]); },
                     [&](int64_t k, float n, float w) { o[k] = float_to_bf16(w * bf16_to_float(float_to_bf16(n))); });
        kernels.quantize_bf16(o, K, Kp, xq + m * Kp, x_scale + m, x_sum + m);
      }
    }
  });

  const Epilogue ep{dtype == ScalarType::Float ? OutKind::Float32 : OutKind::BFloat16,
                    w_scale.const_data_ptr<float>(), bias ? bias->const_data_ptr<float>() : nullptr,
                    x_scale, x_sum, out.mutable_data_ptr(), N};
  const uint8_t* packed_p = packed.const_data_ptr<uint8_t>();
  // Rows split across the pool; each task takes every token (decode: M = 1, or a few slots).
  const int64_t n_tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / (M * std::min(N, kRowsPerTask) * Kp));
  torch::stable::parallel_for(0, n_tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      kernels.matmul(xq, Kp, packed_p, 0, M, t * kRowsPerTask, std::min(N, (t + 1) * kRowsPerTask), ep);
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("rms_norm_ternary_linear", TORCH_BOX(&rms_norm_ternary_linear_cpu));
}

}  // namespace bitttt::decode
