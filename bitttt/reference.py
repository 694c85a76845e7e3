"""Pure-torch reference implementations of bitttt's ops: the oracles for tests and the
baselines for benchmarks. Readable first; nothing here is meant to be fast."""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------
# Ternary linear (docs/design.md §2)
# ---------------------------------------------------------------------------------------

ABSMAX_FLOOR = 1e-5  # s_x = 127 / max(absmax, 1e-5): an all-zero token quantizes to zeros


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization of x [..., K].

    Returns (x_q int8 [..., K], s_x float32 [...]), with x ≈ x_q / s_x. A token holding NaN
    or ±inf gets s_x = NaN and x_q = 0, so its outputs are NaN (the kernels do the same).
    """
    xf = x.float()
    finite = torch.isfinite(xf).all(dim=-1)
    xf = torch.where(finite.unsqueeze(-1), xf, torch.zeros_like(xf))
    absmax = xf.abs().amax(dim=-1) if xf.shape[-1] else xf.new_zeros(xf.shape[:-1])
    # A true float32 division, as the kernels do: `127.0 / t` would compute 127 * (1 / t),
    # one rounding off, and flip x_q at exact .5 ties.
    s_x = torch.full_like(absmax, 127.0) / absmax.clamp(min=ABSMAX_FLOOR)
    x_q = torch.round(xf * s_x.unsqueeze(-1)).clamp(-128, 127).to(torch.int8)
    s_x = torch.where(finite, s_x, torch.full_like(s_x, float("nan")))
    return x_q, s_x


def quantize_weight_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization of w [N, K]: (q int8 in {-1, 0, 1}, s_w float32 [N]).

    One scale per tensor (s_w = mean|W|), stored once per output row so that matrices
    fused along N can keep their own scales.
    """
    wf = w.detach().float()
    s_w = wf.abs().mean().clamp(min=ABSMAX_FLOOR)
    q = torch.round(wf / s_w).clamp(-1, 1).to(torch.int8)
    return q, s_w.expand(w.shape[0]).contiguous()


def ternary_matmul_int8(x_q: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Exact x_q [M, K] @ q.T [K, N] in int64 (the kernels' int32 must equal it)."""
    return x_q.long() @ q.long().T


def ternary_linear(
    x: torch.Tensor, q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = (x_q @ q.T) * s_w / s_x (+ bias) with unpacked q int8 [N, K]; output dtype = x's."""
    x_q, s_x = quantize_activations(x)
    lead = x.shape[:-1]
    acc = ternary_matmul_int8(x_q.reshape(-1, x.shape[-1]), q).float()  # [M, N]
    y = acc * w_scale.float() / s_x.reshape(-1, 1)
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*lead, q.shape[0]).to(x.dtype)
