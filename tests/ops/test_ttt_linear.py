"""torch.ops.bitttt.ttt_linear / ttt_linear_decode_ (design §3) against the pure-torch
reference: forward, state, gradients, decode, chunking, threads, opcheck, bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bitttt import ops
from bitttt import reference as ref

sys.path.insert(0, os.path.dirname(__file__))
from test_ttt_reference import sample_inputs  # noqa: E402

F64_TOL = dict(rtol=1e-10, atol=1e-10)  # same math, different summation order
F32_TOL = dict(rtol=1e-4, atol=1e-4)    # float32 rounding through LayerNorms on O(1) values
NAMES = ("q", "k", "v", "lr", "token_scale", "W", "c", "gW", "gc", "ln_w", "ln_b")


def split_state(args, pre, state_dtype=None):
    """Runs the reference over the first `pre` tokens: returns the remaining inputs and that state."""
    q, k, v, lr = args[:4]
    _, st = ref.ttt_linear(q[:, :, :pre], k[:, :, :pre], v[:, :, :pre], lr[:, :, :pre], *args[4:])
    rest = [x[:, :, pre:].clone() for x in (q, k, v, lr)]
    W, c, gW, gc, pos = st
    return rest, ops.TTTState(*(x.clone().contiguous() for x in (W, c, gW, gc)), pos)


def both(args, pre, dtype=torch.float64, ckpt_every=ops.TTT_CKPT_EVERY, requires_grad=False):
    """Inputs for the op and the reference: tokens after `pre`, starting from the state there."""
    args = [a.to(dtype) for a in args]
    (q, k, v, lr), st = split_state(args, pre)
    leaves = [q, k, v, lr, args[4].clone(), st.W, st.c, st.gW, st.gc, args[7].clone(), args[8].clone()]
    for x in leaves:
        x.requires_grad_(requires_grad)
    return leaves, st.pos


def call(fn, leaves, pos, **kw):
    q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b = leaves
    if fn is ref.ttt_linear:
        return ref.ttt_linear(q, k, v, lr, ts, None, None, ln_w, ln_b, state=(W, c, gW, gc, pos))
    return ops.ttt_linear(q, k, v, lr, ts, None, None, ln_w, ln_b, state=ops.TTTState(W, c, gW, gc, pos), **kw)


def assert_state_close(s1, s2, **tol):
    for name, a, b_ in zip(("W", "c", "gW", "gc"), s1[:4], s2[:4]):
        torch.testing.assert_close(a, b_, msg=lambda m, name=name: f"state {name}: {m}", **tol)
    assert s1[4] == s2[4]


CASES = [  # (B, D, b, T, pre): pre tokens of the reference give the incoming state
    (2, 4, 4, 33, 0), (1, 8, 16, 19, 5), (2, 32, 16, 40, 7), (1, 64, 16, 33, 17), (1, 16, 16, 5, 3),
    (1, 32, 16, 17, 0), (1, 32, 16, 1, 15),  # one-token segments on the fused single-token path
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,D,b,T,pre", CASES, ids=lambda x: str(x))
def test_forward_matches_reference(dtype, B, D, b, T, pre):
    leaves, pos = both(sample_inputs(B=B, T=pre + T, D=D, b=b), pre, dtype)
    out_r, st_r = call(ref.ttt_linear, leaves, pos)
    out_o, st_o = call(ops.ttt_linear, leaves, pos)
    tol = F64_TOL if dtype == torch.float64 else F32_TOL
    torch.testing.assert_close(out_o, out_r, **tol)
    assert_state_close(st_o, st_r, **tol)


@pytest.mark.parametrize("ckpt_every", [1, 2, 4])
@pytest.mark.parametrize("B,D,b,T,pre", CASES, ids=lambda x: str(x))
def test_gradients_match_reference(ckpt_every, B, D, b, T, pre):
    leaves, pos = both(sample_inputs(B=B, T=pre + T, D=D, b=b), pre, requires_grad=True)

    def grads(fn):
        out, st = call(fn, leaves, pos, **({} if fn is ref.ttt_linear else {"ckpt_every": ckpt_every}))
        g = torch.Generator().manual_seed(1)
        loss = sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum() for x in (out, *st[:4]))
        return torch.autograd.grad(loss, leaves)

    for name, a, b_ in zip(NAMES, grads(ops.ttt_linear), grads(ref.ttt_linear)):
        torch.testing.assert_close(a, b_, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"d{name}: {m}")


GRADCHECK_CASES = [  # (B, D, b, T, pre); pre > 0 gives a non-zero incoming state off a boundary
    (1, 4, 4, 5, 2), (2, 4, 4, 16, 0), (1, 8, 4, 19, 3), (1, 4, 16, 33, 5), (2, 8, 16, 19, 1), (1, 4, 4, 33, 6),
]


@pytest.mark.parametrize("B,D,b,T,pre", GRADCHECK_CASES, ids=lambda x: str(x))
def test_gradcheck(B, D, b, T, pre):
    leaves, pos = both(sample_inputs(B=B, T=pre + T, D=D, b=b), pre, requires_grad=True)

    def fn(*xs):
        out, st = call(ops.ttt_linear, list(xs), pos, ckpt_every=2)
        return out, *st[:4]

    # Full Jacobians for the smallest case; random projections (fast_mode) for the rest.
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=T > 5, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("D", [8, 32], ids=["D8-generic", "D32-fused"])
@pytest.mark.parametrize("p", [0, 1, 15, 16, 17, 31])
def test_prefill_then_decode_equals_one_call(p, D):
    args = sample_inputs(B=2, T=40, D=D, b=16)
    q, k, v, lr, ts, W0, b0, ln_w, ln_b = args
    out_all, st_all = ops.ttt_linear(*args)
    out_p, st = ops.ttt_linear(q[:, :, :p], k[:, :, :p], v[:, :, :p], lr[:, :, :p], *args[4:])
    outs = [out_p]
    for t in range(p, q.shape[2]):
        o, st = ops.ttt_linear_decode_(q[:, :, t], k[:, :, t], v[:, :, t], lr[:, :, t], ts, st, ln_w, ln_b)
        outs.append(o.unsqueeze(2))
    torch.testing.assert_close(torch.cat(outs, 2), out_all, **F64_TOL)
    assert_state_close(st, st_all, **F64_TOL)


def test_decode_equals_functional_op_in_float32():
    args = [a.float() for a in sample_inputs(B=2, T=21, D=64, b=16)]
    q, k, v, lr, ts, W0, b0, ln_w, ln_b = args
    _, st = ops.ttt_linear(q[:, :, :20], k[:, :, :20], v[:, :, :20], lr[:, :, :20], *args[4:])
    out_f, st_f = ops.ttt_linear(q[:, :, 20:], k[:, :, 20:], v[:, :, 20:], lr[:, :, 20:], *args[4:], state=st)
    st_d = ops.TTTState(*(x.clone() for x in st[:4]), st.pos)
    out_d, st_d = ops.ttt_linear_decode_(q[:, :, 20], k[:, :, 20], v[:, :, 20], lr[:, :, 20], ts, st_d, ln_w, ln_b)
    torch.testing.assert_close(out_d, out_f[:, :, 0], rtol=0, atol=0)
    assert_state_close(st_d, st_f, rtol=0, atol=0)


@pytest.mark.parametrize("D", [8, 64], ids=["D8-generic", "D64-fused"])
def test_decode_takes_strided_rows(D):
    """The CPU decode step reads q, k, v rows in place (slices of one projection, as the model
    passes them), lr at any strides, and copies a row that is not contiguous: all equal the
    float64 reference over that token."""
    leaves, pos = both(sample_inputs(B=2, T=6, D=D, b=16), 5)
    out_r, st_r = call(ref.ttt_linear, leaves, pos)
    q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b = leaves
    B, H = q.shape[:2]
    qkv = torch.stack([q[:, :, 0], k[:, :, 0], v[:, :, 0]], 1).transpose(1, 2).contiguous()  # [B, H, 3, D]
    lr_t = lr[:, :, 0].t().contiguous().t()  # [B, H] with strides (1, B)
    spread = torch.zeros(B, H, D, 2, dtype=q.dtype)
    spread[..., 0] = k[:, :, 0]  # k with row stride 2: the op copies it
    state = [x.clone() for x in (W, c, gW, gc)]
    out = torch.ops.bitttt.ttt_linear_decode_(qkv[:, :, 0], spread[..., 0], qkv[:, :, 2], lr_t, ts, *state, pos,
                                             ln_w, ln_b)
    assert qkv[:, :, 0].stride(2) == 1 and not qkv[:, :, 0].is_contiguous() and lr_t.stride() == (1, B)
    torch.testing.assert_close(out, out_r[:, :, 0], **F64_TOL)
    assert_state_close((*state, pos + 1), st_r, **F64_TOL)


def _decode_case(D=64):
    """Inputs of one decode step at an unaligned position, rows of one projection as the
    model passes them, and the float64 reference's output and state after it."""
    leaves, pos = both(sample_inputs(B=2, T=6, D=D, b=16), 5)
    out_r, st_r = call(ref.ttt_linear, leaves, pos)
    q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b = leaves
    qkv = torch.stack([q[:, :, 0], k[:, :, 0], v[:, :, 0]], 1).transpose(1, 2).contiguous()  # [B, H, 3, D]
    tok = (qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], lr[:, :, 0])
    return tok, ts, ops.TTTState(W, c, gW, gc, pos), ln_w, ln_b, out_r[:, :, 0], st_r


