"""Where one decoded token of bitttt's own model goes: torch.profiler over decode steps of a
packed BitTTTForCausalLM (random weights, a preset and mixer), after a prompt. Prints ops by
self CPU time per token (calls per token, ms per token, share), and per token, without the
profiler, interleaved over --rounds rounds (medians, wall and this process's CPU time):
- decode: the model's decode steps (BITTTT_FUSED_DECODE decides the path);
- kernels only: the same token's ternary GEMVs (the fused path's calls: one per layer's input
  projections, output projection, gate/up with its norm, down) and the LM head, back to back on
  the model's weights, nothing between them: the floor a decode step can reach with today's kernels.

    python benchmarks/profile_decode_bitttt.py --preset base --mixer ttt_linear --threads 1
"""

from __future__ import annotations

import argparse
import os
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


def kernel_calls(model) -> list:
    """The fused decode path's ternary and head calls of one token, as closures on the model's weights."""
    from bitttt import ops
    from bitttt.nn import decode

    c = model.config
    calls = []
    for block in model.blocks:
        mixer = block.mixer
        if c.mixer == "attention":
            first = [mixer.qkv]
            out = mixer.out
        else:
            layer = mixer.layer
            names = (["qk_proj"] if layer.use_conv else ["q_proj", "k_proj"]) + ["v_proj"] + (
                ["g_proj"] if layer.use_gate else [])
            first = [getattr(layer, n) for n in names]
            out = layer.o_proj
        fused = decode.FusedLinear(first)
        x = torch.randn(1, c.n_embd)
        calls.append(lambda f=fused, x=x: f(x))
        calls.append(lambda m=out, x=x: m(x))
        gu, norm = block.mlp.gate_up, block.norm2
        calls.append(lambda gu=gu, norm=norm, x=x: ops.rms_norm_ternary_linear(x, norm.weight, norm.eps, gu.packed,
                                                                               gu.w_scale))
        h = torch.randn(1, c.hidden_size)
        calls.append(lambda m=block.mlp.down, h=h: m(h))
    x = torch.randn(1, c.n_embd)
    calls.append(lambda: model.lm_head(x))
    return calls


def timed(fn, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call of fn() over n calls."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


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
    walls, cpus, kwalls, kcpus = [], [], [], []
    calls = kernel_calls(model) if not args.unpacked else []
    state = {}
    with torch.no_grad():
        out = model(ids, use_cache=True)
        state["token"], state["cache"] = decode_steps(model, out.logits[:, -1:].argmax(-1), out.cache, 4)

        def step():
            state["token"], state["cache"] = decode_steps(model, state["token"], state["cache"], 1)

        def kernels():
            for call in calls:
                call()
        for _ in range(args.rounds):
            w, c = timed(step, args.tokens)
            walls.append(w)
            cpus.append(c)
            if calls:
                w, c = timed(kernels, args.tokens)
                kwalls.append(w)
                kcpus.append(c)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            decode_steps(model, state["token"], state["cache"], args.tokens)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    med = lambda v: statistics.median(v) * 1e3  # noqa: E731
    print(f"{args.preset} {args.mixer} {'fake-quant' if args.unpacked else 'packed'}, threads {args.threads}, "
          f"fused {os.environ.get('BITTTT_FUSED_DECODE', '1')}: decode {med(walls):.2f} ms/token wall "
          f"[{min(walls) * 1e3:.2f}-{max(walls) * 1e3:.2f}], {med(cpus):.2f} CPU"
          + (f"; kernels only {med(kwalls):.2f} wall, {med(kcpus):.2f} CPU ({len(calls)} calls)" if calls else "")
          + f"; profiled self total {total / 1e3 / args.tokens:.2f} ms/token, "
          f"{sum(e.count for e in events) / args.tokens:.0f} op calls/token; load {os.getloadavg()}")
    print(f"{'op':<44}{'calls/tok':>10}{'ms/tok':>9}{'share':>8}")
    for e in events[:args.rows]:
        print(f"{e.key[:43]:<44}{e.count / args.tokens:>10.1f}{e.self_cpu_time_total / 1e3 / args.tokens:>9.3f}"
              f"{100 * e.self_cpu_time_total / total:>7.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
