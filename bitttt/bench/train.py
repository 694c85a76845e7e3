"""Training throughput: tokens/s of `bitttt train`'s training step against a plain float32
nanoGPT-style transformer of the same width and depth (bitttt/bench/nanogpt.py), issue 26.

A step is the trainer's own `Trainer.train_step` (lr schedule, forward, backward, loss and
grad-norm reads, grad clipping, AdamW, zero_grad), driven for every contender, the baseline
included, so they differ only in the model. Contenders (`--contenders`):
- `nanogpt`: the plain float32 transformer (learned positions, GELU MLP, SDPA, AdamW);
- `<mixer>-float` / `<mixer>-ternary`: `bitttt train --preset P --mixer <mixer>`, with
  `--no-ternary` (the float twin) or without (the default, ternary);
- any of these with `+compile`: its forward `torch.compile`d, as `bitttt train --compile`
  (the check step compiles it, outside the timing; `compile_s` records how long it took).
The harness (bitttt/bench/harness.py) checks each contender first (one step: a finite loss
near ln(vocab), weights that move), then interleaves them over rounds in rotating order; one
call is a window of `--steps` steps. One case per thread count. `--profile N` instead prints
torch.profiler's top N ops of one step per contender (where a step's time goes).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from types import SimpleNamespace
from typing import Any, TextIO

import numpy as np
import torch

from bitttt import config as cfg
from bitttt import distributed
from bitttt.bench import harness
from bitttt.bench.harness import BenchValidationError, Case, Contender
from bitttt.bench.nanogpt import BaselineConfig, NanoGPT
from bitttt.bench.train_flags import BASELINE, DEFAULT_CONTENDERS
from bitttt.model import BitTTTForCausalLM, preset_config
from bitttt.train import Trainer, make_optimizer

START_LOSS_TOL = 1.0  # a fresh model's loss is within this of ln(vocab): logits start near uniform


COMPILED = "+compile"  # a contender name's suffix: its forward torch.compile'd


def contender_names() -> list[str]:
    plain = [BASELINE] + [f"{m}-{k}" for m in cfg.MIXERS for k in ("float", "ternary")]
    return plain + [n + COMPILED for n in plain]


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


def make_trainer(name: str, preset: str, t: cfg.TrainConfig, tokens: np.ndarray) -> Trainer:
    """A Trainer holding only what train_step reads (no run directory, tokenizer or held-out set)."""
    torch.manual_seed(0)
    p = preset_config(preset)
    compiled = name.endswith(COMPILED)
    name = name.removesuffix(COMPILED)
    if name == BASELINE:
        model: torch.nn.Module = NanoGPT(BaselineConfig(vocab_size=p.vocab_size, block_size=t.seq_len,
                                                        n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head))
        forward: torch.nn.Module = _BaselineForward(model)
    else:
        mixer, kind = name.rsplit("-", 1)
        model = forward = BitTTTForCausalLM(preset_config(preset, mixer=mixer, ternary=kind == "ternary"))
    model.train()
    if compiled:
        forward = torch.compile(forward)
    trainer = Trainer.__new__(Trainer)
    trainer.t, trainer.lr_decay, trainer.device = t, None, torch.device("cpu")
    trainer.world = distributed.World()
    trainer.data = SimpleNamespace(train=tokens)
    trainer.model, trainer.forward = model, forward
    trainer.optimizer = make_optimizer(model, t, trainer.device)
    return trainer


def check_step(name: str, trainer: Trainer, vocab: int) -> float:
    """One step (step 1 000 000: past the warm-up, so the lr is not 0): its loss is finite and
    near ln(vocab), and some weight moved. Returns the loss."""
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss, grad_norm = trainer.train_step(10**6)
    moved = any(not torch.equal(a, p.detach()) for a, p in zip(before, trainer.model.parameters(), strict=True))
    if not (math.isfinite(loss) and abs(loss - math.log(vocab)) < START_LOSS_TOL and grad_norm > 0 and moved):
        raise BenchValidationError(f"bench train: {name}: first step's loss {loss:.3f} (expected ln({vocab}) = "
                                   f"{math.log(vocab):.3f} +- {START_LOSS_TOL}), gradient norm {grad_norm:.3g}, "
                                   f"weights {'moved' if moved else 'did not move'}")
    return loss


def make_contenders(names: list[str], preset: str, t: cfg.TrainConfig, steps: int) -> list[Contender]:
    tokens = np.random.default_rng(0).integers(0, 256, size=1 << 20, dtype=np.uint16)
    vocab = preset_config(preset).vocab_size
    out = []
    for name in names:
        trainer = make_trainer(name, preset, t, tokens)
        state = {"step": 0}

        def window(trainer: Trainer = trainer, state: dict[str, int] = state) -> None:
            for _ in range(steps):
                state["step"] += 1
                trainer.train_step(state["step"])

        extra: dict[str, Any] = {"n_params": sum(p.numel() for p in trainer.model.parameters())}
        out.append(Contender(name, window, check=lambda n=name, tr=trainer, e=extra: timed_check(n, tr, vocab, e),
                             extra=extra))
    return out


def timed_check(name: str, trainer: Trainer, vocab: int, extra: dict[str, Any]) -> float:
    """check_step; a compiled contender's extra gets the seconds it took (the compile, mostly)."""
    start = time.perf_counter()
    loss = check_step(name, trainer, vocab)
    if name.endswith(COMPILED):  # the first case's check compiles; the graph serves every thread count
        extra.setdefault("compile_s", round(time.perf_counter() - start, 2))
    return loss


