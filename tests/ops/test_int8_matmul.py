"""int8_matmul (csrc/int8/): exact int32 x @ w.T for int8 x [M, K], w [N, K], the int8 LM head's
core at decode. Every kernel set (the `isa` fixture: scalar, AVX2, AVX-512) against float64
matmul, which holds these sums exactly (|sum| <= K * 2**14 < 2**53), and against torch._int_mm.
The AVX2 kernel takes x in [-127, 127] (what activation quantization gives); a call whose x
holds -128 runs the scalar kernel, so both ranges are tested. The AVX-512 kernel takes any x
and its sums wrap past 2**31 on the way (see int8_matmul_avx512.cpp): the largest-K cases
check the result is still exact."""

import pytest
import torch

from bitttt import ops

# K: below, at and past the 16-, 32- and 64-weight vector steps, odd; N: odd (a row without a
# pair) and past one or two 64-row tasks; M: 1..16 (bitttt serve's batches), across the 4- and
# 8-token blocks.
SHAPES = [(1, 1, 1), (1, 15, 3), (1, 16, 1), (1, 17, 2), (2, 33, 5), (3, 48, 65), (4, 200, 129), (5, 257, 7),
          (9, 2567, 131), (6, 64, 3), (7, 127, 9), (8, 2560, 67), (8, 63, 4), (10, 65, 5), (11, 1, 3),
          (12, 191, 70), (13, 128, 2), (14, 321, 130), (15, 2, 9), (16, 2567, 65)]


def exact(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x.double() @ w.double().T).to(torch.int32)


@pytest.mark.parametrize("x_low", [-127, -128], ids=["quantized-x", "any-x"])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_equals_float64_matmul_on_every_kernel_set(isa_amx, M, K, N, x_low):
    g = torch.Generator().manual_seed(M * 1000 + K + N)
    x = torch.randint(x_low, 128, (M, K), dtype=torch.int8, generator=g)
    x[0, 0] = x_low  # the any-x case holds -128 for sure
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
    assert torch.equal(ops.int8_matmul(x, w), exact(x, w))


# bitttt serve's batches: every row of an M-token call equals the one-token call on that token
# (another block shape in each kernel), on 2 threads over rows past several 64-row tasks.
@pytest.mark.parametrize("M", range(2, 17))
def test_each_row_equals_its_one_token_call(isa_amx, M):
    g = torch.Generator().manual_seed(M)
    x = torch.randint(-127, 128, (M, 641), dtype=torch.int8, generator=g)
    x[0] = 127
    x[-1] = -127
    w = torch.randint(-128, 128, (300, 641), dtype=torch.int8, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = ops.int8_matmul(x, w)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out, exact(x, w))
    for m in range(M):
        assert torch.equal(out[m : m + 1], ops.int8_matmul(x[m : m + 1], w))


@pytest.mark.parametrize("M", [3, 8, 16])
@pytest.mark.parametrize("value", [-128, -127, 127])
def test_extremes_do_not_saturate(isa_amx, value, M):
    # pairs of 127 * -128 products are the most vpmaddubsw's int16 sums hold; -128 * -128 is
    # past it (the scalar kernel's case)
    K, N = 4099, 5
    x = torch.full((M, K), value, dtype=torch.int8)
    w = torch.full((N, K), -128, dtype=torch.int8)
    w[1] = 127
    got = ops.int8_matmul(x, w)
    assert got[0, 0].item() == value * -128 * K and got[2, 1].item() == value * 127 * K
    assert torch.equal(got, exact(x, w))


@pytest.mark.parametrize("M", [1, 9])
@pytest.mark.parametrize("value,weight", [(-128, -128), (-127, -128), (127, 127), (127, -128), (-128, 127)])
def test_the_largest_k_sums_exactly(isa_amx, value, weight, M):
    # K * 2**14 = 2**31 - 2**14: the last K whose worst sum fits int32. x = 127, w = 127 takes
    # the AVX-512 kernel's biased sum (x + 128) * w to 255 * 127 * K, past 2**32.
    K = 2**17 - 1
    x = torch.full((M, K), value, dtype=torch.int8)
    w = torch.full((2, K), weight, dtype=torch.int8)
    assert ops.int8_matmul(x, w).tolist() == [[K * weight * value] * 2] * M


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
