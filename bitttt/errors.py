"""Exception classes that carry a one-line hint, and the exit codes they map to (design §6).

Torch-free: the CLI, the launcher and the tests all read the exit codes from here.
"""

import sys

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_DATA, EXIT_OOM, EXIT_DIVERGED = 0, 1, 2, 3, 4, 5

EXIT_MEANINGS = {
    EXIT_OK: "completed or stopped on request",
    EXIT_ERROR: "unexpected exception",
    EXIT_CONFIG: "bad arguments, config or setting",
    EXIT_DATA: "data error",
    EXIT_OOM: "out of memory",
    EXIT_DIVERGED: "training diverged (the loss is not finite)",
}


def is_out_of_memory(e: BaseException) -> bool:
    """Out of memory however it is raised: MemoryError, torch's OutOfMemoryError (CUDA), or the
    CPU allocator's plain RuntimeError ("DefaultCPUAllocator: can't allocate memory" or "not
    enough memory"). Torch-free: looks torch up only if something already imported it."""
    torch = sys.modules.get("torch")
    if isinstance(e, MemoryError) or torch is not None and isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)


class BitttError(Exception):
    """Base class for bitttt's user-facing errors. `hint` says what to do about it."""

    exit_code = EXIT_ERROR
    kind = "exception"  # the `error` event's kind

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(BitttError):
    """Bad arguments, configuration or environment setting (exit code 2)."""

    exit_code = EXIT_CONFIG
    kind = "config"


class DataError(BitttError):
    """Unusable training or evaluation data (exit code 3)."""

    exit_code = EXIT_DATA
    kind = "data"


class OutOfMemoryError(BitttError):
    """The work cannot fit in the device's memory, found before allocating it (exit code 4)."""

    exit_code = EXIT_OOM
    kind = "oom"


class DivergedError(BitttError):
    """The training loss or gradient norm became NaN or infinite (exit code 5)."""

    exit_code = EXIT_DIVERGED
    kind = "diverged"
