"""The fused fake-quant ops (csrc/quant/) against the torch composition BitLinear used before
them: the same float32 bits, forward, and the same straight-through gradients."""

from __future__ import annotations

import pytest
import torch

from bitttt import ops, reference


def composed_activations(x: torch.Tensor) -> torch.Tensor:
    """Per-token int8 quantize-dequantize from reference.quantize_activations, straight-through."""
    x_q, s_x = reference.quantize_activations(x)
    x_dq = (x_q.float() / s_x.unsqueeze(-1)).to(x.dtype)
    return x + (x_dq - x).detach()


def composed_weight(w: torch.Tensor) -> torch.Tensor:
    """Absmean ternary quantize-dequantize from reference.quantize_weight_ternary, straight-through."""
    q, s_w = reference.quantize_weight_ternary(w)
    w_dq = (q.float() * s_w.unsqueeze(1)).to(w.dtype)
    return w + (w_dq - w).detach()


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(a.isnan(), b.isnan())
    assert torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 33, 257), (4, 128, 256), (5, 0)])
def test_activations_equal_composition(shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3
    assert_same_bits(ops.fake_quant_activations(x), composed_activations(x))


def test_activations_extremes():
    torch.manual_seed(1)
    x = torch.randn(8, 65)
    x[0] = 0.0  # absmax floor: zeros stay zeros
    x[1, 3] = float("nan")  # a non-finite token comes out all NaN
    x[2, 4] = float("inf")
    x[3, 5] = -float("inf")
    x[4] = 1e-7  # below the absmax floor
    x[5] *= 1e30
    x[6] = torch.arange(65) - 32.0  # x * s_x lands on .5 ties: round half to even
    y = ops.fake_quant_activations(x)
    assert_same_bits(y, composed_activations(x))
    assert y[1].isnan().all() and y[2].isnan().all() and not y[7].isnan().any()
    assert torch.equal(y[0], torch.zeros(65))


def test_activations_non_contiguous_and_threads():
    torch.manual_seed(2)
    x = torch.randn(64, 300, 96).transpose(0, 1)[:, :, 5:90]  # strided, odd K
    expected = composed_activations(x)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert_same_bits(ops.fake_quant_activations(x), expected)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (257, 31), (768, 256), (0, 4)])
def test_weight_equals_composition(shape):
    torch.manual_seed(3)
    w = torch.randn(shape) * 0.02
    assert_same_bits(ops.fake_quant_weight(w), composed_weight(w))


def test_weight_extremes():
    assert_same_bits(ops.fake_quant_weight(torch.zeros(4, 9)), composed_weight(torch.zeros(4, 9)))
    w = torch.randn(16, 40)
    w[2, 3] = float("nan")
    assert ops.fake_quant_weight(w).isnan().all()
    w = torch.randn(6, 10).t()  # strided
    assert_same_bits(ops.fake_quant_weight(w), composed_weight(w))
    codes = torch.tensor([[0.5, -0.5, 1.5, 2.5, 0.0, -1.0]])  # |w| mean 1: ties round half to even
    assert_same_bits(ops.fake_quant_weight(codes), composed_weight(codes))


def test_straight_through_gradients():
    torch.manual_seed(4)
    x = torch.randn(3, 5, 40, requires_grad=True)
    w = torch.randn(24, 40, requires_grad=True)
    g = torch.randn(3, 5, 24)
    (torch.nn.functional.linear(ops.fake_quant_activations(x), ops.fake_quant_weight(w)) * g).sum().backward()
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    (torch.nn.functional.linear(composed_activations(x_ref), composed_weight(w_ref)) * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-6, atol=1e-6)
    # straight through: the gradient reaching the op's input is the one leaving its output
    x2 = torch.randn(7, 9, requires_grad=True)
    g2 = torch.randn(7, 9)
    ops.fake_quant_activations(x2).backward(g2)
    assert torch.equal(x2.grad, g2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64, torch.float32])
