"""Contender factories the harness's Child tests start in a child process (importable by name)."""

from __future__ import annotations

import os
import time

from bitttt.bench.harness import BenchValidationError, Contender


def policy_probe(sleep_s: float = 0.0) -> dict[str, Contender]:
    """"probe": its check returns the child's OMP_WAIT_POLICY; each call sleeps sleep_s."""
    return {"probe": Contender("probe", lambda: time.sleep(sleep_s), check=lambda: os.environ.get("OMP_WAIT_POLICY"),
                               extra={"bytes_per_call": 1234})}


def wrong_output() -> dict[str, Contender]:
    def check() -> None:
        raise BenchValidationError("y[0] = 1, reference 2")

    return {"bad": Contender("bad", lambda: None, check=check)}
