"""Shared pieces of the trainer tests: a micro configuration and a finished micro run."""

from __future__ import annotations

import pytest
import torch


from trainlib import train


@pytest.fixture(autouse=True)
def one_thread():
    # The test machine is shared: OpenMP threads spinning on a busy core cost 10x.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """A finished 60-step run (events, checkpoints, final/) shared by read-only tests."""
    run_dir = tmp_path_factory.mktemp("micro") / "run"
    torch.set_num_threads(1)
    assert train(run_dir, "--steps", "60", "--eval-every", "20", "--save-every", "20", "--sample-every", "30") == 0
    return run_dir
