"""torch.ops.bitttt.ttt_linear / ttt_linear_backward / ttt_linear_decode_ on CUDA against the
CPU op (design §3): outputs, state, checkpoints, unaligned pos, prefill + decode, chunking,
gradients of all 11 inputs, gradcheck, opcheck, TTTLinear, bad inputs.

Skipped with the reason (tests/cuda/conftest.py) without a CUDA device or CUDA kernels.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from bitttt import ops

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "ops"))
from test_ttt_linear import CASES, GRADCHECK_CASES, NAMES, both, call, opcheck_args  # noqa: E402
from test_ttt_reference import sample_inputs  # noqa: E402

F64_TOL = dict(rtol=1e-10, atol=1e-10)  # same math, another summation order
F32_TOL = dict(rtol=1e-4, atol=1e-4)    # float32 rounding through LayerNorms on O(1) values
GRAD_F64_TOL = dict(rtol=1e-9, atol=1e-9)  # as the CPU op against the reference
DEV = "cuda"
ARG_NAMES = ("q", "k", "v", "lr", "token_scale", "W", "c", "gW", "gc", "pos", "ln_w", "ln_b")  # opcheck_args()


@pytest.fixture(autouse=True)
def no_tf32():
    """The layer tests compare float32 projections and convs with the CPU: no TF32 rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def to_dev(xs, device=DEV):
    return [x.to(device) if isinstance(x, torch.Tensor) else x for x in xs]


def assert_all_close(got, want, names, **tol):
    for name, a, b_ in zip(names, got, want):
        assert a.device.type == DEV, f"{name} on {a.device}"
        torch.testing.assert_close(a.cpu(), b_.cpu(), msg=lambda m, name=name: f"{name}: {m}", **tol)


def raw_args(B, D, b, T, pre, dtype, requires_grad=False):
    """Leaves (q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b) on the CPU after `pre` tokens, and pos."""
    return both(sample_inputs(B=B, T=pre + T, D=D, b=b), pre, dtype, requires_grad=requires_grad)


def op_call(leaves, pos, ckpt_every):
    q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b = leaves
    return torch.ops.bitttt.ttt_linear(q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b, ckpt_every)


