"""BitTTTForCausalLM: config checks, the full-precision twin, prefill + decode == one forward,
packed == fake quant (design §2, §4)."""

from __future__ import annotations

import pytest
import torch

from bitttt.errors import ConfigError
from bitttt.model import BitTTTConfig, BitTTTForCausalLM, ModelCache, preset_config
from bitttt.nn.bitlinear import BitLinear

MIXERS = ["attention", "ttt_linear", "ttt_mlp", "ttt_linear+conv"]  # +conv: the causal conv of the Mamba backbone
LOGITS_ATOL = 1e-4  # float32, the same ops in another grouping (cached K/V vs one call)
PACKED_ATOL = 2e-3  # packed kernel vs fake quant: same integers, float epilogue rounding through 2 layers


def micro(mixer: str, **kw) -> BitTTTForCausalLM:
    if mixer.endswith("+conv"):
        mixer, kw["conv_kernel"] = mixer.removesuffix("+conv"), 4
    torch.manual_seed(0)
    return BitTTTForCausalLM(BitTTTConfig(vocab_size=320, n_layer=2, n_embd=64, n_head=2, mixer=mixer,
                                          mini_batch=4, **kw)).eval()


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="valid keys: vocab_size, n_layer"):
        BitTTTConfig.from_dict({"n_layers": 3})
    with pytest.raises(ConfigError, match="mixer"):
        BitTTTConfig(mixer="rnn")
    with pytest.raises(ConfigError, match="multiple of n_head"):
        BitTTTConfig(n_embd=100, n_head=3)


def test_config_round_trip():
    c = preset_config("small", mixer="attention")
    assert BitTTTConfig.from_dict(c.to_dict()) == c
    assert c.to_dict()["model_type"] == "bitttt"


def test_full_precision_twin_has_no_bitlinear():
    assert not any(isinstance(m, BitLinear) for m in micro("attention", ternary=False).modules())
    assert any(isinstance(m, BitLinear) for m in micro("attention").modules())


def test_tied_embeddings():
    m = micro("attention", tie_embeddings=True)
    assert m.lm_head.weight is m.embed.weight


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("split", [1, 5, 13], ids=lambda s: f"prefill{s}")
def test_prefill_then_decode_equals_full_forward(mixer, split):
    model = micro(mixer)
    ids = torch.randint(0, 256, (2, 21))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :split], use_cache=True)
        pieces, cache = [out.logits], out.cache
        for t in range(split, ids.shape[1]):
            out = model(ids[:, t:t + 1], cache=cache)
            pieces.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=LOGITS_ATOL, rtol=0)
    assert cache.pos == ids.shape[1]


@pytest.mark.parametrize("mixer", MIXERS)
def test_two_prefills_equal_one(mixer):
    model = micro(mixer)
    ids = torch.randint(0, 256, (1, 30))
    with torch.no_grad():
        full = model(ids).logits
        a = model(ids[:, :11], use_cache=True)
        b = model(ids[:, 11:], cache=a.cache)
    torch.testing.assert_close(torch.cat((a.logits, b.logits), 1), full, atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("keep", [1, 3])
def test_logits_to_keep_is_the_tail_of_the_full_logits(keep):
    model = micro("ttt_linear")
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        full = model(ids).logits
        tail = model(ids, logits_to_keep=keep).logits
    assert tail.shape == (2, keep, 320)
    torch.testing.assert_close(tail, full[:, -keep:], atol=1e-6, rtol=0)  # the head GEMM at M=2 vs M=18 rounds apart


def test_run_model_computes_the_head_for_the_last_position_only():
    from bitttt.generate import run_model
    model = micro("attention")
    with torch.no_grad():
        out = run_model(model, [[5, 6, 7, 8]], None, use_cache=True)
        full = model(torch.tensor([[5, 6, 7, 8]])).logits
    assert out.logits.shape == (1, 1, 320) and out.cache.pos == 4
    torch.testing.assert_close(out.logits[:, -1], full[:, -1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("mixer", MIXERS)
def test_packed_equals_fake_quant(mixer):
    model = micro(mixer)
    ids = torch.randint(0, 256, (2, 17))
    with torch.no_grad():
        fake = model(ids).logits
        packed = model.pack()(ids).logits
    assert model.is_packed
    torch.testing.assert_close(packed, fake, atol=PACKED_ATOL, rtol=0)


def test_loss_ignores_minus_100():
    model = micro("attention")
    ids = torch.randint(0, 256, (1, 8))
    labels = ids.clone()
    labels[:, :4] = -100
    out = model(ids, labels=labels)
    ref = torch.nn.functional.cross_entropy(out.logits[0, 4:], ids[0, 4:])
    torch.testing.assert_close(out.loss, ref)


def test_backward_reaches_every_parameter():
    model = micro("attention").train()
    ids = torch.randint(0, 256, (2, 16))
    model(ids, labels=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


# ---------------------------------------------------------------------------------------
# Context policy (docs/design.md §6): attention errors at its limit, TTT carries constant state
# ---------------------------------------------------------------------------------------


def test_attention_past_its_position_limit_is_a_clear_error(monkeypatch):
    from bitttt import model as model_module
    from bitttt.nn.attention import ContextFullError

    monkeypatch.setattr(model_module, "ATTENTION_MAX_POSITIONS", 12)
    model = micro("attention")
    with torch.no_grad():
        cache = model(torch.randint(0, 256, (1, 10)), use_cache=True).cache
        for _ in range(2):  # positions 10 and 11: the last two that fit
            cache = model(torch.tensor([[5]]), cache=cache).cache
        with pytest.raises(ContextFullError, match="limit of 12"):
            model(torch.tensor([[5]]), cache=cache)
        with pytest.raises(ContextFullError):
            model(torch.randint(0, 256, (1, 13)))
    k, _ = cache.states[0]
    assert k._base.shape[2] <= 12  # the in-place buffer never holds more than the limit


def test_decode_writes_the_kv_cache_in_place():
    model = micro("attention")
    with torch.no_grad():
        cache = model(torch.randint(0, 256, (1, 6)), use_cache=True).cache
        cache = model(torch.tensor([[1]]), cache=cache).cache  # makes the buffer
        buffer = cache.states[0][0]._base
        for t in range(20):
            cache = model(torch.tensor([[t]]), cache=cache).cache
            assert cache.states[0][0]._base is buffer  # no copy per token (torch.cat made one)
    assert cache.states[0][0].shape[2] == 27


@pytest.mark.parametrize("mixer", ["ttt_linear", "ttt_mlp"])
def test_ttt_state_is_constant_and_unbounded_by_the_attention_limit(monkeypatch, mixer):
    from bitttt import model as model_module

    monkeypatch.setattr(model_module, "ATTENTION_MAX_POSITIONS", 12)

    def state_bytes(cache) -> int:
        tensors = [t for s in cache.states for t in (*s.state, s.conv) if isinstance(t, torch.Tensor)]
        return sum(t.nbytes for t in tensors)

    model = micro(mixer)
    with torch.no_grad():
        cache = model(torch.randint(0, 256, (1, 4)), use_cache=True).cache
        sizes = []
        for t in range(30):
            cache = model(torch.tensor([[t]]), cache=cache).cache
            sizes.append(state_bytes(cache))
    assert cache.pos == 34 and sizes[0] > 0 and len(set(sizes)) == 1
