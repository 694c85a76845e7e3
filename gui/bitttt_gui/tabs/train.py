"""Train tab: the settings form, validation, command preview, memory estimate, Start/Stop, config files."""

from __future__ import annotations

import dataclasses
import json
import queue
import shutil
import time
import tkinter as tk
from pathlib import Path
from tkinter import filedialog, ttk

from .. import command, runtime
from ..command import FIELDS, SettingsError, TrainSettings, parse_settings
from ..estimate import estimate, verdict
from ..events import fmt_bytes, fmt_count, read_events
from ..process import ChildProcess
from ..runs import latest_checkpoint, run_settings
from .common import PAD, Context, ScrolledFrame, Tooltip

SECTIONS = ("Run", "Model", "Optimisation", "Schedule", "More")
SECTION_TITLES = {"Run": "Run", "Model": "Model", "Optimisation": "Optimisation", "Schedule": "Device and schedule",
                  "More": "More settings"}
SECTION_PAIRS = {"Run": 2, "Model": 1, "Optimisation": 1, "Schedule": 1, "More": 3}   # label+field pairs a row
LAST_CONFIG = Path(".bitttt-gui") / "last-config.json"
CALIBRATION_DIR = Path(".bitttt-gui") / "calibration"
CALIBRATION_POLL_MS = 200


def estimate_columns(left: list[tuple[str, str]], right: list[tuple[str, str]], gap: int = 3) -> str:
    """Two key/value columns in a fixed font, each as wide as its longest entry plus a gap: a long value
    (a big model's parameter count) never runs into the next column. Two columns keep the pane short."""
    kw = max(len(k) for k, _ in left + right) + 1
    vw = max(len(v) for _, v in left) + gap
    return "\n".join(f"{lk:<{kw}}{lv:<{vw}}{rk:<{kw}}{rv}".rstrip() for (lk, lv), (rk, rv) in zip(left, right))


def _resume_step(resume: str) -> int:
    """The step a run resumed from ``resume`` (a run folder or a checkpoint) starts at; 0 if unknown."""
    if not resume:
        return 0
    path = Path(resume).expanduser()
    ckpt = path if (path / "trainer_state.json").is_file() else latest_checkpoint(path)
    try:
        step = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8")).get("step", 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0
    return step if isinstance(step, int) and step >= 0 else 0


