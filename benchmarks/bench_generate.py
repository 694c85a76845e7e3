"""Decode speed of bitttt's own models: packed ternary inference vs its full-precision (float32)
twin, each through the fused one-token path (bitttt.nn.decode, the default) and through the
per-op path (BITTTT_FUSED_DECODE=0); optionally the fake-quant path; and model size on disk
(export vs float16).

    python benchmarks/bench_generate.py [--presets tiny,base] [--mixer ttt_linear] [--threads 1]
        [--prompt-len 32] [--new-tokens 32] [--rounds 5] [--clock wall|cpu] [--fake-quant] [--json PATH]

Random weights (speed does not depend on training). Greedy decoding through the model's cache:
each timed call is one prefill (untimed) then --new-tokens one-token calls; the result is ms per
decoded token, median over interleaved rounds (bitttt/bench/harness.py). Before timing: packed
logits agree with fake quant's, and the fused path's logits the per-op path's on the per-op
path's greedy tokens (both within 0.1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from bitttt.bench import harness
from bitttt.model import BitTTTForCausalLM, preset_config
from bitttt.nn.decode import FUSED_ENV


class fused_setting:
    """BITTTT_FUSED_DECODE set to `value` inside the block (read on every call)."""

    def __init__(self, value: str) -> None:
        self.value, self.old = value, None

    def __enter__(self):
        self.old = os.environ.get(FUSED_ENV)
        os.environ[FUSED_ENV] = self.value

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop(FUSED_ENV, None)
        else:
            os.environ[FUSED_ENV] = self.old


CLOCKS = {"wall": time.perf_counter,
          # CPU time of this process: on a shared machine, the time the OS kept the decode off a
          # CPU is not counted (a memory stall is: the CPU is busy waiting).
          "cpu": time.process_time}


def greedy(model, ids: torch.Tensor, new_tokens: int, clock: str = "wall") -> tuple[list[int], float]:
    """Greedy tokens after prompt ids, and the seconds per decoded token (prefill not counted)."""
    now = CLOCKS[clock]
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
        tokens = [int(token)]
        t0 = now()
        for _ in range(new_tokens):
            out = model(token, cache=cache)
            cache, token = out.cache, out.logits[:, -1:].argmax(-1)
            tokens.append(int(token))
        return tokens, (now() - t0) / new_tokens


def forced_logits(model, ids: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """The logits [len(tokens), V] of one-token decode steps fed `tokens` after prompt ids."""
    with torch.no_grad():
        cache, logits = model(ids, use_cache=True).cache, []
        for t in tokens:
            out = model(torch.tensor([[t]]), cache=cache)
            cache = out.cache
            logits.append(out.logits[0, -1])
    return torch.stack(logits)


def size_on_disk(model) -> int:
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        return os.path.getsize(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,base")
    p.add_argument("--mixer", default="ttt_linear")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clock", default="wall", choices=list(CLOCKS),
                   help="wall time, or this process's CPU time (robust on a shared machine)")
    p.add_argument("--fake-quant", action="store_true", help="also time the fake-quant path (slow at base)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, e.g. conv_kernel=0 (JSON values)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--shared", action="store_true", help="say in the record that the machine was shared with other work")
    args = p.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    torch.set_num_threads(args.threads)
    record = harness.Record("generate", {
        "presets": args.presets, "mixer": args.mixer, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "rounds": args.rounds, "overrides": overrides, "clock": args.clock, "shared_machine": args.shared})
    cases, sizes = [], {}
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        fake = BitTTTForCausalLM(preset_config(preset, mixer=args.mixer, **overrides)).eval()
        torch.manual_seed(0)
        fp = BitTTTForCausalLM(preset_config(preset, mixer=args.mixer, ternary=False, **overrides)).eval()
        fp16_bytes = size_on_disk(fp.half())
        fp.float()
        packed = BitTTTForCausalLM(preset_config(preset, mixer=args.mixer, **overrides)).eval()
        packed.load_state_dict(fake.state_dict())
        packed.pack()
        sizes[preset] = {"export_bytes": size_on_disk(packed), "fp16_bytes": fp16_bytes}
        ids = torch.randint(0, 256, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))

        def check(packed=packed, fake=fake, ids=ids) -> None:
            with torch.no_grad():
                err = (packed(ids[:, :16]).logits - fake(ids[:, :16]).logits).abs().max().item()
            if not err < 0.1:
                raise harness.BenchValidationError(f"packed vs fake-quant logits differ by {err}")
            with fused_setting("0"):
                tokens, _ = greedy(packed, ids, 8)
                want = forced_logits(packed, ids, tokens)
            with fused_setting("1"):
                got = forced_logits(packed, ids, tokens)
            # the packed model's one-call op sums floats in its own order: an activation at a
            # rounding boundary can take the next int8 code (a 1e-2 change at `base`, which a
            # random model's near-tied top logits can turn into another greedy token), so the
            # same tokens are fed to both paths and their logits compared as fake quant's are
            err = (got - want).abs().max().item()
            if not err < 0.1:
                raise harness.BenchValidationError(f"fused decode logits differ from the per-op path's by {err}")

        def contender(name: str, model, setting: str, ids=ids) -> harness.Contender:
            def run() -> float:
                with fused_setting(setting):
                    return greedy(model, ids, args.new_tokens, args.clock)[1]
            return harness.Contender(name, run, self_timed=True)

        contenders = [contender("packed", packed, "1"), contender("packed-per-op", packed, "0"),
                      contender("float32", fp, "1"), contender("float32-per-op", fp, "0")]
        if args.fake_quant:
            contenders.append(contender("fake-quant", fake, "1"))
        contenders[0].check = check
        cases.append(harness.Case(f"{preset} {args.mixer} decode", contenders, threads=args.threads, unit="ms",
                                  extra={"preset": preset, "mixer": args.mixer}))
    results = harness.run_cases(cases, harness.Settings(rounds=args.rounds, max_rounds=args.rounds), out=sys.stdout)
    record.finish(results)
    rec = record.to_json()
    ratios = {}
    for case in cases:
        med = {r.contender: r.median for r in results if r.case == case.name}
        ratios[case.name] = {"packed_vs_float32": med["float32"] / med["packed"],
                             "per_op_packed_vs_float32": med["float32-per-op"] / med["packed-per-op"],
                             "fused_vs_per_op_packed": med["packed-per-op"] / med["packed"]}
        print(f"{case.name}: packed {ratios[case.name]['packed_vs_float32']:.2f}x float32 (per-op path: "
              f"{ratios[case.name]['per_op_packed_vs_float32']:.2f}x); fused path "
              f"{ratios[case.name]['fused_vs_per_op_packed']:.2f}x the per-op path")
    print(f"load {record.load_before} -> {record.load_after}")
    rec["ratios"], rec["sizes"] = ratios, sizes
    if args.json:
        harness.write_json(rec, args.json)


if __name__ == "__main__":
    main()
