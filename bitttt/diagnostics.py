"""Ternary training diagnostics: how the BitLinear codes move while a model trains (design §6 `ternary`).

Per group of BitLinear layers (the same role in every block: `qk_proj`, `v_proj`, `o_proj`, `gate_up`,
`down`, ...): the fraction of weights whose code is 0, the fraction of codes that changed since the
last report, and the mean weight scale s_w. Codes that keep flipping long into a run are the first
sign of a learning rate too high for ternary weights.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from bitttt import ops
from bitttt.nn.bitlinear import BitLinear


def group_name(module_name: str) -> str:
    """`blocks.3.mixer.qk_proj` -> `qk_proj`: one group per role across the blocks."""
    return module_name.rsplit(".", 1)[-1]


class TernaryMonitor:
    """Keeps the codes of the last report (int8, one byte per weight) to count flips."""

    def __init__(self) -> None:
        self._last: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def report(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """{group: {"zero_frac", "flip_frac", "scale"}}; flip_frac is 0 at the first report."""
        zeros: dict[str, int] = defaultdict(int)
        flips: dict[str, int] = defaultdict(int)
        count: dict[str, int] = defaultdict(int)
        scales: dict[str, list[float]] = defaultdict(list)
        for name, m in model.named_modules():
            if not isinstance(m, BitLinear) or m.is_packed:
                continue
            q, s_w = ops.ternarize_weight(m.weight)
            q = q.to(torch.int8)
            g = group_name(name)
            zeros[g] += int((q == 0).sum())
            count[g] += q.numel()
            scales[g].append(float(s_w.float().mean()))
            last = self._last.get(name)
            if last is not None and last.shape == q.shape:
                flips[g] += int((last != q).sum())
            self._last[name] = q.cpu() if last is None else last.copy_(q.cpu())
        return {g: {"zero_frac": zeros[g] / count[g], "flip_frac": flips[g] / count[g],
                    "scale": sum(scales[g]) / len(scales[g])} for g in sorted(count)}
