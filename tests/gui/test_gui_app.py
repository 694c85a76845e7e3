"""The real window under a private Xvfb, driven through widget methods, against the fake trainer."""

import json
import time
import tkinter as tk

import pytest

from bitttt_gui.app import App, cancel_pending_afters
from bitttt_gui.command import TrainSettings, save_settings

pytestmark = pytest.mark.gui


def pump(root, cond, timeout=20.0, what="condition"):
    """Run the Tk loop until ``cond()`` holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        root.update()
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def settle(root, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        root.update()
        time.sleep(0.01)


@pytest.fixture
def make_app(display, fake_cmd, tmp_path):
    made = []

    def make(confirm=lambda *a: True, **kw):
        root = tk.Tk()
        kw.setdefault("stop_grace_s", 10)
        kw.setdefault("term_grace_s", 5)
        app = App(root, tmp_path / "ws", bitttt_cmd=fake_cmd, confirm=confirm, memory_interval_s=0.3, **kw)
        made.append(app)
        settle(root, 0.2)
        return app

    yield make
    for app in made:
        if app.child and app.child.running():
            app.child.kill_now()
            app.child.wait(5)
        chat = app.tabs["chat"]
        for child in (chat.child, chat.serve_child, app.tabs["train"].calibration):
            if child and child.running():
                child.kill_now()
                child.wait(5)
        app.sampler.stop()
        try:
            cancel_pending_afters(app.root)
            app.root.destroy()
        except tk.TclError:
            pass


def start(app, **values):
    train = app.tabs["train"]
    for k, v in values.items():
        train.set_value(k, v)
    assert train.start() is None
    assert app.training_running()


def test_first_start(make_app, screenshot):
    """What a new user sees: the Train tab with the tiny preset, an estimate against this machine, a hint."""
    app = make_app()
    train = app.tabs["train"]
    assert app.notebook.select() == str(train)
    assert app.status.cget("text").startswith("Workspace ") and "press Start training" in app.status.cget("text")
    assert train.vars["preset"].get() == "tiny" and train.vars["data"].get() == ""
    pump(app.root, lambda: "unknown" not in train.verdict_label.cget("text"), what="the estimate against free memory")
    assert train.verdict_label.cget("text").startswith("On this computer's RAM: about") or "GPU" in train.verdict_label.cget("text")
    assert "train --preset tiny --run-dir" in train.preview.get("1.0", "end")
    for tab in app.tabs:
        app.show_tab(tab)
        settle(app.root, 0.3)
        screenshot(f"first-start-{tab}")


def test_train_watch_stop_then_chat(make_app, screenshot, monkeypatch):
    app = make_app()
    root, train, logs, plot, mon = app.root, app.tabs["train"], app.tabs["logs"], app.tabs["plot"], app.tabs["monitor"]
    start(app, run_name="first", steps="100000", warmup="1", eval_every="5", sample_every="20", save_every="0")
    pump(root, lambda: len(plot.curve.train_steps) >= 30 and len(plot.curve.val_steps) >= 3 and plot.redraws >= 2,
         what="loss points")
    pump(root, lambda: plot.ax.get_xlim()[1] >= 30, what="the plot's x range to cover the steps")
    plot.redraw()   # steps keep arriving between the throttled redraws: draw what the curve holds now
    lo, hi = plot.ax.get_ylim()
    assert lo <= min(plot.curve.train_loss) and hi >= max(plot.curve.val_loss)
    assert any(line.startswith("step 1/100000 | loss") for line in logs.lines())   # as `bitttt train` prints
    assert any(line.startswith("eval  step 5 | val loss") for line in logs.lines())
    assert str(train.stop_btn.cget("state")) == "normal" and str(train.start_btn.cget("state")) == "disabled"
    pump(root, lambda: "MiB" in mon.value("rss"), what="the run's memory readout")
    assert mon.value("step").endswith("/ 100000") and mon.value("lr") != "—" and mon.value("eta") != "—"
    assert mon.value("gpu") != "—" or mon.gpu_note.cget("text")
    assert "a time there was a fake model" in mon.sample.cget("text")   # a GPU line, or why there is none
    for tab in ("train", "logs", "plot", "monitor"):
        app.show_tab(tab)
        settle(root, 0.4)
        screenshot(f"tab-{tab}-running")

    train.stop_btn.invoke()
    pump(root, lambda: not app.training_running(), what="the graceful stop")
    run_dir = app.workspace / "runs" / "first"
    checkpoints = list((run_dir / "checkpoints").iterdir())
    assert checkpoints and (checkpoints[0] / "model.safetensors").exists()
    assert any("Stop requested: wrote" in line for line in logs.lines())
    assert app.status.cget("text").startswith("Training stopped on request at step")
    runs = app.tabs["runs"]
    assert runs.infos[str(run_dir)].status == "stopped"
    app.show_tab("runs")
    settle(root, 0.3)
    screenshot("tab-runs")

    # Chat with the run just trained, from the Runs tab.
    monkeypatch.setenv("FAKE_CHAT_TOKEN_S", "0.002")
    chat = app.tabs["chat"]
    runs.tree.selection_set(str(run_dir))
    runs.chat()
    assert app.notebook.select() == str(chat)
    pump(root, lambda: chat.status.cget("text").startswith("Ready"), what="the chat server")
    chat.params["max_new_tokens"].set("12")
    chat.prompt.set("hello there")
    assert chat.send() is None
    pump(root, lambda: not chat.generating, what="the streamed answer")
    assert "You: hello there\nModel: (turn 1) You said: hello there." in chat.transcript_text()
    assert "tokens/s" in chat.speed.cget("text")
    assert chat.loaded.cget("text") == f"Loaded checkpoint: {run_dir.resolve()}"
    chat.prompt.set("again")
    chat.send()
    pump(root, lambda: not chat.generating and "(turn 2)" in chat.transcript_text(), what="the second turn")
    chat.reset_memory()
    chat.prompt.set("after reset")
    chat.send()
    pump(root, lambda: not chat.generating and "(turn 1) You said: after reset" in chat.transcript_text(),
         what="a turn after Reset memory")
    settle(root, 0.2)
    screenshot("tab-chat")


def test_chat_stop_generation_cancels_the_reply_only(make_app, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CHAT_TOKEN_S", "0.02")
    app = make_app()
    chat = app.tabs["chat"]
    chat.model.set(str(tmp_path))
    assert chat.start_server() is None
    pump(app.root, lambda: chat.status.cget("text").startswith("Ready"), what="the chat server")
    chat.prompt.set("go")
    chat.send()
    pump(app.root, lambda: chat.transcript_text().count(" ") > 8, what="some tokens")
    assert chat.generating and "tokens/s" in chat.speed.cget("text")      # the rate shows while streaming
    assert str(chat.stop_btn.cget("state")) == "normal"
    chat.stop_btn.invoke()
    pump(app.root, lambda: not chat.generating, timeout=5, what="the stop")
    assert len(chat.transcript_text().split()) < 100 and "— (stopped)" in chat.transcript_text()
    assert chat.child.running()                                        # the server and its memory stay
    chat.prompt.set("next")
    chat.send()
    pump(app.root, lambda: not chat.generating, what="the next turn")
    assert "Model: (turn 2) You said: next." in chat.transcript_text()


def test_chat_memory_plot_and_reset(make_app, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CHAT_TOKEN_S", "0.001")
    app = make_app()
    chat = app.tabs["chat"]
    chat.model.set(str(tmp_path))
    chat.params["max_new_tokens"].set("5")
    assert chat.start_server() is None
    pump(app.root, lambda: chat.status.cget("text").startswith("Ready"), what="the chat server")
    for text in ("one", "two"):
        chat.prompt.set(text)
        chat.send()
        pump(app.root, lambda: not chat.generating, what="a turn")
    assert chat.memory.turns == [0, 1, 2] and chat.memory.series(0) == [0.0, 0.01, 0.02]   # the fake's drift
    assert [list(line.get_ydata()) for line in chat.mem_lines] == [[0.0, 0.01, 0.02]] * 2
    chat.reset_memory()
    pump(app.root, lambda: len(chat.memory.turns) == 4, what="the reset's point")
    assert chat.memory.turns[-1] == 2 and chat.memory.drift[-1] == [0.0, 0.0]
    assert list(chat.mem_lines[0].get_ydata())[-1] == 0.0


@pytest.mark.parametrize("mode,status", [
    ("oom", "Out of memory: CUDA out of memory. Tried to allocate 2.00 GiB. lower --batch-size"),
    ("data", "Data error: cannot read"),
    ("config", "Configuration error: n_embd=130"),
    ("crash", "The trainer crashed (exit code 1). Last lines:"),
])
def test_failures_become_clear_messages(make_app, monkeypatch, mode, status):
    monkeypatch.setenv("FAKE_BITTTT_MODE", mode)
    app = make_app()
    start(app, steps="50")
    pump(app.root, lambda: not app.training_running(), what="the failed run")
    assert app.status.cget("text").startswith(status)
    logs = app.tabs["logs"].lines()
    if mode == "crash":
        assert "RuntimeError: fake trainer crashed in the middle of a step" in logs
    code = dict(oom=4, data=3, config=2, crash=1)[mode]
    assert any(line.startswith(f"── exit code {code}: {status[:20]}") for line in logs)
    assert str(app.tabs["train"].start_btn.cget("state")) == "normal"


def test_hang_shows_each_stop_stage(make_app, monkeypatch):
    monkeypatch.setenv("FAKE_BITTTT_MODE", "hang")
    app = make_app(stop_grace_s=0.3, term_grace_s=0.3)
    start(app, steps="50")
    pump(app.root, lambda: len(app.tabs["plot"].curve.train_steps) >= 2, what="two steps")
    app.stop_training()
    pump(app.root, lambda: not app.training_running(), what="the kill")
    lines = app.tabs["logs"].lines()
    assert any(line.startswith("Stop requested") for line in lines)
    assert any("SIGTERM to the process group" in line for line in lines)
    assert any("killing the process group" in line for line in lines)
    assert "ended by signal 9" in app.status.cget("text")
    assert app.tabs["runs"].infos[str(app.workspace / "runs" / app.run_dir.name)].status == "interrupted"


def test_garbage_output_is_shown_raw_and_the_console_stays_bounded(make_app, monkeypatch):
    monkeypatch.setenv("FAKE_BITTTT_MODE", "garbage")
    monkeypatch.setenv("FAKE_BITTTT_STEP_S", "0.001")
    app = make_app()
    logs = app.tabs["logs"]
    logs.max_lines = 100
    start(app, steps="300", eval_every="0")
    pump(app.root, lambda: not app.training_running(), what="the run")
    lines = logs.lines()
    assert logs.line_count() <= 110
    assert "UserWarning: this is not JSON at all" in lines and '{"event": "step", "step": ' in lines
    assert lines[-1].startswith("── exit code 0")
    assert app.tabs["plot"].curve.train_steps[-1] == 300


def test_log_follow_pauses_when_scrolled_up_and_search_finds(make_app):
    app = make_app()
    logs = app.tabs["logs"]
    app.show_tab("logs")
    for i in range(300):
        logs.append(f"line {i}")
    app.root.update()
    assert logs.at_bottom() and logs.follow.get()
    logs.text.yview_moveto(0)
    logs.user_scrolled()
    assert not logs.follow.get()
    logs.append("line new")
    app.root.update()
    assert logs.text.yview()[0] == 0.0        # stayed where the user is reading
    logs.text.yview_moveto(1.0)
    logs.user_scrolled()
    assert logs.follow.get()
    logs.query.set("line 12")
    first = logs.find_next()
    assert first == "13.0" and logs.match_label.cget("text") == "11 matches"   # 12, 120..129
    assert logs.find_next() == "121.0"


def test_bad_number_is_marked_and_not_sent(make_app):
    app = make_app()
    train = app.tabs["train"]
    train.set_value("steps", "12x")
    train.set_value("n_head", "5")
    settle(app.root, 0.3)
    assert str(train.widgets["steps"].cget("style")) == "Bad.TEntry"
    assert str(train.widgets["n_head"].cget("style")) == "Bad.TEntry"
    assert str(train.widgets["lr"].cget("style")) == "TEntry"
    assert str(train.start_btn.cget("state")) == "disabled"
    assert train.start() is not None and app.child is None
    assert "Steps: expected a whole number" in train.error_label.cget("text")
    train.set_value("steps", "40")
    train.set_value("n_head", "4")
    settle(app.root, 0.3)
    assert "--steps 40" in train.preview.get("1.0", "end") and str(train.start_btn.cget("state")) == "normal"


def test_preset_config_files_and_last_config(make_app, tmp_path):
    app = make_app()
    train = app.tabs["train"]
    train.set_value("preset", "small")
    settle(app.root, 0.3)
    assert train.vars["n_embd"].get() == "512"   # bitttt.config: small is 8 x 512
    assert "Parameters" in train.estimate_label.cget("text") and "M" in train.estimate_label.cget("text")
    assert train.verdict_label.cget("text").startswith("On ")
    path = tmp_path / "form.json"
    save_settings(TrainSettings.for_preset("base", steps=123, mixer="attention"), path)
    train.load_config(path)
    assert train.vars["steps"].get() == "123" and train.vars["mixer"].get() == "attention"
    start(app, steps="20")
    pump(app.root, lambda: not app.training_running(), what="the run")
    assert json.loads(train.last_config_path().read_text())["steps"] == 20
    # A new window restores the last config.
    again = make_app()
    assert again.tabs["train"].vars["steps"].get() == "20" and again.tabs["train"].vars["preset"].get() == "base"


def test_existing_run_folder_is_not_overwritten(make_app):
    app = make_app()
    start(app, run_name="same", steps="5")
    pump(app.root, lambda: not app.training_running(), what="the run")
    err = app.tabs["train"].start()
    assert err and "already holds a run" in err and not app.training_running()


def test_closing_with_a_run_asks_first(make_app):
    answers = []
    app = make_app(ask_close=lambda msg: answers.pop(0))
    start(app, steps="100000")
    answers.append(None)   # Cancel
    app.on_close()
    settle(app.root, 0.2)
    assert app.training_running() and app.root.winfo_exists()
    answers.append("stop")
    app.on_close()
    pump(app.root, lambda: not app.training_running(), what="the stop on close")
    with pytest.raises(tk.TclError):
        app.root.winfo_exists()     # destroyed once the trainer had exited


def test_reopen_a_past_curve(make_app, tmp_path):
    run = tmp_path / "ws" / "runs" / "old"
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text("".join(json.dumps({"event": "step", "step": i, "loss": 3.0 / i}) + "\n"
                                              for i in range(1, 51)))
    app = make_app()
    app.tabs["runs"].refresh()
    app.tabs["runs"].tree.selection_set(str(run))
    app.tabs["runs"].show_curve()
    plot = app.tabs["plot"]
    assert app.notebook.select() == str(plot) and len(plot.curve.train_steps) == 50
    plot.log_scale.set(True)
    plot.mark_dirty()
    pump(app.root, lambda: plot.ax.get_yscale() == "log", what="log scale")


def test_chat_while_training(make_app, monkeypatch):
    monkeypatch.setenv("FAKE_CHAT_TOKEN_S", "0.002")
    app = make_app()
    start(app, run_name="busy", steps="100000", save_every="5")
    run_dir = app.workspace / "runs" / "busy"
    chat = app.tabs["chat"]
    # default: the run being trained, from its first checkpoint event on (nothing to load before)
    pump(app.root, lambda: chat.model.get() == str(run_dir), what="the first checkpoint's event")
    assert any((run_dir / "checkpoints").iterdir())
    assert chat.start_server() is None
    pump(app.root, lambda: chat.status.cget("text").startswith("Ready"), what="the chat server")
    steps_before = len(app.tabs["plot"].curve.train_steps)
    chat.prompt.set("still training?")
    chat.send()
    pump(app.root, lambda: not chat.generating, what="the answer")
    assert "You said: still training?" in chat.transcript_text()
    assert app.training_running() and len(app.tabs["plot"].curve.train_steps) > steps_before
    assert app.tabs["runs"].infos[str(run_dir)].status == "running"
