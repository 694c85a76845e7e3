"""A bitttt BitNet model as a GGUF file for llama.cpp (arch "bitnet", ternary layers in TQ2_0),
written with the `gguf` package: the benchmark's llama.cpp contender runs the very weights
bitttt runs.

TQ2_0 (ggml-quants.c): blocks of 256 weights, 64 bytes of 2-bit codes (q + 1) and one float16
scale d, 66 bytes. Byte 32c + m of a block holds, in bits 2l..2l+1, weight 128c + 32l + m: the
same bytes as BT2 (design §2) for rows of a multiple of 256 weights. Every block of a layer gets that layer's per-tensor scale s_w, so the file dequantizes to the
same q · s_w bitttt multiplies; the scale must be a float16 value for that to be exact, and
the writer refuses one that is not.

Differences of llama.cpp's "bitnet" graph (src/models/bitnet.cpp) from BitNet b1.58 2B4T, which
do not change what a decoded token reads: the FFN gate is SiLU, not relu²; q/k/v and gate/up are
separate matmuls (bitttt fuses them); activations are quantized per 256-block (Q8_K), not per
token; the LM head is always the token embedding (tied), so an untied model is refused.

The embedding, which is also the head, is written as `head_type`: "bf16" (a bfloat16 model's
own bytes), "f16", "f32", or "q8_0" (blocks of 32 int8 and one float16 scale, 34 bytes: the
bytes per token of bitttt's int8 head), so a comparison can give both engines equal head bytes.
"""

from __future__ import annotations

import numpy as np
import torch

from bitttt.errors import ConfigError
from bitttt.hf.bitnet import BitNetForCausalLM, PackedTernaryLinear

ARCH = "bitnet"
QK_K, TQ2_0_BLOCK_BYTES = 256, 66
QK8_0, Q8_0_BLOCK_BYTES = 32, 34
HEAD_TYPES = ("bf16", "f16", "f32", "q8_0")


