"""The one-token decode path of bitttt's own models (docs/design.md §4, "the decode step").

A packed `base` model decodes a token through ~2500 torch ops when every module runs its
general (any T, autograd-ready) forward; at one token the dispatch, allocation and the
tensors built per call (RoPE tables, reshaped conv weights) cost more than the ternary
kernels. This path, taken for one token of one sequence without autograd on the CPU in
float32, does the same math with fewer ops:

- the projections that read the same input are one ternary call over their concatenated
  rows (`FusedLinear`): one activation quantization and one kernel call for q/k/v/gate;
- RMSNorm is the one-pass C++ op (ops.rms_norm) instead of its seven-op composition;
- tables that depend only on the weights or the config (RoPE cos/sin of the TTT mini-batch
  positions, the causal conv's weights per step) are built once per weights.

BITTTT_DECODE_FUSED=0 turns it off: every module then runs its per-op forward, the path the
tests compare this one against (the oracle). The two agree to float32 rounding (the norm's
summation order), and greedy tokens agree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bitttt import ops
from bitttt.errors import ConfigError
from bitttt.nn.bitlinear import BitLinear, lut16_layout, packed_linear

FUSED_ENV = "BITTTT_DECODE_FUSED"
_SETTINGS = {"": True, "1": True, "on": True, "0": False, "off": False}


def fused_decode_setting() -> bool:
    """BITTTT_DECODE_FUSED as a bool (default on); ConfigError for a value other than 0/1/on/off."""
    value = os.environ.get(FUSED_ENV, "1").strip().lower()
    if value not in _SETTINGS:
        raise ConfigError(f"{FUSED_ENV}={value!r} is not a setting", hint="use 1 (fused decode) or 0 (per-op path)")
    return _SETTINGS[value]


def takes_fused_decode(x: torch.Tensor) -> bool:
    """Whether x, the input of a decode step [1, C] or [1, 1, C], takes the fused path: one token of
    one sequence, float32 on the CPU, no autograd, and BITTTT_DECODE_FUSED not 0."""
    return (x.numel() == x.shape[-1] and x.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_grad_enabled() and fused_decode_setting())


def derived(owner: nn.Module, name: str, sources: list[torch.Tensor], build: Callable[[], Any]) -> Any:
    """What build() makes from `sources` (owner's weights), made once and kept on owner until a
    source changes (a load or an optimizer step bumps its version, a move gives a new tensor).
    A plain attribute: never in a state_dict."""
    key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in sources)
    cache = owner.__dict__.setdefault("_decode_tables", {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, build())
    return hit[1]


class FusedLinear:
    """Packed BitLinears that read the same input as one ternary call over their concatenated
    rows: one activation quantization and one kernel call, each row's output the same bits as
    its own layer's (the kernel's rows are independent, w_scale is per row). A copy of the
    weights (small next to the model: the layers of one projection)."""

    def __init__(self, layers: list[BitLinear]) -> None:
        self.packed = torch.cat([layer.packed for layer in layers])
        self.w_scale = torch.cat([layer.w_scale for layer in layers])
        biases = [layer.bias for layer in layers]
        self.bias = None if all(b is None for b in biases) else torch.cat(
            [b if b is not None else layer.w_scale.new_zeros(layer.out_features) for b, layer in zip(biases, layers)])
        self.lut16 = lut16_layout(self.packed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self.packed, self.w_scale, self.bias, self.lut16)


def fused_linear(owner: nn.Module, name: str, layers: list[nn.Module]) -> FusedLinear | None:
    """owner's FusedLinear `name` over `layers` (built on first use, rebuilt when their weights
    change), or None when any layer is not a packed BitLinear (the float twin, fake quant)."""
    if not all(isinstance(layer, BitLinear) and layer.is_packed for layer in layers):
        return None
    sources = [t for layer in layers for t in (layer.packed, layer.w_scale)
               + ((layer.bias,) if layer.bias is not None else ())]
    return derived(owner, name, sources, lambda: FusedLinear(layers))


def rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """norm(x) for bitttt.nn.norm.RMSNorm `norm` in one C++ pass (float32 CPU)."""
    return ops.rms_norm(x, norm.weight, norm.eps)
