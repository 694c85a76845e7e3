"""Runs tab: the workspace's runs with status and loss; open the folder, reopen the curve, chat, resume."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from tkinter import filedialog, ttk

from ..runs import RunInfo, scan_runs
from .common import PAD, Context

# Widths fit 1180 pixels with the longest status word ("interrupted") and a full timestamp; a long
# status or name shows whole under the table on hover.
CHECKPOINT_REFRESH_MS = 1000
COLUMNS = (("name", "Run", 240), ("status", "Status", 170), ("step", "Steps", 90), ("loss", "Final loss", 90),
           ("val", "Val. loss", 90), ("when", "Last update", 150), ("ckpt", "Latest checkpoint", 130))


class RunsTab(ttk.Frame):
    def __init__(self, parent, ctx: Context):
        super().__init__(parent, padding=PAD)
        self.ctx = ctx
        self.infos: dict[str, RunInfo] = {}
        self._cache: dict = {}
        self._pending_refresh = None
        self._build()
        for topic in ("train.started", "train.exited"):
            ctx.bus.subscribe(topic, lambda *_: self.refresh())
        ctx.bus.subscribe("train.record", self._on_record)
        ctx.bus.subscribe("workspace", lambda *_: self.refresh())
        self.refresh()

    def _build(self):
        bar = ttk.Frame(self)
        bar.pack(fill="x", pady=(0, PAD))
        self.where = ttk.Label(bar, text="", style="Hint.TLabel")
        self.where.pack(side="left")
        for text, cmd in (("Resume", self.resume), ("Chat", self.chat), ("Compare", self.compare),
                          ("Show curve", self.show_curve),
                          ("Open folder", self.open_folder), ("Refresh", self.refresh),
                          ("Workspace…", self.pick_workspace)):
            ttk.Button(bar, text=text, command=cmd).pack(side="right", padx=(PAD, 0))
        frame = ttk.Frame(self)
        frame.pack(fill="both", expand=True)
        self.tree = ttk.Treeview(frame, columns=[c for c, _, _ in COLUMNS], show="headings", selectmode="extended")
        for col, title, width in COLUMNS:
            self.tree.heading(col, text=title)
            self.tree.column(col, width=width, anchor="w", stretch=col in ("name", "ckpt"))
        sb = ttk.Scrollbar(frame, orient="vertical", command=self.tree.yview)
        self.tree.configure(yscrollcommand=sb.set)
        self.tree.pack(side="left", fill="both", expand=True)
        sb.pack(side="left", fill="y")
        self.tree.bind("<Double-1>", lambda e: self.show_curve())
        self.tree.bind("<Motion>", self._hover)
        self.tree.bind("<Leave>", lambda e: self.detail.configure(text=""))
        p = self.ctx.palette
        for status, color in (("failed", p.error), ("running", p.user), ("stopped", p.warn),
                              ("interrupted", p.warn), ("completed", p.good)):
            self.tree.tag_configure(status, foreground=color)
        self.empty = ttk.Label(self, text="", style="Hint.TLabel")
        self.empty.pack(fill="x", pady=(PAD, 0))
        # The full status of the row under the pointer (a failure's message does not fit its column).
        self.detail = ttk.Label(self, text="", style="Hint.TLabel", justify="left")
        self.detail.pack(fill="x")
        self.detail.bind("<Configure>", lambda e: self.detail.configure(wraplength=max(200, e.width)))

    def _hover(self, e):
        info = self.infos.get(self.tree.identify_row(e.y))
        self.detail.configure(text=f"{info.name}: {info.status}" + (f": {info.message}" if info.message else "")
                              if info else "")

    def pick_workspace(self):
        path = filedialog.askdirectory(parent=self, initialdir=self.ctx.workspace, mustexist=False,
                                       title="Workspace: the folder holding runs/")
        if path:
            err = self.ctx.set_workspace(path)
            if err:
                self.ctx.bus.publish("status", "error", f"Workspace not changed: {err}.")

    def _on_record(self, rec, stream):
        kind = rec.get("event")
        if kind == "start":                  # the run folder exists
            self.refresh()
        elif kind == "checkpoint" and self._pending_refresh is None:
            # A new checkpoint: one refresh a second at most. Each re-reads the run's events.jsonl, and a
            # run saving every few steps made the window re-read a growing file on every save.
            self._pending_refresh = self.after(CHECKPOINT_REFRESH_MS, self._refresh_after_checkpoints)

    def _refresh_after_checkpoints(self):
        self._pending_refresh = None
        self.refresh()

    def refresh(self):
        self.where.configure(text=f"Runs in {self.ctx.workspace / 'runs'}")
        running = self.ctx.current_run_dir() if self.ctx.training_running() else None
        infos = scan_runs(self.ctx.workspace, running={str(running)} if running else set(), cache=self._cache)
        selected = [p for p in self.tree.selection()]
        self.tree.delete(*self.tree.get_children())
        self.infos = {}
        for info in infos:
            iid = str(info.path)
            self.infos[iid] = info
            step = f"{info.step}/{info.total_steps}" if info.step is not None else "—"
            values = (info.name, info.status + (f": {info.message[:60]}" if info.message else ""), step,
                      f"{info.final_loss:.4f}" if info.final_loss is not None else "—",
                      f"{info.val_loss:.4f}" if info.val_loss is not None else "—",
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(info.mtime)) if info.mtime else "—",
                      info.checkpoint.name if info.checkpoint else "none")
            self.tree.insert("", "end", iid=iid, values=values, tags=(info.status,))
        kept = [p for p in selected if p in self.infos]
        if kept:
            self.tree.selection_set(kept)
        elif infos:
            self.tree.selection_set(str(infos[0].path))
        self.empty.configure(text="" if infos else "No runs yet: start one on the Train tab.")

    def selected_path(self) -> str | None:
        sel = self.tree.selection()
        return sel[0] if sel else None

    def compare(self):
        """Overlay the loss curves of every selected run (Ctrl/Shift-click to pick several)."""
        paths = [p for p in self.tree.selection() if p in self.infos]
        if not paths:
            self.ctx.bus.publish("status", "warn", "Select the runs to compare (Ctrl-click to pick several).")
            return
        self.ctx.bus.publish("compare", [Path(p) for p in paths])

    def _selected(self) -> RunInfo | None:
        p = self.selected_path()
        info = self.infos.get(p) if p else None
        if info is None:
            self.ctx.bus.publish("status", "warn", "Select a run first.")
        return info

    def open_folder(self):
        info = self._selected()
        if info is None:
            return
        try:
            if sys.platform == "win32":
                os.startfile(info.path)  # noqa: S606 (a folder the user picked)
            else:
                subprocess.Popen(["open" if sys.platform == "darwin" else "xdg-open", str(info.path)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as e:
            self.ctx.bus.publish("status", "warn", f"Cannot open a file browser ({e}); the folder is {info.path}")

    def show_curve(self):
        info = self._selected()
        if info:
            self.ctx.bus.publish("open_curve", Path(info.path) / "events.jsonl")

    def chat(self):
        info = self._selected()
        if info is None:
            return
        if info.checkpoint is None:
            self.ctx.bus.publish("status", "warn", f"{info.name} has no checkpoint to chat with yet.")
            return
        self.ctx.bus.publish("chat_with", info.path)

    def resume(self):
        info = self._selected()
        if info is None:
            return
        if info.checkpoint is None:
            self.ctx.bus.publish("status", "warn", f"{info.name} has no checkpoint to resume from.")
            return
        self.ctx.bus.publish("resume", info.path, info.checkpoint)
