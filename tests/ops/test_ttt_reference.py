"""The pure-torch TTT-Linear reference (bitttt/reference.py, design §3) against itself
(dual = primal, prefill + decode = one call) and against an independent transcription of
ttt-lm-pytorch's TTT-Linear mini-batch update."""

from __future__ import annotations

import pytest
import torch

from bitttt import reference as ref

# float64 throughout: these compare the same math computed in different orders.
TOL = dict(rtol=1e-10, atol=1e-10)


def sample_inputs(B=2, H=2, T=33, D=8, b=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    q, k, v = r(B, H, T, D), r(B, H, T, D), r(B, H, T, D)
    lr = torch.rand(B, H, T, generator=g, dtype=dtype) * 0.5 / D + 0.01
    token_scale = 1.0 / torch.arange(1, b + 1, dtype=dtype) + 0.05 * r(b)
    W0, b0 = 0.3 * r(H, D, D), 0.1 * r(H, D)
    ln_w, ln_b = 1 + 0.1 * r(H, D), 0.1 * r(H, D)
    return q, k, v, lr, token_scale, W0, b0, ln_w, ln_b


def assert_state_close(s1, s2, **tol):
    for a, b_ in zip(s1[:4], s2[:4]):
        torch.testing.assert_close(a, b_.expand_as(a), **tol)
    assert s1[4] == s2[4]


# --- an independent transcription of ttt-lm-pytorch (TTTLinear.ttt / compute_mini_batch) ---

def ln_fwd(x, gamma, beta, eps=1e-6):
    mu = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    std = torch.sqrt(var + eps)
    return gamma * ((x - mu) / std) + beta


def ln_fused_l2_bwd(x, l2_target, gamma, beta, eps=1e-6):
    D = x.shape[-1]
    mu = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    std = torch.sqrt(var + eps)
    x_hat = (x - mu) / std
    y = gamma * x_hat + beta
    grad_output = y - l2_target
    grad_x_hat = grad_output * gamma
    return (1.0 / D) * (D * grad_x_hat - grad_x_hat.sum(dim=-1, keepdim=True)
                        - x_hat * (grad_x_hat * x_hat).sum(dim=-1, keepdim=True)) / std


def ttt_lm_pytorch_linear(XQ, XK, XV, lr, token_scale, W0, b0, ln_w, ln_b, use_dual_form):
    """[B,nh,NC,K,f] mini-batched inputs from position 0, as ttt-lm-pytorch's ttt()."""
    B, nh, T, f = XQ.shape
    K = token_scale.shape[0]
    NC = T // K
    XQ, XK, XV = (x.reshape(B, nh, NC, K, f) for x in (XQ, XK, XV))
    ttt_lr_eta = lr.reshape(B, nh, NC, 1, K)                    # [B,nh,NC,1,K]
    token_eta = token_scale.reshape(1, 1, 1, K, 1)              # [1,1,1,K,1]
    eta = token_eta * ttt_lr_eta                                # [B,nh,NC,K,K]
    W1 = W0.unsqueeze(0).expand(B, nh, f, f)
    b1 = b0.reshape(1, nh, 1, f).expand(B, nh, 1, f)
    gamma, beta = ln_w.reshape(nh, 1, f), ln_b.reshape(nh, 1, f)
    outs = []
    for n in range(NC):
        XQ_mb, XK_mb, XV_mb, eta_mb = XQ[:, :, n], XK[:, :, n], XV[:, :, n], eta[:, :, n]
        X1 = XK_mb
        Z1 = X1 @ W1 + b1
        reconstruction_target = XV_mb - XK_mb
        grad_l_wrt_Z1 = ln_fused_l2_bwd(Z1, reconstruction_target, gamma, beta)
        if use_dual_form:
            Attn1 = torch.tril(XQ_mb @ X1.transpose(-2, -1))
            b1_bar = b1 - torch.tril(eta_mb) @ grad_l_wrt_Z1
            Z1_bar = XQ_mb @ W1 - (eta_mb * Attn1) @ grad_l_wrt_Z1 + b1_bar
            last_eta = eta_mb[:, :, -1, :, None]
            W1 = W1 - (last_eta * X1).transpose(-1, -2) @ grad_l_wrt_Z1
            b1 = b1 - torch.sum(last_eta * grad_l_wrt_Z1, dim=-2, keepdim=True)
        else:
            lr_eta = torch.broadcast_to(ttt_lr_eta[:, :, n], (B, nh, K, K))
            grad_W1 = torch.einsum("bhki,bhkj->bhkij", X1, grad_l_wrt_Z1)
            grad_W1 = torch.einsum("bhnk,bhkij->bhnij", torch.tril(lr_eta), grad_W1)
            grad_b1 = torch.einsum("bhnk,bhki->bhni", torch.tril(lr_eta), grad_l_wrt_Z1)
            W1_bar = W1.unsqueeze(2) - grad_W1 * token_eta[:, :, 0].unsqueeze(-1)
            b1_bar = b1 - grad_b1 * token_eta[:, :, 0]
            Z1_bar = (XQ_mb.unsqueeze(3) @ W1_bar).squeeze(3) + b1_bar
            W1, b1 = W1_bar[:, :, -1], b1_bar[:, :, -1:]
        Z1_bar = ln_fwd(Z1_bar, gamma, beta)
        outs.append(XQ_mb + Z1_bar)
    return torch.stack(outs, dim=2).reshape(B, nh, T, f), W1, b1.squeeze(2)


@pytest.mark.parametrize("use_dual_form", [True, False], ids=["dual", "primal"])
@pytest.mark.parametrize("D,b,T", [(4, 4, 16), (8, 16, 32)], ids=lambda x: str(x))
def test_reference_matches_ttt_lm_pytorch(use_dual_form, D, b, T):
    args = sample_inputs(T=T, D=D, b=b)
    out_ref, st = ref.ttt_linear(*args)
    out_tlp, W1, b1 = ttt_lm_pytorch_linear(*args, use_dual_form=use_dual_form)
    torch.testing.assert_close(out_ref, out_tlp, **TOL)
    torch.testing.assert_close(st[0], W1, **TOL)
    torch.testing.assert_close(st[1], b1, **TOL)


@pytest.mark.parametrize("T", [5, 16, 19, 33])
def test_dual_equals_primal(T):
    args = sample_inputs(T=T, b=4)
    out_d, st_d = ref.ttt_linear(*args, dual_form=True)
    out_p, st_p = ref.ttt_linear(*args, dual_form=False)
    torch.testing.assert_close(out_d, out_p, **TOL)
    assert_state_close(st_d, st_p, **TOL)


@pytest.mark.parametrize("p", [0, 1, 15, 16, 17, 31])
def test_prefill_then_decode_equals_one_call(p):
    args = sample_inputs(T=40, D=4, b=16, B=1)
    q, k, v, lr = args[:4]
    out_all, st_all = ref.ttt_linear(*args)
    out_p, st = ref.ttt_linear(q[:, :, :p], k[:, :, :p], v[:, :, :p], lr[:, :, :p], *args[4:])
    outs = [out_p]
    for t in range(p, q.shape[2]):
        o, st = ref.ttt_linear(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], lr[:, :, t:t + 1],
                               *args[4:], state=st)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 2), out_all, **TOL)
    assert_state_close(st, st_all, **TOL)


