"""Resume without traps, closing beside a run, the chat model's default and small readouts (issue 28)."""

import json
import subprocess
import sys
import time
import tkinter as tk
from pathlib import Path

import pytest

from bitttt_gui.memory import Gpus, MemorySnapshot
from bitttt_gui.runs import scan_runs
from bitttt_gui.tabs.chat import default_model
from bitttt_gui.tabs.common import break_long_words, choose

from test_gui_app import make_app, pump, settle, start  # noqa: F401  (make_app is a fixture)

CONFIG = {"model_type": "bitttt", "vocab_size": 256, "n_layer": 2, "n_embd": 128, "n_head": 2, "mixer": "attention",
          "ternary": False, "mini_batch": 16,
          "training": {"preset": "tiny", "steps": 40, "batch_size": 8, "seq_len": 64, "lr": 0.001, "warmup": 5,
                       "grad_accum": 2, "device": "cpu", "seed": 7, "eval_every": 10, "save_every": 0,
                       "sample_every": 0, "tokenizer": "byte", "data": []}}


def _stopped_run(run_dir: Path, step: int = 10) -> Path:
    """A run stopped at ``step`` with its checkpoint (the fake resumes from trainer_state.json's step)."""
    ckpt = run_dir / "checkpoints" / f"step-{step:06d}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_text("fake weights\n")
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))
    (ckpt / "config.json").write_text(json.dumps(CONFIG))
    (run_dir / "config.json").write_text(json.dumps(CONFIG))
    (run_dir / "events.jsonl").write_text(
        json.dumps({"event": "start", "time": 1, "total_steps": 40}) + "\n"
        + json.dumps({"event": "step", "time": 2, "step": step, "total_steps": 40, "loss": 3.0}) + "\n"
        + json.dumps({"event": "done", "time": 3, "step": step, "reason": "stopped", "path": str(ckpt)}) + "\n")
    return ckpt


# -- resume ----------------------------------------------------------------------------------------

@pytest.mark.gui
def test_a_resumed_run_that_finishes_clears_resume_from_and_start_asks_before_training_it_again(make_app):
    asked = []
    answers = []
    app = make_app(confirm=lambda title, msg: asked.append(title) or answers.pop(0))
    train = app.tabs["train"]
    run_dir = app.workspace / "runs" / "older"
    ckpt = _stopped_run(run_dir)
    app.bus.publish("resume", run_dir, ckpt)
    settle(app.root, 0.2)
    train.set_value("steps", "15")
    assert train.start() is None
    pump(app.root, lambda: not app.training_running(), what="the resumed run to finish")
    assert (run_dir / "final").is_dir(), app.status.cget("text")
    settle(app.root, 0.3)
    assert train.vars["resume"].get() == ""             # not the old step-10 checkpoint any more
    err = train.start()                                  # a plain Start: the name holds a finished run
    assert err and "already holds a run" in err and not app.training_running()

    # Resuming the finished run from its old checkpoint again: asked first; No leaves it alone.
    app.bus.publish("resume", run_dir, ckpt)
    settle(app.root, 0.2)
    answers.append(False)
    err = train.start()
    assert asked == ["Train a finished run again?"] and err and not app.training_running()
    answers.append(True)
    assert train.start() is None and app.training_running()
    pump(app.root, lambda: not app.training_running(), what="the retrained run")


@pytest.mark.gui
def test_a_resumed_run_that_stops_leaves_its_newest_checkpoint_in_resume_from(make_app, monkeypatch):
    monkeypatch.setenv("FAKE_BITTTT_STEP_S", "0.02")
    app = make_app()
    train = app.tabs["train"]
    run_dir = app.workspace / "runs" / "older"
    ckpt = _stopped_run(run_dir)
    app.bus.publish("resume", run_dir, ckpt)
    settle(app.root, 0.2)
    train.set_value("steps", "100000")
    assert train.start() is None
    pump(app.root, lambda: len(app.tabs["plot"].curve.train_steps) >= 5, what="steps after the resume")
    app.stop_training()
    pump(app.root, lambda: not app.training_running(), what="the stop")
    settle(app.root, 0.3)
    newest = max((run_dir / "checkpoints").iterdir())
    assert newest != ckpt and train.vars["resume"].get() == str(newest)


