"""Ternary training diagnostics (design §6 `ternary`): codes at zero, flips between reports, scales."""

import pytest
import torch
from torch import nn

from bitttt.diagnostics import TernaryMonitor, group_name
from bitttt.events import format_text
from bitttt.nn import BitLinear


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleDict({"down": BitLinear(4, 2)}) for _ in range(2)])


def _set(layer: BitLinear, rows):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(rows, dtype=torch.float32))


def test_zero_fraction_flips_and_scale_by_hand():
    m = Two()
    # mean |W| = 0.5 for both: codes round(W / 0.5) clamped to [-1, 1]
    _set(m.blocks[0]["down"], [[0.0, 1.0, -1.0, 0.0], [0.5, -0.5, 0.0, 1.0]])   # zeros: 3 of 8
    _set(m.blocks[1]["down"], [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 1.0]])    # zeros: 4 of 8
    mon = TernaryMonitor()
    first = mon.report(m)
    assert list(first) == ["down"]
    assert first["down"]["zero_frac"] == pytest.approx(7 / 16)
    assert first["down"]["flip_frac"] == 0.0
    assert first["down"]["scale"] == pytest.approx(0.5)
    # two codes change: 0 -> +1 and -1 -> 0 (the scale stays 0.5: |W| sums are unchanged)
    _set(m.blocks[0]["down"], [[1.0, 0.0, -1.0, 0.0], [0.5, -0.5, 0.0, 1.0]])
    second = mon.report(m)
    assert second["down"]["flip_frac"] == pytest.approx(2 / 16)
    assert mon.report(m)["down"]["flip_frac"] == 0.0     # since the last report, not since the start


def test_groups_are_roles_across_blocks():
    assert group_name("blocks.3.mixer.qk_proj") == "qk_proj" and group_name("lm_head") == "lm_head"


def test_packed_layers_are_skipped():
    m = Two()
    for b in m.blocks:
        b["down"].pack()
    assert TernaryMonitor().report(m) == {}


def test_text_line():
    line = format_text({"event": "ternary", "time": 0, "step": 100,
                        "groups": {"down": {"zero_frac": 0.3, "flip_frac": 0.04, "scale": 0.01},
                                   "qk_proj": {"zero_frac": 0.5, "flip_frac": 0.02, "scale": 0.02}}})
    assert line == "ternary step 100 | zeros 40.0% | flipped 3.0% (most: down 4.0%)"
