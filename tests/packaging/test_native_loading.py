"""How bitttt reports its CUDA kernels when they are absent: a CPU-only wheel beside a CUDA torch."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bitttt import _native


def test_cpu_build_beside_cuda_torch_says_not_compiled(monkeypatch):
    if importlib.util.find_spec("bitttt._C_cuda") is not None:
        pytest.skip("this install has _C_cuda")
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # as a CUDA torch reports
    module, reason = _native._load_cuda()
    assert module is None
    assert reason == "not compiled (build with BITTTT_CUDA=on)"


def test_cpu_torch_needs_no_cuda_kernels(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert _native._load_cuda() == (None, "torch is a CPU build")
