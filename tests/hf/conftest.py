"""Tiny BitNet b1.58 folders in Hugging Face's own formats, written with transformers, and the
transformers models that read them (the oracle for bitttt's loader and for patch()).

transformers is imported once per session (it takes ~10 s); the folders are built once.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
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


class TinyFolders:
    """Paths of the tiny folders and transformers' models over them (float32, eager)."""

    def __init__(self, root: str) -> None:
        import transformers
        from transformers import BitNetForCausalLM

        self.transformers = transformers
        torch.manual_seed(0)
        model = BitNetForCausalLM(tiny_config()).float().eval()
        self.packed, self.bf16, self.tied, self.sharded, self.auto = (
            os.path.join(root, n) for n in ("packed", "bf16", "tied", "sharded", "auto"))
        write_packed(self.packed, model)
        write_packed(self.sharded, model, max_shard_size="40KB")
        write_packed(self.auto, model, linear_class="autobitlinear")
        model.to(torch.bfloat16).save_pretrained(self.bf16)  # the master weights, as HF publishes them
        write_tokenizer(self.bf16)
        torch.manual_seed(1)
        write_packed(self.tied, BitNetForCausalLM(tiny_config(tie_word_embeddings=True)).float().eval())
        self._hf = {}

    def hf_model(self, which: str):
        """transformers running the folder in float32; the bf16 master weights through its online
        absmean quantization (AutoBitLinear), as a BitNet model is meant to run them."""
        if which not in self._hf:
            from transformers import BitNetForCausalLM

            config = BitNetForCausalLM.config_class.from_pretrained(getattr(self, which))
            if which == "bf16":  # as if config.json said so: transformers refuses online quantization otherwise
                config.quantization_config = ONLINE
            self._hf[which] = BitNetForCausalLM.from_pretrained(getattr(self, which), config=config,
                                                                dtype=torch.float32).eval()
        return self._hf[which]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyFolders:
    from transformers.utils import logging

    logging.set_verbosity_error()  # "no GPU, unpacking will be slow" and progress bars
    logging.disable_progress_bar()
    with torch._dynamo.config.patch(disable=True):
        return TinyFolders(str(tmp_path_factory.mktemp("hf")))


@pytest.fixture(autouse=True)
def eager_transformers():
    """transformers wraps BitNet's quantization in torch.compile; eager is the same math and
    spares an inductor build per shape (tens of seconds on CPU)."""
    with torch._dynamo.config.patch(disable=True):
        yield


@pytest.fixture
def design_rounding(monkeypatch):
    """transformers' activation scale is `127 / absmax`, which torch computes as 127 * (1/absmax):
    one rounding more than the true division of docs/design.md §2 that bitttt's kernels use. Where
    x * s_x lands on an exact .5 (common with bf16 data) the two round x_q differently. Under this
    fixture transformers divides truly; every other operation is its own."""
    from transformers.integrations import bitnet

    def act_quant(ctx, activation):
        a = activation.float()
        scale = torch.full_like(a[..., :1], 127.0) / a.abs().max(dim=-1, keepdim=True).values.clamp_(min=1e-5)
        return ((a * scale).round().clamp(-128, 127) / scale).to(activation.dtype)

    def activation_quant(self, x, num_bits=8):
        scale = torch.full_like(x[..., :1], 127.0) / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
        return (x * scale).round().clamp(-128, 127).to(torch.int8), scale

    monkeypatch.setattr(bitnet.ActQuant, "forward", staticmethod(act_quant))
    monkeypatch.setattr(bitnet.BitLinear, "activation_quant", activation_quant)
