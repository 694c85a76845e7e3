"""Train tab: the settings form, validation, command preview, memory estimate, Start/Stop, config files."""

from __future__ import annotations

import dataclasses
import tkinter as tk
from pathlib import Path
from tkinter import filedialog, ttk

from .. import command
from ..command import FIELDS, SettingsError, TrainSettings, parse_settings
from ..estimate import estimate, verdict
from ..events import fmt_bytes, fmt_count
from ..runs import run_settings
from .common import PAD, Context, Tooltip

SECTIONS = ("Run", "Model", "Optimisation", "Schedule")
SECTION_TITLES = {"Run": "Run", "Model": "Model", "Optimisation": "Optimisation", "Schedule": "Device and schedule"}
LAST_CONFIG = Path(".bitttt-gui") / "last-config.json"


class TrainTab(ttk.Frame):
    def __init__(self, parent, ctx: Context):
        super().__init__(parent, padding=PAD)
        self.ctx = ctx
        self.vars: dict[str, tk.Variable] = {}
        self.widgets: dict[str, ttk.Widget] = {}
        self.settings: TrainSettings | None = TrainSettings()
        self.errors: dict[str, str] = {}
        self._pending = None
        self._loading = False
        self._build()
        self.load_last_config()
        ctx.bus.subscribe("train.started", lambda *_: self._update_buttons())
        ctx.bus.subscribe("train.exited", lambda *_: self._update_buttons())
        ctx.bus.subscribe("train.stage", self._on_stage)
        ctx.bus.subscribe("resume", self._on_resume)
        ctx.bus.subscribe("memory", lambda *_: self._refresh_estimate_if_device_changed())

    # -- layout --------------------------------------------------------------------------
    def _build(self):
        self.columnconfigure(0, weight=1, uniform="col")
        self.columnconfigure(1, weight=1, uniform="col")
        frames = {}
        for i, sec in enumerate(SECTIONS):
            lf = ttk.LabelFrame(self, text=SECTION_TITLES[sec], padding=PAD)
            lf.grid(row=i // 2, column=i % 2, sticky="nsew", padx=PAD, pady=PAD)
            lf.columnconfigure(1, weight=1)
            frames[sec] = lf
        rows = dict.fromkeys(SECTIONS, 0)
        for f in FIELDS:
            lf = frames[f.section]
            r = rows[f.section]
            rows[f.section] += 1
            label = ttk.Label(lf, text=f.label)
            label.grid(row=r, column=0, sticky="w", padx=(0, PAD), pady=1)
            if f.kind == "bool":
                var = tk.BooleanVar(value=getattr(self.settings, f.name))
                w = ttk.Checkbutton(lf, variable=var, text="on")
                w.grid(row=r, column=1, sticky="w", pady=1)
            elif f.kind == "choice":
                var = tk.StringVar(value=str(getattr(self.settings, f.name)))
                w = ttk.Combobox(lf, textvariable=var, values=f.choices, state="readonly", width=14)
                w.grid(row=r, column=1, sticky="ew", pady=1)
            else:
                var = tk.StringVar(value=str(getattr(self.settings, f.name)))
                w = ttk.Entry(lf, textvariable=var, width=16)
                w.grid(row=r, column=1, sticky="ew", pady=1)
                if f.kind == "path":
                    btns = ttk.Frame(lf)
                    btns.grid(row=r, column=2, sticky="w", padx=(PAD, 0))
                    if f.name == "data":
                        ttk.Button(btns, text="File…", width=6, command=lambda v=var: self._pick(v, "file")).pack(side="left")
                        ttk.Button(btns, text="Folder…", width=7, command=lambda v=var: self._pick(v, "dir")).pack(side="left")
                    else:
                        ttk.Button(btns, text="Browse…", width=8, command=lambda v=var: self._pick(v, "dir")).pack(side="left")
            Tooltip(label, f.tip)
            Tooltip(w, f.tip)
            self.vars[f.name] = var
            self.widgets[f.name] = w
            var.trace_add("write", lambda *_a, n=f.name: self._changed(n))
        ttk.Label(frames["Run"], text="Empty data = the corpus that ships with bitttt.", style="Hint.TLabel").grid(
            row=rows["Run"], column=0, columnspan=3, sticky="w", pady=(2, 0))

        # Estimate and errors
        est = ttk.LabelFrame(self, text="Estimate before launch", padding=PAD)
        est.grid(row=2, column=0, sticky="nsew", padx=PAD, pady=PAD)
        self.estimate_label = ttk.Label(est, text="", justify="left", font="TkFixedFont")
        self.estimate_label.pack(anchor="w", fill="x")
        self.verdict_label = ttk.Label(est, text="", justify="left", wraplength=480)
        self.verdict_label.pack(anchor="w", fill="x", pady=(4, 0))
        self.verdict_label.bind("<Configure>", lambda e: self.verdict_label.configure(wraplength=max(200, e.width)))

        side = ttk.LabelFrame(self, text="Command", padding=PAD)
        side.grid(row=2, column=1, sticky="nsew", padx=PAD, pady=PAD)
        side.columnconfigure(0, weight=1)
        # Wrapped at spaces, so an option like --save-every is never split across lines.
        self.preview = tk.Text(side, height=4, wrap="word", borderwidth=1, relief="solid", font="TkFixedFont",
                               highlightthickness=0, padx=4, pady=3)
        self.preview.grid(row=0, column=0, columnspan=2, sticky="nsew")
        scroll = ttk.Scrollbar(side, orient="vertical", command=self.preview.yview)   # long paths: more lines
        scroll.grid(row=0, column=2, sticky="ns")
        self.preview.configure(yscrollcommand=scroll.set)
        self.preview.bind("<Key>", lambda e: None if (e.state & 0x4) else "break")
        ttk.Button(side, text="Copy command", command=self.copy_command).grid(row=1, column=1, sticky="e", pady=(4, 0))
        self.error_label = ttk.Label(side, text="", style="Error.TLabel", justify="left", wraplength=460)
        self.error_label.grid(row=2, column=0, columnspan=2, sticky="w", pady=(4, 0))

        bar = ttk.Frame(self)
        bar.grid(row=3, column=0, columnspan=2, sticky="ew", padx=PAD, pady=(PAD, 0))
        self.start_btn = ttk.Button(bar, text="▶ Start training", style="Accent.TButton", command=self.start)
        self.start_btn.pack(side="left")
        self.stop_btn = ttk.Button(bar, text="■ Stop", command=self.ctx.stop_training, state="disabled")
        self.stop_btn.pack(side="left", padx=PAD)
        ttk.Button(bar, text="Load config…", command=self.load_config_dialog).pack(side="right")
        ttk.Button(bar, text="Save config…", command=self.save_config_dialog).pack(side="right", padx=PAD)
        ttk.Button(bar, text="Preset defaults", command=lambda: self.apply_preset(self.vars["preset"].get())).pack(side="right")
        self.rowconfigure(2, weight=1)
        self._validate()

    # -- values --------------------------------------------------------------------------
    def form_values(self) -> dict:
        return {name: var.get() for name, var in self.vars.items()}

    def set_settings(self, s: TrainSettings):
        self._loading = True
        try:
            for name, var in self.vars.items():
                v = getattr(s, name)
                var.set(v if isinstance(var, tk.BooleanVar) else str(v))
        finally:
            self._loading = False
        self._validate()

    def set_value(self, name: str, value):
        """Set one field as a user would (tests drive the form through this)."""
        self.vars[name].set(value)

    def apply_preset(self, preset: str):
        keep = {k: self.vars[k].get() for k in ("run_name", "data", "resume")}
        self.set_settings(TrainSettings.for_preset(preset, **keep))

    def _changed(self, name):
        if self._loading:
            return
        if name == "preset":
            self.apply_preset(self.vars["preset"].get())
            return
        if self._pending is None:
            self._pending = self.after(120, self._validate)

    def _validate(self):
        self._pending = None
        self._lock_for_resume()
        try:
            self.settings = parse_settings(self.form_values())
            self.errors = {}
        except SettingsError as e:
            self.settings, self.errors = None, e.errors
        for name, w in self.widgets.items():
            bad = name in self.errors
            if isinstance(w, ttk.Checkbutton):
                continue
            base = "TCombobox" if isinstance(w, ttk.Combobox) else "TEntry"
            w.configure(style=("Bad." + base) if bad else base)
        self.error_label.configure(text="\n".join(
            f"✗ {command.FIELD_BY_NAME[k].label}: {v}" for k, v in self.errors.items() if k in command.FIELD_BY_NAME))
        self._update_preview()
        self._update_estimate()
        self._update_buttons()

    def _update_preview(self):
        self.preview.delete("1.0", "end")
        if self.settings is None:
            self.preview.insert("1.0", "(fix the marked fields to see the command)")
            return
        run_dir = command.run_dir_for(self.settings, self.ctx.workspace) if self.settings.run_name else \
            self.ctx.workspace / "runs" / "<timestamp>"
        self.preview.insert("1.0", self.command_text(run_dir))

    def command_text(self, run_dir) -> str:
        return command.format_command(command.build_train_argv(self.settings, run_dir, base=self.ctx.bitttt_cmd))

    def copy_command(self):
        self.clipboard_clear()
        self.clipboard_append(self.preview.get("1.0", "end-1c"))

    def _device_and_free(self):
        snap = self.ctx.latest.get("memory")
        want = self.settings.device if self.settings else "auto"
        gpus = snap.gpus if snap else []
        if want == "cuda" or (want == "auto" and gpus):
            if gpus:
                g = gpus[0]
                return "cuda", g.total - g.used, f"GPU 0 ({g.name})"
            return "cuda", None, "a CUDA GPU (none visible to NVML)"
        avail = snap.host_available if snap else None
        return "cpu", avail, "this computer's RAM"

    def _update_estimate(self):
        s = self.settings
        if s is None:
            self.estimate_label.configure(text="—")
            self.verdict_label.configure(text="", style="TLabel")
            return
        device, free, where = self._device_and_free()
        self._estimate_device = (device, free is not None)
        e = estimate(s, device)
        tern = f" ({fmt_count(e.n_ternary)} ternary)" if s.ternary else " (full precision)"
        left = [("Parameters", fmt_count(e.n_params) + tern), ("Weights fp32", fmt_bytes(e.weights)),
                ("Gradients", fmt_bytes(e.grads)), ("AdamW state", fmt_bytes(e.optimizer))]
        right = [("Activations", f"{fmt_bytes(e.activations)} ({s.batch_size}×{s.seq_len})"), ("Runtime", fmt_bytes(e.overhead)),
                 ("Total", fmt_bytes(e.total)), ("Export size", fmt_bytes(e.export_bytes))]
        # Two columns, so the verdict below stays on screen at 1366x768.
        lines = [f"{lk:<13}{lv:<24}{rk:<13}{rv}" for (lk, lv), (rk, rv) in zip(left, right)]
        self.estimate_label.configure(text="\n".join(lines))
        # Every process holds its own model, optimizer and activations.
        state, sentence = verdict(e.total * s.nproc, free)
        style = {"fits": "Good.TLabel", "tight": "Warn.TLabel", "too_big": "Error.TLabel"}.get(state, "Hint.TLabel")
        parallel = (f" {s.nproc} processes: global batch {s.global_batch} sequences "
                    f"({s.batch_size} × {s.grad_accum} × {s.nproc}).") if s.nproc > 1 else ""
        self.verdict_label.configure(text=f"On {where}: {sentence}.{parallel}", style=style)
        self.estimate_state = state

    def _refresh_estimate_if_device_changed(self):
        device, known = self._device_and_free()[0], self._device_and_free()[1] is not None
        if getattr(self, "_estimate_device", None) != (device, known):
            self._update_estimate()

    def _update_buttons(self):
        running = self.ctx.training_running()
        self.start_btn.configure(state="disabled" if running or self.settings is None else "normal")
        self.stop_btn.configure(state="normal" if running else "disabled", text="■ Stop")

    def _on_stage(self, text):
        # Each stage's sentence is in the status bar and the Logs tab; the bar keeps every button.
        self.stop_btn.configure(state="disabled", text="■ Stopping…")

    # -- actions -------------------------------------------------------------------------
    def start(self) -> str | None:
        if self._pending is not None:
            self.after_cancel(self._pending)
            self._validate()
        if self.settings is None:
            return "fix the marked fields first"
        self.save_last_config()
        err = self.ctx.start_training(self.settings)
        self._update_buttons()
        return err

    def _pick(self, var, kind):
        start = var.get() or str(self.ctx.workspace)
        path = (filedialog.askopenfilename(parent=self, initialdir=start) if kind == "file"
                else filedialog.askdirectory(parent=self, initialdir=start))
        if path:
            var.set(path)

    def _on_resume(self, run_dir: Path, checkpoint):
        """Fill the form with that run's own settings and lock what a resumed run cannot change."""
        values = run_settings(run_dir, checkpoint)
        self._loading = True
        try:
            for name, value in values.items():
                if name in self.vars:
                    var = self.vars[name]
                    var.set(bool(value) if isinstance(var, tk.BooleanVar) else str(value))
        finally:
            self._loading = False
        self.vars["run_name"].set(Path(run_dir).name)
        self.vars["resume"].set(str(checkpoint or run_dir))
        self.ctx.show_tab("train")

    def _lock_for_resume(self):
        """While "Resume from" is set, the architecture, tokenizer, data and run name are the run's own."""
        resuming = bool(self.vars["resume"].get().strip())
        for name in command.LOCKED_ON_RESUME:
            w = self.widgets[name]
            if isinstance(w, ttk.Combobox):
                w.configure(state="disabled" if resuming else "readonly")
            else:
                w.configure(state="disabled" if resuming else "normal")

    def save_config(self, path):
        if self.settings is None:
            raise SettingsError(self.errors)
        command.save_settings(self.settings, path)

    def load_config(self, path):
        self.set_settings(command.load_settings(path))

    def save_config_dialog(self):
        path = filedialog.asksaveasfilename(parent=self, defaultextension=".json", initialdir=self.ctx.workspace,
                                            filetypes=[("bitttt launcher config", "*.json")])
        if path:
            try:
                self.save_config(path)
                self.ctx.bus.publish("status", "ok", f"Saved the form to {path}")
            except (OSError, SettingsError) as e:
                self.ctx.bus.publish("status", "error", f"Could not save the config: {e}")

    def load_config_dialog(self):
        path = filedialog.askopenfilename(parent=self, initialdir=self.ctx.workspace,
                                          filetypes=[("bitttt launcher config", "*.json"), ("all files", "*")])
        if path:
            try:
                self.load_config(path)
                self.ctx.bus.publish("status", "ok", f"Loaded {path}")
            except SettingsError as e:
                self.ctx.bus.publish("status", "error", f"Could not load {path}: {e}")

    def last_config_path(self) -> Path:
        return self.ctx.workspace / LAST_CONFIG

    def save_last_config(self):
        if self.settings is not None:
            try:
                command.save_settings(dataclasses.replace(self.settings, resume="", run_name=""),
                                      self.last_config_path())
            except OSError:
                pass

    def load_last_config(self):
        path = self.last_config_path()
        if not path.exists():
            return
        try:
            self.set_settings(command.load_settings(path))
        except SettingsError as e:
            self.ctx.bus.publish("status", "warn", f"Ignored the last config ({e}); starting from the tiny preset.")

