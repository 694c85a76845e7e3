"""Pure-torch reference implementations of bitttt's ops: the oracles for tests and the
baselines for benchmarks. Readable first; nothing here is meant to be fast."""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------
# Ternary linear (docs/design.md §2)
# ---------------------------------------------------------------------------------------

ABSMAX_FLOOR = 1e-5  # s_x = 127 / max(absmax, 1e-5): an all-zero token quantizes to zeros


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization of x [..., K].

    Returns (x_q int8 [..., K], s_x float32 [...]), with x ≈ x_q / s_x. A token holding NaN
    or ±inf gets s_x = NaN and x_q = 0, so its outputs are NaN (the kernels do the same).
    """
    xf = x.float()
    finite = torch.isfinite(xf).all(dim=-1)
    xf = torch.where(finite.unsqueeze(-1), xf, torch.zeros_like(xf))
    absmax = xf.abs().amax(dim=-1) if xf.shape[-1] else xf.new_zeros(xf.shape[:-1])
    s_x = 127.0 / absmax.clamp(min=ABSMAX_FLOOR)
    x_q = torch.round(xf * s_x.unsqueeze(-1)).clamp(-128, 127).to(torch.int8)
    s_x = torch.where(finite, s_x, torch.full_like(s_x, float("nan")))
    return x_q, s_x


def quantize_weight_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization of w [N, K]: (q int8 in {-1, 0, 1}, s_w float32 [N]).

    One scale per tensor (s_w = mean|W|), stored once per output row so that matrices
    fused along N can keep their own scales.
    """
    wf = w.detach().float()
    s_w = wf.abs().mean().clamp(min=ABSMAX_FLOOR)
    q = torch.round(wf / s_w).clamp(-1, 1).to(torch.int8)
    return q, s_w.expand(w.shape[0]).contiguous()


