// Fused BitLinear fake quantization for training (docs/design.md §2): one pass each for the
// per-token int8 activation quantize-dequantize and the absmean ternary weight one. Their
// torch compositions (bitttt/reference.py) take ~15 elementwise passes and as many thread
// pool wake-ups per BitLinear call. The backward is the straight-through estimator (identity),
// so it has no kernel; bitttt/ops.py registers it.
//
// Outputs are x + (dq(x) - x), as the straight-through composition `x + (dq - x).detach()`
// computes them in float32, bit for bit: not dq(x) itself. The exact dequantized weights make
// ties (x * s_x at k + 0.5) in the next layer's activation quantization likely, where a
// prefill and a decode step would then round apart; the composition's rounding noise does
// not. Compiled with -ffp-contract=off so that no FMA changes these roundings.
//
// The row kernels live in fake_quant_kernels.inc, compiled per ISA (fake_quant.h), all with the
// same bits; this file checks, threads and picks the active ISA's set.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "quant/fake_quant.h"
#include "ternary/dispatch.h"

namespace bitttt::quant {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Below this many elements per task a loop stays on one thread: waking the pool costs more.
constexpr int64_t kMinElemsPerTask = 1 << 15;

Tensor contig(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

void check_float_cpu(const char* op, const char* name, const Tensor& t) {
  // None passed for a Tensor argument arrives as an undefined tensor
  STD_TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor, got None");
  STD_TORCH_CHECK(t.is_cpu(), op, ": the CPU kernel takes CPU tensors");
  STD_TORCH_CHECK(t.scalar_type() == ScalarType::Float, op, ": takes float32 (other dtypes use the torch path)");
}

// The row kernels of the active ternary ISA (avx512_emulated and avx2 run the AVX2 file).
const FakeQuantKernels& active_fake_quant() {
  static const FakeQuantKernels scalar_set = scalar::fake_quant_kernels();
#if defined(BITTTT_X86)
  static const FakeQuantKernels avx2_set = avx2::fake_quant_kernels();
  static const FakeQuantKernels avx512_set = avx512::fake_quant_kernels();
  const char* isa = ternary::active_kernels().name;
  if (std::strcmp(isa, "avx512") == 0) return avx512_set;
  if (std::strcmp(isa, "avx2") == 0 || std::strcmp(isa, "avx512_emulated") == 0) return avx2_set;
#endif
  return scalar_set;
}

// fn(begin, end) over blocks of rows of `cols` elements, at least kMinElemsPerTask per task.
template <typename F>
void for_row_blocks(int64_t rows, int64_t cols, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, kMinElemsPerTask / std::max<int64_t>(cols, 1));
  torch::stable::parallel_for(0, rows, grain, fn);
}

template <typename F>
void for_rows(int64_t rows, int64_t cols, const F& fn) {
  for_row_blocks(rows, cols, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r);
  });
}

// x [..., K] float32, as both activation passes take it.
void check_activations(const char* op, const Tensor& x) {
  check_float_cpu(op, "x", x);
  STD_TORCH_CHECK(x.dim() >= 1, op, ": x must have a last (feature) dimension");
}

// w [N, K] float32 and its absmean scale (one float32 value), as both weight passes take them.
void check_weight_and_scale(const char* op, const Tensor& w, const Tensor& scale) {
  check_float_cpu(op, "w", w);
  check_float_cpu(op, "scale", scale);
  STD_TORCH_CHECK(w.dim() == 2, op, ": w must be 2-D [N, K]");
  STD_TORCH_CHECK(scale.numel() == 1, op, ": scale must hold one value");
}

// x [..., K] float32 -> the same shape: per-token int8 quantize-dequantize.
Tensor fake_quant_activations_cpu(Tensor x) {
  const char* op = "fake_quant_activations";
  check_activations(op, x);
  x = contig(x);
  Tensor out = torch::stable::empty_like(x);
  const int64_t K = x.size(x.dim() - 1);
  const int64_t M = K > 0 ? x.numel() / K : 0;
  const float* px = x.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  const FakeQuantKernels& k = active_fake_quant();
  for_rows(M, K, [&](int64_t r) { k.activation_row(px + r * K, po + r * K, K); });
  return out;
}

// w [N, K] float32, s: its absmean scale (a float32 scalar, computed by torch: the reference's
// mean, to the bit) -> dq = round(w / s).clamp(-1, 1) * s.
Tensor fake_quant_weight_cpu(Tensor w, Tensor scale) {
  const char* op = "fake_quant_weight";
  check_weight_and_scale(op, w, scale);
  w = contig(w);
  Tensor out = torch::stable::empty_like(w);
  const int64_t N = w.size(0), K = w.size(1);
  const float* pw = w.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  const float s = *scale.const_data_ptr<float>();
  const FakeQuantKernels& k = active_fake_quant();
  for_row_blocks(N, K, [&](int64_t begin, int64_t end) {
    k.weight_rows(pw, po, K, s, begin, end);
  });
  return out;
}

