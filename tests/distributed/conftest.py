"""Shared pieces of the data-parallel tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # In-process runs set --threads 1 (torch's global count); the next test gets its own back.
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)
