"""How close the M=1 ternary GEMV gets to this machine's memory: the time to merely read each
shape's packed BT2 bytes (a torch int64 sum over them) against `ternary_linear` at one token,
both cold (cycling >= 256 MB of weight copies), interleaved per repetition, medians.

op/read near 1 means the decode GEMV runs at the speed of a plain read; no kernel that reads
its weights once can beat the read column.  Usage: python benchmarks/ternary_read_floor.py
"""

from __future__ import annotations

import statistics
import time

import torch

from bitttt import ops

SHAPES = ((2560, 2560), (6912, 2560), (2560, 6912), (4096, 14336))
COLD_BYTES = 256 << 20
REPS = 3


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1e3


def measure(N: int, K: int) -> tuple[float, float, int]:
    """(read µs, op µs, packed bytes) for one shape, cold."""
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


def main() -> None:
    torch.manual_seed(0)
    print(f"{'threads':>7} {'shape':>11} {'read us':>8} {'GB/s':>5} {'op us':>8} {'GB/s':>5} {'op/read':>7}")
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for N, K in SHAPES:
            r, o, nbytes = measure(N, K)
            print(f"{threads:>7} {f'{N}x{K}':>11} {r:>8.0f} {nbytes / r / 1e3:>5.1f} {o:>8.0f} "
                  f"{nbytes / o / 1e3:>5.1f} {o / r:>7.2f}")


if __name__ == "__main__":
    main()
