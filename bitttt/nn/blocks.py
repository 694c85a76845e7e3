"""The transformer-style pieces of BitTTTForCausalLM (docs/design.md §4): RMSNorm, RoPE,
the ternary SwiGLU, the causal-attention mixer with its KV cache, and the residual Block.

Every mixer has the same call: `mixer(x, state=None, pos=0, use_cache=False) -> (y, state)`,
with x [B, T, C] at absolute positions pos..pos+T-1 and `state` whatever the mixer carries
between calls (a KV cache, a TTT state), None to start fresh. A prefill followed by any
number of one-token steps gives the same outputs as one call over the whole sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bitttt.nn.bitlinear import BitLinear


def make_linear(in_features: int, out_features: int, ternary: bool, bias: bool = False) -> nn.Module:
    """BitLinear for the ternary model, nn.Linear for its full-precision twin."""
    return BitLinear(in_features, out_features, bias=bias) if ternary else nn.Linear(in_features, out_features, bias=bias)


# ---------------------------------------------------------------------------------------
# Rotary position embedding
# ---------------------------------------------------------------------------------------


class Rotary(nn.Module):
    """RoPE (Su et al. 2021), rotate-half form, computed for the positions asked for."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # derived, not a weight

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [..., T, D], positions [T] (int) -> x rotated, same dtype: each pair (x[2i], x[2i+1])
        turned by the angle positions * inv_freq[i]. positions [B, 1, 1] rotates x [..., B, H, 1, D]
        row by row (a row batch, one token per row)."""
        angles = positions.float()[..., None] * self.inv_freq  # [T, D/2] ([B, 1, 1, D/2] for a row batch)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        if x.dtype in (torch.float32, torch.float64) and x.stride(-1) == 1:
            # The pair as a complex number times cos + i sin: one op forward and backward where
            # the real form takes a stack, four multiplies and their copies (training step).
            xc = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
            return torch.view_as_real(xc * torch.complex(cos, sin)).flatten(-2)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


# ---------------------------------------------------------------------------------------
# Feed-forward
# ---------------------------------------------------------------------------------------


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); gate and up are one fused [2F, C] projection."""

    def __init__(self, n_embd: int, hidden: int, ternary: bool) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up = make_linear(n_embd, 2 * hidden, ternary)
        self.down = make_linear(hidden, n_embd, ternary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)  # [B, T, F] each
        return self.down(F.silu(gate) * up)


# ---------------------------------------------------------------------------------------
# Attention mixer (the baseline)
# ---------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Causal softmax attention with RoPE; state = (k, v) [B, H, T_past, D] for decoding."""

    def __init__(self, n_embd: int, n_head: int, ternary: bool, rope_theta: float = 10000.0) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be a multiple of n_head={n_head}")
        self.n_head, self.head_dim = n_head, n_embd // n_head
        self.qkv = make_linear(n_embd, 3 * n_embd, ternary)
        self.out = make_linear(n_embd, n_embd, ternary)
        self.rotary = Rotary(self.head_dim, rope_theta)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None,
                pos: int = 0, use_cache: bool = False) -> tuple[torch.Tensor, tuple | None]:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, T, D]
        if isinstance(state, list):  # a row batch (bitttt.model.decode_rows): row i at pos[i], its own cache
            positions = torch.tensor(pos, device=x.device).view(B, 1, 1)
            q, k = self.rotary(qkv[:2], positions).unbind(0)
            y, states = self._attend_rows(q, k, qkv[2], state)
            return self.out(y), states
        positions = torch.arange(pos, pos + T, device=x.device)
        q, k = self.rotary(qkv[:2], positions).unbind(0)  # q and k in one rotation
        v = qkv[2]
        if state is not None:
            k, v = torch.cat((state[0], k), dim=2), torch.cat((state[1], v), dim=2)  # [B, H, T_past+T, D]
        past = k.shape[2] - T
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v)  # one new token sees everything before it
        else:  # a prefill after a cache: query i sees keys 0..past+i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.out(y), ((k, v) if use_cache else None)

    @staticmethod
    def _attend_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
        """One new token per row, each row attending over its own past: q, k, v [B, H, 1, D],
        states[i] = (k, v) [1, H, T_i, D] or None -> y [B, 1, H*D], the rows' new states."""
        B, H, _, D = q.shape
        ys, new_states = [], []
        for i, state in enumerate(states):
            ki, vi = k[i:i + 1], v[i:i + 1]
            if state is not None:
                ki, vi = torch.cat((state[0], ki), dim=2), torch.cat((state[1], vi), dim=2)
            ys.append(F.scaled_dot_product_attention(q[i:i + 1], ki, vi))
            new_states.append((ki, vi))
        return torch.cat(ys).transpose(1, 2).reshape(B, 1, H * D), new_states


# ---------------------------------------------------------------------------------------
# Residual block
# ---------------------------------------------------------------------------------------


class Block(nn.Module):
    """x + mixer(norm(x)), then x + SwiGLU(norm(x)) (pre-norm, design §4)."""

    def __init__(self, mixer: nn.Module, n_embd: int, hidden: int, ternary: bool, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(n_embd, eps=eps)
        self.mixer = mixer
        self.norm2 = nn.RMSNorm(n_embd, eps=eps)
        self.mlp = SwiGLU(n_embd, hidden, ternary)

    def forward(self, x: torch.Tensor, state=None, pos: int = 0, use_cache: bool = False):
        h, state = self.mixer(self.norm1(x), state=state, pos=pos, use_cache=use_cache)
        x = x + h
        return x + self.mlp(self.norm2(x)), state


def init_linear_(module: nn.Module, std: float) -> None:
    """Normal(0, std) weights, zero bias, for nn.Linear and (unpacked) BitLinear alike."""
    weight = getattr(module, "weight", None)
    if weight is not None:
        nn.init.normal_(weight, mean=0.0, std=std)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def residual_std(std: float, n_layer: int) -> float:
    """GPT-2's scaled init for projections that write into the residual stream."""
    return std / math.sqrt(2 * n_layer)
