"""The launcher's layout, workspace and what it says after a run ends (issue 13, "Broken")."""

import time
import tkinter as tk
from tkinter import font as tkfont
from pathlib import Path

import pytest

from bitttt_gui import app as app_mod
from bitttt_gui.events import explain_exit
from bitttt_gui.tabs.memory import NO_SAMPLE, format_sample
from bitttt_gui.tabs.plot import PLAIN

from test_gui_app import make_app, pump, settle, start  # noqa: F401  (make_app is a fixture)

pytestmark = pytest.mark.gui


def test_default_workspace_is_the_current_folder_when_it_holds_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "proj" / "runs").mkdir(parents=True)
    assert app_mod.default_workspace(tmp_path / "proj") == tmp_path / "proj"
    assert app_mod.default_workspace(tmp_path) == Path.home() / "bitttt"


@pytest.mark.parametrize("screen,expected", [((1920, 1080), "1180x820"), ((1366, 768), "1180x728"),
                                             ((1024, 600), "1024x560")])
def test_the_window_fits_the_screen(screen, expected):
    assert app_mod.fitted_geometry(*screen) == expected


def test_kill_message_promises_only_a_checkpoint_that_exists():
    _, none = explain_exit(-9)
    assert "no checkpoint" in none and "kept" not in none
    _, some = explain_exit(-9, checkpoint="/w/runs/a/checkpoints/step-000010")
    assert some.endswith("its last checkpoint is kept: /w/runs/a/checkpoints/step-000010.")


def test_sample_text_has_no_glyphs_that_fonts_lack():
    text = format_sample({"step": 5, "prompt": "The ", "text": "cat"})
    assert text == 'step 5, prompt "The ":\nThe cat'
    assert all(ord(ch) < 128 for ch in text)


def test_log_scale_ticks_are_plain_numbers():
    assert [PLAIN(v, 0) for v in (6.0, 0.5, 2.0, 10.0)] == ["6", "0.5", "2", "10"]


def _bottom_visible(widget: tk.Misc, root: tk.Misc) -> bool:
    """The widget is mapped, gets the size it asks for, and lies inside the window."""
    widget.update_idletasks()
    x, y, w, h = widget.winfo_rootx(), widget.winfo_rooty(), widget.winfo_width(), widget.winfo_height()
    inside = x + w <= root.winfo_rootx() + root.winfo_width() and y + h <= root.winfo_rooty() + root.winfo_height()
    return (bool(widget.winfo_ismapped()) and h >= widget.winfo_reqheight() and w >= widget.winfo_reqwidth()
            and inside)


def _grow_fonts(root: tk.Misc, factor: float) -> None:
    """Scale Tk's named fonts, as a machine with larger or wider fonts (or a larger default) would."""
    for name in ("TkDefaultFont", "TkTextFont", "TkFixedFont", "TkHeadingFont", "TkMenuFont"):
        f = tkfont.nametofont(name, root=root)
        size = int(f.cget("size"))
        f.configure(size=round(size * factor))


# The default, what a 1366x768 laptop gets, and the window's minimum; DejaVu's sizes and 30% larger.
@pytest.mark.parametrize("fonts", [1.0, 1.3], ids=["fonts1.0", "fonts1.3"])
@pytest.mark.parametrize("size", ["1180x820", "1180x728", "900x640"])
def test_train_tab_is_unclipped(make_app, size, fonts, screenshot):
    app = make_app()
    _grow_fonts(app.root, fonts)
    app.root.geometry(size)
    train = app.tabs["train"]
    pump(app.root, lambda: "unknown" not in train.verdict_label.cget("text"), what="the estimate")
    # The biggest preset with a batch no computer has memory for: the longest estimate and the warning.
    train.set_value("preset", "base")
    train.set_value("batch_size", "4096")
    pump(app.root, lambda: train.estimate_state == "too_big", what="the too-big warning")
    settle(app.root, 0.3)
    screenshot(f"train_tab_{size}_{fonts}")
    for w in (train.verdict_label, train.estimate_label, train.runtime_label, train.measure_btn, train.start_btn,
              train.stop_btn, train.preview, app.status):
        assert _bottom_visible(w, app.root), w
    line = tkfont.nametofont("TkFixedFont", root=app.root).metrics("linespace")
    assert train.preview.winfo_height() >= 4 * line          # the command pane keeps its four lines
    assert train.estimate_label.winfo_height() >= 4 * line   # and the estimate all of its own
    # What the window cannot show of the form scrolls, and says so with a scrollbar.
    form = train.form_area
    assert form.scrolls() == bool(form.scrollbar.winfo_ismapped())
    if size == "1180x728" and fonts == 1.0:
        assert not form.scrolls()    # a laptop with the usual fonts sees the whole form


