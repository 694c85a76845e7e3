"""The Chat tab's "Serve this model": a `bitttt serve` child, its state, its URL, Stop, and the window's close.

The fake trainer's `serve` answers /health and /v1/models with the stdlib; the real server is
`python -m bitttt serve` on a tiny random model. The tests that drive a server run the same script
against both (the `server` fixture), and talk to it with urllib."""

import json
import os
import socket
import sys
import tkinter as tk
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import pytest

from bitttt_gui import serving
from bitttt_gui.app import App, cancel_pending_afters

from test_gui_app import make_app, pump, settle  # noqa: F401  (make_app is a fixture)

LOAD_S = 120     # the real server imports torch, fastapi and uvicorn and loads the model


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode("utf-8"))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- the tkinter-free part ---------------------------------------------------------------------

def test_failure_line_prefers_the_clis_error_line():
    lines = ["bitttt serve: m at http://127.0.0.1:1/v1", "bitttt: error: serve: fastapi not installed "
             "(hint: pip install 'bitttt[serve]')", "   "]
    assert serving.failure_line(lines) == "serve: fastapi not installed (hint: pip install 'bitttt[serve]')"
    assert serving.failure_line(["INFO: started", "ERROR: [Errno 98] address already in use", ""]) == \
        "ERROR: [Errno 98] address already in use"
    assert serving.failure_line([]) == "it exited without a message"


def test_a_missing_extra_always_names_the_install_command():
    st = serving.ServeState().to("failed", port=5, error="serve: fastapi not installed")
    assert "pip install 'bitttt[serve]'" in st.sentence()
    st = st.to("failed", error="serve: fastapi not installed (hint: pip install 'bitttt[serve]')")
    assert st.sentence().count("pip install") == 1


def test_serve_argv_url_and_snippets():
    argv = serving.build_serve_argv("/runs/a", 4321, base=["bitttt"])
    assert argv == ["bitttt", "serve", "--model", "/runs/a", "--host", "127.0.0.1", "--port", "4321",
                    "--model-name", "a"]
    # a checkpoint is named after its run: "final" alone says nothing to a client
    assert serving.model_id("/ws/runs/a/final") == "a-final"
    assert serving.model_id("/ws/runs/a/checkpoints/step-000100") == "a-step-000100"
    assert serving.model_id("/exports/tiny/") == "tiny"
    st = serving.ServeState().to("serving", port=4321, model="run-a")
    assert st.url == "http://127.0.0.1:4321/v1" and st.url in st.sentence()
    body = serving.curl_line(st.url, "run-a").split(" -d ", 1)[1].strip("'")
    assert json.loads(body)["model"] == "run-a"
    compile(serving.openai_snippet(st.url, "run-a"), "snippet", "exec")     # valid Python


def test_health_is_none_while_nothing_listens():
    port = serving.free_port()
    assert serving.health(port, timeout=0.5) is None
    with socket.socket() as s:          # the port is free: it can be bound
        s.bind(("127.0.0.1", port))


# -- one script, the fake server and the real one ---------------------------------------------
# Lesson: a fake must speak the real protocol. The same test drives the fake trainer's stdlib
# server (fast, always) and the real `bitttt serve` (integration, slow).

BOTH = ["fake", pytest.param("real", marks=[pytest.mark.integration, pytest.mark.slow])]


@dataclass
class Server:
    kind: str                   # "fake" or "real"
    make: Callable[[], App]     # makes the App whose Chat tab serves
    model: str                  # the model the tab serves
    load_s: float               # how long the server may take to start


@pytest.fixture
def server(request, tmp_path) -> Server:
    if request.param == "fake":
        model = tmp_path / "my-model"
        model.mkdir()
        return Server("fake", request.getfixturevalue("make_app"), str(model), 20.0)
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    return Server("real", request.getfixturevalue("real_app"), request.getfixturevalue("tiny_model"), LOAD_S)


