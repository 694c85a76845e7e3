// CPU entry points of the lut16 ops (lut16.h): the BT2 -> lut16 repack done once per weight,
// and the decode matmul over a lut16 layout (argument checks, per-token tables, threading).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "ternary/bt2.h"
#include "ternary/checks.h"
#include "ternary/dispatch.h"
#include "ternary/lut16.h"

namespace bitttt::ternary {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// As ternary_linear_cpu.cpp: below this many multiply-adds a call stays on one thread.
constexpr int64_t kMinMacsPerThread = 1 << 21;
// Output rows handed to one task: 4 blocks of 16, the AVX2 kernel's tile.
constexpr int64_t kRowsPerTask = 64;
static_assert(kRowsPerTask % kLut16Rows == 0, "tasks start on a block");

Tensor as_contiguous(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

// Per token: xq [Kp] int8, tables [Kp * kLut16TableBytesPerK], in one allocation with
// x_scale [M] and x_sum [M] at the end (every part stays 32-byte aligned: Kp % 256 == 0).
struct TokenTables {
  Tensor storage;
  int8_t* xq;
  uint8_t* tables;
  float* x_scale;
  int32_t* x_sum;
};

TokenTables allocate_tables(const Tensor& like, int64_t M, int64_t Kp) {
  const int64_t per_token = Kp * (1 + kLut16TableBytesPerK);
  Tensor storage = torch::stable::new_empty(like, {M * per_token + 8 * M + 64}, ScalarType::Byte);
  uint8_t* base = storage.mutable_data_ptr<uint8_t>();
  base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
  return {storage, reinterpret_cast<int8_t*>(base), base + M * Kp, reinterpret_cast<float*>(base + M * per_token),
          reinterpret_cast<int32_t*>(base + M * per_token + 4 * M)};
}

// Tables of every token, then rows [0, N) x tokens [0, M) in tasks across torch's pool.
void run_lut16(const Lut16Kernels& kernels, const TokenTables& t, int64_t M, int64_t Kp, const uint8_t* layout,
               int64_t N, const Epilogue& ep) {
  const int64_t table_grain = std::max<int64_t>(1, kMinMacsPerThread / (Kp * kLut16TableBytesPerK));
  torch::stable::parallel_for(0, M, table_grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) kernels.tables(t.xq + m * Kp, Kp, t.tables + m * Kp * kLut16TableBytesPerK);
  });
  const int64_t n_tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / (std::min(N, kRowsPerTask) * Kp));
  torch::stable::parallel_for(0, M * n_tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t m = task / n_tasks, n0 = task % n_tasks * kRowsPerTask;
      kernels.gemv(t.xq, t.tables + m * Kp * kLut16TableBytesPerK, Kp, layout, m, n0, std::min(N, n0 + kRowsPerTask),
                   ep);
    }
  });
}

// BT2 packed [N, Kp/4] -> lut16 layout [Np, Kp/4] (Np = N rounded up to 16).
Tensor ternary_repack_lut16_cpu(Tensor packed) {
  STD_TORCH_CHECK(packed.dim() == 2, "ternary_repack_lut16: packed must be 2-D [N, Kp/4], got ", packed.dim(),
                  " dims");
  const int64_t N = packed.size(0), Kp = packed.size(1) * kBT2WeightsPerByte;
  STD_TORCH_CHECK(Kp % kBT2PadK == 0, "ternary_repack_lut16: packed has ", packed.size(1),
                  " bytes per row, not a multiple of ", kBT2PadK / kBT2WeightsPerByte, "; pack it with pack_ternary");
  check_packed("ternary_repack_lut16", packed, std::min(Kp, kMaxK));
  const int64_t Np = lut16_padded_rows(N);
  Tensor layout = torch::stable::new_empty(packed, {Np, Kp / kBT2WeightsPerByte}, ScalarType::Byte);
  const uint8_t* in = packed.const_data_ptr<uint8_t>();
  uint8_t* out = layout.mutable_data_ptr<uint8_t>();
  const int64_t blocks = Np / kLut16Rows;
  torch::stable::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    repack_bt2_to_lut16(in, N, Kp, out, begin * kLut16Rows, end * kLut16Rows);
  });
  return layout;
}

// The layout must be [lut16_padded_rows(N), Kp/4] for x's K.
void check_layout(const char* op, const Tensor& layout, int64_t K, int64_t N) {
  check_packed(op, layout, K);
  STD_TORCH_CHECK(layout.size(0) == lut16_padded_rows(N), op, ": layout has ", layout.size(0),
                  " rows, N=", N, " needs ", lut16_padded_rows(N), "; build it with ternary_repack_lut16");
}

