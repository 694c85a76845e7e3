"""Where one decoded token of bitttt's own model goes: torch.profiler over decode steps of a
packed BitTTTForCausalLM (random weights, a preset and mixer), after a prompt. Prints ops by
self CPU time per token (calls per token, ms per token, share), and the wall time per token
without the profiler.

    python benchmarks/profile_decode_bitttt.py --preset base --mixer ttt_linear --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bitttt.model import BitTTTForCausalLM, preset_config


def decode_steps(model, token, cache, n: int):
    for _ in range(n):
        out = model(token, cache=cache)
        token, cache = out.logits[:, -1:].argmax(-1), out.cache
    return token, cache


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="base")
    ap.add_argument("--mixer", default="ttt_linear")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--unpacked", action="store_true", help="profile the fake-quant model instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = BitTTTForCausalLM(preset_config(args.preset, mixer=args.mixer)).eval()
    if not args.unpacked:
        model.pack()
    ids = torch.randint(0, 256, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    walls = []
    with torch.no_grad():
        out = model(ids, use_cache=True)
        token, cache = decode_steps(model, out.logits[:, -1:].argmax(-1), out.cache, 4)
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            token, cache = decode_steps(model, token, cache, args.tokens)
            walls.append((time.perf_counter() - t0) / args.tokens)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            token, cache = decode_steps(model, token, cache, args.tokens)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.preset} {args.mixer} {'fake-quant' if args.unpacked else 'packed'}, threads {args.threads}: "
          f"{statistics.median(walls) * 1e3:.2f} ms/token wall [{min(walls) * 1e3:.2f}-{max(walls) * 1e3:.2f}]; "
          f"profiled self total {total / 1e3 / args.tokens:.2f} ms/token, "
          f"{sum(e.count for e in events) / args.tokens:.0f} op calls/token")
    print(f"{'op':<44}{'calls/tok':>10}{'ms/tok':>9}{'share':>8}")
    for e in events[:args.rows]:
        print(f"{e.key[:43]:<44}{e.count / args.tokens:>10.1f}{e.self_cpu_time_total / 1e3 / args.tokens:>9.3f}"
              f"{100 * e.self_cpu_time_total / total:>7.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
