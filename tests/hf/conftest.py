"""Tiny BitNet b1.58 folders in Hugging Face's own formats, written with transformers, and the
transformers models that read them (the oracle for bitttt's loader and for patch()).

transformers is imported once per session (it takes ~10 s); the folders are built once.
"""

from __future__ import annotations

import os

import pytest
import torch

from hf_folders import (CHAT_TEMPLATE, ONLINE, SPECIALS, TEXT, quantized_state_dict,  # noqa: F401
                        tiny_config, write_packed, write_tokenizer)


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
