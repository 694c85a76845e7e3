"""TTT-MLP: the C++ op against the torch reference it replaces (issue 15), through `bitttt.ops`.

    flock /work/bench.lock python benchmarks/ttt_mlp.py [--threads 2] [--tokens 512] [--json F]
        [--base DIR]    # import bitttt from DIR instead (another build, for before/after rows)

Shapes as nn.TTTMLP in the `tiny`/`small` presets' head size: B=1, H=12, D=64, F=4·D=256,
mini-batch b=16, float32. Rows, op and reference interleaved per repetition (the order
alternates), medians:
- prefill: `ops.ttt_mlp` vs `reference.ttt_mlp` over --tokens tokens, no grad;
- decode: one token for all heads, `ops.ttt_mlp_decode_` (in place) vs `reference.ttt_mlp`
  over T=1 from the same state (what nn.TTTMLP ran per generated token before the op);
- fwd+bwd: forward and backward (loss = out.sum() + W1.sum()) over 128 tokens.
GFLOP/s counts the dual form's products per token and head, 2·D·F flops each: k W1, x2 W2 and
g2 W2ᵀ at the mini-batch start state, q W1, q gW1, x̄2 W2, x̄2 gW2, and the two gradient sums
into gW1 and gW2; plus the causal mixes (q·k, x̄2·x2 and their products with the gradients,
2·2·(b+1)·(D+F)).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

if "--base" in sys.argv:  # before torch and bitttt load: drop the editable finder so DIR wins
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
    sys.path.insert(0, sys.argv[sys.argv.index("--base") + 1])

import torch  # noqa: E402

from bitttt import _C, ops, reference  # noqa: E402


def inputs(B: int, H: int, T: int, D: int, F: int, b: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    lr = torch.sigmoid(torch.randn(B, H, T, generator=g)) / D
    ts = 1.0 / torch.arange(1, b + 1, dtype=torch.float32)
    W1, W2 = 0.02 * torch.randn(H, D, F, generator=g), 0.02 * torch.randn(H, F, D, generator=g)
    return [q, k, v, lr, ts, W1, torch.zeros(H, F), W2, torch.zeros(H, D), torch.ones(H, D), torch.zeros(H, D)]


def interleaved(contenders: dict, repeat: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per contender; each repetition runs all of them, in alternating order."""
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeat):
        for n in names if r % 2 == 0 else reversed(names):
            t = time.perf_counter()
            contenders[n]()
            times[n].append(time.perf_counter() - t)
    return {n: statistics.median(ts) for n, ts in times.items()}


def prefill_row(T: int, repeat: int) -> dict:
    B, H, D, F, b = 1, 12, 64, 256, 16
    a = inputs(B, H, T, D, F, b)
    with torch.no_grad():
        t = interleaved({"op": lambda: ops.ttt_mlp(*a), "reference": lambda: reference.ttt_mlp(*a)}, repeat)
    flops = B * H * T * (9 * 2 * D * F + 2 * 2 * (b + 1) * (D + F))  # the module docstring's count
    return {"row": "prefill", "tokens": T, "op_ms": round(t["op"] * 1e3, 2), "ref_ms": round(t["reference"] * 1e3, 2),
            "speedup": round(t["reference"] / t["op"], 1), "op_gflops": round(flops / t["op"] / 1e9, 1)}


def decode_row(repeat: int, steps: int = 50) -> dict:
    B, H, D, F, b = 1, 12, 64, 256, 16
    a = inputs(B, H, 64, D, F, b)
    q, k, v, lr, ts, W1, b1, W2, b2, ln_w, ln_b = a
    with torch.no_grad():
        _, st = ops.ttt_mlp(q[:, :, :37], k[:, :, :37], v[:, :, :37], lr[:, :, :37], *a[4:])
        op_state = [ops.TTTMLPState(*(x.contiguous() for x in st[:8]), st.pos)]
        ref_state = [tuple(st)]
        one = [x[:, :, 40] for x in (q, k, v, lr)]

        def op_steps():
            for _ in range(steps):
                _, op_state[0] = ops.ttt_mlp_decode_(*one, ts, op_state[0], ln_w, ln_b)

        def ref_steps():
            for _ in range(steps):
                _, ref_state[0] = reference.ttt_mlp(*(x.unsqueeze(2) for x in one), ts, W1, b1, W2, b2, ln_w, ln_b,
                                                    state=ref_state[0])

        t = interleaved({"op": op_steps, "reference": ref_steps}, repeat)
    return {"row": "decode", "op_us": round(t["op"] / steps * 1e6, 1), "ref_us": round(t["reference"] / steps * 1e6, 1),
            "speedup": round(t["reference"] / t["op"], 1)}


def fwd_bwd_row(repeat: int, T: int = 128) -> dict:
    g = [x.clone().requires_grad_(True) for x in inputs(1, 12, T, 64, 256, 16, seed=1)]

    def fwd_bwd(fn):
        out, s = fn(*g)
        torch.autograd.grad(out.sum() + s[0].sum(), g)

    t = interleaved({"op": lambda: fwd_bwd(ops.ttt_mlp), "reference": lambda: fwd_bwd(reference.ttt_mlp)}, repeat)
    return {"row": "fwd+bwd", "tokens": T, "op_ms": round(t["op"] * 1e3, 2), "ref_ms": round(t["reference"] * 1e3, 2),
            "speedup": round(t["reference"] / t["op"], 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=512, help="prefill length")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--json", default=None, help="write the rows and the machine line here")
    p.add_argument("--base", default=None, help="import bitttt from this folder (read before import)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bitttt.info import cpu_model

    machine = {"cpu": cpu_model(), "threads": args.threads, "ttt_mlp_isa": _C.build_info().get("ttt_mlp_isa"),
               "torch": torch.__version__, "bitttt": os.path.dirname(_C.__file__), "loadavg": open("/proc/loadavg").read().split()[:3]}
    rows = [prefill_row(args.tokens, args.repeat), decode_row(args.repeat), fwd_bwd_row(args.repeat)]
    print(json.dumps(machine))
    for r in rows:
        print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
