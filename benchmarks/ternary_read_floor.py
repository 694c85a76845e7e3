"""How close the ternary kernels get to this machine's limits, measured in the same run.

Decode (M=1): each BitNet 2B shape's `ternary_linear` against the time to merely read its
packed BT2 bytes (a torch int64 sum over them), both cold (cycling >= 256 MB of weight
copies), interleaved per repetition, medians; "%BW" is against the streaming read bandwidth
that `bitttt bench peak` measures (1 GiB, best of 5) at the same thread count just before
(a torch int64 sum over 1 GB with a copy of bitttt that predates it).
Prefill (--prefill M): warm weights, median GOPS (2*M*N*K per second) and % of the int8
dot-product peak of `bitttt bench peak` (vpdpbusd, or vpmaddubsw for avx2).

    python benchmarks/ternary_read_floor.py [--threads 1 2] [--prefill 128] [--isa avx2]
        [--bitttt-path DIR]    # time another copy of the package (e.g. main's build)

The thread-wait policy is whatever OMP_WAIT_POLICY / GOMP_SPINCOUNT say when it starts
(bitttt's CLI sets PASSIVE; unset, libgomp spins about 3 ms before it sleeps).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

SHAPES = ((2560, 2560), (6912, 2560), (2560, 6912), (4096, 14336))
COLD_BYTES = 256 << 20
REPS = 5


def use_package_at(path: str) -> None:
    """Imports bitttt from `path` instead of the editable install (its finder goes first)."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
    sys.path.insert(0, path)


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1e3


def stream_read_gbs(torch, threads: int) -> float:
    """The streaming read bandwidth (bitttt bench peak), or best of 5 int64 sums over 1 GB."""
    try:
        from bitttt.bench import peak
    except ImportError:  # a copy of bitttt from before bench peak
        pass
    else:
        return peak.measure_read(threads).value
    buf = torch.ones(1 << 27, dtype=torch.int64)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter_ns()
        buf.sum()
        best = min(best, time.perf_counter_ns() - t)
    return buf.numel() * 8 / best


def int8_peak_gmacs(threads: int, isa: str) -> float | None:
    """G int8 MAC/s of vpdpbusd (avx512) or vpmaddubsw (avx2), from bitttt bench peak's kernels;
    None for other kernel sets, and with a copy of bitttt that predates them."""
    try:
        from bitttt._native import _C
        from bitttt.bench import peak
    except ImportError:
        return None
    name = "int8_avx512vnni" if isa == "avx512" else f"int8_{isa}"
    kernel = next((k for k in _C.peak_kernels() if k["name"] == name), None)
    return peak.measure_compute(kernel, threads).value if kernel else None


def decode(torch, ops, N: int, K: int) -> tuple[float, float, int]:
    """(read µs, op µs, packed bytes) for one shape at M=1, cold."""
    packed, w_scale = ops.quantize_weight(torch.randn(N, K) * 0.02)
    copies = [packed.clone() for _ in range(max(1, COLD_BYTES // packed.numel()))]
    x = torch.randn(1, K)
    read, op = [], []
    with torch.inference_mode():
        for _ in range(REPS):
            for c in copies:
                t = time.perf_counter_ns()
                c.view(torch.int64).sum()
                read.append(time.perf_counter_ns() - t)
            for c in copies:
                t = time.perf_counter_ns()
                ops.ternary_linear(x, c, w_scale)
                op.append(time.perf_counter_ns() - t)
    return median_us(read), median_us(op), packed.numel()


def prefill_us(torch, ops, M: int, N: int, K: int) -> float:
    packed, w_scale = ops.quantize_weight(torch.randn(N, K) * 0.02)
    x = torch.randn(M, K)
    samples = []
    with torch.inference_mode():
        for _ in range(12):
            t = time.perf_counter_ns()
            ops.ternary_linear(x, packed, w_scale)
            samples.append(time.perf_counter_ns() - t)
    return median_us(samples[2:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--prefill", type=int, default=0, help="also time M tokens (warm), e.g. 128")
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--isa", default="", help="BITTTT_ISA for this run (default: the best)")
    p.add_argument("--bitttt-path", default="", help="import bitttt from this folder")
    p.add_argument("--label", default="")
    args = p.parse_args()
    if args.isa:
        os.environ["BITTTT_ISA"] = args.isa
    if args.bitttt_path:
        use_package_at(args.bitttt_path)
    import torch

    from bitttt import _native, ops

    torch.manual_seed(0)
    isa = _native._C.isa()
    label = args.label or ("path " + args.bitttt_path if args.bitttt_path else "worktree")
    print(f"# {label}  isa={isa}  OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}  "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', '-')}  loadavg {open('/proc/loadavg').read().split()[:3]}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        if not args.no_decode:
            bw = stream_read_gbs(torch, threads)
            print(f"threads {threads}: stream read {bw:.1f} GB/s")
            print(f"{'shape':>11} {'M':>3} {'thr':>3} {'read us':>8} {'op us':>8} {'GB/s':>5} {'%BW':>4} {'op/read':>7}")
            for N, K in SHAPES:
                r, o, nbytes = decode(torch, ops, N, K)
                print(f"{f'{N}x{K}':>11} {1:>3} {threads:>3} {r:>8.0f} {o:>8.1f} {nbytes / o / 1e3:>5.1f} "
                      f"{100 * nbytes / o / 1e3 / bw:>4.0f} {o / r:>7.2f}")
        if args.prefill:
            peak = int8_peak_gmacs(threads, isa)
            print(f"threads {threads}: int8 peak {peak} G MAC/s ({'maddubs' if isa == 'avx2' else 'vpdpbusd'})")
            for N, K in SHAPES:
                us = prefill_us(torch, ops, args.prefill, N, K)
                gmacs = args.prefill * N * K / us / 1e3
                pct = f"{100 * gmacs / peak:.0f}" if peak else "-"
                print(f"{f'{N}x{K}':>11} {args.prefill:>3} {threads:>3} {us:>8.0f} us {2 * gmacs:>6.0f} GOPS "
                      f"{pct:>3}% of peak")
        print(f"  loadavg {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
