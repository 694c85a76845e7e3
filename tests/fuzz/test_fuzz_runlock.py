"""Fuzzing one writer per run (issue 27): a second `bitttt train` on a run directory whose
trainer.lock is in a generated state (a live trainer here, one on another host, a dead or reused
pid, garbage, empty, half a record), started fresh, resumed from the run or from one of its
checkpoints. Fixed seed, a bounded number of cases.

A case passes when a run with a live owner is refused (exit 2, one line naming the pid) with
every file of the run as it was, lock included, and a run without one trains (exit 0) and
leaves no lock behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from bitttt import cli

pytestmark = pytest.mark.slow

SEED = 27
N_CASES = 24
CASE_TIMEOUT_S = 120  # a hang guard, not a speed check
MICRO = ["--mixer", "ttt_linear", "--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--seq-len", "64",
         "--batch-size", "8", "--eval-tokens", "1024", "--threads", "1", "--warmup", "5", "--log-format", "jsonl",
         "--sample-every", "0", "--eval-every", "0", "--save-every", "2"]
LIVE = ("live", "other-host")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A run stopped at step 4 of 8 (checkpoints step-2 and step-4, no final/)."""
    root = tmp_path_factory.mktemp("lockfuzz")
    assert cli.main(["train", *MICRO, "--steps", "8", "--stop-after", "4", "--run-dir", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def other_trainer():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    yield p
    p.kill()
    p.wait()


def tree_digest(folder) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(folder)):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def lock_content(state: str, other: subprocess.Popen, rng: random.Random) -> bytes | None:
    live = {"pid": other.pid, "create_time": psutil.Process(other.pid).create_time(), "host": socket.gethostname(),
            "argv": ["bitttt", "train"]}
    records = {
        "none": None,
        "live": live,
        "live-no-host": {k: v for k, v in live.items() if k != "host"},  # a lock from before the host field
        "other-host": {**live, "host": f"node-{rng.randrange(100)}", "pid": rng.randrange(2, 2**22)},
        "dead": {**live, "pid": _dead_pid()},
        "reused": {**live, "create_time": live["create_time"] - rng.uniform(5, 1e6)},
        "pid-str": {**live, "pid": str(other.pid)},
        "pid-bool": {**live, "pid": True},
        "create-str": {**live, "create_time": "yesterday"},
    }
    if state in records:
        r = records[state]
        return None if r is None else json.dumps(r).encode()
    return {"empty": b"", "garbage": bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))),
            "half": json.dumps(live).encode()[:rng.randrange(1, 20)], "list": b"[1, 2]"}[state]


STATES = ["none", "live", "live-no-host", "other-host", "dead", "reused", "pid-str", "pid-bool", "create-str",
          "empty", "garbage", "half", "list"]
OWNED = {"live", "live-no-host", "other-host"}  # the states where another process owns the run
HOW = ["fresh", "resume-run", "resume-step"]


def _on_alarm(signum, frame):
    raise TimeoutError(f"a case ran past {CASE_TIMEOUT_S} s")


def test_a_second_trainer_never_touches_an_owned_run(pristine, other_trainer, tmp_path, capsys):
    rng = random.Random(SEED)
    counts: dict[str, int] = {}
    failures = []
    old = signal.signal(signal.SIGALRM, _on_alarm)
    cases = [(s, h) for s in STATES for h in HOW]
    rng.shuffle(cases)
    cases = sorted(cases[:N_CASES - 4] + [("live", "fresh"), ("live", "resume-run"), ("other-host", "resume-step"),
                                          ("dead", "resume-run")])
    try:
        for state, how in cases:
            run = tmp_path / "run"
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(pristine, run)
            content = lock_content(state, other_trainer, rng)
            if content is not None:
                (run / "trainer.lock").write_bytes(content)
            if how == "fresh":  # a terminal run in a folder the launcher trains (no checkpoint there)
                shutil.rmtree(run / "checkpoints")
                argv = ["train", *MICRO, "--steps", "2", "--run-dir", str(run)]
            else:
                target = run if how == "resume-run" else run / "checkpoints" / "step-000004"
                argv = ["train", "--resume", str(target), "--steps", "6", "--log-format", "jsonl"]
            before = tree_digest(run)
            signal.alarm(CASE_TIMEOUT_S)
            try:
                code = cli.main(argv)
            finally:
                signal.alarm(0)
            err = capsys.readouterr().err
            case = f"{state} {how}"
            if state in OWNED:
                owner = json.loads(content)["pid"]
                lines = [line for line in err.splitlines() if line.strip()]
                if code != 2 or len(lines) != 1 or f"pid {owner}" not in lines[0]:
                    failures.append(f"{case}: exit {code}, {err[-300:]!r}")
                if tree_digest(run) != before:
                    failures.append(f"{case}: changed the run's files")
            elif code != 0 or "Traceback" in err or (run / "trainer.lock").exists():
                failures.append(f"{case}: exit {code}, lock left: {(run / 'trainer.lock').exists()}, {err[-300:]!r}")
            counts[state] = counts.get(state, 0) + 1
    finally:
        signal.signal(signal.SIGALRM, old)
    print("runlock fuzz cases:", json.dumps(counts), "total", sum(counts.values()))
    assert not failures, "\n".join(failures)
