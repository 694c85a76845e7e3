"""The one-token decode path of bitttt's own models (docs/design.md §4, "the decode step").

A packed `base` model decodes a token through ~2500 torch ops when every module runs its
general (any T, autograd-ready) forward; at one token the dispatch, allocation and the
tensors built per call (RoPE tables, reshaped conv weights) cost more than the ternary
kernels. This path, taken for one token of one sequence without autograd on the CPU in
float32, does the same math with fewer ops:

- the projections that read the same input are one call over their concatenated rows
  (`FusedLinear`): one activation quantization and one ternary kernel call for q/k/v/gate
  (one GEMM in the float twin, which gets the same path: comparisons stay fair);
- tables that depend only on the weights or the config (RoPE cos/sin of the TTT mini-batch
  positions, the causal conv's weights per step) are built once per weights;
- attention's step takes RoPE's rotation from a table of positions and runs the scores and
  the output as one bmm each, reading the KV buffer where it lies (the per-op matmul copied
  the transposed keys, O(T) per token).

BITTTT_FUSED_DECODE=0 turns it off: every module then runs its per-op forward, the path the
tests compare this one against (the oracle). The two give the same logits bit for bit on the
test models (every op computes each value as the per-op path does), so the serve engine's
batched rows (per-op) still equal one sequence decoded alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitttt import ops
from bitttt.errors import ConfigError
from bitttt.nn.bitlinear import BitLinear, lut16_layout, packed_linear

FUSED_ENV = "BITTTT_FUSED_DECODE"  # the same switch as Hugging Face BitNet's one-call decode (bitttt.hf.bitnet)
_SETTINGS = {"": True, "1": True, "on": True, "0": False, "off": False}


def fused_decode_setting() -> bool:
    """BITTTT_FUSED_DECODE as a bool (default on); ConfigError for a value other than 0/1/on/off."""
    value = os.environ.get(FUSED_ENV, "1").strip().lower()
    if value not in _SETTINGS:
        raise ConfigError(f"{FUSED_ENV}={value!r} is not a setting", hint="use 1 (fused decode) or 0 (per-op path)")
    return _SETTINGS[value]


def takes_fused_decode(x: torch.Tensor) -> bool:
    """Whether x, the input of a decode step [1, C] or [1, 1, C], takes the fused path: one token of
    one sequence, float32 on the CPU, no autograd, and BITTTT_FUSED_DECODE not 0."""
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
    """Linear layers that read the same input as one call over their concatenated rows: packed
    BitLinears as one ternary call (one activation quantization; each row's output the same bits
    as its own layer's: the kernel's rows are independent and w_scale is per row), or the float
    twin's nn.Linears as one GEMM (the same products; the BLAS may block the sums otherwise).
    A copy of the weights, small next to the model: the input projections of one layer."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.packed = isinstance(layers[0], BitLinear)
        biases = [layer.bias for layer in layers]
        if self.packed:
            self.weight = torch.cat([layer.packed for layer in layers])
            self.w_scale = torch.cat([layer.w_scale for layer in layers])
            self.lut16 = lut16_layout(self.weight)
            # the layers' own one-token layout (BITTTT_TRIT5), over the concatenated rows
            self.trit5 = (ops.ternary_repack_trit5(self.weight, layers[0].in_features)
                          if getattr(layers[0], "trit5", None) is not None else None)
        else:
            self.weight = torch.cat([layer.weight.detach() for layer in layers])
        self.bias = None if all(b is None for b in biases) else torch.cat(
            [b.detach() if b is not None else torch.zeros(layer.out_features, device=self.weight.device)
             for b, layer in zip(biases, layers)])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return packed_linear(x, self.weight, self.w_scale, self.bias, self.lut16, self.trit5)
        return F.linear(x, self.weight, self.bias)


def fused_linear(owner: nn.Module, name: str, layers: list[nn.Module]) -> FusedLinear | None:
    """owner's FusedLinear `name` over `layers` (built on first use, rebuilt when their weights
    change), or None unless all are packed BitLinears or all nn.Linear (fake quant keeps its path)."""
    if all(isinstance(layer, BitLinear) and layer.is_packed for layer in layers):
        sources = [t for layer in layers for t in (layer.packed, layer.w_scale)]
    elif all(type(layer) is nn.Linear for layer in layers):
        sources = [layer.weight for layer in layers]
    else:
        return None
    sources += [layer.bias for layer in layers if layer.bias is not None]
    return derived(owner, name, sources, lambda: FusedLinear(layers))
