"""The TTT inner gradients against torch autograd (issue 23).

reference.ttt_inner_grad (∂/∂Z ½‖LN(Z) − target‖²) and reference.gelu_tanh_grad are derived by
hand, as are the kernels' copies. Here the oracle is autograd of the inner loss
½‖LN(f(k)) − (v − k)‖², written fresh with torch's own layer_norm and gelu, in float64: first
the two formulas, then a whole TTT pass (every token's output and the carried weights) for the
linear and the MLP inner model, through the reference, the C++ ops and nn.TTTMLP's torch path.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitttt import ops
from bitttt import reference as ref
from bitttt.nn.ttt_mlp_torch import ttt_mlp_torch

LN_EPS = 1e-6
TOL = dict(rtol=1e-9, atol=1e-10)
# reference.gelu_tanh_grad rounds sqrt(2/pi) to 0.79788456 (ttt-lm-pytorch's gelu_bwd): a
# relative 1e-9 from the true derivative that autograd computes.
GELU_TOL = dict(rtol=1e-7, atol=1e-8)


def inner_loss(Z: torch.Tensor, target: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor) -> torch.Tensor:
    """½‖LN(Z) − target‖² summed over every token, Z [B,H,n,D], per-head affine ln_w, ln_b [H,D]."""
    y = F.layer_norm(Z, Z.shape[-1:], eps=LN_EPS) * ln_w[:, None] + ln_b[:, None]
    return 0.5 * (y - target).square().sum()


def random(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("D", [2, 5, 64])
def test_inner_grad_is_the_gradient_of_the_inner_loss(D):
    Z = random(2, 3, 7, D, seed=1, scale=2.0)
    Z[0, 0, 0] = 0.25 + 1e-4 * Z[0, 0, 0]  # a nearly constant row: the eps matters
    target = random(2, 3, 7, D, seed=2)
    ln_w, ln_b = 1 + 0.3 * random(3, D, seed=3), 0.2 * random(3, D, seed=4)
    Zg = Z.clone().requires_grad_()
    (G,) = torch.autograd.grad(inner_loss(Zg, target, ln_w, ln_b), Zg)
    torch.testing.assert_close(ref.ttt_inner_grad(Z, target, ln_w, ln_b), G, **TOL)


def test_gelu_tanh_grad_is_the_derivative_of_gelu():
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(F.gelu(x, approximate="tanh").sum(), x)
    torch.testing.assert_close(ref.gelu_tanh_grad(x.detach()), d, **GELU_TOL)


# --- a whole TTT pass from the definition: gradient steps on the inner loss ----------------

def linear_f(x, p):
    W, c = p
    return x @ W + c[:, :, None]


def mlp_f(x, p):
    W1, b1, W2, b2 = p
    return F.gelu(x @ W1 + b1[:, :, None], approximate="tanh") @ W2 + b2[:, :, None]


def ttt_by_autograd(f, params, q, k, v, lr, token_scale, ln_w, ln_b):
    """TTT from position 0 over whole mini-batches, straight from its definition (design §3).

    params: per-(batch, head) fast weights. Token i of a mini-batch reads out with the weights
    W − ts_i Σ_{s≤i} lr_s ∇ℓ_s(W), ℓ_s its inner loss at the mini-batch's start weights W; the
    mini-batch ends on the weights token b−1 read with. Returns (out, final params).
    """
    b, T = token_scale.shape[0], q.shape[2]
    outs = []
    for m in range(0, T, b):
        w = [p.detach().requires_grad_() for p in params]
        grads = []  # Σ_{s≤i} lr_s ∇ℓ_s, one list of per-param tensors per token
        for s in range(m, m + b):
            ks, vs = k[:, :, s:s + 1], v[:, :, s:s + 1]
            # each (batch, head) has its own weights, so one backward gives every head's gradient
            y = F.layer_norm(f(ks, w), (ks.shape[-1],), eps=LN_EPS) * ln_w[:, None] + ln_b[:, None]
            per_bh = 0.5 * (y - (vs - ks)).square().sum((-1, -2))  # [B,H]
            g = torch.autograd.grad((lr[:, :, s] * per_bh).sum(), w)
            grads.append([a + b_ for a, b_ in zip(grads[-1], g)] if grads else list(g))
        for i, s in enumerate(range(m, m + b)):
            wi = [p - token_scale[i] * g for p, g in zip(w, grads[i])]
            Z = f(q[:, :, s:s + 1], wi)
            outs.append(q[:, :, s:s + 1] + F.layer_norm(Z, Z.shape[-1:], eps=LN_EPS) * ln_w[:, None] + ln_b[:, None])
        params = [p.detach() for p in wi]
    return torch.cat(outs, 2), params


def inputs(B=2, H=2, T=12, D=6, b=4, seed=0):
    q, k, v = (random(B, H, T, D, seed=seed + i) for i in range(3))
    lr = 0.01 + 0.5 / D * torch.rand(B, H, T, generator=torch.Generator().manual_seed(seed + 3), dtype=torch.float64)
    token_scale = 1.0 / torch.arange(1, b + 1, dtype=torch.float64) + 0.05 * random(b, seed=seed + 4)
    ln_w, ln_b = 1 + 0.1 * random(H, D, seed=seed + 5), 0.1 * random(H, D, seed=seed + 6)
    return q, k, v, lr, token_scale, ln_w, ln_b


def test_ttt_linear_is_gradient_descent_on_the_inner_loss():
    q, k, v, lr, ts, ln_w, ln_b = inputs()
    B, H, _, D = q.shape
    W0, b0 = 0.3 * random(H, D, D, seed=7), 0.1 * random(H, D, seed=8)
    out_ad, (W, c) = ttt_by_autograd(linear_f, [W0.expand(B, H, D, D), b0.expand(B, H, D)], q, k, v, lr, ts,
                                     ln_w, ln_b)
    for name, (out, st) in {"reference": ref.ttt_linear(q, k, v, lr, ts, W0, b0, ln_w, ln_b),
                            "reference primal": ref.ttt_linear(q, k, v, lr, ts, W0, b0, ln_w, ln_b, dual_form=False),
                            "op": ops.ttt_linear(q, k, v, lr, ts, W0, b0, ln_w, ln_b)}.items():
        torch.testing.assert_close(out, out_ad, **TOL, msg=lambda m: f"{name} out: {m}")
        torch.testing.assert_close(st[0], W, **TOL, msg=lambda m: f"{name} W: {m}")
        torch.testing.assert_close(st[1], c, **TOL, msg=lambda m: f"{name} c: {m}")


def test_ttt_mlp_is_gradient_descent_on_the_inner_loss(isa):
    q, k, v, lr, ts, ln_w, ln_b = inputs(D=4, seed=10)
    B, H, _, D = q.shape
    Fh = 4 * D
    W1, b1 = 0.3 * random(H, D, Fh, seed=11), 0.1 * random(H, Fh, seed=12)
    W2, b2 = 0.3 * random(H, Fh, D, seed=13), 0.1 * random(H, D, seed=14)
    out_ad, w_ad = ttt_by_autograd(mlp_f, [p.expand(B, *p.shape) for p in (W1, b1, W2, b2)], q, k, v, lr, ts,
                                   ln_w, ln_b)
    args = (q, k, v, lr, ts, W1, b1, W2, b2, ln_w, ln_b)
    for name, (out, st) in {"reference": ref.ttt_mlp(*args), "op": ops.ttt_mlp(*args),
                            "nn torch path": ttt_mlp_torch(*args)}.items():
        torch.testing.assert_close(out, out_ad, **GELU_TOL, msg=lambda m: f"{name} out: {m}")
        for label, a, e in zip(("W1", "b1", "W2", "b2"), st[:4], w_ad):
            torch.testing.assert_close(a, e, **GELU_TOL, msg=lambda m: f"{name} {label}: {m}")
