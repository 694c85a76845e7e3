"""bitttt.nn.BitLinear: fake-quant training, pack() to BT2 + kernel, and the promise that
both paths give the same output (design §2)."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitttt import ops, reference
from bitttt.nn import BitLinear

# Fake quant vs packed, float32: the same integer products summed by F.linear in float32
# (K rounded partial sums) instead of exactly; relative to the largest |output|.
FAKE_VS_PACKED_F32 = 1e-5
# bfloat16: fake quant rounds x_dq, w_dq = q * s_w and F.linear's output to bf16 (2^-9 each)
# where the kernel rounds once; relative to the largest |output|.
FAKE_VS_PACKED_BF16 = 2e-2
# Through several layers: the float32 rounding differences of one layer can move a hidden
# activation of the next across a rounding tie, one int8 step (~1/127 of its token's absmax).
FAKE_VS_PACKED_MODEL = 1e-2

DTYPES = [torch.float32, torch.bfloat16]
DTYPE_IDS = {torch.float32: "f32", torch.bfloat16: "bf16"}


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    a, e = actual.float(), expected.float()
    torch.testing.assert_close(a, e, rtol=tol, atol=tol * e.abs().max().item())


def ternary_of(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Design §2 absmean quantization, written out: (q int8 [N, K], s_w float32 scalar)."""
    s_w = w.detach().float().abs().mean()
    return torch.round(w.detach().float() / s_w).clamp(-1, 1).to(torch.int8), s_w


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", [((4, 7), 300, 17), ((1,), 2600, 100), ((64,), 256, 3)],
                         ids=["B4-T7-K300-N17", "M1-K2600-N100", "M64-K256-N3"])
def test_fake_quant_equals_packed(isa, shape, dtype, bias):
    lead, K, N = shape
    torch.manual_seed(0)
    layer = BitLinear(K, N, bias=bias).to(dtype)
    x = torch.randn(*lead, K).to(dtype)
    with torch.no_grad():
        y_fake = layer(x)
        layer.pack()
        assert layer.is_packed
        y_packed = layer(x)
    assert y_packed.dtype == dtype and tuple(y_packed.shape) == (*lead, N)
    assert_close_to_scale(y_packed, y_fake, FAKE_VS_PACKED_F32 if dtype == torch.float32 else FAKE_VS_PACKED_BF16)


def test_fake_quant_forward_is_quantized():
    # Fake quant is not the float layer: its output is that of the ternary weights.
    torch.manual_seed(0)
    layer = BitLinear(300, 17)
    x = torch.randn(5, 300)
    q, s_w = ternary_of(layer.weight)
    x_q, s_x = reference.quantize_activations(x)
    want = (x_q.double() @ q.double().T) * s_w.double() / s_x.double().unsqueeze(1)
    with torch.no_grad():
        y = layer(x)
    assert_close_to_scale(y, want.float(), FAKE_VS_PACKED_F32)
    assert not torch.allclose(y, F.linear(x, layer.weight), rtol=1e-3, atol=1e-3)


def test_pack_stores_bt2_of_the_weight():
    torch.manual_seed(0)
    layer = BitLinear(300, 17, bias=True)
    q, s_w = ternary_of(layer.weight)
    bias = layer.bias.detach().clone()
    layer.pack()
    assert layer.weight is None
    assert torch.equal(ops.unpack_ternary(layer.packed, 300), q)
    torch.testing.assert_close(layer.w_scale, s_w.expand(17), rtol=1e-6, atol=0)
    assert torch.equal(layer.bias.detach(), bias)
    packed_before = layer.packed.clone()
    assert layer.pack() is layer  # packing twice changes nothing
    assert torch.equal(layer.packed, packed_before)


# ---------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------


