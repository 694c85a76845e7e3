"""A stand-in for ``python -m bitttt`` (train and chat) that speaks DESIGN §6 and §6b.

The launcher tests point ``BITTTT_GUI_CMD`` at this script. It accepts exactly the
launcher's flags (argparse exits 2 on anything else, like the real CLI), writes a
run folder with ``events.jsonl`` and atomic checkpoints, obeys ``STOP`` and SIGTERM,
and misbehaves on request through ``FAKE_BITTTT_MODE``:

ok · exit1 (error event + traceback, exit 1) · config (exit 2) · data (exit 3) ·
oom (exit 4) · crash (uncaught exception, no event) · hang (ignores STOP and SIGTERM) ·
hang_term (ignores STOP, obeys SIGTERM) · garbage (non-JSON and broken JSON lines) ·
serve_missing (``serve`` without its extra: the real CLI's error line, exit 2).
``FAKE_BITTTT_STEP_S`` sets the time per step (default 0.02 s).
"""

import argparse
import json
import math
import os
import queue
import resource
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

from bitttt.runlock import write_lock

PROCESS_START = psutil.Process().create_time()   # when the OS started us, before Python's start-up
MODE = os.environ.get("FAKE_BITTTT_MODE", "ok")
STEP_S = float(os.environ.get("FAKE_BITTTT_STEP_S", "0.02"))
_lock = threading.Lock()
_events_file = None


def emit(event, **fields):
    ev = {"event": event, "time": time.time(), **fields}
    line = json.dumps(ev)
    with _lock:
        print(line, flush=True)
        if _events_file is not None:
            _events_file.write(line + "\n")
            _events_file.flush()


def save(run_dir: Path, rel: str, step: int) -> Path:
    final = run_dir / rel
    tmp = run_dir / (rel.replace("/", "_") + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "model.safetensors").write_text("fake weights\n")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        import shutil
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def remove_stale_stop(stop_file: Path) -> None:
    """As the real trainer: a STOP older than this process is an earlier run's; a newer one (the
    launcher pressed Stop while we were starting) is a request."""
    try:
        if stop_file.stat().st_mtime < PROCESS_START:
            stop_file.unlink()
    except FileNotFoundError:
        pass


