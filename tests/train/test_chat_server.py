"""The jsonl chat server in-process on a tiny random model: cancel while a reply streams, and
every failure answered with an error event while the model stays loaded (design §6)."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch

from bitttt import chat_server, generate
from bitttt.checkpoint import load_model
from bitttt.chat_server import chat_jsonl
from bitttt.generate import ChatSession, SamplingParams
from chat_client import TIMEOUT_S, Client, Sink  # noqa: E402  (tests/ is on sys.path)
from trainlib import flat_tensors as _tensors  # noqa: E402


@pytest.fixture
def session(tiny_model):
    model, tok, _ = load_model(tiny_model)
    return ChatSession(model, tok, chat_format=False, defaults=SamplingParams(max_new_tokens=8, temperature=0))


@pytest.fixture
def client(session):
    c = Client(session)
    yield c
    c.close()


def test_cancel_cuts_the_reply_and_keeps_the_memory(client, session):
    client.send({"op": "generate", "prompt": "tell me everything", "max_new_tokens": 5000})
    assert client.next()["event"] == "token"
    client.send({"op": "cancel"})
    events = client.answer()
    done = events[-1]
    assert done["event"] == "done" and done["cancelled"] is True and done["n_tokens"] < 5000
    assert session.cache.pos > 1 and session.history[-1]["role"] == "assistant"   # the cut reply is remembered
    assert all(d > 0 for d in done["memory"]["drift"])
    pos = session.cache.pos
    client.send({"op": "generate", "prompt": "and then?", "max_new_tokens": 4})
    after = client.answer()[-1]
    assert after["event"] == "done" and after["cancelled"] is False and session.cache.pos > pos
    assert after["memory"]["drift"] != done["memory"]["drift"]


def test_stop_while_streaming_ends_the_reply_then_exits(client):
    client.send({"op": "generate", "prompt": "go", "max_new_tokens": 5000})
    assert client.next()["event"] == "token"
    client.send({"op": "stop"})
    assert client.answer()[-1]["cancelled"] is True
    assert client.next()["event"] == "bye"
    client.thread.join(TIMEOUT_S)
    assert client.code == 0


def test_requests_during_a_reply_wait_their_turn(client):
    client.send({"op": "generate", "prompt": "go", "max_new_tokens": 5000})
    assert client.next()["event"] == "token"
    client.send({"op": "reset"})
    client.send({"op": "cancel"})
    assert client.answer()[-1]["cancelled"] is True
    ok = client.next()
    assert ok["event"] == "ok" and ok["op"] == "reset" and ok["memory"]["drift"] == [0.0, 0.0]


@pytest.mark.parametrize("exc,kind", [(RuntimeError("kernel failed"), "internal"),
                                      (torch.OutOfMemoryError("CUDA out of memory"), "oom"),
                                      (MemoryError(), "oom")])
def test_a_failing_turn_is_an_error_and_the_server_goes_on(client, session, monkeypatch, exc, kind):
    client.send({"op": "generate", "prompt": "first", "max_new_tokens": 4})
    assert client.answer()[-1]["event"] == "done"
    before, history = copy.deepcopy(session.cache), list(session.history)
    real, calls = generate.run_model, []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 3:      # the prefill and one decode step went through
            raise exc
        return real(*args, **kw)

    monkeypatch.setattr(generate, "run_model", failing)
    client.send({"op": "generate", "prompt": "boom", "max_new_tokens": 10})
    err = client.answer()[-1]
    assert err["event"] == "error" and err["kind"] == kind, err
    assert session.cache.pos == before.pos and session.history == history   # as before the failed turn
    assert all(torch.equal(x, y) for x, y in zip(_tensors(session.cache), _tensors(before)))
    client.send({"op": "generate", "prompt": "again", "max_new_tokens": 4})
    assert client.answer()[-1]["event"] == "done"


def test_bad_requests_are_errors(client):
    bad = ["{", "[1, 2]", "null", json.dumps({"op": 3}), json.dumps({"no": "op"}),
           json.dumps({"op": "generate"}), json.dumps({"op": "generate", "prompt": 5}),
           json.dumps({"op": "generate", "prompt": "x", "messages": []}),
           json.dumps({"op": "generate", "messages": [{"role": "robot", "content": "x"}]}),
           json.dumps({"op": "generate", "prompt": "x", "max_new_tokens": -1}),
           json.dumps({"op": "generate", "prompt": "x", "max_new_tokens": 10**9}),
           json.dumps({"op": "generate", "prompt": "x", "top_k": 2.5}),
           json.dumps({"op": "generate", "prompt": "x", "seed": 10**30}),
           json.dumps({"op": "generate", "prompt": "x", "temperature": None}),
           json.dumps({"op": "generate", "prompt": "x", "stop": [1]}),
           json.dumps({"op": "generate", "prompt": "x" * (chat_server.MAX_PROMPT_TOKENS + 1)}),
           json.dumps({"op": "save_state"}), json.dumps({"op": "load_state", "path": 7}),
           "x" * (chat_server.MAX_LINE_CHARS + 10)]
    for line in bad:
        client.send(line)
        ev = client.answer()
        assert [e["event"] for e in ev] == ["error"], (line[:80], ev)
        assert ev[0]["kind"] in ("request", "state") and ev[0]["message"]
    client.send({"op": "generate", "prompt": "fine", "max_new_tokens": 3})
    assert client.answer()[-1]["event"] == "done"


def test_end_of_input_ends_the_server(session):
    out = Sink()
    assert chat_jsonl(session, io.StringIO('{"op": "reset"}\n'), out) == 0
    assert [out.events.get_nowait()["event"] for _ in range(2)] == ["ready", "ok"]
