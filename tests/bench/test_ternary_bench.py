"""bitttt.bench.ternary in process: the cold regime's copies, validation, interleaving."""

from __future__ import annotations

import io

import pytest
import torch

from bitttt import _C, ops
from bitttt.bench import harness, ternary
from bitttt.bench.ternary import TernaryBenchConfig
from bitttt.errors import ConfigError

MB = ternary.MB


def tiny_config(**overrides) -> TernaryBenchConfig:
    base = dict(shapes=[(64, 300)], tokens=[3], threads=[1], regimes=["hot", "cold"], reps=5, warmup=1,
                cold_bytes=MB, peaks=False)
    return TernaryBenchConfig(**{**base, **overrides})


def by_case(report) -> dict:
    return report.rows()


def test_copies_needed():
    assert ternary.copies_needed(100, 1000) == 10
    assert ternary.copies_needed(300, 1000) == 4  # 1200 bytes: at least cold_bytes
    assert ternary.copies_needed(5000, 1000) == 1  # one copy larger than the target is cold alone


def test_run_hot_and_cold_rows():
    out = io.StringIO()
    report = ternary.run(tiny_config(), out=out)
    hot, cold = by_case(report).values()
    assert {r.extra["regime"] for r in hot.values()} == {"hot"}
    assert all(r.extra["copies"] == 1 for r in hot.values())
    # Each contender cycles through >= cold_bytes of its own weights: the packed ones are 16x
    # smaller than float32, so there are 16x as many copies (up to rounding).
    packed_bytes = 64 * 512 // 4  # K=300 pads to 512
    assert cold["bitttt"].extra["copies"] == -(-MB // packed_bytes)
    assert cold["fp32"].extra["copies"] == -(-MB // (4 * 64 * 300))
    assert cold["bf16"].extra["copies"] == -(-MB // (2 * 64 * 300))
    assert cold["int8pack"].extra["copies"] == cold["int8dyn"].extra["copies"] == -(-MB // (64 * 300))
    assert set(hot) == {"bitttt", "fp32", "bf16", "int8pack", "int8dyn"}
    assert all(r.rounds == 5 for r in report.results)
    assert "64x300" in out.getvalue()
    assert harness.check_record(report.to_json()) == []


def test_run_restores_threads_and_isa():
    threads, isa = torch.get_num_threads(), _C.isa()
    ternary.run(tiny_config(threads=[1], isas=["scalar"], regimes=["hot"]), out=io.StringIO())
    assert (torch.get_num_threads(), _C.isa()) == (threads, isa)


def test_isas_side_by_side():
    report = ternary.run(tiny_config(isas=list(_C.available_isas()), regimes=["hot"], baselines=["fp32"]),
                         out=io.StringIO())
    names = {f"bitttt-{i}" for i in _C.available_isas()} if len(_C.available_isas()) > 1 else {"bitttt"}
    (row,) = by_case(report).values()
    assert set(row) == names | {"fp32"}


def test_percent_of_peak(monkeypatch):
    # Fixed peaks (harness.Peaks is tested on its own): decode rows divide weight GB/s by the
    # read peak, prefill rows int8 MAC/s by the int8 peak of the kernel set that ran.
    isas = [i for i in ("scalar", "avx2", "avx512") if i in _C.available_isas()]
    huge = {"read_gbs": {1: 1e6}, "int8_avx2_gmacs": {1: 1e6}, "int8_avx512_gmacs": {1: 1e6}}
    monkeypatch.setattr(harness, "measure_peaks", lambda threads, quick=False: huge)
    report = ternary.run(tiny_config(tokens=[1, 3], regimes=["hot", "cold"], isas=isas, baselines=["fp32"],
                                     peaks=True), out=io.StringIO())
    hot_decode, _, decode, prefill = by_case(report).values()
    assert all("pct_of_peak" not in r.extra for r in hot_decode.values())  # cache, not DRAM
    for isa in isas:
        name = ternary.contender_name(isa, isas)
        assert decode[name].extra["pct_of_peak"] == pytest.approx(100 * decode[name].extra["gbps"] / 1e6)
        want = 100 * prefill[name].extra["gops"] / 2 / 1e6 if isa != "scalar" else None
        assert prefill[name].extra.get("pct_of_peak") == (pytest.approx(want) if want else None)
        # the rates come from the median time, not from anything else
        d = decode[name]
        assert d.extra["gbps"] == pytest.approx(d.extra["weight_bytes"] / d.median / 1e3)
    assert report.to_json()["machine"]["peaks"]["read_gbs"] == {"1": 1e6}


def test_wrong_kernel_fails_validation(monkeypatch):
    real = ops.ternary_linear

    def off_by_one_row(x, packed, w_scale, bias=None):
        return real(x, packed, w_scale, bias).roll(1, dims=-1)

    monkeypatch.setattr(ternary.ops, "ternary_linear", off_by_one_row)
    with pytest.raises(ternary.BenchValidationError, match="ternary_linear .* is wrong for 64x300"):
        ternary.run(tiny_config(), out=io.StringIO())


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8pack", "int8dyn"])
def test_wrong_baseline_fails_validation(kind, monkeypatch):
    real = ternary.BASELINE_FNS[kind]
    monkeypatch.setitem(ternary.BASELINE_FNS, kind, lambda x, *w: real(x, *w).roll(1, dims=-1))
    with pytest.raises(ternary.BenchValidationError, match=f"baseline {kind} is wrong"):
        ternary.run(tiny_config(baselines=[kind], regimes=["hot"]), out=io.StringIO())


def test_headline_baseline_is_fp32_without_native_bf16(monkeypatch):
    monkeypatch.setattr(harness, "native_bf16", lambda: False)
    assert ternary.headline_baseline(["fp32", "bf16"]) == "fp32"
    monkeypatch.setattr(harness, "native_bf16", lambda: True)
    assert ternary.headline_baseline(["fp32", "bf16"]) == "bf16"


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
    assert TernaryBenchConfig().baselines == ["fp32", "bf16", "int8pack", "int8dyn"]


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