def test_chunked_calls_from_unaligned_offsets():
    args = sample_inputs(T=50, D=4, b=16)
    q, k, v, lr = args[:4]
    out_all, st_all = ref.ttt_linear(*args)
    st, outs, cuts = None, [], [0, 3, 21, 22, 37, 50]
    for a, e in zip(cuts[:-1], cuts[1:]):
        o, st = ref.ttt_linear(q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], lr[:, :, a:e], *args[4:], state=st)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 2), out_all, **TOL)
    assert_state_close(st, st_all, **TOL)


# --- TTT-MLP: an independent transcription of ttt-lm-pytorch's TTTMLP dual form ---

def gelu_bwd(x):
    tanh_out = torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x))
    return 0.5 * x * ((1 - tanh_out * tanh_out) * (0.79788456 + 0.1070322243 * x * x)) + 0.5 * (1 + tanh_out)


def ttt_lm_pytorch_mlp(XQ, XK, XV, lr, token_scale, W1, b1, W2, b2, ln_w, ln_b):
    B, nh, T, f = XQ.shape
    K = token_scale.shape[0]
    gelu = lambda x: torch.nn.functional.gelu(x, approximate="tanh")  # noqa: E731
    gamma, beta = ln_w.reshape(nh, 1, f), ln_b.reshape(nh, 1, f)
    W1, b1 = W1.expand(B, *W1.shape), b1.unsqueeze(-2).expand(B, nh, 1, -1)
    W2, b2 = W2.expand(B, *W2.shape), b2.unsqueeze(-2).expand(B, nh, 1, -1)
    outs = []
    for n in range(T // K):
        sl = slice(n * K, (n + 1) * K)
        XQ_mb, X1, XV_mb = XQ[:, :, sl], XK[:, :, sl], XV[:, :, sl]
        eta = token_scale.reshape(K, 1) * lr[:, :, sl].unsqueeze(-2)  # [B,nh,K,K]
        Z1 = X1 @ W1 + b1
        X2 = gelu(Z1)
        Z2 = X2 @ W2 + b2
        grad_l_wrt_Z2 = ln_fused_l2_bwd(Z2, XV_mb - X1, gamma, beta)
        grad_l_wrt_Z1 = grad_l_wrt_Z2 @ W2.transpose(-2, -1) * gelu_bwd(Z1)
        Attn1 = torch.tril(XQ_mb @ X1.transpose(-2, -1))
        b1_bar = b1 - torch.tril(eta) @ grad_l_wrt_Z1
        Z1_bar = XQ_mb @ W1 - (eta * Attn1) @ grad_l_wrt_Z1 + b1_bar
        X2_bar = gelu(Z1_bar)
        Attn2 = torch.tril(X2_bar @ X2.transpose(-2, -1))
        b2_bar = b2 - torch.tril(eta) @ grad_l_wrt_Z2
        Z2_bar = X2_bar @ W2 - (eta * Attn2) @ grad_l_wrt_Z2 + b2_bar
        last_eta = eta[:, :, -1, :, None]
        W1 = W1 - (last_eta * X1).transpose(-1, -2) @ grad_l_wrt_Z1
        b1 = b1 - torch.sum(last_eta * grad_l_wrt_Z1, dim=-2, keepdim=True)
        W2 = W2 - (last_eta * X2).transpose(-1, -2) @ grad_l_wrt_Z2
        b2 = b2 - torch.sum(last_eta * grad_l_wrt_Z2, dim=-2, keepdim=True)
        outs.append(XQ_mb + ln_fwd(Z2_bar, gamma, beta))
    return torch.cat(outs, 2), W1, W2


def mlp_inputs(D=4, b=4, T=16, B=2, H=2):
    q, k, v, lr, ts, W0, b0, ln_w, ln_b = sample_inputs(B=B, H=H, T=T, D=D, b=b)
    g = torch.Generator().manual_seed(3)
    W1 = 0.3 * torch.randn(H, D, 4 * D, generator=g, dtype=torch.float64)
    b1 = 0.1 * torch.randn(H, 4 * D, generator=g, dtype=torch.float64)
    W2 = 0.3 * torch.randn(H, 4 * D, D, generator=g, dtype=torch.float64)
    return q, k, v, lr, ts, W1, b1, W2, b0, ln_w, ln_b


def test_mlp_reference_matches_ttt_lm_pytorch():
    args = mlp_inputs(T=16)
    out, st = ref.ttt_mlp(*args)
    out_t, W1, W2 = ttt_lm_pytorch_mlp(*args)
    torch.testing.assert_close(out, out_t, **TOL)
    torch.testing.assert_close(st[0], W1, **TOL)
    torch.testing.assert_close(st[2], W2, **TOL)


def test_mlp_token_by_token_equals_one_call():
    args = mlp_inputs(T=11)
    q, k, v, lr = args[:4]
    out_all, st_all = ref.ttt_mlp(*args)
    st, outs = None, []
    for t in range(q.shape[2]):
        o, st = ref.ttt_mlp(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], lr[:, :, t:t + 1], *args[4:],
                            state=st)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 2), out_all, **TOL)
    for a, b_ in zip(st[:8], st_all[:8]):
        torch.testing.assert_close(a, b_, **TOL)
