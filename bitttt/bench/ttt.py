"""TTT-Linear benchmark: the C++ op against the pure-torch reference, eager and compiled (design §3).

It only declares cases and contenders; bitttt/bench/harness.py validates, interleaves them over
rounds in rotating order, takes medians with min-max and writes the record. Per (B, T) with H
heads of size D and mini-batch b, on the same inputs:
- prefill tokens/s: `ops.ttt_linear` vs `reference.ttt_linear` (eager) and the reference with
  its per-mini-batch dual form `torch.compile`d (the Python loop over mini-batches stays
  eager: compiling the whole loop unrolls T/b iterations). The compiled one is the fair
  baseline; the eager one is what a plain PyTorch port runs;
- decode µs/step: `ops.ttt_linear_decode_` (in place; on the CPU its lean path without the
  dispatcher) vs the same wrapper on the registered op (CPU: "op-dispatcher") and the
  reference on one token, each timed
  call DECODE_STEPS steps back to back (as generation calls it; one 10-20 µs call alone is
  mostly timer and cache noise) and reported per step;
- forward+backward ms (loss = out.sum() + W.sum(), gradients of every input), op vs reference
  up to --ref-grad-max-tokens, eager and (unless --no-compile) with its per-mini-batch dual
  form `torch.compile`d, forward and backward (AOTAutograd), warmed up before the rounds; if
  compiling fails here the case records the error (`compiled_error`) instead of that contender;
- beside the forward+backward entries: bytes saved for backward (unique storages autograd keeps)
  and the peak memory (CPU: process RSS growth sampled every millisecond; CUDA: torch's peak
  allocation).

Checks before timing: the op's prefill and decode against the reference on the first tokens,
the compiled reference against the eager one, the op's gradients against the reference's.
"% of peak" (CPU, unless --no-peaks): the op's prefill GFLOP/s, counting the dual form's five
matrix products (prefill_flops), as a share of the FP32 FMA peak of its kernel set measured in
the same run (harness.Peaks: never above 100%). `--device cuda` times with CUDA events.
Run as `bitttt bench ttt [--quick]` or `python -m bitttt.bench.ttt`.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import torch

from bitttt import _C, _native, ops, reference
from bitttt.bench import harness, ttt_flags
from bitttt.bench.harness import BenchValidationError, Case, Contender
from bitttt.errors import ConfigError

VALIDATE_TOKENS = 64  # tokens compared before timing
VALIDATE_TOL = 1e-3   # float32, LayerNorm outputs O(1)
DECODE_STEPS = 32  # decode steps per timed call
GRAD_TOL = 1e-3  # op vs reference gradients on VALIDATE_TOKENS tokens, float32, relative to each's max


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


def cuda_peak_bytes(fn: Callable[[], object]) -> int:
    """Torch's peak CUDA allocation above the current one while fn runs."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


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


def compiled_fwd_bwd_reference(b: int) -> Callable[..., Any]:
    """compiled_reference returning (out, (W,)) like the op and the eager reference return (out, state)."""
    cref = compiled_reference(b)

    def run(*args):
        out, W = cref(*args)
        return out, (W,)

    return run


def _close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> float:
    err = float((got - want).abs().max())
    scale = max(float(want.abs().max()), 1.0)
    if not err <= tol * scale:
        raise BenchValidationError(f"bench ttt: {name} differs from the reference by {err:.3g} > {tol * scale:.3g}")
    return err


def check_prefill(fn: Callable[..., Any], args: list[torch.Tensor], name: str) -> float:
    """fn's output (and end state, when it returns one) against the reference on the first tokens."""
    n = min(VALIDATE_TOKENS, args[0].shape[2])
    part = [x[:, :, :n] for x in args[:4]] + args[4:]
    out, st = fn(*part)
    out_r, st_r = reference.ttt_linear(*part)
    m = out.shape[2]  # the compiled reference returns only full mini-batches
    err = _close(f"{name} output", out, out_r[:, :, :m], VALIDATE_TOL)
    W = st.W if hasattr(st, "W") else st
    return max(err, _close(f"{name} fast weights", W, st_r[0], VALIDATE_TOL)) if m == out_r.shape[2] else err


def check_grads(args: list[torch.Tensor], fn: Callable[..., Any] | None = None, name: str = "op") -> float:
    """fn's (default: the op's) gradients of every input against the eager reference's, on the first tokens."""
    n = min(VALIDATE_TOKENS, args[0].shape[2])
    part = [x[:, :, :n] for x in args[:4]] + args[4:]
    grads = []
    for fn in (fn or ops.ttt_linear, reference.ttt_linear):
        leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in part]
        out, st = fn(*leaves)
        torch.autograd.backward([out.sum() + st[0].sum()])
        grads.append([x.grad for x in leaves])
    return max(_close(f"{name} gradient {i}", g, r, GRAD_TOL) for i, (g, r) in enumerate(zip(*grads, strict=True))
               if g is not None and r is not None)


