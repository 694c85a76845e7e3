"""Loss-curve tab: matplotlib embedded with FigureCanvasTkAgg (no pyplot), redraw throttled to 2 Hz."""

from __future__ import annotations

import tkinter as tk
from pathlib import Path
from tkinter import filedialog, ttk

from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg, NavigationToolbar2Tk
from matplotlib.figure import Figure

from ..curve import LossCurve, decimate, smooth
from .common import PAD, Context

REDRAW_MS = 500   # at most two redraws a second, however fast the steps arrive


class PlotTab(ttk.Frame):
    def __init__(self, parent, ctx: Context):
        super().__init__(parent, padding=PAD)
        self.ctx = ctx
        self.curve = LossCurve()
        self.log_scale = tk.BooleanVar(value=False)
        self.smoothing = tk.DoubleVar(value=0.6)
        self.redraws = 0
        self._dirty = False
        self._build()
        ctx.bus.subscribe("train.started", self._on_started)
        ctx.bus.subscribe("train.record", self._on_record)
        ctx.bus.subscribe("open_curve", self.open_events)
        self._tick()

    def _build(self):
        bar = ttk.Frame(self)
        bar.pack(fill="x", pady=(0, PAD))
        self.title = ttk.Label(bar, text="No run yet: start one on the Train tab, or open a past run's events.jsonl.",
                               style="Hint.TLabel")
        self.title.pack(side="left")
        ttk.Button(bar, text="Open events.jsonl…", command=self._open_dialog).pack(side="right")
        ttk.Checkbutton(bar, text="Log scale", variable=self.log_scale, command=self.mark_dirty).pack(side="right", padx=PAD)
        self.smooth_label = ttk.Label(bar, text="", width=4)
        self.smooth_label.pack(side="right")
        ttk.Scale(bar, from_=0.0, to=0.99, variable=self.smoothing, length=140,
                  command=lambda _v: self.mark_dirty()).pack(side="right")
        ttk.Label(bar, text="Smoothing").pack(side="right", padx=(PAD, 4))

        self.figure = Figure(figsize=(7, 4.2), dpi=100, layout="constrained")
        self.ax = self.figure.add_subplot()
        self.ax.set_xlabel("step")
        self.ax.set_ylabel("loss")
        self.ax.grid(True, alpha=0.3)
        self.raw_line, = self.ax.plot([], [], color="#1f77b4", alpha=0.25, linewidth=1, label="_train (raw)")
        self.train_line, = self.ax.plot([], [], color="#1f77b4", linewidth=1.8, label="train loss")
        self.val_line, = self.ax.plot([], [], color="#d62728", marker="o", markersize=4, linewidth=1.5,
                                      label="validation loss")
        self.ax.legend(loc="upper right")
        self.placeholder = self.ax.text(0.5, 0.5, "no loss values yet", transform=self.ax.transAxes,
                                        ha="center", va="center", color="#888888", fontsize=12)
        self.ax.set_xlim(0, 1)
        self.ax.set_ylim(0, 1)
        self.canvas = FigureCanvasTkAgg(self.figure, master=self)
        toolbar = NavigationToolbar2Tk(self.canvas, self, pack_toolbar=False)
        toolbar.update()
        toolbar.pack(side="bottom", fill="x")
        self.canvas.get_tk_widget().pack(fill="both", expand=True)

    # -- data ----------------------------------------------------------------------------
    def _on_started(self, run_dir, argv):
        self.curve = LossCurve()
        self.title.configure(text=f"Run {Path(run_dir).name} (live)", style="TLabel")
        self.mark_dirty()

    def _on_record(self, rec, stream):
        if self.curve.add(rec):
            self.mark_dirty()

    def open_events(self, path):
        path = Path(path)
        if path.is_dir():
            path = path / "events.jsonl"
        self.curve = LossCurve.from_events_file(path)
        self.title.configure(text=f"{path.parent.name}: {len(self.curve.train_steps)} steps from {path}"
                             if len(self.curve) else f"No loss values in {path}", style="TLabel")
        self.mark_dirty()
        self.ctx.show_tab("plot")

    def _open_dialog(self):
        path = filedialog.askopenfilename(parent=self, initialdir=self.ctx.workspace / "runs",
                                          filetypes=[("bitttt events", "events.jsonl"), ("JSON lines", "*.jsonl")])
        if path:
            self.open_events(path)

    # -- drawing -------------------------------------------------------------------------
    def mark_dirty(self):
        self._dirty = True

    def _tick(self):
        if self._dirty:
            self._dirty = False
            self.redraw()
        self.after(REDRAW_MS, self._tick)

    def redraw(self):
        c = self.curve
        w = float(self.smoothing.get())
        self.smooth_label.configure(text=f"{w:.2f}")
        xs, ys = decimate(c.train_steps, c.train_loss)
        self.raw_line.set_data(xs, ys)
        self.raw_line.set_visible(w > 0)
        self.train_line.set_data(*decimate(c.train_steps, smooth(c.train_loss, w)))
        self.val_line.set_data(c.val_steps, c.val_loss)
        self.placeholder.set_visible(len(c) == 0)
        positive = all(v > 0 for v in c.train_loss + c.val_loss)
        self.ax.set_yscale("log" if self.log_scale.get() and positive else "linear")
        if len(c):
            self.ax.autoscale(True)     # the empty plot's fixed 0..1 limits turned it off
            self.ax.relim()
            self.ax.autoscale_view()
        self.canvas.draw_idle()
        self.redraws += 1
