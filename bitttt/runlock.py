"""The run's lock file: which process is training in a run directory (docs/design.md §5).

torch-free, so the launcher reads it with the same code the trainer writes it with. The file
holds the trainer's pid and its start time as the OS reports it: a pid alone can be reused by
another process after a crash, the pair cannot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil

LOCK_FILE = "trainer.lock"


def write_lock(run_dir: str | os.PathLike, argv: list[str]) -> Path:
    """Record this process as the run's trainer (atomically: a reader never sees half a file)."""
    path = Path(run_dir) / LOCK_FILE
    me = psutil.Process()
    tmp = path.with_name(f".{LOCK_FILE}.{me.pid}")
    tmp.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time(), "argv": list(argv)}), encoding="utf-8")
    os.replace(tmp, path)
    return path


def remove_lock(run_dir: str | os.PathLike) -> None:
    """Remove the lock if it is this process's (never another trainer's)."""
    path = Path(run_dir) / LOCK_FILE
    lock = read_lock(run_dir)
    if lock is not None and lock.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def read_lock(run_dir: str | os.PathLike) -> dict | None:
    try:
        d = json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("pid"), int) else None


def live_trainer(run_dir: str | os.PathLike) -> dict | None:
    """The lock's record if its process is still the one that wrote it, else None (a stale lock)."""
    lock = read_lock(run_dir)
    if lock is None:
        return None
    try:
        p = psutil.Process(lock["pid"])
        alive = p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        same = abs(p.create_time() - float(lock.get("create_time", 0))) < 1.0
    except (psutil.Error, OSError, TypeError, ValueError):
        return None
    return lock if alive and same else None