@pytest.mark.parametrize("ckpt_every", [0, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,D,b,T,pre", CASES, ids=lambda x: str(x))
def test_forward_and_checkpoints_match_cpu(dtype, B, D, b, T, pre, ckpt_every):
    leaves, pos = raw_args(B, D, b, T, pre, dtype)
    want = op_call(leaves, pos, ckpt_every)
    got = op_call(to_dev(leaves), pos, ckpt_every)
    tol = F64_TOL if dtype == torch.float64 else F32_TOL
    assert got[5].shape == want[5].shape and got[6].shape == want[6].shape
    assert_all_close(got, want, ("out", "W", "c", "gW", "gc", "ckpt_W", "ckpt_c"), **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("D,b", [(64, 16), (128, 16), (64, 64), (128, 64), (33, 5)])
def test_large_and_odd_shapes_match_cpu(dtype, D, b):
    """Head sizes and mini-batches at the limits the shared memory allows (or a clear error)."""
    leaves, pos = raw_args(1, D, b, 2 * b + 3, 7, dtype)
    want = op_call(leaves, pos, 2)
    try:
        got = op_call(to_dev(leaves), pos, 2)
    except RuntimeError as e:  # only when the device has too little shared memory for this shape
        assert "bytes of shared memory per block" in str(e)
        pytest.skip(str(e))
    tol = F64_TOL if dtype == torch.float64 else dict(rtol=3e-4, atol=3e-4)
    assert_all_close(got, want, ("out", "W", "c", "gW", "gc", "ckpt_W", "ckpt_c"), **tol)


def test_zero_tokens_keep_the_state():
    leaves, pos = raw_args(1, 4, 4, 0, 2, torch.float64)
    out, W, c, gW, gc, ckW, ckc = op_call(to_dev(leaves), pos, 2)
    assert out.shape == (1, 2, 0, 4) and ckW.shape == (1, 2, 0, 4, 4)
    assert_all_close((W, c, gW, gc), leaves[5:9], ("W", "c", "gW", "gc"), rtol=0, atol=0)


@pytest.mark.parametrize("D", [8, 32, 64])
@pytest.mark.parametrize("p", [0, 1, 15, 16, 17, 31])
def test_prefill_then_decode_equals_one_call(p, D):
    args = to_dev(sample_inputs(B=2, T=40, D=D, b=16))
    q, k, v, lr, ts, W0, b0, ln_w, ln_b = args
    out_all, st_all = ops.ttt_linear(*args)
    out_p, st = ops.ttt_linear(q[:, :, :p], k[:, :, :p], v[:, :, :p], lr[:, :, :p], *args[4:])
    st = ops.TTTState(*(x.contiguous() for x in st[:4]), st.pos)  # p = 0: W is the expanded W0
    outs = [out_p]
    for t in range(p, q.shape[2]):
        o, st = ops.ttt_linear_decode_(q[:, :, t], k[:, :, t], v[:, :, t], lr[:, :, t], ts, st, ln_w, ln_b)
        outs.append(o.unsqueeze(2))
    torch.testing.assert_close(torch.cat(outs, 2), out_all, **F64_TOL)
    for name, a, b_ in zip(("W", "c", "gW", "gc"), st[:4], st_all[:4]):
        torch.testing.assert_close(a, b_, msg=lambda m, name=name: f"state {name}: {m}", **F64_TOL)
    assert st.pos == st_all.pos


def test_decode_matches_cpu_decode_in_float32():
    args = [a.float() for a in sample_inputs(B=2, H=3, T=21, D=64, b=16)]
    q, k, v, lr, ts, W0, b0, ln_w, ln_b = args
    _, st = ops.ttt_linear(q[:, :, :20], k[:, :, :20], v[:, :, :20], lr[:, :, :20], *args[4:])
    st_c = ops.TTTState(*(x.clone() for x in st[:4]), st.pos)
    st_g = ops.TTTState(*(x.to(DEV) for x in st[:4]), st.pos)
    tok = [x[:, :, 20] for x in (q, k, v, lr)]
    out_c, st_c = ops.ttt_linear_decode_(*tok, ts, st_c, ln_w, ln_b)
    out_g, st_g = ops.ttt_linear_decode_(*to_dev(tok), ts.to(DEV), st_g, ln_w.to(DEV), ln_b.to(DEV))
    assert_all_close((out_g, *st_g[:4]), (out_c, *st_c[:4]), ("out", "W", "c", "gW", "gc"), **F32_TOL)


def test_chunked_calls_from_unaligned_offsets():
    args = to_dev(sample_inputs(B=2, T=50, D=8, b=16))
    q, k, v, lr = args[:4]
    out_all, st_all = ops.ttt_linear(*args)
    st, outs, cuts = None, [], [0, 3, 21, 22, 37, 50]
    for a, e in zip(cuts[:-1], cuts[1:]):
        o, st = ops.ttt_linear(q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], lr[:, :, a:e], *args[4:], state=st)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 2), out_all, **F64_TOL)
    for a, b_ in zip(st[:4], st_all[:4]):
        torch.testing.assert_close(a, b_, **F64_TOL)


def test_non_contiguous_inputs():
    leaves, pos = raw_args(2, 8, 4, 13, 3, torch.float64)
    want = op_call(leaves, pos, 2)
    dev = to_dev(leaves)
    dev[0] = dev[0].transpose(2, 3).contiguous().transpose(2, 3)  # q with swapped strides
    dev[5] = dev[5].transpose(2, 3).contiguous().transpose(2, 3)  # W likewise
    got = op_call(dev, pos, 2)
    assert_all_close(got, want, ("out", "W", "c", "gW", "gc", "ckpt_W", "ckpt_c"), **F64_TOL)


