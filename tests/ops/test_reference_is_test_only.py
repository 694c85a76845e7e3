"""bitttt/reference.py is the tests' oracle and the benchmarks' baseline, never production code:
if a production path called it, every test comparing that path with the reference would
compare the reference with itself (issue 23)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import bitttt

PACKAGE = Path(bitttt.__file__).parent
# The oracle itself, and the benchmarks that time it as a baseline.
ALLOWED = {PACKAGE / "reference.py", PACKAGE / "bench"}


def production_files() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if not any(p == a or a in p.parents for a in ALLOWED)]


def imports_reference(tree: ast.AST, package: str) -> list[int]:
    """Lines of `tree`, the source of a module in `package` (dotted), that import bitttt.reference."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(a.name == "bitttt.reference" or a.name.startswith("bitttt.reference.") for a in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            if base == "bitttt.reference" or (base == "bitttt" and any(a.name == "reference" for a in node.names)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            if any(isinstance(a, ast.Constant) and a.value == "bitttt.reference" for a in node.args):
                lines.append(node.lineno)
    return lines


def test_the_scan_sees_every_import_form():
    forms = ["from bitttt import reference", "import bitttt.reference", "from bitttt.reference import ttt_mlp",
             "from bitttt import ops, reference as r", "from . import reference", "from .reference import x",
             "importlib.import_module('bitttt.reference')"]
    for src in forms:
        assert imports_reference(ast.parse(src), "bitttt") == [1], src
    assert imports_reference(ast.parse("from .. import reference"), "bitttt.nn") == [1]
    assert imports_reference(ast.parse("from . import reference"), "bitttt.nn") == []  # bitttt.nn.reference
    assert imports_reference(ast.parse("from bitttt import ops\nimport torch"), "bitttt") == []


def test_production_modules_never_import_the_reference():
    files = production_files()
    assert PACKAGE / "ops.py" in files and PACKAGE / "nn" / "ttt.py" in files
    offenders = []
    for path in files:
        package = ".".join(path.parent.relative_to(PACKAGE.parent).parts)
        for line in imports_reference(ast.parse(path.read_text(), str(path)), package):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert not offenders, f"production code imports bitttt.reference: {offenders}"


def test_training_and_inference_run_without_loading_the_reference():
    # The modules a training step and a decode use, exercised once, in a fresh interpreter.
    code = (
        "import sys, torch\n"
        "from bitttt import ops, diagnostics, generate, train, checkpoint\n"
        "from bitttt.model import BitTTTConfig, BitTTTForCausalLM\n"
        "from bitttt.nn import BitLinear, TTTLinear, TTTMLP\n"
        "x = torch.randn(2, 20, 16)\n"
        "for m in (TTTLinear(16, 2, mini_batch_size=4), TTTMLP(16, 2, mini_batch_size=4)):\n"
        "    m(x).sum().backward()\n"
        "layer = BitLinear(16, 8)\n"
        "layer(x.bfloat16().float()).sum().backward()\n"
        "ops.fake_quant_activations(x.bfloat16()); ops.fake_quant_weight(layer.weight.double())\n"
        "layer.pack()(x)\n"
        "diagnostics.TernaryMonitor().report(torch.nn.Sequential(BitLinear(16, 8)))\n"
        "assert 'bitttt.reference' not in sys.modules, 'bitttt.reference was imported'\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
