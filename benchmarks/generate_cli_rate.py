"""`bitttt generate` from the command line against the in-process decode rate of `bitttt bench
bitnet` (its Bitttt engine), interleaved over --rounds rounds on the same HF BitNet folder (it
needs a tokenizer.json). The command line's rate is its own report: tokens over the seconds from
the prompt's prefill to the last token (model loading excluded); the in-process rate is the
bench's decode steps after a --prompt-token prompt. Both at torch's default thread count
unless --threads, under OMP_WAIT_POLICY=PASSIVE as bitttt's commands run.

    python benchmarks/generate_cli_rate.py --folder /tmp/bitnet2b_tok --json cli_rate.json
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import torch


def cli_rate(folder: str, tokens: int, lm_head: str, env: dict[str, str]) -> tuple[float, int]:
    """tokens/s and token count of one `bitttt generate` run, as the command prints them."""
    cmd = [sys.executable, "-m", "bitttt", "generate", "--model", folder, "--prompt", "the quick brown fox",
           "--temperature", "0", "--max-new-tokens", str(tokens), "--lm-head", lm_head]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    m = re.search(r"\[(\d+) tokens, ([\d.]+) tokens/s\]", out.stderr)
    if not m:
        raise RuntimeError(f"no rate in bitttt generate's output: {out.stderr[-500:]}")
    return float(m.group(2)), int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=128, help="the in-process run's prompt tokens")
    ap.add_argument("--lm-head", default="int8", choices=["float", "int8"])
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default (as the command line)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()

    from bitttt.bench import harness
    from bitttt.bench.bitnet import Bitttt

    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    record = harness.Record("generate_cli_rate", {"tokens": args.tokens, "prompt": args.prompt,
                                                  "lm_head": args.lm_head, "rounds": args.rounds,
                                                  "shared_machine": True, "wait_policy": harness.current_wait_policy()})
    engine = Bitttt(args.folder, threads, args.lm_head)
    ids = torch.randint(0, 256, (args.prompt,), generator=torch.Generator().manual_seed(1)).tolist()
    cli, inproc, counts = [], [], []
    with torch.no_grad():
        engine.decode(ids, 2)  # warm
        for _ in range(args.rounds):
            rate, n = cli_rate(args.folder, args.tokens, args.lm_head, env)
            cli.append(rate)
            counts.append(n)
            inproc.append(args.tokens / engine.decode(ids, args.tokens))
            time.sleep(0)
    record.finish([])
    ratio = statistics.median(cli) / statistics.median(inproc)
    print(f"threads {threads}: bitttt generate {statistics.median(cli):.2f} tok/s ({cli}), in-process decode "
          f"{statistics.median(inproc):.2f} tok/s ({[round(r, 2) for r in inproc]}): ratio {ratio:.3f}; "
          f"tokens generated {counts}; load {record.load_before} -> {record.load_after}")
    if args.json:
        rec = record.to_json()
        rec["cases"] = [{"case": "decode", "contender": name, "threads": threads, "wait_policy": "passive",
                         "median": statistics.median(v), "min": min(v), "max": max(v), "unit": "tok/s",
                         "rounds": len(v)} for name, v in (("bitttt generate (CLI)", cli), ("in-process", inproc))]
        rec["cli_over_in_process"] = ratio
        rec["cli_tokens"] = counts
        harness.write_json(rec, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
