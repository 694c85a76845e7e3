"""int8_matmul (csrc/int8/): exact int32 x @ w.T for int8 x [M, K], w [N, K], the int8 LM head's
core at decode. Every kernel set (the `isa` fixture: scalar, AVX2) against float64 matmul,
which holds these sums exactly (|sum| <= K * 2**14 < 2**53), and against torch._int_mm.
The AVX2 kernel takes x in [-127, 127] (what activation quantization gives); a call whose x
holds -128 runs the scalar kernel, so both ranges are tested."""

import pytest
import torch

from bitttt import ops

# K: below, at and past the 16-weight vector step; N: odd (a row without a pair) and past
# one 64-row task; M: 1..4 and past one 4-token block.
SHAPES = [(1, 1, 1), (1, 15, 3), (1, 16, 1), (1, 17, 2), (2, 33, 5), (3, 48, 65), (4, 200, 129), (5, 257, 7),
          (9, 2567, 131)]


def exact(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x.double() @ w.double().T).to(torch.int32)


@pytest.mark.parametrize("x_low", [-127, -128], ids=["quantized-x", "any-x"])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_equals_float64_matmul_on_every_kernel_set(isa, M, K, N, x_low):
    g = torch.Generator().manual_seed(M * 1000 + K + N)
    x = torch.randint(x_low, 128, (M, K), dtype=torch.int8, generator=g)
    x[0, 0] = x_low  # the any-x case holds -128 for sure
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
    assert torch.equal(ops.int8_matmul(x, w), exact(x, w))


@pytest.mark.parametrize("value", [-128, -127, 127])
def test_extremes_do_not_saturate(isa, value):
    # pairs of 127 * -128 products are the most vpmaddubsw's int16 sums hold; -128 * -128 is
    # past it (the scalar kernel's case)
    M, K, N = 3, 4099, 5
    x = torch.full((M, K), value, dtype=torch.int8)
    w = torch.full((N, K), -128, dtype=torch.int8)
    w[1] = 127
    got = ops.int8_matmul(x, w)
    assert got[0, 0].item() == value * -128 * K and got[2, 1].item() == value * 127 * K
    assert torch.equal(got, exact(x, w))


@pytest.mark.parametrize("value", [-128, -127])
def test_the_largest_k_sums_exactly(isa, value):
    K = 2**17 - 1  # K * 2**14 = 2**31 - 2**14: the last K whose worst sum fits int32
    x = torch.full((1, K), value, dtype=torch.int8)
    w = torch.full((2, K), -128, dtype=torch.int8)
    assert ops.int8_matmul(x, w).tolist() == [[K * -128 * value] * 2]


def test_agrees_with_torch_int_mm_on_the_head_shape():
    torch.manual_seed(0)
    x = torch.randint(-127, 128, (1, 2560), dtype=torch.int8)
    w = torch.randint(-127, 128, (3001, 2560), dtype=torch.int8)
    assert torch.equal(ops.int8_matmul(x, w), torch._int_mm(x, w.T))


@pytest.mark.parametrize("threads", [1, 2])
def test_same_sums_on_any_thread_count(threads):
    torch.manual_seed(1)
    x = torch.randint(-128, 128, (2, 640), dtype=torch.int8)
    w = torch.randint(-128, 128, (4097, 640), dtype=torch.int8)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert torch.equal(ops.int8_matmul(x, w), exact(x, w))
    finally:
        torch.set_num_threads(before)


def test_strided_inputs_and_empty_sizes():
    torch.manual_seed(2)
    x = torch.randint(-128, 128, (40, 3), dtype=torch.int8).T  # [3, 40], not contiguous
    w = torch.randint(-128, 128, (40, 6), dtype=torch.int8).T
    assert torch.equal(ops.int8_matmul(x, w), exact(x, w))
    assert ops.int8_matmul(torch.empty(0, 8, dtype=torch.int8), torch.ones(5, 8, dtype=torch.int8)).shape == (0, 5)
    assert ops.int8_matmul(torch.ones(2, 8, dtype=torch.int8), torch.empty(0, 8, dtype=torch.int8)).shape == (2, 0)
    zero_k = ops.int8_matmul(torch.empty(2, 0, dtype=torch.int8), torch.empty(3, 0, dtype=torch.int8))
    assert zero_k.dtype == torch.int32 and torch.equal(zero_k, torch.zeros(2, 3, dtype=torch.int32))


@pytest.mark.parametrize("x,w,match", [
    (torch.ones(1, 8), torch.ones(2, 8, dtype=torch.int8), "must be int8"),
    (torch.ones(1, 8, dtype=torch.int8), torch.ones(2, 8, dtype=torch.uint8), "must be int8"),
    (torch.ones(8, dtype=torch.int8), torch.ones(2, 8, dtype=torch.int8), "dims"),
    (torch.ones(1, 8, dtype=torch.int8), torch.ones(2, 9, dtype=torch.int8), "same K"),
    (torch.ones(1, 2**17, dtype=torch.int8), torch.ones(1, 2**17, dtype=torch.int8), "over the limit"),
], ids=["float-x", "uint8-w", "1-d", "k-mismatch", "k-too-large"])
def test_bad_input_is_one_runtime_error(x, w, match):
    with pytest.raises(RuntimeError, match=match):
        ops.int8_matmul(x, w)


def test_opcheck():
    torch.manual_seed(3)
    x = torch.randint(-128, 128, (3, 70), dtype=torch.int8)
    w = torch.randint(-128, 128, (9, 70), dtype=torch.int8)
    torch.library.opcheck(torch.ops.bitttt.int8_matmul.default, (x, w))
