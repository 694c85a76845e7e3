"""The launcher window (``bitttt-gui``): builds the tabs, owns the training child, polls its queue.

Thin on purpose: widgets live in ``tabs/``, logic in the tkinter-free modules.
Tk is touched from this thread only: reader threads fill queues, and ``_poll``
drains at most ``MAX_BATCH`` records per tick with ``after`` (thonny's pattern).
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import sys
import tkinter as tk
from pathlib import Path
from tkinter import font as tkfont
from tkinter import messagebox, ttk

from bitttt import events as ev
from bitttt.events import format_text

from . import command, runs, theme
from .bus import Bus
from .events import RAW, explain_exit, parse_line
from .memory import MemorySampler
from .process import STOP_GRACE_S, TERM_GRACE_S, AttachedRun, ChildProcess
from .tabs.chat import ChatTab
from .tabs.common import PAD, Context, break_long_words, choose
from .tabs.logs import LogsTab
from .tabs.memory import MonitorTab
from .tabs.plot import PlotTab
from .tabs.runs import RunsTab
from .tabs.ternary import TernaryTab
from .tabs.train import TrainTab

POLL_MS = 50
MAX_BATCH = 400          # records per tick: a spewing child cannot starve the event loop
TAIL_LINES = 30          # raw lines kept to explain a crash
TABS = (("train", "Train", TrainTab), ("logs", "Logs", LogsTab), ("plot", "Loss curve", PlotTab),
        ("ternary", "Ternary", TernaryTab), ("monitor", "Progress & memory", MonitorTab), ("chat", "Chat", ChatTab),
        ("runs", "Runs", RunsTab))


CLOSE_CHOICES = (("leave", "Leave it training"), ("stop", "Stop and quit"), (None, "Cancel"))

DEFAULT_SIZE = (1180, 820)


def default_workspace(cwd: Path | None = None) -> Path:
    """The current folder when it already holds ``runs/`` (where ``bitttt train`` writes by default),
    so runs trained from a terminal show up; otherwise ``~/bitttt``."""
    cwd = Path.cwd() if cwd is None else cwd
    return cwd if (cwd / "runs").is_dir() else Path.home() / "bitttt"


def fitted_geometry(screen_w: int, screen_h: int, size: tuple[int, int] = DEFAULT_SIZE) -> str:
    """The default window size, shrunk to fit a smaller screen (a 1366x768 laptop keeps ~40 px for a panel)."""
    return f"{min(size[0], screen_w)}x{min(size[1], screen_h - 40)}"


class App:
    """The launcher. ``bitttt_cmd`` replaces ``python -m bitttt`` (tests: a fake trainer);
    ``confirm(title, message) -> bool`` asks yes/no questions; ``ask_close(message) -> "leave" | "stop" | None``
    asks what closing the window does to a run in progress (None: keep the window open)."""

    def __init__(self, root: tk.Tk, workspace: str | os.PathLike | None = None, bitttt_cmd: list[str] | None = None,
                 confirm=None, memory_interval_s: float = 1.5, stop_grace_s: float = STOP_GRACE_S,
                 term_grace_s: float = TERM_GRACE_S, ask_close=None, theme_name: str | None = None):
        self.root = root
        self.workspace = Path(workspace or default_workspace()).expanduser().resolve()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.bitttt_cmd = bitttt_cmd
        self.confirm = confirm or (lambda title, msg: messagebox.askyesno(title, msg, parent=root))
        self.ask_close = ask_close or (lambda msg: choose(root, "Training in progress", msg, CLOSE_CHOICES,
                                                          default="leave"))
        self.stop_grace_s, self.term_grace_s = stop_grace_s, term_grace_s
        self.bus = Bus()
        self.train_q: queue.Queue = queue.Queue()
        self.mem_q: queue.Queue = queue.Queue()
        self.child: ChildProcess | None = None
        self.run_dir: Path | None = None
        self._last_error = self._last_done = self._last_checkpoint = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._closing = False
        self._live = False
        self._after_id = None

        root.title(f"bitttt studio — {self.workspace}")
        root.geometry(fitted_geometry(root.winfo_screenwidth(), root.winfo_screenheight()))
        root.minsize(900, 640)
        # theme_name: "auto", "light", "dark" or "classic" (None: $BITTTT_GUI_THEME, else auto)
        self.ttk_theme, palette = theme.apply(root, theme_name or os.environ.get(theme.THEME_ENV), pad=PAD)
        self.ctx = Context(root=root, bus=self.bus, workspace=self.workspace, bitttt_cmd=bitttt_cmd, palette=palette,
                           start_training=self.start_training, stop_training=self.stop_training,
                           training_running=self.training_running, current_run_dir=lambda: self.run_dir,
                           show_tab=self.show_tab, set_workspace=self.set_workspace)
        # The status bar is packed first (bottom) so the notebook cannot squeeze it out.
        status = ttk.Frame(root)
        status.pack(fill="x", side="bottom", padx=PAD, pady=(2, PAD))
        self.progress = ttk.Progressbar(status, mode="determinate", maximum=1.0, length=180)
        self.progress.pack(side="right")
        self.status = ttk.Label(status, text="", style="Status.TLabel", anchor="w", justify="left")
        self.status.pack(side="left", fill="x", expand=True)
        # Long messages (a crash's explanation, a path) wrap instead of running off the window.
        self._status_text = ""
        self.status.bind("<Configure>", lambda e: self._wrap_status())
        self.bus.subscribe("status", self.set_status)
        self.bus.subscribe("memory", lambda snap: self.ctx.latest.__setitem__("memory", snap))  # before the tabs'
        self.notebook = ttk.Notebook(root)
        self.notebook.pack(fill="both", expand=True, padx=PAD, pady=(PAD, 0))
        self.tabs = {}
        for key, title, cls in TABS:
            tab = cls(self.notebook, self.ctx)
            self.notebook.add(tab, text=title)
            self.tabs[key] = tab
        if not self.status.cget("text"):
            self.set_status("info", f"Workspace {self.workspace}. Choose a preset and press Start training.")
        self.bus.subscribe("train.record", self._progress_from)
        self.sampler = MemorySampler(self.mem_q, memory_interval_s).start()
        root.protocol("WM_DELETE_WINDOW", self.on_close)
        self.attach_running()
        self._poll()

    # -- services for the tabs -----------------------------------------------------------
    def show_tab(self, key: str):
        self.notebook.select(self.tabs[key])

    def set_workspace(self, path: str | os.PathLike) -> str | None:
        """Switch the folder holding ``runs/``; refused while a run trains (it writes into the old one)."""
        if self.training_running():
            return "stop the training run before switching the workspace"
        new = Path(path).expanduser().resolve()
        try:
            new.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"cannot use {new} as the workspace: {e}"
        self.workspace = self.ctx.workspace = new
        self.root.title(f"bitttt studio — {new}")
        self.bus.publish("workspace", new)
        self.set_status("info", f"Workspace {new}.")
        return None

    def set_status(self, severity: str, text: str):
        style = {"error": "Error.TLabel", "warn": "Warn.TLabel", "ok": "Good.TLabel"}.get(severity, "Status.TLabel")
        self._status_text = " ".join(text.split("\n")[:3]) if text else ""
        self.status.configure(style=style)
        if style != "Status.TLabel":
            self.status.configure(padding=(PAD, 2))
        self._wrap_status()

    def _wrap_status(self):
        """Wrap the status to the label's width: at spaces, and a path too long for a line after a slash."""
        width = max(200, self.status.winfo_width() - 2 * PAD - 2)   # the style's padding, and a margin
        text = break_long_words(self._status_text, width, tkfont.nametofont("TkDefaultFont").measure)
        if str(self.status.cget("wraplength")) != str(width):
            self.status.configure(wraplength=width)
        if self.status.cget("text") != text:
            self.status.configure(text=text)

    def training_running(self) -> bool:
        """True from launch until the child's exit record was handled (not merely until it died)."""
        return self._live

    def start_training(self, settings: command.TrainSettings) -> str | None:
        """Launch ``bitttt train``; returns an error sentence instead of raising."""
        if self.training_running():
            return "a training run is already in progress"
        run_dir = command.run_dir_for(settings, self.workspace)
        busy = runs.owned_elsewhere(run_dir)   # one writer per run: never a second trainer beside it
        if busy:
            self.set_status("error", busy)
            return busy
        if (run_dir / "events.jsonl").exists() and not settings.resume:
            msg = self._free_run_name(run_dir)
            if msg:
                self.set_status("error", msg)
                return msg
        if settings.resume and not self._may_retrain(run_dir, settings.resume):
            msg = f"{run_dir.name} has finished: not trained again."
            self.set_status("info", msg)
            return msg
        argv = command.build_train_argv(settings, run_dir, base=self.bitttt_cmd)
        self.train_q = queue.Queue()
        self._last_error = self._last_done = self._last_checkpoint = None
        self._tail.clear()
        try:
            self.child = ChildProcess(argv, self.train_q, name="train", cwd=self.workspace, run_dir=run_dir).start()
        except OSError as e:
            msg = f"Could not start the trainer: {e} (command: {command.format_command(argv)})"
            self.set_status("error", msg)
            return msg
        self.run_dir = run_dir
        self._live = True
        self.sampler.pid = self.child.pid
        self.progress.configure(value=0)
        self.set_status("info", f"Training {run_dir.name}…")
        self.bus.publish("train.started", run_dir, argv)
        return None

    def _free_run_name(self, run_dir: Path) -> str | None:
        """A run name already used: a run with a checkpoint is kept (resume it); one that never
        saved a checkpoint (it failed or was stopped early) may be replaced, if the user agrees."""
        if runs.latest_checkpoint(run_dir) is not None:
            return f"{run_dir.name} already holds a run with a checkpoint: choose another run name, or resume it from the Runs tab."
        if not self.confirm("Replace run?", f"{run_dir.name} never saved a checkpoint. Delete it and start again?"):
            return f"{run_dir.name} is taken: choose another run name."
        return runs.delete_run(run_dir)   # refuses a run another process trains (its lock is live)

    def _may_retrain(self, run_dir: Path, resume: str) -> bool:
        """Resuming a run that finished (it saved ``final/``) trains it again from that checkpoint and
        replaces its later checkpoints and ``final/``: only when the user says so."""
        if not (run_dir / "final").is_dir():
            return True
        return self.confirm("Train a finished run again?",
                            f"{run_dir.name} has finished and saved final/. Train it again from {resume}? "
                            "Its later checkpoints and final/ are replaced.")

    def attach_running(self) -> Path | None:
        """Follow a run that is still training without this window (its launcher was closed or
        crashed, or it was started from a terminal): the newest live one, if any."""
        if self.training_running():
            return None
        for info in runs.scan_runs(self.workspace):
            if info.status != "running":
                continue
            self.train_q = queue.Queue()
            self._last_error = self._last_done = self._last_checkpoint = None
            self._tail.clear()
            try:
                self.child = AttachedRun(info.path, self.train_q).start()
            except OSError:
                continue   # it ended between the scan and now
            self.run_dir, self._live = info.path, True
            self.sampler.pid = self.child.pid
            self.progress.configure(value=0)
            self.set_status("info", f"Attached to {info.name}, still training (pid {self.child.pid}) since before "
                                    "this window opened: it can be watched and stopped as usual.")
            self.bus.publish("train.attached", info.path)   # the Train form shows that run's own settings
            self.bus.publish("train.started", info.path, self.child.argv)
            return info.path
        return None

    def stop_training(self):
        if self.child is not None and self.child.running():
            self.child.stop(grace_s=self.stop_grace_s, term_s=self.term_grace_s)

    # -- the poll loop -------------------------------------------------------------------
    def _poll(self):
        self._after_id = None
        n = 0
        while n < MAX_BATCH:
            try:
                item = self.train_q.get_nowait()
            except queue.Empty:
                break
            n += 1
            self._handle(item)
        latest = None
        while True:
            try:
                latest = self.mem_q.get_nowait()
            except queue.Empty:
                break
        if latest is not None:
            self.bus.publish("memory", latest)
        if not self._closing or self.training_running():
            self._after_id = self.root.after(1 if n >= MAX_BATCH else POLL_MS, self._poll)

    def _handle(self, item):
        if item.kind == "line":
            rec = parse_line(item.text)
            kind = rec["event"]
            if kind == RAW:
                if item.text.strip():
                    self._tail.append(item.text)
            elif kind == ev.ERROR:
                self._last_error = rec
                self.set_status("error", format_text(rec))
            elif kind == ev.DONE:
                self._last_done = rec
            elif kind == ev.CHECKPOINT:
                self._last_checkpoint = rec.get("path")
            self.bus.publish("train.record", rec, item.stream)
        elif item.kind == "stage":
            self.set_status("warn", item.text)
            self.bus.publish("train.stage", item.text)
        elif item.kind == "exit":
            severity, message = explain_exit(item.code, self._last_error, self._last_done, list(self._tail),
                                             checkpoint=self._last_checkpoint)
            self.sampler.pid = None
            self._live = False
            self.set_status(severity, message)
            self.bus.publish("train.exited", item.code, severity, message, self.run_dir)
            if self._closing:
                self._destroy()

    def _progress_from(self, rec, stream):
        if rec.get("event") == ev.STEP:
            step, total = rec.get("step"), rec.get("total_steps")
            if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > 0:
                self.progress.configure(value=min(step / total, 1.0))

    # -- closing -------------------------------------------------------------------------
    def on_close(self):
        chat = self.tabs.get("chat")
        if chat is not None and chat.serving() and not self.confirm(
                "Stop the server?", f"The server at {chat.serve_state.url or 'a local port'} stops when this window "
                                    "closes. Close the window and stop it?"):
            return
        if self.training_running():
            name = self.run_dir.name if self.run_dir else "A run"
            choice = self.ask_close(
                f"{name} is training. Leave it training: it goes on without this window, which follows it "
                "again when opened on this workspace. Stop and quit: it saves a checkpoint first.")
            if choice is None:
                return
            if choice == "leave":
                self._leave_training()
                return
            self._closing = True
            self.set_status("warn", "Stopping the run before closing…")
            self.stop_training()
            return
        self._destroy()

    def _leave_training(self):
        """Close the window and let the trainer go on: it runs in its own session, holds trainer.lock
        (a later launcher attaches to it) and survives its stdout closing (DESIGN §6)."""
        pid = self.child.pid if self.child else None
        print(f"bitttt-gui: {self.run_dir} goes on training (pid {pid}); open bitttt-gui on {self.workspace} "
              "to follow or stop it.", file=sys.stderr)
        self._live = False
        self._destroy()

    def _destroy(self):
        self.sampler.stop()
        chat = self.tabs.get("chat")
        train = self.tabs.get("train")
        if train is not None:
            train.cancel_calibration()
        if chat is not None:
            chat.stop_server()
            chat.stop_serving(wait_s=8)    # a server never outlives its window (nothing could stop it later)
        cancel_pending_afters(self.root)
        self.root.destroy()


def cancel_pending_afters(root: tk.Misc) -> None:
    """Cancel every scheduled ``after`` (the tabs' poll and redraw loops) before destroying the window."""
    for after_id in root.tk.splitlist(root.tk.call("after", "info")):
        # Plain Tcl cancel: Misc.after_cancel would also delete the callback's command, which the
        # widget that scheduled it deletes again when destroyed ("can't delete Tcl command").
        root.tk.call("after", "cancel", after_id)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bitttt-gui", description="The bitttt desktop launcher: train, watch, stop, chat.")
    p.add_argument("--workspace", metavar="DIR",
                   help="folder holding runs/ (default: the current folder if it has runs/, else ~/bitttt)")
    p.add_argument("--theme", choices=theme.CHOICES,
                   help=f"light or dark (default: auto, as the system is, where it can tell; ${theme.THEME_ENV} "
                        "sets it too); classic: the toolkit's plain theme")
    args = p.parse_args(argv)
    try:
        root = tk.Tk(className="bitttt")
    except tk.TclError as e:
        print(f"bitttt-gui: cannot open a window ({e}); is a display available?", file=sys.stderr)
        return 1
    App(root, args.workspace, theme_name=args.theme)
    root.mainloop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
