"""The plain fp32 nanoGPT-style transformer `bitttt bench train` compares with; it lives in
bitttt/bench/nanogpt.py so the bench runs from an installed wheel too."""

from bitttt.bench.nanogpt import MLP, BaselineConfig, Block, NanoGPT, SelfAttention  # noqa: F401
