"""BitNet b1.58 2B4T-shaped decode and prefill, random ternary weights (nothing is downloaded):
bitttt (BT2 kernels, float or int8 LM head) against transformers' own BitNet path on CPU (same
packed HF folder) and llama.cpp through llama-cpp-python (a GGUF of the same weights, TQ2_0,
written by bitttt.hf.gguf; its graph differs as that module says, its linear bytes do not).

Timing and the record are bitttt/bench/harness.py's: per thread count, every (engine, OpenMP
wait policy) pair gets its own child process (clean resident memory, and the policy set before
OpenMP starts), and each case (prefill T, decode) interleaves all of them over --rounds rounds
in rotating order; medians with min-max. A child times each call itself, holding --lock if
given, so a shared machine times one thing at a time. Prefill keeps only the last position's
logits in every engine (as llama.cpp does). The roofline: bytes one decoded token reads over
the read bandwidth measured in the same run (bitttt bench peak's kernel, best of two passes).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from typing import Any

ENGINES = ("bitttt", "bitttt-int8", "llama.cpp", "transformers", "llama.cpp-q8_0", "llama.cpp-f16", "bitttt-int8-ops")
# bitttt-int8-ops: bitttt-int8 with its decode steps through the per-op layers instead of the
# one-call decode op (BITTTT_FUSED_DECODE=0 in its child): the before of an A/B in one run.
# llama.cpp's head (its tied token_embd) per engine: "llama.cpp" reads the bf16 embedding as
# bitttt's float head does; -q8_0 reads about the bytes of bitttt's int8 head (34 per 32 values
# against 32 + a per-row scale), -f16 the bytes of a float16 head.
LLAMA_HEADS = {"llama.cpp": "bf16", "llama.cpp-q8_0": "q8_0", "llama.cpp-f16": "f16"}
WEIGHT_SCALE = 32.0  # HF's weight_scale (BitLinear divides): s_w = 1/32, exact in float16 for TQ2_0
# 2B4T's config.json (microsoft/bitnet-b1.58-2B-4T): tied embeddings, bf16, relu2, GQA 20/5.
SHAPE_2B = dict(vocab_size=128256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
                num_attention_heads=20, num_key_value_heads=5, max_position_embeddings=4096, rms_norm_eps=1e-5,
                rope_theta=500000.0, tie_word_embeddings=True, hidden_act="relu2", bos_token_id=128000,
                eos_token_id=128001, model_type="bitnet", architectures=["BitNetForCausalLM"], dtype="bfloat16",
                quantization_config={"quant_method": "bitnet", "linear_class": "bitlinear",
                                     "quantization_mode": "offline"})
GGUF_FILE = "model.gguf"
# OpenMP wait policies: bitttt/bench/harness.py's (passive, active, spin); issue 11: decode pays a
# thread wake-up per op when the pool sleeps.
WAIT_POLICIES = ("passive", "active", "spin")
BUSY_LOOP = "while True: pass"  # one busy CPU, as another program on a shared machine
NEEDS = {**{e: "llama_cpp" for e in LLAMA_HEADS}, "transformers": "transformers"}  # the engines' optional packages


def gguf_paths(folder: str, head: str) -> tuple[str, str]:
    """The GGUF of `folder` with `head` as its embedding/head type, and its sizes file."""
    suffix = "" if head == "bf16" else f"-{head}"
    return os.path.join(folder, f"model{suffix}.gguf"), os.path.join(folder, f"gguf_sizes{suffix}.json")


def ensure_gguf(folder: str, head: str) -> None:
    """Writes the folder's GGUF with this head type unless it is there."""
    path, sizes_path = gguf_paths(folder, head)
    if os.path.isfile(path):
        return
    from bitttt.hf import load_bitnet
    from bitttt.hf.gguf import write_gguf

    sizes = write_gguf(load_bitnet(folder), path, head_type=head)
    with open(sizes_path, "w") as f:
        json.dump(sizes, f)


