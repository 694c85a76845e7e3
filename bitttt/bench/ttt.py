"""TTT-Linear benchmark: the C++ op against the pure-torch reference (design §3).

Per (B, T) with H heads of size D and mini-batch b, in one run and on the same inputs:
- prefill tokens/s: `ops.ttt_linear` vs `reference.ttt_linear` (eager) and the reference
  with its per-mini-batch dual form `torch.compile`d (the Python loop over mini-batches
  stays eager: compiling the whole loop unrolls T/b iterations);
- decode µs/step: `ops.ttt_linear_decode_` (in place) vs the reference on one token;
- forward+backward ms (loss = out.sum() + W.sum(), gradients of every input);
- bytes saved for backward: unique storages that autograd keeps (saved_tensors_hooks);
- peak memory of forward+backward: process RSS growth, sampled every millisecond.

Each configuration is validated before timing (op vs reference on the first tokens).
"% of peak" (CPU, unless --no-peaks): the op's prefill GFLOP/s, counting the dual form's five
matrix products (prefill_flops), as a share of the FP32 FMA peak of its kernel set (zmm for
avx512, ymm for avx2) at --threads, measured once at the start (bitttt/bench/peak.py).
With `--device cuda` the same contenders run on the GPU, timed with CUDA events, interleaved
(op, reference, compiled reference in turn per repetition) and reported as medians; memory is
torch's peak allocation of forward+backward.
Run with `python -m bitttt.bench.ttt [--quick]`, `python benchmarks/ttt.py` or, once wired
into the CLI, `bitttt bench ttt`.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable

import torch

from bitttt import _C, _native, ops, reference
from bitttt.bench import peak, ttt_flags
from bitttt.errors import ConfigError

VALIDATE_TOKENS = 64  # tokens compared before timing
VALIDATE_TOL = 1e-3   # float32, LayerNorm outputs O(1)


def prefill_flops(B: int, H: int, T: int, D: int, b: int) -> int:
    """FLOPs of the dual form's matrix products over B*H*T tokens (reference.ttt_linear_dual_minibatch):
    per mini-batch k W_s, q W_s and (lr k)^T G (2bD^2 each), q k^T and attn G (2b^2 D each), so per
    token 6D^2 + 4bD. LayerNorm and elementwise work (O(D) per token) are left out."""
    return B * H * T * (6 * D * D + 4 * b * D)


def make_inputs(B: int, H: int, T: int, D: int, b: int, seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    lr = torch.sigmoid(torch.randn(B, H, T, generator=g)) / D
    ts = 1.0 / torch.arange(1, b + 1, dtype=torch.float32)
    W0 = 0.02 * torch.randn(H, D, D, generator=g)
    b0 = torch.zeros(H, D)
    ln_w, ln_b = torch.ones(H, D), torch.zeros(H, D)
    return [x.to(device) for x in (q, k, v, lr, ts, W0, b0, ln_w, ln_b)]


def check_device(device: str) -> None:
    """ConfigError unless bitttt's kernels can run on `device` ('cpu' always can)."""
    if device == "cpu":
        return
    if _native.C_cuda is None:
        raise ConfigError(f"bench ttt: --device cuda: bitttt's CUDA kernels are not loaded ({_native.cuda_unavailable_reason})",
                          hint="install a CUDA torch and build bitttt with BITTTT_CUDA=on, or use --device cpu")
    if not torch.cuda.is_available():
        raise ConfigError("bench ttt: --device cuda: no CUDA device is visible",
                          hint="run on a machine with an NVIDIA GPU, or use --device cpu")


