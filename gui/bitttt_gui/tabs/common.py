"""What every tab gets: the ``Context`` (services of the app) and small shared widgets."""

from __future__ import annotations

import tkinter as tk
from dataclasses import dataclass, field
from pathlib import Path
from tkinter import ttk
from typing import Callable, Sequence

from ..bus import Bus
from ..theme import LIGHT, Palette

PAD = 6


@dataclass
class Context:
    root: tk.Misc
    bus: Bus
    workspace: Path
    bitttt_cmd: list[str] | None                      # None: command.bitttt_command()
    start_training: Callable                          # (TrainSettings) -> str | None (error)
    stop_training: Callable[[], None]
    training_running: Callable[[], bool]
    current_run_dir: Callable[[], Path | None]
    show_tab: Callable[[str], None]
    set_workspace: Callable = lambda path: "this window cannot switch workspaces"  # (path) -> str | None (error)
    latest: dict = field(default_factory=dict)        # e.g. latest["memory"]: the last MemorySnapshot
    palette: Palette = LIGHT                          # the colours the tabs draw themselves (theme.py)


class ThrottledRedraw:
    """For a tab whose plot redraws on a timer, at most every ``redraw_ms``, and only when marked
    dirty: data arrives per event, drawing costs tens of milliseconds. Call ``_tick()`` once."""

    redraw_ms = 500
    _dirty = False

    def mark_dirty(self) -> None:
        self._dirty = True

    def redraw(self) -> None:
        raise NotImplementedError

    def _tick(self) -> None:
        if self._dirty:
            self._dirty = False
            self.redraw()
        self.after(self.redraw_ms, self._tick)


class Tooltip:
    """A hover tip for any widget (shown after a short delay, hidden on leave or click)."""

    DELAY_MS = 500

    def __init__(self, widget: tk.Misc, text: str):
        self.widget, self.text = widget, text
        self._after = None
        self._tip = None
        widget.bind("<Enter>", self._schedule, add="+")
        widget.bind("<Leave>", self._hide, add="+")
        widget.bind("<ButtonPress>", self._hide, add="+")

    def _schedule(self, _e=None):
        self._cancel()
        self._after = self.widget.after(self.DELAY_MS, self._show)

    def _cancel(self):
        if self._after:
            self.widget.after_cancel(self._after)
            self._after = None

    def _show(self):
        self._after = None
        if self._tip or not self.text:
            return
        x = self.widget.winfo_rootx() + 12
        y = self.widget.winfo_rooty() + self.widget.winfo_height() + 4
        self._tip = tk.Toplevel(self.widget)
        self._tip.wm_overrideredirect(True)
        self._tip.wm_geometry(f"+{x}+{y}")
        tk.Label(self._tip, text=self.text, justify="left", background="#ffffe0", foreground="#1f1f1f",
                 relief="solid",
                 borderwidth=1, wraplength=360, padx=6, pady=3).pack()

    def _hide(self, _e=None):
        self._cancel()
        if self._tip:
            self._tip.destroy()
            self._tip = None


class ScrolledFrame(ttk.Frame):
    """A frame whose content (``inner``) asks for its whole size and scrolls vertically when the window
    gives it less; the scrollbar shows only then, and the wheel scrolls it while the pointer is over it."""

    def __init__(self, parent, **kw):
        super().__init__(parent, **kw)
        self.canvas = tk.Canvas(self, highlightthickness=0, borderwidth=0)
        self.scrollbar = ttk.Scrollbar(self, orient="vertical", command=self.canvas.yview)
        self.canvas.configure(yscrollcommand=self.scrollbar.set)
        self.inner = ttk.Frame(self.canvas)
        self._window = self.canvas.create_window(0, 0, window=self.inner, anchor="nw")
        self.canvas.grid(row=0, column=0, sticky="nsew")
        self.rowconfigure(0, weight=1)
        self.columnconfigure(0, weight=1)
        self.inner.bind("<Configure>", lambda e: self._fit())
        self.canvas.bind("<Configure>", self._on_canvas)
        self.bind("<<ThemeChanged>>", lambda e: self._match_theme())
        self._match_theme()
        for seq in ("<MouseWheel>", "<Button-4>", "<Button-5>"):
            self.bind_all(seq, self._wheel, add="+")

    def _match_theme(self):
        bg = ttk.Style(self).lookup("TFrame", "background")
        if bg:
            self.canvas.configure(background=bg)

    def _fit(self):
        """Ask for the content's size; scroll over what the window cannot show."""
        w, h = self.inner.winfo_reqwidth(), self.inner.winfo_reqheight()
        if (int(self.canvas.cget("width")), int(self.canvas.cget("height"))) != (w, h):
            self.canvas.configure(width=w, height=h, scrollregion=(0, 0, w, h))
        self._show_scrollbar()

    def _on_canvas(self, e):
        self.canvas.itemconfigure(self._window, width=e.width)
        self._show_scrollbar()

    def scrolls(self) -> bool:
        return self.inner.winfo_reqheight() > self.canvas.winfo_height() > 1

    def _show_scrollbar(self):
        if self.scrolls():
            self.scrollbar.grid(row=0, column=1, sticky="ns")
        else:
            self.scrollbar.grid_remove()
            self.canvas.yview_moveto(0)

    def _wheel(self, e):
        if not self.scrolls() or not str(e.widget).startswith(str(self)):
            return
        if isinstance(e.widget, (tk.Text, ttk.Combobox)):   # they scroll themselves
            return
        step = -1 if getattr(e, "num", 0) == 4 or getattr(e, "delta", 0) > 0 else 1
        self.canvas.yview_scroll(step, "units")


