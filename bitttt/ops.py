"""bitttt's ops: the public Python API over torch.ops.bitttt.*.

The schemas live in csrc/module.cpp (loaded by bitttt._native); this file adds what torch
needs around them: fake kernels so torch.compile can trace the ops, autograd formulas, and
typed wrappers. The BT2 packing helpers are plain torch: they run once per weight.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from bitttt import _native  # noqa: F401  (loads _C and _C_cuda: registers torch.ops.bitttt.*)
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


# Mini-batch segments per checkpoint the forward saves for its backward: 1 keeps (W, c) at
# every mini-batch start; larger values save memory and recompute the states in between.
TTT_CKPT_EVERY = 4

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _ttt_num_checkpoints(T: int, b: int, pos: int, ckpt_every: int) -> int:
    """How many (W, c) checkpoints ttt_linear saves: one per ckpt_every segments (see csrc/ttt/ttt.h)."""
    if ckpt_every <= 0 or T == 0:
        return 0
    first = min(T, b - pos % b)
    n_seg = 1 + (T - first + b - 1) // b
    return (n_seg + ckpt_every - 1) // ckpt_every


def ttt_linear(q, k, v, lr, token_scale, W0, b0, ln_w, ln_b, state: TTTState | None = None,
               ckpt_every: int = TTT_CKPT_EVERY):
    """TTT-Linear over T tokens from state.pos (design §3), with the C++ op.

    Args:
        q, k, v: [B,H,T,D] float32/float64 (bfloat16/float16 run in float32 and come back cast).
        lr: [B,H,T] per-token inner learning rate. token_scale: [b], b the mini-batch size.
        W0: [H,D,D], b0: [H,D] initial fast weights (used when state is None).
        ln_w, ln_b: [H,D] inner LayerNorm. state: a TTTState, or None to start from W0, b0 at 0.
        ckpt_every: mini-batches per checkpoint kept for the backward (memory vs recompute).
    Returns:
        (out [B,H,T,D], TTTState after the tokens). Differentiable in every tensor input.
    Raises:
        RuntimeError naming the bad argument (shape, dtype, device).
    """
    out_dtype = q.dtype
    if q.dtype in _LOW_PRECISION:
        q, k, v, lr = q.float(), k.float(), v.float(), lr.float()
    if q.dim() != 4:
        raise RuntimeError(f"ttt_linear: q must be 4-D [B, H, T, D], got shape {tuple(q.shape)}")
    B, H, T, D = q.shape
    if state is None:
        W = W0.unsqueeze(0).expand(B, H, D, D)
        c = b0.unsqueeze(0).expand(B, H, D)
        state = TTTState(W, c, W.new_zeros(B, H, D, D), c.new_zeros(B, H, D), 0)
    # Contiguous here rather than in the kernel, so compiled graphs see the layouts the op uses.
    q, k, v, lr = q.contiguous(), k.contiguous(), v.contiguous(), lr.contiguous()
    tensors = (q, k, v, lr, token_scale, state.W, state.c, state.gW, state.gc, ln_w, ln_b)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    out, W, c, gW, gc, _, _ = torch.ops.bitttt.ttt_linear(
        q, k, v, lr, token_scale, state.W, state.c, state.gW, state.gc, int(state.pos), ln_w, ln_b,
        ckpt_every if needs_grad else 0)
    return out.to(out_dtype), TTTState(W, c, gW, gc, int(state.pos) + T)


def ttt_linear_decode_(q, k, v, lr, token_scale, state: TTTState, ln_w, ln_b):
    """One token for all heads, updating state.W/c/gW/gc in place (no autograd): generation.

    q, k, v: [B,H,D]; lr: [B,H]. Returns (out [B,H,D], the state with pos + 1); equal to
    ttt_linear over that one token.
    """
    out_dtype = q.dtype
    if q.dtype in _LOW_PRECISION:
        q, k, v, lr = q.float(), k.float(), v.float(), lr.float()
    out = torch.ops.bitttt.ttt_linear_decode_.default(q, k, v, lr, token_scale, state.W, state.c, state.gW,
                                                      state.gc, int(state.pos), ln_w, ln_b)
    if out.dtype != out_dtype:
        out = out.to(out_dtype)
    return out, TTTState(state.W, state.c, state.gW, state.gc, int(state.pos) + 1)


def _check_same_device(op, q, **tensors):
    for name, t in tensors.items():
        torch._check(t.device == q.device, lambda: f"{op}: {name} must be on q's device {q.device}, got {t.device}")


@torch.library.register_fake("bitttt::ttt_linear")
def _ttt_linear_fake(q, k, v, lr, token_scale, W, c, gW, gc, pos, ln_w, ln_b, ckpt_every=0):
    torch._check(q.dim() == 4, lambda: f"ttt_linear: q must be 4-D [B, H, T, D], got {q.dim()} dims")
    torch._check(q.dtype in (torch.float32, torch.float64), lambda: f"ttt_linear: q must be float32/64, got {q.dtype}")
    B, H, T, D = q.shape
    torch._check(W.shape == (B, H, D, D), lambda: "ttt_linear: W must be [B, H, D, D]")
    _check_same_device("ttt_linear", q, k=k, v=v, lr=lr, token_scale=token_scale, W=W, c=c, gW=gW, gc=gc,
                       ln_w=ln_w, ln_b=ln_b)
    n_ck = _ttt_num_checkpoints(T, token_scale.shape[0], pos, ckpt_every)
    return (q.new_empty(B, H, T, D), q.new_empty(B, H, D, D), q.new_empty(B, H, D), q.new_empty(B, H, D, D),
            q.new_empty(B, H, D), q.new_empty(B, H, n_ck, D, D), q.new_empty(B, H, n_ck, D))


@torch.library.register_fake("bitttt::ttt_linear_backward")
def _ttt_linear_backward_fake(grad_out, grad_W, grad_c, grad_gW, grad_gc, q, k, v, lr, token_scale, W, c, gW, gc,
                              pos, ln_w, ln_b, ckpt_W, ckpt_c, ckpt_every):
    B, H, T, D = q.shape
    # The kernel returns contiguous tensors whatever the inputs' strides: so must this.
    return (q.new_empty(B, H, T, D), q.new_empty(B, H, T, D), q.new_empty(B, H, T, D), q.new_empty(B, H, T),
            q.new_empty(token_scale.shape), q.new_empty(B, H, D, D), q.new_empty(B, H, D), q.new_empty(B, H, D, D),
            q.new_empty(B, H, D), q.new_empty(ln_w.shape), q.new_empty(ln_b.shape))


@torch.library.register_fake("bitttt::ttt_linear_decode_")
def _ttt_linear_decode_fake(q, k, v, lr, token_scale, W, c, gW, gc, pos, ln_w, ln_b):
    torch._check(q.dim() == 3, lambda: f"ttt_linear_decode_: q must be 3-D [B, H, D], got {q.dim()} dims")
    return q.new_empty(q.shape)


# The backward recomputes each checkpoint span from the (W, c) the forward saved (memory
# O(T/b·D²) per head instead of the O(T·D²) autograd would keep through the reference).
def _ttt_linear_setup_context(ctx, inputs, output):
    q, k, v, lr, token_scale, W, c, gW, gc, pos, ln_w, ln_b, ckpt_every = inputs
    ctx.save_for_backward(q, k, v, lr, token_scale, W, c, gW, gc, ln_w, ln_b, output[5], output[6])
    ctx.pos, ctx.ckpt_every = pos, ckpt_every


def _ttt_linear_backward(ctx, g_out, g_W, g_c, g_gW, g_gc, _g_ckpt_W, _g_ckpt_c):
    q, k, v, lr, token_scale, W, c, gW, gc, ln_w, ln_b, ckpt_W, ckpt_c = ctx.saved_tensors
    B, H, T, D = q.shape
    zeros = lambda g, *shape: q.new_zeros(shape) if g is None else g.contiguous()  # noqa: E731
    grads = torch.ops.bitttt.ttt_linear_backward(
        zeros(g_out, B, H, T, D), zeros(g_W, B, H, D, D), zeros(g_c, B, H, D), zeros(g_gW, B, H, D, D),
        zeros(g_gc, B, H, D), q, k, v, lr, token_scale, W, c, gW, gc, ctx.pos, ln_w, ln_b, ckpt_W, ckpt_c,
        ctx.ckpt_every)
    dq, dk, dv, dlr, dts, dW, dc, dgW, dgc, dln_w, dln_b = grads
    return dq, dk, dv, dlr, dts, dW, dc, dgW, dgc, None, dln_w, dln_b, None


torch.library.register_autograd("bitttt::ttt_linear", _ttt_linear_backward, setup_context=_ttt_linear_setup_context)
