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


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 33, 257), (16, 128, 256), (3, 300, 100), (4, 0, 8)],
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
                                     (2, 5, 8, 7), (2, 300, 64, 4), (2, 0, 8, 4)], ids=lambda v: str(v))
def test_causal_conv_against_float64(B, T, C, K):
    torch.manual_seed(2)
    inputs = [torch.randn(B, T, C), torch.randn(B, K - 1, C), torch.randn(C, K), torch.randn(C)]
    check_against_reference(ops.causal_conv1d, reference_causal_conv, inputs)


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _grads(fn, inputs):
    ins = [t.clone().requires_grad_() for t in inputs]
    y = fn(*ins)
    y.backward(torch.ones_like(y))
    return [y.detach()] + [t.grad for t in ins]


def test_weight_gradients_do_not_depend_on_the_thread_count(restore_threads):
    """rms_norm's and the conv's weight gradients are sums over every row, taken in chunks (of rows;
    of channels) that follow the shape, not the thread count: 1 and 3 threads agree bitwise (a
    run's numbers do not change with --threads)."""
    torch.manual_seed(3)
    cases = [(lambda x, w: ops.rms_norm(x, w, 1e-6), [torch.randn(8, 300, 100), torch.randn(100)]),
             (ops.causal_conv1d, [torch.randn(4, 300, 64), torch.randn(4, 3, 64), torch.randn(64, 4), torch.randn(64)])]
    for fn, inputs in cases:
        torch.set_num_threads(1)
        one = _grads(fn, inputs)
        torch.set_num_threads(3)
        three = _grads(fn, inputs)
        for a, b in zip(one, three, strict=True):
            assert torch.equal(a, b)


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


def reference_rope_qkv(qkv, cos, sin, H):
    """Split [B, T, 3*H*D] into q, k, v heads [B, H, T, D], then turn q's and k's pairs (2i, 2i+1)
    as complex numbers times cos + i sin (written here, not nn.rope's code)."""
    B, T, C3 = qkv.shape
    D = C3 // (3 * H)
    q, k, v = qkv.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
    rot = torch.complex(cos, sin)  # [T, D/2]

    def turn(x):
        z = torch.complex(x[..., 0::2], x[..., 1::2]) * rot
        return torch.stack((z.real, z.imag), dim=-1).flatten(-2)

    return turn(q), turn(k), v


@pytest.mark.parametrize("B,T,H,D", [(2, 19, 4, 64), (1, 1, 1, 2), (3, 16, 3, 10)], ids=lambda v: str(v))
def test_rope_qkv_against_float64(B, T, H, D):
    """q, k, v and the gradient of qkv, each output given its own random gradient; the gradients
    also arrive as transposed views (how attention's backward hands them over)."""
    from bitttt.nn.rope import rope_cos_sin

    torch.manual_seed(7)
    cos, sin = rope_cos_sin(torch.arange(T) % 16, D, 10000.0, torch.float32, convention="interleaved")
    qkv = torch.randn(B, T, 3 * H * D)
    grads = [torch.randn(B, T, H, D).transpose(1, 2) for _ in range(3)]  # [B, H, T, D], not contiguous
    x = qkv.clone().requires_grad_()
    outs = ops.rope_qkv(x, cos, sin, H)
    torch.autograd.backward(outs, grads)
    x64 = qkv.double().requires_grad_()
    refs = reference_rope_qkv(x64, cos.double(), sin.double(), H)
    torch.autograd.backward(refs, [g.double() for g in grads])
    for name, out, ref in zip("qkv", outs, refs, strict=True):
        assert out.is_contiguous() and out.shape == (B, H, T, D)
        torch.testing.assert_close(out.double(), ref, atol=FWD_TOL, rtol=FWD_TOL, msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=FWD_TOL, rtol=FWD_TOL)


