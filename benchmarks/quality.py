"""Quality: trains the four `tiny` variants (ttt_linear / attention x ternary / full precision)
on the same tokens of the default corpus and prints validation bits per byte side by side.

    python benchmarks/quality.py [--steps 600] [--out benchmarks/results/quality] [any bitttt train flag]

Each variant is a real `bitttt train` run (same seed, so the same batches), in its own run
directory under --out; the table reads their events.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = [("ttt_linear", True), ("ttt_linear", False), ("attention", True), ("attention", False)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 time.strftime("quality-%Y%m%d-%H%M%S")))
    args, extra = p.parse_known_args()
    rows = []
    for mixer, ternary in VARIANTS:
        name = f"{mixer}-{'ternary' if ternary else 'fp'}"
        run_dir = os.path.join(args.out, name)
        cmd = [sys.executable, "-m", "bitttt", "train", "--preset", "tiny", "--mixer", mixer,
               "--ternary" if ternary else "--no-ternary", "--steps", str(args.steps), "--run-dir", run_dir,
               "--log-format", "jsonl", "--sample-every", str(10 ** 9), *extra]
        t0 = time.time()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            print(f"{name:22s} failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
            continue
        with open(os.path.join(run_dir, "events.jsonl")) as f:
            evals = [e for e in map(json.loads, f) if e["event"] == "eval"]
        rows.append({"variant": name, "val_bpb": evals[-1]["val_bpb"], "val_loss": evals[-1]["val_loss"],
                     "minutes": (time.time() - t0) / 60})
        print(f"{name:22s} val {evals[-1]['val_bpb']:.3f} bits/byte  ({rows[-1]['minutes']:.1f} min)", flush=True)
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
