"""CUDA tests: every test here needs a CUDA device and bitttt's CUDA kernels.

Without them the tests are skipped with the reason (no device, a CPU-only torch, or a build
without BITTTT_CUDA); .ci/cuda_device_check builds for the local GPU and runs them with the quick CUDA benchmark.
"""

from __future__ import annotations

import pytest
import torch

from bitttt._native import C_cuda, cuda_unavailable_reason


def _why_skip() -> str | None:
    if C_cuda is None:
        return f"bitttt's CUDA kernels are not loaded: {cuda_unavailable_reason}"
    if not torch.cuda.is_available():
        return "bitttt's CUDA kernels are compiled, but there is no CUDA device"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _why_skip()
    for item in items:
        if "tests/cuda/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.cuda)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
