"""bitttt: BitNet b1.58 ternary layers and Test-Time-Training layers for small language models.

`bitttt.ops` and `bitttt.nn` load torch and the native extension on first use, so that
`import bitttt` (and `bitttt --help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from bitttt.errors import BitttError, ConfigError, DataError

__version__ = "0.1.0"  # the one place the version lives (pyproject.toml reads it)

__all__ = ["ops", "nn", "reference", "BitttError", "ConfigError", "DataError", "__version__"]

_LAZY_SUBMODULES = {"ops", "nn", "reference"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"bitttt.{name}")
    raise AttributeError(f"module 'bitttt' has no attribute {name!r}")
