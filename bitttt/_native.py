"""Loads bitttt's native extensions: `_C` always, `_C_cuda` when torch is a CUDA build.

`_C` defines the op schemas and the CPU kernels; `_C_cuda` (built with BITTTT_CUDA=on|auto)
registers CUDA kernels for the same ops. It links libtorch_cuda, so it is imported only beside
a CUDA torch; a CPU-only build or a CPU torch simply has no CUDA kernels.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from bitttt.errors import ConfigError

try:
    from bitttt import _C
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "bitttt's native extension bitttt._C could not be loaded: "
        f"{e}. It is built against the torch you install with: "
        "pip install --no-build-isolation . (torch >= 2.10 must be installed first)"
    ) from e


def _load_cuda() -> tuple[ModuleType | None, str]:
    """(module, why not) for the CUDA kernels."""
    if not torch.version.cuda:
        return None, "torch is a CPU build"
    # Not `from bitttt import _C_cuda`: without the module that raises a plain ImportError
    # ("cannot import name"), which would read as "compiled but failed to load".
    try:
        module = importlib.import_module("bitttt._C_cuda")
    except ModuleNotFoundError as e:
        if e.name != "bitttt._C_cuda":  # the module exists but a library it needs does not
            return None, f"compiled but failed to load: {e}"
        return None, "not compiled (build with BITTTT_CUDA=on)"
    except ImportError as e:  # built, but does not load beside this torch
        return None, f"compiled but failed to load: {e}"
    return module, ""


def check_isa_setting() -> str:
    """The ternary kernel set in use; ConfigError (one line, exit 2) for a BITTTT_ISA that this
    CPU or build does not have, so that the mistake shows at start, not as a traceback from
    the first matrix multiply."""
    try:
        return _C.isa()
    except RuntimeError as e:
        raise ConfigError(f"BITTTT_ISA={os.environ.get('BITTTT_ISA', '')!r} is not a ternary kernel set this "
                          f"CPU and build have (available: {', '.join(_C.available_isas())})",
                          hint="unset BITTTT_ISA or set it to one of those; bitttt info lists them") from e


C_cuda, cuda_unavailable_reason = _load_cuda()
check_isa_setting()

__all__ = ["_C", "C_cuda", "cuda_unavailable_reason"]
