// CPU entry points of the TTT-MLP ops (docs/design.md §3): argument checks, the kernel set
// for this CPU, threading over batch × heads, and the registration with the dispatcher.
// The per-head kernels (ttt_mlp_kernels.inc) see raw pointers only. There is no CUDA kernel:
// bitttt.ops refuses CUDA tensors before they reach the dispatcher, and the checks here
// refuse them too.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_features.h"
#include "ternary/dispatch.h"
#include "ttt_mlp/ttt_mlp.h"

namespace bitttt::ttt_mlp {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Below this many multiply-adds a call stays on one thread: waking the pool costs more.
constexpr int64_t kMinMacsPerThread = 1 << 20;

// The kernel set for the ternary kernels' ISA (BITTTT_ISA or _C.set_isa, csrc/ternary/dispatch.h):
// the AVX2 kernels serve avx2 and above, "scalar" (and every non-x86 set) the generic ones.
// Asked on every call, so that set_isa switches these kernels too.
const Kernels& active_kernels() {
  static const Kernels generic_set = generic::kernels();
#if defined(BITTTT_X86)
  static const Kernels avx2_set = avx2::kernels();
  const CpuFeatures& f = cpu_features();
  if (f.avx2 && f.fma && std::strcmp(ternary::active_kernels().name, "scalar") != 0) return avx2_set;
#endif
  return generic_set;
}

template <typename T>
const T* ptr(const Tensor& t) { return t.const_data_ptr<T>(); }
template <typename T>
T* mptr(const Tensor& t) { return t.mutable_data_ptr<T>(); }

std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

void check_shape(const char* op, const char* name, const Tensor& t, std::vector<int64_t> want, const char* dims) {
  bool ok = t.dim() == static_cast<int64_t>(want.size());
  for (size_t i = 0; ok && i < want.size(); ++i) ok = t.size(i) == want[i];
  std::string w = "[";
  for (size_t i = 0; i < want.size(); ++i) w += (i ? ", " : "") + std::to_string(want[i]);
  STD_TORCH_CHECK(ok, op, ": ", name, " must be ", dims, " = ", w, "], got ", shape_str(t));
}

// The state of one call: (W1, b1, W2, b2) and the accumulators (gW1, gb1, gW2, gb2).
struct State {
  Tensor W1, b1, W2, b2;
};

// Shared checks of the forward, backward and decode. q is [B,H,T,D], or [B,H,D] for one
// token (decode: lr is then [B,H]). F is read from gW1. Returns the dims (ckpt_every 0).
Dims check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lr,
                  const Tensor& ts, const State* w, const State& g, int64_t pos, const Tensor& ln_w,
                  const Tensor& ln_b, bool one_token = false) {
  if (one_token) {
    STD_TORCH_CHECK(q.dim() == 3, op, ": q must be 3-D [B, H, D] (one token), got ", shape_str(q));
  } else {
    STD_TORCH_CHECK(q.dim() == 4, op, ": q must be 4-D [B, H, T, D], got ", shape_str(q));
  }
  STD_TORCH_CHECK(q.is_cpu(), op, ": q must be a CPU tensor (TTT-MLP has no CUDA kernel yet)");
  const int64_t B = q.size(0), H = q.size(1), T = one_token ? 1 : q.size(2), D = q.size(q.dim() - 1);
  STD_TORCH_CHECK(D > 0, op, ": head size D must be positive");
  STD_TORCH_CHECK(g.W1.dim() == 4, op, ": gW1 must be 4-D [B, H, D, F], got ", shape_str(g.W1));
  const int64_t F = g.W1.size(3);
  STD_TORCH_CHECK(F > 0, op, ": hidden size F must be positive");
  STD_TORCH_CHECK(ts.dim() == 1 && ts.size(0) > 0, op, ": token_scale must be 1-D [b] with b >= 1, got ",
                  shape_str(ts));
  STD_TORCH_CHECK(pos >= 0, op, ": pos must be >= 0, got ", pos);
  if (one_token) {
    check_shape(op, "k", k, {B, H, D}, "[B, H, D]");
    check_shape(op, "v", v, {B, H, D}, "[B, H, D]");
    check_shape(op, "lr", lr, {B, H}, "[B, H]");
  } else {
    check_shape(op, "k", k, {B, H, T, D}, "[B, H, T, D]");
    check_shape(op, "v", v, {B, H, T, D}, "[B, H, T, D]");
    check_shape(op, "lr", lr, {B, H, T}, "[B, H, T]");
  }
  std::vector<const Tensor*> all = {&k, &v, &lr, &ts, &ln_w, &ln_b, &g.W1, &g.b1, &g.W2, &g.b2};
  std::vector<std::string> names = {"k", "v", "lr", "token_scale", "ln_w", "ln_b", "gW1", "gb1", "gW2", "gb2"};
  const State* states[] = {w, &g};
  const char* prefix[] = {"", "g"};
  for (int i = 0; i < 2; ++i) {
    if (states[i] == nullptr) continue;
    const std::string p = prefix[i];
    const State& s = *states[i];
    check_shape(op, (p + "W1").c_str(), s.W1, {B, H, D, F}, "[B, H, D, F]");
    check_shape(op, (p + "b1").c_str(), s.b1, {B, H, F}, "[B, H, F]");
    check_shape(op, (p + "W2").c_str(), s.W2, {B, H, F, D}, "[B, H, F, D]");
    check_shape(op, (p + "b2").c_str(), s.b2, {B, H, D}, "[B, H, D]");
  }
  if (w != nullptr) {
    all.insert(all.end(), {&w->W1, &w->b1, &w->W2, &w->b2});
    names.insert(names.end(), {"W1", "b1", "W2", "b2"});
  }
  check_shape(op, "ln_w", ln_w, {H, D}, "[H, D]");
  check_shape(op, "ln_b", ln_b, {H, D}, "[H, D]");
  const ScalarType dt = q.scalar_type();
  STD_TORCH_CHECK(dt == ScalarType::Float || dt == ScalarType::Double, op,
                  ": q must be float32 or float64 (cast bfloat16 to float32), got ", torch::headeronly::toString(dt));
  for (size_t i = 0; i < all.size(); ++i) {
    STD_TORCH_CHECK(all[i]->scalar_type() == dt, op, ": ", names[i], " must have q's dtype ",
                    torch::headeronly::toString(dt), ", got ", torch::headeronly::toString(all[i]->scalar_type()));
    STD_TORCH_CHECK(all[i]->is_cpu(), op, ": ", names[i], " must be on the CPU like q");
  }
  return Dims{T, D, F, ts.size(0), pos, 0};
}

