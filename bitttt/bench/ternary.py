"""Ternary linear benchmark: bitttt's packed kernel against F.linear in float32 and bfloat16.

What is timed, per (shape N×K, tokens M, threads, regime):
- `bitttt`: `ops.ternary_linear(x_fp32, packed, w_scale)`, end to end: float32 in, float32
  out, the per-token activation quantization included;
- `fp32`, `bf16`: `F.linear(x, w)` with x and w [N, K] both in that dtype.

Contenders are interleaved: each repetition runs every contender once, in an order that
rotates between repetitions, so drift (frequency, another process) hits all alike; the
reported time is the median over repetitions. Two regimes:
- hot: one weight matrix reused, as when a layer's weights stay in cache;
- cold: each contender cycles through distinct copies of its weights totalling at least
  `cold_bytes` in its own dtype (256 MB by default, far above a 32 MB L3), as in decoding a
  model that does not fit in cache: every call reads its weights from memory.

Before timing, each (shape, M, threads, ISA) is checked against `reference.ternary_linear`
on a slice of the output (llm.c's validate-then-time); a mismatch stops the run.

"% of peak" (unless `peaks=False`, `--no-peaks`): this machine's peaks are measured once at
the start (bitttt/bench/peak.py, per thread count); a decode row (M = 1) shows its weight
GB/s as a share of the streaming read bandwidth (hot rows read from cache and can pass 100%),
a prefill row (M > 1) its int8 MAC/s (M*N*K per second) as a share of the int8 peak of the
kernel set that ran (vpdpbusd for avx512, vpmaddubsw for avx2; none for scalar).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
import torch.nn.functional as F

from bitttt import _C, info, ops, reference
from bitttt.bench import peak
from bitttt.bench.shapes import (
    TERNARY_CUDA_QUICK_SHAPES,
    TERNARY_CUDA_QUICK_TOKENS,
    TERNARY_CUDA_SHAPES,
    TERNARY_CUDA_TOKENS,
    TERNARY_QUICK_SHAPES,
    TERNARY_QUICK_TOKENS,
    TERNARY_SHAPES,
    TERNARY_TOKENS,
    Shape,
)
from bitttt.errors import BitttError, ConfigError

BASELINES = ("fp32", "bf16")
# A pseudo kernel set for --isa: ternary_linear_lut16, the table-lookup decode path over its
# load-time layout (csrc/ternary/lut16.h), run with the AVX2 kernels.
LUT16 = "lut16"
LUT16_ISA = "avx2"
CUDA_BASELINES = ("bf16", "fp16", "fp32")  # --device cuda (bitttt/bench/ternary_cuda.py)
DEVICES = ("cpu", "cuda")
REGIMES = ("hot", "cold")
MB = 10**6

# Validation: the kernel may round x * s_x differently from torch at an exact .5 tie (or
# through an FMA), moving one x_q by 1; each such flip moves y[m, n] by w_scale[n] / s_x[m].
# Allow two flips per output; a wrong layout or index is off by orders of magnitude more.
VALIDATE_FLIPS = 2
VALIDATE_RTOL = 1e-5  # float rounding of the epilogue (acc * w_scale / s_x, in either order)
VALIDATE_ROWS = 64  # output features checked at each end of N (tails are where bugs hide)
VALIDATE_TOKENS = 4  # tokens checked at each end of M


class BenchValidationError(BitttError):
    """The kernel's output disagrees with the reference: the timings would be meaningless."""


