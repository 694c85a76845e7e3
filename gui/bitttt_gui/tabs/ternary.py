"""Ternary tab: how the BitLinear codes move while the model trains (the trainer's ``ternary`` events).

Per group of layers: the share of weights at 0, the share of codes flipped since the previous report
and the weight scale. Flips that never settle are the first sign of a learning rate too high for
ternary weights.
"""

from __future__ import annotations

from pathlib import Path
from tkinter import ttk

from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from ..colors import SeriesColors
from ..curve import TernaryHistory, padded_range, step_range
from ..events import read_events
from .common import PAD, Context, ThrottledRedraw

REDRAW_MS = 1000
PANELS = (("zero_frac", "weights at 0", True), ("flip_frac", "codes flipped since last report", True),
          ("scale", "weight scale s_w", False))
# The share of weights at 0 moves by tenths of a percent between reports: a narrower axis would
# draw that noise as a trend.
MIN_SPAN = {"zero_frac": 0.10, "flip_frac": 0.01}


class TernaryTab(ThrottledRedraw, ttk.Frame):
    redraw_ms = REDRAW_MS

    def __init__(self, parent, ctx: Context):
        super().__init__(parent, padding=PAD)
        self.ctx = ctx
        self.history = TernaryHistory()
        self.colors = SeriesColors()      # one colour per group for the tab's life, whatever the redraws
        self.legend = None
        self._dirty = False
        self._run_name = ""
        self.title = ttk.Label(self, text="No ternary reports yet: a ternary run reports at every evaluation.",
                               style="Hint.TLabel")
        self.title.pack(fill="x", pady=(0, PAD))
        self.figure = Figure(figsize=(7, 4.2), dpi=100, layout="constrained")
        self.axes = {key: self.figure.add_subplot(1, 3, i + 1) for i, (key, _, _) in enumerate(PANELS)}
        for key, label, percent in PANELS:
            ax = self.axes[key]
            ax.set_title(label, fontsize="medium")
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))   # as many as a third fits
            ax.grid(True, alpha=0.3)
            if percent:
                ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        self.canvas = FigureCanvasTkAgg(self.figure, master=self)
        self.canvas.get_tk_widget().pack(fill="both", expand=True)
        ctx.bus.subscribe("train.started", self._on_started)
        ctx.bus.subscribe("train.record", self._on_record)
        ctx.bus.subscribe("open_curve", self.open_events)
        self._tick()

    def _on_started(self, run_dir, argv):
        self.history = TernaryHistory()
        for ev in read_events(Path(run_dir) / "events.jsonl"):   # a resumed run's earlier reports
            self.history.add(ev)
        self._run_name = Path(run_dir).name
        if len(self.history):
            self._say_groups()
        else:
            self.title.configure(text=f"Run {self._run_name}: no ternary reports yet (a ternary run reports at "
                                      "every evaluation)", style="Hint.TLabel")
        self._dirty = True

    def _on_record(self, rec, stream):
        if self.history.add(rec):
            self._say_groups()
            self._dirty = True

    def _say_groups(self):
        self.title.configure(text=f"Run {self._run_name}: {len(self.history)} groups, reported at every evaluation",
                             style="TLabel")

    def open_events(self, path):
        path = Path(path)
        if path.is_dir():
            path = path / "events.jsonl"
        self.history = TernaryHistory()
        for ev in read_events(path):
            self.history.add(ev)
        self.title.configure(text=f"{path.parent.name}: {len(self.history)} groups" if len(self.history)
                             else f"No ternary reports in {path}", style="TLabel")
        self._dirty = True

    def redraw(self):
        handles = []
        for key, _, _ in PANELS:
            ax = self.axes[key]
            for line in list(ax.lines):
                line.remove()
            steps = []
            for name, h in sorted(self.history.groups.items()):
                line, = ax.plot(h["step"], h[key], marker="o", markersize=3, linewidth=1.2, label=name,
                                color=self.colors(name))
                steps += h["step"]
                if key == PANELS[0][0]:
                    handles.append(line)
            ax.relim()
            ax.autoscale_view()
            if steps:
                ax.set_xlim(*step_range(steps))
            if key in MIN_SPAN and self.history.groups:   # shares: never below 0 %, never zoomed into noise
                ax.set_ylim(*padded_range([v for h in self.history.groups.values() for v in h[key]],
                                          MIN_SPAN[key], 0.0, 1.0))
        # One legend for the three panels, below them: it never covers the newest points.
        if self.legend is not None:
            self.legend.remove()
            self.legend = None
        if handles:
            self.legend = self.figure.legend(handles=handles, loc="outside lower center", fontsize="small",
                                             ncols=min(len(handles), 6), frameon=False)
        self.canvas.draw_idle()
