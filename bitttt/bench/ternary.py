"""Ternary linear benchmark: bitttt's packed kernel against F.linear and torch's int8 paths.

It only declares cases and contenders; bitttt/bench/harness.py validates, interleaves over
rounds, takes medians with min-max and writes the record. Per (shape N×K, tokens M, threads,
regime), the contenders are
- `bitttt`: `ops.ternary_linear(x_fp32, packed, w_scale)`, end to end: float32 in, float32
  out, the per-token activation quantization included;
- `fp32`, `bf16`: `F.linear(x, w)` with x and w [N, K] both in that dtype. Where the CPU has
  no native bf16 (no AVX512-BF16 or AMX) the bf16 GEMM is emulated and fp32 is the fair
  baseline: the preamble and the record's settings say which one the headline ratio uses;
- `int8pack`: `torch.ops.aten._weight_int8pack_mm` (float32 x, int8 weights [N, K], one float32
  scale per row): torch's weight-only int8 GEMM;
- `int8dyn`: `torch.ao.quantization.quantize_dynamic`'s int8 `Linear` (activations quantized
  per call, as bitttt's are).

Regimes (harness.py): hot = one weight reused, with an untimed call before each timed one so
the others' calls in between do not evict it when it fits in L3; cold = each contender cycles
through distinct copies of its weights totalling at least `cold_bytes` (256 MB).

Validation: the bitttt kernel on a slice of the output (first/last tokens × first/last rows)
against `reference.ternary_linear`, with the tolerance of two rounding flips; each baseline
against a float64 product of the same weights (norm-relative error under its dtype's tolerance).

"% of peak" (unless `peaks=False`, `--no-peaks`): the machine's peaks are measured in the same
run (best of two passes); a cold decode row (M = 1) shows its weight GB/s as a share of the read
bandwidth (a hot one reads from cache, which that peak does not bound), a prefill row (M > 1) its int8 MAC/s as a share of the int8 peak of the kernel set
that ran. harness.Peaks.percent never reports more than 100% (it re-measures, then flags).
With `--device cuda` bitttt/bench/ternary_cuda.py declares the GPU's cases on the same harness.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
import torch.nn.functional as F

from bitttt import _C, info, ops, reference
from bitttt.bench import harness
from bitttt.bench.harness import BenchValidationError, Case, Contender, Cycle
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
from bitttt.errors import ConfigError

__all__ = ["BenchValidationError", "TernaryBenchConfig", "Report", "run", "write_json"]

BASELINES = ("fp32", "bf16", "int8pack", "int8dyn")
# Pseudo kernel sets for --isa: the ops over a load-time layout of the same BT2 weights.
# lut16: ternary_linear_lut16, the table-lookup decode path (csrc/ternary/lut16.h), run with
# the AVX2 kernels. trit5 / trit5-avx2: ternary_linear_trit5 over 5 weights per byte
# (csrc/ternary/trit5.h), run with the AVX-512 / AVX2 kernels.
LUT16 = "lut16"
LUT16_ISA = "avx2"
TRIT5 = "trit5"
# pseudo ISA -> (the kernel set it runs with, its weight kind)
LAYOUT_ISAS = {LUT16: (LUT16_ISA, LUT16), TRIT5: ("avx512", TRIT5), "trit5-avx2": ("avx2", TRIT5)}


def kernels_of(isa: str) -> str:
    """The real kernel set a (pseudo) ISA runs with."""
    return LAYOUT_ISAS[isa][0] if isa in LAYOUT_ISAS else isa


def kind_of(isa: str) -> str:
    """The weight kind a (pseudo) ISA reads: "bitttt" (BT2) or its layout's."""
    return LAYOUT_ISAS[isa][1] if isa in LAYOUT_ISAS else "bitttt"


def layout_kinds(isas: list[str]) -> list[str]:
    return sorted({kind_of(i) for i in isas} - {"bitttt"})


def linear_of(kind: str) -> Callable[..., torch.Tensor]:
    """The op one kind's bitttt contender calls: (x, *weight args) -> y."""
    return {LUT16: torch.ops.bitttt.ternary_linear_lut16, TRIT5: torch.ops.bitttt.ternary_linear_trit5}.get(
        kind, ops.ternary_linear)
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
# Baselines: ||y - x @ w.T|| / ||x @ w.T|| (float64 product) at most this. bf16 rounds x and w
# to 8 bits of mantissa (~4e-3 relative each); int8 weights per row at 1/254 of the row's max,
# int8dyn the activations as well. A wrong layout or a transposed weight is off by O(1).
BASELINE_TOL = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 2e-2, "int8pack": 3e-2, "int8dyn": 6e-2}


