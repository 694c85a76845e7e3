// CPU entry points of the TTT-Linear ops (docs/design.md §3): argument checks, the kernel
// set for this CPU, threading over batch × heads, and the registration with the dispatcher.
// The per-head kernels (ttt_kernels.inc) see raw pointers only.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_features.h"
#include "ttt/checks.h"
#include "ttt/ttt.h"

namespace bitttt::ttt {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
using checks::Where;

// Below this many multiply-adds a call stays on one thread: waking the pool costs more.
constexpr int64_t kMinMacsPerThread = 1 << 21;

// AVX2+FMA when the CPU has both, unless BITTTT_ISA=scalar asks for the portable copy.
const Kernels& active_kernels() {
  static const Kernels k = [] {
#if defined(BITTTT_X86)
    const char* env = std::getenv("BITTTT_ISA");
    const bool force_scalar = env != nullptr && std::string(env) == "scalar";
    const CpuFeatures& f = cpu_features();
    if (!force_scalar && f.avx2 && f.fma) return avx2::kernels();
#endif
    return generic::kernels();
  }();
  return k;
}

template <typename T>
const T* ptr(const Tensor& t) { return t.const_data_ptr<T>(); }
template <typename T>
T* mptr(const Tensor& t) { return t.mutable_data_ptr<T>(); }

// Runs fn(bh) for every (batch, head) in torch's pool; each head is one task, so the result
// does not depend on the thread count.
template <typename F>
void for_each_head(int64_t BH, int64_t macs_per_head, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / std::max<int64_t>(macs_per_head, 1));
  torch::stable::parallel_for(0, BH, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) fn(bh);
  });
}

