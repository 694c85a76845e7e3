"""The trainer's event stream (docs/design.md §6): JSON lines or readable text on stdout, and
every event appended to the run's events.jsonl."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, TextIO


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (strict JSON parsers reject them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Emitter:
    """emit(name, **fields): adds "event" and "time", writes it out and to events.jsonl."""

    def __init__(self, log_format: str = "text", stream: TextIO | None = None, events_path: str | None = None) -> None:
        self.stream = stream or sys.stdout
        self.log_format = log_format
        self.tty = log_format == "text" and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._file = None
        self._bar_open = False
        if events_path:
            self.open_file(events_path)

    def open_file(self, events_path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(events_path)), exist_ok=True)
        self._file = open(events_path, "a", buffering=1)  # line-buffered: a kill loses no event

    def emit(self, name: str, **fields: Any) -> dict[str, Any]:
        event = _clean({"event": name, "time": round(time.time(), 3), **fields})
        line = json.dumps(event)
        if self._file is not None:
            self._file.write(line + "\n")
        if self.log_format == "jsonl":
            self.stream.write(line + "\n")
        else:
            self._write_text(event)
        self.stream.flush()
        return event

    def close(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- text ---------------------------------------------------------------------------

    def _write_text(self, e: dict[str, Any]) -> None:
        name = e["event"]
        if name == "step" and self.tty:  # one progress bar line, redrawn in place
            self.stream.write("\r" + self._bar(e) + "\033[K")
            self._bar_open = True
            return
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        self.stream.write(format_text(e) + "\n")

    @staticmethod
    def _bar(e: dict[str, Any], width: int = 24) -> str:
        frac = e["step"] / max(e["total_steps"], 1)
        filled = int(frac * width)
        return (f"[{'#' * filled}{'.' * (width - filled)}] {e['step']}/{e['total_steps']} "
                f"loss {e['loss']:.4f} | {e['tokens_per_s']:,.0f} tok/s | ETA {_fmt_time(e.get('eta_s'))}")


def format_text(e: dict[str, Any]) -> str:
    """One readable line per event."""
    name = e["event"]
    if name == "start":
        cfg = e.get("config", {})
        return (f"start: {e['run_dir']} | {e['n_params'] / 1e6:.2f}M params | {cfg.get('mixer', '?')} "
                f"{'ternary' if cfg.get('ternary', True) else 'full precision'} | device {e['device']} | "
                f"{e['total_steps']} steps")
    if name == "step":
        return (f"step {e['step']}/{e['total_steps']} | loss {e['loss']:.4f} | lr {e['lr']:.2e} | "
                f"grad {e['grad_norm']:.2f} | {e['tokens_per_s']:,.0f} tok/s | ETA {_fmt_time(e.get('eta_s'))}")
    if name == "eval":
        return f"eval  step {e['step']} | val loss {e['val_loss']:.4f} | {e['val_bpb']:.3f} bits/byte"
    if name == "checkpoint":
        return f"saved step {e['step']} -> {e['path']}"
    if name == "sample":
        return f"sample step {e['step']}: {e['prompt']!r} -> {e['text']!r}"
    if name == "warning":
        return f"warning: {e['message']}"
    if name == "error":
        return f"error ({e['kind']}): {e['message']}" + (f" (hint: {e['hint']})" if e.get("hint") else "")
    if name == "done":
        return f"done: {e['reason']} at step {e['step']}" + (f"; checkpoint {e['path']}" if e.get("path") else "")
    return json.dumps(e)
