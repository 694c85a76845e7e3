"""Parse the trainer's event stream (DESIGN §6) and explain how a run ended; tkinter-free, never raises.

Event names, the one-line rendering of an event (``format_text``) and the time format are the
trainer's own, from the torch-free ``bitttt.events``: the Logs tab reads like ``bitttt train``.

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

from bitttt.errors import EXIT_DIVERGED, EXIT_MEANINGS  # torch-free: the trainer's own table

RAW = "raw"


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


def fmt_count(n) -> str:
    n = num(n)
    if n is None:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def explain_exit(code: int | None, error: dict | None = None, done: dict | None = None,
                 tail: list[str] | None = None, checkpoint: str | None = None) -> tuple[str, str]:
    """(severity, message) for a finished child: severity is ``ok``, ``warn`` or ``error``.

    ``error``/``done`` are the last such events seen; ``tail`` the last raw lines (traceback);
    ``checkpoint`` the last checkpoint the run saved (None: it saved none), so a message never
    promises a checkpoint that does not exist.
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
        kept = f"its last checkpoint is kept: {checkpoint}" if checkpoint else "it saved no checkpoint"
        return "warn", f"The trainer was ended by signal {-code}; {kept}."
    if code == EXIT_DIVERGED:
        return "error", ("Training diverged" + (f": {msg}" if msg else "") + ". "
                         + (hint or "Lower the learning rate or check the data; the last good checkpoint is kept."))
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
