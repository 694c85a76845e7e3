"""Chat tab: an inference playground over a ``bitttt chat --protocol jsonl`` child (DESIGN §6)."""

from __future__ import annotations

import collections
import queue
import tkinter as tk
from pathlib import Path
from tkinter import filedialog, ttk

from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .. import chat as proto
from .. import serving
from ..colors import SeriesColors
from ..command import SettingsError, build_chat_argv, format_command
from ..curve import step_range
from ..events import RAW, explain_exit, num, parse_line
from ..process import ChildProcess
from ..runs import RunInfo, scan_runs
from .common import PAD, Context, Tooltip, make_readonly, scrolled_text

SMALL_MODEL_NOTE = ("A small model trained for minutes continues text in the style of its data: it learns spelling, "
                    "words and some phrasing, not facts or instructions. For answers, train a larger preset for "
                    "hours on chat-formatted data (a JSONL of messages).")
POLL_MS = 30
PLOT_FONT = 9     # points: the memory plot's smallest text that still reads at a glance
MAX_BATCH = 200
PARAM_TIPS = {
    "temperature": "Randomness: 0 = always the most likely token.",
    "top_k": "Sample among the k most likely tokens (0 = all).",
    "top_p": "Sample among the most likely tokens whose probabilities add up to p.",
    "repetition_penalty": "Above 1 discourages repeating tokens already in the text.",
    "no_repeat_ngram": "Never repeat a run of this many tokens already in the turn (0 = off); stops loops.",
    "max_new_tokens": "Longest answer, in tokens.",
}


def default_model(infos: list[RunInfo]) -> str:
    """The model the Chat tab offers first, from runs newest first that have a checkpoint: the newest
    that finished (saved final/), not a newer run stopped after a few steps; else the newest."""
    finished = [r for r in infos if r.checkpoint is not None and r.checkpoint.name == "final"]
    return str((finished or infos)[0].path)