def train(argv):
    global _events_file
    p = argparse.ArgumentParser(prog="bitttt train")
    for flag in ("--preset", "--config", "--run-dir", "--resume", "--device", "--tokenizer", "--log-format",
                 "--mixer"):
        p.add_argument(flag)
    p.add_argument("--data", nargs="+")
    for flag in ("--steps", "--batch-size", "--seq-len", "--warmup", "--grad-accum", "--eval-every",
                 "--save-every", "--sample-every", "--seed", "--vocab-size", "--n-layer", "--n-embd",
                 "--n-head", "--mini-batch", "--log-every", "--nproc"):
        p.add_argument(flag, type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--ternary", action=argparse.BooleanOptionalAction, default=True)
    # The rest of the launcher's "More settings" (a resume sends every training value): accepted, unused.
    for flag in ("--min-lr", "--weight-decay", "--grad-clip"):
        p.add_argument(flag, type=float)
    for flag in ("--eval-tokens", "--keep-last", "--threads"):
        p.add_argument(flag, type=int)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction)
    p.add_argument("--sample-prompt")
    a = p.parse_args(argv)
    if a.log_format != "jsonl":
        p.error("the fake only speaks --log-format jsonl")
    run_dir = Path(a.run_dir or "runs/fake")
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_stop(run_dir / "STOP")
    (run_dir / "config.json").write_text(json.dumps({"model_type": "bitttt", "argv": argv}))
    _events_file = open(run_dir / "events.jsonl", "a", encoding="utf-8")
    write_lock(run_dir, ["bitttt", "train", *argv])   # the real trainer's lock file, by the same code
    total = a.steps or 500
    eval_every, save_every, sample_every = a.eval_every or 100, a.save_every or 250, a.sample_every or 250

    if MODE == "config":
        emit("error", kind="config", message=f"n_embd=130 is not a multiple of n_head=4 (in {run_dir/'config.json'})",
             hint="choose a hidden size divisible by the head count")
        sys.exit(2)
    if MODE == "data":
        path = (a.data or ["/nonexistent/corpus.txt"])[0]
        emit("error", kind="data", message=f"cannot read {path}: no such file", hint="pick an existing text file or folder")
        sys.exit(3)

    stop = threading.Event()
    if MODE == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())

    start_step = 0
    if a.resume:
        try:
            start_step = json.loads((Path(a.resume) / "trainer_state.json").read_text())["step"]
        except (OSError, ValueError, KeyError):
            start_step = 0
    # The real start event's config: the preset's values with the flags given on top (the launcher's
    # run-time estimate matches runs by them), and when the OS started this process.
    from bitttt.config import defaults
    config = defaults(a.preset or "tiny")
    config.update({k: v for k, v in vars(a).items() if v is not None and k in config})
    emit("start", run_dir=str(run_dir), config=config, n_params=1005264, device="cpu", total_steps=total, argv=argv,
         start_step=start_step, world_size=a.nproc or 1, process_start=PROCESS_START)
    t0 = time.time()
    last_ckpt = None
    for step in range(start_step + 1, total + 1):
        time.sleep(STEP_S)
        if MODE in ("hang", "hang_term") and step > 2:
            while True:               # stuck in a kernel / dataloader deadlock
                time.sleep(0.05)
                if MODE == "hang_term" and stop.is_set():
                    break
        if stop.is_set() or (MODE not in ("hang", "hang_term") and (run_dir / "STOP").exists()):
            last_ckpt = save(run_dir, f"checkpoints/step-{step - 1:06d}", step - 1)
            emit("checkpoint", step=step - 1, path=str(last_ckpt))
            emit("done", step=step - 1, reason="stopped", path=str(last_ckpt))
            (run_dir / "STOP").unlink(missing_ok=True)
            sys.exit(0)
        if MODE == "garbage" and step % 3 == 0:
            print("UserWarning: this is not JSON at all", flush=True)
            print('{"event": "step", "step": ', flush=True)          # cut in half
            print("[1, 2, 3]", flush=True)                            # JSON, not an object
            print('{"no_event_key": true}', flush=True)
            print("\x00\x01 binary-ish ŝţŕîñĝ", flush=True)
        if MODE == "oom" and step == 3:
            emit("error", kind="oom", message="CUDA out of memory. Tried to allocate 2.00 GiB",
                 hint="lower --batch-size or --seq-len, or raise --grad-accum")
            emit("done", step=step - 1, reason="error", path=None)
            sys.exit(4)
        if MODE == "exit1" and step == 3:
            print("Traceback (most recent call last):", file=sys.stderr)
            print('  File "bitttt/train.py", line 42, in train_step', file=sys.stderr)
            print("ZeroDivisionError: division by zero", file=sys.stderr, flush=True)
            emit("error", kind="exception", message="ZeroDivisionError: division by zero", hint=None)
            emit("done", step=step - 1, reason="error", path=None)
            sys.exit(1)
        if MODE == "crash" and step == 3:
            raise RuntimeError("fake trainer crashed in the middle of a step")
        elapsed = time.time() - t0
        loss = 5.5 * math.exp(-step / (total / 3)) + 1.0
        emit("step", step=step, total_steps=total, loss=loss, lr=(a.lr or 3e-3) * min(1.0, step / 10),
             grad_norm=1.0 / step, tokens_per_s=16 * 128 / STEP_S, elapsed_s=elapsed,
             eta_s=elapsed / (step - start_step) * (total - step),
             mem_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        if eval_every and step % eval_every == 0:
            emit("eval", step=step, val_loss=loss + 0.1, val_bpb=(loss + 0.1) / math.log(2), val_tokens=16384)
            # The real trainer reports its ternary codes at every evaluation (design §6 `ternary`).
            flips = 0.0 if step == eval_every else 0.05 / (step / eval_every)
            emit("ternary", step=step, groups={g: {"zero_frac": 0.3 + 0.01 * i, "flip_frac": flips * (i + 1),
                                                   "scale": 0.02 - 0.001 * i}
                                               for i, g in enumerate(("attn", "mlp"))})
        if sample_every and step % sample_every == 0:
            emit("sample", step=step, prompt="Once upon", text=" a time there was a fake model")
        if save_every and step % save_every == 0:
            last_ckpt = save(run_dir, f"checkpoints/step-{step:06d}", step)
            emit("checkpoint", step=step, path=str(last_ckpt))
    final = save(run_dir, "final", total)
    emit("done", step=total, reason="completed", path=str(final))


def chat(argv):
    """The chat server of DESIGN §6 as a script: the real protocol, events and error kinds, over a
    'model' that echoes the prompt. tests/gui/test_chat_protocol_contract.py runs one script
    against this and the real server."""
    p = argparse.ArgumentParser(prog="bitttt chat")
    p.add_argument("--model", required=True)
    p.add_argument("--protocol", choices=["text", "jsonl"], default="text")
    p.add_argument("--state-dir")
    a = p.parse_args(argv)
    if not Path(a.model).exists():
        emit("error", kind="config", message=f"no model at {a.model}", hint="pick a run folder or an export")
        sys.exit(2)
    token_s = float(os.environ.get("FAKE_CHAT_TOKEN_S", "0.01"))
    lines = queue.Queue()

    def read():
        for line in sys.stdin:
            if line.strip():
                lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    state = {"turns": 0}
    pending = []

    def memory():
        d = 0.01 * state["turns"]
        return {"layers": [0, 1], "drift": [d, d], "turn_change": [0.01 if d else 0.0] * 2}

    def error(message, kind="request", hint=None):
        emit("error", kind=kind, message=message, hint=hint)

    def generate(req):
        sampling = {k: v for k, v in req.items() if k not in ("op", "prompt", "messages")}
        unknown = set(sampling) - set(SAMPLING)
        bad = [k for k, v in sampling.items() if k in SAMPLING and v is not None
               and (isinstance(v, bool) or not isinstance(v, SAMPLING[k]))]
        if unknown or bad or not isinstance(req.get("prompt", req.get("messages")), (str, list)):
            return error(f"bad generate request: {sorted(unknown) + bad}")
        state["turns"] += 1
        words = f"(turn {state['turns']}) You said: {req.get('prompt', '')}. The fake model keeps talking".split()
        words += ["and", "talking"] * 200
        n, cancelled, t0 = 0, False, time.time()
        for w in words[: int(req.get("max_new_tokens", 200))]:
            while not lines.empty():
                line = lines.get()
                if op_of(line) == "cancel":
                    cancelled = True
                    break
                pending.append(line)
                if line is None or op_of(line) == "stop":
                    cancelled = True
                    break
            if cancelled:
                break
            n += 1
            emit("token", text=w + " ", n_tokens=n, tokens_per_s=n / max(time.time() - t0, 1e-6))
            time.sleep(token_s)
        emit("done", n_tokens=n, tokens_per_s=n / max(time.time() - t0, 1e-6), cancelled=cancelled, memory=memory())

    def path_of(req):
        path = req.get("path")
        if not isinstance(path, str) or not path:
            return error("path must be a non-empty string", kind="state")
        return Path(path).resolve()

    emit("ready", chat_format=False, model=str(Path(a.model).resolve()), memory=memory())
    while True:
        line = pending.pop(0) if pending else lines.get()
        if line is None:
            return
        try:
            req = json.loads(line)
        except ValueError:
            error(f"not JSON: {line.strip()[:80]!r}")
            continue
        op = req.get("op") if isinstance(req, dict) else None
        if op == "generate":
            generate(req)
        elif op == "stop":
            emit("bye")
            return
        elif op == "cancel":
            emit("ok", op="cancel", cancelled=False)
        elif op == "reset":
            state["turns"] = 0
            emit("ok", op="reset", memory=memory())
        elif op == "save_state":
            path = path_of(req)
            if path is None:
                continue
            if path.exists() and not is_fake_memory(path):
                error(f"{path}: exists and is not a chat memory file; not overwriting it", kind="state")
                continue
            path.write_text(json.dumps({"fake_chat_memory": 1, **state}))
            emit("ok", op="save_state", path=str(path))
        elif op == "load_state":
            path = path_of(req)
            if path is None:
                continue
            if not is_fake_memory(path):
                error(f"{path}: not a chat memory file", kind="state")
                continue
            state["turns"] = json.loads(path.read_text())["turns"]
            emit("ok", op="load_state", path=str(path), memory=memory())
        else:
            error(f"unknown op {op!r}" if isinstance(req, dict) else "expected a JSON object")


SAMPLING = {"max_new_tokens": int, "temperature": (int, float), "top_k": int, "top_p": (int, float),
            "repetition_penalty": (int, float), "no_repeat_ngram": int, "seed": int, "stop": (str, list)}


def op_of(line):
    try:
        req = json.loads(line) if line else None
    except ValueError:
        return None
    return req.get("op") if isinstance(req, dict) else None


def is_fake_memory(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("fake_chat_memory") == 1
    except (OSError, ValueError, AttributeError):
        return False


def serve(argv):
    """``bitttt serve``'s launcher-facing behaviour: a line on stderr, then /health and /v1/models
    on the port after a short start-up; SIGTERM ends it with 0 (uvicorn's graceful shutdown)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    p = argparse.ArgumentParser(prog="bitttt serve")
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name")
    args = p.parse_args(argv)
    if MODE == "serve_missing":
        print("bitttt: error: serve: fastapi, uvicorn not installed (hint: pip install 'bitttt[serve]')",
              file=sys.stderr, flush=True)
        sys.exit(2)
    name = args.model_name or Path(args.model).name
    print(f"bitttt serve: {name} at http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    time.sleep(float(os.environ.get("FAKE_SERVE_START_S", "0.3")))   # "loading the model"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = {"/health": {"status": "ok", "model": name},
                    "/v1/models": {"object": "list", "data": [{"id": name, "object": "model"}]}}.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body or {"error": {"message": "not found"}}).encode())

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    cmd, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if cmd == "train":
        train(rest)
    elif cmd == "chat":
        chat(rest)
    elif cmd == "serve":
        serve(rest)
    else:
        print(f"fake bitttt: unknown command {cmd!r}", file=sys.stderr)
        sys.exit(2)
