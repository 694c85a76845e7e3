"""`bitttt bench serve --quick` runs and writes a record of the one bench shape."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

from bitttt import cli
from bitttt.bench import harness


@pytest.mark.slow
def test_bench_serve_quick_writes_a_record(tmp_path):
    path = tmp_path / "serve.json"
    assert cli.main(["bench", "serve", "--quick", "--json", str(path)]) == 0
    record = json.loads(path.read_text())
    assert harness.check_record(record) == []
    cases = {(c["case"], c["contender"]): c for c in record["cases"]}
    assert {c["streams"] for c in record["cases"] if "streams" in c} == {1, 4}
    cached = cases[("tiny TTFT of turn 4", "state cache")]
    assert cached["cached_tokens"] > 0 and cases[("tiny TTFT of turn 4", "no cache")]["cached_tokens"] == 0


FAKE_LLAMA = str(pathlib.Path(__file__).parent / "fake_llama")


def test_llama_server_contender_streams_concurrent_requests(tmp_path, monkeypatch):
    """The contender's client against a fake llama_cpp.server that speaks its protocol
    (tests/bench/fake_llama): the server starts, 1 and 4 concurrent streams count their tokens,
    and the server is stopped."""
    from bitttt.bench import serve

    monkeypatch.setenv("PYTHONPATH", FAKE_LLAMA)
    monkeypatch.setenv("FAKE_LLAMA_LOG", str(tmp_path / "served"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert serve.llama_server_missing(sys.executable) is None
    server = serve.LlamaServer(sys.executable, str(gguf), threads=2)
    try:
        first, last, tokens = serve.stream_completion(server.port, "hello", 5, [128001])
        assert tokens == 5 and last > first > 0
        assert serve.llama_throughput(server.port, 4, 6, [128001]) > 0
    finally:
        server.close()
    assert server.proc.returncode is not None
    assert (tmp_path / "served").read_text().split() == ["5", "6", "6", "6", "6"]


def test_llama_server_contender_is_skipped_with_a_reason(tmp_path):
    from bitttt.bench import serve

    assert "no --llama-python" in serve.llama_server_missing(None)
    assert "does not exist" in serve.llama_server_missing(str(tmp_path / "python"))
    if importlib.util.find_spec("llama_cpp") is None:  # the fake is only on the path above
        assert "cannot import llama_cpp.server" in serve.llama_server_missing(sys.executable)
