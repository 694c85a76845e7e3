"""One writer per run (issue 27): a live trainer.lock means nobody else trains, deletes or replaces
the run; the lock is taken atomically; readers never recover (rename or delete) anything."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from bitttt import checkpoint as ckpt_io
from bitttt import cli, runlock
from bitttt import train as train_mod
from ckptlib import leftovers
from trainlib import MICRO, read_events, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
WAIT_S = 120  # generous: the machine is shared; a bound, not a speed test
LONG = ["--steps", "100000", "--eval-every", "0", "--sample-every", "0"]


def _lock_of(proc_pid: int, host: str | None = None) -> dict:
    return {"pid": proc_pid, "create_time": psutil.Process(proc_pid).create_time(),
            "host": host or socket.gethostname(), "argv": ["test"]}


@pytest.fixture
def other_process():
    """A live process that is not this one (the 'other trainer' of a lock record)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p
    p.kill()
    p.wait()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- the lock itself ---------------------------------------------------------------------------


def test_acquire_refuses_a_live_owner_and_changes_nothing(tmp_path, other_process):
    lock = tmp_path / runlock.LOCK_FILE
    lock.write_text(json.dumps(_lock_of(other_process.pid)))
    before = lock.read_bytes()
    with pytest.raises(runlock.RunLocked, match=f"pid {other_process.pid}") as e:
        runlock.acquire(tmp_path, ["me"])
    assert e.value.exit_code == cli.EXIT_CONFIG
    assert lock.read_bytes() == before
    runlock.release(tmp_path)  # never removes another process's lock
    assert lock.read_bytes() == before
    assert runlock.live_owner(tmp_path)["pid"] == other_process.pid


@pytest.mark.parametrize("stale", ["dead pid", "reused pid", "garbage"])
def test_a_stale_lock_is_replaced(tmp_path, stale):
    lock = tmp_path / runlock.LOCK_FILE
    record = {"dead pid": {"pid": _dead_pid(), "create_time": 1.0},
              "reused pid": {"pid": 1, "create_time": 12345.0},  # pid 1 lives, but not since then
              "garbage": None}[stale]
    lock.write_text(json.dumps(record) if record else "{not json")
    assert runlock.live_owner(tmp_path) is None
    runlock.acquire(tmp_path, ["me"])
    assert runlock.live_owner(tmp_path)["pid"] == os.getpid()
    runlock.release(tmp_path)
    assert not lock.exists()


def test_another_hosts_lock_owns_the_run(tmp_path):
    """Its pid cannot be checked from here: it owns the run until removed (design §5)."""
    (tmp_path / runlock.LOCK_FILE).write_text(json.dumps({**_lock_of(os.getpid()), "host": "elsewhere",
                                                          "pid": 4242}))
    assert runlock.live_owner(tmp_path)["host"] == "elsewhere"
    assert runlock.live_trainer(tmp_path) is None  # nothing a launcher here can follow or signal
    with pytest.raises(runlock.RunLocked, match="pid 4242 on host elsewhere"):
        runlock.acquire(tmp_path, ["me"])


def _race(run_dir: str, go, hold, results) -> None:
    go.wait()
    try:
        runlock.acquire(run_dir, ["racer"])
        results.put(os.getpid())
    except runlock.RunLocked:
        results.put(None)
    hold.wait(60)  # stay alive: a winner that exits would leave a stale lock for the next racer


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks racers")
def test_racing_trainers_one_wins(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for trial in range(5):
        run_dir = tmp_path / f"run{trial}"
        run_dir.mkdir()
        go, hold, results = ctx.Event(), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(run_dir), go, hold, results)) for _ in range(8)]
        for p in procs:
            p.start()
        go.set()
        got = [results.get(timeout=WAIT_S) for _ in procs]
        winners = [g for g in got if g is not None]
        assert len(winners) == 1, got
        assert runlock.read_lock(run_dir)["pid"] == winners[0]
        hold.set()
        for p in procs:
            p.join(WAIT_S)


# -- the trainer -------------------------------------------------------------------------------


