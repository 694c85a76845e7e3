"""The `bitttt` command line: info, bench ternary, --version, exit codes (design §6, §6b)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import bitttt
from bitttt import cli
from bitttt.errors import ConfigError, DataError

BENCH_TINY = ["bench", "ternary", "--quick", "--shapes", "256x512", "--tokens", "1,4", "--threads", "1",
              "--regimes", "hot", "--reps", "3"]


def run_bitttt(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitttt", *args], capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------
# In process: cli.main(argv)
# ---------------------------------------------------------------------------------------


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bitttt {bitttt.__version__}"


def test_info_text(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for label in ("bitttt:", "torch:", "available ISAs:", "ternary kernels:", "torch threads:", "CUDA:"):
        assert label in out
    assert "BITTTT_ISA" in out


def test_info_json(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    tern = info["ternary"]
    assert tern["isa"] in tern["available_isas"]
    assert set(tern["available_isas"]) <= set(tern["compiled_isas"])
    assert "scalar" in tern["available_isas"]  # the portable fallback is always there
    assert info["bitttt"]["version"] == bitttt.__version__
    assert info["torch"]["num_threads"] >= 1
    cuda = info["cuda"]
    assert cuda["device_count"] == len(cuda["devices"])
    # Either the kernels are here, or the report says why not.
    assert cuda["kernels_compiled"] != bool(cuda["kernels_missing_reason"])


def info_json(env_isa: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "BITTTT_ISA"}
    if env_isa is not None:
        env["BITTTT_ISA"] = env_isa
    out = subprocess.run([sys.executable, "-c", "import sys; from bitttt import cli; sys.exit(cli.main(['info', '--json']))"],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_info_says_whether_the_amx_tiles_run():
    """The oracle: what the CPU and the build have (cpu_features, build_info), and BITTTT_ISA."""
    from bitttt import _C

    has_amx = bool(_C.cpu_features().get("amx_int8")) and bool(_C.build_info().get("amx"))
    assert info_json(None)["ternary"]["amx_tiles"] is has_amx
    if "avx512" in _C.available_isas():
        assert info_json("avx512")["ternary"]["amx_tiles"] is False
    assert info_json("scalar")["ternary"]["amx_tiles"] is False


@pytest.mark.parametrize("argv", [
    [],
    ["no-such-command"],
    ["bench"],
    ["bench", "ternary", "--shapes", "12x"],
    ["bench", "ternary", "--tokens", "one"],
    ["bench", "ternary", "--isa", "sse9"],
    ["bench", "ternary", "--regimes", "lukewarm"],
], ids=lambda a: " ".join(a) or "no-args")
def test_bad_args_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_bad_bench_config_exit_2_one_line(capsys):
    assert cli.main(["bench", "ternary", "--tokens", "0", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitttt: error: bench ternary:") and "\n" not in err


@pytest.mark.parametrize("exc, code", [(ConfigError("bad config", hint="fix it"), 2), (DataError("bad data"), 3),
                                       (MemoryError("no room"), 4), (RuntimeError("boom"), 1)],
                         ids=["config", "data", "oom", "unexpected"])
def test_exceptions_map_to_exit_codes(exc, code, monkeypatch, capsys):
    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "_run_info", fail)  # main builds its parser on each call
    assert cli.main(["info"]) == code
    err = capsys.readouterr().err
    assert str(exc) in err
    if isinstance(exc, ConfigError):
        assert err.strip() == "bitttt: error: bad config (hint: fix it)"


# ---------------------------------------------------------------------------------------
# Spawned: python -m bitttt
# ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_python_m_bitttt_info_json():
    r = run_bitttt("info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["ternary"]["isa"] in info["ternary"]["available_isas"]


@pytest.mark.integration
def test_python_m_bitttt_bad_args():
    r = run_bitttt("bench", "ternary", "--shapes", "nope")
    assert r.returncode == 2
    assert "--shapes" in r.stderr


@pytest.mark.integration
def test_bench_ternary_json(tmp_path):
    out = tmp_path / "out.json"
    r = run_bitttt(*BENCH_TINY, "--baselines", "fp32,bf16", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "bitttt/fp32" in r.stdout  # the row's speedup cell
    report = json.loads(out.read_text())
    assert report["schema"] == "bitttt-bench/1" and report["bench"] == "ternary"
    assert report["machine"]["kernel_isa"] in report["settings"]["isas"]
    cases = report["cases"]
    assert [(c["N"], c["K"], c["M"], c["threads"], c["regime"], c["contender"]) for c in cases] == [
        (256, 512, M, 1, "hot", n) for M in (1, 4) for n in ("bitttt", "fp32", "bf16")]
    for c in cases:
        assert c["rounds"] == 3 and c["unit"] == "us" and 0 < c["min"] <= c["median"] <= c["max"]
        assert c["gbps"] > 0 and c["gops"] > 0
    by = {(c["M"], c["contender"]): c for c in cases}
    assert by[1, "bitttt"]["weight_bytes"] == 256 * 512 // 4  # K=512 is already a multiple of 256
    assert by[1, "fp32"]["weight_bytes"] == 4 * 256 * 512