@dataclass
class TernaryBenchConfig:
    shapes: list[Shape] = field(default_factory=lambda: list(TERNARY_SHAPES))
    tokens: list[int] = field(default_factory=lambda: list(TERNARY_TOKENS))
    threads: list[int] = field(default_factory=lambda: [1, 2])
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    isas: list[str] | None = None  # ternary kernel sets to time; None: the active one
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    rounds: int = 5  # at least this many interleaved rounds per row (harness.Settings)
    reps: int | None = None  # fixed rounds (>= rounds); None: as many as budget_s allows
    budget_s: float = 1.0  # time per row when reps is None (80 default rows: a few minutes)
    max_reps: int = 100
    warmup: int = 2  # calls per contender before each row (at least 1: it sizes the row)
    cold_bytes: int = harness.COLD_BYTES  # each contender's cold copies total at least this
    max_cold_bytes: int = 4 * 2**30  # all cold copies of one shape together, at most
    seed: int = 0
    device: str = "cpu"  # "cuda": bitttt/bench/ternary_cuda.py (threads and isas do not apply)
    peaks: bool = True  # measure the machine's peaks first, for the "% of peak" column (CPU)
    quick_peaks: bool = False  # shorter peak runs and a 256 MB read (--quick)
    shared_machine: bool = False  # recorded: other work ran on the machine meanwhile

    @classmethod
    def quick(cls) -> TernaryBenchConfig:
        """A smoke run that finishes in seconds on 2 cores."""
        return cls(shapes=list(TERNARY_QUICK_SHAPES), tokens=list(TERNARY_QUICK_TOKENS),
                   threads=[1], budget_s=0.25, warmup=1, quick_peaks=True)

    @classmethod
    def for_device(cls, device: str, quick: bool = False) -> TernaryBenchConfig:
        """The defaults for `device`: the CPU ones above, or the CUDA shapes, tokens and baselines."""
        if device != "cuda":
            return cls.quick() if quick else cls()
        shapes, tokens = (TERNARY_CUDA_QUICK_SHAPES, TERNARY_CUDA_QUICK_TOKENS) if quick else \
            (TERNARY_CUDA_SHAPES, TERNARY_CUDA_TOKENS)
        return cls(shapes=list(shapes), tokens=list(tokens), threads=[1], baselines=list(CUDA_BASELINES),
                   budget_s=0.25 if quick else 1.0, device="cuda", peaks=False)

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
        need(0 < self.rounds <= self.max_reps, f"need 0 < rounds <= max_reps, got {self.rounds}, {self.max_reps}")

    def settings(self) -> harness.Settings:
        if self.reps is not None:
            return harness.Settings(rounds=self.reps, max_rounds=max(self.reps, self.max_reps), warmup=self.warmup)
        return harness.Settings(rounds=self.rounds, max_rounds=self.max_reps, budget_s=self.budget_s,
                                warmup=max(self.warmup, 1))


@dataclass
class Report:
    """What a run produced: the harness's record (machine, versions, load) and its results."""
    config: TernaryBenchConfig
    record: harness.Record
    results: list[harness.Result]

    def to_json(self) -> dict[str, Any]:
        return self.record.to_json()

    def rows(self) -> dict[str, dict[str, harness.Result]]:
        """Case name -> contender -> result, in the order measured."""
        out: dict[str, dict[str, harness.Result]] = {}
        for r in self.results:
            out.setdefault(r.case, {})[r.contender] = r
        return out


def write_json(report: Report, path: str) -> None:
    report.record.write(path)


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------


def copies_needed(bytes_per_copy: int, cold_bytes: int) -> int:
    return harness.copies_needed(bytes_per_copy, cold_bytes)


def _dynamic_int8(w: torch.Tensor) -> torch.nn.Module:
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data.copy_(w)
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated: it is still torch's CPU int8 Linear
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                      dtype=torch.qint8)


