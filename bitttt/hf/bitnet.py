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

MODEL_TYPE = "bitnet"


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

    def _apply(self, fn, recurse: bool = True):
        # `.to(bfloat16)` converts float buffers; the kernel's w_scale stays float32 (as BitLinear).
        w_scale = self.w_scale
        super()._apply(fn, recurse)
        if self.w_scale.dtype != torch.float32:
            self.w_scale = w_scale.to(self.w_scale.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.ternary_linear(x, self.packed, self.w_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bt2"


class Int8Linear(nn.Module):
    """A float linear as int8 with one scale per output row, for the LM head at decode (it reads
    the whole [V, C] matrix every token): W ≈ w_q * scale[:, None], scale = max|W_row| / 127.
    Activations are quantized per token as the ternary layers do (design §2: s_x = 127 / absmax)
    and meet w_q in an exact int8 GEMM (bitttt's int8_matmul on CPU, int32 sums):
    y = (x_q @ w_q.T) * scale / s_x. On the 2B head at M=1 and 2 threads int8_matmul reads at
    the DRAM's speed (10-16 ms); torch._int_mm took 35-120 ms there and torch's weight-only int8
    GEMM (_weight_int8pack_mm) was 3x slower than float32, its bfloat16 path wrong for small K."""

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

    def _apply(self, fn, recurse: bool = True):
        scale = self.scale
        super()._apply(fn, recurse)
        if self.scale.dtype != torch.float32:
            self.scale = scale.to(self.scale.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.reshape(-1, x.shape[-1]).float()  # [M, K]
        s_x = torch.full_like(xf[:, :1], 127.0) / xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)  # [M, 1]
        x_q = torch.round(xf * s_x).clamp(-128, 127).to(torch.int8)
        if xf.device.type == "cpu":
            acc = ops.int8_matmul(x_q, self.w_q).float()  # exact int32 sums
        else:  # CUDA's _int_mm wants M > 16 and multiples of 8; float32 holds these sums exactly
            acc = x_q.float() @ self.w_q.float().T
        y = acc * self.scale / s_x  # [M, N]
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)


class RMSNorm(nn.Module):
    """transformers' BitNetRMSNorm: normalize in float32, cast back, then scale."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(weight, requires_grad=False), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin [T, D] for rotate-half RoPE (transformers' default rope), in dtype."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    freqs = positions.float()[..., None] * inv_freq  # [T, D/2], or [B, 1, 1, D/2] for positions [B, 1, 1]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; rotate-half form: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def one_token_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for one query per head, the decode step: q [B, H, 1, D], k, v
    [B, H_kv, T, D] -> [B, H, 1, D]. The heads sharing a KV head become that head's G = H / H_kv
    query rows, so it is two small matmuls, in float32: torch's CPU SDPA (a flash kernel with
    its blocking and thread start) cost ~0.65 ms per call at 2B4T's shapes, 30 calls per
    decoded token, and its bfloat16 matmuls on a CPU without native bf16 2-4x the float32 ones
    with the cache's conversion included (0.55 vs 2.1 ms at T = 600)."""
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    qg = q.reshape(B, Hkv, H // Hkv, D).float()  # head h = kv_head * G + g, as enable_gqa's repeat_interleave
    scores = torch.matmul(qg, k.float().transpose(-1, -2)) * D ** -0.5  # [B, Hkv, G, T]
    y = torch.matmul(scores.softmax(dim=-1), v.float())  # [B, Hkv, G, D]
    return y.to(q.dtype).reshape(B, H, 1, D)


KV_MIN_CAPACITY = 256  # positions a KV buffer is first made with beyond what it holds


def append_kv(past: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """past [B, H_kv, T, D] followed by new [B, H_kv, t, D], as a view of a buffer with room to
    grow: a decode step writes its token in place instead of copying the whole cache (torch.cat
    copied 10 MB per 2B4T token at T = 136). The buffer's `kv_filled` mark says how far it is
    written; a cache continued twice from the same point (a fork) copies instead of
    overwriting the other branch's tokens. States stay plain tensors (chat memory stores them)."""
    B, H, T, D = new.shape[0], new.shape[1], 0 if past is None else past.shape[2], new.shape[3]
    base = None if past is None else past._base
    if (base is not None and getattr(base, "kv_filled", -1) == T and base.shape[2] >= T + new.shape[2]
            and past.data_ptr() == base.data_ptr() and base.dtype == new.dtype):
        base[:, :, T:T + new.shape[2]] = new
    else:
        capacity = max(2 * (T + new.shape[2]), T + new.shape[2] + KV_MIN_CAPACITY)
        base = new.new_empty(B, H, capacity, D)
        if past is not None:
            base[:, :, :T] = past
        base[:, :, T:T + new.shape[2]] = new
    base.kv_filled = T + new.shape[2]
    return base[:, :, :T + new.shape[2]]


class Attention(nn.Module):
    """GQA with RoPE; state = (k, v) [B, H_kv, T_past, D] in the model's dtype."""

    def __init__(self, config: BitNetConfig, qkv: PackedTernaryLinear, o_proj: PackedTernaryLinear,
                 sub_norm: RMSNorm) -> None:
        super().__init__()
        self.config = config
        self.qkv, self.o_proj, self.attn_sub_norm = qkv, o_proj, sub_norm

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, state=None):
        c = self.config
        B, T, _ = x.shape
        H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q, k, v = self.qkv(x).split((H * D, Hkv * D, Hkv * D), dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, Hkv, D).transpose(1, 2)  # [B, Hkv, T, D]
        v = v.view(B, T, Hkv, D).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(state, list):  # a row batch (bitttt.generate.decode_rows): one token and cache per row
            return self._attend_rows(q, k, v, state)
        if state is not None:  # a prefill keeps its k, v as they are; the first decode step makes the buffer
            k, v = append_kv(state[0], k), append_kv(state[1], v)
        past = k.shape[2] - T
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        elif T == 1:
            y = one_token_attention(q, k, v)
        else:  # a prefill after a cache: query i sees keys 0..past+i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.o_proj(self.attn_sub_norm(y)), (k, v)

    def _attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, states: list):
        """q [B, H, 1, D], k, v [B, H_kv, 1, D]; row i attends over states[i] ((k, v) [1, H_kv, T_i, D]
        or None) and its new token. The output projection runs once over all rows."""
        B, H, _, D = q.shape
        ys, new_states = [], []
        for i, state in enumerate(states):
            ki, vi = k[i:i + 1], v[i:i + 1]
            if state is not None:
                ki, vi = append_kv(state[0], ki), append_kv(state[1], vi)
            ys.append(one_token_attention(q[i:i + 1], ki, vi))
            new_states.append((ki, vi))
        y = torch.cat(ys).transpose(1, 2).reshape(B, 1, H * D)
        return self.o_proj(self.attn_sub_norm(y)), new_states


class MLP(nn.Module):
    """down(ffn_sub_norm(relu(gate(x))² * up(x))); gate and up are one fused ternary call."""

    def __init__(self, gate_up: PackedTernaryLinear, down: PackedTernaryLinear, sub_norm: RMSNorm) -> None:
        super().__init__()
        self.gate_up, self.down_proj, self.ffn_sub_norm = gate_up, down, sub_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down_proj(self.ffn_sub_norm(torch.square(F.relu(gate)) * up))


class DecoderLayer(nn.Module):
    def __init__(self, attn: Attention, mlp: MLP, input_norm: RMSNorm, post_attn_norm: RMSNorm) -> None:
        super().__init__()
        self.self_attn, self.mlp = attn, mlp
        self.input_layernorm, self.post_attention_layernorm = input_norm, post_attn_norm

    def forward(self, x, cos, sin, state=None):
        h, state = self.self_attn(self.input_layernorm(x), cos, sin, state)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), state


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
        self.lm_head: nn.Module = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device="meta")
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

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                cache: ModelCache | None = None, use_cache: bool = False, logits_to_keep: int = 0) -> CausalLMOutput:
        """input_ids [B, T] at positions cache.pos..; labels [B, T] already shifted (-100 skipped).
        logits_to_keep > 0: logits of the last that many positions only (transformers' meaning),
        so a prefill does not pay the [T, V] LM head."""
        use_cache = use_cache or cache is not None
        pos = cache.pos if cache is not None else 0
        states = cache.states if cache is not None else [None] * len(self.layers)
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
