// TTT-Linear CUDA kernels (docs/design.md §3): the device code of ttt_linear_cuda.cu, which
// holds the host side (checks, launches, registration). Kept apart so that
// tests/cuda_emulation/ can compile this same file as plain C++ (one std::thread per CUDA
// thread, barriers for __syncthreads) and compare it with the CPU kernels on a machine
// without a GPU. Only ttt.h is included: no torch here.
//
// Structure mirrors the CPU code so the two read side by side:
//   ttt_linear_cpu_kernels.inc ttt_linear_cuda_kernels.cuh (this file)
//   inner_grads                inner_grads
//   dual_z_bar                 dual_z_bar
//   advance_state              advance_state
//   forward_segment            forward_segment
//   forward_head_impl          ttt_forward_kernel      (one thread block per (batch, head))
//   backward_segment           backward_segment
//   backward_head_impl         ttt_backward_kernel     (one thread block per (batch, head))
//   ttt_linear_cpu.cpp         ttt_linear_cuda.cu
//
// Block-cooperative building blocks (blk_*, rows_*) are called by every thread of the block
// with block-uniform arguments, read only data completed before the call, write outputs that
// do not alias their inputs (unless stated), and END WITH __syncthreads(): a caller never needs
// its own barrier between two of them. That is the one rule that keeps this file race-free.
// blk_* give each output element to one thread; rows_* give each token row to one warp
// (lanes stride over the D columns, so a lane only ever reads back what it wrote itself).
//
// Legend: T tokens in the call, D head size, b mini-batch size, n tokens of a segment
// (n <= rows = min(b, T)); tiles are [n,D] row-major, fast weights W [D,D] (row e = input dim e).
#pragma once

#include <cstdint>

#include "ttt/ttt.h"

#ifndef BITTTT_CUDA_EMULATION
// The dynamic shared memory of a kernel (the emulator gives each block its own buffer).
#define BITTTT_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace bitttt::ttt::gpu {

constexpr int kThreads = 256;  // per block: 8 warps; rows_* helpers take one token row per warp
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------------------
// Reductions. Both are deterministic: a fixed tree for a fixed kThreads, and every lane /
// thread ends with bit-identical results (the xor butterfly adds the same two partials in
// each lane of a pair, and IEEE addition is commutative).
// ---------------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// Σ over the block of v; red: kWarps values of shared memory. Ends with a barrier.
template <typename T>
__device__ T block_sum(T v, T* red) {
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  T s = 0;
  for (int w = 0; w < kWarps; ++w) s += red[w];
  __syncthreads();  // red is free again when this returns
  return s;
}

// Σ_i x[i] y[i] over N elements.
template <typename T>
__device__ T block_dot(int N, const T* x, const T* y, T* red) {
  T s = 0;
  for (int i = threadIdx.x; i < N; i += kThreads) s += x[i] * y[i];
  return block_sum(s, red);
}

// ---------------------------------------------------------------------------------------
// blk_*: one output element per thread, strided over the block.
// ---------------------------------------------------------------------------------------

// dst[i] = scale * src[i], or dst[i] = scale (src null).
template <typename T>
__device__ void blk_set(int N, const T* src, T scale, T* dst) {
  for (int i = threadIdx.x; i < N; i += kThreads) dst[i] = src ? scale * src[i] : scale;
  __syncthreads();
}

// out[t,d] = row[d] + Σ_e X[t,e] W[e,d]   (row null: 0). X [n,D], W [D,D], out [n,D].
template <typename T>
__device__ void blk_xw(int n, int D, const T* X, const T* W, const T* row, T* out) {
  for (int i = threadIdx.x; i < n * D; i += kThreads) {
    const int t = i / D, d = i % D;
    T acc = row ? row[d] : T(0);
    for (int e = 0; e < D; ++e) acc += X[t * D + e] * W[e * D + d];
    out[i] = acc;
  }
  __syncthreads();
}

// out[t,d] += scale · rs[t] · Σ_e X[t,e] M[d,e]   (X Mᵀ; rs null: 1). The CPU transposes M first.
template <typename T>
__device__ void blk_xwT_acc(int n, int D, const T* X, const T* M, const T* rs, T scale, T* out) {
  for (int i = threadIdx.x; i < n * D; i += kThreads) {
    const int t = i / D, d = i % D;
    T acc = 0;
    for (int e = 0; e < D; ++e) acc += X[t * D + e] * M[d * D + e];
    out[i] += (rs ? scale * rs[t] : scale) * acc;
  }
  __syncthreads();
}

// M[e,d] = init[e,d] + Σ_t (scale · rs[t] · X[t,e]) Y[t,d]   (a rank-n update; init null: M
// itself, so M += ...; rs null: 1). X, Y [n,D], M [D,D]. init may alias M.
template <typename T>
__device__ void blk_xtw(int n, int D, const T* X, const T* Y, const T* rs, T scale, const T* init, T* M) {
  for (int i = threadIdx.x; i < D * D; i += kThreads) {
    const int e = i / D, d = i % D;
    T acc = init ? init[i] : M[i];
    for (int t = 0; t < n; ++t) acc += ((rs ? scale * rs[t] : scale) * X[t * D + e]) * Y[t * D + d];
    M[i] = acc;
  }
  __syncthreads();
}

