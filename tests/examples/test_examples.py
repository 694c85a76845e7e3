"""Every example under examples/ runs as a user runs it, and its results are checked here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, cwd: Path) -> str:
    """Runs examples/<name> with this Python from `cwd`; returns its stdout (fails on rc != 0)."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=cwd, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.rstrip().endswith("ok"), proc.stdout
    return proc.stdout


def test_convert_linear(tmp_path):
    out = run_example("convert_linear.py", tmp_path)
    assert "converted 3 nn.Linear layers to BitLinear" in out
    packed, float32 = map(int, re.search(r"weights: (\d+) bytes packed, (\d+) as float32", out).groups())
    # 2 bits per weight with K padded to 256: 64->256, 256->256, 256->10 layers.
    assert packed == (256 * 256 + 256 * 256 + 10 * 256) // 4
    assert float32 == (64 * 256 + 256 * 256 + 256 * 10) * 4


def test_packed_weights_op(tmp_path):
    out = run_example("packed_weights_op.py", tmp_path)
    assert "q int8 (48, 1000) -> packed uint8 (48, 256)" in out
    assert "y (3, 5, 48)" in out


def test_ttt_drop_in(tmp_path):
    out = run_example("ttt_drop_in.py", tmp_path)
    assert "TTTLinear block: (2, 40, 128) -> (2, 40, 128)" in out


@pytest.mark.slow
def test_compile_ops(tmp_path):
    out = run_example("compile_ops.py", tmp_path)
    assert "compiled TernaryClassifier: (4, 16, 100)" in out


# ---------------------------------------------------------------------------------------
# C++: a libtorch program built with CMake, calling bitttt::ternary_linear via the dispatcher
# ---------------------------------------------------------------------------------------

CPP_M, CPP_N, CPP_K = 3, 5, 300


def cpp_expected() -> torch.Tensor:
    """y of examples/cpp/main.cpp's inputs, from design §2's formula written out in torch."""
    m = torch.arange(CPP_M).view(-1, 1)
    n = torch.arange(CPP_N).view(-1, 1)
    k = torch.arange(CPP_K).view(1, -1)
    q = ((n * 7 + k * 5) % 3 - 1).double()                      # [N, K] in {-1, 0, 1}
    x = (((m * 31 + k * 17) % 23 - 11).float() / 8.0)           # [M, K], exact in float32
    w_scale = 0.5 + torch.arange(CPP_N).double() / 16.0
    s_x = torch.full((CPP_M, 1), 127.0) / x.abs().amax(dim=1, keepdim=True)  # float32, as the op
    x_q = torch.round(x * s_x).clamp(-128, 127).double()
    return (x_q @ q.T) * w_scale / s_x.double()


def cpp_toolchain_missing() -> str | None:
    if shutil.which("cmake") is None:
        return "no cmake"
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler"
    if sys.platform != "linux":
        return "the example loads the extension with dlopen and links libpython (Linux)"
    libdir, ldlibrary = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY") or ""
    if not ldlibrary.endswith(".so") or not Path(libdir, ldlibrary).exists():
        return f"no shared libpython ({ldlibrary!r} in {libdir}): Debian's python3-dev has it"
    return None


def test_cpp_dispatcher_example(tmp_path):
    missing = cpp_toolchain_missing()
    if missing:
        pytest.skip(missing)
    from bitttt import _C

    build = tmp_path / "build"
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    for cmd in (["cmake", "-S", str(EXAMPLES / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", f"-DPython_EXECUTABLE={sys.executable}"],
                ["cmake", "--build", str(build)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    proc = subprocess.run([str(build / "ternary_linear_example"), _C.__file__], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    y = torch.zeros(CPP_M, CPP_N, dtype=torch.float64)
    seen = set()
    for line in proc.stdout.splitlines():
        _, m, n, value = line.split()
        y[int(m), int(n)] = float(value)
        seen.add((int(m), int(n)))
    assert len(seen) == CPP_M * CPP_N
    want = cpp_expected()
    assert want.abs().max() > 1  # the check can fail: outputs are not all zero
    torch.testing.assert_close(y, want, rtol=0, atol=1e-5 * want.abs().max().item())
