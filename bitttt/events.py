"""The trainer's event stream (docs/design.md §6): JSON lines or readable text on stdout, and
every event appended to the run's events.jsonl.

Torch-free, so the launcher can share the event names and the formatter. `format_text` never
raises: a field that is missing, None, NaN or of an odd type is shown as "?".
If stdout goes away (the launcher crashed), the Emitter keeps writing events.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, TextIO

# Event names, and the values of the fields that take one of a few (design §6).
START, STEP, EVAL, CHECKPOINT, SAMPLE = "start", "step", "eval", "checkpoint", "sample"
TERNARY, WARNING, ERROR, DONE = "ternary", "warning", "error", "done"
EVENTS = (START, STEP, EVAL, CHECKPOINT, SAMPLE, TERNARY, WARNING, ERROR, DONE)
ERROR_KINDS = ("oom", "data", "config", "diverged", "exception")
DONE_REASONS = ("completed", "stopped", "error")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (strict JSON parsers reject them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------
# Formatting: never raises
# ---------------------------------------------------------------------------------------


def _num(e: dict[str, Any], key: str, spec: str) -> str:
    """e[key] formatted with spec, or "?" when it is missing, None, NaN/inf or not a number."""
    v = e.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "?"
    return format(v, spec)


def _str(e: dict[str, Any], key: str) -> str:
    v = e.get(key)
    return "?" if v is None else str(v)


def fmt_time(seconds: Any) -> str:
    """h:mm:ss or m:ss; "?" for anything that is not a finite, non-negative number."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds < 0:
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _progress(e: dict[str, Any]) -> str:
    return f"{_str(e, 'step')}/{_str(e, 'total_steps')}"


def _format_ternary(e: dict[str, Any]) -> str:
    """`ternary step 100 | zeros 34.1% | flipped 2.3% (most: down 4.0%)`: all groups weighted alike."""
    groups = e.get("groups") or {}
    if not groups:
        return f"ternary step {_str(e, 'step')}: no ternary layers"
    zeros = sum(g["zero_frac"] for g in groups.values()) / len(groups)
    flips = sum(g["flip_frac"] for g in groups.values()) / len(groups)
    worst = max(groups, key=lambda k: groups[k]["flip_frac"])
    return (f"ternary step {_str(e, 'step')} | zeros {zeros:.1%} | flipped {flips:.1%} "
            f"(most: {worst} {groups[worst]['flip_frac']:.1%})")


def _format(e: dict[str, Any]) -> str:
    name = e.get("event")
    if name == START:
        cfg = e.get("config") if isinstance(e.get("config"), dict) else {}
        params = e.get("n_params")
        size = f"{params / 1e6:.2f}M" if isinstance(params, (int, float)) and not isinstance(params, bool) else "?"
        return (f"start: {_str(e, 'run_dir')} | {size} params | {cfg.get('mixer', '?')} "
                f"{'ternary' if cfg.get('ternary', True) else 'full precision'} | device {_str(e, 'device')} | "
                f"{_str(e, 'total_steps')} steps")
    if name == STEP:
        return (f"step {_progress(e)} | loss {_num(e, 'loss', '.4f')} | lr {_num(e, 'lr', '.2e')} | "
                f"grad {_num(e, 'grad_norm', '.2f')} | {_num(e, 'tokens_per_s', ',.0f')} tok/s | "
                f"ETA {fmt_time(e.get('eta_s'))}")
    if name == EVAL:
        return (f"eval  step {_str(e, 'step')} | val loss {_num(e, 'val_loss', '.4f')} | "
                f"{_num(e, 'val_bpb', '.3f')} bits/byte | {_num(e, 'val_tokens', ',d')} tokens")
    if name == CHECKPOINT:
        return f"saved step {_str(e, 'step')} -> {_str(e, 'path')}"
    if name == TERNARY:
        return _format_ternary(e)
    if name == SAMPLE:
        return f"sample step {_str(e, 'step')}: {e.get('prompt', '')!r} -> {e.get('text', '')!r}"
    if name == WARNING:
        return f"warning: {_str(e, 'message')}"
    if name == ERROR:
        return f"error ({_str(e, 'kind')}): {_str(e, 'message')}" + (f" (hint: {e['hint']})" if e.get("hint") else "")
    if name == DONE:
        return f"done: {_str(e, 'reason')} at step {_str(e, 'step')}" + (
            f"; checkpoint {e['path']}" if e.get("path") else "")
    return json.dumps(e, default=str)


