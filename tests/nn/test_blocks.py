"""bitttt.nn's shared decoder pieces: RoPE in both pair conventions (interleaved: every pair
(x[2i], x[2i+1]) turned by positions * inv_freq[i]; half: transformers' rotate-half), RMSNorm
against transformers' and torch's, and the fused norm + ternary op against the two calls."""

from __future__ import annotations

import pytest
import torch

from bitttt import ops
from bitttt.nn.norm import RMSNorm, rms_norm_ternary
from bitttt.nn.rope import RoPE


def Rotary(head_dim: int, theta: float = 10000.0) -> RoPE:
    return RoPE(head_dim, theta, convention="interleaved")


def rotated(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """The rotation written out pair by pair, angles in float32 as the module takes them."""
    D = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    angles = positions.float()[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    out = torch.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rotary_matches_pairwise_rotation(dtype):
    torch.manual_seed(0)
    # [3, B, H, T, D] strided as Attention hands it over (a permuted view of the qkv output)
    x = torch.randn(2, 7, 3, 2, 16).permute(2, 0, 3, 1, 4).to(dtype)
    positions = torch.arange(5, 12)
    tol = {torch.bfloat16: 1e-2}.get(dtype, 1e-6)
    torch.testing.assert_close(Rotary(16)(x, positions), rotated(x, positions), rtol=tol, atol=tol)


def test_rotary_gradient_is_the_inverse_rotation():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    positions = torch.arange(9)
    (Rotary(8)(x, positions) * g).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    (rotated(x_ref, positions) * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("theta", [10000.0, 500000.0, 37.0])
def test_half_convention_is_transformers_rotate_half(dtype, theta):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(2)
    D = 24
    q, k = torch.randn(2, 3, 9, D).to(dtype), torch.randn(2, 1, 9, D).to(dtype)
    positions = torch.arange(100, 109)
    inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))  # LlamaRotaryEmbedding's
    freqs = positions.float()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    want_q, want_k = apply_rotary_pos_emb(q, k, emb.cos().to(dtype)[None], emb.sin().to(dtype)[None])
    rope = RoPE(D, theta, convention="half")
    torch.testing.assert_close(rope(q, positions), want_q, rtol=0, atol=0)
    torch.testing.assert_close(rope(k, positions), want_k, rtol=0, atol=0)


def test_the_conventions_are_one_rotation_in_two_layouts():
    """interleaved(x) seen through the pair permutation is half(x permuted): the same rotation."""
    torch.manual_seed(3)
    D = 16
    x = torch.randn(2, 5, D, dtype=torch.float64)
    positions = torch.arange(5)
    perm = torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2)))  # interleaved -> half layout
    half = RoPE(D, 1000.0, "half")(x[..., perm], positions)
    inter = RoPE(D, 1000.0, "interleaved")(x, positions)
    torch.testing.assert_close(inter[..., perm], half)
    with pytest.raises(ValueError, match="convention"):
        RoPE(D, convention="neox")


@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_rms_norm_is_torch_and_transformers_rms_norm(eps):
    transformers = pytest.importorskip("transformers")
    from transformers.models.bitnet.modeling_bitnet import BitNetRMSNorm

    torch.manual_seed(4)
    w = torch.rand(32) + 0.5
    x = torch.randn(3, 7, 32)
    norm = RMSNorm(32, eps, weight=w.clone())
    ref = torch.nn.RMSNorm(32, eps=eps)
    with torch.no_grad():
        ref.weight.copy_(w)
    torch.testing.assert_close(norm(x), ref(x), rtol=1e-6, atol=1e-6)
    hf = BitNetRMSNorm(32, eps=eps).to(torch.bfloat16)
    with torch.no_grad():
        hf.weight.copy_(w.bfloat16())
    xb = x.bfloat16()
    norm_b = RMSNorm(32, eps, weight=w.bfloat16())
    torch.testing.assert_close(norm_b(xb), hf(xb), rtol=0, atol=0)  # float32 math, cast, then the weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 3, 40])  # 40: over FUSED_NORM_MAX_TOKENS, the two calls
def test_fused_norm_ternary_equals_the_two_calls(dtype, M):
    g = torch.Generator().manual_seed(5)
    K, N = 300, 130
    packed, w_scale = ops.quantize_weight(torch.randn(N, K, generator=g))
    norm = RMSNorm(K, 1e-5, weight=(torch.rand(K, generator=g) + 0.5).to(dtype))
    x = (torch.randn(M, K, generator=g) * 3).to(dtype)
    bias = torch.randn(N, generator=g)
    with torch.no_grad():
        want = ops.ternary_linear(norm(x), packed, w_scale, bias)
        got = rms_norm_ternary(x, norm, packed, w_scale, bias)
        fused = ops.rms_norm_ternary_linear(x, norm.weight, norm.eps, packed, w_scale, bias)
    # the same integers unless mean(x²)'s float32 summation order flips one x_q at a .5 tie
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(fused.float(), want.float(), rtol=tol, atol=tol)
    x[0, 5] = float("nan")
    assert ops.rms_norm_ternary_linear(x, norm.weight, norm.eps, packed, w_scale)[0].isnan().all()


def test_silu_mul_gradient_against_float64():
    """SwiGLU's one-node silu(gate) * up (blocks.silu_mul) against float64 autograd of the
    plain split/silu/mul formula, values and grad_h."""
    from bitttt.nn.blocks import silu_mul

    torch.manual_seed(0)
    h = (torch.randn(3, 7, 2 * 40) * 3).requires_grad_()
    y = silu_mul(h, 40)
    g = torch.randn_like(y)
    y.backward(g)
    h64 = h.detach().double().requires_grad_()
    gate, up = h64[..., :40], h64[..., 40:]
    y64 = gate * torch.sigmoid(gate) * up
    y64.backward(g.double())
    torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h.grad.double(), h64.grad, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        # inference keeps torch's silu (the decode paths' bits); training runs ops.silu_mul,
        # whose exp is a polynomial within a few ulp of it
        torch.testing.assert_close(silu_mul(h, 40), y.detach(), atol=1e-6, rtol=1e-6)


def test_attention_training_step_against_float64_written_out():
    # the float attention mixer's output and gradients (x, qkv, out) against causal softmax
    # attention written out in float64: q, k, v as the qkv rows [q | k | v] per head,
    # interleaved RoPE on q and k, a -inf mask above the diagonal
    from bitttt.nn.blocks import Attention
    torch.manual_seed(3)
    B, T, C, H = 2, 11, 32, 4
    D = C // H
    attn = Attention(C, H, ternary=False)
    x = torch.randn(B, T, C, requires_grad=True)
    y, _ = attn(x)
    g = torch.randn(y.shape)
    y.backward(g)
    got = [y, x.grad, attn.qkv.weight.grad, attn.out.weight.grad]

    x64 = x.detach().double().requires_grad_()
    w_qkv = attn.qkv.weight.detach().double().requires_grad_()
    w_out = attn.out.weight.detach().double().requires_grad_()
    q, k, v = (x64 @ w_qkv.T).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
    pos = torch.arange(T)
    q, k = rotated(q, pos), rotated(k, pos)
    scores = (q @ k.transpose(-1, -2)) / D ** 0.5
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y64 = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C) @ w_out.T
    y64.backward(g.double())
    for a, b in zip(got, [y64, x64.grad, w_qkv.grad, w_out.grad]):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)