def test_torch_path_equals_the_reference_composition(dtype):
    """Other dtypes and devices take ops' own torch composition (float32 calls it directly):
    the reference's values to the bit, extremes included, and straight-through gradients."""
    torch.manual_seed(5)
    x = torch.randn(9, 33) * 3
    x[0] = 0.0
    x[1, 3] = float("nan")
    x[2, 4] = -float("inf")
    x[3] = 1e-7
    x[4] = torch.arange(33) - 16.0  # .5 ties
    # s_x = 127 / 1.97028017 as a true division, where 127 * (1 / t) is one ulp off: that
    # rounds x_q of -1.85392499 (x * s_x near -119.5) the other way
    x[5] = 0.0
    x[5, :2] = torch.tensor([1.9702801704406738, -1.8539249897003174])
    x = x.to(dtype).requires_grad_()
    w = ((torch.randn(8, 33) * 0.02).to(dtype)).requires_grad_()
    if dtype == torch.float32:
        fq_x, fq_w = ops._fake_quant_activations_torch, ops._fake_quant_weight_torch
    else:
        fq_x, fq_w = ops.fake_quant_activations, ops.fake_quant_weight
    y, v = fq_x(x), fq_w(w)
    assert_same_bits(y.detach(), composed_activations(x.detach()))
    assert_same_bits(v.detach(), composed_weight(w.detach()))
    assert y[1].isnan().all() and y[2].isnan().all() and (y[0] == 0).all()
    gy, gv = torch.randn(y.shape).to(dtype), torch.randn(v.shape).to(dtype)
    torch.autograd.backward((y, v), (gy, gv))
    assert torch.equal(x.grad, gy) and torch.equal(w.grad, gv)


def test_kernel_refuses_other_dtypes():
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.bitttt.fake_quant_activations(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="2-D"):
        torch.ops.bitttt.fake_quant_weight(torch.zeros(2, 3, 4), torch.tensor(1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 300), (0, 5)])
def test_ternarize_weight_equals_the_reference(dtype, shape):
    """ops.ternarize_weight (quantize_weight, the diagnostics and the torch fake quant use it)."""
    torch.manual_seed(6)
    for w in (torch.randn(shape) * 0.02, torch.zeros(shape)):
        w = w.to(dtype)
        q, s = ops.ternarize_weight(w)
        q_r, s_r = reference.quantize_weight_ternary(w)
        assert q.dtype == torch.int8 and s.dtype == torch.float32
        assert torch.equal(q, q_r) and torch.equal(s, s_r)


# ---------------------------------------------------------------------------------------
# bitlinear_fake_quant: BitLinear's training forward as one op and one autograd node
# ---------------------------------------------------------------------------------------


def ste_linear_written_out(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, g: torch.Tensor):
    """Design §2 fake quant and its straight-through gradients, in float64 plain torch:
    (y, grad_x, grad_w, grad_b) for output gradient g."""
    xd, wd = x.detach().double(), w.detach().double()
    s_x = 127.0 / xd.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    x_dq = (xd * s_x).round().clamp(-128, 127) / s_x
    s_w = wd.abs().mean().clamp(min=1e-5)
    w_dq = (wd / s_w).round().clamp(-1, 1) * s_w
    y = x_dq @ w_dq.T + (0 if b is None else b.detach().double())
    g2 = g.double().reshape(-1, g.shape[-1])
    grad_b = None if b is None else g2.sum(0)
    return y, g.double() @ w_dq, g2.T @ x_dq.reshape(-1, x.shape[-1]), grad_b


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_bitlinear_fake_quant_equals_the_ste_formula(dtype, bias):
    torch.manual_seed(7)
    K, N = 96, 40
    x = (torch.randn(3, 5, K) * 2).to(dtype).requires_grad_()
    w = (torch.randn(N, K) * 0.05).to(dtype).requires_grad_()
    b = (torch.randn(N) * 0.1).to(dtype).requires_grad_() if bias else None
    y = ops.bitlinear_fake_quant(x, w, b)
    g = torch.randn(y.shape).to(dtype)
    y.backward(g)
    y_r, gx_r, gw_r, gb_r = ste_linear_written_out(x, w, b, g)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for got, want in [(y, y_r), (x.grad, gx_r), (w.grad, gw_r)] + ([(b.grad, gb_r)] if bias else []):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())
    # one autograd node, straight to the leaves
    assert "BitLinearFakeQuant" in y.grad_fn.name()
    leaves = {type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None}
    assert leaves == {"AccumulateGrad"}


def test_bitlinear_fake_quant_only_the_gradients_asked_for():
    torch.manual_seed(8)
    x = torch.randn(4, 64)  # no grad: a frozen input
    w = torch.randn(16, 64, requires_grad=True)
    b = torch.randn(16)  # a frozen bias
    g = torch.randn(4, 16)
    ops.bitlinear_fake_quant(x, w, b).backward(g)
    _, _, gw_r, _ = ste_linear_written_out(x, w, b, g)
    torch.testing.assert_close(w.grad.double(), gw_r, rtol=1e-5, atol=1e-5)
    assert x.grad is None and b.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_bitlinear_fake_quant_shared_equals_the_ste_formula_per_weight(dtype):
    # one input, three weights of different widths and scales; each output and gradient is
    # that weight's own STE linear (its own absmean scale), written out in float64
    torch.manual_seed(10)
    K = 80
    x = (torch.randn(2, 7, K) * 2).to(dtype).requires_grad_()
    ws = [(torch.randn(n, K) * sc).to(dtype).requires_grad_() for n, sc in [(24, 0.05), (40, 0.5), (8, 0.01)]]
    ys = ops.bitlinear_fake_quant_shared(x, ws)
    gs = [torch.randn(y.shape).to(dtype) for y in ys]
    torch.autograd.backward(ys, gs)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    gx_want = 0
    for y, g, w in zip(ys, gs, ws):
        y_r, gx_r, gw_r, _ = ste_linear_written_out(x, w, None, g)
        gx_want = gx_want + gx_r
        for got, want in [(y, y_r), (w.grad, gw_r)]:
            assert got.dtype == dtype and got.shape == want.shape
            torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())
    torch.testing.assert_close(x.grad.double(), gx_want, rtol=tol, atol=tol * gx_want.abs().max().item())
    assert "BitLinearFakeQuantShared" in ys[0].grad_fn.name()


