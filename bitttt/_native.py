"""Loads bitttt's native extensions: `_C` always, `_C_cuda` when torch is a CUDA build.

`_C` defines the op schemas and the CPU kernels; `_C_cuda` (built with BITTTT_CUDA=on|auto)
registers CUDA kernels for the same ops. It links libtorch_cuda, so it is imported only beside
a CUDA torch; a CPU-only build or a CPU torch simply has no CUDA kernels.
"""

from __future__ import annotations

from types import ModuleType

import torch

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
    try:
        from bitttt import _C_cuda
    except ModuleNotFoundError:
        return None, "not compiled (build with BITTTT_CUDA=on)"
    except ImportError as e:  # built, but does not load beside this torch
        return None, f"compiled but failed to load: {e}"
    return _C_cuda, ""


C_cuda, cuda_unavailable_reason = _load_cuda()

__all__ = ["_C", "C_cuda", "cuda_unavailable_reason"]
