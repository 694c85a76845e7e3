"""Training throughput: tokens/s of one optimizer step (forward, backward, AdamW) per preset
and mixer, ternary (fake quant) and full precision.

    python benchmarks/bench_train_step.py [--presets tiny,small] [--mixers ttt_linear,attention]
        [--threads 2] [--batch-size 16] [--seq-len 256] [--steps 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bitttt.errors import ConfigError
from bitttt.model import BitTTTForCausalLM, preset_config


def tokens_per_s(model, batch_size: int, seq_len: int, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (batch_size, seq_len))

    def step():
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size * seq_len / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,small")
    p.add_argument("--mixers", default="ttt_linear,attention")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--full-precision", action="store_true", help="also time the full-precision twin")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} | threads {args.threads} | batch {args.batch_size} x {args.seq_len}")
    rows = []
    for preset in args.presets.split(","):
        for mixer in args.mixers.split(","):
            for ternary in (True, False) if args.full_precision else (True,):
                try:
                    torch.manual_seed(0)
                    model = BitTTTForCausalLM(preset_config(preset, mixer=mixer, ternary=ternary))
                except ConfigError as e:
                    print(f"{preset:5s} {mixer:10s} skipped: {e}")
                    continue
                rate = tokens_per_s(model, args.batch_size, args.seq_len, args.steps)
                rows.append({"preset": preset, "mixer": mixer, "ternary": ternary, "tokens_per_s": rate,
                             "n_params": model.num_params()})
                print(f"{preset:5s} {mixer:10s} {'ternary' if ternary else 'fp32':8s} "
                      f"{model.num_params() / 1e6:6.2f}M params  {rate:9.0f} tokens/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