def _start(run_dir, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bitttt", "train", *MICRO, "--run-dir", str(run_dir), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)


def _wait_until(what: str, ready) -> None:
    end = time.monotonic() + WAIT_S
    while not ready():
        assert time.monotonic() < end, f"no {what} within {WAIT_S} s"
        time.sleep(0.05)


def _snapshot(run_dir) -> dict:
    """What a second trainer must not touch: the lock's bytes, every checkpoint folder's name."""
    names = sorted(os.listdir(run_dir / "checkpoints")) if (run_dir / "checkpoints").exists() else []
    return {"lock": (run_dir / runlock.LOCK_FILE).read_bytes(), "checkpoints": names}


@pytest.mark.integration
@pytest.mark.parametrize("second", ["fresh", "resume"])
def test_a_second_trainer_on_a_live_run_is_refused(tmp_path, second):
    """`bitttt train --resume RUN` (or a fresh one in the same --run-dir, a terminal beside the
    launcher) while another trainer runs there: exit 2 naming its pid, nothing touched."""
    run_dir = tmp_path / "run"
    first = _start(run_dir, *LONG, "--save-every", "2" if second == "resume" else "0", "--keep-last", "1")
    try:
        _wait_until("lock", lambda: (run_dir / runlock.LOCK_FILE).exists())
        if second == "resume":
            _wait_until("checkpoint", lambda: ckpt_io.list_step_checkpoints(str(run_dir)))
        else:  # a terminal run in a folder the launcher trains, before its first checkpoint
            _wait_until("start event", lambda: '"start"' in (run_dir / "events.jsonl").read_text())
        os.kill(first.pid, 19)  # SIGSTOP: hold the first trainer still while the second one tries
        try:
            before = _snapshot(run_dir)
            n_events = len(read_events(run_dir))
            argv = ["--resume", str(run_dir)] if second == "resume" else ["--run-dir", str(run_dir)]
            steps = LONG if second == "resume" else [*MICRO, "--steps", "3"]
            out = subprocess.run([sys.executable, "-m", "bitttt", "train", *argv, "--log-format", "jsonl", *steps],
                                 capture_output=True, text=True, env=ENV, timeout=WAIT_S)
            assert _snapshot(run_dir) == before
            assert len(read_events(run_dir)) == n_events  # no error/done in the live run's events
        finally:
            os.kill(first.pid, 18)  # SIGCONT
        assert out.returncode == cli.EXIT_CONFIG, out.stdout + out.stderr
        assert f"pid {first.pid}" in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert json.loads((run_dir / runlock.LOCK_FILE).read_text())["pid"] == first.pid  # not deleted
        assert first.poll() is None
        (run_dir / "STOP").write_text("")
        assert first.wait(WAIT_S) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    events = read_events(run_dir)
    assert [e["reason"] for e in events if e["event"] == "done"] == ["stopped"]
    assert not [e for e in events if e["event"] == "error"]
    assert not (run_dir / runlock.LOCK_FILE).exists()


def test_a_refused_trainer_leaves_a_stop_file_and_leftovers_alone(tmp_path, other_process):
    """In process: the refusal comes before recovery, the STOP clean-up and events.jsonl."""
    assert train(tmp_path / "run", "--steps", "4", "--save-every", "2", "--sample-every", "0") == 0
    run_dir = tmp_path / "run"
    (run_dir / runlock.LOCK_FILE).write_text(json.dumps(_lock_of(other_process.pid)))
    dead = _dead_pid()
    (run_dir / "checkpoints" / f".tmp-step-000006-{dead}").mkdir()
    (run_dir / "STOP").write_text("")
    os.utime(run_dir / "STOP", (1, 1))  # older than any process: a trainer that owned the run removes it
    before = sorted(os.listdir(run_dir)), leftovers(run_dir / "checkpoints"), len(read_events(run_dir))
    assert cli.main(["train", "--resume", str(run_dir), "--steps", "8"]) == cli.EXIT_CONFIG
    assert (sorted(os.listdir(run_dir)), leftovers(run_dir / "checkpoints"), len(read_events(run_dir))) == before


# -- readers only read -------------------------------------------------------------------------


def test_loading_never_renames_or_deletes(tmp_path):
    """load_model (chat, generate, eval, export) reads a run whose save was killed between its
    renames (only .old-final-PID holds final) and leaves every leftover where it is."""
    assert train(tmp_path / "run", "--steps", "4", "--save-every", "2", "--sample-every", "0") == 0
    run_dir = tmp_path / "run"
    dead = _dead_pid()
    os.rename(run_dir / "final", run_dir / f".old-final-{dead}")
    (run_dir / f".tmp-final-{dead}").mkdir()
    (run_dir / "checkpoints" / f".del-step-000002-{dead}").mkdir()
    listing = lambda: (sorted(os.listdir(run_dir)), sorted(os.listdir(run_dir / "checkpoints")))  # noqa: E731
    before = listing()
    model, _, info = ckpt_io.load_model(str(run_dir))
    assert info["path"] == str(run_dir / f".old-final-{dead}")
    assert listing() == before
    # the owner recovers: the trainer, once it holds the lock
    train_mod.own_run(str(run_dir), ["test"])
    try:
        assert (run_dir / "final").is_dir() and leftovers(run_dir, run_dir / "checkpoints") == []
    finally:
        runlock.release(run_dir)
