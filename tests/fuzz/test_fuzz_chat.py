"""Fuzzing the chat protocol (`bitttt chat --protocol jsonl`) on a tiny random model.

A fixed-seed stream of bad requests (garbage bytes, broken JSON, huge lines, wrong types,
unknown ops, path traversal in save_state/load_state) mixed with good ones goes to one real
server. Every request must be answered by an event within a time bound, the server must
stay up, and nothing may be written outside the state folder it was given.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 1234
N_CASES = 1000
CASE_TIMEOUT_S = 15.0          # a generous bound per request: a hang fails the test, not CI
ANSWERS = ("done", "ok", "error", "bye")
GOOD_OPS = ("generate", "cancel", "reset", "save_state", "load_state")
SAMPLING = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram", "seed", "stop")


def _odd_value(rng: random.Random):
    return rng.choice([None, True, -1, 0, 2**70, -1e308, 1e308, 3.5, "", "x" * 300, "NaN", [], [1, "a"], {},
                       {"op": "stop"}, "../../etc/passwd", "\x00", "\u202e", [None] * 50])


def _garbage(rng: random.Random) -> bytes:
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    return b"#" + raw.replace(b"\n", b"").replace(b"\r", b"")     # one non-blank line


def _path(rng: random.Random, outside: Path) -> object:
    return rng.choice(["../escape.safetensors", "../../../../../../escape.safetensors", str(outside / "x.safetensors"),
                       "/etc/passwd", "/dev/zero", "/proc/self/mem", "~/escape.safetensors", "link/escape.safetensors",
                       "a" * 5000, "sub/../../escape.safetensors", "ok.safetensors", "ok2.safetensors", ".", "",
                       "nul\x00byte", str(outside), "/", 17, None, ["a"]])


def make_case(rng: random.Random, outside: Path) -> bytes:
    kind = rng.choice(["garbage", "json_cut", "wrong_type", "unknown_op", "path", "huge", "good", "good", "extra"])
    if kind == "garbage":
        return _garbage(rng)
    if kind == "json_cut":
        text = json.dumps({"op": "generate", "prompt": "hello", "max_new_tokens": 3})
        return text[: rng.randrange(1, len(text) - 1)].encode()
    if kind == "wrong_type":
        req = {"op": "generate", "prompt": "hi", "max_new_tokens": 3}
        req[rng.choice(["prompt", "messages", *SAMPLING])] = _odd_value(rng)
        return json.dumps(req).encode()
    if kind == "unknown_op":
        return json.dumps({"op": rng.choice([_odd_value(rng), "GENERATE", "exec", "stop " , "Stop", "cancel!"])}).encode()
    if kind == "path":
        return json.dumps({"op": rng.choice(["save_state", "load_state"]), "path": _path(rng, outside)}).encode()
    if kind == "huge":
        return rng.choice([b"x" * (1 << 20) + b"y" * rng.randrange(1, 1000),
                           json.dumps({"op": "generate", "prompt": "z" * 20000}).encode(),
                           json.dumps({"op": "generate", "messages": [{"content": "m"}] * 5000}).encode(),
                           json.dumps({"op": "generate", "prompt": "q", "stop": ["s"] * 20000,
                                       "max_new_tokens": 2}).encode(),
                           b"[" * 100000 + b"]" * 100000])
    if kind == "extra":
        return json.dumps({"op": rng.choice(GOOD_OPS), "path": "ok.safetensors", "surprise": _odd_value(rng)}).encode()
    op = rng.choice(GOOD_OPS)
    if op == "generate":
        return json.dumps({"op": op, "prompt": "".join(rng.choice("ab \u00e9\u4e2d") for _ in range(8)),
                           "max_new_tokens": rng.randrange(0, 6), "temperature": rng.choice([0, 0.7])}).encode()
    if op in ("save_state", "load_state"):
        return json.dumps({"op": op, "path": rng.choice(["ok.safetensors", "ok2.safetensors"])}).encode()
    return json.dumps({"op": op}).encode()


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_fuzz_chat_protocol(tiny_model, tmp_path):
    states, outside, cwd = tmp_path / "states", tmp_path / "outside", tmp_path / "cwd"
    for d in (states, outside, cwd):
        d.mkdir()
    (outside / "x.safetensors").write_bytes(b"not yours")
    (states / "link").symlink_to(outside)
    before = _snapshot(tmp_path)
    model_before = _snapshot(Path(tiny_model))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bitttt", "chat", "--model", tiny_model, "--protocol", "jsonl",
                             "--format", "plain", "--state-dir", str(states)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd, env=env)
    events: queue.Queue = queue.Queue()

    def read():
        for line in proc.stdout:
            events.put(json.loads(line))      # the server's own output is always JSON
        events.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        assert events.get(timeout=120)["event"] == "ready"
        rng = random.Random(SEED)
        kinds: dict[str, int] = {}
        t0 = time.monotonic()
        for i in range(N_CASES):
            line = make_case(rng, outside)
            proc.stdin.write(line + b"\n")
            proc.stdin.flush()
            deadline = time.monotonic() + CASE_TIMEOUT_S
            while True:
                ev = events.get(timeout=max(deadline - time.monotonic(), 0.01))
                assert ev is not None, f"the server died on case {i}: {line[:200]!r}"
                if ev["event"] in ANSWERS:
                    break
                assert ev["event"] == "token", ev
            assert ev["event"] != "bye", f"case {i} stopped the server: {line[:200]!r}"
            kinds[ev["event"]] = kinds.get(ev["event"], 0) + 1
        elapsed = time.monotonic() - t0
        proc.stdin.write(b'{"op": "generate", "prompt": "still alive?", "max_new_tokens": 3}\n{"op": "stop"}\n')
        proc.stdin.flush()
        tail = [events.get(timeout=CASE_TIMEOUT_S)]
        while tail[-1] is not None and tail[-1]["event"] != "bye":
            tail.append(events.get(timeout=CASE_TIMEOUT_S))
        assert [e["event"] for e in tail if e and e["event"] != "token"] == ["done", "bye"]
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    print(f"\nfuzz chat: {N_CASES} cases in {elapsed:.1f} s, answers {kinds}")
    after = _snapshot(tmp_path)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert all(Path(p).parent == states and Path(p).name in ("ok.safetensors", "ok2.safetensors") for p in changed), \
        sorted(changed)
    assert _snapshot(Path(tiny_model)) == model_before
    assert not Path("/etc/escape.safetensors").exists() and not Path(os.path.expanduser("~/escape.safetensors")).exists()
    assert kinds.get("error", 0) > N_CASES // 3 and kinds.get("done", 0) > 10


def _nested(rng: random.Random) -> bytes:
    """A JSON line nested from a little to far past json's recursion limit; sometimes valid."""
    depth = rng.choice([10, 900, 5000, 100_000, 300_000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"x":', b"}]")])
    body = opener * depth + b"1" + closer * depth
    if rng.random() < 0.3:
        body = body[: rng.randrange(1, len(body))]  # cut: not JSON at all
    return rng.choice([body, b'{"op": "reset", "x": ' + body + b"}", b'{"op": "generate", "prompt": ' + body + b"}"])


N_STREAMING = 30


def test_fuzz_nested_json_while_streaming(endless_model):
    """A nested line sent while a reply streams never kills it (it was a RecursionError in the
    cancel check): the reply goes on until cancelled, then the line gets its own answer."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bitttt", "chat", "--model", endless_model, "--protocol", "jsonl",
                             "--format", "plain", "--temperature", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    events: queue.Queue = queue.Queue()

    def read():
        for line in proc.stdout:
            events.put(json.loads(line))
        events.put(None)

    threading.Thread(target=read, daemon=True).start()
    rng = random.Random(SEED + 27)
    answers: dict[str, int] = {}
    try:
        assert events.get(timeout=120)["event"] == "ready"
        for i in range(N_STREAMING):
            proc.stdin.write(b'{"op": "generate", "prompt": "hi", "max_new_tokens": 100000}\n')
            proc.stdin.flush()
            assert events.get(timeout=CASE_TIMEOUT_S)["event"] == "token"
            line = _nested(rng)
            proc.stdin.write(line + b"\n")
            proc.stdin.flush()
            for _ in range(3):  # the reply goes on after the nested line
                ev = events.get(timeout=CASE_TIMEOUT_S)
                assert ev["event"] == "token", (i, ev, line[:80])
            proc.stdin.write(b'{"op": "cancel"}\n')
            proc.stdin.flush()
            ev = events.get(timeout=CASE_TIMEOUT_S)
            while ev["event"] == "token":
                ev = events.get(timeout=CASE_TIMEOUT_S)
            assert ev["event"] == "done" and ev["cancelled"], (i, ev)
            ev = events.get(timeout=CASE_TIMEOUT_S)  # the nested line's own answer, in its turn
            while ev["event"] == "token":
                ev = events.get(timeout=CASE_TIMEOUT_S)
            assert ev["event"] in ("ok", "error", "done") and ev.get("kind") != "internal", (i, ev, line[:80])
            answers[ev["event"]] = answers.get(ev["event"], 0) + 1
        proc.stdin.write(b'{"op": "stop"}\n')
        proc.stdin.flush()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    print(f"\nfuzz chat, nested JSON while streaming: {N_STREAMING} cases, answers {answers}")
