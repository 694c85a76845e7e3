"""Rotary position embedding (Su et al. 2021), one home for both pair conventions.

- "half" (rotate-half, Hugging Face's and the TTT layers'): dimension i pairs with i + D/2.
- "interleaved" (bitttt's attention mixer): dimension 2i pairs with 2i + 1.

Both turn pair i by the angle position * theta^(-2i/D); angles are computed in float32 and
cos/sin cast to the activations' dtype, as transformers does.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Convention = Literal["half", "interleaved"]
CONVENTIONS = ("half", "interleaved")


def inv_freq(head_dim: int, theta: float, device: torch.device | str | None = None) -> torch.Tensor:
    """theta^(-2i/D) for i < D/2, float32 [D/2]."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype,
                 convention: Convention = "half") -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin for integer positions [T]: [T, D] for "half" (the angles repeated), [T, D/2] for
    "interleaved" (one angle per pair). Positions of any shape [...] give [..., D] (or [..., D/2]):
    batched decode passes one position per row."""
    angles = positions.float()[..., None] * inv_freq(head_dim, theta, positions.device)  # [..., D/2]
    if convention == "half":
        angles = torch.cat((angles, angles), dim=-1)  # [T, D]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, convention: Convention = "half") -> torch.Tensor:
    """x [..., T, D] rotated by rope_cos_sin's cos, sin of the same convention; same dtype."""
    if convention == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin
    if x.dtype in (torch.float32, torch.float64) and x.stride(-1) == 1:
        # The pair as a complex number times cos + i sin: one op forward and backward where
        # the real form takes a stack, four multiplies and their copies (training step). Under
        # torch.compile too: Inductor runs the complex ops eagerly, so cos and sin stay computed
        # once per position, where it fuses the real form into kernels that recompute them for
        # every element of q and k (the float twin's compiled step measured ~10% slower, issue 26).
        xc = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
        return torch.view_as_real(xc * torch.complex(cos, sin)).flatten(-2)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class RoPE(nn.Module):
    """RoPE of one head size, base theta and pair convention, for the positions asked for."""

    def __init__(self, head_dim: int, theta: float = 10000.0, convention: Convention = "half") -> None:
        super().__init__()
        if convention not in CONVENTIONS:
            raise ValueError(f"RoPE convention must be one of {CONVENTIONS}, got {convention!r}")
        if head_dim % 2 or head_dim <= 0:
            raise ValueError(f"RoPE head_dim must be even and positive, got {head_dim}")
        self.head_dim, self.theta, self.convention = head_dim, float(theta), convention

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(positions, self.head_dim, self.theta, dtype, self.convention)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [..., T, D], positions [T] (int) -> x rotated, same dtype."""
        cos, sin = self.cos_sin(positions, x.dtype)
        return apply_rope(x, cos, sin, self.convention)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}, convention={self.convention}"
