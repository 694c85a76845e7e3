"""Parameter and training-memory estimate from the form's numbers (DESIGN §4 model shape).

tkinter-free and torch-free: it counts the shape from the form's numbers (the SwiGLU width
and the padded vocabulary from bitttt's torch-free ``config`` and ``tokenizer``) — embedding, n_layer × [RMSNorm, mixer, RMSNorm, SwiGLU], RMSNorm, LM head
(untied). Attention has q/k/v/o projections; TTT mixers have one projection shared by q and k
(each then has its own causal depthwise conv), v, o and a gate, the per-head inner-lr
projection, token scales, learned initial fast weights and LayerNorms.
Memory assumes AdamW in float32 with float32 master weights (ternary training
keeps latent float weights; fake quant costs activations, not parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

from bitttt.config import swiglu_width
from bitttt.tokenizer import ByteTokenizer, padded_vocab

BYTES_F32 = 4
ADAM_STATES = 2                 # exp_avg, exp_avg_sq
CPU_RUNTIME_BYTES = 600 << 20   # torch + Python + data pipeline, measured order of magnitude
CUDA_CONTEXT_BYTES = 700 << 20  # CUDA context and allocator slack on a fresh process
TIGHT_FRACTION = 0.8            # above this share of what is free: "tight"
CONV_KERNEL = 4                 # TTT's causal depthwise conv (DESIGN §3)


@dataclass
class Estimate:
    n_params: int
    n_ternary: int          # parameters inside ternary (BitLinear) matrices
    weights: int            # bytes
    grads: int
    optimizer: int
    activations: int
    overhead: int
    export_bytes: int       # packed inference export (BT2 2 bits/weight + fp32 rest)

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.overhead


def count_params(n_layer: int, n_embd: int, n_head: int, vocab_size: int, mixer: str = "ttt_linear",
                 mini_batch: int = 16) -> tuple[int, int]:
    """(all parameters, parameters in ternary matrices) of the DESIGN §4 model."""
    d, h = n_embd, max(n_head, 1)
    hd = d // h
    ffn = swiglu_width(d)
    proj = 4 * d * d                                    # attention: q k v o; TTT: qk (shared), v, o, gate
    mlp = 3 * d * ffn                                   # SwiGLU: gate, up, down
    if mixer == "ttt_linear":
        inner = h * hd * hd + h * hd                    # W0 [H,D,D], b0 [H,D]
    elif mixer == "ttt_mlp":
        inner = h * (hd * 4 * hd + 4 * hd + 4 * hd * hd + hd)  # two layers, hidden 4D
    else:
        inner = 0
    ttt_extra = 0
    if mixer.startswith("ttt"):
        ttt_extra = (d * h + h)             # inner-lr projection (full precision)
        ttt_extra += mini_batch             # learnable token scales a_i
        ttt_extra += 2 * h * hd             # inner LayerNorm ln_w, ln_b
        ttt_extra += 2 * d                  # post LayerNorm
        ttt_extra += 2 * (CONV_KERNEL * d + d)  # causal depthwise convs on q and k (weight, bias)
        ttt_extra += inner
    norms = 2 * d                           # two RMSNorms per block
    per_layer = proj + mlp + ttt_extra + norms
    ternary = n_layer * (proj + mlp)
    total = 2 * vocab_size * d + n_layer * per_layer + d   # embedding + head + final norm
    return total, ternary


def activation_bytes(n_layer: int, n_embd: int, n_head: int, vocab_size: int, batch_size: int,
                     seq_len: int, mixer: str = "ttt_linear", mini_batch: int = 16) -> int:
    """Saved activations for one micro-batch, float32, no recomputation (a rough upper guide)."""
    d, h = n_embd, max(n_head, 1)
    hd = d // h
    per_token = 18 * d + 4 * swiglu_width(d)        # norms, projections, residuals, fake-quant copies, SwiGLU
    if mixer == "attention":
        per_token += h * seq_len                # softmax scores without a fused kernel
    elif mixer == "ttt_linear":
        per_token += (h * hd * hd) // max(mini_batch, 1) + 4 * d     # mini-batch state checkpoints
    else:
        per_token += (h * 8 * hd * hd) // max(mini_batch, 1) + 12 * d
    tokens = batch_size * seq_len
    logits = 3 * vocab_size                     # logits, softmax, their gradient
    return BYTES_F32 * tokens * (n_layer * per_token + logits + 2 * d)


def model_vocab(tokenizer: str, vocab_size: int) -> int:
    """The model's vocabulary as the trainer builds it: the tokenizer's symbols and specials, padded."""
    return ByteTokenizer().vocab_size if tokenizer == "byte" else padded_vocab(vocab_size)


def estimate(s, device: str = "cpu") -> Estimate:
    """Estimate for a ``command.TrainSettings`` (or anything with the same fields) on ``device``."""
    vocab = model_vocab(s.tokenizer, s.vocab_size)
    n, n_tern = count_params(s.n_layer, s.n_embd, s.n_head, vocab, s.mixer, s.mini_batch)
    weights = BYTES_F32 * n
    act = activation_bytes(s.n_layer, s.n_embd, s.n_head, vocab, s.batch_size, s.seq_len,
                           s.mixer, s.mini_batch)
    overhead = CUDA_CONTEXT_BYTES if device == "cuda" else CPU_RUNTIME_BYTES
    if s.ternary:
        export = n_tern // 4 + BYTES_F32 * (n - n_tern)
    else:
        export = BYTES_F32 * n
    return Estimate(n_params=n, n_ternary=n_tern if s.ternary else 0, weights=weights, grads=weights,
                    optimizer=ADAM_STATES * weights, activations=act, overhead=overhead, export_bytes=export)


def verdict(total: int, available: int | None) -> tuple[str, str]:
    """('fits'|'tight'|'too_big'|'unknown', sentence) comparing the estimate with free memory."""
    from .events import fmt_bytes
    if not available:
        return "unknown", "free memory unknown"
    share = total / available
    if share > 1:
        return "too_big", (f"needs about {fmt_bytes(total)} but only {fmt_bytes(available)} is free: "
                           "lower the batch size or sequence length, or use gradient accumulation")
    if share > TIGHT_FRACTION:
        return "tight", f"about {share:.0%} of the {fmt_bytes(available)} free: may run out of memory"
    return "fits", f"about {share:.0%} of the {fmt_bytes(available)} free"
