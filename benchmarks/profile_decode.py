"""Where one decoded token's time goes: torch.profiler over decode steps of a BitNet model
(the 2B4T-shaped random folder `bitttt bench bitnet --folder F` writes, or any HF BitNet folder),
after a prompt. Prints ops by self CPU time per token: calls per token, ms per token, share.

    python benchmarks/profile_decode.py --folder /tmp/bitnet2b --threads 1 --lm-head int8
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True, help="an HF BitNet folder; written (2B shape) if it has no config.json")
    ap.add_argument("--layers", type=int, default=30, help="layers when writing the folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lm-head", default="int8", choices=["float", "int8"])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=8, help="decode steps profiled (after 4 warm ones)")
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--json", help="also write the table here")
    args = ap.parse_args()

    from bitttt.bench import bitnet
    from bitttt.hf import load_bitnet

    if not os.path.isfile(os.path.join(args.folder, "config.json")):
        bitnet.write_folder(args.folder, args.layers)
    torch.set_num_threads(args.threads)
    model = load_bitnet(args.folder, lm_head=args.lm_head)
    ids = torch.randint(0, model.config.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(4):  # warm: the KV buffer, first-call allocations, thread start
            out = model(token, cache=out.cache)
            token = out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.tokens):
                out = model(token, cache=out.cache)
                token = out.logits[:, -1:].argmax(-1)
        wall = (time.perf_counter() - t0) / args.tokens
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key, "calls_per_token": e.count / args.tokens,
             "self_ms_per_token": e.self_cpu_time_total / 1e3 / args.tokens,
             "share": e.self_cpu_time_total / total} for e in events]
    print(f"threads {args.threads}, head {args.lm_head}, prompt {args.prompt}: {wall * 1e3:.2f} ms/token wall "
          f"(profiled), {total / 1e3 / args.tokens:.2f} ms/token self CPU in ops, "
          f"{sum(e.count for e in events) / args.tokens:.0f} op calls/token; load {os.getloadavg()}")
    print(f"{'op':<44}{'calls/tok':>10}{'ms/tok':>9}{'share':>8}")
    for r in rows[:args.rows]:
        print(f"{r['op'][:43]:<44}{r['calls_per_token']:>10.1f}{r['self_ms_per_token']:>9.3f}{100 * r['share']:>7.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall_ms_per_token": wall * 1e3, "threads": args.threads, "lm_head": args.lm_head,
                       "prompt": args.prompt, "load": os.getloadavg(), "ops": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
