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
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace bitttt::quant {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr float kAbsmaxFloor = 1e-5f;  // reference.ABSMAX_FLOOR
// Below this many elements per task a loop stays on one thread: waking the pool costs more.
constexpr int64_t kMinElemsPerTask = 1 << 15;

// Round half to even, as torch.round, for |v| < 2^22: adding 1.5 * 2^23 leaves no fraction bits,
// so the float addition itself rounds (in the default rounding mode). std::nearbyint is a libm
// call per element on baseline x86-64 (no SSE4.1 roundps), ten times the cost of the loop.
inline float round_half_even(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

Tensor contig(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

void check_float_cpu(const char* op, const char* name, const Tensor& t) {
  // None passed for a Tensor argument arrives as an undefined tensor
  STD_TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor, got None");
  STD_TORCH_CHECK(t.is_cpu(), op, ": the CPU kernel takes CPU tensors");
  STD_TORCH_CHECK(t.scalar_type() == ScalarType::Float, op, ": takes float32 (other dtypes use the torch path)");
}

template <typename F>
void for_rows(int64_t rows, int64_t cols, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, kMinElemsPerTask / std::max<int64_t>(cols, 1));
  torch::stable::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r);
  });
}

// One token: x_q = round(x * s).clamp(-128, 127), dq = x_q / s with s = 127 / max(absmax, floor);
// a token holding NaN or ±inf comes out all NaN (as reference.quantize_activations gives).
void fake_quant_row(const float* x, float* out, int64_t K) {
  // |x| as its bit pattern: for non-negative floats the integer order is the float order, and
  // inf and NaN lie above every finite value. An integer max vectorizes; a float one (NaN
  // rules) does not.
  uint32_t max_bits = 0;
  for (int64_t i = 0; i < K; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &x[i], sizeof bits);
    bits &= 0x7fffffffu;
    max_bits = bits > max_bits ? bits : max_bits;
  }
  const bool non_finite = max_bits >= 0x7f800000u;  // inf or NaN
  float absmax;
  std::memcpy(&absmax, &max_bits, sizeof absmax);
  if (non_finite) {
    std::fill(out, out + K, NAN);
    return;
  }
  // A true division, as the reference and the kernels do (127 * (1 / t) rounds differently).
  const float s = 127.0f / std::max(absmax, kAbsmaxFloor);
  for (int64_t i = 0; i < K; ++i) {
    // |x * s| <= 127 here (s = 127 / absmax), well inside round_half_even's range
    const float q = std::min(std::max(round_half_even(x[i] * s), -128.0f), 127.0f);
    out[i] = x[i] + (q / s - x[i]);
  }
}

// x [..., K] float32 -> the same shape: per-token int8 quantize-dequantize.
Tensor fake_quant_activations_cpu(Tensor x) {
  const char* op = "fake_quant_activations";
  check_float_cpu(op, "x", x);
  STD_TORCH_CHECK(x.dim() >= 1, op, ": x must have a last (feature) dimension");
  x = contig(x);
  Tensor out = torch::stable::empty_like(x);
  const int64_t K = x.size(x.dim() - 1);
  const int64_t M = K > 0 ? x.numel() / K : 0;
  const float* px = x.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  for_rows(M, K, [&](int64_t r) { fake_quant_row(px + r * K, po + r * K, K); });
  return out;
}

// w [N, K] float32, s: its absmean scale (a float32 scalar, computed by torch: the reference's
// mean, to the bit) -> dq = round(w / s).clamp(-1, 1) * s.
Tensor fake_quant_weight_cpu(Tensor w, Tensor scale) {
  const char* op = "fake_quant_weight";
  check_float_cpu(op, "w", w);
  check_float_cpu(op, "scale", scale);
  STD_TORCH_CHECK(w.dim() == 2, op, ": w must be 2-D [N, K]");
  STD_TORCH_CHECK(scale.numel() == 1, op, ": scale must hold one value");
  w = contig(w);
  Tensor out = torch::stable::empty_like(w);
  const int64_t N = w.size(0), K = w.size(1);
  const float* pw = w.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  const float s = *scale.const_data_ptr<float>();
  for_rows(N, K, [&](int64_t r) {
    const float* wr = pw + r * K;
    float* outr = po + r * K;
    const float sc = s;  // a local copy: a captured reference is reloaded after every store
    for (int64_t i = 0; i < K; ++i) {
      // clamped to [-2, 2] first (round_half_even's range); the codes are the same. std::min/max
      // (NaN passes through, as the comparisons did) let GCC vectorize the loop (with
      // -fno-trapping-math: the division is then not "control flow"); it was scalar, 4x slower.
      const float v = std::min(std::max(wr[i] / sc, -2.0f), 2.0f);
      const float q = std::min(std::max(round_half_even(v), -1.0f), 1.0f);
      outr[i] = wr[i] + (q * sc - wr[i]);
    }
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("fake_quant_activations", TORCH_BOX(&fake_quant_activations_cpu));
  m.impl("fake_quant_weight", TORCH_BOX(&fake_quant_weight_cpu));
}

}  // namespace bitttt::quant
