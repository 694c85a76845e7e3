"""BitLinear's training forward as an exact int8 GEMM (bitttt/ops.py _int8_linear; issue 26):
the same values as the float64 fake-quant formula to float32 rounding, the packed ternary
kernel's bits, the float path's gradients bit for bit, and its three C++ ops against torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitttt import ops, reference

needs_int8_gemm = pytest.mark.skipif(ops._int8_gemm_min_tokens() is None,
                                     reason="no x86 int8 GEMM behind torch._int_mm here")


@pytest.fixture
def int8_path(monkeypatch):
    """The int8 GEMM forward from one token up (the path under test at any size)."""
    monkeypatch.setattr(ops, "_INT8_GEMM_MIN_TOKENS_HERE", 1)


@pytest.fixture
def float_path(monkeypatch):
    """F.linear everywhere (the forward before the int8 GEMM)."""
    monkeypatch.setattr(ops, "_INT8_GEMM_MIN_TOKENS_HERE", None)


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(a.isnan(), b.isnan())
    assert torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


def ste_forward_float64(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Design §2 fake-quant forward written out in float64 (NaN rows for non-finite tokens), and
    each output's sum of |terms| (|x_dq| @ |w_dq|.T + |b|), the scale of its float32 rounding."""
    xd, wd = x.detach().double(), w.detach().double()
    finite = torch.isfinite(xd).all(dim=-1, keepdim=True)
    xd = torch.where(finite, xd, 0.0)
    s_x = 127.0 / xd.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    x_dq = torch.where(finite, (xd * s_x).round().clamp(-128, 127) / s_x, float("nan"))
    s_w = wd.abs().mean().clamp(min=1e-5)
    w_dq = (wd / s_w).round().clamp(-1, 1) * s_w
    bd = 0 if b is None else b.detach().double()
    return x_dq @ w_dq.T + bd, x_dq.abs() @ w_dq.abs().T + (0 if b is None else bd.abs())


def assert_float32_rounding_of(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                               exact_sum: bool = True) -> None:
    """y (float32) is the float64 formula to float32 rounding: the int8 GEMM's exact sum then
    three roundings (two products and the bias add) and the float32 scales' own (s_w is
    torch's float32 mean), within 16 ulps of the sum of |terms|; F.linear (exact_sum=False)
    adds one rounding per term."""
    want, terms = ste_forward_float64(x, w, b)
    assert y.dtype == torch.float32 and y.shape == want.shape
    assert torch.equal(y.isnan(), want.isnan())
    ulps = 16 if exact_sum else 16 + x.shape[-1]
    bound = ulps * 2.0**-24 * terms + 1e-30
    assert ((y.double() - want).nan_to_num(0.0).abs() <= bound.nan_to_num(0.0)).all()


# K = 2, 3 and odd K, a bias, a one-column output; M above and below every threshold
SHAPES = [((300,), 2, 5), ((2, 70), 3, 17), ((256,), 257, 33), ((3, 100), 256, 64), ((128,), 513, 1)]


@needs_int8_gemm
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"M{s[0]}-K{s[1]}-N{s[2]}")
def test_forward_is_the_fake_quant_formula_and_the_packed_kernel(int8_path, shape, bias):
    lead, K, N = shape
    torch.manual_seed(0)
    x = torch.randn(*lead, K) * 3
    w = torch.randn(N, K) * 0.05
    b = torch.randn(N) if bias else None
    assert ops._takes_int8_gemm(x, w, bias=b)
    y = ops.bitlinear_fake_quant(x, w, b)
    assert_float32_rounding_of(y, x, w, b)
    # the packed inference kernel's epilogue, to the bit: training and inference agree exactly
    q, w_scale = ops.ternarize_weight(w)
    assert_same_bits(y, ops.ternary_linear(x, ops.pack_ternary(q), w_scale, b))


