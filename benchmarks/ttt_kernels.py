"""TTT-Linear CPU kernels against this machine's FP32 FMA peak (issue 15), through `bitttt.ops`.

    flock /work/bench.lock python benchmarks/ttt_kernels.py [--threads 2] [--isa auto] [--base DIR]

Rows (B=1, H=12, D=64, b=16, float32):
- peak: FP32 FMA GFLOP/s of a register-only loop (16 independent zmm / ymm FMA chains per
  thread, compiled here with the system C compiler), at --threads threads;
- prefill: `ops.ttt_linear` over T=2048 tokens, no grad; GFLOP/s counts the dual form's
  products: per token and head 6·D² (k W, q W, kᵀ G) + 2·(b+1)·D (the causal q·k and its mix);
- decode: µs per `ops.ttt_linear_decode_` call (one token, all heads, in place);
- fwd+bwd: `ops.ttt_linear` forward and backward (loss = out.sum() + W.sum()) against the
  eager `bitttt.reference.ttt_linear`, T=128 (the reference's cost is linear in T).
--base DIR imports bitttt from DIR instead (a copy of another build, for before/after rows).
Medians; the load average is printed beside the numbers.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

FMA_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#define CHAINS(V, FMA, SET)                                                        \
  V a0 = SET(1.0f), a1 = SET(1.1f), a2 = SET(1.2f), a3 = SET(1.3f), a4 = SET(1.4f), \
    a5 = SET(1.5f), a6 = SET(1.6f), a7 = SET(1.7f), a8 = SET(1.8f), a9 = SET(1.9f), \
    a10 = SET(2.0f), a11 = SET(2.1f), a12 = SET(2.2f), a13 = SET(2.3f),             \
    a14 = SET(2.4f), a15 = SET(2.5f);                                               \
  const V m = SET(0.999999f), c = SET(1e-7f);                                       \
  for (int64_t i = 0; i < n; ++i) {                                                 \
    a0 = FMA(a0, m, c); a1 = FMA(a1, m, c); a2 = FMA(a2, m, c); a3 = FMA(a3, m, c);  \
    a4 = FMA(a4, m, c); a5 = FMA(a5, m, c); a6 = FMA(a6, m, c); a7 = FMA(a7, m, c);  \
    a8 = FMA(a8, m, c); a9 = FMA(a9, m, c); a10 = FMA(a10, m, c);                    \
    a11 = FMA(a11, m, c); a12 = FMA(a12, m, c); a13 = FMA(a13, m, c);               \
    a14 = FMA(a14, m, c); a15 = FMA(a15, m, c);                                     \
  }
__attribute__((target("avx512f"))) float fma_zmm(int64_t n) {
  CHAINS(__m512, _mm512_fmadd_ps, _mm512_set1_ps)
  __m512 s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11 + a12 + a13 + a14 + a15;
  return _mm512_reduce_add_ps(s);
}
__attribute__((target("avx2,fma"))) float fma_ymm(int64_t n) {
  CHAINS(__m256, _mm256_fmadd_ps, _mm256_set1_ps)
  __m256 s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11 + a12 + a13 + a14 + a15;
  return s[0] + s[7];
}
"""


def fma_library():
    """The FMA loops above, compiled into a temporary shared library."""
    tmp = tempfile.mkdtemp(prefix="bitttt-fma-")
    src, lib = os.path.join(tmp, "fma.c"), os.path.join(tmp, "fma.so")
    with open(src, "w") as f:
        f.write(FMA_SOURCE)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", src, "-o", lib], check=True)
    so = ctypes.CDLL(lib)
    for name in ("fma_zmm", "fma_ymm"):
        getattr(so, name).argtypes = [ctypes.c_int64]
        getattr(so, name).restype = ctypes.c_float
    return so


