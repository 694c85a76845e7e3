"""Clear errors, never tracebacks (issue 12), and the torch-free modules the launcher can share
(issue 13): a bad setting is one line and exit 2 in every command; event formatting never fails."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from bitttt import cli, events

# Every command, with arguments that would otherwise get past argparse.
COMMANDS = {
    "train": ["train", "--steps", "1", "--print-config"],
    "generate": ["generate", "--model", "no-such-model", "--prompt", "a"],
    "chat": ["chat", "--model", "no-such-model"],
    "eval": ["eval", "--model", "no-such-model"],
    "export": ["export", "no-such-model", "--out", "no-such-out"],
    "info": ["info"],
    "bench ternary": ["bench", "ternary", "--quick"],
    "bench ttt": ["bench", "ttt", "--quick"],
}


# One process runs every command in turn (a failed import is retried by the next command, as in
# a fresh process): one torch start-up instead of eight.
EVERY_COMMAND = """
import contextlib, io, json, sys
from bitttt import cli
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        results[name] = [cli.main(argv), err.getvalue()]
print(json.dumps(results))
"""


def test_bad_isa_setting_is_one_line_exit_2_in_every_command(tmp_path):
    env = {**os.environ, "BITTTT_ISA": "bogus", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", EVERY_COMMAND, json.dumps(COMMANDS)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert set(results) == set(COMMANDS)
    for name, (code, err) in results.items():
        lines = err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(lines) == 1 and "BITTTT_ISA='bogus'" in lines[0] and "available:" in lines[0], (name, err)
    assert os.listdir(tmp_path) == []  # nothing was created on the way


def test_bad_isa_setting_in_a_fresh_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bitttt", "generate", "--model", "m", "--prompt", "a"], cwd=tmp_path,
                       env={**os.environ, "BITTTT_ISA": "bogus"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "BITTTT_ISA" in r.stderr, r.stderr


@pytest.mark.parametrize("argv, field", [
    (["train", "--steps", "abc"], "--steps"),
    (["train", "--steps", "2.7"], "--steps"),
    (["train", "--steps", "0"], "--steps"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--val-fraction", "0.7"], "--val-fraction"),
    (["train", "--vocab-size", "12"], "--vocab-size"),
    (["train", "--device", "gpu"], "--device"),
    (["train", "--no-such-flag"], "--no-such-flag"),
    (["generate", "--model", "m"], "--prompt"),
])
def test_bad_flag_is_one_line_naming_it(argv, field, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err and "error" in err, err


def test_bad_flag_says_what_it_accepts(capsys):
    assert cli.main(["train", "--steps", "2.7"]) == 2
    assert "expected an integer >= 1, got '2.7'" in capsys.readouterr().err


def test_torch_free_modules_do_not_load_torch():
    code = ("import sys; import bitttt.config, bitttt.events, bitttt.errors, bitttt.stop, bitttt.devices; "
            "bitttt.config.resolve({'steps': 3}); bitttt.events.format_text({'event': 'step'}); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("event", [
    {"event": "step", "step": 3},  # no loss, no rate
    {"event": "step", "step": 3, "total_steps": 10, "loss": None, "lr": None, "grad_norm": None,
     "tokens_per_s": None, "eta_s": None},  # what a NaN loss becomes in JSON
    {"event": "step", "step": [1], "loss": "low", "tokens_per_s": {"x": 1}, "eta_s": float("inf")},
    {"event": "start"}, {"event": "start", "config": "junk", "n_params": "many"},
    {"event": "eval", "val_loss": float("nan")}, {"event": "checkpoint"}, {"event": "sample"},
    {"event": "warning"}, {"event": "error"}, {"event": "done"}, {"event": "something new", "x": object()},
    {}, {"event": None},
], ids=lambda e: json.dumps(e, default=str)[:40])
def test_format_text_never_raises(event):
    line = events.format_text(event)
    assert isinstance(line, str) and "\n" not in line


def test_format_text_shows_missing_numbers_as_question_marks():
    assert events.format_text({"event": "step", "step": 3, "total_steps": 10, "loss": None}) == \
        "step 3/10 | loss ? | lr ? | grad ? | ? tok/s | ETA ?"
    assert events.format_text({"event": "eval", "step": 5, "val_loss": 1.5, "val_bpb": 2.25, "val_tokens": 16384}) \
        == "eval  step 5 | val loss 1.5000 | 2.250 bits/byte | 16,384 tokens"
    assert events.progress_bar({"event": "step", "step": 5, "total_steps": 10, "loss": math.nan}, width=4) == \
        "[##..] 5/10 loss ? | ? tok/s | ETA ?"


def test_event_names_and_exit_codes_are_shared():
    from bitttt import errors

    assert set(events.EVENTS) >= {"start", "step", "eval", "checkpoint", "sample", "warning", "error", "done"}
    assert "diverged" in events.ERROR_KINDS and errors.DivergedError.kind == "diverged"
    assert errors.EXIT_MEANINGS[errors.EXIT_DIVERGED] and errors.EXIT_DIVERGED == cli.EXIT_DIVERGED == 5
    assert {e.kind for e in (errors.ConfigError, errors.DataError, errors.DivergedError)} <= set(events.ERROR_KINDS)
