"""Bad Hugging Face folders: one ConfigError naming the problem, exit 2 from the CLI, nothing written."""

from __future__ import annotations

import json
import os
import re
import shutil
import time

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


# --- issue 27: every config.json field checked for type and range ----------------------

BAD_FIELDS = {
    "rms_norm_eps text": ({"rms_norm_eps": "x"}, r"rms_norm_eps: expected a number in \(0, 1\], or null, got 'x'"),
    "rms_norm_eps negative": ({"rms_norm_eps": -1}, "rms_norm_eps: expected a number in"),
    "rope_theta 0": ({"rope_theta": 0}, "rope_theta: expected a number > 0"),
    "rope_parameters theta": ({"rope_parameters": {"rope_type": "default", "rope_theta": -5.0}},
                              "rope_parameters.rope_theta: expected a number > 0"),
    "rope_parameters text": ({"rope_parameters": "default"}, "rope_parameters: expected a JSON object"),
    "quantization_config text": ({"quantization_config": "bitnet"}, "quantization_config: expected a JSON object"),
    "tie yes": ({"tie_word_embeddings": "yes"}, "tie_word_embeddings: expected true or false, or null, got 'yes'"),
    "attention_bias 1": ({"attention_bias": 1}, "attention_bias: expected true or false"),
    "vocab fraction": ({"vocab_size": 300.5}, "vocab_size: expected an integer >= 1, got 300.5"),
    "vocab text": ({"vocab_size": "300"}, "vocab_size: expected an integer >= 1"),
    "heads 0": ({"num_attention_heads": 0}, "num_attention_heads: expected an integer >= 1"),
    "kv heads negative": ({"num_key_value_heads": -2}, "num_key_value_heads: expected an integer >= 1"),
    "layers huge": ({"num_hidden_layers": 2**70}, "num_hidden_layers: expected an integer >= 1"),
    "max positions 0": ({"max_position_embeddings": 0}, "max_position_embeddings: expected an integer >= 1"),
    "hidden_act": ({"hidden_act": "gelu"}, "hidden_act: expected one of relu2"),
    "bos text": ({"bos_token_id": "<s>"}, "bos_token_id: expected an integer >= 0"),
    "eos bool": ({"eos_token_id": True}, "eos_token_id: expected an id >= 0, a list of ids or null"),
    "eos list of text": ({"eos_token_id": [1, "x"]}, "eos_token_id: expected an id"),
    "dtype number": ({"torch_dtype": 16}, "torch_dtype: expected a string"),
    "heads do not split": ({"num_attention_heads": 3, "num_key_value_heads": 3},
                           r"num_attention_heads \* head_dim \(3 \* 21\) != hidden_size \(64\)"),
    "quant mode": ({"quantization_config": {"quant_method": "bitnet", "quantization_mode": "weird"}},
                   "quantization_config .* is not supported"),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_a_bad_config_field_is_one_line_naming_field_value_and_expectation(tiny, tmp_path, case):
    changes, message = BAD_FIELDS[case]
    folder = broken_copy(tiny, tmp_path)
    edit_config(folder, **changes)
    with pytest.raises(ConfigError, match=message) as e:
        load(folder)
    assert "\n" not in str(e.value) and "config.json" in str(e.value) and e.value.hint


def test_good_field_spellings_still_load(tiny, tmp_path):
    # 64.0 for 64, null for an optional field: what transformers itself accepts
    folder = broken_copy(tiny, tmp_path)
    edit_config(folder, hidden_size=64.0, head_dim=None, rms_norm_eps=1e-6, tie_word_embeddings=False)
    model, _, _ = load(folder)
    assert model.config.hidden_size == 64 and model.config.head_dim == 16 and model.config.rms_norm_eps == 1e-6


def test_tie_yes_never_builds_a_model(tiny, tmp_path, capsys):
    folder = broken_copy(tiny, tmp_path)
    edit_config(folder, tie_word_embeddings="yes")  # was read as true: the tied model, silently wrong
    assert cli.main(["generate", "--model", folder, "--prompt", "the", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "tie_word_embeddings" in err and err.count("\n") == 1


# --- tokenizer files ------------------------------------------------------------------


def edit_json(path, fn):
    with open(path) as f:
        d = json.load(f)
    fn(d)
    with open(path, "w") as f:
        json.dump(d, f)


def test_a_chat_template_file_that_is_not_utf8_is_a_config_error(tiny, tmp_path):
    folder = broken_copy(tiny, tmp_path)
    edit_json(os.path.join(folder, "tokenizer_config.json"), lambda d: d.pop("chat_template"))
    with open(os.path.join(folder, "chat_template.jinja"), "wb") as f:
        f.write(b"\xff\xfe{{ messages }}\x80")
    with pytest.raises(ConfigError, match="chat_template.jinja: unreadable"):
        load(folder)


def write_word_level(folder, unk_in_vocab: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["the", "quick", "fox", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])}
    if unk_in_vocab:
        vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(folder, "tokenizer.json"))


def test_a_word_level_tokenizer_without_its_unk_token_is_a_config_error(tiny, tmp_path, capsys):
    folder = broken_copy(tiny, tmp_path)
    write_word_level(folder, unk_in_vocab=False)
    _, tok, _ = load(folder)
    assert tok.encode("the quick fox") == [0, 1, 2]
    with pytest.raises(ConfigError, match="cannot encode"):
        tok.encode("the zebra")  # a word not in the vocabulary, and no [UNK] to stand for it
    assert cli.main(["generate", "--model", folder, "--prompt", "the zebra", "--max-new-tokens", "2"]) == 2
    assert "cannot encode" in capsys.readouterr().err


def test_a_word_level_tokenizer_with_its_unk_token_encodes_anything(tiny, tmp_path):
    folder = broken_copy(tiny, tmp_path)
    write_word_level(folder, unk_in_vocab=True)
    _, tok, _ = load(folder)
    assert tok.encode("the zebra") == [0, 6]


# A sentencepiece charsmap tokenizers cannot parse (it panics while loading), and one it parses
# and then indexes out of bounds with (it panics on every encode).
PANICS = {"at load": {"type": "Precompiled", "precompiled_charsmap": "AAAA"},
          "at encode": {"type": "Precompiled", "precompiled_charsmap": "AQAAAAAAAAA="}}


@pytest.mark.parametrize("when", list(PANICS))
def test_a_tokenizer_that_panics_in_rust_is_a_config_error(tiny, tmp_path, when, capsys):
    # tokenizers raises pyo3's PanicException, a BaseException that `except Exception` missed
    folder = broken_copy(tiny, tmp_path)
    edit_json(os.path.join(folder, "tokenizer.json"), lambda d: d.update(normalizer=PANICS[when]))
    with pytest.raises(ConfigError, match="PanicException") as e:
        _, tok, _ = load(folder)
        tok.encode("hello world")
    assert "\n" not in str(e.value)
    assert cli.main(["generate", "--model", folder, "--prompt", "the", "--max-new-tokens", "2"]) == 2
    assert "PanicException" in capsys.readouterr().err


# --- chat templates: a time and size budget --------------------------------------------

LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HOSTILE_TEMPLATES = {
    "nested loops": (LOOPS, "took longer than"),
    "huge string": ("{{ 'x' * 10000000000 }}", "'\\*' would build"),
    "huge string, folded": ("{% set s = 'x' * 1000000 %}{{ s * 1000 }}", "'\\*' would build"),
    "huge list": ("{{ ([1] * 100000000) | length }}", "'\\*' would build"),
    "huge power": ("{{ 7 ** 1000000000 }}", "'\\*\\*' with exponent"),
    "huge ljust": ("{{ 'x'.ljust(4000000000) }}", "needs more than|longer than|took longer"),
    "output loop": ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "output longer than"),
    "raise_exception": ("{{ raise_exception('no system role') }}", "no system role"),
}


