"""The fused one-token decode path (bitttt.nn.decode) against the per-op path it replaces
(BITTTT_FUSED_DECODE=0), the oracle: the same logits, bit for bit."""

from __future__ import annotations

import pytest
import torch

from bitttt.errors import ConfigError
from bitttt.model import BitTTTConfig, BitTTTForCausalLM
from bitttt.nn import decode
from bitttt.nn.bitlinear import LUT16_ENV, TRIT5_ENV, BitLinear
from greedy import decode_greedy  # noqa: E402  (tests/ is on sys.path)

# mixer, config overrides: every TTT layout the fused step has (conv or q/k, gate or none)
VARIANTS = {
    "attention": dict(mixer="attention"),
    "ttt_linear": dict(mixer="ttt_linear", conv_kernel=0),
    "ttt_linear+conv": dict(mixer="ttt_linear", conv_kernel=4),
    "ttt_linear+conv-gate": dict(mixer="ttt_linear", conv_kernel=4, use_gate=False),
    "ttt_mlp+conv": dict(mixer="ttt_mlp", conv_kernel=4),
}


def micro(seed: int = 0, **kw) -> BitTTTForCausalLM:
    torch.manual_seed(seed)
    return BitTTTForCausalLM(BitTTTConfig(vocab_size=320, n_layer=2, n_embd=64, n_head=2, mini_batch=4, **kw)).eval()


def both_paths(model, monkeypatch, ids, steps=19):
    monkeypatch.setenv(decode.FUSED_ENV, "0")
    want = decode_greedy(model, ids, steps)
    monkeypatch.setenv(decode.FUSED_ENV, "1")
    got = decode_greedy(model, ids, steps)
    return got, want


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["packed", "fake-quant", "float-twin"])
def test_fused_decode_equals_the_per_op_path(variant, kind, monkeypatch):
    """The Python fused step, bit for bit (packed models take it where the one-call op does not
    apply, e.g. ttt_mlp; here the op is switched off)."""
    monkeypatch.setattr(decode, "whole_token", lambda *args: None)
    model = micro(**VARIANTS[variant], ternary=kind != "float-twin")
    if kind == "packed":
        model.pack()
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(3))  # 7 + 19: past 6 mini-batches
    (tokens, logits), (want_tokens, want_logits) = both_paths(model, monkeypatch, ids)
    assert tokens == want_tokens
    torch.testing.assert_close(logits, want_logits, atol=0, rtol=0)
    if variant == "attention":  # the fused step ran: its RoPE table exists
        assert "_rope_rotation" in model.blocks[0].mixer.__dict__
    elif kind != "fake-quant":  # the fused step ran: its concatenated projection exists (fake quant: per-op)
        assert "in_proj" in model.blocks[0].mixer.layer.__dict__["_decode_tables"]


def test_fused_projection_follows_a_load(monkeypatch):
    """The concatenated weights are a copy: loading other weights into the packed model rebuilds it."""
    monkeypatch.setattr(decode, "whole_token", lambda *args: None)
    model = micro(mixer="ttt_linear", conv_kernel=4).pack()
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(4))
    decode_greedy(model, ids, 3)  # builds the fused tables from seed 0's weights
    model.load_state_dict(micro(seed=1, mixer="ttt_linear", conv_kernel=4).pack().state_dict())
    (tokens, logits), (want_tokens, want_logits) = both_paths(model, monkeypatch, ids)
    assert tokens == want_tokens
    torch.testing.assert_close(logits, want_logits, atol=0, rtol=0)


@pytest.mark.parametrize("layout", ["bt2", "trit5"])
def test_fused_linear_is_each_layer(layout, monkeypatch):
    monkeypatch.setenv(TRIT5_ENV, "1" if layout == "trit5" else "0")
    monkeypatch.setenv(LUT16_ENV, "0")
    torch.manual_seed(0)
    layers = [BitLinear(96, n).pack() for n in (64, 32, 80)]
    x = torch.randn(1, 96)
    fused_linear = decode.FusedLinear(layers)
    assert (fused_linear.trit5 is not None) == (layout == "trit5")  # the decode layout each layer has
    torch.testing.assert_close(fused_linear(x), torch.cat([layer(x) for layer in layers], -1), rtol=0, atol=0)
    floats = [torch.nn.Linear(96, n, bias=n != 32) for n in (64, 32, 80)]  # the float twin's, a bias missing
    with torch.no_grad():
        torch.testing.assert_close(decode.FusedLinear(floats)(x), torch.cat([f(x) for f in floats], -1))


def test_the_switch_rejects_other_values(monkeypatch):
    monkeypatch.setenv(decode.FUSED_ENV, "maybe")
    with pytest.raises(ConfigError, match=decode.FUSED_ENV):
        decode.fused_decode_setting()
    monkeypatch.setenv(decode.FUSED_ENV, "off")
    assert not decode.fused_decode_setting()