def _fresh(st):
    return ops.TTTState(*(x.clone() for x in st[:4]), st.pos)


@pytest.mark.parametrize("D", [8, 64], ids=["D8-generic", "D64-fused"])
def test_decode_lean_path_equals_reference_and_op(D, monkeypatch):
    """On the CPU ops.ttt_linear_decode_ calls the kernel without the dispatcher (bitttt._C's
    lean path): the float64 reference's output and state, and the registered op's bit for bit."""
    tok, ts, st, ln_w, ln_b, out_r, st_r = _decode_case(D)
    st_op = _fresh(st)
    out_op = torch.ops.bitttt.ttt_linear_decode_(*tok, ts, *st_op[:4], st.pos, ln_w, ln_b)

    def no_dispatcher(*a):
        raise AssertionError("the CPU decode step went through the dispatcher")
    monkeypatch.setattr(ops, "_TTT_LINEAR_DECODE", no_dispatcher)
    out, st_l = ops.ttt_linear_decode_(*tok, ts, _fresh(st), ln_w, ln_b)
    torch.testing.assert_close(out, out_r, **F64_TOL)
    assert_state_close(st_l, st_r, **F64_TOL)
    assert torch.equal(out, out_op) and all(torch.equal(a, b_) for a, b_ in zip(st_l[:4], st_op[:4]))
    assert st_l.pos == st.pos + 1 and out.shape == tok[0].shape and out.is_contiguous()