def add_ratios(results: list[harness.Result]) -> None:
    """Each entry's median tokens/s over the baseline's at the same thread count."""
    base = {r.threads: r.median for r in results if r.contender == BASELINE}
    for r in results:
        if r.threads in base:
            r.extra["vs_nanogpt"] = r.median / base[r.threads]


def resolve(args: argparse.Namespace) -> tuple[list[str], cfg.TrainConfig, list[int]]:
    from bitttt.errors import ConfigError

    names = list(dict.fromkeys([BASELINE, *(args.contenders or DEFAULT_CONTENDERS)]))
    unknown = sorted(set(names) - set(contender_names()))
    if unknown:
        raise ConfigError(f"bench train: unknown contenders {unknown}",
                          hint="choose from " + ", ".join(contender_names()))
    batch, seq, threads = (2, 32, [1]) if args.quick else (args.batch_size, args.seq_len, args.threads)
    if args.quick:
        args.steps = 1
    t = cfg.TrainConfig(preset=args.preset, batch_size=batch, seq_len=seq, steps=10**7)
    return names, t, threads


def run(args: argparse.Namespace, out: TextIO | None = None) -> harness.Record | None:
    names, t, threads = resolve(args)
    contenders = make_contenders(names, args.preset, t, args.steps)
    if args.profile:
        profile(contenders, args.profile, out)
        return None
    print(f"bitttt bench train: {args.preset}, batch {t.batch_size} x {t.seq_len}, {args.steps} steps per window, "
          f">= {args.rounds} interleaved rounds; torch {torch.__version__}; wait policy "
          f"{harness.current_wait_policy()}", file=out, flush=True)
    settings = {"preset": args.preset, "batch_size": t.batch_size, "seq_len": t.seq_len, "steps": args.steps,
                "rounds": args.rounds, "threads": threads, "contenders": names, "quick": args.quick,
                "shared_machine": args.shared}
    record = harness.Record("train", settings)
    work = args.steps * t.batch_size * t.seq_len
    cases = [Case(f"{args.preset} b{t.batch_size}x{t.seq_len} thr{n}", contenders, threads=n, unit="tok/s",
                  work=work) for n in threads]
    results = harness.run_cases(cases, harness.Settings(rounds=args.rounds), out=out)
    add_ratios(results)
    for r in results:
        print(f"{r.case}: {r.contender:<20} {r.median:8.0f} tok/s [{r.min:.0f}-{r.max:.0f}]  "
              f"{r.extra['vs_nanogpt']:.2f}x nanogpt", file=out)
    record.finish(results)
    if args.json:
        record.write(args.json)
        print(f"wrote {args.json}", file=out)
    return record


def profile(contenders: list[Contender], top: int, out: Any) -> None:
    """The ops that take a step's time, by self CPU time, one table per contender."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for c in contenders:
        c.run()  # warm: first-call allocations, optimizer state
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            c.run()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        print(f"== {c.name}: {total / 1e3:.0f} ms self CPU in {sum(e.count for e in events)} op calls", file=out)
        print(events.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40), file=out)


def main(argv: list[str] | None = None) -> int:
    from bitttt.bench.train_flags import add_arguments

    run(add_arguments(argparse.ArgumentParser(prog="bitttt bench train", description=__doc__.splitlines()[0]))
        .parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
