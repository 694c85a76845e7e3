"""The benchmarks are a library under the CLI, never above it: no bench module imports
bitttt.cli, and no two bench modules import each other both ways (issue 15)."""

from __future__ import annotations

import subprocess
import sys

BENCH_MODULES = ["bitttt.bench.peak", "bitttt.bench.ternary", "bitttt.bench.ternary_cuda", "bitttt.bench.ttt",
                 "bitttt.bench.bitnet", "bitttt.bench.ttt_flags", "bitttt.bench.harness", "bitttt.bench.train",
                 "bitttt.bench.train_flags", "bitttt.bench.nanogpt"]


def test_bench_modules_and_their_parsers_load_without_the_cli():
    code = ("import sys\n"
            f"for m in {BENCH_MODULES!r}: __import__(m)\n"
            "import bitttt.bench.ttt as ttt\n"
            "ttt.build_parser().parse_args(['--quick'])\n"
            "print('bitttt.cli' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_the_cpu_benchmark_does_not_import_the_cuda_one():
    code = "import sys, bitttt.bench.ternary\nprint('bitttt.bench.ternary_cuda' in sys.modules)\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
