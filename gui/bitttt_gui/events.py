"""Parse and render the trainer's event stream (DESIGN §6); tkinter-free, never raises.

``parse_line`` turns one line of a child's output into a record:
an event dict (``{"event": "step", ...}``) or a raw-line record
``{"event": "raw", "text": ...}`` for anything that is not a JSON object
with a string ``"event"`` (library warnings, tracebacks, garbage).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator

RAW = "raw"

EXIT_MEANINGS = {
    0: "completed or stopped on request",
    1: "unexpected exception",
    2: "bad arguments or config",
    3: "data error",
    4: "out of memory",
}


def parse_line(line: str | bytes) -> dict:
    """One output line → an event dict, or ``{"event": "raw", "text": line}``. Never raises."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    text = line.rstrip("\r\n")
    stripped = text.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        try:
            obj = json.loads(stripped)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("event"), str) and obj["event"] != RAW:
            return obj
    return {"event": RAW, "text": text}


def read_events(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the events of an ``events.jsonl`` file, skipping raw lines; a missing file yields nothing."""
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return
    with f:
        for line in f:
            ev = parse_line(line)
            if ev["event"] != RAW:
                yield ev


def num(value, default=None):
    """``value`` as a finite-or-inf float, or ``default`` if it is not a number (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    if math.isnan(value):
        return default
    return float(value)


def fmt_bytes(n) -> str:
    n = num(n)
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "?"


def fmt_duration(seconds) -> str:
    s = num(seconds)
    if s is None or s < 0 or math.isinf(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def fmt_count(n) -> str:
    n = num(n)
    if n is None:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _g(ev, key, spec="g", default="?"):
    v = num(ev.get(key))
    if v is None:
        return default
    return format(v, spec)


def format_event(ev: dict) -> str:
    """A readable one-line rendering of a record from ``parse_line`` (raw lines as they are)."""
    kind = ev.get("event")
    try:
        if kind == RAW:
            return str(ev.get("text", ""))
        if kind == "start":
            return (f"start: run {ev.get('run_dir', '?')} on {ev.get('device', '?')}, "
                    f"{fmt_count(ev.get('n_params'))} parameters, {ev.get('total_steps', '?')} steps")
        if kind == "step":
            return (f"step {ev.get('step', '?')}/{ev.get('total_steps', '?')}  loss {_g(ev, 'loss', '.4f')}"
                    f"  lr {_g(ev, 'lr', '.2e')}  grad {_g(ev, 'grad_norm', '.3f')}"
                    f"  {_g(ev, 'tokens_per_s', ',.0f')} tok/s  mem {fmt_bytes(ev.get('mem_bytes'))}"
                    f"  eta {fmt_duration(ev.get('eta_s'))}")
        if kind == "eval":
            return f"eval @ step {ev.get('step', '?')}: val loss {_g(ev, 'val_loss', '.4f')}, {_g(ev, 'val_bpb', '.3f')} bits/byte"
        if kind == "checkpoint":
            return f"checkpoint @ step {ev.get('step', '?')}: {ev.get('path', '?')}"
        if kind == "sample":
            text = str(ev.get("text", "")).replace("\n", "⏎")
            return f"sample @ step {ev.get('step', '?')}: {ev.get('prompt', '')!s}→ {text}"
        if kind == "warning":
            return f"warning: {ev.get('message', '')}"
        if kind == "error":
            hint = ev.get("hint")
            return f"error ({ev.get('kind', '?')}): {ev.get('message', '')}" + (f" — hint: {hint}" if hint else "")
        if kind == "done":
            return f"done: {ev.get('reason', '?')} at step {ev.get('step', '?')}; last checkpoint {ev.get('path') or 'none'}"
        fields = ", ".join(f"{k}={v}" for k, v in ev.items() if k not in ("event", "time"))
        return f"{kind}: {fields}" if fields else str(kind)
    except Exception:  # a hostile field (huge nesting, odd types): never let rendering fail
        return repr(ev)[:500]


def explain_exit(code: int | None, error: dict | None = None, done: dict | None = None,
                 tail: list[str] | None = None) -> tuple[str, str]:
    """(severity, message) for a finished child: severity is ``ok``, ``warn`` or ``error``.

    ``error``/``done`` are the last such events seen; ``tail`` the last raw lines (traceback).
    """
    tail = [t for t in (tail or []) if t.strip()]
    hint = (error or {}).get("hint")
    msg = (error or {}).get("message")
    if code == 0:
        reason = (done or {}).get("reason", "completed")
        path = (done or {}).get("path")
        where = f"; last checkpoint: {path}" if path else ""
        if reason == "stopped":
            return "ok", f"Training stopped on request at step {(done or {}).get('step', '?')}{where}."
        return "ok", f"Training completed{where}."
    if code is None:
        return "error", "The trainer is gone and its exit code is unknown."
    if code < 0:
        return "warn", f"The trainer was ended by signal {-code}; the last saved checkpoint is kept."
    if code == 4:
        return "error", ("Out of memory" + (f": {msg}" if msg else "") + ". "
                         + (hint or "Try a smaller batch size or sequence length, or gradient accumulation."))
    if code in (2, 3):
        what = "Configuration error" if code == 2 else "Data error"
        detail = msg or (tail[-1] if tail else EXIT_MEANINGS[code])
        return "error", f"{what}: {detail}" + (f" — {hint}" if hint else "")
    if code == 1:
        last = "\n".join(tail[-3:])
        head = f"The trainer crashed: {msg}" if msg else "The trainer crashed (exit code 1)"
        return "error", head + (f". Last lines:\n{last}" if last else ".")
    last = "\n".join(tail[-3:])
    return "error", f"The trainer exited with code {code}" + (f". Last lines:\n{last}" if last else ".")