def test_decode_lean_path_frees_its_outputs():
    """The tensor handles travel both ways without keeping a reference: an output nobody holds
    is freed (torch 2.13's one-tensor way back kept every output alive, a leak per token)."""
    import weakref
    tok, ts, st, ln_w, ln_b, _, _ = _decode_case(8)
    out, _ = ops.ttt_linear_decode_(*tok, ts, st, ln_w, ln_b)
    ref_out = weakref.ref(out)
    del out
    assert ref_out() is None


def test_decode_without_tensor_handles_takes_the_op(monkeypatch):
    """A torch without the tensor-handle converter the lean path needs: the op, same result."""
    tok, ts, st, ln_w, ln_b, out_r, st_r = _decode_case()
    monkeypatch.setattr(ops, "_TENSOR_HANDLES", None)
    monkeypatch.setattr(ops, "_C", None)  # the lean path would fail on this
    out, st_o = ops.ttt_linear_decode_(*tok, ts, _fresh(st), ln_w, ln_b)
    torch.testing.assert_close(out, out_r, **F64_TOL)
    assert_state_close(st_o, st_r, **F64_TOL)


LEAN_BAD = [
    ("k shape", lambda a: a.__setitem__(1, a[1][:, :1]), "ttt_linear_decode_: k must be [B, H, D]"),
    ("lr shape", lambda a: a.__setitem__(3, a[3][:, :, None]), "ttt_linear_decode_: lr must be [B, H]"),
    ("float32 v", lambda a: a.__setitem__(2, a[2].float()), "ttt_linear_decode_: v must have q's dtype"),
    ("int q", lambda a: a.__setitem__(0, a[0].long()), "ttt_linear_decode_: q must be float32 or float64"),
    ("meta c", lambda a: a.__setitem__(6, a[6].to("meta")), "ttt_linear_decode_: c must be on the CPU"),
    ("strided W", lambda a: a.__setitem__(5, a[5].transpose(-1, -2)), "must be contiguous"),
]


