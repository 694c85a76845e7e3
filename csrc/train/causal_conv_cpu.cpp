// Causal depthwise conv over time in the layout the TTT layer holds ([B, T, C]), forward and
// backward, float32 on the CPU (bitttt.nn.ttt.CausalDepthwiseConv; issue 26). nn.Conv1d wants
// [B, C, T]: the layer paid a cat with the previous inputs, two transposing copies and oneDNN's
// depthwise conv (slow at kernel 4) forward, and as much again backward.
//
// With xp = cat(prev, x) along time (prev: the K−1 inputs before x), for t < T:
//   y[b,t,c] = (Σ_{j<K} w[c,j] · xp[b,t+j,c]) + bias[c]     (j in order: the decode step's sum)
// Backward, for g = dL/dy:
//   dxp[b,s,c] = Σ_j g[b,s−j,c] · w[c,j] (0 <= s−j < T);  dw[c,j] = Σ_{b,t} g[b,t,c] · xp[b,t+j,c];
//   dbias[c] = Σ_{b,t} g[b,t,c].
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "train/checks.h"

namespace bitttt::train {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr int64_t kMinElemsPerTask = 1 << 15;  // below this a loop stays on one thread
constexpr int64_t kColBlock = 64;              // channels per dw task
constexpr int64_t kMaxKernel = 64;             // accumulators per channel live on the stack

struct ConvShape {
  int64_t B, T, C, K;
};

ConvShape check_conv_args(const char* op, const Tensor& x, const Tensor& prev, const Tensor& weight,
                          const Tensor& bias) {
  check_float_cpu(op, "x", x);
  check_float_cpu(op, "prev", prev);
  check_float_cpu(op, "weight", weight);
  check_float_cpu(op, "bias", bias);
  STD_TORCH_CHECK(x.dim() == 3, op, ": x must be [B, T, C], got ", x.dim(), "-D");
  STD_TORCH_CHECK(weight.dim() == 2, op, ": weight must be [C, K], got ", weight.dim(), "-D");
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = weight.size(1);
  STD_TORCH_CHECK(weight.size(0) == C, op, ": weight must be [C=", C, ", K], got [", weight.size(0), ", ", K, "]");
  STD_TORCH_CHECK(K >= 1 && K <= kMaxKernel, op, ": kernel size K must be in [1, ", kMaxKernel, "], got ", K);
  STD_TORCH_CHECK(bias.dim() == 1 && bias.size(0) == C, op, ": bias must be [C=", C, "]");
  STD_TORCH_CHECK(prev.dim() == 3 && prev.size(0) == B && prev.size(1) == K - 1 && prev.size(2) == C, op,
                  ": prev must be [B=", B, ", K-1=", K - 1, ", C=", C, "]");
  return {B, T, C, K};
}

// xp[b, s, c] for s in [0, T+K−1): prev for s < K−1, x after.
inline const float* xp_row(const float* px, const float* pp, const ConvShape& s, int64_t b, int64_t i) {
  return i < s.K - 1 ? pp + (b * (s.K - 1) + i) * s.C : px + (b * s.T + i - (s.K - 1)) * s.C;
}

template <typename F>
void for_rows(int64_t rows, int64_t cols, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, kMinElemsPerTask / std::max<int64_t>(cols, 1));
  torch::stable::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r);
  });
}

// x [B, T, C], prev [B, K−1, C], weight [C, K], bias [C] -> y [B, T, C].
Tensor causal_conv1d_cpu(Tensor x, Tensor prev, Tensor weight, Tensor bias) {
  const ConvShape s = check_conv_args("causal_conv1d", x, prev, weight, bias);
  x = contig(x);
  prev = contig(prev);
  weight = contig(weight);
  bias = contig(bias);
  Tensor y = torch::stable::empty_like(x);
  const float* px = x.const_data_ptr<float>();
  const float* pp = prev.const_data_ptr<float>();
  const float* pw = weight.const_data_ptr<float>();
  const float* pb = bias.const_data_ptr<float>();
  float* py = y.mutable_data_ptr<float>();
  // weight transposed to [K, C] so the inner loop runs over contiguous channels
  std::vector<float> wt(s.K * s.C);
  for (int64_t c = 0; c < s.C; ++c)
    for (int64_t j = 0; j < s.K; ++j) wt[j * s.C + c] = pw[c * s.K + j];
  const float* pwt = wt.data();
  for_rows(s.B * s.T, s.C * s.K, [&](int64_t row) {
    const int64_t b = row / s.T, t = row % s.T;
    float* yr = py + row * s.C;
    std::fill(yr, yr + s.C, 0.0f);
    for (int64_t j = 0; j < s.K; ++j) {
      const float* xr = xp_row(px, pp, s, b, t + j);
      const float* wj = pwt + j * s.C;
      for (int64_t c = 0; c < s.C; ++c) yr[c] += wj[c] * xr[c];
    }
    for (int64_t c = 0; c < s.C; ++c) yr[c] += pb[c];
  });
  return y;
}

