"""Issue 27, the chat server and the text chat: a deeply nested JSON line never kills a reply,
the inbox of waiting requests is bounded (count and bytes) with an error for each one dropped,
a memory file with an impossible position is refused on load, non-UTF-8 input is text, and the
end of stdin cuts no reply (docs/design.md §6)."""

from __future__ import annotations

import io
import json
import time

import pytest
import torch

from bitttt import chat_server
from bitttt.chat_memory import META_KEY
from bitttt.checkpoint import load_model
from bitttt.generate import ChatSession, SamplingParams, chat_text
from chat_client import TIMEOUT_S, Client  # noqa: E402  (tests/ is on sys.path)
NESTED = "[" * 200_000  # deeper than json's recursion limit: RecursionError, not ValueError


@pytest.fixture
def session(endless_model):
    torch.set_num_threads(1)
    model, tok, _ = load_model(endless_model)
    return ChatSession(model, tok, chat_format=False, defaults=SamplingParams(max_new_tokens=5000, temperature=0))


def test_a_nested_line_while_streaming_leaves_the_reply_going(session):
    c = Client(session)
    c.send({"op": "generate", "prompt": "hi"})
    assert c.next()["event"] == "token"
    c.send(NESTED)  # was: RecursionError in the cancel check, the reply killed, the turn lost
    for _ in range(5):  # the reply goes on past the nested line
        assert c.next()["event"] == "token"
    c.send({"op": "cancel"})
    done = c.until("done")[-1]
    assert done["cancelled"] and done["n_tokens"] >= 6
    err = c.next()
    assert err["event"] == "error" and err["kind"] == "request" and "nested too deeply" in err["message"]
    assert c.close() == 0


def test_a_nested_line_when_idle_is_a_request_error(session):
    c = Client(session)
    c.send(NESTED, '{"op": "reset", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for _ in range(2):
        err = c.next()
        assert err["event"] == "error" and err["kind"] == "request" and "nested too deeply" in err["message"]
    c.send({"op": "reset"})
    assert c.next()["event"] == "ok"
    assert c.close() == 0


def test_the_inbox_drops_past_its_count_and_answers_each_drop(session, monkeypatch):
    monkeypatch.setattr(chat_server, "MAX_PENDING", 4)
    c = Client(session)
    c.send({"op": "generate", "prompt": "hi"})
    assert c.next()["event"] == "token"
    c.send(*[{"op": "reset"}] * 10, {"op": "cancel"})  # the cancel gets through a full inbox
    assert c.until("done")[-1]["cancelled"]
    answers = [c.next() for _ in range(10)]
    assert [a["event"] for a in answers] == ["ok"] * 4 + ["error"] * 6
    assert all("request dropped" in a["message"] for a in answers[4:])
    c.send({"op": "reset"})  # room again once the inbox drained
    assert c.next()["event"] == "ok"
    assert c.close() == 0


def test_the_inbox_drops_past_its_bytes(session, monkeypatch):
    monkeypatch.setattr(chat_server, "MAX_PENDING_BYTES", 3000)
    c = Client(session)
    c.send({"op": "generate", "prompt": "hi"})
    assert c.next()["event"] == "token"
    big = {"op": "reset", "pad": "x" * 1000}
    c.send(*[big] * 5, {"op": "stop"})  # 2 fit in 3000 bytes; a stop always gets through, and ends the reply
    assert c.until("done")[-1]["cancelled"]
    answers = [c.next() for _ in range(6)]
    assert [a["event"] for a in answers] == ["ok", "ok", "error", "error", "error", "bye"]
    assert c.close() == 0


def test_the_inbox_never_holds_more_than_its_bound():
    """The reader alone, fed 300 lines of 100 KB with nobody taking them (as 300 x 1 MB lines
    while a reply streamed took RSS from 271 to 556 MB): it holds at most MAX_PENDING_BYTES."""
    line = json.dumps({"op": "generate", "prompt": "y" * 100_000}) + "\n"
    reader = chat_server._Reader(io.StringIO(line * 300))
    deadline = time.monotonic() + TIMEOUT_S
    while not (reader.items and reader.items[-1] is chat_server._EOF) and time.monotonic() < deadline:
        time.sleep(0.01)  # everything read before anything is taken
    assert reader.bytes <= chat_server.MAX_PENDING_BYTES
    got = []
    while (item := reader.get()) is not chat_server._EOF:
        got.append(item)
    kept = [g for g in got if isinstance(g, str)]
    assert len(kept) == chat_server.MAX_PENDING_BYTES // len(line)
    assert len(got) == 300 and got[len(kept):] == [chat_server._DROPPED] * (300 - len(kept))


def test_the_end_of_stdin_cuts_no_reply(session):
    c = Client(session)
    c.send({"op": "generate", "prompt": "hi", "max_new_tokens": 40}, {"op": "generate", "prompt": "ho",
                                                                       "max_new_tokens": 30})
    assert c.close() == 0  # stdin ends while the first reply streams
    events = []
    while not c.out.events.empty():
        events.append(c.out.events.get())
    dones = [e for e in events if e["event"] == "done"]
    assert [(d["n_tokens"], d["cancelled"]) for d in dones] == [(40, False), (30, False)]


def _set_pos(path, value):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[META_KEY])
    tensors = load_file(str(path))

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "pos" and isinstance(v, int):
                    node[k] = value
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(meta["structure"])
    meta["pos"] = value
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta)})


@pytest.mark.parametrize("pos", [2**64, 2**41, -1])
def test_a_memory_file_with_an_impossible_position_is_refused(session, tmp_path, pos):
    path = tmp_path / "m.safetensors"
    list(session.reply([{"role": "user", "content": "hi"}], SamplingParams(max_new_tokens=3, temperature=0)))
    session.save(path)
    _set_pos(path, pos)
    c = Client(session)
    c.send({"op": "load_state", "path": str(path)})
    err = c.next()
    assert err["event"] == "error" and err["kind"] == "state", err
    c.send({"op": "generate", "prompt": "hi", "max_new_tokens": 3})  # the session is as before
    assert c.until("done")[-1]["n_tokens"] == 3
    assert c.close() == 0


def test_text_chat_takes_bytes_that_are_not_utf8(session):
    stdin = io.TextIOWrapper(io.BytesIO(b"\xff\xfe caf\xe9\n/quit\n"), encoding="utf-8")
    out = io.StringIO()
    session.defaults = SamplingParams(max_new_tokens=3, temperature=0)
    assert chat_text(session, stdin, out) == 0  # was: UnicodeDecodeError, exit 1
    assert "model> " in out.getvalue()
