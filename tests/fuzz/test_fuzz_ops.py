"""Fuzzing every op in torch.ops.bitttt (issue 12): generated bad input, fixed seed.

Each case is a valid call of one op with 0-2 mutations (dtype, shape, rank, huge sizes via
expand, layouts, meta tensors, NaN/inf and extreme values, BT2 code 3, wrong packed widths,
bad ints, None). It must end in a clean Python exception with a message (RuntimeError,
ValueError, TypeError) or a correct result:
- every call on CPU tensors is repeated on contiguous copies and must give the same bits
  (strides, offsets and zero strides never change an answer);
- the ternary ops are checked against bitttt.reference (code 3 read as +2, design §2), and
  ttt_linear / ttt_linear_decode_ against reference.ttt_linear on finite inputs;
- the same call on meta tensors (the fake kernels) must accept and refuse the same calls and
  give the same output shapes and dtypes, and a call mixing meta and CPU must be refused.

Cases run in worker subprocesses (this file with --worker), under an address-space limit
so a huge size fails to allocate instead of taking the machine; a segfault or a hang (no
answer within CASE_TIMEOUT_S) fails the test naming the case, and the rest of the batch
goes on in a fresh worker. BITTTT_FUZZ_SCALE multiplies the case count (README.md).
"""

from __future__ import annotations

import json
import os
import queue
import random
import resource
import subprocess
import sys
import threading
from typing import Any

SEED = int(os.environ.get("BITTTT_FUZZ_SEED", "1212"))
SCALE = float(os.environ.get("BITTTT_FUZZ_SCALE", "1"))
# Cases per op at scale 1: about a minute for all ops together on a 2-core CI machine.
CASES_PER_OP = {"ternary_linear": 700, "ternary_matmul_int8": 500, "int8_matmul": 300, "half_matmul": 300, "ttt_linear": 300,
                "ttt_linear_backward": 200, "ttt_linear_decode_": 300, "ttt_mlp": 200, "ttt_mlp_backward": 150,
                "ttt_mlp_decode_": 200, "fake_quant_activations": 300, "fake_quant_weight": 300,
                "fake_quant_activations_int8": 200, "fake_quant_weight_int8": 200, "int8_gemm_epilogue": 200,
                "ternary_repack_lut16": 200, "ternary_linear_lut16": 500, "ternary_matmul_int8_lut16": 400,
                "ternary_repack_trit5": 200, "ternary_linear_trit5": 500, "ternary_matmul_int8_trit5": 400,
                "rms_norm_ternary_linear": 300, "rms_norm": 150, "rms_norm_backward": 150, "causal_conv1d": 150,
                "causal_conv1d_backward": 150, "rope_heads": 150, "rope_heads_backward": 150,
                "silu_mul": 150, "silu_mul_backward": 150,
                "gelu_tanh_mul": 150, "gelu_tanh_mul_backward": 150}
CASE_TIMEOUT_S = 60  # a hang bound, not a speed test: the slowest good case takes < 1 s
WORKER_START_S = 120  # more time for the first answer of a worker: it imports torch
# Address space of a worker (torch itself takes ~0.7 GB): a huge size fails to allocate at
# once instead of copying gigabytes on a shared machine; good cases need a few MB.
WORKER_MEMORY_BYTES = 2 << 30

OK_EXCEPTIONS = ("RuntimeError", "ValueError", "TypeError", "NotImplementedError", "OutOfMemoryError")
ALL_DTYPES = ["float32", "bfloat16", "float16", "float64", "int8", "uint8", "int32", "int64", "bool",
              "complex64"]
HUGE_SIZES = [2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**62]
BAD_INTS = [-1, -(2**63), 2**63 - 1, 2**62, 2**31, 0, 1]

# ---------------------------------------------------------------------------------------
# Case generation (parent side): plain JSON recipes, so a failure prints a readable case
# ---------------------------------------------------------------------------------------


def tensor(shape, dtype="float32", fill="randn", **extra) -> dict:
    return {"t": "tensor", "shape": list(shape), "dtype": dtype, "fill": fill, "layout": "contiguous",
            "device": "cpu", **extra}


