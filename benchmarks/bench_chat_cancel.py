"""How fast `{"op": "cancel"}` ends a streaming reply of `bitttt chat --protocol jsonl`.

Starts the real server on a model folder (default: a tiny random 2-layer model in a temporary
folder), then N times: a long generate, wait for a few tokens, send cancel and time until the
`done` event arrives (the client's view: pipe both ways included). Prints the median, the
spread and the time per token, for comparison (a cancel is checked between tokens).

    python benchmarks/bench_chat_cancel.py [--model DIR] [--trials 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def tiny_model(path: str) -> str:
    import torch

    from bitttt.checkpoint import write_folder
    from bitttt.model import BitTTTConfig, BitTTTForCausalLM
    from bitttt.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    return write_folder(path, BitTTTForCausalLM(BitTTTConfig(n_layer=2, n_embd=64, n_head=2, mini_batch=8)),
                        ByteTokenizer(), {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    model = args.model or tiny_model(os.path.join(tempfile.mkdtemp(), "tiny"))
    proc = subprocess.Popen([sys.executable, "-m", "bitttt", "chat", "--model", model, "--protocol", "jsonl",
                             "--format", "plain"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})

    def send(req):
        proc.stdin.write(json.dumps(req) + "\n")
        proc.stdin.flush()

    def event():
        return json.loads(proc.stdout.readline())

    assert event()["event"] == "ready"
    latencies, per_token = [], []
    while len(latencies) < args.trials:
        send({"op": "generate", "prompt": "go", "max_new_tokens": 5000, "stop": []})
        first, got = None, []
        while len(got) < 5 and (not got or got[-1]["event"] == "token"):
            got.append(event())
            first = first or time.perf_counter()
        if got[-1]["event"] != "token":   # the reply ended by itself (end-of-text): try again
            continue
        t_first_five = time.perf_counter() - first
        t0 = time.perf_counter()
        send({"op": "cancel"})
        while (ev := event())["event"] != "done":
            pass
        latencies.append(time.perf_counter() - t0)
        per_token.append(t_first_five / 4)
        assert ev["cancelled"] and ev["n_tokens"] < 5000
    send({"op": "stop"})
    proc.wait(30)
    ms = sorted(x * 1000 for x in latencies)
    print(f"cancel -> done over {args.trials} cancels: median {statistics.median(ms):.2f} ms, "
          f"min {ms[0]:.2f}, max {ms[-1]:.2f}; time per token {statistics.median(per_token) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
