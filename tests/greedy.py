"""Greedy decoding of a bitttt model, step by step through model.forward: the loop the decode
tests compare two paths with (each path picks its own tokens)."""

from __future__ import annotations

import torch


def prefill(model, ids: torch.Tensor):
    """(the greedy next token [1, 1], the cache) after feeding ids [1, T]."""
    with torch.no_grad():
        out = model(ids, use_cache=True)
    return out.logits[:, -1:].argmax(-1), out.cache


def decode_from(model, token, cache, steps: int) -> tuple[list[int], torch.Tensor]:
    """Feeds token, then `steps - 1` greedy tokens after it: (the tokens chosen, the logits [1, steps, V])."""
    tokens, logits = [], []
    with torch.no_grad():
        for _ in range(steps):
            out = model(token, cache=cache)
            logits.append(out.logits)
            token, cache = out.logits[:, -1:].argmax(-1), out.cache
            tokens.append(int(token))
    return tokens, torch.cat(logits, 1)


def decode_greedy(model, ids: torch.Tensor, steps: int) -> tuple[list[int], torch.Tensor]:
    """Prefill ids, then `steps` greedy decode steps."""
    return decode_from(model, *prefill(model, ids), steps)
