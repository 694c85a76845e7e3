"""Fuzzing `bitttt train`'s settings (issue 12): generated bad config files and bad flags always
end in exit 2 and one line on stderr that names the setting (or the file), never a traceback;
generated good ones are accepted as given.

Fixed seed; about a thousand cases, in process (cli.main), in well under 30 s. What each setting
accepts is written out below from the contract (docs/design.md, `bitttt train --help`), not
read from bitttt.config, so the two are checked against each other.
"""

from __future__ import annotations

import json
import math
import random
import string
import subprocess
import sys

import pytest

from bitttt import cli, config

SEED = 12345

# key: (kind, argument). Kinds: int (least value), pos (> 0), nonneg (>= 0), unit ([0, 1)),
# frac ((0, 0.5)), bool, choice (the choices), paths (a path or non-empty list), optstr
# (non-empty string or null), str (non-empty string).
SPEC = {
    "n_layer": ("int", 1), "n_embd": ("int", 1), "n_head": ("int", 1), "intermediate_size": ("int", 0),
    "mixer": ("choice", ("ttt_linear", "ttt_mlp", "attention")), "ternary": ("bool", None),
    "tie_embeddings": ("bool", None), "rope_theta": ("pos", None), "norm_eps": ("pos", None),
    "init_std": ("pos", None), "mini_batch": ("int", 1), "ttt_base_lr": ("nonneg", None), "use_gate": ("bool", None),
    "conv_kernel": ("int", 0), "preset": ("choice", ("tiny", "small", "base")), "data": ("paths", None),
    "run_dir": ("optstr", None), "steps": ("int", 1), "batch_size": ("int", 1), "seq_len": ("int", 1),
    "grad_accum": ("int", 1), "lr": ("pos", None), "min_lr": ("nonneg", None), "warmup": ("int", 0),
    "weight_decay": ("nonneg", None), "beta1": ("unit", None), "beta2": ("unit", None), "grad_clip": ("pos", None),
    "eval_every": ("int", 0), "eval_tokens": ("int", 1), "save_every": ("int", 0), "keep_last": ("int", 0),
    "sample_every": ("int", 0), "sample_tokens": ("int", 1), "sample_prompt": ("str", None), "log_every": ("int", 1),
    "val_fraction": ("frac", None), "device": ("choice", ("auto", "cpu", "cuda")), "threads": ("int", 0),
    "seed": ("int", 0), "tokenizer": ("choice", ("byte", "bpe")), "bpe_vocab_size": ("int", 261),
    "compile": ("bool", None), "stop_after": ("int", 0), "log_format": ("choice", ("text", "jsonl")),
    "dist_timeout": ("pos", None),
}
FLAG = {"bpe_vocab_size": "--vocab-size"}
NUMERIC_FLAGS = ["seed", "threads", "n_layer", "n_embd", "n_head", "mini_batch", "bpe_vocab_size", "steps",
                 "batch_size", "seq_len", "grad_accum", "lr", "min_lr", "warmup", "weight_decay", "grad_clip",
                 "eval_every", "eval_tokens", "save_every", "keep_last", "sample_every", "sample_tokens", "log_every",
                 "val_fraction", "stop_after"]
NAN, INF = "__NaN__", "__Infinity__"  # written as the bare JSON literals NaN and Infinity


def flag(key: str) -> str:
    return FLAG.get(key, "--" + key.replace("_", "-"))