def format_text(e: Any) -> str:
    """One readable line per event; any input gives a line, nothing raises."""
    if not isinstance(e, dict):
        return repr(e)[:500]
    try:
        return _format(e)
    except Exception:  # a hostile field (odd types, huge nesting): rendering must never fail
        return repr(e)[:500]


def progress_bar(e: dict[str, Any], width: int = 24) -> str:
    """The terminal's one-line progress bar for a step event."""
    step, total = e.get("step"), e.get("total_steps")
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (step, total))
    filled = max(0, min(width, int(step / max(total, 1) * width))) if ok else 0
    return (f"[{'#' * filled}{'.' * (width - filled)}] {_progress(e)} loss {_num(e, 'loss', '.4f')} | "
            f"{_num(e, 'tokens_per_s', ',.0f')} tok/s | ETA {fmt_time(e.get('eta_s'))}")


# ---------------------------------------------------------------------------------------
# The Emitter
# ---------------------------------------------------------------------------------------


def _silence(stream: TextIO) -> None:
    """Points a dead stream's file descriptor at /dev/null, so that later writes and the
    interpreter's final flush succeed instead of raising (or exiting 120)."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, stream.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):  # no file descriptor (a StringIO): nothing to do
        pass


def error_line(message: Any, hint: Any = None) -> str:
    """How bitttt writes an error on a terminal (stderr), whichever part found it."""
    return f"bitttt: error: {message}" + (f" (hint: {hint})" if hint else "")


def safe_print(text: str, stream: TextIO | None = None) -> bool:
    """Writes a line to stream (stderr by default); False, and the stream silenced, if it is gone."""
    stream = stream or sys.stderr
    try:
        stream.write(text + "\n")
        stream.flush()
        return True
    except (OSError, ValueError):  # a broken pipe, or closed
        _silence(stream)
        return False


class Emitter:
    """emit(name, **fields): adds "event" and "time", writes it out and to events.jsonl.

    events.jsonl is written first and line-buffered: a kill loses no event. If stdout breaks
    (the reader went away), the Emitter stops writing to it and goes on with the file."""

    def __init__(self, log_format: str = "text", stream: TextIO | None = None, events_path: str | None = None) -> None:
        self.stream = stream or sys.stdout
        self.log_format = log_format
        self.tty = log_format == "text" and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.stream_ok = True
        self._file = None
        self._bar_open = False
        if events_path:
            self.open_file(events_path)

    def open_file(self, events_path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(events_path)), exist_ok=True)
        self._file = open(events_path, "a", buffering=1)  # line-buffered: a kill loses no event

    def emit(self, name: str, **fields: Any) -> dict[str, Any]:
        event = _clean({"event": name, "time": round(time.time(), 3), **fields})
        line = json.dumps(event, default=str)
        if self._file is not None:
            self._file.write(line + "\n")
        if self.log_format == "text" and name == ERROR:
            # on a terminal every error reads the same, the CLI's form on stderr (design §6)
            if self._bar_open and self.stream_ok:
                self._write_out("\n")
                self._bar_open = False
            safe_print(error_line(event.get("message"), event.get("hint")))
        elif self.stream_ok:
            self._write_out(line + "\n" if self.log_format == "jsonl" else self._text(event))
        return event

    def _write_out(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # broken pipe or closed: the reader is gone, the run goes on
            self.stream_ok = False
            _silence(self.stream)

    def close(self) -> None:
        if self._bar_open and self.stream_ok:
            self._write_out("\n")
        self._bar_open = False
        if self._file is not None:
            self._file.close()
            self._file = None

    def _text(self, e: dict[str, Any]) -> str:
        if e["event"] == STEP and self.tty:  # one progress bar line, redrawn in place
            self._bar_open = True
            return "\r" + progress_bar(e) + "\033[K"
        prefix = "\n" if self._bar_open else ""
        self._bar_open = False
        return prefix + format_text(e) + "\n"
