"""Raw HTTP against a real `bitttt serve` app (httpx): bad bodies, keys, limits, a client that
hangs up mid-stream, /health and /metrics."""

from __future__ import annotations

import json
import time

import pytest

httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60) as c:
        yield c


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_malformed_json(http):
    r = http.post("/v1/chat/completions", content=b'{"model": "tiny", "messages": [', 
                  headers={"Content-Type": "application/json"})
    assert error_of(r, 400)["code"] == "invalid_json"


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny", "messages": "hi"}, "messages"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": "12"}, "max_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": [1, 2]}, "stop"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": []}, "tools"),
    ({"model": "tiny", "messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
], ids=["messages-str", "role", "temperature-str", "max_tokens-str", "max_tokens-0", "stop-ints", "tools",
        "no-messages", "no-model"])
def test_wrong_types_are_400_naming_the_param(http, body, param):
    assert error_of(http.post("/v1/chat/completions", json=body), 400)["param"].startswith(param)


def test_json_that_is_not_an_object(http):
    error_of(http.post("/v1/completions", json=[1, 2, 3]), 400)


def test_huge_body_is_413(http):
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": "x" * 200_000})
    error_of(r, 413)

    def chunks():  # no Content-Length: the limit holds while the body arrives
        for _ in range(100):
            yield b"x" * 10_000

    error_of(http.post("/v1/completions", content=chunks()), 413)


def test_missing_and_wrong_key_are_401(server):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": server.api_key}):
        r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "x"}, headers=headers)
        assert error_of(r, 401)["type"] == "authentication_error"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # health and metrics need no key


def test_unknown_model_and_route_are_404(http):
    assert error_of(http.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}), 404)["param"] == "model"
    error_of(http.get("/v1/nothing"), 404)


def test_client_closing_mid_stream_frees_its_slot(http, server):
    body = {"model": "tiny", "prompt": "go on forever", "max_tokens": 100_000, "temperature": 0, "stream": True,
            "repetition_penalty": 1.0}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["object"] == "text_completion"
    before = server.engine.stats().requests["cancelled"]
    deadline = time.monotonic() + 10
    while server.engine.stats().batch_size or server.engine.busy:
        assert time.monotonic() < deadline, "the hung-up request still holds a slot"
        time.sleep(0.02)
    assert server.engine.stats().requests["cancelled"] >= max(before, 1)
    # and the server still answers
    assert http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}).status_code == 200


def test_sse_framing(http):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)


def test_health_and_metrics(http):
    assert http.get("/health").json()["status"] == "ok"
    http.post("/v1/completions", json={"model": "tiny", "prompt": "count me", "max_tokens": 2})
    text = http.get("/metrics").text
    for name in ("bitttt_requests_total", "bitttt_generated_tokens_total", "bitttt_tokens_per_second",
                 "bitttt_queue_depth", "bitttt_batch_size", "bitttt_state_cache_hits_total", "bitttt_http_errors_total"):
        assert name in text, name
    generated = [float(line.split()[-1]) for line in text.splitlines() if line.startswith("bitttt_generated_tokens_total")]
    assert generated and generated[0] >= 2


def test_client_giving_up_on_a_non_streaming_request_frees_its_slot(server):
    body = {"model": "tiny", "prompt": "go on forever", "max_tokens": 100_000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=1.0,
                   headers={"Authorization": f"Bearer {server.api_key}"})
    deadline = time.monotonic() + 10
    while server.engine.busy:
        assert time.monotonic() < deadline, "the abandoned request still holds a slot"
        time.sleep(0.02)
