"""TTT layers (design §3): TTTLinear and TTTMLP (the C++ ops), with a decode cache.

Legend: B batch, T tokens, C = hidden size, H heads, D = C / H head size, b mini-batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitttt import ops
from bitttt.nn import decode
from bitttt.nn.bitlinear import BitLinear, shared_input_linears
from bitttt.nn.rope import apply_rope, rope_cos_sin  # rotate-half, as the TTT reference
from bitttt.nn.ttt_mlp_torch import ttt_mlp_torch


@dataclass
class TTTCache:
    """Decode cache of one TTT layer, updated in place by forward(x, cache) and step().

    state: the inner model's carried state (ops.TTTState for TTTLinear, ops.TTTMLPState for TTTMLP),
    None before the first token; conv: the last conv_kernel − 1 projected inputs [B, K−1, C]
    when the layer has its causal conv; pos: absolute position of the next token.
    """

    state: Any = None
    conv: torch.Tensor | None = None
    pos: int = 0


class CausalDepthwiseConv(nn.Module):
    """Causal depthwise conv over time, x [B,T,C] -> [B,T,C]; `prev` holds the K−1 inputs before x."""

    def __init__(self, channels: int, kernel: int = 4) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels, bias=True)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        K1 = self.kernel - 1
        prev = x.new_zeros(B, K1, C) if prev is None else prev.to(x.dtype)
        if T >= max(K1, 2) and ops.uses_train_kernel(x, prev, self.conv.weight):
            # one C++ pass in this layout, forward and backward; the next call's prev is x's
            # last K−1 inputs, with no [B, K−1+T, C] concatenation (two per layer per step)
            return ops.causal_conv1d(x, prev, self.conv.weight[:, 0], self.conv.bias), x[:, T - K1:]
        xp = torch.cat((prev, x), dim=1)                          # [B, K−1+T, C]
        if T == 1:  # decode: one dot product per channel; a Conv1d call costs ~10x more on CPU
            w = self.conv.weight[:, 0].t().to(x.dtype)            # [K, C]
            return (xp * w).sum(1, keepdim=True) + self.conv.bias.to(x.dtype), xp[:, 1:]
        tail = xp[:, xp.shape[1] - K1:]                           # [B, K−1, C]: the next call's prev
        if ops.uses_train_kernel(xp, self.conv.weight):  # one C++ pass in this layout, forward and backward
            return ops.causal_conv1d(x, prev, self.conv.weight[:, 0], self.conv.bias), tail
        y = self.conv(xp.transpose(1, 2)).transpose(1, 2)         # [B, T, C]
        return y, tail


class _TTTBase(nn.Module):
    """Projections around an inner model: q/k/v/output (and gate) ternary, lr full precision,
    RoPE on q/k at position mod b, optional causal conv on q/k and gate (the paper's Mamba
    backbone variant), post LayerNorm."""

    def __init__(self, hidden_size: int, num_heads: int, mini_batch_size: int = 16, base_lr: float = 1.0,
                 rope_theta: float = 10000.0, use_gate: bool = False, use_conv: bool = False,
                 conv_kernel: int = 4, ternary: bool = True) -> None:
        super().__init__()
        if hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise ValueError(f"{type(self).__name__}: hidden_size={hidden_size} must split into num_heads={num_heads} "
                             "heads of an even size (RoPE)")
        C, H = hidden_size, num_heads
        self.hidden_size, self.num_heads, self.head_dim = C, H, C // H
        self.mini_batch_size, self.base_lr, self.rope_theta = mini_batch_size, base_lr, rope_theta
        self.use_gate, self.use_conv = use_gate, use_conv
        linear = (lambda i, o: BitLinear(i, o)) if ternary else (lambda i, o: nn.Linear(i, o, bias=False))
        if use_conv:  # shared q/k projection, separate causal convs (ttt-lm-pytorch share_qk)
            self.qk_proj = linear(C, C)
            self.conv_q = CausalDepthwiseConv(C, conv_kernel)
            self.conv_k = CausalDepthwiseConv(C, conv_kernel)
        else:
            self.q_proj, self.k_proj = linear(C, C), linear(C, C)
        self.v_proj, self.o_proj = linear(C, C), linear(C, C)
        if use_gate:
            self.g_proj = linear(C, C)
        self.lr_proj = nn.Linear(C, H)  # full precision: lr_j = base_lr·sigmoid(x_j·w_h + c_h)/D
        self.token_scale_offset = nn.Parameter(torch.zeros(mini_batch_size))  # a_i in 1/(i+1) + a_i
        self.ln_w = nn.Parameter(torch.ones(H, self.head_dim))  # inner LayerNorm
        self.ln_b = nn.Parameter(torch.zeros(H, self.head_dim))
        self.post_norm = nn.LayerNorm(C, eps=1e-6)
        self.register_buffer("token_idx", 1.0 / torch.arange(1, mini_batch_size + 1, dtype=torch.float32),
                             persistent=False)

    def init_cache(self) -> TTTCache:
        return TTTCache()

    def token_scale(self) -> torch.Tensor:
        return torch.clamp(self.token_idx + self.token_scale_offset, min=0.0)  # [b]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # [B,H,T,D]

    def _project(self, x: torch.Tensor, cache: TTTCache | None):
        """q, k, v [B,H,T,D], lr [B,H,T] and the gate's projection (None without a gate) for
        x [B,T,C]; advances the conv cache."""
        T = x.shape[1]
        pos0 = cache.pos if cache is not None else 0
        pos = torch.arange(T, device=x.device) + pos0  # [T]
        q, k, v, lr, gate, new_prev = self._project_at(x, cache.conv if cache is not None else None, pos)
        if cache is not None and new_prev is not None:
            cache.conv = new_prev.detach()
        return q, k, v, lr, gate

    def _project_at(self, x: torch.Tensor, prev: torch.Tensor | None, pos: torch.Tensor):
        """_project with the conv's previous inputs prev [B,K−1,C] (or None) and absolute
        positions pos [T], or [B,1,1] for one token per row at its own position (step_rows).
        Returns q, k, v, lr, the gate's projection (None without a gate) and the conv's next
        previous inputs (None without a conv)."""
        new_prev = None
        # the projections of x as one op while training (shared_input_linears)
        gate_proj = [self.g_proj] if self.use_gate else []
        if self.use_conv:
            qk, v, *gate = shared_input_linears(x, [self.qk_proj, self.v_proj, *gate_proj])
            q, new_prev = self.conv_q(qk, prev)
            k, _ = self.conv_k(qk, prev)
        else:
            q, k, v, *gate = shared_input_linears(x, [self.q_proj, self.k_proj, self.v_proj, *gate_proj])
        v = self._heads(v)
        cos, sin = rope_cos_sin(pos % self.mini_batch_size, self.head_dim, self.rope_theta, q.dtype)
        if pos.dim() == 1 and ops.uses_train_kernel(q, k):  # one pass, the same values (ops.rope_heads)
            q, k = ops.rope_heads(q, cos, sin, self.num_heads), ops.rope_heads(k, cos, sin, self.num_heads)
        else:
            q, k = apply_rope(self._heads(q), cos, sin), apply_rope(self._heads(k), cos, sin)
        if pos.dim() == 3:  # a row batch: a float GEMM's rounding depends on M, and each row must get what it gets alone
            lr_logit = torch.cat([self.lr_proj(x[i:i + 1]) for i in range(x.shape[0])])
        else:
            lr_logit = self.lr_proj(x)
        lr = self.base_lr * torch.sigmoid(lr_logit).transpose(1, 2) / self.head_dim  # [B,H,T]
        return q, k, v, lr, (gate[0] if gate else None), new_prev

    def _output(self, x: torch.Tensor, out: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        y = self.post_norm(out.transpose(1, 2).reshape(B, T, C).to(x.dtype))
        if self.use_gate:
            if torch.is_grad_enabled() and (gate.requires_grad or y.requires_grad) and ops.uses_train_kernel(gate, y):
                y = ops.gelu_tanh_mul(gate, y)  # training: one C++ pass each way (inference keeps torch's bits)
            else:
                y = F.gelu(gate, approximate="tanh") * y
        return self.o_proj(y)

    def forward(self, x: torch.Tensor, cache: TTTCache | None = None) -> torch.Tensor:
        """x [B,T,C] -> [B,T,C]. With a cache, continues from it and updates it in place."""
        q, k, v, lr, gate = self._project(x, cache)
        out, state = self._inner(q, k, v, lr, cache.state if cache is not None else None)
        if cache is not None:
            cache.state, cache.pos = state, cache.pos + x.shape[1]
        return self._output(x, out, gate)

    @torch.no_grad()
    def step(self, x: torch.Tensor, cache: TTTCache) -> torch.Tensor:
        """One token x [B,C] -> [B,C] for generation; updates the cache in place."""
        if decode.takes_fused_decode(x):
            names = ((["qk_proj"] if self.use_conv else ["q_proj", "k_proj"]) + ["v_proj"]
                     + (["g_proj"] if self.use_gate else []))
            proj = decode.fused_linear(self, "in_proj", [getattr(self, n) for n in names])
            if proj is not None:
                return self._step_fused(x, cache, proj)
        x = x.unsqueeze(1)
        q, k, v, lr, gate = self._project(x, cache)
        out, cache.state = self._inner_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], lr[:, :, 0], cache.state)
        cache.pos += 1
        return self._output(x, out.unsqueeze(2), gate)[:, 0]

    def _step_fused(self, x: torch.Tensor, cache: TTTCache, proj: decode.FusedLinear) -> torch.Tensor:
        """step() for one token of one sequence (bitttt.nn.decode): the same math as the per-op
        path in fewer ops. x [1,C] -> [1,C]. proj: the input projections' rows (qk | q, k), v, (g)."""
        C, H, D = self.hidden_size, self.num_heads, self.head_dim
        h = proj(x)  # [1, n*C]
        if self.use_conv:  # both convs over the same inputs: one product and sum for the two
            w, b = decode.derived(self, "conv", [self.conv_q.conv.weight, self.conv_k.conv.weight,
                                                 self.conv_q.conv.bias, self.conv_k.conv.bias], self._conv_tables)
            prev = cache.conv if cache.conv is not None else x.new_zeros(1, self.conv_q.kernel - 1, C)
            xp = torch.cat((prev, h[:, None, :C]), dim=1)  # [1, K, C]
            qk = (xp * w).sum(1) + b  # [2, C]: q, k
            cache.conv = xp[:, 1:]
            rest = h[:, C:]
        else:
            qk, rest = h[:, :2 * C].view(2, C), h[:, 2 * C:]
        cos, sin = decode.derived(self, "rope", [self.ln_w], self._rope_tables)  # ln_w: the device
        p = cache.pos % self.mini_batch_size
        qk = ops.rope_heads(qk.view(2, 1, C), cos[p:p + 1], sin[p:p + 1], H)  # [2, H, 1, D]: q and k as two rows
        q, k, v = qk[0:1, :, 0], qk[1:2, :, 0], rest[:, :C].view(1, H, D)
        lr = self.base_lr * torch.sigmoid(F.linear(x, self.lr_proj.weight, self.lr_proj.bias)) / D  # [1, H]
        out, cache.state = self._inner_step(q, k, v, lr, cache.state)
        cache.pos += 1
        n = self.post_norm
        y = F.layer_norm(out.reshape(1, C), (C,), n.weight, n.bias, n.eps)
        if self.use_gate:
            y = F.gelu(rest[:, C:], approximate="tanh") * y
        return self.o_proj(y)

    def _conv_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """conv_q's and conv_k's weights [2, K, C] and biases [2, C], as their one-token step reads them."""
        w = torch.stack([c.conv.weight[:, 0].t() for c in (self.conv_q, self.conv_k)])
        return w, torch.stack([self.conv_q.conv.bias, self.conv_k.conv.bias])

    def _rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [b, D] of the positions 0..b-1 within a mini-batch (float32, on the weights' device)."""
        positions = torch.arange(self.mini_batch_size, device=self.ln_w.device)
        return rope_cos_sin(positions, self.head_dim, self.rope_theta, torch.float32)

    @torch.no_grad()
    def step_rows(self, x: torch.Tensor, caches: list[TTTCache]) -> torch.Tensor:
        """One token for each of B independent sequences (bitttt serve's batch): x [B,C] -> [B,C],
        row i continuing caches[i] (each a batch-1 cache at its own position, updated in place).
        The projections run once over all rows (one ternary GEMM with M = B); the inner model,
        whose mini-batch depends on each row's position, steps row by row on the row's state."""
        B, C = x.shape
        x = x.unsqueeze(1)  # [B,1,C]
        pos = torch.tensor([c.pos for c in caches], device=x.device).view(B, 1, 1)  # cos, sin [B,1,1,D]
        prev = None
        if self.use_conv:
            K1 = self.conv_q.kernel - 1
            prev = torch.cat([c.conv if c.conv is not None else x.new_zeros(1, K1, C) for c in caches])
        q, k, v, lr, gate, new_prev = self._project_at(x, prev, pos)
        outs = []
        for i, cache in enumerate(caches):
            out, cache.state = self._inner_step(q[i:i + 1, :, 0], k[i:i + 1, :, 0], v[i:i + 1, :, 0],
                                                lr[i:i + 1, :, 0], cache.state)
            outs.append(out)
            cache.pos += 1
            if new_prev is not None:
                cache.conv = new_prev[i:i + 1].clone()  # its own tensor: the batch's is freed with the step
        return self._output(x, torch.cat(outs).unsqueeze(2), gate)[:, 0]


class TTTLinear(_TTTBase):
    """TTT layer with a linear inner model (design §3) on the C++ op `bitttt.ops.ttt_linear`."""

    def __init__(self, hidden_size: int, num_heads: int, **kw) -> None:
        super().__init__(hidden_size, num_heads, **kw)
        H, D = num_heads, self.head_dim
        self.W0 = nn.Parameter(torch.randn(H, D, D) * 0.02)  # fast weights stay float32 (design §3)
        self.b0 = nn.Parameter(torch.zeros(H, D))

    def _inner(self, q, k, v, lr, state):
        return ops.ttt_linear(q, k, v, lr, self.token_scale(), self.W0, self.b0, self.ln_w, self.ln_b, state=state)

    def _inner_step(self, q, k, v, lr, state):
        if state is None:
            B, H, D = q.shape
            W = self.W0.detach().expand(B, H, D, D).contiguous()
            c = self.b0.detach().expand(B, H, D).contiguous()
            state = ops.TTTState(W, c, torch.zeros_like(W), torch.zeros_like(c), 0)
        return ops.ttt_linear_decode_(q, k, v, lr, self.token_scale(), state, self.ln_w, self.ln_b)


class TTTMLP(_TTTBase):
    """TTT layer with a 2-layer MLP inner model, hidden 4·D, on the C++ op `bitttt.ops.ttt_mlp`
    (CPU). The op has no CUDA kernel yet: on other devices the layer runs its plain-torch
    composition (`bitttt.nn.ttt_mlp_torch`), with the same state (an ops.TTTMLPState)."""

    def __init__(self, hidden_size: int, num_heads: int, **kw) -> None:
        super().__init__(hidden_size, num_heads, **kw)
        H, D = num_heads, self.head_dim
        self.W1 = nn.Parameter(torch.randn(H, D, 4 * D) * 0.02)
        self.b1 = nn.Parameter(torch.zeros(H, 4 * D))
        self.W2 = nn.Parameter(torch.randn(H, 4 * D, D) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(H, D))

    def _inner(self, q, k, v, lr, state):
        dt = self.W1.dtype
        args = (q.to(dt), k.to(dt), v.to(dt), lr.to(dt), self.token_scale().to(dt), self.W1, self.b1, self.W2,
                self.b2, self.ln_w, self.ln_b)
        if q.device.type == "cpu":
            out, state = ops.ttt_mlp(*args, state=state)
        else:
            out, state = ttt_mlp_torch(*args, state=state)
        return out.to(q.dtype), state

    def _inner_step(self, q, k, v, lr, state):
        if q.device.type != "cpu":
            out, state = self._inner(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), lr.unsqueeze(2), state)
            return out[:, :, 0], state
        dt = self.W1.dtype
        if state is None:
            B = q.shape[0]
            w = [p.detach().expand(B, *p.shape).contiguous() for p in (self.W1, self.b1, self.W2, self.b2)]
            state = ops.TTTMLPState(*w, *(torch.zeros_like(x) for x in w), 0)
        elif not all(t.is_contiguous() for t in state[:8]):  # the step updates the state in place
            state = ops.TTTMLPState(*(t.contiguous() for t in state[:8]), state[8])
        out, state = ops.ttt_mlp_decode_(q.to(dt), k.to(dt), v.to(dt), lr.to(dt), self.token_scale().to(dt), state,
                                         self.ln_w, self.ln_b)
        return out.to(q.dtype), state