@pytest.mark.parametrize("ckpt_every", [1, 2, 4])
@pytest.mark.parametrize("B,D,b,T,pre", CASES, ids=lambda x: str(x))
def test_gradients_match_cpu(ckpt_every, B, D, b, T, pre):
    """All 11 gradients, through the wrapper's autograd, with a loss on out and the whole state."""
    def grads(device):
        leaves, pos = raw_args(B, D, b, T, pre, torch.float64)
        leaves = [x.detach().to(device).requires_grad_(True) for x in leaves]
        out, st = call(ops.ttt_linear, leaves, pos, ckpt_every=ckpt_every)
        g = torch.Generator().manual_seed(1)
        loss = sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype).to(device)).sum() for x in (out, *st[:4]))
        return torch.autograd.grad(loss, leaves)

    assert_all_close(grads(DEV), grads("cpu"), [f"d{n}" for n in NAMES], **GRAD_F64_TOL)


def test_backward_op_float32_matches_cpu():
    leaves, pos = raw_args(2, 64, 16, 37, 5, torch.float32)
    fwd = op_call(leaves, pos, 2)
    g = torch.Generator().manual_seed(2)
    gout = [torch.randn(x.shape, generator=g) for x in fwd[:5]]

    def bwd(xs, f, go):
        q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b = xs
        return torch.ops.bitttt.ttt_linear_backward(*go, q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b, f[5], f[6], 2)

    want = bwd(leaves, fwd, gout)
    got = bwd(to_dev(leaves), to_dev(fwd), to_dev(gout))
    assert_all_close(got, want, [f"d{n}" for n in NAMES], rtol=2e-3, atol=2e-3)


def test_backward_is_deterministic():
    leaves, pos = raw_args(2, 32, 16, 40, 3, torch.float32)
    dev = [x.to(DEV).requires_grad_(True) for x in leaves]
    runs = []
    for _ in range(2):
        out, st = call(ops.ttt_linear, dev, pos, ckpt_every=2)
        runs.append(torch.autograd.grad(out.square().sum() + st.W.sum(), dev))
    for name, a, b_ in zip(NAMES, *runs):
        assert torch.equal(a, b_), f"d{name} differs between two runs"


@pytest.mark.parametrize("B,D,b,T,pre", GRADCHECK_CASES[:4], ids=lambda x: str(x))
def test_gradcheck_on_cuda(B, D, b, T, pre):
    leaves, pos = raw_args(B, D, b, T, pre, torch.float64)
    leaves = [x.detach().to(DEV).requires_grad_(True) for x in leaves]

    def fn(*xs):
        out, st = call(ops.ttt_linear, list(xs), pos, ckpt_every=2)
        return out, *st[:4]

    assert torch.autograd.gradcheck(fn, leaves, fast_mode=T > 5, atol=1e-7, rtol=1e-6)


def test_opcheck_ttt_linear_on_cuda():
    args = to_dev(opcheck_args())
    for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11):
        args[i].requires_grad_(True)
    torch.library.opcheck(torch.ops.bitttt.ttt_linear.default, tuple(args[:12]) + (2,))


def test_opcheck_ttt_linear_decode_on_cuda():
    q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b = to_dev(opcheck_args(T=1))
    torch.library.opcheck(torch.ops.bitttt.ttt_linear_decode_.default,
                          (q[:, :, 0], k[:, :, 0], v[:, :, 0], lr[:, :, 0], ts, W, c, gW, gc, pos, ln_w, ln_b))


