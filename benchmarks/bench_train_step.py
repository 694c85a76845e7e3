"""Training throughput: tokens/s of full training steps of bitttt models against a plain fp32
nanoGPT-style transformer of the same width and depth (bitttt/bench/nanogpt.py).

    flock /work/bench.lock python benchmarks/bench_train_step.py [--preset tiny] [--threads 2]
        [--batch-size 16] [--seq-len 128] [--rounds 3] [--steps 2] [--contenders baseline,attn_fp32,...]
        [--json PATH]

A step is the trainer's own `Trainer.train_step` (lr schedule, forward, backward, loss and
grad-norm reads, grad clipping, AdamW, zero_grad), driven for every contender, the baseline
included, so they differ only in the model. Timing is interleaved in one process: each round
times a window of `--steps` steps of every contender, in an order that alternates between
rounds; the table shows the median window and the ratio to the baseline's median. Threads and
OMP_WAIT_POLICY are set as `bitttt train` sets them (PASSIVE unless the environment says).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bitttt/cli.py, before torch loads

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bitttt import config as cfg  # noqa: E402
from bitttt.bench.nanogpt import BaselineConfig, NanoGPT  # noqa: E402
from bitttt import distributed  # noqa: E402
from bitttt.model import BitTTTForCausalLM, preset_config  # noqa: E402
from bitttt.train import Trainer, make_optimizer  # noqa: E402

# name -> (mixer, ternary); "baseline" is the nanoGPT model
CONTENDERS = {
    "baseline": None,
    "attn_fp32": ("attention", False),
    "attn_ternary": ("attention", True),
    "ttt_linear": ("ttt_linear", True),  # the default tiny
    "ttt_mlp": ("ttt_mlp", True),
}


class _LossOutput:
    def __init__(self, loss: torch.Tensor) -> None:
        self.loss = loss


class _BaselineForward(torch.nn.Module):
    """The baseline behind the trainer's call `forward(x, labels=y).loss`."""

    def __init__(self, model: NanoGPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> _LossOutput:
        return _LossOutput(self.model(x, labels))


@dataclass
class Contender:
    name: str
    n_params: int
    trainer: Trainer
    step: int = 0
    windows: list[float] = None  # seconds per window

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step += 1
            self.trainer.train_step(self.step)
        return time.perf_counter() - t0


def make_contender(name: str, preset: str, t: cfg.TrainConfig, tokens: np.ndarray) -> Contender:
    torch.manual_seed(0)
    if CONTENDERS[name] is None:
        p = preset_config(preset)
        model = NanoGPT(BaselineConfig(vocab_size=p.vocab_size, block_size=t.seq_len, n_layer=p.n_layer,
                                       n_embd=p.n_embd, n_head=p.n_head))
        forward = _BaselineForward(model)
    else:
        mixer, ternary = CONTENDERS[name]
        model = BitTTTForCausalLM(preset_config(preset, mixer=mixer, ternary=ternary))
        forward = model
    model.train()
    device = torch.device("cpu")
    # Trainer.train_step reads only these attributes; the rest of start_up (tokenizer, data
    # files, held-out set) is not part of a step.
    trainer = Trainer.__new__(Trainer)
    trainer.t, trainer.lr_decay, trainer.device = t, None, device
    trainer.world = distributed.World()
    trainer.data = SimpleNamespace(train=tokens)
    trainer.model, trainer.forward = model, forward
    trainer.optimizer = make_optimizer(model, t, device)
    return Contender(name, sum(p.numel() for p in model.parameters()), trainer, windows=[])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="windows per contender (median taken)")
    p.add_argument("--steps", type=int, default=2, help="steps per window")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead of timing: torch.profiler over one step of each contender, top N ops")
    args = p.parse_args()
    names = args.contenders.split(",")
    if "baseline" not in names:
        names.insert(0, "baseline")
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        p.error(f"unknown contenders {sorted(unknown)}; choose from {', '.join(CONTENDERS)}")
    torch.set_num_threads(args.threads)
    t = cfg.TrainConfig(preset=args.preset, batch_size=args.batch_size, seq_len=args.seq_len, steps=10_000)
    tokens = np.random.default_rng(0).integers(0, 256, size=1 << 20, dtype=np.uint16)
    contenders = [make_contender(n, args.preset, t, tokens) for n in names]
    for c in contenders:
        c.run(1)  # warm up: first-call allocations, optimizer state
    if args.profile:
        return profile(contenders, args.profile)
    for r in range(args.rounds):
        for c in contenders if r % 2 == 0 else contenders[::-1]:
            c.windows.append(c.run(args.steps))
    tok_per_window = args.steps * args.batch_size * args.seq_len
    rate = {c.name: tok_per_window / statistics.median(c.windows) for c in contenders}
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else []
    print(f"torch {torch.__version__} | threads {args.threads} | OMP_WAIT_POLICY {os.environ['OMP_WAIT_POLICY']} | "
          f"{args.preset}, batch {args.batch_size} x {args.seq_len} | {args.rounds} windows x {args.steps} steps | "
          f"load {' '.join(load)}")
    print(f"{'contender':14s} {'params':>8s} {'tokens/s':>9s} {'x baseline':>10s}  windows (s)")
    rows = []
    for c in contenders:
        ratio = rate[c.name] / rate["baseline"]
        print(f"{c.name:14s} {c.n_params / 1e6:7.2f}M {rate[c.name]:9.0f} {ratio:10.2f}  "
              + " ".join(f"{w:.2f}" for w in c.windows))
        rows.append({"contender": c.name, "n_params": c.n_params, "tokens_per_s": rate[c.name],
                     "ratio_to_baseline": ratio, "windows_s": c.windows})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "preset": args.preset,
                       "batch_size": args.batch_size, "seq_len": args.seq_len, "loadavg": load,
                       "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "rows": rows}, f, indent=2)


def profile(contenders: list[Contender], top: int) -> None:
    """The ops that take a step's time, by self CPU time, one table per contender."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for c in contenders:
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            c.run(1)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        calls = sum(e.count for e in events)
        print(f"== {c.name}: {total / 1e3:.0f} ms self CPU in {calls} op calls")
        print(events.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40))


if __name__ == "__main__":
    main()
