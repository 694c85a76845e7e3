"""BitNet b1.58 as Hugging Face publishes it (`model_type: "bitnet"`, e.g.
microsoft/bitnet-b1.58-2B-4T), run on bitttt's ternary kernel.

embed -> n x [RMSNorm -> GQA attention (RoPE, attn_sub_norm before o_proj) -> residual
-> RMSNorm -> relu²-gated FFN (ffn_sub_norm before down_proj) -> residual] -> RMSNorm -> LM head.

The float pieces follow transformers' `modeling_bitnet.py` operation for operation (RMSNorm in
float32 then cast, rotate-half RoPE, relu(x)²), so the same checkpoint gives the same logits up
to the ternary layers' float rounding. q/k/v and gate/up run as one fused ternary call each:
BT2 rows keep their own scales (design §2), and the same activations quantize the same way.
The model call is BitTTTForCausalLM's (`model(ids, labels, cache, use_cache)`), so
bitttt.generate's loop runs it unchanged; the KV cache is in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitttt import ops
from bitttt.errors import ConfigError
from bitttt.model import CausalLMOutput, ModelCache, next_positions
from bitttt.nn.attention import causal_attention, check_context, kv_filled, kv_room, one_token_attention  # noqa: F401
from bitttt.nn.bitlinear import set_lut16
from bitttt.nn.decode import FUSED_ENV, fused_decode_setting
from bitttt.nn.half_linear import HalfLinear
from bitttt.nn.int8_linear import Int8Linear
from bitttt.nn.norm import RMSNorm as _RMSNorm, rms_norm_ternary
from bitttt.nn.rope import apply_rope, rope_cos_sin

__all__ = ["BitNetConfig", "BitNetForCausalLM", "Int8Linear", "PackedTernaryLinear", "RMSNorm",
           "decode_bytes_per_token"]

MODEL_TYPE = "bitnet"
# BITTTT_FUSED_DECODE=0 runs decode steps through the per-op layers instead of the one-call
# decode op (ops.bitnet_decode_): for A/B benchmarks and for checking one against the other.
# One switch, one parser, with bitttt's own models (bitttt.nn.decode).
FUSED_DECODE_ENV = FUSED_ENV


@dataclass
class BitNetConfig:
    """The config.json fields bitttt reads (transformers' BitNetConfig names and defaults)."""

    vocab_size: int = 128256
    hidden_size: int = 2560
    intermediate_size: int = 6912
    num_hidden_layers: int = 30
    num_attention_heads: int = 20
    num_key_value_heads: int = 5
    head_dim: int = 0  # 0: hidden_size // num_attention_heads, as transformers
    hidden_act: str = "relu2"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    bos_token_id: int | None = 128000
    eos_token_id: int | list[int] | None = 128001
    dtype: str = "bfloat16"  # the float dtype of the checkpoint's non-ternary tensors
    quantization: dict[str, Any] = field(default_factory=dict)  # config.json's quantization_config
    ternary: bool = True  # bitttt's model interface: every BitNet linear is ternary

    def __post_init__(self) -> None:
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads={self.num_key_value_heads}", hint="config.json is damaged")
        if self.hidden_act != "relu2":
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported", hint="BitNet b1.58 uses relu2")

    @property
    def eos_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else [e] if isinstance(e, int) else list(e)


# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------


class PackedTernaryLinear(nn.Module):
    """y = ternary_linear(x, packed, w_scale, bias): BT2 weights (design §2), inference only."""

    def __init__(self, packed: torch.Tensor, w_scale: torch.Tensor, in_features: int,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, packed.shape[0]
        self.register_buffer("packed", packed)  # uint8 [N, Kp/4]
        self.register_buffer("w_scale", w_scale.float())  # float32 [N]
        self.register_buffer("bias", bias)  # [N] or None
        set_lut16(self)  # the decode op's lut16 layout where BitLinear would use one (AVX2), else None

    def _apply(self, fn, recurse: bool = True):
        # `.to(bfloat16)` converts float buffers; the kernel's w_scale stays float32 (as BitLinear).
        w_scale = self.w_scale
        super()._apply(fn, recurse)
        if self.w_scale.dtype != torch.float32:
            self.w_scale = w_scale.to(self.w_scale.device)
        if self.lut16 is not None and self.lut16.device.type != "cpu":
            self.lut16 = None  # a CPU-only layout: no second copy of the weights on a GPU
        return self

    def forward(self, x: torch.Tensor, norm: RMSNorm | None = None) -> torch.Tensor:
        """self(norm(x)) (norm None: self(x)); the norm fuses into the quantization at decode."""
        if norm is None:
            return ops.ternary_linear(x, self.packed, self.w_scale, self.bias)
        return rms_norm_ternary(x, norm, self.packed, self.w_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bt2"


class RMSNorm(_RMSNorm):
    """transformers' BitNetRMSNorm: bitttt.nn.norm.RMSNorm built from a checkpoint's weight, frozen."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__(weight.shape[0], eps, weight=weight, trainable=False)


class Attention(nn.Module):
    """GQA with rotate-half RoPE; state = (k, v) [B, H_kv, T_past, D] in the model's dtype
    (bitttt.nn.attention's cache, written in place)."""

    def __init__(self, config: BitNetConfig, qkv: PackedTernaryLinear, o_proj: PackedTernaryLinear,
                 sub_norm: RMSNorm) -> None:
        super().__init__()
        self.config = config
        self.qkv, self.o_proj, self.attn_sub_norm = qkv, o_proj, sub_norm

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, state=None,
                norm: RMSNorm | None = None):
        """Attention over norm(x) (norm None: x as it is)."""
        c = self.config
        B, T, _ = x.shape
        H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q, k, v = self.qkv(x, norm).split((H * D, Hkv * D, Hkv * D), dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, Hkv, D).transpose(1, 2)  # [B, Hkv, T, D]
        v = v.view(B, T, Hkv, D).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(state, list):  # a row batch (bitttt.generate.decode_rows): one token and cache per row
            return self._attend_rows(q, k, v, state)
        y, (k, v) = causal_attention(q, k, v, state, c.max_position_embeddings)
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.o_proj(y, self.attn_sub_norm), (k, v)

    def _attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, states: list):
        """q [B, H, 1, D], k, v [B, H_kv, 1, D]; row i attends over states[i] ((k, v) [1, H_kv, T_i, D]
        or None) and its new token. The output projection runs once over all rows."""
        B, H, _, D = q.shape
        ys, new_states = [], []
        for i, state in enumerate(states):  # each row as the single-sequence path runs it
            y, kv = causal_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], state, self.config.max_position_embeddings)
            ys.append(y)
            new_states.append(kv)
        y = torch.cat(ys).transpose(1, 2).reshape(B, 1, H * D)
        return self.o_proj(y, self.attn_sub_norm), new_states