def _set_wrap(label: ttk.Label, width: int) -> None:
    if int(str(label.cget("wraplength")) or 0) != max(300, width):
        label.configure(wraplength=max(300, width))


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
        self._timings: runtime.TimingSource | None = None
        self.calibration: ChildProcess | None = None
        self._calibration_q: queue.Queue = queue.Queue()
        self._calibration_tail: list[str] = []
        self._build()
        self.load_last_config()
        ctx.bus.subscribe("train.started", lambda *_: self._update_buttons())
        ctx.bus.subscribe("train.exited", self._on_exited)
        ctx.bus.subscribe("train.attached", self._on_attached)
        ctx.bus.subscribe("train.stage", self._on_stage)
        ctx.bus.subscribe("resume", self._on_resume)
        ctx.bus.subscribe("memory", lambda *_: self._refresh_estimate_if_device_changed())

    # -- layout --------------------------------------------------------------------------
    def _build(self):
        # Packed bottom-up first: pack gives the button bar, the estimate with its verdict and the command
        # their whole height before the form gets the rest, so they never shrink or vanish whatever the
        # fonts and the window size; the form scrolls instead when the window is too short for it.
        bar = ttk.Frame(self)
        bar.pack(side="bottom", fill="x", padx=PAD, pady=(PAD, 0))
        lower = ttk.Frame(self)
        lower.pack(side="bottom", fill="both", expand=True)   # room to spare goes to the command
        self.form_area = ScrolledFrame(self)
        self.form_area.pack(side="top", fill="x")
        self._build_form(self.form_area.inner)
        self._build_lower(lower)
        self._build_bar(bar)
        self._validate()

    def _build_form(self, form: ttk.Frame):
        for c in range(3):
            form.columnconfigure(c, weight=1, uniform="sections")
        frames = {}
        for sec in SECTIONS:
            frames[sec] = ttk.LabelFrame(form, text=SECTION_TITLES[sec], padding=PAD)
            for pair in range(SECTION_PAIRS[sec]):
                frames[sec].columnconfigure(2 * pair + 1, weight=1)
        frames["Run"].grid(row=0, column=0, columnspan=3, sticky="nsew", padx=PAD, pady=PAD)
        for c, sec in enumerate(("Model", "Optimisation", "Schedule")):
            frames[sec].grid(row=1, column=c, sticky="nsew", padx=PAD, pady=PAD)
        self.more_shown = tk.BooleanVar(value=False)
        self.more_frame = frames["More"]
        counts = dict.fromkeys(SECTIONS, 0)
        for f in FIELDS:
            lf = frames[f.section]
            pairs = SECTION_PAIRS[f.section]
            r, c = divmod(counts[f.section], pairs)
            counts[f.section] += 1
            col = 2 * c
            label = ttk.Label(lf, text=f.label)
            label.grid(row=r, column=col, sticky="w", padx=(PAD if c else 0, PAD), pady=1)
            var, w = self._field_widget(lf, f)
            w.grid(row=r, column=col + 1, sticky="w" if f.kind == "bool" else "ew", pady=1)
            Tooltip(label, f.tip)
            Tooltip(w, f.tip)
            self.vars[f.name] = var
            var.trace_add("write", lambda *_a, n=f.name: self._changed(n))
        rows = -(-counts["Run"] // SECTION_PAIRS["Run"])
        # On the hint's row, not a row of its own (a laptop screen has no height to spare), and first:
        # at the window's minimum with large fonts the form's right edge is cut.
        self.more_btn = ttk.Checkbutton(frames["Run"], text="More settings…", variable=self.more_shown,
                                        style="Toolbutton", command=self._show_more)
        self.more_btn.grid(row=rows, column=0, sticky="w", pady=(2, 0))
        ttk.Label(frames["Run"], text="Empty data = the corpus that ships with bitttt.", style="Hint.TLabel").grid(
            row=rows, column=1, columnspan=3, sticky="w", pady=(2, 0))

    def _field_widget(self, parent, f) -> tuple[tk.Variable, tk.Misc]:
        """The variable and the widget for one field; a path's widget is a frame (entry + pick buttons)."""
        if f.kind == "bool":
            var = tk.BooleanVar(value=getattr(self.settings, f.name))
            w = self.widgets[f.name] = ttk.Checkbutton(parent, variable=var, text="on")
            return var, w
        var = tk.StringVar(value=str(getattr(self.settings, f.name)))
        if f.kind == "choice":
            w = self.widgets[f.name] = ttk.Combobox(parent, textvariable=var, values=f.choices, state="readonly",
                                                    width=11)
            return var, w
        if f.kind != "path":
            w = self.widgets[f.name] = ttk.Entry(parent, textvariable=var, width=10)
            return var, w
        cell = ttk.Frame(parent)
        entry = self.widgets[f.name] = ttk.Entry(cell, textvariable=var, width=10)
        entry.pack(side="left", fill="x", expand=True)
        if f.name == "data":
            ttk.Button(cell, text="File…", width=5, command=lambda: self._pick(var, "file")).pack(side="left", padx=(2, 0))
            ttk.Button(cell, text="Folder…", width=7, command=lambda: self._pick(var, "dir")).pack(side="left")
        else:
            ttk.Button(cell, text="Browse…", width=8, command=lambda: self._pick(var, "dir")).pack(side="left", padx=(2, 0))
        return var, cell

    def _show_more(self):
        if self.more_shown.get():
            self.more_frame.grid(row=3, column=0, columnspan=3, sticky="nsew", padx=PAD, pady=PAD)
        else:
            self.more_frame.grid_remove()

    def _build_lower(self, lower: ttk.Frame):
        # The estimate keeps the width its columns ask for; the command takes the rest.
        lower.columnconfigure(1, weight=1)
        lower.rowconfigure(0, weight=1)
        est = ttk.LabelFrame(lower, text="Estimate before launch", padding=PAD)
        est.grid(row=0, column=0, sticky="nsew", padx=PAD, pady=PAD)
        self.estimate_label = ttk.Label(est, text="", justify="left", font="TkFixedFont")
        self.estimate_label.pack(anchor="w", fill="x")
        self.verdict_label = ttk.Label(est, text="", justify="left", wraplength=480)
        self.verdict_label.pack(anchor="w", fill="x", pady=(4, 0))
        # The run time: from the newest finished run with these settings, or a short calibration
        # (Measure run time, in the button bar: a row of its own here cost the form its height).
        self.runtime_label = ttk.Label(est, text="", justify="left", wraplength=480)
        self.runtime_label.pack(anchor="w", fill="x", pady=(4, 0))
        # Wrapped to the width the columns above it ask for (set with them), never to an allocated width:
        # that fed back into the pane's width, and the layout went round in circles.

        side = ttk.LabelFrame(lower, text="Command", padding=PAD)
        side.grid(row=0, column=1, sticky="nsew", padx=PAD, pady=PAD)
        side.columnconfigure(0, weight=1)
        side.rowconfigure(0, weight=1)
        # Wrapped at spaces, so an option like --save-every is never split across lines.
        self.preview = tk.Text(side, height=4, width=20, wrap="word", borderwidth=1, relief="solid",
                               font="TkFixedFont", highlightthickness=0, padx=4, pady=3)
        self.preview.grid(row=0, column=0, columnspan=2, sticky="nsew")
        scroll = ttk.Scrollbar(side, orient="vertical", command=self.preview.yview)   # long paths: more lines
        scroll.grid(row=0, column=2, sticky="ns")
        self.preview.configure(yscrollcommand=scroll.set)
        self.preview.bind("<Key>", lambda e: None if (e.state & 0x4) else "break")
        ttk.Button(side, text="Copy command", command=self.copy_command).grid(row=1, column=1, sticky="e", pady=(4, 0))
        self.error_label = ttk.Label(side, text="", style="Error.TLabel", justify="left", wraplength=300)
        self.error_label.grid(row=2, column=0, columnspan=3, sticky="ew", pady=(4, 0))
        self.preview.bind("<Configure>", lambda e: _set_wrap(self.error_label, e.width), add="+")

    def _build_bar(self, bar: ttk.Frame):
        self.start_btn = ttk.Button(bar, text="▶ Start training", style="Accent.TButton", command=self.start)
        self.start_btn.pack(side="left")
        self.stop_btn = ttk.Button(bar, text="■ Stop", command=self.ctx.stop_training, state="disabled")
        self.stop_btn.pack(side="left", padx=PAD)
        self.measure_btn = ttk.Button(bar, text="Measure time", command=self.calibrate)
        self.measure_btn.pack(side="left")
        Tooltip(self.measure_btn, "Time a few steps, an evaluation, a sample and a save of these settings on this "
                                  "computer (a short run, deleted afterwards): the estimate's run time.")
        ttk.Button(bar, text="Load config…", command=self.load_config_dialog).pack(side="right")
        ttk.Button(bar, text="Save config…", command=self.save_config_dialog).pack(side="right", padx=PAD)
        ttk.Button(bar, text="Preset defaults", command=lambda: self.apply_preset(self.vars["preset"].get())).pack(side="right")

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
        # Four rows (gradients are as big as the fp32 weights): the run time's line below costs no height.
        left = [("Parameters", fmt_count(e.n_params)),
                ("Ternary", fmt_count(e.n_ternary) if s.ternary else "off (float)"),
                ("Weights+grads", f"2×{fmt_bytes(e.weights)}"), ("AdamW state", fmt_bytes(e.optimizer))]
        right = [("Activations", fmt_bytes(e.activations)), ("Runtime", fmt_bytes(e.overhead)),
                 ("Total", fmt_bytes(e.total)), ("Export size", fmt_bytes(e.export_bytes))]
        self.estimate_label.configure(text=estimate_columns(left, right))
        _set_wrap(self.verdict_label, self.estimate_label.winfo_reqwidth())
        _set_wrap(self.runtime_label, self.estimate_label.winfo_reqwidth())
        # Every process holds its own model, optimizer and activations.
        state, sentence = verdict(e.total * s.nproc, free)
        style = {"fits": "Good.TLabel", "tight": "Warn.TLabel", "too_big": "Error.TLabel"}.get(state, "Hint.TLabel")
        parallel = (f" {s.nproc} processes: global batch {s.global_batch} sequences "
                    f"({s.batch_size} × {s.grad_accum} × {s.nproc}).") if s.nproc > 1 else ""
        self.verdict_label.configure(text=f"On {where}: {sentence}.{parallel}", style=style)
        self.estimate_state = state
        self._update_runtime(s)

    # -- run time --------------------------------------------------------------------------
    def timing_source(self) -> runtime.TimingSource:
        if self._timings is None or self._timings.workspace != Path(self.ctx.workspace):
            self._timings = runtime.TimingSource(self.ctx.workspace)
        return self._timings

    def expected_run_time(self, s: TrainSettings) -> tuple[float, runtime.Timings] | None:
        """(seconds from launch to exit, the timings used) for these settings, or None if not measured."""
        t = self.timing_source().for_key(runtime.speed_key(dataclasses.asdict(s)))
        if t is None:
            return None
        p = runtime.plan(s.steps, s.eval_every, s.sample_every, s.save_every, start_step=_resume_step(s.resume))
        return runtime.predict(t, p, s.eval_tokens), t

    def _update_runtime(self, s: TrainSettings):
        calibrating = self.calibration is not None and self.calibration.running()
        if calibrating:
            self.runtime_label.configure(text="Run time: measuring these settings on this computer…")
        else:
            got = self.expected_run_time(s)
            if got is None:
                self.runtime_label.configure(text="Run time: not measured for these settings yet.")
            else:
                secs, t = got
                rate = s.batch_size * s.seq_len * s.grad_accum * s.nproc / t.step_s
                self.runtime_label.configure(text=f"Run time: {runtime.fmt_duration(secs)} ({t.source}, "
                                                  f"{rate:,.0f} tokens/s).")
        self.measure_btn.configure(state="disabled" if calibrating or self.ctx.training_running() else "normal")

    def calibrate(self) -> str | None:
        """Time these settings with a short run (``runtime.calibration_overrides``) in a scratch folder;
        the timings are kept for the workspace, the folder is deleted."""
        if self.settings is None:
            return "fix the marked fields first"
        if self.ctx.training_running() or (self.calibration is not None and self.calibration.running()):
            return "busy: a run or a measurement is in progress"
        key = runtime.speed_key(dataclasses.asdict(self.settings))
        run_dir = self.ctx.workspace / CALIBRATION_DIR / time.strftime("%Y%m%d-%H%M%S")
        cal = dataclasses.replace(self.settings, **runtime.calibration_overrides(), run_name=run_dir.name)
        argv = command.build_train_argv(cal, run_dir, base=self.ctx.bitttt_cmd)
        self._calibration_q = queue.Queue()
        self._calibration_tail = []
        launched = time.time()
        try:
            self.calibration = ChildProcess(argv, self._calibration_q, name="calibrate", cwd=self.ctx.workspace,
                                            run_dir=run_dir).start()
        except OSError as e:
            self.runtime_label.configure(text=f"Run time: could not start the measurement: {e}")
            return str(e)
        self._update_runtime(self.settings)
        self._update_buttons()
        self.after(CALIBRATION_POLL_MS, self._poll_calibration, key, run_dir, launched)
        return None

    def _poll_calibration(self, key: str, run_dir: Path, launched: float):
        code, ended = None, False
        while True:
            try:
                item = self._calibration_q.get_nowait()
            except queue.Empty:
                break
            if item.kind == "line" and item.stream == "stderr" and item.text.strip():
                self._calibration_tail = (self._calibration_tail + [item.text.strip()])[-5:]
            elif item.kind == "exit":
                code, ended = item.code, True
        if not ended:
            self.after(CALIBRATION_POLL_MS, self._poll_calibration, key, run_dir, launched)
            return
        timings = runtime.measure(list(read_events(run_dir / "events.jsonl")),
                                  f"a measurement at {time.strftime('%H:%M')}", launched_at=launched) \
            if code == 0 else None
        shutil.rmtree(run_dir, ignore_errors=True)
        if timings is not None:
            self.timing_source().remember(key, timings)
        self._update_buttons()
        if self.settings is not None:
            self._update_runtime(self.settings)
        if timings is None:
            why = self._calibration_tail[-1] if self._calibration_tail else f"exit code {code}"
            self.runtime_label.configure(text=f"Run time: the measurement failed ({why}).")

    def cancel_calibration(self):
        """The window is closing: a measurement is not worth waiting for."""
        if self.calibration is not None and self.calibration.running():
            self.calibration.kill_now()

    def _refresh_estimate_if_device_changed(self):
        device, known = self._device_and_free()[0], self._device_and_free()[1] is not None
        if getattr(self, "_estimate_device", None) != (device, known):
            self._update_estimate()

    def _update_buttons(self):
        running = self.ctx.training_running()
        measuring = self.calibration is not None and self.calibration.running()
        self.start_btn.configure(state="disabled" if running or measuring or self.settings is None else "normal")
        self.measure_btn.configure(state="disabled" if running or measuring else "normal")
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

    def _fill_from_run(self, run_dir: Path, checkpoint=None):
        """The form's fields that the run's config.json knows, set to that run's values."""
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

    def _on_resume(self, run_dir: Path, checkpoint):
        """Fill the form with that run's own settings and lock what a resumed run cannot change."""
        self._fill_from_run(run_dir, checkpoint)
        self.vars["resume"].set(str(checkpoint or run_dir))
        self.ctx.show_tab("train")

    def _on_attached(self, run_dir: Path):
        """This window follows a run it did not start: the form shows that run's settings, not the last saved."""
        self._fill_from_run(run_dir)
        self.vars["resume"].set("")

    def _on_exited(self, code, severity, message, run_dir):
        self._update_buttons()
        self._refresh_resume(run_dir)
        if self.settings is not None:
            self._update_runtime(self.settings)      # the run just finished may be the newest measurement

    def _refresh_resume(self, run_dir: Path | None):
        """The run that ended resumed from the field's checkpoint and moved on: the field names its newest
        checkpoint now (a stopped run continues from there), or nothing once it finished (final/), so that
        Start never silently trains it again from the old one."""
        resume = self.vars["resume"].get().strip()
        if not resume or run_dir is None or not Path(resume).resolve().is_relative_to(Path(run_dir).resolve()):
            return
        checkpoint = latest_checkpoint(run_dir)
        self.vars["resume"].set("" if checkpoint is None or checkpoint.name == "final" else str(checkpoint))

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

