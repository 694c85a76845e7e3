"""Stop requests for a training run: a STOP file in the run directory, SIGINT or SIGTERM
(design §6). Torch-free, so the CLI installs the handlers before torch loads: a request is
honoured from the first moment of start-up to the last step.

The handlers only set a flag; the trainer looks at it between start-up phases, inside the
long start-up loops (tokenizing, BPE training) and after every step. Python runs signal
handlers in the main thread only, and BPE training reads its documents from a thread of the
`tokenizers` library while the main thread waits in Rust; so the signals also go to a wakeup
pipe (signal.set_wakeup_fd), which any thread can read.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

FILE_POLL_S = 0.25  # inside loops, the STOP file is looked at no more often than this
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def process_start_time() -> float:
    """When the OS started this process (before Python's own start-up), in Unix seconds."""
    import psutil

    return psutil.Process().create_time()


class StopRequested(Exception):
    """Raised by StopFlag.check: the run should end now, as stopped on request."""


class StopFlag:
    def __init__(self) -> None:
        self.stop_file: str | None = None
        self.signal: str | None = None  # the name of the signal received
        self._file_seen = False
        self._sigints = 0
        self._old: dict[int, Any] = {}
        self._old_wakeup: int | None = None
        self._pipe: tuple[int, int] | None = None
        self._next_poll = 0.0

    def install(self) -> None:
        """SIGINT/SIGTERM set the flag from now on (a second Ctrl-C interrupts at once).
        SIGPIPE is ignored: a reader that went away must not kill the run."""
        try:
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
            if hasattr(signal, "SIGPIPE"):
                self._old[signal.SIGPIPE] = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        except ValueError:  # not the main thread: the STOP file still works
            return
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._pipe = (r, w)
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)

    def watch(self, run_dir: str) -> None:
        """Looks for run_dir/STOP from now on. One older than this process is an earlier run's and
        is removed; a newer one is a request (a launcher's Stop pressed while this one started)."""
        self.stop_file = os.path.join(run_dir, "STOP")
        try:
            if os.stat(self.stop_file).st_mtime < process_start_time():
                os.remove(self.stop_file)
        except FileNotFoundError:
            pass

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._sigints += 1
            if self._sigints > 1:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signal.Signals(signum).name

    def _read_wakeup(self) -> None:
        """Signals seen by the C-level handler, before the main thread has run the Python one."""
        if self._pipe is None:
            return
        try:
            data = os.read(self._pipe[0], 64)
        except (BlockingIOError, OSError):
            return
        for signum in data:
            if signum in SIGNALS and self.signal is None:
                self.signal = signal.Signals(signum).name

    def requested(self) -> str | None:
        """Why the run should stop (a signal's name or "STOP file"), or None."""
        self._read_wakeup()
        if self.signal or self._file_seen:
            return self.signal or "STOP file"
        if self.stop_file and os.path.exists(self.stop_file):
            os.remove(self.stop_file)
            self._file_seen = True  # remembered: asked again, the answer stays
            return "STOP file"
        return None

    def check(self) -> None:
        """Raises StopRequested if a stop was asked for."""
        why = self.requested()
        if why:
            raise StopRequested(why)

    def poll(self) -> None:
        """check(), cheap enough to call per document from any thread: signals are seen at
        once, the file is looked at every FILE_POLL_S at most."""
        self._read_wakeup()
        if self.signal or self._file_seen or time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + FILE_POLL_S
            self.check()

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup if self._old_wakeup is not None else -1)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
