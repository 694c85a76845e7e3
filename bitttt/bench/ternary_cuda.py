"""Ternary linear benchmark on a CUDA device: bitttt's packed op against F.linear.

`bitttt bench ternary --device cuda` (bitttt.bench.ternary.run hands over here). Per (shape
N×K, tokens M, regime) it times
- `bitttt`: `ops.ternary_linear(x_bf16, packed, w_scale)`, end to end: bfloat16 in and out,
  the per-token quantization kernel included;
- `bf16`, `fp16`, `fp32`: `F.linear(x, w)` with x and w [N, K] in that dtype (cuBLAS).

Times are CUDA events around each call (device time from the call's first kernel to its last,
including any gap where the GPU waits for the host to launch the next one: what an eager
model sees). Contenders are interleaved, the order rotating between repetitions, and the
median is reported. Regimes as on the CPU: hot reuses one weight (run once untimed right
before each timed call, so it sits in L2 when it fits); cold cycles through copies totalling
at least `cold_bytes` (256 MB, several times any L2), so every call reads from HBM.

Each (shape, M) is first validated against `reference.ternary_linear` on a slice of the
output, in float32 (the same GEMV/GEMM cores as bf16, with a tighter tolerance).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, TextIO

import torch
import torch.nn.functional as F

from bitttt import info, ops
from bitttt.bench import ternary
from bitttt.bench.ternary import Report, Row, ShapeWeights, TernaryBenchConfig, Timing, copies_needed
from bitttt.errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def require_cuda() -> None:
    """ConfigError (one line, exit 2) unless bitttt's CUDA kernels and a CUDA device are here."""
    from bitttt._native import C_cuda, cuda_unavailable_reason

    if C_cuda is None:
        raise ConfigError(f"bench ternary: --device cuda needs bitttt's CUDA kernels: {cuda_unavailable_reason}",
                          hint="install a CUDA torch and build bitttt with BITTTT_CUDA=on, or use --device cpu")
    if not torch.cuda.is_available():
        raise ConfigError("bench ternary: --device cuda: bitttt's CUDA kernels are compiled, but torch sees no "
                          "CUDA device", hint="run on a machine with a GPU (check nvidia-smi), or use --device cpu")


@dataclass
class CudaContender:
    """fn(x, *weights[i]) on weight copy i, all on the device."""
    name: str
    fn: Any
    x: torch.Tensor
    weights: list[tuple[torch.Tensor, ...]]
    weight_bytes: int
    calls: int = 0

    def __call__(self) -> None:
        self.fn(self.x, *self.weights[self.calls % len(self.weights)])
        self.calls += 1


def make_weights(N: int, K: int, config: TernaryBenchConfig, cold: bool) -> dict[str, list[tuple[torch.Tensor, ...]]]:
    """Per contender kind, its weight copies on the device (one when not cold).

    Raises ConfigError when the cold copies of this shape would exceed max_cold_bytes.
    """
    w = torch.randn(N, K) * 0.02  # [N, K], the scale of a trained layer's weights
    packed, w_scale = ops.quantize_weight(w)
    hot = {"bitttt": (packed.cuda(), w_scale.cuda())}
    for kind in config.baselines:
        hot[kind] = (w.to("cuda", _DTYPES[kind]),)
    if not cold:
        return {k: [v] for k, v in hot.items()}
    nbytes = {k: sum(t.numel() * t.element_size() for t in v[:1]) for k, v in hot.items()}
    need = {k: copies_needed(b, config.cold_bytes) for k, b in nbytes.items()}
    total = sum(need[k] * nbytes[k] for k in hot)
    if total > config.max_cold_bytes:
        raise ConfigError(f"bench ternary: cold copies of {N}x{K} need {total / 2**30:.1f} GiB, over the "
                          f"{config.max_cold_bytes / 2**30:.1f} GiB limit", hint="drop that shape or run --regimes hot")
    return {k: [v] + [tuple(t.clone() for t in v) for _ in range(need[k] - 1)] for k, v in hot.items()}


def make_contenders(weights: dict[str, list[tuple[torch.Tensor, ...]]], M: int, K: int) -> list[CudaContender]:
    x = torch.randn(M, K, device="cuda")  # [M, K]
    out = [CudaContender("bitttt", ops.ternary_linear, x.bfloat16(), weights["bitttt"],
                         weights["bitttt"][0][0].numel())]
    for kind, copies in weights.items():
        if kind != "bitttt":
            out.append(CudaContender(kind, F.linear, x.to(_DTYPES[kind]), copies,
                                     copies[0][0].numel() * copies[0][0].element_size()))
    return out


def time_row(contenders: list[CudaContender], config: TernaryBenchConfig, hot: bool) -> dict[str, list[float]]:
    """Interleaved CUDA-event timing; microseconds per call, by contender."""
    for c in contenders:
        for _ in range(max(config.warmup, 1)):
            c()
    torch.cuda.synchronize()
    t0 = time.perf_counter_ns()
    for c in contenders:
        c()
    torch.cuda.synchronize()
    reps = ternary.choose_reps((time.perf_counter_ns() - t0) * (2 if hot else 1), config)

    events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {c.name: [] for c in contenders}
    n = len(contenders)
    for r in range(reps):
        for c in contenders[r % n:] + contenders[:r % n]:
            if hot:
                c()  # untimed: brings this contender's weights back into L2
                c.calls -= 1
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            c()
            end.record()
            events[c.name].append((start, end))
    torch.cuda.synchronize()
    return {name: [s.elapsed_time(e) * 1e3 for s, e in evs] for name, evs in events.items()}


