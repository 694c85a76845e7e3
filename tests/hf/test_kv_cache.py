"""The KV cache grows in place (bitttt.hf.bitnet.append_kv): a cache continued twice from the
same point (a fork) keeps both branches right, and cached decoding equals one full forward."""

import pytest
import torch

from bitttt.hf import load_bitnet


def test_forked_cache_branches_match_full_forwards(tiny):
    model = load_bitnet(tiny.packed, dtype=torch.float32)
    prompt = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        base = model(prompt, use_cache=True).cache
        base = model(torch.tensor([[8]]), cache=base).cache  # the first decode step makes the buffer
        a = model(torch.tensor([[3]]), cache=base)  # writes position 6 in place
        b = model(torch.tensor([[4]]), cache=base)  # the same position again: must not overwrite a's
        a2 = model(torch.tensor([[6]]), cache=a.cache)
        want_a2 = model(torch.tensor([[1, 5, 9, 2, 7, 8, 3, 6]])).logits[:, -1]
        want_b = model(torch.tensor([[1, 5, 9, 2, 7, 8, 4]])).logits[:, -1]
    torch.testing.assert_close(a2.logits[:, -1], want_a2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.logits[:, -1], want_b, rtol=1e-4, atol=1e-4)


def test_positions_past_max_position_embeddings_are_a_clear_error(tiny):
    from bitttt.errors import ConfigError
    from bitttt.generate import SamplingParams, generate_ids
    from bitttt.nn.attention import ContextFullError

    model = load_bitnet(tiny.packed, dtype=torch.float32)
    limit = model.config.max_position_embeddings  # 256 in the tiny folders
    with torch.no_grad():
        cache = model(torch.randint(0, 290, (1, limit - 2)), use_cache=True).cache
        cache = model(torch.tensor([[3]]), cache=cache).cache
        cache = model(torch.tensor([[4]]), cache=cache).cache  # position limit - 1: the last one
        with pytest.raises(ContextFullError, match=f"limit of {limit}"):
            model(torch.tensor([[5]]), cache=cache)
    assert cache.states[0][0]._base.shape[2] <= limit
    with pytest.raises(ConfigError):  # generate stops with the error, not a wrong token
        list(generate_ids(model, [1] * (limit - 3), SamplingParams(max_new_tokens=10, temperature=0)))
