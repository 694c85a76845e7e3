"""`bitttt export` (a packed inference model, design §5) and `bitttt eval` (loss, bits per byte,
perplexity of a model on text)."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch

from bitttt import checkpoint as ckpt_io
from bitttt import data as data_mod
from bitttt.errors import ConfigError, DataError

EXPORT_FORMAT = {"weights": "bt2", "version": 1}


def export(path: str, out: str) -> dict[str, Any]:
    """Writes the model at `path` (run, checkpoint or export) to `out`: ternary weights in BT2
    (uint8) + scales, everything else in its own dtype, config.json and tokenizer.json."""
    src = ckpt_io.resolve(path)
    if os.path.abspath(out) in (os.path.abspath(src), os.path.abspath(path)):
        raise ConfigError(f"--out {out} is the model being exported", hint="choose another folder")
    if os.path.exists(out) and not ckpt_io.is_checkpoint(out) and os.listdir(out):
        raise ConfigError(f"--out {out} exists and is not an export", hint="choose a new or empty folder")
    model, tokenizer, info = ckpt_io.load_model(src, "cpu", pack=True)
    sections = info["sections"]
    extra = {"format": EXPORT_FORMAT, **{k: v for k, v in sections.items() if k in ("training", "data")}}
    ckpt_io.write_folder(out, model, tokenizer, extra)
    size = os.path.getsize(os.path.join(out, ckpt_io.MODEL_FILE))
    from bitttt.nn.bitlinear import BitLinear

    n_float = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    n_ternary = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, BitLinear))
    fp16 = 2 * (n_float + n_ternary)  # the same model with every weight in float16 (scales aside)
    return {"source": src, "out": out, "bytes": size, "float16_bytes_estimate": fp16}


def eval_tokens(paths: list[str] | None, tokenizer, val_fraction: float, seq_len: int) -> tuple[np.ndarray, int]:
    """The tokens to evaluate and the bytes they stand for: all of --data, or the held-out
    split of the default corpus (the same split as training)."""
    ids: list[int] = []
    for doc in data_mod.documents(paths):
        piece = tokenizer.encode(doc.text) if doc.text is not None else tokenizer.encode_chat(doc.messages)
        if piece:
            ids += piece + [tokenizer.eos_id]
    tokens = np.asarray(ids, dtype=np.int64)
    if not paths:
        tokens = tokens[data_mod._val_mask(len(tokens), val_fraction, seq_len + 2)]
    if len(tokens) < seq_len + 2:
        raise DataError(f"{', '.join(paths) if paths else data_mod.DEFAULT_CORPUS}: only {len(tokens)} tokens",
                        hint=f"evaluate on at least {seq_len + 2} tokens of text, or lower --seq-len")
    return tokens, data_mod._count_bytes(tokens, tokenizer)


@torch.no_grad()
def evaluate(path: str, paths: list[str] | None = None, device: str = "cpu", pack: bool = True,
             seq_len: int | None = None, max_tokens: int = 65536, batch_size: int = 8) -> dict[str, Any]:
    model, tokenizer, info = ckpt_io.load_model(path, device, pack=pack if model_is_ternary(path) else None)
    training = info["sections"].get("training", {})
    seq_len = seq_len or int(training.get("seq_len", 256))
    tokens, _ = eval_tokens(paths, tokenizer, float(training.get("val_fraction", 0.1)), seq_len)
    starts = data_mod.eval_windows(tokens, seq_len, max_tokens)
    t0, total = time.time(), 0.0
    for i in range(0, len(starts), batch_size):
        x, y = data_mod.window_batch(tokens, starts[i:i + batch_size], seq_len, torch.device(device))
        total += model(x, labels=y).loss.item() * len(x)
    loss = total / len(starts)
    n_eval = len(starts) * seq_len
    eval_bytes = data_mod._count_bytes(np.concatenate([tokens[s + 1:s + seq_len + 1] for s in starts]), tokenizer)
    return {"model": info["path"], "loss": loss, "bits_per_byte": loss * n_eval / max(eval_bytes, 1) / math.log(2),
            "perplexity": math.exp(loss), "tokens": n_eval, "bytes": eval_bytes, "seconds": time.time() - t0,
            "packed": model.is_packed}


def model_is_ternary(path: str) -> bool:
    return ckpt_io.model_config_of(path).ternary