// out[d] = init[d] + Σ_t scale · rs[t] · X[t,d]   (init null: out itself; rs null: 1).
template <typename T>
__device__ void blk_col_acc(int n, int D, const T* X, const T* rs, T scale, const T* init, T* out) {
  for (int d = threadIdx.x; d < D; d += kThreads) {
    T acc = init ? init[d] : out[d];
    for (int t = 0; t < n; ++t) acc += (rs ? scale * rs[t] : scale) * X[t * D + d];
    out[d] = acc;
  }
  __syncthreads();
}

// A[t,s] = X_t · Y_s for s <= t (the causal triangle of the [n,n] A; the rest is never read).
template <typename T>
__device__ void blk_tri_dots(int n, int D, const T* X, const T* Y, T* A) {
  for (int i = threadIdx.x; i < n * n; i += kThreads) {
    const int t = i / n, s = i % n;
    if (s > t) continue;
    T acc = 0;
    for (int e = 0; e < D; ++e) acc += X[t * D + e] * Y[s * D + e];
    A[i] = acc;
  }
  __syncthreads();
}

// out[t,s] = scale · rs[t] · cs[s] · (in[t,s] + add) for s <= t (rs, cs null: 1). out may alias in.
template <typename T>
__device__ void blk_tri_scale(int n, const T* in, const T* rs, const T* cs, T scale, T add, T* out) {
  for (int i = threadIdx.x; i < n * n; i += kThreads) {
    const int t = i / n, s = i % n;
    if (s > t) continue;
    T f = scale;
    if (rs) f *= rs[t];
    if (cs) f *= cs[s];
    out[i] = f * (in[i] + add);
  }
  __syncthreads();
}

// out_t += Σ_{s<=t} A[t,s] Y_s   (lower-triangular A times Y).
template <typename T>
__device__ void blk_tri_mix_lower(int n, int D, const T* A, const T* Y, T* out) {
  for (int i = threadIdx.x; i < n * D; i += kThreads) {
    const int t = i / D, d = i % D;
    T acc = out[i];
    for (int s = 0; s <= t; ++s) acc += A[t * n + s] * Y[s * D + d];
    out[i] = acc;
  }
  __syncthreads();
}

// out_s += Σ_{t>=s} A[t,s] Y_t   (the transpose of the lower-triangular A times Y).
template <typename T>
__device__ void blk_tri_mix_upper(int n, int D, const T* A, const T* Y, T* out) {
  for (int i = threadIdx.x; i < n * D; i += kThreads) {
    const int s = i / D, d = i % D;
    T acc = out[i];
    for (int t = s; t < n; ++t) acc += A[t * n + s] * Y[t * D + d];
    out[i] = acc;
  }
  __syncthreads();
}

// ---------------------------------------------------------------------------------------
// rows_*: one token row per warp; LayerNorm and the inner loss's gradient (ttt-lm-pytorch's
// ln_fused_l2_bwd) and their backward, the same formulas as ttt_linear_cpu_kernels.inc's ln_normalize,
// ln_backward, inner_grad and inner_grad_backward.
// ---------------------------------------------------------------------------------------

#define BITTTT_FOR_ROWS(t, n) for (int t = threadIdx.x / 32; t < (n); t += kWarps)
#define BITTTT_FOR_LANE(d, D) for (int d = threadIdx.x % 32; d < (D); d += 32)

// mean and 1/sqrt(var + eps) of one row (the whole warp gets both).
template <typename T>
__device__ __forceinline__ void row_ln_stats(const T* x, int D, T& mu, T& r) {
  T s = 0;
  BITTTT_FOR_LANE(d, D) s += x[d];
  mu = warp_sum(s) / T(D);
  s = 0;
  BITTTT_FOR_LANE(d, D) {
    const T xc = x[d] - mu;
    s += xc * xc;
  }
  r = T(1) / sqrt(warp_sum(s) / T(D) + T(kLnEps));
}

// Per-element terms of the inner loss at one column: xh = LN-normalised Z, e = LN(Z) − (v − k),
// gxh = e·w (the gradient w.r.t. xh). Recomputed wherever needed: same inputs, same bits.
template <typename T>
struct InnerTerms {
  T xh, e, gxh;
};
template <typename T>
__device__ __forceinline__ InnerTerms<T> inner_terms(T z, T mu, T r, T w, T bb, T v, T k) {
  InnerTerms<T> it;
  it.xh = (z - mu) * r;
  it.e = w * it.xh + bb - (v - k);
  it.gxh = it.e * w;
  return it;
}

// Row statistics of the inner gradient: mu, r of Z's LayerNorm, a = mean(gxh), cc = mean(gxh·xh).
template <typename T>
struct InnerStats {
  T mu, r, a, cc;
};
template <typename T>
__device__ __forceinline__ InnerStats<T> row_inner_stats(const T* z, const T* k, const T* v, const T* w,
                                                         const T* bb, int D) {
  InnerStats<T> st;
  row_ln_stats(z, D, st.mu, st.r);
  T sa = 0, sc = 0;
  BITTTT_FOR_LANE(d, D) {
    const InnerTerms<T> it = inner_terms(z[d], st.mu, st.r, w[d], bb[d], v[d], k[d]);
    sa += it.gxh;
    sc += it.gxh * it.xh;
  }
  st.a = warp_sum(sa) / T(D);
  st.cc = warp_sum(sc) / T(D);
  return st;
}