@dataclass
class TernaryBenchConfig:
    shapes: list[Shape] = field(default_factory=lambda: list(TERNARY_SHAPES))
    tokens: list[int] = field(default_factory=lambda: list(TERNARY_TOKENS))
    threads: list[int] = field(default_factory=lambda: [1, 2])
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    isas: list[str] | None = None  # ternary kernel sets to time; None: the active one
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    reps: int | None = None  # fixed repetitions; None: as many as budget_s allows
    budget_s: float = 1.0  # time per row when reps is None (80 default rows: a few minutes)
    min_reps: int = 3  # floor for slow rows (4096x14336, M=512 in bf16 takes seconds)
    max_reps: int = 100
    warmup: int = 2  # calls per contender before each row (at least 1: it sizes the row)
    cold_bytes: int = 256 * MB  # each contender's cold copies total at least this
    max_cold_bytes: int = 4 * 2**30  # all cold copies of one shape together, at most
    seed: int = 0
    device: str = "cpu"  # "cuda": bitttt/bench/ternary_cuda.py (threads and isas do not apply)
    peaks: bool = True  # measure the machine's peaks first, for the "% of peak" column (CPU)
    peak_run_s: float = peak.RUN_S  # one timed run of a compute peak
    peak_read_bytes: int = peak.READ_BYTES  # the read-bandwidth buffer

    @classmethod
    def quick(cls) -> TernaryBenchConfig:
        """A smoke run that finishes in well under 30 s on 2 cores."""
        return cls(shapes=list(TERNARY_QUICK_SHAPES), tokens=list(TERNARY_QUICK_TOKENS),
                   threads=[1], budget_s=0.25, warmup=1, peak_run_s=peak.QUICK_RUN_S,
                   peak_read_bytes=peak.QUICK_READ_BYTES)

    @classmethod
    def for_device(cls, device: str, quick: bool = False) -> TernaryBenchConfig:
        """The defaults for `device`: the CPU ones above, or the CUDA shapes, tokens and baselines."""
        if device != "cuda":
            return cls.quick() if quick else cls()
        shapes, tokens = (TERNARY_CUDA_QUICK_SHAPES, TERNARY_CUDA_QUICK_TOKENS) if quick else \
            (TERNARY_CUDA_SHAPES, TERNARY_CUDA_TOKENS)
        return cls(shapes=list(shapes), tokens=list(tokens), threads=[1], baselines=list(CUDA_BASELINES),
                   budget_s=0.25 if quick else 1.0, device="cuda")

    def validate(self) -> None:
        """Raises ConfigError for values the benchmark cannot run with."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"bench ternary: {what}", hint="see bitttt bench ternary --help")
        need(bool(self.shapes) and all(n > 0 and k > 0 for n, k in self.shapes),
             f"shapes must be NxK > 0, got {self.shapes}")
        need(bool(self.tokens) and all(m > 0 for m in self.tokens), f"tokens must be > 0, got {self.tokens}")
        need(bool(self.threads) and all(t > 0 for t in self.threads), f"threads must be > 0, got {self.threads}")
        need(bool(self.regimes) and set(self.regimes) <= set(REGIMES),
             f"regimes must be among {REGIMES}, got {self.regimes}")
        need(self.device in DEVICES, f"device must be among {DEVICES}, got {self.device!r}")
        allowed = CUDA_BASELINES if self.device == "cuda" else BASELINES
        need(set(self.baselines) <= set(allowed), f"baselines must be among {allowed}, got {self.baselines}")
        need(self.reps is None or self.reps > 0, f"reps must be > 0, got {self.reps}")
        need(0 < self.min_reps <= self.max_reps,
             f"need 0 < min_reps <= max_reps, got {self.min_reps}, {self.max_reps}")


@dataclass
class Timing:
    """One contender in one row. Times are per call; rates use the median."""
    median_us: float
    min_us: float
    max_us: float
    reps: int
    copies: int  # distinct weight copies cycled through (1 when hot)
    weight_bytes: int  # weight bytes one call reads
    gbps: float  # weight_bytes / median time
    gops: float  # 2*M*N*K / median time


@dataclass
class Row:
    N: int
    K: int
    M: int
    threads: int
    regime: str
    timings: dict[str, Timing]  # by contender name
    speedups: dict[str, float]  # "bitttt vs fp32": t_fp32 / t_bitttt
    validation: dict[str, float]  # by bitttt contender: max |err| / tolerance (< 1 passes)
    # By bitttt contender: % of the read bandwidth (M = 1) or of its ISA's int8 peak (M > 1);
    # None where no peak applies (scalar, emulated) or none was measured.
    peak_pct: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Report:
    config: TernaryBenchConfig
    info: dict[str, Any]
    rows: list[Row]
    peaks: peak.Peaks | None = None

    def to_json(self) -> dict[str, Any]:
        return {"benchmark": "ternary_linear", "time": time.time(), "argv": sys.argv,
                "config": dataclasses.asdict(self.config), "info": self.info,
                "peaks": self.peaks.to_json() if self.peaks else None,
                "rows": [dataclasses.asdict(r) for r in self.rows]}


@dataclass
class Contender:
    """Something to time: fn(x, *weights[i]) on weight copy i."""
    name: str
    fn: Callable[..., torch.Tensor]
    x: torch.Tensor
    weights: list[tuple[torch.Tensor, ...]]
    weight_bytes: int
    isa: str | None = None  # the bitttt kernel set to force before each call
    prewarm: bool = False  # hot regime: run once untimed right before each timed call
    calls: int = 0

    def __call__(self) -> None:
        if self.isa is not None:
            _C.set_isa(self.isa)  # an atomic store: free next to any call timed here
        self.fn(self.x, *self.weights[self.calls % len(self.weights)])
        self.calls += 1


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------


@dataclass
class ShapeWeights:
    """One random weight [N, K] in each contender's format, with its cold copies."""
    N: int
    K: int
    packed: list[torch.Tensor]  # uint8 [N, Kp/4]; [0] is the hot one
    w_scale: torch.Tensor  # float32 [N]
    fp32: list[torch.Tensor]
    bf16: list[torch.Tensor]
    lut16: list[torch.Tensor] = field(default_factory=list)  # uint8 lut16 layouts of packed[0]

    def bytes_per_copy(self, kind: str) -> int:
        return {"bitttt": self.packed[0].numel(), "fp32": 4 * self.N * self.K, "bf16": 2 * self.N * self.K}[kind]


