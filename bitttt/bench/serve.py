"""`bitttt bench serve`: what continuous batching and the conversation state cache buy.

- Aggregate decode throughput at 1, 4, 8, 16 concurrent streams: N requests decode together
  through the serving engine (bitttt.serve.engine; no HTTP), timed over steps where all N are
  active, after a warm-up. Random-init models: `base` (BitTTT, TTT-Linear, 125M shape, byte
  vocabulary) and `2b` (a BitNet b1.58 2B4T-shaped HF folder, random codes; --layers to shorten).
- Time to first token of the 10th turn of a TTT conversation with the state cache and without
  (the whole conversation prefilled again).

- The contender (2b only): llama-cpp-python's OpenAI server (`python -m llama_cpp.server`, from
  --llama-python) on a GGUF of the same weights with a Q8_0 head (bitttt.hf.gguf, with a byte
  vocabulary: the server tokenizes and detokenizes), N concurrent streaming /v1/completions
  over loopback HTTP, aggregate tokens/s from the first streamed token to the last. Its server
  has no slots: it serves one request at a time (interrupt_requests off, so a new request
  waits instead of cutting the running one short).

Concurrency levels and cache/no-cache interleave over --rounds; the JSON is the bench record
shape of bitttt.bench.harness (machine, versions, load before and after). These timings are
not the harness's per-call contenders: a case is the engine stepping N streams for --steps.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from typing import Any, TextIO

STREAMS = (1, 4, 8, 16)
TURN_USER_TOKENS = 48  # tokens of each user message in the conversation bench
TURN_REPLY_TOKENS = 32  # tokens of each reply


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--models", nargs="+", default=["base"], choices=["tiny", "base", "2b"],
                   help="tiny/base: BitTTT presets (TTT-Linear); 2b: the BitNet 2B4T shape (default: base)")
    p.add_argument("--streams", type=int, nargs="+", default=list(STREAMS), help="(default: 1 4 8 16)")
    p.add_argument("--threads", type=int, default=2, help="(default: 2)")
    p.add_argument("--steps", type=int, default=16, help="timed decode steps per case and round (default: 16)")
    p.add_argument("--rounds", type=int, default=3, help="(default: 3)")
    p.add_argument("--turns", type=int, default=10, help="the conversation turn whose first token is timed (default: 10)")
    p.add_argument("--layers", type=int, default=30, help="2b: decoder layers (default: 30, the real depth)")
    p.add_argument("--lm-head", choices=["float", "int8"], default="int8", help="(default: int8)")
    p.add_argument("--folder", default=None, help="2b: where the random HF folder is kept (default: a temp dir)")
    p.add_argument("--json", metavar="PATH", help="write the bench record here (benchmarks/results/<machine>/...)")
    p.add_argument("--quick", action="store_true", help="tiny model, 1 and 4 streams, 1 round: a smoke test")
    p.add_argument("--llama-python", metavar="PATH",
                   help="2b: a python with llama-cpp-python's server (pip install 'llama-cpp-python[server]'): "
                        "runs llama-server as the contender (default: skipped)")
    p.add_argument("--shared", action="store_true",
                   help="say in the record that the machine was shared with other work")
    p.add_argument("--llama-gguf", metavar="PATH",
                   help="2b: the contender's GGUF (Q8_0 head, byte vocabulary), written here if missing "
                        "(default: in the temp dir)")
    return p


LLAMA_CONTENDER = "llama-server (llama-cpp-python)"
LLAMA_START_S = 600.0  # a 2B GGUF on a busy disk


def llama_server_missing(python: str | None) -> str | None:
    """Why `python` cannot run llama-cpp-python's server, or None when it can."""
    if not python:
        return "no --llama-python given"
    if not os.path.isfile(python):
        return f"{python} does not exist"
    r = subprocess.run([python, "-c", "import llama_cpp.server.app"], capture_output=True, text=True, timeout=300)
    if r.returncode:
        why = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"{python} cannot import llama_cpp.server ({why}); pip install 'llama-cpp-python[server]' there"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` on a free loopback port, a child process until close()."""

    def __init__(self, python: str, gguf: str, threads: int, n_ctx: int = 2048) -> None:
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [python, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "bench", "--host", "127.0.0.1",
             "--port", str(self.port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
             "--n_ctx", str(n_ctx), "--interrupt_requests", "False"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + LLAMA_START_S
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"llama_cpp.server exited ({self.proc.returncode}): "
                                   f"{self.log.read().decode(errors='replace')[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/v1/models")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"llama_cpp.server did not answer within {LLAMA_START_S:.0f} s")
            time.sleep(0.5)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def stream_completion(port: int, prompt: str, max_tokens: int, eos_ids: list[int]) -> tuple[float, float, int]:
    """One streaming POST /v1/completions (OpenAI's server-sent events): (time of the first
    token, time of the last, tokens). A stream that ends on "length" made max_tokens tokens
    (a token inside a multi-byte character has no text chunk of its own); else the text chunks."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "logit_bias": {str(i): -100.0 for i in eos_ids}}  # random weights: never end early
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"llama-server answered {resp.status}: {resp.read()[:500]!r}")
    first = last = 0.0
    chunks, finish = 0, None
    for raw in resp:  # lines; events end with a blank line, ": ping" lines are comments
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        choice = (json.loads(data).get("choices") or [{}])[0]
        if choice.get("text"):
            last = time.perf_counter()
            first = first or last
            chunks += 1
        finish = choice.get("finish_reason") or finish
    conn.close()
    return first, last, max_tokens if finish == "length" else chunks


def llama_throughput(port: int, n: int, tokens: int, eos_ids: list[int]) -> float:
    """Aggregate tokens/s of n concurrent streams of `tokens` tokens each, from the first
    streamed token of any stream to the last of all (the first token not counted)."""
    results: list[tuple[float, float, int] | BaseException] = [None] * n  # type: ignore[list-item]
    start = threading.Barrier(n)

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = stream_completion(port, f"stream {i:02d}: " + "abcdefgh"[i % 8] * 8, tokens, eos_ids)
        except BaseException as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    first = min(r[0] for r in results)
    last = max(r[1] for r in results)
    return (sum(r[2] for r in results) - 1) / (last - first)


def load_model(name: str, args: argparse.Namespace):
    """(model, tokenizer) on the CPU, packed, with the chosen LM head."""
    import torch

    from bitttt.hf.bitnet import Int8Linear
    from bitttt.model import BitTTTForCausalLM, preset_config
    from bitttt.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    if name == "2b":
        import tempfile

        from bitttt.bench import bitnet
        from bitttt.hf import load_bitnet

        folder = args.folder or os.path.join(tempfile.gettempdir(), f"bitttt-bench-serve-2b-{args.layers}")
        if not os.path.exists(os.path.join(folder, "config.json")):
            bitnet.write_folder(folder, args.layers)
        model = load_bitnet(folder, lm_head=args.lm_head)
        tok = ByteTokenizer()  # ids < 320 are valid 2B ids too; the bench needs no real text
        return model.eval(), tok
    model = BitTTTForCausalLM(preset_config(name)).pack().eval()
    if args.lm_head == "int8":
        model.lm_head = Int8Linear(model.lm_head.weight)
    return model, ByteTokenizer()


def decode_throughput(engine, n: int, steps: int) -> float:
    """Aggregate tokens/s of n streams decoding together, over `steps` steps after they all joined."""
    from bitttt.generate import SamplingParams
    from bitttt.serve.engine import Request

    handles = [engine.submit(Request([65 + i % 26] * 8, SamplingParams(max_new_tokens=steps + 4, temperature=0)))
               for i in range(n)]
    while engine.prefilling:  # joins and prefills (in chunks)
        engine.step()
    engine.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    dt = time.perf_counter() - t0
    for h in handles:
        h.cancel()
    while engine.busy:
        engine.step()
    return n * steps / dt


def conversation_ttft(engine, turns: int) -> tuple[float, int, int]:
    """Plays `turns` turns (user message, reply) and times the last turn's first token:
    (seconds from submit to the first token, prompt tokens of that turn, cached tokens)."""
    from bitttt.generate import SamplingParams
    from bitttt.serve.engine import Request

    ids: list[int] = []
    for turn in range(1, turns + 1):
        ids = ids + [97 + (turn + j) % 26 for j in range(TURN_USER_TOKENS)]
        events: list[tuple[float, Any]] = []
        t0 = time.perf_counter()
        engine.submit(Request(list(ids), SamplingParams(max_new_tokens=TURN_REPLY_TOKENS, temperature=0)),
                      sink=lambda ev: events.append((time.perf_counter(), ev)))
        while engine.busy:
            engine.step()
        first = next(t for t, ev in events if ev.kind == "token")
        done = events[-1][1]
        ids = ids + [ev.token for _, ev in events if ev.kind == "token"]
    return first - t0, done.usage.prompt_tokens, done.usage.cached_tokens


def case(name: str, contender: str, threads: int, values: list[float], unit: str, **extra) -> dict[str, Any]:
    return {"case": name, "contender": contender, "threads": threads, "wait_policy": "passive",
            "median": statistics.median(values), "min": min(values), "max": max(values), "unit": unit,
            "rounds": len(values), **extra}


def start_llama(name: str, model, args: argparse.Namespace, out) -> LlamaServer | None:
    """The llama-server contender for the 2b model, or None (with a line saying why)."""
    if name != "2b" or not getattr(args, "llama_python", None):
        if name == "2b":
            print(f"{LLAMA_CONTENDER}: skipped (no --llama-python given)", file=out, flush=True)
        return None
    if (missing := llama_server_missing(args.llama_python)) is not None:
        print(f"{LLAMA_CONTENDER}: skipped ({missing})", file=out, flush=True)
        return None
    gguf = args.llama_gguf or os.path.join(tempfile.gettempdir(), f"bitttt-bench-serve-2b-{args.layers}-q8_0-bytes.gguf")
    if not os.path.isfile(gguf):
        from bitttt.hf.gguf import write_gguf

        print(f"writing {gguf} (Q8_0 head, byte vocabulary)", file=out, flush=True)
        write_gguf(model, gguf, head_type="q8_0", tokenizer="bytes")
    return LlamaServer(args.llama_python, gguf, args.threads)


def run(args: argparse.Namespace, out: TextIO | None = None) -> dict[str, Any]:
    import torch

    from bitttt.bench import harness
    from bitttt.serve.engine import Engine, EngineConfig

    if args.quick:
        args.models, args.streams, args.rounds, args.steps, args.turns = ["tiny"], [1, 4], 1, 8, 4
    torch.set_num_threads(args.threads)
    load_before = harness.load_average()
    cases = []
    for name in args.models:
        model, tok = load_model(name, args)
        batched = Engine(model, tok, EngineConfig(max_batch=max(args.streams), state_cache_mb=0))
        batched.eos_ids = set()  # random weights: never end a stream early
        tps: dict[int, list[float]] = {n: [] for n in args.streams}
        llama = start_llama(name, model, args, out)
        llama_tps: dict[int, list[float]] = {n: [] for n in args.streams}
        try:
            decode_throughput(batched, max(args.streams), 2)  # warm-up
            if llama is not None:
                llama_throughput(llama.port, 1, 4, model.config.eos_ids)
            for _ in range(args.rounds):
                for n in args.streams:  # interleaved: a load change hits every level and contender alike
                    tps[n].append(decode_throughput(batched, n, args.steps))
                    if llama is not None:
                        llama_tps[n].append(llama_throughput(llama.port, n, args.steps + 2, model.config.eos_ids))
        finally:
            if llama is not None:
                llama.close()
        for contender, values in (("bitttt serve engine", tps), (LLAMA_CONTENDER, llama_tps if llama else None)):
            if values is None:
                continue
            for n in args.streams:
                extra = {"transport": "loopback HTTP, streaming /v1/completions"} if contender == LLAMA_CONTENDER else {}
                cases.append(case(f"{name} decode, {n} streams", contender, args.threads, values[n], "tokens/s",
                                  streams=n, **extra))
                step_ms = n / statistics.median(values[n]) * 1e3  # a slow single stream shows here first
                print(f"{name:5s} {n:3d} streams: {statistics.median(values[n]):8.1f} tokens/s aggregate, "
                      f"{step_ms:.1f} ms per step "
                      f"({statistics.median(values[n]) / statistics.median(values[args.streams[0]]):.2f}x "
                      f"{args.streams[0]} stream{'s' if args.streams[0] > 1 else ''}), {contender}", file=out, flush=True)
        if name != "2b":  # a TTT conversation: the state cache's case
            ttft: dict[str, list[float]] = {"state cache": [], "no cache": []}
            seen: dict[str, tuple[int, int]] = {}
            for _ in range(args.rounds):
                for label, mb in (("state cache", 64.0), ("no cache", 0.0)):
                    e = Engine(model, tok, EngineConfig(state_cache_mb=mb))
                    e.eos_ids = set()
                    t, prompt, cached = conversation_ttft(e, args.turns)
                    ttft[label].append(t)
                    seen[label] = (prompt, cached)
            for label, values in ttft.items():
                cases.append(case(f"{name} TTFT of turn {args.turns}", label, args.threads, values, "s",
                                  prompt_tokens=seen[label][0], cached_tokens=seen[label][1]))
            speedup = statistics.median(ttft["no cache"]) / statistics.median(ttft["state cache"])
            print(f"{name:5s} turn {args.turns} TTFT: {statistics.median(ttft['state cache']) * 1e3:.1f} ms with the "
                  f"state cache ({seen['state cache'][1]} of {seen['state cache'][0]} prompt tokens cached), "
                  f"{statistics.median(ttft['no cache']) * 1e3:.1f} ms without: {speedup:.1f}x", file=out, flush=True)
        del model
    settings = {"models": args.models, "streams": args.streams, "steps": args.steps, "rounds": args.rounds,
                "turns": args.turns, "user_tokens": TURN_USER_TOKENS, "reply_tokens": TURN_REPLY_TOKENS,
                "lm_head": args.lm_head, "layers_2b": args.layers if "2b" in args.models else None,
                "llama_python": getattr(args, "llama_python", None),
                "shared_machine": bool(getattr(args, "shared", False))}
    command = "bitttt " + " ".join(getattr(args, "argv", []) or ["bench", "serve"])
    record = harness.record_of("serve", command, load_before, settings, cases)
    if args.json:
        harness.write_json(record, args.json)
        print(f"wrote {args.json}", file=out)
    return record
