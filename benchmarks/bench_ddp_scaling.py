"""Data-parallel scaling: tokens/s of `bitttt train --nproc N` at the same global batch, for
each N (one process: `bitttt train` alone). Runs are interleaved (1, 2, 1, 2, ...) so that a
shared machine's load falls on every N alike; the rate is the median of the step events after
the first two steps (training only: evaluations and saves are not counted, design §6).

    python benchmarks/bench_ddp_scaling.py [--nproc 1,2] [--global-batch 16] [--steps 20]
        [--repeats 2] [--device cpu|cuda] [--json PATH] [-- extra train flags]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run_once(nproc: int, global_batch: int, steps: int, device: str, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        cmd = [sys.executable, "-m", "bitttt", "train", "--preset", "tiny", "--steps", str(steps),
               "--batch-size", str(global_batch // nproc), "--eval-every", "0", "--eval-tokens", "1024",
               "--save-every", "0", "--sample-every", "0", "--log-every", "1", "--device", device,
               "--log-format", "jsonl", "--run-dir", run_dir, *extra]
        if nproc > 1:
            cmd += ["--nproc", str(nproc)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"nproc {nproc} failed:\n{r.stderr[-2000:]}")
        rates = [e["tokens_per_s"] for e in map(json.loads, (ln for ln in r.stdout.splitlines() if ln.startswith("{")))
                 if e["event"] == "step" and e["step"] > 2]
        return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", default="1,2", help="process counts, comma-separated")
    p.add_argument("--global-batch", type=int, default=16, help="sequences per step over all processes")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", help="also write the results here")
    p.add_argument("extra", nargs="*", help="more bitttt train flags (after --)")
    args = p.parse_args()
    counts = [int(n) for n in args.nproc.split(",")]
    rates: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.repeats):
        for n in counts:
            rates[n].append(run_once(n, args.global_batch, args.steps, args.device, args.extra))
            print(f"nproc {n}: {rates[n][-1]:,.0f} tokens/s", flush=True)
    base = statistics.median(rates[counts[0]])
    print(f"\ncores {os.cpu_count()}, OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', '(cores / nproc)')}, "
          f"global batch {args.global_batch}, device {args.device}")
    print(f"{'nproc':>5} {'tokens/s (median)':>18} {'runs':>24} {'speed-up':>8}")
    for n in counts:
        med = statistics.median(rates[n])
        print(f"{n:>5} {med:>18,.0f} {', '.join(f'{r:,.0f}' for r in rates[n]):>24} {med / base:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"global_batch": args.global_batch, "device": args.device, "cpus": os.cpu_count(),
                       "rates": {str(n): v for n, v in rates.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