def cases(B: int, T: int, H: int, D: int, b: int, device: str, with_compile: bool,
          ref_grad_max_tokens: int, threads: int = 1) -> list[Case]:
    """The prefill, decode and forward+backward cases of one (B, T), with their contenders."""
    args = make_inputs(B, H, T, D, b, device=device)
    shape = {"B": B, "T": T, "H": H, "D": D, "b": b}
    prefill = [Contender("op", lambda: ops.ttt_linear(*args), check=lambda: check_prefill(ops.ttt_linear, args, "op")),
               Contender("reference", lambda: reference.ttt_linear(*args))]
    if with_compile:
        cref = compiled_reference(b)
        prefill.append(Contender("reference-compiled", lambda: cref(*args),
                                 check=lambda: check_prefill(cref, args, "compiled reference")))
    p = 17  # decode at an unaligned position: the state after 17 tokens
    with torch.no_grad():
        _, st = ops.ttt_linear(*[x[:, :, :p] for x in args[:4]], *args[4:])
    st = ops.TTTState(*(x.contiguous() for x in st[:4]), st.pos)
    st_r = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in st)
    tok = [x[:, :, p] for x in args[:4]]
    tok1 = [x[:, :, p:p + 1] for x in args[:4]]

    def check_decode() -> float:
        s = ops.TTTState(*(x.clone() for x in st[:4]), st.pos)
        out, _ = ops.ttt_linear_decode_(*tok, args[4], s, args[7], args[8])
        out_r, _ = reference.ttt_linear(*tok1, *args[4:], state=st_r)
        return _close("decode", out.reshape(out_r.shape), out_r, VALIDATE_TOL)

    def per_step(step: Callable[[], Any]) -> Callable[[], float]:
        """DECODE_STEPS calls of step, timed together: seconds per step."""
        def run() -> float:
            sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
            sync()
            t0 = time.perf_counter()
            for _ in range(DECODE_STEPS):
                step()
            sync()
            return (time.perf_counter() - t0) / DECODE_STEPS
        return run

    decode = [Contender("op", per_step(lambda: ops.ttt_linear_decode_(*tok, args[4], st, args[7], args[8])),
                        check=check_decode, self_timed=True, extra={"steps_per_call": DECODE_STEPS}),
              Contender("reference", per_step(lambda: reference.ttt_linear(*tok1, *args[4:], state=st_r)),
                        self_timed=True, extra={"steps_per_call": DECODE_STEPS})]
    if device == "cpu":  # the same wrapper on the registered op: what its lean path saves
        decode.insert(1, Contender("op-dispatcher", through_dispatcher(per_step(
            lambda: ops.ttt_linear_decode_(*tok, args[4], st, args[7], args[8]))), self_timed=True,
            extra={"steps_per_call": DECODE_STEPS}))
    leaves = [x.clone().requires_grad_(x.is_floating_point()) for x in args]

    def fwd_bwd(fn: Callable[..., Any]) -> Callable[[], None]:
        def run() -> None:
            out, s = fn(*leaves)
            torch.autograd.backward([out.sum() + s[0].sum()])
            for x in leaves:
                x.grad = None
        return run

    def memory(fn: Callable[..., Any]) -> dict[str, int]:
        if device == "cuda":
            return {"peak_bytes": cuda_peak_bytes(fwd_bwd(fn))}
        return {"saved_bytes": saved_bytes(lambda: fn(*leaves)), "peak_bytes": peak_rss_growth(fwd_bwd(fn))}

    train = [Contender("op", fwd_bwd(ops.ttt_linear), check=lambda: check_grads(args), extra=memory(ops.ttt_linear))]
    train_extra: dict[str, Any] = {}
    if B * T <= ref_grad_max_tokens:
        train.append(Contender("reference", fwd_bwd(reference.ttt_linear), extra=memory(reference.ttt_linear)))
        if with_compile:
            compiled = compiled_fwd_bwd(b, args, leaves, fwd_bwd, memory)
            if isinstance(compiled, Contender):
                train.append(compiled)
            else:
                train_extra["compiled_error"] = compiled
    common = dict(threads=threads, device=device, extra=shape)
    return [Case(f"prefill B={B} T={T}", prefill, unit="tok/s", work=B * T, **common),
            Case(f"decode B={B} pos={p}", decode, unit="us", **common),
            Case(f"fwd+bwd B={B} T={T}", train, unit="ms", **{**common, "extra": {**shape, **train_extra}})]


def through_dispatcher(run: Callable[[], float]) -> Callable[[], float]:
    """run with ops.ttt_linear_decode_ calling the registered op through the dispatcher, as it
    does where its lean path is unavailable (see bitttt.ops._TENSOR_HANDLES)."""
    def wrapped() -> float:
        saved, ops._TENSOR_HANDLES = ops._TENSOR_HANDLES, None
        try:
            return run()
        finally:
            ops._TENSOR_HANDLES = saved
    return wrapped


