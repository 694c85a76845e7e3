"""BT2 packing (design §2): pack_ternary / unpack_ternary / quantize_weight against the
layout's definition, byte for byte, and their bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitttt import ops

RUN_K = 128  # weights per 32-byte run (design §2)
PAD_K = 256  # K is padded to a multiple of this


def padded_k(K: int) -> int:
    return -(-K // PAD_K) * PAD_K


def pack_bt2_by_definition(q: np.ndarray) -> np.ndarray:
    """Independent BT2 packer, written as llama.cpp's quantize_row_tq2_0_ref loops over `qs`:
    each run of 128 weights is 32 bytes; byte m holds k = m, m+32, m+64, m+96 at bits
    0-1, 2-3, 4-5, 6-7; code = q + 1; padding (k >= K) is code 1."""
    N, K = q.shape
    Kp = padded_k(K)
    out = np.zeros((N, Kp // 4), dtype=np.uint8)
    for n in range(N):
        for run in range(Kp // RUN_K):
            for m in range(32):
                byte = 0
                for s in range(4):
                    k = run * RUN_K + s * 32 + m
                    code = int(q[n, k]) + 1 if k < K else 1
                    byte |= code << (2 * s)
                out[n, run * 32 + m] = byte
    return out


def random_ternary(N: int, K: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (N, K), generator=g, dtype=torch.int8)


PACK_SHAPES = [(1, 1), (3, 100), (17, 128), (2, 255), (5, 256), (4, 257), (3, 300), (2, 2600), (0, 100)]


def shape_id(shape) -> str:
    return "N{}-K{}".format(*shape)


@pytest.mark.parametrize("shape", PACK_SHAPES, ids=shape_id)
def test_pack_matches_layout_definition(shape):
    N, K = shape
    q = random_ternary(N, K, seed=N * 10007 + K)
    packed = ops.pack_ternary(q)
    assert packed.dtype == torch.uint8
    assert tuple(packed.shape) == (N, padded_k(K) // 4)
    assert packed.is_contiguous()
    np.testing.assert_array_equal(packed.numpy(), pack_bt2_by_definition(q.numpy()))


@pytest.mark.parametrize("shape", PACK_SHAPES, ids=shape_id)
def test_unpack_reads_layout_definition(shape):
    N, K = shape
    q = random_ternary(N, K, seed=N * 7919 + K)
    packed = torch.from_numpy(pack_bt2_by_definition(q.numpy()))
    out = ops.unpack_ternary(packed, K)
    assert out.dtype == torch.int8
    assert tuple(out.shape) == (N, K)
    assert torch.equal(out, q)


@pytest.mark.parametrize("K", [1, 256, 300, 2560, 2600])
def test_pack_unpack_roundtrip(K):
    q = random_ternary(33, K, seed=K)
    assert torch.equal(ops.unpack_ternary(ops.pack_ternary(q), K), q)


def test_pack_known_bytes():
    # One weight +1 (code 2 at bits 0-1 of byte 0) and padding code 1 everywhere else:
    # 0b01_01_01_10 = 0x56, then 0b01_01_01_01 = 0x55 for the remaining 63 bytes.
    packed = ops.pack_ternary(torch.tensor([[1]], dtype=torch.int8))
    assert packed.tolist() == [[0x56] + [0x55] * 63]

    # k = 33 is byte 1 of run 0, bits 2-3; k = 128 + 97 is byte 1 of run 1, bits 6-7.
    q = torch.zeros(1, 256, dtype=torch.int8)
    q[0, 33] = -1
    q[0, 128 + 97] = 1
    expected = [0x55] * 64
    expected[1] = 0b01_01_00_01
    expected[32 + 1] = 0b10_01_01_01
    assert ops.pack_ternary(q).tolist() == [expected]


@pytest.mark.parametrize("value,byte", [(-1, 0x00), (0, 0x55), (1, 0xAA)], ids=["minus1", "zero", "plus1"])
def test_pack_constant_rows(value, byte):
    q = torch.full((3, 512), value, dtype=torch.int8)
    assert torch.equal(ops.pack_ternary(q), torch.full((3, 128), byte, dtype=torch.uint8))


def test_pack_non_contiguous_input():
    q = random_ternary(300, 40, seed=3).T  # [40, 300], transposed view
    assert not q.is_contiguous()
    np.testing.assert_array_equal(ops.pack_ternary(q).numpy(), pack_bt2_by_definition(q.numpy()))


# ---------------------------------------------------------------------------------------
# quantize_weight: absmean ternary quantization (design §2), then BT2
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_quantize_weight(dtype):
    torch.manual_seed(0)
    N, K = 17, 300
    w = (torch.randn(N, K) * 0.02).to(dtype)
    packed, w_scale = ops.quantize_weight(w)

    wf = w.float()
    s_w = wf.abs().mean()
    q = torch.round(wf / s_w).clamp(-1, 1).to(torch.int8)
    assert (q == 0).any() and (q == 1).any() and (q == -1).any()
    np.testing.assert_array_equal(packed.numpy(), pack_bt2_by_definition(q.numpy()))
    assert w_scale.dtype == torch.float32
    assert tuple(w_scale.shape) == (N,)
    torch.testing.assert_close(w_scale, s_w.expand(N), rtol=1e-6, atol=0)


def test_quantize_weight_zero_matrix():
    packed, w_scale = ops.quantize_weight(torch.zeros(3, 100))
    assert torch.equal(ops.unpack_ternary(packed, 100), torch.zeros(3, 100, dtype=torch.int8))
    assert torch.isfinite(w_scale).all() and (w_scale > 0).all()


# ---------------------------------------------------------------------------------------
# Bad input: ValueError naming the problem
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [2, -2, 127, -128], ids=lambda v: f"value{v}")
def test_pack_rejects_non_ternary_values(bad):
    q = torch.zeros(4, 300, dtype=torch.int8)
    q[2, 299] = bad
    with pytest.raises(ValueError, match=r"pack_ternary: q must hold only -1, 0, 1"):
        ops.pack_ternary(q)


@pytest.mark.parametrize(
    "q",
    [torch.zeros(4, 8, dtype=torch.int32), torch.zeros(4, 8), torch.zeros(8, dtype=torch.int8),
     torch.zeros(2, 4, 8, dtype=torch.int8)],
    ids=["int32", "float32", "1d", "3d"],
)
def test_pack_rejects_wrong_dtype_or_rank(q):
    with pytest.raises(ValueError, match=r"pack_ternary: q must be int8 \[N, K\]"):
        ops.pack_ternary(q)


@pytest.mark.parametrize("K,wrong_K", [(300, 600), (300, 200), (256, 257), (1, 0)])
def test_unpack_rejects_wrong_k(K, wrong_K):
    packed = ops.pack_ternary(random_ternary(3, K))
    with pytest.raises(ValueError, match=rf"unpack_ternary: .*K={wrong_K} needs"):
        ops.unpack_ternary(packed, wrong_K)


def test_unpack_accepts_any_k_within_padding():
    # K = 300 and K = 512 share Kp = 512: the bytes decide, K only trims.
    q = random_ternary(3, 300)
    assert torch.equal(ops.unpack_ternary(ops.pack_ternary(q), 512)[:, :300], q)


@pytest.mark.parametrize(
    "packed", [torch.zeros(3, 64, dtype=torch.int8), torch.zeros(64, dtype=torch.uint8)], ids=["int8", "1d"]
)
def test_unpack_rejects_wrong_dtype_or_rank(packed):
    with pytest.raises(ValueError, match=r"unpack_ternary: packed must be uint8"):
        ops.unpack_ternary(packed, 256)


@pytest.mark.parametrize(
    "w", [torch.zeros(4, 8, dtype=torch.int32), torch.zeros(8)], ids=["int32", "1d"]
)
def test_quantize_weight_rejects_bad_input(w):
    with pytest.raises(ValueError, match=r"quantize_weight: w must be a float \[N, K\] matrix"):
        ops.quantize_weight(w)


# ---------------------------------------------------------------------------------------
# The lut16 load-time layout (csrc/ternary/lut16.h), decoded here from its definition
# ---------------------------------------------------------------------------------------


def decode_lut16(layout: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """int8 [N, K] weights from a lut16 layout, following the header's byte map: byte
    h * 16 + r of quad q holds k = 8q + 2h, 8q + 2h + 1 in bits 0-1, 2-3 and k = 8q + 4 + 2h,
    8q + 5 + 2h in bits 4-5, 6-7 for row r of a 16-row block."""
    Np, Kp = layout.shape[0], layout.shape[1] * 4
    b = layout.view(Np // 16, Kp // 8, 2, 16).long()  # [block, quad, h, r]
    codes = torch.empty(Np // 16, Kp // 8, 8, 16, dtype=torch.long)  # [block, quad, j, r]
    for h in range(2):
        for hi in range(2):
            for second in range(2):
                codes[:, :, 4 * hi + 2 * h + second, :] = (b[:, :, h, :] >> (4 * hi + 2 * second)) & 3
    q = codes.permute(0, 3, 1, 2).reshape(Np, Kp) - 1
    return q[:N, :K].to(torch.int8), q[N:]


@pytest.mark.parametrize("N,K", [(1, 1), (16, 256), (17, 300), (100, 2600), (64, 8)])
def test_lut16_repack_holds_the_same_weights(N, K):
    torch.manual_seed(N + K)
    q = torch.randint(-1, 2, (N, K), dtype=torch.int8)
    layout = torch.ops.bitttt.ternary_repack_lut16(ops.pack_ternary(q))
    assert layout.dtype == torch.uint8
    assert tuple(layout.shape) == ((N + 15) // 16 * 16, ops.bt2_padded_k(K) // 4)
    weights, padding_rows = decode_lut16(layout, N, K)
    assert torch.equal(weights, q)
    assert (padding_rows == 0).all()  # rows added up to a multiple of 16 hold weight 0


def test_lut16_repack_refuses_non_bt2():
    with pytest.raises(RuntimeError, match=r"ternary_repack_lut16: packed has 100 bytes per row"):
        torch.ops.bitttt.ternary_repack_lut16(torch.zeros(4, 100, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match=r"ternary_repack_lut16: packed must be uint8"):
        torch.ops.bitttt.ternary_repack_lut16(torch.zeros(4, 64, dtype=torch.int8))
