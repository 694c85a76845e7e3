"""Helpers for the trainer tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
import os

from bitttt import cli

# 2 layers x 64 wide, 64-token windows: a step takes milliseconds on one core.
MICRO = ["--mixer", "ttt_linear", "--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--seq-len", "64",
         "--batch-size", "8", "--eval-tokens", "1024", "--sample-tokens", "16", "--log-every", "1",
         "--threads", "1", "--warmup", "10", "--log-format", "jsonl"]


def read_events(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "events.jsonl")) as f:
        return [json.loads(line) for line in f]


def train(run_dir, *extra: str) -> int:
    return cli.main(["train", *MICRO, "--run-dir", str(run_dir), *extra])


def flat_tensors(x) -> list:
    """Every tensor inside nested lists, tuples and dataclasses (a model cache), in order."""
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in flat_tensors(v)]
    if hasattr(x, "__dataclass_fields__"):
        return [t for f in x.__dataclass_fields__ for t in flat_tensors(getattr(x, f))]
    return []
