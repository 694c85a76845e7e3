"""A soak test bounded in time: 16 concurrent streaming clients on loopback, a quarter of them
hanging up at random. No 5xx; every completion that ran to its end is identical to the same
request sent alone (same seed); resident memory flat once warm. 12 s here, 60 s under `slow`."""

from __future__ import annotations

import json
import random
import threading
import time

import psutil
import pytest
from servelib import ServerThread, tiny_bitttt

httpx = pytest.importorskip("httpx")

CLIENTS = 16
CASES = [(f"soak prompt {i}: ", seed, 12 + 5 * i) for i in range(8) for seed in (1, 2)]  # (prompt, seed, max_tokens)
RSS_SLACK = 40 * 2**20  # allocator noise and Python's own caches; a leak per request grows without bound


def body(case) -> dict:
    prompt, seed, max_tokens = case
    return {"model": "tiny", "prompt": prompt, "seed": seed, "max_tokens": max_tokens, "temperature": 0.9,
            "top_p": 0.95, "stream": True}


def stream_text(client: httpx.Client, case, hang_up_after: int | None = None) -> tuple[int, str | None]:
    """(status, text), text None when this client hung up before the end."""
    pieces = []
    with client.stream("POST", "/v1/completions", json=body(case)) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, None
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return 200, "".join(pieces)
            pieces.append(json.loads(line[6:])["choices"][0]["text"])
            if hang_up_after is not None and len(pieces) >= hang_up_after:
                return 200, None
    raise AssertionError("the stream ended without [DONE]")


def soak(seconds: float) -> None:
    from bitttt.hf.bitnet import Int8Linear
    from bitttt.serve.app import AppConfig, build_app
    from bitttt.serve.engine import Engine, EngineConfig
    from bitttt.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    model = tiny_bitttt("ttt_linear", vocab_size=tok.vocab_size)
    model.lm_head = Int8Linear(model.lm_head.weight)  # exact sums: a batched row equals the row alone
    engine = Engine(model, tok, EngineConfig(max_batch=16, max_queue=64, state_cache_mb=1)).start()
    try:
        with ServerThread(build_app(engine, AppConfig("tiny", chat_format=True))) as server, \
                httpx.Client(base_url=server.url, timeout=60) as alone:
            want = {case: stream_text(alone, case)[1] for case in CASES}  # one client, one request at a time
            statuses, mismatches, finished, hung_up = [], [], [0], [0]
            proc, rss = psutil.Process(), {}
            start = time.monotonic()
            stop_at = start + seconds

            def client(i: int) -> None:
                rng = random.Random(i)
                with httpx.Client(base_url=server.url, timeout=60) as c:
                    while time.monotonic() < stop_at:
                        case = rng.choice(CASES)
                        hang_up = rng.randint(1, 8) if i % 4 == 0 else None  # a quarter of the clients
                        status, text = stream_text(c, case, hang_up)
                        statuses.append(status)
                        if text is None:
                            hung_up[0] += 1
                        else:
                            finished[0] += 1
                            if text != want[case]:
                                mismatches.append(case)

            def sample_rss() -> None:
                while time.monotonic() < stop_at:
                    rss[round(time.monotonic() - start, 1)] = proc.memory_info().rss
                    time.sleep(0.2)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            threads.append(threading.Thread(target=sample_rss))
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 60)
            assert not any(t.is_alive() for t in threads)
            assert statuses and all(s < 500 for s in statuses), sorted(set(statuses))
            assert set(statuses) == {200}, sorted(set(statuses))  # the queue (64) never fills with 16 clients
            assert not mismatches, f"{len(mismatches)} of {finished[0]} completions differ from the request alone"
            assert finished[0] > CLIENTS and hung_up[0] > 0
            warm = [v for t, v in rss.items() if t >= seconds / 3]  # after a third of the run
            assert max(warm) - warm[0] < RSS_SLACK, f"RSS grew {(max(warm) - warm[0]) / 2**20:.1f} MiB once warm"
            deadline = time.monotonic() + 10
            while engine.busy:  # every hung-up request left its slot
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        engine.close()


def test_soak_short():
    soak(12.0)


@pytest.mark.slow
def test_soak_60s():
    soak(60.0)