// Past the call's segment count ckpt_every means one checkpoint; clamped there, because the
// backward sizes a buffer by it.
int64_t effective_ckpt_every(const Dims& dm, int64_t ckpt_every) {
  const int64_t nseg = num_segments(dm);
  return ckpt_every > nseg ? (nseg > 0 ? nseg : 1) : ckpt_every;
}

template <typename F>
void for_each_head(int64_t BH, int64_t macs_per_head, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / std::max<int64_t>(macs_per_head, 1));
  torch::stable::parallel_for(0, BH, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) fn(bh);
  });
}

Tensor contig(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }
Tensor copy_contiguous(const Tensor& t) { return torch::stable::clone(contig(t)); }
State contig(const State& s) { return State{contig(s.W1), contig(s.b1), contig(s.W2), contig(s.b2)}; }
State copy_contiguous(const State& s) {
  return State{copy_contiguous(s.W1), copy_contiguous(s.b1), copy_contiguous(s.W2), copy_contiguous(s.b2)};
}

// Head bh's slice of a state.
template <typename T>
Mlp<T> head_mlp(const State& s, int64_t bh, int64_t D, int64_t F) {
  return Mlp<T>{mptr<T>(s.W1) + bh * D * F, mptr<T>(s.b1) + bh * F, mptr<T>(s.W2) + bh * F * D,
                mptr<T>(s.b2) + bh * D};
}