@dataclass
class ShapeWeights:
    """One random weight [N, K] in each contender kind's format (its call's weight arguments),
    with cold copies when asked."""
    N: int
    K: int
    w: torch.Tensor  # float32 [N, K]: what every format is made from, and the oracle's weight
    args: dict[str, list[tuple[Any, ...]]]  # kind -> copies of its weight arguments; [0] is the hot one
    nbytes: dict[str, int]  # kind -> weight bytes one call reads

    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.args["bitttt"][0]


def weight_args(kind: str, w: torch.Tensor) -> tuple[tuple[Any, ...], int]:
    """(the call's weight arguments, their bytes) for one kind, from the float32 weight w [N, K]."""
    N, K = w.shape
    if kind == "bitttt":
        packed, w_scale = ops.quantize_weight(w)
        return (packed, w_scale), packed.numel()
    if kind in ("fp32", "bf16", "fp16"):
        t = w.to({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[kind])
        return (t,), t.numel() * t.element_size()
    if kind == LUT16:  # the same quantized weight as "bitttt", repacked at load
        packed, w_scale = ops.quantize_weight(w)
        return (torch.ops.bitttt.ternary_repack_lut16(packed), w_scale), packed.numel()
    if kind == TRIT5:  # the same quantized weight, 5 weights per byte
        packed, w_scale = ops.quantize_weight(w)
        layout = torch.ops.bitttt.ternary_repack_trit5(packed, K)
        return (layout, w_scale), layout.numel()
    if kind == "int8pack":
        scale = w.abs().amax(1).clamp_min(1e-12) / 127  # [N], symmetric per row
        return ((w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale), N * K
    if kind == "int8dyn":
        return (_dynamic_int8(w),), N * K
    raise ConfigError(f"bench ternary: unknown contender kind {kind!r}")


def clone_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    import copy

    return tuple(a.clone() if isinstance(a, torch.Tensor) else copy.deepcopy(a) for a in args)


def make_weights(N: int, K: int, config: TernaryBenchConfig, kinds: list[str], cold: bool) -> ShapeWeights:
    """Random weights for every kind; with `cold`, copies of each totalling >= config.cold_bytes.

    Raises ConfigError when the cold copies of this shape would exceed max_cold_bytes.
    """
    w = torch.randn(N, K) * 0.02  # [N, K], the scale of a trained layer's weights
    hot = {k: weight_args(k, w) for k in kinds}
    sw = ShapeWeights(N, K, w, {k: [a] for k, (a, _) in hot.items()}, {k: b for k, (_, b) in hot.items()})
    if not cold:
        return sw
    need = {k: copies_needed(b, config.cold_bytes) for k, b in sw.nbytes.items()}
    total = sum(n * sw.nbytes[k] for k, n in need.items())
    if total > config.max_cold_bytes:
        raise ConfigError(
            f"bench ternary: cold copies of {N}x{K} need {total / 2**30:.1f} GiB, over the "
            f"{config.max_cold_bytes / 2**30:.1f} GiB limit",
            hint="drop that shape, run --regimes hot, or fewer --baselines")
    for k, n in need.items():
        sw.args[k] += [clone_args(sw.args[k][0]) for _ in range(n - 1)]
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
        _C.set_isa(kernels_of(isa))
    kernels = isa or x.device.type
    packed, w_scale = sw.packed()
    kind = kind_of(isa) if isa is not None else "bitttt"
    y = linear_of(kind)(x, *sw.args[kind][0])  # [M, N]
    rows, cols = _ends(x.shape[0], VALIDATE_TOKENS), _ends(sw.N, VALIDATE_ROWS)
    q = ops.unpack_ternary(packed[cols.to(packed.device)], sw.K)  # [n, K]
    xr = x[rows.to(x.device)].float()
    expected = reference.ternary_linear(xr, q, w_scale[cols.to(w_scale.device)].float())  # [m, n]
    got = y[rows.to(y.device)][:, cols.to(y.device)].float()
    _, s_x = reference.quantize_activations(xr)  # [m]
    ws = w_scale[cols.to(w_scale.device)].float()  # [n]
    tol = VALIDATE_RTOL * expected.abs() + VALIDATE_FLIPS * ws.unsqueeze(0) / s_x.unsqueeze(1)
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


def validate_baseline(kind: str, fn: Callable[..., torch.Tensor], x: torch.Tensor, sw: ShapeWeights) -> float:
    """A baseline's full output against x @ w.T in float64; returns its norm-relative error.

    Raises BenchValidationError above BASELINE_TOL[kind]."""
    y = fn(x, *sw.args[kind][0]).double().cpu()
    want = x.double().cpu() @ sw.w.double().T
    err = float((y - want).norm() / want.norm().clamp_min(1e-30))
    if not err <= BASELINE_TOL[kind]:
        raise BenchValidationError(f"bench ternary: baseline {kind} is wrong for {sw.N}x{sw.K}, M={x.shape[0]}: "
                                   f"relative error {err:.3g} > {BASELINE_TOL[kind]}")
    return err


# ---------------------------------------------------------------------------------------
# Contenders and cases
# ---------------------------------------------------------------------------------------


def int8pack_mm(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int8pack_mm(x, w, scale)


def dynamic_int8(x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    return module(x)


BASELINE_FNS: dict[str, Callable[..., torch.Tensor]] = {"fp32": F.linear, "bf16": F.linear, "fp16": F.linear,
                                                        "int8pack": int8pack_mm, "int8dyn": dynamic_int8}
X_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the others take float32 x


def contender_name(isa: str, isas: list[str]) -> str:
    """"bitttt", or "bitttt-avx2" when several kernel sets are timed side by side."""
    return "bitttt" if len(isas) == 1 else f"bitttt-{isa}"


def make_contenders(sw: ShapeWeights, x: torch.Tensor, regime: str, isas: list[str], baselines: list[str],
                    cache_bytes: int, device: str = "cpu") -> list[Contender]:
    """The contenders of one row: x [M, K] float32 (each converts it once to its own dtype)."""
    cold = regime == "cold"

    def args_of(kind: str) -> Cycle:
        return Cycle(sw.args[kind] if cold else sw.args[kind][:1])

    # Hot: the others' calls in between may evict these weights; an untimed call before each
    # timed one brings them back, if they fit at all.
    def prewarm(kind: str) -> bool:
        return not cold and sw.nbytes[kind] < cache_bytes

    def extra(kind: str, copies: int) -> dict[str, Any]:
        return {"weight_bytes": sw.nbytes[kind], "copies": copies}

    out = []
    xb = x.bfloat16() if device == "cuda" else x  # on the GPU bitttt takes bf16 in and out
    for isa in isas:
        kind = kind_of(isa)
        cyc = args_of(kind)

        def bitttt_call(cyc: Cycle = cyc, isa: str = isa, linear=linear_of(kind)) -> torch.Tensor:
            if device == "cpu":
                _C.set_isa(kernels_of(isa))  # an atomic store: free next to any timed call
            return linear(xb, *cyc.next())  # hot: one copy, so a prewarm reads the timed one

        out.append(Contender(contender_name(isa, isas), bitttt_call,
                             check=lambda isa=isa: validate(xb, sw, isa if device == "cpu" else None),
                             prewarm=prewarm(kind), extra=extra(kind, len(cyc))))
    for kind in baselines:
        xk = x.to(X_DTYPES.get(kind, torch.float32))
        fn, cyc = BASELINE_FNS[kind], args_of(kind)
        out.append(Contender(kind, lambda fn=fn, xk=xk, cyc=cyc: fn(xk, *cyc.next()),
                             check=lambda kind=kind, fn=fn, xk=xk: validate_baseline(kind, fn, xk, sw),
                             prewarm=prewarm(kind), extra=extra(kind, len(cyc))))
    return out


def case_name(N: int, K: int, M: int, regime: str) -> str:
    return f"{N}x{K} M={M} {regime}"


def add_rates(results: list[harness.Result], M: int, N: int, K: int, isas: list[str],
              peaks: harness.Peaks | None) -> None:
    """Weight GB/s and GOPS (2MNK per call) at the median; % of peak for bitttt contenders:
    weight GB/s of the read peak (M = 1), else int8 MAC/s of the int8 peak of its kernel set."""
    for r in results:
        med_s = r.median / 1e6
        r.extra["gbps"] = r.extra["weight_bytes"] / med_s / 1e9
        # The issue's unit (#25): BT2's 2-bit bytes N * Kp / 4 per call, whatever a layout reads.
        r.extra["gbps_2bit"] = N * (-(-K // 256) * 256) / 4 / med_s / 1e9
        r.extra["gops"] = 2 * M * N * K / med_s / 1e9
        isa = next((i for i in isas if contender_name(i, isas) == r.contender), None)
        if isa is None or peaks is None:
            continue
        r.extra["kernel_isa"] = isa
        if M == 1 and r.extra.get("regime") == "cold":
            r.extra["pct_of_peak"] = peaks.percent(r.extra["gbps"], "read_gbs", r.threads)
        elif M == 1:
            continue  # hot weights come from cache: the DRAM read peak does not bound them
        else:
            kernels = kernels_of(isa)
            key = "int8_avx512_gmacs" if kernels == "avx512" else f"int8_{kernels}_gmacs"
            r.extra["pct_of_peak"] = peaks.percent(r.extra["gops"] / 2, key, r.threads)


# ---------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------


def headline_baseline(baselines: list[str], device: str = "cpu") -> str | None:
    """The baseline the headline ratio uses: bf16 where this device has native bf16, else fp32."""
    if device == "cpu" and not harness.native_bf16() and "fp32" in baselines:
        return "fp32"
    return "bf16" if "bf16" in baselines else (baselines[0] if baselines else None)


def format_row(rows: dict[str, harness.Result], bitttt_names: list[str]) -> str:
    """One row: each contender's median µs [min-max], bitttt's speedup over each baseline, % of peak."""
    first = next(iter(rows.values()))
    cells = "  ".join(f"{n} {r.median:.1f} [{r.min:.1f}-{r.max:.1f}]" for n, r in rows.items())
    ratios = "  ".join(f"{b}/{f} {rows[f].median / rows[b].median:.2f}x" for b in bitttt_names
                       for f in rows if f not in bitttt_names)
    pct = "  ".join(f"{b} {rows[b].extra['pct_of_peak']:.0f}% of peak" for b in bitttt_names
                    if rows[b].extra.get("pct_of_peak") is not None)
    return f"{first.case:<22} thr {first.threads} | us: {cells} | speedup: {ratios}" + (f" | {pct}" if pct else "")


def print_preamble(config: TernaryBenchConfig, isas: list[str], out: TextIO) -> None:
    meta = info.collect()
    cpu, tern = meta["cpu"], meta["ternary"]
    l3 = f", L3 {cpu['l3_cache_bytes'] // 2**20} MiB" if cpu["l3_cache_bytes"] else ""
    head = headline_baseline(config.baselines)
    bf16 = ("native bf16 (AVX512-BF16/AMX): the headline ratio is vs bf16" if harness.native_bf16() else
            "no native bf16 on this CPU (bf16 GEMMs are emulated): the headline ratio is vs fp32")
    lines = [
        "bitttt bench ternary: ops.ternary_linear (float32 in/out, activation quantization included) "
        f"vs {', '.join(config.baselines)}",
        f"device:  cpu, {cpu['model']}, {cpu['logical_cpus']} logical CPUs{l3}; {bf16}",
        f"ISA:     {', '.join(isas)} (available: {', '.join(tern['available_isas'])})",
        f"torch:   {meta['torch']['version']}, bitttt {meta['bitttt']['version']}",
        f"load:    {', '.join(map(str, harness.load_average()))} (1, 5, 15-minute load average before the run)",
        f"regimes: hot = one weight reused; cold = cycling copies of >= {config.cold_bytes // MB} MB per contender",
        f"rounds:  >= {config.rounds}, interleaved in rotating order; median [min-max] microseconds per call"
        + (f"; headline baseline {head}" if head else ""),
    ]
    print("\n".join(lines), file=out, flush=True)


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def resolve_isas(requested: list[str] | None) -> list[str]:
    """The kernel sets to time; ConfigError for one this CPU or build lacks."""
    available = list(_C.available_isas())
    available += [i for i, (kernels, _) in LAYOUT_ISAS.items() if kernels in available]
    if requested is None:
        try:
            return [_C.isa()]
        except RuntimeError as e:  # a bad BITTTT_ISA; the message says what to do
            raise ConfigError(f"bench ternary: {str(e).removeprefix('bitttt: ')}") from None
    bad = [i for i in requested if i not in available]
    if bad:
        raise ConfigError(f"bench ternary: ISA {', '.join(bad)} not available here "
                          f"(available: {', '.join(available)})", hint="see bitttt info")
    return requested


def record_settings(config: TernaryBenchConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["headline_baseline"] = headline_baseline(config.baselines, config.device)
    return d


def run(config: TernaryBenchConfig, out: TextIO = sys.stdout) -> Report:
    """Validates every row, then times them (harness.py), printing each row as it completes.

    Raises ConfigError for a bad config and BenchValidationError when a contender is wrong
    (before anything is timed). Leaves torch's thread count and the active ISA as they were.
    """
    config.validate()
    if config.device != "cpu":  # bitttt/bench/ternary_cuda.py builds on this module, not under it
        raise ConfigError(f"bench.ternary.run times the CPU kernels; for device {config.device!r} "
                          "use bitttt.bench.ternary_cuda.run")
    isas = resolve_isas(config.isas)
    config = dataclasses.replace(config, isas=isas)  # the record says what ran
    for N, K in config.shapes:  # cold copies before any timing: a shape over the limit fails now
        need = sum(copies_needed(b, config.cold_bytes) * b for b in
                   (weight_bytes(k, N, K) for k in ["bitttt", *config.baselines]))
        if "cold" in config.regimes and need > config.max_cold_bytes:
            raise ConfigError(f"bench ternary: cold copies of {N}x{K} need {need / 2**30:.1f} GiB, over the "
                              f"{config.max_cold_bytes / 2**30:.1f} GiB limit",
                              hint="drop that shape, run --regimes hot, or fewer --baselines")
    print_preamble(config, isas, out)
    # Peaks before any torch thread spins up: the peaks' std::threads get the cores.
    peaks = harness.Peaks(config.threads, quick=config.quick_peaks) if config.peaks else None
    record = harness.Record("ternary", record_settings(config), peaks)
    cache_bytes = info.l3_cache_bytes() or 32 * 2**20
    old_threads, old_isa = torch.get_num_threads(), info.active_isa()[0]
    torch.manual_seed(config.seed)
    results: list[harness.Result] = []
    names = [contender_name(i, isas) for i in isas]
    try:
        with torch.inference_mode():
            check_all(config, isas, cache_bytes)
            for N, K in config.shapes:
                results += run_shape(N, K, config, isas, cache_bytes, peaks, names, out)
    finally:
        torch.set_num_threads(old_threads)
        if old_isa is not None:
            _C.set_isa(old_isa)
    return Report(config, record.finish(results), results)


def weight_bytes(kind: str, N: int, K: int) -> int:
    """Bytes of one copy of kind's weights (bitttt: BT2 pads K to a multiple of 256)."""
    return {"bitttt": N * (-(-K // 256) * 256) // 4, "fp32": 4 * N * K, "bf16": 2 * N * K, "fp16": 2 * N * K,
            "int8pack": N * K, "int8dyn": N * K, LUT16: N * (-(-K // 256) * 256) // 4,
            TRIT5: N * (-(-K // 320) * 64)}[kind]


def check_all(config: TernaryBenchConfig, isas: list[str], cache_bytes: int) -> None:
    """Every (shape, M, threads) row's contenders checked on warm weights, before any timing."""
    for N, K in config.shapes:
        sw = make_weights(N, K, config, ["bitttt", *layout_kinds(isas), *config.baselines],
                          cold=False)
        for M in config.tokens:
            x = torch.randn(M, K)
            for threads in config.threads:
                harness.check_case(Case(case_name(N, K, M, "hot"), make_contenders(
                    sw, x, "hot", isas, config.baselines, cache_bytes), threads=threads))
        del sw
        gc.collect()


def run_shape(N: int, K: int, config: TernaryBenchConfig, isas: list[str], cache_bytes: int,
              peaks: harness.Peaks | None, names: list[str], out: TextIO) -> list[harness.Result]:
    """Every row of one shape: weights made once per regime, each row interleaved by the harness."""
    results = []
    for regime in config.regimes:
        kinds = ["bitttt", *layout_kinds(isas), *config.baselines]
        sw = make_weights(N, K, config, kinds, cold=regime == "cold")
        for M in config.tokens:
            x = torch.randn(M, K)
            for threads in config.threads:
                case = Case(case_name(N, K, M, regime),
                            make_contenders(sw, x, regime, isas, config.baselines, cache_bytes),
                            threads=threads, unit="us", extra={"N": N, "K": K, "M": M, "regime": regime})
                rs = harness.time_case(case, config.settings())
                add_rates(rs, M, N, K, isas, peaks)
                print(format_row({r.contender: r for r in rs}, names), file=out, flush=True)
                results += rs
        del sw
        gc.collect()
    return results