// contiguous() is a dispatcher call even for a contiguous tensor (µs each): ask first.
Tensor contig(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

Tensor copy_contiguous(const Tensor& t) { return torch::stable::clone(contig(t)); }

template <typename T>
void forward_typed(const Dims& dm, int64_t BH, int64_t H, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& lr, const Tensor& ts, const Tensor& ln_w, const Tensor& ln_b, const Tensor& W,
                   const Tensor& c, const Tensor& gW, const Tensor& gc, const Tensor& out, const Tensor* ckW,
                   const Tensor* ckc) {
  const Kernels& kern = active_kernels();
  auto fwd = [&] {
    if constexpr (std::is_same_v<T, float>) return kern.forward_f32;
    else return kern.forward_f64;
  }();
  const int64_t T_ = dm.T, D = dm.D, nck = num_checkpoints(dm);
  for_each_head(BH, 4 * T_ * D * D, [&](int64_t bh) {
    const int64_t h = bh % H;
    HeadForward<T> a{ptr<T>(q) + bh * T_ * D, ptr<T>(k) + bh * T_ * D, ptr<T>(v) + bh * T_ * D,
                     ptr<T>(lr) + bh * T_, ptr<T>(ts), ptr<T>(ln_w) + h * D, ptr<T>(ln_b) + h * D,
                     mptr<T>(W) + bh * D * D, mptr<T>(c) + bh * D, mptr<T>(gW) + bh * D * D, mptr<T>(gc) + bh * D,
                     mptr<T>(out) + bh * T_ * D, ckW ? mptr<T>(*ckW) + bh * nck * D * D : nullptr,
                     ckc ? mptr<T>(*ckc) + bh * nck * D : nullptr};
    fwd(dm, a);
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ttt_linear_cpu(
    Tensor q, Tensor k, Tensor v, Tensor lr, Tensor ts, Tensor W, Tensor c, Tensor gW, Tensor gc, int64_t pos,
    Tensor ln_w, Tensor ln_b, int64_t ckpt_every) {
  Dims dm = checks::check_inputs("ttt_linear", Where::CPU, q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b);
  STD_TORCH_CHECK(ckpt_every >= 0, "ttt_linear: ckpt_every must be >= 0, got ", ckpt_every);
  dm.ckpt_every = ckpt_every;
  const int64_t B = q.size(0), H = q.size(1), D = dm.D;
  q = contig(q), k = contig(k), v = contig(v);
  lr = contig(lr), ts = contig(ts);
  ln_w = contig(ln_w), ln_b = contig(ln_b);
  Tensor W_out = copy_contiguous(W), c_out = copy_contiguous(c);
  Tensor gW_out = copy_contiguous(gW), gc_out = copy_contiguous(gc);
  Tensor out = torch::stable::new_empty(q, {B, H, dm.T, D});
  const int64_t nck = num_checkpoints(dm);
  Tensor ckW = torch::stable::new_empty(q, {B, H, nck, D, D});
  Tensor ckc = torch::stable::new_empty(q, {B, H, nck, D});
  const Tensor* pW = nck > 0 ? &ckW : nullptr;
  const Tensor* pc = nck > 0 ? &ckc : nullptr;
  if (q.scalar_type() == ScalarType::Float)
    forward_typed<float>(dm, B * H, H, q, k, v, lr, ts, ln_w, ln_b, W_out, c_out, gW_out, gc_out, out, pW, pc);
  else
    forward_typed<double>(dm, B * H, H, q, k, v, lr, ts, ln_w, ln_b, W_out, c_out, gW_out, gc_out, out, pW, pc);
  return {out, W_out, c_out, gW_out, gc_out, ckW, ckc};
}

// One token for every head, updating (W, c, gW, gc) in place: generation. q, k, v [B,H,D],
// lr [B,H]. Equal to ttt_linear over that token.
Tensor ttt_linear_decode_cpu(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor ts, Tensor W, Tensor c, Tensor gW,
                             Tensor gc, int64_t pos, Tensor ln_w, Tensor ln_b) {
  const char* op = "ttt_linear_decode_";
  Dims dm = checks::check_inputs(op, Where::CPU, q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b, true);
  checks::check_state_contiguous(op, W, c, gW, gc);
  const int64_t B = q.size(0), H = q.size(1), D = dm.D;
  q = contig(q), k = contig(k), v = contig(v);
  lr = contig(lr), ts = contig(ts);
  ln_w = contig(ln_w), ln_b = contig(ln_b);
  Tensor out = torch::stable::new_empty(q, {B, H, D});
  if (q.scalar_type() == ScalarType::Float)
    forward_typed<float>(dm, B * H, H, q, k, v, lr, ts, ln_w, ln_b, W, c, gW, gc, out, nullptr, nullptr);
  else
    forward_typed<double>(dm, B * H, H, q, k, v, lr, ts, ln_w, ln_b, W, c, gW, gc, out, nullptr, nullptr);
  return out;
}

template <typename T>
void backward_typed(const Dims& dm, int64_t B, int64_t H, const Tensor& go, const Tensor& q, const Tensor& k,
                    const Tensor& v, const Tensor& lr, const Tensor& ts, const Tensor& ln_w, const Tensor& ln_b,
                    const Tensor& gW0, const Tensor& gc0, const Tensor& ckW, const Tensor& ckc, const Tensor& dW,
                    const Tensor& dc, const Tensor& dgW, const Tensor& dgc, const Tensor& dq, const Tensor& dk,
                    const Tensor& dv, const Tensor& dlr, const Tensor& dts_h, const Tensor& dlnw_h,
                    const Tensor& dlnb_h) {
  const Kernels& kern = active_kernels();
  auto bwd = [&] {
    if constexpr (std::is_same_v<T, float>) return kern.backward_f32;
    else return kern.backward_f64;
  }();
  const int64_t T_ = dm.T, D = dm.D, b = dm.b, nck = num_checkpoints(dm);
  for_each_head(B * H, 12 * T_ * D * D, [&](int64_t bh) {
    const int64_t h = bh % H;
    HeadBackward<T> a{ptr<T>(q) + bh * T_ * D, ptr<T>(k) + bh * T_ * D, ptr<T>(v) + bh * T_ * D,
                      ptr<T>(lr) + bh * T_, ptr<T>(ts), ptr<T>(ln_w) + h * D, ptr<T>(ln_b) + h * D,
                      ptr<T>(gW0) + bh * D * D, ptr<T>(gc0) + bh * D, ptr<T>(ckW) + bh * nck * D * D,
                      ptr<T>(ckc) + bh * nck * D, ptr<T>(go) + bh * T_ * D, mptr<T>(dW) + bh * D * D,
                      mptr<T>(dc) + bh * D, mptr<T>(dgW) + bh * D * D, mptr<T>(dgc) + bh * D,
                      mptr<T>(dq) + bh * T_ * D, mptr<T>(dk) + bh * T_ * D, mptr<T>(dv) + bh * T_ * D,
                      mptr<T>(dlr) + bh * T_, mptr<T>(dts_h) + bh * b, mptr<T>(dlnw_h) + bh * D,
                      mptr<T>(dlnb_h) + bh * D};
    bwd(dm, a);
  });
}

// Sums x [B, H, n] over B (into [H, n]) or over B and H (into [n]), in a fixed order.
template <typename T>
void reduce_heads(const Tensor& x, int64_t B, int64_t H, int64_t n, bool over_heads, const Tensor& out) {
  const T* p = ptr<T>(x);
  T* o = mptr<T>(out);
  const int64_t rows = over_heads ? 1 : H;
  for (int64_t i = 0; i < rows * n; ++i) o[i] = 0;
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < n; ++i) o[(over_heads ? 0 : h) * n + i] += p[(bb * H + h) * n + i];
}

using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// Gradients of ttt_linear for every tensor input, recomputing each checkpoint span of the
// forward. grad_* are the gradients of its outputs (out, W, c, gW, gc).
Grads ttt_linear_backward_cpu(Tensor grad_out, Tensor grad_W, Tensor grad_c, Tensor grad_gW, Tensor grad_gc,
                              Tensor q, Tensor k, Tensor v, Tensor lr, Tensor ts, Tensor W, Tensor c, Tensor gW,
                              Tensor gc, int64_t pos, Tensor ln_w, Tensor ln_b, Tensor ckpt_W, Tensor ckpt_c,
                              int64_t ckpt_every) {
  const char* op = "ttt_linear_backward";
  Dims dm = checks::check_backward_inputs(op, Where::CPU, grad_out, grad_W, grad_c, grad_gW, grad_gc, q, k, v, lr,
                                          ts, W, c, gW, gc, pos, ln_w, ln_b, ckpt_W, ckpt_c, ckpt_every);
  const int64_t B = q.size(0), H = q.size(1), T = dm.T, D = dm.D, b = dm.b;
  auto C = [](const Tensor& t) { return contig(t); };
  q = C(q), k = C(k), v = C(v), lr = C(lr), ts = C(ts), ln_w = C(ln_w), ln_b = C(ln_b);
  gW = C(gW), gc = C(gc), ckpt_W = C(ckpt_W), ckpt_c = C(ckpt_c), grad_out = C(grad_out);
  Tensor dW = copy_contiguous(grad_W), dc = copy_contiguous(grad_c);
  Tensor dgW = copy_contiguous(grad_gW), dgc = copy_contiguous(grad_gc);
  Tensor dq = torch::stable::new_empty(q, {B, H, T, D}), dk = torch::stable::new_empty(q, {B, H, T, D});
  Tensor dv = torch::stable::new_empty(q, {B, H, T, D}), dlr = torch::stable::new_empty(q, {B, H, T});
  Tensor dts_h = torch::stable::new_zeros(q, {B, H, b}), dlnw_h = torch::stable::new_zeros(q, {B, H, D});
  Tensor dlnb_h = torch::stable::new_zeros(q, {B, H, D});
  Tensor dts = torch::stable::new_empty(q, {b}), dlnw = torch::stable::new_empty(q, {H, D});
  Tensor dlnb = torch::stable::new_empty(q, {H, D});
  if (q.scalar_type() == ScalarType::Float) {
    backward_typed<float>(dm, B, H, grad_out, q, k, v, lr, ts, ln_w, ln_b, gW, gc, ckpt_W, ckpt_c, dW, dc, dgW,
                          dgc, dq, dk, dv, dlr, dts_h, dlnw_h, dlnb_h);
    reduce_heads<float>(dts_h, B, H, b, true, dts);
    reduce_heads<float>(dlnw_h, B, H, D, false, dlnw);
    reduce_heads<float>(dlnb_h, B, H, D, false, dlnb);
  } else {
    backward_typed<double>(dm, B, H, grad_out, q, k, v, lr, ts, ln_w, ln_b, gW, gc, ckpt_W, ckpt_c, dW, dc, dgW,
                           dgc, dq, dk, dv, dlr, dts_h, dlnw_h, dlnb_h);
    reduce_heads<double>(dts_h, B, H, b, true, dts);
    reduce_heads<double>(dlnw_h, B, H, D, false, dlnw);
    reduce_heads<double>(dlnb_h, B, H, D, false, dlnb);
  }
  return {dq, dk, dv, dlr, dts, dW, dc, dgW, dgc, dlnw, dlnb};
}

}  // namespace

const char* active_isa() { return active_kernels().name; }

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("ttt_linear", TORCH_BOX(&ttt_linear_cpu));
  m.impl("ttt_linear_decode_", TORCH_BOX(&ttt_linear_decode_cpu));
  m.impl("ttt_linear_backward", TORCH_BOX(&ttt_linear_backward_cpu));
}

}  // namespace bitttt::ttt
