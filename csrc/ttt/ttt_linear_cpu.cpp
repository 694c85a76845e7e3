// CPU entry points of the TTT-Linear ops (docs/design.md §3): argument checks (checks.h),
// preparation (host.h), the kernel set of the active ISA, threading over batch × heads, and
// the registration with the dispatcher. The per-head kernels (ttt_linear_cpu_kernels.inc)
// see raw pointers only.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "ternary/dispatch.h"
#include "ttt/checks.h"
#include "ttt/host.h"
#include "ttt/ttt.h"

namespace bitttt::ttt {
namespace {

using checks::Where;
using host::mptr;
using host::ptr;
using torch::stable::Tensor;

// Below this many multiply-adds a call stays on one thread: waking the pool costs more.
constexpr int64_t kMinMacsPerThread = 1 << 21;

// The kernel set for a ternary ISA name (see active_kernels in ttt.h).
const Kernels& kernels_for(const char* isa) {
  static const Kernels scalar_set = scalar::kernels();
#if defined(BITTTT_X86)
  static const Kernels avx2_set = avx2::kernels();
  static const Kernels avx512_set = avx512::kernels();
  if (std::strcmp(isa, "avx512") == 0) return avx512_set;
  if (std::strcmp(isa, "avx2") == 0 || std::strcmp(isa, "avx512_emulated") == 0) return avx2_set;
#endif
  return scalar_set;
}

// Runs fn(bh) for every (batch, head) in torch's pool; each head is one task, so the result
// does not depend on the thread count.
template <typename F>
void for_each_head(int64_t BH, int64_t macs_per_head, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / std::max<int64_t>(macs_per_head, 1));
  if (grain >= BH) {  // one task: run it here rather than through the pool's dispatch
    for (int64_t bh = 0; bh < BH; ++bh) fn(bh);
    return;
  }
  torch::stable::parallel_for(0, BH, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) fn(bh);
  });
}

// Pointers of head bh (batch bh / H, head bh % H) into the call's tensors.
template <typename T>
HeadForward<T> head_forward(const host::ForwardCall& f, int64_t bh) {
  const int64_t T_ = f.dm.T, D = f.dm.D, h = bh % f.H, nck = num_checkpoints(f.dm);
  const bool ck = f.has_checkpoints();
  return HeadForward<T>{ptr<T>(f.q) + bh * T_ * D, ptr<T>(f.k) + bh * T_ * D, ptr<T>(f.v) + bh * T_ * D,
                        ptr<T>(f.lr) + bh * T_, ptr<T>(f.ts), ptr<T>(f.ln_w) + h * D, ptr<T>(f.ln_b) + h * D,
                        mptr<T>(f.W) + bh * D * D, mptr<T>(f.c) + bh * D, mptr<T>(f.gW) + bh * D * D,
                        mptr<T>(f.gc) + bh * D, mptr<T>(f.out) + bh * T_ * D,
                        ck ? mptr<T>(f.ckW) + bh * nck * D * D : nullptr, ck ? mptr<T>(f.ckc) + bh * nck * D : nullptr};
}

template <typename T>
void forward_launch(const host::ForwardCall& f) {
  const Kernels& kern = active_kernels();
  void (*fwd)(const Dims&, const HeadForward<T>&);
  if constexpr (std::is_same_v<T, float>) fwd = kern.forward_f32;
  else fwd = kern.forward_f64;
  for_each_head(f.B * f.H, 4 * f.dm.T * f.dm.D * f.dm.D, [&](int64_t bh) { fwd(f.dm, head_forward<T>(f, bh)); });
}