@needs_int8_gemm
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_gradients_are_the_float_paths_bit_for_bit(monkeypatch, bias):
    # the backward is unchanged: the same x_dq and w_dq, so the same gradient bits; the forward
    # differs from F.linear(x_dq, w_dq) by float32 rounding only
    torch.manual_seed(1)
    x0, w0 = torch.randn(4, 80, 96) * 2, torch.randn(48, 96) * 0.05
    b0 = torch.randn(48) if bias else None
    g = torch.randn(4, 80, 48)
    results = []
    for min_tokens in (1, None):
        monkeypatch.setattr(ops, "_INT8_GEMM_MIN_TOKENS_HERE", min_tokens)
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        b = b0.clone().requires_grad_() if bias else None
        y = ops.bitlinear_fake_quant(x, w, b)
        y.backward(g)
        results.append((y.detach(), x.grad, w.grad, b.grad if bias else None))
    (y_int, *grads_int), (y_float, *grads_float) = results
    assert not torch.equal(y_int, y_float)  # two paths ran (sums rounded apart)
    torch.testing.assert_close(y_int, y_float, rtol=1e-5, atol=1e-5 * y_float.abs().max().item())
    for a, b in zip(grads_int, grads_float):
        assert (a is None and b is None) or torch.equal(a, b)


@needs_int8_gemm
def test_non_finite_tokens_give_nan_rows(int8_path):
    torch.manual_seed(2)
    x = torch.randn(6, 40, 64)
    x[0, 3, 5] = float("nan")
    x[1, 7, 0] = float("inf")
    x[2, 9, 63] = -float("inf")
    x[3, 11] = 0.0  # the absmax floor: a zero row stays the bias
    w, b = torch.randn(24, 64) * 0.05, torch.randn(24)
    y = ops.bitlinear_fake_quant(x, w, b)
    bad = torch.zeros(6, 40, dtype=torch.bool)
    bad[0, 3] = bad[1, 7] = bad[2, 9] = True
    assert y[bad].isnan().all() and not y[~bad].isnan().any()
    assert torch.equal(y[3, 11], b)
    assert_float32_rounding_of(y, x, w, b)


def test_k1_takes_f_linear(int8_path):
    # K = 1 stays on F.linear even where every other size takes the int8 GEMM (torch 2.13's
    # _int_mm sums it wrong): the reference's values
    torch.manual_seed(3)
    x, w, b = torch.randn(512, 1), torch.randn(8, 1), torch.randn(8)
    assert_float32_rounding_of(ops.bitlinear_fake_quant(x, w, b), x, w, b, exact_sum=False)


def test_few_tokens_take_f_linear():
    # below the threshold: F.linear over the fake quants, to the bit
    torch.manual_seed(3)
    x, w, b = torch.randn(3, 64), torch.randn(8, 64), torch.randn(8)
    y = ops.bitlinear_fake_quant(x, w, b)
    assert_same_bits(y, F.linear(ops.fake_quant_activations(x), ops.fake_quant_weight(w), b))
    assert_float32_rounding_of(y, x, w, b, exact_sum=False)


def test_dispatch_rule():
    x, w = torch.randn(512, 64), torch.randn(8, 64)
    here = ops._INT8_GEMM_MIN_TOKENS_HERE
    assert here == ops._int8_gemm_min_tokens()
    assert ops._takes_int8_gemm(x, w) == (here is not None and 512 >= here)
    assert not ops._takes_int8_gemm(x[:, :1], w[:, :1])  # K = 1
    assert not ops._takes_int8_gemm(x[:, :0], w[:, :0])  # K = 0
    assert not ops._takes_int8_gemm(x[:1], w)  # one token
    assert not ops._takes_int8_gemm(x.bfloat16(), w.bfloat16())
    assert not ops._takes_int8_gemm(x, w, bias=torch.zeros(8, dtype=torch.bfloat16))
    assert not ops._takes_int8_gemm(x, w[:0])  # N = 0
    if here is not None:
        assert ops._takes_int8_gemm(x[:here], w) and not ops._takes_int8_gemm(x[:here - 1], w)


