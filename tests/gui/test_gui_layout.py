"""What the issue 13 audit found cut off or wrong at 1366x768 (the window gets 1180x728), each checked
with the real widgets: nothing is clipped, nothing is pushed out of its bar."""

import json
import os
import tkinter as tk
from tkinter import font as tkfont

import pytest

from test_gui_app import make_app, pump, settle, start  # noqa: F401  (make_app is a fixture)

pytestmark = pytest.mark.gui
LAPTOP = "1180x728"   # what fitted_geometry gives a 1366x768 screen


def _whole(widget: tk.Misc, root: tk.Misc) -> bool:
    """Mapped, as wide and tall as it asks, and inside the window."""
    widget.update_idletasks()
    x, y, w, h = widget.winfo_rootx(), widget.winfo_rooty(), widget.winfo_width(), widget.winfo_height()
    inside = x + w <= root.winfo_rootx() + root.winfo_width() and y + h <= root.winfo_rooty() + root.winfo_height()
    return bool(widget.winfo_ismapped()) and w >= widget.winfo_reqwidth() and h >= widget.winfo_reqheight() and inside


def _laptop_app(make_app, **kw):
    app = make_app(**kw)
    app.root.geometry(LAPTOP)
    settle(app.root, 0.3)
    return app


def test_a_long_log_line_wraps_instead_of_running_off(make_app):
    app = _laptop_app(make_app)
    logs = app.tabs["logs"]
    app.show_tab("logs")
    long = "Traceback line " + "x" * 150 + " /a/very/long/path/" + "y" * 150 + " END"
    logs.append(long)
    logs.append("short")
    settle(app.root, 0.3)
    logs.text.see("1.0")
    settle(app.root, 0.1)
    assert logs.text.bbox("1.0") is not None and logs.text.bbox("1.end-1c") is not None   # first and last character


def test_the_loss_curve_title_leaves_the_controls_whole(make_app):
    app = _laptop_app(make_app)
    plot = app.tabs["plot"]
    app.show_tab("plot")
    plot._on_started(app.workspace / "runs" / ("a-very-long-run-name-" * 4), [])
    settle(app.root, 0.3)
    assert _whole(plot.smooth_name, app.root) and _whole(plot.title, app.root)
    assert plot.title.winfo_rooty() + plot.title.winfo_height() <= plot.smooth_name.winfo_rooty()


def test_the_button_bar_keeps_every_button_while_a_stop_is_in_progress(make_app, monkeypatch):
    monkeypatch.setenv("FAKE_BITTTT_MODE", "hang")
    app = _laptop_app(make_app, stop_grace_s=5, term_grace_s=5)
    train = app.tabs["train"]
    start(app, steps="1000", run_name="stopping")
    settle(app.root, 0.5)
    app.stop_training()
    pump(app.root, lambda: "Stop requested" in app.status.cget("text"), what="the first stop stage")
    settle(app.root, 0.2)
    load = [w for w in train.start_btn.master.winfo_children() if str(w.cget("text")).startswith("Load config")][0]
    assert _whole(load, app.root) and _whole(train.stop_btn, app.root)
    assert train.stop_btn.cget("text") == "■ Stopping…" and str(train.stop_btn.cget("state")) == "disabled"
    pump(app.root, lambda: not app.training_running(), timeout=30, what="the stop")
    assert train.stop_btn.cget("text") == "■ Stop"


@pytest.mark.parametrize("size", ["1180x820", LAPTOP, "900x640"])
def test_the_chat_prompt_bar_and_serve_row_stay_on_screen(make_app, size):
    app = make_app()
    app.root.geometry(size)
    chat = app.tabs["chat"]
    app.show_tab("chat")
    settle(app.root, 0.3)
    for w in (chat.entry, chat.send_btn, chat.stop_btn, chat.load_btn, chat.serve_btn, chat.serve_stop_btn,
              *chat.copy_buttons.values(), chat.serve_label):
        assert _whole(w, app.root), w
    if size != "900x640":     # the window's minimum gives the memory plot what is left
        assert _whole(chat.mem_canvas.get_tk_widget(), app.root)


def _run_with_checkpoint(ws, name):
    run = ws / "runs" / name
    (run / "checkpoints" / "step-000005").mkdir(parents=True)
    (run / "events.jsonl").write_text(json.dumps({"event": "start", "total_steps": 5}) + "\n"
                                      + json.dumps({"event": "done", "reason": "completed", "step": 5}) + "\n")
    return run


