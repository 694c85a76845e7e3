// CPU entry points of the TTT-Linear ops (docs/design.md §3): argument checks (checks.h),
// preparation (host.h), the kernel set of the active ISA, threading over batch × heads, and
// the registration with the dispatcher. The per-head kernels (ttt_linear_cpu_kernels.inc)
// see raw pointers only.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "ternary/dispatch.h"
#include "ttt/checks.h"
#include "ttt/cpu.h"
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
// does not depend on the thread count. The threads take heads from a shared counter rather
// than a fixed half each: on a busy machine one thread is often descheduled, and the other
// then does its heads instead of waiting for it at the end (training at 2 threads, B·H = 64).
template <typename F>
void for_each_head(int64_t BH, int64_t macs_per_head, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / std::max<int64_t>(macs_per_head, 1));
  if (grain >= BH) {  // one task: run it here rather than through the pool's dispatch
    for (int64_t bh = 0; bh < BH; ++bh) fn(bh);
    return;
  }
  const int64_t tasks = (BH + grain - 1) / grain;
  std::atomic<int64_t> next{0};
  torch::stable::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    for (int64_t t = next.fetch_add(1, std::memory_order_relaxed); t < tasks;
         t = next.fetch_add(1, std::memory_order_relaxed))
      for (int64_t bh = t * grain; bh < std::min(BH, (t + 1) * grain); ++bh) fn(bh);
  });
}

// The call's tensors as head 0 sees them. Read once per call: each data pointer read is a
// call through the stable ABI, which at B·H heads per decode step costs as much as a head.
template <typename T>
HeadForward<T> forward_base(const host::ForwardCall& f) {
  const bool ck = f.has_checkpoints();
  return HeadForward<T>{ptr<T>(f.q), ptr<T>(f.k), ptr<T>(f.v), ptr<T>(f.lr), ptr<T>(f.ts), ptr<T>(f.ln_w),
                        ptr<T>(f.ln_b), mptr<T>(f.W), mptr<T>(f.c), mptr<T>(f.gW), mptr<T>(f.gc), mptr<T>(f.out),
                        ck ? mptr<T>(f.ckW) : nullptr, ck ? mptr<T>(f.ckc) : nullptr};
}

// Pointers of head bh (batch bh / H, head bh % H): base (forward_base) moved to it.
template <typename T>
HeadForward<T> head_forward(const HeadForward<T>& base, const host::ForwardCall& f, int64_t bh) {
  const Dims& dm = f.dm;
  const int64_t T_ = dm.T, D = dm.D, bb = bh / f.H, h = bh % f.H, nck = num_checkpoints(dm);
  const bool ck = base.ckpt_W != nullptr;
  auto at = [bb, h](const host::HeadStrides& s) { return bb * s.batch + h * s.head; };
  return HeadForward<T>{base.q + at(f.sq), base.k + at(f.sk), base.v + at(f.sv), base.lr + at(f.slr),
                        base.ts, base.ln_w + h * D, base.ln_b + h * D, base.W + bh * D * D, base.c + bh * D,
                        base.gW + bh * D * D, base.gc + bh * D, base.out + bh * T_ * D,
                        ck ? base.ckpt_W + bh * nck * D * D : nullptr, ck ? base.ckpt_c + bh * nck * D : nullptr};
}

template <typename T>
void forward_launch(const host::ForwardCall& f) {
  const Kernels& kern = active_kernels();
  void (*fwd)(const Dims&, const HeadForward<T>&);
  if constexpr (std::is_same_v<T, float>) fwd = kern.forward_f32;
  else fwd = kern.forward_f64;
  const HeadForward<T> base = forward_base<T>(f);
  const bool copy_in = f.W_in.defined();  // ttt_linear: the incoming state copied here (host.h)
  host::HeadSource<T> sW{}, sc{}, sgW{}, sgc{};
  if (copy_in) {
    sW = host::head_source<T>(f.W_in), sc = host::head_source<T>(f.c_in);
    sgW = host::head_source<T>(f.gW_in), sgc = host::head_source<T>(f.gc_in);
  }
  for_each_head(f.B * f.H, 4 * f.dm.T * f.dm.D * f.dm.D, [&](int64_t bh) {
    const HeadForward<T> hf = head_forward<T>(base, f, bh);
    if (copy_in) {
      const int64_t bb = bh / f.H, h = bh % f.H;
      sW.copy_to(bb, h, hf.W), sc.copy_to(bb, h, hf.c), sgW.copy_to(bb, h, hf.gW), sgc.copy_to(bb, h, hf.gc);
    }
    fwd(f.dm, hf);
  });
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
  host::ForwardCall f = host::prepare_forward(dm, q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b, true);
  forward_launch(f);
  return {f.out, f.W, f.c, f.gW, f.gc, f.ckW, f.ckc};
}

}  // namespace

