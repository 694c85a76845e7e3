"""A synchronous publish/subscribe bus: how the launcher's tabs hear about runs without knowing each other.

Used from the Tk thread only. Topics and their arguments:

- ``train.started`` (run_dir: Path, argv: list[str])
- ``train.record`` (record: dict, stream: str) — every child line, parsed by ``events.parse_line``
- ``train.stage`` (text: str) — a stop-sequence stage
- ``train.exited`` (code: int|None, severity: str, message: str, run_dir: Path)
- ``memory`` (snapshot: memory.MemorySnapshot)
- ``open_curve`` (events_path: Path) · ``chat_with`` (model: Path) · ``resume`` (run_dir: Path, checkpoint: Path|None)
- ``status`` (severity: str, text: str) — a one-line message for the status bar
"""

from __future__ import annotations

import traceback
from collections import defaultdict


class Bus:
    def __init__(self):
        self._subs = defaultdict(list)

    def subscribe(self, topic: str, fn) -> None:
        self._subs[topic].append(fn)

    def publish(self, topic: str, *args) -> None:
        for fn in list(self._subs[topic]):
            try:
                fn(*args)
            except Exception:   # one broken panel must not stop the others (or the poll loop)
                traceback.print_exc()
