"""The held-out measure, one definition for training's `eval` events and `bitttt eval`.

The held-out set of a run is the validation split of its training data (data.prepare), read
as non-overlapping windows of seq_len tokens evenly thinned to eval_tokens (data.eval_windows),
scored in batches of EVAL_BATCH windows. Bits per byte divide the summed loss by the UTF-8
bytes of exactly the tokens scored. Both report how many tokens they used.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bitttt import checkpoint as ckpt_io
from bitttt import data as data_mod
from bitttt.errors import DataError
from bitttt.tokenizer import Tokenizer

EVAL_BATCH = 16  # windows per forward: fixed, so training and `bitttt eval` sum in the same order
LN2 = math.log(2)


@dataclass
class HeldOut:
    """Windows over a token array, and the bytes their target tokens stand for."""

    tokens: np.ndarray
    starts: np.ndarray
    seq_len: int
    n_bytes: int

    @classmethod
    def build(cls, tokens: np.ndarray, seq_len: int, max_tokens: int, tokenizer: Tokenizer) -> HeldOut:
        starts = data_mod.eval_windows(tokens, seq_len, max_tokens)
        targets = np.concatenate([np.asarray(tokens[s + 1:s + seq_len + 1]) for s in starts])
        return cls(tokens, starts, seq_len, data_mod._count_bytes(targets, tokenizer))

    @property
    def n_tokens(self) -> int:
        return len(self.starts) * self.seq_len


@dataclass
class Score:
    loss: float  # mean cross entropy per token, nats
    bits_per_byte: float
    tokens: int
    bytes: int


@torch.no_grad()
def score(model: torch.nn.Module, held: HeldOut, device: torch.device, world: Any = None,
          check: Callable[[], None] | None = None) -> Score:
    """The model's loss on the held-out windows (eval mode; the mode it had is restored). Under
    data parallel (`world`, a distributed.World) each rank scores its share and the sums are added.
    check (if given) is called between batches; what it raises (a stop) ends the scoring."""
    was_training = model.training
    model.eval()
    total = 0.0
    starts = world.eval_share(held.starts) if world is not None else held.starts
    try:
        for i in range(0, len(starts), EVAL_BATCH):
            if check:
                check()
            x, y = data_mod.window_batch(held.tokens, starts[i:i + EVAL_BATCH], held.seq_len, device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                total += model(x, labels=y).loss.item() * len(x)
    finally:
        model.train(was_training)
    if world is not None:
        total = world.sum(total)
    loss = total / len(held.starts)
    return Score(loss, loss * held.n_tokens / max(held.n_bytes, 1) / LN2, held.n_tokens, held.n_bytes)


def evaluate(path: str, paths: list[str] | None = None, device: str | torch.device = "cpu", pack: bool = True,
             seq_len: int | None = None, max_tokens: int | None = None) -> dict[str, Any]:
    """`bitttt eval`. Without paths: the held-out set of the model's own run (its training data's
    validation split, its seq_len and eval_tokens), the same measure as the run's last `eval`
    event. With paths: all of that text, up to max_tokens (default 65536)."""
    device = torch.device(device)
    ternary = ckpt_io.model_config_of(path).ternary
    model, tokenizer, info = ckpt_io.load_model(path, device, pack=pack if ternary else None)
    training = info["sections"].get("training", {})
    train_seq_len = int(training.get("seq_len", 256))
    seq_len = seq_len or train_seq_len
    t0 = time.time()
    if paths:
        tokens = _all_tokens(paths, tokenizer, seq_len)
        max_tokens = max_tokens or 65536
    else:
        tokens = _validation_split(training, tokenizer, train_seq_len)
        max_tokens = max_tokens or int(training.get("eval_tokens", 65536))
    held = HeldOut.build(tokens, seq_len, max_tokens, tokenizer)
    s = score(model, held, device)
    return {"model": info["path"], "loss": s.loss, "bits_per_byte": s.bits_per_byte,
            "perplexity": math.exp(min(s.loss, 700.0)), "tokens": s.tokens, "bytes": s.bytes,
            "held_out": not paths, "seconds": time.time() - t0, "packed": model.is_packed}


def _validation_split(training: dict[str, Any], tokenizer: Tokenizer, train_seq_len: int) -> np.ndarray:
    """The run's validation tokens, made by the same data.prepare as training made them."""
    with tempfile.TemporaryDirectory(prefix="bitttt-eval-") as tmp:
        split = data_mod.prepare(os.path.join(tmp, "data"), training.get("data"), tokenizer,
                                 float(training.get("val_fraction", 0.1)), train_seq_len + 2)
        return np.array(split.val, dtype=np.int64)  # a copy: the memory map goes with the folder


def _all_tokens(paths: list[str], tokenizer: Tokenizer, seq_len: int) -> np.ndarray:
    ids: list[int] = []
    for doc in data_mod.documents(paths):
        piece = tokenizer.encode(doc.text) if doc.text is not None else tokenizer.encode_chat(doc.messages)
        if piece:
            ids += piece + [tokenizer.eos_id]
    if len(ids) < seq_len + 2:
        raise DataError(f"{', '.join(paths)}: only {len(ids)} tokens",
                        hint=f"evaluate on at least {seq_len + 2} tokens of text, or lower --seq-len")
    return np.asarray(ids, dtype=np.int64)
