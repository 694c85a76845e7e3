"""half_matmul (csrc/half/): float32 x @ w.T for float32 x [M, K] and bfloat16/float16 w [N, K],
the float LM head at decode. Every kernel set (the `isa` fixture: scalar, AVX2) against float64
matmul. Sums are float32 in the kernel's own order, so the bound is the float32 summation
error, K * 2**-24 * sum |x| |w| per output; the widening of each 16-bit value is tested exactly,
over all 65536 bit patterns of both formats."""

import pytest
import torch
from torch import nn

from bitttt import ops
from bitttt.nn.half_linear import MAX_ROWS, HalfLinear

DTYPES = [torch.bfloat16, torch.float16]
# K: below, at and past the 8- and 32-value vector steps; N: odd and past one 64-row task;
# M: 1..4 and past one 4-token block.
SHAPES = [(1, 1, 1), (1, 7, 3), (1, 8, 1), (2, 31, 5), (3, 32, 65), (4, 33, 129), (5, 200, 7), (9, 2567, 131)]


def reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.double() @ w.double().T


def assert_within_float32_summation(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.shape == (x.shape[0], w.shape[0])
    bound = x.shape[1] * 2.0**-24 * (x.double().abs() @ w.double().abs().T)
    err = (got.double() - reference(x, w)).abs()
    assert bool((err <= bound).all()), f"max error {err.max().item():.3g}, bound {bound.min().item():.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "f16"])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_equals_float64_matmul_to_float32_rounding(isa, dtype, M, K, N):
    g = torch.Generator().manual_seed(M * 1000 + K + N)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g).to(dtype)
    assert_within_float32_summation(ops.half_matmul(x, w), x, w)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "f16"])
def test_every_16_bit_pattern_widens_exactly(isa, dtype):
    # w holds all 65536 patterns (subnormals, infinities, NaNs) in rows of 32; one-hot tokens
    # pick one column each, so each output is one product: exact, or NaN where the reference's is
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype).reshape(2048, 32)
    x = torch.eye(32)
    got = ops.half_matmul(x, bits)
    torch.testing.assert_close(got, reference(x, bits).float(), rtol=0, atol=0, equal_nan=True)
    finite = bits.float().isfinite().all(dim=1)
    assert torch.equal(got.T[finite], bits.float()[finite])


@pytest.mark.parametrize("threads", [1, 2])
def test_same_sums_on_any_thread_count(threads):
    torch.manual_seed(1)
    x = torch.randn(2, 640)
    w = torch.randn(4097, 640).bfloat16()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = ops.half_matmul(x, w)
        torch.set_num_threads(threads)
        assert torch.equal(ops.half_matmul(x, w), one)  # rows are split, never a sum
    finally:
        torch.set_num_threads(before)


def test_strided_inputs_and_empty_sizes():
    torch.manual_seed(2)
    x = torch.randn(40, 3).T  # [3, 40], not contiguous
    w = torch.randn(40, 6).half().T
    assert_within_float32_summation(ops.half_matmul(x, w), x, w)
    assert ops.half_matmul(torch.empty(0, 8), torch.ones(5, 8, dtype=torch.bfloat16)).shape == (0, 5)
    assert ops.half_matmul(torch.ones(2, 8), torch.empty(0, 8, dtype=torch.bfloat16)).shape == (2, 0)
    zero_k = ops.half_matmul(torch.empty(2, 0), torch.empty(3, 0, dtype=torch.float16))
    assert torch.equal(zero_k, torch.zeros(2, 3))


@pytest.mark.parametrize("x,w,match", [
    (torch.ones(1, 8, dtype=torch.bfloat16), torch.ones(2, 8, dtype=torch.bfloat16), "x must be float32"),
    (torch.ones(1, 8), torch.ones(2, 8), "w must be bfloat16 or float16"),
    (torch.ones(8), torch.ones(2, 8, dtype=torch.bfloat16), "dims"),
    (torch.ones(1, 8), torch.ones(2, 9, dtype=torch.float16), "same K"),
], ids=["bf16-x", "float32-w", "1-d", "k-mismatch"])
def test_bad_input_is_one_runtime_error(x, w, match):
    with pytest.raises(RuntimeError, match=match):
        ops.half_matmul(x, w)


def test_opcheck():
    torch.manual_seed(3)
    torch.library.opcheck(torch.ops.bitttt.half_matmul.default, (torch.randn(3, 70), torch.randn(9, 70).half()))


# -- HalfLinear, the module the Hugging Face BitNet head uses ----------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "f16"])
@pytest.mark.parametrize("rows", [1, 3, MAX_ROWS])
def test_half_linear_is_nn_linear_to_float32_rounding(dtype, rows):
    torch.manual_seed(4)
    layer = HalfLinear(96, 300, bias=True).to(dtype).requires_grad_(False)
    plain = nn.Linear(96, 300, bias=True).to(dtype).requires_grad_(False)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(1, rows, 96).to(dtype)
    got = layer(x)
    ref = (x.double() @ layer.weight.double().T + layer.bias.double()).to(dtype)
    assert got.dtype == dtype and got.shape == (1, rows, 300)
    # both round a float32 sum to dtype: at most one unit in the last place apart
    tol = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(got.float(), plain(x).float(), rtol=tol, atol=tol)


def test_half_linear_runs_half_matmul_only_where_it_should(monkeypatch):
    calls = []
    real = ops.half_matmul
    monkeypatch.setattr(ops, "half_matmul", lambda x, w: calls.append(x.shape) or real(x, w))
    layer = HalfLinear(16, 8, bias=False).bfloat16()
    x = torch.randn(2, 16).bfloat16()
    with torch.no_grad():
        layer(x)                                   # decode: yes
        layer(torch.randn(MAX_ROWS + 1, 16).bfloat16())  # a long prefill: torch's GEMM
        HalfLinear(16, 8).float()(torch.randn(2, 16))     # a float32 weight: nn.Linear
    layer(x).sum().backward()                      # autograd: nn.Linear, which has a backward
    assert calls == [(2, 16)] and layer.weight.grad is not None
