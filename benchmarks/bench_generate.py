"""Decode speed: packed ternary inference vs the same model's fake-quant path vs its
full-precision twin, per preset; and model size on disk (export vs float16).

    python benchmarks/bench_generate.py [--presets small,base] [--mixer attention] [--threads 2]
        [--prompt-len 32] [--new-tokens 64] [--json PATH]

Random weights (speed does not depend on training). Greedy decoding through the model's cache,
one prefill call then one call per token; reports decode tokens/s and median per-token latency.
Before timing, checks that packed and fake-quant logits agree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from bitttt.model import BitTTTForCausalLM, preset_config


def decode_timing(model, prompt_len: int, new_tokens: int) -> dict:
    ids = torch.randint(0, 256, (1, prompt_len))
    lat = []
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(ids, use_cache=True)
        prefill_s = time.perf_counter() - t0
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
        for _ in range(new_tokens):
            t = time.perf_counter()
            out = model(token, cache=cache)
            cache, token = out.cache, out.logits[:, -1:].argmax(-1)
            lat.append(time.perf_counter() - t)
    return {"decode_tokens_per_s": new_tokens / sum(lat), "median_ms": 1000 * statistics.median(lat),
            "prefill_tokens_per_s": prompt_len / prefill_s}


def size_on_disk(model) -> int:
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        return os.path.getsize(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="small,base")
    p.add_argument("--mixer", default="attention")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, e.g. conv_kernel=0 (JSON values)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    torch.set_num_threads(args.threads)
    from bitttt import _C  # noqa: F401

    print(f"torch {torch.__version__} | {platform.processor() or platform.machine()} | threads {args.threads} | "
          f"ternary ISA {_C.isa()}")
    rows = []
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
        ids = torch.randint(0, 256, (1, 16))
        with torch.no_grad():  # validate before timing
            err = (packed(ids).logits - fake(ids).logits).abs().max().item()
        export_bytes = size_on_disk(packed)
        for name, model in (("packed", packed), ("fake-quant", fake), ("full-precision", fp)):
            decode_timing(model, args.prompt_len, 4)  # warm up
            r = decode_timing(model, args.prompt_len, args.new_tokens)
            rows.append({"preset": preset, "path": name, **r})
            print(f"{preset:5s} {name:15s} decode {r['decode_tokens_per_s']:8.1f} tok/s | "
                  f"{r['median_ms']:7.2f} ms/token | prefill {r['prefill_tokens_per_s']:8.1f} tok/s")
        speedup = rows[-3]["decode_tokens_per_s"] / rows[-1]["decode_tokens_per_s"]
        print(f"{preset:5s} packed vs full precision: {speedup:.2f}x | max |logit diff| packed vs fake {err:.2e} | "
              f"size: export {export_bytes / 1e6:.1f} MB vs float16 {fp16_bytes / 1e6:.1f} MB")
        rows.append({"preset": preset, "speedup_vs_fp": speedup, "export_bytes": export_bytes, "fp16_bytes": fp16_bytes})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "mixer": args.mixer, "overrides": overrides, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
