"""The held-out measure, one definition for training's `eval` events and `bitttt eval`.

The held-out set of a run is the validation split of its training data (data.prepare), read
as non-overlapping windows of seq_len tokens evenly thinned to eval_tokens (data.eval_windows),
scored in batches of EVAL_BATCH windows. Bits per byte divide the summed loss by the UTF-8
bytes of exactly the tokens scored. Both report how many tokens they used.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
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
        if len(tokens) < seq_len + 1:  # no window fits (eval --seq-len 10**9 was an IndexError)
            raise DataError(f"only {len(tokens)} tokens to score, less than one window of {seq_len} + 1",
                            hint="lower --seq-len, or evaluate on more text (--data)")
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
    # Every rank runs as many batches as the largest share (the last may be empty), so a check
    # that is a collective (World.check_stop) is called the same number of times on each.
    size = world.size if world is not None else 1
    largest_share = (len(held.starts) + size - 1) // size
    n_batches = (largest_share + EVAL_BATCH - 1) // EVAL_BATCH
    try:
        for b in range(n_batches):
            if check:
                check()
            batch = starts[b * EVAL_BATCH:(b + 1) * EVAL_BATCH]
            if len(batch) == 0:
                continue
            x, y = data_mod.window_batch(held.tokens, batch, held.seq_len, device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                total += model(x, labels=y).loss.item() * len(x)
    finally:
        model.train(was_training)
    if world is not None:
        total = world.sum(total)
    loss = total / len(held.starts)
    return Score(loss, loss * held.n_tokens / max(held.n_bytes, 1) / LN2, held.n_tokens, held.n_bytes)


EVAL_TMP_PREFIX = "bitttt-eval-"  # temporary folders: bitttt-eval-PID-XXXX in the system's temp folder


def evaluate(path: str, paths: list[str] | None = None, device: str | torch.device = "cpu", pack: bool = True,
             seq_len: int | None = None, max_tokens: int | None = None) -> dict[str, Any]:
    """`bitttt eval`. Without paths: the held-out set of the model's own run (its training data's
    validation split, its seq_len and eval_tokens), the same measure as the run's last `eval`
    event. With paths: all of that text, up to max_tokens (default 65536).

    The tokens go to a temporary folder (memory stays bounded whatever the text's size), removed
    at the end, on an error, on Ctrl-C and on SIGTERM; one a killed eval left is removed by the
    next eval."""
    device = torch.device(device)
    ternary = ckpt_io.model_config_of(path).ternary
    model, tokenizer, info = ckpt_io.load_model(path, device, pack=pack if ternary else None)
    training = info["sections"].get("training", {})
    train_seq_len = int(training.get("seq_len", 256))
    seq_len = seq_len or train_seq_len
    t0 = time.time()
    remove_stale_tmp()
    with _terminate_unwinds(), tempfile.TemporaryDirectory(prefix=f"{EVAL_TMP_PREFIX}{os.getpid()}-") as tmp:
        if paths:
            tokens = _all_tokens(paths, tokenizer, seq_len, tmp)
            max_tokens = max_tokens or 65536
        else:
            tokens = _validation_split(training, tokenizer, train_seq_len, tmp)
            max_tokens = max_tokens or int(training.get("eval_tokens", 65536))
        held = HeldOut.build(tokens, seq_len, max_tokens, tokenizer)
        s = score(model, held, device)
        del held, tokens  # the memory maps, before their folder goes
    return {"model": info["path"], "loss": s.loss, "bits_per_byte": s.bits_per_byte,
            "perplexity": math.exp(min(s.loss, 700.0)), "tokens": s.tokens, "bytes": s.bytes,
            "held_out": not paths, "seconds": time.time() - t0, "packed": model.is_packed}


@contextlib.contextmanager
def _terminate_unwinds() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block, as Ctrl-C does, so `with` blocks clean up
    (the default action ends the process on the spot and leaves the temporary folder)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def remove_stale_tmp() -> None:
    """Removes the temporary folders of evals whose process is gone (killed with SIGKILL)."""
    import psutil

    root = tempfile.gettempdir()
    try:
        entries = os.listdir(root)
    except OSError:
        return
    for entry in entries:
        pid = entry[len(EVAL_TMP_PREFIX):].partition("-")[0]
        if entry.startswith(EVAL_TMP_PREFIX) and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def _validation_split(training: dict[str, Any], tokenizer: Tokenizer, train_seq_len: int, tmp: str) -> np.ndarray:
    """The run's validation tokens (a memory map in tmp), made by the same data.prepare as training made them."""
    split = data_mod.prepare(os.path.join(tmp, "data"), training.get("data"), tokenizer,
                             float(training.get("val_fraction", 0.1)), train_seq_len + 2)
    return split.val


def _all_tokens(paths: list[str], tokenizer: Tokenizer, seq_len: int, tmp: str) -> np.ndarray:
    """Every document's tokens and an end-of-text, written to tmp as they come (a memory map)."""
    path = os.path.join(tmp, "tokens.bin")
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    n, _, _ = data_mod._write_tokens(path, paths, tokenizer, dtype, None)
    if n < seq_len + 2:
        raise DataError(f"{', '.join(paths)}: only {n} tokens",
                        hint=f"evaluate on at least {seq_len + 2} tokens of text, or lower --seq-len")
    return np.memmap(path, dtype=dtype, mode="r")
