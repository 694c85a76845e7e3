// RMSNorm forward and backward for training (bitttt.nn.RMSNorm; issue 26), float32 on the CPU.
// torch has no fused CPU RMSNorm: its composition takes ~7 elementwise ops forward and ~12
// backward per norm, each a pass over [M, C] and a thread-pool wake-up. Here: one pass forward,
// one backward (dx rows and per-chunk dw sums together).
//
// y = w * (x * r), r = 1 / sqrt(mean(x²) + eps) per row (the module's float32 order: normalize,
// then scale). With xh = x * r:
//   dx = r * (g*w - xh * mean(g*w*xh)),   dw = Σ_rows g * xh.
// Row sums use kLanes partial sums so the compiler vectorizes them without reassociating floats.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "train/checks.h"

namespace bitttt::train {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr int64_t kMinElemsPerTask = 1 << 15;  // below this a loop stays on one thread
constexpr int64_t kLanes = 16;                 // partial sums per row reduction

// Σ a[i] * b[i], in kLanes independent partial sums.
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += a[i + l] * b[i + l];
  float s = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename F>
void for_rows(int64_t rows, int64_t cols, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, kMinElemsPerTask / std::max<int64_t>(cols, 1));
  torch::stable::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r);
  });
}

void check_norm_args(const char* op, const Tensor& x, const Tensor& weight) {
  check_float_cpu(op, "x", x);
  check_float_cpu(op, "weight", weight);
  STD_TORCH_CHECK(x.dim() >= 1, op, ": x must have a last (feature) dimension");
  const int64_t C = x.size(x.dim() - 1);
  // C == 0: no mean square to take (the per-row r would be left unwritten).
  STD_TORCH_CHECK(C > 0, op, ": x's last (feature) dimension must be > 0");
  STD_TORCH_CHECK(weight.dim() == 1 && weight.size(0) == C, op, ": weight must be [C=", C, "], got ",
                  weight.dim(), "-D with ", weight.numel(), " elements");
}

// x [..., C], weight [C] -> (y [..., C], r [...]: the per-row 1/rms the backward reuses).
std::tuple<Tensor, Tensor> rms_norm_cpu(Tensor x, Tensor weight, double eps) {
  const char* op = "rms_norm";
  check_norm_args(op, x, weight);
  STD_TORCH_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
  x = contig(x);
  weight = contig(weight);
  const int64_t C = x.size(x.dim() - 1);
  const int64_t M = C > 0 ? x.numel() / C : 0;
  Tensor y = torch::stable::empty_like(x);
  std::vector<int64_t> rsizes(x.sizes().begin(), x.sizes().end() - 1);
  Tensor r = torch::stable::new_empty(x, rsizes);
  const float* px = x.const_data_ptr<float>();
  const float* pw = weight.const_data_ptr<float>();
  float* py = y.mutable_data_ptr<float>();
  float* pr = r.mutable_data_ptr<float>();
  const float e = static_cast<float>(eps);
  for_rows(M, C, [&](int64_t m) {
    const float* xr = px + m * C;
    float* yr = py + m * C;
    const float ri = 1.0f / std::sqrt(dot(xr, xr, C) / static_cast<float>(C) + e);
    pr[m] = ri;
    for (int64_t c = 0; c < C; ++c) yr[c] = pw[c] * (xr[c] * ri);
  });
  return {y, r};
}

// grad [..., C], x [..., C], weight [C], r [...] (the forward's) -> (grad_x, grad_weight [C]).
std::tuple<Tensor, Tensor> rms_norm_backward_cpu(Tensor grad, Tensor x, Tensor weight, Tensor r) {
  const char* op = "rms_norm_backward";
  check_norm_args(op, x, weight);
  check_float_cpu(op, "grad", grad);
  check_float_cpu(op, "r", r);
  STD_TORCH_CHECK(grad.numel() == x.numel() && grad.dim() == x.dim(), op, ": grad must have x's shape");
  const int64_t C = x.size(x.dim() - 1);
  const int64_t M = C > 0 ? x.numel() / C : 0;
  STD_TORCH_CHECK(r.numel() == M, op, ": r must hold one value per row (", M, "), got ", r.numel());
  grad = contig(grad);
  x = contig(x);
  weight = contig(weight);
  r = contig(r);
  Tensor gx = torch::stable::empty_like(x);
  Tensor gw = torch::stable::empty_like(weight);
  const float* pg = grad.const_data_ptr<float>();
  const float* px = x.const_data_ptr<float>();
  const float* pw = weight.const_data_ptr<float>();
  const float* pr = r.const_data_ptr<float>();
  float* pgx = gx.mutable_data_ptr<float>();
  float* pgw = gw.mutable_data_ptr<float>();
  // One pass over grad and x: each chunk of rows writes its dx rows and its own partial dw; the
  // partials are then summed in chunk order. Chunks depend on the shape only (not on the thread
  // count), so dw is the same at any number of threads. (The dw used to be a second parallel
  // region, over column blocks, that read grad and x again and paid a second wake-up.)
  const int64_t chunk_rows = std::max<int64_t>(1, kMinElemsPerTask / C);
  const int64_t chunks = (M + chunk_rows - 1) / chunk_rows;
  std::vector<float> partial(chunks * C, 0.0f);
  torch::stable::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      float* acc = partial.data() + k * C;
      for (int64_t m = k * chunk_rows; m < std::min(M, (k + 1) * chunk_rows); ++m) {
        const float* gr = pg + m * C;
        const float* xr = px + m * C;
        float* out = pgx + m * C;
        const float ri = pr[m];
        // mean(g*w*xh) = r * mean(g*w*x); out holds g*w meanwhile
        for (int64_t c = 0; c < C; ++c) out[c] = gr[c] * pw[c];
        const float proj = ri * dot(out, xr, C) / static_cast<float>(C);
        for (int64_t c = 0; c < C; ++c) {
          const float xh = xr[c] * ri;
          acc[c] += gr[c] * xh;
          out[c] = ri * (out[c] - xh * proj);
        }
      }
    }
  });
  std::fill(pgw, pgw + C, 0.0f);
  for (int64_t k = 0; k < chunks; ++k)
    for (int64_t c = 0; c < C; ++c) pgw[c] += partial[k * C + c];
  return {gx, gw};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("rms_norm", TORCH_BOX(&rms_norm_cpu));
  m.impl("rms_norm_backward", TORCH_BOX(&rms_norm_backward_cpu));
}

}  // namespace bitttt::train
