"""bitttt's layers."""

from bitttt.nn.bitlinear import BitLinear

__all__ = ["BitLinear"]
