"""bitttt bench ttt: the --device flag, and a clean refusal of --device cuda without a GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bitttt import _native, cli
from bitttt.bench import ttt

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


def test_cpu_row_still_runs():
    row = ttt.bench_config(1, 40, 2, 8, 16, repeat=1, with_compile=False, ref_grad_max_tokens=0)
    assert row["prefill_op_s"] > 0 and "fwd_bwd_ref_s" not in row
    assert "prefill tok/s op" in ttt.format_row(row)


def test_percent_of_fp32_peak():
    from bitttt.bench import peak

    # Dual form per token: k W, q W, (lr k)^T G at 2D^2 each, q k^T and attn G at 2bD each.
    assert ttt.prefill_flops(1, 1, 1, 64, 16) == 6 * 64 * 64 + 4 * 16 * 64
    peaks = peak.Peaks("m", {}, "avx512", [2], [peak.Peak("fp32_avx512", "fp32", "avx512", "vfmadd231ps zmm",
                                                          "GFLOP/s", 2, 100.0, 0.1, 10**10)])
    row = {"B": 1, "H": 2, "T": 160, "D": 64, "b": 16, "prefill_op_s": 1e-3}
    ttt.add_peak_pct(row, peaks, "avx512", 2)
    gflops = 2 * 160 * (6 * 64 * 64 + 4 * 16 * 64) / 1e-3 / 1e9
    assert row["prefill_op_gflops"] == pytest.approx(gflops)
    assert row["prefill_op_pct_fp32_peak"] == pytest.approx(100 * gflops / 100.0)
    ttt.add_peak_pct(row, peaks, "scalar", 2)  # no FMA peak for the scalar kernels
    assert row["prefill_op_pct_fp32_peak"] is None
    assert "of fp32 peak" in ttt.format_row({**row, "prefill_ref_s": 1.0, "decode_op_s": 1e-5, "decode_ref_s": 1e-4,
                                             "fwd_bwd_op_s": 1e-2})


def test_no_peaks_flag_parses():
    assert ttt.build_parser().parse_args(["--no-peaks"]).no_peaks
    assert not ttt.build_parser().parse_args([]).no_peaks
