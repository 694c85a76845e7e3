"""ternary_linear / ternary_matmul_int8 at the edges of their domain (design §2, "Behaviour
at the edges"): empty K, M or N, the K limit, bias dtypes, meta tensors mixed with CPU ones,
and BT2 code 3 with its load-time guard `ops.validate_packed`.

Expected values are closed forms (zeros, the bias) or the int64 reference, never the op.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bitttt import _C, ops, reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.bfloat16]


def packed_zeros(N: int, K: int, device: str = "cpu") -> torch.Tensor:
    """BT2 of an all-zero weight [N, K] (code 1 everywhere)."""
    return torch.full((N, ops.bt2_padded_k(K) // 4), 0x55, dtype=torch.uint8, device=device)


# ---------------------------------------------------------------------------------------
# K = 0, M = 0, N = 0
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("lead", [(1,), (3,), (2, 5), ()], ids=lambda s: "lead" + "x".join(map(str, s)))
def test_empty_k_gives_bias(isa, device, dtype, lead):
    N = 7
    packed = torch.empty(N, 0, dtype=torch.uint8, device=device)
    # A NaN scale must not leak in: the empty sum is exactly 0, whatever w_scale says.
    w_scale = torch.full((N,), float("nan"), device=device)
    bias = torch.arange(N, dtype=torch.float32, device=device) - 3.5
    x = torch.empty(*lead, 0, dtype=dtype, device=device)
    y = ops.ternary_linear(x, packed, w_scale, bias)
    assert y.shape == (*lead, N) and y.dtype == dtype
    torch.testing.assert_close(y.float().cpu(), (bias.to(dtype).float().cpu()).expand(*lead, N), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_empty_k_without_bias_is_zero(isa, device, dtype):
    # Many tokens: the old code sized the work by x.numel() / K and left them all unwritten.
    y = ops.ternary_linear(torch.empty(64, 0, dtype=dtype, device=device), torch.empty(5, 0, dtype=torch.uint8,
                                                                                       device=device),
                           torch.ones(5, device=device))
    assert y.shape == (64, 5)
    assert torch.equal(y.cpu(), torch.zeros(64, 5, dtype=dtype))
    assert not torch.signbit(y.float()).any(), "an empty sum is +0"


@pytest.mark.parametrize("device", DEVICES)
def test_empty_k_bias_in_x_dtype(isa, device):
    bias = torch.tensor([1.5, -2.25], dtype=torch.bfloat16, device=device)
    y = ops.ternary_linear(torch.empty(3, 0, dtype=torch.bfloat16, device=device),
                           torch.empty(2, 0, dtype=torch.uint8, device=device), torch.ones(2, device=device), bias)
    assert torch.equal(y.cpu(), bias.cpu().expand(3, 2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M", [1, 9, 100])
def test_matmul_int8_empty_k_is_zero(isa, device, M):
    out = ops.ternary_matmul_int8(torch.empty(M, 0, dtype=torch.int8, device=device),
                                  torch.empty(6, 0, dtype=torch.uint8, device=device))
    assert out.dtype == torch.int32 and torch.equal(out.cpu(), torch.zeros(M, 6, dtype=torch.int32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("K", [0, 1, 300])
def test_zero_tokens_any_k(isa, device, dtype, K):
    y = ops.ternary_linear(torch.empty(0, 4, K, dtype=dtype, device=device), packed_zeros(3, K, device),
                           torch.ones(3, device=device), torch.ones(3, device=device))
    assert y.shape == (0, 4, 3) and y.dtype == dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [0, 1, 300])
def test_zero_rows(isa, device, K):
    y = ops.ternary_linear(torch.randn(5, K, device=device), packed_zeros(0, K, device),
                           torch.ones(0, device=device), torch.ones(0, device=device))
    assert y.shape == (5, 0)
    out = ops.ternary_matmul_int8(torch.ones(5, K, dtype=torch.int8, device=device), packed_zeros(0, K, device))
    assert out.shape == (5, 0) and out.dtype == torch.int32


def test_one_dim_x(isa):
    # x [K] is one token: y [N].
    x = torch.randn(300)
    q = torch.randint(-1, 2, (4, 300), dtype=torch.int8)
    w_scale = torch.rand(4) + 0.5
    y = ops.ternary_linear(x, ops.pack_ternary(q), w_scale)
    expected = reference.ternary_linear(x.unsqueeze(0), q, w_scale).squeeze(0)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


# ---------------------------------------------------------------------------------------
# Limits and argument checks
# ---------------------------------------------------------------------------------------

MAX_K = 1 << 23  # design §2: the kernels' int32 sums are exact up to here


def test_k_over_the_limit_is_refused():
    K = MAX_K + 1
    x = torch.zeros(1, 1).expand(1, K)  # an expanded view: no 32 MB for x
    with pytest.raises(RuntimeError, match=r"ternary_linear: x\.shape\[-1\]=8388609 is over the kernels' limit"):
        ops.ternary_linear(x, packed_zeros(1, K), torch.ones(1))
    with pytest.raises(RuntimeError, match=r"ternary_matmul_int8: x\.shape\[-1\]=8388609 is over"):
        ops.ternary_matmul_int8(torch.zeros(1, 1, dtype=torch.int8).expand(1, K), packed_zeros(1, K))
    with pytest.raises(RuntimeError, match=r"over the kernels' limit"):
        ops.ternary_linear(x.to("meta"), packed_zeros(1, K).to("meta"), torch.ones(1, device="meta"))


def test_k_at_the_limit_is_exact(isa):
    # The largest K, every x_q at -128 and every weight +1 (code 2): x_q @ q = -2^30, and the
    # kernels' raw sum of x_q * code reaches -2^31, the int32 minimum, without wrapping.
    K = MAX_K
    x = torch.full((1, 1), -128, dtype=torch.int8).expand(1, K)
    packed = torch.full((1, K // 4), 0xAA, dtype=torch.uint8)  # code 2 everywhere: q = +1
    assert ops.ternary_matmul_int8(x, packed).item() == -(2**30)


@pytest.mark.parametrize("bad", [torch.int64, torch.float64, torch.complex64, torch.bool, torch.float16])
def test_bias_dtype_is_checked(bad):
    x = torch.randn(2, 300)
    with pytest.raises(RuntimeError, match=r"ternary_linear: bias must be float32 or x's dtype"):
        ops.ternary_linear(x, packed_zeros(3, 300), torch.ones(3), torch.ones(3, dtype=bad))


def test_many_tokens_of_empty_k_refused_cleanly():
    # 2^62 tokens of K = 0 is a 0-byte x, but the output would be 2^62 * N values.
    x = torch.empty(2**31, 2**31, 0)
    with pytest.raises(RuntimeError):
        ops.ternary_linear(x, torch.empty(2, 0, dtype=torch.uint8), torch.ones(2))


@pytest.mark.parametrize("which", ["packed", "w_scale", "bias"])
def test_meta_mixed_with_cpu_is_refused(which):
    # The call dispatches to the fake kernel, which used to hand back an uninitialised CPU tensor.
    args = {"x": torch.randn(2, 300), "packed": packed_zeros(3, 300), "w_scale": torch.ones(3), "bias": torch.ones(3)}
    args[which] = args[which].to("meta")
    with pytest.raises(RuntimeError, match=rf"ternary_linear: {which} must be on x's device cpu, got meta"):
        ops.ternary_linear(args["x"], args["packed"], args["w_scale"], args["bias"])


def test_meta_mixed_with_cpu_is_refused_int8():
    with pytest.raises(RuntimeError, match=r"ternary_matmul_int8: packed must be on x's device cpu, got meta"):
        ops.ternary_matmul_int8(torch.ones(2, 300, dtype=torch.int8), packed_zeros(3, 300).to("meta"))


# ---------------------------------------------------------------------------------------
# BT2 code 3 (design §2): the raw op reads it as +2 in every kernel; loaders validate
# ---------------------------------------------------------------------------------------


def codes_of(packed: torch.Tensor, K: int) -> torch.Tensor:
    """The 2-bit codes [N, K] of BT2 bytes, decoded from the layout definition (not the op)."""
    N = packed.shape[0]
    out = torch.empty(N, K, dtype=torch.int64)
    for k in range(K):
        run, r = divmod(k, 128)
        out[:, k] = (packed[:, run * 32 + r % 32].long() >> (2 * (r // 32))) & 3
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M", [1, 5, 70])  # CUDA: the GEMV (M <= 8) and the GEMM
def test_code_3_reads_as_plus_two_in_every_kernel(isa, device, M):
    torch.manual_seed(3)
    K, N = 300, 9
    x_q = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    packed = torch.randint(0, 256, (N, ops.bt2_padded_k(K) // 4), dtype=torch.uint8)
    packed[0] = 0xFF  # a whole row of code 3
    expected = x_q.long() @ (codes_of(packed, K) - 1).T
    out = ops.ternary_matmul_int8(x_q.to(device), packed.to(device))
    assert torch.equal(out.cpu().long(), expected)


def test_validate_packed_accepts_what_pack_ternary_writes():
    torch.manual_seed(0)
    for N, K in [(1, 1), (5, 300), (17, 2600), (0, 256), (3, 0)]:
        ops.validate_packed(ops.pack_ternary(torch.randint(-1, 2, (N, K), dtype=torch.int8)))


@pytest.mark.parametrize("byte, count", [(0xFF, 4), (0x03, 1), (0x0C, 1), (0x30, 1), (0xC0, 1), (0xF7, 3)])
def test_validate_packed_counts_code_3(byte, count):
    packed = ops.pack_ternary(torch.zeros(6, 300, dtype=torch.int8))
    packed[2, 5] = byte
    packed[4, 70] = 0xFF
    with pytest.raises(ValueError, match=rf"hold {count + 4} code\(s\) 3, first in row 2"):
        ops.validate_packed(packed)


def test_validate_packed_across_passes(monkeypatch):
    # Bad codes in several row slices still give one total and the first row.
    monkeypatch.setattr(ops, "_VALIDATE_BYTES_PER_PASS", 64)
    packed = ops.pack_ternary(torch.zeros(40, 256, dtype=torch.int8))  # 64 bytes a row: one row a pass
    packed[7, 0] = packed[31, 63] = 0xC5  # one code 3 each (bits 6-7)
    with pytest.raises(ValueError, match=r"hold 2 code\(s\) 3, first in row 7"):
        ops.validate_packed(packed)


@pytest.mark.parametrize("bad", [torch.zeros(3, 64, dtype=torch.int8), torch.zeros(64, dtype=torch.uint8),
                                 torch.zeros(2, 3, 64, dtype=torch.uint8)], ids=["int8", "1d", "3d"])
def test_validate_packed_rejects_non_bt2(bad):
    with pytest.raises(ValueError, match=r"packed weights must be uint8 \[N, Kp/4\]"):
        ops.validate_packed(bad)


def test_validate_packed_non_contiguous():
    packed = ops.pack_ternary(torch.zeros(4, 256, dtype=torch.int8))
    packed[1, 3] = 0xFF
    with pytest.raises(ValueError, match=r"hold 4 code\(s\) 3, first in row 1"):
        ops.validate_packed(packed.T.contiguous().T)


@pytest.mark.skipif(not (_C.build_info()["amx"] and _C.cpu_features()["amx_int8"]),
                    reason="no AMX here (CPU, OS grant or compiler)")
def test_amx_is_the_default_and_avx512_turns_it_off():
    """Where AMX runs, "auto" (a fresh process) picks the AMX tiles; BITTTT_ISA=avx512 runs the
    VNNI kernels alone and BITTTT_ISA=amx asks for the tiles; both report the "avx512" set."""
    def fresh(isa: str | None) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k != "BITTTT_ISA"}
        if isa:
            env["BITTTT_ISA"] = isa
        return subprocess.run([sys.executable, "-c", "from bitttt import _C; print(_C.isa(), _C.amx_active())"],
                              capture_output=True, text=True, env=env, check=True).stdout.split()
    assert fresh(None) == ["avx512", "True"]
    assert fresh("avx512") == ["avx512", "False"]
    assert fresh("amx") == ["avx512", "True"]
    try:
        _C.set_isa("avx512")
        assert not _C.amx_active()
        _C.set_isa("amx")
        assert _C.amx_active()
    finally:
        _C.set_isa("auto")


def test_set_isa_switches_every_kernel_family_and_auto_restores():
    """set_isa(name) switches the ternary, TTT-Linear and TTT-MLP kernels; 'auto' gives back
    what a fresh process picks (the oracle: a subprocess without BITTTT_ISA); an unknown name
    raises and changes nothing."""
    env = {k: v for k, v in os.environ.items() if k != "BITTTT_ISA"}
    fresh = subprocess.run([sys.executable, "-c", "from bitttt import _C; i = _C.build_info(); "
                            "print(_C.isa(), i['ttt_isa'], i['ttt_mlp_isa'])"],
                           capture_output=True, text=True, env=env, check=True).stdout.split()
    seen = set()
    try:
        for name in _C.available_isas():
            _C.set_isa(name)
            info = _C.build_info()
            assert _C.isa() == name
            seen.add((info["ttt_isa"], info["ttt_mlp_isa"]))
            if name == "scalar":
                assert info["ttt_isa"] == "scalar" and info["ttt_mlp_isa"] == "generic"
        _C.set_isa("auto")
        info = _C.build_info()
        assert [_C.isa(), info["ttt_isa"], info["ttt_mlp_isa"]] == fresh
        with pytest.raises(RuntimeError, match="not available"):
            _C.set_isa("no-such-isa")
        assert _C.isa() == fresh[0]
    finally:
        _C.set_isa("auto")
    if len(_C.available_isas()) > 1:  # more than one kernel set really ran
        assert len(seen) > 1
