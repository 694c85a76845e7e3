"""torch.compile over bitttt's layers and ops: they are registered custom ops with fake
(meta) kernels, so the compiler traces them into one graph (fullgraph=True: no graph breaks)
and fuses the elementwise work around them.

    python examples/compile_ops.py
"""

from __future__ import annotations

import torch
from torch import nn

from bitttt import ops
from bitttt.nn import BitLinear


class TernaryClassifier(nn.Module):
    """Packed BitLinear layers around a SwiGLU-like gate, then a head that calls the op on
    weights packed by hand."""

    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.up = BitLinear(dim, 2 * hidden)
        self.down = BitLinear(hidden, dim)
        packed, w_scale = ops.quantize_weight(torch.randn(classes, dim))
        self.register_buffer("head_packed", packed)
        self.register_buffer("head_scale", w_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.up(x).chunk(2, dim=-1)
        h = x + self.down(nn.functional.silu(a) * b)
        return torch.softmax(ops.ternary_linear(h, self.head_packed, self.head_scale), dim=-1)


def main() -> None:
    torch.manual_seed(0)
    model = TernaryClassifier(256, 512, 100).eval()
    for layer in (model.up, model.down):
        layer.pack()
    x = torch.randn(4, 16, 256)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        eager, traced = model(x), compiled(x)
    torch.testing.assert_close(traced, eager, rtol=1e-4, atol=1e-5)
    print(f"compiled TernaryClassifier: {tuple(traced.shape)}, max |compiled - eager| = "
          f"{(traced - eager).abs().max().item():.2e}, rows sum to {traced.sum(-1).mean().item():.4f}")
    print("ok")


if __name__ == "__main__":
    main()
