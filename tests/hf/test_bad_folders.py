"""Bad Hugging Face folders: one ConfigError naming the problem, exit 2 from the CLI, nothing written."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from bitttt import cli
from bitttt.errors import ConfigError
from bitttt.hf import load, load_bitnet


def broken_copy(tiny, tmp_path, name="bad"):
    dst = tmp_path / name
    shutil.copytree(tiny.packed, dst)
    return str(dst)


def edit_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        d = json.load(f)
    d.update(changes)
    with open(path, "w") as f:
        json.dump(d, f)


def edit_tensors(folder, fn):
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path)


Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


def set_code_3(tensors):
    w = tensors[Q_PROJ].clone()
    w[2, 5] |= 0b11 << 4  # byte-plane 2 of packed row 2: output row 2*16 + 2 = 34
    tensors[Q_PROJ] = w


CASES = {
    "missing config": (lambda f: os.remove(os.path.join(f, "config.json")), None),
    "missing weights": (lambda f: os.remove(os.path.join(f, "model.safetensors")), "no model.safetensors"),
    "missing tokenizer": (lambda f: os.remove(os.path.join(f, "tokenizer.json")), "tokenizer.json: missing"),
    "wrong model_type": (lambda f: edit_config(f, model_type="llama"), "model_type 'llama' is not 'bitnet'"),
    "wrong shape": (lambda f: edit_tensors(f, lambda t: t.update({Q_PROJ: t[Q_PROJ][:8]})),
                    re.escape(f"tensor {Q_PROJ}: shape (8, 64), expected (16, 64)")),
    "wrong dtype": (lambda f: edit_tensors(f, lambda t: t.update({Q_PROJ: t[Q_PROJ].to(torch.int32)})),
                    f"tensor {Q_PROJ}: dtype torch.int32"),
    "norm dtype": (lambda f: edit_tensors(f, lambda t: t.update({"model.norm.weight": t["model.norm.weight"].to(torch.int64)})),
                   "tensor model.norm.weight: dtype torch.int64, expected float"),
    "missing tensor": (lambda f: edit_tensors(f, lambda t: t.pop("model.layers.1.mlp.ffn_sub_norm.weight")),
                       "missing tensor model.layers.1.mlp.ffn_sub_norm.weight"),
    "extra tensor": (lambda f: edit_tensors(f, lambda t: t.update({"model.layers.9.foo": torch.zeros(1)})),
                     "does not account for: model.layers.9.foo"),
    "float weight in packed": (lambda f: edit_tensors(f, lambda t: (t.update({Q_PROJ: torch.randn(64, 64)}),
                                                                    t.pop(Q_PROJ + "_scale"))),
                               f"tensor {Q_PROJ}: a float weight without weight_scale in a packed checkpoint"),
    "code 3": (lambda f: edit_tensors(f, set_code_3), f"tensor {Q_PROJ}: 2-bit code 3 .* at row 34, column 5"),
    "truncated": (lambda f: truncate(os.path.join(f, "model.safetensors")), "not a readable safetensors file"),
}


def truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_folder_is_one_config_error(tiny, tmp_path, case):
    breaker, message = CASES[case]
    folder = broken_copy(tiny, tmp_path)
    breaker(folder)
    before = sorted(os.listdir(folder))
    with pytest.raises(ConfigError, match=message or "") as e:
        load(folder)
    assert "\n" not in str(e.value) and e.value.hint
    assert sorted(os.listdir(folder)) == before


def test_bad_folder_exits_2_from_the_cli(tiny, tmp_path, capsys):
    folder = broken_copy(tiny, tmp_path)
    edit_tensors(folder, set_code_3)
    assert cli.main(["generate", "--model", folder, "--prompt", "the", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "code 3" in err and err.count("\n") == 1


def test_a_code_of_3_is_never_read_as_a_weight(tiny, tmp_path):
    folder = broken_copy(tiny, tmp_path)
    edit_tensors(folder, set_code_3)
    with pytest.raises(ConfigError, match="code 3"):
        load_bitnet(folder)
