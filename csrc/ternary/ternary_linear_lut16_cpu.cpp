// CPU entry points of the lut16 ops (lut16.h): the BT2 -> lut16 repack done once per weight,
// and the decode matmul over a lut16 layout (argument checks, per-token tables, threading).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <limits>
#include <utility>
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

// ternary_repack_lut16(packed): returns Np, Kp.
std::pair<int64_t, int64_t> check_repack(const Tensor& packed) {
  STD_TORCH_CHECK(packed.dim() == 2, "ternary_repack_lut16: packed must be 2-D [N, Kp/4], got ", packed.dim(),
                  " dims");
  const int64_t Kp = packed.size(1) * kBT2WeightsPerByte;
  STD_TORCH_CHECK(Kp % kBT2PadK == 0, "ternary_repack_lut16: packed has ", packed.size(1),
                  " bytes per row, not a multiple of ", kBT2PadK / kBT2WeightsPerByte, "; pack it with pack_ternary");
  check_packed("ternary_repack_lut16", packed, std::min(Kp, kMaxK));
  return {lut16_padded_rows(packed.size(0)), Kp};
}

// The layout must be [lut16_padded_rows(N), Kp/4] for K.
void check_layout(const char* op, const Tensor& layout, int64_t K, int64_t N) {
  check_packed(op, layout, K);
  STD_TORCH_CHECK(layout.size(0) == lut16_padded_rows(N), op, ": layout has ", layout.size(0),
                  " rows, N=", N, " needs ", lut16_padded_rows(N), "; build it with ternary_repack_lut16");
}

// Tables take Kp * kLut16TableBytesPerK bytes per token: refuse a count whose size
// overflows int64 (x can be an expanded view of a few bytes) before anything is allocated.
void check_table_workspace(const char* op, const TernaryShape& s) {
  STD_TORCH_CHECK(s.M <= std::numeric_limits<int64_t>::max() / (s.Kp * (1 + kLut16TableBytesPerK) + 72), op, ": ",
                  s.M, " tokens of K=", s.K, " are too many for one call; split x");
}

// Every tensor argument on x's device: a mix of CPU and meta reaches the meta kernel.
void check_same_device(const char* op, const Tensor& x, const char* name, const Tensor& t) {
  STD_TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device ", device_name(x.device()),
                  ", got ", device_name(t.device()));
}

// ternary_linear_lut16: the checks of ternary_linear, with the layout's rows padded to 16.
TernaryShape check_linear(const Tensor& x, Tensor layout, const Tensor& w_scale,
                          const std::optional<Tensor>& bias) {
  STD_TORCH_CHECK(w_scale.dim() == 1, "ternary_linear_lut16: w_scale must be float32 [N], got ", w_scale.dim(),
                  " dims");
  STD_TORCH_CHECK(x.dim() >= 1, "ternary_linear_lut16: x must have at least 1 dim [..., K]");
  const int64_t N = w_scale.size(0);
  check_same_device("ternary_linear_lut16", x, "layout", layout);
  check_same_device("ternary_linear_lut16", x, "w_scale", w_scale);
  if (bias.has_value()) check_same_device("ternary_linear_lut16", x, "bias", *bias);
  check_layout("ternary_linear_lut16", layout, x.size(x.dim() - 1), N);
  const TernaryShape shape = check_ternary_linear(x, torch::stable::narrow(layout, 0, 0, N), w_scale, bias);
  check_table_workspace("ternary_linear_lut16", shape);
  return shape;
}

TernaryShape check_matmul_int8(const Tensor& x, Tensor layout, int64_t N) {
  STD_TORCH_CHECK(N >= 0, "ternary_matmul_int8_lut16: N must be >= 0, got ", N);
  STD_TORCH_CHECK(x.dim() == 2, "ternary_matmul_int8_lut16: x must be 2-D [M, K], got ", x.dim(), " dims");
  STD_TORCH_CHECK(N <= std::numeric_limits<int64_t>::max() - kLut16Rows, "ternary_matmul_int8_lut16: N=", N,
                  " is too large");
  check_same_device("ternary_matmul_int8_lut16", x, "layout", layout);
  check_layout("ternary_matmul_int8_lut16", layout, x.size(1), N);
  const TernaryShape shape = check_ternary_matmul_int8(x, torch::stable::narrow(layout, 0, 0, N));
  check_table_workspace("ternary_matmul_int8_lut16", shape);
  return shape;
}

std::vector<int64_t> output_sizes(const Tensor& x, int64_t N) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = N;
  return sizes;
}

