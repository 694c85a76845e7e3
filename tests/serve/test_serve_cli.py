"""`bitttt serve` as a user runs it: a process on a free loopback port over a tiny checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_serve_process_answers_and_stops_on_sigterm(tiny_model):
    port = free_port()
    env = {**os.environ, "BITTTT_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "bitttt", "serve", "--model", tiny_model, "--port", str(port),
                             "--threads", "1", "--model-name", "tiny"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4},
                       headers={"Authorization": "Bearer k"}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
        assert httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "hi"}).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert f"127.0.0.1:{port}/v1" in out and "API key required" in out
