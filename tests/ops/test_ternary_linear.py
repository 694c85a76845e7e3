"""torch.ops.bitttt.ternary_linear and ternary_matmul_int8 (design §2, §7) for every kernel
set this CPU runs (the `isa` fixture), against bitttt.reference and closed forms.

Integer results must equal reference.ternary_matmul_int8 (int64) exactly; float results
match reference.ternary_linear within the tolerances below. The activation scale must be
the correctly rounded float32 quotient 127 / absmax in kernels and reference alike
(test_*activation_scale_is_correctly_rounded_quotient), or x * s_x flips at .5 ties.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bitttt import _C, ops, reference

# Float32 outputs: the integer sums are identical, only the epilogue's rounding order
# differs (the kernels multiply by 1/s_x, the reference divides by s_x): a few ulps.
F32_TOL = 1e-5  # relative to the largest |output| of the call
# bfloat16 outputs: kernel and reference round float32 values that differ by a few ulps to
# bf16 independently, so a value next to a bf16 rounding boundary may differ by one bf16 ulp
# (at most 2^-7 relative).
BF16_RTOL = 2.0**-7

DTYPES = [torch.float32, torch.bfloat16]
DTYPE_IDS = {torch.float32: "f32", torch.bfloat16: "bf16"}

# (M, K, N): every M in {1, 2, 7, 64, 513}, K in {1, 100, 256, 2560, 2600} and N in
# {1, 3, 17, 100} appears, with K across none, one and several 256-blocks plus a partial
# one, N and M across the kernels' 4-row / 4-token tiles and 64-row / 64-token tasks.
SHAPES = [
    (1, 100, 17), (1, 2600, 1), (1, 1, 3),
    (2, 256, 3), (2, 2560, 100),
    (7, 2600, 17), (7, 1, 100),
    (64, 100, 100), (64, 2560, 1), (64, 256, 17),
    (513, 256, 3), (513, 2600, 100),
]


def shape_id(shape) -> str:
    return "M{}-K{}-N{}".format(*shape)


def random_ternary(N: int, K: int) -> torch.Tensor:
    return torch.randint(-1, 2, (N, K), dtype=torch.int8)


def sample_inputs(lead, K, N, dtype=torch.float32, bias=False, seed=0):
    """x [*lead, K] with a different scale per token, ternary q [N, K], its BT2 bytes, a
    positive w_scale [N] that differs per row, and an optional bias [N] in x's dtype."""
    torch.manual_seed(seed)
    lead = tuple(lead)
    token_scale = torch.exp(torch.empty(*lead, 1).uniform_(-3, 3))
    x = (torch.randn(*lead, K) * token_scale).to(dtype)
    q = random_ternary(N, K)
    w_scale = torch.rand(N) + 0.05
    b = torch.randn(N).to(dtype) if bias else None
    return x, q, ops.pack_ternary(q), w_scale, b


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, *, equal_nan: bool = False) -> None:
    """ternary_linear output vs the reference, with the tolerance named above for its dtype."""
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    a, e = actual.float(), expected.float()
    finite = torch.isfinite(e)
    scale = e[finite].abs().max().item() if finite.any() else 0.0
    rtol = F32_TOL if expected.dtype == torch.float32 else BF16_RTOL
    torch.testing.assert_close(a, e, rtol=rtol, atol=F32_TOL * scale, equal_nan=equal_nan)


def quantize_by_design(x: torch.Tensor) -> torch.Tensor:
    """x_q int8 for finite x (design §2), from the reference."""
    return reference.quantize_activations(x)[0]


expected_linear = reference.ternary_linear


def design_scale(absmax: float) -> np.float32:
    """s_x = 127 / max(absmax, 1e-5), the correctly rounded float32 quotient (design §2)."""
    return np.float32(127.0) / np.maximum(np.float32(absmax), np.float32(1e-5))


def kernel_activation_codes(x: torch.Tensor) -> torch.Tensor:
    """Reads back the int8 codes the kernel quantized x [M, K] to, through identity weights
    with w_scale 1: y[m, k] = x_q[m, k] / s_x[m], so x_q = round(y * s_x) (|x_q| <= 128
    survives the few ulps of the epilogue)."""
    K = x.shape[-1]
    y = ops.ternary_linear(x, ops.pack_ternary(torch.eye(K, dtype=torch.int8)), torch.ones(K))
    absmax = x.float().abs().amax(dim=-1).numpy()
    s = torch.from_numpy(np.asarray([design_scale(a) for a in absmax], dtype=np.float32))
    return torch.round(y.float() * s.unsqueeze(-1)).to(torch.int64)