def test_rope_qkv_opcheck_unused_outputs_and_bad_inputs():
    from bitttt.nn.rope import rope_cos_sin

    torch.manual_seed(8)
    cos, sin = rope_cos_sin(torch.arange(5), 8, 10000.0, torch.float32, convention="interleaved")
    qkv = torch.randn(2, 5, 3 * 2 * 8, requires_grad=True)
    torch.library.opcheck(torch.ops.bitttt.rope_qkv.default, (qkv, cos, sin, 2))
    q, k, v = ops.rope_qkv(qkv, cos, sin, 2)
    v.sum().backward()  # q and k unused: their parts of the gradient are zero
    assert torch.equal(qkv.grad[..., :32], torch.zeros(2, 5, 32)) and torch.equal(qkv.grad[..., 32:], torch.ones(2, 5, 16))
    with pytest.raises(RuntimeError, match="rope_qkv: qkv's last dimension 30 must split"):
        ops.rope_qkv(torch.randn(2, 5, 30), cos, sin, 2)  # heads of 5
    with pytest.raises(RuntimeError, match="rope_qkv: cos and sin must be"):
        ops.rope_qkv(torch.randn(2, 4, 48), cos, sin, 2)


def test_attention_takes_rope_qkv_and_agrees_with_its_composition(monkeypatch):
    """The attention mixer in training runs ops.rope_qkv; output and every gradient match the torch
    path it replaces (complex RoPE on unbound q, k), which it still takes without the kernel."""
    from torch.profiler import profile

    from bitttt.nn.blocks import Attention

    torch.manual_seed(9)
    attn = Attention(64, 4, ternary=False)
    x = torch.randn(3, 12, 64)

    def run():
        attn.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with profile() as prof:
            y, _ = attn(xi, pos=5)
            y.backward(torch.cos(torch.arange(y.numel()).view_as(y).float()))
        names = {e.name for e in prof.events()}
        return [y.detach(), xi.grad] + [p.grad.clone() for p in attn.parameters()], names

    fused, names = run()
    assert "bitttt::rope_qkv" in names and "bitttt::rope_qkv_backward" in names
    monkeypatch.setattr(ops, "uses_train_kernel", lambda *t: False)
    composed, names = run()
    assert "bitttt::rope_qkv" not in names
    for a, b in zip(fused, composed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


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


# SwiGLU's silu(gate) * up (csrc/train/silu_mul*): one file per ISA, each against float64 torch
# and against the scalar reference file.


def reference_silu_mul(h: torch.Tensor, hidden: int) -> torch.Tensor:
    gate, up = h[..., :hidden], h[..., hidden:]
    return gate * torch.sigmoid(gate) * up


def _isas():
    from bitttt import _native

    return list(_native._C.available_isas())


@pytest.fixture
def restore_isa():
    from bitttt import _native

    yield _native._C
    _native._C.set_isa("auto")


@pytest.mark.parametrize("lead,hidden", [((1,), 1), ((3,), 7), ((2, 5), 33), ((16, 128), 768), ((0, 4), 8)],
                         ids=lambda v: str(v))
def test_silu_mul_against_float64_every_isa(lead, hidden, restore_isa):
    torch.manual_seed(6)
    h = torch.randn(*lead, 2 * hidden) * 4  # gates well into both tails of the sigmoid
    for isa in _isas():
        restore_isa.set_isa(isa)
        check_against_reference(lambda h: ops.silu_mul(h, hidden), lambda h: reference_silu_mul(h, hidden), [h])


def test_silu_mul_simd_files_match_the_scalar_one(restore_isa):
    """Every length 1..40 (the SIMD tails), gates from -100 to 100 and ±inf, NaN: the SIMD
    files' polynomial exp within a few ulp of the scalar file's std::exp, and the same
    infinities and NaNs."""
    torch.manual_seed(7)
    for n in range(1, 41):
        gate = torch.cat((torch.linspace(-100, 100, 3 * n), torch.randn(n) * 5))
        gate[:3] = torch.tensor([float("inf"), float("-inf"), float("nan")])[: min(3, gate.numel())]
        gate = gate[torch.randperm(gate.numel())][:n]
        h = torch.cat((gate, torch.randn(n))).view(1, 2 * n)
        g = torch.randn(1, n)
        restore_isa.set_isa("scalar")
        y0, d0 = ops.silu_mul(h, n), torch.ops.bitttt.silu_mul_backward(g, h, n)
        for isa in _isas():
            restore_isa.set_isa(isa)
            y, d = ops.silu_mul(h, n), torch.ops.bitttt.silu_mul_backward(g, h, n)
            for a, b in ((y, y0), (d, d0)):
                assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf()), (isa, n)
                fin = b.isfinite()
                torch.testing.assert_close(a[fin], b[fin], atol=1e-30, rtol=4e-7, msg=lambda m: f"{isa} n={n}: {m}")