def copies_needed(bytes_per_copy: int, cold_bytes: int) -> int:
    """Distinct copies whose total reaches cold_bytes (one copy that large is cold alone)."""
    return max(1, math.ceil(cold_bytes / bytes_per_copy))


def make_weights(N: int, K: int, config: TernaryBenchConfig, kinds: list[str]) -> ShapeWeights:
    """Random weights for every kind in `kinds`; cold copies when the cold regime runs.

    Raises ConfigError when the cold copies of this shape would exceed max_cold_bytes.
    """
    w = torch.randn(N, K) * 0.02  # [N, K], the scale of a trained layer's weights
    packed, w_scale = ops.quantize_weight(w)
    sw = ShapeWeights(N, K, [packed], w_scale,
                      fp32=[w] if "fp32" in kinds else [], bf16=[w.bfloat16()] if "bf16" in kinds else [])
    if "cold" not in config.regimes:
        if LUT16 in kinds:
            sw.lut16 = [torch.ops.bitttt.ternary_repack_lut16(packed)]
        return sw
    kinds = [k for k in kinds if k != LUT16]
    need = {k: copies_needed(sw.bytes_per_copy(k), config.cold_bytes) for k in kinds}
    total = sum(n * sw.bytes_per_copy(k) for k, n in need.items())
    if total > config.max_cold_bytes:
        raise ConfigError(
            f"bench ternary: cold copies of {N}x{K} need {total / 2**30:.1f} GiB, over the "
            f"{config.max_cold_bytes / 2**30:.1f} GiB limit",
            hint="drop that shape, run --regimes hot, or lower the fp32/bf16 baselines")
    store = {"bitttt": sw.packed, "fp32": sw.fp32, "bf16": sw.bf16}
    for kind, n in need.items():
        store[kind].extend(store[kind][0].clone() for _ in range(n - 1))
    if LUT16 in kinds:  # as many distinct copies as the BT2 contenders cycle through
        layout = torch.ops.bitttt.ternary_repack_lut16(packed)
        sw.lut16 = [layout] + [layout.clone() for _ in range(len(sw.packed) - 1)]
    return sw


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


def _ends(n: int, k: int) -> torch.Tensor:
    """Indices of the first and last k of range(n), without repeats."""
    return torch.unique(torch.cat([torch.arange(min(k, n)), torch.arange(max(n - k, 0), n)]))


