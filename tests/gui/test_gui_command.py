import dataclasses
import json
import sys

import pytest

from bitttt_gui import command
from bitttt_gui.command import (FIELDS, SettingsError, TrainSettings, build_chat_argv, build_train_argv,
                                load_settings, parse_settings, save_settings, train_args)

# A value differing from every preset's, per field, and the flag words it must produce.
CHANGED = {
    "nproc": (2, ["--nproc", "2"]),
    "mixer": ("attention", ["--mixer", "attention"]),
    "ternary": (False, ["--no-ternary"]),
    "n_layer": (3, ["--n-layer", "3"]),
    "n_embd": (96, ["--n-embd", "96"]),
    "n_head": (3, ["--n-head", "3"]),
    "mini_batch": (8, ["--mini-batch", "8"]),
    "tokenizer": ("bpe", ["--tokenizer", "bpe"]),
    "vocab_size": (4096, ["--vocab-size", "4096"]),
    "steps": (77, ["--steps", "77"]),
    "batch_size": (5, ["--batch-size", "5"]),
    "seq_len": (64, ["--seq-len", "64"]),
    "lr": (0.0007, ["--lr", "0.0007"]),
    "warmup": (7, ["--warmup", "7"]),
    "grad_accum": (3, ["--grad-accum", "3"]),
    "device": ("cpu", ["--device", "cpu"]),
    "seed": (42, ["--seed", "42"]),
    "eval_every": (11, ["--eval-every", "11"]),
    "save_every": (22, ["--save-every", "22"]),
    "sample_every": (33, ["--sample-every", "33"]),
    "min_lr": (0.0001, ["--min-lr", "0.0001"]),
    "weight_decay": (0.05, ["--weight-decay", "0.05"]),
    "grad_clip": (0.5, ["--grad-clip", "0.5"]),
    "eval_tokens": (4096, ["--eval-tokens", "4096"]),
    "keep_last": (1, ["--keep-last", "1"]),
    "threads": (2, ["--threads", "2"]),
    "compile": (True, ["--compile"]),
    "sample_prompt": ("Once upon ", ["--sample-prompt", "Once upon "]),
}


def _has(argv, words):
    n = len(words)
    return any(argv[i:i + n] == words for i in range(len(argv) - n + 1))


def test_default_argv_is_python_m_bitttt_with_preset_run_dir_and_jsonl(monkeypatch):
    monkeypatch.delenv(command.CMD_ENV, raising=False)
    argv = build_train_argv(TrainSettings(), "/w/runs/a")
    assert argv == [sys.executable, "-m", "bitttt", "train", "--preset", "tiny", "--run-dir", "/w/runs/a",
                    "--log-format", "jsonl", "--log-every", "1"]


def test_every_flag_field_is_covered_by_this_test():
    flagged = {f.name for f in FIELDS if f.flag} - {"preset", "data", "resume"}
    assert flagged == set(CHANGED)


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_each_field_gives_its_flag(name):
    value, words = CHANGED[name]
    s = dataclasses.replace(TrainSettings(), **{name: value})
    argv = train_args(s, "r")
    assert _has(argv, words), argv
    # and nothing else changed: exactly the default words plus these
    assert len(argv) == len(train_args(TrainSettings(), "r")) + len(words)


def test_paths_and_preset(tmp_path):
    s = TrainSettings.for_preset("small", data=str(tmp_path))
    argv = train_args(s, tmp_path / "runs" / "x")
    assert argv[:3] == ["train", "--preset", "small"]
    assert _has(argv, ["--data", str(tmp_path)]) and "--resume" not in argv
    assert _has(argv, ["--run-dir", str(tmp_path / "runs" / "x")])
    assert "--n-layer" not in argv   # equal to the small preset: not sent


def test_resume_sends_every_training_value_and_no_architecture(tmp_path):
    s = TrainSettings.for_preset("small", data=str(tmp_path), resume=str(tmp_path / "ck"), steps=7000)
    argv = train_args(s, tmp_path / "runs" / "x")
    assert argv[:5] == ["train", "--run-dir", str(tmp_path / "runs" / "x"), "--resume", str(tmp_path / "ck")]
    for locked in ("--preset", "--data", "--n-layer", "--n-embd", "--mixer", "--tokenizer", "--vocab-size"):
        assert locked not in argv
    # the run may have used other values than the preset's: what the form shows is what is sent
    assert _has(argv, ["--steps", "7000"]) and _has(argv, ["--batch-size", "16"]) and _has(argv, ["--seed", "1337"])


def test_env_overrides_the_bitttt_command(monkeypatch):
    monkeypatch.setenv(command.CMD_ENV, "/opt/py 'my fake.py'")
    assert build_chat_argv("/m") == ["/opt/py", "my fake.py", "chat", "--model", "/m", "--protocol", "jsonl"]