class ChatTab(ttk.Frame):
    def __init__(self, parent, ctx: Context):
        super().__init__(parent, padding=PAD)
        self.ctx = ctx
        self.q: queue.Queue = queue.Queue()
        self.child: ChildProcess | None = None
        self.model = tk.StringVar()
        self.prompt = tk.StringVar()
        self.params = {k: tk.StringVar(value=str(getattr(proto.Sampling, k))) for k in proto.Sampling.LIMITS}
        self.generating = False
        self._user_picked = False
        self._last_error = None
        self._tail: list[str] = []
        self.memory = proto.MemoryTrace()
        self._reply_started = False
        # "Serve this model": a `bitttt serve` child beside the chat one, and the probe that waits for it.
        self.serve_q: queue.Queue = queue.Queue()
        self.serve_child: ChildProcess | None = None
        self.serve_probe: serving.HealthProbe | None = None
        self.serve_state = serving.ServeState()
        self._serve_tail: collections.deque[str] = collections.deque(maxlen=30)
        self._build()
        self._training_run = None
        ctx.bus.subscribe("train.started", self._on_train_started)
        ctx.bus.subscribe("train.record", self._on_train_record)
        ctx.bus.subscribe("chat_with", self.open_model)
        self.refresh_models()
        self._poll()

    def _build(self):
        top = ttk.Frame(self)
        top.pack(fill="x", pady=(0, PAD))
        ttk.Label(top, text="Model:").pack(side="left")
        self.model_box = ttk.Combobox(top, textvariable=self.model, width=20)   # grows with the window
        self.model_box.pack(side="left", padx=4, fill="x", expand=True)
        self.model_box.bind("<<ComboboxSelected>>", lambda e: setattr(self, "_user_picked", True))
        self.model_box.bind("<Button-1>", lambda e: self.refresh_models(), add="+")
        Tooltip(self.model_box, "A run folder (its final or latest checkpoint), a checkpoint folder or an export.")
        ttk.Button(top, text="Browse…", command=self._browse).pack(side="left")
        self.load_btn = ttk.Button(top, text="Load model", style="Accent.TButton", command=self.start_server)
        self.load_btn.pack(side="left", padx=(PAD, 0))
        self.serve_btn = ttk.Button(top, text="Serve this model", command=self.start_serving)
        self.serve_btn.pack(side="left", padx=(PAD, 0))
        Tooltip(self.serve_btn, "Start `bitttt serve` for this model: an OpenAI-compatible HTTP API on this "
                                "computer (127.0.0.1) that chat UIs, editors and the openai package can use.")
        # The chat server's state and the checkpoint it loaded share a row: a line of its own stood empty.
        row = ttk.Frame(self)
        row.pack(fill="x", pady=(0, PAD))
        self.status = ttk.Label(row, text="No model loaded. Pick a run and press Load model.", style="Hint.TLabel")
        self.status.pack(side="left")
        self.loaded = ttk.Label(row, text="", style="Hint.TLabel")
        self.loaded.pack(side="left", padx=(PAD * 2, 0))
        self._build_serve_row()
        self.note = ttk.Label(self, text=SMALL_MODEL_NOTE, style="Hint.TLabel", wraplength=900, justify="left")
        self.note.pack(fill="x", pady=(0, PAD))
        self.note.bind("<Configure>", lambda e: self.note.configure(wraplength=max(e.width - 8, 200)))

        # The prompt bar is packed before the body, at the bottom: on a 768-pixel screen the
        # transcript gives way, never the input.
        bottom = ttk.Frame(self)
        bottom.pack(side="bottom", fill="x", pady=(PAD, 0))
        self.entry = ttk.Entry(bottom, textvariable=self.prompt)
        self.entry.pack(side="left", fill="x", expand=True)
        self.entry.bind("<Return>", lambda e: self.send())
        self.send_btn = ttk.Button(bottom, text="Send", command=self.send)
        self.send_btn.pack(side="left", padx=(PAD, 0))
        self.stop_btn = ttk.Button(bottom, text="Stop generation", command=self.stop_generation, state="disabled")
        self.stop_btn.pack(side="left", padx=(PAD, 0))

        body = ttk.Frame(self)
        body.pack(fill="both", expand=True)
        body.columnconfigure(0, weight=1)
        body.rowconfigure(0, weight=1)
        frame, self.transcript = scrolled_text(body, wrap="word", height=18)
        frame.grid(row=0, column=0, sticky="nsew")
        make_readonly(self.transcript)
        t, p = self.transcript, self.ctx.palette
        t.tag_configure("user", foreground=p.user, font=("TkDefaultFont", 0, "bold"), spacing1=8)
        t.tag_configure("bot", foreground=p.bot, spacing3=4)
        t.tag_configure("bot_label", foreground=p.bot_label, font=("TkDefaultFont", 0, "bold"))
        t.tag_configure("info", foreground=p.info, font=("TkDefaultFont", 0, "italic"))
        t.tag_configure("error", foreground=p.error)

        side = ttk.LabelFrame(body, text="Sampling", padding=PAD)
        side.grid(row=0, column=1, sticky="ns", padx=(PAD, 0))
        self.param_entries = {}
        for r, (name, var) in enumerate(self.params.items()):
            lab = ttk.Label(side, text=name.replace("_", " ").capitalize())
            lab.grid(row=r, column=0, sticky="w", pady=2)
            e = ttk.Entry(side, textvariable=var, width=8)
            e.grid(row=r, column=1, sticky="e", pady=2, padx=(PAD, 0))
            Tooltip(lab, PARAM_TIPS[name])
            Tooltip(e, PARAM_TIPS[name])
            self.param_entries[name] = e
        r = len(self.params)
        ttk.Separator(side).grid(row=r, column=0, columnspan=2, sticky="ew", pady=PAD)
        mem_tip = "The TTT layers keep learning from the conversation; their fast weights are the model's memory."
        b = ttk.Button(side, text="Reset memory", command=self.reset_memory)
        b.grid(row=r + 1, column=0, columnspan=2, sticky="ew", pady=2)
        Tooltip(b, mem_tip + " Reset starts from the trained weights again.")
        # Save and Load share a row, so the memory plot below still fits a 768-pixel screen.
        save = ttk.Button(side, text="Save…", command=self._save_dialog)
        save.grid(row=r + 2, column=0, sticky="ew", pady=2)
        Tooltip(save, "Save this conversation's memory (the TTT fast weights) to a file.")
        load = ttk.Button(side, text="Load…", command=self._load_dialog)
        load.grid(row=r + 2, column=1, sticky="ew", pady=2, padx=(4, 0))
        Tooltip(load, "Load a memory saved before: the model remembers that conversation.")
        self.speed = ttk.Label(side, text="", style="Hint.TLabel")
        self.speed.grid(row=r + 3, column=0, columnspan=2, sticky="w", pady=(PAD, 0))
        self._build_memory_plot(side, r + 4)

    def _build_serve_row(self):
        row = ttk.Frame(self)
        row.pack(fill="x", pady=(0, PAD))
        self.serve_stop_btn = ttk.Button(row, text="Stop serving", command=self.stop_serving, state="disabled")
        self.serve_stop_btn.pack(side="right")
        self.copy_buttons = {}
        for key, text in (("python", "Copy Python"), ("curl", "Copy curl"), ("url", "Copy URL")):
            b = ttk.Button(row, text=text, command=lambda k=key: self.copy_serve(k), state="disabled")
            b.pack(side="right", padx=(0, 4))
            self.copy_buttons[key] = b
        self.serve_tips = {k: Tooltip(b, "") for k, b in self.copy_buttons.items()}
        self.serve_label = ttk.Label(row, text=self.serve_state.sentence(), style="Hint.TLabel", justify="left")
        self.serve_label.pack(side="left", fill="x", expand=True)
        self.serve_label.bind("<Configure>", lambda e: self.serve_label.configure(wraplength=max(e.width - 4, 150)))

    def _build_memory_plot(self, parent, row):
        """How far each TTT layer's fast weights moved from a fresh conversation, turn by turn."""
        box = ttk.LabelFrame(parent, text="Memory (TTT fast weights)", padding=4)
        box.grid(row=row, column=0, columnspan=2, sticky="ew", pady=(PAD, 0))
        self.mem_figure = Figure(figsize=(2.6, 1.6), dpi=80, layout="constrained")
        self.mem_ax = self.mem_figure.add_subplot()
        self.mem_ax.set_xlabel("turn", fontsize=PLOT_FONT)
        self.mem_ax.set_ylabel("drift", fontsize=PLOT_FONT)   # the formula is in the tooltip: 9 pt fits no more
        self.mem_ax.tick_params(labelsize=PLOT_FONT)
        self.mem_ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # turns are whole
        self.mem_ax.grid(True, alpha=0.3)
        self.mem_colors = SeriesColors()     # layer 3 keeps its colour from turn to turn
        self.mem_legend = None
        self.mem_canvas = FigureCanvasTkAgg(self.mem_figure, master=box)
        self.mem_canvas.get_tk_widget().pack(fill="both", expand=True)
        Tooltip(self.mem_canvas.get_tk_widget(), "Per TTT layer, the drift ‖W − W₀‖ / ‖W₀‖: how far its fast weights moved from where a fresh "
                "conversation starts. They learn from every turn; Reset memory drops them to zero.")
        self.mem_lines = []

    def _redraw_memory(self):
        ax, m = self.mem_ax, self.memory
        for line in self.mem_lines:
            line.remove()
        self.mem_lines = [ax.plot(m.turns, m.series(i), marker="o", markersize=3, linewidth=1.2,
                                  label=f"layer {layer}", color=self.mem_colors(f"layer {layer}"))[0]
                          for i, layer in enumerate(m.layers)]
        # The legend goes under the plot, where it hides no point.
        if self.mem_legend is not None:
            self.mem_legend.remove()
            self.mem_legend = None
        if self.mem_lines:
            self.mem_legend = self.mem_figure.legend(handles=self.mem_lines, loc="outside lower center",
                                                     fontsize=PLOT_FONT, ncols=min(len(self.mem_lines), 4),
                                                     frameon=False, handlelength=1.2, columnspacing=0.8)
        top = max((max(d) for d in m.drift if d), default=0.0)
        ax.set_xlim(*step_range(m.turns))
        ax.set_ylim(0, top * 1.15 if top > 0 else 1e-3)
        self.mem_canvas.draw_idle()

    def _on_memory(self, memory, new_turn):
        if self.memory.add(memory, new_turn):
            self._redraw_memory()

    # -- models --------------------------------------------------------------------------
    def refresh_models(self):
        infos = [r for r in scan_runs(self.ctx.workspace) if r.checkpoint is not None]
        self.model_box.configure(values=[str(r.path) for r in infos])
        if not self.model.get() and infos:
            self.model.set(default_model(infos))

    def _on_train_started(self, run_dir, argv):
        self._training_run = run_dir

    def _on_train_record(self, rec, stream):
        # The run being trained becomes the default model once it has a checkpoint to load (the server
        # picks its latest); before that, the default stays a run that has one.
        if rec.get("event") == "checkpoint" and not self._user_picked and self._training_run is not None:
            self.model.set(str(self._training_run))

    def _browse(self):
        path = filedialog.askdirectory(parent=self, initialdir=self.ctx.workspace / "runs")
        if path:
            self.model.set(path)
            self._user_picked = True

    def open_model(self, path):
        self.model.set(str(path))
        self._user_picked = True
        self.ctx.show_tab("chat")
        self.start_server()

    # -- server --------------------------------------------------------------------------
    def start_server(self) -> str | None:
        model = self.model.get().strip()
        if not model:
            return self._say("Pick a model first.", "error")
        if not Path(model).exists():
            return self._say(f"{model} does not exist.", "error")
        self.stop_server()
        argv = build_chat_argv(model, base=self.ctx.bitttt_cmd)
        self.q = queue.Queue()
        self._last_error, self._tail = None, []
        try:
            self.child = ChildProcess(argv, self.q, name="chat", cwd=self.ctx.workspace, stdin=True).start()
        except OSError as e:
            self.child = None
            return self._say(f"Could not start the chat server ({format_command(argv)}): {e}", "error")
        self.generating = False
        self.memory = proto.MemoryTrace()
        self.loaded.configure(text="")
        self.status.configure(text=f"Loading {model}…", style="Hint.TLabel")
        self._append(f"— model {model}\n", "info")
        self._update_buttons()
        return None

    def stop_server(self):
        if self.child and self.child.running():
            try:
                self.child.proc.stdin.close()       # EOF: the server ends by itself
            except OSError:
                pass
            self.child.stop(grace_s=2, term_s=2, write_stop_file=False)

    # -- serve -----------------------------------------------------------------------------
    def start_serving(self) -> str | None:
        """Start `bitttt serve` for the chosen model on a free loopback port; an error sentence or None."""
        if self.serving():
            return None
        model = self.model.get().strip()
        if not model:
            return self._say("Pick a model to serve first.", "error")
        if not Path(model).exists():
            return self._say(f"{model} does not exist.", "error")
        port = serving.free_port()
        argv = serving.build_serve_argv(model, port, base=self.ctx.bitttt_cmd)
        self.serve_q = queue.Queue()          # a fresh queue: an old server's exit cannot end this one
        self._serve_tail.clear()
        try:
            self.serve_child = ChildProcess(argv, self.serve_q, name="serve", cwd=self.ctx.workspace).start()
        except OSError as e:
            self.serve_child = None
            self._set_serve(self.serve_state.to("failed", port=port, error=f"could not start {format_command(argv)}: {e}"))
            return self.serve_state.error
        self.serve_probe = serving.HealthProbe(port, self.serve_q, self.serve_child.running).start()
        self._set_serve(self.serve_state.to("starting", port=port, model="", error=""))
        return None

    def serving(self) -> bool:
        """True while a server this tab started is alive (starting, serving or stopping)."""
        return bool(self.serve_child and self.serve_child.running())

    def stop_serving(self, wait_s: float = 0.0):
        """SIGTERM (uvicorn shuts down gracefully), then SIGKILL; ``wait_s`` > 0 blocks that long
        for the exit (the window is closing: nothing may outlive it)."""
        if self.serve_probe is not None:
            self.serve_probe.cancel()
        if not self.serving():
            return
        self._set_serve(self.serve_state.to("stopping"))
        self.serve_child.stop(grace_s=0, term_s=5, write_stop_file=False)
        if wait_s > 0 and self.serve_child.wait(wait_s) is None and self.serve_child.running():
            self.serve_child.kill_now()
            self.serve_child.wait(2)

    def copy_serve(self, what: str):
        st = self.serve_state
        text = {"url": st.url, "curl": serving.curl_line(st.url, st.model),
                "python": serving.openai_snippet(st.url, st.model)}[what]
        self.clipboard_clear()
        self.clipboard_append(text)

    def _set_serve(self, state: serving.ServeState):
        self.serve_state = state
        style = {"serving": "Good.TLabel", "failed": "Error.TLabel"}.get(state.phase, "Hint.TLabel")
        self.serve_label.configure(text=state.sentence(), style=style)
        busy = state.phase in ("starting", "serving", "stopping")
        self.serve_btn.configure(state="disabled" if busy else "normal")
        self.serve_stop_btn.configure(state="normal" if state.phase in ("starting", "serving") else "disabled")
        up = state.phase == "serving"
        for key, b in self.copy_buttons.items():
            b.configure(state="normal" if up else "disabled")
        if up:
            self.serve_tips["url"].text = state.url
            self.serve_tips["curl"].text = serving.curl_line(state.url, state.model)
            self.serve_tips["python"].text = serving.openai_snippet(state.url, state.model)

    def _on_serve_item(self, item):
        if item.kind == "line":
            self._serve_tail.append(item.text)
        elif item.kind == "ready" and self.serve_state.phase == "starting":
            self._set_serve(self.serve_state.to("serving", model=item.text))
        elif item.kind == "exit":
            if self.serve_probe is not None:
                self.serve_probe.cancel()
            asked = self.serve_state.phase == "stopping"
            if asked or item.code == 0:
                self._set_serve(self.serve_state.to("stopped"))
            else:
                self._set_serve(self.serve_state.to("failed", error=serving.failure_line(list(self._serve_tail))))

    def _say(self, text, tag):
        self.status.configure(text=text, style="Error.TLabel" if tag == "error" else "Hint.TLabel")
        return text if tag == "error" else None

    # -- conversation --------------------------------------------------------------------
    def sampling(self) -> proto.Sampling | None:
        values = {k: v.get() for k, v in self.params.items()}
        try:
            s = proto.Sampling.parse(values)
            bad = {}
        except SettingsError as e:
            s, bad = None, e.errors
        for name, e in self.param_entries.items():
            e.configure(style="Bad.TEntry" if name in bad else "TEntry")
        if bad:
            self._say("Fix the marked sampling values: " + "; ".join(f"{k}: {v}" for k, v in bad.items()), "error")
        return s

    def send(self) -> str | None:
        text = self.prompt.get().strip()
        if not text or self.generating:
            return None
        if not self.child or not self.child.running():
            return self._say("No chat server: press Load model first.", "error")
        s = self.sampling()
        if s is None:
            return "bad sampling values"
        if not self.child.send(proto.generate_request(text, s)):
            return self._say("The chat server is gone.", "error")
        self.prompt.set("")
        self._append(f"You: {text}\n", "user")
        self._append("Model: ", "bot_label")
        self.generating = True
        self.speed.configure(text="")
        self._update_buttons()
        return None

    def stop_generation(self):
        """Cancels the reply being streamed; the server and the conversation's memory stay."""
        if self.child and self.generating:
            self.child.send(proto.cancel_request())

    def reset_memory(self):
        if self.child and self.child.send(proto.reset_request()):
            self._append("— memory reset: the TTT state starts from the trained weights again\n", "info")

    def save_memory(self, path):
        if self.child:
            self.child.send(proto.save_state_request(path))      # answered by ok (saved to …) or error

    def load_memory(self, path):
        if self.child:
            self.child.send(proto.load_state_request(path))

    def _save_dialog(self):
        path = filedialog.asksaveasfilename(parent=self, defaultextension=".safetensors", initialdir=self.ctx.workspace,
                                            filetypes=[("Chat memory", "*.safetensors"), ("All files", "*")])
        if path:
            self.save_memory(path)

    def _load_dialog(self):
        path = filedialog.askopenfilename(parent=self, initialdir=self.ctx.workspace,
                                          filetypes=[("Chat memory", "*.safetensors"), ("All files", "*")])
        if path:
            self.load_memory(path)

    def _append(self, text, tag):
        self.transcript.insert("end", text, tag)
        self.transcript.see("end")

    def transcript_text(self) -> str:
        return self.transcript.get("1.0", "end-1c")

    def _update_buttons(self):
        alive = bool(self.child and self.child.running())
        self.send_btn.configure(state="normal" if alive and not self.generating else "disabled")
        self.stop_btn.configure(state="normal" if self.generating else "disabled")

    # -- the child's output --------------------------------------------------------------
    def _poll(self):
        for _ in range(MAX_BATCH):
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                break
            if item.kind == "line":
                self._on_line(item.text, item.stream)
            elif item.kind == "exit":
                self._on_exit(item.code)
        for _ in range(MAX_BATCH):
            try:
                self._on_serve_item(self.serve_q.get_nowait())
            except queue.Empty:
                break
        self.after(POLL_MS, self._poll)

    def _on_line(self, line, stream):
        ev = parse_line(line)
        kind = ev["event"]
        if kind == "token":
            self.transcript.insert("end", str(ev.get("text", "")), "bot")
            self.transcript.see("end")
            self._show_speed(ev)
        elif kind == "done":
            self.transcript.insert("end", " — (stopped)\n" if ev.get("cancelled") else "\n", "bot")
            self.generating = False
            self._show_speed(ev)
            self._on_memory(ev.get("memory"), new_turn=True)
            self._update_buttons()
        elif kind == "ready":
            self._on_ready(ev)
        elif kind == "error":
            self._last_error = ev
            self._append(f"error: {ev.get('message', '')}" + (f" — {ev['hint']}" if ev.get("hint") else "") + "\n", "error")
            self.generating = False
            self._update_buttons()
        elif kind == "ok":
            self._on_ok(ev)
        elif kind == RAW:
            self._tail = (self._tail + [ev["text"]])[-20:]
            if stream == "stderr" and ev["text"].strip():
                self._append(ev["text"] + "\n", "info")
        else:
            self._append(f"— {kind}\n", "info")
        if kind != RAW and self.status.cget("text").startswith("Loading"):
            self.status.configure(text=f"Ready: {self.model.get()}", style="Good.TLabel")
            self._update_buttons()

    def _on_ready(self, ev):
        self.status.configure(text=f"Ready: {self.model.get()}", style="Good.TLabel")
        if ev.get("model"):
            self.loaded.configure(text=f"Loaded checkpoint: {ev['model']}")
        self._on_memory(ev.get("memory"), new_turn=False)
        self._update_buttons()

    def _on_ok(self, ev):
        op = ev.get("op")
        if op == "reset":               # the transcript already says so; the plot drops to zero
            self._on_memory(ev.get("memory"), new_turn=False)
        elif op == "save_state":
            self._append(f"— memory saved to {ev.get('path', '')}\n", "info")
        elif op == "load_state":
            self._append(f"— memory loaded from {ev.get('path', '')}\n", "info")
            self._on_memory(ev.get("memory"), new_turn=False)

    def _show_speed(self, ev):
        tps = num(ev.get("tokens_per_s"))
        n = num(ev.get("n_tokens"))
        if tps is not None:
            self.speed.configure(text=f"{tps:,.1f} tokens/s" + (f" · {int(n)} tokens" if n is not None else ""))

    def _on_exit(self, code):
        self.generating = False
        if code in (0, None) or code < 0:
            self.status.configure(text="Chat server closed.", style="Hint.TLabel")
        else:
            _sev, msg = explain_exit(code, self._last_error, None, self._tail)
            self.status.configure(text="Chat server failed: " + msg.replace("Training", "Chat").splitlines()[0],
                                  style="Error.TLabel")
        self._update_buttons()
