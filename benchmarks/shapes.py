"""Layer shapes for the benchmarks; they live in the package (bitttt.bench.shapes) so that
`bitttt bench` works from an installed wheel, and are re-exported here for scripts."""

from bitttt.bench.shapes import (  # noqa: F401
    TERNARY_QUICK_SHAPES,
    TERNARY_QUICK_TOKENS,
    TERNARY_SHAPES,
    TERNARY_TOKENS,
    Shape,
)
