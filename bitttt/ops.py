"""bitttt's ops: the public Python API over torch.ops.bitttt.*.

The schemas live in csrc/module.cpp (loaded with bitttt._C); this file adds what torch
needs around them: fake kernels so torch.compile can trace the ops, autograd formulas, and
typed wrappers. The BT2 packing helpers are plain torch: they run once per weight.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

try:
    from bitttt import _C  # noqa: F401  (registers torch.ops.bitttt.*)
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "bitttt's native extension bitttt._C could not be loaded: "
        f"{e}. It is built against the torch you install with: "
        "pip install --no-build-isolation . (torch >= 2.10 must be installed first)"
    ) from e

from bitttt import reference

__all__ = [
    "BT2_PAD_K",
    "pack_ternary",
    "unpack_ternary",
    "quantize_weight",
    "ternary_linear",
    "ternary_matmul_int8",
    "TTTState",
    "ttt_linear",
    "ttt_linear_decode_",
]

# ---------------------------------------------------------------------------------------
# BT2 packing (docs/design.md §2)
# ---------------------------------------------------------------------------------------

BT2_RUN_K = 128  # weights per 32-byte run
BT2_PAD_K = 256  # K is padded to a multiple of this


def bt2_padded_k(K: int) -> int:
    """K rounded up to the BT2 padding (a multiple of 256)."""
    return (K + BT2_PAD_K - 1) // BT2_PAD_K * BT2_PAD_K


def pack_ternary(q: torch.Tensor) -> torch.Tensor:
    """Packs ternary weights q int8 [N, K] (values -1, 0, 1) into BT2 uint8 [N, Kp/4].

    Raises ValueError for another dtype, shape or a value outside {-1, 0, 1}.
    """
    if q.dtype != torch.int8 or q.dim() != 2:
        raise ValueError(f"pack_ternary: q must be int8 [N, K], got {q.dtype} {tuple(q.shape)}")
    if q.numel() and (q.min() < -1 or q.max() > 1):
        raise ValueError("pack_ternary: q must hold only -1, 0, 1; quantize with quantize_weight first")
    N, K = q.shape
    Kp = bt2_padded_k(K)
    codes = torch.ones(N, Kp, dtype=torch.uint8, device=q.device)  # padding: code 1, weight 0
    codes[:, :K] = (q + 1).to(torch.uint8)
    # k = run*128 + s*32 + m  ->  byte m of the run, bits 2s..2s+1
    codes = codes.view(N, Kp // BT2_RUN_K, 4, 32)
    packed = codes[:, :, 0] | (codes[:, :, 1] << 2) | (codes[:, :, 2] << 4) | (codes[:, :, 3] << 6)
    return packed.reshape(N, Kp // 4).contiguous()


def unpack_ternary(packed: torch.Tensor, K: int) -> torch.Tensor:
    """Inverse of pack_ternary: BT2 uint8 [N, Kp/4] -> int8 [N, K]."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"unpack_ternary: packed must be uint8 [N, Kp/4], got {packed.dtype} {tuple(packed.shape)}")
    N, Kp = packed.shape[0], packed.shape[1] * 4
    if Kp != bt2_padded_k(K):
        raise ValueError(f"unpack_ternary: packed rows hold Kp={Kp} weights, K={K} needs {bt2_padded_k(K)}")
    runs = packed.view(N, Kp // BT2_RUN_K, 1, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device).view(1, 1, 4, 1)
    codes = (runs >> shifts) & 3  # [N, runs, 4, 32]
    return (codes.reshape(N, Kp)[:, :K].to(torch.int8) - 1).contiguous()


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary-quantizes and packs a float weight [N, K]: returns (packed uint8, w_scale float32 [N])."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"quantize_weight: w must be a float [N, K] matrix, got {w.dtype} {tuple(w.shape)}")
    q, w_scale = reference.quantize_weight_ternary(w)
    return pack_ternary(q), w_scale


# ---------------------------------------------------------------------------------------
# ternary_linear
# ---------------------------------------------------------------------------------------


def ternary_linear(
    x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = (quant(x) @ q.T) * w_scale / s_x (+ bias), with q the BT2-packed ternary weights.

    Args:
        x: float32 or bfloat16 [..., K], any device the op is built for.
        packed: uint8 [N, Kp/4], BT2 (from pack_ternary / quantize_weight), contiguous.
        w_scale: float32 [N].
        bias: optional [N].
    Returns:
        [..., N] in x's dtype. A token with NaN/inf in x gives a row of NaN.
    Raises:
        RuntimeError naming the bad argument (dtype, K that does not fit packed, ...).
    """
    return torch.ops.bitttt.ternary_linear(x, packed, w_scale, bias)


def ternary_matmul_int8(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """Exact int32 [M, N] = x @ q.T for int8 x [M, K]: the integer core of ternary_linear."""
    return torch.ops.bitttt.ternary_matmul_int8(x, packed)


def _check_packed_fits(packed: torch.Tensor, K: int) -> None:
    torch._check(packed.dim() == 2, lambda: "packed must be 2-D [N, Kp/4]")
    torch._check(packed.dtype == torch.uint8, lambda: f"packed must be uint8, got {packed.dtype}")
    torch._check(packed.shape[1] * 4 == bt2_padded_k(K), lambda: f"x.shape[-1]={K} does not fit packed")


@torch.library.register_fake("bitttt::ternary_linear")
def _ternary_linear_fake(x, packed, w_scale, bias=None):
    torch._check(x.dtype in (torch.float32, torch.bfloat16), lambda: f"x must be float32/bfloat16, got {x.dtype}")
    _check_packed_fits(packed, x.shape[-1])
    torch._check(w_scale.shape == (packed.shape[0],), lambda: "w_scale must be [N]")
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


@torch.library.register_fake("bitttt::ternary_matmul_int8")
def _ternary_matmul_int8_fake(x, packed):
    torch._check(x.dtype == torch.int8 and x.dim() == 2, lambda: "x must be int8 [M, K]")
    _check_packed_fits(packed, x.shape[1])
    return x.new_empty((x.shape[0], packed.shape[0]), dtype=torch.int32)


# Gradient for x (and bias) only: packed weights are frozen. The activation quantization
# is treated as identity (straight-through), as in BitLinear's fake-quant training.
def _ternary_linear_setup_context(ctx, inputs, output):
    x, packed, w_scale, bias = inputs
    ctx.save_for_backward(packed, w_scale)
    ctx.K = x.shape[-1]
    ctx.has_bias = bias is not None


def _ternary_linear_backward(ctx, grad_out):
    packed, w_scale = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = unpack_ternary(packed, ctx.K).to(grad_out.dtype) * w_scale.to(grad_out.dtype).unsqueeze(1)
        grad_x = grad_out @ w
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
    return grad_x, None, None, grad_bias


torch.library.register_autograd(
    "bitttt::ternary_linear", _ternary_linear_backward, setup_context=_ternary_linear_setup_context
)


# ---------------------------------------------------------------------------------------
# TTT-Linear (docs/design.md §3)
# ---------------------------------------------------------------------------------------


class TTTState(NamedTuple):
    """The carried TTT-Linear state (design §3).

    W, c: fast weights at the start of the current mini-batch, float32/64 [B,H,D,D], [B,H,D];
    gW, gc: lr-weighted inner gradients summed inside it (zero on a boundary), same shapes;
    pos: absolute position of the next token (mini-batches are aligned to pos // b).
    """

    W: torch.Tensor
    c: torch.Tensor
    gW: torch.Tensor
    gc: torch.Tensor
    pos: int