def break_long_words(text: str, width: int, measure: Callable[[str], int]) -> str:
    """``text`` with every word wider than ``width`` (a path, in ``measure``'s units) cut into pieces that
    fit, after a slash where one fits, joined by newlines. A label's wraplength then breaks the rest at
    spaces; it would cut a long path anywhere, and its last letter can run past the edge."""
    return " ".join(_break_word(w, width, measure) if measure(w) > width else w for w in text.split(" "))


def _break_word(word: str, width: int, measure: Callable[[str], int]) -> str:
    pieces = []
    while measure(word) > width:
        fit = 1                                   # the longest prefix that fits (at least one character)
        while fit < len(word) and measure(word[:fit + 1]) <= width:
            fit += 1
        slash = max(word.rfind("/", 0, fit), word.rfind("\\", 0, fit))
        cut = slash + 1 if slash > 0 else fit
        pieces.append(word[:cut])
        word = word[cut:]
    return "\n".join(pieces + [word])


def scrolled_text(parent, **kw) -> tuple[ttk.Frame, tk.Text]:
    """A Text with a vertical scrollbar in a frame."""
    frame = ttk.Frame(parent)
    text = tk.Text(frame, wrap=kw.pop("wrap", "none"), undo=False, borderwidth=1, relief="solid",
                   highlightthickness=0, padx=6, pady=4, **kw)
    sb = ttk.Scrollbar(frame, orient="vertical", command=text.yview)
    text.configure(yscrollcommand=sb.set)
    text.grid(row=0, column=0, sticky="nsew")
    sb.grid(row=0, column=1, sticky="ns")
    frame.rowconfigure(0, weight=1)
    frame.columnconfigure(0, weight=1)
    return frame, text


def make_readonly(text: tk.Text) -> None:
    """Keep a Text selectable and copyable but not editable by the user."""
    def guard(e):
        if e.state & 0x4 and e.keysym.lower() in ("c", "a"):   # Ctrl+C, Ctrl+A
            return None
        if e.keysym in ("Up", "Down", "Left", "Right", "Prior", "Next", "Home", "End"):
            return None
        return "break"
    text.bind("<Key>", guard)
    text.bind("<<Paste>>", lambda e: "break")
    text.bind("<<Cut>>", lambda e: "break")


def choose(parent: tk.Misc, title: str, message: str, choices: Sequence[tuple[str, str]],
           default: str | None = None) -> str | None:
    """A modal question whose buttons say what they do (Tk's yes/no/cancel cannot): the key of the
    button pressed, or None when the dialog is closed or Escape is pressed (cancel)."""
    top = tk.Toplevel(parent)
    top.title(title)
    top.transient(parent)
    top.resizable(False, False)
    chosen: list[str | None] = [None]

    def pick(key: str | None):
        chosen[0] = key
        top.destroy()

    body = ttk.Frame(top, padding=PAD * 2)
    body.pack(fill="both", expand=True)
    ttk.Label(body, text=message, wraplength=440, justify="left").pack(anchor="w", pady=(0, PAD * 2))
    row = ttk.Frame(body)
    row.pack(anchor="e")
    for key, label in choices:
        button = ttk.Button(row, text=label, command=lambda k=key: pick(k))
        button.pack(side="left", padx=(PAD, 0))
        if key == default:
            button.focus_set()
    top.protocol("WM_DELETE_WINDOW", lambda: pick(None))
    top.bind("<Escape>", lambda e: pick(None))
    top.update_idletasks()   # centred over the window (a window manager may still place it)
    owner = parent.winfo_toplevel()
    x = owner.winfo_rootx() + max(0, (owner.winfo_width() - top.winfo_reqwidth()) // 2)
    y = owner.winfo_rooty() + max(0, (owner.winfo_height() - top.winfo_reqheight()) // 3)
    top.geometry(f"+{x}+{y}")
    try:
        top.grab_set()   # modal; fails if another grab holds the display, and the dialog still works
    except tk.TclError:
        pass
    parent.wait_window(top)
    return chosen[0]
