"""One writer per run, the launcher's side (issue 27): a run another live process trains is never
deleted or replaced, and Stop stops only the process this window started or attached to."""

import json
import os
import queue
import socket
import subprocess
import sys

import psutil
import pytest

from bitttt_gui import runs
from bitttt_gui.process import AttachedRun, ChildProcess

from test_gui_app import make_app, pump  # noqa: F401  (make_app is a fixture)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def other_trainer(tmp_path):
    """A live process that holds the lock of runs/busy (it stands for a trainer of another window)."""
    run_dir = tmp_path / "ws" / "runs" / "busy"
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text('{"event": "start", "time": 1, "total_steps": 100}\n')
    proc = subprocess.Popen(SLEEPER)
    (run_dir / "trainer.lock").write_text(json.dumps(
        {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "host": socket.gethostname(),
         "argv": ["bitttt", "train"]}))
    yield proc, run_dir
    proc.kill()
    proc.wait()


def test_a_live_run_is_not_deleted(other_trainer):
    proc, run_dir = other_trainer
    msg = runs.delete_run(run_dir)
    assert msg and f"pid {proc.pid}" in msg
    assert (run_dir / "events.jsonl").is_file() and runs.owned_elsewhere(run_dir)


def test_a_run_whose_trainer_is_gone_is_deleted(other_trainer):
    proc, run_dir = other_trainer
    proc.kill()
    proc.wait()
    assert runs.owned_elsewhere(run_dir) is None
    assert runs.delete_run(run_dir) is None and not run_dir.exists()


def test_stop_never_writes_stop_into_a_run_another_process_trains(other_trainer):
    """This window's child (refused, or still starting) shares the run folder with another trainer:
    a STOP file there would stop that one. Only the child is stopped."""
    proc, run_dir = other_trainer
    child = ChildProcess(SLEEPER, queue.Queue(), run_dir=run_dir).start()
    try:
        child.stop(grace_s=30, term_s=10, kill_s=5)
        assert child.wait(30) is not None
    finally:
        child.kill_now()
    assert not (run_dir / "STOP").exists()
    assert proc.poll() is None


def test_stop_writes_stop_for_our_own_trainer(tmp_path):
    run_dir = tmp_path / "runs" / "mine"
    run_dir.mkdir(parents=True)
    child = ChildProcess(SLEEPER, queue.Queue(), run_dir=run_dir).start()
    try:
        (run_dir / "trainer.lock").write_text(json.dumps(
            {"pid": child.pid, "create_time": psutil.Process(child.pid).create_time(), "host": socket.gethostname(),
             "argv": []}))
        child.stop(grace_s=0.5, term_s=10, kill_s=5)
        assert child.wait(30) is not None
    finally:
        child.kill_now()
    assert (run_dir / "STOP").exists()


def test_an_attached_run_never_signals_a_pid_that_is_another_process_now(other_trainer):
    """The attached trainer ended and another process trains the run now: Stop leaves it alone."""
    proc, run_dir = other_trainer
    attached = AttachedRun(run_dir, queue.Queue())
    lock = json.loads((run_dir / "trainer.lock").read_text())
    newer = subprocess.Popen(SLEEPER)
    try:
        (run_dir / "trainer.lock").write_text(json.dumps(
            {**lock, "pid": newer.pid, "create_time": psutil.Process(newer.pid).create_time()}))
        attached.stage = "running"
        attached._stop_sequence(grace_s=0, term_s=0.5, kill_s=0.5, write_stop_file=True)
        assert newer.poll() is None and proc.poll() is None
        assert not (run_dir / "STOP").exists()
    finally:
        newer.kill()
        newer.wait()


@pytest.mark.gui
def test_a_second_window_does_not_replace_a_run_another_trains(make_app, other_trainer):
    """'never saved a checkpoint. Delete it and start again?' Yes: refused, naming the pid."""
    proc, run_dir = other_trainer
    app = make_app(confirm=lambda *a: True)
    msg = app._free_run_name(run_dir)
    assert msg and f"pid {proc.pid}" in msg
    assert (run_dir / "events.jsonl").is_file() and (run_dir / "trainer.lock").is_file()
