"""The training-step kernels (csrc/train/: RMSNorm, the causal depthwise conv) against plain
float64 torch formulas written here, forward and every gradient, plus opcheck and bad inputs."""

from __future__ import annotations

import pytest
import torch

from bitttt import ops

# float32 kernels against float64 oracles: sums over a few hundred terms of O(1) values
FWD_TOL = 1e-5
GRAD_TOL = 1e-4  # weight gradients sum over every row (up to a few thousand terms)


def reference_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def reference_causal_conv(x, prev, w, b):
    """y[t] = sum_j w[:, j] * xp[t + j] + b over xp = cat(prev, x), as a loop of shifted products."""
    xp = torch.cat((prev, x), dim=1)
    T, K = x.shape[1], w.shape[1]
    return sum(w[:, j] * xp[:, j:j + T] for j in range(K)) + b


def check_against_reference(fn, ref, inputs):
    """fn(float32 inputs) vs ref(float64 copies): outputs and the gradients of every input."""
    ins = [t.clone().requires_grad_() for t in inputs]
    y = fn(*ins)
    g = torch.randn_like(y)
    y.backward(g)
    ins64 = [t.detach().double().requires_grad_() for t in inputs]
    y64 = ref(*ins64)
    y64.backward(g.double())
    torch.testing.assert_close(y.double(), y64, atol=FWD_TOL, rtol=FWD_TOL)
    for name, a, b in zip("xyzw", ins, ins64):
        scale = max(1.0, b.grad.abs().amax().item()) if b.grad.numel() else 1.0
        torch.testing.assert_close(a.grad.double() / scale, b.grad / scale, atol=GRAD_TOL, rtol=GRAD_TOL,
                                   msg=lambda m, n=name: f"grad of input {n}: {m}")


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 33, 257), (16, 128, 256), (4, 0, 8)],
                         ids=lambda s: "x".join(map(str, s)))
