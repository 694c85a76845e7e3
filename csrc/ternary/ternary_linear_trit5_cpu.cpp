// CPU entry points of the trit5 ops (trit5.h): the BT2 -> trit5 repack done once per weight,
// and ternary_linear / ternary_matmul_int8 over a trit5 layout (argument checks, activation
// quantization into Kt-byte rows, threading).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "ternary/bt2.h"
#include "ternary/checks.h"
#include "ternary/dispatch.h"
#include "ternary/trit5.h"

namespace bitttt::ternary {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// As ternary_linear_cpu.cpp: below this many multiply-adds a call stays on one thread.
constexpr int64_t kMinMacsPerThread = 1 << 21;
// Output rows handed to one task (a multiple of every kernel's decode tile).
constexpr int64_t kRowsPerTask = 64;

Tensor as_contiguous(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

// Quantized activations: xq [M, Kt] int8, then x_scale [M] and x_sum [M], in one allocation.
struct Activations {
  Tensor storage;
  int8_t* xq;
  float* x_scale;
  int32_t* x_sum;
};

Activations allocate_activations(const Tensor& like, int64_t M, int64_t Kt) {
  Tensor storage = torch::stable::new_empty(like, {M * (Kt + 8) + 64}, ScalarType::Byte);
  uint8_t* base = storage.mutable_data_ptr<uint8_t>();
  base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
  return {storage, reinterpret_cast<int8_t*>(base), reinterpret_cast<float*>(base + M * Kt),
          reinterpret_cast<int32_t*>(base + M * Kt + 4 * M)};
}

void run_trit5(const Trit5Kernels& kernels, const Activations& a, int64_t M, int64_t Kt, const uint8_t* layout,
               int64_t N, const Epilogue& ep) {
  const int64_t n_tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / (std::min(N, kRowsPerTask) * Kt * M));
  // One kernel call per task, not per range: the kernel walks its rows once per 4 tokens (and
  // once per token left over), and 64 rows (32 KiB at K = 2560) are still in L1/L2 for the next
  // walk, a thread's whole range is not: bitttt serve's 8 tokens read the weights from memory once.
  torch::stable::parallel_for(0, n_tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      kernels.matmul(a.xq, Kt, layout, 0, M, t * kRowsPerTask, std::min(N, (t + 1) * kRowsPerTask), ep);
  });
}

void check_same_device(const char* op, const Tensor& x, const char* name, const Tensor& t) {
  STD_TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device ", device_name(x.device()),
                  ", got ", device_name(t.device()));
}

// A trit5 layout for K: uint8 [N, trit5_row_bytes(K)], contiguous.
void check_layout(const char* op, const Tensor& layout, int64_t K, int64_t N) {
  STD_TORCH_CHECK(layout.scalar_type() == ScalarType::Byte, op, ": layout must be uint8 (trit5), got ",
                  torch::headeronly::toString(layout.scalar_type()));
  STD_TORCH_CHECK(layout.dim() == 2, op, ": layout must be 2-D [N, Kt/5], got ", layout.dim(), " dims");
  STD_TORCH_CHECK(layout.is_contiguous(), op, ": layout must be contiguous; call .contiguous() on it");
  STD_TORCH_CHECK(K <= kMaxK, op, ": x.shape[-1]=", K, " is over the kernels' limit of K=", kMaxK,
                  " (their int32 sums would overflow); split the layer along K");
  STD_TORCH_CHECK(layout.size(0) == N && layout.size(1) == trit5_row_bytes(K), op, ": layout is [", layout.size(0),
                  ", ", layout.size(1), "], x.shape[-1]=", K, " and N=", N, " need [", N, ", ", trit5_row_bytes(K),
                  "]; build it with ternary_repack_trit5(packed, K)");
}

// The activations take M * (Kt + 8) bytes: refuse a count whose size overflows int64.
void check_trit5_workspace(const char* op, int64_t M, int64_t K) {
  STD_TORCH_CHECK(M <= std::numeric_limits<int64_t>::max() / (trit5_padded_k(K) + 72), op, ": ", M,
                  " tokens of K=", K, " are too many for one call; split x");
}

// ternary_repack_trit5(packed, K): returns N.
int64_t check_repack(const Tensor& packed, int64_t K) {
  STD_TORCH_CHECK(K >= 0, "ternary_repack_trit5: K must be >= 0, got ", K);
  check_packed("ternary_repack_trit5", packed, K);
  return packed.size(0);
}

