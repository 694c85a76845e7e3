"""The int8 LM head (per-row scales): error bounds, and its effect on the tiny model's logits."""

from __future__ import annotations

import pytest
import torch

from bitttt.hf import load_bitnet
from bitttt.hf.bitnet import Int8Linear


@pytest.mark.parametrize("shape", [(100, 64), (37, 2560), (1, 5)], ids=lambda s: f"N{s[0]}-K{s[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_within_its_rounding_bound(shape, dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g)
    x = torch.randn(3, shape[1], generator=g)
    head = Int8Linear(w)
    step = w.abs().amax(dim=1) / 127  # [N] weight step; activations' step is absmax/127 per token
    assert torch.equal(head.w_q.float(), torch.round(w / step[:, None]))
    # |x^ w^ - x w| <= |x^ - x| |w^| + |x| |w^ - w|, each rounding at most half a step.
    half_x = x.abs().amax(-1, keepdim=True) / 254  # [3, 1]
    bound = half_x * (w.abs() + step[:, None] / 2).sum(-1) + x.abs().sum(-1, keepdim=True) * step / 2  # [3, N]
    got = head(x.to(dtype)).float()
    slack = 0 if dtype == torch.float32 else 2 ** -8 * got.abs()  # bf16 output rounding
    assert ((got - x @ w.T).abs() <= bound * (1 + 1e-5) + slack + 1e-6).all()


def test_int8_head_keeps_the_tiny_models_top1(tiny):
    ids = torch.randint(0, 290, (3, 40), generator=torch.Generator().manual_seed(0))
    f = load_bitnet(tiny.packed, dtype=torch.float32)
    q = load_bitnet(tiny.packed, dtype=torch.float32, lm_head="int8")
    assert isinstance(q.lm_head, Int8Linear)
    with torch.no_grad():
        a, b = f(ids).logits, q(ids).logits
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.95
    assert (a - b).abs().max() < 0.1  # measured 0.033 (mean 0.005) on logits of magnitude ~3.1


def test_int8_head_on_a_tied_model_keeps_the_float_embedding(tiny):
    q = load_bitnet(tiny.tied, dtype=torch.float32, lm_head="int8")
    assert q.embed_tokens.weight.dtype == torch.float32 and q.lm_head.w_q.dtype == torch.int8


def test_int8_linear_gives_a_nan_row_for_a_nan_token():
    """The ternary layers' rule (reference.quantize_activations): a token holding NaN or inf gets
    a row of NaN, the other tokens are untouched (a NaN cast to int8 gave arbitrary logits)."""
    g = torch.Generator().manual_seed(1)
    head = Int8Linear(torch.randn(50, 64, generator=g))
    x = torch.randn(4, 64, generator=g)
    want = head(x)
    x[1, 3], x[2, 7] = float("nan"), float("inf")
    got = head(x)
    assert got[1].isnan().all() and got[2].isnan().all()
    assert torch.equal(got[[0, 3]], want[[0, 3]])
