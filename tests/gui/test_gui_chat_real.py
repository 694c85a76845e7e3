"""The launcher's chat tab against the real `bitttt chat --protocol jsonl` on a tiny random model
(the other chat tests use the fake; test_chat_protocol_contract.py keeps the two in step)."""

import sys
import tkinter as tk

import pytest

from bitttt_gui.app import App, cancel_pending_afters

from test_gui_app import pump, settle

pytestmark = [pytest.mark.gui, pytest.mark.integration, pytest.mark.slow]

LOAD_S = 120   # the real server imports torch and loads the model


@pytest.fixture
def chat(display, endless_model, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = tk.Tk()
    app = App(root, tmp_path / "ws", bitttt_cmd=[sys.executable, "-m", "bitttt"], confirm=lambda *a: True,
              memory_interval_s=0.5)
    settle(root, 0.2)
    tab = app.tabs["chat"]
    tab.model.set(endless_model)
    assert tab.start_server() is None
    pump(root, lambda: tab.status.cget("text").startswith("Ready"), timeout=LOAD_S, what="the real chat server")
    yield tab
    if tab.child and tab.child.running():
        tab.child.kill_now()
        tab.child.wait(5)
    app.sampler.stop()
    cancel_pending_afters(root)
    root.destroy()


def _say(tab, text, max_new_tokens="6"):
    tab.params["max_new_tokens"].set(max_new_tokens)
    tab.params["temperature"].set("0")     # greedy: the random model's replies are the same every run
    tab.prompt.set(text)
    assert tab.send() is None


def test_real_server_chat_cancel_reset_and_memory_files(chat, endless_model, tmp_path, screenshot):
    root = chat.winfo_toplevel()
    assert chat.loaded.cget("text").startswith("Loaded checkpoint: ") and endless_model in chat.loaded.cget("text")
    _say(chat, "hello")
    pump(root, lambda: not chat.generating, timeout=LOAD_S, what="the first reply")
    assert "You: hello\nModel: " in chat.transcript_text() and "tokens/s" in chat.speed.cget("text")
    assert chat.memory.turns == [0, 1] and all(d > 0 for d in chat.memory.drift[-1])

    _say(chat, "go on and on", max_new_tokens="5000")
    pump(root, lambda: chat.speed.cget("text") != "", timeout=LOAD_S, what="streamed tokens")
    chat.stop_btn.invoke()                                   # Stop generation: cancel, not exit
    pump(root, lambda: not chat.generating, timeout=LOAD_S, what="the cancel")
    assert "— (stopped)" in chat.transcript_text() and chat.child.running()
    assert int(chat.speed.cget("text").split("· ")[1].split()[0]) < 5000

    mem = tmp_path / "conversation.safetensors"
    chat.save_memory(str(mem))
    pump(root, lambda: "memory saved to" in chat.transcript_text(), timeout=LOAD_S, what="the save")
    assert mem.is_file()
    chat.reset_memory()
    pump(root, lambda: chat.memory.drift[-1] == [0.0, 0.0], timeout=LOAD_S, what="the reset")
    assert list(chat.mem_lines[0].get_ydata())[-1] == 0.0
    chat.load_memory(str(mem))
    pump(root, lambda: "memory loaded from" in chat.transcript_text(), timeout=LOAD_S, what="the load")
    assert all(d > 0 for d in chat.memory.drift[-1])

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 32)
    chat.load_memory(str(bad))
    pump(root, lambda: "error: " in chat.transcript_text(), timeout=LOAD_S, what="the refusal")
    _say(chat, "still here?")
    pump(root, lambda: not chat.generating and chat.transcript_text().count("Model: ") == 3, timeout=LOAD_S,
         what="a reply after the failed load")
    assert chat.child.running()
    chat.ctx.show_tab("chat")
    settle(root, 0.3)
    screenshot("tab-chat-real")
