"""bitttt's ops: the public Python API over torch.ops.bitttt.*.

The schemas live in csrc/module.cpp (loaded by bitttt._native); this file adds what torch
needs around them: fake kernels so torch.compile can trace the ops, autograd formulas, and
typed wrappers. The BT2 packing helpers are plain torch: they run once per weight.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from bitttt import _native  # noqa: F401  (loads _C and _C_cuda: registers torch.ops.bitttt.*)

__all__ = [
    "BT2_PAD_K",
    "pack_ternary",
    "unpack_ternary",
    "validate_packed",
    "ternarize_weight",
    "quantize_activations_int8",
    "quantize_weight",
    "ternary_linear",
    "ternary_matmul_int8",
    "int8_matmul",
    "half_matmul",
    "ternary_repack_lut16",
    "ternary_linear_lut16",
    "ternary_matmul_int8_lut16",
    "ternary_repack_trit5",
    "ternary_linear_trit5",
    "ternary_matmul_int8_trit5",
    "rms_norm_ternary_linear",
    "bitnet_decode_",
    "bitttt_decode_",
    "TTTState",
    "ttt_linear",
    "ttt_linear_decode_",
    "fake_quant_activations",
    "fake_quant_weight",
    "bitlinear_fake_quant",
    "bitlinear_fake_quant_shared",
    "rms_norm",
    "causal_conv1d",
    "rope_heads",
    "rope_qkv",
    "clip_grad_norm_",
    "max_abs",
    "silu_mul",
    "gelu_tanh_mul",
    "TTTMLPState",
    "ttt_mlp",
    "ttt_mlp_decode_",
]

# ---------------------------------------------------------------------------------------
# BT2 packing (docs/design.md §2)
# ---------------------------------------------------------------------------------------

BT2_RUN_K = 128  # weights per 32-byte run
BT2_PAD_K = 256  # K is padded to a multiple of this
BT2_MAX_K = 1 << 23  # the kernels' int32 sums stay exact up to here (csrc/ternary/checks.h)


def bt2_padded_k(K: int) -> int:
    """K rounded up to the BT2 padding (a multiple of 256)."""
    return (K + BT2_PAD_K - 1) // BT2_PAD_K * BT2_PAD_K


def pack_ternary(q: torch.Tensor) -> torch.Tensor:
    """Packs ternary weights q int8 [N, K] (values -1, 0, 1) into BT2 uint8 [N, Kp/4].

    Raises ValueError for another dtype, shape or a value outside {-1, 0, 1}.
    """
    if q.dtype != torch.int8 or q.dim() != 2:
        raise ValueError(f"pack_ternary: q must be int8 [N, K], got {q.dtype} {tuple(q.shape)}")
    if q.numel() and (q.min() < -1 or q.max() > 1):
        raise ValueError("pack_ternary: q must hold only -1, 0, 1; quantize with quantize_weight first")
    N, K = q.shape
    Kp = bt2_padded_k(K)
    codes = torch.ones(N, Kp, dtype=torch.uint8, device=q.device)  # padding: code 1, weight 0
    codes[:, :K] = (q + 1).to(torch.uint8)
    # k = run*128 + s*32 + m  ->  byte m of the run, bits 2s..2s+1
    codes = codes.view(N, Kp // BT2_RUN_K, 4, 32)
    packed = codes[:, :, 0] | (codes[:, :, 1] << 2) | (codes[:, :, 2] << 4) | (codes[:, :, 3] << 6)
    return packed.reshape(N, Kp // 4).contiguous()


def unpack_ternary(packed: torch.Tensor, K: int) -> torch.Tensor:
    """Inverse of pack_ternary: BT2 uint8 [N, Kp/4] -> int8 [N, K]."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"unpack_ternary: packed must be uint8 [N, Kp/4], got {packed.dtype} {tuple(packed.shape)}")
    N, Kp = packed.shape[0], packed.shape[1] * 4
    if Kp != bt2_padded_k(K):
        raise ValueError(f"unpack_ternary: packed rows hold Kp={Kp} weights, K={K} needs {bt2_padded_k(K)}")
    runs = packed.view(N, Kp // BT2_RUN_K, 1, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device).view(1, 1, 4, 1)
    codes = (runs >> shifts) & 3  # [N, runs, 4, 32]
    return (codes.reshape(N, Kp)[:, :K].to(torch.int8) - 1).contiguous()


# Rows per pass of validate_packed: bounds its temporaries to a few MB per pass.
_VALIDATE_BYTES_PER_PASS = 1 << 24


def validate_packed(packed: torch.Tensor) -> None:
    """Checks that BT2 weights hold only codes 0, 1, 2 (design §2): call once at load.

    Code 3 (e.g. a byte 0xFF) is no ternary weight, and the raw op does not look for it (a
    check would cost a pass over the weights on every call): the kernels read it as +2.
    One vectorised pass, in slices of rows so its temporaries stay small.

    Raises:
        ValueError: packed is not uint8 [N, Kp/4], or holds code 3 (naming how many
            codes and the first row with one).
    """
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed weights must be uint8 [N, Kp/4] (BT2), got {packed.dtype} {tuple(packed.shape)}")
    N, row_bytes = packed.shape
    rows = max(1, _VALIDATE_BYTES_PER_PASS // max(row_bytes, 1))
    total, first_row = 0, None
    for r0 in range(0, N, rows):
        chunk = packed[r0:r0 + rows]
        both = chunk & (chunk >> 1) & 0x55  # bit 2i set where field i holds code 3
        if not both.any():  # the common case: one cheap pass, no counting
            continue
        per_row = ((both & 1) + ((both >> 2) & 1) + ((both >> 4) & 1) + ((both >> 6) & 1)).sum(dim=1)
        if first_row is None:
            first_row = r0 + int(torch.nonzero(per_row)[0, 0])
        total += int(per_row.sum())
    if total:
        raise ValueError(
            f"packed weights hold {total} code(s) 3, first in row {first_row}: not BT2 (codes are 0, 1, 2); "
            "the file is corrupt or not a bitttt export: re-export or re-pack the weights")


ABSMAX_FLOOR = 1e-5  # the smallest scale divisor: an all-zero token or weight quantizes to zeros


def ternarize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary codes of a float weight w [N, K] (design §2), unpacked.

    Returns (q int8 [N, K] in {-1, 0, 1}, w_scale float32 [N]): q = round(w / s).clamp(-1, 1)
    with one scale s = max(mean|w|, 1e-5) for the tensor, repeated per output row so that
    matrices fused along N keep their own scales.
    """
    wf = w.detach().float()
    scale = wf.abs().mean().clamp(min=ABSMAX_FLOOR)
    q = (wf / scale).round().clamp(-1, 1).to(torch.int8)
    return q, scale.expand(w.shape[0]).contiguous()


def quantize_activations_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 codes of x [..., K] (design §2), for int8 GEMMs written in torch.

    Returns (x_q int8 [..., K], s_x float32 [...]) with x ≈ x_q / s_x. A token holding NaN or
    ±inf gets s_x = NaN and x_q = 0, so whatever it meets comes out NaN, as in the kernels.
    s_x is a true float32 division (127 * (1 / t) would round once more and flip ties).
    """
    xf = x.float()
    finite = torch.isfinite(xf).all(dim=-1)  # [...]
    xf = torch.where(finite.unsqueeze(-1), xf, torch.zeros_like(xf))
    absmax = xf.abs().amax(dim=-1) if xf.shape[-1] else xf.new_zeros(xf.shape[:-1])
    s_x = torch.full_like(absmax, 127.0) / absmax.clamp(min=ABSMAX_FLOOR)
    x_q = torch.round(xf * s_x.unsqueeze(-1)).clamp(-128, 127).to(torch.int8)
    return x_q, torch.where(finite, s_x, torch.full_like(s_x, float("nan")))


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary-quantizes and packs a float weight [N, K]: returns (packed uint8, w_scale float32 [N])."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"quantize_weight: w must be a float [N, K] matrix, got {w.dtype} {tuple(w.shape)}")
    q, w_scale = ternarize_weight(w)
    return pack_ternary(q), w_scale


# ---------------------------------------------------------------------------------------
# ternary_linear
# ---------------------------------------------------------------------------------------


def ternary_linear(
    x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = (quant(x) @ q.T) * w_scale / s_x (+ bias), with q the BT2-packed ternary weights.

    Args:
        x: float32 or bfloat16 [..., K], any device the op is built for.
        packed: uint8 [N, Kp/4], BT2 (from pack_ternary / quantize_weight), contiguous.
        w_scale: float32 [N].
        bias: optional [N].
    Returns:
        [..., N] in x's dtype. A token with NaN/inf in x gives a row of NaN.
    Raises:
        RuntimeError naming the bad argument (dtype, K that does not fit packed, ...).
    """
    return torch.ops.bitttt.ternary_linear(x, packed, w_scale, bias)


def ternary_matmul_int8(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """Exact int32 [M, N] = x @ q.T for int8 x [M, K]: the integer core of ternary_linear."""
    return torch.ops.bitttt.ternary_matmul_int8(x, packed)


def int8_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact int32 [M, N] = x @ w.T for int8 x [M, K] and w [N, K], K < 2**17 (the int8 LM head).

    CPU only (the schema has no CUDA kernel); torch._int_mm(x, w.T) computes the same sums.
    """
    return torch.ops.bitttt.int8_matmul(x, w)


def half_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """float32 [M, N] = x @ w.T for float32 x [M, K] and bfloat16 or float16 w [N, K] (the float
    LM head at decode): sums in float32, in the kernel's own order, so results match
    x @ w.float().T to float32 rounding, not bit for bit. CPU only (the schema has no CUDA kernel).
    """
    return torch.ops.bitttt.half_matmul(x, w)


# lut16: a load-time layout of BT2 weights for the table-lookup decode kernels
# (csrc/ternary/lut16.h). Never written to disk; its fake kernels are the C++ Meta ones.


def ternary_repack_lut16(packed: torch.Tensor) -> torch.Tensor:
    """BT2 packed uint8 [N, Kp/4] -> the lut16 layout uint8 [Np, Kp/4], Np = N rounded up to 16.

    Same 2 bits per weight, rows reordered in blocks of 16 for `vpshufb` lookups; costs
    (Np - N) * Kp / 4 bytes more than `packed` (at most 15 rows). CPU (and meta) only.
    Raises RuntimeError for a tensor that is not BT2 (dtype, bytes per row).
    """
    return torch.ops.bitttt.ternary_repack_lut16(packed)


def ternary_linear_lut16(
    x: torch.Tensor, layout: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """ternary_linear over a lut16 layout: bit-identical output, by table lookups instead of multiply-adds.

    Args:
        x: float32 or bfloat16 [..., K], CPU.
        layout: uint8 [Np, Kp/4] from ternary_repack_lut16.
        w_scale: float32 [N] (N, not Np: it gives the output width).
        bias: optional [N].
    Returns:
        [..., N] in x's dtype, equal bit for bit to ternary_linear(x, packed, w_scale, bias).
    It wins over ternary_linear only for one token (M=1, decode) on the AVX2 kernels: it
    builds tables per token, so prefill (M > 1) is several times slower (docs/design.md §2).
    """
    return torch.ops.bitttt.ternary_linear_lut16(x, layout, w_scale, bias)


def ternary_matmul_int8_lut16(x: torch.Tensor, layout: torch.Tensor, N: int) -> torch.Tensor:
    """Exact int32 [M, N] = x @ q.T for int8 x [M, K] over a lut16 layout of N weight rows."""
    return torch.ops.bitttt.ternary_matmul_int8_lut16(x, layout, N)


# trit5: a load-time layout of BT2 weights at 5 weights per byte (csrc/ternary/trit5.h),
# for decode GEMVs limited by memory bandwidth. Never written to disk; C++ Meta fake kernels.


def ternary_repack_trit5(packed: torch.Tensor, K: int) -> torch.Tensor:
    """BT2 packed uint8 [N, Kp/4] of K weights per row -> the trit5 layout uint8 [N, ceil(K/320)*64].

    1.6 bits per weight (0.80x BT2's bytes at K = 2560). CPU (and meta) only. Raises
    RuntimeError for a tensor that is not BT2 for K. BT2 code 3 (not a weight; validate_packed
    refuses it at load) becomes +1 here, where the BT2 kernels read +2.
    """
    return torch.ops.bitttt.ternary_repack_trit5(packed, K)


def ternary_linear_trit5(
    x: torch.Tensor, layout: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """ternary_linear over a trit5 layout: bit-identical output, reading 20% fewer weight bytes.

    Args:
        x: float32 or bfloat16 [..., K], CPU.
        layout: uint8 [N, ceil(K/320)*64] from ternary_repack_trit5(packed, K).
        w_scale: float32 [N].
        bias: optional [N].
    Returns:
        [..., N] in x's dtype, equal bit for bit to ternary_linear(x, packed, w_scale, bias).
    """
    return torch.ops.bitttt.ternary_linear_trit5(x, layout, w_scale, bias)


def ternary_matmul_int8_trit5(x: torch.Tensor, layout: torch.Tensor, N: int) -> torch.Tensor:
    """Exact int32 [M, N] = x @ q.T for int8 x [M, K] over a trit5 layout of N weight rows."""
    return torch.ops.bitttt.ternary_matmul_int8_trit5(x, layout, N)


def rms_norm_ternary_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, packed: torch.Tensor,
                            w_scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """ternary_linear(RMSNorm(x)) in one call, RMSNorm as bitttt.nn.norm's (float32 normalize,
    cast to x's dtype, times norm_weight [K] in x's dtype): the decode step's norm fused into the
    activation quantization. CPU only; bias float32. Same output as the two calls up to the
    float32 summation order of mean(x²)."""
    return torch.ops.bitttt.rms_norm_ternary_linear(x, norm_weight, eps, packed, w_scale, bias)


def bitnet_decode_(x: torch.Tensor, weights: list[torch.Tensor], lut16: list[torch.Tensor], kv: list[torch.Tensor],
                   cos: torch.Tensor, sin: torch.Tensor, pos: list[int], n_heads: int, n_kv_heads: int,
                   intermediate: int, eps: float) -> None:
    """Every decoder layer of a Hugging Face BitNet model for one token of each of B independent
    rows (sequences), in place (CPU only). B = len(pos).

    x [B, C] (any shape of B*C elements, contiguous, float32 or bfloat16) holds the rows' hidden
    states in and out. weights holds 12 tensors per layer: input norm [C], qkv packed and
    w_scale (rows q, k, v), attn_sub_norm [H*D], o_proj packed and w_scale, post-attention norm
    [C], gate_up packed and w_scale (rows gate, up), ffn_sub_norm [I], down_proj packed and
    w_scale; norms in x's dtype, BT2 packed, w_scale float32, no biases. lut16 is empty or holds
    the ternary_repack_lut16 layouts of qkv, o_proj, gate_up and down_proj per layer: the GEMVs
    then run the lut16 kernels (same bits). kv holds each row's k and v buffers of every layer
    (row 0's 2 * layers first, then row 1's, ...), [1, H_kv, cap, D] (cap > pos[b]) in x's
    dtype, no two the same: positions < pos[b] are row b's past, and its token's k, v are
    written at pos[b]. cos, sin [B, D]: rope_cos_sin("half") of each row's position. Each
    projection is one GEMM over the B rows; row b's result is the one-row call's, bit for bit.
    Same result as bitttt.hf.bitnet's per-op layers up to the attention's float32 summation order."""
    torch.ops.bitttt.bitnet_decode_(x, weights, lut16, kv, cos, sin, pos, n_heads, n_kv_heads, intermediate, eps)


@torch.library.register_fake("bitttt::bitnet_decode_")
def _bitnet_decode_fake(x, weights, lut16, kv, cos, sin, pos, n_heads, n_kv_heads, intermediate, eps):
    torch._check(x.dtype in (torch.float32, torch.bfloat16), lambda: f"bitnet_decode_: x must be float32/bfloat16, got {x.dtype}")
    torch._check(len(pos) > 0, lambda: "bitnet_decode_: pos must hold one position per row")
    torch._check(len(weights) % 12 == 0 and len(weights) > 0 and len(kv) * 6 == len(weights) * len(pos),
                 lambda: "bitnet_decode_: weights must hold 12 tensors per layer and kv 2 (k, v) per layer and row")
    torch._check(len(lut16) in (0, len(weights) // 3), lambda: "bitnet_decode_: lut16 must be empty or 4 per layer")
    return None


def bitttt_decode_(x: torch.Tensor, weights: list[torch.Tensor], state: list[torch.Tensor], rope: torch.Tensor,
                   mixer: int, pos: int, n_heads: int, hidden: int, layout: int, ttt: list[int], eps: float,
                   base_lr: float) -> None:
    """Every block of one of bitttt's own packed models for one token of one sequence, in place
    (CPU, float32): x [1, C] holds the embedding in and the last block's output out. The lists
    and codes are the schema's (csrc/module.cpp); bitttt.nn.decode.whole_token builds them from
    a model. mixer 0 attention, 1 ttt_linear; layout 0 BT2, 1 lut16, 2 trit5."""
    torch.ops.bitttt.bitttt_decode_(x, weights, state, rope, mixer, pos, n_heads, hidden, layout, ttt, eps, base_lr)


@torch.library.register_fake("bitttt::bitttt_decode_")
def _bitttt_decode_fake(x, weights, state, rope, mixer, pos, n_heads, hidden, layout, ttt, eps, base_lr):
    torch._check(x.dtype == torch.float32, lambda: f"bitttt_decode_: x must be float32, got {x.dtype}")
    torch._check(mixer in (0, 1), lambda: f"bitttt_decode_: mixer must be 0 or 1, got {mixer}")
    torch._check(layout in (0, 1, 2), lambda: f"bitttt_decode_: layout must be 0, 1 or 2, got {layout}")
    per_layer, per_state = (10, 2) if mixer == 0 else (21, 5)
    torch._check(len(weights) > 0 and len(weights) % per_layer == 0 and len(state) * per_layer == len(weights) * per_state,
                 lambda: f"bitttt_decode_: weights must hold {per_layer} tensors per layer and state {per_state}")
    return None


def _check_packed_fits(packed: torch.Tensor, K: int) -> None:
    torch._check(packed.dim() == 2, lambda: "packed must be 2-D [N, Kp/4]")
    torch._check(packed.dtype == torch.uint8, lambda: f"packed must be uint8, got {packed.dtype}")
    torch._check(packed.is_contiguous(), lambda: "packed must be contiguous")
    torch._check(packed.shape[1] * 4 == bt2_padded_k(K), lambda: f"x.shape[-1]={K} does not fit packed")
    torch._check(K <= BT2_MAX_K, lambda: f"x.shape[-1]={K} is over the kernels' limit of K={BT2_MAX_K}")


# The fakes also run for meta tensors: a call mixing meta and CPU tensors dispatches here, so
# every tensor must be on the first one's device, or the fake would hand back an
# uninitialised CPU tensor as the result.
def _check_same_device(op, first_name, first, **tensors):
    for name, t in tensors.items():
        if t is not None:
            torch._check(t.device == first.device,
                         lambda: f"{op}: {name} must be on {first_name}'s device {first.device}, got {t.device}")


@torch.library.register_fake("bitttt::ternary_linear")
def _ternary_linear_fake(x, packed, w_scale, bias=None):
    _check_defined("ternary_linear", x=x, packed=packed, w_scale=w_scale)
    _check_same_device("ternary_linear", "x", x, packed=packed, w_scale=w_scale, bias=bias)
    torch._check(x.dtype in (torch.float32, torch.bfloat16), lambda: f"x must be float32/bfloat16, got {x.dtype}")
    torch._check(x.dim() >= 1, lambda: "ternary_linear: x must have at least 1 dim [..., K]")
    _check_packed_fits(packed, x.shape[-1])
    torch._check(w_scale.dtype == torch.float32 and w_scale.shape == (packed.shape[0],),
                 lambda: "w_scale must be float32 [N]")
    if bias is not None:
        torch._check(bias.shape == (packed.shape[0],), lambda: "ternary_linear: bias must be [N]")
        torch._check(bias.dtype in (torch.float32, x.dtype), lambda: "ternary_linear: bias must be float32 or x's dtype")
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


@torch.library.register_fake("bitttt::ternary_matmul_int8")
def _ternary_matmul_int8_fake(x, packed):
    _check_defined("ternary_matmul_int8", x=x, packed=packed)
    _check_same_device("ternary_matmul_int8", "x", x, packed=packed)
    torch._check(x.dtype == torch.int8 and x.dim() == 2, lambda: "x must be int8 [M, K]")
    _check_packed_fits(packed, x.shape[1])
    return x.new_empty((x.shape[0], packed.shape[0]), dtype=torch.int32)


@torch.library.register_fake("bitttt::rms_norm_ternary_linear")
def _rms_norm_ternary_linear_fake(x, norm_weight, eps, packed, w_scale, bias=None):
    # The CPU kernel's own checks (csrc/decode/rms_norm_ternary_cpu.cpp), then ternary_linear's.
    _check_defined("rms_norm_ternary_linear", x=x, norm_weight=norm_weight)
    _check_same_device("rms_norm_ternary_linear", "x", x, norm_weight=norm_weight, packed=packed,
                       w_scale=w_scale, bias=bias)
    torch._check(norm_weight.dim() == 1 and norm_weight.shape[0] == x.shape[-1] and norm_weight.dtype == x.dtype,
                 lambda: "rms_norm_ternary_linear: norm_weight must be [K] in x's dtype")
    torch._check(eps > 0, lambda: f"rms_norm_ternary_linear: eps must be > 0, got {eps}")
    torch._check(bias is None or bias.dtype == torch.float32, lambda: "rms_norm_ternary_linear: bias must be float32")
    torch._check(x.dim() > 0 and x.shape[-1] > 0, lambda: "rms_norm_ternary_linear: K must be > 0")
    return _ternary_linear_fake(x, packed, w_scale, bias)


@torch.library.register_fake("bitttt::int8_matmul")
def _int8_matmul_fake(x, w):
    _check_defined("int8_matmul", x=x, w=w)
    _check_same_device("int8_matmul", "x", x, w=w)
    torch._check(x.dtype == torch.int8 and w.dtype == torch.int8, lambda: "int8_matmul: x and w must be int8")
    torch._check(x.dim() == 2 and w.dim() == 2 and x.shape[1] == w.shape[1],
                 lambda: "int8_matmul: x must be [M, K] and w [N, K]")
    return x.new_empty((x.shape[0], w.shape[0]), dtype=torch.int32)


@torch.library.register_fake("bitttt::half_matmul")
def _half_matmul_fake(x, w):
    _check_defined("half_matmul", x=x, w=w)
    _check_same_device("half_matmul", "x", x, w=w)
    torch._check(x.dtype == torch.float32, lambda: "half_matmul: x must be float32")
    torch._check(w.dtype in (torch.bfloat16, torch.float16), lambda: "half_matmul: w must be bfloat16 or float16")
    torch._check(x.dim() == 2 and w.dim() == 2 and x.shape[1] == w.shape[1],
                 lambda: "half_matmul: x must be [M, K] and w [N, K]")
    return x.new_empty((x.shape[0], w.shape[0]), dtype=torch.float32)


# Gradient for x (and bias) only: packed weights are frozen. The activation quantization
# is treated as identity (straight-through), as in BitLinear's fake-quant training.
def _ternary_linear_setup_context(ctx, inputs, output):
    x, packed, w_scale, bias = inputs
    ctx.save_for_backward(packed, w_scale)
    ctx.K = x.shape[-1]
    ctx.has_bias = bias is not None


def _ternary_linear_backward(ctx, grad_out):
    packed, w_scale = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = unpack_ternary(packed, ctx.K).to(grad_out.dtype) * w_scale.to(grad_out.dtype).unsqueeze(1)
        grad_x = grad_out @ w
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
    return grad_x, None, None, grad_bias


torch.library.register_autograd(
    "bitttt::ternary_linear", _ternary_linear_backward, setup_context=_ternary_linear_setup_context
)


# ---------------------------------------------------------------------------------------
# TTT-Linear (docs/design.md §3)
# ---------------------------------------------------------------------------------------


class TTTState(NamedTuple):
    """The carried TTT-Linear state (design §3).

    W, c: fast weights at the start of the current mini-batch, float32/64 [B,H,D,D], [B,H,D];
    gW, gc: lr-weighted inner gradients summed inside it (zero on a boundary), same shapes;
    pos: absolute position of the next token (mini-batches are aligned to pos // b).
    """

    W: torch.Tensor
    c: torch.Tensor
    gW: torch.Tensor
    gc: torch.Tensor
    pos: int


# Mini-batch segments per checkpoint the forward saves for its backward: 1 keeps (W, c) at
# every mini-batch start; larger values save memory and recompute the states in between.
TTT_CKPT_EVERY = 4

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _ttt_num_checkpoints(T: int, b: int, pos: int, ckpt_every: int) -> int:
    """How many (W, c) checkpoints ttt_linear saves: one per ckpt_every segments (see csrc/ttt/ttt.h)."""
    if ckpt_every <= 0 or T == 0:
        return 0
    first = min(T, b - pos % b)
    n_seg = 1 + (T - first + b - 1) // b
    return (n_seg + ckpt_every - 1) // ckpt_every


def ttt_linear(q, k, v, lr, token_scale, W0, b0, ln_w, ln_b, state: TTTState | None = None,
               ckpt_every: int = TTT_CKPT_EVERY):
    """TTT-Linear over T tokens from state.pos (design §3), with the C++ op.

    Args:
        q, k, v: [B,H,T,D] float32/float64 (bfloat16/float16 run in float32 and come back cast).
        lr: [B,H,T] per-token inner learning rate. token_scale: [b], b the mini-batch size.
        W0: [H,D,D], b0: [H,D] initial fast weights (used when state is None).
        ln_w, ln_b: [H,D] inner LayerNorm. state: a TTTState, or None to start from W0, b0 at 0.
        ckpt_every: mini-batches per checkpoint kept for the backward (memory vs recompute).
    Returns:
        (out [B,H,T,D], TTTState after the tokens). Differentiable in every tensor input.
    Raises:
        RuntimeError naming the bad argument (shape, dtype, device).
    """
    out_dtype = q.dtype
    if q.dtype in _LOW_PRECISION:
        q, k, v, lr = q.float(), k.float(), v.float(), lr.float()
    if q.dim() != 4:
        raise RuntimeError(f"ttt_linear: q must be 4-D [B, H, T, D], got shape {tuple(q.shape)}")
    B, H, T, D = q.shape
    if state is None:
        # Expanded, not materialised: the CPU op copies the state head by head inside its own
        # parallel region (csrc/ttt/host.h HeadSource), where a zero-fill here is one more region.
        W = W0.unsqueeze(0).expand(B, H, D, D)
        c = b0.unsqueeze(0).expand(B, H, D)
        zero = W0.new_zeros(())
        state = TTTState(W, c, zero.expand(B, H, D, D), zero.expand(B, H, D), 0)
    # Contiguous here rather than in the kernel, so compiled graphs see the layouts the op uses.
    q, k, v, lr = q.contiguous(), k.contiguous(), v.contiguous(), lr.contiguous()
    tensors = (q, k, v, lr, token_scale, state.W, state.c, state.gW, state.gc, ln_w, ln_b)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    out, W, c, gW, gc, _, _ = torch.ops.bitttt.ttt_linear(
        q, k, v, lr, token_scale, state.W, state.c, state.gW, state.gc, int(state.pos), ln_w, ln_b,
        ckpt_every if needs_grad else 0)
    return out.to(out_dtype), TTTState(W, c, gW, gc, int(state.pos) + T)


def ttt_linear_decode_(q, k, v, lr, token_scale, state: TTTState, ln_w, ln_b):
    """One token for all heads, updating state.W/c/gW/gc in place (no autograd): generation.

    q, k, v: [B,H,D]; lr: [B,H]. Returns (out [B,H,D], the state with pos + 1); equal to
    ttt_linear over that one token. CPU tensors take the lean path (_decode_lean), others and
    traced calls the op torch.ops.bitttt.ttt_linear_decode_.
    """
    # Generation calls this once per token and layer: every step here is on its critical path
    # (the op looked up once at import, the state unpacked once).
    W, c, gW, gc, pos = state
    pos = int(pos)
    out_dtype = q.dtype
    if out_dtype in _LOW_PRECISION:
        q, k, v, lr = q.float(), k.float(), v.float(), lr.float()
    if q.is_cpu and _TENSOR_HANDLES is not None and not torch.compiler.is_compiling():
        out = _STEAL_HANDLES([_C._ttt_linear_decode(_TENSOR_HANDLES((q, k, v, lr, token_scale, W, c, gW, gc, ln_w,
                                                                     ln_b)), pos)])[0]
    else:
        out = _TTT_LINEAR_DECODE(q, k, v, lr, token_scale, W, c, gW, gc, pos, ln_w, ln_b)
    if out_dtype in _LOW_PRECISION:
        out = out.to(out_dtype)
    return out, TTTState(W, c, gW, gc, pos + 1)


_TTT_LINEAR_DECODE = torch.ops.bitttt.ttt_linear_decode_.default

# The decode step's lean path: the same C++ function as the op's CPU kernel (csrc/ttt/cpu.h),
# called without the dispatcher. The dispatcher's route (argument parsing against the schema,
# boxing, the ADInplaceOrView and autograd keys, the stable ABI's boxed call) cost about 6 µs
# of a 12 µs step at H=12, D=64. Tensors cross into the stable-ABI extension as tensor
# handles, made by the converter torch's AOT Inductor C++ wrapper uses; a torch without it
# takes the op.
_aoti = getattr(torch._C, "_aoti", None)
# (The list form of the way back: torch 2.13's one-tensor alloc_tensor_by_stealing_from_void_ptr
# keeps a reference, so every output it returns would leak.)
_TENSOR_HANDLES = getattr(_aoti, "unsafe_alloc_void_ptrs_from_tensors", None)
_STEAL_HANDLES = getattr(_aoti, "alloc_tensors_by_stealing_from_void_ptrs", None)
if _STEAL_HANDLES is None:
    _TENSOR_HANDLES = None
_C = _native._C


def _check_shape(op, name, t, want, dims):
    torch._check(tuple(t.shape) == tuple(want), lambda: f"{op}: {name} must be {dims} = {list(want)}, "
                 f"got {list(t.shape)}")


def _check_ttt_inputs(op, q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b, one_token=False, **more):
    """The fakes' copy of csrc/ttt/checks.h check_inputs, so meta and traced calls refuse what
    the kernels refuse. more: further tensors that need q's dtype and device (backward)."""
    tensors = dict(k=k, v=v, lr=lr, token_scale=ts, W=W, c=c, gW=gW, gc=gc, ln_w=ln_w, ln_b=ln_b, **more)
    _check_defined(op, q=q, **tensors)
    torch._check(q.dim() == (3 if one_token else 4),
                 lambda: f"{op}: q must be {'3-D [B, H, D]' if one_token else '4-D [B, H, T, D]'}, got {q.dim()} dims")
    B, H, D = q.shape[0], q.shape[1], q.shape[-1]
    T = 1 if one_token else q.shape[2]
    torch._check(D > 0, lambda: f"{op}: head size D must be positive")
    torch._check(ts.dim() == 1 and ts.shape[0] > 0, lambda: f"{op}: token_scale must be 1-D [b] with b >= 1")
    torch._check(pos >= 0, lambda: f"{op}: pos must be >= 0, got {pos}")
    tok = (B, H, D) if one_token else (B, H, T, D)
    for name, t in (("k", k), ("v", v)):
        _check_shape(op, name, t, tok, "[B, H, D]" if one_token else "[B, H, T, D]")
    _check_shape(op, "lr", lr, tok[:-1], "[B, H]" if one_token else "[B, H, T]")
    for name, t, want, dims in (("W", W, (B, H, D, D), "[B, H, D, D]"), ("c", c, (B, H, D), "[B, H, D]"),
                                ("gW", gW, (B, H, D, D), "[B, H, D, D]"), ("gc", gc, (B, H, D), "[B, H, D]"),
                                ("ln_w", ln_w, (H, D), "[H, D]"), ("ln_b", ln_b, (H, D), "[H, D]")):
        _check_shape(op, name, t, want, dims)
    torch._check(q.dtype in (torch.float32, torch.float64), lambda: f"{op}: q must be float32 or float64, got {q.dtype}")
    for name, t in tensors.items():
        torch._check(t.dtype == q.dtype, lambda: f"{op}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
    _check_same_device(op, "q", q, **tensors)
    return B, H, T, D


def _check_defined(op, **tensors):
    # None passed for a Tensor argument reaches the kernels as an undefined tensor.
    for name, t in tensors.items():
        torch._check(t is not None, lambda: f"{op}: {name} must be a tensor, got None")


@torch.library.register_fake("bitttt::ttt_linear")
def _ttt_linear_fake(q, k, v, lr, token_scale, W, c, gW, gc, pos, ln_w, ln_b, ckpt_every=0):
    B, H, T, D = _check_ttt_inputs("ttt_linear", q, k, v, lr, token_scale, W, c, gW, gc, pos, ln_w, ln_b)
    torch._check(ckpt_every >= 0, lambda: f"ttt_linear: ckpt_every must be >= 0, got {ckpt_every}")
    n_ck = _ttt_num_checkpoints(T, token_scale.shape[0], pos, ckpt_every)
    return (q.new_empty(B, H, T, D), q.new_empty(B, H, D, D), q.new_empty(B, H, D), q.new_empty(B, H, D, D),
            q.new_empty(B, H, D), q.new_empty(B, H, n_ck, D, D), q.new_empty(B, H, n_ck, D))


@torch.library.register_fake("bitttt::ttt_linear_backward")
def _ttt_linear_backward_fake(grad_out, grad_W, grad_c, grad_gW, grad_gc, q, k, v, lr, token_scale, W, c, gW, gc,
                              pos, ln_w, ln_b, ckpt_W, ckpt_c, ckpt_every):
    op = "ttt_linear_backward"
    B, H, T, D = _check_ttt_inputs(op, q, k, v, lr, token_scale, W, c, gW, gc, pos, ln_w, ln_b,
                                   grad_out=grad_out, grad_W=grad_W, grad_c=grad_c, grad_gW=grad_gW,
                                   grad_gc=grad_gc, ckpt_W=ckpt_W, ckpt_c=ckpt_c)
    torch._check(ckpt_every > 0, lambda: f"{op}: ckpt_every must be > 0 (the forward must save checkpoints)")
    n_ck = _ttt_num_checkpoints(T, token_scale.shape[0], pos, ckpt_every)
    _check_shape(op, "ckpt_W", ckpt_W, (B, H, n_ck, D, D), "[B, H, n_ckpt, D, D]")
    _check_shape(op, "ckpt_c", ckpt_c, (B, H, n_ck, D), "[B, H, n_ckpt, D]")
    for name, t, want, dims in (("grad_out", grad_out, (B, H, T, D), "[B, H, T, D]"),
                                ("grad_W", grad_W, (B, H, D, D), "[B, H, D, D]"),
                                ("grad_c", grad_c, (B, H, D), "[B, H, D]"),
                                ("grad_gW", grad_gW, (B, H, D, D), "[B, H, D, D]"),
                                ("grad_gc", grad_gc, (B, H, D), "[B, H, D]")):
        _check_shape(op, name, t, want, dims)
    # The kernel returns contiguous tensors whatever the inputs' strides: so must this.
    return (q.new_empty(B, H, T, D), q.new_empty(B, H, T, D), q.new_empty(B, H, T, D), q.new_empty(B, H, T),
            q.new_empty(token_scale.shape), q.new_empty(B, H, D, D), q.new_empty(B, H, D), q.new_empty(B, H, D, D),
            q.new_empty(B, H, D), q.new_empty(ln_w.shape), q.new_empty(ln_b.shape))


@torch.library.register_fake("bitttt::ttt_linear_decode_")
def _ttt_linear_decode_fake(q, k, v, lr, token_scale, W, c, gW, gc, pos, ln_w, ln_b):
    op = "ttt_linear_decode_"
    _check_ttt_inputs(op, q, k, v, lr, token_scale, W, c, gW, gc, pos, ln_w, ln_b, one_token=True)
    torch._check(all(t.is_contiguous() for t in (W, c, gW, gc)),
                 lambda: f"{op}: the state tensors W, c, gW, gc are updated in place and must be contiguous")
    return q.new_empty(q.shape)


# The backward recomputes each checkpoint span from the (W, c) the forward saved (memory
# O(T/b·D²) per head instead of the O(T·D²) autograd would keep through the reference).
def _ttt_linear_setup_context(ctx, inputs, output):
    q, k, v, lr, token_scale, W, c, gW, gc, pos, ln_w, ln_b, ckpt_every = inputs
    ctx.save_for_backward(q, k, v, lr, token_scale, W, c, gW, gc, ln_w, ln_b, output[5], output[6])
    ctx.pos, ctx.ckpt_every = pos, ckpt_every
    ctx.set_materialize_grads(False)  # unused outputs' gradients come as None: expanded zeros below


def _ttt_linear_backward(ctx, g_out, g_W, g_c, g_gW, g_gc, _g_ckpt_W, _g_ckpt_c):
    q, k, v, lr, token_scale, W, c, gW, gc, ln_w, ln_b, ckpt_W, ckpt_c = ctx.saved_tensors
    B, H, T, D = q.shape
    # The state's gradients at any strides (zeros expanded, not filled): the CPU op reads them
    # head by head in its own parallel region (csrc/ttt/host.h HeadSource).
    zero = q.new_zeros(())
    state_grad = lambda g, *shape: zero.expand(shape) if g is None else g  # noqa: E731
    g_out = q.new_zeros(B, H, T, D) if g_out is None else g_out.contiguous()
    grads = torch.ops.bitttt.ttt_linear_backward(
        g_out, state_grad(g_W, B, H, D, D), state_grad(g_c, B, H, D), state_grad(g_gW, B, H, D, D),
        state_grad(g_gc, B, H, D), q, k, v, lr, token_scale, W, c, gW, gc, ctx.pos, ln_w, ln_b, ckpt_W, ckpt_c,
        ctx.ckpt_every)
    dq, dk, dv, dlr, dts, dW, dc, dgW, dgc, dln_w, dln_b = grads
    return dq, dk, dv, dlr, dts, dW, dc, dgW, dgc, None, dln_w, dln_b, None


torch.library.register_autograd("bitttt::ttt_linear", _ttt_linear_backward, setup_context=_ttt_linear_setup_context)


# ---------------------------------------------------------------------------------------
# Fake quantization for training (docs/design.md §2; csrc/quant/)
#
# BitLinear trains on the quantize-dequantize of its input and weight with straight-through
# gradients (identity). On the CPU in float32 each is one C++ pass; other devices and dtypes
# (CUDA autocast's bfloat16) take the torch compositions below, which compute in float32 as
# the kernels do and give the same values.
# ---------------------------------------------------------------------------------------


def _uses_fake_quant_kernel(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32


def _fake_quant_activations_torch(x: torch.Tensor) -> torch.Tensor:
    """The torch composition of fake_quant_activations, for devices and dtypes without the kernel."""
    xf = x.detach().float()
    finite = torch.isfinite(xf).all(dim=-1, keepdim=True)   # [..., 1]
    absmax = torch.where(finite, xf, 0.0).abs().amax(dim=-1, keepdim=True) if xf.shape[-1] else \
        xf.new_zeros((*xf.shape[:-1], 1))
    # 127 / t as a true float32 division (torch.full_like), as the kernels round it
    s_x = torch.full_like(absmax, 127.0) / absmax.clamp(min=ABSMAX_FLOOR)
    x_dq = (xf * s_x).round().clamp(-128, 127) / s_x
    x_dq = torch.where(finite, x_dq, float("nan")).to(x.dtype)  # a non-finite token: all NaN
    return x + (x_dq - x).detach()


def _fake_quant_weight_torch(w: torch.Tensor) -> torch.Tensor:
    """The torch composition of fake_quant_weight, for devices and dtypes without the kernel."""
    q, w_scale = ternarize_weight(w)
    w_dq = (q.float() * w_scale.unsqueeze(1)).to(w.dtype)
    return w + (w_dq - w).detach()


def fake_quant_activations(x: torch.Tensor) -> torch.Tensor:
    """Per-token int8 absmax quantize-dequantize of x [..., K], straight-through gradient."""
    if _uses_fake_quant_kernel(x):
        return torch.ops.bitttt.fake_quant_activations(x)
    return _fake_quant_activations_torch(x)


def _absmean_scale(w: torch.Tensor) -> torch.Tensor:
    """The weight's ternary scale as ternarize_weight takes it (torch's mean, to the bit)."""
    return w.detach().abs().mean().clamp(min=ABSMAX_FLOOR)


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Absmean ternary quantize-dequantize of a weight w [N, K], straight-through gradient."""
    if _uses_fake_quant_kernel(w):
        return torch.ops.bitttt.fake_quant_weight(w, _absmean_scale(w))
    return _fake_quant_weight_torch(w)


# The fakes refuse what csrc/quant/fake_quant_cpu.cpp refuses, with its messages.
def _check_fake_quant_float(op: str, name: str, t: torch.Tensor) -> None:
    torch._check(t.dtype == torch.float32,
                 lambda: f"{op}: takes float32 (other dtypes use the torch path), got {name} {t.dtype}")


@torch.library.register_fake("bitttt::fake_quant_activations")
def _fake_quant_activations_fake(x):
    op = "fake_quant_activations"
    _check_defined(op, x=x)
    _check_fake_quant_float(op, "x", x)
    torch._check(x.dim() >= 1, lambda: f"{op}: x must have a last (feature) dimension")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("bitttt::fake_quant_weight")
def _fake_quant_weight_fake(w, scale):
    op = "fake_quant_weight"
    _check_defined(op, w=w, scale=scale)
    _check_same_device(op, "w", w, scale=scale)
    _check_fake_quant_float(op, "w", w)
    _check_fake_quant_float(op, "scale", scale)
    torch._check(w.dim() == 2, lambda: f"{op}: w must be 2-D [N, K]")
    torch._check(scale.numel() == 1, lambda: f"{op}: scale must hold one value")
    return torch.empty_like(w, memory_format=torch.contiguous_format)


@torch.library.register_fake("bitttt::fake_quant_activations_int8")
def _fake_quant_activations_int8_fake(x):
    op = "fake_quant_activations_int8"
    _check_defined(op, x=x)
    _check_fake_quant_float(op, "x", x)
    torch._check(x.dim() >= 1, lambda: f"{op}: x must have a last (feature) dimension")
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32))


@torch.library.register_fake("bitttt::fake_quant_weight_int8")
def _fake_quant_weight_int8_fake(w, scale):
    w_dq = _fake_quant_weight_fake(w, scale)
    return w_dq, w.new_empty(w.shape, dtype=torch.int8)


@torch.library.register_fake("bitttt::int8_gemm_epilogue")
def _int8_gemm_epilogue_fake(acc, x_scale, w_scale, bias=None):
    op = "int8_gemm_epilogue"
    _check_defined(op, acc=acc, x_scale=x_scale, w_scale=w_scale)
    _check_same_device(op, "acc", acc, x_scale=x_scale, w_scale=w_scale, bias=bias)
    torch._check(acc.dtype == torch.int32 and acc.dim() == 2, lambda: f"{op}: acc must be int32 [M, N]")
    _check_fake_quant_float(op, "x_scale", x_scale)
    _check_fake_quant_float(op, "w_scale", w_scale)
    torch._check(x_scale.dim() == 1 and x_scale.shape[0] == acc.shape[0],
                 lambda: f"{op}: x_scale must be [M] (one per row of acc)")
    torch._check(w_scale.numel() == 1, lambda: f"{op}: w_scale must hold one value")
    if bias is not None:
        _check_fake_quant_float(op, "bias", bias)
        torch._check(bias.dim() == 1 and bias.shape[0] == acc.shape[1],
                     lambda: f"{op}: bias must be [N] (one per column of acc)")
    return acc.new_empty(acc.shape, dtype=torch.float32)


def _straight_through_setup_context(ctx, inputs, output):
    pass


def _straight_through_activations(ctx, grad):
    return grad


def _straight_through_weight(ctx, grad):
    return grad, None  # the scale is computed from the detached weight


torch.library.register_autograd("bitttt::fake_quant_activations", _straight_through_activations,
                                setup_context=_straight_through_setup_context)
torch.library.register_autograd("bitttt::fake_quant_weight", _straight_through_weight,
                                setup_context=_straight_through_setup_context)


# BitLinear's training forward as an exact integer GEMM (issue 26). F.linear(x_dq, w_dq) sums
# the products of int8 activation codes and ternary weight codes, scaled, in float32; the same
# sum in int32 (torch._int_mm: oneDNN's VNNI / AMX / AVX2 int8 GEMM) is exact and faster: the
# whole forward of one layer at the tiny preset's training shapes (M = 2048 tokens, K = 256..1024,
# N = 256..1024) took 1.15-2.2x less time with AVX-512 VNNI and 1.2-1.4x less with AVX2 alone
# (benchmarks/bench_bitlinear_forward.py; benchmarks/results/xeon-avx512-2c/bitlinear_forward_int8*).
# The output is then float(acc) * s_w * (1 / s_x) (+ bias), the packed ternary kernels' epilogue,
# to their bits; it differs from F.linear(x_dq, w_dq) by float32 rounding only. The backward is
# unchanged: it uses x_dq and w_dq (the same bits as the fake quants give), written in the same
# passes as the codes. With few tokens the quantization and epilogue passes cost as much as the
# GEMM saves (measured crossover: ~64 tokens with AVX-512 VNNI, 128-256 with AVX2 alone); other
# devices, dtypes and CPUs keep F.linear.
_INT8_GEMM_MIN_TOKENS = {"AVX512": 64, "AVX2": 256}  # torch's CPU capability -> fewest tokens


def _int8_gemm_min_tokens() -> int | None:
    """The fewest tokens for which the int8 GEMM forward is faster here; None where torch has no
    x86 int8 GEMM (torch._int_mm elsewhere was not measured faster than F.linear)."""
    if not hasattr(torch, "_int_mm"):
        return None
    return _INT8_GEMM_MIN_TOKENS.get(torch.backends.cpu.get_cpu_capability())


# Read once at import (torch fixes its capability at its own import): torch.compile cannot trace
# get_cpu_capability(), and a constant it can guard on. Tests patch it to force either path.
_INT8_GEMM_MIN_TOKENS_HERE = _int8_gemm_min_tokens()


def _takes_int8_gemm(x: torch.Tensor, *ws: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether BitLinear's training forward of x [..., K] with weights ws takes the int8 GEMM."""
    min_tokens = _INT8_GEMM_MIN_TOKENS_HERE
    K = x.shape[-1]
    return (min_tokens is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and all(w.dtype == torch.float32 and w.shape[0] > 0 for w in ws)
            and (bias is None or bias.dtype == torch.float32)
            and K > 1 and x.numel() >= min_tokens * K)  # K = 1: torch 2.13's _int_mm sums it wrong


def _int8_linear(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """float32 [..., N] = (x_q @ w_q.T) * w_scale * x_scale (+ bias), the sums exact in int32."""
    K, N = x_q.shape[-1], w_q.shape[0]
    acc = torch._int_mm(x_q.reshape(-1, K), w_q.t())  # w_q.t(): a view, as fast as a copy [K, N]
    y = torch.ops.bitttt.int8_gemm_epilogue(acc, x_scale.reshape(-1), w_scale, bias)
    return y.view(*x_q.shape[:-1], N)


# BitLinear's whole training forward as ONE autograd node (issue 26): the two fake quants
# above and F.linear made three, each with its own Python and engine overhead per layer.
# The backward is the straight-through one those three compose to: the gradients of
# F.linear at the quantized values (grad_x = g @ w_dq, grad_w = g^T x_dq, grad_b = sum g),
# keeping only x_dq and w_dq (what F.linear saved before). An autograd.Function, not a
# torch.library.custom_op: the custom op's Python dispatch and autograd wrapper cost as much
# as the two nodes saved (~100 us vs ~75 us per tiny layer fwd+bwd, measured); torch.compile
# traces the Function through, into the registered fake-quant ops.
class _BitLinearFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # grad mode is off in here: the fake quants record no nodes of their own
        ctx.has_bias = bias is not None
        if _takes_int8_gemm(x, w, bias=bias):
            x_dq, x_q, x_scale = torch.ops.bitttt.fake_quant_activations_int8(x)
            w_scale = _absmean_scale(w)
            w_dq, w_q = torch.ops.bitttt.fake_quant_weight_int8(w, w_scale)
            ctx.save_for_backward(x_dq, w_dq)
            return _int8_linear(x_q, x_scale, w_q, w_scale, bias)
        x_dq = fake_quant_activations(x)
        w_dq = fake_quant_weight(w)
        ctx.save_for_backward(x_dq, w_dq)
        return torch.nn.functional.linear(x_dq, w_dq, bias)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x_dq, w_dq = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ w_dq
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            g2 = grad_y.reshape(-1, grad_y.shape[-1])
            if ctx.needs_input_grad[1]:
                grad_w = g2.T @ x_dq.reshape(-1, x_dq.shape[-1])
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b


def bitlinear_fake_quant(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """BitLinear's training forward F.linear(fake_quant_activations(x), fake_quant_weight(w), bias)
    as one op and one autograd node, with the same straight-through gradients."""
    return _BitLinearFakeQuant.apply(x, w, bias)


# Several bias-free BitLinears of one input (the TTT layer's q/k, v and gate projections) as
# ONE autograd node (issue 26): the input's int8 quantization is per token, so one pass serves
# them all, and one node replaces one per layer. Each weight keeps its own absmean scale and
# its own GEMM, so every output and gradient is, bit for bit, the one its own BitLinear gives.
# (One GEMM over the concatenated weights made strided outputs that the conv and the TTT op
# then copied, and concatenating the gradients cost more than the wider GEMMs gained.)
class _BitLinearFakeQuantShared(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, *ws: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if _takes_int8_gemm(x, *ws):
            x_dq, x_q, x_scale = torch.ops.bitttt.fake_quant_activations_int8(x)
            w_dqs, ys = [], []
            for w in ws:
                w_scale = _absmean_scale(w)
                w_dq, w_q = torch.ops.bitttt.fake_quant_weight_int8(w, w_scale)
                w_dqs.append(w_dq)
                ys.append(_int8_linear(x_q, x_scale, w_q, w_scale, None))
            ctx.save_for_backward(x_dq, *w_dqs)
            return tuple(ys)
        x_dq = fake_quant_activations(x)
        w_dqs = [fake_quant_weight(w) for w in ws]
        ctx.save_for_backward(x_dq, *w_dqs)
        return tuple(torch.nn.functional.linear(x_dq, w_dq) for w_dq in w_dqs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        x_dq, *w_dqs = ctx.saved_tensors
        x2 = x_dq.reshape(-1, x_dq.shape[-1])
        grad_x = None
        grad_ws: list[torch.Tensor | None] = [None] * len(w_dqs)
        for i, (g, w_dq) in enumerate(zip(grads, w_dqs)):
            if g is None:  # an output nobody read
                if ctx.needs_input_grad[1 + i]:
                    grad_ws[i] = torch.zeros_like(w_dq)
                continue
            g2 = g.reshape(-1, g.shape[-1])
            if ctx.needs_input_grad[0]:  # summed in place, as the engine would sum the layers' grad_x
                grad_x = g2 @ w_dq if grad_x is None else grad_x.addmm_(g2, w_dq)
            if ctx.needs_input_grad[1 + i]:
                grad_ws[i] = g2.T @ x2
        if grad_x is not None:
            grad_x = grad_x.view(x_dq.shape)
        elif ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x_dq)
        return grad_x, *grad_ws


def bitlinear_fake_quant_shared(x: torch.Tensor, weights: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """bitlinear_fake_quant(x, w) for each bias-free weight w [N_i, K] of one input x [..., K]
    (outputs [..., N_i]), as one autograd node with one activation quantization."""
    return _BitLinearFakeQuantShared.apply(x, *weights)


# ---------------------------------------------------------------------------------------
# Training-step pieces (csrc/train/; issue 26): RMSNorm and the TTT layer's causal depthwise
# conv as one C++ pass forward and backward each (float32, CPU). Their torch compositions took
# 7-12 elementwise ops (RMSNorm) and a cat, two transposing copies and oneDNN's conv (the conv)
# per call, forward and backward again. Other devices and dtypes keep those compositions
# (bitttt.nn.norm, bitttt.nn.ttt).
# ---------------------------------------------------------------------------------------


def uses_train_kernel(*tensors: torch.Tensor) -> bool:
    """Whether the csrc/train/ kernels take these tensors: all float32 on the CPU."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def silu_mul(h: torch.Tensor, hidden: int) -> torch.Tensor:
    """silu(h[..., :hidden]) * h[..., hidden:] for float32 CPU h [..., 2·hidden] (SwiGLU's gate and up
    as one tensor), one C++ pass forward and one backward (csrc/train/silu_mul*). Differentiable in h."""
    return torch.ops.bitttt.silu_mul(h, hidden)


def _check_silu_mul_h(op, h, hidden):
    _check_defined(op, h=h)
    torch._check(h.dtype == torch.float32, lambda: f"{op}: takes float32 (other dtypes use the torch path)")
    torch._check(h.dim() >= 1, lambda: f"{op}: h must have a last (feature) dimension")
    torch._check(hidden > 0 and h.shape[-1] == 2 * hidden,
                 lambda: f"{op}: h's last dimension must be 2*hidden = {2 * hidden}, got {h.shape[-1]}")


@torch.library.register_fake("bitttt::silu_mul")
def _silu_mul_fake(h, hidden):
    _check_silu_mul_h("silu_mul", h, hidden)
    return h.new_empty((*h.shape[:-1], hidden))


@torch.library.register_fake("bitttt::silu_mul_backward")
def _silu_mul_backward_fake(grad, h, hidden):
    op = "silu_mul_backward"
    _check_silu_mul_h(op, h, hidden)
    _check_defined(op, grad=grad)
    _check_same_device(op, "h", h, grad=grad)
    torch._check(grad.dtype == torch.float32, lambda: f"{op}: takes float32 (other dtypes use the torch path)")
    torch._check(tuple(grad.shape) == (*h.shape[:-1], hidden),
                 lambda: f"{op}: grad must be h's shape with the last dimension halved")
    return torch.empty_like(h, memory_format=torch.contiguous_format)


def _silu_mul_setup_context(ctx, inputs, output):
    h, hidden = inputs
    ctx.save_for_backward(h)
    ctx.hidden = hidden


def _silu_mul_backward(ctx, grad_y):
    (h,) = ctx.saved_tensors
    return torch.ops.bitttt.silu_mul_backward(grad_y, h, ctx.hidden), None


torch.library.register_autograd("bitttt::silu_mul", _silu_mul_backward, setup_context=_silu_mul_setup_context)


def gelu_tanh_mul(gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """F.gelu(gate, approximate="tanh") * y for float32 CPU tensors of one shape (the TTT layers'
    output gate), one C++ pass forward and one backward (csrc/train/silu_mul*). Differentiable in both."""
    return torch.ops.bitttt.gelu_tanh_mul(gate, y)


def _check_gelu_tanh_mul(op, gate, y):
    _check_defined(op, gate=gate, y=y)
    _check_same_device(op, "gate", gate, y=y)
    torch._check(gate.dtype == torch.float32 and y.dtype == torch.float32,
                 lambda: f"{op}: takes float32 (other dtypes use the torch path)")
    torch._check(tuple(y.shape) == tuple(gate.shape), lambda: f"{op}: y must have gate's shape")


@torch.library.register_fake("bitttt::gelu_tanh_mul")
def _gelu_tanh_mul_fake(gate, y):
    _check_gelu_tanh_mul("gelu_tanh_mul", gate, y)
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


@torch.library.register_fake("bitttt::gelu_tanh_mul_backward")
def _gelu_tanh_mul_backward_fake(grad, gate, y):
    op = "gelu_tanh_mul_backward"
    _check_gelu_tanh_mul(op, gate, y)
    _check_defined(op, grad=grad)
    _check_same_device(op, "gate", gate, grad=grad)
    torch._check(grad.dtype == torch.float32, lambda: f"{op}: takes float32 (other dtypes use the torch path)")
    torch._check(tuple(grad.shape) == tuple(gate.shape), lambda: f"{op}: grad must have gate's shape")
    return (torch.empty_like(gate, memory_format=torch.contiguous_format),
            torch.empty_like(y, memory_format=torch.contiguous_format))


def _gelu_tanh_mul_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gelu_tanh_mul_backward(ctx, grad):
    gate, y = ctx.saved_tensors
    return torch.ops.bitttt.gelu_tanh_mul_backward(grad, gate, y)


torch.library.register_autograd("bitttt::gelu_tanh_mul", _gelu_tanh_mul_backward,
                                setup_context=_gelu_tanh_mul_setup_context)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / sqrt(mean(x², last dim) + eps)) for float32 CPU x [..., C], weight [C], with
    the C++ forward and backward. Differentiable in x and weight."""
    return torch.ops.bitttt.rms_norm(x, weight, eps)[0]


@torch.library.register_fake("bitttt::rms_norm")
def _rms_norm_fake(x, weight, eps):
    op = "rms_norm"
    _check_defined(op, x=x, weight=weight)
    _check_same_device(op, "x", x, weight=weight)
    torch._check(x.dtype == torch.float32 and weight.dtype == torch.float32, lambda: f"{op}: takes float32")
    torch._check(x.dim() >= 1, lambda: f"{op}: x must have a last (feature) dimension")
    torch._check(x.shape[-1] > 0, lambda: f"{op}: x's last (feature) dimension must be > 0")
    torch._check(tuple(weight.shape) == (x.shape[-1],), lambda: f"{op}: weight must be [C={x.shape[-1]}]")
    torch._check(eps > 0, lambda: f"{op}: eps must be > 0, got {eps}")
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[:-1])


@torch.library.register_fake("bitttt::rms_norm_backward")
def _rms_norm_backward_fake(grad, x, weight, r):
    op = "rms_norm_backward"
    _check_defined(op, grad=grad, x=x, weight=weight, r=r)
    _check_same_device(op, "x", x, grad=grad, weight=weight, r=r)
    torch._check(all(t.dtype == torch.float32 for t in (grad, x, weight, r)), lambda: f"{op}: takes float32")
    torch._check(x.dim() >= 1 and x.shape[-1] > 0, lambda: f"{op}: x's last (feature) dimension must be > 0")
    torch._check(tuple(grad.shape) == tuple(x.shape), lambda: f"{op}: grad must have x's shape")
    torch._check(tuple(weight.shape) == (x.shape[-1],), lambda: f"{op}: weight must be [C={x.shape[-1]}]")
    torch._check(r.numel() == x.numel() // max(x.shape[-1], 1), lambda: f"{op}: r must hold one value per row")
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(weight, memory_format=torch.contiguous_format))


def _rms_norm_setup_context(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_norm_backward(ctx, grad_y, _grad_r):
    x, weight, r = ctx.saved_tensors
    grad_x, grad_w = torch.ops.bitttt.rms_norm_backward(grad_y, x, weight, r)
    return grad_x, grad_w, None


torch.library.register_autograd("bitttt::rms_norm", _rms_norm_backward, setup_context=_rms_norm_setup_context)


def causal_conv1d(x: torch.Tensor, prev: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Causal depthwise conv over time, float32 CPU: x [B, T, C] after prev [B, K-1, C] (the inputs
    before x), weight [C, K], bias [C] -> y [B, T, C], y[t] = sum_j weight[:, j] * xp[t + j] + bias
    with xp = cat(prev, x). Differentiable in every input."""
    return torch.ops.bitttt.causal_conv1d(x, prev, weight, bias)


def _check_conv(op, x, prev, weight, bias):
    _check_defined(op, x=x, prev=prev, weight=weight, bias=bias)
    _check_same_device(op, "x", x, prev=prev, weight=weight, bias=bias)
    for name, t in (("x", x), ("prev", prev), ("weight", weight), ("bias", bias)):
        torch._check(t.dtype == torch.float32, lambda: f"{op}: takes float32, got {name} {t.dtype}")
    torch._check(x.dim() == 3, lambda: f"{op}: x must be [B, T, C]")
    torch._check(weight.dim() == 2 and weight.shape[0] == x.shape[2], lambda: f"{op}: weight must be [C, K]")
    B, _, C = x.shape
    K = weight.shape[1]
    torch._check(tuple(bias.shape) == (C,), lambda: f"{op}: bias must be [C={C}]")
    torch._check(tuple(prev.shape) == (B, K - 1, C), lambda: f"{op}: prev must be [B, K-1, C] = {[B, K - 1, C]}")


@torch.library.register_fake("bitttt::causal_conv1d")
def _causal_conv1d_fake(x, prev, weight, bias):
    _check_conv("causal_conv1d", x, prev, weight, bias)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("bitttt::causal_conv1d_backward")
def _causal_conv1d_backward_fake(grad, x, prev, weight, bias):
    op = "causal_conv1d_backward"
    _check_conv(op, x, prev, weight, bias)
    _check_defined(op, grad=grad)
    _check_same_device(op, "x", x, grad=grad)
    torch._check(grad.dtype == torch.float32, lambda: f"{op}: takes float32, got grad {grad.dtype}")
    torch._check(tuple(grad.shape) == tuple(x.shape), lambda: f"{op}: grad must have x's shape")
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (x, prev, weight, bias))


def _causal_conv1d_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _causal_conv1d_backward(ctx, grad_y):
    return torch.ops.bitttt.causal_conv1d_backward(grad_y, *ctx.saved_tensors)


torch.library.register_autograd("bitttt::causal_conv1d", _causal_conv1d_backward,
                                setup_context=_causal_conv1d_setup_context)


def rope_heads(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rotate-half RoPE (bitttt.nn.rope's "half") fused with the split into heads, float32 CPU:
    x [B, T, H*D], cos, sin [T, D] (rope_cos_sin's) -> [B, H, T, D] contiguous. Differentiable in x."""
    return torch.ops.bitttt.rope_heads(x, cos, sin, num_heads)


def _check_rope_tables(op, cos, sin, T, D):
    for name, t in (("cos", cos), ("sin", sin)):
        torch._check(tuple(t.shape) == (T, D), lambda: f"{op}: {name} must be [T={T}, D={D}], got {list(t.shape)}")
        torch._check(t.dtype == torch.float32, lambda: f"{op}: takes float32, got {name} {t.dtype}")


@torch.library.register_fake("bitttt::rope_heads")
def _rope_heads_fake(x, cos, sin, H):
    op = "rope_heads"
    _check_defined(op, x=x, cos=cos, sin=sin)
    _check_same_device(op, "x", x, cos=cos, sin=sin)
    torch._check(x.dtype == torch.float32, lambda: f"{op}: takes float32, got x {x.dtype}")
    torch._check(x.dim() == 3, lambda: f"{op}: x must be [B, T, H*D]")
    torch._check(H > 0 and x.shape[2] % H == 0 and (x.shape[2] // H) % 2 == 0,
                 lambda: f"{op}: x's last dimension {x.shape[2]} must split into H={H} heads of an even size")
    B, T, C = x.shape
    _check_rope_tables(op, cos, sin, T, C // H)
    return x.new_empty(B, H, T, C // H)


@torch.library.register_fake("bitttt::rope_heads_backward")
def _rope_heads_backward_fake(grad, cos, sin):
    op = "rope_heads_backward"
    _check_defined(op, grad=grad, cos=cos, sin=sin)
    _check_same_device(op, "grad", grad, cos=cos, sin=sin)
    torch._check(all(t.dtype == torch.float32 for t in (grad, cos, sin)), lambda: f"{op}: takes float32")
    torch._check(grad.dim() == 4 and grad.shape[3] % 2 == 0, lambda: f"{op}: grad must be [B, H, T, D] with D even")
    B, H, T, D = grad.shape
    _check_rope_tables(op, cos, sin, T, D)
    return grad.new_empty(B, T, H * D)


def _rope_heads_setup_context(ctx, inputs, output):
    _, cos, sin, _ = inputs
    ctx.save_for_backward(cos, sin)


def _rope_heads_backward(ctx, grad):
    cos, sin = ctx.saved_tensors
    return torch.ops.bitttt.rope_heads_backward(grad, cos, sin), None, None, None


torch.library.register_autograd("bitttt::rope_heads", _rope_heads_backward, setup_context=_rope_heads_setup_context)


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attention mixer's interleaved RoPE (bitttt.nn.rope's "interleaved") fused with the split
    of its qkv projection into heads, float32 CPU: qkv [B, T, 3*H*D], cos, sin [T, D/2]
    (rope_cos_sin's) -> q, k rotated and v, each [B, H, T, D] contiguous. Differentiable in qkv."""
    return torch.ops.bitttt.rope_qkv(qkv, cos, sin, num_heads)


@torch.library.register_fake("bitttt::rope_qkv")
def _rope_qkv_fake(qkv, cos, sin, H):
    op = "rope_qkv"
    _check_defined(op, qkv=qkv, cos=cos, sin=sin)
    _check_same_device(op, "qkv", qkv, cos=cos, sin=sin)
    torch._check(qkv.dtype == torch.float32, lambda: f"{op}: takes float32, got qkv {qkv.dtype}")
    torch._check(qkv.dim() == 3, lambda: f"{op}: qkv must be [B, T, 3*H*D]")
    torch._check(0 < H <= qkv.shape[2] // 6 and qkv.shape[2] % (3 * H) == 0 and (qkv.shape[2] // (3 * H)) % 2 == 0,
                 lambda: f"{op}: qkv's last dimension {qkv.shape[2]} must split into 3 x H={H} heads of an even size")
    B, T, C3 = qkv.shape
    D = C3 // (3 * H)
    _check_rope_tables(op, cos, sin, T, D // 2)
    return tuple(qkv.new_empty(B, H, T, D) for _ in range(3))


@torch.library.register_fake("bitttt::rope_qkv_backward")
def _rope_qkv_backward_fake(grad_q, grad_k, grad_v, cos, sin):
    op = "rope_qkv_backward"
    _check_defined(op, grad_q=grad_q, grad_k=grad_k, grad_v=grad_v, cos=cos, sin=sin)
    _check_same_device(op, "grad_q", grad_q, grad_k=grad_k, grad_v=grad_v, cos=cos, sin=sin)
    torch._check(all(t.dtype == torch.float32 for t in (grad_q, grad_k, grad_v)), lambda: f"{op}: takes float32")
    torch._check(grad_q.dim() == 4 and grad_q.shape[3] % 2 == 0, lambda: f"{op}: grad_q must be [B, H, T, D] with D even")
    torch._check(tuple(grad_k.shape) == tuple(grad_q.shape) and tuple(grad_v.shape) == tuple(grad_q.shape),
                 lambda: f"{op}: grad_k and grad_v must have grad_q's shape [B, H, T, D]")
    B, H, T, D = grad_q.shape
    _check_rope_tables(op, cos, sin, T, D // 2)
    return grad_q.new_empty(B, T, 3 * H * D)


def _rope_qkv_setup_context(ctx, inputs, output):
    _, cos, sin, _ = inputs
    ctx.save_for_backward(cos, sin)


def _rope_qkv_backward(ctx, grad_q, grad_k, grad_v):
    cos, sin = ctx.saved_tensors
    grads = (grad_q, grad_k, grad_v)
    like = next((g for g in grads if g is not None), None)
    if like is None:
        return None, None, None, None
    # an output that did not reach the loss has no gradient (None): zeros in its place
    grad_q, grad_k, grad_v = (torch.zeros_like(like) if g is None else g for g in grads)
    return torch.ops.bitttt.rope_qkv_backward(grad_q, grad_k, grad_v, cos, sin), None, None, None


torch.library.register_autograd("bitttt::rope_qkv", _rope_qkv_backward, setup_context=_rope_qkv_setup_context)


def clip_grad_norm_(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ on a list of contiguous float32 CPU gradients, in one C++
    pass (csrc/train/grad_clip_cpu.cpp): the global L2 norm (a float32 scalar tensor, returned),
    and the gradients scaled in place by max_norm / (norm + 1e-6) where that is below 1."""
    return torch.ops.bitttt.clip_grad_norm_(grads, max_norm)


def max_abs(tensors: list[torch.Tensor]) -> torch.Tensor:
    """max |x| over contiguous float32 CPU tensors, one C++ pass: a float32 scalar tensor, NaN if
    any element is NaN."""
    return torch.ops.bitttt.max_abs(tensors)


def _check_tensor_list(op, tensors):
    torch._check(len(tensors) > 0, lambda: f"{op}: needs at least one tensor")
    for t in tensors:
        torch._check(t.dtype == torch.float32, lambda: f"{op}: takes float32 (other dtypes use the torch path)")
        torch._check(t.device == tensors[0].device, lambda: f"{op}: every tensor on one device")


@torch.library.register_fake("bitttt::clip_grad_norm_")
def _clip_grad_norm_fake(grads, max_norm):
    _check_tensor_list("clip_grad_norm_", grads)
    return grads[0].new_empty(())


@torch.library.register_fake("bitttt::max_abs")
def _max_abs_fake(tensors):
    _check_tensor_list("max_abs", tensors)
    return tensors[0].new_empty(())


# ---------------------------------------------------------------------------------------
# TTT-MLP (docs/design.md §3, second inner model; kernels in csrc/ttt_mlp/)
# ---------------------------------------------------------------------------------------


class TTTMLPState(NamedTuple):
    """The carried TTT-MLP state (design §3), the TTT-Linear contract for a 2-layer MLP.

    W1 [B,H,D,F], b1 [B,H,F], W2 [B,H,F,D], b2 [B,H,D]: fast weights at the start of the
    current mini-batch (F = 4·D in nn.TTTMLP); gW1, gb1, gW2, gb2: lr-weighted inner gradients
    summed inside it (zero on a boundary), same shapes; pos: absolute position of the next token.
    Field order is bitttt.reference.ttt_mlp's state tuple, so either converts to the other.
    """

    W1: torch.Tensor
    b1: torch.Tensor
    W2: torch.Tensor
    b2: torch.Tensor
    gW1: torch.Tensor
    gb1: torch.Tensor
    gW2: torch.Tensor
    gb2: torch.Tensor
    pos: int


def _ttt_mlp_check_cpu(op: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type not in ("cpu", "meta"):
            raise RuntimeError(f"{op}: TTT-MLP has no {t.device.type} kernel yet (CPU only); "
                               "nn.TTTMLP runs its torch composition on other devices")


def ttt_mlp(q, k, v, lr, token_scale, W1, b1, W2, b2, ln_w, ln_b, state: TTTMLPState | None = None,
            ckpt_every: int = TTT_CKPT_EVERY):
    """TTT-MLP over T tokens from state.pos (design §3), with the C++ op (CPU).

    Args:
        q, k, v: [B,H,T,D] float32/float64 (bfloat16/float16 run in float32 and come back cast).
        lr: [B,H,T]; token_scale: [b]; W1 [H,D,F], b1 [H,F], W2 [H,F,D], b2 [H,D]: initial fast
        weights (used when state is None); ln_w, ln_b: [H,D]; state: a TTTMLPState (or the
        reference's 9-tuple), or None to start from the initial weights at position 0.
        ckpt_every: mini-batches per checkpoint kept for the backward (memory vs recompute).
    Returns:
        (out [B,H,T,D], TTTMLPState after the tokens). Differentiable in every tensor input.
    Raises:
        RuntimeError naming the bad argument, or for a tensor that is not on the CPU.
    """
    out_dtype = q.dtype
    if q.dtype in _LOW_PRECISION:
        q, k, v, lr = q.float(), k.float(), v.float(), lr.float()
    if q.dim() != 4:
        raise RuntimeError(f"ttt_mlp: q must be 4-D [B, H, T, D], got shape {tuple(q.shape)}")
    B = q.shape[0]
    if state is None:
        w = [p.unsqueeze(0).expand(B, *p.shape) for p in (W1, b1, W2, b2)]
        state = TTTMLPState(*w, *(x.new_zeros(x.shape) for x in w), 0)
    state = TTTMLPState(*state)
    _ttt_mlp_check_cpu("ttt_mlp", q, *state[:8])
    q, k, v, lr = q.contiguous(), k.contiguous(), v.contiguous(), lr.contiguous()
    tensors = (q, k, v, lr, token_scale, *state[:8], ln_w, ln_b)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    res = torch.ops.bitttt.ttt_mlp(q, k, v, lr, token_scale, *state[:8], int(state.pos), ln_w, ln_b,
                                   ckpt_every if needs_grad else 0)
    return res[0].to(out_dtype), TTTMLPState(*res[1:9], int(state.pos) + q.shape[2])


def ttt_mlp_decode_(q, k, v, lr, token_scale, state: TTTMLPState, ln_w, ln_b):
    """One token for all heads, updating the state tensors in place (no autograd): generation.

    q, k, v: [B,H,D]; lr: [B,H]. Returns (out [B,H,D], the state with pos + 1); equal to
    ttt_mlp over that one token. The state tensors must be contiguous.
    """
    out_dtype = q.dtype
    if q.dtype in _LOW_PRECISION:
        q, k, v, lr = q.float(), k.float(), v.float(), lr.float()
    state = TTTMLPState(*state)
    _ttt_mlp_check_cpu("ttt_mlp_decode_", q, *state[:8])
    out = torch.ops.bitttt.ttt_mlp_decode_.default(q, k, v, lr, token_scale, *state[:8], int(state.pos), ln_w, ln_b)
    if out.dtype != out_dtype:
        out = out.to(out_dtype)
    return out, state._replace(pos=int(state.pos) + 1)


def _ttt_mlp_num_checkpoints(T: int, b: int, pos: int, ckpt_every: int) -> int:
    return _ttt_num_checkpoints(T, b, pos, ckpt_every)


def _check_ttt_mlp_inputs(op, q, k, v, lr, ts, w, g, pos, ln_w, ln_b, one_token=False):
    """The fakes' copy of csrc/ttt_mlp/ttt_mlp_cpu.cpp check_inputs. w: (W1, b1, W2, b2) or
    None; g: the accumulators (F is read from gW1). Returns (B, H, T, D, F)."""
    _check_defined(op, q=q, k=k, v=v, lr=lr, token_scale=ts, ln_w=ln_w, ln_b=ln_b,
                   **dict(zip(("gW1", "gb1", "gW2", "gb2"), g)))
    torch._check(q.dim() == (3 if one_token else 4),
                 lambda: f"{op}: q must be {'3-D [B, H, D]' if one_token else '4-D [B, H, T, D]'}, got {q.dim()} dims")
    B, H, D = q.shape[0], q.shape[1], q.shape[-1]
    T = 1 if one_token else q.shape[2]
    torch._check(g[0].dim() == 4, lambda: f"{op}: gW1 must be 4-D [B, H, D, F]")
    F = g[0].shape[3]
    torch._check(D > 0 and F > 0, lambda: f"{op}: head size D and hidden size F must be positive")
    torch._check(ts.dim() == 1 and ts.shape[0] > 0, lambda: f"{op}: token_scale must be 1-D [b] with b >= 1")
    torch._check(pos >= 0, lambda: f"{op}: pos must be >= 0, got {pos}")
    tok = (B, H, D) if one_token else (B, H, T, D)
    _check_shape(op, "k", k, tok, "[B, H, (T,) D]")
    _check_shape(op, "v", v, tok, "[B, H, (T,) D]")
    _check_shape(op, "lr", lr, tok[:-1], "[B, H, (T)]")
    shapes = ((B, H, D, F), (B, H, F), (B, H, F, D), (B, H, D))
    named = {}
    for prefix, part in (("", w), ("g", g)):
        if part is None:
            continue
        for name, t, want in zip(("W1", "b1", "W2", "b2"), part, shapes):
            _check_shape(op, prefix + name, t, want, str(list(want)))
            named[prefix + name] = t
    _check_shape(op, "ln_w", ln_w, (H, D), "[H, D]")
    _check_shape(op, "ln_b", ln_b, (H, D), "[H, D]")
    torch._check(q.dtype in (torch.float32, torch.float64), lambda: f"{op}: q must be float32 or float64, got {q.dtype}")
    tensors = dict(k=k, v=v, lr=lr, token_scale=ts, ln_w=ln_w, ln_b=ln_b, **named)
    for name, t in tensors.items():
        torch._check(t.dtype == q.dtype, lambda: f"{op}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
    _check_same_device(op, "q", q, **tensors)
    return B, H, T, D, F


@torch.library.register_fake("bitttt::ttt_mlp")
def _ttt_mlp_fake(q, k, v, lr, token_scale, W1, b1, W2, b2, gW1, gb1, gW2, gb2, pos, ln_w, ln_b, ckpt_every=0):
    B, H, T, D, F = _check_ttt_mlp_inputs("ttt_mlp", q, k, v, lr, token_scale, (W1, b1, W2, b2),
                                          (gW1, gb1, gW2, gb2), pos, ln_w, ln_b)
    torch._check(ckpt_every >= 0, lambda: f"ttt_mlp: ckpt_every must be >= 0, got {ckpt_every}")
    n_ck = _ttt_mlp_num_checkpoints(T, token_scale.shape[0], pos, ckpt_every)
    state = [q.new_empty(s) for s in ((B, H, D, F), (B, H, F), (B, H, F, D), (B, H, D))]
    return (q.new_empty(B, H, T, D), *state, *(x.new_empty(x.shape) for x in state),
            q.new_empty(B, H, n_ck, 2 * D * F + F + D))


@torch.library.register_fake("bitttt::ttt_mlp_backward")
def _ttt_mlp_backward_fake(grad_out, gr_W1, gr_b1, gr_W2, gr_b2, gr_gW1, gr_gb1, gr_gW2, gr_gb2, q, k, v, lr,
                           token_scale, gW1, gb1, gW2, gb2, pos, ln_w, ln_b, ckpt, ckpt_every):
    op = "ttt_mlp_backward"
    B, H, T, D, F = _check_ttt_mlp_inputs(op, q, k, v, lr, token_scale, (gr_W1, gr_b1, gr_W2, gr_b2),
                                          (gW1, gb1, gW2, gb2), pos, ln_w, ln_b)
    _check_ttt_mlp_inputs(op, q, k, v, lr, token_scale, None, (gr_gW1, gr_gb1, gr_gW2, gr_gb2), pos, ln_w, ln_b)
    torch._check(ckpt_every > 0, lambda: f"{op}: ckpt_every must be > 0 (the forward must save checkpoints)")
    n_ck = _ttt_mlp_num_checkpoints(T, token_scale.shape[0], pos, ckpt_every)
    _check_shape(op, "ckpt", ckpt, (B, H, n_ck, 2 * D * F + F + D), "[B, H, n_ckpt, 2DF + F + D]")
    _check_shape(op, "grad_out", grad_out, (B, H, T, D), "[B, H, T, D]")
    state = [q.new_empty(s) for s in ((B, H, D, F), (B, H, F), (B, H, F, D), (B, H, D))]
    return (q.new_empty(B, H, T, D), q.new_empty(B, H, T, D), q.new_empty(B, H, T, D), q.new_empty(B, H, T),
            q.new_empty(token_scale.shape), *state, *(x.new_empty(x.shape) for x in state),
            q.new_empty(ln_w.shape), q.new_empty(ln_b.shape))


@torch.library.register_fake("bitttt::ttt_mlp_decode_")
def _ttt_mlp_decode_fake(q, k, v, lr, token_scale, W1, b1, W2, b2, gW1, gb1, gW2, gb2, pos, ln_w, ln_b):
    op = "ttt_mlp_decode_"
    _check_ttt_mlp_inputs(op, q, k, v, lr, token_scale, (W1, b1, W2, b2), (gW1, gb1, gW2, gb2), pos, ln_w, ln_b,
                          one_token=True)
    torch._check(all(t.is_contiguous() for t in (W1, b1, W2, b2, gW1, gb1, gW2, gb2)),
                 lambda: f"{op}: the state tensors are updated in place and must be contiguous")
    return q.new_empty(q.shape)


# As TTT-Linear: the backward recomputes each checkpoint span from the weights the forward saved.
def _ttt_mlp_setup_context(ctx, inputs, output):
    q, k, v, lr, token_scale, W1, b1, W2, b2, gW1, gb1, gW2, gb2, pos, ln_w, ln_b, ckpt_every = inputs
    ctx.save_for_backward(q, k, v, lr, token_scale, gW1, gb1, gW2, gb2, ln_w, ln_b, output[9])
    ctx.pos, ctx.ckpt_every = pos, ckpt_every
    ctx.F = W1.shape[-1]


def _ttt_mlp_backward(ctx, g_out, *g_state_and_ckpt):
    q, k, v, lr, token_scale, gW1, gb1, gW2, gb2, ln_w, ln_b, ckpt = ctx.saved_tensors
    B, H, T, D = q.shape
    F = ctx.F
    shapes = ((B, H, D, F), (B, H, F), (B, H, F, D), (B, H, D)) * 2
    zeros = lambda g, shape: q.new_zeros(shape) if g is None else g.contiguous()  # noqa: E731
    g_state = [zeros(g, s) for g, s in zip(g_state_and_ckpt[:8], shapes)]
    grads = torch.ops.bitttt.ttt_mlp_backward(zeros(g_out, (B, H, T, D)), *g_state, q, k, v, lr, token_scale,
                                              gW1, gb1, gW2, gb2, ctx.pos, ln_w, ln_b, ckpt, ctx.ckpt_every)
    dq, dk, dv, dlr, dts, dW1, db1, dW2, db2, dgW1, dgb1, dgW2, dgb2, dln_w, dln_b = grads
    return dq, dk, dv, dlr, dts, dW1, db1, dW2, db2, dgW1, dgb1, dgW2, dgb2, None, dln_w, dln_b, None


torch.library.register_autograd("bitttt::ttt_mlp", _ttt_mlp_backward, setup_context=_ttt_mlp_setup_context)