def test_rms_norm_against_float64(shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 2
    w = torch.randn(shape[-1])
    check_against_reference(lambda x, w: ops.rms_norm(x, w, 1e-6), lambda x, w: reference_rms_norm(x, w, 1e-6),
                            [x, w])


def test_rms_norm_non_contiguous():
    torch.manual_seed(1)
    x = torch.randn(40, 6, 70).transpose(0, 1)
    w = torch.randn(70)
    check_against_reference(lambda x, w: ops.rms_norm(x, w, 1e-5), lambda x, w: reference_rms_norm(x, w, 1e-5),
                            [x, w])


@pytest.mark.parametrize("B,T,C,K", [(2, 19, 70, 4), (1, 1, 3, 4), (3, 2, 16, 4), (16, 128, 256, 4), (2, 9, 33, 1),
                                     (2, 5, 8, 7)], ids=lambda v: str(v))
def test_causal_conv_against_float64(B, T, C, K):
    torch.manual_seed(2)
    inputs = [torch.randn(B, T, C), torch.randn(B, K - 1, C), torch.randn(C, K), torch.randn(C)]
    check_against_reference(ops.causal_conv1d, reference_causal_conv, inputs)


def test_causal_conv_strided_weight():
    """nn.Conv1d's weight [C, 1, K] passed as weight[:, 0] (a view) and a transposed x."""
    torch.manual_seed(3)
    B, T, C, K = 2, 11, 24, 4
    inputs = [torch.randn(B, C, T).transpose(1, 2), torch.zeros(B, K - 1, C), torch.randn(C, 1, K)[:, 0],
              torch.randn(C)]
    check_against_reference(ops.causal_conv1d, reference_causal_conv, inputs)


def reference_rope_heads(x, cos, sin, H):
    """Split [B, T, H*D] into heads [B, H, T, D], then rotate pairs (d, d + D/2) by the angle whose
    cos and sin are given: a complex multiply on the pairs, not nn.rope's cat-based formula."""
    B, T, C = x.shape
    D = C // H
    xh = x.view(B, T, H, D).transpose(1, 2)
    z = torch.complex(xh[..., :D // 2], xh[..., D // 2:]) * torch.complex(cos[:, :D // 2], sin[:, :D // 2])
    return torch.cat((z.real, z.imag), dim=-1)


@pytest.mark.parametrize("B,T,H,D", [(2, 19, 4, 64), (1, 1, 1, 2), (3, 16, 3, 10)], ids=lambda v: str(v))
def test_rope_heads_against_float64(B, T, H, D):
    from bitttt.nn.rope import rope_cos_sin

    torch.manual_seed(6)
    cos, sin = rope_cos_sin(torch.arange(T) % 16, D, 10000.0, torch.float32)
    check_against_reference(lambda x: ops.rope_heads(x, cos, sin, H),
                            lambda x: reference_rope_heads(x, cos.double(), sin.double(), H), [torch.randn(B, T, H * D)])


def test_rope_heads_equals_apply_rope_bitwise():
    """The TTT layer may take either path (training, decode): they must give the same bits."""
    from bitttt.nn.rope import apply_rope, rope_cos_sin

    torch.manual_seed(7)
    B, T, H, D = 2, 40, 4, 64
    x = torch.randn(B, T, H * D) * 3
    cos, sin = rope_cos_sin(torch.arange(T) % 16, D, 10000.0, torch.float32)
    expected = apply_rope(x.view(B, T, H, D).transpose(1, 2), cos, sin)
    assert torch.equal(ops.rope_heads(x, cos, sin, H), expected)


def test_opcheck_train_ops():
    torch.manual_seed(4)
    x, w = torch.randn(3, 5, 20, requires_grad=True), torch.randn(20, requires_grad=True)
    torch.library.opcheck(torch.ops.bitttt.rms_norm.default, (x, w, 1e-6))
    args = (torch.randn(2, 6, 8, requires_grad=True), torch.randn(2, 3, 8, requires_grad=True),
            torch.randn(8, 4, requires_grad=True), torch.randn(8, requires_grad=True))
    torch.library.opcheck(torch.ops.bitttt.causal_conv1d.default, args)
    cos, sin = torch.randn(5, 8), torch.randn(5, 8)
    torch.library.opcheck(torch.ops.bitttt.rope_heads.default, (torch.randn(2, 5, 16, requires_grad=True), cos, sin, 2))


def test_bad_inputs_name_the_problem():
    with pytest.raises(RuntimeError, match="rms_norm: weight must be"):
        ops.rms_norm(torch.randn(2, 8), torch.randn(7), 1e-6)
    with pytest.raises(RuntimeError, match="rms_norm: eps must be > 0"):
        ops.rms_norm(torch.randn(2, 8), torch.randn(8), 0.0)
    with pytest.raises(RuntimeError, match="rms_norm: takes float32"):
        ops.rms_norm(torch.randn(2, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64), 1e-6)
    with pytest.raises(RuntimeError, match="causal_conv1d: prev must be"):
        ops.causal_conv1d(torch.randn(2, 5, 8), torch.randn(2, 2, 8), torch.randn(8, 4), torch.randn(8))
    with pytest.raises(RuntimeError, match="rope_heads: x's last dimension 12 must split"):
        ops.rope_heads(torch.randn(2, 5, 12), torch.randn(5, 3), torch.randn(5, 3), 4)
    with pytest.raises(RuntimeError, match="rope_heads: cos and sin must be"):
        ops.rope_heads(torch.randn(2, 5, 16), torch.randn(4, 8), torch.randn(4, 8), 2)
    with pytest.raises(RuntimeError, match="causal_conv1d: weight must be"):
        ops.causal_conv1d(torch.randn(2, 5, 8), torch.randn(2, 3, 8), torch.randn(9, 4), torch.randn(8))


def test_modules_take_the_kernels_and_agree_with_their_compositions():
    """RMSNorm under autograd and the TTT layer's conv (T > 1) run these kernels; their outputs
    match the torch compositions they replace (inference: RMSNorm's own; the conv: nn.Conv1d)."""
    from torch.profiler import profile

    from bitttt.nn.norm import RMSNorm
    from bitttt.nn.ttt import CausalDepthwiseConv

    torch.manual_seed(5)
    norm = RMSNorm(48)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 10, 48)
    with profile() as prof:
        y = norm(x.requires_grad_())
    assert "bitttt::rms_norm" in {e.name for e in prof.events()}
    with torch.no_grad():
        torch.testing.assert_close(y, norm(x), atol=FWD_TOL, rtol=FWD_TOL)

    conv = CausalDepthwiseConv(48, 4)
    prev = torch.randn(3, 3, 48)
    with profile() as prof:
        y, tail = conv(x, prev)
    assert "bitttt::causal_conv1d" in {e.name for e in prof.events()}
    xp = torch.cat((prev, x), dim=1)
    torch.testing.assert_close(y, conv.conv(xp.transpose(1, 2)).transpose(1, 2), atol=FWD_TOL, rtol=FWD_TOL)
    assert torch.equal(tail, xp[:, -3:])