def validate(x: torch.Tensor, sw: ShapeWeights, isa: str | None) -> float:
    """Runs the bitttt op at full size with kernel set `isa` (None: x's device picks the
    kernels, as for CUDA) and checks a slice of the output (first/last tokens × first/last
    rows) against reference.ternary_linear.

    Returns max |err| / tolerance (< 1). Raises BenchValidationError when it is >= 1.
    """
    if isa is not None:
        _C.set_isa(LUT16_ISA if isa == LUT16 else isa)
    kernels = isa or x.device.type
    if isa == LUT16:
        y = torch.ops.bitttt.ternary_linear_lut16(x, sw.lut16[0], sw.w_scale)  # [M, N]
    else:
        y = ops.ternary_linear(x, sw.packed[0], sw.w_scale)  # [M, N]
    rows, cols = _ends(x.shape[0], VALIDATE_TOKENS), _ends(sw.N, VALIDATE_ROWS)
    q = ops.unpack_ternary(sw.packed[0][cols], sw.K)  # [n, K]
    expected = reference.ternary_linear(x[rows], q, sw.w_scale[cols])  # [m, n]
    got = y[rows][:, cols]
    _, s_x = reference.quantize_activations(x[rows])  # [m]
    tol = VALIDATE_RTOL * expected.abs() + VALIDATE_FLIPS * sw.w_scale[cols].unsqueeze(0) / s_x.unsqueeze(1)
    ratio = ((got - expected).abs() / tol).nan_to_num(nan=math.inf)
    worst = float(ratio.max())
    if worst >= 1:
        m, n = divmod(int(ratio.argmax()), len(cols))
        tm, tn = int(rows[m]), int(cols[n])
        raise BenchValidationError(
            f"bench ternary: ternary_linear ({kernels}) is wrong for {sw.N}x{sw.K}, M={x.shape[0]}, "
            f"threads={torch.get_num_threads()}: y[{tm}, {tn}] = {float(got[m, n]):.6g}, "
            f"reference {float(expected[m, n]):.6g} (tolerance {float(tol[m, n]):.3g})",
            hint=f"the {kernels} kernel has a bug; compare with BITTTT_ISA=scalar")
    return worst


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def contender_name(isa: str, isas: list[str]) -> str:
    """"bitttt", or "bitttt-avx2" when several kernel sets are timed side by side."""
    return "bitttt" if len(isas) == 1 else f"bitttt-{isa}"


def make_contenders(sw: ShapeWeights, M: int, regime: str, isas: list[str], baselines: list[str],
                    cache_bytes: int) -> list[Contender]:
    """The contenders for one row, with x [M, K] in each one's dtype."""
    x = torch.randn(M, sw.K)  # [M, K]
    cold = regime == "cold"

    def pick(copies: list[torch.Tensor]) -> list[torch.Tensor]:
        return copies if cold else copies[:1]

    # Hot: the other contenders' calls in between may push these weights out of cache; an
    # untimed call right before each timed one brings them back, if they fit at all.
    def prewarm(kind: str) -> bool:
        return not cold and sw.bytes_per_copy(kind) < cache_bytes

    out = []
    for isa in isas:
        if isa == LUT16:
            weights = [(layout, sw.w_scale) for layout in pick(sw.lut16)]
            out.append(Contender(contender_name(isa, isas), torch.ops.bitttt.ternary_linear_lut16, x, weights,
                                 sw.bytes_per_copy("bitttt"), isa=LUT16_ISA, prewarm=prewarm("bitttt")))
            continue
        weights = [(p, sw.w_scale) for p in pick(sw.packed)]
        out.append(Contender(contender_name(isa, isas), ops.ternary_linear, x, weights,
                             sw.bytes_per_copy("bitttt"), isa=isa, prewarm=prewarm("bitttt")))
    if "fp32" in baselines:
        out.append(Contender("fp32", F.linear, x, [(w,) for w in pick(sw.fp32)],
                             sw.bytes_per_copy("fp32"), prewarm=prewarm("fp32")))
    if "bf16" in baselines:
        out.append(Contender("bf16", F.linear, x.bfloat16(), [(w,) for w in pick(sw.bf16)],
                             sw.bytes_per_copy("bf16"), prewarm=prewarm("bf16")))
    return out