def ternary_matmul_int8(x_q: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Exact x_q [M, K] @ q.T [K, N] in int64 (the kernels' int32 must equal it)."""
    return x_q.long() @ q.long().T


def ternary_linear(
    x: torch.Tensor, q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = (x_q @ q.T) * s_w / s_x (+ bias) with unpacked q int8 [N, K]; output dtype = x's."""
    x_q, s_x = quantize_activations(x)
    lead = x.shape[:-1]
    acc = ternary_matmul_int8(x_q.reshape(-1, x.shape[-1]), q).float()  # [M, N]
    y = acc * w_scale.float() / s_x.reshape(-1, 1)
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*lead, q.shape[0]).to(x.dtype)


# ---------------------------------------------------------------------------------------
# TTT-Linear (docs/design.md §3; Sun et al. 2024, as in ttt-lm-pytorch's TTT-Linear)
#
# Legend, per layer: B batch, H heads, T tokens, D head size, b mini-batch size.
#   q, k, v [B,H,T,D]   lr [B,H,T] (per token, already base_lr*sigmoid(..)/D)
#   token_scale [b]     ln_w, ln_b [H,D]   fast weights W [B,H,D,D], c [B,H,D]
# State (W_s, c_s, gW, gc, pos): (W_s, c_s) are the fast weights at the start of the
# current mini-batch, (gW, gc) the lr-weighted gradient sums accumulated inside it, pos the
# absolute position of the next token. Mini-batches are aligned to absolute positions.
# ---------------------------------------------------------------------------------------

TTT_LN_EPS = 1e-6  # inner LayerNorm eps, as ttt-lm-pytorch's ln_fwd / ln_fused_l2_bwd


def ttt_layer_norm(x: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim with per-head affine ln_w, ln_b [H,D]; x [B,H,...,D]."""
    while ln_w.dim() < x.dim() - 1:  # [H,D] -> [H,1,..,D] to broadcast over the token dims
        ln_w, ln_b = ln_w.unsqueeze(-2), ln_b.unsqueeze(-2)
    mu = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return ln_w * (x - mu) / torch.sqrt(var + TTT_LN_EPS) + ln_b


def ttt_inner_grad(Z: torch.Tensor, target: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor) -> torch.Tensor:
    """G = ∂/∂Z ½‖LN(Z) − target‖², written out as ttt-lm-pytorch's ln_fused_l2_bwd.

    Z, target [B,H,...,D]; returns G with Z's shape. Differentiable (the backward of this
    function is the second derivative of LayerNorm, which the C++ backward hand-derives).
    """
    while ln_w.dim() < Z.dim() - 1:
        ln_w, ln_b = ln_w.unsqueeze(-2), ln_b.unsqueeze(-2)
    D = Z.shape[-1]
    mu = Z.mean(dim=-1, keepdim=True)
    var = Z.var(dim=-1, keepdim=True, unbiased=False)
    std = torch.sqrt(var + TTT_LN_EPS)
    x_hat = (Z - mu) / std
    y = ln_w * x_hat + ln_b
    grad_x_hat = (y - target) * ln_w
    return (D * grad_x_hat - grad_x_hat.sum(-1, keepdim=True)
            - x_hat * (grad_x_hat * x_hat).sum(-1, keepdim=True)) / (D * std)


def ttt_linear_primal_step(q_t, k_t, v_t, lr_t, token_scale, state, ln_w, ln_b):
    """One token in the primal form. q_t, k_t, v_t [B,H,D], lr_t [B,H].

    state = (W_s, c_s, gW, gc, pos); returns (out_t [B,H,D], new state).
    """
    W_s, c_s, gW, gc, pos = state
    b = token_scale.shape[0]
    i = pos % b                                                  # index inside the mini-batch
    Z = torch.einsum("bhd,bhde->bhe", k_t, W_s) + c_s            # [B,H,D] from the start state
    G = ttt_inner_grad(Z, v_t - k_t, ln_w, ln_b)                 # [B,H,D] reconstruct v - k
    gW = gW + lr_t[..., None, None] * k_t.unsqueeze(-1) * G.unsqueeze(-2)  # [B,H,D,D]
    gc = gc + lr_t[..., None] * G                                # [B,H,D]
    W_i = W_s - token_scale[i] * gW                              # fast weights after token i
    c_i = c_s - token_scale[i] * gc
    out_t = q_t + ttt_layer_norm(torch.einsum("bhd,bhde->bhe", q_t, W_i) + c_i, ln_w, ln_b)
    if i == b - 1:                                               # mini-batch done: commit
        return out_t, (W_i, c_i, torch.zeros_like(gW), torch.zeros_like(gc), pos + 1)
    return out_t, (W_s, c_s, gW, gc, pos + 1)


def ttt_linear_dual_minibatch(q, k, v, lr, token_scale, W_s, c_s, ln_w, ln_b, gW=None, gc=None):
    """One full, aligned mini-batch in the dual form.

    q, k, v [B,H,b,D], lr [B,H,b]; returns (out [B,H,b,D], W_s', c_s') where (W_s', c_s')
    are the weights after the mini-batch. Equal to b primal steps, with matrix products.
    gW, gc: accumulators on entry; zero on a boundary for any state this code produces, but
    an arbitrary incoming state may carry some, and then they count as in the primal form.
    """
    Z = k @ W_s + c_s.unsqueeze(-2)                              # [B,H,b,D]
    G = ttt_inner_grad(Z, v - k, ln_w, ln_b)                     # [B,H,b,D]
    eta = token_scale[:, None] * lr.unsqueeze(-2)                # [B,H,b,b] eta[i,j] = ts_i lr_j
    # Row i sees tokens j <= i: Z̄_i = q_i W_s + c_s − Σ_{j≤i} eta_ij (q_i·k_j + 1) G_j
    attn = torch.tril(eta * (q @ k.transpose(-1, -2) + 1))      # [B,H,b,b]
    Z_bar = q @ W_s + c_s.unsqueeze(-2) - attn @ G               # [B,H,b,D]
    gW_sum = (k * lr.unsqueeze(-1)).transpose(-1, -2) @ G        # [B,H,D,D]
    gc_sum = (lr.unsqueeze(-1) * G).sum(-2)                      # [B,H,D]
    if gW is not None:
        Z_bar = Z_bar - token_scale[:, None] * (q @ gW + gc.unsqueeze(-2))
        gW_sum, gc_sum = gW_sum + gW, gc_sum + gc
    out = q + ttt_layer_norm(Z_bar, ln_w, ln_b)
    W_new = W_s - token_scale[-1] * gW_sum
    c_new = c_s - token_scale[-1] * gc_sum
    return out, W_new, c_new


def ttt_linear(q, k, v, lr, token_scale, W0, b0, ln_w, ln_b, state=None, dual_form=True):
    """TTT-Linear over a sequence from any position (design §3), pure torch.

    Args: q, k, v [B,H,T,D]; lr [B,H,T]; token_scale [b]; W0 [H,D,D]; b0 [H,D];
    ln_w, ln_b [H,D]; state None (start from W0, b0 at pos 0) or (W, c, gW, gc, pos).
    Primal steps up to the next mini-batch boundary, the dual form for each full mini-batch
    (primal instead when dual_form=False), primal steps for the tail.
    Returns (out [B,H,T,D], (W_s, c_s, gW, gc, pos)).
    """
    B, H, T, D = q.shape
    b = token_scale.shape[0]
    if state is None:
        W = W0.unsqueeze(0).expand(B, H, D, D)
        c = b0.unsqueeze(0).expand(B, H, D)
        state = (W, c, torch.zeros_like(W), torch.zeros_like(c), 0)
    state = tuple(state)
    outs = []
    t = 0
    while t < T:
        pos = state[4]
        if dual_form and pos % b == 0 and T - t >= b:
            sl = slice(t, t + b)
            out, W, c = ttt_linear_dual_minibatch(q[:, :, sl], k[:, :, sl], v[:, :, sl], lr[:, :, sl],
                                                  token_scale, state[0], state[1], ln_w, ln_b,
                                                  state[2], state[3])
            state = (W, c, torch.zeros_like(state[2]), torch.zeros_like(state[3]), pos + b)
            outs.append(out)
            t += b
        else:
            out_t, state = ttt_linear_primal_step(q[:, :, t], k[:, :, t], v[:, :, t], lr[:, :, t],
                                                  token_scale, state, ln_w, ln_b)
            outs.append(out_t.unsqueeze(2))
            t += 1
    out = torch.cat(outs, dim=2) if outs else q.new_empty(q.shape)
    return out, state


# ---------------------------------------------------------------------------------------
# TTT-MLP (docs/design.md §3, second inner model): f(x) = gelu(x W1 + b1) W2 + b2, F = 4·D
#
# Same mini-batch rule and carried state as TTT-Linear, with the state
# (W1, b1, W2, b2, gW1, gb1, gW2, gb2, pos): W1 [B,H,D,F], b1 [B,H,F], W2 [B,H,F,D], b2 [B,H,D].
# Every segment (tokens inside one mini-batch) runs in the dual form with the carried
# accumulators, which for one token is exactly the primal step.
# ---------------------------------------------------------------------------------------


def gelu_tanh_grad(x: torch.Tensor) -> torch.Tensor:
    """d/dx gelu(x, approximate='tanh'), as ttt-lm-pytorch's gelu_bwd."""
    tanh_out = torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x))
    return 0.5 * x * ((1 - tanh_out * tanh_out) * (0.79788456 + 0.1070322243 * x * x)) + 0.5 * (1 + tanh_out)