@pytest.mark.parametrize("name,mutate,msg", LEAN_BAD, ids=[b[0] for b in LEAN_BAD])
def test_decode_lean_path_checks_like_the_op(name, mutate, msg):
    tok, ts, st, ln_w, ln_b, _, _ = _decode_case(8)
    args = [*tok, ts, *_fresh(st)[:4], ln_w, ln_b]
    mutate(args)
    state = ops.TTTState(*args[5:9], st.pos)
    with pytest.raises(RuntimeError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        ops.ttt_linear_decode_(*args[:5], state, *args[9:])


@pytest.mark.parametrize("D", [8, 32], ids=["D8-generic", "D32-fused"])
def test_state_and_its_gradients_at_any_strides(D):
    """The CPU op copies the incoming state, and the gradients of the state it returns, head by
    head at their own strides (here column-major and every other element; expanded over the
    batch whenever state is None): the float64 reference's outputs and gradients of every input."""
    leaves, pos = both(sample_inputs(B=2, T=21, D=D, b=16), 5)
    q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b = leaves
    cols = lambda x: x.transpose(-1, -2).contiguous().transpose(-1, -2)  # noqa: E731  column-major rows
    every_other = lambda x: torch.stack([x, x], -1)[..., 0]  # noqa: E731  element stride 2
    strided = [q, k, v, lr, ts, cols(W), every_other(c), cols(gW), every_other(gc), ln_w, ln_b]
    assert not any(x.is_contiguous() for x in strided[5:9])
    for x in strided:
        x.requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in (q, W, c, W, c)]

    def loss(fn, xs):
        out, st = call(fn, xs, pos)
        # st.W / st.W^T: the gradients of the returned state arrive transposed and strided
        W_, c_, gW_, gc_ = st[:4]
        return ((out * weights[0]).sum() + (W_.transpose(-1, -2) * weights[1]).sum() + (c_ * weights[2]).sum()
                + (gW_.transpose(-1, -2) * weights[3]).sum() + (gc_ * weights[4]).sum()), out, st

    l_o, out_o, st_o = loss(ops.ttt_linear, strided)
    ref_leaves = [x.detach().clone().requires_grad_(True) for x in strided]
    l_r, out_r, st_r = loss(ref.ttt_linear, ref_leaves)
    torch.testing.assert_close(out_o, out_r, **F64_TOL)
    assert_state_close(st_o, st_r, **F64_TOL)
    for name, a, b_ in zip(NAMES, torch.autograd.grad(l_o, strided), torch.autograd.grad(l_r, ref_leaves)):
        torch.testing.assert_close(a, b_, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("D", [8, 32], ids=["D8-generic", "D32-fused"])
def test_from_W0_with_a_loss_on_out_only(D):
    """state=None (W0, b0 expanded over the batch, zero accumulators expanded) and no gradient
    for the returned state (zeros expanded): the float64 reference's output and gradients."""
    args = [a.clone().requires_grad_(True) for a in sample_inputs(B=2, T=21, D=D, b=16)]
    ref_args = [a.detach().clone().requires_grad_(True) for a in args]
    w = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(4), dtype=args[0].dtype)
    out_o, _ = ops.ttt_linear(*args)
    out_r, _ = ref.ttt_linear(*ref_args)
    torch.testing.assert_close(out_o, out_r, **F64_TOL)
    names = ("q", "k", "v", "lr", "token_scale", "W0", "b0", "ln_w", "ln_b")
    for name, a, b_ in zip(names, torch.autograd.grad((out_o * w).sum(), args),
                           torch.autograd.grad((out_r * w).sum(), ref_args)):
        torch.testing.assert_close(a, b_, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"d{name}: {m}")


def test_chunked_calls_from_unaligned_offsets():
    args = sample_inputs(B=2, T=50, D=8, b=16)
    q, k, v, lr = args[:4]
    out_all, st_all = ops.ttt_linear(*args)
    st, outs, cuts = None, [], [0, 3, 21, 22, 37, 50]
    for a, e in zip(cuts[:-1], cuts[1:]):
        o, st = ops.ttt_linear(q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], lr[:, :, a:e], *args[4:], state=st)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 2), out_all, **F64_TOL)
    assert_state_close(st, st_all, **F64_TOL)


def test_zero_tokens_keep_the_state():
    args = sample_inputs(B=1, T=0, D=4, b=4)
    out, st = ops.ttt_linear(*args)
    assert out.shape == (1, 2, 0, 4) and st.pos == 0
    torch.testing.assert_close(st.W, args[5].expand(1, 2, 4, 4))


