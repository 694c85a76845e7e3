"""Loss-curve data: train and validation losses by step, smoothing, decimation; tkinter-free."""

from __future__ import annotations

import math
import os
from bisect import bisect_left

from .events import fmt_count, num, read_events

MAX_PLOT_POINTS = 4000   # more than a plot's pixels: decimate before drawing


class LossCurve:
    def __init__(self, name: str = ""):
        self.name = name
        self.train_steps: list[float] = []
        self.train_loss: list[float] = []
        self.val_steps: list[float] = []
        self.val_loss: list[float] = []
        self.tokens_per_step: float | None = None   # from the start event: batch × sequence × accumulation
        self.bits_per_nat_byte: float | None = None  # loss (nats/token) → bits/byte, from an eval event
        self.tokenizer: str | None = None
        self.best_val_bpb: float | None = None       # the lowest validation bits/byte an eval reported
        self.tokens_per_s: list[float] = []          # the trainer's throughput, one value per step

    def add(self, ev: dict) -> bool:
        """Take a ``start``, ``step`` or ``eval`` event; True if the curve changed."""
        kind = ev.get("event")
        if kind == "start":
            return self._add_start(ev)
        step = num(ev.get("step"))
        if step is None:
            return False
        if kind == "step":
            loss = num(ev.get("loss"))
            if loss is None:
                return False
            if self.train_steps and step <= self.train_steps[-1]:   # a resume: its evaluations come again too
                _rewind(step, self.val_steps, self.val_loss)
            _rewind(step, self.train_steps, self.train_loss)
            self.train_steps.append(step)
            self.train_loss.append(loss)
            speed = num(ev.get("tokens_per_s"))
            if speed is not None and speed > 0:
                self.tokens_per_s.append(speed)
            return True
        if kind == "eval":
            loss = num(ev.get("val_loss"))
            if loss is None:
                return False
            bpb = num(ev.get("val_bpb"))
            if bpb is not None and loss > 0:
                self.bits_per_nat_byte = bpb / loss
            if bpb is not None:
                self.best_val_bpb = bpb if self.best_val_bpb is None else min(self.best_val_bpb, bpb)
            _rewind(step, self.val_steps, self.val_loss)
            self.val_steps.append(step)
            self.val_loss.append(loss)
            return True
        return False

    def _add_start(self, ev: dict) -> bool:
        c = ev.get("config") if isinstance(ev.get("config"), dict) else {}
        sizes = [num(c.get(k)) for k in ("batch_size", "seq_len")]
        if all(v is not None for v in sizes):
            self.tokens_per_step = sizes[0] * sizes[1] * (num(c.get("grad_accum")) or 1)
        self.tokenizer = c.get("tokenizer") if isinstance(c.get("tokenizer"), str) else self.tokenizer
        return False

    def bits_per_byte_factor(self) -> float | None:
        """What turns a loss (nats per token) into bits per byte: measured by the trainer's evals, or
        1/ln 2 for the byte tokenizer (one token per byte); None when neither is known."""
        if self.bits_per_nat_byte is not None:
            return self.bits_per_nat_byte
        return 1 / math.log(2) if self.tokenizer == "byte" else None

    def series(self, x: str = "step", y: str = "loss") -> tuple[list, list, list, list] | None:
        """(train x, train y, val x, val y) with x "step" or "tokens" and y "loss" or "bpb";
        None when this run cannot give that axis (no token count, no bits-per-byte factor)."""
        fx = 1.0 if x == "step" else self.tokens_per_step
        fy = 1.0 if y == "loss" else self.bits_per_byte_factor()
        if fx is None or fy is None:
            return None
        return ([s * fx for s in self.train_steps], [v * fy for v in self.train_loss],
                [s * fx for s in self.val_steps], [v * fy for v in self.val_loss])

    def __len__(self):
        return len(self.train_steps) + len(self.val_steps)

    @classmethod
    def from_events_file(cls, path: str | os.PathLike, name: str = "") -> "LossCurve":
        c = cls(name)
        for ev in read_events(path):
            c.add(ev)
        return c


def _rewind(step: float, steps: list[float], *series: list[float]) -> None:
    """A resumed run starts again from its checkpoint's step: the steps it trains again replace
    the old ones from there (the same step read twice, from the file and the live stream, is one)."""
    if steps and step <= steps[-1]:
        k = bisect_left(steps, step)
        for values in (steps, *series):
            del values[k:]


COMPARE_FIELDS = (("name", "Run"), ("preset", "Preset"), ("mixer", "Mixer"), ("weights", "Weights"),
                  ("steps", "Steps"), ("tokens", "Tokens"), ("best_bpb", "Best val. bits/byte"),
                  ("tokens_per_s", "Tokens/s"))