@pytest.mark.gui
@pytest.mark.parametrize("server", BOTH, indirect=True)
def test_serve_button_shows_the_url_answers_and_stop_ends_it(server, screenshot):
    app = server.make()
    chat = app.tabs["chat"]
    app.show_tab("chat")
    chat.model.set(server.model)
    chat.serve_btn.invoke()
    assert chat.serve_state.phase == "starting" and "Starting the server" in chat.serve_label.cget("text")
    pump(app.root, lambda: chat.serve_state.phase in ("serving", "failed"), timeout=server.load_s, what="the server")
    assert chat.serve_state.phase == "serving", chat.serve_label.cget("text")
    url = chat.serve_state.url
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1") and url in chat.serve_label.cget("text")
    assert str(chat.serve_btn.cget("state")) == "disabled"
    models = _get_json(url + "/models")
    assert [m["id"] for m in models["data"]] == [chat.serve_state.model] == [os.path.basename(server.model)]
    chat.copy_buttons["url"].invoke()
    assert app.root.clipboard_get() == url
    chat.copy_buttons["curl"].invoke()
    assert app.root.clipboard_get().startswith(f"curl {url}/chat/completions")
    settle(app.root, 0.2)
    screenshot(f"chat-serving-{server.kind}")
    pid = chat.serve_child.pid
    chat.serve_stop_btn.invoke()
    pump(app.root, lambda: chat.serve_state.phase == "stopped", timeout=30, what="the stop")
    assert _gone(pid) and chat.serve_label.cget("text") == "Server stopped."
    assert str(chat.serve_btn.cget("state")) == "normal" and str(chat.copy_buttons["url"].cget("state")) == "disabled"
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/models", timeout=2)


@pytest.mark.gui
@pytest.mark.parametrize("server", BOTH, indirect=True)
def test_a_missing_serve_extra_is_shown_with_the_install_hint(server, tmp_path, monkeypatch):
    if server.kind == "real":  # the real CLI, with an import of fastapi that fails
        shadow = tmp_path / "shadow"
        shadow.mkdir()
        (shadow / "fastapi.py").write_text("raise ImportError('fastapi is not installed (test shadow)')\n")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shadow)] + [p for p in sys.path if p]))
    else:
        monkeypatch.setenv("FAKE_BITTTT_MODE", "serve_missing")
    app = server.make()
    chat = app.tabs["chat"]
    chat.model.set(server.model)
    chat.start_serving()
    pump(app.root, lambda: chat.serve_state.phase in ("serving", "failed"), timeout=server.load_s, what="the failure")
    text = chat.serve_label.cget("text")
    assert chat.serve_state.phase == "failed" and "fastapi" in text and "not installed" in text, text
    assert "pip install 'bitttt[serve]'" in text
    assert str(chat.serve_btn.cget("state")) == "normal"


@pytest.mark.gui
def test_closing_the_window_asks_and_stops_the_server(make_app, tmp_path):
    asked = []
    answer = [False]

    def confirm(title, msg):
        asked.append(title)
        return answer[0]

    app = make_app(confirm=confirm)
    chat = app.tabs["chat"]
    chat.model.set(str(tmp_path))
    chat.start_serving()
    pump(app.root, lambda: chat.serve_state.phase == "serving", what="the fake server")
    pid = chat.serve_child.pid
    app.on_close()                                  # "no": the window and the server stay
    assert asked == ["Stop the server?"] and chat.serving() and app.root.winfo_exists()
    answer[0] = True
    app.on_close()
    assert _gone(pid)
    with pytest.raises(tk.TclError):
        app.root.winfo_exists()


# -- the real server -------------------------------------------------------------------------

@pytest.fixture
def real_app(display, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    made = []

    def make():
        root = tk.Tk()
        app = App(root, tmp_path / "ws", bitttt_cmd=[sys.executable, "-m", "bitttt"], confirm=lambda *a: True,
                  memory_interval_s=0.5)
        made.append(app)
        settle(root, 0.2)
        return app

    yield make
    for app in made:
        chat = app.tabs["chat"]
        if chat.serve_child is not None and chat.serve_child.running():
            chat.serve_child.kill_now()
            chat.serve_child.wait(5)
        app.sampler.stop()
        try:
            cancel_pending_afters(app.root)
            app.root.destroy()
        except tk.TclError:
            pass
