"""CUDA ternary_linear and ternary_matmul_int8 (design §2) against the CPU op and bitttt.reference.

Integer results must equal the CPU op and reference.ternary_matmul_int8 exactly. Float results
match the CPU op within the CPU tests' tolerances; float32 without bias is even bit for bit
against the scalar kernels, since x_q, the integer sums and the two epilogue multiplications
are the same IEEE operations on both devices. M <= 8 runs the GEMV, M > 8 the WMMA GEMM: the
grids below cross that line (8, 9) and the GEMM's 64-token / 64-row tiles (64, 65, 513; N odd).
"""

from __future__ import annotations

import math

import pytest
import torch

from bitttt import _C, ops, reference
from bitttt.nn import BitLinear

DEVICE = "cuda"

# Float32: only the epilogue's rounding could differ (it does not: see the module docstring);
# kept at the CPU tests' tolerance so a reviewer sees one number. Relative to max |output|.
F32_TOL = 1e-5
# bfloat16: both devices round the same float32 to bf16 with the same rule; one bf16 ulp of
# slack for values next to a rounding boundary if the float32 values ever differ.
BF16_RTOL = 2.0**-7

DTYPES = [torch.float32, torch.bfloat16]
DTYPE_IDS = {torch.float32: "f32", torch.bfloat16: "bf16"}

TOKENS = [1, 2, 7, 8, 9, 64, 513]
KS = [1, 100, 256, 2560, 2600]
# Odd N (1 included), cycled over the (M, K) grid so every M meets several N.
NS = [1, 3, 17, 65, 129, 257, 33]
SHAPES = [(M, K, NS[i % len(NS)]) for i, (M, K) in enumerate((M, K) for M in TOKENS for K in KS)]


def shape_id(shape) -> str:
    return "M{}-K{}-N{}".format(*shape)


def random_ternary(N: int, K: int) -> torch.Tensor:
    return torch.randint(-1, 2, (N, K), dtype=torch.int8)


def sample_inputs(lead, K, N, dtype=torch.float32, bias=False, seed=0):
    """CPU tensors: x [*lead, K] with a different scale per token, BT2 packed [N, Kp/4], w_scale
    [N] and an optional bias [N] in x's dtype (as in tests/ops/test_ternary_linear.py)."""
    torch.manual_seed(seed)
    lead = tuple(lead)
    token_scale = torch.exp(torch.empty(*lead, 1).uniform_(-3, 3))
    x = (torch.randn(*lead, K) * token_scale).to(dtype)
    q = random_ternary(N, K)
    w_scale = torch.rand(N) + 0.05
    b = torch.randn(N).to(dtype) if bias else None
    return x, q, ops.pack_ternary(q), w_scale, b


def to_cuda(*tensors):
    return [None if t is None else t.to(DEVICE) for t in tensors]


def cpu_and_cuda(x, packed, w_scale, bias=None):
    """(CUDA output moved back to the CPU, CPU output) of ternary_linear."""
    y_cpu = ops.ternary_linear(x, packed, w_scale, bias)
    y_cuda = ops.ternary_linear(*to_cuda(x, packed, w_scale, bias))
    assert y_cuda.device.type == "cuda"
    return y_cuda.cpu(), y_cpu


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, *, equal_nan: bool = False) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    a, e = actual.float(), expected.float()
    finite = torch.isfinite(e)
    scale = e[finite].abs().max().item() if finite.any() else 0.0
    rtol = F32_TOL if expected.dtype == torch.float32 else BF16_RTOL
    torch.testing.assert_close(a, e, rtol=rtol, atol=F32_TOL * scale, equal_nan=equal_nan)


@pytest.fixture
def scalar_isa():
    _C.set_isa("scalar")
    yield
    _C.set_isa("auto")


# ---------------------------------------------------------------------------------------
# Exact integer core
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_matmul_int8_exact(shape):
    M, K, N = shape
    torch.manual_seed(M * 10007 + K)
    x_q = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    q = random_ternary(N, K)
    packed = ops.pack_ternary(q)
    got = ops.ternary_matmul_int8(x_q.to(DEVICE), packed.to(DEVICE))
    assert got.dtype == torch.int32 and got.device.type == "cuda"
    assert torch.equal(got.cpu(), ops.ternary_matmul_int8(x_q, packed))
    assert torch.equal(got.cpu().long(), reference.ternary_matmul_int8(x_q, q))


# x_q, q at their extremes: the largest |sum| (K * 128) and the x_sum offset at its largest.
EXTREME_PATTERNS = {"x-128_q-1": (-128, -1), "x127_q1": (127, 1), "x-128_q1": (-128, 1), "x127_q-1": (127, -1)}


