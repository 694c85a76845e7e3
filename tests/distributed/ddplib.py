"""Helpers for the data-parallel tests (imported by name: pytest puts this folder on sys.path).

Jobs run as `python -m bitttt train --nproc N`: torchrun's agent in that process, gloo between
the workers, rendezvous on 127.0.0.1 at a free port (bitttt.distributed.launch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bitttt import cli

# 2 layers x 64 wide, 32-token windows, 1 thread: a step takes tens of milliseconds.
SEQ_LEN = 32
MICRO = ["--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--seq-len", str(SEQ_LEN), "--eval-tokens", "512",
         "--sample-tokens", "8", "--log-every", "1", "--threads", "1", "--warmup", "2", "--log-format", "jsonl"]
JOB_TIMEOUT_S = 240  # a bound for one job on a loaded 2-core machine; a hang fails the test, not CI


def job_command(run_dir, nproc: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bitttt", "train", "--nproc", str(nproc), *MICRO, "--run-dir", str(run_dir), *extra]


def job_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", **extra}
    env.pop("RANK", None)  # not a process of another job
    return env


def run_job(run_dir, nproc: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs a job to its end; its stdout is rank 0's event stream."""
    return subprocess.run(job_command(run_dir, nproc, *extra), env=env or job_env(), capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S)


def train_here(run_dir, *extra: str) -> int:
    """A single-process run in this process (no torchrun)."""
    return cli.main(["train", *MICRO, "--run-dir", str(run_dir), *extra])


def read_events(run_dir) -> list[dict]:
    """The events so far (a line still being written is left out)."""
    events = []
    with open(os.path.join(run_dir, "events.jsonl")) as f:
        for line in f:
            try:
                events.append(json.loads(line))
            except ValueError:
                break
    return events


def step_losses(run_dir) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_events(run_dir) if e["event"] == "step"}


def wait_for_step(run_dir, step: int, proc: subprocess.Popen, timeout_s: float = JOB_TIMEOUT_S) -> None:
    """Blocks until events.jsonl has a step event >= step (or the job ended: then it returns)."""
    path = os.path.join(run_dir, "events.jsonl")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(path) and any(e["event"] == "step" and e["step"] >= step for e in read_events(run_dir)):
            return
        time.sleep(0.02)
