"""bitttt.nn.blocks.Rotary: every pair (x[2i], x[2i+1]) turned by positions * inv_freq[i]."""

from __future__ import annotations

import pytest
import torch

from bitttt.nn.blocks import Rotary


def rotated(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """The rotation written out pair by pair, angles in float32 as the module takes them."""
    D = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    angles = positions.float()[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    out = torch.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rotary_matches_pairwise_rotation(dtype):
    torch.manual_seed(0)
    # [3, B, H, T, D] strided as Attention hands it over (a permuted view of the qkv output)
    x = torch.randn(2, 7, 3, 2, 16).permute(2, 0, 3, 1, 4).to(dtype)
    positions = torch.arange(5, 12)
    tol = {torch.bfloat16: 1e-2}.get(dtype, 1e-6)
    torch.testing.assert_close(Rotary(16)(x, positions), rotated(x, positions), rtol=tol, atol=tol)


def test_rotary_gradient_is_the_inverse_rotation():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    positions = torch.arange(9)
    (Rotary(8)(x, positions) * g).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    (rotated(x_ref, positions) * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
