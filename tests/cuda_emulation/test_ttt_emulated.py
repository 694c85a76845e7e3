"""The TTT-Linear CUDA kernels, run on the CPU by an emulator, against the CPU kernels.

tests/cuda_emulation/ttt_emulate.cpp compiles csrc/ttt/ttt_linear_cuda_kernels.cuh as plain C++ (one
std::thread per CUDA thread, barriers for __syncthreads and the warp shuffles) and compares the
forward, checkpoints, decode step and backward with csrc/ttt/ttt_linear_cpu_kernels.inc on the shapes of
tests/ops/test_ttt_linear.py. It runs without a GPU or nvcc: only a C++20 compiler.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
SOURCE = os.path.join(ROOT, "tests", "cuda_emulation", "ttt_emulate.cpp")


@pytest.mark.slow
def test_cuda_kernels_match_cpu_kernels_in_emulation(tmp_path):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build the CUDA kernel emulator")
    exe = str(tmp_path / "ttt_emulate")
    build = subprocess.run([cxx, "-std=c++20", "-O1", "-pthread", "-w", "-Wno-psabi", f"-I{ROOT}/csrc", SOURCE, "-o", exe],
                           capture_output=True, text=True)
    if build.returncode != 0 and "barrier" in build.stderr and "No such file" in build.stderr:
        pytest.skip(f"{cxx} lacks C++20 <barrier>")
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([exe, "--quick"], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0 and run.stdout.strip().endswith("ALL OK"), run.stdout[-4000:] + run.stderr[-2000:]