struct Trit5Shape {
  int64_t M, K, N;
};

Trit5Shape check_linear(const Tensor& x, const Tensor& layout, const Tensor& w_scale,
                        const std::optional<Tensor>& bias) {
  const char* op = "ternary_linear_trit5";
  STD_TORCH_CHECK(w_scale.dim() == 1, op, ": w_scale must be float32 [N], got ", w_scale.dim(), " dims");
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float || x.scalar_type() == ScalarType::BFloat16, op,
                  ": x must be float32 or bfloat16, got ", torch::headeronly::toString(x.scalar_type()));
  STD_TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dim [..., K]");
  check_same_device(op, x, "layout", layout);
  check_same_device(op, x, "w_scale", w_scale);
  if (bias.has_value()) check_same_device(op, x, "bias", *bias);
  const int64_t N = w_scale.size(0), K = x.size(x.dim() - 1);
  check_layout(op, layout, K, N);
  STD_TORCH_CHECK(w_scale.scalar_type() == ScalarType::Float, op, ": w_scale must be float32 [N], got ",
                  torch::headeronly::toString(w_scale.scalar_type()));
  if (bias.has_value()) {
    STD_TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, op, ": bias must be [N=", N, "], got ", bias->dim(),
                    " dims and ", bias->numel(), " elements");
    STD_TORCH_CHECK(bias->scalar_type() == ScalarType::Float || bias->scalar_type() == x.scalar_type(), op,
                    ": bias must be float32 or x's dtype, got ", torch::headeronly::toString(bias->scalar_type()));
  }
  int64_t M = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) M = x.size(d) == 0 ? 0 : M;
  for (int64_t d = 0; d + 1 < x.dim() && M > 0; ++d) {
    STD_TORCH_CHECK(M <= std::numeric_limits<int64_t>::max() / x.size(d), op,
                    ": x's leading dims hold more than 2^63 tokens");
    M *= x.size(d);
  }
  check_trit5_workspace(op, M, K);
  STD_TORCH_CHECK(M <= std::numeric_limits<int64_t>::max() / std::max<int64_t>(N, 1), op, ": ", M,
                  " tokens and N=", N, " are too many for one call; split x");
  return {M, K, N};
}

Trit5Shape check_matmul_int8(const Tensor& x, const Tensor& layout, int64_t N) {
  const char* op = "ternary_matmul_int8_trit5";
  STD_TORCH_CHECK(N >= 0, op, ": N must be >= 0, got ", N);
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Char, op, ": x must be int8, got ",
                  torch::headeronly::toString(x.scalar_type()));
  STD_TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [M, K], got ", x.dim(), " dims");
  check_same_device(op, x, "layout", layout);
  const int64_t M = x.size(0), K = x.size(1);
  check_layout(op, layout, K, N);
  check_trit5_workspace(op, M, K);
  STD_TORCH_CHECK(M <= std::numeric_limits<int64_t>::max() / std::max<int64_t>(N, 1), op, ": ", M,
                  " tokens and N=", N, " are too many for one call; split x");
  return {M, K, N};
}

std::vector<int64_t> output_sizes(const Tensor& x, int64_t N) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = N;
  return sizes;
}

// BT2 packed [N, Kp/4] of K weights per row -> trit5 layout [N, trit5_row_bytes(K)].
Tensor ternary_repack_trit5_cpu(Tensor packed, int64_t K) {
  const int64_t N = check_repack(packed, K);
  Tensor layout = torch::stable::new_empty(packed, {N, trit5_row_bytes(K)}, ScalarType::Byte);
  const uint8_t* in = packed.const_data_ptr<uint8_t>();
  uint8_t* out = layout.mutable_data_ptr<uint8_t>();
  torch::stable::parallel_for(0, N, 16,
                              [&](int64_t begin, int64_t end) { repack_bt2_to_trit5(in, K, out, begin, end); });
  return layout;
}

