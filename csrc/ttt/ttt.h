// TTT-Linear (docs/design.md §3): per-head kernel interface. Kernels see raw pointers into
// contiguous buffers; every check lives in ttt_linear_cpu.cpp.
//
// Legend: T tokens in the call, D head size, b mini-batch size, pos the absolute position
// of the first token. The tokens split into "segments": runs inside one mini-batch. The
// first starts at index i0 = pos % b; the others are full mini-batches, except a tail.
#pragma once

#include <cstdint>

namespace bitttt::ttt {

constexpr double kLnEps = 1e-6;  // inner LayerNorm eps, as ttt-lm-pytorch

struct Dims {
  int64_t T;           // tokens in this call
  int64_t D;           // head size
  int64_t b;           // mini-batch size
  int64_t pos;         // absolute position of the first token
  int64_t ckpt_every;  // segments per saved checkpoint (0: save none)
};

// Segments of a call: the first runs from pos % b to the next boundary (or the end).
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

// One head's forward. (W, c, gW, gc) hold the incoming state and are advanced in place.
template <typename T>
struct HeadForward {
  const T *q, *k, *v, *lr;     // [T,D] x3, [T]
  const T *ts, *ln_w, *ln_b;   // [b], [D], [D]
  T *W, *c, *gW, *gc;          // [D,D], [D], [D,D], [D]
  T* out;                      // [T,D]
  T *ckpt_W, *ckpt_c;          // [n_ckpt,D,D], [n_ckpt,D]: (W, c) at every ckpt_every-th segment start; or null
};

// One head's backward, recomputing from the checkpoints the forward saved.
template <typename T>
struct HeadBackward {
  const T *q, *k, *v, *lr;     // [T,D] x3, [T]
  const T *ts, *ln_w, *ln_b;   // [b], [D], [D]
  const T *gW0, *gc0;          // incoming accumulators [D,D], [D]
  const T *ckpt_W, *ckpt_c;    // as saved by the forward (checkpoint 0 = the incoming W, c)
  const T* grad_out;           // [T,D]
  T *dW, *dc, *dgW, *dgc;      // in: gradients of the output state; out: of the incoming state
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

// One kernel set per instruction set, each built with its own flags; chosen at run time.
namespace scalar {
Kernels kernels();
}
#if defined(BITTTT_X86)
namespace avx2 {
Kernels kernels();
}
namespace avx512 {
Kernels kernels();
}
#endif

// The kernel set in use: the one for the ISA the ternary ops run (ternary/dispatch.h:
// BITTTT_ISA, set_isa, or the best this CPU has), so one choice covers both op families.
// "scalar" and "avx2" map to their own sets, "avx512" to the AVX-512 one; the others (the
// test-only avx512_emulated, neon, neon_dotprod) to the nearest set built: avx2, or the
// portable "scalar" copy (vectorised with NEON on AArch64).
const Kernels& active_kernels();
// Its name ("scalar", "avx2" or "avx512").
const char* active_isa();

}  // namespace bitttt::ttt
