"""Exception classes that carry a one-line hint; the CLI maps them to exit codes (design §6)."""


class BitttError(Exception):
    """Base class for bitttt's user-facing errors. `hint` says what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(BitttError):
    """Bad arguments or configuration (exit code 2)."""


class DataError(BitttError):
    """Unusable training or evaluation data (exit code 3)."""
