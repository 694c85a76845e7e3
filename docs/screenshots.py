"""Regenerate the launcher screenshots in README.md and docs/gui.md from the real window.

    python docs/screenshots.py [--out docs] [--steps 80]

Needs Xvfb and Pillow. In a scratch workspace (``/tmp/bitttt-shots-*/you/bitttt``) it trains two
short real runs of the tiny preset, ternary and its float twin, then opens ``bitttt-gui`` on
that workspace in a private Xvfb at the size a 1366x768 laptop gives it and grabs the window:

- ``bitttt-gui.png``: the Train tab as a new user sees it (before the runs: no run time measured here);
- ``bitttt-gui-compare.png``: the Loss curve tab comparing the two runs in bits per byte, with the table;
- ``bitttt-gui-chat.png``: the Chat tab serving the ternary run (``bitttt serve``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE = "1180x728"          # what a 1366x768 screen gives the window (app.fitted_geometry)


def start_xvfb() -> tuple[subprocess.Popen, str]:
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        number = f.readline().decode().strip()
    return proc, ":" + number


def train(workspace: Path, name: str, steps: int, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "bitttt", "train", "--preset", "tiny", "--steps", str(steps),
                    "--eval-every", str(max(steps // 4, 1)), "--save-every", "0", "--sample-every", "0",
                    "--log-every", "1", "--run-dir", str(workspace / "runs" / name), *extra],
                   check=True, stdout=subprocess.DEVNULL, cwd=workspace)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs"), help="where the PNGs go (default: docs/)")
    p.add_argument("--steps", type=int, default=80, help="steps of each run (default: 80)")
    args = p.parse_args(argv)
    out = Path(args.out)
    scratch = Path(tempfile.mkdtemp(prefix="bitttt-shots-"))
    home = scratch / "you"
    workspace = home / "bitttt"
    xvfb = None
    try:
        (workspace / "runs").mkdir(parents=True)
        xvfb, display = start_xvfb()
        os.environ["DISPLAY"] = display
        os.environ["HOME"] = str(home)
        if shutil.which("bitttt"):       # the command preview reads "bitttt train …", as a user types it
            os.environ["BITTTT_GUI_CMD"] = "bitttt"
        # The Train tab first, as a new user sees it: no run yet, so no run time measured on this
        # (shared, busy) machine ends up in the README.
        shoot_train(workspace, out, display)
        print("training the ternary run…", flush=True)
        train(workspace, "ternary", args.steps)
        print("training the float twin…", flush=True)
        train(workspace, "float", args.steps, "--no-ternary")
        shoot(workspace, out, display)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(5)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def settle(root, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        root.update()
        time.sleep(0.02)


def grab(root, out: Path, name: str, display: str) -> None:
    from PIL import ImageGrab

    root.update_idletasks()
    x, y, w, h = root.winfo_rootx(), root.winfo_rooty(), root.winfo_width(), root.winfo_height()
    ImageGrab.grab(bbox=(x, y, x + w, y + h), xdisplay=display).save(out / name)
    print(f"wrote {out / name}", flush=True)


def window(workspace: Path):
    import tkinter as tk

    from bitttt_gui.app import App

    root = tk.Tk(className="bitttt")
    app = App(root, workspace)
    root.geometry(SIZE + "+0+0")
    settle(root, 1.5)
    return root, app


def close(root, app) -> None:
    from bitttt_gui.app import cancel_pending_afters

    app.sampler.stop()
    cancel_pending_afters(root)
    root.destroy()


def shoot_train(workspace: Path, out: Path, display: str) -> None:
    root, app = window(workspace)
    grab(root, out, "bitttt-gui.png", display)
    close(root, app)


def shoot(workspace: Path, out: Path, display: str) -> None:
    root, app = window(workspace)
    runs, plot = app.tabs["runs"], app.tabs["plot"]
    runs.refresh()
    runs.tree.selection_set([str(workspace / "runs" / "ternary"), str(workspace / "runs" / "float")])
    runs.compare()
    plot.y_axis.set("bpb")
    plot.redraw()
    settle(root, 1.5)
    grab(root, out, "bitttt-gui-compare.png", display)

    chat = app.tabs["chat"]
    chat.model.set(str(workspace / "runs" / "ternary"))
    app.show_tab("chat")
    chat.serve_btn.invoke()
    end = time.monotonic() + 120
    while chat.serve_state.phase == "starting" and time.monotonic() < end:
        settle(root, 0.2)
    settle(root, 0.5)
    grab(root, out, "bitttt-gui-chat.png", display)
    chat.stop_serving(wait_s=10)
    close(root, app)


if __name__ == "__main__":
    sys.exit(main())