def test_the_chat_model_defaults_only_to_a_run_with_a_checkpoint(make_app):
    app = make_app()
    old = _run_with_checkpoint(app.workspace, "old")
    chat = app.tabs["chat"]
    chat.refresh_models()
    assert chat.model.get() == str(old)
    start(app, run_name="fresh", steps="100000", save_every="0")
    pump(app.root, lambda: len(app.tabs["plot"].curve.train_steps) >= 3, what="some steps")
    assert chat.model.get() == str(old)        # the new run has nothing to load yet
    app.stop_training()
    pump(app.root, lambda: not app.training_running(), what="the stop")
    start(app, run_name="saves", steps="100000", save_every="3")
    pump(app.root, lambda: chat.model.get().endswith("saves"), what="the new run's first checkpoint")


def test_runs_columns_show_a_whole_timestamp_and_status(make_app):
    app = _laptop_app(make_app)
    _run_with_checkpoint(app.workspace, "r")
    runs = app.tabs["runs"]
    runs.refresh()
    app.show_tab("runs")
    settle(app.root, 0.3)
    tree = runs.tree
    font = tkfont.nametofont("TkDefaultFont")
    iid = tree.get_children()[0]
    for col in ("when", "status", "loss"):
        text = max(str(tree.set(iid, col)), tree.heading(col)["text"], key=font.measure)
        assert font.measure(text) + 8 <= int(tree.column(col, "width")), (col, text)
    assert sum(int(tree.column(c, "width")) for c in tree["columns"]) <= tree.winfo_width()


def test_a_long_progress_message_wraps(make_app):
    app = _laptop_app(make_app)
    mon = app.tabs["monitor"]
    app.show_tab("monitor")
    mon.state_label.configure(text="Training completed; last checkpoint: /tmp/" + "long-folder-name/" * 12 + "final.")
    settle(app.root, 0.3)
    label, frame = mon.state_label, mon.state_label.master
    assert label.winfo_height() >= label.winfo_reqheight() > 2 * tkfont.nametofont("TkDefaultFont").metrics("linespace")
    assert label.winfo_rootx() + label.winfo_width() <= frame.winfo_rootx() + frame.winfo_width()   # wrapped, inside


def test_chat_says_what_a_small_model_can_do_and_samples_without_the_greedy_loop(make_app):
    app = _laptop_app(make_app)
    chat = app.tabs["chat"]
    app.show_tab("chat")
    settle(app.root, 0.3)
    assert _whole(chat.note, app.root) and "not facts or instructions" in chat.note.cget("text")
    # temperature 0 loops ("'two': 'two': ..."): the default samples, and never repeats a 16-token run
    assert float(chat.params["temperature"].get()) > 0 and int(chat.params["no_repeat_ngram"].get()) > 0


def test_short_runs_get_whole_step_ticks_and_the_memory_label_is_not_a_peak(make_app):
    app = _laptop_app(make_app)
    start(app, steps="7", eval_every="0", sample_every="0", save_every="0", warmup="1")
    pump(app.root, lambda: not app.training_running(), what="the run")
    plot = app.tabs["plot"]
    plot.redraw()
    plot.canvas.draw()
    assert plot.curve.train_steps == [1, 2, 3, 4, 5, 6, 7]          # every step event, not one in ten
    ticks = [t for t in plot.ax.get_xticks() if plot.ax.get_xlim()[0] <= t <= plot.ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    labels = [str(w.cget("text")) for w in app.tabs["monitor"].winfo_children()[1].winfo_children()]
    assert "Trainer reports" in labels and not any("peak" in t.lower() for t in labels)


def test_a_full_progress_bar_is_visibly_full(make_app):
    from PIL import ImageGrab

    app = _laptop_app(make_app)
    app.show_tab("monitor")
    bar = app.tabs["monitor"].bar
    bar.configure(value=1.0)
    settle(app.root, 0.3)
    x, y = bar.winfo_rootx() + bar.winfo_width() // 2, bar.winfo_rooty() + bar.winfo_height() // 2
    inside = ImageGrab.grab(bbox=(x, y, x + 1, y + 1), xdisplay=os.environ["DISPLAY"])
    r, g, b = inside.convert("RGB").getpixel((0, 0))[:3]
    assert b > r + 60, (r, g, b)        # the bar's blue, not the window's grey


def test_the_ternary_tab_says_no_reports_until_the_first_then_plots_them(make_app):
    app = make_app()
    tab = app.tabs["ternary"]
    start(app, run_name="tern", steps="100000", eval_every="1000", save_every="0", sample_every="0")
    settle(app.root, 0.5)
    assert "no ternary reports yet" in tab.title.cget("text") and len(tab.history) == 0
    app.stop_training()
    pump(app.root, lambda: not app.training_running(), what="the stop")
    start(app, run_name="tern2", steps="12", eval_every="4", save_every="0", sample_every="0")
    pump(app.root, lambda: not app.training_running(), what="the run")
    assert sorted(tab.history.groups) == ["attn", "mlp"] and tab.history.groups["mlp"]["step"] == [4, 8, 12]
    assert tab.title.cget("text").startswith("Run tern2: 2 groups")