class MLP(nn.Module):
    """down(ffn_sub_norm(relu(gate(x))² * up(x))); gate and up are one fused ternary call."""

    def __init__(self, gate_up: PackedTernaryLinear, down: PackedTernaryLinear, sub_norm: RMSNorm) -> None:
        super().__init__()
        self.gate_up, self.down_proj, self.ffn_sub_norm = gate_up, down, sub_norm

    def forward(self, x: torch.Tensor, norm: RMSNorm | None = None) -> torch.Tensor:
        """The FFN of norm(x) (norm None: x as it is)."""
        gate, up = self.gate_up(x, norm).chunk(2, dim=-1)
        return self.down_proj(torch.square(F.relu(gate)) * up, self.ffn_sub_norm)


class DecoderLayer(nn.Module):
    def __init__(self, attn: Attention, mlp: MLP, input_norm: RMSNorm, post_attn_norm: RMSNorm) -> None:
        super().__init__()
        self.self_attn, self.mlp = attn, mlp
        self.input_layernorm, self.post_attention_layernorm = input_norm, post_attn_norm

    def forward(self, x, cos, sin, state=None):
        h, state = self.self_attn(x, cos, sin, state, norm=self.input_layernorm)
        x = x + h
        return x + self.mlp(x, norm=self.post_attention_layernorm), state


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class BitNetForCausalLM(nn.Module):
    """Built by bitttt.hf.loader from a checkpoint's tensors (never randomly initialised)."""

    def __init__(self, config: BitNetConfig, embed: torch.Tensor, layers: list[DecoderLayer],
                 norm: RMSNorm, lm_head: torch.Tensor | None) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding.from_pretrained(embed, freeze=True)
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.lm_head: nn.Module = HalfLinear(config.hidden_size, config.vocab_size, bias=False, device="meta")
        self.lm_head.weight = self.embed_tokens.weight if lm_head is None else nn.Parameter(lm_head, requires_grad=False)

    is_packed = True  # the ternary layers always run the BT2 kernel

    def use_int8_lm_head(self) -> BitNetForCausalLM:
        """Replaces the LM head by its int8 per-row copy (a tied embedding keeps its float table)."""
        if not isinstance(self.lm_head, Int8Linear):
            self.lm_head = Int8Linear(self.lm_head.weight)
        return self

    def num_params(self) -> int:
        """Parameters as the checkpoint counts them: one per ternary weight, a tied head once."""
        c = self.config
        n = sum(m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
                for m in self.modules() if isinstance(m, PackedTernaryLinear))
        n += sum(m.weight.numel() for m in self.modules() if isinstance(m, RMSNorm))
        return n + c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)

    def _apply(self, fn, recurse: bool = True):
        self._decode_weights = None  # a device or dtype move makes new tensors: rebuild the list
        return super()._apply(fn, recurse)

    def decode_weights(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The layers' tensors in ops.bitnet_decode_'s order and their lut16 layouts (empty unless
        every layer has one), or None when the one-call decode does not apply (a GPU, a float
        dtype other than float32/bfloat16, biases, a norm in another dtype). Built once; a
        device or dtype move rebuilds it."""
        if getattr(self, "_decode_weights", None) is not None:
            return self._decode_weights or None
        dt = self.embed_tokens.weight.dtype
        weights: list[torch.Tensor] = []
        lut16: list[torch.Tensor | None] = []
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            for norm, lin in ((layer.input_layernorm, a.qkv), (a.attn_sub_norm, a.o_proj),
                              (layer.post_attention_layernorm, m.gate_up), (m.ffn_sub_norm, m.down_proj)):
                weights += [norm.weight, lin.packed, lin.w_scale]
                lut16.append(lin.lut16)
        biases = any(m.bias is not None for m in self.modules() if isinstance(m, PackedTernaryLinear))
        ok = (weights and not biases and dt in (torch.float32, torch.bfloat16)
              and self.embed_tokens.weight.device.type == "cpu"
              and all(w.dtype == dt for w in weights[0::3]) and all(w.is_contiguous() for w in weights))
        self._decode_weights = (weights, [] if any(t is None for t in lut16) else lut16) if ok else ()
        return self._decode_weights or None

    def _decode_fused(self, input_ids: torch.Tensor, cache: ModelCache) -> tuple[torch.Tensor, ModelCache] | None:
        """One token per row through ops.bitnet_decode_: (the final hidden states [B, 1, C], the
        new cache), or None when that path does not apply (the per-op layers run instead). The
        cache is a batch-1 cache (input_ids [1, 1]) or a row batch (bitttt.generate.decode_rows:
        pos a list, states[layer] a list of each row's (k, v)), returned in the same form."""
        c = self.config
        B, L = input_ids.shape[0], len(self.layers)
        batch = isinstance(cache.pos, list)
        if (input_ids.shape[1] != 1 or torch.is_grad_enabled() or not fused_decode_setting()
                or len(cache.pos if batch else [cache.pos]) != B):
            return None
        positions = list(cache.pos) if batch else [cache.pos]
        rows = [[cache.states[i][r] for i in range(L)] for r in range(B)] if batch else [cache.states]
        dt = self.embed_tokens.weight.dtype
        if any(s is None or s[0].dtype != dt or s[1].dtype != dt for row in rows for s in row):
            return None
        fused = self.decode_weights()
        if fused is None:
            return None
        limit = c.max_position_embeddings
        check_context(positions, 1, limit)
        x = self.embed_tokens(input_ids)  # [B, 1, C], a new tensor: updated in place
        cos, sin = rope_cos_sin(torch.tensor(positions), c.head_dim, c.rope_theta, x.dtype)  # [B, D]
        bufs, new_rows = [], []
        for row, pos in zip(rows, positions):
            row_bufs = [kv_room(t, 1, limit) for state in row for t in state]
            # Marked written before the next row asks: a row whose cache is another's (a fork)
            # then gets a copy instead of the same buffer, as the per-op path's row loop does.
            new_rows.append([(kv_filled(row_bufs[2 * i], pos + 1), kv_filled(row_bufs[2 * i + 1], pos + 1))
                             for i in range(L)])
            bufs += row_bufs
        ops.bitnet_decode_(x, *fused, bufs, cos, sin, positions, c.num_attention_heads, c.num_key_value_heads,
                           c.intermediate_size, c.rms_norm_eps)
        if batch:
            return x, ModelCache([[new_rows[r][i] for r in range(B)] for i in range(L)], [p + 1 for p in positions])
        return x, ModelCache(new_rows[0], positions[0] + 1)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                cache: ModelCache | None = None, use_cache: bool = False, logits_to_keep: int = 0) -> CausalLMOutput:
        """input_ids [B, T] at positions cache.pos..; labels [B, T] already shifted (-100 skipped).
        logits_to_keep > 0: logits of the last that many positions only (transformers' meaning),
        so a prefill does not pay the [T, V] LM head."""
        use_cache = use_cache or cache is not None
        if cache is not None and labels is None and (fast := self._decode_fused(input_ids, cache)) is not None:
            x, new_cache = fast
            return CausalLMOutput(self.lm_head(self.norm(x)).float(), None, new_cache)
        pos = cache.pos if cache is not None else 0
        states = cache.states if cache is not None else [None] * len(self.layers)
        check_context(pos, input_ids.shape[1], self.config.max_position_embeddings)
        x = self.embed_tokens(input_ids)  # [B, T, C]
        if isinstance(pos, list):  # a row batch: one token per row, each at its own position
            positions = torch.tensor(pos, device=x.device).view(-1, 1, 1)  # cos, sin [B, 1, 1, D]
        else:
            positions = torch.arange(pos, pos + input_ids.shape[1], device=x.device)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        new_states = []
        for layer, state in zip(self.layers, states):
            x, state = layer(x, cos, sin, state)
            new_states.append(state if use_cache else None)
        if logits_to_keep > 0:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.norm(x)).float()  # [B, T or logits_to_keep, V]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return CausalLMOutput(logits, loss, ModelCache(new_states, next_positions(pos, input_ids.shape[1])) if use_cache else None)


def decode_bytes_per_token(model: nn.Module) -> dict[str, int]:
    """Weight bytes one decode step reads: every ternary layer (BT2 + scales), every norm, the
    whole LM head, one embedding row; and the KV cache bytes each token of context adds."""
    c = model.config
    ternary = sum(m.packed.nbytes + m.w_scale.nbytes + (m.bias.nbytes if m.bias is not None else 0)
                  for m in model.modules() if isinstance(m, PackedTernaryLinear))
    norms = sum(m.weight.nbytes for m in model.modules() if isinstance(m, RMSNorm))
    head = model.lm_head
    head_bytes = head.w_q.nbytes + head.scale.nbytes if isinstance(head, Int8Linear) else head.weight.nbytes
    emb = model.embed_tokens.weight
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * emb.element_size()
    return {"ternary": ternary, "norms": norms, "lm_head": head_bytes, "embedding_row": emb[0].nbytes,
            "total": ternary + norms + head_bytes + emb[0].nbytes, "kv_cache_per_context_token": kv}