def ttt_mlp(q, k, v, lr, token_scale, W1, b1, W2, b2, ln_w, ln_b, state=None):
    """TTT-MLP over a sequence from any position. q, k, v [B,H,T,D]; lr [B,H,T]; token_scale [b];
    W1 [H,D,F], b1 [H,F], W2 [H,F,D], b2 [H,D] (used when state is None); ln_w, ln_b [H,D].
    Returns (out [B,H,T,D], state tuple as above)."""
    B, H, T, D = q.shape
    b = token_scale.shape[0]
    if state is None:
        W1s, b1s = W1.expand(B, *W1.shape), b1.expand(B, *b1.shape)
        W2s, b2s = W2.expand(B, *W2.shape), b2.expand(B, *b2.shape)
        state = (W1s, b1s, W2s, b2s, torch.zeros_like(W1s), torch.zeros_like(b1s), torch.zeros_like(W2s),
                 torch.zeros_like(b2s), 0)
    W1s, b1s, W2s, b2s, gW1, gb1, gW2, gb2, pos = state
    gelu = lambda x: torch.nn.functional.gelu(x, approximate="tanh")  # noqa: E731
    outs, t = [], 0
    while t < T:
        i0 = pos % b
        n = min(b - i0, T - t)
        Q, K, V, L = q[:, :, t:t + n], k[:, :, t:t + n], v[:, :, t:t + n], lr[:, :, t:t + n]
        ts = token_scale[i0:i0 + n, None]                        # [n,1]
        lr_s = L.unsqueeze(-2)                                   # [B,H,1,n]: lr of token s
        # Inner gradients at the mini-batch start state.
        Z1 = K @ W1s + b1s.unsqueeze(-2)                         # [B,H,n,F]
        X2 = gelu(Z1)
        Z2 = X2 @ W2s + b2s.unsqueeze(-2)                        # [B,H,n,D]
        G2 = ttt_inner_grad(Z2, V - K, ln_w, ln_b)               # [B,H,n,D]
        G1 = (G2 @ W2s.transpose(-1, -2)) * gelu_tanh_grad(Z1)   # [B,H,n,F]
        # Z̄_t = x_t W + b − ts_t (x_t gW + gb + Σ_{s≤t} lr_s (x_t·x_s + 1) G_s), layer by layer.
        A1 = torch.tril(lr_s * (Q @ K.transpose(-1, -2) + 1))   # [B,H,n,n]
        Z1b = Q @ W1s + b1s.unsqueeze(-2) - ts * (Q @ gW1 + gb1.unsqueeze(-2) + A1 @ G1)
        X2b = gelu(Z1b)
        A2 = torch.tril(lr_s * (X2b @ X2.transpose(-1, -2) + 1))
        Z2b = X2b @ W2s + b2s.unsqueeze(-2) - ts * (X2b @ gW2 + gb2.unsqueeze(-2) + A2 @ G2)
        outs.append(Q + ttt_layer_norm(Z2b, ln_w, ln_b))
        Lc = L.unsqueeze(-1)                                     # [B,H,n,1]
        gW1 = gW1 + (K * Lc).transpose(-1, -2) @ G1
        gb1 = gb1 + (Lc * G1).sum(-2)
        gW2 = gW2 + (X2 * Lc).transpose(-1, -2) @ G2
        gb2 = gb2 + (Lc * G2).sum(-2)
        pos, t = pos + n, t + n
        if pos % b == 0:                                         # mini-batch done: commit
            ts_last = token_scale[-1]
            W1s, b1s, W2s, b2s = W1s - ts_last * gW1, b1s - ts_last * gb1, W2s - ts_last * gW2, b2s - ts_last * gb2
            gW1, gb1, gW2, gb2 = (torch.zeros_like(x) for x in (gW1, gb1, gW2, gb2))
    out = torch.cat(outs, dim=2) if outs else q.new_empty(q.shape)
    return out, (W1s, b1s, W2s, b2s, gW1, gb1, gW2, gb2, pos)