def compare_row(curve: LossCurve, settings: dict) -> dict[str, str]:
    """One compared run as table cells (``COMPARE_FIELDS``): its settings (``runs.run_settings``,
    from config.json) and its final metrics (its events.jsonl, as ``curve``); "—" where unknown."""
    steps = int(max(curve.train_steps)) if curve.train_steps else None
    ternary = settings.get("ternary")
    speeds = sorted(curve.tokens_per_s)
    return {
        "name": curve.name,
        "preset": str(settings.get("preset") or "—"),
        "mixer": str(settings.get("mixer") or "—"),
        "weights": "—" if ternary is None else "ternary" if ternary else "float",
        "steps": "—" if steps is None else str(steps),
        "tokens": "—" if steps is None or curve.tokens_per_step is None else fmt_count(steps * curve.tokens_per_step),
        "best_bpb": "—" if curve.best_val_bpb is None else f"{curve.best_val_bpb:.3f}",
        # The median: the first steps (compilation, warm-up) and a last partial one do not count.
        "tokens_per_s": "—" if not speeds else fmt_count(speeds[len(speeds) // 2]),
    }


def smooth(values: list[float], weight: float) -> list[float]:
    """Debiased exponential moving average (TensorBoard's); weight 0 returns the values."""
    if weight <= 0 or not values:
        return list(values)
    weight = min(weight, 0.999)
    out, last, n = [], 0.0, 0
    for v in values:
        if v != v or v in (float("inf"), float("-inf")):
            out.append(v)
            continue
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n))
    return out


def decimate(xs: list[float], ys: list[float], max_points: int = MAX_PLOT_POINTS):
    """Every k-th point (always keeping the last) so at most about ``max_points`` are drawn."""
    n = len(xs)
    if n <= max_points:
        return xs, ys
    k = -(-n // max_points)
    idx = list(range(0, n, k))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


class TernaryHistory:
    """The trainer's ``ternary`` events by group: steps, zero fractions, flip fractions, scales."""

    FIELDS = ("zero_frac", "flip_frac", "scale")

    def __init__(self):
        self.groups: dict[str, dict[str, list[float]]] = {}
        self._session_start = False

    def add(self, ev: dict) -> bool:
        if ev.get("event") == "start":
            # A new trainer session (a resume, too) reports 0 flips first: it has no codes to
            # compare with yet. That report's flips are unknown, not 0 %.
            self._session_start = True
            return False
        step = num(ev.get("step"))
        groups = ev.get("groups")
        if ev.get("event") != "ternary" or step is None or not isinstance(groups, dict):
            return False
        changed = False
        for name, g in groups.items():
            if not isinstance(g, dict) or any(num(g.get(f)) is None for f in self.FIELDS):
                continue
            h = self.groups.setdefault(str(name), {"step": [], **{f: [] for f in self.FIELDS}})
            _rewind(step, h["step"], *(h[f] for f in self.FIELDS))
            h["step"].append(step)
            for f in self.FIELDS:
                h[f].append(math.nan if f == "flip_frac" and self._session_start else num(g[f]))
            changed = True
        self._session_start = self._session_start and not changed
        return changed

    def __len__(self):
        return len(self.groups)


def padded_range(values: list[float], min_span: float, low: float | None = None,
                 high: float | None = None) -> tuple[float, float]:
    """Axis limits around ``values`` at least ``min_span`` wide (centred on the data, kept inside
    ``low``..``high`` where given), so a flat series reads as flat instead of zooming into noise."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    if not finite:
        lo, hi = (low if low is not None else 0.0), (low if low is not None else 0.0) + min_span
    else:
        lo, hi = min(finite), max(finite)
        pad = max((min_span - (hi - lo)) / 2, 0.05 * (hi - lo))
        lo, hi = lo - pad, hi + pad
    if low is not None and lo < low:
        lo, hi = low, max(hi, low + min_span)
    if high is not None and hi > high:
        lo, hi = min(lo, high - min_span), high
        if low is not None:
            lo = max(lo, low)
    return lo, hi


def step_range(steps: list[float]) -> tuple[float, float]:
    """x limits for a plot by step: at least one step either side, so one report gives a few
    whole-number ticks, not -0.045..0.045."""
    if not steps:
        return 0.0, 1.0
    lo, hi = min(steps), max(steps)
    pad = max(1.0, 0.05 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    if lo < 0 <= min(steps):    # no negative step ticks, but the point stays off the edge
        lo = -0.5
    return lo, hi
