// Runs the TTT-Linear CUDA kernels (csrc/ttt/ttt_linear_cuda_kernels.cuh) on the CPU and compares
// them with the CPU kernels (csrc/ttt/ttt_linear_cpu_kernels.inc), for machines without a GPU.
//
// Emulation: every CUDA thread of a block is a std::thread; __syncthreads() is a barrier of
// the block's kThreads threads, __shfl_xor_sync an exchange through memory between two
// barriers of the warp's 32 threads; blocks run one after another, so `__shared__` (static
// here) and the dynamic shared memory are the block's own. Shared memory, the workspace and
// every output start as NaN, so a read of something never written shows up as NaN.
// Real threads interleave freely, so a missing barrier can also show up as a wrong result
// (not reliably: this checks the math and the indexing, a GPU run checks the timing).
//
// Build: g++ -std=c++20 -O2 -pthread -Icsrc tests/cuda_emulation/ttt_emulate.cpp
// Prints one line per case and "ALL OK" (exit 0), or the first mismatches (exit 1).
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ttt/ttt.h"

// --- the CPU kernels (the portable copy), as ttt_linear_scalar.cpp builds them ---
namespace bitttt::ttt::scalar {
#define BITTTT_TTT_ISA_NAME "scalar"
#include "ttt/ttt_linear_cpu_kernels.inc"
#undef BITTTT_TTT_ISA_NAME
}  // namespace bitttt::ttt::scalar

// --- a CUDA block on std::threads ---
#define BITTTT_CUDA_EMULATION 1
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) alignas(n)

struct EmuDim3 {
  unsigned x;
};
thread_local EmuDim3 threadIdx, blockIdx;
const EmuDim3 blockDim{256};

namespace emu {
struct Block {
  std::unique_ptr<std::barrier<>> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  unsigned char* smem;
  std::vector<double> xchg;  // [warps][32] slots for the shuffles (a double fits float too)
};
thread_local Block* blk = nullptr;
}  // namespace emu

inline void __syncthreads() { emu::blk->bar->arrive_and_wait(); }

template <typename T>
T __shfl_xor_sync(unsigned, T v, int o) {
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  double* x = emu::blk->xchg.data() + w * 32;
  std::memcpy(&x[lane], &v, sizeof(T));
  emu::blk->warp_bar[w]->arrive_and_wait();
  T r;
  std::memcpy(&r, &x[lane ^ o], sizeof(T));
  emu::blk->warp_bar[w]->arrive_and_wait();
  return r;
}

#define BITTTT_DYNAMIC_SMEM(name) unsigned char* name = emu::blk->smem
using std::sqrt;

#include "ttt/ttt_linear_cuda_kernels.cuh"

namespace {

using namespace bitttt::ttt;
using gpu::kThreads;

template <typename T>
constexpr T kNaN = std::numeric_limits<T>::quiet_NaN();

template <typename Args>
void launch(void (*kernel)(Args), int grid, size_t smem_bytes, const Args& a) {
  for (int b = 0; b < grid; ++b) {
    emu::Block blk;
    blk.bar = std::make_unique<std::barrier<>>(kThreads);
    for (int w = 0; w < kThreads / 32; ++w) blk.warp_bar.push_back(std::make_unique<std::barrier<>>(32));
    std::vector<double> smem(smem_bytes / sizeof(double) + 2, kNaN<double>);  // NaN as float too (all ones)
    std::memset(smem.data(), 0xff, smem.size() * sizeof(double));
    blk.smem = reinterpret_cast<unsigned char*>(smem.data());
    blk.xchg.assign(kThreads, 0.0);
    std::vector<std::thread> th;
    for (int t = 0; t < kThreads; ++t)
      th.emplace_back([&, t] {
        emu::blk = &blk;
        threadIdx.x = t;
        blockIdx.x = b;
        kernel(a);
      });
    for (auto& x : th) x.join();
  }
}

template <typename T>
std::vector<T> randn(size_t n, std::mt19937_64& g, double scale = 1, double shift = 0) {
  std::normal_distribution<double> d;
  std::vector<T> v(n);
  for (auto& x : v) x = T(shift + scale * d(g));
  return v;
}

struct Case {
  int BH, H, D, b;
  int64_t T, pos;
  int ckpt_every;
};

int failures = 0;

template <typename T>
void expect_close(const char* what, const Case& c, const std::vector<T>& got, const std::vector<T>& want, double tol) {
  double worst = 0;
  size_t at = 0;
  bool nan = false;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(double(got[i])) != std::isnan(double(want[i]))) nan = true;
    const double err = std::fabs(double(got[i]) - double(want[i])) / (1.0 + std::fabs(double(want[i])));
    if (err > worst || std::isnan(err)) worst = std::isnan(err) ? INFINITY : err, at = i;
  }
  if (nan || worst > tol) {
    ++failures;
    std::printf("  MISMATCH %-8s %s D=%d b=%d T=%lld pos=%lld ckpt=%d: worst rel err %.3g at %zu (got %.17g want %.17g)\n",
                what, sizeof(T) == 8 ? "f64" : "f32", c.D, c.b, (long long)c.T, (long long)c.pos, c.ckpt_every,
                worst, at, double(got[at]), double(want[at]));
  }
}