// G_t = ∂/∂Z ½‖LN(Z_t) − (v_t − k_t)‖² for every row (inner_grad).
template <typename T>
__device__ void rows_inner_grad(int n, int D, const T* Z, const T* k, const T* v, const T* w, const T* bb, T* G) {
  BITTTT_FOR_ROWS(t, n) {
    const T *z = Z + t * D, *kt = k + t * D, *vt = v + t * D;
    const InnerStats<T> st = row_inner_stats(z, kt, vt, w, bb, D);
    BITTTT_FOR_LANE(d, D) {
      const InnerTerms<T> it = inner_terms(z[d], st.mu, st.r, w[d], bb[d], vt[d], kt[d]);
      G[t * D + d] = st.r * (it.gxh - st.a - it.xh * st.cc);
    }
  }
  __syncthreads();
}

// out_t = q_t + LN(Z̄_t) (the forward's output).
template <typename T>
__device__ void rows_ln_out(int n, int D, const T* Zb, const T* q, const T* w, const T* bb, T* out) {
  BITTTT_FOR_ROWS(t, n) {
    T mu, r;
    row_ln_stats(Zb + t * D, D, mu, r);
    BITTTT_FOR_LANE(d, D) out[t * D + d] = q[t * D + d] + w[d] * ((Zb[t * D + d] - mu) * r) + bb[d];
  }
  __syncthreads();
}

// xh_t = LN-normalised Z̄_t and its r_t, kept for the backward (ln_normalize).
template <typename T>
__device__ void rows_ln_normalize(int n, int D, const T* Zb, T* xh, T* rb) {
  BITTTT_FOR_ROWS(t, n) {
    T mu, r;
    row_ln_stats(Zb + t * D, D, mu, r);
    BITTTT_FOR_LANE(d, D) xh[t * D + d] = (Zb[t * D + d] - mu) * r;
    if (threadIdx.x % 32 == 0) rb[t] = r;
  }
  __syncthreads();
}

// out[t] = X_t · Y_t.
template <typename T>
__device__ void rows_dot(int n, int D, const T* X, const T* Y, T* out) {
  BITTTT_FOR_ROWS(t, n) {
    T s = 0;
    BITTTT_FOR_LANE(d, D) s += X[t * D + d] * Y[t * D + d];
    s = warp_sum(s);
    if (threadIdx.x % 32 == 0) out[t] = s;
  }
  __syncthreads();
}

// Backward of the output LayerNorm out = q + w·xh + b (ln_backward), for every row:
// dq_t = dout_t (the residual), dZ̄_t, this row's share of dln_w, dln_b (into the
// [n,D] parts, summed over rows by blk_col_acc), and dts[t] −= U_t · dZ̄_t.
template <typename T>
__device__ void rows_out_ln_backward(int n, int D, const T* dout, const T* xh, const T* rb, const T* w,
                                     const T* U, T* dq, T* dZb, T* lnw_part, T* lnb_part, T* dts) {
  BITTTT_FOR_ROWS(t, n) {
    const T *dy = dout + t * D, *x = xh + t * D;
    T s1 = 0, s2 = 0;
    BITTTT_FOR_LANE(d, D) {
      const T g = dy[d] * w[d];  // dxh
      s1 += g;
      s2 += g * x[d];
    }
    const T m = warp_sum(s1) / T(D), mx = warp_sum(s2) / T(D), r = rb[t];
    T su = 0;
    BITTTT_FOR_LANE(d, D) {
      const int i = t * D + d;
      const T dz = r * (dy[d] * w[d] - m - x[d] * mx);
      dZb[i] = dz;
      dq[i] = dy[d];
      lnw_part[i] = dy[d] * x[d];
      lnb_part[i] = dy[d];
      su += U[i] * dz;
    }
    su = warp_sum(su);
    if (threadIdx.x % 32 == 0) dts[t] -= su;
  }
  __syncthreads();
}

// dlr_t = P_t · G_t, then P_t *= lr_t (P becomes dG).
template <typename T>
__device__ void rows_dlr(int n, int D, const T* G, const T* lr, T* P, T* dlr) {
  BITTTT_FOR_ROWS(t, n) {
    T s = 0;
    BITTTT_FOR_LANE(d, D) s += P[t * D + d] * G[t * D + d];
    s = warp_sum(s);  // every lane has read its P elements before any lane rescales them (own columns only)
    if (threadIdx.x % 32 == 0) dlr[t] = s;
    BITTTT_FOR_LANE(d, D) P[t * D + d] *= lr[t];
  }
  __syncthreads();
}