def test_estimate_columns_never_run_together():
    from bitttt_gui.tabs.train import estimate_columns

    text = estimate_columns([("Parameters", "101.27M (84.93M ternary)"), ("Weights fp32", "386 MiB")],
                            [("Activations", "12.4 GiB (32×1024)"), ("Runtime", "600 MiB")])
    first, second = text.splitlines()
    assert "ternary)   Activations" in first
    assert first.index("Activations") == second.index("Runtime")   # the right column lines up


def test_command_preview_wraps_at_spaces(make_app):
    app = make_app()
    train = app.tabs["train"]
    train.set_value("data", "/")
    train.set_value("run_name", "run")
    for name, value in (("steps", "123"), ("lr", "0.002"), ("warmup", "7"), ("seed", "9"), ("eval_every", "11"),
                        ("save_every", "13"), ("sample_every", "17"), ("batch_size", "3")):
        train.set_value(name, value)
    settle(app.root, 0.4)
    text = train.preview.get("1.0", "end-1c")
    assert "\n" not in text and len(text) > 200
    # Where each display line starts: only at the start or after a space, never inside a word.
    starts, index = [], "1.0"
    while train.preview.compare(index, "<", "end-1c"):
        starts.append(int(train.preview.count("1.0", index, "chars")[0]) if index != "1.0" else 0)
        nxt = train.preview.index(f"{index} +1 display lines display linestart")
        if nxt == index or train.preview.compare(nxt, "<=", index):
            break
        index = nxt
    assert len(starts) >= 3
    longest_line = max(b - a for a, b in zip(starts, starts[1:] + [len(text)]))
    for i in starts[1:]:
        word = text[text.rfind(" ", 0, i) + 1:(text.find(" ", i) + 1 or len(text) + 1) - 1]
        # A break inside a word only where the word is longer than a whole line (a long path).
        assert text[i - 1] == " " or len(word) > longest_line, text[i - 20:i + 20]


def test_a_killed_run_leaves_no_stale_panels(make_app, monkeypatch):
    monkeypatch.setenv("FAKE_BITTTT_MODE", "hang")
    monkeypatch.setenv("FAKE_BITTTT_STEP_S", "0.05")
    app = make_app(stop_grace_s=0.2, term_grace_s=0.2)
    mon, plot = app.tabs["monitor"], app.tabs["plot"]
    mon.sample.configure(text="step 9: an earlier run's sample")
    start(app, steps="50")
    assert mon.sample.cget("text") == NO_SAMPLE
    pump(app.root, lambda: len(plot.curve.train_steps) >= 2, what="two steps")
    assert "(live)" in plot.title.cget("text")
    app.stop_training()
    pump(app.root, lambda: not app.training_running(), what="the kill")
    assert "saved no checkpoint" in app.status.cget("text")
    assert mon.value("eta") == "—" and mon.value("step").endswith("(ended)")
    assert "(live)" not in plot.title.cget("text") and "interrupted" in plot.title.cget("text")


def test_a_run_name_without_a_checkpoint_can_be_replaced(make_app, monkeypatch):
    asked = []
    app = make_app(confirm=lambda title, msg: asked.append(msg) or True)
    monkeypatch.setenv("FAKE_BITTTT_MODE", "config")   # fails at once, saves nothing
    start(app, run_name="again", steps="5")
    pump(app.root, lambda: not app.training_running(), what="the failed run")
    monkeypatch.setenv("FAKE_BITTTT_MODE", "ok")
    start(app, run_name="again", steps="5")
    assert asked and "never saved a checkpoint" in asked[0]
    pump(app.root, lambda: not app.training_running(), what="the second run")
    assert (app.workspace / "runs" / "again" / "final").is_dir()