def test_silu_mul_non_contiguous_and_the_swiglu_path():
    """A strided h is taken; blocks.silu_mul under autograd runs the op and agrees with the
    torch autograd.Function it replaces (the path other devices and dtypes keep)."""
    from torch.profiler import profile

    from bitttt.nn import blocks

    torch.manual_seed(8)
    h = torch.randn(10, 3, 2 * 24).transpose(0, 1)
    check_against_reference(lambda h: ops.silu_mul(h, 24), lambda h: reference_silu_mul(h, 24), [h])
    h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    with profile() as prof:
        y1 = blocks.silu_mul(h1, 24)
    assert "bitttt::silu_mul" in {e.name for e in prof.events()}
    y2 = blocks._SiluMul.apply(h2, 24)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(y1, y2, atol=FWD_TOL, rtol=FWD_TOL)
    torch.testing.assert_close(h1.grad, h2.grad, atol=FWD_TOL, rtol=FWD_TOL)


def test_silu_mul_opcheck_and_bad_inputs():
    torch.manual_seed(9)
    torch.library.opcheck(torch.ops.bitttt.silu_mul.default, (torch.randn(2, 5, 16, requires_grad=True), 8))
    torch.library.opcheck(torch.ops.bitttt.silu_mul_backward.default, (torch.randn(2, 5, 8), torch.randn(2, 5, 16), 8))
    with pytest.raises(RuntimeError, match="silu_mul: h's last dimension must be 2\\*hidden = 16, got 15"):
        ops.silu_mul(torch.randn(2, 15), 8)
    with pytest.raises(RuntimeError, match="silu_mul: takes float32"):
        ops.silu_mul(torch.randn(2, 16, dtype=torch.float64), 8)
    with pytest.raises(RuntimeError, match="silu_mul_backward: grad must be h's shape"):
        torch.ops.bitttt.silu_mul_backward(torch.randn(3, 8), torch.randn(2, 16), 8)


# The TTT output gate gelu_tanh(gate) * y (csrc/train/silu_mul*, the same sigmoid).


def reference_gelu_tanh_mul(gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """0.5·g·(1 + tanh(sqrt(2/pi)·(g + 0.044715·g³)))·y, written out (not torch's gelu)."""
    u = (2 / torch.pi) ** 0.5 * (gate + 0.044715 * gate ** 3)
    return 0.5 * gate * (1 + torch.tanh(u)) * y


@pytest.mark.parametrize("shape", [(1,), (3, 7), (2, 5, 33), (16, 128, 256), (0, 4)], ids=lambda s: "x".join(map(str, s)))
def test_gelu_tanh_mul_against_float64_every_isa(shape, restore_isa):
    torch.manual_seed(10)
    gate, y = torch.randn(shape) * 3, torch.randn(shape)
    for isa in _isas():
        restore_isa.set_isa(isa)
        check_against_reference(ops.gelu_tanh_mul, reference_gelu_tanh_mul, [gate, y])


def test_gelu_tanh_mul_simd_files_match_the_scalar_one(restore_isa):
    torch.manual_seed(12)
    for n in range(1, 41):
        gate = torch.cat((torch.linspace(-30, 30, 3 * n), torch.randn(n) * 3))
        gate[:3] = torch.tensor([float("inf"), float("-inf"), float("nan")])[: min(3, gate.numel())]
        gate = gate[torch.randperm(gate.numel())][:n]
        y, g = torch.randn(n), torch.randn(n)
        restore_isa.set_isa("scalar")
        want = (ops.gelu_tanh_mul(gate, y), *torch.ops.bitttt.gelu_tanh_mul_backward(g, gate, y))
        for isa in _isas():
            restore_isa.set_isa(isa)
            got = (ops.gelu_tanh_mul(gate, y), *torch.ops.bitttt.gelu_tanh_mul_backward(g, gate, y))
            for a, b in zip(got, want):
                assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf()), (isa, n)
                fin = b.isfinite()
                # the sigmoid's argument 2u (|2u| up to the clamp, 80) rounds differently with FMA,
                # and exp turns an ulp of it (up to 7.6e-6 relative at 80) into that much of the output
                torch.testing.assert_close(a[fin], b[fin], atol=1e-30, rtol=3e-5, msg=lambda m: f"{isa} n={n}: {m}")


