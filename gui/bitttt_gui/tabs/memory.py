"""Monitor tab: progress (step, tokens/s, elapsed, ETA, lr) and memory (GPU via NVML, run RSS, trainer peak)."""

from __future__ import annotations

from tkinter import ttk

from bitttt.events import fmt_time

from ..events import fmt_bytes, num
from ..memory import MemorySnapshot
from .common import PAD, Context

PROGRESS_FIELDS = (("step", "Step"), ("loss", "Loss"), ("val", "Validation loss"), ("tps", "Tokens/s"),
                   ("elapsed", "Elapsed"), ("eta", "ETA"), ("lr", "Learning rate"))
MEMORY_FIELDS = (("gpu", "GPU"), ("run_gpu", "This run on the GPU"), ("peak", "Trainer reports"),
                 ("rss", "This run (RAM)"), ("host", "Computer RAM"))


NO_SAMPLE = "No sample yet in this run: the trainer's generated samples appear here."


def format_sample(rec: dict) -> str:
    """One sample event as text. Plain ASCII marks: a box-drawing or arrow glyph renders as a black box
    in fonts that lack it."""
    return f"step {rec.get('step', '?')}, prompt \"{rec.get('prompt', '')}\":\n{rec.get('prompt', '')}{rec.get('text', '')}"