def test_a_run_name_without_a_checkpoint_is_kept_if_the_user_says_no(make_app, monkeypatch):
    app = make_app(confirm=lambda *a: False)
    monkeypatch.setenv("FAKE_BITTTT_MODE", "config")
    start(app, run_name="keep", steps="5")
    pump(app.root, lambda: not app.training_running(), what="the failed run")
    err = app.tabs["train"].start()
    assert err and "is taken" in err and "resume" not in err
    assert (app.workspace / "runs" / "keep" / "events.jsonl").exists()


def test_switching_the_workspace_shows_its_runs(make_app, tmp_path):
    app = make_app()
    other = tmp_path / "other"
    (other / "runs" / "old-run").mkdir(parents=True)
    (other / "runs" / "old-run" / "events.jsonl").write_text('{"event": "start", "time": 1, "total_steps": 3}\n')
    assert app.set_workspace(other) is None
    runs = app.tabs["runs"]
    assert str(other / "runs") in runs.where.cget("text")
    assert [i.name for i in runs.infos.values()] == ["old-run"]
    assert app.ctx.workspace == other.resolve() and str(other) in app.root.title()


def test_the_workspace_cannot_change_under_a_running_run(make_app, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_BITTTT_STEP_S", "0.05")
    app = make_app()
    start(app, steps="200")
    assert "stop the training run" in app.set_workspace(tmp_path / "elsewhere")
    app.stop_training()
    pump(app.root, lambda: not app.training_running(), what="the stop")


def _write_run(run_dir: Path, **training):
    import json
    (run_dir / "checkpoints" / "step-000010").mkdir(parents=True)
    cfg = {"model_type": "bitttt", "vocab_size": 320, "n_layer": 2, "n_embd": 128, "n_head": 2, "mixer": "attention",
           "ternary": False, "mini_batch": 16,
           "training": {"preset": "tiny", "steps": 40, "batch_size": 8, "seq_len": 64, "lr": 0.001, "warmup": 5,
                        "grad_accum": 2, "device": "cpu", "seed": 7, "eval_every": 10, "save_every": 10,
                        "sample_every": 0, "tokenizer": "byte", "data": ["/data/notes.txt"], **training}}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    (run_dir / "checkpoints" / "step-000010" / "config.json").write_text(json.dumps(cfg))
    (run_dir / "events.jsonl").write_text('{"event": "start", "time": 1, "total_steps": 40}\n')


def test_run_settings_reads_the_runs_own_config(tmp_path):
    from bitttt_gui.runs import run_settings

    _write_run(tmp_path / "r", tokenizer="bpe", bpe_vocab_size=1024)
    got = run_settings(tmp_path / "r")
    assert got["n_layer"] == 2 and got["mixer"] == "attention" and got["ternary"] is False
    assert got["steps"] == 40 and got["seed"] == 7 and got["grad_accum"] == 2
    assert got["vocab_size"] == 1024 and got["data"] == "/data/notes.txt"
    assert run_settings(tmp_path / "missing") == {}


def test_resume_from_the_runs_tab_loads_that_runs_config_and_locks_the_architecture(make_app):
    app = make_app()
    run_dir = app.workspace / "runs" / "older"
    _write_run(run_dir)
    runs, train = app.tabs["runs"], app.tabs["train"]
    runs.refresh()
    runs.tree.selection_set(str(run_dir))
    runs.resume()
    settle(app.root, 0.3)
    assert train.errors == {}   # /data/notes.txt is gone, but a resumed run reads its own prepared data
    assert train.vars["n_layer"].get() == "2" and train.vars["mixer"].get() == "attention"
    assert train.vars["steps"].get() == "40" and train.vars["seed"].get() == "7"
    assert train.vars["resume"].get() == str(run_dir / "checkpoints" / "step-000010")
    for name in ("n_layer", "mixer", "data", "tokenizer", "run_name"):
        assert str(train.widgets[name].cget("state")) == "disabled", name
    assert str(train.widgets["steps"].cget("state")) == "normal"
    preview = train.preview.get("1.0", "end")
    assert "--n-layer" not in preview and "--steps 40" in preview
    train.set_value("resume", "")
    settle(app.root, 0.3)
    assert str(train.widgets["n_layer"].cget("state")) == "normal"


# -- surviving the launcher: a run that trains on after its window is gone ----------------------

def _start_detached_fake(fake_cmd, workspace: Path, name: str, steps: int = 400):
    """A trainer started outside the window (a crashed launcher's, or a terminal's)."""
    import subprocess

    run_dir = workspace / "runs" / name
    proc = subprocess.Popen([*fake_cmd, "train", "--preset", "tiny", "--run-dir", str(run_dir), "--steps", str(steps),
                             "--log-format", "jsonl"], stdout=subprocess.DEVNULL, start_new_session=True)
    return proc, run_dir


def test_the_launcher_attaches_to_a_run_that_trains_without_it_and_stops_it(make_app, fake_cmd, tmp_path,
                                                                             monkeypatch):
    from bitttt.runlock import live_trainer

    monkeypatch.setenv("FAKE_BITTTT_STEP_S", "0.05")
    proc, run_dir = _start_detached_fake(fake_cmd, tmp_path / "ws", "orphan")
    try:
        end = time.monotonic() + 30
        while live_trainer(run_dir) is None and time.monotonic() < end:
            time.sleep(0.05)
        assert live_trainer(run_dir)["pid"] == proc.pid
        app = make_app()
        assert app.training_running() and app.run_dir == run_dir and f"pid {proc.pid}" in app.status.cget("text")
        pump(app.root, lambda: len(app.tabs["plot"].curve.train_steps) >= 3, what="the followed steps")
        assert app.tabs["runs"].infos[str(run_dir)].status == "running"
        app.stop_training()
        pump(app.root, lambda: not app.training_running(), what="the attached run to stop")
        assert proc.wait(10) == 0
        assert app.status.cget("text").startswith("Training stopped on request")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stale_lock_is_not_a_running_run(make_app, tmp_path):
    import json

    run_dir = tmp_path / "ws" / "runs" / "dead"
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text('{"event": "start", "time": 1, "total_steps": 3}\n')
    # pid 1 exists, but it was not created at this time: the lock is stale
    (run_dir / "trainer.lock").write_text(json.dumps({"pid": 1, "create_time": 12345.0, "argv": []}))
    app = make_app()
    assert not app.training_running()
    assert app.tabs["runs"].infos[str(run_dir)].status == "interrupted"


# -- compare runs --------------------------------------------------------------------------------

def _events(path: Path, tokenizer="byte", batch=4, seq=8, losses=(4.0, 3.0, 2.0), val=(2.5,), bpb=None):
    import json
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"event": "start", "time": 1, "total_steps": len(losses),
              "config": {"batch_size": batch, "seq_len": seq, "grad_accum": 1, "tokenizer": tokenizer}}]
    lines += [{"event": "step", "time": 1, "step": i + 1, "loss": v} for i, v in enumerate(losses)]
    lines += [{"event": "eval", "time": 1, "step": len(losses), "val_loss": v, "val_bpb": bpb} for v in val]
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))


