"""bitttt.bench.ternary in process: the cold regime's copies, validation, interleaving."""

from __future__ import annotations

import io

import pytest
import torch

from bitttt import _C, ops
from bitttt.bench import ternary
from bitttt.bench.ternary import TernaryBenchConfig
from bitttt.errors import ConfigError

MB = ternary.MB


def tiny_config(**overrides) -> TernaryBenchConfig:
    base = dict(shapes=[(64, 300)], tokens=[3], threads=[1], regimes=["hot", "cold"], reps=2, warmup=1,
                cold_bytes=MB, peaks=False)
    return TernaryBenchConfig(**{**base, **overrides})


def test_copies_needed():
    assert ternary.copies_needed(100, 1000) == 10
    assert ternary.copies_needed(300, 1000) == 4  # 1200 bytes: at least cold_bytes
    assert ternary.copies_needed(5000, 1000) == 1  # one copy larger than the target is cold alone


def test_run_hot_and_cold_rows():
    out = io.StringIO()
    report = ternary.run(tiny_config(), out=out)
    hot, cold = report.rows
    assert (hot.regime, cold.regime) == ("hot", "cold")
    assert all(t.copies == 1 for t in hot.timings.values())
    # Each contender cycles through >= cold_bytes of its own weights: the packed ones are 16x
    # smaller than float32, so there are 16x as many copies (up to rounding).
    packed_bytes = 64 * 512 // 4  # K=300 pads to 512
    assert cold.timings["bitttt"].copies == -(-MB // packed_bytes)
    assert cold.timings["fp32"].copies == -(-MB // (4 * 64 * 300))
    assert cold.timings["bf16"].copies == -(-MB // (2 * 64 * 300))
    assert all(t.reps == 2 for r in report.rows for t in r.timings.values())
    assert "64x300" in out.getvalue()


def test_run_restores_threads_and_isa():
    threads, isa = torch.get_num_threads(), _C.isa()
    ternary.run(tiny_config(threads=[1], isas=["scalar"], regimes=["hot"]), out=io.StringIO())
    assert (torch.get_num_threads(), _C.isa()) == (threads, isa)


def test_isas_side_by_side():
    report = ternary.run(tiny_config(isas=list(_C.available_isas()), regimes=["hot"], baselines=["fp32"]),
                         out=io.StringIO())
    names = {f"bitttt-{i}" for i in _C.available_isas()} if len(_C.available_isas()) > 1 else {"bitttt"}
    assert set(report.rows[0].timings) == names | {"fp32"}
    assert set(report.rows[0].speedups) == {f"{n} vs fp32" for n in names}


def test_percent_of_peak():
    # Small peaks (a 1 MiB read sits in cache: a number, not a bandwidth); decode rows divide
    # by the read, prefill rows by the int8 peak of the kernel set that ran.
    isas = [i for i in ("scalar", "avx2", "avx512") if i in _C.available_isas()]
    out = io.StringIO()
    report = ternary.run(tiny_config(tokens=[1, 3], regimes=["hot"], isas=isas, baselines=["fp32"], peaks=True,
                                     peak_run_s=0.001, peak_read_bytes=MB), out=out)
    assert report.peaks is not None and "% of peak" in out.getvalue()
    decode, prefill = report.rows
    for isa in isas:
        name = ternary.contender_name(isa, isas)
        assert decode.peak_pct[name] == pytest.approx(
            100 * decode.timings[name].gbps / report.peaks.read_gbs(1))
        int8 = report.peaks.int8(isa, 1)
        assert prefill.peak_pct[name] == (pytest.approx(100 * prefill.timings[name].gops / 2 / int8) if int8 else None)
    assert report.to_json()["peaks"]["entries"][0]["threads"] == 1


def test_wrong_kernel_fails_validation(monkeypatch):
    real = ops.ternary_linear

    def off_by_one_row(x, packed, w_scale, bias=None):
        return real(x, packed, w_scale, bias).roll(1, dims=-1)

    monkeypatch.setattr(ternary.ops, "ternary_linear", off_by_one_row)
    with pytest.raises(ternary.BenchValidationError, match="ternary_linear .* is wrong for 64x300"):
        ternary.run(tiny_config(), out=io.StringIO())


@pytest.mark.parametrize("overrides", [dict(tokens=[0]), dict(shapes=[]), dict(regimes=["warm"]),
                                       dict(isas=["no-such-isa"]), dict(cold_bytes=2**40)],
                         ids=["M=0", "no-shapes", "regime", "isa", "cold-too-big"])
def test_bad_config_raises_config_error(overrides):
    with pytest.raises(ConfigError):
        ternary.run(tiny_config(**overrides), out=io.StringIO())


# ---------------------------------------------------------------------------------------
# --device cuda: parsing and defaults here; the timing itself needs a GPU
# ---------------------------------------------------------------------------------------


def _cuda_bench_can_run() -> bool:
    from bitttt._native import C_cuda

    return C_cuda is not None and torch.cuda.is_available()


def test_cli_accepts_device_cuda():
    from bitttt import cli

    args = cli.build_parser().parse_args(["bench", "ternary", "--device", "cuda", "--baselines", "bf16,fp16"])
    assert args.device == "cuda" and args.baselines == ["bf16", "fp16"]
    assert cli.build_parser().parse_args(["bench", "ternary"]).device == "cpu"


def test_cuda_defaults_are_bitnet_2b_shapes():
    config = TernaryBenchConfig.for_device("cuda")
    assert config.device == "cuda"
    assert (13824, 2560) in config.shapes and config.tokens == [1, 8, 128, 512, 2048]
    assert config.baselines == ["bf16", "fp16", "fp32"]
    config.validate()
    assert TernaryBenchConfig.for_device("cpu") == TernaryBenchConfig()


def test_fp16_baseline_is_cuda_only():
    with pytest.raises(ConfigError, match="baselines must be among"):
        ternary.run(tiny_config(baselines=["fp16"]), out=io.StringIO())


@pytest.mark.skipif(_cuda_bench_can_run(), reason="a CUDA device and kernels are here: the benchmark would run")
def test_cuda_bench_refuses_without_device(capsys):
    from bitttt import cli

    assert cli.main(["bench", "ternary", "--device", "cuda", "--quick"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("bitttt: error: bench ternary: --device cuda") and "\n" not in err
    assert "Traceback" not in captured.err + captured.out


def test_cpu_run_refuses_a_cuda_config():
    # The CUDA rows live in bench/ternary_cuda.py, which builds on this module; the CLI picks.
    with pytest.raises(ConfigError, match="ternary_cuda"):
        ternary.run(tiny_config(device="cuda", threads=[1], baselines=["fp32"], regimes=["hot"]), out=io.StringIO())