def timed_call(c: Contender) -> int:
    """One timed call, in nanoseconds (after an untimed one when c.prewarm)."""
    if c.prewarm:
        c()
        c.calls -= 1  # the timed call reads the very copy the untimed one just did
    t0 = time.perf_counter_ns()
    c()
    return time.perf_counter_ns() - t0


def warm_up(contenders: list[Contender], calls: int) -> int:
    """Runs each contender `calls` times, unrecorded; returns the estimated ns of one
    repetition (each contender's fastest call, twice for those that prewarm)."""
    best = {c.name: min(timed_call(c) for _ in range(calls)) for c in contenders}
    return sum(best[c.name] * (2 if c.prewarm else 1) for c in contenders)


def choose_reps(per_rep_ns: int, config: TernaryBenchConfig) -> int:
    """config.reps, or as many repetitions as fit budget_s, within [min_reps, max_reps]."""
    if config.reps is not None:
        return config.reps
    return max(config.min_reps, min(config.max_reps, int(config.budget_s * 1e9 / max(per_rep_ns, 1))))


def time_row(contenders: list[Contender], config: TernaryBenchConfig) -> dict[str, list[int]]:
    """Interleaved timing: each repetition runs every contender once, order rotating."""
    reps = choose_reps(warm_up(contenders, max(config.warmup, 1)), config)
    times: dict[str, list[int]] = {c.name: [] for c in contenders}
    n = len(contenders)
    for r in range(reps):
        for c in contenders[r % n:] + contenders[:r % n]:
            times[c.name].append(timed_call(c))
    return times


def summarize(contenders: list[Contender], times: dict[str, list[int]], M: int, N: int, K: int) -> dict[str, Timing]:
    out = {}
    for c in contenders:
        ts = times[c.name]
        med_s = statistics.median(ts) / 1e9
        out[c.name] = Timing(median_us=med_s * 1e6, min_us=min(ts) / 1e3, max_us=max(ts) / 1e3, reps=len(ts),
                             copies=len(c.weights), weight_bytes=c.weight_bytes,
                             gbps=c.weight_bytes / med_s / 1e9, gops=2 * M * N * K / med_s / 1e9)
    return out


def peak_pct(timings: dict[str, Timing], M: int, threads: int, isas: list[str],
             peaks: peak.Peaks | None) -> dict[str, float | None]:
    """% of peak per bitttt contender: weight GB/s of read GB/s (M = 1), else int8 MAC/s of
    the int8 peak of the contender's kernel set (gops / 2: one MAC is two ops)."""
    if peaks is None:
        return {}
    out: dict[str, float | None] = {}
    for isa in isas:
        t = timings[contender_name(isa, isas)]
        kernels = LUT16_ISA if isa == LUT16 else isa
        rate, ref = (t.gbps, peaks.read_gbs(threads)) if M == 1 else (t.gops / 2, peaks.int8(kernels, threads))
        out[contender_name(isa, isas)] = 100 * rate / ref if ref else None
    return out


def speedups(timings: dict[str, Timing]) -> dict[str, float]:
    """t_baseline / t_bitttt for every bitttt contender and baseline timed."""
    return {f"{b} vs {f}": timings[f].median_us / timings[b].median_us
            for b in timings if b.startswith("bitttt") for f in timings if f in BASELINES}


# ---------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------


def _fmt_us(us: float) -> str:
    return f"{us:.1f}" if us < 1000 else f"{us:.0f}"


