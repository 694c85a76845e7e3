"""benchmarks/report.py: the README's tables are what the committed records generate (CI fails on
drift), and a changed table fails the check."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = load_report()


def test_readme_tables_match_the_committed_records():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    names = [m.group("name") for m in report.MARKER.finditer(text)]
    assert set(names) == set(report.TABLES)  # every renderer has its table, every table its renderer
    assert report.stale_tables(text) == [], "run: python benchmarks/report.py"
    assert report.main(["--check"]) == 0


def test_a_changed_number_fails_the_check(tmp_path):
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = next(m for m in report.MARKER.finditer(text) if m.group("name") == "ternary")
    body = m.group("body")
    number = re.search(r"\| (\d+\.\d+)x \|", body)  # a speedup cell
    assert number, body
    edited = body.replace(number.group(0), f"| {float(number.group(1)) * 2:.2f}x |", 1)
    readme.write_text(text.replace(body, edited), encoding="utf-8")
    assert report.main(["--check", "--readme", str(readme)]) == 1
    assert report.main(["--readme", str(readme)]) == 0  # regenerates it
    assert readme.read_text(encoding="utf-8") == text
    assert report.main(["--check", "--readme", str(readme)]) == 0


def test_every_table_names_its_machine_date_and_file():
    text = report.generate((ROOT / "README.md").read_text(encoding="utf-8"))
    for m in report.MARKER.finditer(text):
        first = m.group("body").splitlines()[0]
        rel = report.TABLES[m.group("name")][0]
        assert "Xeon" in first and re.search(r"\d{4}-\d{2}-\d{2}", first) and rel in first, first


def test_a_marker_without_a_renderer_is_an_error():
    with pytest.raises(KeyError, match="bench:nope has no renderer"):
        report.generate("<!-- bench:nope -->\nold\n<!-- /bench:nope -->\n")


def test_the_first_screen_gives_two_commands_that_need_no_release():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = text[:text.index("\n## ", text.index("## Quick start"))]  # up to the section after it
    blocks = re.findall(r"```bash\n(.*?)```", first, re.S)
    assert len(blocks) == 2 and all(b.count("\n") == 1 for b in blocks), blocks  # one line each
    install, tests = blocks
    assert "pip install --no-build-isolation -e ." in install and "bitttt train" in install
    assert "<!-- test-command -->\n```bash\n" + tests in first and "pytest" in tests
    assert not re.search(r"pip install bitttt\b(?![-\[])", text)  # no wheel on PyPI yet
