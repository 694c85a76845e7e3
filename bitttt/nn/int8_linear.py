"""Int8Linear: a float linear as int8 rows, for the LM head at decode (bitttt's checkpoints
and Hugging Face BitNet alike: `--lm-head int8`)."""

from __future__ import annotations

import torch
from torch import nn

from bitttt import ops


class Int8Linear(nn.Module):
    """A float linear as int8 with one scale per output row, for the LM head at decode (it reads
    the whole [V, C] matrix every token): W ≈ w_q * scale[:, None], scale = max|W_row| / 127.
    Activations are quantized per token by the ternary layers' rule (design §2, ops.quantize_activations_int8:
    s_x = 127 / absmax; a token with NaN/inf gets a row of NaN) and meet w_q in an
    exact int8 GEMM (bitttt's int8_matmul on CPU, int32 sums): y = (x_q @ w_q.T) * scale / s_x.
    On the 2B head at M=1 and 2 threads int8_matmul reads at the DRAM's speed (10-16 ms);
    torch._int_mm took 35-120 ms there and torch's weight-only int8 GEMM (_weight_int8pack_mm)
    was 3x slower than float32, its bfloat16 path wrong for small K."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w_q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)  # [N, K]
        scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)  # [N]
        for i in range(0, weight.shape[0], 4096):  # in row blocks: no float32 copy of a 128k-row head
            w = weight[i:i + 4096].detach().float()
            scale[i:i + 4096] = w.abs().amax(dim=1).clamp(min=1e-12) / 127
            w_q[i:i + 4096] = torch.round(w / scale[i:i + 4096, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("w_q", w_q)
        self.register_buffer("scale", scale)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def _apply(self, fn, recurse: bool = True):
        # `.to(bfloat16)` converts float buffers; the per-row scale stays float32, exactly.
        scale = self.scale
        super()._apply(fn, recurse)
        if self.scale.dtype != torch.float32:
            self.scale = scale.to(self.scale.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q, s_x = ops.quantize_activations_int8(x.reshape(-1, x.shape[-1]))  # [M, K], [M]
        if x.device.type == "cpu":
            acc = ops.int8_matmul(x_q, self.w_q).float()  # exact int32 sums
        else:  # CUDA's _int_mm wants M > 16 and multiples of 8; float32 holds these sums exactly
            acc = x_q.float() @ self.w_q.float().T
        y = acc * self.scale / s_x[:, None]  # [M, N]
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 rows"
