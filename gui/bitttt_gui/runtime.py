"""How long a training run will take, before it starts: timings measured on this machine; tkinter-free.

A run's wall time is its start-up (Python, torch, the data, the model), its steps, and what it
does between steps: evaluations, samples and checkpoint saves (``bitttt.train.Trainer.run``).
Each is measured from an ``events.jsonl`` (every event carries its ``time``):

- a step: from the step events' ``tokens_per_s``, which time the train step alone;
- an evaluation, a sample, a save: the gap between its event and the one before it (an
  evaluation's ternary report, emitted right after it, counts as part of it);
- the start-up: from the process start to the ``start`` event, plus the first step's warm-up
  beyond an ordinary step's time.

The timings come from the newest finished run with the same shape and speed settings
(``speed_key``), else from a short calibration run (``calibration_args``) whose timings are kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .events import num, read_events

# The settings a step's time depends on (a run's ``start`` event config holds them all).
SPEED_KEYS = ("preset", "mixer", "ternary", "n_layer", "n_embd", "n_head", "mini_batch", "tokenizer",
              "batch_size", "seq_len", "grad_accum", "threads", "compile", "device")
MIN_STEPS = 5                   # a run with fewer timed steps says too little
CALIBRATION_STEPS = 6           # the first is warm-up; five more are timed
TIMINGS_FILE = Path(".bitttt-gui") / "timings.json"


@dataclass
class Timings:
    """Seconds per unit of work on this machine, for one ``speed_key``."""

    step_s: float                   # one optimizer step
    eval_s: float | None            # one evaluation of ``eval_tokens`` tokens
    eval_tokens: int
    sample_s: float | None          # one sample
    save_s: float | None            # one checkpoint save
    startup_s: float | None         # process start to the first step, warm-up included
    source: str                     # where they come from, for the user: "run X", "a calibration run"
    steps_timed: int = 0


@dataclass
class Plan:
    """The work a run does: what ``Trainer.run`` will do for these settings."""

    steps: int
    evals: int
    samples: int
    saves: int


def speed_key(settings: dict) -> str:
    """The settings that set a step's time, as a string (a dict key and a file key). ``settings`` is a
    ``TrainSettings``' fields, or a run's ``start`` config with ``nproc`` added."""
    values = {k: settings.get(k) for k in SPEED_KEYS}
    values["nproc"] = settings.get("nproc") or 1
    values["device"] = values["device"] or "auto"
    return json.dumps(values, sort_keys=True)


def plan(steps: int, eval_every: int, sample_every: int, save_every: int, start_step: int = 0) -> Plan:
    """Counted as ``Trainer.run`` does: an evaluation before the first step of a fresh run, then every
    ``eval_every`` steps and at the last; samples every ``sample_every``; saves every ``save_every``
    before the last step, and ``final/`` at the end (0 = never, for each)."""
    def multiples(every: int) -> int:
        return (steps // every - start_step // every) if every > 0 else 0

    n = max(steps - start_step, 0)
    evals = (1 if start_step == 0 else 0) + multiples(eval_every) + (0 if eval_every > 0 and steps % eval_every == 0 else 1)
    saves = (((steps - 1) // save_every - start_step // save_every) if save_every > 0 else 0) + 1
    return Plan(steps=n, evals=evals if n else 0, samples=multiples(sample_every), saves=saves if n else 0)


def predict(t: Timings, p: Plan, eval_tokens: int) -> float:
    """Seconds from launch to exit. Unmeasured parts (a run without samples says nothing about
    them) count as a step each: small next to the rest, and never a blank."""
    eval_s = (t.eval_s if t.eval_s is not None else t.step_s) * eval_tokens / max(t.eval_tokens, 1)
    sample_s = t.sample_s if t.sample_s is not None else t.step_s
    save_s = t.save_s if t.save_s is not None else t.step_s
    return (t.startup_s or 0.0) + p.steps * t.step_s + p.evals * eval_s + p.samples * sample_s + p.saves * save_s


def measure(events: list[dict], source: str, launched_at: float | None = None) -> Timings | None:
    """The timings of a run's last session (a resumed run appends a new ``start``); None if it timed
    fewer than ``MIN_STEPS`` steps. ``launched_at``: the wall time the process was started, when the
    caller knows it (a calibration run); else the ``start`` event's ``process_start``, if any."""
    starts = [i for i, e in enumerate(events) if e.get("event") == "start"]
    if not starts:
        return None
    events = events[starts[-1]:]
    start = events[0]
    config = start.get("config") if isinstance(start.get("config"), dict) else {}
    world = int(num(start.get("world_size"), 1) or 1)
    tokens_per_step = (num(config.get("batch_size"), 0) * num(config.get("seq_len"), 0)
                       * num(config.get("grad_accum"), 1) * world)
    if tokens_per_step <= 0:
        return None
    step_times: list[tuple[int, float]] = []     # (steps covered, seconds)
    evals, samples, saves = [], [], []
    prev_time, prev_step, prev_kind = num(start.get("time")), num(start.get("start_step"), 0), "start"
    for e in events[1:]:
        kind, t = e.get("event"), num(e.get("time"))
        if t is None or prev_time is None:
            prev_time = t
            continue
        gap = t - prev_time
        if kind == "step":
            step, rate = num(e.get("step")), num(e.get("tokens_per_s"))
            if step is not None and rate and rate > 0 and step > prev_step:
                step_times.append((int(step - prev_step), (step - prev_step) * tokens_per_step / rate))
                prev_step = step
        elif kind == "eval":
            evals.append(gap)
        elif kind == "ternary" and prev_kind == "eval" and evals:
            evals[-1] += gap
        elif kind == "sample":
            samples.append(gap)
        elif kind == "checkpoint":
            saves.append(gap)
        prev_time, prev_kind = t, kind
    if len(step_times) < 2 or sum(n for n, _ in step_times[1:]) < MIN_STEPS:
        return None
    first_n, first_s = step_times[0]
    timed = step_times[1:]                       # the first step warms up: it goes to the start-up
    step_s = sum(s for _, s in timed) / sum(n for n, _ in timed)
    # The first evaluation warms up too (a fresh process's first forward): its excess over the
    # others is start-up, paid once, not per evaluation.
    warmup = max(first_s - first_n * step_s, 0.0)
    if len(evals) >= 2:
        later = sum(evals[1:]) / len(evals[1:])
        warmup += max(evals[0] - later, 0.0)
        evals = [later] * len(evals)
    born = launched_at if launched_at is not None else num(start.get("process_start"))
    startup = None
    if born is not None and num(start.get("time")) is not None:
        startup = num(start.get("time")) - born + warmup

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    return Timings(step_s=step_s, eval_s=mean(evals), eval_tokens=int(num(config.get("eval_tokens"), 0) or 0),
                   sample_s=mean(samples), save_s=mean(saves), startup_s=startup, source=source,
                   steps_timed=sum(n for n, _ in timed))


