"""bitttt's layers."""

from bitttt.nn.bitlinear import BitLinear
from bitttt.nn.ttt import TTTCache, TTTLinear, TTTMLP

__all__ = ["BitLinear", "TTTCache", "TTTLinear", "TTTMLP"]
