"""BitTTTConfig, its presets and BitTTTForCausalLM (docs/design.md §4).

embedding -> n_layer x Block(RMSNorm -> mixer -> residual -> RMSNorm -> SwiGLU -> residual)
-> RMSNorm -> LM head. Embedding, head, norms and fast weights are full precision; the other
linears are BitLinear (nn.Linear in the `ternary=False` twin).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitttt.config import MIXERS, MODEL_TYPE, PRESETS, BitTTTConfig, preset_config  # noqa: F401 (re-exported)
from bitttt.errors import ConfigError
from bitttt.nn import decode
from bitttt.nn.bitlinear import BitLinear
from bitttt.nn.attention import check_context
from bitttt.nn.blocks import Attention, Block, init_linear_, residual_std
from bitttt.nn.norm import RMSNorm


@dataclass
class ModelCache:
    """What a model carries between calls: per-layer mixer states and the next position."""

    states: list[Any]
    # A row batch (bitttt.generate.decode_rows) has pos a list, one position per row, and
    # states[layer] a list of per-row states: B independent sequences, one token each.
    pos: int | list[int] = 0


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # [B, T, V] float32
    loss: torch.Tensor | None = None  # mean cross entropy over labels != -100
    cache: ModelCache | None = None


def next_positions(pos: int | list[int], T: int) -> int | list[int]:
    return [p + T for p in pos] if isinstance(pos, list) else pos + T


# The context policy of bitttt's own models (docs/design.md §6): an attention model's KV cache
# grows with the context, so a call past this many positions raises ContextFullError (the
# cache of `base` at the limit is about 2.4 GB in float32); TTT mixers keep a constant-size
# state and take any length.
ATTENTION_MAX_POSITIONS = 32768


def max_positions(config: BitTTTConfig) -> int | None:
    """The most positions one cache may hold: ATTENTION_MAX_POSITIONS with attention, else None."""
    return ATTENTION_MAX_POSITIONS if config.mixer == "attention" else None


def make_mixer(config: BitTTTConfig) -> nn.Module:
    if config.mixer == "attention":
        return Attention(config.n_embd, config.n_head, config.ternary, config.rope_theta, max_positions(config))
    from bitttt.nn import ttt_mixers  # needs the TTT layers (branch ttt)

    return ttt_mixers.make_ttt_mixer(config)


class BitTTTForCausalLM(nn.Module):
    def __init__(self, config: BitTTTConfig) -> None:
        super().__init__()
        self.config = config
        C = config.n_embd
        self.embed = nn.Embedding(config.vocab_size, C)
        self.blocks = nn.ModuleList(
            Block(make_mixer(config), C, config.hidden_size, config.ternary, config.norm_eps)
            for _ in range(config.n_layer))
        self.norm = RMSNorm(C, eps=config.norm_eps)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.init_std
        nn.init.normal_(self.embed.weight, std=std)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=std)
        for block in self.blocks:
            for name, module in block.named_modules():
                if isinstance(module, (nn.Linear, BitLinear)):
                    residual = name.endswith(("out", "down", "o_proj", "wo"))
                    init_linear_(module, residual_std(std, self.config.n_layer) if residual else std)

    def _apply(self, fn, recurse: bool = True):
        # a move or cast replaces the weights: drop the one-call decode's list of the old ones
        # (bitttt.nn.decode.whole_token would rebuild it, but only at a CPU float32 decode step)
        self.__dict__.pop("_decode_plan", None)
        return super()._apply(fn, recurse)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                cache: ModelCache | None = None, use_cache: bool = False,
                logits_to_keep: int = 0) -> CausalLMOutput:
        """input_ids [B, T] at positions cache.pos.. (0 without a cache); labels [B, T] are the
        targets of each position (already shifted), -100 to skip. With use_cache (or a cache
        given) the output carries the updated cache; the cache passed in is not modified.
        logits_to_keep > 0: logits of the last that many positions only (transformers'
        meaning, as HF BitNet's forward), so a prefill does not pay the head for every position."""
        use_cache = use_cache or cache is not None
        pos = cache.pos if cache is not None else 0
        states = cache.states if cache is not None else [None] * len(self.blocks)
        check_context(pos, input_ids.shape[1], max_positions(self.config))
        x = self.embed(input_ids)  # [B, T, C]
        with decode.dispatch_context(x):  # one token: below autograd (bitttt.nn.decode)
            whole = decode.whole_token(self, x, states, pos) if cache is not None else None
            if whole is not None:  # every block in one op call
                x, new_states = whole
            else:
                new_states = []
                for block, state in zip(self.blocks, states):
                    x, state = block(x, state=state, pos=pos, use_cache=use_cache)
                    new_states.append(state)
            if logits_to_keep > 0 and labels is None:
                x = x[:, -logits_to_keep:]
            logits = self.lm_head(self.norm(x)).float()  # [B, T or logits_to_keep, V]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        new_cache = ModelCache(new_states, next_positions(pos, input_ids.shape[1])) if use_cache else None
        return CausalLMOutput(logits, loss, new_cache)

    @torch.no_grad()
    def pack(self) -> BitTTTForCausalLM:
        """Switches every BitLinear to BT2-packed weights and the ternary_linear kernel."""
        for module in self.modules():
            if isinstance(module, BitLinear):
                module.pack()
        return self

    @property
    def is_packed(self) -> bool:
        return any(isinstance(m, BitLinear) and m.is_packed for m in self.modules())


def save_config(config: BitTTTConfig, path: str, extra: dict[str, Any] | None = None) -> None:
    with open(path, "w") as f:
        json.dump({**config.to_dict(), **(extra or {})}, f, indent=2)


def load_config(path: str) -> tuple[BitTTTConfig, dict[str, Any]]:
    """Reads config.json: (model config, the other sections such as "training", "format")."""
    if not os.path.isfile(path):
        raise ConfigError(f"no config.json at {path}", hint="point at a bitttt run, checkpoint or export")
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable config ({e})", hint="the file is damaged; use another checkpoint")
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    sections = {k: d.pop(k) for k in ("training", "format", "data") if k in d}
    return BitTTTConfig.from_dict(d, source=path), sections
