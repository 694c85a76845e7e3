"""TTT-MLP in plain torch (design §3): what nn.TTTMLP runs where the C++ op has no kernel
(CUDA, MPS). Autograd differentiates it; same state contract as ops.ttt_mlp (ops.TTTMLPState).

The math is the op's: per segment (tokens inside one mini-batch) the dual form with the carried
accumulators, inner loss ½‖LN(f(k)) − (v − k)‖² with f(x) = gelu(x W1 + b1) W2 + b2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitttt import ops

LN_EPS = 1e-6  # the inner LayerNorm's eps (csrc/ttt_mlp/ttt_mlp.h kLnEps)
# gelu'(x) with ttt-lm-pytorch's rounded constants, as the kernels' G1 (csrc/ttt_mlp kRefC, kRefK)
_GELU_C, _GELU_A, _GELU_K = 0.79788456, 0.044715, 0.1070322243


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_derivative(x: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(_GELU_C * x * (1 + _GELU_A * x * x))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * (_GELU_C + _GELU_K * x * x)


def _layer_norm(z: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor) -> torch.Tensor:
    """Per-head LayerNorm: z [B,H,n,D], ln_w, ln_b [H,D]."""
    return F.layer_norm(z, z.shape[-1:], eps=LN_EPS) * ln_w[:, None] + ln_b[:, None]


def _l2_layer_norm_grad(z: torch.Tensor, target: torch.Tensor, ln_w: torch.Tensor,
                        ln_b: torch.Tensor) -> torch.Tensor:
    """∂/∂z of ½‖LN(z) − target‖² for z, target [B,H,n,D] (LayerNorm's backward, written out)."""
    mu = z.mean(-1, keepdim=True)
    std = ((z - mu).square().mean(-1, keepdim=True) + LN_EPS).sqrt()
    z_hat = (z - mu) / std
    g = (ln_w[:, None] * z_hat + ln_b[:, None] - target) * ln_w[:, None]  # ∂/∂z_hat
    return (g - g.mean(-1, keepdim=True) - z_hat * (g * z_hat).mean(-1, keepdim=True)) / std


def ttt_mlp_torch(q, k, v, lr, token_scale, W1, b1, W2, b2, ln_w, ln_b,
                  state: ops.TTTMLPState | None = None) -> tuple[torch.Tensor, ops.TTTMLPState]:
    """TTT-MLP over T tokens from state.pos; the arguments and result of ops.ttt_mlp.

    q, k, v [B,H,T,D]; lr [B,H,T]; token_scale [b]; W1 [H,D,F], b1 [H,F], W2 [H,F,D], b2 [H,D]
    (used when state is None); ln_w, ln_b [H,D]. Returns (out [B,H,T,D], ops.TTTMLPState).
    """
    B, T = q.shape[0], q.shape[2]
    b = token_scale.shape[0]
    if state is None:
        w = [p.expand(B, *p.shape) for p in (W1, b1, W2, b2)]
        state = ops.TTTMLPState(*w, *(torch.zeros_like(x) for x in w), 0)
    W1, b1, W2, b2, gW1, gb1, gW2, gb2, pos = ops.TTTMLPState(*state)
    outs, t = [], 0
    while t < T:
        i0 = pos % b
        n = min(b - i0, T - t)                                   # tokens of this segment
        Q, K, V = q[:, :, t:t + n], k[:, :, t:t + n], v[:, :, t:t + n]
        L = lr[:, :, t:t + n]                                    # [B,H,n]
        ts = token_scale[i0:i0 + n].view(n, 1)
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        # inner gradients of every token's loss at the segment's start weights
        Z1 = K @ W1 + b1[:, :, None]                             # [B,H,n,F]
        X2 = _gelu(Z1)
        G2 = _l2_layer_norm_grad(X2 @ W2 + b2[:, :, None], V - K, ln_w, ln_b)  # [B,H,n,D]
        G1 = (G2 @ W2.transpose(-1, -2)) * _gelu_derivative(Z1)  # [B,H,n,F]
        # token t sees the weights after tokens s <= t: W − ts_t (gW + Σ_s lr_s x_s^T G_s)
        M1 = torch.where(causal, (Q @ K.transpose(-1, -2) + 1) * L[:, :, None], 0.0)
        Z1b = Q @ W1 + b1[:, :, None] - ts * (Q @ gW1 + gb1[:, :, None] + M1 @ G1)
        X2b = _gelu(Z1b)
        M2 = torch.where(causal, (X2b @ X2.transpose(-1, -2) + 1) * L[:, :, None], 0.0)
        Z2b = X2b @ W2 + b2[:, :, None] - ts * (X2b @ gW2 + gb2[:, :, None] + M2 @ G2)
        outs.append(Q + _layer_norm(Z2b, ln_w, ln_b))
        Lw = L[..., None]
        gW1 = gW1 + K.transpose(-1, -2) @ (Lw * G1)
        gb1 = gb1 + (Lw * G1).sum(2)
        gW2 = gW2 + X2.transpose(-1, -2) @ (Lw * G2)
        gb2 = gb2 + (Lw * G2).sum(2)
        t, pos = t + n, pos + n
        if pos % b == 0:                                         # the mini-batch is complete
            step = token_scale[b - 1]
            W1, b1, W2, b2 = W1 - step * gW1, b1 - step * gb1, W2 - step * gW2, b2 - step * gb2
            gW1, gb1, gW2, gb2 = (torch.zeros_like(g) for g in (gW1, gb1, gW2, gb2))
    out = torch.cat(outs, dim=2) if outs else torch.empty_like(q)
    return out, ops.TTTMLPState(W1, b1, W2, b2, gW1, gb1, gW2, gb2, pos)
