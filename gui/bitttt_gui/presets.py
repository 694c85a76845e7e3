"""The preset table (model shape and training defaults) the launcher shows and estimates with.

One table, meant to equal ``bitttt.model``'s presets and the trainer's defaults;
the launcher cannot import ``bitttt`` (it loads torch), so the values live here too.
A test of the trainer side should compare the two tables once both exist.
"""

from __future__ import annotations

# Fields every preset sets; the launcher sends a flag only where the form differs.
COMMON = dict(
    mixer="ttt_linear",      # DESIGN §4 default mixer
    ternary=True,            # BitLinear everywhere but embedding/head/norms
    tokenizer="byte",        # byte-level: 256 symbols, nothing to train
    vocab_size=256,          # shown for the byte tokenizer; --tokenizer bpe trains --vocab-size
    mini_batch=16,           # TTT inner mini-batch b (DESIGN §3)
    grad_accum=1,
    device="auto",
    seed=1337,
)

# Must equal bitttt.config's PRESETS/TRAIN_PRESETS (tests/gui/test_gui_presets_match_trainer.py).
PRESETS: dict[str, dict] = {
    # ~3M parameters: `bitttt train` with no arguments, minutes on a laptop CPU.
    "tiny": dict(COMMON, n_layer=4, n_embd=256, n_head=4, seq_len=128, batch_size=16,
                 steps=500, lr=3e-3, warmup=50, eval_every=100, save_every=250, sample_every=250),
    # ~30M parameters: a single consumer GPU.
    "small": dict(COMMON, n_layer=8, n_embd=512, n_head=8, seq_len=512, batch_size=16,
                  steps=5000, lr=2e-3, warmup=200, eval_every=500, save_every=1000, sample_every=1000),
    # ≈ the TTT paper's 125M shape (12 × 768, 12 heads) with a byte vocabulary.
    "base": dict(COMMON, n_layer=12, n_embd=768, n_head=12, seq_len=1024, batch_size=32,
                 steps=20000, lr=1.5e-3, warmup=500, eval_every=1000, save_every=2000, sample_every=2000),
}

DEFAULT_PRESET = "tiny"


def ffn_size(n_embd: int) -> int:
    """SwiGLU hidden size: 8/3 · n_embd rounded up to a multiple of 256, as BitTTTConfig does."""
    return -(-(8 * n_embd // 3) // 256) * 256
