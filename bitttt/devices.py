"""Where a model runs: `--device auto|cpu|cuda` and the memory figure of step events.

Torch loads only inside the functions, so the choices can be read without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitttt.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def pick_device(name: str) -> torch.device:
    """auto: CUDA when available, else CPU. ConfigError for cuda without a device."""
    import torch

    if name not in DEVICE_CHOICES:
        raise ConfigError(f"--device {name!r} is not one of {', '.join(DEVICE_CHOICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available", hint="use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def mem_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated on a CUDA device; the process's resident memory on CPU."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    import psutil

    return int(psutil.Process().memory_info().rss)