@needs_int8_gemm
def test_torch_int_mm_k1_is_still_wrong():
    """Why K = 1 takes F.linear: torch._int_mm on the CPU sums [M, 1] @ [1, N] wrong (torch
    2.13). When this fails, torch fixed it and the K > 1 rule in _takes_int8_gemm can go."""
    torch.manual_seed(4)
    x = torch.randint(-127, 128, (256, 1), dtype=torch.int8)
    w = torch.randint(-1, 2, (16, 1), dtype=torch.int8)
    assert not torch.equal(torch._int_mm(x, w.t()), x.int() @ w.int().t())


@needs_int8_gemm
def test_shared_input_equals_one_by_one_and_the_formula(int8_path):
    torch.manual_seed(5)
    K = 96
    x = (torch.randn(2, 70, K) * 2).requires_grad_()
    ws = [(torch.randn(n, K) * sc).requires_grad_() for n, sc in [(24, 0.05), (40, 0.5), (8, 0.01)]]
    ys = ops.bitlinear_fake_quant_shared(x, ws)
    for y, w in zip(ys, ws):
        assert_same_bits(y, ops.bitlinear_fake_quant(x, w))
        assert_float32_rounding_of(y.detach(), x, w, None)
    gs = [torch.randn(y.shape) for y in ys]
    torch.autograd.backward(ys, gs)
    got = [x.grad] + [w.grad for w in ws]
    x.grad = None
    for w in ws:
        w.grad = None
    torch.autograd.backward([ops.bitlinear_fake_quant(x, w) for w in ws], gs)
    for a, b in zip(got[1:], [w.grad for w in ws]):
        assert torch.equal(a, b)
    torch.testing.assert_close(got[0], x.grad, rtol=1e-6, atol=1e-6)


@needs_int8_gemm
def test_compile_traces_the_int8_forward_and_backward(int8_path):
    torch.manual_seed(6)
    model = torch.nn.Sequential(*[m for _ in range(2) for m in (_bitlinear(64, 64), torch.nn.GELU())])
    x = torch.randn(4, 40, 64)
    compiled = torch.compile(model, fullgraph=True)
    losses, grads = [], []
    for m in (model, compiled):
        model.zero_grad()
        loss = m(x).square().mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)
    for g_c, g_e in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-4 * g_e.abs().max().item())


def _bitlinear(k: int, n: int) -> torch.nn.Module:
    from bitttt.nn import BitLinear

    return BitLinear(k, n, bias=True)


# ---------------------------------------------------------------------------------------
# The three C++ ops against torch, per ISA file
# ---------------------------------------------------------------------------------------


@pytest.fixture
def each_isa():
    from bitttt import _native

    yield list(_native._C.available_isas()), _native._C.set_isa
    _native._C.set_isa("auto")


