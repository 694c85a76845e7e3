"""The launcher's modules import neither torch nor bitttt; the headless ones not even tkinter."""

import subprocess
import sys

HEADLESS = ["bitttt_gui", "bitttt_gui.events", "bitttt_gui.command", "bitttt_gui.estimate", "bitttt_gui.memory",
            "bitttt_gui.process", "bitttt_gui.runs", "bitttt_gui.curve", "bitttt_gui.chat", "bitttt_gui.presets"]


def _loaded_after(imports):
    code = ("import sys\n" + "".join(f"import {m}\n" for m in imports)
            + "print(' '.join(sorted(m for m in ('torch', 'bitttt', 'tkinter', 'matplotlib') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_headless_modules_import_no_torch_no_tkinter():
    assert _loaded_after(HEADLESS) == []



def test_app_and_tabs_import_no_torch():
    loaded = _loaded_after(["bitttt_gui.app"])
    assert "torch" not in loaded and "bitttt" not in loaded and "tkinter" in loaded
