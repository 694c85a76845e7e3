"""Ternary kernel-set names per architecture (design §2, kernel selection): a build carries
only its own architecture's sets, the CPU features behind them are reported, and asking for
another architecture's set is an error that names the available ones."""

from __future__ import annotations

import platform

import pytest

from bitttt import _C

X86_SETS = {"scalar", "avx2", "avx512", "avx512_emulated"}
ARM64_SETS = {"scalar", "neon", "neon_dotprod"}
MACHINE = platform.machine().lower()
IS_X86 = MACHINE in ("x86_64", "amd64")
IS_ARM64 = MACHINE in ("aarch64", "arm64")


def test_compiled_sets_are_this_architectures():
    compiled = set(_C.build_info()["compiled_isas"])
    assert "scalar" in compiled
    if IS_X86:
        assert {"avx2", "avx512"} <= compiled <= X86_SETS
    elif IS_ARM64:
        assert compiled == ARM64_SETS
    else:
        assert compiled == {"scalar"}


def test_available_sets_follow_cpu_features():
    f = _C.cpu_features()
    available = _C.available_isas()
    assert ("neon" in available) == f["neon"] == IS_ARM64
    assert ("neon_dotprod" in available) == f["dotprod"]
    assert ("avx2" in available) == (f["avx2"] and f["fma"])
    assert not (IS_X86 and (f["neon"] or f["dotprod"]))


@pytest.mark.parametrize("name", ["neon", "neon_dotprod"] if not IS_ARM64 else ["avx2", "avx512"])
def test_other_architectures_set_is_refused(name):
    with pytest.raises(RuntimeError, match=f"ISA '{name}' is not available.*available: scalar"):
        _C.set_isa(name)
    assert _C.isa() in _C.available_isas()