def write_folder(path: str, layers: int) -> dict[str, int]:
    """A packed HF folder (random codes 0..2, 4 output rows per byte) and its GGUF; returns the GGUF sizes."""
    import torch
    from safetensors.torch import save_file

    from bitttt.hf import load_bitnet
    from bitttt.hf.gguf import write_gguf

    os.makedirs(path, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    c = {**SHAPE_2B, "num_hidden_layers": layers}
    C, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * C // c["num_attention_heads"]
    shapes = {"self_attn.q_proj": (C, C), "self_attn.k_proj": (kv, C), "self_attn.v_proj": (kv, C),
              "self_attn.o_proj": (C, C), "mlp.gate_proj": (I, C), "mlp.up_proj": (I, C), "mlp.down_proj": (C, I)}
    t: dict[str, torch.Tensor] = {"model.embed_tokens.weight": (torch.randn(V, C, generator=g) * 0.02).bfloat16(),
                                  "model.norm.weight": torch.ones(C, dtype=torch.bfloat16)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for name, (N, K) in shapes.items():
            codes = torch.randint(0, 3, (4, N // 4, K), generator=g, dtype=torch.uint8)
            t[f"{p}.{name}.weight"] = codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6
            t[f"{p}.{name}.weight_scale"] = torch.tensor([WEIGHT_SCALE], dtype=torch.bfloat16)
        for name, n in (("input_layernorm", C), ("post_attention_layernorm", C), ("self_attn.attn_sub_norm", C),
                        ("mlp.ffn_sub_norm", I)):
            t[f"{p}.{name}.weight"] = torch.ones(n, dtype=torch.bfloat16)
    save_file(t, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(c, f)
    del t
    sizes = write_gguf(load_bitnet(path), os.path.join(path, GGUF_FILE))
    with open(os.path.join(path, "gguf_sizes.json"), "w") as f:
        json.dump(sizes, f)
    return sizes


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@contextlib.contextmanager
def held(lock: str | None):
    """The benchmark lock around one timed case (none without a path)."""
    if not lock:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Bitttt:
    def __init__(self, folder: str, threads: int, lm_head: str, per_op: bool = False) -> None:
        from bitttt.hf import decode_bytes_per_token, load_bitnet
        from bitttt.hf.bitnet import FUSED_DECODE_ENV

        if per_op:  # this child only (each engine has its own process)
            os.environ[FUSED_DECODE_ENV] = "0"

        self.model = load_bitnet(folder, lm_head=lm_head)
        self.bytes_per_token = decode_bytes_per_token(self.model)["total"]

    def prefill(self, ids: list[int]) -> None:
        import torch

        self.model(torch.tensor([ids]), logits_to_keep=1)

    def decode(self, ids: list[int], n: int) -> float:
        import torch

        out = self.model(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(n):
            out = self.model(token, cache=out.cache)
            token = out.logits[:, -1:].argmax(-1)
        return time.perf_counter() - t0


class Transformers:
    def __init__(self, folder: str, threads: int) -> None:
        import torch

        torch._dynamo.config.disable = True  # eager: transformers' @torch.compile would build per shape
        from transformers import BitNetForCausalLM

        self.model = BitNetForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
        self.bytes_per_token = None  # reads what bitttt's float head does, and unpacks on top

    def prefill(self, ids: list[int]) -> None:
        import torch

        self.model(torch.tensor([ids]), logits_to_keep=1)

    def decode(self, ids: list[int], n: int) -> float:
        import torch

        kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
        x = torch.tensor([ids])
        t1 = _timed(lambda: self.model.generate(x, max_new_tokens=1, min_new_tokens=1, **kw))
        tn = _timed(lambda: self.model.generate(x, max_new_tokens=n + 1, min_new_tokens=n + 1, **kw))
        return max(tn - t1, 1e-9)


class LlamaCpp:
    def __init__(self, folder: str, threads: int, head: str = "bf16") -> None:
        import llama_cpp

        path, sizes_path = gguf_paths(folder, head)
        self.llm = llama_cpp.Llama(path, n_ctx=1024, n_batch=512, n_ubatch=512,
                                   n_threads=threads, n_threads_batch=threads, verbose=False)
        with open(sizes_path) as f:
            self.bytes_per_token = json.load(f)["decode_bytes_per_token"]
        self.n_vocab = self.llm.n_vocab()

    def _argmax(self) -> int:
        import numpy as np

        return int(np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,)).argmax())

    def prefill(self, ids: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(ids)

    def decode(self, ids: list[int], n: int) -> float:
        self.prefill(ids)
        token = self._argmax()
        t0 = time.perf_counter()
        for _ in range(n):
            self.llm.eval([token])
            token = self._argmax()
        return time.perf_counter() - t0


def make_engine(engine: str, folder: str, threads: int):
    if engine.startswith("bitttt"):
        return Bitttt(folder, threads, "int8" if engine.startswith("bitttt-int8") else "float",
                      per_op=engine.endswith("-ops"))
    if engine in LLAMA_HEADS:
        return LlamaCpp(folder, threads, LLAMA_HEADS[engine])
    return Transformers(folder, threads)


def engine_contenders(engine: str, folder: str, threads: int, prompt: int, new_tokens: int, prefill: list[int],
                      lock: str | None = None) -> dict[str, Any]:
    """The harness's factory (run in a child, bitttt/bench/harness.py): load `engine`, then one
    self-timed contender per case, each call returning seconds per token.

    Cases: "prefill T" (T prompt tokens, keeping the last logits) and "decode" (new_tokens steps
    after a `prompt`-token prompt). Each check runs its case once with one token (decode) or
    its full length (prefill): an engine that cannot run it stops the bench before any timing.
    """
    import torch

    from bitttt.bench.harness import Contender

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    with open(os.path.join(folder, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    ids = torch.randint(0, vocab, (max(prefill + [prompt]),), generator=g).tolist()
    e = make_engine(engine, folder, threads)
    import psutil

    extra = {"engine": engine, "decode_bytes_per_token": e.bytes_per_token,
             "rss_bytes_after_load": psutil.Process().memory_info().rss}

    def prefill_case(T: int) -> Contender:
        def call() -> float:
            with held(lock), torch.no_grad():
                return _timed(lambda: e.prefill(ids[:T])) / T
        return Contender(engine, call, check=call, self_timed=True, extra=extra)

    def decode(n: int) -> float:
        with held(lock), torch.no_grad():
            return e.decode(ids[:prompt], n) / n

    out = {f"prefill {T}": prefill_case(T) for T in prefill}
    out["decode"] = Contender(engine, lambda: decode(new_tokens), check=lambda: decode(1), self_timed=True,
                              extra=extra)
    return out


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ap.add_argument("--layers", type=int, default=30, help="decoder layers (2B4T: 30)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES[:3]), choices=ENGINES,
                    help="default: bitttt bitttt-int8 llama.cpp (transformers is slow: add it); "
                         "llama.cpp-q8_0 / llama.cpp-f16: llama.cpp with a Q8_0 / F16 head (equal head bytes "
                         "to bitttt-int8 / a float16 head); bitttt-int8-ops: bitttt-int8 through the per-op "
                         "layers (BITTTT_FUSED_DECODE=0), for an A/B of the one-call decode step")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128, help="decode steps (default 128)")
    ap.add_argument("--hf-tokens", type=int, default=4, help="transformers' decode steps (it unpacks every "
                                                             "weight on every call)")
    ap.add_argument("--prefill", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--folder", help="the model folder: written here if it has no config.json, else reused "
                                     "(default: a temporary one)")
    ap.add_argument("--lock", help="hold this file's lock around each timed case (e.g. /work/bench.lock)")
    ap.add_argument("--json", help="write the result record here (bitttt/bench/harness.py's shape)")
    ap.add_argument("--wait-policy", nargs="+", default=["passive", "active"], choices=WAIT_POLICIES,
                    help="OpenMP wait policies, one child each, interleaved (default: passive active; "
                         "spin = a short spin, then sleep)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case (default 5)")
    ap.add_argument("--no-peaks", dest="peaks", action="store_false",
                    help="skip measuring the read bandwidth (and the roofline column)")
    ap.add_argument("--shared", action="store_true",
                    help="say in the record that the machine was shared with other work")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="keep N other processes spinning while children run (a busy machine)")
    return ap


@contextlib.contextmanager
def busy_processes(n: int):
    """n processes that each keep a CPU busy until the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def engine_kwargs(args: argparse.Namespace, engine: str, threads: int, folder: str) -> dict[str, Any]:
    n = args.hf_tokens if engine == "transformers" else args.new_tokens
    return {"engine": engine, "folder": folder, "threads": threads, "prompt": args.prompt, "new_tokens": n,
            "prefill": list(args.prefill), "lock": args.lock}


def roofline(results: list[Any], peaks: Any) -> None:
    """Adds, to each decode entry, the tokens/s the read bandwidth allows (bytes per token over
    the read peak measured in this run) and the share of it reached (harness.Peaks.percent:
    never over 100%). Engines that report no bytes (transformers) use bitttt's float head's."""
    float_bytes = {r.threads: r.extra.get("decode_bytes_per_token") for r in results
                   if r.contender == "bitttt" and r.case == "decode"}
    for r in results:
        b = r.extra.get("decode_bytes_per_token") or float_bytes.get(r.threads)
        read = peaks.get("read_gbs", r.threads) if peaks else None
        if r.case != "decode" or not b or not read:
            continue
        r.extra["roofline_tok_s"] = read * 1e9 / b
        r.extra["pct_of_roofline"] = peaks.percent(r.median * b / 1e9, "read_gbs", r.threads)


def format_table(results: list[Any]) -> str:
    """case x engine x threads x wait policy: median tok/s [min-max], % of the roofline (decode)."""
    lines = [f"{'case':<13}{'engine':<14}{'thr':>4}{'wait':>9}{'tok/s':>10}{'min-max':>18}{'% roof':>8}"]
    for r in results:
        pct = r.extra.get("pct_of_roofline")
        lines.append(f"{r.case:<13}{r.contender:<14}{r.threads:>4}{r.wait_policy:>9}{r.median:>10.2f}"
                     f"{f'{r.min:.2f}-{r.max:.2f}':>18}" + (f"{pct:>7.0f}%" if pct is not None else f"{'-':>8}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = add_arguments(argparse.ArgumentParser(description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """The whole benchmark (add_arguments' flags): write or reuse the folder; per thread count,
    one child per (engine, wait policy), all cases interleaved by the harness; print the table."""
    import importlib.util
    import tempfile

    from bitttt.bench import harness

    missing = [e for e in args.engines if importlib.util.find_spec(NEEDS.get(e, "bitttt")) is None]
    for e in missing:
        print(f"{e}: skipped ({NEEDS[e]} is not installed; pip install 'bitttt[llama]' or 'bitttt[hf]')",
              file=sys.stderr)
    args.engines = [e for e in args.engines if e not in missing]
    settings = harness.Settings(rounds=args.rounds, warmup=1)
    record = harness.Record("bitnet", {k: getattr(args, k) for k in (
        "layers", "threads", "engines", "prompt", "new_tokens", "hf_tokens", "prefill", "lock", "wait_policy",
        "busy", "rounds")} | {"wait_policy_env": {p: harness.WAIT_POLICIES[p] for p in args.wait_policy},
                              "shared_machine": args.shared})
    peaks = harness.Peaks(list(args.threads), quick=args.layers < 30) if args.peaks else None
    record.peaks = peaks
    results = []
    with contextlib.ExitStack() as stack:
        folder = args.folder or stack.enter_context(tempfile.TemporaryDirectory(prefix="bitnet2b-"))
        if not os.path.isfile(os.path.join(folder, GGUF_FILE)):
            write_folder(folder, args.layers)
        for e in args.engines:
            if e in LLAMA_HEADS:
                ensure_gguf(folder, LLAMA_HEADS[e])
        with busy_processes(args.busy):
            for threads in args.threads:  # one thread count's children at a time: memory
                with harness.Hosts() as hosts:
                    built = [hosts.build("bitttt.bench.bitnet:engine_contenders",
                                         engine_kwargs(args, engine, threads, folder), policy, threads, isolate=True)
                             for engine in args.engines for policy in args.wait_policy]
                    cases = [harness.Case(name, [b[name] for b in built], threads=threads, unit="tok/s", work=1,
                                          extra={"layers": args.layers, "busy": args.busy})
                             for name in built[0]]
                    results += harness.run_cases(cases, settings, out=sys.stderr)
    roofline(results, peaks)
    record.finish(results)
    print(format_table(results))
    print(f"layers {args.layers}; {args.busy} busy processes beside; wait policies: "
          + "; ".join(f"{p} = {' '.join(f'{k}={v}' for k, v in harness.WAIT_POLICIES[p].items())}"
                      for p in args.wait_policy)
          + "; roofline = read bandwidth (bitttt bench peak, this run) / bytes per decoded token")
    if args.json:
        record.write(args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
