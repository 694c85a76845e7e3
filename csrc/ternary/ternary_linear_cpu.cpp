// CPU entry points of the ternary ops: argument checks, activation quantization, threading
// over torch's intra-op pool, and the registration with the dispatcher. Kernels are per ISA
// (ternary_linear_<isa>.cpp) and see raw pointers only.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "ternary/bt2.h"
#include "ternary/checks.h"
#include "ternary/dispatch.h"

namespace bitttt::ternary {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Below this many multiply-adds a call stays on one thread: waking the pool costs more.
constexpr int64_t kMinMacsPerThread = 1 << 21;
// Output rows handed to one task; a multiple of every ISA's row block.
constexpr int64_t kRowsPerTask = 64;
// Tokens handed to one task in the many-token (GEMM) regime.
constexpr int64_t kTokensPerTask = 64;

// contiguous() goes through the dispatcher even when it has nothing to do; skip that call.
Tensor as_contiguous(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

// Per-token quantized activations, in one allocation: xq [M, Kp] int8, then x_scale [M]
// float and x_sum [M] int32 (Kp is a multiple of 256, so both stay 4-byte aligned).
struct QuantizedTokens {
  Tensor storage;
  int8_t* xq;
  float* x_scale;
  int32_t* x_sum;
};

QuantizedTokens allocate_tokens(const Tensor& like, int64_t M, int64_t Kp) {
  Tensor storage = torch::stable::new_empty(like, {std::max<int64_t>(M * (Kp + 8), 1)}, ScalarType::Char);
  int8_t* base = storage.mutable_data_ptr<int8_t>();
  return {storage, base, reinterpret_cast<float*>(base + M * Kp), reinterpret_cast<int32_t*>(base + M * Kp + 4 * M)};
}

std::vector<int64_t> output_sizes(const Tensor& x, int64_t N) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = N;
  return sizes;
}

// Runs matmul over [0, M) x [0, N), split into tasks across torch's thread pool.
void run_matmul(const Bt2Kernels& kernels, const int8_t* xq, int64_t M, int64_t Kp,
                const uint8_t* packed, int64_t N, const Epilogue& ep) {
  if (M == 0 || N == 0) return;
  const int64_t m_tasks = (M + kTokensPerTask - 1) / kTokensPerTask;
  const int64_t n_tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t tasks = m_tasks * n_tasks;
  const int64_t macs_per_task = std::min(M, kTokensPerTask) * std::min(N, kRowsPerTask) * std::max<int64_t>(Kp, 1);
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / macs_per_task);
  torch::stable::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    // Consecutive tasks walk N first, so a thread's tokens stay in cache across row blocks.
    for (int64_t t = begin; t < end; ++t) {
      const int64_t mi = t / n_tasks, ni = t % n_tasks;
      const int64_t m0 = mi * kTokensPerTask, n0 = ni * kRowsPerTask;
      kernels.matmul(xq, Kp, packed, m0, std::min(M, m0 + kTokensPerTask), n0,
                     std::min(N, n0 + kRowsPerTask), ep);
    }
  });
}

Tensor ternary_linear_cpu(Tensor x, Tensor packed, Tensor w_scale, std::optional<Tensor> bias) {
  const TernaryShape shape = check_ternary_linear(x, packed, w_scale, bias);
  const int64_t M = shape.M, K = shape.K, N = shape.N, Kp = shape.Kp;
  const ScalarType dtype = x.scalar_type();
  if (K == 0) return empty_k_output(x, output_sizes(x, N), dtype, bias);
  w_scale = as_contiguous(w_scale);
  const std::optional<Tensor> bias_f32 = bias_as_float32(bias);
  x = as_contiguous(x);

  // Quantize every token once into the active kernel's layout.
  const Bt2Kernels& kernels = active_kernels();
  const QuantizedTokens tokens = allocate_tokens(x, M, Kp);
  int8_t* xq_p = tokens.xq;
  float* x_scale_p = tokens.x_scale;
  int32_t* x_sum_p = tokens.x_sum;
  const void* x_p = x.const_data_ptr();
  const int64_t quant_grain = std::max<int64_t>(1, kMinMacsPerThread / std::max<int64_t>(K, 1));
  torch::stable::parallel_for(0, M, quant_grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      if (dtype == ScalarType::Float)
        kernels.quantize_f32(static_cast<const float*>(x_p) + m * K, K, Kp, xq_p + m * Kp, x_scale_p + m, x_sum_p + m);
      else
        kernels.quantize_bf16(static_cast<const uint16_t*>(x_p) + m * K, K, Kp, xq_p + m * Kp, x_scale_p + m,
                              x_sum_p + m);
    }
  });

  Tensor out = torch::stable::new_empty(x, output_sizes(x, N), dtype);
  const Epilogue ep{dtype == ScalarType::Float ? OutKind::Float32 : OutKind::BFloat16,
                    w_scale.const_data_ptr<float>(),
                    bias_f32 ? bias_f32->const_data_ptr<float>() : nullptr,
                    x_scale_p,
                    x_sum_p,
                    out.mutable_data_ptr(),
                    N};
  run_matmul(kernels, xq_p, M, Kp, packed.const_data_ptr<uint8_t>(), N, ep);
  return out;
}

// Exact integer product of int8 activations [M, K] with BT2 weights: int32 [M, N].
Tensor ternary_matmul_int8_cpu(Tensor xq_in, Tensor packed) {
  const TernaryShape shape = check_ternary_matmul_int8(xq_in, packed);
  const int64_t M = shape.M, K = shape.K, N = shape.N, Kp = shape.Kp;
  if (K == 0) return empty_k_output(xq_in, {M, N}, ScalarType::Int, std::nullopt);
  xq_in = as_contiguous(xq_in);

  const Bt2Kernels& kernels = active_kernels();
  const QuantizedTokens tokens = allocate_tokens(xq_in, M, Kp);
  const int8_t* in_p = xq_in.const_data_ptr<int8_t>();
  int8_t* xq_p = tokens.xq;
  int32_t* x_sum_p = tokens.x_sum;
  for (int64_t m = 0; m < M; ++m) kernels.layout_int8(in_p + m * K, K, Kp, xq_p + m * Kp, x_sum_p + m);

  Tensor out = torch::stable::new_empty(xq_in, {M, N}, ScalarType::Int);
  const Epilogue ep{OutKind::Int32, nullptr, nullptr, nullptr, x_sum_p, out.mutable_data_ptr(), N};
  run_matmul(kernels, xq_p, M, Kp, packed.const_data_ptr<uint8_t>(), N, ep);
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("ternary_linear", TORCH_BOX(&ternary_linear_cpu));
  m.impl("ternary_matmul_int8", TORCH_BOX(&ternary_matmul_int8_cpu));
}

}  // namespace bitttt::ternary
