"""Where a training step's time goes (issue 26): torch.profiler over full `Trainer.train_step`s
of bitttt models and the plain transformer, one table per contender, forward and backward apart.

    python benchmarks/profile_train_step.py [--contenders ttt_linear-ternary,attention-float,nanogpt]
        [--threads 2] [--steps 2] [--top 25] [--unfused-bitlinear | --composed-train-ops | --float-gemm-bitlinear]
        [--ab-rounds N] [--json PATH]

Each contender is built as `bitttt bench train` builds it (bitttt/bench/train.py: the trainer's own step:
forward, backward, grad clipping, AdamW), warmed up with one step, then profiled over --steps
steps. The table: op, calls per step, self CPU ms per step, share of the step, and its phase:
backward (inside an autograd engine node), optimizer (AdamW's step, zero_grad) or forward
(everything else: forward, loss, grad-norm clipping).
Timings on a shared machine are noisy; the op counts are not.

--composed-train-ops adds, for each bitttt contender, its twin with RMSNorm, the TTT causal conv,
RoPE (csrc/train/) and SwiGLU's silu*up as the torch compositions they were before; with
--ab-rounds N the pairs are timed, interleaved.

--unfused-bitlinear adds, for each ternary contender, its twin with BitLinear's training forward
as the three autograd nodes it was before ops.bitlinear_fake_quant (fake_quant_activations,
fake_quant_weight, F.linear). --ab-rounds N times instead of profiling: tokens/s of each ternary
contender, fused vs that unfused twin, in N interleaved windows of --steps steps each.

--float-gemm-bitlinear adds, for each ternary contender, its twin with BitLinear's fused training
forward on the float32 GEMM (F.linear(x_dq, w_dq)) instead of the exact int8 one (torch._int_mm);
with --ab-rounds N the pairs are timed, interleaved.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bitttt/cli.py, before torch loads

import argparse  # noqa: E402
import bisect  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from bitttt import config as cfg  # noqa: E402
from bitttt import ops  # noqa: E402
from bitttt.bench.train import contender_names, make_trainer  # noqa: E402
from bitttt.nn import BitLinear, blocks  # noqa: E402

UNFUSED = " (3-node BitLinear)"
COMPOSED = " (torch compositions)"
FLOAT_GEMM = " (fp32 GEMM BitLinear)"


@contextlib.contextmanager
def composed_train_ops():
    """The training step as before csrc/train/ and blocks.silu_mul: RMSNorm, the TTT conv and
    RoPE as their torch compositions, SwiGLU as split, silu, mul (process-wide while it lasts)."""
    saved = ops.uses_train_kernel, blocks.silu_mul
    ops.uses_train_kernel = lambda *tensors: False
    blocks.silu_mul = lambda h, hidden: F.silu(h[..., :hidden]) * h[..., hidden:]
    try:
        yield
    finally:
        ops.uses_train_kernel, blocks.silu_mul = saved


def _composed_step(train_step):
    def step(*args, **kwargs):
        with composed_train_ops():
            return train_step(*args, **kwargs)
    return step


@contextlib.contextmanager
def float_gemm_bitlinear():
    """BitLinear's fused training forward on F.linear, as before the int8 GEMM (process-wide while
    it lasts)."""
    saved = ops._INT8_GEMM_MIN_TOKENS_HERE
    ops._INT8_GEMM_MIN_TOKENS_HERE = None
    try:
        yield
    finally:
        ops._INT8_GEMM_MIN_TOKENS_HERE = saved


def _float_gemm_step(train_step):
    def step(*args, **kwargs):
        with float_gemm_bitlinear():
            return train_step(*args, **kwargs)
    return step


def _unfused_forward(self: BitLinear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(ops.fake_quant_activations(x), ops.fake_quant_weight(self.weight), self.bias)


def make_contender(name: str, preset: str, t: cfg.TrainConfig, tokens: np.ndarray):
    """make_trainer's trainer; for a name ending in UNFUSED, its BitLinears run the old forward
    (per instance: nothing global changes)."""
    base = name.removesuffix(UNFUSED).removesuffix(COMPOSED).removesuffix(FLOAT_GEMM)
    trainer = make_trainer(base, preset, t, tokens)
    if name.endswith(COMPOSED):
        trainer.train_step = _composed_step(trainer.train_step)
    if name.endswith(FLOAT_GEMM):
        trainer.train_step = _float_gemm_step(trainer.train_step)
    if name.endswith(UNFUSED):
        for m in trainer.model.modules():
            if isinstance(m, BitLinear):
                m.forward = types.MethodType(_unfused_forward, m)
    return trainer


def time_interleaved(trainers: dict, t: cfg.TrainConfig, steps: int, rounds: int) -> list[dict]:
    """tokens/s per contender over `rounds` interleaved windows of `steps` train steps."""
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    step = 2
    for _ in range(rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_step(step)
                step += 1
            rates[name].append(t.batch_size * t.seq_len * steps / (time.perf_counter() - start))
    return [{"contender": name, "median": float(np.median(r)), "min": min(r), "max": max(r), "unit": "tok/s",
             "rounds": rounds} for name, r in rates.items()]


class Intervals:
    """Sorted, non-overlapping time ranges (the outermost of the events given)."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        merged: list[tuple[int, int]] = []
        for a, b in sorted(ranges):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]

    def __contains__(self, t: int) -> bool:
        i = bisect.bisect_right(self.starts, t) - 1
        return i >= 0 and t <= self.ends[i]