def base_ternary_linear(rng: random.Random) -> dict:
    lead = [rng.choice([0, 1, 2, 3, 5, 9]) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
    K, N = rng.choice([0, 1, 31, 255, 256, 257, 300, 600]), rng.choice([0, 1, 3, 17])
    dtype = rng.choice(["float32", "bfloat16"])
    bias = None if rng.random() < 0.4 else tensor([N], rng.choice(["float32", dtype]))
    return {"op": "ternary_linear", "args": {
        "x": tensor([*lead, K], dtype), "packed": tensor([N, pad(K) // 4], "uint8", "bt2"),
        "w_scale": tensor([N], "float32", "scale"), "bias": bias}}


def base_rms_norm_ternary_linear(rng: random.Random) -> dict:
    """ternary_linear's shapes, with the norm's weight [K] (x's dtype) and eps before the weights;
    the bias is float32 (the op's contract)."""
    a = base_ternary_linear(rng)["args"]
    K, N, dtype = a["x"]["shape"][-1], a["w_scale"]["shape"][0], a["x"]["dtype"]
    bias = None if a["bias"] is None else tensor([N], "float32")
    return {"op": "rms_norm_ternary_linear", "args": {
        "x": a["x"], "norm_weight": tensor([K], dtype), "eps": rng.choice([1e-6, 1e-5, 0.0]),
        "packed": a["packed"], "w_scale": a["w_scale"], "bias": bias}}


def base_ternary_matmul_int8(rng: random.Random) -> dict:
    # M: 2..16 are bitttt serve's batches (the kernels' token blocks of 4 and their remainders)
    M, K, N = rng.choice([0, 1, 2, 3, 4, 5, 7, 8, 11, 16, 70]), rng.choice([0, 1, 100, 256, 300]), rng.choice([0, 1, 3, 17, 65])
    return {"op": "ternary_matmul_int8", "args": {
        "x": tensor([M, K], "int8", "int8"), "packed": tensor([N, pad(K) // 4], "uint8", "bt2")}}


def pad16(N: int) -> int:
    return (N + 15) // 16 * 16


# The lut16 ops (csrc/ternary/lut16.h): the layout argument is named "packed" in the recipes,
# so the code-3 and width mutations reach it too.
def base_ternary_repack_lut16(rng: random.Random) -> dict:
    K, N = rng.choice([0, 1, 255, 256, 300, 600]), rng.choice([0, 1, 3, 16, 17, 70])
    return {"op": "ternary_repack_lut16", "args": {"packed": tensor([N, pad(K) // 4], "uint8", "bt2")}}


def base_ternary_linear_lut16(rng: random.Random) -> dict:
    case = base_ternary_linear(rng)
    case["op"] = "ternary_linear_lut16"
    N, width = case["args"]["w_scale"]["shape"][0], case["args"]["packed"]["shape"][1]
    case["args"]["packed"]["shape"] = [pad16(N), width]
    return case


def base_ternary_matmul_int8_lut16(rng: random.Random) -> dict:
    M, K, N = rng.choice([0, 1, 4, 5, 70]), rng.choice([0, 1, 100, 256, 300]), rng.choice([0, 1, 3, 17, 64, 65])
    return {"op": "ternary_matmul_int8_lut16", "args": {
        "x": tensor([M, K], "int8", "int8"), "packed": tensor([pad16(N), pad(K) // 4], "uint8", "bt2"), "N": N}}


# The trit5 ops (csrc/ternary/trit5.h): any byte is a trit5 byte (five digits 0..2 by the
# definition), so the layouts are random bytes; named "packed" for the width mutations.
def trit5_width(K: int) -> int:
    return (K + 319) // 320 * 64


def base_ternary_repack_trit5(rng: random.Random) -> dict:
    K, N = rng.choice([0, 1, 255, 256, 300, 320, 321, 600, 700]), rng.choice([0, 1, 3, 16, 17, 70])
    return {"op": "ternary_repack_trit5", "args": {"packed": tensor([N, pad(K) // 4], "uint8", "bt2"), "K": K}}


def base_ternary_linear_trit5(rng: random.Random) -> dict:
    case = base_ternary_linear(rng)
    case["op"] = "ternary_linear_trit5"
    N, K = case["args"]["w_scale"]["shape"][0], case["args"]["x"]["shape"][-1]
    case["args"]["packed"] = tensor([N, trit5_width(K)], "uint8", "bytes")
    return case


def base_ternary_matmul_int8_trit5(rng: random.Random) -> dict:
    M, K, N = (rng.choice([0, 1, 2, 3, 4, 5, 7, 8, 11, 16, 70]), rng.choice([0, 1, 100, 320, 321, 700]),
               rng.choice([0, 1, 3, 17, 64, 65, 130]))
    return {"op": "ternary_matmul_int8_trit5", "args": {
        "x": tensor([M, K], "int8", "int8"), "packed": tensor([N, trit5_width(K)], "uint8", "bytes"), "N": N}}


def base_int8_matmul(rng: random.Random) -> dict:
    # M: across the AVX2 kernel's 4-token and the AVX-512 kernel's 8-token blocks, up to 16
    M, K, N = (rng.choice([0, 1, 2, 4, 5, 7, 8, 9, 12, 16]), rng.choice([0, 1, 31, 32, 63, 64, 65, 100, 300]),
               rng.choice([0, 1, 3, 65, 130]))
    x_fill = rng.choice(["int8", "int8q"])  # int8q: no -128, the AVX2 kernel's range
    return {"op": "int8_matmul", "args": {"x": tensor([M, K], "int8", x_fill), "w": tensor([N, K], "int8", "int8")}}


def base_half_matmul(rng: random.Random) -> dict:
    M, K, N = rng.choice([0, 1, 2, 4, 5, 9]), rng.choice([0, 1, 7, 8, 32, 33, 100]), rng.choice([0, 1, 3, 65, 130])
    return {"op": "half_matmul", "args": {"x": tensor([M, K]),
                                          "w": tensor([N, K], rng.choice(["bfloat16", "float16"]))}}


def _ttt_tensors(rng: random.Random, one_token: bool) -> tuple[dict, dict]:
    B, H, D = rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 2, 3, 8, 32])
    T, b = rng.choice([0, 1, 5, 16, 17, 33]), rng.choice([1, 4, 16])
    dt = rng.choice(["float32", "float64"])
    tok = [B, H, D] if one_token else [B, H, T, D]
    lr = [B, H] if one_token else [B, H, T]
    args = {"q": tensor(tok, dt), "k": tensor(tok, dt), "v": tensor(tok, dt), "lr": tensor(lr, dt, "lr"),
            "token_scale": tensor([b], dt, "scale"), "W": tensor([B, H, D, D], dt, "small"),
            "c": tensor([B, H, D], dt, "small"), "gW": tensor([B, H, D, D], dt, rng.choice(["zeros", "small"])),
            "gc": tensor([B, H, D], dt, rng.choice(["zeros", "small"])),
            "pos": rng.choice([0, 3, 15, 16, 1000]), "ln_w": tensor([H, D], dt, "scale"),
            "ln_b": tensor([H, D], dt, "small")}
    return args, {"B": B, "H": H, "T": T, "D": D, "dtype": dt}


def base_ttt_linear(rng: random.Random) -> dict:
    args, _ = _ttt_tensors(rng, one_token=False)
    args["ckpt_every"] = rng.choice([0, 0, 1, 2, 4])
    return {"op": "ttt_linear", "args": args}


def base_ttt_linear_decode_(rng: random.Random) -> dict:
    args, _ = _ttt_tensors(rng, one_token=True)
    return {"op": "ttt_linear_decode_", "args": args}


def base_ttt_linear_backward(rng: random.Random) -> dict:
    args, d = _ttt_tensors(rng, one_token=False)
    B, H, T, D, dt = d["B"], d["H"], d["T"], d["D"], d["dtype"]
    # The worker runs the forward on these inputs for the checkpoints (fill "ckpt").
    grads = {"grad_out": tensor([B, H, T, D], dt), "grad_W": tensor([B, H, D, D], dt, "small"),
             "grad_c": tensor([B, H, D], dt, "small"), "grad_gW": tensor([B, H, D, D], dt, "small"),
             "grad_gc": tensor([B, H, D], dt, "small")}
    fwd = {k: args[k] for k in ("q", "k", "v", "lr", "token_scale", "W", "c", "gW", "gc", "pos", "ln_w", "ln_b")}
    every = rng.choice([1, 2, 4])
    return {"op": "ttt_linear_backward", "args": {
        **grads, **fwd, "ckpt_W": {"t": "ckpt", "which": 5}, "ckpt_c": {"t": "ckpt", "which": 6},
        "ckpt_every": every}}


def _ttt_mlp_tensors(rng: random.Random, one_token: bool) -> tuple[dict, dict]:
    B, H, D = rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 2, 3, 8, 16])
    F = rng.choice([1, 3, 2 * D, 4 * D])
    T, b = rng.choice([0, 1, 5, 16, 17, 33]), rng.choice([1, 4, 16])
    dt = rng.choice(["float32", "float64"])
    tok = [B, H, D] if one_token else [B, H, T, D]
    lr = [B, H] if one_token else [B, H, T]
    shapes = {"W1": [B, H, D, F], "b1": [B, H, F], "W2": [B, H, F, D], "b2": [B, H, D]}
    args = {"q": tensor(tok, dt), "k": tensor(tok, dt), "v": tensor(tok, dt), "lr": tensor(lr, dt, "lr"),
            "token_scale": tensor([b], dt, "scale")}
    args.update({n: tensor(s, dt, "small") for n, s in shapes.items()})
    args.update({"g" + n: tensor(s, dt, rng.choice(["zeros", "small"])) for n, s in shapes.items()})
    args.update({"pos": rng.choice([0, 3, 15, 16, 1000]), "ln_w": tensor([H, D], dt, "scale"),
                 "ln_b": tensor([H, D], dt, "small")})
    return args, {"B": B, "H": H, "T": T, "D": D, "F": F, "dtype": dt}


TTT_MLP_FORWARD = ("q", "k", "v", "lr", "token_scale", "W1", "b1", "W2", "b2", "gW1", "gb1", "gW2", "gb2", "pos",
                   "ln_w", "ln_b")


def base_ttt_mlp(rng: random.Random) -> dict:
    args, _ = _ttt_mlp_tensors(rng, one_token=False)
    args["ckpt_every"] = rng.choice([0, 0, 1, 2, 4])
    return {"op": "ttt_mlp", "args": args}


def base_ttt_mlp_decode_(rng: random.Random) -> dict:
    args, _ = _ttt_mlp_tensors(rng, one_token=True)
    return {"op": "ttt_mlp_decode_", "args": args}


def base_ttt_mlp_backward(rng: random.Random) -> dict:
    args, d = _ttt_mlp_tensors(rng, one_token=False)
    B, H, T, D, F, dt = d["B"], d["H"], d["T"], d["D"], d["F"], d["dtype"]
    shapes = {"W1": [B, H, D, F], "b1": [B, H, F], "W2": [B, H, F, D], "b2": [B, H, D]}
    grads = {"grad_out": tensor([B, H, T, D], dt)}
    for prefix in ("", "g"):
        grads.update({f"grad_{prefix}{n}": tensor(s, dt, "small") for n, s in shapes.items()})
    # The backward takes the forward's inputs less the initial weights (they are in ckpt,
    # which the worker makes by running the forward: fill "ckpt").
    fwd = {n: args[n] for n in TTT_MLP_FORWARD if n not in shapes}
    return {"op": "ttt_mlp_backward", "args": {**grads, **fwd, "ckpt": {"t": "ckpt", "which": 9},
                                               "ckpt_every": rng.choice([1, 2, 4])},
            "forward_only": {n: args[n] for n in shapes}}


def base_fake_quant_activations(rng: random.Random) -> dict:
    lead = [rng.choice([0, 1, 2, 3, 7]) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
    K = rng.choice([0, 1, 7, 64, 65, 300])
    return {"op": "fake_quant_activations", "args": {"x": tensor([*lead, K], "float32")}}


def base_fake_quant_weight(rng: random.Random) -> dict:
    N, K = rng.choice([0, 1, 3, 17, 64]), rng.choice([0, 1, 7, 65, 300])
    return {"op": "fake_quant_weight", "args": {"w": tensor([N, K], "float32", "small"),
                                                "scale": tensor(rng.choice([[], [1]]), "float32", "scale")}}


def base_fake_quant_activations_int8(rng: random.Random) -> dict:
    return {**base_fake_quant_activations(rng), "op": "fake_quant_activations_int8"}


def base_fake_quant_weight_int8(rng: random.Random) -> dict:
    return {**base_fake_quant_weight(rng), "op": "fake_quant_weight_int8"}


def base_int8_gemm_epilogue(rng: random.Random) -> dict:
    M, N = rng.choice([0, 1, 3, 17, 64]), rng.choice([0, 1, 7, 33])
    bias = None if rng.random() < 0.4 else tensor([N], "float32", "small")
    return {"op": "int8_gemm_epilogue", "args": {
        "acc": tensor([M, N], "int32", "int8"), "x_scale": tensor([M], "float32", "scale"),
        "w_scale": tensor(rng.choice([[], [1]]), "float32", "scale"), "bias": bias}}


# The training-step ops (csrc/train/; float32 CPU).
def _lead(rng: random.Random) -> list[int]:
    return [rng.choice([0, 1, 2, 3, 7]) for _ in range(rng.choice([0, 1, 1, 2, 3]))]


def base_rms_norm(rng: random.Random) -> dict:
    C = rng.choice([0, 1, 7, 64, 65])
    return {"op": "rms_norm", "args": {"x": tensor([*_lead(rng), C]), "weight": tensor([C]),
                                       "eps": rng.choice([1e-6, 1e-5, 0.0])}}


def base_rms_norm_backward(rng: random.Random) -> dict:
    lead, C = _lead(rng), rng.choice([0, 1, 7, 64, 65])
    return {"op": "rms_norm_backward", "args": {"grad": tensor([*lead, C]), "x": tensor([*lead, C]),
                                                "weight": tensor([C]), "r": tensor(lead, "float32", "scale")}}


def _conv_tensors(rng: random.Random) -> dict:
    B, T, C, K = rng.choice([0, 1, 2]), rng.choice([1, 2, 5, 16]), rng.choice([0, 1, 8, 33]), rng.choice([1, 2, 4])
    return {"x": tensor([B, T, C]), "prev": tensor([B, K - 1, C]), "weight": tensor([C, K], "float32", "small"),
            "bias": tensor([C], "float32", "small")}


def base_causal_conv1d(rng: random.Random) -> dict:
    return {"op": "causal_conv1d", "args": _conv_tensors(rng)}


def base_causal_conv1d_backward(rng: random.Random) -> dict:
    a = _conv_tensors(rng)
    return {"op": "causal_conv1d_backward", "args": {"grad": tensor(a["x"]["shape"]), **a}}


def base_rope_heads(rng: random.Random) -> dict:
    B, T, H, D = rng.choice([0, 1, 2]), rng.choice([0, 1, 5, 16]), rng.choice([1, 2, 3]), rng.choice([2, 8, 16])
    return {"op": "rope_heads", "args": {"x": tensor([B, T, H * D]), "cos": tensor([T, D], "float32", "small"),
                                         "sin": tensor([T, D], "float32", "small"), "H": H}}


def base_rope_heads_backward(rng: random.Random) -> dict:
    B, T, H, D = rng.choice([0, 1, 2]), rng.choice([0, 1, 5, 16]), rng.choice([1, 2, 3]), rng.choice([2, 8, 16])
    return {"op": "rope_heads_backward", "args": {"grad": tensor([B, H, T, D]),
                                                  "cos": tensor([T, D], "float32", "small"),
                                                  "sin": tensor([T, D], "float32", "small")}}


def base_silu_mul(rng: random.Random) -> dict:
    F = rng.choice([0, 1, 7, 16, 17, 40])
    return {"op": "silu_mul", "args": {"h": tensor([*_lead(rng), 2 * F]), "hidden": F}}


def base_silu_mul_backward(rng: random.Random) -> dict:
    lead, F = _lead(rng), rng.choice([0, 1, 7, 16, 17, 40])
    return {"op": "silu_mul_backward", "args": {"grad": tensor([*lead, F]), "h": tensor([*lead, 2 * F]), "hidden": F}}


def base_gelu_tanh_mul(rng: random.Random) -> dict:
    shape = [*_lead(rng), rng.choice([0, 1, 7, 16, 17, 40])]
    return {"op": "gelu_tanh_mul", "args": {"gate": tensor(shape), "y": tensor(shape)}}


def base_gelu_tanh_mul_backward(rng: random.Random) -> dict:
    shape = [*_lead(rng), rng.choice([0, 1, 7, 16, 17, 40])]
    return {"op": "gelu_tanh_mul_backward", "args": {"grad": tensor(shape), "gate": tensor(shape), "y": tensor(shape)}}


BASES = {"ternary_linear": base_ternary_linear, "ternary_matmul_int8": base_ternary_matmul_int8,
         "int8_matmul": base_int8_matmul, "half_matmul": base_half_matmul,
         "ttt_linear": base_ttt_linear, "ttt_linear_backward": base_ttt_linear_backward,
         "ttt_linear_decode_": base_ttt_linear_decode_, "ttt_mlp": base_ttt_mlp,
         "ttt_mlp_backward": base_ttt_mlp_backward, "ttt_mlp_decode_": base_ttt_mlp_decode_,
         "fake_quant_activations": base_fake_quant_activations, "fake_quant_weight": base_fake_quant_weight,
         "fake_quant_activations_int8": base_fake_quant_activations_int8,
         "fake_quant_weight_int8": base_fake_quant_weight_int8, "int8_gemm_epilogue": base_int8_gemm_epilogue,
         "ternary_repack_lut16": base_ternary_repack_lut16, "ternary_linear_lut16": base_ternary_linear_lut16,
         "ternary_matmul_int8_lut16": base_ternary_matmul_int8_lut16,
         "ternary_repack_trit5": base_ternary_repack_trit5, "ternary_linear_trit5": base_ternary_linear_trit5,
         "ternary_matmul_int8_trit5": base_ternary_matmul_int8_trit5,
         "rms_norm_ternary_linear": base_rms_norm_ternary_linear,
         "rms_norm": base_rms_norm, "rms_norm_backward": base_rms_norm_backward,
         "causal_conv1d": base_causal_conv1d, "causal_conv1d_backward": base_causal_conv1d_backward,
         "rope_heads": base_rope_heads, "rope_heads_backward": base_rope_heads_backward,
         "silu_mul": base_silu_mul, "silu_mul_backward": base_silu_mul_backward,
         "gelu_tanh_mul": base_gelu_tanh_mul, "gelu_tanh_mul_backward": base_gelu_tanh_mul_backward}
# Ops this generator cannot express, and where their bad input is tested instead.
NOT_FUZZED = {"bitnet_decode_": "its arguments are lists of tensors (and an int list of row positions); "
                                "tests/hf/test_fused_decode.py checks its refusals (short weights list, bad KV "
                                "buffers, too few buffers for the rows, two rows sharing a buffer, x not [B, C]) "
                                "and its B-row results against B one-row calls",
              "bitttt_decode_": "its arguments are lists of tensors whose meaning depends on the mixer code (21 per "
                                "TTT layer, 10 per attention layer) and in-place states; "
                                "tests/model/test_own_model_decode_op.py checks its refusals (x dtype, short weights "
                                "or state lists, mixer, layout and head codes, eps, a KV buffer short of pos, the "
                                "RoPE rotation, the TTT flags, a state of the wrong size) and its results against "
                                "the per-op path on every mixer layout and ternary layout"}

# Ops that update some of their inputs in place: those inputs are outputs too.
IN_PLACE_INPUTS = {"ttt_linear_decode_": slice(5, 9), "ttt_mlp_decode_": slice(5, 13)}


def pad(K: int) -> int:
    return (K + 255) // 256 * 256


def _tensor_names(case: dict) -> list[str]:
    return [n for n, a in case["args"].items() if isinstance(a, dict) and a["t"] == "tensor"]


def mutate(case: dict, rng: random.Random) -> str:
    """Applies one random mutation in place; returns what it did."""
    args, names = case["args"], _tensor_names(case)
    ints = [n for n, a in args.items() if isinstance(a, int)]
    kind = rng.choice(["dtype", "dim", "rank", "huge", "layout", "layout", "meta_one", "meta_all", "values",
                       "values", "codes3", "width", "int", "none", "scalar"])
    if kind == "int" and ints:
        n = rng.choice(ints)
        args[n] = rng.choice(BAD_INTS)
        return f"{n}={args[n]}"
    if kind == "meta_all":
        for n in names:
            args[n]["device"] = "meta"
        return "all on meta"
    if not names:
        return "nothing"
    n = rng.choice(names)
    a = args[n]
    if kind == "dtype":
        a["dtype"] = rng.choice(ALL_DTYPES)
        return f"{n}.dtype={a['dtype']}"
    if kind == "dim" and a["shape"]:
        d = rng.randrange(len(a["shape"]))
        s = a["shape"][d]
        a["shape"][d] = rng.choice([0, 1, max(s - 1, 0), s + 1, 2 * s, 7])
        return f"{n}.shape[{d}]={a['shape'][d]}"
    if kind == "rank":
        if a["shape"] and rng.random() < 0.5:
            a["shape"].pop(0)
            return f"{n} one dim fewer"
        a["shape"].insert(0, rng.choice([1, 2]))
        return f"{n} one dim more"
    if kind == "huge" and a["shape"]:
        d = rng.randrange(len(a["shape"]))
        a["shape"][d] = rng.choice(HUGE_SIZES)
        a["layout"] = "expanded"
        a["expand_dims"] = [d]
        return f"{n}.shape[{d}]={a['shape'][d]} (expanded)"
    if kind == "layout":
        a["layout"] = rng.choice(["transposed", "strided", "offset", "expanded"])
        if a["layout"] == "expanded":
            a["expand_dims"] = [i for i, s in enumerate(a["shape"]) if rng.random() < 0.5]
        return f"{n} {a['layout']}"
    if kind == "meta_one":
        a["device"] = "meta"
        return f"{n} on meta"
    if kind == "values":
        a["fill"] = rng.choice(["nan", "posinf", "neginf", "big", "tiny", "zeros", "nan_one", "inf_one"])
        return f"{n} {a['fill']}"
    if kind == "codes3" and "packed" in args and isinstance(args["packed"], dict):
        args["packed"]["fill"] = "bytes"
        return "packed random bytes (code 3)"
    if kind == "width" and "packed" in args and isinstance(args["packed"], dict) and args["packed"]["shape"]:
        p = args["packed"]["shape"]
        p[-1] = rng.choice([0, 1, 32, 63, 64, 65, 128, max(p[-1] - 64, 0), p[-1] + 64])
        return f"packed width {p[-1]}"
    if kind == "none":
        args[n] = None
        return f"{n}=None"
    if kind == "scalar":
        a["shape"] = []
        a["layout"] = "contiguous"
        return f"{n} 0-dim"
    return "nothing"


def generate(op: str, count: int, seed: int) -> list[dict]:
    rng = random.Random(f"{seed}-{op}")
    cases = []
    for i in range(count):
        case = BASES[op](rng)
        n_mut = rng.choice([0, 1, 1, 1, 2, 2])
        case["why"] = [mutate(case, rng) for _ in range(n_mut)] or ["valid"]
        case["seed"] = rng.randrange(2**31)
        case["id"] = f"{op}#{i}"
        cases.append(case)
    return cases


# ---------------------------------------------------------------------------------------
# The worker: builds each case's tensors, runs the op, checks the answer
# ---------------------------------------------------------------------------------------


def build_tensor(spec: dict, gen, torch):
    shape, dtype = list(spec["shape"]), getattr(torch, spec["dtype"])
    layout, fill = spec["layout"], spec["fill"]
    base_shape = list(shape)
    if layout == "expanded":
        for d in spec.get("expand_dims", []):
            base_shape[d] = 1
    if layout == "transposed" and len(shape) >= 2:
        base_shape[-1], base_shape[-2] = base_shape[-2], base_shape[-1]
    if layout == "strided" and shape:
        base_shape[-1] *= 2
    n = 1
    for s in base_shape:
        n *= s
    if n > 1 << 26:  # a recipe whose base itself is huge: not a case (huge sizes come via expand)
        raise OverflowError(f"base of {n} elements")
    t = _fill(fill, n, spec, gen, torch).to(dtype) if n else torch.empty(0, dtype=dtype)
    if layout == "offset":
        t = torch.cat([t.new_zeros(1), t])[1:]
    t = t.reshape(base_shape)
    if layout == "transposed" and len(shape) >= 2:
        t = t.transpose(-1, -2)
    elif layout == "strided" and shape:
        t = t[..., ::2]
    elif layout == "expanded":
        t = t.expand(shape)
    return t.to(spec["device"]) if spec["device"] != "cpu" else t


def _fill(fill: str, n: int, spec: dict, gen, torch):
    f = torch.float64
    if fill == "randn":
        return torch.randn(n, generator=gen, dtype=f)
    if fill == "small":
        return 0.1 * torch.randn(n, generator=gen, dtype=f)
    if fill in ("scale", "lr"):
        return (torch.rand(n, generator=gen, dtype=f) + 0.05) * (0.2 if fill == "lr" else 1.0)
    if fill == "int8":
        return torch.randint(-128, 128, (n,), generator=gen)
    if fill == "int8q":
        return torch.randint(-127, 128, (n,), generator=gen)
    if fill == "bt2":  # codes 0, 1, 2 in every field
        codes = torch.randint(0, 3, (n, 4), generator=gen)
        return (codes[:, 0] | codes[:, 1] << 2 | codes[:, 2] << 4 | codes[:, 3] << 6)
    if fill == "bytes":
        return torch.randint(0, 256, (n,), generator=gen)
    if fill == "zeros":
        return torch.zeros(n, dtype=f)
    values = {"nan": float("nan"), "posinf": float("inf"), "neginf": float("-inf"), "big": 3e38, "tiny": 1e-40}
    if fill in values:
        return torch.full((n,), values[fill], dtype=f)
    if fill in ("nan_one", "inf_one"):
        t = torch.randn(n, generator=gen, dtype=f)
        t[int(torch.randint(0, n, (1,), generator=gen))] = float("nan") if fill == "nan_one" else float("inf")
        return t
    raise ValueError(fill)


def build_args(case: dict, torch) -> list:
    gen = torch.Generator().manual_seed(case["seed"])
    built = {}
    for name, a in case["args"].items():
        if isinstance(a, dict) and a["t"] == "tensor":
            built[name] = build_tensor(a, gen, torch)
        else:
            built[name] = a
    if case["op"] in ("ttt_linear_backward", "ttt_mlp_backward"):  # checkpoints from a forward
        _add_checkpoints(case, built, gen, torch)
    return list(built.values())


def _add_checkpoints(case: dict, built: dict, gen, torch) -> None:
    """Fills the backward's "ckpt" arguments from the forward over the same inputs."""
    if case["op"] == "ttt_linear_backward":
        forward = torch.ops.bitttt.ttt_linear
        names = ("q", "k", "v", "lr", "token_scale", "W", "c", "gW", "gc", "pos", "ln_w", "ln_b")
    else:
        forward = torch.ops.bitttt.ttt_mlp
        names = TTT_MLP_FORWARD
    inputs = {**built, **{n: build_tensor(a, gen, torch) for n, a in case.get("forward_only", {}).items()}}
    try:
        fwd = forward(*[_canonical(inputs[n], torch) for n in names], max(int(built["ckpt_every"]), 1))
    except Exception:  # the mutated inputs have no forward: any tensors of the right kind
        fwd = None
    for name, spec in case["args"].items():
        if isinstance(spec, dict) and spec["t"] == "ckpt":
            built[name] = fwd[spec["which"]] if fwd is not None else torch.zeros(1, 1, 1, 1)


def _canonical(a, torch):
    return a.contiguous().clone() if isinstance(a, torch.Tensor) else a


def _outputs(r) -> list:
    return list(r) if isinstance(r, (tuple, list)) else [r]


def _same_bits(a, b, torch) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    return torch.equal(a, b)


def _bt2_weights(packed, K: int, torch):
    """int64 weights [N, K] of BT2 bytes (code - 1, so code 3 reads +2 as design §2 says)."""
    N, Kp = packed.shape[0], packed.shape[1] * 4
    runs = packed.reshape(N, Kp // 128, 1, 32).long()
    codes = (runs >> torch.tensor([0, 2, 4, 6]).view(1, 1, 4, 1)) & 3
    return codes.reshape(N, Kp)[:, :K] - 1


def _lut16_weights(layout, N: int, K: int, torch):
    """int64 weights [N, K] of a lut16 layout (lut16.h's byte map; code 3 reads +2 as in BT2)."""
    Np, Kp = layout.shape[0], layout.shape[1] * 4
    b = layout.reshape(Np // 16, Kp // 8, 2, 16).long()  # [block, quad, h, row]
    codes = torch.empty(Np // 16, Kp // 8, 8, 16, dtype=torch.long)  # [block, quad, j, row]
    for j in range(8):
        codes[:, :, j, :] = (b[:, :, (j // 2) % 2, :] >> (4 * (j // 4) + 2 * (j % 2))) & 3
    return codes.permute(0, 3, 1, 2).reshape(Np, Kp)[:N, :K] - 1


def _trit5_weights(layout, K: int, torch):
    """int64 weights [N, K] of a trit5 layout (trit5.h: byte j of 64-byte block b holds digit
    i = (3 * (byte * 3^i mod 256)) >> 8 of weight k = 320 b + 64 i + j)."""
    N, width = layout.shape
    blocks = layout.long().reshape(N, width // 64, 1, 64)
    digits = (3 * (blocks * torch.tensor([1, 3, 9, 27, 81]).view(1, 1, 5, 1) % 256)) >> 8
    return digits.reshape(N, width * 5)[:, :K] - 1


def check_reference(case: dict, args: list, out: list, torch) -> str | None:
    """None if the canonical (contiguous CPU) result matches the reference, else why not."""
    from bitttt import reference
    op, fills = case["op"], {n: a["fill"] for n, a in case["args"].items() if isinstance(a, dict) and "fill" in a}
    plain = all(f in ("randn", "small", "scale", "lr", "int8", "int8q", "bt2", "bytes", "zeros") for f in fills.values())
    if op == "ternary_repack_lut16":
        (packed,) = args
        N, Kp = packed.shape[0], packed.shape[1] * 4
        same = torch.equal(_lut16_weights(out[0], N, Kp, torch), _bt2_weights(packed, Kp, torch))
        return None if same else "the layout holds other weights than packed"
    if op == "ternary_matmul_int8_lut16":
        x, layout, N = args
        expected = x.long() @ _lut16_weights(layout, N, x.shape[1], torch).T
        return None if torch.equal(out[0].long(), expected) else "differs from the int64 reference"
    if op == "ternary_linear_lut16":  # as ternary_linear, over the weights the layout holds
        x, layout, w_scale, bias = args
        packed = ops_pack(_lut16_weights(layout, w_scale.shape[0], x.shape[-1], torch), torch)
        return check_reference({**case, "op": "ternary_linear"}, [x, packed, w_scale, bias], out, torch)
    if op == "ternary_repack_trit5":
        packed, K = args
        bt2 = _bt2_weights(packed, K, torch).clamp(max=1)  # code 3 becomes +1 (trit5.h)
        same = torch.equal(_trit5_weights(out[0], K, torch), bt2)
        return None if same else "the layout holds other weights than packed"
    if op == "ternary_matmul_int8_trit5":
        x, layout, N = args
        expected = x.long() @ _trit5_weights(layout, x.shape[1], torch).T
        return None if torch.equal(out[0].long(), expected) else "differs from the int64 reference"
    if op == "ternary_linear_trit5":  # as ternary_linear, over the weights the layout holds
        x, layout, w_scale, bias = args
        packed = ops_pack(_trit5_weights(layout, x.shape[-1], torch), torch)
        return check_reference({**case, "op": "ternary_linear"}, [x, packed, w_scale, bias], out, torch)
    if op == "ternary_matmul_int8":
        x, packed = args
        expected = x.long() @ _bt2_weights(packed, x.shape[1], torch).T
        return None if torch.equal(out[0].long(), expected) else "differs from the int64 reference"
    if op == "int8_matmul":
        x, w = args
        expected = x.long() @ w.long().T
        return None if torch.equal(out[0].long(), expected) else "differs from the int64 reference"
    if op == "half_matmul":  # float32 sums: within K * 2**-24 * sum |x| |w| of float64's
        x, w = args
        if not plain:
            return None  # extreme values: inf - inf and overflow depend on the summation order
        bound = x.shape[1] * 2.0**-24 * (x.double().abs() @ w.double().abs().T)
        ok = bool(((out[0].double() - x.double() @ w.double().T).abs() <= bound).all())
        return None if ok else "differs from the float64 reference by more than float32 summation"
    if op == "ternary_linear":
        x, packed, w_scale, bias = args
        if not plain:
            return None  # extreme values: the epilogue's rounding order may flip inf/finite
        if x.shape[-1] == 0:  # design §2: exactly zeros plus the bias
            expected = torch.zeros(out[0].shape, dtype=torch.float32) + (0 if bias is None else bias.float())
            return None if torch.equal(out[0], expected.to(x.dtype)) else "K = 0 is not zeros + bias"
        q = _bt2_weights(packed, x.shape[-1], torch).to(torch.int8)
        expected = reference.ternary_linear(x, q, w_scale, bias)
        e, a = expected.float(), out[0].float()
        scale = e.abs().max().item() if e.numel() else 0.0
        rtol = 1e-5 if x.dtype == torch.float32 else 2.0**-7
        ok = torch.allclose(a, e, rtol=rtol, atol=1e-5 * scale + 1e-30, equal_nan=True)
        return None if ok else f"differs from reference.ternary_linear by {(a - e).abs().max().item()}"
    if op in ("ttt_linear", "ttt_linear_decode_") and plain:
        return _check_ttt_reference(op, args, out, torch)
    if op in ("ttt_mlp", "ttt_mlp_decode_") and plain:
        return _check_ttt_mlp_reference(op, args, out, torch)
    if op == "fake_quant_activations":  # bit for bit the straight-through composition
        x_q, s_x = reference.quantize_activations(args[0])
        expected = args[0] + (x_q.float() / s_x.unsqueeze(-1) - args[0])
        return None if _same_bits(out[0], expected, torch) else "differs from the composition of the reference"
    if op == "fake_quant_weight":  # dq = round(w / s).clamp(-1, 1) * s, through w + (dq - w)
        w, s = args[0], args[1].reshape(())
        expected = w + (torch.round(w / s).clamp(-1, 1) * s - w)
        return None if _same_bits(out[0], expected, torch) else "differs from round(w / s).clamp(-1, 1) * s"
    if op == "fake_quant_activations_int8":  # fake_quant_activations' bits, the codes and 1 / s_x
        x_q, s_x = reference.quantize_activations(args[0])
        expected = [args[0] + (x_q.float() / s_x.unsqueeze(-1) - args[0]), x_q, torch.ones_like(s_x) / s_x]
        same = all(_same_bits(o, e, torch) for o, e in zip(out, expected))
        return None if same else "differs from the reference's x_dq, x_q or 1 / s_x"
    if op == "fake_quant_weight_int8":  # fake_quant_weight's bits and the codes (0 where w / s is NaN)
        w, s = args[0], args[1].reshape(())
        q = torch.round(w / s).clamp(-1, 1)
        expected = [w + (q * s - w), q.nan_to_num(0.0).to(torch.int8)]
        same = all(_same_bits(o, e, torch) for o, e in zip(out, expected))
        return None if same else "differs from round(w / s).clamp(-1, 1) and its dequantization"
    if op == "int8_gemm_epilogue":  # float(acc) * w_scale * x_scale[m] (+ bias[n]), float32 bits
        acc, x_scale, w_scale, bias = args
        expected = acc.float() * w_scale.reshape(()) * x_scale.unsqueeze(1)
        if bias is not None:
            expected = expected + bias
        return None if _same_bits(out[0], expected, torch) else "differs from float(acc) * w_scale * x_scale + bias"
    return None


def ops_pack(q, torch):
    """BT2 bytes of int64 weights in [-1, 2] (+2: a code 3, kept as it is)."""
    N, K = q.shape
    Kp = pad(K)
    codes = torch.ones(N, Kp, dtype=torch.long)
    codes[:, :K] = q + 1
    runs = codes.reshape(N, Kp // 128, 4, 32)
    return (runs[:, :, 0] | runs[:, :, 1] << 2 | runs[:, :, 2] << 4 | runs[:, :, 3] << 6).reshape(N, Kp // 4).to(torch.uint8)


def _check_ttt_mlp_reference(op: str, args: list, out: list, torch) -> str | None:
    from bitttt import reference
    a = [t.double() if isinstance(t, torch.Tensor) else t for t in args[:16]]
    q, k, v, lr, ts, state, pos, ln_w, ln_b = *a[:5], a[5:13], a[13], a[14], a[15]
    if op == "ttt_mlp_decode_":
        q, k, v, lr = q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), lr.unsqueeze(2)
    ref_out, ref_state = reference.ttt_mlp(q, k, v, lr, ts, None, None, None, None, ln_w, ln_b,
                                           state=(*state, pos))
    if op == "ttt_mlp_decode_":
        got, want = [out[0]], [ref_out.squeeze(2)]  # the in-place state: compared via ttt_mlp
    else:
        got, want = out[:9], [ref_out, *ref_state[:8]]
    if args[0].dtype == torch.float32 and args[0].shape[-1] < 8:
        return None  # as TTT-Linear: a LayerNorm over 1-7 values amplifies float32 rounding
    tol = 1e-8 if args[0].dtype == torch.float64 else 2e-3
    names = ("out", "W1", "b1", "W2", "b2", "gW1", "gb1", "gW2", "gb2")
    for name, g, w in zip(names, got, want):
        if not torch.allclose(g.double(), w, rtol=tol, atol=tol, equal_nan=True):
            return f"{name} differs from reference.ttt_mlp by {(g.double() - w).abs().max().item()}"
    return None


def _check_ttt_reference(op: str, args: list, out: list, torch) -> str | None:
    from bitttt import reference
    q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b = [a.double() if isinstance(a, torch.Tensor) else a
                                                     for a in args[:12]]
    if op == "ttt_linear_decode_":
        q, k, v, lr = q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), lr.unsqueeze(2)
    ref_out, state = reference.ttt_linear(q, k, v, lr, ts, None, None, ln_w, ln_b, state=(W, c, gW, gc, pos))
    if op == "ttt_linear_decode_":
        ref_out = ref_out.squeeze(2)
        got = [out[0]]
        want = [ref_out]
    else:
        got, want = out[:5], [ref_out, *state[:4]]
    if args[0].dtype == torch.float32 and args[0].shape[-1] < 8:
        return None  # a LayerNorm over 1-7 values amplifies float32 rounding past any useful bound
    tol = 1e-8 if args[0].dtype == torch.float64 else 2e-3
    for name, g, w in zip(("out", "W", "c", "gW", "gc"), got, want):
        if not torch.allclose(g.double(), w, rtol=tol, atol=tol, equal_nan=True):
            return f"{name} differs from reference.ttt_linear by {(g.double() - w).abs().max().item()}"
    return None


def run_case(case: dict, torch) -> dict:
    """Runs one case; returns {"result": ok|raised|skip|FAIL kinds, "detail": ...}."""
    op = getattr(torch.ops.bitttt, case["op"])
    try:
        args = build_args(case, torch)
    except Exception as e:  # the recipe is not a tensor torch can make (e.g. numel > 2^63)
        return {"result": "skip", "detail": f"{type(e).__name__}: {e}"[:200]}
    # Copies made before the call: ttt_linear_decode_ updates its state in place. A huge
    # expanded input may not fit as a copy: then only the op's own answer is checked.
    canon_args = None
    if _on_cpu(args, torch):
        try:
            canon_args = [_canonical(a, torch) for a in args]
        except RuntimeError:
            pass
    outcome = _call(op, args)
    in_place = IN_PLACE_INPUTS.get(case["op"])
    if outcome["result"] == "ok" and in_place:
        outcome["out"] += args[in_place]  # the updated state is an output too
    if outcome["result"] != "ok":
        if outcome["result"] == "raised" and _on_cpu(args, torch) and not _out_of_memory(outcome):
            return _check_meta_agrees(op, args, outcome, None, torch)
        return outcome
    out = outcome.pop("out")
    metas = [isinstance(a, torch.Tensor) and a.is_meta for a in args]
    if any(metas):
        if not all(isinstance(a, torch.Tensor) and a.is_meta or not isinstance(a, torch.Tensor) for a in args):
            return {"result": "FAIL-wrong", "detail": "a call mixing meta and CPU tensors returned a result"}
        if not all(o.is_meta for o in out):
            return {"result": "FAIL-wrong", "detail": "meta inputs gave a non-meta output"}
        return outcome
    # CPU: the same call on contiguous copies gives the same bits, and matches the reference.
    if canon_args is None:
        return _check_meta_agrees(op, args, outcome, out, torch)
    ref_args = [_canonical(a, torch) for a in canon_args]
    canon = _call(op, canon_args)
    if canon["result"] == "ok" and in_place:
        canon["out"] += canon_args[in_place]
    if canon["result"] != "ok":
        return {"result": "FAIL-wrong", "detail": f"accepted, but contiguous copies are refused: {canon['detail']}"}
    for i, (a, b) in enumerate(zip(out, canon["out"])):
        if not _same_bits(a, b, torch):
            return {"result": "FAIL-wrong", "detail": f"output {i} changes with the inputs' layout"}
    why = check_reference(case, ref_args, canon["out"], torch)
    if why:
        return {"result": "FAIL-wrong", "detail": why}
    return _check_meta_agrees(op, args, outcome, out, torch)


def _on_cpu(args, torch) -> bool:
    return all(a.device.type == "cpu" for a in args if isinstance(a, torch.Tensor))


# A refusal for want of memory (a huge expanded input that the op must copy) has no
# counterpart on meta tensors, which allocate nothing.
# Through the stable ABI, an allocation that fails inside aten::contiguous / new_zeros /
# new_empty surfaces as "API call failed" naming that call.
MEMORY_ERRORS = ("can't allocate memory", "not enough memory", "Storage size calculation overflowed",
                 "out of memory", '"aten::contiguous", "", stack.data()', '"aten::new_zeros", "", stack.data()',
                 '"aten::new_empty", "", stack.data()', '"aten::clone", "", stack.data()')


def _out_of_memory(outcome: dict) -> bool:
    return any(m in outcome.get("detail", "") for m in MEMORY_ERRORS)


def _to_meta(a, torch):
    if not isinstance(a, torch.Tensor):
        return a
    return torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta")  # .to() loses strides


def _check_meta_agrees(op, args, outcome, out, torch) -> dict:
    """The fake kernel (meta tensors) must accept/refuse like the real one, with the same metadata."""
    meta = _call(op, [_to_meta(a, torch) for a in args])
    if (meta["result"] == "ok") != (outcome["result"] == "ok"):
        what = "accepts" if meta["result"] == "ok" else f"refuses ({meta.get('detail', '')[:150]})"
        return {"result": "FAIL-fake", "detail": f"the fake kernel {what} what the CPU kernel "
                f"{'accepts' if out is not None else 'refuses: ' + outcome['detail'][:150]}"}
    if out is not None:
        for i, (a, b) in enumerate(zip(out, meta["out"])):
            if a.shape != b.shape or a.dtype != b.dtype:
                return {"result": "FAIL-fake", "detail": f"output {i}: fake {tuple(b.shape)} {b.dtype}, "
                        f"real {tuple(a.shape)} {a.dtype}"}
    return {k: v for k, v in outcome.items() if k != "out"}


def _call(op, args) -> dict:
    try:
        r = op(*args)
    except Exception as e:  # classify: a clean exception has an accepted type and a message
        name, msg = type(e).__name__, str(e).strip()
        if name in OK_EXCEPTIONS and msg:
            return {"result": "raised", "detail": f"{name}: {' | '.join(msg.splitlines())[-400:]}"}
        return {"result": "FAIL-exception", "detail": f"{name}: {msg[:300]!r}"}
    return {"result": "ok", "out": _outputs(r)}


def _harness_hook(case: dict) -> None:
    """Cases "segfault" and "hang" test the harness itself (test_worker_reports_*)."""
    if case["op"] in ("segfault", "hang"):
        print(json.dumps({"id": case["id"], "event": "begin"}), flush=True)
    if case["op"] == "segfault":
        import ctypes

        ctypes.string_at(0)
    if case["op"] == "hang":
        import time

        time.sleep(3600)


def worker_main() -> None:
    import faulthandler

    faulthandler.enable()
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    torch = None
    cases = json.load(sys.stdin)
    for case in cases:
        _harness_hook(case)
        if torch is None:  # imported at the first real case: the harness's own tests stay fast
            print(json.dumps({"id": case["id"], "event": "importing"}), flush=True)
            import torch

            import bitttt.ops  # noqa: F401  (registers torch.ops.bitttt.*)
        print(json.dumps({"id": case["id"], "event": "begin"}), flush=True)
        try:
            res = run_case(case, torch)
        except Exception as e:  # a bug in the checks themselves, or an exception from a check
            res = {"result": "FAIL-exception", "detail": f"{type(e).__name__} while checking: {e}"[:400]}
        print(json.dumps({"id": case["id"], "event": "end", **res}), flush=True)


# ---------------------------------------------------------------------------------------
# The parent: batches of cases through workers; crashes and hangs become failures
# ---------------------------------------------------------------------------------------


def run_cases(cases: list[dict], timeout_s: float = CASE_TIMEOUT_S) -> list[dict]:
    """Runs every case in workers; returns one result dict per case (in order)."""
    results: dict[str, dict] = {}
    pending = list(cases)
    while pending:
        done_ids, crash = _run_worker(pending, results, timeout_s)
        if crash is None:
            break
        results[crash["id"]] = crash
        done_ids.add(crash["id"])
        pending = [c for c in pending if c["id"] not in done_ids]
    return [results.get(c["id"], {"id": c["id"], "result": "FAIL-lost", "detail": "no answer"}) for c in cases]


def _run_worker(cases: list[dict], results: dict, timeout_s: float):
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    err: list[str] = []
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout] + [lines.put(None)], daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    proc.stdin.write(json.dumps(cases))
    proc.stdin.close()
    done: set[str] = set()
    in_flight, starting = None, True
    try:
        while True:
            try:
                # Python's start and torch's import get their own allowance.
                line = lines.get(timeout=timeout_s + (WORKER_START_S if starting else 0))
            except queue.Empty:
                proc.kill()
                proc.wait()
                if in_flight is None and len(done) == len(cases):
                    return done, None  # every case answered; only the exit was slow
                return done, {"id": in_flight or cases[len(done)]["id"], "result": "FAIL-hang",
                              "detail": f"no answer within {timeout_s} s"}
            if line is None:
                break
            msg = json.loads(line)
            starting = msg["event"] == "importing"
            if msg["event"] in ("begin", "importing"):
                in_flight = msg["id"]
            else:
                results[msg["id"]] = msg
                done.add(msg["id"])
                in_flight = None
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if in_flight is None and rc == 0:
        return done, None
    tail = "".join(err)[-1500:]
    return done, {"id": in_flight or "?", "result": "FAIL-crash", "detail": f"worker exit {rc}; stderr: {tail}"}


if __name__ == "__main__" and "--worker" in sys.argv:
    worker_main()
    sys.exit(0)

# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------

import pytest  # noqa: E402


def _namespace_ops() -> list[str]:
    import torch

    import bitttt.ops  # noqa: F401

    return sorted(s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("bitttt::"))


def test_every_op_has_a_fuzzer():
    # A new op in the namespace without a case generator here fails this test.
    assert set(_namespace_ops()) == set(BASES) | set(NOT_FUZZED), \
        "add a base_<op> generator for every torch.ops.bitttt op"


@pytest.mark.slow
@pytest.mark.parametrize("op", sorted(BASES))
def test_fuzz_op(op, record_property):
    cases = generate(op, max(1, int(CASES_PER_OP[op] * SCALE)), SEED)
    results = run_cases(cases)
    by_id = {c["id"]: c for c in cases}
    counts: dict[str, int] = {}
    for r in results:
        counts[r["result"]] = counts.get(r["result"], 0) + 1
    record_property("fuzz_counts", json.dumps(counts))
    print(f"\nfuzz {op}: {len(cases)} cases: {counts}")
    failures = [r for r in results if r["result"].startswith("FAIL")]
    report = "\n".join(f"{r['id']} {r['result']}: {r.get('detail')}\n  case: {json.dumps(by_id[r['id']])}"
                       for r in failures[:10])
    assert not failures, f"{len(failures)} of {len(cases)} cases failed (first 10):\n{report}"
    assert counts.get("ok", 0) > 0 and counts.get("raised", 0) > 0, counts  # the cases reach both outcomes


def test_worker_reports_crashes_and_hangs():
    # The harness itself: a case that kills its worker or never answers is reported with its
    # id, and the cases after it still run in a fresh worker.
    crash = {"id": "crash", "op": "segfault", "args": {}, "why": []}
    hang = {"id": "hang", "op": "hang", "args": {}, "why": []}
    results = run_cases([crash, hang, *generate("ternary_matmul_int8", 3, SEED)], timeout_s=5)
    assert results[0]["result"] == "FAIL-crash" and "Segmentation fault" in results[0]["detail"]
    assert results[1]["result"] == "FAIL-hang"
    assert all(not r["result"].startswith("FAIL") for r in results[2:]), results[2:]
