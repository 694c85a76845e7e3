// Host-side preparation of the TTT-Linear ops (docs/design.md §3), shared by the CPU entry
// points (ttt_linear_cpu.cpp) and the CUDA ones (ttt_linear_cuda.cu): contiguous inputs,
// the copies of the state the kernels advance, and the outputs, checkpoints and gradient
// buffers they write. Each entry point checks its arguments (checks.h), calls one prepare_*
// and keeps only its launch. Header-only, torch::stable only; host code (never compiled
// for a device).
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "ttt/ttt.h"

namespace bitttt::ttt::host {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

template <typename T>
const T* ptr(const Tensor& t) { return t.const_data_ptr<T>(); }
template <typename T>
T* mptr(const Tensor& t) { return t.mutable_data_ptr<T>(); }

// contiguous() is a dispatcher call even for a contiguous tensor (µs each): ask first.
inline Tensor contig(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }
inline Tensor copy_contiguous(const Tensor& t) { return torch::stable::clone(contig(t)); }

// A contiguous new tensor of like's dtype and device. Straight through the shim rather than
// torch::stable::new_empty, which looks aten::new_empty up by name in the dispatcher on every
// call: µs that the decode step pays per token and layer.
inline Tensor empty_like_dtype(const Tensor& like, std::initializer_list<int64_t> size) {
  int64_t sizes[8], strides[8];
  const int64_t n = static_cast<int64_t>(size.size());
  STD_TORCH_CHECK(n <= 8, "empty_like_dtype: at most 8 dims");
  int64_t stride = 1;
  for (int64_t i = n - 1; i >= 0; --i) {
    sizes[i] = size.begin()[i];
    strides[i] = stride;
    stride *= sizes[i] > 1 ? sizes[i] : 1;
  }
  int32_t dtype = 0, device_type = 0, device_index = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dtype(like.get(), &dtype));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(like.get(), &device_type));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_index(like.get(), &device_index));
  AtenTensorHandle h = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(n, sizes, strides, dtype, device_type, device_index, &h));
  return Tensor(h);
}

