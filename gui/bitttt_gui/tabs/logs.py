"""Logs tab: every child line, events rendered readably, raw lines as they are; bounded, searchable."""

from __future__ import annotations

import time
import tkinter as tk
from tkinter import ttk

from ..command import format_command
from bitttt.events import format_text

from ..events import RAW
from .common import PAD, Context, make_readonly, scrolled_text

MAX_LINES = 5000    # older lines are trimmed: a week-long run must not grow the window without bound
TRIM_FRACTION = 10  # trim a tenth at a time, not one line per insert


class LogsTab(ttk.Frame):
    def __init__(self, parent, ctx: Context, max_lines: int = MAX_LINES):
        super().__init__(parent, padding=PAD)
        self.ctx = ctx
        self.max_lines = max_lines
        self.follow = tk.BooleanVar(value=True)
        self.query = tk.StringVar()
        self._match_index = "1.0"
        self._build()
        bus = ctx.bus
        bus.subscribe("train.started", self._on_started)
        bus.subscribe("train.record", self._on_record)
        bus.subscribe("train.stage", lambda text: self.append(text, "stage"))
        bus.subscribe("train.exited", self._on_exited)

    def _build(self):
        bar = ttk.Frame(self)
        bar.pack(fill="x", pady=(0, PAD))
        ttk.Label(bar, text="Find:").pack(side="left")
        entry = ttk.Entry(bar, textvariable=self.query, width=28)
        entry.pack(side="left", padx=(4, 2))
        entry.bind("<Return>", lambda e: self.find_next())
        ttk.Button(bar, text="Next", command=self.find_next, width=6).pack(side="left")
        ttk.Button(bar, text="Previous", command=lambda: self.find_next(backwards=True), width=8).pack(side="left", padx=2)
        self.match_label = ttk.Label(bar, text="", style="Hint.TLabel")
        self.match_label.pack(side="left", padx=PAD)
        ttk.Button(bar, text="Clear", command=self.clear).pack(side="right")
        ttk.Button(bar, text="Copy all", command=self.copy_all).pack(side="right", padx=PAD)
        ttk.Checkbutton(bar, text="Follow output", variable=self.follow, command=self._follow_toggled).pack(side="right")
        frame, self.text = scrolled_text(self, font="TkFixedFont", height=20, wrap="word")   # long lines wrap, none is cut
        frame.pack(fill="both", expand=True)
        make_readonly(self.text)
        t, p = self.text, self.ctx.palette
        t.tag_configure("raw", foreground=p.raw)
        t.tag_configure("stderr", foreground=p.stderr)
        t.tag_configure("error", foreground=p.error, font=("TkFixedFont", 0, "bold"))
        t.tag_configure("warning", foreground=p.warn)
        t.tag_configure("stage", foreground=p.user)
        t.tag_configure("ok", foreground=p.good)
        t.tag_configure("info", foreground=p.user)
        t.tag_configure("match", background=p.match)
        t.tag_raise("sel")
        for seq in ("<MouseWheel>", "<Button-4>", "<Button-5>", "<B1-Motion>", "<KeyRelease>"):
            t.bind(seq, lambda e: self.after_idle(self.user_scrolled), add="+")
        sb = frame.grid_slaves(row=0, column=1)[0]
        sb.configure(command=self._scrollbar_moved)

    # -- appending -----------------------------------------------------------------------
    def append(self, line: str, tag: str = "") -> None:
        t = self.text
        t.insert("end", line.rstrip("\n") + "\n", (tag,) if tag else ())
        n = int(t.index("end-1c").split(".")[0]) - 1
        if n > self.max_lines + max(1, self.max_lines // TRIM_FRACTION):
            t.delete("1.0", f"{n - self.max_lines + 1}.0")
        if self.follow.get():
            t.see("end")

    def line_count(self) -> int:
        return int(self.text.index("end-1c").split(".")[0]) - 1

    def lines(self) -> list[str]:
        return self.text.get("1.0", "end-1c").splitlines()

    def _on_started(self, run_dir, argv):
        self.append(f"── {time.strftime('%H:%M:%S')}  run {run_dir}", "info")
        self.append(f"   {format_command(argv)}", "info")

    def _on_record(self, rec: dict, stream: str):
        kind = rec.get("event")
        if kind == RAW:
            self.append(rec.get("text", ""), "stderr" if stream == "stderr" else "raw")
        else:
            self.append(format_text(rec), {"error": "error", "warning": "warning", "done": "ok"}.get(kind, ""))

    def _on_exited(self, code, severity, message, run_dir):
        self.append(f"── exit code {code}: {message}", {"ok": "ok", "warn": "warning"}.get(severity, "error"))

    # -- follow / scroll -----------------------------------------------------------------
    def at_bottom(self) -> bool:
        return self.text.yview()[1] >= 0.999

    def user_scrolled(self):
        """After a user scroll: follow the output again only when they are back at the bottom."""
        self.follow.set(self.at_bottom())

    def _scrollbar_moved(self, *args):
        self.text.yview(*args)
        self.user_scrolled()

    def _follow_toggled(self):
        if self.follow.get():
            self.text.see("end")

    # -- search / copy -------------------------------------------------------------------
    def find_next(self, backwards: bool = False) -> str | None:
        """Select the next match of the Find box; all matches get highlighted. Returns the index or None."""
        t, q = self.text, self.query.get()
        t.tag_remove("match", "1.0", "end")
        if not q:
            self.match_label.configure(text="")
            return None
        count, idx = 0, "1.0"
        while True:
            idx = t.search(q, idx, "end", nocase=True)
            if not idx:
                break
            end = f"{idx}+{len(q)}c"
            t.tag_add("match", idx, end)
            count += 1
            idx = end
        if not count:
            self.match_label.configure(text="no match")
            return None
        start = self._match_index
        if backwards:
            found = t.search(q, start, "1.0", nocase=True, backwards=True) or t.search(q, "end", "1.0", nocase=True, backwards=True)
        else:
            found = t.search(q, start, "end", nocase=True) or t.search(q, "1.0", "end", nocase=True)
        t.tag_remove("sel", "1.0", "end")
        t.tag_add("sel", found, f"{found}+{len(q)}c")
        t.see(found)
        self._match_index = found if backwards else f"{found}+{len(q)}c"
        self.follow.set(False)
        self.match_label.configure(text=f"{count} match{'es' if count != 1 else ''}")
        return found

    def copy_all(self):
        self.clipboard_clear()
        self.clipboard_append(self.text.get("1.0", "end-1c"))

    def clear(self):
        self.text.delete("1.0", "end")
        self._match_index = "1.0"