def cuda_time_interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds per call of each fn, timed with CUDA events. The fns take turns within each
    repetition, so clock and thermal drift hit all of them alike; one warm-up call each first."""
    for fn in fns.values():
        fn()
    events = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events[name].append((start, end))
    torch.cuda.synchronize()
    return {name: statistics.median(s.elapsed_time(e) / 1e3 for s, e in ev) for name, ev in events.items()}


def timeit(fn: Callable[[], object], repeat: int, min_time: float = 0.0) -> float:
    """Median seconds per call over `repeat` calls (after one warm-up call)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves for backward while fn runs."""
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def peak_rss_growth(fn: Callable[[], object]) -> int:
    """RSS growth (bytes) at its peak while fn runs, sampled every millisecond."""
    import psutil  # the CPU rows only: the CUDA rows read torch's allocator statistics

    proc = psutil.Process()
    gc.collect()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    return max(peak[0], proc.memory_info().rss) - base


def compiled_reference(b: int):
    """reference.ttt_linear with the per-mini-batch dual form compiled (None if compile fails)."""
    dual = torch.compile(reference.ttt_linear_dual_minibatch, dynamic=False)

    def run(q, k, v, lr, ts, W0, b0, ln_w, ln_b):
        B, H, T, D = q.shape
        W, c = W0.expand(B, H, D, D), b0.expand(B, H, D)
        outs = []
        for t in range(0, T - T % b, b):
            out, W, c = dual(q[:, :, t:t + b], k[:, :, t:t + b], v[:, :, t:t + b], lr[:, :, t:t + b], ts, W, c,
                             ln_w, ln_b)
            outs.append(out)
        return torch.cat(outs, 2), W

    return run


def validate(args, b: int) -> None:
    n = min(VALIDATE_TOKENS, args[0].shape[2])
    part = [x[:, :, :n] for x in args[:4]] + args[4:]
    out, st = ops.ttt_linear(*part)
    out_r, st_r = reference.ttt_linear(*part)
    err = max((out - out_r).abs().max().item(), (st.W - st_r[0]).abs().max().item())
    if err > VALIDATE_TOL:
        raise RuntimeError(f"bench ttt: the op differs from the reference by {err:.3g} > {VALIDATE_TOL}")


def bench_config_cuda(B: int, T: int, H: int, D: int, b: int, repeat: int, with_compile: bool,
                      ref_grad_max_tokens: int) -> dict:
    """One row on the GPU: the op vs the reference (and the compiled reference), interleaved."""
    args = make_inputs(B, H, T, D, b, device="cuda")
    validate(args, b)
    row: dict = {"B": B, "T": T, "H": H, "D": D, "b": b, "device": torch.cuda.get_device_name()}
    reps = max(3, repeat)
    with torch.no_grad():
        fns = {"prefill_op_s": lambda: ops.ttt_linear(*args), "prefill_ref_s": lambda: reference.ttt_linear(*args)}
        if with_compile:
            try:
                cref = compiled_reference(b)
                cref(*args)  # compile outside the timing
                fns["prefill_ref_compiled_s"] = lambda: cref(*args)
            except Exception as e:  # noqa: BLE001 - report and go on
                row["prefill_ref_compiled_error"] = f"{type(e).__name__}: {e}"[:200]
        row.update(cuda_time_interleaved(fns, reps))
        p = 17  # decode at an unaligned position: the state after 17 tokens
        _, st = ops.ttt_linear(*[x[:, :, :p] for x in args[:4]], *args[4:])
        st = ops.TTTState(*(x.contiguous() for x in st[:4]), st.pos)
        tok = [x[:, :, p] for x in args[:4]]
        tok1 = [x[:, :, p:p + 1] for x in args[:4]]
        st_r = tuple(st)
        row.update(cuda_time_interleaved({
            "decode_op_s": lambda: ops.ttt_linear_decode_(*tok, args[4], st, args[7], args[8]),
            "decode_ref_s": lambda: reference.ttt_linear(*tok1, *args[4:], state=st_r)}, 50))
    leaves = [x.clone().requires_grad_(x.is_floating_point()) for x in args]

    def fwd_bwd(fn):
        def run():
            out, st = fn(*leaves)
            torch.autograd.backward([out.sum() + st[0].sum()])
            for x in leaves:
                x.grad = None
        return run

    fns = {"fwd_bwd_op_s": fwd_bwd(ops.ttt_linear)}
    if B * T <= ref_grad_max_tokens:
        fns["fwd_bwd_ref_s"] = fwd_bwd(reference.ttt_linear)
    row.update(cuda_time_interleaved(fns, max(3, repeat // 2)))
    for name, fn in fns.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        row[name.replace("fwd_bwd", "peak").replace("_s", "_bytes")] = torch.cuda.max_memory_allocated() - base
    return row


def bench_config(B: int, T: int, H: int, D: int, b: int, repeat: int, with_compile: bool, ref_grad_max_tokens: int):
    args = make_inputs(B, H, T, D, b)
    validate(args, b)
    row: dict = {"B": B, "T": T, "H": H, "D": D, "b": b}
    with torch.no_grad():
        row["prefill_op_s"] = timeit(lambda: ops.ttt_linear(*args), repeat)
        row["prefill_ref_s"] = timeit(lambda: reference.ttt_linear(*args), max(1, repeat // 3))
        if with_compile:
            try:
                cref = compiled_reference(b)
                row["prefill_ref_compiled_s"] = timeit(lambda: cref(*args), max(1, repeat // 3))
            except Exception as e:  # noqa: BLE001 - report and go on
                row["prefill_ref_compiled_error"] = f"{type(e).__name__}: {e}"[:200]
        # Decode at an unaligned position: state after 17 tokens.
        p = 17
        _, st = ops.ttt_linear(*[x[:, :, :p] for x in args[:4]], *args[4:])
        tok = [x[:, :, p] for x in args[:4]]
        row["decode_op_s"] = timeit(lambda: ops.ttt_linear_decode_(*tok, args[4], st, args[7], args[8]), 50, 0.2)
        st_r = tuple(st)
        tok1 = [x[:, :, p:p + 1] for x in args[:4]]
        row["decode_ref_s"] = timeit(lambda: reference.ttt_linear(*tok1, *args[4:], state=st_r), 20, 0.2)
    leaves = [x.clone().requires_grad_(x.is_floating_point()) for x in args]

    def fwd_bwd(fn):
        def run():
            out, st = fn(*leaves)
            torch.autograd.backward([out.sum() + st[0].sum()])
            for x in leaves:
                x.grad = None
        return run

    def fwd_only(fn):
        return lambda: fn(*leaves)

    row["fwd_bwd_op_s"] = timeit(fwd_bwd(ops.ttt_linear), max(1, repeat // 2))
    row["saved_op_bytes"] = saved_bytes(fwd_only(ops.ttt_linear))
    row["peak_op_bytes"] = peak_rss_growth(fwd_bwd(ops.ttt_linear))
    if B * T <= ref_grad_max_tokens:
        row["fwd_bwd_ref_s"] = timeit(fwd_bwd(reference.ttt_linear), 1)
        row["saved_ref_bytes"] = saved_bytes(fwd_only(reference.ttt_linear))
        row["peak_ref_bytes"] = peak_rss_growth(fwd_bwd(reference.ttt_linear))
    return row


def format_row(r: dict) -> str:
    """One table line; ratios are reference time / op time (above 1: the op is faster)."""
    def pct(key):
        return f"{r[key]:3.0f}%" if r.get(key) is not None else "   -"

    def ratio(a, b_):
        return f"{r[a] / r[b_]:6.1f}x" if a in r and b_ in r else "     -"

    def mib(key):
        return f"{r[key] / 2**20:8.1f}" if key in r else "       -"

    tok = r["B"] * r["T"]
    comp = f"{tok / r['prefill_ref_compiled_s']:9.0f}" if "prefill_ref_compiled_s" in r else "        -"
    fb_ref = f"{1e3 * r['fwd_bwd_ref_s']:8.1f}" if "fwd_bwd_ref_s" in r else "       -"
    peak_cell = f" ({pct('prefill_op_pct_fp32_peak')} of fp32 peak)" if "prefill_op_pct_fp32_peak" in r else ""
    line = (f"B={r['B']} T={r['T']:5d} | prefill tok/s op {tok / r['prefill_op_s']:9.0f}{peak_cell} "
            f"ref {tok / r['prefill_ref_s']:8.0f} ({ratio('prefill_ref_s', 'prefill_op_s')}) "
            f"ref.compiled {comp} ({ratio('prefill_ref_compiled_s', 'prefill_op_s')})"
            f" | decode us op {1e6 * r['decode_op_s']:7.1f} ref {1e6 * r['decode_ref_s']:7.1f} "
            f"({ratio('decode_ref_s', 'decode_op_s')})"
            f" | fwd+bwd ms op {1e3 * r['fwd_bwd_op_s']:8.1f} ref {fb_ref} ({ratio('fwd_bwd_ref_s', 'fwd_bwd_op_s')})")
    if "saved_op_bytes" in r:
        line += f" | saved MiB op {mib('saved_op_bytes')} ref {mib('saved_ref_bytes')}"
    return line + f" | peak MiB op {mib('peak_op_bytes')} ref {mib('peak_ref_bytes')}"


def add_peak_pct(row: dict, peaks: peak.Peaks, isa: str, threads: int) -> None:
    """Adds the op's prefill GFLOP/s and its % of the FP32 FMA peak of `isa` (None: no such peak)."""
    gflops = prefill_flops(row["B"], row["H"], row["T"], row["D"], row["b"]) / row["prefill_op_s"] / 1e9
    fp32 = peaks.fp32(isa, threads)
    row["prefill_op_gflops"] = gflops
    row["prefill_op_pct_fp32_peak"] = 100 * gflops / fp32 if fp32 else None


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return ttt_flags.add_arguments(p or argparse.ArgumentParser(prog="bitttt bench ttt",
                                                                description=__doc__.splitlines()[0]))


