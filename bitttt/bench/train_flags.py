"""The flags of `bitttt bench train` (bitttt/bench/train.py), without torch: the CLI builds its
--help from them before anything heavy loads."""

from __future__ import annotations

import argparse

BASELINE = "nanogpt"
DEFAULT_CONTENDERS = [BASELINE, "attention-float", "ttt_linear-ternary"]  # issue 26's three


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    p.add_argument("--contenders", nargs="+", default=None, metavar="NAME",
                   help=f"default: {' '.join(DEFAULT_CONTENDERS)}; any of nanogpt, <mixer>-float, <mixer>-ternary "
                        "(mixers: ttt_linear ttt_mlp attention); nanogpt is always timed")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="thread counts, one case each (default 2 1)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="steps per timed window (default 2)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved windows per contender (default 5)")
    p.add_argument("--quick", action="store_true", help="batch 2 x 32, 1 step per window, 1 thread: seconds")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead of timing: torch.profiler over one step of each contender, top N ops")
    p.add_argument("--shared", action="store_true", help="record that other work shared the machine meanwhile")
    p.add_argument("--json", metavar="PATH", help="write the result record (bitttt/bench/harness.py) here")
    return p
