"""Decode of a packed BitTTT model with the lut16 decode path on vs off (BITTTT_LUT16), one process.

    BITTTT_ISA=avx2 python benchmarks/bench_lut16_decode.py [--presets small,base,bitnet2l] [--threads 1 2]
        [--rounds 7] [--steps 16] [--json PATH]

Two packed copies of one random model (same weights): one with a lut16 layout per BitLinear
(decode at M=1 goes through ternary_linear_lut16), one without (BT2 ternary_linear). A call is
`--steps` greedy decode steps through the model's cache, continuing its own sequence; the
harness (bitttt/bench/harness.py) interleaves the two per round in rotating order and takes
medians. Before timing, both must give the same logits bit for bit. Weights are whatever the
model's size makes them (a small model's packed weights sit in L3: hot).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from bitttt import _native
from bitttt.bench import harness
from bitttt.config import preset_config
from bitttt.model import BitTTTForCausalLM
from bitttt.nn.bitlinear import LUT16_ENV, BitLinear

PROMPT, MAX_POS = 16, 1024
# Beside bitttt's presets: two layers of BitNet b1.58 2B's linear shapes (2560 wide, SwiGLU 6912,
# attention mixer), 40 MB of BT2 weights: more than this Xeon's L3, so decode reads them from memory.
EXTRA = {"bitnet2l": dict(n_layer=2, n_embd=2560, n_head=20, mixer="attention")}


def packed_copy(seed: int, preset: str, lut16: str) -> BitTTTForCausalLM:
    torch.manual_seed(seed)
    config = preset_config("tiny", **EXTRA[preset]) if preset in EXTRA else preset_config(preset)
    model = BitTTTForCausalLM(config).eval()
    os.environ[LUT16_ENV] = lut16
    try:
        return model.pack()
    finally:
        del os.environ[LUT16_ENV]


class Decoder:
    """Greedy decode through the cache; restarts from the prompt before it passes MAX_POS."""

    def __init__(self, model: BitTTTForCausalLM, steps: int) -> None:
        self.model, self.steps = model, steps
        self.restart()

    @torch.no_grad()
    def restart(self) -> None:
        out = self.model(torch.arange(PROMPT).view(1, -1), use_cache=True)
        self.cache, self.token, self.pos = out.cache, out.logits[:, -1:].argmax(-1), PROMPT

    @torch.no_grad()
    def run(self) -> torch.Tensor:
        if self.pos + self.steps > MAX_POS:
            self.restart()
        logits = []
        for _ in range(self.steps):
            out = self.model(self.token, cache=self.cache)
            self.cache, self.token = out.cache, out.logits[:, -1:].argmax(-1)
            logits.append(out.logits)
        self.pos += self.steps
        return torch.cat(logits, 1)


def ternary_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(BT2 packed bytes, lut16 layout bytes) over the model's BitLinears."""
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    return (sum(m.packed.numel() for m in layers),
            sum(m.lut16.numel() for m in layers if m.lut16 is not None))


def cases_for(preset: str, threads: list[int], steps: int) -> list[harness.Case]:
    on, off = packed_copy(0, preset, "1"), packed_copy(0, preset, "0")
    bt2_bytes, lut16_bytes = ternary_bytes(on)
    assert lut16_bytes and ternary_bytes(off)[1] == 0
    a, b = Decoder(on, steps), Decoder(off, steps)

    def check() -> None:
        x, y = Decoder(on, 8).run(), Decoder(off, 8).run()
        if not torch.equal(x, y):
            raise AssertionError("lut16 on and off give different logits")

    extra = {"preset": preset, "steps_per_call": steps, "bt2_bytes": bt2_bytes, "lut16_bytes": lut16_bytes}
    return [harness.Case(f"{preset} decode x{steps}", [
        harness.Contender("lut16", a.run, check=check, extra={"lut16": True}),
        harness.Contender("bt2", b.run, extra={"lut16": False}),
    ], threads=t, unit="tok/s", work=steps, extra=extra) for t in threads]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="small,base,bitnet2l")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--json")
    args = ap.parse_args()
    isa = _native._C.isa()
    print(f"ternary kernels: {isa}, lut16 kernels: {_native._C.lut16_isa()}", file=sys.stderr)
    settings = harness.Settings(rounds=args.rounds, max_rounds=args.rounds)
    record = harness.Record("lut16_decode", {"presets": args.presets, "threads": args.threads, "rounds": args.rounds,
                                             "steps": args.steps, "ternary_isa": isa, "shared_machine": True})
    cases = [c for p in args.presets.split(",") for c in cases_for(p, args.threads, args.steps)]
    record.finish(harness.run_cases(cases, settings, out=sys.stdout))
    if args.json:
        record.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
