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
#include <tuple>

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

// The attention mixer's q, k, v (bitttt.nn.blocks.Attention; issue 26): interleaved RoPE, pair
// (2i, 2i+1) turned by angle i, fused with the split of the qkv projection into heads. The torch
// path took a complex multiply per q and k (slow on the CPU), and backward a multiply, a clone
// out of the complex view, a stack of the three gradients and a reshape copy; this is one pass
// each way.
//   qkv [B, T, 3·H·D] (rows contiguous), cos, sin [T, D/2] -> q, k, v [B, H, T, D]:
//   q[2i] = x[2i]·c − x[2i+1]·s,  q[2i+1] = x[2i]·s + x[2i+1]·c  (x: q's part of the row; k alike),
//   v = v's part, copied. Its adjoint: dx[2i] = g[2i]·c + g[2i+1]·s, dx[2i+1] = g[2i+1]·c − g[2i]·s.
std::tuple<Tensor, Tensor, Tensor> rope_qkv_cpu(Tensor qkv, Tensor cos, Tensor sin, int64_t H) {
  const char* op = "rope_qkv";
  check_float_cpu(op, "qkv", qkv);
  STD_TORCH_CHECK(qkv.dim() == 3, op, ": qkv must be [B, T, 3*H*D], got ", qkv.dim(), "-D");
  // H <= size / 6 first: heads of at least 2, and 3 * H cannot overflow
  STD_TORCH_CHECK(H > 0 && H <= qkv.size(2) / 6 && qkv.size(2) % (3 * H) == 0 && (qkv.size(2) / (3 * H)) % 2 == 0,
                  op, ": qkv's last dimension ", qkv.size(2), " must split into 3 x H=", H,
                  " heads of an even size");
  const int64_t B = qkv.size(0), T = qkv.size(1), D = qkv.size(2) / (3 * H), h = D / 2, C = H * D;
  check_tables(op, cos, sin, T, h);
  qkv = contig(qkv);
  cos = contig(cos);
  sin = contig(sin);
  Tensor q = torch::stable::new_empty(qkv, {B, H, T, D});
  Tensor k = torch::stable::new_empty(qkv, {B, H, T, D});
  Tensor v = torch::stable::new_empty(qkv, {B, H, T, D});
  const float* px = qkv.const_data_ptr<float>();
  const float* pc = cos.const_data_ptr<float>();
  const float* ps = sin.const_data_ptr<float>();
  float* pout[3] = {q.mutable_data_ptr<float>(), k.mutable_data_ptr<float>(), v.mutable_data_ptr<float>()};
  for_tasks(B * T, 3 * C, [&](int64_t row) {  // one token: q, k and v of all its heads
    const int64_t b = row / T, t = row % T;
    const float* c = pc + t * h;
    const float* s = ps + t * h;
    for (int64_t part = 0; part < 3; ++part) {
      for (int64_t hd = 0; hd < H; ++hd) {
        const float* x = px + row * 3 * C + part * C + hd * D;
        float* o = pout[part] + ((b * H + hd) * T + t) * D;
        if (part == 2) {
          std::copy(x, x + D, o);
          continue;
        }
        for (int64_t i = 0; i < h; ++i) {
          const float x0 = x[2 * i], x1 = x[2 * i + 1];
          o[2 * i] = x0 * c[i] - x1 * s[i];
          o[2 * i + 1] = x0 * s[i] + x1 * c[i];
        }
      }
    }
  });
  return {q, k, v};
}

// grad_q, grad_k, grad_v [B, H, T, D] (any strides with the last one 1: attention's backward hands
// them over as [B, T, H, D] transposed), cos, sin [T, D/2] -> grad_qkv [B, T, 3·H·D].
Tensor rope_qkv_backward_cpu(Tensor gq, Tensor gk, Tensor gv, Tensor cos, Tensor sin) {
  const char* op = "rope_qkv_backward";
  check_float_cpu(op, "grad_q", gq);
  check_float_cpu(op, "grad_k", gk);
  check_float_cpu(op, "grad_v", gv);
  STD_TORCH_CHECK(gq.dim() == 4 && gq.size(3) % 2 == 0, op, ": grad_q must be [B, H, T, D] with D even");
  const int64_t B = gq.size(0), H = gq.size(1), T = gq.size(2), D = gq.size(3), h = D / 2, C = H * D;
  for (const Tensor* g : {&gk, &gv}) {
    STD_TORCH_CHECK(g->dim() == 4 && g->size(0) == B && g->size(1) == H && g->size(2) == T && g->size(3) == D, op,
                    ": grad_k and grad_v must have grad_q's shape [B, H, T, D]");
  }
  check_tables(op, cos, sin, T, h);
  Tensor gs[3] = {gq.stride(3) == 1 ? gq : torch::stable::contiguous(gq),
                  gk.stride(3) == 1 ? gk : torch::stable::contiguous(gk),
                  gv.stride(3) == 1 ? gv : torch::stable::contiguous(gv)};
  cos = contig(cos);
  sin = contig(sin);
  Tensor gx = torch::stable::new_empty(gq, {B, T, 3 * C});
  const float* pg[3];
  int64_t st[3][3];  // strides of b, h, t per gradient
  for (int p = 0; p < 3; ++p) {
    pg[p] = gs[p].const_data_ptr<float>();
    for (int d = 0; d < 3; ++d) st[p][d] = gs[p].stride(d);
  }
  const float* pc = cos.const_data_ptr<float>();
  const float* ps = sin.const_data_ptr<float>();
  float* po = gx.mutable_data_ptr<float>();
  for_tasks(B * T, 3 * C, [&](int64_t row) {
    const int64_t b = row / T, t = row % T;
    const float* c = pc + t * h;
    const float* s = ps + t * h;
    for (int64_t part = 0; part < 3; ++part) {
      for (int64_t hd = 0; hd < H; ++hd) {
        const float* g = pg[part] + b * st[part][0] + hd * st[part][1] + t * st[part][2];
        float* o = po + row * 3 * C + part * C + hd * D;
        if (part == 2) {
          std::copy(g, g + D, o);
          continue;
        }
        for (int64_t i = 0; i < h; ++i) {
          const float g0 = g[2 * i], g1 = g[2 * i + 1];
          o[2 * i] = g0 * c[i] + g1 * s[i];
          o[2 * i + 1] = g1 * c[i] - g0 * s[i];
        }
      }
    }
  });
  return gx;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("rope_heads", TORCH_BOX(&rope_heads_cpu));
  m.impl("rope_heads_backward", TORCH_BOX(&rope_heads_backward_cpu));
  m.impl("rope_qkv", TORCH_BOX(&rope_qkv_cpu));
  m.impl("rope_qkv_backward", TORCH_BOX(&rope_qkv_backward_cpu));
}

}  // namespace bitttt::train
