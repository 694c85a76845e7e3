"""Where one decoded token's time goes: torch.profiler over decode steps of a BitNet model
(the 2B4T-shaped random folder `bitttt bench bitnet --folder F` writes, or any HF BitNet folder),
after a prompt. Prints ops by self CPU time per token (calls per token, ms per token, share) and
a summary: the ternary GEMV kernels, the LM head, and everything else ("between the kernels").

Three timings per token, interleaved over --rounds rounds (medians):
- wall: decode steps without the profiler (what generation pays);
- kernels only: the same token's ternary calls (norm fused, as the model makes them, one
  rms_norm_ternary_linear per matrix) and its LM head, back to back on the same inputs'
  shapes, nothing between them: the floor a decode step can reach with today's kernels;
- profiled: the ops table (the profiler adds a few microseconds per op).

    python benchmarks/profile_decode.py --folder /tmp/bitnet2b --threads 1 --lm-head int8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

# Ops that are ternary GEMV kernel time (the norm and quantization they fuse included) and
# LM-head time, for the summary; everything else is "between the kernels".
KERNEL_OPS = ("bitttt::rms_norm_ternary_linear", "bitttt::ternary_linear", "bitttt::ternary_linear_lut16")
HEAD_OPS = ("bitttt::int8_matmul", "bitttt::quantize_activations_int8")


def decode_steps(model, token, cache, n: int):
    for _ in range(n):
        out = model(token, cache=cache)
        token, cache = out.logits[:, -1:].argmax(-1), out.cache
    return token, cache


def kernels_only(model, n: int) -> float:
    """Seconds per token of the model's ternary calls and LM head alone (one token each)."""
    from bitttt import ops
    from bitttt.hf.bitnet import PackedTernaryLinear

    c = model.config
    dt = model.embed_tokens.weight.dtype
    calls = []
    for m in model.modules():
        if isinstance(m, PackedTernaryLinear):
            x = torch.randn(1, 1, m.in_features).to(dt)
            w = torch.ones(m.in_features, dtype=dt)
            calls.append((x, w, m.packed, m.w_scale))
    head_x = torch.randn(1, 1, c.hidden_size).to(dt)
    t0 = time.perf_counter()
    for _ in range(n):
        for x, w, packed, w_scale in calls:
            ops.rms_norm_ternary_linear(x, w, c.rms_norm_eps, packed, w_scale)
        model.lm_head(head_x)
    return (time.perf_counter() - t0) / n


def summarize(rows: list[dict]) -> dict[str, float]:
    kernels = sum(r["self_ms_per_token"] for r in rows if r["op"] in KERNEL_OPS)
    head = sum(r["self_ms_per_token"] for r in rows if r["op"] in HEAD_OPS)
    total = sum(r["self_ms_per_token"] for r in rows)
    return {"ternary_kernels_ms": kernels, "head_ms": head, "other_ops_ms": total - kernels - head,
            "self_total_ms": total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True, help="an HF BitNet folder; written (2B shape) if it has no config.json")
    ap.add_argument("--layers", type=int, default=30, help="layers when writing the folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lm-head", default="int8", choices=["float", "int8"])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=8, help="decode steps per round and profiled (after 4 warm ones)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of wall and kernels-only timing")
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--json", help="also write the record here (bitttt/bench/harness.py's shape)")
    args = ap.parse_args()

    from bitttt.bench import bitnet, harness
    from bitttt.hf import load_bitnet

    if not os.path.isfile(os.path.join(args.folder, "config.json")):
        bitnet.write_folder(args.folder, args.layers)
    torch.set_num_threads(args.threads)
    record = harness.Record("profile_decode", {k: getattr(args, k) for k in (
        "threads", "lm_head", "prompt", "tokens", "rounds")} | {
        "wait_policy": harness.current_wait_policy(), "shared_machine": True})
    model = load_bitnet(args.folder, lm_head=args.lm_head)
    ids = torch.randint(0, model.config.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    walls, floors = [], []
    with torch.no_grad():
        out = model(ids, use_cache=True, logits_to_keep=1)
        token, cache = decode_steps(model, out.logits[:, -1:].argmax(-1), out.cache, 4)  # warm: KV buffer, threads
        kernels_only(model, 1)
        for _ in range(args.rounds):  # interleaved; the context grows by `tokens` per round
            t0 = time.perf_counter()
            token, cache = decode_steps(model, token, cache, args.tokens)
            walls.append((time.perf_counter() - t0) / args.tokens)
            floors.append(kernels_only(model, args.tokens))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            token, cache = decode_steps(model, token, cache, args.tokens)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key, "calls_per_token": e.count / args.tokens,
             "self_ms_per_token": e.self_cpu_time_total / 1e3 / args.tokens,
             "share": e.self_cpu_time_total / total} for e in events]
    wall, floor = statistics.median(walls) * 1e3, statistics.median(floors) * 1e3
    s = summarize(rows)
    record.finish([])
    print(f"threads {args.threads}, head {args.lm_head}, prompt {args.prompt}, policy "
          f"{harness.current_wait_policy()}: {wall:.2f} ms/token wall [{min(walls) * 1e3:.2f}-{max(walls) * 1e3:.2f}], "
          f"kernels only {floor:.2f} [{min(floors) * 1e3:.2f}-{max(floors) * 1e3:.2f}]: between the kernels "
          f"{wall - floor:.2f} ms ({100 * (wall - floor) / wall:.0f}%); profiled: ternary {s['ternary_kernels_ms']:.2f}, "
          f"head {s['head_ms']:.2f}, other ops {s['other_ops_ms']:.2f} ms/token, "
          f"{sum(e.count for e in events) / args.tokens:.0f} op calls/token; load {record.load_before} -> "
          f"{record.load_after}")
    print(f"{'op':<44}{'calls/tok':>10}{'ms/tok':>9}{'share':>8}")
    for r in rows[:args.rows]:
        print(f"{r['op'][:43]:<44}{r['calls_per_token']:>10.1f}{r['self_ms_per_token']:>9.3f}{100 * r['share']:>7.1f}%")
    if args.json:
        rec = record.to_json()
        rec["cases"] = [{"case": "decode ms/token", "contender": name, "threads": args.threads,
                         "wait_policy": harness.current_wait_policy(), "median": statistics.median(v) * 1e3,
                         "min": min(v) * 1e3, "max": max(v) * 1e3, "unit": "ms/token", "rounds": len(v)}
                        for name, v in (("wall", walls), ("kernels_only", floors))]
        rec["profile"] = {"summary": s, "ops": rows}
        harness.write_json(rec, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
