"""TTT-Linear ops at the edges the fuzzer found (tests/fuzz/test_fuzz_ops.py): ckpt_every past
the segment count, and the fake kernels (meta tensors) refusing what the kernels refuse."""

from __future__ import annotations

import pytest
import torch

import bitttt.ops  # noqa: F401  (the fake kernels)

B, H, T, D, b = 1, 2, 7, 4, 4  # 7 tokens from pos 0 with b = 4: two segments


def inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return [r(B, H, T, D), r(B, H, T, D), r(B, H, T, D), 0.1 * r(B, H, T).abs(), torch.rand(b, generator=g,
            dtype=dtype), 0.1 * r(B, H, D, D), 0.1 * r(B, H, D), torch.zeros(B, H, D, D, dtype=dtype),
            torch.zeros(B, H, D, dtype=dtype)]


LN = [torch.ones(H, D, dtype=torch.float64), torch.zeros(H, D, dtype=torch.float64)]


def grads(dtype=torch.float64):
    return [torch.ones(B, H, T, D, dtype=dtype), torch.zeros(B, H, D, D, dtype=dtype), torch.zeros(B, H, D, dtype=dtype),
            torch.zeros(B, H, D, D, dtype=dtype), torch.zeros(B, H, D, dtype=dtype)]


@pytest.mark.parametrize("every", [2**31 + 1, 2**62, 2**63 - 1])
def test_huge_ckpt_every_means_one_checkpoint(every):
    # Past the 2 segments, ckpt_every keeps only the first checkpoint, exactly as ckpt_every = 2
    # does; the backward used to size a buffer by it (2^62: heap overrun) and the forward's
    # checkpoint count overflowed at 2^63 - 1.
    a = inputs()
    want = torch.ops.bitttt.ttt_linear(*a, 0, *LN, 2)
    got = torch.ops.bitttt.ttt_linear(*a, 0, *LN, every)
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    want_g = torch.ops.bitttt.ttt_linear_backward(*grads(), *a, 0, *LN, want[5], want[6], 2)
    got_g = torch.ops.bitttt.ttt_linear_backward(*grads(), *a, 0, *LN, want[5], want[6], every)
    for w, g in zip(want_g, got_g):
        assert torch.equal(w, g)


def test_huge_ckpt_every_on_meta_agrees():
    a = [t.to("meta") for t in inputs()]
    out = torch.ops.bitttt.ttt_linear(*a, 0, *[t.to("meta") for t in LN], 2**63 - 1)
    assert out[5].shape == (B, H, 1, D, D)


def _meta(ts):
    return [t.to("meta") for t in ts]


BAD = {  # index into (q, k, v, lr, token_scale, W, c, gW, gc) -> a bad replacement
    "k-shape": (1, torch.zeros(B, H, T + 1, D)), "lr-shape": (3, torch.zeros(B, H)),
    "W-shape": (5, torch.zeros(B, H, D)), "c-dtype": (6, torch.zeros(B, H, D, dtype=torch.float32)),
    "token_scale-empty": (4, torch.zeros(0)),
}


@pytest.mark.parametrize("case", list(BAD))
def test_fake_refuses_what_the_kernel_refuses(case):
    i, bad = BAD[case]
    a = inputs()
    a[i] = bad.to(a[0].dtype) if case != "c-dtype" else bad
    with pytest.raises(RuntimeError):
        torch.ops.bitttt.ttt_linear(*a, 0, *LN, 0)
    with pytest.raises(RuntimeError, match="ttt_linear: "):  # the fake used to return shapes for these
        torch.ops.bitttt.ttt_linear(*_meta(a), 0, *_meta(LN), 0)


def test_fake_refuses_bad_backward_checkpoints():
    a = inputs()
    out = torch.ops.bitttt.ttt_linear(*a, 0, *LN, 1)
    wrong = out[5][:, :, :1]  # one checkpoint where ckpt_every = 1 saved two
    with pytest.raises(RuntimeError, match="ckpt_W must be"):
        torch.ops.bitttt.ttt_linear_backward(*grads(), *a, 0, *LN, wrong, out[6], 1)
    with pytest.raises(RuntimeError, match="ttt_linear_backward: ckpt_W must be"):
        torch.ops.bitttt.ttt_linear_backward(*_meta(grads()), *_meta(a), 0, *_meta(LN), wrong.to("meta"),
                                             out[6].to("meta"), 1)


def test_fake_decode_refuses_non_contiguous_state():
    a = [t[:, :, 0].contiguous() if i < 4 else t for i, t in enumerate(inputs())]
    a[5] = a[5].transpose(-1, -2)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        torch.ops.bitttt.ttt_linear_decode_(*a, 0, *LN)
    with pytest.raises(RuntimeError, match="ttt_linear_decode_: the state tensors"):
        torch.ops.bitttt.ttt_linear_decode_(*_meta(a[:5]), torch.empty_strided(a[5].shape, a[5].stride(),
                                            dtype=a[5].dtype, device="meta"), *_meta(a[6:]), 0, *_meta(LN))


@pytest.mark.parametrize("op", ["ttt_linear", "ttt_linear_decode_"])
def test_meta_mixed_with_cpu_is_refused(op):
    a = inputs()
    if op == "ttt_linear_decode_":
        a = [t[:, :, 0].contiguous() if i < 4 else t for i, t in enumerate(a)]
    a[2] = a[2].to("meta")
    extra = [0] if op == "ttt_linear" else []
    with pytest.raises(RuntimeError, match=rf"{op}: v must be on q's device cpu, got meta"):
        getattr(torch.ops.bitttt, op)(*a, 0, *LN, *extra)
