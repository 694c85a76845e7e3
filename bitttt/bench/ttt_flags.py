"""The flags of `bitttt bench ttt` (bitttt/bench/ttt.py), without torch: the CLI builds its
--help from them before anything heavy loads, and the benchmark never imports the CLI."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the TTT benchmark's flags to p and returns it."""
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes B (default 1 4)")
    p.add_argument("--tokens", type=int, nargs="+", default=[512, 2048, 8192], help="sequence lengths T")
    p.add_argument("--heads", type=int, default=12, help="heads H (default 12)")
    p.add_argument("--head-dim", type=int, default=64, help="head size D (default 64)")
    p.add_argument("--mini-batch", type=int, default=16, help="TTT mini-batch b (default 16)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--rounds", "--repeat", type=int, default=5,
                   help="interleaved rounds per case, every contender once per round (default 5)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference")
    p.add_argument("--no-peaks", action="store_true",
                   help="skip measuring the FP32 FMA peak (bitttt bench peak) and the %% of peak column")
    p.add_argument("--ref-grad-max-tokens", type=int, default=8192,
                   help="run the reference's forward+backward only up to B*T tokens (it is slow; default 8192)")
    p.add_argument("--quick", action="store_true", help="B=1, T=512 and 2048 only")
    p.add_argument("--json", help="also write the result record (bitttt/bench/harness.py) to this file")
    p.add_argument("--shared", action="store_true", help="record that other work shared the machine meanwhile")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the op and the reference run (default cpu; cuda: CUDA-event timing)")
    return p