def test_same_results_with_one_and_two_threads():
    args = [a.float() for a in sample_inputs(B=2, H=3, T=37, D=64, b=16)]
    leaves, pos = both(args, 5, torch.float32, requires_grad=True)
    n = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, st = call(ops.ttt_linear, leaves, pos)
            grads = torch.autograd.grad(out.sum() + st.W.sum(), leaves)
            results.append((out, *st[:4], *grads))
    finally:
        torch.set_num_threads(n)
    for a, b_ in zip(*results):
        assert torch.equal(a, b_)


def test_bfloat16_inputs_run_in_float32():
    args = [a.float() for a in sample_inputs(B=1, T=20, D=32, b=16)]
    q, k, v, lr = (x.bfloat16() for x in args[:4])
    out, st = ops.ttt_linear(q, k, v, lr, *args[4:])
    out_r, _ = ops.ttt_linear(q.float(), k.float(), v.float(), lr.float(), *args[4:])
    assert out.dtype == torch.bfloat16 and st.W.dtype == torch.float32
    torch.testing.assert_close(out, out_r.bfloat16())


def test_bfloat16_decode_runs_in_float32_and_returns_bfloat16():
    args = [a.float() for a in sample_inputs(B=1, T=21, D=32, b=16)]
    q, k, v, lr = (x.bfloat16() for x in args[:4])
    ts, ln_w, ln_b = args[4], args[7], args[8]
    _, st = ops.ttt_linear(q[:, :, :20].float(), k[:, :, :20].float(), v[:, :, :20].float(), lr[:, :, :20].float(),
                           *args[4:])
    st_r = ops.TTTState(*(x.clone() for x in st[:4]), st.pos)
    out, st = ops.ttt_linear_decode_(q[:, :, 20], k[:, :, 20], v[:, :, 20], lr[:, :, 20], ts, st, ln_w, ln_b)
    # the oracle: the float32 prefill over the same (bfloat16-rounded) token
    out_r, st_r = ops.ttt_linear(*(x[:, :, 20:].float() for x in (q, k, v, lr)), *args[4:], state=st_r)
    assert out.dtype == torch.bfloat16 and st.W.dtype == torch.float32 and st.pos == 21
    torch.testing.assert_close(out, out_r[:, :, 0].bfloat16())
    assert_state_close(st, st_r, rtol=0, atol=0)


def test_scalar_kernels_match(tmp_path):
    """BITTTT_ISA=scalar selects the portable kernel copy; it agrees with the default one."""
    code = (
        "import sys, torch; sys.path.insert(0, %r)\n"
        "from test_ttt_reference import sample_inputs\n"
        "from bitttt import ops, _C\n"
        "args = [a.float() for a in sample_inputs(B=1, T=37, D=64, b=16)]\n"
        "out, st = ops.ttt_linear(*args)\n"
        "torch.save((_C.build_info()['ttt_isa'], out, st.W), %r)\n"
    ) % (os.path.dirname(__file__), str(tmp_path / "r.pt"))
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "BITTTT_ISA": "scalar"})
    isa, out_s, W_s = torch.load(tmp_path / "r.pt")
    assert isa == "scalar"
    args = [a.float() for a in sample_inputs(B=1, T=37, D=64, b=16)]
    out, st = ops.ttt_linear(*args)
    torch.testing.assert_close(out, out_s, **F32_TOL)
    torch.testing.assert_close(st.W, W_s, **F32_TOL)


def opcheck_args(dtype=torch.float64, T=19, pos=3):
    args = [a.to(dtype) for a in sample_inputs(B=1, T=T, D=4, b=4)]
    q, k, v, lr, ts, W0, b0, ln_w, ln_b = args
    W = W0.expand(1, 2, 4, 4).contiguous()
    c = b0.expand(1, 2, 4).contiguous()
    gW, gc = 0.01 * torch.randn_like(W), 0.01 * torch.randn_like(c)
    return q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b


def test_opcheck_ttt_linear():
    q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b = opcheck_args()
    for x in (q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b):
        x.requires_grad_(True)
    torch.library.opcheck(torch.ops.bitttt.ttt_linear.default, (q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b, 2))


def test_opcheck_ttt_linear_decode_():
    q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b = opcheck_args(T=1)
    torch.library.opcheck(torch.ops.bitttt.ttt_linear_decode_.default,
                          (q[:, :, 0], k[:, :, 0], v[:, :, 0], lr[:, :, 0], ts, W, c, gW, gc, pos, ln_w, ln_b))


