"""Ternary linear benchmark: `bitttt bench ternary` with its results kept as JSON.

    python benchmarks/ternary_linear.py [--quick] [any `bitttt bench ternary` flag]

The logic lives in bitttt/bench/ternary.py (so an installed wheel can run it too). Unless
--json is given, this script writes benchmarks/results/ternary_linear-<time>.json beside
the printed table.
"""

import sys
import time
from pathlib import Path

from bitttt.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    asked = any(a in ("-h", "--help", "--json") or a.startswith("--json=") for a in args)
    if not asked:
        results = Path(__file__).resolve().parent / "results"
        results.mkdir(exist_ok=True)
        args += ["--json", str(results / time.strftime("ternary_linear-%Y%m%d-%H%M%S.json"))]
    raise SystemExit(main(["bench", "ternary", *args]))