def tq2_0_bytes(packed: torch.Tensor, K: int, scale: float) -> np.ndarray:
    """BT2 rows uint8 [N, K/4] (K a multiple of 256) -> TQ2_0 uint8 [N, K / 256 * 66]. BT2's
    run of 128 weights (k = 128 r + 32 s + m in bits 2s of byte 32 r + m) is TQ2_0's half block,
    so each block's 64 code bytes are BT2's bytes as they are; only the scale is added."""
    N = packed.shape[0]
    if K % QK_K or packed.shape[1] * 4 != K:
        raise ConfigError(f"TQ2_0 needs rows of a multiple of {QK_K} weights, got {K}")
    d = np.float16(scale)
    if float(d) != scale:
        raise ConfigError(f"scale {scale!r} is not a float16 value: TQ2_0 would change the weights",
                          hint="give the layers float16-exact scales (powers of two are)")
    qs = packed.contiguous().numpy().reshape(N, K // QK_K, QK_K // 4)  # [N, block, 64]
    dd = np.broadcast_to(np.frombuffer(d.tobytes(), dtype=np.uint8), (N, K // QK_K, 2))
    return np.concatenate((qs, dd), axis=2).reshape(N, -1)


def _split(layer: PackedTernaryLinear, sizes: list[int]) -> list[tuple[torch.Tensor, int, float]]:
    """A (fused) BT2 layer -> (packed rows, K, s_w) per part; each part must have one scale."""
    out, start = [], 0
    for n in sizes:
        s = layer.w_scale[start:start + n]
        if not torch.equal(s, s[:1].expand(n)):
            raise ConfigError("a ternary layer with per-row scales has no TQ2_0 form (one scale per block)")
        out.append((layer.packed[start:start + n], layer.in_features, float(s[0])))
        start += n
    return out


def _bf16_bytes(t: torch.Tensor) -> np.ndarray:
    """A bfloat16 [R, C] tensor as its raw bytes uint8 [R, 2C] (numpy has no bfloat16)."""
    return t.contiguous().view(torch.uint8).numpy()


def q8_0_bytes(t: torch.Tensor) -> np.ndarray:
    """A float [R, C] matrix (C a multiple of 32) as Q8_0 uint8 [R, C / 32 * 34], ggml's reference
    rule (quantize_row_q8_0_ref): per block of 32, d = absmax / 127, q = roundf(x / d) (ties away
    from zero), stored as float16 d then 32 int8."""
    R, C = t.shape
    if C % QK8_0:
        raise ConfigError(f"Q8_0 needs rows of a multiple of {QK8_0} values, got {C}")
    out = np.empty((R, C // QK8_0, Q8_0_BLOCK_BYTES), dtype=np.uint8)
    for i in range(0, R, 4096):  # in row blocks: no float32 copy of a whole 128k-row head
        x = t[i:i + 4096].detach().float().reshape(-1, C // QK8_0, QK8_0)
        d = x.abs().amax(dim=-1, keepdim=True) / 127
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        y = x * inv
        q = (torch.sign(y) * torch.floor(y.abs() + 0.5)).to(torch.int8)
        out[i:i + 4096, :, :2] = d.to(torch.float16).numpy().view(np.uint8)
        out[i:i + 4096, :, 2:] = q.numpy().view(np.uint8)
    return out.reshape(R, -1)


def _head_tensor(emb: torch.Tensor, head_type: str):
    """(array, raw_dtype or None) of the embedding/head in head_type."""
    import gguf

    if head_type == "bf16":
        return _bf16_bytes(emb.bfloat16()), gguf.GGMLQuantizationType.BF16
    if head_type == "f16":
        return emb.to(torch.float16).numpy(), None
    if head_type == "f32":
        return emb.float().numpy(), None
    return q8_0_bytes(emb), gguf.GGMLQuantizationType.Q8_0


def byte_vocab(w, vocab_size: int, bos: int | None, eos_ids: list[int]) -> None:
    """A SentencePiece-style ("llama") vocabulary that any text tokenizes into: id 0 <unk>, ids
    1..256 the bytes (<0x00>..<0xFF>, byte fallback), BOS and EOS as control tokens, every other
    id a placeholder <tN>. A random-weight bench model has no real tokenizer; this one gives
    llama.cpp text to read and write at the model's vocabulary size."""
    import gguf

    T = gguf.TokenType
    tokens = [f"<t{i}>" for i in range(vocab_size)]
    types = [T.NORMAL] * vocab_size
    tokens[0], types[0] = "<unk>", T.UNKNOWN
    for b in range(256):
        tokens[1 + b], types[1 + b] = f"<0x{b:02X}>", T.BYTE
    for i in [bos, *eos_ids]:
        if i is not None and 256 < i < vocab_size:
            tokens[i], types[i] = f"<ctl{i}>", T.CONTROL
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * vocab_size)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    if bos is not None:
        w.add_bos_token_id(bos)
    if eos_ids:
        w.add_eos_token_id(eos_ids[0])
    w.add_add_bos_token(False)


def write_gguf(model: BitNetForCausalLM, path: str, head_type: str | None = None,
               tokenizer: str = "none") -> dict[str, int]:
    """Writes `model` as a llama.cpp GGUF at `path`; returns the bytes of each tensor kind and the
    bytes one decoded token reads (all linears, norms, the whole tied head, one embedding row).
    head_type: the embedding/head's GGUF type (HEAD_TYPES; None: bf16 for a bfloat16 model, else f32).
    tokenizer: "none" (token ids in, logits out) or "bytes" (byte_vocab: text in and out, for
    llama.cpp's servers, which tokenize and detokenize every request)."""
    import gguf

    c = model.config
    emb = model.embed_tokens.weight.detach()
    head_type = head_type or ("bf16" if emb.dtype == torch.bfloat16 else "f32")
    if head_type not in HEAD_TYPES:
        raise ConfigError(f"GGUF head type {head_type!r}: expected one of {', '.join(HEAD_TYPES)}")
    if not c.tie_word_embeddings:
        raise ConfigError("llama.cpp's bitnet graph ties the LM head to the embedding; this model is untied")
    if c.attention_bias:
        raise ConfigError("attention biases have no place in llama.cpp's bitnet tensors")
    w = gguf.GGUFWriter(path, ARCH)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_TQ2_0)
    w.add_string("bitttt.head_type", head_type)
    if tokenizer == "bytes":
        byte_vocab(w, c.vocab_size, c.bos_token_id, c.eos_ids)
    elif tokenizer == "none":
        w.add_tokenizer_model("none")  # token ids in, logits out: llama.cpp adds dummy tokens
    else:
        raise ConfigError(f"GGUF tokenizer {tokenizer!r}: expected none or bytes")
    sizes = {"ternary": 0, "norms": 0, "embedding": 0}

    def norm(name: str, t: torch.Tensor) -> None:
        a = t.detach().float().numpy()  # llama.cpp wants float32 norms; bf16 -> f32 is exact
        w.add_tensor(name, a)
        sizes["norms"] += a.nbytes

    def ternary(name: str, packed: torch.Tensor, K: int, s: float) -> None:
        b = tq2_0_bytes(packed, K, s)
        w.add_tensor(name, b, raw_dtype=gguf.GGMLQuantizationType.TQ2_0)
        sizes["ternary"] += b.nbytes

    a, raw = _head_tensor(emb, head_type)
    w.add_tensor("token_embd.weight", a, raw_dtype=raw)
    sizes["embedding"] = a.nbytes
    norm("output_norm.weight", model.norm.weight)
    H, Hkv, D, I = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size
    for i, layer in enumerate(model.layers):
        p, attn, mlp = f"blk.{i}", layer.self_attn, layer.mlp
        norm(f"{p}.attn_norm.weight", layer.input_layernorm.weight)
        for part, t in zip(("attn_q", "attn_k", "attn_v"), _split(attn.qkv, [H * D, Hkv * D, Hkv * D])):
            ternary(f"{p}.{part}.weight", *t)
        norm(f"{p}.attn_sub_norm.weight", attn.attn_sub_norm.weight)
        ternary(f"{p}.attn_output.weight", *_split(attn.o_proj, [c.hidden_size])[0])
        norm(f"{p}.ffn_norm.weight", layer.post_attention_layernorm.weight)
        for part, t in zip(("ffn_gate", "ffn_up"), _split(mlp.gate_up, [I, I])):
            ternary(f"{p}.{part}.weight", *t)
        norm(f"{p}.ffn_sub_norm.weight", mlp.ffn_sub_norm.weight)
        ternary(f"{p}.ffn_down.weight", *_split(mlp.down_proj, [c.hidden_size])[0])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    row = sizes["embedding"] // c.vocab_size
    return {**sizes, "decode_bytes_per_token": sizes["ternary"] + sizes["norms"] + sizes["embedding"] + row}