@pytest.mark.parametrize("M", [1, 8, 9, 64])
@pytest.mark.parametrize("pattern", list(EXTREME_PATTERNS), ids=list(EXTREME_PATTERNS))
def test_matmul_int8_extreme_values(pattern, M):
    xv, qv = EXTREME_PATTERNS[pattern]
    K, N = 4096, 33
    x_q = torch.full((M, K), xv, dtype=torch.int8)
    packed = ops.pack_ternary(torch.full((N, K), qv, dtype=torch.int8))
    got = ops.ternary_matmul_int8(x_q.to(DEVICE), packed.to(DEVICE)).cpu()
    assert torch.equal(got, torch.full((M, N), xv * qv * K, dtype=torch.int32))


def test_matmul_int8_empty():
    packed = ops.pack_ternary(random_ternary(5, 300)).to(DEVICE)
    assert ops.ternary_matmul_int8(torch.zeros(0, 300, dtype=torch.int8, device=DEVICE), packed).shape == (0, 5)
    empty_w = torch.zeros(0, 128, dtype=torch.uint8, device=DEVICE)
    assert ops.ternary_matmul_int8(torch.zeros(3, 300, dtype=torch.int8, device=DEVICE), empty_w).shape == (3, 0)


@pytest.mark.parametrize("M", [1, 9])
def test_matmul_int8_misaligned_packed(M):
    # A contiguous packed view whose data starts one byte into its storage: the kernels' 16-byte
    # loads need an aligned copy, which the entry point makes.
    torch.manual_seed(0)
    N, K = 17, 300
    q = random_ternary(N, K)
    packed = ops.pack_ternary(q)
    storage = torch.zeros(packed.numel() + 1, dtype=torch.uint8, device=DEVICE)
    view = storage[1:].view(packed.shape)
    view.copy_(packed)
    assert view.is_contiguous() and view.data_ptr() % 16 != 0
    x_q = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    assert torch.equal(ops.ternary_matmul_int8(x_q.to(DEVICE), view).cpu(), ops.ternary_matmul_int8(x_q, packed))


