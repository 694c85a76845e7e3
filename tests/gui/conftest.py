"""Fixtures for the launcher tests: the fake ``bitttt`` and, for ``gui`` tests, a private Xvfb."""

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAKES = Path(__file__).parent / "fakes"
FAKE_BITTTT = FAKES / "fake_bitttt.py"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"   # tests/artifacts (git-ignored)


@pytest.fixture
def fake_cmd(monkeypatch):
    """Point the launcher's ``bitttt`` at the fake; returns the command list."""
    cmd = [sys.executable, str(FAKE_BITTTT)]
    monkeypatch.setenv("BITTTT_GUI_CMD", shlex.join(cmd))
    monkeypatch.setenv("FAKE_BITTTT_STEP_S", "0.01")
    return cmd


@pytest.fixture(scope="session")
def xvfb_display():
    """Start ``Xvfb`` on a free display (it picks one: -displayfd) and yield ':N'."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb); the gui tests need a display")
    r, w = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(w), "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    number = b""
    deadline = time.monotonic() + 15
    with os.fdopen(r, "rb") as f:
        while time.monotonic() < deadline:
            ch = f.read(1)
            if not ch or ch == b"\n":
                break
            number += ch
    if not number.strip().isdigit():
        proc.kill()
        pytest.skip("Xvfb did not report a display number")
    display = ":" + number.decode().strip()
    try:
        yield display
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def display(xvfb_display, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb_display)
    return xvfb_display


@pytest.fixture
def screenshot(display):
    """``screenshot(name)`` saves the screen as tests/artifacts/<name>.png; returns the path or None."""
    return lambda name: grab_screen(display, name)


def grab_screen(display: str, name: str) -> Path | None:
    """Save the whole virtual screen as tests/artifacts/<name>.png (Pillow's X grab); None if unavailable."""
    try:
        from PIL import ImageGrab
        img = ImageGrab.grab(xdisplay=display)
    except Exception:   # Pillow without XCB support, or no Pillow
        return None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    img.save(path)
    return path
