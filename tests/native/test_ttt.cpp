// Torch-free test of the TTT-Linear CPU kernels (csrc/ttt/ttt_linear_cpu_kernels.inc) as this target
// builds them: "scalar" everywhere (on AArch64 that copy is the NEON one, see the TTT
// kernels paragraph of docs/design.md §3), "avx2" and "avx512" too on an x86-64 CPU with
// AVX2+FMA / AVX-512F. Built by
// tests/native/build.sh; .ci/arm_check runs it under qemu-aarch64.
//
// Per case (D, b, T, pos): the float64 forward against an independent float64 primal-form
// loop of docs/design.md §3 (outputs and carried state), the float32 forward against that
// loop, and the float32 backward against the kernels' own float64 backward.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "ttt/ttt.h"

namespace {

using namespace bitttt::ttt;

// float64 kernel vs float64 loop: the same math in another order (dual vs primal form);
// seen: 2e-15.
constexpr double kF64Tol = 1e-12;
// float32 kernel vs float64 loop: float32 inputs and rounding (2^-24) accumulated over
// D-long dot products, the LayerNorm's division by sigma and up to T = 63 token updates;
// seen on x86-64 and under qemu-aarch64: 3e-7 (outputs), 1e-6 (state) of the largest |value|.
constexpr double kF32Tol = 1e-5;
// float32 backward vs the kernels' float64 backward: the second derivative of LayerNorm
// amplifies float32 rounding more than the forward does; seen: 3e-5.
constexpr double kF32GradTol = 5e-4;

int g_passed = 0, g_failed = 0;

struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }
  double normal() { return std::sqrt(-2.0 * std::log(uniform() + 1e-300)) * std::cos(6.283185307179586 * uniform()); }
};

using V = std::vector<double>;

struct Case {
  int64_t D, b, T, pos;
  V q, k, v, lr, ts, ln_w, ln_b;  // [T,D] x3, [T], [b], [D], [D]
  V W, c, gW, gc;                 // incoming state [D,D], [D], [D,D], [D]
};

Case make_case(int64_t D, int64_t b, int64_t T, int64_t pos, uint64_t seed) {
  Rng rng{seed};
  Case cs{D, b, T, pos, V(T * D), V(T * D), V(T * D), V(T), V(b), V(D), V(D), V(D * D), V(D), V(D * D, 0.0), V(D, 0.0)};
  for (auto* x : {&cs.q, &cs.k, &cs.v})
    for (double& e : *x) e = rng.normal();
  for (double& e : cs.lr) e = 0.05 * rng.uniform() / D * 16;  // base_lr * sigmoid(.) / D, in spirit
  for (int64_t i = 0; i < b; ++i) cs.ts[i] = std::fmax(0.0, 1.0 / (i + 1) + 0.05 * rng.normal());
  for (int64_t d = 0; d < D; ++d) cs.ln_w[d] = 1.0 + 0.1 * rng.normal(), cs.ln_b[d] = 0.1 * rng.normal();
  for (double& e : cs.W) e = 0.02 * rng.normal();
  for (double& e : cs.c) e = 0.02 * rng.normal();
  if (pos % b != 0) {  // mid-mini-batch: the accumulators carry something
    for (double& e : cs.gW) e = 0.01 * rng.normal();
    for (double& e : cs.gc) e = 0.01 * rng.normal();
  }
  return cs;
}

// y = LN(x) with the inner LayerNorm's affine; also xh and r = 1/sigma.
void layer_norm(const double* x, const double* w, const double* bb, int64_t D, double* y, double* xh, double* r) {
  double mu = 0, var = 0;
  for (int64_t d = 0; d < D; ++d) mu += x[d];
  mu /= D;
  for (int64_t d = 0; d < D; ++d) var += (x[d] - mu) * (x[d] - mu);
  *r = 1.0 / std::sqrt(var / D + kLnEps);
  for (int64_t d = 0; d < D; ++d) xh[d] = (x[d] - mu) * *r, y[d] = w[d] * xh[d] + bb[d];
}