// The int8 GEMM training forward (bitttt/ops.py _BitLinearFakeQuant): the passes above, also
// writing the int8 codes that torch._int_mm multiplies exactly, and its float epilogue.

// x [..., K] float32 -> (x_dq as fake_quant_activations gives it, x_q int8 [..., K],
// x_scale float32 [...] = 1 / s_x as the ternary kernels compute it; NaN with x_q = 0 for a
// token holding NaN or inf).
std::tuple<Tensor, Tensor, Tensor> fake_quant_activations_int8_cpu(Tensor x) {
  const char* op = "fake_quant_activations_int8";
  check_activations(op, x);
  x = contig(x);
  Tensor out = torch::stable::empty_like(x);
  Tensor xq = torch::stable::new_empty(x, x.sizes(), ScalarType::Char);
  std::vector<int64_t> lead(x.sizes().begin(), x.sizes().end() - 1);
  Tensor x_scale = torch::stable::new_empty(x, lead);
  const int64_t K = x.size(x.dim() - 1);
  const int64_t M = x_scale.numel();
  const float* px = x.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  int8_t* pq = xq.mutable_data_ptr<int8_t>();
  float* ps = x_scale.mutable_data_ptr<float>();
  const FakeQuantKernels& k = active_fake_quant();
  for_rows(M, K, [&](int64_t r) { ps[r] = k.activation_row_int8(px + r * K, po + r * K, pq + r * K, K); });
  return {out, xq, x_scale};
}

// w [N, K] float32 and its absmean scale -> (w_dq as fake_quant_weight gives it, codes int8 [N, K]).
std::tuple<Tensor, Tensor> fake_quant_weight_int8_cpu(Tensor w, Tensor scale) {
  const char* op = "fake_quant_weight_int8";
  check_weight_and_scale(op, w, scale);
  w = contig(w);
  Tensor out = torch::stable::empty_like(w);
  Tensor q = torch::stable::new_empty(w, w.sizes(), ScalarType::Char);
  const int64_t N = w.size(0), K = w.size(1);
  const float* pw = w.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  int8_t* pq = q.mutable_data_ptr<int8_t>();
  const float s = *scale.const_data_ptr<float>();
  const FakeQuantKernels& k = active_fake_quant();
  for_row_blocks(N, K, [&](int64_t begin, int64_t end) {
    k.weight_rows_int8(pw, po, pq, K, s, begin, end);
  });
  return {out, q};
}

// acc int32 [M, N] (x_q @ w_q.T), x_scale float32 [M], w_scale a float32 scalar, bias float32
// [N] or None -> y float32 [M, N] = float(acc) * w_scale * x_scale[m] (+ bias[n]).
Tensor int8_gemm_epilogue_cpu(Tensor acc, Tensor x_scale, Tensor w_scale, std::optional<Tensor> bias) {
  const char* op = "int8_gemm_epilogue";
  STD_TORCH_CHECK(acc.defined(), op, ": acc must be a tensor, got None");
  STD_TORCH_CHECK(acc.is_cpu(), op, ": the CPU kernel takes CPU tensors");
  STD_TORCH_CHECK(acc.scalar_type() == ScalarType::Int && acc.dim() == 2, op, ": acc must be int32 [M, N]");
  check_float_cpu(op, "x_scale", x_scale);
  check_float_cpu(op, "w_scale", w_scale);
  const int64_t M = acc.size(0), N = acc.size(1);
  STD_TORCH_CHECK(x_scale.dim() == 1 && x_scale.size(0) == M, op, ": x_scale must be [M] (one per row of acc)");
  STD_TORCH_CHECK(w_scale.numel() == 1, op, ": w_scale must hold one value");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_float_cpu(op, "bias", *bias);
    STD_TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, op, ": bias must be [N] (one per column of acc)");
  }
  acc = contig(acc);
  x_scale = contig(x_scale);
  Tensor b = has_bias ? contig(*bias) : Tensor();
  Tensor y = torch::stable::new_empty(acc, {M, N}, ScalarType::Float);
  const int32_t* pa = acc.const_data_ptr<int32_t>();
  float* py = y.mutable_data_ptr<float>();
  const float* pxs = x_scale.const_data_ptr<float>();
  const float* pb = has_bias ? b.const_data_ptr<float>() : nullptr;
  const float ws = *w_scale.const_data_ptr<float>();
  const FakeQuantKernels& k = active_fake_quant();
  for_row_blocks(M, N, [&](int64_t begin, int64_t end) {
    k.epilogue_rows(pa, py, N, ws, pxs, pb, begin, end);
  });
  return y;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("fake_quant_activations", TORCH_BOX(&fake_quant_activations_cpu));
  m.impl("fake_quant_weight", TORCH_BOX(&fake_quant_weight_cpu));
  m.impl("fake_quant_activations_int8", TORCH_BOX(&fake_quant_activations_int8_cpu));
  m.impl("fake_quant_weight_int8", TORCH_BOX(&fake_quant_weight_int8_cpu));
  m.impl("int8_gemm_epilogue", TORCH_BOX(&int8_gemm_epilogue_cpu));
}

}  // namespace bitttt::quant