def fma_peak(so, name: str, threads: int, lanes: int, n: int = 20_000_000) -> float:
    """GFLOP/s of `threads` threads each running 16 chains × n FMAs (ctypes drops the GIL)."""
    fn = getattr(so, name)
    fn(n // 10)
    best = 0.0
    for _ in range(3):
        ts = [threading.Thread(target=fn, args=(n,)) for _ in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
        best = max(best, threads * n * 16 * lanes * 2 / dt / 1e9)
    return best


def median_time(fn, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def inputs(torch, B, H, T, D, b, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    lr = torch.sigmoid(torch.randn(B, H, T, generator=g)) / D
    ts = 1.0 / torch.arange(1, b + 1, dtype=torch.float32)
    W0 = 0.02 * torch.randn(H, D, D, generator=g)
    b0 = torch.zeros(H, D)
    return [q, k, v, lr, ts, W0, b0, torch.ones(H, D), torch.zeros(H, D)]


def import_from(base: str | None):
    if base:  # drop the editable install's finder so that `base` wins
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
        sys.path.insert(0, base)
    import torch

    from bitttt import _C, ops, reference
    return torch, _C, ops, reference


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--isa", default="auto")
    p.add_argument("--base", default=None)
    p.add_argument("--label", default="")
    p.add_argument("--no-ref", action="store_true", help="skip the eager reference (fwd+bwd ratio)")
    args = p.parse_args(argv)
    torch, _C, ops, reference = import_from(args.base)
    torch.set_num_threads(args.threads)
    if args.isa != "auto" and hasattr(_C, "set_isa"):
        _C.set_isa(args.isa)
    so = fma_library()
    peak_zmm = fma_peak(so, "fma_zmm", args.threads, 16) if _C.cpu_features()["avx512f"] else float("nan")
    peak_ymm = fma_peak(so, "fma_ymm", args.threads, 8)
    B, H, D, b = 1, 12, 64, 16

    T = 2048
    a = inputs(torch, B, H, T, D, b)
    with torch.no_grad():
        t_pre = median_time(lambda: ops.ttt_linear(*a), 15)
    flops = B * H * T * (6 * D * D + 2 * (b + 1) * D)

    q, k, v, lr, ts, W0, b0, ln_w, ln_b = a
    _, st = ops.ttt_linear(q[:, :, :37], k[:, :, :37], v[:, :, :37], lr[:, :, :37], *a[4:])
    st = ops.TTTState(*(x.contiguous() for x in st[:4]), st.pos)
    qd, kd, vd, lrd = q[:, :, 40].contiguous(), k[:, :, 40].contiguous(), v[:, :, 40].contiguous(), lr[:, :, 40].contiguous()
    state = [st]

    def step():
        _, state[0] = ops.ttt_linear_decode_(qd, kd, vd, lrd, ts, state[0], ln_w, ln_b)

    t_dec = median_time(lambda: [step() for _ in range(100)], 15) / 100

    Tg = 128
    g = [x.clone().requires_grad_(True) for x in inputs(torch, B, H, Tg, D, b, seed=1)]

    def fwd_bwd(fn):
        out, s = fn(*g)
        torch.autograd.grad(out.sum() + s[0].sum(), g)

    t_fb_op = median_time(lambda: fwd_bwd(ops.ttt_linear), 9)
    t_fb_ref = float("nan") if args.no_ref else median_time(lambda: fwd_bwd(reference.ttt_linear), 3, warmup=1)
    isa = _C.build_info().get("ttt_isa", "?")
    row = dict(label=args.label or (args.base or "this build"), ttt_isa=isa, threads=args.threads,
               peak_zmm_gflops=round(peak_zmm, 1), peak_ymm_gflops=round(peak_ymm, 1),
               prefill_ms=round(t_pre * 1e3, 3), prefill_gflops=round(flops / t_pre / 1e9, 1),
               prefill_pct_zmm_peak=round(100 * flops / t_pre / 1e9 / peak_zmm, 1),
               decode_us=round(t_dec * 1e6, 2), fwd_bwd_ms=round(t_fb_op * 1e3, 2),
               fwd_bwd_ref_ms=round(t_fb_ref * 1e3, 1), fwd_bwd_speedup=round(t_fb_ref / t_fb_op, 1),
               loadavg=open("/proc/loadavg").read().split()[:3])
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