// docs/design.md §3, one token at a time (the primal form), in float64.
void reference_forward(const Case& cs, V& out, V& W, V& c, V& gW, V& gc) {
  const int64_t D = cs.D;
  W = cs.W, c = cs.c, gW = cs.gW, gc = cs.gc;
  out.assign(cs.T * D, 0.0);
  V Z(D), y(D), xh(D), G(D), Wi(D * D), ci(D);
  for (int64_t t = 0; t < cs.T; ++t) {
    const double *q = &cs.q[t * D], *k = &cs.k[t * D], *v = &cs.v[t * D];
    const int64_t i = (cs.pos + t) % cs.b;
    for (int64_t d = 0; d < D; ++d) {
      Z[d] = c[d];
      for (int64_t e = 0; e < D; ++e) Z[d] += k[e] * W[e * D + d];
    }
    double r;
    layer_norm(Z.data(), cs.ln_w.data(), cs.ln_b.data(), D, y.data(), xh.data(), &r);
    // G = dloss/dZ of 1/2 |LN(Z) - (v - k)|^2, through the LayerNorm.
    double mean_g = 0, mean_gx = 0;
    for (int64_t d = 0; d < D; ++d) {
      G[d] = (y[d] - (v[d] - k[d])) * cs.ln_w[d];
      mean_g += G[d] / D, mean_gx += G[d] * xh[d] / D;
    }
    for (int64_t d = 0; d < D; ++d) G[d] = r * (G[d] - mean_g - xh[d] * mean_gx);
    for (int64_t e = 0; e < D; ++e)
      for (int64_t d = 0; d < D; ++d) gW[e * D + d] += cs.lr[t] * k[e] * G[d];
    for (int64_t d = 0; d < D; ++d) gc[d] += cs.lr[t] * G[d];
    for (int64_t j = 0; j < D * D; ++j) Wi[j] = W[j] - cs.ts[i] * gW[j];
    for (int64_t d = 0; d < D; ++d) ci[d] = c[d] - cs.ts[i] * gc[d];
    for (int64_t d = 0; d < D; ++d) {
      Z[d] = ci[d];
      for (int64_t e = 0; e < D; ++e) Z[d] += q[e] * Wi[e * D + d];
    }
    layer_norm(Z.data(), cs.ln_w.data(), cs.ln_b.data(), D, y.data(), xh.data(), &r);
    for (int64_t d = 0; d < D; ++d) out[t * D + d] = q[d] + y[d];
    if (i == cs.b - 1) {
      W = Wi, c = ci;
      for (double& e : gW) e = 0;
      for (double& e : gc) e = 0;
    }
  }
}

template <typename T>
std::vector<T> as(const V& x) {
  return std::vector<T>(x.begin(), x.end());
}

// The kernel's forward in precision T; state in/out, checkpoints every `every` segments.
template <typename T>
struct Forward {
  std::vector<T> q, k, v, lr, ts, ln_w, ln_b, W, c, gW, gc, out, ckpt_W, ckpt_c;
  Dims dims;
  Forward(const Case& cs, int64_t every)
      : q(as<T>(cs.q)), k(as<T>(cs.k)), v(as<T>(cs.v)), lr(as<T>(cs.lr)), ts(as<T>(cs.ts)), ln_w(as<T>(cs.ln_w)),
        ln_b(as<T>(cs.ln_b)), W(as<T>(cs.W)), c(as<T>(cs.c)), gW(as<T>(cs.gW)), gc(as<T>(cs.gc)),
        out(cs.T * cs.D), dims{cs.T, cs.D, cs.b, cs.pos, every} {
    ckpt_W.resize(std::max<int64_t>(num_checkpoints(dims), 1) * cs.D * cs.D);
    ckpt_c.resize(std::max<int64_t>(num_checkpoints(dims), 1) * cs.D);
  }
  HeadForward<T> head() {
    return {q.data(), k.data(), v.data(), lr.data(), ts.data(), ln_w.data(), ln_b.data(), W.data(), c.data(),
            gW.data(), gc.data(), out.data(), dims.ckpt_every ? ckpt_W.data() : nullptr,
            dims.ckpt_every ? ckpt_c.data() : nullptr};
  }
};

// Max |a - b| over max(|b|, 1e-3): a relative error on the tensor's scale.
template <typename T>
double rel_err(const std::vector<T>& a, const V& b) {
  double err = 0, scale = 1e-3;
  for (size_t i = 0; i < b.size(); ++i) {
    const double e = std::fabs(double(a[i]) - b[i]);
    if (!(e <= err)) err = e;  // a NaN sticks (GCC 12 for aarch64 crashed on fmax reductions here)
    if (std::fabs(b[i]) > scale) scale = std::fabs(b[i]);
  }
  return err / scale;
}

void check(double err, double tol, const std::string& what) {
  if (err <= tol && !std::isnan(err)) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL %s: error %.3g > %.3g\n", what.c_str(), err, tol);
  }
}

