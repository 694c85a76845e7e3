"""A plain fp32 nanoGPT-style transformer: the training-speed baseline of `bitttt bench train`.

What a user would write instead of bitttt, at the width and depth of bitttt's `tiny` preset
(4 layers x 256, 4 heads): learned positions, pre-LayerNorm blocks, GELU MLP 4x wide,
`scaled_dot_product_attention`, no biases, LM head tied to the embedding (about 3.25 M
parameters at the byte vocabulary). Written from scratch; nothing here imports bitttt (it ships
in the package so `bitttt bench train` runs from a wheel; benchmarks/nanogpt_baseline.py re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BaselineConfig:
    vocab_size: int = 320  # bitttt's byte vocabulary
    block_size: int = 128  # learned positions: the longest sequence it takes
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4


class SelfAttention(nn.Module):
    def __init__(self, c: BaselineConfig) -> None:
        super().__init__()
        self.n_head = c.n_head
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd, bias=False)
        self.proj = nn.Linear(c.n_embd, c.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, c: BaselineConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=False)
        self.proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, c: BaselineConfig) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(c.n_embd, bias=False), SelfAttention(c)
        self.ln2, self.mlp = nn.LayerNorm(c.n_embd, bias=False), MLP(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class NanoGPT(nn.Module):
    def __init__(self, c: BaselineConfig | None = None) -> None:
        super().__init__()
        c = c or BaselineConfig()
        self.config = c
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=False)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as nanoGPT
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross entropy of labels [B, T] (already shifted) given idx [B, T]."""
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.reshape(-1))