def test_ops_equal_torch_in_every_isa_file(each_isa):
    """fake_quant_activations_int8 / fake_quant_weight_int8: the fake quants' bits plus the
    reference's codes and 1 / s_x; int8_gemm_epilogue: float(acc) * w_scale * x_scale + bias
    as torch rounds it; for row lengths 1..40 and 255..257 (the vector tails)."""
    isas, set_isa = each_isa
    torch.manual_seed(7)
    cases = []
    for K in [*range(1, 41), 255, 256, 257]:
        x = torch.randn(7, K) * 3
        x[1] = torch.arange(K) - K // 2  # .5 ties
        x[2] = 1e-7
        x[3, K // 2] = float("nan")
        x[4, K - 1] = float("inf")
        w = torch.randn(5, K) * 0.02
        acc = torch.randint(-2**20, 2**20, (7, K), dtype=torch.int32)
        cases.append((x, w, acc, torch.rand(7) + 0.01, torch.randn(K)))
    for isa in isas:
        set_isa(isa)
        for x, w, acc, x_scale, bias in cases:
            x_dq, x_q, s = torch.ops.bitttt.fake_quant_activations_int8(x)
            q_want, s_x = reference.quantize_activations(x)
            assert_same_bits(x_dq, ops.fake_quant_activations(x))
            assert torch.equal(x_q, q_want)
            assert_same_bits(s, torch.ones_like(s_x) / s_x)
            w_scale = ops._absmean_scale(w)
            w_dq, w_q = torch.ops.bitttt.fake_quant_weight_int8(w, w_scale)
            assert_same_bits(w_dq, ops.fake_quant_weight(w))
            assert torch.equal(w_q, ops.ternarize_weight(w)[0])
            for b in (None, bias):
                y = torch.ops.bitttt.int8_gemm_epilogue(acc, x_scale, w_scale, b)
                want = acc.float() * w_scale * x_scale.unsqueeze(1)
                assert_same_bits(y, want if b is None else want + b)


def test_weight_codes_of_a_nan_weight_are_zero():
    w = torch.randn(4, 9)
    w[1, 2] = float("nan")
    w_dq, w_q = torch.ops.bitttt.fake_quant_weight_int8(w, ops._absmean_scale(w))
    assert w_dq.isnan().all() and torch.equal(w_q, torch.zeros_like(w_q))


def test_ops_refuse_bad_input():
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.bitttt.fake_quant_activations_int8(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="2-D"):
        torch.ops.bitttt.fake_quant_weight_int8(torch.zeros(2, 3, 4), torch.tensor(1.0))
    acc, xs, ws = torch.zeros(3, 4, dtype=torch.int32), torch.ones(3), torch.tensor(1.0)
    with pytest.raises(RuntimeError, match="int32"):
        torch.ops.bitttt.int8_gemm_epilogue(acc.float(), xs, ws, None)
    with pytest.raises(RuntimeError, match="x_scale"):
        torch.ops.bitttt.int8_gemm_epilogue(acc, torch.ones(4), ws, None)
    with pytest.raises(RuntimeError, match="bias"):
        torch.ops.bitttt.int8_gemm_epilogue(acc, xs, ws, torch.ones(3))


def test_opcheck_int8_forward_ops():
    torch.manual_seed(8)
    x = torch.randn(2, 3, 48)
    w = torch.randn(8, 48)
    acc = torch.randint(-1000, 1000, (6, 8), dtype=torch.int32)
    torch.library.opcheck(torch.ops.bitttt.fake_quant_activations_int8.default, (x,))
    torch.library.opcheck(torch.ops.bitttt.fake_quant_weight_int8.default, (w, ops._absmean_scale(w)))
    for b in (None, torch.randn(8)):
        torch.library.opcheck(torch.ops.bitttt.int8_gemm_epilogue.default, (acc, torch.rand(6), torch.tensor(0.5), b))


@needs_int8_gemm
@pytest.mark.parametrize("mixer", ["attention", "ttt_linear"])
def test_model_training_step_as_on_the_float_gemm(monkeypatch, mixer):
    # a whole model's loss and gradients, int8 GEMM forward vs F.linear: float32 rounding apart
    # (through two layers a rounding can move one hidden activation across an int8 tie: one
    # step of ~1/127 of its token's absmax, hence the loose bound)
    from bitttt.model import BitTTTConfig, BitTTTForCausalLM

    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(9))
    calls = []
    int8_linear = ops._int8_linear
    monkeypatch.setattr(ops, "_int8_linear", lambda *a: calls.append(1) or int8_linear(*a))
    results = []
    for min_tokens in (1, None):
        monkeypatch.setattr(ops, "_INT8_GEMM_MIN_TOKENS_HERE", min_tokens)
        calls.clear()
        torch.manual_seed(0)
        model = BitTTTForCausalLM(BitTTTConfig(vocab_size=320, n_layer=2, n_embd=64, n_head=2, mixer=mixer,
                                               mini_batch=4))
        logits = model(ids).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
        assert bool(calls) == (min_tokens is not None)  # the int8 GEMM ran, or did not
    (loss_int, grads_int), (loss_float, grads_float) = results
    torch.testing.assert_close(loss_int, loss_float, rtol=1e-4, atol=0)
    assert len(grads_int) == len(grads_float)
    for a, b in zip(grads_int, grads_float):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2 * b.abs().max().item())
