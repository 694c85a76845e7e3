"""Tiny BitNet b1.58 folders in Hugging Face's own formats, written by hand and saved by
transformers: the config, tokenizer and packed-weight writers behind tests/hf/conftest.py's
fixtures, importable by test modules (a module named `conftest` is ambiguous once several test
folders are collected together: tests/serve has one too).
"""

from __future__ import annotations

import json
import os
import shutil

import torch

CHAT_TEMPLATE = ("{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
                 "{{ m['role'] | capitalize }}: {{ m['content'] }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}Assistant: {% endif %}")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
ONLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, hello bitnet", "ternary weights are -1, 0, 1"]


def tiny_config(**overrides):
    from transformers import BitNetConfig

    kw = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1, tie_word_embeddings=False,
              bos_token_id=256, eos_token_id=258)
    return BitNetConfig(**{**kw, **overrides})


def write_tokenizer(folder: str) -> None:
    """A byte-level BPE (Llama 3's kind) with the Llama 3 specials at 256, 257, 258, and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=290, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer=trainer)
    tok.add_special_tokens(SPECIALS)  # after training: ids follow the merges
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": CHAT_TEMPLATE}, f)


def quantized_state_dict(model, linear_class: str) -> dict[str, torch.Tensor]:
    """HF's packed layout made with transformers' own pack_weights: uint8 [N/4, K] + weight_scale,
    1 / mean|W| for BitLinear (which divides by it), mean|W| for AutoBitLinear (which multiplies)."""
    from transformers.integrations.bitnet import pack_weights

    out = {}
    for name, t in model.state_dict().items():
        if name.endswith("_proj.weight"):
            scale = 1.0 / t.float().abs().mean().clamp(min=1e-5)
            out[name] = pack_weights((t.float() * scale).round().clamp(-1, 1).to(torch.int8))
            stored = scale if linear_class == "bitlinear" else 1.0 / scale
            out[name.removesuffix("weight") + "weight_scale"] = stored.reshape(1).to(t.dtype)
        else:
            out[name] = t
    return out


def write_packed(folder: str, model, linear_class: str = "bitlinear", **save_kw) -> None:
    """A packed folder as transformers saves one: written by hand in HF's format, loaded by
    transformers, then save_pretrained (so the files on disk are transformers' own)."""
    from safetensors.torch import save_file
    from transformers import BitNetForCausalLM

    staging = folder + ".staging"
    os.makedirs(staging)
    tensors = quantized_state_dict(model, linear_class)
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    save_file(tensors, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
    d = model.config.to_dict()
    d["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline"}
    with open(os.path.join(staging, "config.json"), "w") as f:
        json.dump(d, f)
    if linear_class == "bitlinear":
        BitNetForCausalLM.from_pretrained(staging, dtype=torch.float32).save_pretrained(folder, **save_kw)
        shutil.rmtree(staging)
    else:  # transformers re-saves AutoBitLinear unpacked; keep its packed input as the folder
        os.replace(staging, folder)
    write_tokenizer(folder)