@pytest.fixture
def hf_tokenizer(tiny):
    from bitttt.hf.tokenizer import TemplateRenderer

    _, tok, _ = load(tiny.packed)
    tok._renderer = TemplateRenderer(deadline_s=2.0)
    yield tok
    tok._renderer.close()


@pytest.mark.parametrize("case", list(HOSTILE_TEMPLATES))
def test_a_hostile_chat_template_is_an_error_within_its_budget(hf_tokenizer, case):
    template, message = HOSTILE_TEMPLATES[case]
    good = hf_tokenizer.chat_template
    hf_tokenizer.chat_template = template
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=message) as e:
        hf_tokenizer.render_chat([{"role": "user", "content": "hi"}], True)
    assert time.monotonic() - t0 < 30  # the 2 s deadline plus a busy machine's start-up; it was hours
    assert "\n" not in str(e.value) and e.value.hint
    hf_tokenizer.chat_template = good  # the next turn renders (a fresh child where the last was killed)
    assert hf_tokenizer.render_chat([{"role": "user", "content": "hi"}], True) == \
        "<|begin_of_text|>User: hi<|eot_id|>Assistant: "


def test_the_renderer_matches_jinja2_itself(hf_tokenizer):
    """The oracle is jinja2's sandbox rendered in-process as transformers sets it up."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ünïcode \u202e {{ x }}"},
                {"role": "assistant", "content": "ok"}]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    expected = env.from_string(hf_tokenizer.chat_template).render(messages=messages, add_generation_prompt=True,
                                                    bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    assert hf_tokenizer.render_chat(messages, True) == expected


def test_a_looping_template_answers_an_error_and_the_chat_server_goes_on(tiny, tmp_path):
    import io
    import threading

    from bitttt.chat_server import chat_jsonl
    from bitttt.generate import ChatSession, SamplingParams
    from bitttt.hf.tokenizer import TemplateRenderer

    model, tok, _ = load(tiny.packed)
    tok._renderer = TemplateRenderer(deadline_s=2.0)
    good, tok.chat_template = tok.chat_template, LOOPS
    session = ChatSession(model, tok, chat_format=True, defaults=SamplingParams(max_new_tokens=3, temperature=0))
    r, w = os.pipe()
    stdin, writer = os.fdopen(r, "r"), os.fdopen(w, "w")
    out = io.StringIO()
    server = threading.Thread(target=chat_jsonl, args=(session, stdin, out), daemon=True)
    server.start()
    writer.write(json.dumps({"op": "generate", "prompt": "hi"}) + "\n")
    writer.flush()
    deadline = time.monotonic() + 60
    while '"error"' not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    tok.chat_template = good
    writer.write(json.dumps({"op": "generate", "prompt": "hi"}) + "\n" + json.dumps({"op": "stop"}) + "\n")
    writer.close()
    server.join(60)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "ready" and names[1] == "error" and "took longer than" in events[1]["message"]
    assert names[-2:] == ["done", "bye"] and "error" not in names[2:]
    tok._renderer.close()