// Backward of rows_inner_grad (inner_grad_backward, the second derivative of LayerNorm): from
// dG writes dZ, dv = −de, dk += de, and this row's share of dln_w, dln_b (into the parts).
template <typename T>
__device__ void rows_inner_grad_backward(int n, int D, const T* dG, const T* G, const T* Z, const T* k, const T* v,
                                         const T* w, const T* bb, T* dZ, T* dk, T* dv, T* lnw_part, T* lnb_part) {
  BITTTT_FOR_ROWS(t, n) {
    const T *z = Z + t * D, *kt = k + t * D, *vt = v + t * D, *dg = dG + t * D, *g = G + t * D;
    const InnerStats<T> st = row_inner_stats(z, kt, vt, w, bb, D);
    T sh = 0, shx = 0, sgg = 0;
    BITTTT_FOR_LANE(d, D) {
      const T xh = (z[d] - st.mu) * st.r, h = st.r * dg[d];
      sh += h;
      shx += h * xh;
      sgg += dg[d] * g[d];
    }
    const T mh = warp_sum(sh) / T(D), mhx = warp_sum(shx) / T(D), mGG = warp_sum(sgg) / T(D);
    // dxh, the adjoint of xh; computed twice (its mean and mean·xh first), same bits both times.
    auto dxh_at = [&](int d, const InnerTerms<T>& it, T& de_out, T& dgxh_out) {
      const T h = st.r * dg[d];
      dgxh_out = h - mh - it.xh * mhx;
      de_out = dgxh_out * w[d];
      return -st.cc * h - it.gxh * mhx + de_out * w[d];
    };
    T sm = 0, smx = 0;
    BITTTT_FOR_LANE(d, D) {
      const InnerTerms<T> it = inner_terms(z[d], st.mu, st.r, w[d], bb[d], vt[d], kt[d]);
      T de, dgxh;
      const T dxh = dxh_at(d, it, de, dgxh);
      sm += dxh;
      smx += dxh * it.xh;
      const int i = t * D + d;
      lnw_part[i] = dgxh * it.e + de * it.xh;
      lnb_part[i] = de;
      dv[i] = -de;
      dk[i] += de;
    }
    const T m = warp_sum(sm) / T(D), mx = warp_sum(smx) / T(D);
    BITTTT_FOR_LANE(d, D) {
      const InnerTerms<T> it = inner_terms(z[d], st.mu, st.r, w[d], bb[d], vt[d], kt[d]);
      T de, dgxh;
      const T dxh = dxh_at(d, it, de, dgxh);
      // xh = (Z − mean)·r with r = (var + eps)^-½, and G's own factor r: its share of dr is mean(dG·G).
      dZ[t * D + d] = st.r * (dxh - m - it.xh * (mGG + mx));
    }
  }
  __syncthreads();
}

// ---------------------------------------------------------------------------------------
// Segments (ttt.h): the first runs from pos % b to the next boundary (or the end); the
// others are full mini-batches, except a tail.
// ---------------------------------------------------------------------------------------

template <typename T>
struct Seg {
  int n, i0;   // tokens, mini-batch index of the first
  int64_t t0;  // first token's index in the call
  const T *q, *k, *v, *lr;  // the segment's rows (global memory, or shared-memory tiles; v always global)
};

struct SegGeom {
  int n, i0;
  int64_t t0;
};

__device__ __forceinline__ SegGeom segment_geom(int64_t m, int64_t T, int b, int64_t pos) {
  const int64_t rest = b - pos % b;
  const int64_t n0 = T < rest ? T : rest;
  SegGeom g;
  g.t0 = m == 0 ? 0 : n0 + (m - 1) * b;
  const int64_t left = T - g.t0;
  g.n = static_cast<int>(m == 0 ? n0 : (left < b ? left : b));
  g.i0 = m == 0 ? static_cast<int>(pos % b) : 0;
  return g;
}

// Scratch of one segment. Forward kernel: shared memory, Zb aliases Z and A aliases C.
template <typename T>
struct SegScratch {
  T *Z, *G, *Zb;  // [rows,D]: Z = K W + c, the inner gradients, Z̄ (the dual form)
  T *A, *C;       // [rows,rows]: q_t·k_s, and lr_s (q_t·k_s + 1)
  T* U;           // [rows,D] or null: U_t (the backward needs it)
};

// Z = K W + c and the inner gradients G (inner_grads).
template <typename T>
__device__ void inner_grads(const Seg<T>& sg, int D, const T* W, const T* c, const T* ln_w, const T* ln_b,
                            const SegScratch<T>& s) {
  blk_xw(sg.n, D, sg.k, W, c, s.Z);
  rows_inner_grad(sg.n, D, s.Z, sg.k, sg.v, ln_w, ln_b, s.G);
}

// Z̄_t = q_t W + c − ts_t U_t with U_t = q_t gW + gc + Σ_{s≤t} lr_s (q_t·k_s + 1) G_s: the dual
// form, with the accumulators (gW, gc) carried into the segment (gW null: zero). Leaves
// A[t,s] = q_t·k_s in s.A, U in s.U when asked. Needs s.G.
template <typename T>
__device__ void dual_z_bar(const Seg<T>& sg, int D, const T* ts, const T* W, const T* c, const T* gW, const T* gc,
                           const SegScratch<T>& s) {
  const int n = sg.n;
  blk_tri_dots(n, D, sg.q, sg.k, s.A);
  blk_tri_scale(n, s.A, static_cast<const T*>(nullptr), sg.lr, T(1), T(1), s.C);  // may run in place (A == C)
  for (int i = threadIdx.x; i < n * D; i += kThreads) {
    const int t = i / D, d = i % D;
    const T* qt = sg.q + t * D;
    T u = 0;
    if (gW != nullptr) {
      u = gc[d];
      for (int e = 0; e < D; ++e) u += qt[e] * gW[e * D + d];
    }
    for (int j = 0; j <= t; ++j) u += s.C[t * n + j] * s.G[j * D + d];
    T z = c[d];
    for (int e = 0; e < D; ++e) z += qt[e] * W[e * D + d];
    s.Zb[i] = z - ts[sg.i0 + t] * u;  // Zb may alias Z: dead since rows_inner_grad's barrier
    if (s.U != nullptr) s.U[i] = u;
  }
  __syncthreads();
}

