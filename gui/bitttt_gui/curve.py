"""Loss-curve data: train and validation losses by step, smoothing, decimation; tkinter-free."""

from __future__ import annotations

import os

from .events import num, read_events

MAX_PLOT_POINTS = 4000   # more than a plot's pixels: decimate before drawing


class LossCurve:
    def __init__(self):
        self.train_steps: list[float] = []
        self.train_loss: list[float] = []
        self.val_steps: list[float] = []
        self.val_loss: list[float] = []

    def add(self, ev: dict) -> bool:
        """Take a ``step`` or ``eval`` event; True if the curve changed."""
        kind = ev.get("event")
        step = num(ev.get("step"))
        if step is None:
            return False
        if kind == "step":
            loss = num(ev.get("loss"))
            if loss is None:
                return False
            self.train_steps.append(step)
            self.train_loss.append(loss)
            return True
        if kind == "eval":
            loss = num(ev.get("val_loss"))
            if loss is None:
                return False
            self.val_steps.append(step)
            self.val_loss.append(loss)
            return True
        return False

    def __len__(self):
        return len(self.train_steps) + len(self.val_steps)

    @classmethod
    def from_events_file(cls, path: str | os.PathLike) -> "LossCurve":
        c = cls()
        for ev in read_events(path):
            c.add(ev)
        return c


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
