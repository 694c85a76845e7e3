"""bitttt.integrations.transformers.patch: transformers' BitNet model on bitttt's kernel."""

from __future__ import annotations

import copy

import pytest
import torch

from bitttt.integrations.transformers import TernaryLinear, patch

LOGIT_ATOL = 1e-4  # as tests/hf/test_loader.py: exact integer sums, epilogue and accumulation-order rounding


def run(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("which", ["packed", "bf16"])
def test_patched_logits_and_generate_equal_unpatched(tiny, design_rounding, which):
    ref_model = tiny.hf_model(which)
    patched = patch(copy.deepcopy(ref_model))
    kinds = {type(m) for m in patched.modules()}
    assert TernaryLinear in kinds and not any(k.__name__ in ("BitLinear", "AutoBitLinear") for k in kinds)
    ids = torch.randint(0, 290, (2, 24), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(run(patched, ids), run(ref_model, ids), atol=LOGIT_ATOL, rtol=0)
    kw = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(patched.generate(ids[:1, :6], **kw), ref_model.generate(ids[:1, :6], **kw))


def test_patch_refuses_a_model_without_bitnet_layers(tiny):
    from transformers import BitNetForCausalLM

    plain = BitNetForCausalLM(copy.deepcopy(tiny.hf_model("packed").config.__class__(
        **{k: v for k, v in tiny.hf_model("packed").config.to_dict().items() if k != "quantization_config"})))
    with pytest.raises(ValueError, match="no transformers BitLinear"):
        patch(plain)
