"""One script of chat requests against the fake chat server and the real one (DESIGN §6).

The launcher's tests run against the fake; this keeps the fake honest: the same requests must
give the same sequence of events with the same fields from both.
"""

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

FAKE_BITTTT = Path(__file__).parent / "fakes" / "fake_bitttt.py"

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMEOUT_S = 120
READY = {"event", "time", "chat_format", "model", "memory"}
TOKEN = {"event", "time", "text", "n_tokens", "tokens_per_s"}
DONE = {"event", "time", "n_tokens", "tokens_per_s", "cancelled", "memory"}
OK = {"event", "time", "op"}
ERROR = {"event", "time", "kind", "message", "hint"}
MEMORY = {"layers", "drift", "turn_change"}


class Server:
    """A chat server child: requests in, events out through a reader thread."""

    def __init__(self, argv, cwd):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FAKE_CHAT_TOKEN_S": "0.01"}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd, env=env)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put(None)

    def send(self, req):
        self.proc.stdin.write((req if isinstance(req, str) else json.dumps(req)) + "\n")
        self.proc.stdin.flush()

    def next(self):
        ev = self.events.get(timeout=TIMEOUT_S)
        assert ev is not None, "the chat server exited"
        return ev

    def until_answer(self):
        """Events up to and including the answer (done, ok, error, bye); token runs kept."""
        out = []
        while True:
            out.append(self.next())
            if out[-1]["event"] in ("done", "ok", "error", "bye", "ready"):
                return out


def shapes(events):
    """(event, sorted keys) with a run of tokens collapsed to one entry."""
    out = []
    for e in events:
        s = (e["event"], tuple(sorted(e)))
        if not (out and out[-1] == s and e["event"] == "token"):
            out.append(s)
    return out


def keys(*names):
    return tuple(sorted(names))


@pytest.fixture(params=["fake", "real"])
def server(request, tiny_model, tmp_path):
    if request.param == "fake":
        argv = [sys.executable, str(FAKE_BITTTT), "chat", "--model", tiny_model, "--protocol", "jsonl"]
    else:
        argv = [sys.executable, "-m", "bitttt", "chat", "--model", tiny_model, "--protocol", "jsonl", "--format", "plain"]
    s = Server(argv, tmp_path)
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
    s.proc.wait(10)


def test_same_script_same_events(server, tmp_path):
    token, done = ("token", keys(*TOKEN)), ("done", keys(*DONE))
    ready = server.next()
    assert shapes([ready]) == [("ready", keys(*READY))] and set(ready["memory"]) == MEMORY

    server.send({"op": "generate", "prompt": "hello", "max_new_tokens": 6, "temperature": 0})
    first = server.until_answer()
    assert shapes(first) == [token, done]
    assert first[-1]["cancelled"] is False and 0 < first[-1]["n_tokens"] <= 6
    assert first[-1]["n_tokens"] >= len(first) - 1      # a piece of text may hold several tokens

    # Cancel mid-reply: the reply is cut short, the server stays, the next turn works.
    server.send({"op": "generate", "prompt": "go on", "max_new_tokens": 5000, "temperature": 0})
    got = [server.next()]
    assert got[0]["event"] == "token"
    server.send({"op": "cancel"})
    got += server.until_answer()
    assert shapes(got) == [token, done]
    assert got[-1]["cancelled"] is True and got[-1]["n_tokens"] < 5000
    assert set(got[-1]["memory"]) == MEMORY and len(got[-1]["memory"]["drift"]) == len(got[-1]["memory"]["layers"])

    server.send({"op": "generate", "prompt": "again", "max_new_tokens": 4, "temperature": 0})
    assert shapes(server.until_answer()) == [token, done]

    server.send({"op": "cancel"})                      # nothing streams: an ok saying so
    idle = server.until_answer()
    assert shapes(idle) == [("ok", keys(*OK, "cancelled"))] and idle[0]["cancelled"] is False

    mem = tmp_path / "memory.safetensors"
    server.send({"op": "save_state", "path": str(mem)})
    saved = server.until_answer()
    assert shapes(saved) == [("ok", keys(*OK, "path"))] and saved[0]["op"] == "save_state" and mem.is_file()

    server.send({"op": "reset"})
    reset = server.until_answer()
    assert shapes(reset) == [("ok", keys(*OK, "memory"))] and reset[0]["op"] == "reset"
    assert reset[0]["memory"]["drift"] == [0.0] * len(reset[0]["memory"]["layers"])

    server.send({"op": "load_state", "path": str(mem)})
    loaded = server.until_answer()
    assert shapes(loaded) == [("ok", keys(*OK, "path", "memory"))] and loaded[0]["op"] == "load_state"
    assert all(d > 0 for d in loaded[0]["memory"]["drift"])

    not_memory = tmp_path / "notes.txt"
    not_memory.write_text("keep me\n")
    for req in ({"op": "generate", "prompt": "x", "temperature": "hot"},      # bad params
                {"op": "dance"},                                               # unknown op
                "this is not json {",                                          # garbage
                {"op": "generate", "prompt": "x", "max_new_tokens": 3, "nucleus": 1}):  # unknown param
        server.send(req)
        err = server.until_answer()
        assert shapes(err) == [("error", keys(*ERROR))] and err[0]["kind"] == "request", err
    for req in ({"op": "save_state", "path": str(not_memory)}, {"op": "load_state", "path": str(not_memory)}):
        server.send(req)
        err = server.until_answer()
        assert shapes(err) == [("error", keys(*ERROR))] and err[0]["kind"] == "state", err
    assert not_memory.read_text() == "keep me\n"

    server.send({"op": "generate", "prompt": "still there?", "max_new_tokens": 3, "temperature": 0})
    assert shapes(server.until_answer()) == [token, done]

    server.send({"op": "stop"})
    assert shapes(server.until_answer()) == [("bye", keys("event", "time"))]
    assert server.proc.wait(TIMEOUT_S) == 0
