"""The trit5 layout (csrc/ternary/trit5.h, 5 weights per byte) and its ops, for every kernel
set this CPU runs (the `isa` fixture picks the trit5 kernels of that ISA).

Oracles: the layout's definition decoded here in Python (the repack), the int64 reference
(exact int32 sums), and ternary_linear over the BT2 bytes (bit-identical float outputs).
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

from bitttt import _C, ops, reference

sys.path.insert(0, os.path.dirname(__file__))
from test_ternary_linear import (  # noqa: E402
    DTYPE_IDS,
    DTYPES,
    EXTREME_PATTERNS,
    NON_CONTIGUOUS,
    SHAPES,
    _expanded,
    _good,
    assert_matches,
    random_ternary,
    on_threads,
    sample_inputs,
    serve_batch,
    shape_id,
)

BLOCK_K, BLOCK_BYTES = 320, 64
# The BT2 grid plus trit5's own edges: K across a 320-weight block (319, 320, 321, 640) and
# the BitNet shapes' K = 6912 (not a multiple of 320), odd K and K = 1.
TRIT5_SHAPES = SHAPES + [(1, 319, 5), (3, 320, 64), (5, 321, 67), (1, 640, 4), (2, 6912, 9), (1, 1, 1), (4, 7, 9)]


def trit5_row_bytes(K: int) -> int:
    return -(-K // BLOCK_K) * BLOCK_BYTES


def decode_trit5(layout: torch.Tensor, K: int) -> torch.Tensor:
    """int8 weights [N, K] from a trit5 layout by the header's definition: byte j of block b
    holds digit i of weight k = 320 b + 64 i + j, digit i = (3 * (byte * 3^i mod 256)) >> 8."""
    N = layout.shape[0]
    blocks = layout.long().view(N, -1, 1, BLOCK_BYTES)  # [N, blocks, 1, 64]
    powers = torch.tensor([3**i for i in range(5)]).view(1, 1, 5, 1)
    digits = (3 * (blocks * powers % 256)) >> 8  # [N, blocks, 5, 64]: k = 64 i + j in the block
    return (digits.reshape(N, -1)[:, :K] - 1).to(torch.int8), (digits.reshape(N, -1)[:, K:] - 1)


def trit5_layout(q: torch.Tensor) -> torch.Tensor:
    return ops.ternary_repack_trit5(ops.pack_ternary(q), q.shape[1])


@pytest.mark.parametrize("shape", [(1, 1), (3, 100), (3, 300), (2, 600), (5, 319), (2, 321), (7, 2560), (4, 6912)], ids=str)
def test_trit5_repack_holds_the_same_weights(shape):
    N, K = shape
    torch.manual_seed(N * 7 + K)
    q = random_ternary(N, K)
    layout = trit5_layout(q)
    assert layout.dtype == torch.uint8 and tuple(layout.shape) == (N, trit5_row_bytes(K))
    weights, padding = decode_trit5(layout, K)
    assert torch.equal(weights, q)
    assert not padding.any()  # padding weights are 0


def test_trit5_every_byte_decodes():
    """All 3^5 digit patterns survive a repack: one row of 320 weights per pattern at j = 0."""
    patterns = torch.tensor([[v // 3 ** (4 - i) % 3 for i in range(5)] for v in range(243)]) - 1  # [243, 5]
    q = torch.zeros(243, BLOCK_K, dtype=torch.int8)
    q[:, 0::BLOCK_BYTES] = patterns.to(torch.int8)  # digits of byte 0: k = 0, 64, ..., 256
    weights, _ = decode_trit5(trit5_layout(q), BLOCK_K)
    assert torch.equal(weights, q)


@pytest.mark.parametrize("shape", TRIT5_SHAPES, ids=shape_id)
def test_trit5_matmul_int8_exact(isa, shape):
    assert _C.trit5_isa() == {"avx512_emulated": "avx2", "neon": "scalar", "neon_dotprod": "scalar"}.get(isa, isa)
    M, K, N = shape
    torch.manual_seed(M * 31 + K * 7 + N)
    x_q = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    q = random_ternary(N, K)
    out = ops.ternary_matmul_int8_trit5(x_q, trit5_layout(q), N)
    assert out.dtype == torch.int32 and tuple(out.shape) == (M, N)
    assert torch.equal(out.long(), reference.ternary_matmul_int8(x_q, q))


# bitttt serve's batches, as test_ternary_linear.py's: M = 2..16 tokens, K across a partial
# block, N past two 64-row tasks on 2 threads; every row exact and equal to its one-token call.
@pytest.mark.parametrize("M", range(2, 17))
def test_trit5_matmul_int8_serve_batches(isa, M):
    K, N = 2567, 197  # K: 8 whole 320-weight blocks and a partial one
    x_q = serve_batch(M, K, seed=M)
    torch.manual_seed(M)
    layout = trit5_layout(q := random_ternary(N, K))
    out = on_threads(2, lambda: ops.ternary_matmul_int8_trit5(x_q, layout, N))
    assert torch.equal(out.long(), reference.ternary_matmul_int8(x_q, q))
    for m in range(M):
        assert torch.equal(out[m : m + 1], ops.ternary_matmul_int8_trit5(x_q[m : m + 1], layout, N))


# Extreme activations against every weight sign: the AVX2 kernel's int16 lanes add 10
# products of up to 512 per block before widening. K = 320 and 640 end on a block, 2600 and
# 4096 in a partial one.
@pytest.mark.parametrize("M", [5, 8, 13, 16])
@pytest.mark.parametrize("K", [320, 640, 2600, 4096])
@pytest.mark.parametrize("pattern", list(EXTREME_PATTERNS), ids=list(EXTREME_PATTERNS))
def test_trit5_matmul_int8_extreme_values(isa, pattern, K, M):
    x_of, q_of = EXTREME_PATTERNS[pattern]
    x_row = [x_of(k) for k in range(K)]
    q_row = [q_of(k) for k in range(K)]
    expected = sum(a * b for a, b in zip(x_row, q_row))  # Python ints: exact
    N = 70  # a full 64-row task, then a partial tile
    x_q = torch.tensor([x_row] * M, dtype=torch.int8)  # 4-token tiles, then the tokens left
    q = torch.tensor([q_row] * N, dtype=torch.int8)
    q[1::2] *= -1
    out = ops.ternary_matmul_int8_trit5(x_q, trit5_layout(q), N)
    assert torch.equal(out, torch.tensor([[expected, -expected] * (N // 2)] * M, dtype=torch.int32))


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", TRIT5_SHAPES, ids=shape_id)
def test_trit5_linear_equals_ternary_linear(isa, shape, dtype, bias):
    M, K, N = shape
    x, q, packed, w_scale, b = sample_inputs((M,), K, N, dtype, bias, seed=M * 31 + K * 7 + N)
    y = ops.ternary_linear_trit5(x, ops.ternary_repack_trit5(packed, K), w_scale, b)
    assert torch.equal(y, ops.ternary_linear(x, packed, w_scale, b))
    assert_matches(y, reference.ternary_linear(x, q, w_scale, b))


@pytest.mark.parametrize("make_x", list(NON_CONTIGUOUS.values()), ids=list(NON_CONTIGUOUS))
def test_trit5_non_contiguous_x_and_nan_rows(isa, make_x):
    torch.manual_seed(3)
    x = make_x(torch.float32).clone() if make_x is _expanded else make_x(torch.float32)
    K, N = x.shape[-1], 33
    q = random_ternary(N, K)
    w_scale = torch.rand(N) + 0.05
    layout = trit5_layout(q)
    y = ops.ternary_linear_trit5(x, layout, w_scale)
    assert torch.equal(y, ops.ternary_linear(x, ops.pack_ternary(q), w_scale))
    x_bad = x.contiguous().clone()
    x_bad.view(-1, K)[0, K // 2] = math.nan
    x_bad.view(-1, K)[-1, 0] = math.inf
    y_bad = ops.ternary_linear_trit5(x_bad, layout, w_scale).view(-1, N)
    assert torch.isnan(y_bad[0]).all() and torch.isnan(y_bad[-1]).all() and torch.isfinite(y_bad[1:-1]).all()


def test_trit5_thread_count_does_not_change_result(isa):
    x, q, packed, w_scale, b = sample_inputs((3,), 2600, 300, bias=True, seed=12)
    layout = ops.ternary_repack_trit5(packed, 2600)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.ternary_linear_trit5(x, layout, w_scale, b)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(ops.ternary_linear_trit5(x, layout, w_scale, b), one)


def test_trit5_k0_and_no_tokens():
    layout = ops.ternary_repack_trit5(torch.zeros(5, 0, dtype=torch.uint8), 0)
    assert tuple(layout.shape) == (5, 0)
    b = torch.randn(5)
    assert torch.equal(ops.ternary_linear_trit5(torch.randn(3, 0), layout, torch.ones(5), b), b.expand(3, 5))
    layout = trit5_layout(random_ternary(5, 10))
    assert ops.ternary_linear_trit5(torch.randn(0, 10), layout, torch.ones(5)).shape == (0, 5)


def test_trit5_repack_stores_code3_as_plus1_and_refuses_non_bt2():
    q = random_ternary(4, 300)
    packed = ops.pack_ternary(q)
    packed[2, 5] |= 0b11 << 4  # code 3 at k = 5 + 64 (run 0, bits 4-5)
    weights, _ = decode_trit5(ops.ternary_repack_trit5(packed, 300), 300)
    q[2, 69] = 1
    assert torch.equal(weights, q)
    with pytest.raises(RuntimeError, match=r"ternary_repack_trit5: x\.shape\[-1\]=600 does not fit packed"):
        ops.ternary_repack_trit5(torch.zeros(4, 128, dtype=torch.uint8), 600)
    with pytest.raises(RuntimeError, match=r"ternary_repack_trit5: packed must be uint8"):
        ops.ternary_repack_trit5(torch.zeros(4, 64, dtype=torch.int8), 100)


BAD_TRIT5 = {
    "layout-bt2": (lambda g: {"layout": g["packed"]}, r"ternary_linear_trit5: layout is \[17, 128\], x\.shape\[-1\]=300 and N=17 need \[17, 64\]"),
    "layout-int8": (lambda g: {"layout": g["layout"].view(torch.int8)}, r"ternary_linear_trit5: layout must be uint8"),
    "layout-T": (lambda g: {"layout": torch.zeros(64, 17, dtype=torch.uint8).T}, r"ternary_linear_trit5: layout must be contiguous"),
    "K-mismatch": (lambda g: {"x": torch.randn(4, 700)}, r"ternary_linear_trit5: layout is \[17, 64\], x\.shape\[-1\]=700"),
    "x-float64": (lambda g: {"x": g["x"].double()}, r"ternary_linear_trit5: x must be float32 or bfloat16"),
    "w_scale-2d": (lambda g: {"w_scale": torch.ones(17, 1)}, r"ternary_linear_trit5: w_scale must be float32 \[N\]"),
    "w_scale-f64": (lambda g: {"w_scale": torch.ones(17, dtype=torch.float64)}, r"ternary_linear_trit5: w_scale must be float32"),
    "bias-short": (lambda g: {"bias": torch.ones(16)}, r"ternary_linear_trit5: bias must be \[N=17\]"),
    "layout-meta": (lambda g: {"layout": g["layout"].to("meta")}, r"ternary_linear_trit5: layout must be on x's device cpu"),
}


@pytest.mark.parametrize("case", list(BAD_TRIT5), ids=list(BAD_TRIT5))
def test_trit5_bad_input(case):
    good = _good()
    assert good["x"].shape[-1] == 300 and good["packed"].shape[0] == 17
    good["layout"] = ops.ternary_repack_trit5(good["packed"], 300)
    make, message = BAD_TRIT5[case]
    args = {**good, **make(good)}
    with pytest.raises(RuntimeError, match=message):
        ops.ternary_linear_trit5(args["x"], args["layout"], args["w_scale"], args["bias"])


def test_trit5_opcheck():
    x, q, packed, w_scale, b = sample_inputs((2, 3), 300, 17, bias=True)
    layout = ops.ternary_repack_trit5(packed, 300)
    torch.library.opcheck(torch.ops.bitttt.ternary_repack_trit5.default, (packed, 300))
    torch.library.opcheck(torch.ops.bitttt.ternary_linear_trit5.default, (x, layout, w_scale, b),
                          test_utils=("test_schema", "test_faketensor"))
    x_q = torch.randint(-128, 128, (5, 300), dtype=torch.int8)
    torch.library.opcheck(torch.ops.bitttt.ternary_matmul_int8_trit5.default, (x_q, layout, 17))
