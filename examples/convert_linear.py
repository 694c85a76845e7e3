"""Convert an existing model's nn.Linear layers to ternary BitLinear, then pack them.

    python examples/convert_linear.py

`BitLinear.from_linear` copies a layer's weight and bias; the converted layer computes with
ternary weights (absmean) and int8 activations, in fake quant (trainable) until `pack()` swaps
the float weight for 2-bit BT2 weights and the C++ kernel. Fine-tune after converting: a
model trained in float loses accuracy when its weights become ternary.
"""

from __future__ import annotations

import torch
from torch import nn

from bitttt.nn import BitLinear


def convert_linears(module: nn.Module) -> int:
    """Replaces every nn.Linear inside `module` by BitLinear.from_linear of it; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, BitLinear.from_linear(child))
            count += 1
        else:
            count += convert_linears(child)
    return count


def main() -> None:
    torch.manual_seed(0)
    # Any model: here a small MLP classifier with nested Linear layers.
    model = nn.Sequential(
        nn.Linear(64, 256), nn.GELU(),
        nn.Sequential(nn.Linear(256, 256), nn.GELU()),
        nn.Linear(256, 10),
    )
    x = torch.randn(8, 64)
    with torch.no_grad():
        float_out = model(x)

    converted = convert_linears(model)
    with torch.no_grad():
        fake_quant_out = model(x)
        for layer in model.modules():
            if isinstance(layer, BitLinear):
                layer.pack()
        packed_out = model(x)

    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    packed_bytes = sum(m.packed.numel() for m in layers)
    float_bytes = sum(m.in_features * m.out_features * 4 for m in layers)
    # Fake quant and the packed kernel compute the same integer products: they agree to float
    # rounding (summed in a different order), and differ from the float model.
    scale = fake_quant_out.abs().max().item()
    diff = (packed_out - fake_quant_out).abs().max().item()
    assert diff <= 1e-4 * scale, f"packed vs fake quant: {diff} (scale {scale})"
    print(f"converted {converted} nn.Linear layers to BitLinear")
    print(f"weights: {packed_bytes} bytes packed, {float_bytes} as float32")
    print(f"max |packed - fake quant| = {diff:.2e}; max |ternary - float| = "
          f"{(packed_out - float_out).abs().max().item():.3f}")
    print("ok")


if __name__ == "__main__":
    main()