class MonitorTab(ttk.Frame):
    def __init__(self, parent, ctx: Context):
        super().__init__(parent, padding=PAD)
        self.ctx = ctx
        self.values: dict[str, ttk.Label] = {}
        self._device = "?"
        self._resident = False   # "Trainer reports" shows the CPU trainer's resident memory (true only while it runs)
        self._build()
        ctx.bus.subscribe("train.started", self._on_started)
        ctx.bus.subscribe("train.record", self._on_record)
        ctx.bus.subscribe("train.exited", self._on_exited)
        ctx.bus.subscribe("memory", self.show_memory)

    def _grid(self, parent, fields):
        for r, (key, label) in enumerate(fields):
            ttk.Label(parent, text=label, style="Hint.TLabel").grid(row=r, column=0, sticky="w", padx=(0, 16), pady=3)
            v = ttk.Label(parent, text="—", style="Value.TLabel")
            v.grid(row=r, column=1, sticky="w", pady=3)
            self.values[key] = v

    def _build(self):
        self.columnconfigure(0, weight=1, uniform="c")
        self.columnconfigure(1, weight=1, uniform="c")
        prog = ttk.LabelFrame(self, text="Progress", padding=PAD * 2)
        prog.grid(row=0, column=0, sticky="nsew", padx=PAD, pady=PAD)
        self.state_label = ttk.Label(prog, text="No training run.", style="Hint.TLabel", justify="left", wraplength=360)
        self.state_label.grid(row=0, column=0, sticky="ew", pady=(0, PAD))
        self.state_label.bind("<Configure>", lambda e: self.state_label.configure(wraplength=max(200, e.width)))
        self.bar = ttk.Progressbar(prog, mode="determinate", maximum=1.0, length=360)
        self.bar.grid(row=1, column=0, sticky="ew", pady=(0, PAD))
        grid = ttk.Frame(prog)
        grid.grid(row=2, column=0, sticky="nw")
        prog.columnconfigure(0, weight=1)
        self._grid(grid, PROGRESS_FIELDS)
        mem = ttk.LabelFrame(self, text="Memory", padding=PAD * 2)
        mem.grid(row=0, column=1, sticky="nsew", padx=PAD, pady=PAD)
        self._grid(mem, MEMORY_FIELDS)
        self.gpu_note = ttk.Label(mem, text="", style="Hint.TLabel", wraplength=420, justify="left")
        self.gpu_note.grid(row=len(MEMORY_FIELDS), column=0, columnspan=2, sticky="w", pady=(PAD, 0))
        sample = ttk.LabelFrame(self, text="Latest sample", padding=PAD * 2)
        sample.grid(row=1, column=0, columnspan=2, sticky="nsew", padx=PAD, pady=PAD)
        self.sample = ttk.Label(sample, text=NO_SAMPLE, style="Hint.TLabel", justify="left", wraplength=1000)
        self.sample.pack(anchor="nw", fill="x")
        self.sample.bind("<Configure>", lambda e: self.sample.configure(wraplength=max(300, e.width)))

    def set(self, key, text):
        self.values[key].configure(text=text)

    def value(self, key) -> str:
        return str(self.values[key].cget("text"))

    def _on_started(self, run_dir, argv):
        for k, _ in PROGRESS_FIELDS:
            self.set(k, "—")
        self.set("peak", "—")
        self.bar.configure(value=0)
        self.sample.configure(text=NO_SAMPLE, style="Hint.TLabel")   # never the previous run's sample
        self.state_label.configure(text=f"Starting {run_dir.name}…")

    def _on_record(self, rec, stream):
        kind = rec.get("event")
        if kind == "start":
            self._device = str(rec.get("device", "?"))
            self.state_label.configure(text=f"Training on {self._device}")
        elif kind == "step":
            step, total = num(rec.get("step")), num(rec.get("total_steps"))
            if step is not None:
                self.set("step", f"{step:.0f} / {total:.0f}" if total else f"{step:.0f}")
                if total:
                    self.bar.configure(value=min(step / total, 1.0))
            loss = num(rec.get("loss"))
            self.set("loss", f"{loss:.4f}" if loss is not None else "?")
            tps = num(rec.get("tokens_per_s"))
            self.set("tps", f"{tps:,.0f}" if tps is not None else "?")
            self.set("elapsed", fmt_time(rec.get("elapsed_s")))
            self.set("eta", fmt_time(rec.get("eta_s")))
            lr = num(rec.get("lr"))
            self.set("lr", f"{lr:.3g}" if lr is not None else "?")
            if rec.get("mem_bytes") is not None:
                # CUDA: the allocator's peak; CPU: the process's resident memory now (it can go down).
                self._resident = not self._device.startswith("cuda")
                what = "resident memory now" if self._resident else "CUDA peak"
                self.set("peak", f"{fmt_bytes(rec.get('mem_bytes'))} ({what})")
        elif kind == "sample":
            self.sample.configure(text=format_sample(rec), style="TLabel")
        elif kind == "eval":
            v = num(rec.get("val_loss"))
            self.set("val", f"{v:.4f}" if v is not None else "?")

    def _on_exited(self, code, severity, message, run_dir):
        self.state_label.configure(text=message.splitlines()[0] if message else f"exit code {code}")
        # Nothing is running any more: no time left to estimate, whatever the cause of the end.
        self.set("eta", "—")
        if self._resident:   # a process that has exited holds no memory: "now" would be false
            self.set("peak", "—")
            self._resident = False
        self.set("rss", "no run")
        if severity != "ok":
            step = self.value("step")
            self.set("step", f"{step} (ended)" if step != "—" else "—")

    def show_memory(self, snap: MemorySnapshot):
        if snap.gpus:
            self.set("gpu", "; ".join(f"{g.index}: {fmt_bytes(g.used)} / {fmt_bytes(g.total)} ({g.name})" for g in snap.gpus))
            runs = [g.run_used for g in snap.gpus if g.run_used]
            self.set("run_gpu", fmt_bytes(sum(runs)) if runs else
                     ("not reported by NVML" if snap.rss is not None else "no run"))
            self.gpu_note.configure(text="")
        else:
            self.set("gpu", "none")
            self.set("run_gpu", "—")
            self.gpu_note.configure(text=snap.gpu_note or "No GPU readings.")
        # A reading taken just before the run ended can arrive after its end: never beside a finished run.
        live = snap.rss is not None and self.ctx.training_running()
        self.set("rss", fmt_bytes(snap.rss) + " (process tree)" if live else "no run")
        if snap.host_total:
            used = snap.host_total - (snap.host_available or 0)
            self.set("host", f"{fmt_bytes(used)} used of {fmt_bytes(snap.host_total)}")
