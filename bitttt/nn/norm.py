"""RMSNorm, one home for bitttt's models and Hugging Face BitNet."""

from __future__ import annotations

import torch
from torch import nn

from bitttt import ops

FUSED_NORM_MAX_TOKENS = 16  # decode and small batches; a prefill keeps ternary_linear's token tiling


class RMSNorm(nn.Module):
    """weight * (x / sqrt(mean(x²) + eps)), normalized in float32 and cast back before the
    weight (transformers' LlamaRMSNorm/BitNetRMSNorm order; in float32 it is torch's nn.RMSNorm).
    The state dict holds `weight` [C], as nn.RMSNorm's."""

    def __init__(self, dim: int, eps: float = 1e-6, weight: torch.Tensor | None = None, trainable: bool = True) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"RMSNorm eps must be > 0, got {eps}")
        w = torch.ones(dim) if weight is None else weight
        if w.shape != (dim,):
            raise ValueError(f"RMSNorm weight must be [{dim}], got {tuple(w.shape)}")
        self.weight, self.eps = nn.Parameter(w, requires_grad=trainable), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad) \
                and ops.uses_train_kernel(x, self.weight):
            # training: one C++ pass forward and backward (inference keeps the composition
            # below, which the fused decode kernel rms_norm_ternary_linear matches)
            return ops.rms_norm(x, self.weight, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def fuse_norm(x: torch.Tensor) -> bool:
    """Whether a norm and the ternary layer after it run as ops.rms_norm_ternary_linear: CPU, no
    autograd, at most FUSED_NORM_MAX_TOKENS tokens."""
    return (x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad)
            and x.numel() <= FUSED_NORM_MAX_TOKENS * x.shape[-1])


def rms_norm_ternary(x: torch.Tensor, norm: RMSNorm, packed: torch.Tensor, w_scale: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """ternary_linear(norm(x)) on BT2 weights: one fused call at decode (the norm inside the
    activation quantization, where the two calls take nine ops), the two calls otherwise."""
    if fuse_norm(x) and norm.weight.dtype == x.dtype:
        return ops.rms_norm_ternary_linear(x, norm.weight, norm.eps, packed, w_scale,
                                           None if bias is None else bias.float())
    return ops.ternary_linear(norm(x), packed, w_scale, bias)