# ---------------------------------------------------------------------------------------
# Exact integer core
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_matmul_int8_exact(isa_amx, shape):
    M, K, N = shape
    torch.manual_seed(M * 31 + K * 7 + N)
    x_q = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    q = random_ternary(N, K)
    out = ops.ternary_matmul_int8(x_q, ops.pack_ternary(q))
    assert out.dtype == torch.int32
    assert tuple(out.shape) == (M, N)
    assert torch.equal(out.long(), reference.ternary_matmul_int8(x_q, q))


def serve_batch(M: int, K: int, seed: int) -> torch.Tensor:
    """M tokens of int8 activations: random, then one saturated at 127 and one at -128."""
    g = torch.Generator().manual_seed(seed)
    x_q = torch.randint(-128, 128, (M, K), dtype=torch.int8, generator=g)
    x_q[0] = 127
    x_q[-1] = -128
    return x_q


def on_threads(n: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


# The AMX tile kernels (the "amx" set): built, and the CPU and OS have them.
AMX = _C.build_info()["amx"] and _C.cpu_features()["amx_int8"]


# bitttt serve's batches: M = 2..16 tokens (the 4-token tiles and every remainder), odd K,
# N past two 64-row tasks, on 2 threads (a thread's range holds several tasks). Each row is
# exact, and equals the one-token call on that token (M = 1 runs other tiles).
@pytest.mark.parametrize("M", range(2, 17))
def test_matmul_int8_serve_batches(isa_amx, M):
    K, N = 2567, 197  # Kp = 2816: past one 2048-weight K block of the prefill tiles
    x_q = serve_batch(M, K, seed=M)
    torch.manual_seed(M)
    packed = ops.pack_ternary(q := random_ternary(N, K))
    out = on_threads(2, lambda: ops.ternary_matmul_int8(x_q, packed))
    assert torch.equal(out.long(), reference.ternary_matmul_int8(x_q, q))
    for m in range(M):
        assert torch.equal(out[m : m + 1], ops.ternary_matmul_int8(x_q[m : m + 1], packed))


# Saturated activations times all-equal or alternating weights: the largest |sums| per
# lane that a SIMD kernel's int16 partial sums must carry (x_q * (q + 1) reaches -256).
EXTREME_PATTERNS = {
    "x127-wplus": (lambda k: 127, lambda k: 1),
    "x127-wminus": (lambda k: 127, lambda k: -1),
    "xminus128-wplus": (lambda k: -128, lambda k: 1),
    "xminus128-wminus": (lambda k: -128, lambda k: -1),
    "xalt-walt": (lambda k: 127 if k % 2 else -128, lambda k: 1 if k % 2 else -1),
    "xalt-wplus": (lambda k: 127 if k % 2 else -128, lambda k: 1),
    "xminus128-walt": (lambda k: -128, lambda k: -1 if (k // 3) % 2 else 1),
}


@pytest.mark.parametrize("M", [1, 5, 8, 13, 16])
@pytest.mark.parametrize("K", [2600, 4096])
@pytest.mark.parametrize("pattern", list(EXTREME_PATTERNS), ids=list(EXTREME_PATTERNS))
def test_matmul_int8_extreme_values(isa_amx, pattern, K, M):
    x_of, q_of = EXTREME_PATTERNS[pattern]
    x_row = [x_of(k) for k in range(K)]
    q_row = [q_of(k) for k in range(K)]
    expected = sum(a * b for a, b in zip(x_row, q_row))  # Python ints: exact
    N = 6
    x_q = torch.tensor([x_row] * M, dtype=torch.int8)
    q = torch.tensor([q_row] * N, dtype=torch.int8)
    q[1::2] *= -1  # odd rows flipped: the negated sum
    out = ops.ternary_matmul_int8(x_q, ops.pack_ternary(q))
    want = torch.tensor([[expected, -expected] * (N // 2)] * M, dtype=torch.int32)
    assert torch.equal(out, want)


# The "amx" set at M = 2..16 (tiles from 8 tokens, the VNNI kernels below) against the scalar
# reference, bit for bit: the same int32 sums and the same epilogue, so the float32 and
# bfloat16 outputs are equal too. K = 2600 (Kp = 2816: 11 blocks of 256 k, a padded tail),
# N = 197 (12 groups of 16 rows and one of 5), one token saturated at +127 and one at -128.
@pytest.mark.skipif(not AMX, reason="no AMX here (CPU, OS grant or compiler): the tiles cannot run")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("M", range(2, 17))
def test_amx_equals_scalar_bit_for_bit(M, dtype):
    x = torch.randn(M, 2600, generator=torch.Generator().manual_seed(M)).to(dtype)
    x[0] = 5.0  # every activation quantizes to 127
    x[-1, ::2] = -7.0  # the absmax: these quantize to -127 (-128 comes in x_q, the int8 op's input)
    torch.manual_seed(M)
    packed = ops.pack_ternary(random_ternary(197, 2600))
    w_scale = torch.rand(197) + 0.5
    bias = torch.randn(197)
    x_q = serve_batch(M, 2600, seed=M)
    out = {}
    try:
        for name in ("scalar", "amx"):
            _C.set_isa(name)
            out[name] = (ops.ternary_linear(x, packed, w_scale, bias), ops.ternary_matmul_int8(x_q, packed))
    finally:
        _C.set_isa("auto")
    assert torch.equal(out["amx"][0], out["scalar"][0])
    assert torch.equal(out["amx"][1], out["scalar"][1])


def test_matmul_int8_zero_rows(isa):
    q = random_ternary(5, 300)
    out = ops.ternary_matmul_int8(torch.zeros(0, 300, dtype=torch.int8), ops.pack_ternary(q))
    assert out.dtype == torch.int32 and tuple(out.shape) == (0, 5)


def test_matmul_int8_non_contiguous_x(isa_amx):
    torch.manual_seed(1)
    x_q = torch.randint(-128, 128, (300, 9), dtype=torch.int8).T  # [9, 300]
    assert not x_q.is_contiguous()
    q = random_ternary(17, 300)
    out = ops.ternary_matmul_int8(x_q, ops.pack_ternary(q))
    assert torch.equal(out.long(), reference.ternary_matmul_int8(x_q, q))


# ---------------------------------------------------------------------------------------
# ternary_linear vs the oracle (reference int64 matmul, design §2 quantization)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_ternary_linear_matches_reference(isa_amx, shape, dtype, bias):
    M, K, N = shape
    x, q, packed, w_scale, b = sample_inputs((M,), K, N, dtype, bias, seed=M * 31 + K * 7 + N)
    y = ops.ternary_linear(x, packed, w_scale, b)
    assert tuple(y.shape) == (M, N)
    assert_matches(y, expected_linear(x, q, w_scale, b))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize(
    "lead,K,N", [((3, 5), 300, 17), ((2, 1), 2600, 100), ((2, 3, 4), 100, 3), ((), 2560, 17), ((4, 0), 100, 3)],
    ids=["B3-T5-K300-N17", "B2-T1-K2600-N100", "A2-B3-T4-K100-N3", "vector-K2560-N17", "B4-T0-K100-N3"],
)
def test_leading_dims(isa, lead, K, N, dtype):
    x, q, packed, w_scale, b = sample_inputs(lead, K, N, dtype, bias=True, seed=K + N)
    y = ops.ternary_linear(x, packed, w_scale, b)
    assert tuple(y.shape) == (*lead, N)
    assert_matches(y, expected_linear(x, q, w_scale, b))


def _transposed(dtype):  # [M, K] = a transposed [K, M] tensor
    return torch.randn(300, 9).to(dtype).T


def _permuted(dtype):  # [B, T, K] with K not the innermost stride
    return torch.randn(5, 2600, 2).to(dtype).permute(2, 0, 1)


def _strided(dtype):  # every other element of the last dim
    return torch.randn(7, 2 * 257).to(dtype)[:, ::2]


def _expanded(dtype):  # one token broadcast to 4 (stride 0)
    return torch.randn(1, 100).to(dtype).expand(4, 100)


NON_CONTIGUOUS = {"transposed": _transposed, "permuted": _permuted, "strided": _strided, "expanded": _expanded}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("make_x", list(NON_CONTIGUOUS.values()), ids=list(NON_CONTIGUOUS))
def test_non_contiguous_x(isa, make_x, dtype):
    torch.manual_seed(2)
    x = make_x(dtype)
    assert not x.is_contiguous()
    K, N = x.shape[-1], 17
    q = random_ternary(N, K)
    w_scale = torch.rand(N) + 0.05
    b = torch.randn(N).to(dtype)
    y = ops.ternary_linear(x, ops.pack_ternary(q), w_scale, b)
    assert_matches(y, expected_linear(x.contiguous(), q, w_scale, b))


def test_bf16_x_with_float32_bias(isa):
    # design §2: bias may be float32 or x's dtype; it is added in float32.
    x, q, packed, w_scale, _ = sample_inputs((7,), 300, 17, torch.bfloat16)
    b = torch.randn(17)
    y = ops.ternary_linear(x, packed, w_scale, b)
    assert y.dtype == torch.bfloat16
    assert_matches(y, expected_linear(x, q, w_scale, b))


def test_single_token_in_batch_is_independent(isa_amx):
    # A token's output depends only on that token (per-token scales, no cross-row state).
    x, q, packed, w_scale, b = sample_inputs((64,), 2600, 100, bias=True, seed=5)
    full = ops.ternary_linear(x, packed, w_scale, b)
    for m in (0, 3, 62, 63):
        assert torch.equal(ops.ternary_linear(x[m:m + 1], packed, w_scale, b), full[m:m + 1])


def test_thread_count_does_not_change_result(isa):
    # 513 tokens x 100 rows split into 64 x 64 tasks over the intra-op pool: bit-identical
    # to one thread.
    x, q, packed, w_scale, b = sample_inputs((513,), 2600, 100, bias=True, seed=11)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.ternary_linear(x, packed, w_scale, b)
        one_int = ops.ternary_matmul_int8(quantize_by_design(x), packed)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(ops.ternary_linear(x, packed, w_scale, b), one)
    assert torch.equal(ops.ternary_matmul_int8(quantize_by_design(x), packed), one_int)


# ---------------------------------------------------------------------------------------
# Activation quantization: rounding, scale, floor, saturation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("unit", [1, 2], ids=["absmax127", "absmax254"])
def test_rounding_ties_to_even(isa, unit, dtype):
    # absmax = 127 * unit makes s_x = 1 / unit exact, so x * s_x = x / unit lands exactly on
    # k + 0.5; the kernel must round half to even, like torch.round and Python's round.
    ties = [k + 0.5 for k in range(-127, 127)]  # -126.5 ... 126.5, exact in bf16 too
    g = torch.Generator().manual_seed(0)
    vals = [127.0] + [ties[i] for i in torch.randperm(len(ties), generator=g).tolist()] + [0.5, -0.5, 1.5, -1.5] * 11
    x = torch.tensor([v * unit for v in vals]).to(dtype).unsqueeze(0)  # K = 299: partial 32-chunks
    assert x.float().flatten().tolist() == [v * unit for v in vals]  # exactly representable
    codes = kernel_activation_codes(x).flatten().tolist()
    assert codes == [round(v) for v in vals]  # Python's round is half-to-even
    assert codes == torch.round(torch.tensor(vals)).long().tolist()


# s_x = fl(127 / 3) = 42.333332 (correctly rounded), where 1/3 * 127 gives 42.333336. With
# it, these x land on (or just below) a tie: 0.011811025 * s_x = 0.5 -> 0 and
# 0.035433069 * s_x = 1.4999999 -> 1, while the larger scale would give 1 and 2. K = 71:
# the probes sit in full 32-wide chunks (SIMD path) and in the tail.
SCALE_PROBE_X = [3.0] + [0.011811024509370327, 0.03543306887149811] * 35
SCALE_PROBE_CODES = [127] + [0, 1] * 35


def test_activation_scale_is_correctly_rounded_quotient(isa):
    x = torch.tensor([SCALE_PROBE_X])
    s = design_scale(3.0)
    assert [int(np.rint(np.float32(v) * s)) for v in SCALE_PROBE_X] == SCALE_PROBE_CODES  # the premise
    assert kernel_activation_codes(x).flatten().tolist() == SCALE_PROBE_CODES


def test_reference_activation_scale_is_correctly_rounded_quotient():
    # The oracle must follow design §2 as the kernels do: s_x = 127 / max(absmax, 1e-5),
    # one correctly rounded float32 division (bt2.h: 127.0f / fmaxf(absmax, 1e-5f)).
    x_q, s_x = reference.quantize_activations(torch.tensor([SCALE_PROBE_X]))
    assert s_x.item() == float(design_scale(3.0))
    assert x_q.flatten().tolist() == SCALE_PROBE_CODES


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_absmax_below_floor_uses_floor(isa, dtype):
    # absmax 3e-6 < 1e-5: s_x = 127 / 1e-5, so 1e-6 -> round(12.7) = 13, not 127 * 1e-6 / 3e-6.
    vals = [3e-6, 1e-6, -2e-6, 5e-7, 0.0] * 60  # K = 300
    x = torch.tensor([vals]).to(dtype)
    xs = x.float().flatten().numpy()
    s = np.float32(127.0) / np.float32(1e-5)
    expected = [int(np.rint(np.float32(v) * s)) for v in xs]
    assert max(abs(c) for c in expected) < 127
    assert kernel_activation_codes(x).flatten().tolist() == expected


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_tiny_absmax_gives_zero_output(isa, dtype, bias):
    # absmax 1e-30: far below the floor, every x_q is 0, the output is exactly the bias.
    x, q, packed, w_scale, b = sample_inputs((7,), 2600, 17, dtype, bias)
    x = (x.float() / x.float().abs().amax(-1, keepdim=True) * 1e-30).to(dtype)
    assert (x != 0).any()
    y = ops.ternary_linear(x, packed, w_scale, b)
    want = b.expand(7, 17) if bias else torch.zeros(7, 17, dtype=dtype)
    assert torch.equal(y, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_huge_absmax(isa, dtype):
    x, q, packed, w_scale, b = sample_inputs((7,), 2600, 17, dtype, bias=True)
    x = (x.float() / x.float().abs().amax(-1, keepdim=True) * 1e30).to(dtype)
    y = ops.ternary_linear(x, packed, w_scale, b)
    assert torch.isfinite(y).all()
    assert_matches(y, expected_linear(x, q, w_scale, b))


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_zero_tokens(isa, dtype, bias):
    x, q, packed, w_scale, b = sample_inputs((6,), 300, 17, dtype, bias)
    x[0] = 0
    x[4] = 0
    y = ops.ternary_linear(x, packed, w_scale, b)
    zero_row = b if bias else torch.zeros(17, dtype=dtype)
    assert torch.equal(y[0], zero_row) and torch.equal(y[4], zero_row)
    assert_matches(y, expected_linear(x, q, w_scale, b))

    y_vec = ops.ternary_linear(torch.zeros(300, dtype=dtype), packed, w_scale, b)  # a zero x vector
    assert torch.equal(y_vec, zero_row)


# x constant or alternating in sign: every x_q is +-127, so with all-equal or alternating
# weights the sum is +-127 * K (or 0) and y = that * w_scale / 127, in closed form.
SATURATED = {
    "xplus-wplus": (lambda k: 1.0, lambda k: 1, 1),
    "xminus-wplus": (lambda k: -1.0, lambda k: 1, -1),
    "xminus-wminus": (lambda k: -1.0, lambda k: -1, 1),
    "xalt-walt": (lambda k: 1.0 if k % 2 else -1.0, lambda k: 1 if k % 2 else -1, 1),
    "xalt-wplus": (lambda k: 1.0 if k % 2 else -1.0, lambda k: 1, 0),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("K", [2600, 4096])
@pytest.mark.parametrize("pattern", list(SATURATED), ids=list(SATURATED))
def test_saturated_activations(isa_amx, pattern, K, dtype):
    x_of, q_of, sign = SATURATED[pattern]
    M, N = 5, 4
    x = torch.tensor([[x_of(k) for k in range(K)]] * M).to(dtype)
    q = torch.tensor([[q_of(k) for k in range(K)]] * N, dtype=torch.int8)
    w_scale = torch.tensor([0.5, 1.0, 0.25, 2.0])
    y = ops.ternary_linear(x, ops.pack_ternary(q), w_scale)
    assert y.dtype == dtype
    want = (sign * K * w_scale).expand(M, N)  # float32, exact
    torch.testing.assert_close(y.float(), want, rtol=1e-6 if dtype == torch.float32 else BF16_RTOL, atol=0)
    assert_matches(y, expected_linear(x, q, w_scale))


# ---------------------------------------------------------------------------------------
# NaN / inf: the token's row is NaN, other tokens are unaffected (design §2 edges)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 150, 299], ids=["k0", "k150", "klast"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "neginf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_non_finite_token_gives_nan_row(isa_amx, dtype, bad, position):
    x, q, packed, w_scale, b = sample_inputs((6,), 300, 17, dtype, bias=True, seed=9)
    bad_rows, good_rows = [1, 4], [0, 2, 3, 5]
    x[1, position] = bad
    x[4, (position + 7) % 300] = bad
    y = ops.ternary_linear(x, packed, w_scale, b)
    assert torch.isnan(y[bad_rows]).all()
    assert torch.isfinite(y[good_rows]).all()
    assert_matches(y[good_rows], expected_linear(x[good_rows], q, w_scale, b))


# ---------------------------------------------------------------------------------------
# Autograd: straight-through in x, exact in bias; packed and w_scale frozen
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_backward_straight_through(isa, bias):
    x, q, packed, w_scale, b = sample_inputs((2, 3), 300, 17, bias=bias)
    x.requires_grad_(True)
    if bias:
        b.requires_grad_(True)
    y = ops.ternary_linear(x, packed, w_scale, b)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    w = q.double() * w_scale.double().unsqueeze(1)  # [N, K], from q itself (not unpack)
    torch.testing.assert_close(x.grad, (grad_out.double() @ w).float(), rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(b.grad, grad_out.sum(dim=(0, 1)), rtol=1e-5, atol=1e-5)


def test_backward_bf16(isa):
    x, q, packed, w_scale, b = sample_inputs((4,), 300, 17, torch.bfloat16, bias=True)
    x.requires_grad_(True)
    b.requires_grad_(True)
    y = ops.ternary_linear(x, packed, w_scale, b)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    assert x.grad.dtype == torch.bfloat16 and b.grad.dtype == torch.bfloat16
    w = q.float() * w_scale.unsqueeze(1)
    want = grad_out.float() @ w
    torch.testing.assert_close(x.grad.float(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())
    torch.testing.assert_close(b.grad.float(), grad_out.float().sum(0), rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------
# torch.library.opcheck: schema, fake kernel, autograd registration, aot dispatch
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_opcheck_ternary_linear(dtype, bias):
    x, q, packed, w_scale, b = sample_inputs((2, 3), 300, 17, dtype, bias)
    x.requires_grad_(True)
    if bias:
        b.requires_grad_(True)
    torch.library.opcheck(torch.ops.bitttt.ternary_linear.default, (x, packed, w_scale, b))


def test_opcheck_ternary_matmul_int8():
    torch.manual_seed(0)
    x_q = torch.randint(-128, 128, (5, 300), dtype=torch.int8)
    torch.library.opcheck(torch.ops.bitttt.ternary_matmul_int8.default, (x_q, ops.pack_ternary(random_ternary(17, 300))))


# ---------------------------------------------------------------------------------------
# Bad input: a RuntimeError naming the problem (design §7), never a crash
# ---------------------------------------------------------------------------------------

N_BAD, K_BAD = 17, 300


def _good():
    x, q, packed, w_scale, b = sample_inputs((4,), K_BAD, N_BAD, bias=True)
    return {"x": x, "packed": packed, "w_scale": w_scale, "bias": b}


BAD_TERNARY_LINEAR = {
    "x-float64": ({"x": torch.randn(4, K_BAD, dtype=torch.float64)}, r"ternary_linear: x must be float32 or bfloat16"),
    "x-int32": ({"x": torch.ones(4, K_BAD, dtype=torch.int32)}, r"ternary_linear: x must be float32 or bfloat16"),
    "x-float16": ({"x": torch.randn(4, K_BAD).half()}, r"ternary_linear: x must be float32 or bfloat16"),
    "K-mismatch": ({"x": torch.randn(4, 600)}, r"ternary_linear: x\.shape\[-1\]=600 does not fit packed"),
    "packed-int8": ({"packed": torch.zeros(N_BAD, 128, dtype=torch.int8)}, r"ternary_linear: packed must be uint8"),
    "packed-1d": ({"packed": torch.zeros(128, dtype=torch.uint8)}, r"ternary_linear: packed must be 2-D"),
    "packed-3d": ({"packed": torch.zeros(1, N_BAD, 128, dtype=torch.uint8)}, r"ternary_linear: packed must be 2-D"),
    "packed-non-contiguous": ({"packed": torch.zeros(128, N_BAD, dtype=torch.uint8).T},
                              r"ternary_linear: packed must be contiguous"),
    "packed-wide": ({"packed": torch.zeros(N_BAD, 129, dtype=torch.uint8)},
                    r"ternary_linear: x\.shape\[-1\]=300 does not fit packed with 129 bytes per row"),
    "packed-narrow": ({"packed": torch.zeros(N_BAD, 64, dtype=torch.uint8)},
                      r"ternary_linear: x\.shape\[-1\]=300 does not fit packed with 64 bytes per row"),
    "w_scale-short": ({"w_scale": torch.ones(N_BAD - 1)}, r"ternary_linear: w_scale must be float32 \[N=17\]"),
    "w_scale-float64": ({"w_scale": torch.ones(N_BAD, dtype=torch.float64)},
                        r"ternary_linear: w_scale must be float32 \[N=17\]"),
    "w_scale-bf16": ({"w_scale": torch.ones(N_BAD, dtype=torch.bfloat16)},
                     r"ternary_linear: w_scale must be float32 \[N=17\]"),
    "w_scale-2d": ({"w_scale": torch.ones(N_BAD, 1)}, r"ternary_linear: w_scale must be float32 \[N=17\]"),
    "bias-short": ({"bias": torch.ones(N_BAD - 1)}, r"ternary_linear: bias must be \[N=17\]"),
    "bias-long": ({"bias": torch.ones(N_BAD + 1)}, r"ternary_linear: bias must be \[N=17\]"),
    "bias-2d": ({"bias": torch.ones(1, N_BAD)}, r"ternary_linear: bias must be \[N=17\]"),
}


@pytest.mark.parametrize("case", list(BAD_TERNARY_LINEAR), ids=list(BAD_TERNARY_LINEAR))
def test_ternary_linear_bad_input(case):
    override, message = BAD_TERNARY_LINEAR[case]
    args = {**_good(), **override}
    with pytest.raises(RuntimeError, match=message):
        ops.ternary_linear(args["x"], args["packed"], args["w_scale"], args["bias"])
    # and the op still works afterwards
    good = _good()
    assert ops.ternary_linear(good["x"], good["packed"], good["w_scale"], good["bias"]).shape == (4, N_BAD)


def test_bad_input_message_is_one_line():
    with pytest.raises(RuntimeError) as info:
        ops.ternary_linear(torch.randn(4, 600), _good()["packed"], torch.ones(N_BAD))
    lines = [line for line in str(info.value).splitlines() if "ternary_linear:" in line]
    assert len(lines) == 1 and "600" in lines[0] and "repack" in lines[0]


BAD_MATMUL_INT8 = {
    "x-float32": (torch.zeros(4, K_BAD), r"ternary_matmul_int8: x must be int8"),
    "x-uint8": (torch.zeros(4, K_BAD, dtype=torch.uint8), r"ternary_matmul_int8: x must be int8"),
    "x-1d": (torch.zeros(K_BAD, dtype=torch.int8), r"ternary_matmul_int8: x must be 2-D"),
    "x-3d": (torch.zeros(2, 4, K_BAD, dtype=torch.int8), r"ternary_matmul_int8: x must be 2-D"),
    "K-mismatch": (torch.zeros(4, 513, dtype=torch.int8), r"ternary_matmul_int8: x\.shape\[-1\]=513 does not fit"),
}


@pytest.mark.parametrize("case", list(BAD_MATMUL_INT8), ids=list(BAD_MATMUL_INT8))
def test_matmul_int8_bad_input(case):
    x, message = BAD_MATMUL_INT8[case]
    with pytest.raises(RuntimeError, match=message):
        ops.ternary_matmul_int8(x, _good()["packed"])


def test_matmul_int8_bad_packed():
    x = torch.zeros(4, K_BAD, dtype=torch.int8)
    with pytest.raises(RuntimeError, match=r"ternary_matmul_int8: packed must be uint8"):
        ops.ternary_matmul_int8(x, torch.zeros(N_BAD, 128, dtype=torch.int8))
    with pytest.raises(RuntimeError, match=r"ternary_matmul_int8: packed must be contiguous"):
        ops.ternary_matmul_int8(x, torch.zeros(128, N_BAD, dtype=torch.uint8).T)


# ---------------------------------------------------------------------------------------
# lut16: the table-lookup decode path over its load-time layout (csrc/ternary/lut16.h)
# ---------------------------------------------------------------------------------------
# Every ISA's lut16 kernels give the exact int32 sums of the BT2 kernels, so ternary_linear_lut16
# is bit-identical to ternary_linear under the same ISA, and both match the int64 reference.


def lut16_layout(q: torch.Tensor) -> torch.Tensor:
    return torch.ops.bitttt.ternary_repack_lut16(ops.pack_ternary(q))


def lut16_matmul_int8(x_q: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return torch.ops.bitttt.ternary_matmul_int8_lut16(x_q, lut16_layout(q), q.shape[0])


@pytest.mark.parametrize("shape", SHAPES + [(1, 2560, 64), (3, 6912, 130), (1, 1, 1)], ids=shape_id)
def test_lut16_matmul_int8_exact(isa, shape):
    M, K, N = shape
    torch.manual_seed(M * 31 + K * 7 + N)
    x_q = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    q = random_ternary(N, K)
    out = lut16_matmul_int8(x_q, q)
    assert out.dtype == torch.int32 and tuple(out.shape) == (M, N)
    assert torch.equal(out.long(), reference.ternary_matmul_int8(x_q, q))


# The kernels' int16 partial sums are worst at x_q = -128 with every code 2 (q = +1): each
# table entry is -512 and a lane adds 64 of them per 256 weights, exactly -32768. K = 256 and
# 512 end on a widening boundary, 4096 spans many, 2600 ends in a partial block.
@pytest.mark.parametrize("K", [256, 512, 2600, 4096])
@pytest.mark.parametrize("pattern", list(EXTREME_PATTERNS), ids=list(EXTREME_PATTERNS))
def test_lut16_matmul_int8_extreme_values(isa, pattern, K):
    x_of, q_of = EXTREME_PATTERNS[pattern]
    x_row = [x_of(k) for k in range(K)]
    q_row = [q_of(k) for k in range(K)]
    expected = sum(a * b for a, b in zip(x_row, q_row))  # Python ints: exact
    N = 70  # a full 64-row task, then a partial 16-row block
    x_q = torch.tensor([x_row] * 2, dtype=torch.int8)
    q = torch.tensor([q_row] * N, dtype=torch.int8)
    q[1::2] *= -1
    out = lut16_matmul_int8(x_q, q)
    assert torch.equal(out, torch.tensor([[expected, -expected] * (N // 2)] * 2, dtype=torch.int32))


# Code 3 (never written by BT2) reads +2 in every BT2 kernel; a lut16 layout may hold it too
# (it is any uint8 tensor), and its table entries (up to 768 in magnitude) must not overflow
# the int16 sums either.
@pytest.mark.parametrize("K", [256, 4096])
@pytest.mark.parametrize("x_value", [-128, 127])
def test_lut16_code3_reads_plus2(isa, K, x_value):
    N = 20
    layout = torch.full((32, ops.bt2_padded_k(K) // 4), 0xFF, dtype=torch.uint8)
    x_q = torch.full((2, K), x_value, dtype=torch.int8)
    out = torch.ops.bitttt.ternary_matmul_int8_lut16(x_q, layout, N)
    assert torch.equal(out, torch.full((2, N), 2 * x_value * K, dtype=torch.int32))


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_lut16_linear_equals_ternary_linear(isa, shape, dtype, bias):
    M, K, N = shape
    x, q, packed, w_scale, b = sample_inputs((M,), K, N, dtype, bias, seed=M * 31 + K * 7 + N)
    y = torch.ops.bitttt.ternary_linear_lut16(x, torch.ops.bitttt.ternary_repack_lut16(packed), w_scale, b)
    assert torch.equal(y, ops.ternary_linear(x, packed, w_scale, b))
    assert_matches(y, expected_linear(x, q, w_scale, b))


@pytest.mark.parametrize("make_x", list(NON_CONTIGUOUS.values()), ids=list(NON_CONTIGUOUS))
def test_lut16_non_contiguous_x_and_nan_rows(isa, make_x):
    torch.manual_seed(3)
    x = make_x(torch.float32).clone() if make_x is _expanded else make_x(torch.float32)
    K, N = x.shape[-1], 33
    q = random_ternary(N, K)
    w_scale = torch.rand(N) + 0.05
    layout = lut16_layout(q)
    y = torch.ops.bitttt.ternary_linear_lut16(x, layout, w_scale)
    assert torch.equal(y, ops.ternary_linear(x, ops.pack_ternary(q), w_scale))
    x_bad = x.contiguous().clone()
    x_bad.view(-1, K)[0, K // 2] = math.nan
    y_bad = torch.ops.bitttt.ternary_linear_lut16(x_bad, layout, w_scale).view(-1, N)
    assert torch.isnan(y_bad[0]).all() and torch.isfinite(y_bad[1:]).all()


def test_lut16_thread_count_does_not_change_result(isa):
    x, q, packed, w_scale, b = sample_inputs((3,), 2600, 300, bias=True, seed=12)
    layout = torch.ops.bitttt.ternary_repack_lut16(packed)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.bitttt.ternary_linear_lut16(x, layout, w_scale, b)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.ops.bitttt.ternary_linear_lut16(x, layout, w_scale, b), one)


BAD_LUT16 = {
    "layout-rows": (lambda g: {"layout": g["layout"][:16].contiguous()}, r"ternary_linear_lut16: layout has 16 rows, N=17 needs 32"),
    "layout-bt2": (lambda g: {"layout": g["packed"]}, r"ternary_linear_lut16: layout has 17 rows"),
    "layout-int8": (lambda g: {"layout": g["layout"].view(torch.int8)}, r"ternary_linear_lut16: packed must be uint8"),
    "K-mismatch": (lambda g: {"x": torch.randn(4, 600)}, r"ternary_linear_lut16: x\.shape\[-1\]=600 does not fit"),
    "w_scale-2d": (lambda g: {"w_scale": torch.ones(N_BAD, 1)}, r"ternary_linear_lut16: w_scale must be float32 \[N\]"),
    "bias-short": (lambda g: {"bias": torch.ones(N_BAD - 1)}, r"ternary_linear: bias must be \[N=17\]"),
}


@pytest.mark.parametrize("case", list(BAD_LUT16), ids=list(BAD_LUT16))
def test_lut16_bad_input(case):
    good = _good()
    good["layout"] = torch.ops.bitttt.ternary_repack_lut16(good["packed"])
    make, message = BAD_LUT16[case]
    args = {**good, **make(good)}
    with pytest.raises(RuntimeError, match=message):
        torch.ops.bitttt.ternary_linear_lut16(args["x"], args["layout"], args["w_scale"], args["bias"])


def test_lut16_opcheck():
    x, q, packed, w_scale, b = sample_inputs((2, 3), 300, 17, bias=True)
    layout = torch.ops.bitttt.ternary_repack_lut16(packed)
    torch.library.opcheck(torch.ops.bitttt.ternary_repack_lut16.default, (packed,))
    torch.library.opcheck(torch.ops.bitttt.ternary_linear_lut16.default, (x, layout, w_scale, b),
                          test_utils=("test_schema", "test_faketensor"))
    x_q = torch.randint(-128, 128, (5, 300), dtype=torch.int8)
    torch.library.opcheck(torch.ops.bitttt.ternary_matmul_int8_lut16.default, (x_q, layout, 17))