template <typename T>
void run_forward(const Kernels& kern, Forward<T>& f) {
  if constexpr (sizeof(T) == 4)
    kern.forward_f32(f.dims, f.head());
  else
    kern.forward_f64(f.dims, f.head());
}

// Gradients of the incoming state and inputs for grad_out, in precision T.
template <typename T>
std::vector<std::vector<T>> run_backward(const Kernels& kern, const Case& cs, const V& grad_out) {
  constexpr int64_t kEvery = 2;
  Forward<T> f(cs, kEvery);
  run_forward(kern, f);
  const int64_t D = cs.D, T_ = cs.T;
  const std::vector<T> gW0 = as<T>(cs.gW), gc0 = as<T>(cs.gc), go = as<T>(grad_out);
  std::vector<std::vector<T>> g{std::vector<T>(D * D, T(0.01)), std::vector<T>(D, T(-0.01)),  // dW, dc
                                std::vector<T>(D * D, T(0.02)), std::vector<T>(D, T(0.03)),   // dgW, dgc
                                std::vector<T>(T_ * D), std::vector<T>(T_ * D), std::vector<T>(T_ * D),
                                std::vector<T>(T_), std::vector<T>(cs.b), std::vector<T>(D), std::vector<T>(D)};
  const HeadBackward<T> h{f.q.data(), f.k.data(), f.v.data(), f.lr.data(), f.ts.data(), f.ln_w.data(),
                          f.ln_b.data(), gW0.data(), gc0.data(), f.ckpt_W.data(), f.ckpt_c.data(), go.data(),
                          g[0].data(), g[1].data(), g[2].data(), g[3].data(), g[4].data(), g[5].data(),
                          g[6].data(), g[7].data(), g[8].data(), g[9].data(), g[10].data()};
  if constexpr (sizeof(T) == 4)
    kern.backward_f32(f.dims, h);
  else
    kern.backward_f64(f.dims, h);
  return g;
}

void test_case(const Kernels& kern, int64_t D, int64_t b, int64_t T, int64_t pos) {
  const Case cs = make_case(D, b, T, pos, static_cast<uint64_t>(D * 1000 + T * 10 + pos));
  const std::string id = std::string(kern.name) + " D" + std::to_string(D) + "-b" + std::to_string(b) + "-T" +
                         std::to_string(T) + "-pos" + std::to_string(pos);
  V out, W, c, gW, gc;
  reference_forward(cs, out, W, c, gW, gc);
  Forward<double> f64(cs, 0);
  run_forward(kern, f64);
  Forward<float> f32(cs, 0);
  run_forward(kern, f32);
  check(rel_err(f64.out, out), kF64Tol, id + " f64 out");
  check(rel_err(f64.W, W) + rel_err(f64.c, c) + rel_err(f64.gW, gW) + rel_err(f64.gc, gc), kF64Tol, id + " f64 state");
  check(rel_err(f32.out, out), kF32Tol, id + " f32 out");
  check(rel_err(f32.W, W) + rel_err(f32.c, c) + rel_err(f32.gW, gW) + rel_err(f32.gc, gc), kF32Tol, id + " f32 state");

  Rng rng{static_cast<uint64_t>(T + 77)};
  V grad_out(T * D);
  for (double& e : grad_out) e = rng.normal();
  const auto g64 = run_backward<double>(kern, cs, grad_out);
  const auto g32 = run_backward<float>(kern, cs, grad_out);
  const char* names[] = {"dW", "dc", "dgW", "dgc", "dq", "dk", "dv", "dlr", "dts", "dln_w", "dln_b"};
  for (size_t i = 0; i < g64.size(); ++i) check(rel_err(g32[i], g64[i]), kF32GradTol, id + " f32 " + names[i]);
}

}  // namespace

int main() {
  std::vector<Kernels> sets{scalar::kernels()};
#if defined(BITTTT_X86)
  const bitttt::CpuFeatures& f = bitttt::cpu_features();
  if (f.avx2 && f.fma) sets.push_back(avx2::kernels());
  if (f.avx512f) sets.push_back(avx512::kernels());
#endif
  for (const Kernels& kern : sets) {
    // D 32 / 64: the fixed-size paths (and decode's one-token path); 16 and 60: the run-time
    // D fallbacks. T and pos: one token, a whole mini-batch, partial first and last ones.
    for (int64_t D : {16, 32, 60, 64})
      for (int64_t T : {1, 16, 37})
        for (int64_t pos : {0, 5})
          test_case(kern, D, 16, T, pos);
    test_case(kern, 32, 8, 63, 13);
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