template <typename T>
void run_case(const Case& c, std::mt19937_64& g) {
  const int BH = c.BH, H = c.H, D = c.D, b = c.b;
  const int64_t T_ = c.T, DD = int64_t(D) * D;
  const double tol = sizeof(T) == 8 ? 1e-10 : 2e-4;
  Dims dm{T_, D, b, c.pos, c.ckpt_every};
  const int64_t nseg = num_segments(dm), nck = num_checkpoints(dm);
  auto q = randn<T>(BH * T_ * D, g), k = randn<T>(BH * T_ * D, g), v = randn<T>(BH * T_ * D, g);
  std::vector<T> lr(BH * T_);
  for (auto& x : lr) x = T(0.01 + 0.5 / D * std::uniform_real_distribution<double>()(g));
  std::vector<T> ts(b);
  for (int i = 0; i < b; ++i) ts[i] = T(1.0 / (i + 1) + 0.05 * std::normal_distribution<double>()(g));
  auto W = randn<T>(BH * DD, g, 0.3), cc = randn<T>(BH * D, g, 0.1);
  auto gW = randn<T>(BH * DD, g, 0.01), gc = randn<T>(BH * D, g, 0.01);
  if (c.pos % b == 0) std::fill(gW.begin(), gW.end(), T(0)), std::fill(gc.begin(), gc.end(), T(0));
  auto ln_w = randn<T>(H * D, g, 0.1, 1.0), ln_b = randn<T>(H * D, g, 0.1);

  // --- forward: CPU ---
  const Kernels kern = scalar::kernels();
  auto fwd_cpu = [&] {
    if constexpr (sizeof(T) == 4) return kern.forward_f32;
    else return kern.forward_f64;
  }();
  auto bwd_cpu = [&] {
    if constexpr (sizeof(T) == 4) return kern.backward_f32;
    else return kern.backward_f64;
  }();
  std::vector<T> Wc = W, cc_c = cc, gWc = gW, gcc = gc, out_c(BH * T_ * D), ckW_c(BH * nck * DD), ckc_c(BH * nck * D);
  for (int bh = 0; bh < BH; ++bh) {
    const int h = bh % H;
    HeadForward<T> a{q.data() + bh * T_ * D, k.data() + bh * T_ * D, v.data() + bh * T_ * D, lr.data() + bh * T_,
                     ts.data(), ln_w.data() + h * D, ln_b.data() + h * D, Wc.data() + bh * DD, cc_c.data() + bh * D,
                     gWc.data() + bh * DD, gcc.data() + bh * D, out_c.data() + bh * T_ * D,
                     nck ? ckW_c.data() + bh * nck * DD : nullptr, nck ? ckc_c.data() + bh * nck * D : nullptr};
    fwd_cpu(dm, a);
  }
  // --- forward: the CUDA kernel ---
  std::vector<T> Wg = W, cg = cc, gWg = gW, gcg = gc, out_g(BH * T_ * D, kNaN<T>), ckW_g(BH * nck * DD, kNaN<T>),
                 ckc_g(BH * nck * D, kNaN<T>);
  const int rows = int(T_ < b ? T_ : b);
  if (nseg > 0) {
    gpu::FwdArgs<T> fa{q.data(), k.data(), v.data(), lr.data(), ts.data(), ln_w.data(), ln_b.data(),
                       Wg.data(), cg.data(), gWg.data(), gcg.data(), out_g.data(),
                       nck ? ckW_g.data() : nullptr, nck ? ckc_g.data() : nullptr,
                       T_, c.pos, nseg, nck, D, b, H, rows, c.ckpt_every};
    launch(gpu::ttt_forward_kernel<T>, BH, gpu::forward_smem_elems(D, rows) * sizeof(T), fa);
  }
  expect_close("out", c, out_g, out_c, tol);
  expect_close("W", c, Wg, Wc, tol);
  expect_close("c", c, cg, cc_c, tol);
  expect_close("gW", c, gWg, gWc, tol);
  expect_close("gc", c, gcg, gcc, tol);
  expect_close("ckpt_W", c, ckW_g, ckW_c, tol);
  expect_close("ckpt_c", c, ckc_g, ckc_c, tol);
  if (nck == 0 || nseg == 0) return;

  // --- backward, from the CPU forward's checkpoints ---
  auto go = randn<T>(BH * T_ * D, g), gWo = randn<T>(BH * DD, g), gco = randn<T>(BH * D, g);
  auto ggWo = randn<T>(BH * DD, g), ggco = randn<T>(BH * D, g);
  struct Grads {
    std::vector<T> dW, dc, dgW, dgc, dq, dk, dv, dlr, dts, dlnw, dlnb;
  };
  auto fresh = [&](T init) {
    Grads r{gWo, gco, ggWo, ggco, std::vector<T>(BH * T_ * D, init), std::vector<T>(BH * T_ * D, init),
            std::vector<T>(BH * T_ * D, init), std::vector<T>(BH * T_, init), std::vector<T>(BH * b, T(0)),
            std::vector<T>(BH * D, T(0)), std::vector<T>(BH * D, T(0))};
    return r;
  };
  Grads rc = fresh(T(0)), rg = fresh(kNaN<T>);
  for (int bh = 0; bh < BH; ++bh) {
    const int h = bh % H;
    HeadBackward<T> a{q.data() + bh * T_ * D, k.data() + bh * T_ * D, v.data() + bh * T_ * D, lr.data() + bh * T_,
                      ts.data(), ln_w.data() + h * D, ln_b.data() + h * D, gW.data() + bh * DD, gc.data() + bh * D,
                      ckW_c.data() + bh * nck * DD, ckc_c.data() + bh * nck * D, go.data() + bh * T_ * D,
                      rc.dW.data() + bh * DD, rc.dc.data() + bh * D, rc.dgW.data() + bh * DD, rc.dgc.data() + bh * D,
                      rc.dq.data() + bh * T_ * D, rc.dk.data() + bh * T_ * D, rc.dv.data() + bh * T_ * D,
                      rc.dlr.data() + bh * T_, rc.dts.data() + bh * b, rc.dlnw.data() + bh * D,
                      rc.dlnb.data() + bh * D};
    bwd_cpu(dm, a);
  }
  const int64_t span = c.ckpt_every < nseg ? c.ckpt_every : nseg;
  const int64_t per_head = gpu::backward_ws_elems(D, rows, span);
  std::vector<T> ws(BH * per_head, kNaN<T>);
  gpu::BwdArgs<T> ba{q.data(), k.data(), v.data(), lr.data(), ts.data(), ln_w.data(), ln_b.data(),
                     gW.data(), gc.data(), ckW_c.data(), ckc_c.data(), go.data(),
                     rg.dW.data(), rg.dc.data(), rg.dgW.data(), rg.dgc.data(),
                     rg.dq.data(), rg.dk.data(), rg.dv.data(), rg.dlr.data(),
                     rg.dts.data(), rg.dlnw.data(), rg.dlnb.data(), ws.data(),
                     T_, c.pos, nseg, nck, per_head, D, b, H, rows, int(span)};
  launch(gpu::ttt_backward_kernel<T>, BH, 0, ba);
  const double btol = sizeof(T) == 8 ? 1e-9 : 2e-3;
  expect_close("dq", c, rg.dq, rc.dq, btol);
  expect_close("dk", c, rg.dk, rc.dk, btol);
  expect_close("dv", c, rg.dv, rc.dv, btol);
  expect_close("dlr", c, rg.dlr, rc.dlr, btol);
  expect_close("dW", c, rg.dW, rc.dW, btol);
  expect_close("dc", c, rg.dc, rc.dc, btol);
  expect_close("dgW", c, rg.dgW, rc.dgW, btol);
  expect_close("dgc", c, rg.dgc, rc.dgc, btol);
  expect_close("dts_h", c, rg.dts, rc.dts, btol);
  expect_close("dln_w_h", c, rg.dlnw, rc.dlnw, btol);
  expect_close("dln_b_h", c, rg.dlnb, rc.dlnb, btol);
}

