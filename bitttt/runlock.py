"""The run's lock file: the one process that trains in a run directory (docs/design.md §5).

torch-free, so the launcher reads it with the same code the trainer writes it with. The file
holds the trainer's pid, its start time as the OS reports it and its host name: a pid alone can
be reused by another process after a crash, the pair cannot, and a pid means nothing on
another machine.

One writer per run: `acquire` makes this process the run's trainer, or raises `RunLocked`
naming the one that is. The check and the write happen under an flock of the run directory
(held for milliseconds, released by the kernel if the process dies), and the record is written
to a temporary file renamed over the lock, so two trainers can never both win and a reader
never sees half a record. Who owns a run (`live_owner`):
- a lock written on this host, while its process lives (same pid and start time);
- a lock written on another host, always: its process cannot be checked from here. It goes
  away when that trainer ends; after a crash there, delete the file by hand.
A lock whose process is gone (or an unreadable one) is stale: the next trainer replaces it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from bitttt.errors import ConfigError

LOCK_FILE = "trainer.lock"
_MUTEX_FILE = ".trainer.lock.mutex"  # only where flock is missing (Windows)
_MUTEX_STALE_S = 10.0  # such a mutex file older than this was left by a killed process


class RunLocked(ConfigError):
    """Another live process trains in the run directory (exit code 2)."""

    def __init__(self, run_dir: str | os.PathLike, owner: dict) -> None:
        super().__init__(f"{run_dir}: another trainer ({describe(owner)}) is training this run; not touching it",
                         hint="wait for it to end or stop it (create the file STOP in the run directory), "
                              "or use another --run-dir")
        self.owner = owner


def this_host() -> str:
    return socket.gethostname()


def describe(owner: dict) -> str:
    """'pid 123', or 'pid 123 on host h' for another machine's trainer."""
    host = owner.get("host")
    return f"pid {owner.get('pid')}" + (f" on host {host}" if host and host != this_host() else "")


def read_lock(run_dir: str | os.PathLike) -> dict | None:
    """The lock's record ({"pid", "create_time", "host", "argv"}), or None (no lock, or unreadable)."""
    try:
        d = json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("pid"), int) and not isinstance(d["pid"], bool) else None


def _process_matches(lock: dict) -> bool:
    """Whether the lock's pid on this host is still the process that wrote it."""
    try:
        p = psutil.Process(lock["pid"])
        alive = p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        same = abs(p.create_time() - float(lock.get("create_time", 0))) < 1.0
    except (psutil.Error, OSError, TypeError, ValueError, OverflowError):
        return False
    return alive and same


def _on_this_host(lock: dict) -> bool:
    return lock.get("host") in (None, this_host())  # locks from before the host field: this host's


def live_trainer(run_dir: str | os.PathLike) -> dict | None:
    """The lock's record if its process runs on this host and is still the one that wrote it, else
    None: the trainer a launcher can follow and signal."""
    lock = read_lock(run_dir)
    return lock if lock is not None and _on_this_host(lock) and _process_matches(lock) else None


def live_owner(run_dir: str | os.PathLike) -> dict | None:
    """The record of the process that owns the run now (module docstring), or None if nobody does:
    a run with an owner must not be trained, deleted or replaced by anyone else."""
    lock = read_lock(run_dir)
    if lock is None:
        return None
    if not _on_this_host(lock):
        return lock
    return lock if _process_matches(lock) else None


def _is_me(lock: dict) -> bool:
    return lock.get("pid") == os.getpid() and _on_this_host(lock)


@contextlib.contextmanager
def _run_dir_mutex(run_dir: Path) -> Iterator[None]:
    """Serializes acquire and release between processes (an flock on the folder itself)."""
    try:
        import fcntl
    except ImportError:  # Windows: an O_EXCL file, taken over when a killed process left it
        with _mutex_file(run_dir / _MUTEX_FILE):
            yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def _mutex_file(path: Path) -> Iterator[None]:
    deadline = time.monotonic() + 2 * _MUTEX_STALE_S
    while True:
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > _MUTEX_STALE_S or time.monotonic() > deadline:
                    path.unlink()
            time.sleep(0.01)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def acquire(run_dir: str | os.PathLike, argv: list[str]) -> Path:
    """Makes this process the run's trainer; the run directory must exist. Raises RunLocked (and
    changes nothing) while another live process owns it; a stale lock is replaced."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    me = psutil.Process()
    with _run_dir_mutex(run_dir):
        owner = live_owner(run_dir)
        if owner is not None and not _is_me(owner):
            raise RunLocked(run_dir, owner)
        record = {"pid": me.pid, "create_time": me.create_time(), "host": this_host(), "argv": list(argv)}
        tmp = run_dir / f".{LOCK_FILE}.{me.pid}"
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, path)
    return path


def release(run_dir: str | os.PathLike) -> None:
    """Removes the lock if it is this process's (never another trainer's)."""
    run_dir = Path(run_dir)
    try:
        with _run_dir_mutex(run_dir):
            lock = read_lock(run_dir)
            if lock is not None and _is_me(lock):
                (run_dir / LOCK_FILE).unlink(missing_ok=True)
    except OSError:  # the folder is gone
        pass


# The names before one-writer-per-run (the launcher's fake trainer uses them).
write_lock = acquire
remove_lock = release
