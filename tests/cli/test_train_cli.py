"""`python -m bitttt train` as the launcher runs it: JSON lines on stdout, SIGTERM (design §6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

MICRO = ["--mixer", "ttt_linear", "--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--seq-len", "64",
         "--batch-size", "8", "--eval-tokens", "1024", "--sample-tokens", "16", "--log-every", "1", "--warmup", "10",
         "--log-format", "jsonl"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # a shared 2-core machine: spinning threads cost 10x

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_train_jsonl_stdout(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bitttt", "train", *MICRO, "--steps", "40", "--eval-every", "20",
                        "--save-every", "20", "--sample-every", "20", "--run-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    order = [e["event"] for e in events]
    assert order[0] == "start" and order[-1] == "done"
    assert order.index("eval") < order.index("checkpoint") < len(order) - 1
    with open(tmp_path / "run" / "events.jsonl") as f:
        assert [json.loads(line) for line in f] == events  # the file holds the same stream
    evals = [e for e in events if e["event"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]


def test_sigterm_stops_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "bitttt", "train", *MICRO, "--steps", "100000",
                             "--eval-every", "100000", "--save-every", "100000", "--sample-every", "100000",
                             "--run-dir", str(run_dir)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in proc.stdout:  # wait for training to be under way
            if '"event": "step"' in line and '"step": 3,' in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    done = [json.loads(line) for line in rest.splitlines() if line.startswith("{")][-1]
    assert done["event"] == "done" and done["reason"] == "stopped"
    assert os.path.isfile(os.path.join(done["path"], "model.safetensors"))


def test_train_help_lists_defaults():
    r = subprocess.run([sys.executable, "-m", "bitttt", "train", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for flag in ("--preset", "--steps", "--mixer", "--no-ternary", "--resume", "--log-format", "--stop-after"):
        assert flag in r.stdout
    assert r.stdout.count("(default:") >= 30
