"""Child processes for the launcher: start in their own process group, read, stop; tkinter-free.

The Tk thread never blocks here. ``ChildProcess.start`` returns at once; one
daemon thread per pipe reads lines into ``queue.Queue`` (thonny's design:
``event_generate`` across threads is unreliable, so the window polls the queue
with ``after``). A waiter thread posts the exit after both pipes close. ``stop``
runs the DESIGN §6 sequence on its own thread: write ``STOP``, wait, terminate
the process group, kill it, posting a ``stage`` message at each step.

Queue items are ``Output`` records: kind ``line`` (stream, text), ``stage``
(text), or ``exit`` (code), always in that order for one child.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

IS_WINDOWS = os.name == "nt"
STOP_GRACE_S = 60.0   # a checkpoint save of a base model on a slow disk fits in this
TERM_GRACE_S = 10.0
KILL_WAIT_S = 5.0
PIPE_DRAIN_S = 2.0    # after exit, how long readers may still drain (a grandchild may hold a pipe)


@dataclass
class Output:
    kind: str            # "line", "stage", "exit"
    text: str = ""
    stream: str = ""     # "stdout" / "stderr" for lines
    code: int | None = None
    source: str = ""     # the ChildProcess name ("train", "chat")


class ChildProcess:
    """One ``bitttt`` child. ``argv`` is run as is (no shell); output goes to ``out``."""

    def __init__(self, argv: list[str], out: queue.Queue, *, name: str = "train", cwd=None, env=None,
                 run_dir: str | os.PathLike | None = None, stdin: bool = False):
        self.argv = list(argv)
        self.out = out
        self.name = name
        self.cwd = cwd
        self.env = env
        self.run_dir = Path(run_dir) if run_dir else None
        self.want_stdin = stdin
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.stage = "idle"           # idle, running, stopping, terminating, killing, exited
        self._stop_thread: threading.Thread | None = None
        self._stdin_lock = threading.Lock()
        self._exited = threading.Event()

    # -- start -------------------------------------------------------------------------
    def start(self) -> "ChildProcess":
        """Start the child; raises OSError (e.g. FileNotFoundError) if it cannot be started."""
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONIOENCODING", "utf-8")
        kwargs = {}
        if IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True   # own session and process group: killpg reaches its workers
        self.proc = subprocess.Popen(
            self.argv, cwd=self.cwd, env=env,
            stdin=subprocess.PIPE if self.want_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        self.stage = "running"
        readers = [threading.Thread(target=self._read, args=(self.proc.stdout, "stdout"), daemon=True,
                                    name=f"{self.name}-stdout"),
                   threading.Thread(target=self._read, args=(self.proc.stderr, "stderr"), daemon=True,
                                    name=f"{self.name}-stderr")]
        for t in readers:
            t.start()
        threading.Thread(target=self._wait, args=(readers,), daemon=True, name=f"{self.name}-wait").start()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and not self._exited.is_set()

    def _read(self, pipe, stream: str):
        try:
            for line in pipe:
                self.out.put(Output("line", line.rstrip("\r\n"), stream, source=self.name))
        except (OSError, ValueError):
            pass   # pipe closed under us (kill): the exit record follows

    def _wait(self, readers):
        code = self.proc.wait()
        deadline = time.monotonic() + PIPE_DRAIN_S
        for t in readers:
            t.join(max(0.0, deadline - time.monotonic()))
        self.returncode = code
        self.stage = "exited"
        self._exited.set()
        self.out.put(Output("exit", code=code, source=self.name))

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the exit record was posted (tests, shutdown); the exit code or None."""
        self._exited.wait(timeout)
        return self.returncode

    # -- stdin (chat) --------------------------------------------------------------------
    def send(self, obj: dict) -> bool:
        """Write one JSON request line to the child's stdin; False if it is gone."""
        if not self.proc or not self.proc.stdin or not self.running():
            return False
        try:
            with self._stdin_lock:
                self.proc.stdin.write(json.dumps(obj) + "\n")
                self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    # -- stop ----------------------------------------------------------------------------
    def stop(self, grace_s: float = STOP_GRACE_S, term_s: float = TERM_GRACE_S,
             kill_s: float = KILL_WAIT_S, write_stop_file: bool = True) -> None:
        """Start the stop sequence on a thread (returns at once; a second call is ignored)."""
        if not self.running() or (self._stop_thread and self._stop_thread.is_alive()):
            return
        self._stop_thread = threading.Thread(target=self._stop_sequence, args=(grace_s, term_s, kill_s, write_stop_file),
                                             daemon=True, name=f"{self.name}-stop")
        self._stop_thread.start()

    def _stage(self, stage: str, text: str):
        self.stage = stage
        self.out.put(Output("stage", text, source=self.name))

    def _stop_sequence(self, grace_s, term_s, kill_s, write_stop_file):
        if write_stop_file and self.run_dir is not None:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "STOP").write_text("stop requested by bitttt-gui\n", encoding="utf-8")
                self._stage("stopping", f"Stop requested: wrote {self.run_dir / 'STOP'}; waiting up to "
                                        f"{grace_s:g} s for the trainer to save a checkpoint and exit…")
            except OSError as e:
                self._stage("stopping", f"Could not write the STOP file ({e}); terminating instead.")
                grace_s = 0
        if self._exited.wait(grace_s):
            return
        self._stage("terminating", f"No exit after {grace_s:g} s: sending SIGTERM to the process group…"
                    if not IS_WINDOWS else "No exit: sending CTRL+BREAK, then terminating…")
        self._signal_group(terminate=True)
        if self._exited.wait(term_s):
            return
        self._stage("killing", f"Still running after {term_s:g} s: killing the process group.")
        self._signal_group(terminate=False)
        if not self._exited.wait(kill_s):
            self._stage("killing", "The process did not go away after SIGKILL; it may be stuck in the kernel.")

    def _signal_group(self, terminate: bool):
        p = self.proc
        if p is None or p.poll() is not None and self._exited.is_set():
            return
        try:
            if IS_WINDOWS:
                if terminate:
                    p.send_signal(signal.CTRL_BREAK_EVENT)
                else:
                    subprocess.run(["taskkill", "/F", "/T", "/PID", str(p.pid)], capture_output=True)
            else:
                os.killpg(p.pid, signal.SIGTERM if terminate else signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def kill_now(self):
        """Kill the group without ceremony (window closing after the user agreed)."""
        self._signal_group(terminate=False)
