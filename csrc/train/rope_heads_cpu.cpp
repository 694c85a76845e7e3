// Rotate-half RoPE fused with the split into heads, for the TTT layers' q and k in training
// (bitttt.nn.ttt; issue 26), float32 on the CPU. The torch composition (view, transpose, chunk,
// neg, cat, two multiplies, add, then the op's .contiguous()) made ~7 passes over q and k
// forward and as many backward; this is one pass each way.
//
// x [B, T, H·D] (rows contiguous), cos, sin [T, D] -> out [B, H, T, D], h = D/2:
//   out[b,h,t,d] = x[b,t,hD+d]·cos[t,d] − x[b,t,hD+d+h]·sin[t,d]   (d < h)
//   out[b,h,t,d] = x[b,t,hD+d]·cos[t,d] + x[b,t,hD+d−h]·sin[t,d]   (d >= h)
// (bitttt.nn.rope.apply_rope's x·cos + cat(−x2, x1)·sin, term for term). Its adjoint, for
// g [B, H, T, D] -> dx [B, T, H·D]:
//   dx[d] = g[d]·cos[d] + g[d+h]·sin[d+h]   (d < h),   dx[d] = g[d]·cos[d] − g[d−h]·sin[d−h]   (d >= h).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cstdint>

#include "train/checks.h"

namespace bitttt::train {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr int64_t kMinElemsPerTask = 1 << 15;  // below this a loop stays on one thread

void check_tables(const char* op, const Tensor& cos, const Tensor& sin, int64_t T, int64_t D) {
  check_float_cpu(op, "cos", cos);
  check_float_cpu(op, "sin", sin);
  STD_TORCH_CHECK(cos.dim() == 2 && cos.size(0) == T && cos.size(1) == D && sin.dim() == 2 && sin.size(0) == T &&
                      sin.size(1) == D,
                  op, ": cos and sin must be [T=", T, ", D=", D, "]");
}

template <typename F>
void for_tasks(int64_t n, int64_t elems_per_task, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, kMinElemsPerTask / std::max<int64_t>(elems_per_task, 1));
  torch::stable::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(i);
  });
}

// x [B, T, H·D], cos, sin [T, D], H -> [B, H, T, D].
Tensor rope_heads_cpu(Tensor x, Tensor cos, Tensor sin, int64_t H) {
  const char* op = "rope_heads";
  check_float_cpu(op, "x", x);
  STD_TORCH_CHECK(x.dim() == 3, op, ": x must be [B, T, H*D], got ", x.dim(), "-D");
  STD_TORCH_CHECK(H > 0 && x.size(2) % H == 0 && (x.size(2) / H) % 2 == 0, op, ": x's last dimension ", x.size(2),
                  " must split into H=", H, " heads of an even size");
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2) / H, h = D / 2;
  check_tables(op, cos, sin, T, D);
  x = contig(x);
  cos = contig(cos);
  sin = contig(sin);
  Tensor out = torch::stable::new_empty(x, {B, H, T, D});
  const float* px = x.const_data_ptr<float>();
  const float* pc = cos.const_data_ptr<float>();
  const float* ps = sin.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  for_tasks(B * T, H * D, [&](int64_t row) {  // one token: all its heads
    const int64_t b = row / T, t = row % T;
    const float* c = pc + t * D;
    const float* s = ps + t * D;
    for (int64_t hd = 0; hd < H; ++hd) {
      const float* xr = px + row * H * D + hd * D;
      float* o = po + ((b * H + hd) * T + t) * D;
      for (int64_t d = 0; d < h; ++d) o[d] = xr[d] * c[d] + (-xr[d + h]) * s[d];
      for (int64_t d = h; d < D; ++d) o[d] = xr[d] * c[d] + xr[d - h] * s[d];
    }
  });
  return out;
}

// grad [B, H, T, D], cos, sin [T, D] -> grad_x [B, T, H·D].
Tensor rope_heads_backward_cpu(Tensor grad, Tensor cos, Tensor sin) {
  const char* op = "rope_heads_backward";
  check_float_cpu(op, "grad", grad);
  STD_TORCH_CHECK(grad.dim() == 4 && grad.size(3) % 2 == 0, op, ": grad must be [B, H, T, D] with D even");
  const int64_t B = grad.size(0), H = grad.size(1), T = grad.size(2), D = grad.size(3), h = D / 2;
  check_tables(op, cos, sin, T, D);
  grad = contig(grad);
  cos = contig(cos);
  sin = contig(sin);
  Tensor gx = torch::stable::new_empty(grad, {B, T, H * D});
  const float* pg = grad.const_data_ptr<float>();
  const float* pc = cos.const_data_ptr<float>();
  const float* ps = sin.const_data_ptr<float>();
  float* po = gx.mutable_data_ptr<float>();
  for_tasks(B * T, H * D, [&](int64_t row) {
    const int64_t b = row / T, t = row % T;
    const float* c = pc + t * D;
    const float* s = ps + t * D;
    for (int64_t hd = 0; hd < H; ++hd) {
      const float* g = pg + ((b * H + hd) * T + t) * D;
      float* o = po + row * H * D + hd * D;
      for (int64_t d = 0; d < h; ++d) o[d] = g[d] * c[d] + g[d + h] * s[d + h];
      for (int64_t d = h; d < D; ++d) o[d] = g[d] * c[d] - g[d - h] * s[d - h];
    }
  });
  return gx;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("rope_heads", TORCH_BOX(&rope_heads_cpu));
  m.impl("rope_heads_backward", TORCH_BOX(&rope_heads_backward_cpu));
}

}  // namespace bitttt::train
