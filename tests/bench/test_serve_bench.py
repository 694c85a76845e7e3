"""`bitttt bench serve --quick` runs and writes a record of the one bench shape."""

from __future__ import annotations

import json

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