def summarize(contenders: list[CudaContender], times: dict[str, list[float]], M: int, N: int, K: int
              ) -> dict[str, Timing]:
    out = {}
    for c in contenders:
        ts = times[c.name]
        med_s = statistics.median(ts) / 1e6
        out[c.name] = Timing(median_us=med_s * 1e6, min_us=min(ts), max_us=max(ts), reps=len(ts),
                             copies=len(c.weights), weight_bytes=c.weight_bytes,
                             gbps=c.weight_bytes / med_s / 1e9, gops=2 * M * N * K / med_s / 1e9)
    return out


class Table:
    """µs, weight GB/s and TOPS per contender, then bitttt's speedup over each baseline."""

    def __init__(self, names: list[str], out: TextIO) -> None:
        self.names, self.out = names, out
        self.baselines = names[1:]

    def _cells(self, values: list[str]) -> str:
        return "".join(f"{v:>8}" for v in values)

    def header(self) -> None:
        span = 8 * len(self.names)
        print(f"{'':<25}| {'time per call (us)':<{span}} | {'weight GB/s':<{span}} | {'TOPS':<{span}} | "
              "bitttt speedup vs", file=self.out)
        print(f"{'shape':<12}{'M':>5} {'regime':<7}| {self._cells(self.names)} | {self._cells(self.names)} | "
              f"{self._cells(self.names)} | {self._cells(self.baselines)}", file=self.out, flush=True)

    def row(self, r: Row) -> None:
        t = [r.timings[n] for n in self.names]
        us = [f"{x.median_us:.1f}" if x.median_us < 1000 else f"{x.median_us:.0f}" for x in t]
        gbps = [f"{x.gbps:.0f}" for x in t]
        tops = [f"{x.gops / 1e3:.2f}" if x.gops < 1e4 else f"{x.gops / 1e3:.1f}" for x in t]
        ratios = [f"{r.speedups[f'bitttt vs {b}']:.2f}x" for b in self.baselines]
        print(f"{f'{r.N}x{r.K}':<12}{r.M:>5} {r.regime:<7}| {self._cells(us)} | {self._cells(gbps)} | "
              f"{self._cells(tops)} | {self._cells(ratios)}", file=self.out, flush=True)


def device_info() -> dict[str, Any]:
    from bitttt._native import C_cuda

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"name": props.name, "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
            "memory_bytes": props.total_memory, "torch_cuda": torch.version.cuda, "build": dict(C_cuda.build_info())}


def print_preamble(config: TernaryBenchConfig, meta: dict[str, Any], out: TextIO) -> None:
    dev = meta["cuda_device"]
    reps = (f"{config.reps} per row" if config.reps else
            f"adaptive, {config.budget_s:g} s per row, {config.min_reps}..{config.max_reps}")
    lines = [
        "bitttt bench ternary --device cuda: ops.ternary_linear (bfloat16 in/out, activation quantization "
        f"included) vs F.linear {', '.join(config.baselines)}",
        f"device:  {dev['name']} (sm_{dev['capability'].replace('.', '')}, {dev['sms']} SMs, "
        f"{dev['memory_bytes'] / 2**30:.0f} GiB); bitttt built for {dev['build']['archs']}",
        f"torch:   {meta['torch']['version']} (CUDA {dev['torch_cuda']}), bitttt {meta['bitttt']['version']}",
        f"regimes: hot = one weight reused (L2 when it fits); cold = cycling copies of >= "
        f"{config.cold_bytes // ternary.MB} MB per contender",
        f"reps:    {reps}; CUDA events, medians of interleaved calls; GB/s = weight bytes per call / time",
    ]
    print("\n".join(lines), file=out, flush=True)


def run(config: TernaryBenchConfig, out: TextIO) -> Report:
    """Validates, then times every (shape, M, regime) row on the current CUDA device.

    Raises ConfigError without CUDA kernels or device (before any work) and
    BenchValidationError when the kernel is wrong.
    """
    config.validate()
    require_cuda()
    meta = info.collect()
    meta["cuda_device"] = device_info()  # beside info.collect()'s "cuda" (build, devices)
    names = ["bitttt", *config.baselines]
    table = Table(names, out)
    print_preamble(config, meta, out)
    table.header()
    rows: list[Row] = []
    torch.manual_seed(config.seed)
    with torch.inference_mode():
        for N, K in config.shapes:
            for regime in config.regimes:
                weights = make_weights(N, K, config, cold=regime == "cold")
                sw = ShapeWeights(N, K, [weights["bitttt"][0][0]], weights["bitttt"][0][1], fp32=[], bf16=[])
                for M in config.tokens:
                    checked = {"bitttt": ternary.validate(torch.randn(M, K, device="cuda"), sw, None)}
                    contenders = make_contenders(weights, M, K)
                    times = time_row(contenders, config, hot=regime == "hot")
                    timings = summarize(contenders, times, M, N, K)
                    speedups = {f"bitttt vs {b}": timings[b].median_us / timings["bitttt"].median_us
                                for b in config.baselines}
                    row = Row(N, K, M, 1, regime, timings, speedups, checked)
                    table.row(row)
                    rows.append(row)
                del weights, sw
                torch.cuda.empty_cache()
    return Report(config, meta, rows)
