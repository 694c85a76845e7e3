"""TTT-MLP C++ op (design §3, csrc/ttt_mlp/) against the pure-torch reference.ttt_mlp:
forward with and without state, odd shapes, chunking, decode, gradients, fakes, bad inputs.
Tests taking the `isa` fixture run once per kernel set (_C.set_isa: "scalar" runs the generic
kernels, the x86 sets the AVX2 ones)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from bitttt import _C, ops, reference

F64_TOL = dict(rtol=1e-9, atol=1e-10)
F32_TOL = dict(rtol=2e-4, atol=2e-5)


def mlp_inputs(B=1, H=2, T=21, D=6, F=None, b=4, seed=0, dtype=torch.float64):
    """q, k, v, lr, token_scale, W1, b1, W2, b2, ln_w, ln_b with lr and weights sized so the inner
    model moves visibly (a wrong term shows) but stays well-conditioned."""
    F = 4 * D if F is None else F
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    q, k, v = r(B, H, T, D), r(B, H, T, D), r(B, H, T, D)
    lr = torch.rand(B, H, T, generator=g, dtype=dtype) * 0.5 + 0.05
    token_scale = 1.0 / torch.arange(1, b + 1, dtype=dtype) + 0.05 * r(b)
    W1, b1 = r(H, D, F) / D ** 0.5, 0.1 * r(H, F)
    W2, b2 = r(H, F, D) / F ** 0.5, 0.1 * r(H, D)
    ln_w, ln_b = 1 + 0.1 * r(H, D), 0.1 * r(H, D)
    return q, k, v, lr, token_scale, W1, b1, W2, b2, ln_w, ln_b


def random_state(args, pos, scale=0.05, seed=1):
    """A mid-mini-batch state: weights near the initial ones and non-zero accumulators."""
    g = torch.Generator().manual_seed(seed)
    B = args[0].shape[0]
    w = [p.expand(B, *p.shape) + scale * torch.randn(B, *p.shape, generator=g, dtype=p.dtype) for p in args[5:9]]
    acc = [scale * torch.randn(x.shape, generator=g, dtype=x.dtype) for x in w]
    return ops.TTTMLPState(*w, *acc, pos)


def assert_state_close(s, r, **tol):
    for a, b_ in zip(s[:8], r[:8]):
        torch.testing.assert_close(a, b_.expand_as(a), **tol)
    assert s[8] == r[8]


def tokens(args, sl):
    return [a[:, :, sl] for a in args[:4]] + list(args[4:])


SHAPES = [  # B, H, T, D, F, b
    (1, 1, 16, 8, 32, 16),   # one full mini-batch
    (2, 3, 37, 5, 20, 8),    # odd B·H, odd D, T not a multiple of b
    (3, 1, 9, 7, 11, 4),     # F not 4·D (the op takes any F)
    (1, 2, 50, 64, 256, 16),  # the module's head size: the blocked kernels
    (1, 1, 3, 4, 16, 16),    # T below one mini-batch
]


@pytest.mark.parametrize("B,H,T,D,F,b", SHAPES)
def test_forward_matches_reference_float64(B, H, T, D, F, b, isa):
    args = mlp_inputs(B, H, T, D, F, b)
    out, st = ops.ttt_mlp(*args)
    out_r, st_r = reference.ttt_mlp(*args)
    torch.testing.assert_close(out, out_r, **F64_TOL)
    assert_state_close(st, st_r, **F64_TOL)
    assert isinstance(st, ops.TTTMLPState) and st.pos == T


@pytest.mark.parametrize("pos", [0, 3, 16, 21])
def test_forward_from_a_state_matches_reference(pos, isa):
    args = mlp_inputs(B=2, H=3, T=29, D=6, b=8)
    state = random_state(args, pos)
    out, st = ops.ttt_mlp(*args, state=state)
    out_r, st_r = reference.ttt_mlp(*args, state=tuple(state))
    torch.testing.assert_close(out, out_r, **F64_TOL)
    assert_state_close(st, st_r, **F64_TOL)
    assert st.pos == pos + 29


def test_float32_matches_float64_reference(isa):
    args = mlp_inputs(B=1, H=2, T=40, D=64, b=16)
    out_r, st_r = reference.ttt_mlp(*args)
    out, st = ops.ttt_mlp(*[a.float() for a in args])
    torch.testing.assert_close(out, out_r.float(), **F32_TOL)
    assert_state_close(st, [x.float() for x in st_r[:8]] + [st_r[8]], **F32_TOL)


@pytest.mark.parametrize("cuts", [(5,), (1, 2, 3), (16, 32), (7, 20, 21)])
def test_chunked_prefill_equals_one_call(cuts):
    args = mlp_inputs(B=1, H=2, T=37, D=8, b=16)
    out_full, st_full = ops.ttt_mlp(*args)
    outs, st = [], None
    for a, z in zip((0, *cuts), (*cuts, 37)):
        o, st = ops.ttt_mlp(*tokens(args, slice(a, z)), state=st)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 2), out_full, **F64_TOL)
    assert_state_close(st, st_full, **F64_TOL)


@pytest.mark.parametrize("D", [6, 64])
def test_decode_steps_equal_prefill(D, isa):
    """Prefill 11 tokens, then 25 in-place decode steps: the outputs and state of one call."""
    args = mlp_inputs(B=2, H=2, T=36, D=D, b=16)
    out_full, st_full = ops.ttt_mlp(*args)
    out0, st = ops.ttt_mlp(*tokens(args, slice(0, 11)))
    outs = [out0]
    for t in range(11, 36):
        q, k, v, lr = (a[:, :, t] for a in args[:4])
        o, st = ops.ttt_mlp_decode_(q, k, v, lr, args[4], st, args[9], args[10])
        outs.append(o.unsqueeze(2))
    torch.testing.assert_close(torch.cat(outs, 2), out_full, **F64_TOL)
    assert_state_close(st, st_full, **F64_TOL)


def test_decode_updates_the_state_in_place_from_scratch():
    args = mlp_inputs(B=1, H=2, T=1, D=4, b=4)
    state = random_state(args, pos=2)
    before = [t.clone() for t in state[:8]]
    q, k, v, lr = (a[:, :, 0] for a in args[:4])
    out, st = ops.ttt_mlp_decode_(q, k, v, lr, args[4], state, args[9], args[10])
    out_r, st_r = reference.ttt_mlp(*args, state=tuple(before) + (2,))
    torch.testing.assert_close(out, out_r[:, :, 0], **F64_TOL)
    assert all(a is b_ for a, b_ in zip(st[:8], state[:8]))  # the same tensors, updated
    assert_state_close(st, st_r, **F64_TOL)


def test_bfloat16_inputs_run_in_float32():
    args = [a.float() for a in mlp_inputs(T=10, D=8)]
    low = [a.bfloat16() for a in args[:4]]
    out, st = ops.ttt_mlp(*low, *args[4:])
    out_r, _ = ops.ttt_mlp(*[a.float() for a in low], *args[4:])
    assert out.dtype == torch.bfloat16 and st.W1.dtype == torch.float32
    torch.testing.assert_close(out, out_r.bfloat16())


def test_results_do_not_depend_on_the_thread_count():
    args = [a.float() for a in mlp_inputs(B=2, H=3, T=40, D=64, b=16)]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = ops.ttt_mlp(*args)
        torch.set_num_threads(2)
        two, _ = ops.ttt_mlp(*args)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


# --- gradients ------------------------------------------------------------------------


def _grad_inputs(pos, T=7, B=1, H=2, D=3, F=5, b=3):
    args = mlp_inputs(B=B, H=H, T=T, D=D, F=F, b=b, seed=3)
    st = random_state(args, pos, scale=0.1)
    ins = [*args[:5], *st[:8], args[9], args[10]]
    return [x.detach().clone().requires_grad_(True) for x in ins]


def _through_state(pos, ckpt_every):
    def f(q, k, v, lr, ts, W1, b1, W2, b2, gW1, gb1, gW2, gb2, ln_w, ln_b):
        state = ops.TTTMLPState(W1, b1, W2, b2, gW1, gb1, gW2, gb2, pos)
        out, st = ops.ttt_mlp(q, k, v, lr, ts, None, None, None, None, ln_w, ln_b, state=state, ckpt_every=ckpt_every)
        return (out, *st[:8])
    return f


@pytest.mark.parametrize("pos,ckpt_every", [(0, 1), (1, 2), (2, 100)])
def test_gradcheck_every_input_and_the_state(pos, ckpt_every, isa):
    """All 15 tensor inputs (q, k, v, lr, token_scale, the weights, the accumulators, ln_w, ln_b)
    against finite differences, through out and the whole outgoing state."""
    assert torch.autograd.gradcheck(_through_state(pos, ckpt_every), _grad_inputs(pos))


def test_gradcheck_from_the_initial_weights():
    """state=None: gradients reach W1, b1, W2, b2 [H, ...] through the batch expand."""
    args = [a.detach().clone().requires_grad_(True) for a in mlp_inputs(B=2, H=1, T=6, D=3, F=4, b=4, seed=5)]
    assert torch.autograd.gradcheck(lambda *a: ops.ttt_mlp(*a, ckpt_every=1)[0], args)


def test_gradients_match_autograd_through_the_reference(isa):
    args = mlp_inputs(B=1, H=2, T=37, D=8, b=16, seed=7)
    st = random_state(args, pos=5)
    ins = [*args[:5], *st[:8], args[9], args[10]]
    grads = []
    for fn in ("op", "reference"):
        x = [a.detach().clone().requires_grad_(True) for a in ins]
        state = ops.TTTMLPState(*x[5:13], 5)
        if fn == "op":
            out, s = ops.ttt_mlp(*x[:5], None, None, None, None, x[13], x[14], state=state)
        else:
            out, s = reference.ttt_mlp(*x[:5], None, None, None, None, x[13], x[14], state=tuple(state))
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum() + sum(
            (t * 0.3).sum() for t in s[:8])
        grads.append(torch.autograd.grad(loss, x))
    for a, b_ in zip(*grads):
        torch.testing.assert_close(a, b_, **F64_TOL)


def test_float32_backward_at_D64_matches_float64_reference(isa):
    """The blocked float32 kernels training runs (D = 64, F = 256, two mini-batches and a tail,
    from a mid-mini-batch state): every gradient against autograd through the float64 reference."""
    args = mlp_inputs(B=1, H=2, T=40, D=64, b=16, seed=9)
    st = random_state(args, pos=5, scale=0.02)
    ins = [*args[:5], *st[:8], args[9], args[10]]
    names = ["q", "k", "v", "lr", "token_scale", "W1", "b1", "W2", "b2", "gW1", "gb1", "gW2", "gb2", "ln_w", "ln_b"]
    g = torch.Generator().manual_seed(10)
    # random output gradients, so no term cancels by symmetry
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (args[0], *st[:8])]
    grads = {}
    for dtype in (torch.float64, torch.float32):
        x = [a.detach().to(dtype).requires_grad_(True) for a in ins]
        state = ops.TTTMLPState(*x[5:13], 5)
        if dtype == torch.float32:
            out, s = ops.ttt_mlp(*x[:5], None, None, None, None, x[13], x[14], state=state)
        else:
            out, s = reference.ttt_mlp(*x[:5], None, None, None, None, x[13], x[14], state=tuple(state))
        loss = sum((t * w.to(dtype)).sum() for t, w in zip((out, *s[:8]), weights))
        grads[dtype] = torch.autograd.grad(loss, x)
    for name, got, want in zip(names, grads[torch.float32], grads[torch.float64]):
        err = (got.double() - want).norm() / want.norm()
        assert err < 1e-5, f"d{name}: relative error {err:.2e} of the float32 kernels ({_C.build_info()['ttt_mlp_isa']})"


def test_kernel_set_follows_set_isa(isa):
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    cpu = _C.cpu_features()
    expected = "avx2" if x86 and cpu["avx2"] and cpu["fma"] and isa != "scalar" else "generic"
    assert _C.build_info()["ttt_mlp_isa"] == expected


# --- the scalar copy, fakes, bad inputs -------------------------------------------------


def test_scalar_kernels_match(tmp_path):
    """BITTTT_ISA=scalar selects the portable kernel copy; it agrees with the default one."""
    code = (
        "import sys, torch; sys.path.insert(0, %r)\n"
        "from test_ttt_mlp import mlp_inputs\n"
        "from bitttt import ops, _C\n"
        "args = [a.float() for a in mlp_inputs(B=1, T=37, D=64, b=16)]\n"
        "out, st = ops.ttt_mlp(*args)\n"
        "torch.save((_C.build_info()['ttt_mlp_isa'], out, st.W1), %r)\n"
    ) % (os.path.dirname(__file__), str(tmp_path / "r.pt"))
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "BITTTT_ISA": "scalar"})
    isa, out_s, W1_s = torch.load(tmp_path / "r.pt")
    assert isa == "generic"
    args = [a.float() for a in mlp_inputs(B=1, T=37, D=64, b=16)]
    out, st = ops.ttt_mlp(*args)
    torch.testing.assert_close(out, out_s, **F32_TOL)
    torch.testing.assert_close(st.W1, W1_s, **F32_TOL)


def op_args(T=9, pos=3):
    args = mlp_inputs(B=1, H=2, T=T, D=4, F=8, b=4)
    st = random_state(args, pos)
    return [*args[:5], *st[:8], pos, args[9], args[10]]


def test_opcheck_ttt_mlp():
    args = op_args()
    for i, x in enumerate(args):
        if isinstance(x, torch.Tensor):
            x.requires_grad_(True)
    torch.library.opcheck(torch.ops.bitttt.ttt_mlp.default, (*args, 2))


def test_opcheck_ttt_mlp_decode_():
    args = op_args(T=1)
    args[:4] = [a[:, :, 0] for a in args[:4]]
    torch.library.opcheck(torch.ops.bitttt.ttt_mlp_decode_.default, tuple(args))


def test_torch_compile_traces_the_op():
    args = [a.float() for a in mlp_inputs(T=10, D=8)]
    eager, _ = ops.ttt_mlp(*args)
    compiled = torch.compile(lambda *a: ops.ttt_mlp(*a)[0], backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), eager)


BAD = [
    ("q 3-D", lambda a: a.__setitem__(0, a[0][:, :, 0]), "q must be 4-D"),
    ("k shape", lambda a: a.__setitem__(1, a[1][:, :, :-1]), "k must be [B, H, T, D]"),
    ("lr shape", lambda a: a.__setitem__(3, a[3][:, :1]), "lr must be [B, H, T]"),
    ("W1 shape", lambda a: a.__setitem__(5, a[5][..., :-1]), "W1 must be [B, H, D, F]"),
    ("gW2 shape", lambda a: a.__setitem__(11, a[11][:, :, :-1]), "gW2 must be [B, H, F, D]"),
    ("ln_w shape", lambda a: a.__setitem__(14, a[14][:1]), "ln_w must be [H, D]"),
    ("dtype mix", lambda a: a.__setitem__(7, a[7].float()), "W2 must have q's dtype"),
    ("int q", lambda a: a.__setitem__(0, a[0].long()), "q must be float32 or float64"),
    ("negative pos", lambda a: a.__setitem__(13, -1), "pos must be >= 0"),
    ("empty token_scale", lambda a: a.__setitem__(4, a[4][:0]), "token_scale must be 1-D [b] with b >= 1"),
]


@pytest.mark.parametrize("name,mutate,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_raise_clear_errors(name, mutate, msg):
    args = op_args()
    mutate(args)
    with pytest.raises(RuntimeError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        torch.ops.bitttt.ttt_mlp(*args)


def test_decode_rejects_non_contiguous_state():
    args = op_args(T=1)
    args[:4] = [a[:, :, 0] for a in args[:4]]
    args[5] = args[5].transpose(-1, -2).contiguous().transpose(-1, -2)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        torch.ops.bitttt.ttt_mlp_decode_(*args)


def test_other_devices_are_refused_clearly():
    """No CUDA kernel this round: the wrappers refuse a CUDA tensor by name (no GPU here, so a
    stand-in with a CUDA device), and let meta tensors through to the fakes."""
    from types import SimpleNamespace

    with pytest.raises(RuntimeError, match="ttt_mlp: TTT-MLP has no cuda kernel yet"):
        ops._ttt_mlp_check_cpu("ttt_mlp", torch.empty(1), SimpleNamespace(device=torch.device("cuda", 0)))
    meta = [a.to("meta") for a in mlp_inputs(T=5, D=4)]
    out, st = ops.ttt_mlp(*meta)
    assert out.device.type == "meta" and out.shape == (1, 2, 5, 4) and st.W1.shape == (1, 2, 4, 16)