def compiled_fwd_bwd(b: int, args: list[torch.Tensor], leaves: list[torch.Tensor],
                     fwd_bwd: Callable[[Callable[..., Any]], Callable[[], None]],
                     memory: Callable[[Callable[..., Any]], dict[str, int]]) -> Contender | str:
    """The "reference-compiled" forward+backward contender, compiled and warmed up here (outside
    the rounds), or why torch.compile failed on this machine (one line)."""
    fn = compiled_fwd_bwd_reference(b)
    try:
        fwd_bwd(fn)()  # compiles the forward and the backward graphs
        extra = memory(fn)
    except Exception as e:  # noqa: BLE001 - any compiler failure: recorded, the bench goes on
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
    return Contender("reference-compiled", fwd_bwd(fn), check=lambda: check_grads(args, fn, "compiled reference"),
                     extra=extra)


def add_peak_pct(results: list[harness.Result], peaks: harness.Peaks | None, isa: str) -> None:
    """Adds the op's prefill GFLOP/s (at its median) and its share of the FP32 FMA peak of `isa`."""
    for r in results:
        if r.contender != "op" or not r.case.startswith("prefill"):
            continue
        e = r.extra
        r.extra["gflops"] = prefill_flops(1, e["H"], 1, e["D"], e["b"]) * r.median / 1e9  # per token x tok/s
        if peaks is not None:
            r.extra["pct_of_fp32_peak"] = peaks.percent(r.extra["gflops"], f"fp32_{isa}_gflops", r.threads)


def format_results(results: list[harness.Result]) -> str:
    """The harness's lines, then per case how the op compares with each reference (above 1: faster)."""
    lines = [harness.format_results(results)]
    by_case: dict[str, dict[str, harness.Result]] = {}
    for r in results:
        by_case.setdefault(r.case, {})[r.contender] = r
    for case, rs in by_case.items():
        op = rs["op"]
        if "compiled_error" in op.extra:
            lines.append(f"{case}: no reference-compiled: torch.compile failed: {op.extra['compiled_error']}")
        for name, r in rs.items():
            if name != "op":
                ratio = op.median / r.median if op.unit.endswith("/s") else r.median / op.median
                lines.append(f"{case}: op is {ratio:.2f}x {name}")
        if "pct_of_fp32_peak" in op.extra and op.extra["pct_of_fp32_peak"] is not None:
            lines.append(f"{case}: op {op.extra['gflops']:.1f} GFLOP/s, "
                         f"{op.extra['pct_of_fp32_peak']:.0f}% of fp32 peak")
    return "\n".join(lines)


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return ttt_flags.add_arguments(p or argparse.ArgumentParser(prog="bitttt bench ttt",
                                                                description=__doc__.splitlines()[0]))


def run(args: argparse.Namespace, out: TextIO | None = None) -> harness.Record:
    """`bitttt bench ttt`: declares the cases, the harness checks and times them; writes --json."""
    device = getattr(args, "device", "cpu")
    check_device(device)
    batches, tokens = ([1], [512, 2048]) if args.quick else (args.batch, args.tokens)
    isa = _C.build_info()["ttt_isa"]
    where = (f"{torch.cuda.get_device_name()}, CUDA kernels {_native.C_cuda.build_info()['archs']}"
             if device == "cuda" else f"{args.threads} threads, kernels {isa}")
    print(f"bitttt bench ttt: torch {torch.__version__}, {where}, H={args.heads} D={args.head_dim} "
          f"b={args.mini_batch}; >= {args.rounds} interleaved rounds, median [min-max]", file=out, flush=True)
    peaks = harness.Peaks([args.threads], quick=args.quick) if device == "cpu" and not args.no_peaks else None
    settings = {k: getattr(args, k) for k in ("heads", "head_dim", "mini_batch", "threads", "rounds", "no_compile",
                                              "ref_grad_max_tokens", "quick")}
    record = harness.Record("ttt", {**settings, "batch": batches, "tokens": tokens, "device": device,
                                    "ttt_isa": isa, "shared_machine": args.shared}, peaks)
    results = []
    for B in batches:
        for T in tokens:
            cs = cases(B, T, args.heads, args.head_dim, args.mini_batch, device, not args.no_compile,
                       args.ref_grad_max_tokens, args.threads)
            rs = harness.run_cases(cs, harness.Settings(rounds=args.rounds))
            add_peak_pct(rs, peaks, isa)
            print(format_results(rs), file=out, flush=True)
            results += rs
            gc.collect()
    record.finish(results)
    if args.json:
        record.write(args.json)
        print(f"wrote {args.json}", file=out)
    return record


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