def junk(rng: random.Random, depth: int = 0):
    """A random nested JSON value whose top is an object: no setting accepts one."""
    def value(d):
        r = rng.random()
        if d > 4 or r < 0.3:
            return rng.choice([rng.randint(-10**20, 10**20), rng.uniform(-1e300, 1e300), "".join(
                rng.choices(string.printable, k=rng.randint(0, 20))), None, True])
        if r < 0.65:
            return [value(d + 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(string.ascii_letters): value(d + 1) for _ in range(rng.randint(0, 4))}
    return {rng.choice(string.ascii_letters): value(depth + 1) for _ in range(rng.randint(0, 3))}


def bad_values(kind: str, arg) -> list:
    common = [None, [], {}, {"x": 1}, NAN, INF]
    if kind == "int":
        return common + ["abc", "3", 2.7, arg - 1, arg - 1000, True, False, [arg], 10**30, -10**30, 1e300]
    if kind == "pos":
        return common + [0, 0.0, -1e-9, -5, "1", True, -1e300]
    if kind == "nonneg":
        return common + [-1e-9, -3, "0", False]
    if kind == "unit":
        return common + [1, 1.0, 1.5, -0.1, "0.9", True]
    if kind == "frac":
        return common + [0, 0.5, 0.7, -0.1, 1, "0.1"]
    if kind == "bool":
        return common + [0, 1, "true", "yes", 0.0]
    if kind == "choice":
        return [x for x in common if x is not None] + [None, "bogus", "", 5, [arg[0]], arg[0].upper(), True]
    if kind == "paths":
        return [x for x in common if x is not None] + [5, [1], [""], [["a"]], True, ["a", None], 2.5]
    if kind == "optstr":
        return [x for x in common if x is not None] + ["", 5, True, ["a"]]
    if kind == "str":
        return common + ["", 5, ["The "], False]
    raise AssertionError(kind)


def good_value(rng: random.Random, kind: str, arg):
    return {"int": lambda: rng.randint(arg, arg + 1000), "pos": lambda: rng.uniform(1e-6, 10.0),
            "nonneg": lambda: rng.choice([0, rng.uniform(0, 10.0)]), "unit": lambda: rng.uniform(0, 0.99),
            "frac": lambda: rng.uniform(0.01, 0.49), "bool": lambda: rng.random() < 0.5,
            "choice": lambda: rng.choice(arg), "paths": lambda: [f"corpus-{rng.randint(0, 99)}.txt"],
            "optstr": lambda: f"runs/r{rng.randint(0, 99)}", "str": lambda: rng.choice(["The ", "def ", "é"])}[kind]()


def dump(settings: dict) -> str:
    text = json.dumps(settings)
    return text.replace(f'"{NAN}"', "NaN").replace(f'"{INF}"', "Infinity")


class Runner:
    """cli.main on one config file or flag list; counts what it ran."""

    def __init__(self, tmp_path, capsys) -> None:
        self.tmp_path, self.capsys, self.n = tmp_path, capsys, 0

    def file(self, content: str | bytes) -> str:
        self.n += 1
        path = self.tmp_path / f"case-{self.n}.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def run(self, argv: list[str], jsonl: bool = False) -> tuple[int, str, str]:
        code = cli.main(["train", *argv, "--print-config", *(["--log-format", "jsonl"] if jsonl else [])])
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def expect_error(self, argv: list[str], names: str, jsonl: bool = False) -> None:
        code, out, err = self.run(argv, jsonl)
        case = f"{argv}: {err!r}"
        assert code == 2, case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err and names in lines[0], case
        if jsonl:
            events = [json.loads(line) for line in out.splitlines()]
            assert [e["event"] for e in events] == ["error", "done"] and events[0]["kind"] == "config", case


@pytest.fixture
def runner(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a case that got through would write runs/ here, not in the project
    parser = cli.build_parser()  # built once: building it is most of a case's time; parsing does not change it
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    return Runner(tmp_path, capsys)


def test_spec_covers_every_setting():
    assert set(SPEC) == set(config.valid_keys())
    assert set(config.RULES) >= set(config.valid_keys())  # every setting is checked


def test_every_bad_value_of_every_setting(runner):
    cases = 0
    for i, (key, (kind, arg)) in enumerate(SPEC.items()):
        for value in bad_values(kind, arg):
            runner.expect_error(["--config", runner.file(dump({key: value}))], f"{key}:", jsonl=cases % 5 == 0)
            cases += 1
    print(f"\nbad values: {cases} cases")
    assert cases > 400


def test_random_configs_with_one_bad_setting(runner):
    rng = random.Random(SEED)
    keys = [k for k in SPEC if k not in ("n_embd", "n_head")]  # their cross-field rule is tested below
    for _ in range(300):
        good = {k: good_value(rng, *SPEC[k]) for k in rng.sample(keys, rng.randint(0, 5))}
        key = rng.choice(list(SPEC))
        value = rng.choice(bad_values(*SPEC[key]) + [junk(rng)])
        settings = {**good, key: value}
        if rng.random() < 0.3:  # a run's config.json layout: the training keys under "training"
            settings = {"model_type": "bitttt", "training": settings}
        runner.expect_error(["--config", runner.file(dump(settings))], f"{key}:")
    print(f"\nrandom configs with one bad setting: 300 cases")


def test_unknown_keys(runner):
    rng = random.Random(SEED + 1)
    for _ in range(50):
        name = "".join(rng.choices(string.ascii_lowercase + "_", k=rng.randint(1, 12)))
        if name in SPEC:
            continue
        runner.expect_error(["--config", runner.file(dump({"steps": 3, name: rng.choice([1, "x", None])}))], name)


def test_unreadable_config_files(runner, tmp_path):
    rng = random.Random(SEED + 2)
    contents: list[str | bytes] = ["", "{", '{"steps": 3', "[]", "3", '"steps"', "null", "true", '{"steps": 3}}',
                                   "{'steps': 3}", '{"steps": 3,}', "[" * 100_000 + "]" * 100_000,
                                   '{"a":' * 100_000 + "1" + "}" * 100_000, b"\xff\xfe\x00{", b"\x80abc",
                                   '{"training": [1, 2]}', '{"training": "steps"}', '{"model_type": "llama"}']
    contents += [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))) for _ in range(30)]
    valid = json.dumps({"steps": 3, "lr": 0.01})
    contents += [valid[:rng.randint(1, len(valid) - 1)] for _ in range(10)]  # truncated
    paths = [runner.file(c) for c in contents] + [str(tmp_path / "missing.json"), str(tmp_path)]
    for path in paths:
        runner.expect_error(["--config", path], "--config")
    print(f"\nunreadable config files: {len(paths)} cases")


