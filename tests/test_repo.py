"""The package is what nbdev-export makes of nbs/; every notebook in nbs/ and reports/ is clean, and
no report template carries executed outputs."""

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BIN = Path(sys.executable).parent


def copy_project(dest: Path) -> Path:
    for name in ("pyproject.toml", "settings.ini"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("nbs", "research_kit", "reports"):
        shutil.copytree(
            ROOT / name,
            dest / name,
            ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "_build"),
        )
    return dest


def tree_differences(a: Path, b: Path, pattern: str) -> list[str]:
    files = {p.relative_to(a) for p in a.rglob(pattern) if "__pycache__" not in p.parts}
    files |= {p.relative_to(b) for p in b.rglob(pattern) if "__pycache__" not in p.parts}
    return sorted(
        str(f)
        for f in files
        if not ((a / f).exists() and (b / f).exists() and filecmp.cmp(a / f, b / f, shallow=False))
    )


def test_package_in_sync_with_notebooks(tmp_path):
    copy = copy_project(tmp_path)
    proc = subprocess.run([str(BIN / "nbdev-export")], cwd=copy, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    diff = tree_differences(ROOT / "research_kit", copy / "research_kit", "*.py")
    assert diff == [], f"research_kit/ is out of sync with nbs/; run nbdev-export. Differs: {diff}"


def test_notebooks_are_clean(tmp_path):
    copy = copy_project(tmp_path)
    proc = subprocess.run([str(BIN / "nbdev-clean")], cwd=copy, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    diff = tree_differences(ROOT / "nbs", copy / "nbs", "*.ipynb")
    assert diff == [], f"notebooks not clean; run nbdev-clean: {diff}"


def test_report_templates_are_clean_and_unexecuted(tmp_path):
    import json

    copy = copy_project(tmp_path)
    for nb in (copy / "reports").glob("*.ipynb"):
        proc = subprocess.run(
            [str(BIN / "nbdev-clean"), "--fname", str(nb)], cwd=copy, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
    diff = [
        nb.name
        for nb in sorted((ROOT / "reports").glob("*.ipynb"))
        if not filecmp.cmp(nb, copy / "reports" / nb.name, shallow=False)
    ]
    assert diff == [], f"report templates not clean; run nbdev-clean --fname reports/<name>.ipynb: {diff}"
    for nb in sorted((ROOT / "reports").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        executed = [
            i
            for i, c in enumerate(cells)
            if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))
        ]
        assert executed == [], (
            f"{nb.name}: executed outputs committed in cells {executed}; clear them before committing"
        )
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{nb.name}: needs exactly one cell tagged 'parameters'"


def test_one_code_style():
    "The notebooks' code, the templates, the benchmarks and the tests keep ruff's format (pyproject [tool.ruff])."
    ruff = Path(sys.executable).parent / "ruff"
    folders = ["nbs", "reports", "benchmarks", "tests"]
    for command in (["format", "--check"], ["check", "--output-format", "concise"]):
        proc = subprocess.run([str(ruff), *command, *folders], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, (
            f"ruff {' '.join(command)}: run it and commit\n{proc.stdout[-3000:]}{proc.stderr}"
        )
