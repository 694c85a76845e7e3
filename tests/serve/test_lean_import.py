"""The core package never imports the serve extra: `import bitttt` and the CLI stay without it."""

from __future__ import annotations

import subprocess
import sys


def test_core_and_cli_leave_fastapi_unloaded():
    code = ("import sys, bitttt, bitttt.cli, bitttt.generate, bitttt.serve.engine\n"
            "bitttt.cli.build_parser().parse_args(['serve', '--model', 'x'])\n"
            "bad = [m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client', 'pydantic') if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