BAD = [
    ("q 3-D", lambda a: a.__setitem__(0, a[0][:, :, 0]), "q must be 4-D"),
    ("k shape", lambda a: a.__setitem__(1, a[1][:, :, :-1]), "k must be [B, H, T, D]"),
    ("lr shape", lambda a: a.__setitem__(3, a[3][:, :1]), "lr must be [B, H, T]"),
    ("W shape", lambda a: a.__setitem__(5, a[5][..., :-1]), "W must be [B, H, D, D]"),
    ("ln_w shape", lambda a: a.__setitem__(10, a[10][:1]), "ln_w must be [H, D]"),
    ("dtype mix", lambda a: a.__setitem__(5, a[5].float()), "W must have q's dtype"),
    ("int q", lambda a: a.__setitem__(0, a[0].long()), "q must be float32 or float64"),
    ("negative pos", lambda a: a.__setitem__(9, -1), "pos must be >= 0"),
    ("empty token_scale", lambda a: a.__setitem__(4, a[4][:0]), "token_scale must be 1-D [b] with b >= 1"),
    ("device", lambda a: a.__setitem__(6, a[6].to("meta")), "c must be on"),
]


@pytest.mark.parametrize("name,mutate,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_raise_clear_errors(name, mutate, msg):
    args = list(opcheck_args())
    mutate(args)
    with pytest.raises((RuntimeError, NotImplementedError), match=msg.replace("[", r"\[").replace("]", r"\]")):
        torch.ops.bitttt.ttt_linear(*args)


def test_decode_rejects_non_contiguous_state():
    q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b = opcheck_args(T=1)
    W = W.transpose(-1, -2)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        torch.ops.bitttt.ttt_linear_decode_(q[:, :, 0], k[:, :, 0], v[:, :, 0], lr[:, :, 0], ts, W, c, gW, gc, pos,
                                            ln_w, ln_b)


ISA_CASES = [(2, 4, 4, 33, 0), (1, 64, 16, 33, 17), (1, 32, 16, 1, 15), (1, 48, 16, 21, 3)]
EXPECTED_TTT_ISA = {"scalar": "scalar", "avx2": "avx2", "avx512": "avx512", "avx512_emulated": "avx2"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,D,b,T,pre", ISA_CASES, ids=lambda x: str(x))
def test_every_isa_matches_reference(isa, dtype, B, D, b, T, pre):
    """set_isa picks the TTT kernel set too (design §3): each one, forward, gradients and a
    decode step, against the reference."""
    from bitttt import _C
    if isa in EXPECTED_TTT_ISA:
        assert _C.build_info()["ttt_isa"] == EXPECTED_TTT_ISA[isa]
    tol = F64_TOL if dtype == torch.float64 else F32_TOL
    leaves, pos = both(sample_inputs(B=B, T=pre + T, D=D, b=b), pre, dtype, requires_grad=True)
    out_r, st_r = call(ref.ttt_linear, leaves, pos)
    out_o, st_o = call(ops.ttt_linear, leaves, pos)
    torch.testing.assert_close(out_o, out_r, **tol)
    assert_state_close(st_o, st_r, **tol)
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in (out_r, *st_r[:4])]
    grads = [torch.autograd.grad(sum((x * w).sum() for x, w in zip((o, *s[:4]), weights)), leaves)
             for o, s in ((out_o, st_o), (out_r, st_r))]
    for name, a, b_ in zip(NAMES, *grads):
        torch.testing.assert_close(a, b_, **(dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else
                                             dict(rtol=1e-3, atol=1e-3)), msg=lambda m, name=name: f"d{name}: {m}")
    with torch.no_grad():
        q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b = [x.detach() for x in leaves]
        st = ops.TTTState(W.clone(), c.clone(), gW.clone(), gc.clone(), pos)
        o, st = ops.ttt_linear_decode_(q[:, :, 0], k[:, :, 0], v[:, :, 0], lr[:, :, 0], ts, st, ln_w, ln_b)
        o_r, _ = ref.ttt_linear(q[:, :, :1], k[:, :, :1], v[:, :, :1], lr[:, :, :1], ts, None, None, ln_w, ln_b,
                                state=(W, c, gW, gc, pos))
    torch.testing.assert_close(o, o_r[:, :, 0], **tol)