// One token for every head, updating (W, c, gW, gc) in place: generation. q, k, v [B,H,D],
// lr [B,H]. Equal to ttt_linear over that token.
Tensor ttt_linear_decode_cpu(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor ts, Tensor W, Tensor c, Tensor gW,
                             Tensor gc, int64_t pos, Tensor ln_w, Tensor ln_b) {
  const char* op = "ttt_linear_decode_";
  Dims dm = checks::check_inputs(op, Where::CPU, q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b, true);
  checks::check_state_contiguous(op, W, c, gW, gc);
  host::ForwardCall f = host::prepare_decode(dm, q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b, true);
  forward_launch(f);
  return f.out;
}

namespace {

// The call's tensors as head 0 sees them (read once per call, as forward_base).
template <typename T>
HeadBackward<T> backward_base(const host::BackwardCall& g) {
  return HeadBackward<T>{ptr<T>(g.q),      ptr<T>(g.k),       ptr<T>(g.v),       ptr<T>(g.lr),     ptr<T>(g.ts),
                         ptr<T>(g.ln_w),   ptr<T>(g.ln_b),    ptr<T>(g.gW0),     ptr<T>(g.gc0),    ptr<T>(g.ckW),
                         ptr<T>(g.ckc),    ptr<T>(g.grad_out), mptr<T>(g.dW),    mptr<T>(g.dc),    mptr<T>(g.dgW),
                         mptr<T>(g.dgc),   mptr<T>(g.dq),     mptr<T>(g.dk),     mptr<T>(g.dv),    mptr<T>(g.dlr),
                         mptr<T>(g.dts_h), mptr<T>(g.dlnw_h), mptr<T>(g.dlnb_h)};
}

template <typename T>
HeadBackward<T> head_backward(const HeadBackward<T>& p, const Dims& dm, int64_t H, int64_t bh) {
  const int64_t T_ = dm.T, D = dm.D, b = dm.b, h = bh % H, nck = num_checkpoints(dm);
  return HeadBackward<T>{p.q + bh * T_ * D,        p.k + bh * T_ * D,    p.v + bh * T_ * D,  p.lr + bh * T_,
                         p.ts,                     p.ln_w + h * D,       p.ln_b + h * D,     p.gW0 + bh * D * D,
                         p.gc0 + bh * D,           p.ckpt_W + bh * nck * D * D,              p.ckpt_c + bh * nck * D,
                         p.grad_out + bh * T_ * D, p.dW + bh * D * D,    p.dc + bh * D,      p.dgW + bh * D * D,
                         p.dgc + bh * D,           p.dq + bh * T_ * D,   p.dk + bh * T_ * D, p.dv + bh * T_ * D,
                         p.dlr + bh * T_,          p.dts + bh * b,       p.dln_w + bh * D,   p.dln_b + bh * D};
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
  const HeadBackward<T> base = backward_base<T>(g);
  const bool copy_in = g.gW_in.defined();  // the incoming state and gradients copied here (host.h)
  host::HeadSource<T> src[6] = {};
  if (copy_in) {
    const Tensor* in[6] = {&g.gW_in, &g.gc_in, &g.grad_W_in, &g.grad_c_in, &g.grad_gW_in, &g.grad_gc_in};
    for (int i = 0; i < 6; ++i) src[i] = host::head_source<T>(*in[i]);
  }
  for_each_head(g.B * g.H, 12 * g.dm.T * g.dm.D * g.dm.D, [&](int64_t bh) {
    const HeadBackward<T> hb = head_backward<T>(base, g.dm, g.H, bh);
    if (copy_in) {
      const int64_t bb = bh / g.H, h = bh % g.H;
      T* dst[6] = {const_cast<T*>(hb.gW0), const_cast<T*>(hb.gc0), hb.dW, hb.dc, hb.dgW, hb.dgc};
      for (int i = 0; i < 6; ++i) src[i].copy_to(bb, h, dst[i]);
    }
    bwd(g.dm, hb);
  });
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
                                                gc, ln_w, ln_b, ckpt_W, ckpt_c, true);
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
