"""bitttt bench peak (issue 15): every kernel really does its arithmetic, refusals, the CLI.

Behaviour only, never timing: checksums against the closed forms of csrc/peak/peak.h, errors
for kernels this CPU lacks or names nobody knows, and the command's JSON.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from bitttt import _C
from bitttt.bench import peak
from bitttt.errors import ConfigError

KERNELS = {k["name"]: k for k in _C.peak_kernels()}
AVAILABLE = [n for n, k in KERNELS.items() if k["available"]]
MISSING = [n for n, k in KERNELS.items() if not k["available"]]
# Iteration counts around the kernels' internal steps: 1, an AVX2 widening group of 32
# vpmaddubsw (and one more), and one that is no multiple of anything.
ITERS = [1, 31, 32, 33, 1000]


def test_kernel_table():
    assert list(KERNELS) == ["int8_avx512vnni", "int8_avx2", "fp32_avx512", "fp32_avx2"]
    for k in KERNELS.values():
        assert k["kind"] in ("int8", "fp32") and k["isa"] in ("avx512", "avx2")
        assert k["lanes_per_iter"] > 0 and k["ops_per_lane"] == (4 if k["name"] == "int8_avx512vnni" else 2)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("iters", ITERS)
@pytest.mark.parametrize("name", AVAILABLE)
def test_compute_checksum_is_closed_form(name, iters, threads):
    k = KERNELS[name]
    seconds, checksum = _C.peak_compute(name, threads, iters, 2)
    assert seconds > 0
    # Every accumulator lane of every chain and thread gained exactly 1 per iteration.
    assert checksum == threads * k["lanes_per_iter"] * iters
    assert checksum == peak.expected_compute_checksum(k, threads, iters)


@pytest.mark.parametrize("name", [n for n in AVAILABLE if KERNELS[n]["kind"] == "fp32"])
def test_fp32_lanes_stop_at_2_pow_24(name):
    k = KERNELS[name]
    _, checksum = _C.peak_compute(name, 1, 2**24 + 5, 1)
    assert checksum == k["lanes_per_iter"] * 2**24 == peak.expected_compute_checksum(k, 1, 2**24 + 5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("nbytes", [8, 8 * 1000 + 5, 1 << 20])
def test_read_checksum_is_closed_form(nbytes, threads):
    if nbytes < 8 * threads:
        pytest.skip("less than a word per thread")
    seconds, checksum = _C.peak_read(threads, nbytes, 2)
    n = nbytes // (8 * threads) * threads  # words read: word i holds i
    assert seconds > 0 and checksum == n * (n - 1) // 2 == peak.expected_read_checksum(threads, nbytes)


@pytest.mark.skipif(not MISSING, reason="this CPU has every peak kernel's ISA")
@pytest.mark.parametrize("name", MISSING)
def test_kernel_this_cpu_lacks_is_refused(name):
    with pytest.raises(RuntimeError, match=f"kernel '{name}' needs {KERNELS[name]['isa']}"):
        _C.peak_compute(name, 1, 10, 1)
    p = peak.measure_compute(KERNELS[name], 1)
    assert (p.value, p.note) == (None, peak.NOT_ON_CPU)


def test_kernel_marked_missing_is_not_run(monkeypatch):
    # The refusal path on a CPU that has everything: measure_compute must not call the kernel.
    def never(*args):
        raise AssertionError("ran a kernel marked unavailable")

    monkeypatch.setattr(peak._C, "peak_compute", never)
    p = peak.measure_compute({**KERNELS["int8_avx2"], "available": False}, 2)
    assert (p.value, p.seconds, p.note) == (None, None, peak.NOT_ON_CPU)


@pytest.mark.parametrize("args, match", [
    (("int8_sse9", 1, 10, 1), "unknown kernel 'int8_sse9' .*known: int8_avx512vnni"),
    (("int8_avx2", 0, 10, 1), "threads=0"),
    (("int8_avx2", 1, 0, 1), "iters=0"),
    (("int8_avx2", 1, 10, 0), "reps=0"),
], ids=["bogus-isa", "threads=0", "iters=0", "reps=0"])
def test_bad_compute_arguments_raise(args, match):
    with pytest.raises(ValueError, match=match):
        _C.peak_compute(*args)


def test_bad_read_arguments_raise():
    with pytest.raises(ValueError, match="at least 8 per thread"):
        _C.peak_read(2, 8, 1)
    with pytest.raises(ConfigError, match="threads must be"):
        peak.measure_peaks([0])


def test_wrong_checksum_fails(monkeypatch):
    monkeypatch.setattr(peak._C, "peak_compute", lambda name, threads, iters, reps: (1.0, 0))
    with pytest.raises(peak.PeakCheckError, match="checksum 0, expected"):
        peak.measure_compute(KERNELS["int8_avx2"], 1)


def test_measure_peaks_in_process():
    out = io.StringIO()
    peaks = peak.measure_peaks([1, 2], read_bytes=1 << 20, run_s=0.001, reps=1, out=out)
    assert len(peaks.peaks) == 2 * (len(KERNELS) + 1)
    assert peaks.read_gbs(2) > 0 and peaks.get("read", 3) is None
    for name in AVAILABLE:
        assert peaks.get(name, 1) > 0 and peaks.get(name, 2) > 0
    if "int8_avx512vnni" in AVAILABLE:
        assert peaks.int8("avx512", 1) == peaks.get("int8_avx512vnni", 1)
    assert peaks.int8("scalar", 1) is None and peaks.fp32("scalar", 1) is None
    assert "vpdpbusd zmm" in out.getvalue() and "2 threads" in out.getvalue()


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_cli_quick_json(tmp_path):
    from bitttt.bench import harness

    path = tmp_path / "peaks.json"
    r = subprocess.run([sys.executable, "-m", "bitttt", "bench", "peak", "--quick", "--read-bytes", "64M",
                        "--json", str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    record = json.loads(path.read_text())
    assert harness.check_record(record) == [] and record["bench"] == "peak"
    got = {(c["contender"], c["threads"]) for c in record["cases"]}
    assert got == {(n, t) for n in [*AVAILABLE, "read"] for t in (1, 2)}
    assert all(c["rounds"] == 5 and 0 < c["min"] <= c["median"] <= c["max"] for c in record["cases"])
    # The machine's peaks are each kernel's best pass
    best = {(c["contender"], c["threads"]): c["max"] for c in record["cases"]}
    assert record["machine"]["peaks"]["read_gbs"] == {str(t): round(best["read", t], 3) for t in (1, 2)}


def test_cli_help_needs_no_torch():
    code = ("import sys; from bitttt import cli; rc = cli.main(['bench', 'peak', '--help']); "
            "print(rc, sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--read-bytes" in r.stdout and r.stdout.strip().endswith("0 []")


def test_cli_threads_and_sizes():
    from bitttt import cli

    args = cli.build_parser().parse_args(["bench", "peak", "--threads", "1", "2,4", "--read-bytes", "512M"])
    assert [t for g in args.threads for t in g] == [1, 2, 4] and args.read_bytes == 512 * 2**20
    assert cli.main(["bench", "peak", "--read-bytes", "lots"]) == 2


def test_cli_bad_threads_exit_2_one_line(capsys):
    from bitttt import cli

    assert cli.main(["bench", "peak", "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitttt: error: bench peak: threads must be in 1..4096") and "\n" not in err
