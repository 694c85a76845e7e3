"""TTT-Linear as a drop-in sequence mixer: where a transformer block has self-attention
(x [B, T, C] -> [B, T, C]), put bitttt.nn.TTTLinear. Its hidden state is a small linear model
per head, trained on the sequence as it is read (Sun et al. 2024), so the state has a fixed
size however long the context; `step` decodes one token at a time with a cache.

    python examples/ttt_drop_in.py
"""

from __future__ import annotations

import torch
from torch import nn

from bitttt.nn import TTTLinear


class Block(nn.Module):
    """A pre-norm transformer block with a pluggable sequence mixer."""

    def __init__(self, dim: int, mixer: nn.Module) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mixer = mixer
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CausalSelfAttention(nn.Module):
    """The mixer TTT-Linear replaces."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]


def main() -> None:
    torch.manual_seed(0)
    dim, heads = 128, 4
    attention_block = Block(dim, CausalSelfAttention(dim, heads))
    # The drop-in: same constructor arguments, same input and output shapes. mini_batch_size is
    # TTT's inner batch (tokens per inner gradient step); ternary=False keeps float projections.
    ttt_block = Block(dim, TTTLinear(dim, heads, mini_batch_size=16))

    x = torch.randn(2, 40, dim)  # any length: not a multiple of mini_batch_size here
    assert attention_block(x).shape == ttt_block(x).shape == x.shape

    # Training works as with any layer (the op has a C++ backward).
    opt = torch.optim.AdamW(ttt_block.parameters(), lr=1e-3)
    target = torch.randn_like(x)
    losses = []
    for _ in range(5):
        loss = nn.functional.mse_loss(ttt_block(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    print(f"TTTLinear block: {tuple(x.shape)} -> {tuple(ttt_block(x).shape)}; "
          f"5 training steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}")

    # Causal: decoding token by token with a cache gives the outputs of the whole sequence.
    mixer = ttt_block.mixer
    with torch.no_grad():
        h = ttt_block.norm1(x)
        full = mixer(h)
        cache = mixer.init_cache()
        steps = torch.stack([mixer.step(h[:, t], cache) for t in range(h.shape[1])], dim=1)
    err = (steps - full).abs().max().item()
    assert err <= 1e-4 * full.abs().max().item(), err
    print(f"step-by-step decode vs whole sequence: max |diff| = {err:.2e}")
    print("ok")


if __name__ == "__main__":
    main()
