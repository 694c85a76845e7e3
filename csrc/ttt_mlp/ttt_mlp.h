// TTT-MLP (docs/design.md §3, second inner model): per-head kernel interface. The inner
// model is f(x) = gelu(x W1 + b1) W2 + b2 with hidden size F = 4·D; the mini-batch rule,
// the segments and the carried state are TTT-Linear's (csrc/ttt/ttt.h), with the state
// (W1, b1, W2, b2, gW1, gb1, gW2, gb2, pos). Kernels see raw pointers into contiguous
// buffers; every check lives in ttt_mlp_cpu.cpp.
#pragma once

#include <cstdint>

namespace bitttt::ttt_mlp {

constexpr double kLnEps = 1e-6;  // inner LayerNorm eps, as ttt-lm-pytorch

struct Dims {
  int64_t T;           // tokens in this call
  int64_t D;           // head size
  int64_t F;           // hidden size of the inner MLP (4·D in the module; any size here)
  int64_t b;           // mini-batch size
  int64_t pos;         // absolute position of the first token
  int64_t ckpt_every;  // segments per saved checkpoint (0: save none)
};

inline int64_t first_segment_len(const Dims& d) {
  const int64_t rest = d.b - d.pos % d.b;
  return d.T < rest ? d.T : rest;
}
inline int64_t num_segments(const Dims& d) {
  if (d.T == 0) return 0;
  return 1 + (d.T - first_segment_len(d) + d.b - 1) / d.b;
}
inline int64_t num_checkpoints(const Dims& d) {
  return d.ckpt_every > 0 ? (num_segments(d) + d.ckpt_every - 1) / d.ckpt_every : 0;
}
// Floats of one head's fast weights (W1, b1, W2, b2) packed in that order: one checkpoint.
inline int64_t weights_size(const Dims& d) { return 2 * d.D * d.F + d.F + d.D; }

// One head's fast weights or accumulators: W1 [D,F], b1 [F], W2 [F,D], b2 [D].
template <typename T>
struct Mlp {
  T *W1, *b1, *W2, *b2;
};

// One head's forward. w and g hold the incoming state and are advanced in place.
template <typename T>
struct HeadForward {
  const T *q, *k, *v, *lr;     // [T,D] x3, [T]
  const T *ts, *ln_w, *ln_b;   // [b], [D], [D]
  Mlp<T> w, g;                 // fast weights and accumulators
  T* out;                      // [T,D]
  T* ckpt;                     // [n_ckpt, weights_size]: w at every ckpt_every-th segment start; or null
};

// One head's backward, recomputing from the checkpoints the forward saved.
template <typename T>
struct HeadBackward {
  const T *q, *k, *v, *lr;     // [T,D] x3, [T]
  const T *ts, *ln_w, *ln_b;   // [b], [D], [D]
  Mlp<T> g0;                   // incoming accumulators (read only)
  const T* ckpt;               // as saved by the forward (checkpoint 0 = the incoming weights)
  const T* grad_out;           // [T,D]
  Mlp<T> dw, dg;               // in: gradients of the output state; out: of the incoming state
  T *dq, *dk, *dv, *dlr;       // [T,D] x3, [T]
  T *dts, *dln_w, *dln_b;      // [b], [D], [D]: this head's share, zeroed by the caller
};

struct Kernels {
  const char* name;
  void (*forward_f32)(const Dims&, const HeadForward<float>&);
  void (*forward_f64)(const Dims&, const HeadForward<double>&);
  void (*backward_f32)(const Dims&, const HeadBackward<float>&);
  void (*backward_f64)(const Dims&, const HeadBackward<double>&);
};

namespace generic {
Kernels kernels();
}
#if defined(BITTTT_X86)
namespace avx2 {
Kernels kernels();
}
#endif

// Name of the kernel set in use: "avx2", or "generic" where the ternary ISA (BITTTT_ISA or
// _C.set_isa) is "scalar" or the CPU has no AVX2.
const char* active_isa();

}  // namespace bitttt::ttt_mlp