def profile_contender(name: str, trainer, steps: int) -> dict:
    """Per-op calls and self CPU time per step, by phase: forward (and loss, clipping reads),
    backward (under an autograd engine node), optimizer (under Optimizer.step)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(2, 2 + steps):
            with record_function("## train_step"):
                trainer.train_step(step)
    events = prof.events()
    span = lambda pred: Intervals([(e.time_range.start, e.time_range.end) for e in events if pred(e.name)])  # noqa: E731
    backward = span(lambda n: n.startswith("autograd::engine::evaluate_function"))
    optimizer = span(lambda n: n.startswith("Optimizer.step") or n.startswith("Optimizer.zero_grad"))
    ops: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    step_us = sum(e.time_range.elapsed_us() for e in events if e.name == "## train_step") / steps
    for e in events:
        if e.name == "## train_step":
            continue
        t = e.time_range.start
        phase = "optimizer" if t in optimizer else "backward" if t in backward else "forward"
        row = ops[(e.name, phase)]
        row[0] += 1
        row[1] += e.self_cpu_time_total
    rows = [{"op": name, "phase": phase, "calls_per_step": n / steps, "self_ms_per_step": us / steps / 1e3}
            for (name, phase), (n, us) in ops.items()]
    rows.sort(key=lambda r: -r["self_ms_per_step"])
    per_phase: dict[str, float] = defaultdict(float)
    calls_phase: dict[str, float] = defaultdict(float)
    for r in rows:
        per_phase[r["phase"]] += r["self_ms_per_step"]
        calls_phase[r["phase"]] += r["calls_per_step"]
    return {"contender": name, "step_ms": step_us / 1e3, "self_ms_by_phase": dict(per_phase),
            "calls_by_phase": dict(calls_phase), "ops": rows}


def print_table(p: dict, top: int) -> None:
    print(f"== {p['contender']}: step {p['step_ms']:.1f} ms wall; self CPU ms by phase "
          + ", ".join(f"{k} {v:.1f} ({p['calls_by_phase'][k]:.0f} calls)" for k, v in p["self_ms_by_phase"].items()))
    total = sum(p["self_ms_by_phase"].values())
    print(f"{'op':44s} {'phase':9s} {'calls':>6s} {'self ms':>8s} {'share':>6s}")
    for r in p["ops"][:top]:
        print(f"{r['op'][:44]:44s} {r['phase']:9s} {r['calls_per_step']:6.0f} {r['self_ms_per_step']:8.2f} "
              f"{100 * r['self_ms_per_step'] / total:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--contenders", default="ttt_linear-ternary,attention-float,nanogpt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2, help="steps profiled (after one warm-up step)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--unfused-bitlinear", action="store_true",
                    help="also each ternary contender with the 3-node BitLinear forward")
    ap.add_argument("--composed-train-ops", action="store_true",
                    help="also each bitttt contender with RMSNorm, TTT conv, RoPE and SwiGLU's gate as the torch "
                         "compositions they were before csrc/train/ (instead of --unfused-bitlinear's twins)")
    ap.add_argument("--float-gemm-bitlinear", action="store_true",
                    help="also each ternary contender with BitLinear's forward on the float32 GEMM instead of "
                         "the int8 one (instead of --unfused-bitlinear's twins)")
    ap.add_argument("--ab-rounds", type=int, default=0, metavar="N",
                    help="time the contenders and their twins in N interleaved windows instead of profiling")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    names = args.contenders.split(",")
    unknown = set(names) - set(contender_names())
    if unknown:
        ap.error(f"unknown contenders {sorted(unknown)}; choose from {', '.join(contender_names())}")
    torch.set_num_threads(args.threads)
    t = cfg.TrainConfig(preset=args.preset, batch_size=args.batch_size, seq_len=args.seq_len, steps=10_000)
    tokens = np.random.default_rng(0).integers(0, 256, size=1 << 20, dtype=np.uint16)
    if args.composed_train_ops:
        names += [n + COMPOSED for n in names if n != "nanogpt"]
    elif args.float_gemm_bitlinear:
        names += [n + FLOAT_GEMM for n in names if n.endswith("-ternary")]
    elif args.unfused_bitlinear or args.ab_rounds:
        names += [n + UNFUSED for n in names if n.endswith("-ternary")]
    load_before = list(os.getloadavg())
    results = []
    if args.ab_rounds:
        trainers = {name: make_contender(name, args.preset, t, tokens) for name in names}
        for trainer in trainers.values():
            trainer.train_step(1)  # warm up
        results = time_interleaved(trainers, t, args.steps, args.ab_rounds)
        for r in results:
            print(f"{r['contender']:40s} thr {args.threads}  {r['median']:7.0f} [{r['min']:.0f}-{r['max']:.0f}] tok/s")
    else:
        for name in names:
            trainer = make_contender(name, args.preset, t, tokens)
            trainer.train_step(1)  # warm up
            p = profile_contender(name, trainer, args.steps)
            print_table(p, args.top)
            results.append(p)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "torch": torch.__version__, "threads": args.threads,
                       "preset": args.preset, "batch_size": args.batch_size, "seq_len": args.seq_len,
                       "load_before": load_before, "load_after": list(os.getloadavg()),
                       "timings" if args.ab_rounds else "profiles": results}, f, indent=1)


if __name__ == "__main__":
    main()
