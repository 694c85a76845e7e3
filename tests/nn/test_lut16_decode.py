"""The lut16 decode path of packed models (bitttt/nn/bitlinear.py packed_linear, BITTTT_LUT16).

The oracle is the BT2 kernel path of the same weights (BITTTT_LUT16=0): decode through lut16
must give the same logits bit for bit, and the layout must never reach a state_dict or an export.
"""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from bitttt import _native, ops
from bitttt.checkpoint import MODEL_FILE, load_model
from bitttt.errors import ConfigError
from bitttt.export import export
from bitttt.nn import decode
from bitttt.nn.bitlinear import LUT16_ENV, BitLinear, lut16_setting

pytestmark = pytest.mark.skipif("avx2" not in _native._C.available_isas(), reason="no AVX2 kernels here")

AVX2 = pytest.mark.parametrize("isa", ["avx2"], indirect=True)


def lut16_layers(model: torch.nn.Module) -> list[BitLinear]:
    return [m for m in model.modules() if isinstance(m, BitLinear) and m.lut16 is not None]


def count_calls(monkeypatch, name: str) -> list[int]:
    """Counts calls of ops.<name> (what packed_linear calls) and returns the token count of each."""
    calls: list[int] = []
    real = getattr(ops, name)

    def counted(x, *args):
        calls.append(x.numel() // x.shape[-1])
        return real(x, *args)

    monkeypatch.setattr(ops, name, counted)
    return calls


def greedy_decode(model, prompt: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], list[int]]:
    """Logits of the prefill and of each one-token decode step, and the greedy tokens."""
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        logits, tokens = [out.logits[:, -1]], []
        for _ in range(steps):
            token = int(logits[-1].argmax())
            tokens.append(token)
            out = model(torch.tensor([[token]]), cache=out.cache)
            logits.append(out.logits[:, -1])
    return logits, tokens


def load(folder: str, monkeypatch, setting: str):
    monkeypatch.setenv(LUT16_ENV, setting)
    model, _, _ = load_model(folder, pack=True)
    return model


@AVX2
@pytest.mark.parametrize("from_export", [False, True])
def test_lut16_decode_is_bit_identical_to_bt2(isa, monkeypatch, tmp_path, make_tiny_model, from_export):
    # the layer-by-layer step, whose GEMVs are ops calls to count (the one-call decode op runs
    # the same kernels inside it: tests/model/test_own_model_decode_op.py compares its layouts)
    monkeypatch.setattr(decode, "whole_token", lambda *args: None)
    folder = make_tiny_model(tmp_path / "model", seed=3)
    if from_export:  # packed on disk: load_state_dict copies into `packed` after pack()
        export(folder, str(tmp_path / "export"))
        folder = str(tmp_path / "export")
    bt2 = load(folder, monkeypatch, "0")
    lut = load(folder, monkeypatch, "1")
    assert not lut16_layers(bt2)
    assert lut16_layers(lut) and all(m.lut16 is not None for m in lut.modules() if isinstance(m, BitLinear))

    prompt = torch.tensor([[72, 101, 108, 108, 111, 32, 119]])
    want_logits, want_tokens = greedy_decode(bt2, prompt, steps=8)
    lut16_calls = count_calls(monkeypatch, "ternary_linear_lut16")
    bt2_calls = count_calls(monkeypatch, "ternary_linear")
    got_logits, got_tokens = greedy_decode(lut, prompt, steps=8)

    assert got_tokens == want_tokens
    for step, (got, want) in enumerate(zip(got_logits, want_logits)):
        assert torch.equal(got, want), f"logits differ at step {step}"
    assert lut16_calls and set(lut16_calls) == {1}  # decode steps went through lut16, one token each
    assert bt2_calls and min(bt2_calls) > 1  # and only the prefill through BT2


@AVX2
def test_lut16_never_saved(isa, monkeypatch, tmp_path, make_tiny_model):
    folder = make_tiny_model(tmp_path / "model")
    model = load(folder, monkeypatch, "1")
    assert lut16_layers(model)
    assert not [k for k in model.state_dict() if "lut16" in k]
    out = export(folder, str(tmp_path / "export"))
    saved = safetensors.torch.load_file(tmp_path / "export" / MODEL_FILE)
    assert saved and not [k for k in saved if "lut16" in k], out


def packed_layer(seed: int = 0) -> BitLinear:
    torch.manual_seed(seed)
    return BitLinear(300, 40)


@pytest.mark.parametrize("isa", [i for i in _native._C.available_isas() if i != "avx2"] or ["scalar"],
                         indirect=True)
def test_auto_builds_lut16_only_for_avx2(isa, monkeypatch):
    monkeypatch.delenv(LUT16_ENV, raising=False)
    assert packed_layer().pack().lut16 is None  # auto, another kernel set: BT2 only
    monkeypatch.setenv(LUT16_ENV, "1")
    assert packed_layer().pack().lut16 is not None


@AVX2
@pytest.mark.parametrize("setting, built", [("auto", True), ("", True), ("0", False), ("off", False), ("1", True)])
def test_setting_under_avx2(isa, monkeypatch, setting, built):
    monkeypatch.setenv(LUT16_ENV, setting)
    layer = packed_layer().pack()
    assert (layer.lut16 is not None) == built
    assert "lut16" not in layer.state_dict()
    x = torch.randn(1, 300)
    assert torch.equal(layer(x), ops.ternary_linear(x, layer.packed, layer.w_scale))
    x = torch.randn(2, 5, 300)  # prefill shape: BT2, same output either way
    assert torch.equal(layer(x), ops.ternary_linear(x, layer.packed, layer.w_scale))


@AVX2
def test_lut16_follows_loaded_weights(isa, monkeypatch):
    monkeypatch.setenv(LUT16_ENV, "1")
    source, target = packed_layer(1).pack(), packed_layer(2).pack()
    target.load_state_dict(source.state_dict())
    x = torch.randn(1, 300)
    assert torch.equal(target(x), source(x))


def test_bad_setting(monkeypatch):
    monkeypatch.setenv(LUT16_ENV, "maybe")
    with pytest.raises(ConfigError, match="BITTTT_LUT16='maybe'"):
        lut16_setting()


def test_wrappers_match_the_ops():
    torch.manual_seed(0)
    q = torch.randint(-1, 2, (20, 300), dtype=torch.int8)
    packed = ops.pack_ternary(q)
    layout = ops.ternary_repack_lut16(packed)
    assert layout.shape == (32, packed.shape[1])
    x_q = torch.randint(-128, 128, (3, 300), dtype=torch.int8)
    assert torch.equal(ops.ternary_matmul_int8_lut16(x_q, layout, 20), x_q.int() @ q.int().T)
    x, w_scale = torch.randn(1, 300), torch.rand(20) + 0.5
    assert torch.equal(ops.ternary_linear_lut16(x, layout, w_scale), ops.ternary_linear(x, packed, w_scale))
    meta = ops.ternary_linear_lut16(x.to("meta"), layout.to("meta"), w_scale.to("meta"))
    assert meta.shape == (1, 20) and meta.device.type == "meta"
