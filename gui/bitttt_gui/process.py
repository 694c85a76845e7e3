"""Child processes for the launcher: start in their own process group, read, stop; tkinter-free.

The Tk thread never blocks here. ``ChildProcess.start`` returns at once; one
daemon thread per pipe reads lines into ``queue.Queue`` (thonny's design:
``event_generate`` across threads is unreliable, so the window polls the queue
with ``after``). A waiter thread posts the exit after both pipes close. ``stop``
runs the DESIGN §6 sequence on its own thread: write ``STOP``, wait, terminate
the process group, kill it, posting a ``stage`` message at each step.

Queue items are ``Output`` records: kind ``line`` (stream, text), ``stage``
(text), or ``exit`` (code), always in that order for one child.

``AttachedRun`` gives the same interface for a trainer this window did not start
(one left running by a launcher that was closed or crashed, or started from a
terminal): it follows the run's ``events.jsonl`` and stops it the same way.
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

from bitttt.runlock import describe, live_owner, live_trainer, this_host

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


class _Stoppable:
    """The DESIGN §6 stop sequence (STOP file, then SIGTERM, then SIGKILL), run on its own thread.
    Subclasses provide ``running()``, ``_exited`` and ``_signal_group(terminate)``."""

    out: queue.Queue
    name: str
    run_dir: Path | None
    stage: str
    _exited: threading.Event
    _stop_thread: threading.Thread | None = None

    def running(self) -> bool:
        raise NotImplementedError

    def _signal_group(self, terminate: bool):
        raise NotImplementedError

    def _is_ours(self, owner: dict) -> bool:
        """Whether the run's lock record names the process this object started or attached to."""
        raise NotImplementedError

    def _foreign_owner(self) -> dict | None:
        """The run's live owner when it is another process than ours: a STOP file would stop it."""
        owner = live_owner(self.run_dir) if self.run_dir is not None else None
        return owner if owner is not None and not self._is_ours(owner) else None

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
        foreign = self._foreign_owner()
        if foreign is not None:   # STOP would reach that trainer: only our own process is stopped
            self._stage("stopping", f"{self.run_dir.name} is trained by another process ({describe(foreign)}), "
                                    "not by this window's: no STOP file; stopping this window's process only.")
            write_stop_file, grace_s = False, 0
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

    def kill_now(self):
        """Kill the group without ceremony (window closing after the user agreed)."""
        self._signal_group(terminate=False)


class ChildProcess(_Stoppable):
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

    # -- stop (the sequence is _Stoppable's) -----------------------------------------------
    def _is_ours(self, owner: dict) -> bool:
        """Our child, or a process under it (rank 0 of a --nproc job holds the lock)."""
        if self.proc is None or owner.get("host") not in (None, this_host()):
            return False
        if owner.get("pid") == self.proc.pid:
            return True
        try:
            import psutil

            return owner.get("pid") in {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
        except Exception:   # psutil.Error: our child is gone
            return False

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


FOLLOW_POLL_S = 0.2     # how often an attached run's events.jsonl is read for new lines


class AttachedRun(_Stoppable):
    """A trainer this window did not start, found through its run's lock file (``bitttt.runlock``).

    A follower thread posts every line of ``events.jsonl`` (from the start, so the curve is whole),
    then new ones as they are appended, and the exit once the process is gone. Its exit code is
    not ours to read: it is taken from the last ``done`` event (0 completed/stopped, 1 error) or
    None when the run ended without one (killed).
    """

    def __init__(self, run_dir: str | os.PathLike, out: queue.Queue, *, name: str = "train"):
        self.run_dir = Path(run_dir)
        self.out, self.name = out, name
        self.lock = live_trainer(self.run_dir) or {}
        self.argv = list(self.lock.get("argv") or [])
        self.returncode: int | None = None
        self.stage = "idle"
        self._stop_thread = None
        self._exited = threading.Event()

    @property
    def pid(self) -> int | None:
        return self.lock.get("pid")

    def start(self) -> "AttachedRun":
        if not self.lock:
            raise OSError(f"no live trainer in {self.run_dir}")
        self.stage = "running"
        threading.Thread(target=self._follow, daemon=True, name=f"{self.name}-follow").start()
        return self

    def running(self) -> bool:
        return self.stage != "idle" and not self._exited.is_set()

    def wait(self, timeout: float | None = None) -> int | None:
        self._exited.wait(timeout)
        return self.returncode

    def _follow(self):
        done_reason = None
        pending = ""
        offset = 0
        while True:
            alive = live_trainer(self.run_dir) is not None
            try:
                with open(self.run_dir / "events.jsonl", "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                    offset += len(chunk)
            except OSError:
                chunk = b""
            pending += chunk.decode("utf-8", errors="replace")
            *lines, pending = pending.split("\n")     # a line still being written stays pending
            for line in lines:
                if line.strip():
                    self.out.put(Output("line", line, "stdout", source=self.name))
                    if '"done"' in line:
                        try:
                            done_reason = json.loads(line).get("reason")
                        except ValueError:
                            pass
            if not alive:
                break
            time.sleep(FOLLOW_POLL_S)
        self.returncode = None if done_reason is None else 0 if done_reason in ("completed", "stopped") else 1
        self.stage = "exited"
        self._exited.set()
        self.out.put(Output("exit", code=self.returncode, source=self.name))

    def _is_ours(self, owner: dict) -> bool:
        return owner.get("pid") == self.pid and owner.get("create_time") == self.lock.get("create_time") \
            and owner.get("host") == self.lock.get("host")

    def _signal_group(self, terminate: bool):
        pid = self.pid
        if not pid or self._exited.is_set():
            return
        now = live_trainer(self.run_dir)
        if now is None or not self._is_ours(now):   # ended: the pid may be another process's by now
            return
        sig = signal.SIGTERM if terminate else getattr(signal, "SIGKILL", signal.SIGTERM)
        try:
            # Its own process group (the launcher starts trainers in a new session): signal the whole
            # group. One started from a terminal shares the shell's group: signal only the trainer.
            if not IS_WINDOWS and os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass
