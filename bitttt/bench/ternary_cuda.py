"""Ternary linear benchmark on a CUDA device: bitttt's packed op against F.linear.

`bitttt bench ternary --device cuda` (bitttt.bench.ternary.run hands over here). Per (shape
N×K, tokens M, regime) it times
- `bitttt`: `ops.ternary_linear(x_bf16, packed, w_scale)`, end to end: bfloat16 in and out,
  the per-token quantization kernel included;
- `bf16`, `fp16`, `fp32`: `F.linear(x, w)` with x and w [N, K] in that dtype (cuBLAS).

It declares cases and contenders (bitttt/bench/ternary.py's, on the device); the harness
(bitttt/bench/harness.py) validates, interleaves and writes the record. Times are CUDA events
around each call (device time from the call's first kernel to its last,
including any gap where the GPU waits for the host to launch the next one: what an eager
model sees). Contenders are interleaved, the order rotating between rounds; medians with
min-max. Regimes as on the CPU: hot reuses one weight (run once untimed right
before each timed call, so it sits in L2 when it fits); cold cycles through copies totalling
at least `cold_bytes` (256 MB, several times any L2), so every call reads from HBM.

Each (shape, M) is first validated against `reference.ternary_linear` on a slice of the
output, in float32 (the same GEMV/GEMM cores as bf16, with a tighter tolerance).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TextIO

import torch

from bitttt.bench import harness, ternary
from bitttt.bench.ternary import Report, TernaryBenchConfig
from bitttt.errors import ConfigError


def require_cuda() -> None:
    """ConfigError (one line, exit 2) unless bitttt's CUDA kernels and a CUDA device are here."""
    from bitttt._native import C_cuda, cuda_unavailable_reason

    if C_cuda is None:
        raise ConfigError(f"bench ternary: --device cuda needs bitttt's CUDA kernels: {cuda_unavailable_reason}",
                          hint="install a CUDA torch and build bitttt with BITTTT_CUDA=on, or use --device cpu")
    if not torch.cuda.is_available():
        raise ConfigError("bench ternary: --device cuda: bitttt's CUDA kernels are compiled, but torch sees no "
                          "CUDA device", hint="run on a machine with a GPU (check nvidia-smi), or use --device cpu")


def to_device(sw: ternary.ShapeWeights) -> ternary.ShapeWeights:
    """The weights' copies on the current CUDA device (the float32 oracle weight stays on the CPU)."""
    sw.args = {k: [tuple(a.cuda() for a in copy) for copy in copies] for k, copies in sw.args.items()}
    return sw


def device_info() -> dict[str, Any]:
    from bitttt._native import C_cuda

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"name": props.name, "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
            "memory_bytes": props.total_memory, "l2_bytes": getattr(props, "L2_cache_size", 0),
            "torch_cuda": torch.version.cuda, "build": dict(C_cuda.build_info())}


def run(config: TernaryBenchConfig, out: TextIO) -> Report:
    """Validates, then times every (shape, M, regime) row on the current CUDA device.

    Raises ConfigError without CUDA kernels or device (before any work) and
    BenchValidationError when a contender is wrong.
    """
    config.validate()
    require_cuda()
    dev = device_info()
    record = harness.Record("ternary-cuda", {**ternary.record_settings(config), "gpu": dev})
    print(f"bitttt bench ternary --device cuda: ops.ternary_linear (bfloat16 in/out) vs F.linear "
          f"{', '.join(config.baselines)} on {dev['name']} (sm_{dev['capability'].replace('.', '')}); "
          f"CUDA events; >= {config.rounds} interleaved rounds; median [min-max] us", file=out, flush=True)
    cache_bytes = dev["l2_bytes"] or 40 * 2**20
    results: list[harness.Result] = []
    torch.manual_seed(config.seed)
    with torch.inference_mode():
        for N, K in config.shapes:
            for regime in config.regimes:
                sw = to_device(ternary.make_weights(N, K, config, ["bitttt", *config.baselines],
                                                    cold=regime == "cold"))
                for M in config.tokens:
                    x = torch.randn(M, K, device="cuda")
                    case = harness.Case(ternary.case_name(N, K, M, regime),
                                        ternary.make_contenders(sw, x, regime, ["cuda"], config.baselines,
                                                                cache_bytes, device="cuda"),
                                        device="cuda", unit="us", extra={"N": N, "K": K, "M": M, "regime": regime})
                    harness.check_case(case)
                    rs = harness.time_case(case, config.settings())
                    ternary.add_rates(rs, M, N, K, [], None)
                    print(ternary.format_row({r.contender: r for r in rs}, ["bitttt"]), file=out, flush=True)
                    results += rs
                del sw
                torch.cuda.empty_cache()
    return Report(dataclasses.replace(config), record.finish(results), results)
