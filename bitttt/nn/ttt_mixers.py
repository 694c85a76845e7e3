"""The TTT mixers (ttt_linear, ttt_mlp) of BitTTTForCausalLM over bitttt.nn's TTT layers.

Adapts a TTT layer (`layer(x, cache)` updating a TTTCache in place, `layer.step(x, cache)` for
one token) to the mixer call of bitttt.nn.blocks: `mixer(x, state, pos, use_cache) -> (y, state)`.
Prefills work on a copy of the incoming cache object; one-token steps without autograd use
the layer's in-place decode (`ttt_linear_decode_`), so the TTT state tensors of the cache
passed in are consumed: keep a deep copy to go back to a state. A row batch (state a list of
per-row caches, pos a list of their positions) steps independent sequences together.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bitttt.nn.ttt import TTTCache, TTTLinear, TTTMLP


class TTTMixer(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, state: TTTCache | None = None, pos: int = 0,
                use_cache: bool = False) -> tuple[torch.Tensor, TTTCache | None]:
        if state is None and not use_cache:
            return self.layer(x), None
        if isinstance(state, list):  # a row batch (bitttt.model.decode_rows): one cache per row
            caches = [dataclasses.replace(s) if s is not None else TTTCache(pos=p) for s, p in zip(state, pos)]
            return self.layer.step_rows(x[:, 0], caches).unsqueeze(1), caches
        cache = dataclasses.replace(state) if state is not None else TTTCache(pos=pos)
        if x.shape[1] == 1 and not torch.is_grad_enabled():
            return self.layer.step(x[:, 0], cache).unsqueeze(1), cache
        return self.layer(x, cache), cache


def make_ttt_mixer(config) -> nn.Module:
    layer_cls = TTTLinear if config.mixer == "ttt_linear" else TTTMLP
    return TTTMixer(layer_cls(config.n_embd, config.n_head, mini_batch_size=config.mini_batch,
                              base_lr=config.ttt_base_lr, rope_theta=config.rope_theta, use_gate=config.use_gate,
                              use_conv=config.conv_kernel > 0, conv_kernel=max(config.conv_kernel, 1),
                              ternary=config.ternary))
