"""Hugging Face BitNet b1.58 checkpoints (model_type "bitnet") on bitttt's kernels: the model
(bitnet.py), the folder loader (loader.py) and the folder's tokenizer (tokenizer.py).
Nothing here imports transformers; bitttt.integrations.transformers is the bridge the other way.
"""

from __future__ import annotations

from typing import Any

import torch

from bitttt.errors import ConfigError
from bitttt.hf.bitnet import BitNetConfig, BitNetForCausalLM, decode_bytes_per_token
from bitttt.hf.loader import is_hf_folder, load_bitnet, read_config
from bitttt.hf.tokenizer import HFTokenizer, load_hf_tokenizer

__all__ = ["BitNetConfig", "BitNetForCausalLM", "HFTokenizer", "is_hf_folder", "load", "load_bitnet",
           "read_config", "load_hf_tokenizer", "decode_bytes_per_token", "model_info",
           "format_model_info"]


def load(path: str, device: str | torch.device = "cpu", pack: bool | None = None, lm_head: str = "float",
         dtype: torch.dtype | str | None = None) -> tuple[BitNetForCausalLM, HFTokenizer, dict[str, Any]]:
    """checkpoint.load_model's answer for an HF folder: (model, tokenizer, {"path", "sections"}).
    The tokenizer is checked before any weight is read. pack=False is refused: the ternary
    layers of an HF model always run the BT2 kernel."""
    if pack is False:
        raise ConfigError(f"{path}: a Hugging Face BitNet folder runs packed only", hint="drop --no-pack")
    config = read_config(path)
    tokenizer = load_hf_tokenizer(path, config)
    if tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, the model only {config.vocab_size}",
                          hint="the tokenizer.json does not belong to this model")
    model = load_bitnet(path, device, dtype=dtype, lm_head=lm_head)
    # "data.chat": chat (the template) rather than plain text, as for bitttt's own runs.
    return model, tokenizer, {"path": path, "sections": {"data": {"chat": tokenizer.chat_template is not None}}}


def model_info(path: str, lm_head: str = "float") -> dict[str, Any]:
    """What `bitttt info --model` reports for an HF folder: sizes, parameters, bytes per decoded token."""
    if not is_hf_folder(path):
        raise ConfigError(f"{path}: not a Hugging Face BitNet folder (config.json with model_type bitnet)",
                          hint="info --model reads Hugging Face BitNet b1.58 folders")
    model = load_bitnet(path, "cpu", lm_head=lm_head)
    c = model.config
    return {"path": path, "model_type": "bitnet", "layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
            "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "vocab_size": c.vocab_size,
            "tied_embeddings": c.tie_word_embeddings, "dtype": str(model.embed_tokens.weight.dtype).removeprefix("torch."),
            "lm_head": lm_head, "parameters": model.num_params(), "decode_bytes_per_token": decode_bytes_per_token(model)}


def format_model_info(m: dict[str, Any]) -> str:
    """The text lines of `bitttt info --model`."""
    b = m["decode_bytes_per_token"]
    mib = 2 ** 20
    return "\n".join([
        f"model:           {m['path']} (bitnet, {m['layers']} layers, hidden {m['hidden_size']}, "
        f"{m['heads']}/{m['kv_heads']} heads, vocab {m['vocab_size']}, {m['dtype']}"
        f"{', tied embeddings' if m['tied_embeddings'] else ''})",
        f"parameters:      {m['parameters']:,}",
        f"bytes per token: {b['total'] / mib:.2f} MiB read per decoded token (ternary {b['ternary'] / mib:.2f}, "
        f"LM head {b['lm_head'] / mib:.2f} {m['lm_head']}, norms {b['norms'] / mib:.3f}, embedding row "
        f"{b['embedding_row']} B) + {b['kv_cache_per_context_token']} B of KV cache per token of context",
    ])