def test_curve_series_by_tokens_and_bits_per_byte(tmp_path):
    import math

    from bitttt_gui.curve import LossCurve

    _events(tmp_path / "a" / "events.jsonl", tokenizer="byte", batch=4, seq=8)
    c = LossCurve.from_events_file(tmp_path / "a" / "events.jsonl", name="a")
    tx, ty, vx, vy = c.series("tokens", "loss")
    assert tx == [32, 64, 96] and ty == [4.0, 3.0, 2.0] and vx == [96]
    _, ty, _, vy = c.series("step", "bpb")           # bytes: 1 token = 1 byte, bits = nats / ln 2
    assert ty == pytest.approx([v / math.log(2) for v in (4.0, 3.0, 2.0)]) and vy == pytest.approx([2.5 / math.log(2)])
    # BPE: the factor comes from the trainer's eval (val_bpb / val_loss), and without one there is none
    _events(tmp_path / "b" / "events.jsonl", tokenizer="bpe", val=(2.0,), bpb=1.0)
    b = LossCurve.from_events_file(tmp_path / "b" / "events.jsonl")
    assert b.series("step", "bpb")[1] == pytest.approx([2.0, 1.5, 1.0])
    _events(tmp_path / "c" / "events.jsonl", tokenizer="bpe", val=())
    assert LossCurve.from_events_file(tmp_path / "c" / "events.jsonl").series("step", "bpb") is None


