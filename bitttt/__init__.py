"""bitttt: BitNet b1.58 ternary layers and Test-Time-Training layers for small language models."""

from bitttt import ops
from bitttt.errors import BitttError, ConfigError, DataError

__version__ = "0.1.0"

__all__ = ["ops", "BitttError", "ConfigError", "DataError", "__version__"]