// Advances the state over the segment: gW += Σ lr_s k_sᵀ G_s, gc += Σ lr_s G_s, and at the end
// of a mini-batch commits W −= ts[b−1]·gW, c −= ts[b−1]·gc and restarts gW, gc at 0.
// carried: the segment starts inside a mini-batch (only the call's first one can); every other
// segment starts on a boundary, where (gW, gc) hold zeros, so they are neither read nor re-zeroed.
template <typename T>
__device__ void advance_state(const Seg<T>& sg, int D, int b, const T* ts, bool carried, T* W, T* c, T* gW, T* gc,
                              const T* G) {
  const int n = sg.n;
  const bool end = sg.i0 + n == b;
  const T tsl = ts[b - 1];
  for (int i = threadIdx.x; i < D * D; i += kThreads) {
    const int e = i / D, d = i % D;
    T g = carried ? gW[i] : T(0);
    for (int t = 0; t < n; ++t) g += (sg.lr[t] * sg.k[t * D + e]) * G[t * D + d];
    if (end) {
      W[i] -= tsl * g;
      if (carried) gW[i] = 0;
    } else {
      gW[i] = g;
    }
  }
  for (int d = threadIdx.x; d < D; d += kThreads) {
    T g = carried ? gc[d] : T(0);
    for (int t = 0; t < n; ++t) g += sg.lr[t] * G[t * D + d];
    if (end) {
      c[d] -= tsl * g;
      if (carried) gc[d] = 0;
    } else {
      gc[d] = g;
    }
  }
  __syncthreads();
}

// Forward over one segment; out null: only advance the state (the backward's recompute).
template <typename T>
__device__ void forward_segment(const Seg<T>& sg, int D, int b, bool carried, const T* ts, const T* ln_w,
                                const T* ln_b, T* W, T* c, T* gW, T* gc, T* out, const SegScratch<T>& s) {
  inner_grads(sg, D, W, c, ln_w, ln_b, s);
  if (out != nullptr) {
    dual_z_bar(sg, D, ts, W, c, carried ? gW : static_cast<const T*>(nullptr), gc, s);
    rows_ln_out(sg.n, D, s.Zb, sg.q, ln_w, ln_b, out);
  }
  advance_state(sg, D, b, ts, carried, W, c, gW, gc, s.G);
}

// ---------------------------------------------------------------------------------------
// Forward kernel: one block per (batch, head). W and c live in shared memory for the whole
// call; the accumulators (gW, gc) stay in the output tensors in global memory: they are read
// only by the call's first segment and written only by a segment that ends a mini-batch (to
// zero) or the last segment (the carried-out values), so keeping them out of shared memory
// halves its size (float64 D=128 fits) at the cost of a few passes over global memory.
// ---------------------------------------------------------------------------------------

template <typename T>
struct FwdArgs {
  const T *q, *k, *v, *lr;    // [BH,T,D] x3, [BH,T]
  const T *ts, *ln_w, *ln_b;  // [b], [H,D], [H,D]
  T *W, *c, *gW, *gc;         // [BH,D,D], [BH,D], [BH,D,D], [BH,D]: incoming state, advanced in place
  T* out;                     // [BH,T,D]
  T *ckpt_W, *ckpt_c;         // [BH,nck,D,D], [BH,nck,D] or null
  int64_t ntok, pos, nseg, nck;  // ntok: T, the tokens of the call
  int D, b, H, rows, ckpt_every;
};

