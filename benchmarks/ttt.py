"""TTT-Linear benchmark: `bitttt bench ttt` with its results kept as JSON.

    python benchmarks/ttt.py [--quick] [any `bitttt bench ttt` flag]

The logic lives in bitttt/bench/ttt.py (so an installed wheel can run it too). Unless
--json is given, this script writes benchmarks/results/ttt-<time>.json beside the table.
"""

import sys
import time
from pathlib import Path

from bitttt.bench.ttt import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a in ("-h", "--help") or a.startswith("--json") for a in args):
        results = Path(__file__).resolve().parent / "results"
        results.mkdir(exist_ok=True)
        args += ["--json", str(results / time.strftime("ttt-%Y%m%d-%H%M%S.json"))]
    sys.exit(main(args))