def test_pythonw_is_swapped_for_python(monkeypatch, tmp_path):
    (tmp_path / "python.exe").write_text("")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "pythonw.exe"))
    assert command.python_executable() == str(tmp_path / "python.exe")


def test_parse_form_strings_and_report_every_bad_field():
    s = parse_settings({"steps": " 120 ", "lr": "1e-4", "ternary": "false", "mixer": "ttt_mlp"})
    assert (s.steps, s.lr, s.ternary, s.mixer) == (120, 1e-4, False, "ttt_mlp")
    with pytest.raises(SettingsError) as e:
        parse_settings({"steps": "12x", "lr": "-1", "batch_size": "0", "mixer": "rnn", "run_name": "a/b",
                        "bogus": 1, "n_layer": "1.5", "seq_len": "nan"})
    assert set(e.value.errors) == {"steps", "lr", "batch_size", "mixer", "run_name", "bogus", "n_layer", "seq_len"}
    assert "valid ones" in e.value.errors["bogus"]


def test_cross_field_checks(tmp_path):
    with pytest.raises(SettingsError) as e:
        parse_settings({"n_embd": "130", "n_head": "4", "vocab_size": "300",
                        "data": str(tmp_path / "missing.txt")})
    assert set(e.value.errors) == {"n_head", "vocab_size", "data"}


def test_json_round_trip_keeps_every_field(tmp_path):
    s = TrainSettings.for_preset("base", run_name="r1", data=str(tmp_path), **{k: v for k, (v, _) in CHANGED.items()})
    path = tmp_path / "cfg" / "form.json"
    save_settings(s, path)
    assert json.loads(path.read_text())["bitttt_gui_config"] == 1
    assert load_settings(path) == s
    assert train_args(load_settings(path), "r") == train_args(s, "r")


@pytest.mark.parametrize("content,word", [("{not json", "not valid JSON"), ("[1]", "JSON object"),
                                          ('{"steps": "many"}', "Steps"), ('{"stepz": 3}', "stepz")])
def test_bad_config_files_raise_a_clear_error(tmp_path, content, word):
    p = tmp_path / "c.json"
    p.write_text(content)
    with pytest.raises(SettingsError, match=word):
        load_settings(p)
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "none.json")


def test_the_form_starts_from_the_trainers_presets():
    # bitttt.config's presets: tiny 4 x 256 for 500 steps, small 8 x 512 for 5000 at lr 2e-3.
    tiny, small = TrainSettings(), TrainSettings.for_preset("small")
    assert (tiny.preset, tiny.n_layer, tiny.n_embd, tiny.steps, tiny.lr, tiny.vocab_size) == ("tiny", 4, 256, 500, 3e-3, 256)
    assert (small.n_layer, small.n_embd, small.n_head, small.steps, small.seq_len, small.lr) == (8, 512, 8, 5000, 512, 2e-3)
    assert [f.choices for f in FIELDS if f.name in ("mixer", "device")] == [
        ("ttt_linear", "ttt_mlp", "attention"), ("auto", "cpu", "cuda")]


def test_presets_are_consistent():
    for name in ("tiny", "small", "base"):
        s = TrainSettings.for_preset(name)
        assert command.check_settings(s) == {}, name
        assert train_args(s, "r") == ["train", "--preset", name, "--run-dir", "r", "--log-format", "jsonl", "--log-every", "1"]


def test_global_batch_counts_every_process():
    s = dataclasses.replace(TrainSettings(), batch_size=8, grad_accum=2, nproc=3)
    assert s.global_batch == 48
    assert "--nproc" not in train_args(TrainSettings(), "r")   # one process: no flag at all


def test_the_more_flags_are_the_trainers_own():
    """Every flag the form sends is one ``bitttt train`` accepts (its own parser is the oracle)."""
    import argparse

    from bitttt.cli import add_train_parser

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers())
    s = TrainSettings(**{name: value for name, (value, _) in CHANGED.items() if name != "nproc"})
    args = parser.parse_args(train_args(s, "r"))
    assert args.min_lr == 0.0001 and args.weight_decay == 0.05 and args.grad_clip == 0.5
    assert args.eval_tokens == 4096 and args.keep_last == 1 and args.threads == 2 and args.compile is True
    assert args.sample_prompt == "Once upon "


def test_the_sample_prompt_keeps_its_spaces():
    assert parse_settings({"sample_prompt": "The "}).sample_prompt == "The "
    with pytest.raises(SettingsError) as e:
        parse_settings({"sample_prompt": ""})
    assert "sample_prompt" in e.value.errors
