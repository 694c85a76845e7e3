"""BitLinear: a drop-in nn.Linear with BitNet b1.58 ternary weights and int8 activations."""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from bitttt import _native, ops
from bitttt.errors import ConfigError


# The training path's quantize-dequantize, straight-through (bitttt/ops.py: one C++ pass each
# on the CPU); kept importable from here, where BitLinear's users look for them.
fake_quant_activations = ops.fake_quant_activations
fake_quant_weight = ops.fake_quant_weight


# ---------------------------------------------------------------------------------------
# Packed inference: lut16 for decode (docs/design.md §2, "lut16 at decode")
# ---------------------------------------------------------------------------------------

# BITTTT_LUT16=auto (default): the lut16 table-lookup kernel for one-token calls (decode) when
# the ternary kernel set at pack/load time is "avx2", where it measured 1.1-1.45x the BT2 kernel
# at M=1; it loses for M > 1, on avx512 and with hot weights, so BT2 stays for everything else.
# 1/on: build and use it at M=1 whatever the kernel set (tests, benchmarks); 0/off: never.
LUT16_ENV = "BITTTT_LUT16"
_LUT16_SETTINGS = {"auto": "auto", "": "auto", "1": "on", "on": "on", "0": "off", "off": "off"}


def lut16_setting() -> str:
    """BITTTT_LUT16 as 'auto', 'on' or 'off'; ConfigError for any other value."""
    value = os.environ.get(LUT16_ENV, "auto").strip().lower()
    if value not in _LUT16_SETTINGS:
        raise ConfigError(f"{LUT16_ENV}={value!r} is not a lut16 setting", hint="use 0, 1 or auto")
    return _LUT16_SETTINGS[value]


def wants_lut16(packed: torch.Tensor) -> bool:
    """Whether packed weights should get a lut16 decode layout now (BITTTT_LUT16 and the
    active kernel set; the lut16 kernels are CPU only)."""
    setting = lut16_setting()
    if setting == "off" or packed.device.type != "cpu":
        return False
    return setting == "on" or _native._C.isa() == "avx2"


def lut16_layout(packed: torch.Tensor) -> torch.Tensor | None:
    """The lut16 layout of BT2 `packed` when wants_lut16, else None. It is a second copy of the
    weights: packed's bytes again, plus at most 15 padding rows."""
    return ops.ternary_repack_lut16(packed) if wants_lut16(packed) else None


def set_lut16(module: nn.Module) -> None:
    """(Re)builds `module.lut16` from `module.packed`: a non-persistent buffer (never in a
    state_dict or an export), None where lut16 does not apply. Call after `packed` changes."""
    module.register_buffer("lut16", lut16_layout(module.packed), persistent=False)


# BITTTT_TRIT5=auto (default): the trit5 layout (5 weights per byte, csrc/ternary/trit5.h) for
# one-token calls when the kernel set at pack/load time is in TRIT5_AUTO_ISAS, where it measured
# faster than BT2 at M=1 with cold weights (docs/design.md §2, "trit5 at decode"). 1/on: build
# and use it at M=1 whatever the kernel set; 0/off: never. Where lut16 is built too (its auto
# set, avx2, and this one do not overlap), lut16 is used.
TRIT5_ENV = "BITTTT_TRIT5"
TRIT5_AUTO_ISAS: frozenset[str] = frozenset({"avx512"})


def trit5_setting() -> str:
    """BITTTT_TRIT5 as 'auto', 'on' or 'off'; ConfigError for any other value."""
    value = os.environ.get(TRIT5_ENV, "auto").strip().lower()
    if value not in _LUT16_SETTINGS:
        raise ConfigError(f"{TRIT5_ENV}={value!r} is not a trit5 setting", hint="use 0, 1 or auto")
    return _LUT16_SETTINGS[value]


def set_trit5(module: nn.Module) -> None:
    """(Re)builds `module.trit5` (a non-persistent buffer: the trit5 layout of `module.packed`
    for `module.in_features`, 0.8x packed's bytes) where BITTTT_TRIT5 and the active kernel set
    ask for it, else None. Call after `packed` changes."""
    packed, setting = module.packed, trit5_setting()
    wanted = setting != "off" and packed.device.type == "cpu" and (
        setting == "on" or _native._C.isa() in TRIT5_AUTO_ISAS)
    module.register_buffer("trit5", ops.ternary_repack_trit5(packed, module.in_features) if wanted else None,
                           persistent=False)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                  lut16: torch.Tensor | None, trit5: torch.Tensor | None = None) -> torch.Tensor:
    """ternary_linear(x, packed, w_scale, bias), through the lut16 or else the trit5 layout for
    one token (M == 1) when there is one; all give the same bits."""
    if x.numel() == x.shape[-1] and x.device.type == "cpu":
        if lut16 is not None:
            return ops.ternary_linear_lut16(x, lut16, w_scale, bias)
        if trit5 is not None:
            return ops.ternary_linear_trit5(x, trit5, w_scale, bias)
    return ops.ternary_linear(x, packed, w_scale, bias)


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
        set_lut16(self)
        set_trit5(self)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Loading a packed export copies into `packed` after pack(): the lut16 copy must follow.
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.is_packed:
            set_lut16(self)
            set_trit5(self)

    def _apply(self, fn, recurse: bool = True):
        # `.to(bfloat16)` and friends convert every float buffer; the kernel's w_scale stays
        # float32, exactly: take the device move from fn but the values from before the cast
        # (casting back after a bf16 round trip would keep the bf16 rounding).
        w_scale = self.w_scale if self.is_packed else None
        super()._apply(fn, recurse)
        if w_scale is not None and self.w_scale.dtype != torch.float32:
            self.w_scale = w_scale.to(self.w_scale.device)
        if self.is_packed and self.lut16 is not None and self.lut16.device.type != "cpu":
            self.lut16 = None  # a CPU-only layout: do not carry a copy of the weights to a GPU
        if self.is_packed and self.trit5 is not None and self.trit5.device.type != "cpu":
            self.trit5 = None
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_packed:
            return packed_linear(x, self.packed, self.w_scale, self.bias, self.lut16, self.trit5)
        return ops.bitlinear_fake_quant(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, packed={self.is_packed}"
                + (", lut16" if self.is_packed and self.lut16 is not None else "")
                + (", trit5" if self.is_packed and self.trit5 is not None else ""))


def shared_input_linears(x: torch.Tensor, layers: list[nn.Module]) -> list[torch.Tensor]:
    """[layer(x) for layer in layers], for layers that read one input x. Unpacked bias-free
    BitLinears run as one op (ops.bitlinear_fake_quant_shared: one activation quantization and
    one autograd node for all), with the same bits as each layer alone, forward and backward."""
    if len(layers) > 1 and all(type(m) is BitLinear and not m.is_packed and m.bias is None for m in layers):
        return list(ops.bitlinear_fake_quant_shared(x, [m.weight for m in layers]))
    return [m(x) for m in layers]