template <typename T>
void forward_typed(const Dims& dm, int64_t BH, int64_t H, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& lr, const Tensor& ts, const Tensor& ln_w, const Tensor& ln_b, const State& w,
                   const State& g, const Tensor& out, const Tensor* ckpt) {
  const Kernels& kern = active_kernels();
  auto fwd = [&] {
    if constexpr (std::is_same_v<T, float>) return kern.forward_f32;
    else return kern.forward_f64;
  }();
  const int64_t T_ = dm.T, D = dm.D, F = dm.F, nck = num_checkpoints(dm), WS = weights_size(dm);
  for_each_head(BH, 10 * T_ * D * F, [&](int64_t bh) {
    const int64_t h = bh % H;
    HeadForward<T> a{ptr<T>(q) + bh * T_ * D, ptr<T>(k) + bh * T_ * D, ptr<T>(v) + bh * T_ * D,
                     ptr<T>(lr) + bh * T_, ptr<T>(ts), ptr<T>(ln_w) + h * D, ptr<T>(ln_b) + h * D,
                     head_mlp<T>(w, bh, D, F), head_mlp<T>(g, bh, D, F), mptr<T>(out) + bh * T_ * D,
                     ckpt ? mptr<T>(*ckpt) + bh * nck * WS : nullptr};
    fwd(dm, a);
  });
}

using Forward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

Forward ttt_mlp_cpu(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor ts, Tensor W1, Tensor b1, Tensor W2, Tensor b2,
                    Tensor gW1, Tensor gb1, Tensor gW2, Tensor gb2, int64_t pos, Tensor ln_w, Tensor ln_b,
                    int64_t ckpt_every) {
  const State w_in{W1, b1, W2, b2}, g_in{gW1, gb1, gW2, gb2};
  Dims dm = check_inputs("ttt_mlp", q, k, v, lr, ts, &w_in, g_in, pos, ln_w, ln_b);
  STD_TORCH_CHECK(ckpt_every >= 0, "ttt_mlp: ckpt_every must be >= 0, got ", ckpt_every);
  dm.ckpt_every = effective_ckpt_every(dm, ckpt_every);
  const int64_t B = q.size(0), H = q.size(1);
  q = contig(q), k = contig(k), v = contig(v), lr = contig(lr), ts = contig(ts);
  ln_w = contig(ln_w), ln_b = contig(ln_b);
  const State w = copy_contiguous(w_in), g = copy_contiguous(g_in);
  Tensor out = torch::stable::new_empty(q, {B, H, dm.T, dm.D});
  const int64_t nck = num_checkpoints(dm);
  Tensor ckpt = torch::stable::new_empty(q, {B, H, nck, weights_size(dm)});
  const Tensor* pc = nck > 0 ? &ckpt : nullptr;
  if (q.scalar_type() == ScalarType::Float)
    forward_typed<float>(dm, B * H, H, q, k, v, lr, ts, ln_w, ln_b, w, g, out, pc);
  else
    forward_typed<double>(dm, B * H, H, q, k, v, lr, ts, ln_w, ln_b, w, g, out, pc);
  return {out, w.W1, w.b1, w.W2, w.b2, g.W1, g.b1, g.W2, g.b2, ckpt};
}