def test_fake_quant_straight_through_gradients():
    torch.manual_seed(0)
    K, N = 64, 32
    layer = BitLinear(K, N, bias=True)
    x = torch.randn(3, 5, K, requires_grad=True)
    y = layer(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    for g in (x.grad, layer.weight.grad, layer.bias.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # Straight-through: the gradients of F.linear at the quantized values.
    q, s_w = ternary_of(layer.weight)
    w_dq = q.float() * s_w
    x_q, s_x = reference.quantize_activations(x.detach())
    x_dq = x_q.float() / s_x.unsqueeze(-1)
    g2 = grad_out.reshape(-1, N)
    torch.testing.assert_close(x.grad, grad_out @ w_dq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, g2.T @ x_dq.reshape(-1, K), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, g2.sum(0), rtol=1e-5, atol=1e-5)


def test_packed_layer_gradients(isa):
    torch.manual_seed(0)
    layer = BitLinear(300, 17, bias=True).pack()
    x = torch.randn(4, 300, requires_grad=True)
    y = layer(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    w = ops.unpack_ternary(layer.packed, 300).float() * layer.w_scale.unsqueeze(1)
    torch.testing.assert_close(x.grad, grad_out @ w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, grad_out.sum(0), rtol=1e-5, atol=1e-5)
    assert not layer.packed.requires_grad and not layer.w_scale.requires_grad


# ---------------------------------------------------------------------------------------
# Training: fake quant learns, pack() keeps what it learned
# ---------------------------------------------------------------------------------------


def make_mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(BitLinear(d_in, hidden, bias=True), nn.ReLU(), BitLinear(hidden, d_out, bias=True))


def pack_all(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.pack()
    return model


def test_training_reduces_loss_and_pack_keeps_predictions():
    torch.manual_seed(0)
    n, d_in, classes = 512, 16, 4
    x = torch.randn(n, d_in)
    labels = (x @ torch.randn(d_in, classes)).argmax(-1)  # a linear teacher
    model = make_mlp(d_in, 64, classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    with torch.no_grad():
        logits_fake = model(x)
        accuracy = (logits_fake.argmax(-1) == labels).float().mean().item()
        logits_packed = pack_all(model)(x)
    assert accuracy > 0.8
    agree = (logits_packed.argmax(-1) == logits_fake.argmax(-1)).float().mean().item()
    assert agree >= 0.99
    assert_close_to_scale(logits_packed, logits_fake, FAKE_VS_PACKED_MODEL)


# ---------------------------------------------------------------------------------------
# state_dict, dtype
# ---------------------------------------------------------------------------------------


def test_state_dict_after_pack():
    torch.manual_seed(0)
    layer = BitLinear(300, 17, bias=True)
    assert set(layer.state_dict()) == {"weight", "bias"}
    layer.pack()
    sd = layer.state_dict()
    assert set(sd) == {"packed", "w_scale", "bias"}
    assert sd["packed"].dtype == torch.uint8 and tuple(sd["packed"].shape) == (17, 512 // 4)
    assert sd["w_scale"].dtype == torch.float32 and tuple(sd["w_scale"].shape) == (17,)

    other = BitLinear(300, 17, bias=True).pack()  # different random weights
    x = torch.randn(3, 300)
    assert not torch.equal(other(x), layer(x))
    other.load_state_dict(sd)
    assert torch.equal(other(x), layer(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_to_dtype_fake_quant(dtype):
    torch.manual_seed(0)
    layer = BitLinear(300, 17, bias=True)
    x = torch.randn(4, 300)
    with torch.no_grad():
        y32 = layer(x)
        layer.to(dtype)
        assert layer.weight.dtype == dtype and layer.bias.dtype == dtype
        y = layer(x.to(dtype))
    assert y.dtype == dtype
    assert_close_to_scale(y.float(), y32, FAKE_VS_PACKED_BF16)


def test_pack_after_to_bf16():
    torch.manual_seed(0)
    layer = BitLinear(300, 17, bias=True).to(torch.bfloat16).pack()
    assert layer.w_scale.dtype == torch.float32
    x = torch.randn(4, 300, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_to_dtype_after_pack(dtype):
    # A packed model cast with .to(dtype) (as a bf16 inference model is) keeps working:
    # its BT2 bytes and float32 scales are not float weights to cast.
    torch.manual_seed(0)
    layer = BitLinear(300, 17, bias=True).pack()
    x = torch.randn(4, 300)
    with torch.no_grad():
        y32 = layer(x)
        layer.to(dtype)
        assert layer.packed.dtype == torch.uint8
        y = layer(x.to(dtype))
    assert y.dtype == dtype
    assert_close_to_scale(y.float(), y32, FAKE_VS_PACKED_BF16)


def test_to_bf16_after_pack_keeps_w_scale_exact():
    # w_scale must not go through bf16 on its way back to float32.
    torch.manual_seed(0)
    layer = BitLinear(300, 17).pack()
    w_scale = layer.w_scale.clone()
    layer.to(torch.bfloat16)
    assert layer.w_scale.dtype == torch.float32
    assert torch.equal(layer.w_scale, w_scale)


# ---------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compile_packed_model_fullgraph():
    torch.manual_seed(0)
    model = pack_all(make_mlp(300, 96, 17)).eval()
    compiled = torch.compile(model, fullgraph=True)
    for shape in [(8, 300), (2, 3, 300)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert torch.equal(compiled(x), model(x))


@pytest.mark.slow
def test_compile_fake_quant_model_fullgraph():
    torch.manual_seed(0)
    model = make_mlp(300, 96, 17)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(8, 300)
    with torch.no_grad():
        assert_close_to_scale(compiled(x), model(x), FAKE_VS_PACKED_MODEL)


@pytest.mark.slow
def test_compile_fake_quant_training_step_fullgraph():
    # The training forward (one bitlinear_fake_quant op per layer) and its backward trace
    # whole, and give eager's loss and gradients.
    torch.manual_seed(0)
    model = make_mlp(300, 96, 17)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(8, 300)
    losses, grads = [], []
    for m in (model, compiled):
        model.zero_grad()
        loss = m(x).square().mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[1], losses[0], rtol=FAKE_VS_PACKED_MODEL, atol=0)
    for g_c, g_e in zip(grads[1], grads[0]):
        assert_close_to_scale(g_c, g_e, FAKE_VS_PACKED_MODEL)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_from_linear_copies_weights_and_fake_quantizes_them(bias):
    torch.manual_seed(0)
    linear = nn.Linear(300, 17, bias=bias)
    before = linear.weight.detach().clone()
    layer = BitLinear.from_linear(linear)
    assert (layer.in_features, layer.out_features) == (300, 17)
    assert torch.equal(layer.weight, linear.weight) and layer.weight is not linear.weight
    assert (layer.bias is None) == (not bias)
    if bias:
        assert torch.equal(layer.bias, linear.bias)
    # The output is the fake quant of linear's weights, written out here (design §2).
    x = torch.randn(5, 300)
    q, s_w = ternary_of(linear.weight)
    x_q, s_x = reference.quantize_activations(x)
    want = (x_q.double() @ q.double().T) * s_w.double() / s_x.double().unsqueeze(1)
    if bias:
        want = want + linear.bias.detach().double()
    with torch.no_grad():
        y = layer(x)
    assert_close_to_scale(y, want.float(), FAKE_VS_PACKED_F32)
    # A copy: training the BitLinear leaves the nn.Linear as it was.
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert torch.equal(linear.weight, before)


def test_from_linear_keeps_dtype_and_rejects_other_modules():
    layer = BitLinear.from_linear(nn.Linear(8, 4, dtype=torch.bfloat16))
    assert layer.weight.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="nn.Linear"):
        BitLinear.from_linear(nn.Conv1d(8, 4, 1))


def test_shared_input_linears_equal_the_layers_one_by_one_bit_for_bit():
    # unpacked BitLinears of one input run as one op; outputs and weight gradients are the
    # layers' own, called one by one, to the bit; the input's gradient sums the same products
    # (in another order: to rounding)
    from bitttt.nn.bitlinear import shared_input_linears
    torch.manual_seed(12)
    layers = [BitLinear(48, o) for o in (32, 16, 24)]
    x = torch.randn(3, 9, 48, requires_grad=True)
    ys = shared_input_linears(x, layers)
    assert "BitLinearFakeQuantShared" in ys[0].grad_fn.name()
    gs = [torch.randn(y.shape) for y in ys]
    torch.autograd.backward(ys, gs)
    got = [x.grad] + [m.weight.grad for m in layers]
    x.grad = None
    for m in layers:
        m.weight.grad = None
    want_ys = [m(x) for m in layers]
    torch.autograd.backward(want_ys, gs)
    want = [x.grad] + [m.weight.grad for m in layers]
    for a, b in zip(list(ys) + got[1:], want_ys + want[1:]):
        assert torch.equal(a, b)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        for a, m in zip(shared_input_linears(x, layers), layers):
            assert torch.equal(a, m(x))