Tensor ternary_linear_trit5_cpu(Tensor x, Tensor layout, Tensor w_scale, std::optional<Tensor> bias) {
  const Trit5Shape s = check_linear(x, layout, w_scale, bias);
  const ScalarType dtype = x.scalar_type();
  if (s.K == 0) return empty_k_output(x, output_sizes(x, s.N), dtype, bias);
  w_scale = as_contiguous(w_scale);
  const std::optional<Tensor> bias_f32 = bias_as_float32(bias);
  x = as_contiguous(x);
  const Trit5Kernels& kernels = active_trit5_kernels();
  const int64_t Kt = trit5_padded_k(s.K);
  const Activations a = allocate_activations(x, s.M, Kt);
  const void* x_p = x.const_data_ptr();
  for (int64_t m = 0; m < s.M; ++m) {
    if (dtype == ScalarType::Float)
      kernels.quantize_f32(static_cast<const float*>(x_p) + m * s.K, s.K, Kt, a.xq + m * Kt, a.x_scale + m,
                           a.x_sum + m);
    else
      kernels.quantize_bf16(static_cast<const uint16_t*>(x_p) + m * s.K, s.K, Kt, a.xq + m * Kt, a.x_scale + m,
                            a.x_sum + m);
  }
  Tensor out = torch::stable::new_empty(x, output_sizes(x, s.N), dtype);
  if (s.M == 0 || s.N == 0) return out;
  const Epilogue ep{dtype == ScalarType::Float ? OutKind::Float32 : OutKind::BFloat16,
                    w_scale.const_data_ptr<float>(),
                    bias_f32 ? bias_f32->const_data_ptr<float>() : nullptr,
                    a.x_scale,
                    a.x_sum,
                    out.mutable_data_ptr(),
                    s.N};
  run_trit5(kernels, a, s.M, Kt, layout.const_data_ptr<uint8_t>(), s.N, ep);
  return out;
}

// Exact int32 [M, N] = x @ q.T for int8 x [M, K] over a trit5 layout of N rows.
Tensor ternary_matmul_int8_trit5_cpu(Tensor x, Tensor layout, int64_t N) {
  const Trit5Shape s = check_matmul_int8(x, layout, N);
  if (s.K == 0 || s.M == 0 || N == 0) return torch::stable::new_zeros(x, {s.M, N}, ScalarType::Int);
  x = as_contiguous(x);
  const Trit5Kernels& kernels = active_trit5_kernels();
  const int64_t Kt = trit5_padded_k(s.K);
  const Activations a = allocate_activations(x, s.M, Kt);
  const int8_t* x_p = x.const_data_ptr<int8_t>();
  for (int64_t m = 0; m < s.M; ++m) kernels.layout_int8(x_p + m * s.K, s.K, Kt, a.xq + m * Kt, a.x_sum + m);
  Tensor out = torch::stable::new_empty(x, {s.M, N}, ScalarType::Int);
  const Epilogue ep{OutKind::Int32, nullptr, nullptr, nullptr, a.x_sum, out.mutable_data_ptr(), N};
  run_trit5(kernels, a, s.M, Kt, layout.const_data_ptr<uint8_t>(), N, ep);
  return out;
}

// Meta (fake) kernels: the same checks, output metadata only.
Tensor ternary_repack_trit5_meta(Tensor packed, int64_t K) {
  const int64_t N = check_repack(packed, K);
  return torch::stable::new_empty(packed, {N, trit5_row_bytes(K)}, ScalarType::Byte);
}

Tensor ternary_linear_trit5_meta(Tensor x, Tensor layout, Tensor w_scale, std::optional<Tensor> bias) {
  const Trit5Shape s = check_linear(x, layout, w_scale, bias);
  return torch::stable::new_empty(x, output_sizes(x, s.N), x.scalar_type());
}

Tensor ternary_matmul_int8_trit5_meta(Tensor x, Tensor layout, int64_t N) {
  const Trit5Shape s = check_matmul_int8(x, layout, N);
  return torch::stable::new_empty(x, {s.M, N}, ScalarType::Int);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("ternary_repack_trit5", TORCH_BOX(&ternary_repack_trit5_cpu));
  m.impl("ternary_linear_trit5", TORCH_BOX(&ternary_linear_trit5_cpu));
  m.impl("ternary_matmul_int8_trit5", TORCH_BOX(&ternary_matmul_int8_trit5_cpu));
}

STABLE_TORCH_LIBRARY_IMPL(bitttt, Meta, m) {
  m.impl("ternary_repack_trit5", TORCH_BOX(&ternary_repack_trit5_meta));
  m.impl("ternary_linear_trit5", TORCH_BOX(&ternary_linear_trit5_meta));
  m.impl("ternary_matmul_int8_trit5", TORCH_BOX(&ternary_matmul_int8_trit5_meta));
}

}  // namespace bitttt::ternary