def test_gelu_tanh_mul_the_ttt_gate_path_opcheck_and_bad_inputs():
    """The gated TTT layer's output runs the op under autograd and agrees with torch's gelu
    there; opcheck; bad shapes and dtypes are named."""
    from torch.profiler import profile

    from bitttt.nn.ttt import TTTLinear

    torch.manual_seed(13)
    layer = TTTLinear(32, 2, mini_batch_size=4, use_gate=True, use_conv=True)
    x = torch.randn(2, 8, 32, requires_grad=True)
    with profile() as prof:
        y = layer(x)
    assert "bitttt::gelu_tanh_mul" in {e.name for e in prof.events()}
    with torch.no_grad():
        torch.testing.assert_close(y, layer(x), atol=1e-5, rtol=1e-5)
    gate, v = torch.randn(3, 5, 8, requires_grad=True), torch.randn(3, 5, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.bitttt.gelu_tanh_mul.default, (gate, v))
    torch.library.opcheck(torch.ops.bitttt.gelu_tanh_mul_backward.default,
                          (torch.randn(3, 5, 8), torch.randn(3, 5, 8), torch.randn(3, 5, 8)))
    with pytest.raises(RuntimeError, match="gelu_tanh_mul: y must have gate's shape"):
        ops.gelu_tanh_mul(torch.randn(2, 8), torch.randn(2, 7))
    with pytest.raises(RuntimeError, match="gelu_tanh_mul: takes float32"):
        ops.gelu_tanh_mul(torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64))


def _grad_list(seed, shapes, scale):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) * scale for s in shapes]


SHAPES = [(320, 256), (256,), (768, 256), (1,), (3, 70000), (4,)]  # one spans several chunks


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0], ids=["under", "near", "over"])
def test_clip_grad_norm_matches_torch(scale):
    """ops.clip_grad_norm_ against the float64 formula (norm; gradients times max_norm / (norm +
    1e-6) when that is below 1) and against torch.nn.utils.clip_grad_norm_ on the same gradients
    (float32 sums in another order: within 1e-5)."""
    grads = _grad_list(10, SHAPES, scale)
    norm64 = torch.stack([g.double().pow(2).sum() for g in grads]).sum().sqrt()
    coef64 = min(1.0, 1.0 / (norm64.item() + 1e-6))
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    expected = torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
    mine = [g.clone() for g in grads]
    norm = ops.clip_grad_norm_(mine, 1.0)
    assert norm.dtype == torch.float32 and norm.dim() == 0
    torch.testing.assert_close(norm.double(), norm64, rtol=2e-7, atol=0)
    torch.testing.assert_close(norm, expected, rtol=1e-5, atol=0)
    for a, g, p in zip(mine, grads, params, strict=True):
        torch.testing.assert_close(a.double(), g.double() * coef64, rtol=1e-6, atol=0)
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-12)
    if scale < 1:
        assert all(torch.equal(a, g) for a, g in zip(mine, grads, strict=True))


def test_clip_grad_norm_and_max_abs_edges(restore_threads):
    """A NaN gradient gives a NaN norm; max_abs is the largest |x| (negative ones too) and NaN if
    any element is; both agree bitwise at 1 and 3 threads."""
    grads = _grad_list(11, SHAPES, 5.0)
    grads[4][2, 69999] = -1e4
    assert ops.max_abs(grads).item() == 1e4
    results = []
    for n in (1, 3):
        torch.set_num_threads(n)
        mine = [g.clone() for g in grads]
        results.append((ops.clip_grad_norm_(mine, 1.0), mine, ops.max_abs(grads)))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][2], results[1][2])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))
    grads[2][5, 7] = float("nan")
    assert ops.max_abs(grads).isnan() and ops.clip_grad_norm_([g.clone() for g in grads], 1.0).isnan()
    with pytest.raises(RuntimeError, match="max_abs: takes contiguous"):
        ops.max_abs([torch.randn(4, 6).t()])
    torch.library.opcheck(torch.ops.bitttt.max_abs.default, ([torch.randn(3, 5), torch.randn(7)],))
    torch.library.opcheck(torch.ops.bitttt.clip_grad_norm_.default, ([torch.randn(3, 5) * 9, torch.randn(7)], 1.0))