Tensor ternary_linear_lut16_cpu(Tensor x, Tensor layout, Tensor w_scale, std::optional<Tensor> bias) {
  // Same checks as ternary_linear, with the layout's rows padded to 16.
  STD_TORCH_CHECK(w_scale.dim() == 1, "ternary_linear_lut16: w_scale must be float32 [N], got ", w_scale.dim(),
                  " dims");
  const int64_t N = w_scale.size(0);
  STD_TORCH_CHECK(x.dim() >= 1, "ternary_linear_lut16: x must have at least 1 dim [..., K]");
  check_layout("ternary_linear_lut16", layout, x.size(x.dim() - 1), N);
  const Tensor rows = torch::stable::narrow(layout, 0, 0, N);  // [N, Kp/4]: shape checks only
  const TernaryShape shape = check_ternary_linear(x, rows, w_scale, bias);
  const int64_t M = shape.M, K = shape.K, Kp = shape.Kp;
  const ScalarType dtype = x.scalar_type();
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = N;
  if (K == 0) return empty_k_output(x, sizes, dtype, bias);
  w_scale = as_contiguous(w_scale);
  std::optional<Tensor> bias_f32;
  if (bias.has_value())
    bias_f32 = as_contiguous(bias->scalar_type() == ScalarType::Float ? *bias
                                                                      : torch::stable::to(*bias, ScalarType::Float));
  x = as_contiguous(x);

  const Lut16Kernels& kernels = active_lut16_kernels();
  const TokenTables t = allocate_tables(x, M, Kp);
  const void* x_p = x.const_data_ptr();
  for (int64_t m = 0; m < M; ++m) {
    if (dtype == ScalarType::Float)
      kernels.quantize_f32(static_cast<const float*>(x_p) + m * K, K, Kp, t.xq + m * Kp, t.x_scale + m, t.x_sum + m);
    else
      kernels.quantize_bf16(static_cast<const uint16_t*>(x_p) + m * K, K, Kp, t.xq + m * Kp, t.x_scale + m,
                            t.x_sum + m);
  }
  Tensor out = torch::stable::new_empty(x, sizes, dtype);
  if (M == 0 || N == 0) return out;
  const Epilogue ep{dtype == ScalarType::Float ? OutKind::Float32 : OutKind::BFloat16,
                    w_scale.const_data_ptr<float>(),
                    bias_f32 ? bias_f32->const_data_ptr<float>() : nullptr,
                    t.x_scale,
                    t.x_sum,
                    out.mutable_data_ptr(),
                    N};
  run_lut16(kernels, t, M, Kp, layout.const_data_ptr<uint8_t>(), N, ep);
  return out;
}

// Exact int32 [M, N] = x @ q.T for int8 x [M, K] over a lut16 layout of N rows.
Tensor ternary_matmul_int8_lut16_cpu(Tensor x, Tensor layout, int64_t N) {
  STD_TORCH_CHECK(N >= 0, "ternary_matmul_int8_lut16: N must be >= 0, got ", N);
  STD_TORCH_CHECK(x.dim() == 2, "ternary_matmul_int8_lut16: x must be 2-D [M, K], got ", x.dim(), " dims");
  check_layout("ternary_matmul_int8_lut16", layout, x.size(1), N);
  const TernaryShape shape = check_ternary_matmul_int8(x, torch::stable::narrow(layout, 0, 0, N));
  const int64_t M = shape.M, K = shape.K, Kp = shape.Kp;
  if (K == 0 || M == 0 || N == 0) return torch::stable::new_zeros(x, {M, N}, ScalarType::Int);
  x = as_contiguous(x);
  const Lut16Kernels& kernels = active_lut16_kernels();
  const TokenTables t = allocate_tables(x, M, Kp);
  for (int64_t m = 0; m < M; ++m) kernels.layout_int8(x.const_data_ptr<int8_t>() + m * K, K, Kp, t.xq + m * Kp, t.x_sum + m);
  Tensor out = torch::stable::new_empty(x, {M, N}, ScalarType::Int);
  const Epilogue ep{OutKind::Int32, nullptr, nullptr, nullptr, t.x_sum, out.mutable_data_ptr(), N};
  run_lut16(kernels, t, M, Kp, layout.const_data_ptr<uint8_t>(), N, ep);
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("ternary_repack_lut16", TORCH_BOX(&ternary_repack_lut16_cpu));
  m.impl("ternary_linear_lut16", TORCH_BOX(&ternary_linear_lut16_cpu));
  m.impl("ternary_matmul_int8_lut16", TORCH_BOX(&ternary_matmul_int8_lut16_cpu));
}

}  // namespace bitttt::ternary