def _fmt_rate(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _label(name: str) -> str:
    """Column label: "bitttt-avx2" shows as "avx2" when kernel sets are side by side."""
    return name.removeprefix("bitttt-")


class Table:
    """Prints the header once and each row as it is measured (a full run takes minutes)."""

    def __init__(self, names: list[str], ratios: list[str], out: TextIO, pct: list[str] | None = None) -> None:
        self.names, self.ratios, self.out = names, ratios, out
        self.pct = pct or []  # bitttt contenders with a "% of peak" cell
        self.widths = [max(7, len(_label(n))) + 1 for n in names]
        self.ratio_widths = [max(9, len(_label(r))) + 1 for r in ratios]
        self.pct_widths = [max(6, len(_label(n))) + 1 for n in self.pct]

    def _group(self, cells: list[str]) -> str:
        return "".join(f"{c:>{w}}" for c, w in zip(cells, self.widths, strict=True))

    def header(self) -> None:
        span = sum(self.widths)
        rspan = sum(self.ratio_widths)
        pct_title = " | % of peak" if self.pct else ""
        print(f"{'':<29}| {'time per call (us)':<{span}} | {'weight GB/s':<{span}} | "
              f"{'GOPS':<{span}} | {'speedup':<{rspan}}{pct_title}", file=self.out)
        names = self._group([_label(n) for n in self.names])
        ratios = "".join(f"{_label(r):>{w}}" for r, w in zip(self.ratios, self.ratio_widths, strict=True))
        pct = "".join(f"{_label(n):>{w}}" for n, w in zip(self.pct, self.pct_widths, strict=True))
        print(f"{'shape':<12}{'M':>5}{'thr':>4} {'regime':<7}| {names} | {names} | {names} | {ratios}"
              + (f" | {pct}" if self.pct else ""), file=self.out)

    def row(self, r: Row) -> None:
        t = [r.timings[n] for n in self.names]
        ratios = "".join(f"{r.speedups[k]:>{w - 1}.2f}x" for k, w in zip(self.ratios, self.ratio_widths, strict=True))
        pct = "".join(f"{r.peak_pct[n]:>{w - 1}.0f}%" if r.peak_pct.get(n) is not None else f"{'-':>{w}}"
                      for n, w in zip(self.pct, self.pct_widths, strict=True))
        print(f"{f'{r.N}x{r.K}':<12}{r.M:>5}{r.threads:>4} {r.regime:<7}| "
              f"{self._group([_fmt_us(x.median_us) for x in t])} | "
              f"{self._group([_fmt_rate(x.gbps) for x in t])} | "
              f"{self._group([_fmt_rate(x.gops) for x in t])} | {ratios}" + (f" | {pct}" if self.pct else ""),
              file=self.out, flush=True)


def print_peaks(peaks: peak.Peaks, isas: list[str], out: TextIO) -> None:
    """One line per thread count: the peaks the "% of peak" column divides by."""
    for t in peaks.threads:
        int8 = ", ".join(f"{isa} {v:.0f}" for isa in isas if (v := peaks.int8(isa, t)) is not None)
        read = peaks.read_gbs(t)
        print(f"peaks:   {t} thread{'s' if t > 1 else ''}: read {read:.1f} GB/s (the % of M=1 rows), int8 "
              f"{int8 or '-'} G MAC/s (of M>1 rows)", file=out, flush=True)


def print_preamble(config: TernaryBenchConfig, meta: dict[str, Any], isas: list[str], out: TextIO) -> None:
    cpu, tern = meta["cpu"], meta["ternary"]
    l3 = f", L3 {cpu['l3_cache_bytes'] // 2**20} MiB" if cpu["l3_cache_bytes"] else ""
    load = meta["load_before"]
    busy = " (other processes are running: timings, above all multi-threaded ones, suffer)" if load > 0.5 else ""
    reps = (f"{config.reps} per row" if config.reps else
            f"adaptive, {config.budget_s:g} s per row, {config.min_reps}..{config.max_reps}")
    lines = [
        "bitttt bench ternary: ops.ternary_linear (float32 in/out, activation quantization included) "
        "vs F.linear float32 and bfloat16",
        f"device:  cpu, {cpu['model']}, {cpu['logical_cpus']} logical CPUs{l3}",
        f"ISA:     {', '.join(isas)} (available: {', '.join(tern['available_isas'])})",
        f"torch:   {meta['torch']['version']}, bitttt {meta['bitttt']['version']}",
        f"load:    {load:.2f} (1-minute load average before the run){busy}",
        f"threads: {', '.join(map(str, config.threads))} (torch.set_num_threads)",
        f"regimes: hot = one weight matrix reused; cold = cycling copies of >= {config.cold_bytes // MB} MB "
        "per contender",
        f"reps:    {reps}; medians of interleaved calls; GB/s = weight bytes read per call / time",
    ]
    print("\n".join(lines), file=out, flush=True)


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def resolve_isas(requested: list[str] | None) -> list[str]:
    """The kernel sets to time; ConfigError for one this CPU or build lacks."""
    available = list(_C.available_isas())
    if requested is None:
        try:
            return [_C.isa()]
        except RuntimeError as e:  # a bad BITTTT_ISA; the message says what to do
            raise ConfigError(f"bench ternary: {str(e).removeprefix('bitttt: ')}") from None
    if LUT16_ISA in available:
        available.append(LUT16)
    bad = [i for i in requested if i not in available]
    if bad:
        raise ConfigError(f"bench ternary: ISA {', '.join(bad)} not available here "
                          f"(available: {', '.join(available)})", hint="see bitttt info")
    return requested


def run(config: TernaryBenchConfig, out: TextIO = sys.stdout) -> Report:
    """Validates, then times every (shape, M, threads, regime) row, printing the table.

    Raises ConfigError for a bad config and BenchValidationError when the kernel is wrong.
    Leaves torch's thread count and the active ISA as they were.
    """
    config.validate()
    if config.device != "cpu":  # bitttt/bench/ternary_cuda.py builds on this module, not under it
        raise ConfigError(f"bench.ternary.run times the CPU kernels; for device {config.device!r} "
                          "use bitttt.bench.ternary_cuda.run")
    isas = resolve_isas(config.isas)
    config = dataclasses.replace(config, isas=isas)  # the report records what ran
    meta = info.collect()
    # Another busy process skews timings (above all threads=2 on a 2-core machine): say so.
    meta["load_before"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cache_bytes = meta["cpu"]["l3_cache_bytes"] or 32 * 2**20
    names = [contender_name(i, isas) for i in isas] + list(config.baselines)
    print_preamble(config, meta, isas, out)
    peaks = None
    if config.peaks:  # before any torch thread spins up: the peaks' std::threads get the cores
        peaks = peak.measure_peaks(config.threads, config.peak_read_bytes, config.peak_run_s)
        print_peaks(peaks, isas, out)
    table = Table(names, [f"{b} vs {f}" for b in names[:len(isas)] for f in config.baselines], out,
                  pct=names[:len(isas)] if peaks else None)
    table.header()
    rows: list[Row] = []
    old_threads, old_isa = torch.get_num_threads(), info.active_isa()[0]
    torch.manual_seed(config.seed)
    try:
        with torch.inference_mode():
            for N, K in config.shapes:
                rows += run_shape(N, K, config, isas, cache_bytes, table, peaks)
    finally:
        torch.set_num_threads(old_threads)
        if old_isa is not None:
            _C.set_isa(old_isa)
    return Report(config, meta, rows, peaks)


def run_shape(N: int, K: int, config: TernaryBenchConfig, isas: list[str], cache_bytes: int,
              table: Table, peaks: peak.Peaks | None = None) -> list[Row]:
    """Every row of one shape: weights made once, each (M, threads) validated, then timed."""
    sw = make_weights(N, K, config, ["bitttt", *config.baselines, *([LUT16] if LUT16 in isas else [])])
    rows = []
    for M in config.tokens:
        for threads in config.threads:
            torch.set_num_threads(threads)
            x = torch.randn(M, K)
            checked = {contender_name(i, isas): validate(x, sw, i) for i in isas}
            for regime in config.regimes:
                contenders = make_contenders(sw, M, regime, isas, config.baselines, cache_bytes)
                times = time_row(contenders, config)
                timings = summarize(contenders, times, M, N, K)
                row = Row(N, K, M, threads, regime, timings, speedups(timings), checked,
                          peak_pct(timings, M, threads, isas, peaks))
                table.row(row)
                rows.append(row)
    del sw
    gc.collect()
    return rows


def write_json(report: Report, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report.to_json(), f, indent=1)
        f.write("\n")
