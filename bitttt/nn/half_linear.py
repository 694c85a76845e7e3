"""HalfLinear: nn.Linear whose bfloat16/float16 weight runs bitttt's half_matmul at decode (the
float LM head of a Hugging Face BitNet model, `--lm-head float`)."""

from __future__ import annotations

import torch
from torch import nn

from bitttt import ops

# Up to this many rows per call the head reads its weight at the memory's speed through
# half_matmul (one read per 4 rows); more rows (a long prefill that keeps every position's
# logits) are compute-bound, where torch's GEMM is the better engine.
MAX_ROWS = 16


class HalfLinear(nn.Linear):
    """nn.Linear, with the same weight, bias and output dtype. On CPU, without autograd, for a
    bfloat16 or float16 weight and at most MAX_ROWS rows, y = half_matmul(x, W) (+ bias), summed
    in float32 and rounded to x's dtype: torch's bf16 GEMV read the 2B head at 40-50% of the
    memory's speed. Everything else is nn.Linear's forward. The sums' order differs from
    torch's, so results agree to float32 rounding before the final rounding to x's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        rows = x.numel() // max(x.shape[-1], 1)
        if (x.device.type != "cpu" or w.dtype not in (torch.bfloat16, torch.float16) or rows > MAX_ROWS
                or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            return super().forward(x)
        y = ops.half_matmul(x.reshape(-1, x.shape[-1]).float(), w)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])