def test_compare_overlays_the_selected_runs(make_app):
    app = make_app()
    runs_dir = app.workspace / "runs"
    _events(runs_dir / "one" / "events.jsonl", losses=(5.0, 4.0))
    _events(runs_dir / "two" / "events.jsonl", losses=(6.0, 3.0, 1.5), batch=8)
    runs, plot = app.tabs["runs"], app.tabs["plot"]
    runs.refresh()
    runs.tree.selection_set([str(runs_dir / "one"), str(runs_dir / "two")])
    runs.compare()
    assert app.notebook.select() == str(plot)
    plot.x_axis.set("tokens")
    plot.redraw()
    labels = {line.get_label(): line for line in plot._compare_lines}
    assert set(labels) == {"one train", "one validation", "two train", "two validation"}
    assert list(labels["two validation"].get_xdata()) == [3 * 8 * 8]
    assert plot.ax.get_xlabel() == "tokens seen"
    plot.compare([])
    plot.redraw()
    assert plot._compare_lines == []


def test_ternary_tab_plots_each_group(make_app):
    app = make_app()
    tab = app.tabs["ternary"]
    app.bus.publish("train.started", app.workspace / "runs" / "t", [])
    for step, flips in ((0, 0.0), (100, 0.05), (200, 0.01)):
        app.bus.publish("train.record", {"event": "ternary", "time": 0, "step": step, "groups": {
            "down": {"zero_frac": 0.3, "flip_frac": flips, "scale": 0.02},
            "qk_proj": {"zero_frac": 0.4, "flip_frac": flips / 2, "scale": 0.03}}}, "stdout")
    app.bus.publish("train.record", {"event": "ternary", "time": 0, "step": 300, "groups": "garbage"}, "stdout")
    tab.redraw()
    lines = {line.get_label(): line for line in tab.axes["flip_frac"].lines}
    assert set(lines) == {"down", "qk_proj"}
    assert list(lines["down"].get_ydata()) == [0.0, 0.05, 0.01] and list(lines["down"].get_xdata()) == [0, 100, 200]


def test_processes_show_the_global_batch_and_memory_of_all(make_app):
    app = make_app()
    train = app.tabs["train"]
    pump(app.root, lambda: "unknown" not in train.verdict_label.cget("text"), what="the estimate")
    train.set_value("nproc", "2")
    pump(app.root, lambda: "global batch" in train.verdict_label.cget("text"), what="the parallel estimate")
    assert "2 processes: global batch 32 sequences (16 × 1 × 2)" in train.verdict_label.cget("text")
    assert "--nproc 2" in train.preview.get("1.0", "end")


def test_a_diverged_run_says_so_with_its_hint():
    severity, text = explain_exit(5, {"kind": "diverged", "message": "training diverged at step 7",
                                      "hint": "lower --lr (it is 3:g; try 0.3)"})
    assert severity == "error" and text.startswith("Training diverged: training diverged at step 7. lower --lr")


def test_more_settings_open_under_the_form_and_reach_the_command(make_app):
    app = make_app()
    train = app.tabs["train"]
    assert not train.more_frame.winfo_ismapped()
    train.more_btn.invoke()
    settle(app.root, 0.3)
    assert train.more_frame.winfo_ismapped()
    train.set_value("min_lr", "0.0001")
    train.set_value("compile", True)
    train.set_value("sample_prompt", "Once ")
    settle(app.root, 0.3)
    preview = train.preview.get("1.0", "end")
    assert "--min-lr 0.0001" in preview and "--compile" in preview and "--sample-prompt 'Once '" in preview
