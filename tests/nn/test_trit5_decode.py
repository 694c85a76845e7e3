"""The trit5 decode path of packed BitLinear layers (bitttt/nn/bitlinear.py packed_linear,
BITTTT_TRIT5).

The oracle is the BT2 kernel path of the same weights (BITTTT_TRIT5=0, BITTTT_LUT16=0):
decode through trit5 must give the same logits bit for bit, and the layout must never reach
a state_dict or an export.
"""

from __future__ import annotations

import os
import sys

import pytest
import safetensors.torch
import torch

from bitttt import _native, ops
from bitttt.checkpoint import MODEL_FILE, load_model
from bitttt.errors import ConfigError
from bitttt.export import export
from bitttt.nn import decode
from bitttt.nn.bitlinear import LUT16_ENV, TRIT5_AUTO_ISAS, TRIT5_ENV, BitLinear, trit5_setting

sys.path.insert(0, os.path.dirname(__file__))
from test_lut16_decode import count_calls, greedy_decode  # noqa: E402


def trit5_layers(model: torch.nn.Module) -> list[BitLinear]:
    return [m for m in model.modules() if isinstance(m, BitLinear) and m.trit5 is not None]


def load(folder: str, monkeypatch, setting: str):
    monkeypatch.setenv(LUT16_ENV, "0")
    monkeypatch.setenv(TRIT5_ENV, setting)
    model, _, _ = load_model(folder, pack=True)
    return model


@pytest.mark.parametrize("from_export", [False, True])
def test_trit5_decode_is_bit_identical_to_bt2(isa, monkeypatch, tmp_path, make_tiny_model, from_export):
    # the layer-by-layer step, whose GEMVs are ops calls to count (the one-call decode op runs
    # the same kernels inside it: tests/model/test_own_model_decode_op.py compares its layouts)
    monkeypatch.setattr(decode, "whole_token", lambda *args: None)
    folder = make_tiny_model(tmp_path / "model", seed=3)
    if from_export:  # packed on disk: load_state_dict copies into `packed` after pack()
        export(folder, str(tmp_path / "export"))
        folder = str(tmp_path / "export")
    bt2 = load(folder, monkeypatch, "0")
    t5 = load(folder, monkeypatch, "1")
    assert not trit5_layers(bt2)
    assert all(m.trit5 is not None for m in t5.modules() if isinstance(m, BitLinear)) and trit5_layers(t5)

    prompt = torch.tensor([[72, 101, 108, 108, 111, 32, 119]])
    want_logits, want_tokens = greedy_decode(bt2, prompt, steps=8)
    trit5_calls = count_calls(monkeypatch, "ternary_linear_trit5")
    bt2_calls = count_calls(monkeypatch, "ternary_linear")
    got_logits, got_tokens = greedy_decode(t5, prompt, steps=8)

    assert got_tokens == want_tokens
    for step, (got, want) in enumerate(zip(got_logits, want_logits)):
        assert torch.equal(got, want), f"logits differ at step {step}"
    assert trit5_calls and set(trit5_calls) == {1}  # decode steps went through trit5, one token each
    assert bt2_calls and min(bt2_calls) > 1  # and only the prefill through BT2


def test_trit5_never_saved(monkeypatch, tmp_path, make_tiny_model):
    folder = make_tiny_model(tmp_path / "model")
    model = load(folder, monkeypatch, "1")
    assert trit5_layers(model)
    assert not [k for k in model.state_dict() if "trit5" in k]
    out = export(folder, str(tmp_path / "export"))
    saved = safetensors.torch.load_file(tmp_path / "export" / MODEL_FILE)
    assert saved and not [k for k in saved if "trit5" in k], out


def packed_layer(seed: int = 0) -> BitLinear:
    torch.manual_seed(seed)
    return BitLinear(700, 40)  # K = 700: BT2 pads to 768, trit5 to 960


@pytest.mark.parametrize("setting", ["auto", "", "0", "off", "1", "on"])
def test_setting(isa, monkeypatch, setting):
    monkeypatch.setenv(LUT16_ENV, "0")
    monkeypatch.setenv(TRIT5_ENV, setting)
    layer = packed_layer().pack()
    built = setting in ("1", "on") or (setting in ("auto", "") and isa in TRIT5_AUTO_ISAS)
    assert (layer.trit5 is not None) == built
    assert "trit5" not in layer.state_dict()
    x = torch.randn(1, 700)
    assert torch.equal(layer(x), ops.ternary_linear(x, layer.packed, layer.w_scale))
    x = torch.randn(2, 5, 700)  # prefill shape: BT2, same output either way
    assert torch.equal(layer(x), ops.ternary_linear(x, layer.packed, layer.w_scale))


def test_trit5_follows_loaded_weights(monkeypatch):
    monkeypatch.setenv(TRIT5_ENV, "1")
    source, target = packed_layer(1).pack(), packed_layer(2).pack()
    target.load_state_dict(source.state_dict())
    x = torch.randn(1, 700)
    assert torch.equal(target(x), ops.ternary_linear(x, source.packed, source.w_scale))
    assert torch.equal(target.trit5, source.trit5)


def test_bad_setting(monkeypatch):
    monkeypatch.setenv(TRIT5_ENV, "maybe")
    with pytest.raises(ConfigError, match="BITTTT_TRIT5='maybe'"):
        trit5_setting()