// The decode step: the forward kernel over one token, in place, at every position of a mini-batch.
template <typename T>
void run_decode(int D, int b, std::mt19937_64& g) {
  const int BH = 2, H = 2;
  const int64_t DD = int64_t(D) * D;
  Dims dm{1, D, b, 0, 0};
  auto W = randn<T>(BH * DD, g, 0.3), cc = randn<T>(BH * D, g, 0.1);
  std::vector<T> gW(BH * DD, T(0)), gc(BH * D, T(0));
  auto ln_w = randn<T>(H * D, g, 0.1, 1.0), ln_b = randn<T>(H * D, g, 0.1);
  std::vector<T> ts(b);
  for (int i = 0; i < b; ++i) ts[i] = T(1.0 / (i + 1));
  std::vector<T> Wg = W, cg = cc, gWg = gW, gcg = gc;
  const Kernels kern = scalar::kernels();
  Case c{BH, H, D, b, 1, 0, 0};
  for (int64_t pos = 0; pos < b + 2; ++pos) {
    dm.pos = c.pos = pos;
    auto q = randn<T>(BH * D, g), k = randn<T>(BH * D, g), v = randn<T>(BH * D, g);
    std::vector<T> lr(BH, T(0.3 / D)), out_c(BH * D), out_g(BH * D, kNaN<T>);
    for (int bh = 0; bh < BH; ++bh) {
      HeadForward<T> a{q.data() + bh * D, k.data() + bh * D, v.data() + bh * D, lr.data() + bh, ts.data(),
                       ln_w.data() + (bh % H) * D, ln_b.data() + (bh % H) * D, W.data() + bh * DD, cc.data() + bh * D,
                       gW.data() + bh * DD, gc.data() + bh * D, out_c.data() + bh * D, nullptr, nullptr};
      if constexpr (sizeof(T) == 4) kern.forward_f32(dm, a);
      else kern.forward_f64(dm, a);
    }
    gpu::FwdArgs<T> fa{q.data(), k.data(), v.data(), lr.data(), ts.data(), ln_w.data(), ln_b.data(),
                       Wg.data(), cg.data(), gWg.data(), gcg.data(), out_g.data(), nullptr, nullptr,
                       1, pos, 1, 0, D, b, H, 1, 0};
    launch(gpu::ttt_forward_kernel<T>, BH, gpu::forward_smem_elems(D, 1) * sizeof(T), fa);
    const double tol = sizeof(T) == 8 ? 1e-10 : 2e-4;
    expect_close("dec.out", c, out_g, out_c, tol);
    expect_close("dec.W", c, Wg, W, tol);
    expect_close("dec.gW", c, gWg, gW, tol);
    expect_close("dec.c", c, cg, cc, tol);
    expect_close("dec.gc", c, gcg, gc, tol);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  std::mt19937_64 g(1234);
  // (BH, H, D, b, T, pos, ckpt_every): the shapes of tests/ops/test_ttt_linear.py, plus odd ones.
  std::vector<Case> cases = {
      {2, 2, 4, 4, 33, 2, 2},  {2, 2, 8, 16, 19, 5, 1}, {2, 2, 32, 16, 40, 7, 4}, {1, 1, 64, 16, 33, 17, 3},
      {2, 2, 16, 16, 5, 3, 1}, {1, 1, 32, 16, 17, 0, 2}, {1, 1, 32, 16, 1, 15, 1}, {2, 2, 33, 5, 23, 3, 2},
      {2, 2, 8, 4, 16, 0, 2},  {1, 1, 8, 4, 7, 4, 1},   {2, 2, 4, 4, 0, 3, 2},    {1, 1, 8, 16, 40, 0, 100},
      {6, 3, 8, 4, 10, 1, 1},  {2, 2, 4, 1, 5, 3, 2},   {1, 1, 1, 4, 9, 2, 2},    // B=2 H=3; b=1; D=1
  };
  if (!quick) cases.push_back({1, 1, 128, 16, 20, 9, 2}), cases.push_back({1, 1, 128, 64, 70, 3, 2});
  for (const Case& c : cases) {
    const int before = failures;
    run_case<double>(c, g);
    run_case<float>(c, g);
    std::printf("case D=%d b=%d T=%lld pos=%lld ckpt=%d: %s\n", c.D, c.b, (long long)c.T, (long long)c.pos,
                c.ckpt_every, failures == before ? "ok" : "FAILED");
    std::fflush(stdout);
  }
  for (int D : {8, 64}) {
    const int before = failures;
    run_decode<double>(D, 4, g);
    run_decode<float>(D, 4, g);
    std::printf("decode D=%d b=4: %s\n", D, failures == before ? "ok" : "FAILED");
  }
  if (failures) {
    std::printf("%d MISMATCHES\n", failures);
    return 1;
  }
  std::printf("ALL OK\n");
  return 0;
}
