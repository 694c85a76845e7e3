"""Runs a transformers BitNetForCausalLM on bitttt's kernels: `patch(model)` swaps each BitNet
linear (transformers' BitLinear or AutoBitLinear) for a module calling
torch.ops.bitttt.ternary_linear on BT2 weights, so `model(...)` and `model.generate(...)` run
unchanged. Needs the `hf` extra (`pip install bitttt[hf]`).

The weights are read in the layouts bitttt.hf.loader documents (the same code): packed uint8
codes with `weight_scale` divided (BitLinear) or multiplied (AutoBitLinear offline), or float
master weights quantized with absmean (AutoBitLinear online).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.integrations.bitnet import AutoBitLinear, BitLinear

from bitttt import ops
from bitttt.hf.bitnet import PackedTernaryLinear
from bitttt.hf.loader import HF_CODES_PER_BYTE, hf_scale, quantize_master, unpack_hf_codes

__all__ = ["patch", "TernaryLinear"]

KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # what ternary_linear takes; others run in float32


class TernaryLinear(PackedTernaryLinear):
    """A BitNet linear on bitttt's kernel, keeping the optional input RMSNorm of transformers'
    layers (quantization_config.use_rms_norm)."""

    def __init__(self, packed, w_scale, in_features, bias=None, rms_norm: nn.Module | None = None) -> None:
        super().__init__(packed, w_scale, in_features, bias)
        self.rms_norm = rms_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms_norm is not None:
            x = self.rms_norm(x)
        if x.dtype in KERNEL_DTYPES:
            return super().forward(x)
        return super().forward(x.float()).to(x.dtype)


@torch.no_grad()
def _q_and_scale(module: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [N, K], s_w float32 [N]) of one transformers BitNet layer."""
    N, w = module.out_features, module.weight.detach().cpu()
    if isinstance(module, BitLinear):  # packed uint8 [N/4, K], y = x_q·q / (s_x · weight_scale)
        return unpack_hf_codes(w, name), hf_scale(module.weight_scale.cpu(), name, divide=True).expand(N)
    if module.online_quant:  # master weights, quantized on every call by WeightQuant
        q, s = quantize_master(w)
        return q, s.expand(N)
    if w.dtype == torch.uint8 and w.shape[0] * HF_CODES_PER_BYTE == N:
        q = unpack_hf_codes(w, name)
    else:  # offline AutoBitLinear holds the ternary values as floats, times weight_scale
        q = w.to(torch.int8)
    return q, hf_scale(module.weight_scale.cpu(), name, divide=False).expand(N)


@torch.no_grad()
def patch(model: nn.Module) -> nn.Module:
    """Replaces, in place, every transformers BitLinear/AutoBitLinear of `model` by a TernaryLinear
    on the same device; returns the model. Plain nn.Linear layers (the LM head) are left alone.
    Raises ValueError if the model has no BitNet linear layer (loaded without quantization_config)."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (BitLinear, AutoBitLinear))]
    if not targets:
        raise ValueError("patch: no transformers BitLinear/AutoBitLinear layer in this model; load it with its "
                         "quantization_config (quant_method bitnet)")
    for name, module in targets:
        q, w_scale = _q_and_scale(module, name)
        device = module.weight.device
        bias = module.bias.detach().float() if module.bias is not None else None
        new = TernaryLinear(ops.pack_ternary(q).to(device), w_scale.contiguous().to(device), module.in_features,
                            bias.to(device) if bias is not None else None, module.rms_norm)
        model.set_submodule(name, new)
    return model
