"""int8_matmul on the BitNet 2B LM head shape (128256 x 2560) at M = 1, 8 and 16 tokens (one
decode step of bitttt serve at 1, 8 and 16 streams): each kernel set, interleaved over rounds,
two head copies alternating so every call reads its head from memory (660 MB > the L3).

    python benchmarks/bench_int8_head.py --shared --json benchmarks/results/<machine>/int8_head_serve.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bitttt import _C, ops
from bitttt.bench import harness

V, C = 128256, 2560


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--isa", nargs="+", default=["avx512", "avx2"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--shared", action="store_true", help="other work ran on the machine meanwhile")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    heads = [torch.randint(-127, 128, (V, C), dtype=torch.int8, generator=g) for _ in range(2)]
    load_before = harness.load_average()
    times: dict[tuple[int, str], list[float]] = {}
    calls = 0
    for _ in range(args.rounds):
        for m in args.tokens:
            x = torch.randint(-127, 128, (m, C), dtype=torch.int8, generator=g)
            for isa in args.isa:
                _C.set_isa(isa)
                head = heads[calls % 2]
                calls += 1
                t0 = time.perf_counter()
                ops.int8_matmul(x, head)
                times.setdefault((m, isa), []).append(time.perf_counter() - t0)
    _C.set_isa("auto")
    cases = []
    for (m, isa), ts in sorted(times.items()):
        ms = [t * 1e3 for t in ts]
        cases.append({"case": f"int8_matmul {V}x{C}, M={m}", "contender": f"int8_matmul {isa}", "threads": args.threads,
                      "wait_policy": harness.current_wait_policy(), "median": statistics.median(ms), "min": min(ms),
                      "max": max(ms), "unit": "ms", "rounds": len(ms), "tokens": m, "isa": isa})
        print(f"M={m:2d} {isa:7s} median {statistics.median(ms):7.2f} ms  min {min(ms):7.2f}", flush=True)
    command = "python benchmarks/bench_int8_head.py " + " ".join(argv if argv is not None else sys.argv[1:])
    settings = {"shape": [V, C], "tokens": args.tokens, "isa": args.isa, "rounds": args.rounds,
                "regime": "cold (two heads alternating)", "shared_machine": args.shared}
    record = harness.record_of("int8_head", command, load_before, settings, cases)
    if args.json:
        harness.write_json(record, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
