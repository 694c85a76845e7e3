"""The launcher never loads torch: its modules import only bitttt's torch-free ones
(config, errors, events, devices, tokenizer, runlock), and the headless ones not even tkinter."""

import pkgutil
import subprocess
import sys

import bitttt_gui

HEADLESS = ["bitttt_gui", "bitttt_gui.events", "bitttt_gui.command", "bitttt_gui.estimate", "bitttt_gui.memory",
            "bitttt_gui.process", "bitttt_gui.runs", "bitttt_gui.curve", "bitttt_gui.chat"]
EVERY_MODULE = [m.name for m in pkgutil.walk_packages(bitttt_gui.__path__, "bitttt_gui.")
                if not m.name.endswith("__main__")]   # __main__ opens the window
TORCH_FREE = {"bitttt", "bitttt.config", "bitttt.errors", "bitttt.events", "bitttt.devices", "bitttt.tokenizer",
              "bitttt.runlock"}
REPORT = ("print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('torch', 'bitttt', 'tkinter', 'matplotlib', 'numpy'))))")


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", "import sys\n" + code + "\n" + REPORT],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def _bitttt(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] == "bitttt"}


def test_headless_modules_import_no_torch_no_tkinter():
    loaded = _loaded_after("".join(f"import {m}\n" for m in HEADLESS))
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "tkinter", "matplotlib")}, loaded


def test_every_launcher_module_imports_no_torch():
    assert "bitttt_gui.tabs.chat" in EVERY_MODULE and "bitttt_gui.app" in EVERY_MODULE
    loaded = _loaded_after("".join(f"import {m}\n" for m in EVERY_MODULE))
    assert "torch" not in loaded and "tkinter" in loaded
    assert _bitttt(loaded) <= TORCH_FREE, _bitttt(loaded)


def test_building_the_app_loads_no_torch(display, tmp_path, fake_cmd):
    # The whole window (every tab built, the first poll run) with a workspace holding a run.
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "events.jsonl").write_text('{"event": "start", "total_steps": 5}\n')
    code = ("import tkinter as tk\nfrom bitttt_gui.app import App, cancel_pending_afters\n"
            "root = tk.Tk()\n"
            f"app = App(root, {str(tmp_path)!r}, memory_interval_s=0.2)\n"
            "for _ in range(20):\n    root.update()\n"
            "assert 'old' in str(app.tabs['runs'].tree.get_children())\n"
            "app.sampler.stop()\ncancel_pending_afters(root)\nroot.destroy()")
    loaded = _loaded_after(code)
    assert "torch" not in loaded and "tkinter" in loaded
    assert _bitttt(loaded) <= TORCH_FREE, _bitttt(loaded)
