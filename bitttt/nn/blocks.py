"""The transformer-style pieces of BitTTTForCausalLM (docs/design.md §4): the ternary SwiGLU,
the causal-attention mixer and the residual Block, over bitttt.nn's shared RMSNorm (norm.py),
RoPE (rope.py) and attention core with its in-place KV cache (attention.py).

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

from bitttt import ops
from bitttt.nn import decode
from bitttt.nn.attention import append_kv, causal_attention
from bitttt.nn.bitlinear import BitLinear
from bitttt.nn.norm import RMSNorm, rms_norm_ternary
from bitttt.nn.rope import RoPE, apply_rope


def make_linear(in_features: int, out_features: int, ternary: bool, bias: bool = False) -> nn.Module:
    """BitLinear for the ternary model, nn.Linear for its full-precision twin."""
    return BitLinear(in_features, out_features, bias=bias) if ternary else nn.Linear(in_features, out_features, bias=bias)


# ---------------------------------------------------------------------------------------
# Feed-forward
# ---------------------------------------------------------------------------------------


class _SiluMul(torch.autograd.Function):
    """silu(h[..., :F]) * h[..., F:] for the fused gate/up output h [..., 2F]. Autograd through
    split, silu and mul ends in a cat of the two halves' gradients (a copy of [..., 2F]); this
    backward writes both halves of grad_h in place."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, hidden: int) -> torch.Tensor:
        gate, up = h.split(hidden, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(h, act)
        ctx.hidden = hidden
        return act * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, act = ctx.saved_tensors
        gate, up = h.split(ctx.hidden, dim=-1)
        grad_h = torch.empty_like(h)
        grad_gate, grad_up = grad_h.split(ctx.hidden, dim=-1)
        torch.mul(grad, act, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_h, None


def silu_mul(h: torch.Tensor, hidden: int) -> torch.Tensor:
    """silu(gate) * up for h = [gate, up] [..., 2·hidden]; one autograd node when training
    (float32 on the CPU: one C++ pass each way, ops.silu_mul)."""
    if torch.is_grad_enabled() and h.requires_grad:
        if ops.uses_train_kernel(h):
            return ops.silu_mul(h, hidden)
        return _SiluMul.apply(h, hidden)
    gate, up = h.split(hidden, dim=-1)
    return F.silu(gate) * up


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); gate and up are one fused [2F, C] projection."""

    def __init__(self, n_embd: int, hidden: int, ternary: bool) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up = make_linear(n_embd, 2 * hidden, ternary)
        self.down = make_linear(hidden, n_embd, ternary)

    def forward(self, x: torch.Tensor, norm: RMSNorm | None = None) -> torch.Tensor:
        """The FFN of norm(x) (norm None: of x); a packed gate_up takes the norm fused at decode."""
        if norm is None:
            h = self.gate_up(x)
        elif isinstance(self.gate_up, BitLinear) and self.gate_up.is_packed:
            h = rms_norm_ternary(x, norm, self.gate_up.packed, self.gate_up.w_scale, self.gate_up.bias)
        else:
            h = self.gate_up(norm(x))
        return self.down(silu_mul(h, self.hidden))  # [B, T, F] from h [B, T, 2F]


# ---------------------------------------------------------------------------------------
# Attention mixer (the baseline)
# ---------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Causal softmax attention with interleaved RoPE; state = (k, v) [B, H, T_past, D] for
    decoding (bitttt.nn.attention's cache: written in place, at most `max_positions`)."""

    def __init__(self, n_embd: int, n_head: int, ternary: bool, rope_theta: float = 10000.0,
                 max_positions: int | None = None) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be a multiple of n_head={n_head}")
        self.n_head, self.head_dim, self.max_positions = n_head, n_embd // n_head, max_positions
        self.qkv = make_linear(n_embd, 3 * n_embd, ternary)
        self.out = make_linear(n_embd, n_embd, ternary)
        self.rotary = RoPE(self.head_dim, rope_theta, convention="interleaved")

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None,
                pos: int = 0, use_cache: bool = False) -> tuple[torch.Tensor, tuple | None]:
        B, T, C = x.shape
        if state is not None and not isinstance(state, list) and decode.takes_fused_decode(x):
            return self._step_fused(x, state, pos, use_cache)
        h = self.qkv(x)  # [B, T, 3C]
        if torch.is_grad_enabled() and h.requires_grad and ops.uses_train_kernel(h) and not isinstance(state, list):
            # training: RoPE and the split into heads as one C++ pass each way (ops.rope_qkv),
            # where the path below costs two complex multiplies forward and four copies backward
            cos, sin = self.rotary.cos_sin(torch.arange(pos, pos + T, device=x.device), h.dtype)
            q, k, v = ops.rope_qkv(h, cos, sin, self.n_head)
            y, (k, v) = causal_attention(q, k, v, state, self.max_positions)
            return self.out(y.transpose(1, 2).reshape(B, T, C)), ((k, v) if use_cache else None)
        qkv = h.view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, T, D]
        if isinstance(state, list):  # a row batch (bitttt.model.decode_rows): row i at pos[i], its own cache
            positions = torch.tensor(pos, device=x.device).view(B, 1, 1)
            q, k = self.rotary(qkv[:2], positions).unbind(0)
            y, states = self._attend_rows(q, k, qkv[2], state)
            return self.out(y), states
        positions = torch.arange(pos, pos + T, device=x.device)
        # unbind, not slices: its backward stacks the three gradients in one copy, where
        # qkv[:2] and qkv[2] each zero-filled a [3, B, H, T, D] gradient and then summed them
        q, k, v = qkv.unbind(0)
        cos, sin = self.rotary.cos_sin(positions, q.dtype)
        q, k = (apply_rope(t, cos, sin, self.rotary.convention) for t in (q, k))  # one cos, sin for both
        y, (k, v) = causal_attention(q, k, v, state, self.max_positions)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.out(y), ((k, v) if use_cache else None)

    def _step_fused(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], pos: int,
                    use_cache: bool) -> tuple[torch.Tensor, tuple | None]:
        """forward() for one token of one sequence after a cache (bitttt.nn.decode): the same math
        in fewer ops. RoPE's rotation comes from a table of positions, the scores and the output
        are one batched matmul each over the heads, reading the KV buffer where it lies."""
        H, D = self.n_head, self.head_dim
        # this mixer's RoPE pairs dimensions 2i and 2i+1 ("interleaved", see __init__), so each pair
        # is one complex number and the rotation one complex product
        qkv = self.qkv(x).view(3, H, D // 2, 2)
        qk = torch.view_as_real(torch.view_as_complex(qkv[:2]) * self._rotation(pos, x.device)).view(2, 1, H, 1, D)
        k = append_kv(state[0], qk[1], self.max_positions)  # [1, H, T, D]
        v = append_kv(state[1], qkv[2].view(1, H, 1, D), self.max_positions)
        scores = torch.bmm(qk[0, 0, :, 0, None], k[0].transpose(1, 2)) * D ** -0.5  # [H, 1, T]
        y = torch.bmm(scores.softmax(dim=-1), v[0])  # [H, 1, D]
        return self.out(y.view(1, 1, H * D)), ((k, v) if use_cache else None)

    def _rotation(self, pos: int, device: torch.device) -> torch.Tensor:
        """cos + i sin of position pos [D/2] (complex64), from a table that grows by doubling (never
        past max_positions); the same values as RoPE.cos_sin of that one position."""
        table = self.__dict__.get("_rope_rotation")
        if table is None or table.shape[0] <= pos or table.device != device:
            n = max(2 * (pos + 1), 256)
            n = min(n, self.max_positions) if self.max_positions else n
            cos, sin = self.rotary.cos_sin(torch.arange(max(n, pos + 1), device=device), torch.float32)
            table = self.__dict__["_rope_rotation"] = torch.complex(cos, sin)
        return table[pos]

    def _attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
        """One new token per row, each row attending over its own past: q, k, v [B, H, 1, D],
        states[i] = (k, v) [1, H, T_i, D] or None -> y [B, 1, H*D], the rows' new states. Each
        row runs the single-sequence path (causal_attention), so a row's output is bit-equal to
        the same sequence decoded alone."""
        B, H, _, D = q.shape
        ys, new_states = [], []
        for i, state in enumerate(states):
            y, kv = causal_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], state, self.max_positions)
            ys.append(y)
            new_states.append(kv)
        return torch.cat(ys).transpose(1, 2).reshape(B, 1, H * D), new_states


# ---------------------------------------------------------------------------------------
# Residual block
# ---------------------------------------------------------------------------------------


class Block(nn.Module):
    """x + mixer(norm(x)), then x + SwiGLU(norm(x)) (pre-norm, design §4)."""

    def __init__(self, mixer: nn.Module, n_embd: int, hidden: int, ternary: bool, eps: float) -> None:
        super().__init__()
        self.norm1 = RMSNorm(n_embd, eps=eps)
        self.mixer = mixer
        self.norm2 = RMSNorm(n_embd, eps=eps)
        self.mlp = SwiGLU(n_embd, hidden, ternary)

    def forward(self, x: torch.Tensor, state=None, pos: int = 0, use_cache: bool = False):
        h, state = self.mixer(self.norm1(x), state=state, pos=pos, use_cache=use_cache)
        x = x + h
        return x + self.mlp(x, norm=self.norm2), state


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
