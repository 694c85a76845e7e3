"""Causal softmax attention over a KV cache, one home for bitttt's attention mixer and Hugging
Face BitNet's GQA attention (the projections and RoPE stay with each model).

The cache of one layer is a pair of plain tensors (k, v) [B, H_kv, T, D] (chat memory stores
them): a prefill keeps its k, v as they are; the first decode step moves them into a buffer
with room to grow, and each later token is written into that buffer in place (append_kv).

Context policy: an attention model has a limit on positions (HF: max_position_embeddings;
bitttt's own: ATTENTION_MAX_POSITIONS); a call that would pass it raises ContextFullError
(a ConfigError: exit 2, and chat keeps the session as it was before the turn). TTT mixers
carry a constant-size state and have no limit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitttt.errors import ConfigError

KV_MIN_CAPACITY = 256  # positions a KV buffer is first made with beyond what it holds


class ContextFullError(ConfigError):
    """A call would take an attention model past its position limit."""


def check_context(pos: int | list[int], T: int, limit: int | None) -> None:
    """Raises ContextFullError when positions pos..pos+T-1 do not fit under `limit` (None: no limit);
    a list of positions (a row batch, one per row) is checked at its furthest row."""
    if isinstance(pos, list):
        pos = max(pos, default=0)
    if limit is not None and pos + T > limit:
        raise ContextFullError(
            f"the context is full: {pos} positions used + {T} new > the model's limit of {limit}",
            hint="start a new conversation (chat: /reset) or use a shorter prompt")


def kv_room(past: torch.Tensor, t: int, limit: int | None = None) -> torch.Tensor:
    """The buffer [B, H_kv, capacity, D] that holds past [B, H_kv, T, D] in its first T positions
    and has room for t more (never past `limit` positions): past's own buffer when past is its
    written end (its `kv_filled` mark is T), else a new one with past copied in. A cache
    continued twice from the same point (a fork) so copies instead of overwriting the other
    branch's tokens. The caller writes positions T..T+t-1, then calls kv_filled(buffer, T + t)."""
    B, H, T, D = past.shape
    base = past._base
    if (base is not None and getattr(base, "kv_filled", -1) == T and base.shape[2] >= T + t
            and past.data_ptr() == base.data_ptr()):
        return base
    base = past.new_empty(B, H, _capacity(T + t, limit), D)
    base[:, :, :T] = past
    return base


def _capacity(n: int, limit: int | None) -> int:
    """Positions a new buffer for n gets: room to grow, never past the limit."""
    capacity = max(2 * n, n + KV_MIN_CAPACITY)
    return capacity if limit is None else max(min(capacity, limit), n)


def kv_filled(base: torch.Tensor, n: int) -> torch.Tensor:
    """Marks a kv_room buffer as written up to n positions; returns the cache view [B, H_kv, n, D]."""
    base.kv_filled = n
    return base[:, :, :n]


def append_kv(past: torch.Tensor | None, new: torch.Tensor, limit: int | None = None) -> torch.Tensor:
    """past [B, H_kv, T, D] followed by new [B, H_kv, t, D], as a view of a buffer with room to
    grow (kv_room): a decode step writes its token in place instead of copying the whole cache
    (torch.cat copied 10 MB per 2B4T token at T = 136)."""
    T, t = 0 if past is None else past.shape[2], new.shape[2]
    if past is None:
        B, H, _, D = new.shape
        base = new.new_empty(B, H, _capacity(t, limit), D)
    else:
        base = kv_room(past.to(new.dtype), t, limit)
    base[:, :, T:T + t] = new
    return kv_filled(base, T + t)


def one_token_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for one query per head, the decode step: q [B, H, 1, D], k, v
    [B, H_kv, T, D] -> [B, H, 1, D]. The heads sharing a KV head become that head's G = H / H_kv
    query rows, so it is two small matmuls, in float32: torch's CPU SDPA (a flash kernel with
    its blocking and thread start) cost ~0.65 ms per call at 2B4T's shapes, 30 calls per
    decoded token, and its bfloat16 matmuls on a CPU without native bf16 2-4x the float32 ones
    with the cache's conversion included (0.55 vs 2.1 ms at T = 600)."""
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    qg = q.reshape(B, Hkv, H // Hkv, D).float()  # head h = kv_head * G + g, as enable_gqa's repeat_interleave
    scores = torch.matmul(qg, k.float().transpose(-1, -2)) * D ** -0.5  # [B, Hkv, G, T]
    y = torch.matmul(scores.softmax(dim=-1), v.float())  # [B, Hkv, G, D]
    return y.to(q.dtype).reshape(B, H, 1, D)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     state: tuple[torch.Tensor, torch.Tensor] | None = None, limit: int | None = None
                     ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """q [B, H, T, D] and the new k, v [B, H_kv, T, D] (RoPE applied), after the cached (k, v)
    of `state` (None: none) -> (y [B, H, T, D], the cache with the new tokens). Query i sees
    every cached key and the new keys up to its own."""
    T = q.shape[2]
    if state is not None:
        k, v = append_kv(state[0], k, limit), append_kv(state[1], v, limit)
    past = k.shape[2] - T
    gqa = k.shape[1] != q.shape[1]
    if past == 0:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    elif T == 1:
        y = one_token_attention(q, k, v)
    else:  # a prefill after a cache: query i sees keys 0..past+i
        mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return y, (k, v)