// BT2 packed [N, Kp/4] -> lut16 layout [Np, Kp/4] (Np = N rounded up to 16).
Tensor ternary_repack_lut16_cpu(Tensor packed) {
  const auto [Np, Kp_checked] = check_repack(packed);
  // A lambda may not capture a structured binding in C++17 (Clang refuses it), so copy it.
  const int64_t Kp = Kp_checked;
  const int64_t N = packed.size(0);
  Tensor layout = torch::stable::new_empty(packed, {Np, Kp / kBT2WeightsPerByte}, ScalarType::Byte);
  const uint8_t* in = packed.const_data_ptr<uint8_t>();
  uint8_t* out = layout.mutable_data_ptr<uint8_t>();
  torch::stable::parallel_for(0, Np / kLut16Rows, 1, [&](int64_t begin, int64_t end) {
    repack_bt2_to_lut16(in, N, Kp, out, begin * kLut16Rows, end * kLut16Rows);
  });
  return layout;
}

Tensor ternary_linear_lut16_cpu(Tensor x, Tensor layout, Tensor w_scale, std::optional<Tensor> bias) {
  const TernaryShape shape = check_linear(x, layout, w_scale, bias);
  const int64_t M = shape.M, K = shape.K, N = shape.N, Kp = shape.Kp;
  const ScalarType dtype = x.scalar_type();
  if (K == 0) return empty_k_output(x, output_sizes(x, N), dtype, bias);
  w_scale = as_contiguous(w_scale);
  const std::optional<Tensor> bias_f32 = bias_as_float32(bias);
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
  Tensor out = torch::stable::new_empty(x, output_sizes(x, N), dtype);
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
  const TernaryShape shape = check_matmul_int8(x, layout, N);
  const int64_t M = shape.M, K = shape.K, Kp = shape.Kp;
  if (K == 0 || M == 0 || N == 0) return torch::stable::new_zeros(x, {M, N}, ScalarType::Int);
  x = as_contiguous(x);
  const Lut16Kernels& kernels = active_lut16_kernels();
  const TokenTables t = allocate_tables(x, M, Kp);
  const int8_t* x_p = x.const_data_ptr<int8_t>();
  for (int64_t m = 0; m < M; ++m) kernels.layout_int8(x_p + m * K, K, Kp, t.xq + m * Kp, t.x_sum + m);
  Tensor out = torch::stable::new_empty(x, {M, N}, ScalarType::Int);
  const Epilogue ep{OutKind::Int32, nullptr, nullptr, nullptr, t.x_sum, out.mutable_data_ptr(), N};
  run_lut16(kernels, t, M, Kp, layout.const_data_ptr<uint8_t>(), N, ep);
  return out;
}

// Meta (fake) kernels: the same checks, output metadata only, so torch.compile traces the
// ops and meta tensors are refused exactly where CPU ones are.
Tensor ternary_repack_lut16_meta(Tensor packed) {
  const auto [Np, Kp] = check_repack(packed);
  return torch::stable::new_empty(packed, {Np, Kp / kBT2WeightsPerByte}, ScalarType::Byte);
}

Tensor ternary_linear_lut16_meta(Tensor x, Tensor layout, Tensor w_scale, std::optional<Tensor> bias) {
  const TernaryShape shape = check_linear(x, layout, w_scale, bias);
  return torch::stable::new_empty(x, output_sizes(x, shape.N), x.scalar_type());
}

Tensor ternary_matmul_int8_lut16_meta(Tensor x, Tensor layout, int64_t N) {
  const TernaryShape shape = check_matmul_int8(x, layout, N);
  return torch::stable::new_empty(x, {shape.M, N}, ScalarType::Int);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("ternary_repack_lut16", TORCH_BOX(&ternary_repack_lut16_cpu));
  m.impl("ternary_linear_lut16", TORCH_BOX(&ternary_linear_lut16_cpu));
  m.impl("ternary_matmul_int8_lut16", TORCH_BOX(&ternary_matmul_int8_lut16_cpu));
}

STABLE_TORCH_LIBRARY_IMPL(bitttt, Meta, m) {
  m.impl("ternary_repack_lut16", TORCH_BOX(&ternary_repack_lut16_meta));
  m.impl("ternary_linear_lut16", TORCH_BOX(&ternary_linear_lut16_meta));
  m.impl("ternary_matmul_int8_lut16", TORCH_BOX(&ternary_matmul_int8_lut16_meta));
}

}  // namespace bitttt::ternary
