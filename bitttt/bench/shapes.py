"""Layer shapes the benchmarks (and tests that want realistic sizes) use.

A shape is (N, K): N output features, K input features, as in a weight [N, K].
"""

from __future__ import annotations

Shape = tuple[int, int]

# BitNet b1.58 2B4T: hidden 2560, FFN 6912 (attention projections, FFN up/gate, FFN down),
# then a Llama-3-8B-sized FFN up projection, whose packed weights (14.7 MB) still fit the
# L3 of a desktop CPU while its float32 weights (235 MB) do not.
TERNARY_SHAPES: list[Shape] = [(2560, 2560), (6912, 2560), (2560, 6912), (4096, 14336)]

# Tokens per call: decode (1), small batched decode / speculative (8, 32), prefill chunks.
TERNARY_TOKENS: list[int] = [1, 8, 32, 128, 512]

# --quick: one shape, decode and a short prefill, enough to see that the kernels work.
TERNARY_QUICK_SHAPES: list[Shape] = [(2560, 2560)]
TERNARY_QUICK_TOKENS: list[int] = [1, 32]

# --device cuda: BitNet b1.58 2B4T's projections (attention 2560x2560, FFN down 2560x6912, FFN
# up or gate 6912x2560, and up+gate fused 13824x2560), from decode (1, 8) to prefill (2048).
TERNARY_CUDA_SHAPES: list[Shape] = [(2560, 2560), (6912, 2560), (2560, 6912), (13824, 2560)]
TERNARY_CUDA_TOKENS: list[int] = [1, 8, 128, 512, 2048]
TERNARY_CUDA_QUICK_SHAPES: list[Shape] = [(6912, 2560)]
TERNARY_CUDA_QUICK_TOKENS: list[int] = [1, 512]