@pytest.mark.gui
def test_the_form_shows_the_settings_of_the_run_it_attaches_to(make_app, fake_cmd, tmp_path, monkeypatch):
    from bitttt.runlock import live_trainer

    from bitttt_gui.command import TrainSettings, save_settings
    from bitttt_gui.tabs.train import LAST_CONFIG

    workspace = tmp_path / "ws"
    save_settings(TrainSettings.for_preset("tiny", steps=999, seed=3), workspace / LAST_CONFIG)
    monkeypatch.setenv("FAKE_BITTTT_STEP_S", "0.05")
    run_dir = workspace / "runs" / "orphan"
    proc = subprocess.Popen([*fake_cmd, "train", "--preset", "tiny", "--run-dir", str(run_dir), "--steps", "400",
                             "--log-format", "jsonl"], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        end = time.monotonic() + 30
        while live_trainer(run_dir) is None and time.monotonic() < end:
            time.sleep(0.05)
        assert live_trainer(run_dir)["pid"] == proc.pid
        # The real trainer's config.json (the fake writes a stub): the run's own settings.
        (run_dir / "config.json").write_text(json.dumps({**CONFIG, "training": {**CONFIG["training"], "steps": 400}}))
        app = make_app()
        assert app.training_running() and app.run_dir == run_dir
        train = app.tabs["train"]
        settle(app.root, 0.3)
        assert train.vars["run_name"].get() == "orphan" and train.vars["steps"].get() == "400"
        assert train.vars["seed"].get() == "7" and train.vars["n_layer"].get() == "2"
        assert train.vars["mixer"].get() == "attention" and train.vars["resume"].get() == ""
        app.stop_training()
        pump(app.root, lambda: not app.training_running(), what="the attached run to stop")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.gui
def test_after_a_stop_no_memory_reading_of_the_trainer_remains(make_app):
    app = make_app()
    mon = app.tabs["monitor"]
    start(app, run_name="r", steps="100000", save_every="0")
    pump(app.root, lambda: "resident memory now" in mon.value("peak") and "MiB" in mon.value("rss"),
         what="the trainer's memory readings")
    app.stop_training()
    pump(app.root, lambda: not app.training_running(), what="the stop")
    settle(app.root, 1.0)   # memory samples keep arriving (every 0.3 s)
    assert mon.value("rss") == "no run"
    assert "resident" not in mon.value("peak")
    # A reading the sampler took just before the end, delivered after it: still no run.
    app.bus.publish("memory", MemorySnapshot(rss=300 << 20, host_total=8 << 30, host_available=4 << 30))
    assert mon.value("rss") == "no run"


# -- closing beside a run ----------------------------------------------------------------------

@pytest.mark.gui
def test_closing_can_leave_the_run_training_and_a_new_window_attaches_to_it(make_app):
    asked = []
    app = make_app(ask_close=lambda msg: asked.append(msg) or "leave")
    start(app, run_name="long", steps="100000")
    pump(app.root, lambda: len(app.tabs["plot"].curve.train_steps) >= 3, what="steps")
    child = app.child
    run_dir = app.run_dir
    app.on_close()
    with pytest.raises(tk.TclError):
        app.root.winfo_exists()          # the window is gone at once
    assert asked and "long" in asked[0] and "Leave it training" in asked[0]
    time.sleep(0.5)
    assert child.running() and not (run_dir / "STOP").exists()

    again = make_app()
    assert again.training_running() and again.run_dir == run_dir
    again.stop_training()
    pump(again.root, lambda: not again.training_running(), what="the stop from the new window")
    assert child.wait(20) == 0


@pytest.mark.gui
@pytest.mark.parametrize("button,expected", [("Leave it training", "leave"), ("Stop and quit", "stop"),
                                             ("Cancel", None)])
def test_the_close_dialog_names_what_each_button_does(display, button, expected):
    from bitttt_gui.app import CLOSE_CHOICES

    root = tk.Tk()
    try:
        def press():
            dialogs = [w for w in root.winfo_children() if isinstance(w, tk.Toplevel)]
            if not dialogs:
                root.after(50, press)
                return
            for w in _descendants(dialogs[0]):
                if w.winfo_class() == "TButton" and w.cget("text") == button:
                    w.invoke()
                    return
            raise AssertionError(f"no {button!r} button")

        root.after(50, press)
        assert choose(root, "Training in progress", "x is training.", CLOSE_CHOICES, default="leave") == expected
    finally:
        root.destroy()


def _descendants(w):
    for c in w.winfo_children():
        yield c
        yield from _descendants(c)


# -- the chat model's default ----------------------------------------------------------------------

def test_the_chat_default_is_the_newest_finished_run_not_a_newer_short_stopped_one(tmp_path):
    ws = tmp_path
    older = ws / "runs" / "finished"
    (older / "final").mkdir(parents=True)
    (older / "events.jsonl").write_text('{"event": "done", "time": 1, "step": 120, "reason": "completed"}\n')
    newer = ws / "runs" / "five-steps"
    _stopped_run(newer, step=5)
    stamp = time.time()
    import os
    os.utime(older / "events.jsonl", (stamp - 100, stamp - 100))
    infos = [r for r in scan_runs(ws) if r.checkpoint is not None]
    assert infos[0].path == newer          # the newest folder is the short stopped run
    assert default_model(infos) == str(older)
    # No finished run at all: the newest with a checkpoint.
    assert default_model([r for r in infos if r.path == newer]) == str(newer)


# -- small readouts --------------------------------------------------------------------------------

def test_no_nvidia_driver_reads_as_words_not_an_exception_name(monkeypatch):
    import types

    class NVMLError_LibraryNotFound(Exception):
        pass

    def init():
        raise NVMLError_LibraryNotFound()

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=init))
    gpus = Gpus()
    assert not gpus.available
    assert "NVMLError" not in gpus.note and "no NVIDIA driver" in gpus.note


def test_a_path_longer_than_a_line_breaks_after_its_slashes():
    path = "/home/someone/projects/bitttt/runs/20261207-base/checkpoints/step-000072"
    text = break_long_words(f"Saved to {path} and more words", 24, len)
    pieces = text.split(" ")[2].split("\n")
    assert "".join(pieces) == path and len(pieces) > 1
    assert all(len(p) <= 24 for p in pieces) and all(p.endswith("/") for p in pieces[:-1])
    assert text.startswith("Saved to /home/") and text.endswith(" and more words")   # short words untouched
    assert break_long_words("x" * 50, 20, len) == "x" * 20 + "\n" + "x" * 20 + "\n" + "x" * 10   # no slash


@pytest.mark.gui
def test_the_status_line_wraps_a_long_path_inside_the_window(make_app):
    app = make_app()
    app.root.geometry("1180x728")
    long = "Saved the form to /home/someone/" + "a-rather-long-folder-name/" * 14 + "config.json"
    app.set_status("ok", long)
    settle(app.root, 0.3)
    s = app.status
    assert s.winfo_reqwidth() <= s.winfo_width()            # nothing runs past the label's edge
    assert s.winfo_y() + s.winfo_height() <= s.master.winfo_height()
    assert "/\n" in s.cget("text") and s.cget("text").replace("\n", "") == long