// grad [B, T, C] and the forward's inputs -> (grad_x, grad_prev, grad_weight [C, K], grad_bias [C]).
std::tuple<Tensor, Tensor, Tensor, Tensor> causal_conv1d_backward_cpu(Tensor grad, Tensor x, Tensor prev,
                                                                      Tensor weight, Tensor bias) {
  const char* op = "causal_conv1d_backward";
  const ConvShape s = check_conv_args(op, x, prev, weight, bias);
  check_float_cpu(op, "grad", grad);
  STD_TORCH_CHECK(grad.dim() == 3 && grad.size(0) == s.B && grad.size(1) == s.T && grad.size(2) == s.C, op,
                  ": grad must have x's shape [B, T, C]");
  grad = contig(grad);
  x = contig(x);
  prev = contig(prev);
  weight = contig(weight);
  Tensor gx = torch::stable::empty_like(x);
  Tensor gp = torch::stable::empty_like(prev);
  Tensor gw = torch::stable::empty_like(weight);
  Tensor gb = torch::stable::empty_like(bias);
  const float* pg = grad.const_data_ptr<float>();
  const float* px = x.const_data_ptr<float>();
  const float* pp = prev.const_data_ptr<float>();
  const float* pw = weight.const_data_ptr<float>();
  float* pgx = gx.mutable_data_ptr<float>();
  float* pgp = gp.mutable_data_ptr<float>();
  float* pgw = gw.mutable_data_ptr<float>();
  float* pgb = gb.mutable_data_ptr<float>();
  std::vector<float> wt(s.K * s.C);
  for (int64_t c = 0; c < s.C; ++c)
    for (int64_t j = 0; j < s.K; ++j) wt[j * s.C + c] = pw[c * s.K + j];
  const float* pwt = wt.data();
  // dxp row i = b's time step i of xp: the outputs t = i − j that read it
  const int64_t S = s.T + s.K - 1;
  for_rows(s.B * S, s.C * s.K, [&](int64_t row) {
    const int64_t b = row / S, i = row % S;
    float* out = i < s.K - 1 ? pgp + (b * (s.K - 1) + i) * s.C : pgx + (b * s.T + i - (s.K - 1)) * s.C;
    std::fill(out, out + s.C, 0.0f);
    for (int64_t j = 0; j < s.K; ++j) {
      const int64_t t = i - j;
      if (t < 0 || t >= s.T) continue;
      const float* gr = pg + (b * s.T + t) * s.C;
      const float* wj = pwt + j * s.C;
      for (int64_t c = 0; c < s.C; ++c) out[c] += gr[c] * wj[c];
    }
  });
  // dw, dbias: each task owns a block of channels and walks every (b, t)
  const int64_t blocks = (s.C + kColBlock - 1) / kColBlock;
  torch::stable::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kColBlock, n = std::min(s.C, c0 + kColBlock) - c0;
      std::vector<float> accw(s.K * kColBlock, 0.0f);
      float accb[kColBlock] = {};
      for (int64_t b = 0; b < s.B; ++b) {
        for (int64_t t = 0; t < s.T; ++t) {
          const float* gr = pg + (b * s.T + t) * s.C + c0;
          for (int64_t c = 0; c < n; ++c) accb[c] += gr[c];
          for (int64_t j = 0; j < s.K; ++j) {
            const float* xr = xp_row(px, pp, s, b, t + j) + c0;
            float* aw = accw.data() + j * kColBlock;
            for (int64_t c = 0; c < n; ++c) aw[c] += gr[c] * xr[c];
          }
        }
      }
      for (int64_t c = 0; c < n; ++c) {
        pgb[c0 + c] = accb[c];
        for (int64_t j = 0; j < s.K; ++j) pgw[(c0 + c) * s.K + j] = accw[j * kColBlock + c];
      }
    }
  });
  return {gx, gp, gw, gb};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("causal_conv1d", TORCH_BOX(&causal_conv1d_cpu));
  m.impl("causal_conv1d_backward", TORCH_BOX(&causal_conv1d_backward_cpu));
}

}  // namespace bitttt::train
