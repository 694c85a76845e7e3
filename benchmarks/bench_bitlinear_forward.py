"""BitLinear's training forward (ops.bitlinear_fake_quant, float32 CPU, no grad): the exact int8
GEMM (torch._int_mm between the fake-quant passes and the epilogue) vs F.linear(x_dq, w_dq),
and two options not taken: the same passes around bitttt's own int8_matmul, and packing the
weight for ternary_linear each call; at the tiny preset's training shapes (M = 16 x 128 tokens)
and near the token threshold; interleaved rounds (bitttt/bench/harness.py).

    python benchmarks/bench_bitlinear_forward.py --threads 2 1 --shared \\
        --json benchmarks/results/<machine>/bitlinear_forward_int8.json

For a CPU without VNNI on one with it: ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
ATEN_CPU_CAPABILITY=avx2 BITTTT_ISA=avx2 (the record keeps these).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys

import torch

from bitttt import ops
from bitttt.bench import harness

SHAPES = [(2048, 256, 256), (2048, 256, 768), (2048, 256, 1024), (2048, 512, 256), (2048, 1024, 256),
          (64, 256, 1024), (128, 256, 1024), (256, 256, 1024)]
ENV = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY", "BITTTT_ISA")


@contextlib.contextmanager
def gemm(min_tokens: int | None):
    saved = ops._INT8_GEMM_MIN_TOKENS_HERE
    ops._INT8_GEMM_MIN_TOKENS_HERE = min_tokens
    try:
        yield
    finally:
        ops._INT8_GEMM_MIN_TOKENS_HERE = saved


def contenders(M: int, K: int, N: int) -> list[harness.Contender]:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g) * 0.02

    def forward(min_tokens: int | None) -> torch.Tensor:
        with gemm(min_tokens):
            return ops.bitlinear_fake_quant(x, w)

    def packed_output() -> torch.Tensor:
        # here, at the case's thread count: torch's float32 mean (the absmean scale) rounds
        # by its thread count
        q, w_scale = ops.ternarize_weight(w)
        return ops.ternary_linear(x, ops.pack_ternary(q), w_scale)

    def check_int8() -> None:  # the packed kernel's bits
        y, want = forward(1), packed_output()
        if not torch.equal(y, want):
            raise harness.BenchValidationError(
                f"M={M} K={K} N={N}: the int8 GEMM forward differs from ternary_linear in {(y != want).sum()} "
                f"outputs, by up to {(y - want).abs().max()}")

    def check_float() -> None:
        want = packed_output()
        torch.testing.assert_close(forward(None), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())

    def own_int8_matmul() -> torch.Tensor:
        # the same passes with bitttt's own int8 GEMM (csrc/int8, built for the decode's few tokens)
        _, x_q, x_scale = torch.ops.bitttt.fake_quant_activations_int8(x)
        w_scale = ops._absmean_scale(w)
        _, w_q = torch.ops.bitttt.fake_quant_weight_int8(w, w_scale)
        return torch.ops.bitttt.int8_gemm_epilogue(ops.int8_matmul(x_q, w_q), x_scale, w_scale, None)

    def packed_bt2() -> torch.Tensor:
        # the packed inference kernel: x_dq and w_dq still made for the backward, the weight
        # packed anew (it changes every step)
        ops.fake_quant_activations(x)
        ops.fake_quant_weight(w)
        return packed_output()

    def check_exact(fn):
        def check() -> None:
            if not torch.equal(fn(), packed_output()):
                raise harness.BenchValidationError(f"M={M} K={K} N={N}: differs from ternary_linear")
        return check

    return [harness.Contender("int8 GEMM (torch._int_mm)", lambda: forward(1), check_int8),
            harness.Contender("fp32 GEMM (F.linear)", lambda: forward(None), check_float),
            harness.Contender("int8 GEMM (bitttt int8_matmul)", own_int8_matmul, check_exact(own_int8_matmul)),
            harness.Contender("BT2 pack + ternary_linear", packed_bt2, check_exact(packed_bt2))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--shared", action="store_true", help="other work ran on the machine meanwhile")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if ops._int8_gemm_min_tokens() is None:
        print("no x86 int8 GEMM behind torch._int_mm here: nothing to compare")
        return 1
    load_before = harness.load_average()
    cases = [harness.Case(f"bitlinear fwd M={M} K={K} N={N}", contenders(M, K, N), threads=t, unit="ms",
                          extra={"M": M, "K": K, "N": N})
             for t in args.threads for M, K, N in SHAPES]
    results = harness.run_cases(cases, harness.Settings(rounds=args.rounds), out=sys.stdout)
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/bench_bitlinear_forward.py", *argv])
    env = {k: os.environ[k] for k in ENV if k in os.environ}
    settings = {"rounds": args.rounds, "shared_machine": args.shared, "env": env,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "int8_min_tokens_here": ops._int8_gemm_min_tokens()}
    record = harness.record_of("bitlinear_forward_int8", command, load_before, settings,
                               [r.to_json() for r in results])
    if args.json:
        harness.write_json(record, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