// One head's [rows, cols] block of a [B, H, rows, cols] tensor (or [B, H, cols]: rows 1) at
// the tensor's own strides (W0 expanded over the batch, zeros expanded for a gradient nobody
// passed, a transposed state). The CPU launch copies the incoming state and state gradients
// head by head inside its one parallel region: a torch copy or zero-fill of the whole tensor
// is a parallel region of its own, and at 2 threads on a busy machine each region costs up
// to a scheduler time slice (ms) when one of its threads is descheduled.
template <typename T>
struct HeadSource {
  const T* p;
  int64_t sb, sh, sr, sc, rows, cols;
  void copy_to(int64_t bb, int64_t h, T* dst) const {
    const T* s = p + bb * sb + h * sh;
    if (sc == 1 && sr == cols) {
      std::memcpy(dst, s, sizeof(T) * rows * cols);
      return;
    }
    if (sc == 0 && (sr == 0 || rows == 1)) {  // one value (zeros expanded): a fill
      const T x = s[0];
      for (int64_t i = 0; i < rows * cols; ++i) dst[i] = x;
      return;
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = s[r * sr + c * sc];
  }
};

template <typename T>
HeadSource<T> head_source(const Tensor& t) {
  const bool block = t.dim() == 4;
  const int64_t cols = t.size(t.dim() - 1), sc = t.stride(t.dim() - 1);
  return HeadSource<T>{t.const_data_ptr<T>(), t.stride(0), t.stride(1), block ? t.stride(2) : cols, sc,
                       block ? t.size(2) : 1, cols};
}

// Element strides of an input over (batch, head): where head (b, h) starts is b·batch + h·head.
struct HeadStrides {
  int64_t batch, head;
};

// One forward call (ttt_linear over T tokens, or the decode step) as the kernels see it.
struct ForwardCall {
  Dims dm;
  int64_t B, H;
  Tensor q, k, v, lr, ts, ln_w, ln_b;  // contiguous inputs; the CPU decode step's q, k, v, lr: see strides
  HeadStrides sq, sk, sv, slr;         // of q, k, v, lr (contiguous ones, unless prepare_decode's rows)
  Tensor W, c, gW, gc;                 // the state the kernels advance in place
  Tensor out;                          // [B,H,T,D] ([B,H,D] for the decode step)
  Tensor ckW, ckc;                     // [B,H,n_ckpt,D,D], [B,H,n_ckpt,D]; n_ckpt may be 0
  Tensor W_in, c_in, gW_in, gc_in;     // copy_in_launch: the incoming state, any strides, that the
                                       // launch copies into W, c, gW, gc head by head; else undefined
  bool has_checkpoints() const { return num_checkpoints(dm) > 0; }
  bool is_float() const { return q.scalar_type() == ScalarType::Float; }
};

// ttt_linear: the state advanced in copies (the op returns them), out and the checkpoints
// allocated. dm as checked, ckpt_every already effective. copy_in_launch (the CPU): the
// copies are left empty, for the launch to fill head by head from W_in.. (see HeadSource);
// else (CUDA) they are made here.
inline ForwardCall prepare_forward(const Dims& dm, const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& lr, const Tensor& ts, const Tensor& W, const Tensor& c,
                                   const Tensor& gW, const Tensor& gc, const Tensor& ln_w, const Tensor& ln_b,
                                   bool copy_in_launch = false) {
  const int64_t B = q.size(0), H = q.size(1), D = dm.D, nck = num_checkpoints(dm);
  const HeadStrides tok{H * dm.T * D, dm.T * D}, one{H * dm.T, dm.T};
  ForwardCall f{dm,  B,   H,   contig(q), contig(k), contig(v), contig(lr), contig(ts), contig(ln_w), contig(ln_b),
                tok, tok, tok, one,       Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(),
                Tensor(), Tensor(), Tensor(), Tensor()};  // W_in..gc_in: set below where copy_in_launch
  if (copy_in_launch) {
    f.W = empty_like_dtype(f.q, {B, H, D, D}), f.c = empty_like_dtype(f.q, {B, H, D});
    f.gW = empty_like_dtype(f.q, {B, H, D, D}), f.gc = empty_like_dtype(f.q, {B, H, D});
    f.W_in = W, f.c_in = c, f.gW_in = gW, f.gc_in = gc;
  } else {
    f.W = copy_contiguous(W), f.c = copy_contiguous(c), f.gW = copy_contiguous(gW), f.gc = copy_contiguous(gc);
  }
  f.out = empty_like_dtype(f.q, {B, H, dm.T, D});
  f.ckW = empty_like_dtype(f.q, {B, H, nck, D, D});
  f.ckc = empty_like_dtype(f.q, {B, H, nck, D});
  return f;
}

// A [B,H,D] token input of the decode step as the CPU kernels take it: as it is when each
// head's row is contiguous (the model's q, k, v are slices of one projection: a copy of
// each cost µs per token), else a contiguous copy.
inline Tensor rows_contig(const Tensor& t) { return t.stride(2) == 1 ? t : torch::stable::contiguous(t); }
inline HeadStrides head_strides(const Tensor& t) { return HeadStrides{t.stride(0), t.stride(1)}; }

// The decode step: the caller's state tensors (checked contiguous) advanced in place, out
// [B,H,D], no checkpoints (their tensors stay undefined). rows (the CPU kernels): q, k, v
// need only contiguous rows and lr any strides (ForwardCall's strides say where each head
// is); else (CUDA) all are contiguous.
inline ForwardCall prepare_decode(const Dims& dm, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& lr, const Tensor& ts, const Tensor& W, const Tensor& c,
                                  const Tensor& gW, const Tensor& gc, const Tensor& ln_w, const Tensor& ln_b,
                                  bool rows = false) {
  const int64_t B = q.size(0), H = q.size(1);
  ForwardCall f{dm, B, H, Tensor(), Tensor(), Tensor(), Tensor(), contig(ts), contig(ln_w), contig(ln_b),
                {}, {}, {}, {}, W, c, gW, gc, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  f.q = rows ? rows_contig(q) : contig(q), f.k = rows ? rows_contig(k) : contig(k);
  f.v = rows ? rows_contig(v) : contig(v), f.lr = rows ? lr : contig(lr);
  f.sq = head_strides(f.q), f.sk = head_strides(f.k), f.sv = head_strides(f.v), f.slr = head_strides(f.lr);
  f.out = empty_like_dtype(f.q, {B, H, dm.D});
  return f;
}

// One backward call (copy_in_launch: as prepare_forward's): contiguous inputs, the incoming gradients of the state as the buffers
// the kernels turn into those of the incoming state, and every gradient output; per-head
// shares (dts_h, dlnw_h, dlnb_h) zeroed, for the launch to reduce into dts, dlnw, dlnb.
struct BackwardCall {
  Dims dm;
  int64_t B, H;
  Tensor grad_out, q, k, v, lr, ts, ln_w, ln_b, gW0, gc0, ckW, ckc;  // contiguous inputs
  Tensor dW, dc, dgW, dgc;                                           // in: of the output state
  Tensor dq, dk, dv, dlr;                                            // [B,H,T,D] x3, [B,H,T]
  Tensor dts_h, dlnw_h, dlnb_h;                                      // [B,H,b], [B,H,D] x2
  Tensor dts, dlnw, dlnb;                                            // [b], [H,D] x2
  // copy_in_launch: what the launch copies head by head into gW0, gc0, dW, dc, dgW, dgc (the
  // caller's tensors, any strides); else undefined.
  Tensor gW_in, gc_in, grad_W_in, grad_c_in, grad_gW_in, grad_gc_in;
  bool is_float() const { return q.scalar_type() == ScalarType::Float; }
};

inline BackwardCall prepare_backward(const Dims& dm, const Tensor& grad_out, const Tensor& grad_W,
                                     const Tensor& grad_c, const Tensor& grad_gW, const Tensor& grad_gc,
                                     const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lr,
                                     const Tensor& ts, const Tensor& gW, const Tensor& gc, const Tensor& ln_w,
                                     const Tensor& ln_b, const Tensor& ckpt_W, const Tensor& ckpt_c,
                                     bool copy_in_launch = false) {
  const int64_t B = q.size(0), H = q.size(1), T = dm.T, D = dm.D, b = dm.b;
  BackwardCall g{};  // the inputs by name, the outputs below (a partial brace list warns in Clang)
  g.dm = dm, g.B = B, g.H = H;
  g.grad_out = contig(grad_out), g.q = contig(q), g.k = contig(k), g.v = contig(v), g.lr = contig(lr);
  g.ts = contig(ts), g.ln_w = contig(ln_w), g.ln_b = contig(ln_b);
  g.ckW = contig(ckpt_W), g.ckc = contig(ckpt_c);
  if (copy_in_launch) {
    g.gW0 = empty_like_dtype(g.q, {B, H, D, D}), g.gc0 = empty_like_dtype(g.q, {B, H, D});
    g.dW = empty_like_dtype(g.q, {B, H, D, D}), g.dc = empty_like_dtype(g.q, {B, H, D});
    g.dgW = empty_like_dtype(g.q, {B, H, D, D}), g.dgc = empty_like_dtype(g.q, {B, H, D});
    g.gW_in = gW, g.gc_in = gc, g.grad_W_in = grad_W, g.grad_c_in = grad_c, g.grad_gW_in = grad_gW;
    g.grad_gc_in = grad_gc;
  } else {
    g.gW0 = contig(gW), g.gc0 = contig(gc);
    g.dW = copy_contiguous(grad_W), g.dc = copy_contiguous(grad_c), g.dgW = copy_contiguous(grad_gW);
    g.dgc = copy_contiguous(grad_gc);
  }
  using torch::stable::new_zeros;
  g.dq = empty_like_dtype(g.q, {B, H, T, D}), g.dk = empty_like_dtype(g.q, {B, H, T, D});
  g.dv = empty_like_dtype(g.q, {B, H, T, D}), g.dlr = empty_like_dtype(g.q, {B, H, T});
  g.dts_h = new_zeros(g.q, {B, H, b}), g.dlnw_h = new_zeros(g.q, {B, H, D}), g.dlnb_h = new_zeros(g.q, {B, H, D});
  g.dts = empty_like_dtype(g.q, {b}), g.dlnw = empty_like_dtype(g.q, {H, D}), g.dlnb = empty_like_dtype(g.q, {H, D});
  return g;
}

}  // namespace bitttt::ttt::host
