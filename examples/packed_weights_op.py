"""Call the ternary kernel on weights you packed yourself: torch.ops.bitttt.ternary_linear.

    python examples/packed_weights_op.py

The op takes activations x [..., K] (float32 or bfloat16), BT2-packed ternary weights
uint8 [N, Kp/4], a float32 scale per output row and an optional bias, and returns
(quant(x) @ q.T) * w_scale / s_x + bias, where quant(x) is x rounded to int8 per token
(absmax: s_x = 127 / max|x|). `bitttt.ops.pack_ternary` packs int8 weights in {-1, 0, 1}.
"""

from __future__ import annotations

import torch

import bitttt.ops  # noqa: F401  registers torch.ops.bitttt.*
from bitttt.ops import pack_ternary


def main() -> None:
    g = torch.Generator().manual_seed(0)
    N, K = 48, 1000  # any K: packing pads it to a multiple of 256 with zero weights
    q = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=g)  # your ternary weights
    w_scale = torch.rand(N, generator=g) + 0.5                        # your per-row scales
    bias = torch.randn(N, generator=g)
    packed = pack_ternary(q)
    print(f"q int8 {tuple(q.shape)} -> packed uint8 {tuple(packed.shape)} ({packed.numel()} bytes)")

    x = torch.randn(3, 5, K, generator=g)
    y = torch.ops.bitttt.ternary_linear(x, packed, w_scale, bias)

    # The same computation written out with plain torch: int8 per token, exact integer dot.
    s_x = 127.0 / x.abs().amax(dim=-1, keepdim=True)
    x_q = torch.round(x * s_x).clamp(-128, 127)
    want = (x_q.double() @ q.double().T) * w_scale.double() / s_x.double() + bias.double()
    err = (y.double() - want).abs().max().item()
    assert y.shape == (3, 5, N) and err <= 1e-4 * want.abs().max().item(), err
    print(f"y {tuple(y.shape)}: max |op - plain torch| = {err:.2e}")

    # bfloat16 activations give bfloat16 outputs (the integer core is the same).
    y16 = torch.ops.bitttt.ternary_linear(x.bfloat16(), packed, w_scale, bias)
    rel = ((y16.float() - y).abs().max() / y.abs().max()).item()
    print(f"bfloat16 in: {y16.dtype} out, max |bf16 - f32| = {rel:.1%} of max |y|")
    print("ok")


if __name__ == "__main__":
    main()
