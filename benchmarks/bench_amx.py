"""AMX tiles against the AVX-512 VNNI kernels on the BitNet 2B shapes, interleaved over rounds:
ternary_linear on the four layer shapes (2560x2560, 640x2560, 6912x2560, 2560x6912 as N x K)
and int8_matmul on the head (128256 x 2560), at M = 1, 8 and 16 tokens (decode steps of
bitttt serve at 1, 8 and 16 streams). Weights cycle through copies of >= --cold-mb in all, so
every call reads them from memory (or the L3 where it holds them: say which in the report).

    python benchmarks/bench_amx.py --shared --json benchmarks/results/<machine>/amx_kernels.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bitttt import _C, ops
from bitttt.bench import harness

LAYERS = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]  # (N, K)
HEAD = (128256, 2560)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--isa", nargs="+", default=["amx", "avx512"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--cold-mb", type=int, default=600, help="weight copies per shape, in MB")
    p.add_argument("--no-head", action="store_true")
    p.add_argument("--shared", action="store_true", help="other work ran on the machine meanwhile")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    cases_in: list[tuple[str, list[torch.Tensor], int, int]] = []  # (kind, copies, N, K)
    for n, k in LAYERS:
        w = ops.pack_ternary(torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=g))
        copies = harness.copies_needed(w.numel(), args.cold_mb * 10**6)
        cases_in.append(("bt2", [w] + [w.clone() for _ in range(copies - 1)], n, k))
    if not args.no_head:
        h = torch.randint(-127, 128, HEAD, dtype=torch.int8, generator=g)
        cases_in.append(("int8", [h, h.clone()], *HEAD))
    load_before = harness.load_average()
    times: dict[tuple[str, int, str], list[float]] = {}
    calls = 0
    for _ in range(args.rounds):
        for kind, copies, n, k in cases_in:
            for m in args.tokens:
                if kind == "bt2":
                    x = torch.randn(m, k, generator=g)
                    fn = lambda w: ops.ternary_linear(x, w, torch.ones(n))  # noqa: E731
                else:
                    xi = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
                    fn = lambda w: ops.int8_matmul(xi, w)  # noqa: E731
                for isa in args.isa:
                    _C.set_isa(isa)
                    w = copies[calls % len(copies)]
                    calls += 1
                    t0 = time.perf_counter()
                    fn(w)
                    times.setdefault((f"{kind} {n}x{k}", m, isa), []).append(time.perf_counter() - t0)
    _C.set_isa("auto")
    cases = []
    for (shape, m, isa), ts in times.items():
        ms = [t * 1e3 for t in ts]
        op = "ternary_linear" if shape.startswith("bt2") else "int8_matmul"
        cases.append({"case": f"{op} {shape.split()[1]}, M={m}", "contender": f"{op} {isa}",
                      "threads": args.threads, "wait_policy": harness.current_wait_policy(),
                      "median": statistics.median(ms), "min": min(ms), "max": max(ms), "unit": "ms",
                      "rounds": len(ms), "tokens": m, "isa": isa})
        print(f"{shape:18s} M={m:2d} {isa:7s} median {statistics.median(ms):8.3f} ms  min {min(ms):8.3f}", flush=True)
    command = "python benchmarks/bench_amx.py " + " ".join(argv if argv is not None else sys.argv[1:])
    settings = {"layers": LAYERS, "head": HEAD, "tokens": args.tokens, "isa": args.isa, "rounds": args.rounds,
                "cold_mb": args.cold_mb, "shared_machine": args.shared}
    record = harness.record_of("amx_kernels", command, load_before, settings, cases)
    if args.json:
        harness.write_json(record, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
