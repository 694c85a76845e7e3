"""Config fields away from their defaults (rope_theta, rms_norm_eps, head_dim: see FIELDS)
reach bitttt's shared RoPE, RMSNorm and attention as transformers reads them: same logits, same
greedy tokens, with cached decoding."""

from __future__ import annotations

import pytest
import torch

from bitttt.generate import SamplingParams, generate_ids
from bitttt.hf import load_bitnet
from hf_folders import tiny_config, write_packed  # noqa: E402  (tests/hf is on sys.path)
from test_loader import LOGIT_ATOL, hf_greedy  # noqa: E402

# Each differs from transformers' default (rope_theta 500000, rms_norm_eps 1e-5, head_dim 64/4 = 16)
# by enough to move the logits far past LOGIT_ATOL if bitttt ignored it.
# head_dim != hidden_size / num_attention_heads is not here: bitttt.hf.loader.read_config refuses
# it ("bad sizes num_attention_heads * head_dim != hidden_size"), though transformers accepts it.
FIELDS = {"rope_theta": {"rope_theta": 37.0}, "rms_norm_eps": {"rms_norm_eps": 0.5},
          "both": {"rope_theta": 37.0, "rms_norm_eps": 0.5}}


@pytest.fixture(scope="module", params=sorted(FIELDS))
def folder(request, tmp_path_factory):
    from transformers import BitNetForCausalLM

    torch.manual_seed(2)
    config = tiny_config(**FIELDS[request.param])
    model = BitNetForCausalLM(config).float().eval()
    path = str(tmp_path_factory.mktemp("fields") / request.param)
    with torch._dynamo.config.patch(disable=True):
        write_packed(path, model)
        hf = BitNetForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, hf


def test_logits_match_transformers(folder):
    path, hf = folder
    ids = torch.randint(0, 290, (2, 48), generator=torch.Generator().manual_seed(5))
    got_model = load_bitnet(path, dtype=torch.float32)
    with torch.no_grad():
        ref = hf(ids).logits.float()
        got = got_model(ids).logits
    torch.testing.assert_close(got, ref, atol=LOGIT_ATOL, rtol=0)


def test_cached_greedy_tokens_match_transformers(folder):
    path, hf = folder
    prompt = [256, 17, 42, 99, 3, 250, 8]
    want = hf_greedy(hf, prompt, 24)
    got = list(generate_ids(load_bitnet(path, dtype=torch.float32), prompt,
                            SamplingParams(max_new_tokens=24, temperature=0)))
    assert got == want