# ---------------------------------------------------------------------------------------
# ternary_linear against the CPU op
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_ternary_linear_matches_cpu(shape, dtype, bias):
    M, K, N = shape
    x, q, packed, w_scale, b = sample_inputs((M,), K, N, dtype, bias)
    got, expected = cpu_and_cuda(x, packed, w_scale, b)
    assert_matches(got, expected)
    assert_matches(got, reference.ternary_linear(x, q, w_scale, b).to(dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_float32_bit_for_bit_with_scalar_kernels(scalar_isa, shape):
    # Same x_q (quantization), same sums, same two multiplications: the same float32 bits.
    M, K, N = shape
    x, _, packed, w_scale, _ = sample_inputs((M,), K, N)
    got, expected = cpu_and_cuda(x, packed, w_scale)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("lead", [(2, 3), (3, 5), (1, 9), (4, 33)], ids=lambda s: "B{}-T{}".format(*s))
def test_leading_dims(lead, dtype):
    x, _, packed, w_scale, _ = sample_inputs(lead, 300, 17, dtype)
    got, expected = cpu_and_cuda(x, packed, w_scale)
    assert got.shape == (*lead, 17)
    assert_matches(got, expected)


@pytest.mark.parametrize("M", [3, 20])
def test_non_contiguous_x(M):
    torch.manual_seed(0)
    x = torch.randn(M, 600)[:, ::2]  # [M, 300], strided
    assert not x.is_contiguous()
    packed, w_scale = ops.pack_ternary(random_ternary(17, 300)), torch.rand(17) + 0.05
    got, expected = cpu_and_cuda(x, packed, w_scale)
    assert_matches(got, expected)


def test_bf16_x_with_float32_bias():
    x, _, packed, w_scale, _ = sample_inputs((9,), 300, 17, torch.bfloat16)
    bias = torch.randn(17)
    got, expected = cpu_and_cuda(x, packed, w_scale, bias)
    assert got.dtype == torch.bfloat16
    assert_matches(got, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("M", [1, 5, 9, 64])
def test_saturated_activations(M, dtype):
    # x = +-1 quantizes to x_q = +-127 everywhere; all-(+1) and all-(-1) weight rows.
    K, N = 4096, 6
    torch.manual_seed(0)
    x = torch.where(torch.rand(M, K) < 0.5, -1.0, 1.0).to(dtype)
    x[0] = 1.0
    q = torch.ones(N, K, dtype=torch.int8)
    q[N // 2:] = -1
    w_scale = torch.rand(N) + 0.05
    got, expected = cpu_and_cuda(x, ops.pack_ternary(q), w_scale)
    assert_matches(got, expected)
    assert got[0, 0].item() == pytest.approx(K * w_scale[0].item(), rel=BF16_RTOL)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("M", [1, 9])
def test_zero_tokens_give_zero_or_bias(M, dtype):
    _, _, packed, w_scale, b = sample_inputs((M,), 300, 17, dtype, bias=True)
    x = torch.zeros(M, 300, dtype=dtype)
    got, expected = cpu_and_cuda(x, packed, w_scale, b)
    assert torch.equal(got, expected)
    assert torch.equal(got, b.expand(M, 17))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("magnitude", [1e30, 1e-30, 1e-6], ids=["huge", "tiny", "below-floor"])
@pytest.mark.parametrize("M", [1, 9])
def test_huge_and_tiny_absmax(M, magnitude, dtype):
    x, _, packed, w_scale, _ = sample_inputs((M,), 300, 17)
    x = (x / x.abs().amax(-1, keepdim=True) * magnitude).to(dtype)
    got, expected = cpu_and_cuda(x, packed, w_scale)
    assert torch.isfinite(got).all()
    assert_matches(got, expected)


def test_empty_batch():
    x, _, packed, w_scale, b = sample_inputs((0,), 300, 17, bias=True)
    got, expected = cpu_and_cuda(x, packed, w_scale, b)
    assert got.shape == expected.shape == (0, 17)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "neginf"])
@pytest.mark.parametrize("M", [1, 5, 9, 64])
def test_non_finite_token_gives_nan_row(M, bad, dtype):
    x, _, packed, w_scale, b = sample_inputs((M,), 300, 17, dtype, bias=True)
    row = M // 2
    x[row, 299] = bad
    got, expected = cpu_and_cuda(x, packed, w_scale, b)
    assert torch.isnan(got[row]).all()
    others = torch.arange(M) != row
    assert torch.isfinite(got[others]).all()
    assert_matches(got, expected, equal_nan=True)


# ---------------------------------------------------------------------------------------
# Autograd, opcheck, torch.compile, BitLinear
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("M", [2, 9])
def test_backward_straight_through(M):
    x, q, packed, w_scale, b = sample_inputs((M,), 300, 17, bias=True)
    x, packed, w_scale, b = to_cuda(x, packed, w_scale, b)
    x.requires_grad_(True)
    b.requires_grad_(True)
    grad_out = torch.randn(M, 17, device=DEVICE)
    ops.ternary_linear(x, packed, w_scale, b).backward(grad_out)
    w = q.to(DEVICE).float() * w_scale.unsqueeze(1)
    torch.testing.assert_close(x.grad, grad_out @ w)
    torch.testing.assert_close(b.grad, grad_out.sum(0))


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("M", [3, 9])
def test_opcheck_ternary_linear(M, dtype, bias):
    x, _, packed, w_scale, b = sample_inputs((M,), 300, 17, dtype, bias)
    x, packed, w_scale, b = to_cuda(x, packed, w_scale, b)
    torch.library.opcheck(torch.ops.bitttt.ternary_linear.default, (x.requires_grad_(True), packed, w_scale, b))


@pytest.mark.parametrize("M", [3, 9])
def test_opcheck_ternary_matmul_int8(M):
    torch.manual_seed(0)
    x_q = torch.randint(-128, 128, (M, 300), dtype=torch.int8, device=DEVICE)
    packed = ops.pack_ternary(random_ternary(17, 300)).to(DEVICE)
    torch.library.opcheck(torch.ops.bitttt.ternary_matmul_int8.default, (x_q, packed))


def make_packed_layer(K=300, N=17, bias=True) -> BitLinear:
    torch.manual_seed(0)
    return BitLinear(K, N, bias=bias).pack()


@pytest.mark.parametrize("M", [1, 20])
def test_bitlinear_packed_on_cuda_equals_cpu(M):
    layer = make_packed_layer()
    x = torch.randn(2, M, 300)
    with torch.no_grad():
        y_cpu = layer(x)
        layer.to(DEVICE)
        assert layer.packed.device.type == "cuda" and layer.packed.dtype == torch.uint8
        assert layer.w_scale.device.type == "cuda" and layer.w_scale.dtype == torch.float32
        y = layer(x.to(DEVICE))
    assert y.device.type == "cuda"
    assert_matches(y.cpu(), y_cpu)


def test_bitlinear_to_cuda_bf16_keeps_w_scale_float32():
    layer = make_packed_layer()
    w_scale = layer.w_scale.clone()
    layer.to(DEVICE, torch.bfloat16)
    assert layer.w_scale.dtype == torch.float32 and layer.w_scale.device.type == "cuda"
    assert torch.equal(layer.w_scale.cpu(), w_scale)
    assert layer.bias.dtype == torch.bfloat16
    with torch.no_grad():
        y = layer(torch.randn(4, 300, device=DEVICE, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


@pytest.mark.slow
def test_compile_packed_bitlinear_fullgraph():
    layer = make_packed_layer().to(DEVICE)
    compiled = torch.compile(layer, fullgraph=True)
    for shape in [(4, 300), (2, 13, 300)]:
        x = torch.randn(*shape, device=DEVICE)
        with torch.no_grad():
            assert torch.equal(compiled(x), layer(x))


# ---------------------------------------------------------------------------------------
# Bad input: a RuntimeError naming the problem, never a crash
# ---------------------------------------------------------------------------------------


def _good_cuda():
    x, _, packed, w_scale, b = sample_inputs((4,), 300, 17, bias=True)
    return dict(zip(["x", "packed", "w_scale", "bias"], to_cuda(x, packed, w_scale, b)))


BAD_DEVICES = {
    "x-cpu": ("x", r"ternary_linear: x must be on a CUDA device"),
    "packed-cpu": ("packed", r"ternary_linear: packed must be on x's device cuda:\d+, got cpu"),
    "w_scale-cpu": ("w_scale", r"ternary_linear: w_scale must be on x's device cuda:\d+, got cpu"),
    "bias-cpu": ("bias", r"ternary_linear: bias must be on the same device as x"),
}


@pytest.mark.parametrize("case", list(BAD_DEVICES), ids=list(BAD_DEVICES))
def test_mixed_devices_raise(case):
    name, message = BAD_DEVICES[case]
    args = _good_cuda()
    args[name] = args[name].cpu()
    if name == "x":
        args["bias"] = None  # else the bias-vs-x check speaks first
    with pytest.raises(RuntimeError, match=message):
        ops.ternary_linear(args["x"], args["packed"], args["w_scale"], args["bias"])
    good = _good_cuda()
    assert ops.ternary_linear(good["x"], good["packed"], good["w_scale"], good["bias"]).shape == (4, 17)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_other_gpu_raises():
    args = _good_cuda()
    with pytest.raises(RuntimeError, match=r"ternary_linear: packed must be on x's device cuda:0, got cuda:1"):
        ops.ternary_linear(args["x"], args["packed"].to("cuda:1"), args["w_scale"], args["bias"])


def test_matmul_int8_mixed_devices_raise():
    x_q = torch.zeros(4, 300, dtype=torch.int8, device=DEVICE)
    packed = ops.pack_ternary(random_ternary(17, 300))
    with pytest.raises(RuntimeError, match=r"ternary_matmul_int8: packed must be on x's device"):
        ops.ternary_matmul_int8(x_q, packed)
    with pytest.raises(RuntimeError, match=r"ternary_matmul_int8: x must be on a CUDA device"):
        ops.ternary_matmul_int8(x_q.cpu(), packed.to(DEVICE))


BAD_DTYPES = {
    "x-float16": ({"x": torch.randn(4, 300).half()}, r"ternary_linear: x must be float32 or bfloat16"),
    "x-float64": ({"x": torch.randn(4, 300).double()}, r"ternary_linear: x must be float32 or bfloat16"),
    "packed-int8": ({"packed": torch.zeros(17, 128, dtype=torch.int8)}, r"ternary_linear: packed must be uint8"),
    "w_scale-bf16": ({"w_scale": torch.ones(17, dtype=torch.bfloat16)},
                     r"ternary_linear: w_scale must be float32 \[N=17\]"),
    "K-mismatch": ({"x": torch.randn(4, 600)}, r"ternary_linear: x\.shape\[-1\]=600 does not fit packed"),
}


@pytest.mark.parametrize("case", list(BAD_DTYPES), ids=list(BAD_DTYPES))
def test_bad_dtype_raises(case):
    override, message = BAD_DTYPES[case]
    args = {**_good_cuda(), **{k: v.to(DEVICE) for k, v in override.items()}}
    with pytest.raises(RuntimeError, match=message):
        ops.ternary_linear(args["x"], args["packed"], args["w_scale"], args["bias"])


def test_matmul_int8_bad_dtype_raises():
    packed = ops.pack_ternary(random_ternary(17, 300)).to(DEVICE)
    with pytest.raises(RuntimeError, match=r"ternary_matmul_int8: x must be int8"):
        ops.ternary_matmul_int8(torch.zeros(4, 300, device=DEVICE), packed)