void forward_launch(const host::ForwardCall& f) {
  if (f.is_float()) forward_launch<float>(f);
  else forward_launch<double>(f);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ttt_linear_cpu(
    Tensor q, Tensor k, Tensor v, Tensor lr, Tensor ts, Tensor W, Tensor c, Tensor gW, Tensor gc, int64_t pos,
    Tensor ln_w, Tensor ln_b, int64_t ckpt_every) {
  Dims dm = checks::check_inputs("ttt_linear", Where::CPU, q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b);
  STD_TORCH_CHECK(ckpt_every >= 0, "ttt_linear: ckpt_every must be >= 0, got ", ckpt_every);
  dm.ckpt_every = checks::effective_ckpt_every(dm, ckpt_every);
  host::ForwardCall f = host::prepare_forward(dm, q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b);
  forward_launch(f);
  return {f.out, f.W, f.c, f.gW, f.gc, f.ckW, f.ckc};
}

// One token for every head, updating (W, c, gW, gc) in place: generation. q, k, v [B,H,D],
// lr [B,H]. Equal to ttt_linear over that token.
Tensor ttt_linear_decode_cpu(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor ts, Tensor W, Tensor c, Tensor gW,
                             Tensor gc, int64_t pos, Tensor ln_w, Tensor ln_b) {
  const char* op = "ttt_linear_decode_";
  Dims dm = checks::check_inputs(op, Where::CPU, q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b, true);
  checks::check_state_contiguous(op, W, c, gW, gc);
  host::ForwardCall f = host::prepare_decode(dm, q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b);
  forward_launch(f);
  return f.out;
}

template <typename T>
HeadBackward<T> head_backward(const host::BackwardCall& g, int64_t bh) {
  const int64_t T_ = g.dm.T, D = g.dm.D, b = g.dm.b, h = bh % g.H, nck = num_checkpoints(g.dm);
  return HeadBackward<T>{ptr<T>(g.q) + bh * T_ * D, ptr<T>(g.k) + bh * T_ * D, ptr<T>(g.v) + bh * T_ * D,
                         ptr<T>(g.lr) + bh * T_, ptr<T>(g.ts), ptr<T>(g.ln_w) + h * D, ptr<T>(g.ln_b) + h * D,
                         ptr<T>(g.gW0) + bh * D * D, ptr<T>(g.gc0) + bh * D, ptr<T>(g.ckW) + bh * nck * D * D,
                         ptr<T>(g.ckc) + bh * nck * D, ptr<T>(g.grad_out) + bh * T_ * D, mptr<T>(g.dW) + bh * D * D,
                         mptr<T>(g.dc) + bh * D, mptr<T>(g.dgW) + bh * D * D, mptr<T>(g.dgc) + bh * D,
                         mptr<T>(g.dq) + bh * T_ * D, mptr<T>(g.dk) + bh * T_ * D, mptr<T>(g.dv) + bh * T_ * D,
                         mptr<T>(g.dlr) + bh * T_, mptr<T>(g.dts_h) + bh * b, mptr<T>(g.dlnw_h) + bh * D,
                         mptr<T>(g.dlnb_h) + bh * D};
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

template <typename T>
void backward_launch(const host::BackwardCall& g) {
  const Kernels& kern = active_kernels();
  void (*bwd)(const Dims&, const HeadBackward<T>&);
  if constexpr (std::is_same_v<T, float>) bwd = kern.backward_f32;
  else bwd = kern.backward_f64;
  for_each_head(g.B * g.H, 12 * g.dm.T * g.dm.D * g.dm.D, [&](int64_t bh) { bwd(g.dm, head_backward<T>(g, bh)); });
  reduce_heads<T>(g.dts_h, g.B, g.H, g.dm.b, true, g.dts);
  reduce_heads<T>(g.dlnw_h, g.B, g.H, g.dm.D, false, g.dlnw);
  reduce_heads<T>(g.dlnb_h, g.B, g.H, g.dm.D, false, g.dlnb);
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
  host::BackwardCall g = host::prepare_backward(dm, grad_out, grad_W, grad_c, grad_gW, grad_gc, q, k, v, lr, ts, gW,
                                                gc, ln_w, ln_b, ckpt_W, ckpt_c);
  if (g.is_float()) backward_launch<float>(g);
  else backward_launch<double>(g);
  return {g.dq, g.dk, g.dv, g.dlr, g.dts, g.dW, g.dc, g.dgW, g.dgc, g.dlnw, g.dlnb};
}

}  // namespace

const Kernels& active_kernels() { return kernels_for(ternary::active_kernels().name); }

const char* active_isa() { return active_kernels().name; }

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("ttt_linear", TORCH_BOX(&ttt_linear_cpu));
  m.impl("ttt_linear_decode_", TORCH_BOX(&ttt_linear_decode_cpu));
  m.impl("ttt_linear_backward", TORCH_BOX(&ttt_linear_backward_cpu));
}

}  // namespace bitttt::ttt