def run_key(events: list[dict]) -> str | None:
    """The ``speed_key`` of a run's last session, from its ``start`` event."""
    start = next((e for e in reversed(events) if e.get("event") == "start"), None)
    if start is None or not isinstance(start.get("config"), dict):
        return None
    config = dict(start["config"])
    config["nproc"] = int(num(start.get("world_size"), 1) or 1)
    config.setdefault("device", "auto")
    return speed_key(config)


def finished(events: list[dict]) -> bool:
    done = next((e for e in reversed(events) if e.get("event") == "done"), None)
    return done is not None and done.get("reason") in ("completed", "stopped")


class TimingSource:
    """Where the launcher finds timings for a form: the newest finished run with the same
    ``speed_key`` under ``<workspace>/runs``, else a calibration kept in ``TIMINGS_FILE``.
    Runs are re-read only when their ``events.jsonl`` changed."""

    def __init__(self, workspace: str | os.PathLike):
        self.workspace = Path(workspace)
        self._cache: dict[str, tuple[tuple, str | None, Timings | None]] = {}

    def for_key(self, key: str) -> Timings | None:
        best, best_mtime = None, -1.0
        try:
            dirs = [p for p in (self.workspace / "runs").iterdir() if p.is_dir()]
        except OSError:
            dirs = []
        for d in dirs:
            path = d / "events.jsonl"
            try:
                st = path.stat()
            except OSError:
                continue
            stamp = (st.st_mtime_ns, st.st_size)
            hit = self._cache.get(str(d))
            if hit is None or hit[0] != stamp:
                events = list(read_events(path))
                timings = measure(events, f"run {d.name}") if finished(events) else None
                hit = (stamp, run_key(events), timings)
                self._cache[str(d)] = hit
            if hit[1] == key and hit[2] is not None and st.st_mtime > best_mtime:
                best, best_mtime = hit[2], st.st_mtime
        if best is not None and best.startup_s is None:     # an older run: borrow a calibration's start-up
            cal = self.calibrated(key)
            if cal is not None and cal.startup_s is not None:
                best = Timings(**{**asdict(best), "startup_s": cal.startup_s})
        return best or self.calibrated(key)

    def calibrated(self, key: str) -> Timings | None:
        d = self._read_file().get(key)
        try:
            return Timings(**d) if isinstance(d, dict) else None
        except TypeError:       # a file from another version
            return None

    def remember(self, key: str, timings: Timings) -> None:
        data = self._read_file()
        data[key] = asdict(timings)
        path = self.workspace / TIMINGS_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass    # the estimate is a convenience: an unwritable workspace loses only this

    def _read_file(self) -> dict:
        try:
            data = json.loads((self.workspace / TIMINGS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def calibration_overrides() -> dict:
    """What a calibration run changes in the form's settings: a few steps, each logged; one
    evaluation before and one after (as every run has), one sample, the final save."""
    return {"steps": CALIBRATION_STEPS, "eval_every": 0, "save_every": 0, "sample_every": CALIBRATION_STEPS,
            "resume": ""}


def fmt_duration(seconds: float) -> str:
    """"about 40 s", "about 7 min", "about 2 h 10 min"."""
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60:02d} min"