// Shared memory of the forward, in elements of T: W, c, the q/k/lr tiles of one segment,
// G, Z (then Z̄), and C (A aliases it). v is read once per segment (rows_inner_grad, coalesced),
// so it stays in global memory: that keeps float32 D=128 b=64 and float64 D=128 b=16 under
// the 227 KB a block may have on sm_90.
inline int64_t forward_smem_elems(int64_t D, int64_t rows) {
  return D * D + D + 2 * rows * D + rows + 2 * rows * D + rows * rows;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ttt_forward_kernel(FwdArgs<T> a) {
  BITTTT_DYNAMIC_SMEM(smem_raw);
  const int D = a.D, DD = D * D, rows = a.rows;
  T* sW = reinterpret_cast<T*>(smem_raw);
  T* sc = sW + DD;
  T* sq = sc + D;
  T* sk = sq + rows * D;
  T* slr = sk + rows * D;
  T* sG = slr + rows;
  T* sZ = sG + rows * D;
  T* sC = sZ + rows * D;
  const SegScratch<T> scr{sZ, sG, /*Zb=*/sZ, /*A=*/sC, sC, /*U=*/nullptr};

  const int64_t bh = blockIdx.x;
  const int h = static_cast<int>(bh % a.H);
  const int64_t tok = bh * a.ntok;  // this head's first token
  T* W = a.W + bh * DD;
  T* c = a.c + bh * D;
  T* gW = a.gW + bh * DD;
  T* gc = a.gc + bh * D;
  const T *ln_w = a.ln_w + h * D, *ln_b = a.ln_b + h * D;

  blk_set(DD, static_cast<const T*>(W), T(1), sW);
  blk_set(D, static_cast<const T*>(c), T(1), sc);
  bool committed = false;  // W, c changed: store them back at the end
  for (int64_t m = 0; m < a.nseg; ++m) {
    if (a.ckpt_W != nullptr && m % a.ckpt_every == 0) {  // (W, c) at this segment's start
      const int64_t j = bh * a.nck + m / a.ckpt_every;
      for (int i = threadIdx.x; i < DD; i += kThreads) a.ckpt_W[j * DD + i] = sW[i];
      for (int i = threadIdx.x; i < D; i += kThreads) a.ckpt_c[j * D + i] = sc[i];
    }
    const SegGeom g = segment_geom(m, a.ntok, a.b, a.pos);
    const int64_t off = (tok + g.t0) * D;
    // Stage the segment's rows. The previous segment's last reader of these tiles
    // (advance_state) ended with a barrier, and the checkpoint copy above only reads sW, sc.
    for (int i = threadIdx.x; i < g.n * D; i += kThreads) {
      sq[i] = a.q[off + i];
      sk[i] = a.k[off + i];
    }
    for (int i = threadIdx.x; i < g.n; i += kThreads) slr[i] = a.lr[tok + g.t0 + i];
    __syncthreads();
    const Seg<T> sg{g.n, g.i0, g.t0, sq, sk, a.v + off, slr};
    forward_segment(sg, D, a.b, m == 0, a.ts, ln_w, ln_b, sW, sc, gW, gc, a.out + off, scr);
    committed |= g.i0 + g.n == a.b;
  }
  if (committed) {  // block-uniform; advance_state's barrier ordered the last writes of sW, sc
    for (int i = threadIdx.x; i < DD; i += kThreads) W[i] = sW[i];
    for (int i = threadIdx.x; i < D; i += kThreads) c[i] = sc[i];
  }
}

// ---------------------------------------------------------------------------------------
// Backward kernel: one block per (batch, head), its scratch in a global workspace (it needs
// about a dozen [rows,D] tiles and the span's states: more than shared memory holds). The
// reverse walk is backward_head_impl's: per checkpoint span, last first, recompute the states
// at the span's segment starts from its checkpoint, then walk its segments backwards.
// ---------------------------------------------------------------------------------------

template <typename T>
struct BwdArgs {
  const T *q, *k, *v, *lr;    // [BH,T,D] x3, [BH,T]
  const T *ts, *ln_w, *ln_b;  // [b], [H,D], [H,D]
  const T *gW0, *gc0;         // incoming accumulators [BH,D,D], [BH,D]
  const T *ckpt_W, *ckpt_c;   // [BH,nck,D,D], [BH,nck,D]
  const T* grad_out;          // [BH,T,D]
  T *dW, *dc, *dgW, *dgc;     // in: gradients of the output state; out: of the incoming state
  T *dq, *dk, *dv, *dlr;      // [BH,T,D] x3, [BH,T]
  T *dts, *dln_w, *dln_b;     // per-head shares [BH,b], [BH,D], [BH,D], zeroed by the caller
  T* ws;                      // [BH, ws_per_head]
  int64_t ntok, pos, nseg, nck, ws_per_head;
  int D, b, H, rows, span;    // span: states kept per checkpoint span, min(ckpt_every, nseg)
};

// The workspace of one head, in elements of T.
template <typename T>
struct BwdScratch {
  T *span_W, *span_c;    // [span,D,D], [span,D]: the states at the span's segment starts
  T *gW, *gc;            // [D,D], [D]: the recompute's accumulators
  T *dgWend, *dgcend;    // [D,D], [D]: gradients of the accumulators at a segment's end
  T *Z, *G, *Zb, *U;     // [rows,D]: the recomputed forward
  T *xhb, *dZb, *P, *dZ; // [rows,D]
  T *lnw_part, *lnb_part;  // [rows,D]: per-row shares of dln_w, dln_b before the column sums
  T *A, *C;              // [rows,rows]
  T *rb, *rowv;          // [rows]
};

inline int64_t backward_ws_elems(int64_t D, int64_t rows, int64_t span) {
  return (span + 2) * D * D + (span + 2) * D + 10 * rows * D + 2 * rows * rows + 2 * rows;
}

template <typename T>
__device__ BwdScratch<T> carve_backward(T* p, int D, int rows, int span) {
  BwdScratch<T> s;
  const int64_t DD = int64_t(D) * D, rD = int64_t(rows) * D;
  auto take = [&p](int64_t m) { T* r = p; p += m; return r; };
  s.span_W = take(span * DD), s.span_c = take(span * int64_t(D));
  s.gW = take(DD), s.gc = take(D), s.dgWend = take(DD), s.dgcend = take(D);
  s.Z = take(rD), s.G = take(rD), s.Zb = take(rD), s.U = take(rD);
  s.xhb = take(rD), s.dZb = take(rD), s.P = take(rD), s.dZ = take(rD);
  s.lnw_part = take(rD), s.lnb_part = take(rD);
  s.A = take(int64_t(rows) * rows), s.C = take(int64_t(rows) * rows);
  s.rb = take(rows), s.rowv = take(rows);
  return s;
}

// One head's pointers for backward_segment.
template <typename T>
struct BwdHead {
  const T *ts, *ln_w, *ln_b;
  T *dW, *dc, *dgW, *dgc;
  T *dts, *dln_w, *dln_b;
};

// Backward of one segment (backward_segment). (W, c) is the state at its start, (gW0, gc0)
// the carried accumulators (first segment only, else null). (dW, dc, dgW, dgc) come in as the
// gradients of the state after the segment and leave as those of the state before it.
template <typename T>
__device__ void backward_segment(const Seg<T>& sg, int D, int b, const BwdHead<T>& h, const T* W, const T* c,
                                 const T* gW0, const T* gc0, const T* dout, T* dq, T* dk, T* dv, T* dlr,
                                 const BwdScratch<T>& s, T* red) {
  const int n = sg.n, DD = D * D;
  const T* ts = h.ts;
  const T* tsi = ts + sg.i0;  // ts of the segment's rows
  const T *q = sg.q, *k = sg.k;
  // --- recompute the segment's forward ---
  const SegScratch<T> fs{s.Z, s.G, s.Zb, s.A, s.C, s.U};
  inner_grads(sg, D, W, c, h.ln_w, h.ln_b, fs);
  dual_z_bar(sg, D, ts, W, c, gW0, gc0, fs);
  rows_ln_normalize(n, D, s.Zb, s.xhb, s.rb);

  // --- gradients of the accumulators at the segment's end; P_s = k_s dgW_end + dgc_end ---
  if (sg.i0 + n == b) {  // W' = W − tsl·gW_end, c' = c − tsl·gc_end; gW', gc' are constant 0
    const T tsl = ts[b - 1];
    blk_xw(n, D, k, h.dW, h.dc, s.P);  // k_s dW + dc
    rows_dot(n, D, s.P, s.G, s.rowv);
    // <gW_end, dW> + <gc_end, dc>, gW_end = gW0 + Σ lr_s k_sᵀ G_s: summed in a fixed order
    const T g0 = gW0 != nullptr ? block_dot(DD, gW0, h.dW, red) + block_dot(D, gc0, h.dc, red) : T(0);
    if (threadIdx.x == 0) {
      T g = 0;
      for (int t = 0; t < n; ++t) g += sg.lr[t] * s.rowv[t];
      h.dts[b - 1] -= g + g0;
    }
    blk_set(n * D, static_cast<const T*>(s.P), -tsl, s.P);  // in place: one element per thread
    blk_set(DD, static_cast<const T*>(h.dW), -tsl, s.dgWend);
    blk_set(D, static_cast<const T*>(h.dc), -tsl, s.dgcend);
  } else {
    blk_set(DD, static_cast<const T*>(h.dgW), T(1), s.dgWend);
    blk_set(D, static_cast<const T*>(h.dgc), T(1), s.dgcend);
    blk_xw(n, D, k, s.dgWend, s.dgcend, s.P);
  }

  // --- output LayerNorm, then Z̄ ---
  rows_out_ln_backward(n, D, dout, s.xhb, s.rb, h.ln_w, s.U, dq, s.dZb, s.lnw_part, s.lnb_part, h.dts + sg.i0);
  blk_col_acc(n, D, s.lnw_part, static_cast<const T*>(nullptr), T(1), static_cast<const T*>(nullptr), h.dln_w);
  blk_col_acc(n, D, s.lnb_part, static_cast<const T*>(nullptr), T(1), static_cast<const T*>(nullptr), h.dln_b);
  // dq_t += dZ̄_t Wᵀ − ts_t (dZ̄_t gW0ᵀ + Σ_{s≤t} lr_s (dZ̄_t·G_s) k_s)
  blk_xwT_acc(n, D, s.dZb, W, static_cast<const T*>(nullptr), T(1), dq);
  if (gW0 != nullptr) blk_xwT_acc(n, D, s.dZb, gW0, tsi, T(-1), dq);
  blk_tri_dots(n, D, s.dZb, s.G, s.C);           // C[t,s] = dZ̄_t·G_s
  blk_tri_scale(n, s.C, tsi, sg.lr, T(-1), T(0), s.C);  // C[t,s] *= −ts_t lr_s
  blk_tri_mix_lower(n, D, s.C, k, dq);
  // dk_s = lr_s G_s dgW_endᵀ − lr_s Σ_{t≥s} ts_t (dZ̄_t·G_s) q_t   (through gW's k_sᵀ G_s)
  blk_set(n * D, static_cast<const T*>(nullptr), T(0), dk);
  blk_xwT_acc(n, D, s.G, s.dgWend, sg.lr, T(1), dk);
  blk_tri_mix_upper(n, D, s.C, q, dk);
  // P_s −= Σ_{t≥s} ts_t (q_t·k_s + 1) dZ̄_t; then dG_s = lr_s P_s, dlr_s = P_s·G_s
  blk_tri_scale(n, s.A, tsi, static_cast<const T*>(nullptr), T(-1), T(1), s.A);
  blk_tri_mix_upper(n, D, s.A, s.dZb, s.P);
  rows_dlr(n, D, s.G, sg.lr, s.P, dlr);
  // Incoming accumulators: dgW0 = dgW_end − Σ_t ts_t q_tᵀ dZ̄_t, dgc0 = dgc_end − Σ_t ts_t dZ̄_t.
  if (gW0 != nullptr) {
    blk_xtw(n, D, q, s.dZb, tsi, T(-1), static_cast<const T*>(s.dgWend), h.dgW);
    blk_col_acc(n, D, s.dZb, tsi, T(-1), static_cast<const T*>(s.dgcend), h.dgc);
  } else {  // the state before a later segment carries zero accumulators: constants
    blk_set(DD, static_cast<const T*>(nullptr), T(0), h.dgW);
    blk_set(D, static_cast<const T*>(nullptr), T(0), h.dgc);
  }
  // --- inner gradients: G_s = f(Z_s, v_s − k_s), Z_s = k_s W + c ---
  rows_inner_grad_backward(n, D, s.P, s.G, s.Z, k, sg.v, h.ln_w, h.ln_b, s.dZ, dk, dv, s.lnw_part, s.lnb_part);
  blk_col_acc(n, D, s.lnw_part, static_cast<const T*>(nullptr), T(1), static_cast<const T*>(nullptr), h.dln_w);
  blk_col_acc(n, D, s.lnb_part, static_cast<const T*>(nullptr), T(1), static_cast<const T*>(nullptr), h.dln_b);
  blk_xwT_acc(n, D, s.dZ, W, static_cast<const T*>(nullptr), T(1), dk);
  // dW += Qᵀ dZ̄ + Kᵀ dZ; dc += Σ dZ̄ + Σ dZ
  blk_xtw(n, D, q, s.dZb, static_cast<const T*>(nullptr), T(1), static_cast<const T*>(nullptr), h.dW);
  blk_xtw(n, D, k, s.dZ, static_cast<const T*>(nullptr), T(1), static_cast<const T*>(nullptr), h.dW);
  blk_col_acc(n, D, s.dZb, static_cast<const T*>(nullptr), T(1), static_cast<const T*>(nullptr), h.dc);
  blk_col_acc(n, D, s.dZ, static_cast<const T*>(nullptr), T(1), static_cast<const T*>(nullptr), h.dc);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ttt_backward_kernel(BwdArgs<T> a) {
  __shared__ T red[kWarps];
  const int D = a.D, DD = D * D;
  const int64_t bh = blockIdx.x;
  const int h = static_cast<int>(bh % a.H);
  const int64_t tok = bh * a.ntok;
  const BwdScratch<T> s = carve_backward(a.ws + bh * a.ws_per_head, D, a.rows, a.span);
  const BwdHead<T> hd{a.ts, a.ln_w + h * D, a.ln_b + h * D, a.dW + bh * DD, a.dc + bh * D, a.dgW + bh * DD,
                      a.dgc + bh * D, a.dts + bh * a.b, a.dln_w + bh * D, a.dln_b + bh * D};
  const T* gW0 = a.gW0 + bh * DD;
  const T* gc0 = a.gc0 + bh * D;
  const SegScratch<T> fs{s.Z, s.G, s.Zb, s.A, s.C, /*U=*/nullptr};  // the recompute's (out null: Z, G only)
  auto seg = [&](int64_t m) {
    const SegGeom g = segment_geom(m, a.ntok, a.b, a.pos);
    const int64_t off = (tok + g.t0) * D;
    return Seg<T>{g.n, g.i0, g.t0, a.q + off, a.k + off, a.v + off, a.lr + tok + g.t0};
  };
  const int64_t S = a.span;
  for (int64_t j = a.nck - 1; j >= 0; --j) {
    const int64_t m0 = j * S, m1 = m0 + S < a.nseg ? m0 + S : a.nseg;
    blk_set(DD, a.ckpt_W + (bh * a.nck + j) * DD, T(1), s.span_W);
    blk_set(D, a.ckpt_c + (bh * a.nck + j) * D, T(1), s.span_c);
    if (m0 == 0) {
      blk_set(DD, gW0, T(1), s.gW);
      blk_set(D, gc0, T(1), s.gc);
    } else {
      blk_set(DD, static_cast<const T*>(nullptr), T(0), s.gW);
      blk_set(D, static_cast<const T*>(nullptr), T(0), s.gc);
    }
    for (int64_t m = m0; m + 1 < m1; ++m) {  // recompute the later segment starts of the span
      T* Wm = s.span_W + (m - m0 + 1) * DD;
      T* cm = s.span_c + (m - m0 + 1) * D;
      blk_set(DD, static_cast<const T*>(Wm - DD), T(1), Wm);
      blk_set(D, static_cast<const T*>(cm - D), T(1), cm);
      forward_segment(seg(m), D, a.b, m == 0, a.ts, hd.ln_w, hd.ln_b, Wm, cm, s.gW, s.gc, static_cast<T*>(nullptr),
                      fs);
    }
    for (int64_t m = m1 - 1; m >= m0; --m) {
      const Seg<T> sg = seg(m);
      const int64_t off = (tok + sg.t0) * D;
      backward_segment(sg, D, a.b, hd, s.span_W + (m - m0) * DD, s.span_c + (m - m0) * D,
                       m == 0 ? gW0 : static_cast<const T*>(nullptr), m == 0 ? gc0 : static_cast<const T*>(nullptr),
                       a.grad_out + off, a.dq + off, a.dk + off, a.dv + off, a.dlr + tok + sg.t0, s, red);
    }
  }
}

// out[r, i] = Σ_{bb, h} x[(bb·H + h)·n + i] over h = r (over_heads false: out [H, n]) or over
// every h (out [1, n]), in a fixed order: the deterministic sum of the per-head shares.
template <typename T>
__global__ void reduce_heads_kernel(const T* x, int64_t B, int64_t H, int64_t n, bool over_heads, T* out) {
  const int64_t rows = over_heads ? 1 : H;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * n) return;
  const int64_t r = idx / n, i = idx % n;
  T acc = 0;
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t h = over_heads ? 0 : r; h < (over_heads ? H : r + 1); ++h) acc += x[(bb * H + h) * n + i];
  out[idx] = acc;
}

}  // namespace bitttt::ttt::gpu
