"""Loss-curve tab: matplotlib embedded with FigureCanvasTkAgg (no pyplot), redraw throttled to 2 Hz."""

from __future__ import annotations

import tkinter as tk
from pathlib import Path
from tkinter import filedialog, ttk

from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg, NavigationToolbar2Tk
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..curve import COMPARE_FIELDS, LossCurve, compare_row, decimate, smooth
from ..runs import run_settings
from .common import PAD, Context, ThrottledRedraw

REDRAW_MS = 500   # at most two redraws a second, however fast the steps arrive
X_AXES = {"step": "step", "tokens": "tokens seen"}
Y_AXES = {"loss": "loss (nats/token)", "bpb": "bits per byte"}
METRIC = {"loss": "loss", "bpb": "bits per byte"}   # what the legend calls the y values
COMPARE_COLORS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
PLAIN = FuncFormatter(lambda v, _pos: f"{v:g}")


class PlotTab(ThrottledRedraw, ttk.Frame):
    redraw_ms = REDRAW_MS

    def __init__(self, parent, ctx: Context):
        super().__init__(parent, padding=PAD)
        self.ctx = ctx
        self.curve = LossCurve()
        self.compared: list[LossCurve] = []     # runs overlaid from the Runs tab
        self._compare_lines: list = []
        self.x_axis = tk.StringVar(value="step")
        self.y_axis = tk.StringVar(value="loss")
        self.log_scale = tk.BooleanVar(value=False)
        self.smoothing = tk.DoubleVar(value=0.6)
        self.redraws = 0
        self._dirty = False
        self._build()
        ctx.bus.subscribe("train.started", self._on_started)
        ctx.bus.subscribe("train.exited", self._on_exited)
        ctx.bus.subscribe("train.record", self._on_record)
        ctx.bus.subscribe("open_curve", self.open_events)
        ctx.bus.subscribe("compare", self.compare)
        self._tick()

    def _build(self):
        # The title has a row of its own: a long run name never pushes the controls off (or under) it.
        self.title = ttk.Label(self, text="No run yet: start one on the Train tab, or open a past run's events.jsonl.",
                               style="Hint.TLabel")
        self.title.pack(fill="x", pady=(0, 2))
        self._own_title = (self.title.cget("text"), "Hint.TLabel")   # what Clear comparison brings back
        self.title.bind("<Configure>", lambda e: self.title.configure(wraplength=max(200, e.width)))
        bar = ttk.Frame(self)
        bar.pack(fill="x", pady=(0, PAD))
        ttk.Button(bar, text="Open events.jsonl…", command=self._open_dialog).pack(side="right")
        ttk.Button(bar, text="Clear comparison", command=lambda: self.compare([])).pack(side="right", padx=(PAD, 0))
        for var, axes, label in ((self.y_axis, Y_AXES, "y"), (self.x_axis, X_AXES, "x")):
            box = ttk.Combobox(bar, textvariable=var, values=list(axes), state="readonly", width=7)
            box.pack(side="right", padx=(2, PAD))
            box.bind("<<ComboboxSelected>>", lambda _e: self.mark_dirty())
            ttk.Label(bar, text=label).pack(side="right")
        ttk.Checkbutton(bar, text="Log scale", variable=self.log_scale, command=self.mark_dirty).pack(side="right", padx=PAD)
        self.smooth_label = ttk.Label(bar, text="", width=4)
        self.smooth_label.pack(side="right")
        ttk.Scale(bar, from_=0.0, to=0.99, variable=self.smoothing, length=140,
                  command=lambda _v: self.mark_dirty()).pack(side="right")
        self.smooth_name = ttk.Label(bar, text="Smoothing")
        self.smooth_name.pack(side="right", padx=(PAD, 4))

        self.figure = Figure(figsize=(7, 4.2), dpi=100, layout="constrained")
        self.ax = self.figure.add_subplot()
        self.ax.set_xlabel("step")
        self.ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # no step 2.5 on short runs
        self.ax.set_ylabel("loss")
        self.ax.grid(True, alpha=0.3)
        self.raw_line, = self.ax.plot([], [], color="#1f77b4", alpha=0.25, linewidth=1, label="_train (raw)")
        self.train_line, = self.ax.plot([], [], color="#1f77b4", linewidth=1.8, label="train loss")
        self.val_line, = self.ax.plot([], [], color="#d62728", marker="o", markersize=4, linewidth=1.5,
                                      label="validation loss")
        self.placeholder = self.ax.text(0.5, 0.5, "no loss values yet", transform=self.ax.transAxes,
                                        ha="center", va="center", color="#888888", fontsize=12)
        self.ax.set_xlim(0, 1)
        self.ax.set_ylim(0, 1)
        self.canvas = FigureCanvasTkAgg(self.figure, master=self)
        toolbar = NavigationToolbar2Tk(self.canvas, self, pack_toolbar=False)
        toolbar.update()
        toolbar.pack(side="bottom", fill="x")
        # The compared runs' settings and final metrics, shown only while comparing.
        self.compare_table = ttk.Treeview(self, columns=[k for k, _ in COMPARE_FIELDS], show="headings", height=3)
        for key, title in COMPARE_FIELDS:
            self.compare_table.heading(key, text=title)
            self.compare_table.column(key, width={"name": 180, "best_bpb": 150}.get(key, 110), anchor="w",
                                      stretch=key == "name")
        self._toolbar = toolbar
        self.canvas.get_tk_widget().pack(fill="both", expand=True)

    # -- data ----------------------------------------------------------------------------
    def _on_started(self, run_dir, argv):
        # A resumed run's folder holds its earlier steps: show them all, the live ones follow.
        self.curve = LossCurve.from_events_file(Path(run_dir) / "events.jsonl")
        self._set_own_title(f"Run {Path(run_dir).name} (live)")
        self.mark_dirty()

    def _on_exited(self, code, severity, message, run_dir):
        if run_dir is not None:
            how = {"ok": "ended", "warn": "interrupted"}.get(severity, "failed")
            self._set_own_title(f"Run {Path(run_dir).name} ({how}, exit code {code})")

    def _on_record(self, rec, stream):
        if self.curve.add(rec):
            self.mark_dirty()

    def open_events(self, path):
        path = Path(path)
        if path.is_dir():
            path = path / "events.jsonl"
        self.curve = LossCurve.from_events_file(path)
        self._set_own_title(f"{path.parent.name}: {len(self.curve.train_steps)} steps"
                            if len(self.curve) else f"No loss values in {path}")
        self.mark_dirty()
        self.ctx.show_tab("plot")

    def compare(self, paths):
        """Overlay these runs' curves (their events.jsonl) on the plot; [] clears the comparison."""
        self.compared = [LossCurve.from_events_file(Path(p) / "events.jsonl", name=Path(p).name) for p in paths]
        self.compare_table.delete(*self.compare_table.get_children())
        for p, curve in zip(paths, self.compared):
            row = compare_row(curve, run_settings(p))
            self.compare_table.insert("", "end", values=[row[k] for k, _ in COMPARE_FIELDS])
        self.mark_dirty()
        if paths:
            self.title.configure(text=f"Comparing {', '.join(c.name for c in self.compared)}", style="TLabel")
            self.compare_table.configure(height=min(len(paths), 6))
            self.compare_table.pack(side="bottom", fill="x", after=self._toolbar, pady=(PAD, 0))
            self.ctx.show_tab("plot")
        else:
            self.title.configure(text=self._own_title[0], style=self._own_title[1])
            self.compare_table.pack_forget()

    def _set_own_title(self, text: str):
        """The title of the run this tab follows; shown now unless a comparison holds the title."""
        self._own_title = (text, "TLabel")
        if not self.compared:
            self.title.configure(text=text, style="TLabel")

    def _open_dialog(self):
        path = filedialog.askopenfilename(parent=self, initialdir=self.ctx.workspace / "runs",
                                          filetypes=[("bitttt events", "events.jsonl"), ("JSON lines", "*.jsonl")])
        if path:
            self.open_events(path)

    # -- drawing -------------------------------------------------------------------------
    def _draw_compared(self, x: str, y: str, w: float):
        for line in self._compare_lines:
            line.remove()
        self._compare_lines = []
        for i, other in enumerate(self.compared):
            series = other.series(x, y)
            label = other.name if series is not None else f"{other.name} (no {X_AXES[x]}/{Y_AXES[y]})"
            tx, ty, vx, vy = series or ([], [], [], [])
            color = COMPARE_COLORS[i % len(COMPARE_COLORS)]
            line, = self.ax.plot(*decimate(tx, smooth(ty, w)), color=color, linewidth=1.4, label=f"{label} train")
            self._compare_lines.append(line)
            if vx:
                line, = self.ax.plot(vx, vy, color=color, linestyle="--", marker="o", markersize=3, linewidth=1,
                                     label=f"{label} validation")
                self._compare_lines.append(line)

    def redraw(self):
        c = self.curve
        w = float(self.smoothing.get())
        self.smooth_label.configure(text=f"{w:.2f}")
        x, y = self.x_axis.get(), self.y_axis.get()
        tx, ty, vx, vy = c.series(x, y) or ([], [], [], [])
        xs, ys = decimate(tx, ty)
        self.raw_line.set_data(xs, ys)
        self.train_line.set_data(*decimate(tx, smooth(ty, w)))
        self.val_line.set_data(vx, vy)
        # While comparing, only the compared runs are drawn: each line then has a run's name.
        for line in (self.raw_line, self.train_line, self.val_line):
            line.set_visible(not self.compared and (line is not self.raw_line or w > 0))
        self.train_line.set_label(f"train {METRIC[y]}")
        self.val_line.set_label(f"validation {METRIC[y]}")
        self._draw_compared(x, y, w)
        shown = [line for line in self.ax.lines if line.get_visible() and len(line.get_xdata())
                 and not line.get_label().startswith("_")]
        if shown:   # only curves with data: an empty live curve is no entry
            self.ax.legend(handles=shown, loc="best", fontsize="small")
        elif self.ax.get_legend() is not None:
            self.ax.get_legend().remove()
        self.ax.set_xlabel(X_AXES[x])
        self.ax.set_ylabel(Y_AXES[y])
        self.placeholder.set_visible(len(c) == 0 and not self.compared)
        self.placeholder.set_text("no loss values yet" if c.series(x, y) is not None or not len(c)
                                  else f"this run cannot be shown by {X_AXES[x]} / {Y_AXES[y]}")
        if len(c) and c.series(x, y) is None and not self.compared:
            self.placeholder.set_visible(True)
        values = ([] if self.compared else ty + vy) + [v for lines in self._compare_lines for v in lines.get_ydata()]
        positive = all(v > 0 for v in values)
        if self.log_scale.get() and positive:
            self.ax.set_yscale("log")
            # Plain numbers (6, 4, 2) instead of 6×10⁰: a loss spans less than a decade.
            self.ax.yaxis.set_major_formatter(PLAIN)
            self.ax.yaxis.set_minor_formatter(PLAIN)
        else:
            self.ax.set_yscale("linear")
        if len(c) or self.compared:
            self.ax.autoscale(True)     # the empty plot's fixed 0..1 limits turned it off
            self.ax.relim()
            self.ax.autoscale_view()
        self.canvas.draw_idle()
        self.redraws += 1
