"""Fixtures shared by bitttt's tests."""

from __future__ import annotations

import pytest

from bitttt import _C

# Every kernel set this CPU runs (scalar, avx2, avx512, avx512_emulated, ...): tests that
# take the `isa` fixture run once per entry, so a kernel set added later is tested as-is.
AVAILABLE_ISAS = _C.available_isas()


@pytest.fixture(params=AVAILABLE_ISAS)
def isa(request) -> str:
    """Forces one ternary kernel set for the test, then goes back to 'auto'."""
    _C.set_isa(request.param)
    assert _C.isa() == request.param
    yield request.param
    _C.set_isa("auto")
