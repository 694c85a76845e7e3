"""`bitttt train --compile`: the forward torch.compile'd at start-up (compile time in the start
event), the same steps as eager, and eager with one warning where compiling fails."""

from __future__ import annotations

import pytest
import torch

from bitttt import train as train_mod

from trainlib import read_events, train

pytestmark = pytest.mark.slow

# the float twin: compiled and eager differ by float rounding only (the ternary model's int8
# activation rounding can turn an ulp into a 1/127 step: tests/bench/test_train_bench.py)
SHORT = ["--mixer", "attention", "--no-ternary", "--steps", "3", "--eval-every", "0", "--save-every", "0",
         "--sample-every", "0"]


def steps(run_dir) -> list[float]:
    return [e["loss"] for e in read_events(run_dir) if e["event"] == "step"]


def test_compiled_run_takes_the_eager_runs_steps(tmp_path, monkeypatch):
    calls = []
    real = torch.compile

    def spy(module):  # torch.compile, counting the calls of what it returns
        compiled = real(module)

        def forward(*args, **kwargs):
            calls.append(1)
            return compiled(*args, **kwargs)
        return forward

    assert train(tmp_path / "eager", *SHORT) == 0
    assert calls == []
    monkeypatch.setattr(train_mod.torch, "compile", spy)
    assert train(tmp_path / "compiled", *SHORT, "--compile") == 0
    assert len(calls) == 1 + 3  # the start-up compile, then every step
    eager, compiled = read_events(tmp_path / "eager"), read_events(tmp_path / "compiled")
    assert eager[0]["compile_s"] is None and compiled[0]["compile_s"] > 0
    assert not [e for e in compiled if e["event"] == "warning"]
    want, got = steps(tmp_path / "eager"), steps(tmp_path / "compiled")
    assert len(want) == 3 and want[0] != want[2]  # it trained
    assert got == pytest.approx(want, rel=1e-5)


def test_a_compile_failure_trains_eagerly_with_one_warning(tmp_path, monkeypatch):
    def broken(module):
        def forward(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore lines")
        return forward

    monkeypatch.setattr(train_mod.torch, "compile", broken)
    assert train(tmp_path / "eager", *SHORT) == 0
    assert train(tmp_path / "fallback", *SHORT, "--compile") == 0
    events = read_events(tmp_path / "fallback")
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert warnings == ["--compile: torch.compile failed (RuntimeError: InvalidCxxCompiler: No working C++ compiler "
                        "found); training eagerly"]
    assert events[0]["compile_s"] is None and events[-1]["reason"] == "completed"
    assert steps(tmp_path / "fallback") == steps(tmp_path / "eager")  # eager, bit for bit