def test_bitlinear_fake_quant_shared_unused_outputs_and_frozen_weights():
    # an output nobody reads sends no gradient (None): its weight's gradient is zero, the
    # others' are theirs alone; a frozen weight gets none
    torch.manual_seed(11)
    x = torch.randn(5, 32, requires_grad=True)
    w0, w1 = torch.randn(16, 32, requires_grad=True), torch.randn(12, 32, requires_grad=True)
    w2 = torch.randn(8, 32)  # frozen
    y0, y1, y2 = ops.bitlinear_fake_quant_shared(x, [w0, w1, w2])
    g2 = torch.randn(y2.shape)
    (y2 * g2).sum().backward()
    _, gx_r, _, _ = ste_linear_written_out(x, w2, None, g2)
    torch.testing.assert_close(x.grad.double(), gx_r, rtol=1e-5, atol=1e-5)
    assert torch.equal(w0.grad, torch.zeros_like(w0)) and torch.equal(w1.grad, torch.zeros_like(w1))
    assert w2.grad is None


def test_opcheck_fake_quant_ops():
    # the C++ ops bitlinear_fake_quant runs: schema, fake kernels, autograd, aot dispatch
    torch.manual_seed(9)
    x = torch.randn(2, 3, 48, requires_grad=True)
    w = torch.randn(8, 48, requires_grad=True)
    torch.library.opcheck(torch.ops.bitttt.fake_quant_activations.default, (x,))
    torch.library.opcheck(torch.ops.bitttt.fake_quant_weight.default, (w, w.detach().abs().mean()))


def test_int8_activation_codes_equal_the_reference():
    """ops.quantize_activations_int8 (Int8Linear's activations) against the test oracle: random
    rows, a zero row, a row at a rounding tie, extremes, and rows holding NaN and inf."""
    torch.manual_seed(0)
    x = torch.randn(8, 37) * 3
    x[1] = 0
    x[2, :] = torch.linspace(-1, 1, 37)
    x[3, 0] = 1e30
    x[4, 5] = float("nan")
    x[5, 6] = float("inf")
    got_q, got_s = ops.quantize_activations_int8(x)
    want_q, want_s = reference.quantize_activations(x)
    assert torch.equal(got_q, want_q)
    torch.testing.assert_close(got_s, want_s, rtol=0, atol=0, equal_nan=True)


@pytest.fixture
def each_isa():
    """Runs the test body once per kernel set this CPU has (csrc/quant/fake_quant_*.cpp)."""
    from bitttt import _native

    yield lambda: list(_native._C.available_isas()), _native._C.set_isa
    _native._C.set_isa("auto")


def test_every_isa_file_gives_the_compositions_bits(each_isa):
    """fake_quant_kernels.inc compiled per ISA (scalar, AVX2, AVX-512): the same bits as the
    torch composition for every row length 1..40 and 255..257 (the vector tails), ties, the
    absmax floor, non-finite tokens and weights."""
    isas, set_isa = each_isa
    torch.manual_seed(11)
    cases = []
    for K in [*range(1, 41), 255, 256, 257]:
        x = torch.randn(7, K) * 3
        x[1] = torch.arange(K) - K // 2  # .5 ties
        x[2] = 1e-7
        x[3, K // 2] = float("nan")
        x[4, K - 1] = float("inf")
        x[5] *= 1e30
        w = torch.randn(5, K) * 0.02
        cases.append((x, w))
    w_ties = torch.tensor([[0.5, -0.5, 1.5, 2.5, 0.0, -1.0] * 7])
    for isa in isas():
        set_isa(isa)
        for x, w in cases:
            assert_same_bits(ops.fake_quant_activations(x), composed_activations(x))
            assert_same_bits(ops.fake_quant_weight(w), composed_weight(w))
        assert_same_bits(ops.fake_quant_weight(w_ties), composed_weight(w_ties))
