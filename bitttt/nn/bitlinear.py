"""BitLinear: a drop-in nn.Linear with BitNet b1.58 ternary weights and int8 activations."""

from __future__ import annotations

import math

import torch
from torch import nn

from bitttt import ops


# The training path's quantize-dequantize, straight-through (bitttt/ops.py: one C++ pass each
# on the CPU); kept importable from here, where BitLinear's users look for them.
fake_quant_activations = ops.fake_quant_activations
fake_quant_weight = ops.fake_quant_weight


class BitLinear(nn.Module):
    """y = x W^T (+ b) with W ternary {-1, 0, +1}·s_w and x int8 per token (design §2).

    Training runs "fake quant" in floating point with straight-through estimators. After
    `pack()` the float weight is replaced by BT2-packed weights and the layer calls the
    `ternary_linear` kernel; both paths give the same output up to float rounding.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight: nn.Parameter | None = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's initialisation, so BitLinear is a drop-in replacement.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> BitLinear:
        """A BitLinear with `linear`'s shape, weight and bias (copied: `linear` is unchanged).

        Its output is the fake-quant one (ternary weight, int8 activations) of those weights;
        `pack()` it for inference. Training it further (quantization-aware fine-tuning) works
        as with any BitLinear.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"BitLinear.from_linear takes an nn.Linear, not {type(linear).__name__}")
        weight = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
        layer.weight.copy_(weight)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
        return layer

    @property
    def is_packed(self) -> bool:
        return self.weight is None

    @torch.no_grad()
    def pack(self) -> BitLinear:
        """Switches to inference: BT2-packed weights (buffers `packed`, `w_scale`) and the kernel."""
        if self.is_packed:
            return self
        packed, w_scale = ops.quantize_weight(self.weight)
        self.weight = None
        self.register_buffer("packed", packed)
        self.register_buffer("w_scale", w_scale)
        return self

    def _apply(self, fn, recurse: bool = True):
        # `.to(bfloat16)` and friends convert every float buffer; the kernel's w_scale stays
        # float32, exactly: take the device move from fn but the values from before the cast
        # (casting back after a bf16 round trip would keep the bf16 rounding).
        w_scale = self.w_scale if self.is_packed else None
        super()._apply(fn, recurse)
        if w_scale is not None and self.w_scale.dtype != torch.float32:
            self.w_scale = w_scale.to(self.w_scale.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_packed:
            return ops.ternary_linear(x, self.packed, self.w_scale, self.bias)
        return ops.bitlinear_fake_quant(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, packed={self.is_packed}")