def test_cross_field_rule(runner):
    runner.expect_error(["--config", runner.file(dump({"n_embd": 100, "n_head": 3}))], "n_head")


def test_bad_flags(runner):
    rng = random.Random(SEED + 3)
    cases = 0
    for key in NUMERIC_FLAGS:
        kind, arg = SPEC[key]
        if kind == "int":
            texts = ["abc", "2.7", "", "1e3", "nan", str(arg - 1), "9" * 30, "0x10"]
        else:
            texts = ["abc", "", "nan", "inf", "-inf", {"pos": "0", "nonneg": "-1", "frac": "0.5"}[kind]]
        texts.append("".join(rng.choices(string.ascii_letters + string.punctuation, k=rng.randint(1, 8))))
        for text in texts:
            if text.startswith("-") and not text[1:2].isdigit():
                text = "x" + text  # argparse would read it as an option, not a value
            runner.expect_error([flag(key), text], flag(key))
            cases += 1
    for argv in (["--device", "gpu"], ["--mixer", "rnn"], ["--preset", "huge"], ["--log-format", "xml"],
                 ["--tokenizer", "word"], ["--bogus-flag", "1"], ["--steps"]):
        runner.expect_error(argv, argv[0])
        cases += 1
    print(f"\nbad flags: {cases} cases")


def test_good_random_configs_are_taken_as_given(runner):
    rng = random.Random(SEED + 4)
    keys = [k for k in SPEC if k not in ("n_embd", "n_head", "data", "run_dir", "log_format")]
    for _ in range(60):
        settings = {k: good_value(rng, *SPEC[k]) for k in rng.sample(keys, rng.randint(1, 8))}
        code, out, err = runner.run(["--config", runner.file(json.dumps(settings))])
        assert code == 0, (settings, err)
        resolved = json.loads(out)
        for k, v in settings.items():
            assert resolved[k] == v and type(resolved[k]) is type(v) or (
                isinstance(v, int) and isinstance(resolved[k], float) and math.isclose(resolved[k], v)), k


def test_integral_floats_are_integers(runner):
    code, out, _ = runner.run(["--config", runner.file('{"steps": 1e3, "batch_size": 4.0}')])
    assert code == 0 and json.loads(out)["steps"] == 1000 and json.loads(out)["batch_size"] == 4


@pytest.mark.integration
def test_a_real_process_prints_one_line(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"steps": "abc"}')
    r = subprocess.run([sys.executable, "-m", "bitttt", "train", "--config", str(bad)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"bitttt: error: --config {bad}: steps: expected an integer >= 1, got 'abc' "
                                "(hint: fix steps (--steps))")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]  # no runs/ left behind
