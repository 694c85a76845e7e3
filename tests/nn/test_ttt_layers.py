"""TTTLinear and TTTMLP (bitttt/nn/ttt.py): decode = one call, gradients, torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitttt.nn import TTTCache, TTTLinear, TTTMLP

TOL = dict(rtol=1e-4, atol=1e-4)  # float32 through several LayerNorms and ternary projections

VARIANTS = [
    dict(),
    dict(use_conv=True, use_gate=True),
    dict(ternary=False, mini_batch_size=4),
]


def make(cls, seed=0, **kw):
    torch.manual_seed(seed)
    layer = cls(32, 4, **kw)
    with torch.no_grad():  # move away from the zero init so every path matters
        layer.token_scale_offset.normal_(0, 0.05)
        layer.ln_b.normal_(0, 0.1)
    return layer


@pytest.mark.parametrize("cls", [TTTLinear, TTTMLP])
@pytest.mark.parametrize("kw", VARIANTS, ids=["plain", "conv+gate", "fp-b4"])
@pytest.mark.parametrize("p", [0, 1, 17])
def test_prefill_then_step_equals_one_call(cls, kw, p):
    layer = make(cls, **kw)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        full = layer(x)
        cache = TTTCache()
        outs = [layer(x[:, :p], cache)] if p else []
        for t in range(p, x.shape[1]):
            outs.append(layer.step(x[:, t], cache).unsqueeze(1))
    torch.testing.assert_close(torch.cat(outs, 1), full, **TOL)
    assert cache.pos == x.shape[1]


@pytest.mark.parametrize("cls", [TTTLinear, TTTMLP])
def test_chunked_forward_with_cache_equals_one_call(cls, isa):
    layer = make(cls, use_conv=True)
    x = torch.randn(1, 40, 32)
    with torch.no_grad():
        full = layer(x)
        cache = TTTCache()
        # chunks shorter than, as long as and longer than the conv's K - 1 = 3 carried inputs
        parts = [layer(x[:, a:e], cache) for a, e in ((0, 5), (5, 7), (7, 10), (10, 19), (19, 40))]
    torch.testing.assert_close(torch.cat(parts, 1), full, **TOL)


@pytest.mark.parametrize("cls", [TTTLinear, TTTMLP])
def test_every_parameter_gets_a_gradient(cls, isa):
    layer = make(cls, use_conv=True, use_gate=True)
    layer(torch.randn(2, 19, 32)).square().mean().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no/bad gradient for {missing}"


def test_ttt_linear_matches_mlp_free_reference_gradients():
    """The layer's C++ path and the same layer on the pure-torch reference agree, values and grads."""
    from bitttt import ops, reference

    layer = make(TTTLinear, ternary=False)
    x = torch.randn(2, 19, 32)
    layer(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    orig = ops.ttt_linear
    try:
        layer._inner = lambda q, k, v, lr, state: reference.ttt_linear(  # noqa: E731
            q, k, v, lr, layer.token_scale(), layer.W0, layer.b0, layer.ln_w, layer.ln_b, state=state)
        layer(x).sum().backward()
    finally:
        del layer._inner
        assert ops.ttt_linear is orig
    for n, p in layer.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-3, atol=1e-4, msg=lambda m, n=n: f"{n}: {m}")


def test_ttt_mlp_torch_path_matches_the_op(isa):
    """TTTMLP's plain-torch path (what runs off the CPU) against the C++ op, values and grads,
    from scratch and from a cache in the middle of a mini-batch."""
    from bitttt.nn.ttt_mlp_torch import ttt_mlp_torch

    layer = make(TTTMLP, ternary=False, mini_batch_size=4)
    x = torch.randn(2, 19, 32)
    results = []
    for torch_path in (False, True):
        if torch_path:
            layer._inner = lambda q, k, v, lr, state: ttt_mlp_torch(  # noqa: E731
                q, k, v, lr, layer.token_scale(), layer.W1, layer.b1, layer.W2, layer.b2, layer.ln_w, layer.ln_b,
                state=state)
        try:
            cache = TTTCache()
            y = torch.cat([layer(x[:, :6], cache), layer(x[:, 6:], cache)], 1)
            y.square().sum().backward()
        finally:
            layer.__dict__.pop("_inner", None)
        results.append((y.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()}))
        layer.zero_grad()
    (y_op, g_op), (y_t, g_t) = results
    torch.testing.assert_close(y_t, y_op, **TOL)
    for n in g_op:
        torch.testing.assert_close(g_t[n], g_op[n], rtol=1e-3, atol=1e-4, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.slow
def test_torch_compile_ttt_linear():
    layer = make(TTTLinear, use_conv=True, use_gate=True)
    x = torch.randn(2, 37, 32, requires_grad=True)
    eager = layer(x)
    g_eager = torch.autograd.grad(eager.sum(), x)[0]
    compiled = torch.compile(layer, fullgraph=True)
    out = compiled(x)
    g = torch.autograd.grad(out.sum(), x)[0]
    torch.testing.assert_close(out, eager, **TOL)
    torch.testing.assert_close(g, g_eager, **TOL)



def ttt_linear_written_out(layer, x):
    """TTTLinear's forward with each projection called alone, on the reference inner model."""
    from bitttt import reference
    from bitttt.nn.rope import apply_rope, rope_cos_sin
    B, T, C = x.shape
    H, D = layer.num_heads, layer.head_dim
    heads = lambda t: t.reshape(B, T, H, D).transpose(1, 2)  # noqa: E731
    if layer.use_conv:
        qk = layer.qk_proj(x)
        q, k = layer.conv_q(qk)[0], layer.conv_k(qk)[0]
    else:
        q, k = layer.q_proj(x), layer.k_proj(x)
    cos, sin = rope_cos_sin(torch.arange(T) % layer.mini_batch_size, D, layer.rope_theta, x.dtype)
    q, k = apply_rope(heads(q), cos, sin), apply_rope(heads(k), cos, sin)
    lr = layer.base_lr * torch.sigmoid(layer.lr_proj(x)).transpose(1, 2) / D
    out, _ = reference.ttt_linear(q, k, heads(layer.v_proj(x)), lr, layer.token_scale(), layer.W0, layer.b0,
                                  layer.ln_w, layer.ln_b)
    y = layer.post_norm(out.transpose(1, 2).reshape(B, T, C))
    return layer.o_proj(F.gelu(layer.g_proj(x), approximate="tanh") * y)


@pytest.mark.parametrize("kw", [dict(use_gate=True), dict(use_conv=True, use_gate=True), dict(ternary=False, use_gate=True)],
                         ids=["gate", "conv+gate", "fp-gate"])
def test_training_forward_with_shared_projections_equals_the_layers_alone(kw):
    # while training the projections of x run as one op (bitlinear.shared_input_linears): the
    # output and gradients are those of each projection called alone, written out
    layer = make(TTTLinear, **kw)
    x = torch.randn(2, 19, 32)
    got = layer(x)
    got.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    want = ttt_linear_written_out(layer, x)
    want.square().mean().backward()
    torch.testing.assert_close(got, want, **TOL)
    for n, p in layer.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-3, atol=1e-4, msg=lambda m, n=n: f"{n}: {m}")
