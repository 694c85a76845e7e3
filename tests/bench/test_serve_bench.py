"""`bitttt bench serve --quick` runs and writes a record of the one bench shape."""

from __future__ import annotations

import importlib.util
import json
import os
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
    assert record["settings"]["shared_machine"] is False
    cases = {(c["case"], c["contender"]): c for c in record["cases"]}
    assert {c["streams"] for c in record["cases"] if "streams" in c} == {1, 4}
    cached = cases[("tiny TTFT of turn 4", "state cache")]
    assert cached["cached_tokens"] > 0 and cases[("tiny TTFT of turn 4", "no cache")]["cached_tokens"] == 0


FAKE_LLAMA = str(pathlib.Path(__file__).parent / "fake_llama")


# The real server runs where a python with llama-cpp-python's server extra is named (it is no
# dependency of bitttt): BITTTT_TEST_LLAMA_PYTHON=/path/to/venv/bin/python.
REAL_LLAMA_PYTHON = os.environ.get("BITTTT_TEST_LLAMA_PYTHON")


@pytest.fixture(params=["fake", "real"])
def llama_server_python(request, tmp_path, monkeypatch) -> tuple[str, str]:
    """(the python that runs llama_cpp.server, a GGUF it serves): the fake on the path, or the
    real server on a tiny random BitNet model written with a byte vocabulary."""
    from bitttt.bench import serve

    if request.param == "fake":
        monkeypatch.setenv("PYTHONPATH", FAKE_LLAMA)
        monkeypatch.setenv("FAKE_LLAMA_LOG", str(tmp_path / "served"))
        gguf = tmp_path / "model.gguf"
        gguf.write_bytes(b"GGUF")
        return sys.executable, str(gguf)
    missing = serve.llama_server_missing(REAL_LLAMA_PYTHON)
    if missing is not None:
        pytest.skip(f"the real llama_cpp.server: {missing} (set BITTTT_TEST_LLAMA_PYTHON)")
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "hf"))
    try:
        from test_gguf import write_folder
    finally:
        sys.path.pop(0)
    from bitttt.hf import load_bitnet
    from bitttt.hf.gguf import write_gguf

    write_folder(str(tmp_path / "hf"))
    gguf = str(tmp_path / "model-q8_0-bytes.gguf")
    write_gguf(load_bitnet(str(tmp_path / "hf")), gguf, head_type="q8_0", tokenizer="bytes")
    return REAL_LLAMA_PYTHON, gguf


def test_llama_server_contender_streams_concurrent_requests(llama_server_python, tmp_path):
    """The contender's client against llama_cpp.server, the fake that speaks its protocol
    (tests/bench/fake_llama) and the real one alike: the server starts, 1 and 4 concurrent
    streams count their tokens, and the server is stopped."""
    from bitttt.bench import serve

    python, gguf = llama_server_python
    assert serve.llama_server_missing(python) is None
    server = serve.LlamaServer(python, gguf, threads=2)
    try:
        first, last, tokens = serve.stream_completion(server.port, "hello", 5, [])
        assert tokens == 5 and last > first > 0
        assert serve.llama_throughput(server.port, 4, 6, []) > 0
    finally:
        server.close()
    assert server.proc.returncode is not None
    if (tmp_path / "served").exists():  # the fake's log of what it was asked for
        assert (tmp_path / "served").read_text().split() == ["5", "6", "6", "6", "6"]


def test_llama_server_contender_is_skipped_with_a_reason(tmp_path):
    from bitttt.bench import serve

    assert "no --llama-python" in serve.llama_server_missing(None)
    assert "does not exist" in serve.llama_server_missing(str(tmp_path / "python"))
    if importlib.util.find_spec("llama_cpp") is None:  # the fake is only on the path above
        assert "cannot import llama_cpp.server" in serve.llama_server_missing(sys.executable)
