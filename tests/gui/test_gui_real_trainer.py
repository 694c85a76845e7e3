"""The launcher against the real ``python -m bitttt`` (skipped until ``bitttt train`` exists).

These are the contract tests of DESIGN §6/§6b from the launcher's side: the
flags it sends are accepted, every line of a real ``events.jsonl`` parses, STOP
leaves a checkpoint, and ``bitttt chat --protocol jsonl`` streams tokens.
"""

import importlib.util
import queue
from pathlib import Path

import pytest

from bitttt_gui.command import TrainSettings, build_chat_argv, build_train_argv
from bitttt_gui.events import RAW, parse_line
from bitttt_gui.process import AttachedRun, ChildProcess
from bitttt_gui.runs import latest_checkpoint, read_run

from bitttt.runlock import live_trainer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _has_trainer() -> bool:
    spec = importlib.util.find_spec("bitttt")    # finds the package without importing it (and torch)
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(p) / "train.py").exists() or (Path(p) / "train").is_dir() for p in spec.submodule_search_locations)


requires_trainer = pytest.mark.skipif(not _has_trainer(), reason="bitttt train is not implemented yet (no bitttt/train.py)")

TINY = dict(steps=4, batch_size=2, seq_len=32, warmup=1, eval_every=2, save_every=2, sample_every=0, device="cpu")


def _collect(q, timeout=240):
    out = []
    while True:
        item = q.get(timeout=timeout)
        out.append(item)
        if item.kind == "exit":
            return out


@requires_trainer
def test_tiny_real_run_events_parse_and_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("BITTTT_GUI_CMD", raising=False)
    run_dir = tmp_path / "runs" / "real"
    argv = build_train_argv(TrainSettings(**TINY), run_dir)
    q = queue.Queue()
    ChildProcess(argv, q, run_dir=run_dir, cwd=tmp_path).start()
    items = _collect(q)
    stdout = [parse_line(i.text) for i in items if i.kind == "line" and i.stream == "stdout"]
    assert items[-1].code == 0, [i.text for i in items if i.kind == "line"][-20:]
    assert [e for e in stdout if e["event"] == RAW] == []          # jsonl mode: only events on stdout
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    parsed = [parse_line(line) for line in lines]
    assert all(e["event"] != RAW for e in parsed), "every events.jsonl line must parse"
    kinds = [e["event"] for e in parsed]
    assert kinds[0] == "start" and kinds[-1] == "done"
    # The trainer logs a step event every log_every steps and at the last one.
    assert [e["step"] for e in parsed if e["event"] == "step"][-1] == TINY["steps"]
    for e in parsed:
        assert isinstance(e.get("time"), (int, float))
    step = next(e for e in parsed if e["event"] == "step")
    assert {"step", "total_steps", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "eta_s", "mem_bytes"} <= set(step)
    assert read_run(run_dir).status == "completed" and latest_checkpoint(run_dir) is not None
    ternary = [e for e in parsed if e["event"] == "ternary"]   # the Ternary tab's input, at every eval
    assert ternary and ternary[0]["step"] == 0 and {"qk_proj", "down"} <= set(ternary[-1]["groups"])
    assert all(0 <= g["zero_frac"] <= 1 and 0 <= g["flip_frac"] <= 1 for g in ternary[-1]["groups"].values())


@requires_trainer
def test_real_stop_file_and_chat(tmp_path, monkeypatch):
    monkeypatch.delenv("BITTTT_GUI_CMD", raising=False)
    run_dir = tmp_path / "runs" / "stop"
    argv = build_train_argv(TrainSettings(**{**TINY, "steps": 100000, "save_every": 0}), run_dir)
    q = queue.Queue()
    child = ChildProcess(argv, q, run_dir=run_dir, cwd=tmp_path).start()
    while True:
        item = q.get(timeout=240)
        if item.kind == "line" and parse_line(item.text).get("event") == "step":
            break
        assert item.kind != "exit", "the trainer exited before its first step"
    # A launcher that did not start it (this one's window closed) finds it by its lock and stops it.
    assert live_trainer(run_dir)["pid"] == child.pid
    aq = queue.Queue()
    attached = AttachedRun(run_dir, aq).start()
    attached.stop(grace_s=120)
    assert _collect(aq)[-1].code == 0   # from the run's done event: stopped
    items = _collect(q)
    assert items[-1].code == 0
    assert not (run_dir / "trainer.lock").exists()
    done = [parse_line(i.text) for i in items if i.kind == "line" and parse_line(i.text).get("event") == "done"]
    assert done and done[-1]["reason"] == "stopped" and latest_checkpoint(run_dir) is not None

    cq = queue.Queue()
    chat = ChildProcess(build_chat_argv(run_dir), cq, name="chat", stdin=True, cwd=tmp_path).start()
    assert chat.send({"op": "generate", "prompt": "Once", "max_new_tokens": 8, "temperature": 0.8, "top_k": 40,
                      "top_p": 0.95, "repetition_penalty": 1.1})
    tokens = []
    while True:
        item = cq.get(timeout=240)
        assert item.kind != "exit", "the chat server exited"
        ev = parse_line(item.text)
        if ev["event"] == "token":
            tokens.append(ev["text"])
        elif ev["event"] == "done":
            break
    assert tokens and "tokens_per_s" in ev
    chat.proc.stdin.close()
    assert chat.wait(60) == 0