def run(args: argparse.Namespace, out=sys.stdout) -> dict:
    device = getattr(args, "device", "cpu")
    check_device(device)
    torch.set_num_threads(args.threads)
    batches, tokens = ([1], [512, 2048]) if args.quick else (args.batch, args.tokens)
    info = _C.build_info()
    where = (f"{torch.cuda.get_device_name()}, CUDA kernels {_native.C_cuda.build_info()['archs']}"
             if device == "cuda" else f"{args.threads} threads, kernels {info['ttt_isa']}")
    print(f"bitttt bench ttt: torch {torch.__version__}, {where}, "
          f"H={args.heads} D={args.head_dim} b={args.mini_batch}", file=out)
    peaks = None
    if device == "cpu" and not getattr(args, "no_peaks", False):
        peaks = peak.measure_peaks([args.threads], peak.QUICK_READ_BYTES if args.quick else peak.READ_BYTES,
                                   peak.QUICK_RUN_S if args.quick else peak.RUN_S)
        fp32 = peaks.fp32(info["ttt_isa"], args.threads)
        print(f"peak:    FP32 FMA {info['ttt_isa']} {f'{fp32:.0f} GFLOP/s' if fp32 else '- (no FMA peak for this ISA)'} "
              f"at {args.threads} threads (bitttt bench peak)", file=out, flush=True)
    config = bench_config_cuda if device == "cuda" else bench_config
    rows = []
    for B in batches:
        for T in tokens:
            r = config(B, T, args.heads, args.head_dim, args.mini_batch, args.repeat, not args.no_compile,
                       args.ref_grad_max_tokens)
            if peaks is not None:
                add_peak_pct(r, peaks, info["ttt_isa"], args.threads)
            rows.append(r)
            print(format_row(r), file=out, flush=True)
    report = {"benchmark": "ttt_linear", "time": time.time(), "torch": torch.__version__, "threads": args.threads,
              "isa": info["ttt_isa"], "device": device, "peaks": peaks.to_json() if peaks else None, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
