"""Fixed colours for plot series, keyed by the series' name; tkinter-free.

matplotlib's colour cycle advances on every ``plot`` call, so a plot redrawn from scratch gives
o_proj one colour now and another a second later. A ``SeriesColors`` gives each name the next
free colour the first time it is seen and that colour ever after.
"""

from __future__ import annotations

# matplotlib's "tab10", which reads well on white; wraps after ten names.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


class SeriesColors:
    def __init__(self, palette: tuple[str, ...] = PALETTE):
        self.palette = palette
        self.assigned: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name not in self.assigned:
            self.assigned[name] = self.palette[len(self.assigned) % len(self.palette)]
        return self.assigned[name]