@pytest.mark.parametrize("use_conv,use_gate", [(False, False), (True, True)])
def test_ttt_linear_layer_on_cuda_matches_cpu(use_conv, use_gate):
    from bitttt.nn import TTTLinear

    torch.manual_seed(0)
    # Full-precision projections: the ternary fake quant may round a borderline value differently
    # on the two devices; the TTT op is what this compares.
    kw = dict(mini_batch_size=16, use_conv=use_conv, use_gate=use_gate, ternary=False)
    layer = TTTLinear(64, 4, **kw)
    layer_g = TTTLinear(64, 4, **kw).to(DEV)
    layer_g.load_state_dict(layer.state_dict())
    x = torch.randn(2, 37, 64)
    xg = x.to(DEV).requires_grad_(True)
    x.requires_grad_(True)
    y, yg = layer(x), layer_g(xg)
    torch.testing.assert_close(yg.cpu(), y, rtol=1e-3, atol=1e-3)
    y.square().sum().backward()
    yg.square().sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), x.grad, rtol=1e-2, atol=1e-2)
    for (name, p), pg in zip(layer.named_parameters(), layer_g.parameters()):
        assert pg.grad is not None, name
        torch.testing.assert_close(pg.grad.cpu(), p.grad, rtol=1e-2, atol=1e-2, msg=lambda m, n=name: f"{n}: {m}")


def test_ttt_linear_layer_step_on_cuda_equals_forward():
    from bitttt.nn import TTTLinear

    torch.manual_seed(0)
    layer = TTTLinear(64, 4, mini_batch_size=16, ternary=False).to(DEV).eval()
    x = torch.randn(1, 20, 64, device=DEV)
    with torch.no_grad():
        y = layer(x)
        cache = layer.init_cache()
        ys = [layer.step(x[:, t], cache) for t in range(x.shape[1])]
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-4, atol=1e-4)


def test_bfloat16_autocast_runs_in_float32():
    args = [a.float() for a in to_dev(sample_inputs(B=1, T=20, D=32, b=16))]
    q, k, v, lr = (x.bfloat16() for x in args[:4])
    out, st = ops.ttt_linear(q, k, v, lr, *args[4:])
    out_r, _ = ops.ttt_linear(q.float(), k.float(), v.float(), lr.float(), *args[4:])
    assert out.dtype == torch.bfloat16 and st.W.dtype == torch.float32 and out.device.type == DEV
    torch.testing.assert_close(out, out_r.bfloat16())


@pytest.mark.parametrize("which", [0, 1, 4, 5, 8, 10, 11], ids=lambda i: ARG_NAMES[i])
def test_mixed_devices_raise(which):
    """One input on the CPU, the rest on CUDA: a RuntimeError (the CUDA kernel's check names it)."""
    args = to_dev(opcheck_args())
    args[which] = args[which].cpu()
    with pytest.raises(RuntimeError):
        torch.ops.bitttt.ttt_linear(*args)


def test_mixed_devices_message_names_the_tensor():
    args = to_dev(opcheck_args())
    args[6] = args[6].cpu()  # c
    with pytest.raises(RuntimeError, match=r"c must be on q's device cuda:\d+, got cpu"):
        torch.ops.bitttt.ttt_linear(*args)


def test_decode_rejects_non_contiguous_state():
    q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b = to_dev(opcheck_args(T=1))
    with pytest.raises(RuntimeError, match="must be contiguous"):
        torch.ops.bitttt.ttt_linear_decode_(q[:, :, 0], k[:, :, 0], v[:, :, 0], lr[:, :, 0], ts,
                                            W.transpose(-1, -2), c, gW, gc, pos, ln_w, ln_b)


def test_too_large_head_raises_clearly():
    leaves, pos = raw_args(1, 512, 16, 3, 0, torch.float64)
    with pytest.raises(RuntimeError, match="bytes of shared memory per block"):
        op_call(to_dev(leaves), pos, 0)


def test_ttt_linear_layer_under_bf16_autocast():
    """Under CUDA autocast the projections run in bfloat16; the op computes in float32 and the
    layer's output and gradients stay finite and close to the float32 run."""
    from bitttt.nn import TTTLinear

    torch.manual_seed(0)
    layer = TTTLinear(64, 4, mini_batch_size=16, ternary=False).to(DEV)
    x = torch.randn(2, 40, 64, device=DEV)
    y32 = layer(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    assert layer.W0.dtype == torch.float32
    torch.testing.assert_close(y.float(), y32, rtol=5e-2, atol=5e-2)
    y.float().square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
