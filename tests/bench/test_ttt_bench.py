"""bitttt bench ttt: its cases through the harness, validation before timing, FLOPs counted
independently, the --device flag and a clean refusal of --device cuda without a GPU."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch

from bitttt import _native, cli, ops, reference
from bitttt.bench import harness, ttt

HAS_CUDA = _native.C_cuda is not None and torch.cuda.is_available()
no_cuda_only = pytest.mark.skipif(HAS_CUDA, reason="this machine can run the CUDA benchmark")


def test_device_flag_parses():
    assert ttt.build_parser().parse_args(["--device", "cuda", "--quick"]).device == "cuda"
    assert ttt.build_parser().parse_args([]).device == "cpu"


def test_unknown_device_exits_2(capsys):
    assert cli.main(["bench", "ttt", "--device", "tpu"]) == 2
    assert "invalid choice" in capsys.readouterr().err


@no_cuda_only
def test_cuda_without_device_refuses_in_one_line(capsys):
    assert cli.main(["bench", "ttt", "--device", "cuda", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitttt: error: bench ttt: --device cuda:") and "\n" not in err
    assert "hint:" in err


@no_cuda_only
@pytest.mark.integration
def test_cuda_without_device_refuses_from_the_command_line():
    r = subprocess.run([sys.executable, "-m", "bitttt", "bench", "ttt", "--device", "cuda", "--quick"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert "bench ttt: --device cuda" in r.stderr


def tiny_args(**kw):
    base = ["--batch", "1", "--tokens", "40", "--heads", "2", "--head-dim", "8", "--rounds", "5", "--threads", "1",
            "--no-compile", "--no-peaks"]
    return ttt.build_parser().parse_args(base + [str(a) for pair in kw.items() for a in pair])


def test_cpu_cases_run_through_the_harness(tmp_path):
    out = io.StringIO()
    path = tmp_path / "ttt.json"
    record = ttt.run(tiny_args(**{"--ref-grad-max-tokens": 0, "--json": path}), out=out)
    got = {(r.case, r.contender) for r in record.results}
    assert got == {("prefill B=1 T=40", "op"), ("prefill B=1 T=40", "reference"), ("decode B=1 pos=17", "op"),
                   ("decode B=1 pos=17", "op-dispatcher"), ("decode B=1 pos=17", "reference"),
                   ("fwd+bwd B=1 T=40", "op")}
    assert all(r.rounds == 5 and r.min <= r.median <= r.max for r in record.results)
    units = {r.case.split()[0]: r.unit for r in record.results}
    assert units == {"prefill": "tok/s", "decode": "us", "fwd+bwd": "ms"}
    assert "op is" in out.getvalue()
    d = json.loads(path.read_text())
    assert harness.check_record(d) == [] and d["bench"] == "ttt"


def test_a_wrong_op_stops_the_bench_before_timing(monkeypatch):
    real = ops.ttt_linear
    timed = []

    def shifted(*a, **k):
        out, st = real(*a, **k)
        return out + 1e-2, st

    monkeypatch.setattr(ttt.ops, "ttt_linear", shifted)
    monkeypatch.setattr(harness, "time_case", lambda *a, **k: timed.append(a))
    with pytest.raises(harness.BenchValidationError, match="op output differs from the reference"):
        ttt.run(tiny_args(), out=io.StringIO())
    assert timed == []


def test_prefill_flops_against_a_hand_count():
    # B=1, H=1, T=b=2, D=2: one mini-batch. MACs: k W_s [2,2]@[2,2] = 8, q W_s 8, (lr k)^T G
    # [2,2]@[2,2] = 8, q k^T [2,2]@[2,2] = 8, attn G [2,2]@[2,2] = 8: 40 MACs = 80 FLOPs.
    assert ttt.prefill_flops(1, 1, 2, 2, 2) == 80
    # B=2, H=3, T=4, b=4, D=1: per mini-batch k W_s 4, q W_s 4, (lr k)^T G 4, q k^T 16,
    # attn G 16 MACs = 44 MACs = 88 FLOPs, times B*H = 6 mini-batches.
    assert ttt.prefill_flops(2, 3, 4, 1, 4) == 6 * 88


def test_prefill_flops_match_torch_flop_counter_on_the_dual_form():
    from torch.utils.flop_counter import FlopCounterMode

    B, H, b, D = 1, 2, 4, 8
    q, k, v, lr, ts, W0, b0, ln_w, ln_b = ttt.make_inputs(B, H, b, D, b)
    W, c = W0.expand(B, H, D, D), b0.expand(B, H, D)
    with FlopCounterMode(display=False) as counter:
        reference.ttt_linear_dual_minibatch(q, k, v, lr, ts, W, c, ln_w, ln_b)
    assert counter.get_total_flops() == ttt.prefill_flops(B, H, b, D, b)


def test_percent_of_fp32_peak():
    peaks = harness.Peaks([2], measure=lambda t: {"fp32_avx512_gflops": {2: 100.0}})
    r = harness.Result("prefill B=1 T=160", "op", 2, "passive", 1000.0, 900.0, 1100.0, "tok/s", 5,
                       {"B": 1, "H": 2, "T": 160, "D": 64, "b": 16})
    ttt.add_peak_pct([r], peaks, "avx512")
    gflops = 2 * (6 * 64 * 64 + 4 * 16 * 64) * 1000.0 / 1e9  # FLOPs per token (both heads) x tokens/s
    assert r.extra["gflops"] == pytest.approx(gflops)
    assert r.extra["pct_of_fp32_peak"] == pytest.approx(100 * gflops / 100.0)
    ttt.add_peak_pct([r], peaks, "scalar")  # no FMA peak for the scalar kernels
    assert r.extra["pct_of_fp32_peak"] is None


def test_no_peaks_flag_parses():
    assert ttt.build_parser().parse_args(["--no-peaks"]).no_peaks
    assert not ttt.build_parser().parse_args([]).no_peaks


def compile_args(**kw):
    base = ["--batch", "1", "--tokens", "32", "--heads", "2", "--head-dim", "8", "--mini-batch", "16", "--rounds", "5",
            "--threads", "1", "--no-peaks"]
    return ttt.build_parser().parse_args(base + [str(a) for pair in kw.items() for a in pair])


@pytest.mark.slow
def test_fwd_bwd_has_a_compiled_reference_checked_against_the_eager_one():
    record = ttt.run(compile_args(), out=io.StringIO())
    got = {r.contender for r in record.results if r.case.startswith("fwd+bwd")}
    assert got == {"op", "reference", "reference-compiled"}
    assert not any("compiled_error" in r.extra for r in record.results)


def test_a_compile_failure_is_recorded_in_the_fwd_bwd_case(monkeypatch):
    def broken(b):
        def run(*a):
            raise RuntimeError("no C++ compiler\nmore detail")
        return run

    monkeypatch.setattr(ttt, "compiled_reference", broken)
    cs = ttt.cases(1, 32, 2, 8, 16, "cpu", True, 8192)  # builds the contenders; only the fwd+bwd warm-up runs
    fb = next(c for c in cs if c.name.startswith("fwd+bwd"))
    assert [c.name for c in fb.contenders] == ["op", "reference"]
    assert fb.extra["compiled_error"] == "RuntimeError: no C++ compiler"
    r = harness.Result(fb.name, "op", 1, "passive", 1.0, 1.0, 1.0, "ms", 5, dict(fb.extra))
    assert "torch.compile failed: RuntimeError: no C++ compiler" in ttt.format_results([r])