// One token for every head, updating the state in place: generation. q, k, v [B,H,D],
// lr [B,H]. Equal to ttt_mlp over that token.
Tensor ttt_mlp_decode_cpu(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor ts, Tensor W1, Tensor b1, Tensor W2,
                          Tensor b2, Tensor gW1, Tensor gb1, Tensor gW2, Tensor gb2, int64_t pos, Tensor ln_w,
                          Tensor ln_b) {
  const char* op = "ttt_mlp_decode_";
  const State w{W1, b1, W2, b2}, g{gW1, gb1, gW2, gb2};
  Dims dm = check_inputs(op, q, k, v, lr, ts, &w, g, pos, ln_w, ln_b, true);
  for (const Tensor* t : {&W1, &b1, &W2, &b2, &gW1, &gb1, &gW2, &gb2})
    STD_TORCH_CHECK(t->is_contiguous(), op, ": the state tensors are updated in place and must be contiguous; "
                    "pass .contiguous() copies");
  const int64_t B = q.size(0), H = q.size(1);
  q = contig(q), k = contig(k), v = contig(v), lr = contig(lr), ts = contig(ts);
  ln_w = contig(ln_w), ln_b = contig(ln_b);
  Tensor out = torch::stable::new_empty(q, {B, H, dm.D});
  if (q.scalar_type() == ScalarType::Float)
    forward_typed<float>(dm, B * H, H, q, k, v, lr, ts, ln_w, ln_b, w, g, out, nullptr);
  else
    forward_typed<double>(dm, B * H, H, q, k, v, lr, ts, ln_w, ln_b, w, g, out, nullptr);
  return out;
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

struct BackwardOut {
  Tensor dq, dk, dv, dlr, dts_h, dlnw_h, dlnb_h;
  State dw, dg;
};

template <typename T>
void backward_typed(const Dims& dm, int64_t B, int64_t H, const Tensor& go, const Tensor& q, const Tensor& k,
                    const Tensor& v, const Tensor& lr, const Tensor& ts, const Tensor& ln_w, const Tensor& ln_b,
                    const State& g0, const Tensor& ckpt, const BackwardOut& o) {
  const Kernels& kern = active_kernels();
  auto bwd = [&] {
    if constexpr (std::is_same_v<T, float>) return kern.backward_f32;
    else return kern.backward_f64;
  }();
  const int64_t T_ = dm.T, D = dm.D, F = dm.F, b = dm.b, nck = num_checkpoints(dm), WS = weights_size(dm);
  for_each_head(B * H, 30 * T_ * D * F, [&](int64_t bh) {
    const int64_t h = bh % H;
    HeadBackward<T> a{ptr<T>(q) + bh * T_ * D, ptr<T>(k) + bh * T_ * D, ptr<T>(v) + bh * T_ * D,
                      ptr<T>(lr) + bh * T_, ptr<T>(ts), ptr<T>(ln_w) + h * D, ptr<T>(ln_b) + h * D,
                      head_mlp<T>(g0, bh, D, F), ptr<T>(ckpt) + bh * nck * WS, ptr<T>(go) + bh * T_ * D,
                      head_mlp<T>(o.dw, bh, D, F), head_mlp<T>(o.dg, bh, D, F), mptr<T>(o.dq) + bh * T_ * D,
                      mptr<T>(o.dk) + bh * T_ * D, mptr<T>(o.dv) + bh * T_ * D, mptr<T>(o.dlr) + bh * T_,
                      mptr<T>(o.dts_h) + bh * b, mptr<T>(o.dlnw_h) + bh * D, mptr<T>(o.dlnb_h) + bh * D};
    bwd(dm, a);
  });
}

using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                         Tensor, Tensor, Tensor, Tensor>;

// Gradients of ttt_mlp for (q, k, v, lr, token_scale, W1, b1, W2, b2, gW1, gb1, gW2, gb2,
// ln_w, ln_b), recomputing each checkpoint span of the forward. grad_* are the gradients of
// its outputs; the incoming weights are checkpoint 0, so only the accumulators come in.
Grads ttt_mlp_backward_cpu(Tensor grad_out, Tensor grad_W1, Tensor grad_b1, Tensor grad_W2, Tensor grad_b2,
                           Tensor grad_gW1, Tensor grad_gb1, Tensor grad_gW2, Tensor grad_gb2, Tensor q, Tensor k,
                           Tensor v, Tensor lr, Tensor ts, Tensor gW1, Tensor gb1, Tensor gW2, Tensor gb2,
                           int64_t pos, Tensor ln_w, Tensor ln_b, Tensor ckpt, int64_t ckpt_every) {
  const char* op = "ttt_mlp_backward";
  const State g_in{gW1, gb1, gW2, gb2};
  const State dw_in{grad_W1, grad_b1, grad_W2, grad_b2}, dg_in{grad_gW1, grad_gb1, grad_gW2, grad_gb2};
  Dims dm = check_inputs(op, q, k, v, lr, ts, &dw_in, g_in, pos, ln_w, ln_b);
  check_inputs(op, q, k, v, lr, ts, nullptr, dg_in, pos, ln_w, ln_b);
  STD_TORCH_CHECK(ckpt_every > 0, op, ": ckpt_every must be > 0 (the forward must save checkpoints)");
  dm.ckpt_every = effective_ckpt_every(dm, ckpt_every);
  const int64_t B = q.size(0), H = q.size(1), T = dm.T, D = dm.D, b = dm.b;
  check_shape(op, "ckpt", ckpt, {B, H, num_checkpoints(dm), weights_size(dm)}, "[B, H, n_ckpt, 2DF + F + D]");
  check_shape(op, "grad_out", grad_out, {B, H, T, D}, "[B, H, T, D]");
  for (const Tensor* t : {&ckpt, &grad_out})
    STD_TORCH_CHECK(t->scalar_type() == q.scalar_type() && t->is_cpu(), op,
                    ": ckpt and grad_out must be CPU tensors of q's dtype");
  q = contig(q), k = contig(k), v = contig(v), lr = contig(lr), ts = contig(ts);
  ln_w = contig(ln_w), ln_b = contig(ln_b), ckpt = contig(ckpt), grad_out = contig(grad_out);
  const State g0 = contig(g_in);
  auto empty = [&](std::vector<int64_t> s) { return torch::stable::new_empty(q, s); };
  auto zeros = [&](std::vector<int64_t> s) { return torch::stable::new_zeros(q, s); };
  BackwardOut o{empty({B, H, T, D}), empty({B, H, T, D}), empty({B, H, T, D}), empty({B, H, T}),
                zeros({B, H, b}), zeros({B, H, D}), zeros({B, H, D}), copy_contiguous(dw_in), copy_contiguous(dg_in)};
  Tensor dts = empty({b}), dlnw = empty({H, D}), dlnb = empty({H, D});
  if (q.scalar_type() == ScalarType::Float) {
    backward_typed<float>(dm, B, H, grad_out, q, k, v, lr, ts, ln_w, ln_b, g0, ckpt, o);
    reduce_heads<float>(o.dts_h, B, H, b, true, dts);
    reduce_heads<float>(o.dlnw_h, B, H, D, false, dlnw);
    reduce_heads<float>(o.dlnb_h, B, H, D, false, dlnb);
  } else {
    backward_typed<double>(dm, B, H, grad_out, q, k, v, lr, ts, ln_w, ln_b, g0, ckpt, o);
    reduce_heads<double>(o.dts_h, B, H, b, true, dts);
    reduce_heads<double>(o.dlnw_h, B, H, D, false, dlnw);
    reduce_heads<double>(o.dlnb_h, B, H, D, false, dlnb);
  }
  return {o.dq, o.dk, o.dv, o.dlr, dts, o.dw.W1, o.dw.b1, o.dw.W2, o.dw.b2,
          o.dg.W1, o.dg.b1, o.dg.W2, o.dg.b2, dlnw, dlnb};
}

}  // namespace

const char* active_isa() { return active_kernels().name; }

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("ttt_mlp", TORCH_BOX(&ttt_mlp_cpu));
  m.impl("ttt_mlp_decode_", TORCH_BOX(&ttt_mlp_decode_cpu));
  m.impl("ttt_mlp_backward", TORCH_BOX(&ttt_mlp_backward_cpu));
}

}  // namespace bitttt::ttt_mlp
