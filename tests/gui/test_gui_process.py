"""The process manager driving real child processes (the fake trainer and small inline scripts)."""

import queue
import sys
import time
from pathlib import Path

import psutil
import pytest

from bitttt_gui.command import TrainSettings, build_train_argv
from bitttt_gui.events import parse_line
from bitttt_gui.process import ChildProcess

FAKE_BITTTT = Path(__file__).parent / "fakes" / "fake_bitttt.py"


def collect(q, child, timeout=20.0):
    """Every Output of ``child`` until its exit record, in order."""
    items, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            continue
        items.append(item)
        if item.kind == "exit":
            return items
    raise AssertionError(f"no exit within {timeout} s; got {[(i.kind, i.text) for i in items][-5:]}")


def run_fake(tmp_path, mode, monkeypatch, steps=40, **stop_kw):
    monkeypatch.setenv("FAKE_BITTTT_MODE", mode)
    monkeypatch.setenv("FAKE_BITTTT_STEP_S", "0.01")
    run_dir = tmp_path / "runs" / mode
    argv = build_train_argv(TrainSettings(steps=steps, warmup=1), run_dir, base=[sys.executable, str(FAKE_BITTTT)])
    q = queue.Queue()
    return ChildProcess(argv, q, run_dir=run_dir, cwd=tmp_path).start(), q, run_dir


def events_of(items, stream="stdout"):
    return [parse_line(i.text) for i in items if i.kind == "line" and i.stream == stream]


def test_completed_run_streams_events_then_exit(tmp_path, monkeypatch):
    child, q, run_dir = run_fake(tmp_path, "ok", monkeypatch, steps=30)
    items = collect(q, child)
    assert items[-1].kind == "exit" and items[-1].code == 0
    evs = events_of(items)
    kinds = [e["event"] for e in evs]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 30
    assert evs[-1]["reason"] == "completed" and (run_dir / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("mode,code,kind", [("exit1", 1, "exception"), ("config", 2, "config"),
                                            ("data", 3, "data"), ("oom", 4, "oom")])
def test_error_exits_carry_code_and_error_event(tmp_path, monkeypatch, mode, code, kind):
    child, q, _ = run_fake(tmp_path, mode, monkeypatch)
    items = collect(q, child)
    assert items[-1].code == code
    errors = [e for e in events_of(items) if e["event"] == "error"]
    assert errors and errors[-1]["kind"] == kind


def test_crash_traceback_arrives_on_stderr(tmp_path, monkeypatch):
    child, q, _ = run_fake(tmp_path, "crash", monkeypatch)
    items = collect(q, child)
    assert items[-1].code == 1
    err = [i.text for i in items if i.kind == "line" and i.stream == "stderr"]
    assert err[0].startswith("Traceback") and err[-1] == "RuntimeError: fake trainer crashed in the middle of a step"


def test_garbage_lines_become_raw_records_and_the_run_completes(tmp_path, monkeypatch):
    child, q, _ = run_fake(tmp_path, "garbage", monkeypatch, steps=12)
    items = collect(q, child)
    evs = events_of(items)
    raw = [e for e in evs if e["event"] == "raw"]
    assert len(raw) == 4 * 5 and items[-1].code == 0
    assert [e["event"] for e in evs if e["event"] != "raw"][-1] == "done"


def test_stop_file_gives_graceful_exit_with_checkpoint(tmp_path, monkeypatch):
    child, q, run_dir = run_fake(tmp_path, "ok", monkeypatch, steps=100000)
    time.sleep(0.3)
    child.stop(grace_s=10)
    items = collect(q, child)
    stages = [i.text for i in items if i.kind == "stage"]
    assert len(stages) == 1 and "STOP" in stages[0]
    done = [e for e in events_of(items) if e["event"] == "done"][-1]
    assert items[-1].code == 0 and done["reason"] == "stopped"
    assert (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())


def test_stop_escalates_to_sigterm_when_stop_file_is_ignored(tmp_path, monkeypatch):
    child, q, _ = run_fake(tmp_path, "hang_term", monkeypatch)
    time.sleep(0.3)
    child.stop(grace_s=0.5, term_s=10)
    items = collect(q, child)
    stages = [i.text for i in items if i.kind == "stage"]
    assert len(stages) == 2 and "SIGTERM" in stages[1]
    assert items[-1].code == 0   # SIGTERM handled like STOP: checkpoint, done, exit 0
    assert [e for e in events_of(items) if e["event"] == "done"][-1]["reason"] == "stopped"


def test_stop_escalates_to_sigkill_on_a_hang(tmp_path, monkeypatch):
    child, q, _ = run_fake(tmp_path, "hang", monkeypatch)
    time.sleep(0.3)
    t0 = time.monotonic()
    child.stop(grace_s=0.3, term_s=0.3)
    items = collect(q, child)
    stages = [i.text for i in items if i.kind == "stage"]
    assert [s.split()[0] for s in stages] == ["Stop", "No", "Still"], stages
    assert items[-1].code == -9 and time.monotonic() - t0 < 5


def test_group_kill_reaches_grandchildren(tmp_path):
    # The child starts a grandchild that holds stdout open and ignores SIGTERM.
    script = ("import subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import os, signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(os.getpid(), flush=True); time.sleep(60)'])\n"
              "time.sleep(60)\n")
    q = queue.Queue()
    child = ChildProcess([sys.executable, "-c", script], q, run_dir=tmp_path).start()
    grandchild = int(q.get(timeout=10).text)
    child.stop(grace_s=0.2, term_s=0.3, kill_s=2)
    items = collect(q, child)
    assert items[-1].kind == "exit"
    assert [i.text.split()[0] for i in items if i.kind == "stage"] == ["Stop", "No", "Still"]
    deadline = time.monotonic() + 5
    while psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the grandchild survived the group kill"
        time.sleep(0.05)


def test_missing_executable_raises_at_start(tmp_path):
    with pytest.raises(OSError):
        ChildProcess([str(tmp_path / "no-such-python")], queue.Queue()).start()


def test_stdin_requests_for_chat(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CHAT_TOKEN_S", "0.001")
    q = queue.Queue()
    child = ChildProcess([sys.executable, str(FAKE_BITTTT), "chat", "--model", str(tmp_path), "--protocol", "jsonl"],
                         q, name="chat", stdin=True).start()
    assert child.send({"op": "generate", "prompt": "hi", "max_new_tokens": 5})
    got = []
    while not any(e.get("event") == "done" for e in got):
        got.append(parse_line(q.get(timeout=10).text))
    assert "".join(e["text"] for e in got if e["event"] == "token") == "(turn 1) You said: hi. "
    child.proc.stdin.close()
    assert child.wait(10) == 0
    assert not child.send({"op": "reset"})
