"""Shared helpers for the pytest suite: the real `rk` command, throwaway workspaces, small data packages."""

import atexit
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RK = Path(sys.executable).parent / "rk"

# The suite never reads the own settings file of whoever runs it (~/.config/research_kit/settings.ini,
# which may name an institution or a threshold): its configuration folder is an empty one of its own.
_CONFIG = tempfile.mkdtemp(prefix="rk-tests-config-")
os.environ["XDG_CONFIG_HOME"] = _CONFIG
os.environ.pop("RK_USER_SETTINGS", None)
atexit.register(shutil.rmtree, _CONFIG, ignore_errors=True)

# As on a CI service, rk runs reports in a pool of its own command's rather than handing them to long-lived
# workers that would outlive the test (research_kit.runner.daemon); tests/test_daemon.py clears it.
os.environ["CI"] = "1"
# A pytest-xdist worker starts with COLUMNS=80 and LINES=24 set, and `rk` then squeezes its tables to 80
# columns and wraps the very lines the tests look for; the suite runs as it does without xdist (no terminal).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("COLUMNS", "LINES"):
        os.environ.pop(_name, None)


def run_rk(*args, cwd=ROOT, env=None, timeout=600, check=None):
    """Run the installed `rk` command; return the CompletedProcess (text output)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [str(RK), *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        encoding="utf-8",
        timeout=timeout,
    )  # rk writes UTF-8 to pipes whatever the locale
    if check is not None:
        assert proc.returncode == check, (
            f"rk {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def stop_process_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """End a process started with start_new_session=True and everything it started: TERM, then KILL after `grace` s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_resource(pkg_dir: Path, descriptor: dict, name: str, text: str | bytes) -> None:
    """Write a resource's CSV and set its hash, bytes and row count in `descriptor`."""
    path = pkg_dir / f"{name}.csv"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    res = next(r for r in descriptor["resources"] if r["name"] == name)
    res.update(
        {
            "hash": f"sha256:{sha256(path)}",
            "bytes": path.stat().st_size,
            "x-rows": max(0, path.read_bytes().count(b"\n") - 1),
        }
    )


def save(pkg_dir: Path, descriptor: dict) -> None:
    (pkg_dir / "datapackage.yaml").write_text(
        yaml.safe_dump(descriptor, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )


INSTITUTIONS = "institution_id,name\nATK,Almaty College of Technology\nKITIG,College of Tourism\n"
PEOPLE = (
    "person_id,institution_id,age,funding,gpa,enrolled,active\n"
    "P-001,ATK,17,paid,3.5,2024-09-01,true\n"
    "P-002,KITIG,19,state_grant,2.75,2023-09-01,false\n"
    "P-003,ATK,21,paid,,2022-09-01,\n"
)


def mini_descriptor() -> dict:
    return {
        "name": "mini",
        "title": "Mini",
        "description": "A small package for tests.",
        "version": "1.0.0",
        "licenses": [
            {"name": "CC0-1.0", "path": "https://creativecommons.org/publicdomain/zero/1.0/", "title": "CC0"}
        ],
        "resources": [
            {
                "name": "institutions",
                "path": "institutions.csv",
                "format": "csv",
                "encoding": "utf-8",
                "schema": {
                    "fields": [
                        {
                            "name": "institution_id",
                            "type": "string",
                            "constraints": {"required": True, "pattern": "[A-Z]+"},
                        },
                        {"name": "name", "type": "string", "constraints": {"required": True}},
                    ],
                    "primaryKey": ["institution_id"],
                },
            },
            {
                "name": "people",
                "path": "people.csv",
                "format": "csv",
                "encoding": "utf-8",
                "schema": {
                    "fields": [
                        {
                            "name": "person_id",
                            "type": "string",
                            "constraints": {"required": True, "pattern": "P-[0-9]{3}"},
                        },
                        {"name": "institution_id", "type": "string", "constraints": {"required": True}},
                        {
                            "name": "age",
                            "type": "integer",
                            "constraints": {"required": True, "minimum": 14, "maximum": 80},
                        },
                        {
                            "name": "funding",
                            "type": "string",
                            "constraints": {"enum": ["state_grant", "paid"]},
                        },
                        {"name": "gpa", "type": "number", "constraints": {"minimum": 0, "maximum": 4}},
                        {"name": "enrolled", "type": "date"},
                        {"name": "active", "type": "boolean"},
                    ],
                    "primaryKey": ["person_id"],
                    "foreignKeys": [
                        {
                            "fields": ["institution_id"],
                            "reference": {"resource": "institutions", "fields": ["institution_id"]},
                        }
                    ],
                },
            },
        ],
    }


def build_workspace(root: Path):
    """Write a throwaway workspace at `root` with one valid package `mini`; returns (root, descriptor, env)."""
    pkg = root / "datasets" / "mini"
    pkg.mkdir(parents=True)
    (root / "settings.ini").write_text("[workspace]\ndata = datasets\ncache = .cache\n")
    d = mini_descriptor()
    write_resource(pkg, d, "institutions", INSTITUTIONS)
    write_resource(pkg, d, "people", PEOPLE)
    save(pkg, d)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RK_")}
    return root, d, env


@pytest.fixture
def workspace(tmp_path):
    """A throwaway workspace with one valid package `mini`; returns (root, descriptor, env)."""
    return build_workspace(tmp_path / "ws")


def make_template(path: Path, params_source: str, *code_cells: str) -> Path:
    """Write a report template: a parameters cell, then code cells; kernel research-kit."""
    import nbformat

    nb = nbformat.v4.new_notebook(
        metadata={
            "kernelspec": {"name": "research-kit", "display_name": "research_kit", "language": "python"},
            "language_info": {"name": "python"},
        }
    )
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {path.stem}"),
        nbformat.v4.new_code_cell("from typing import Literal"),
        nbformat.v4.new_code_cell(params_source, metadata={"tags": ["parameters"]}),
        *[nbformat.v4.new_code_cell(c) for c in code_cells],
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


TINY_PARAMS = 'n: int = 1  # a number\nlabel: str = "x"  # a label\nmode: Literal["a", "b"] = "a"  # a mode'
TINY_CODE = (
    "import research_kit as rk\npeople = rk.load('mini', 'people')\n"
    "rk.record('n_people', len(people))\nrk.record('n', n)\nrk.record('label', label)\n"
    "rk.record('mean_age', float(people.age.mean()))\n"
    "print('people:', len(people))"
)


def build_report_workspace(root: Path):
    """The `mini` workspace at `root` plus report templates and batches; returns (root, descriptor, env)."""
    root, d, env = build_workspace(root)
    reports = root / "reports"
    make_template(reports / "tiny.ipynb", TINY_PARAMS, TINY_CODE)
    make_template(
        reports / "flaky.ipynb",
        "n: int = 1",
        "import research_kit as rk\nrk.record('n', n)",
        "if n == 2: raise ValueError(f'n must not be {n}')",
    )
    make_template(reports / "other.ipynb", "k: int = 0", "import research_kit as rk\nrk.record('k', k)")
    (reports / "batches.yaml").write_text(
        "small:\n"
        "  - report: tiny\n    grid: {n: [1, 2], mode: [a, b]}\n"
        "  - report: flaky\n    parameters: [{n: 1}, {n: 2}, {n: 3}]\n"
        "  - report: other\n    parameters: [{k: 5}]\n"
    )
    return root, d, env


@pytest.fixture
def report_workspace(tmp_path):
    """The `mini` workspace plus report templates and batches; returns (root, descriptor, env)."""
    return build_report_workspace(tmp_path / "ws")


# ---- the suite's tally: bad inputs tried, faults injected, runs checked, files lost or corrupted ----


class Tally:
    def __init__(self):
        self.bad_inputs = self.faults = self.runs_checked = self.lost = 0

    def line(self):
        return (
            f"tally: {self.bad_inputs} bad inputs tried, {self.faults} faults injected, "
            f"{self.runs_checked} runs checked, {self.lost} files lost or corrupted"
        )


TALLY = Tally()


@pytest.fixture(scope="session")
def tally():
    return TALLY


def pytest_sessionfinish(session):
    "Under pytest-xdist each worker counts its own tests: it hands its tally to the controller."
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["tally"] = vars(TALLY)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    "The controller adds up the tallies of its workers (pytest-xdist's hook: absent without it)."
    for name, count in getattr(node, "workeroutput", {}).get("tally", {}).items():
        setattr(TALLY, name, getattr(TALLY, name) + count)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(TALLY.line())


# ---- the order of the files: the longest first ----
# pyproject runs the suite on two pytest-xdist workers, a whole file to a worker (`--dist loadfile`:
# module fixtures such as a batch of reports run once), in the order of collection. Started last, a long
# file would run alone while the other worker idles; so the files that take longest are handed out first.
LONGEST_FIRST = [
    "test_portable.py",
    "test_templates.py",
    "test_faults.py",
    "test_share.py",
    "test_stale.py",
    "test_runner.py",
    "test_engines_agree.py",
    "test_kill.py",
    "test_load_fidelity.py",
    "test_daemon.py",
    "test_privacy_attack.py",
    "test_template_authoring.py",
    "test_guide.py",
    "test_planted_effects.py",
    "test_public_outputs.py",
    "test_bad_input.py",
    "test_dask.py",
    "test_documents.py",
]  # as measured (the sum of a file's test times on two workers), longest first; the rest are shorter


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(
        key=lambda item: rank.get(item.path.name, len(rank))
    )  # a stable sort: each file keeps its own order


def check_build(build: Path, tally: Tally | None = None) -> dict:
    """Every run folder under `build` is whole: its manifest parses, its notebook parses, and every
    output's sha256 matches the manifest. Returns {report/slug: manifest}; counts what it finds."""
    import json
    import nbformat

    runs = {}
    for folder in sorted(
        p
        for p in build.glob("*/*")
        if p.is_dir() and not p.name.startswith(".") and not p.parent.name.startswith(".")
    ):
        problems = []
        try:
            m = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            problems.append(f"manifest: {e}")
            m = {}
        for name, digest in m.get("outputs", {}).items():
            if not (folder / name).is_file() or sha256(folder / name) != digest:
                problems.append(f"{name} differs from its manifest hash")
        if (folder / "report.ipynb").is_file():
            try:
                nbformat.validate(nbformat.read(folder / "report.ipynb", as_version=4))
            except Exception as e:
                problems.append(f"report.ipynb: {e}")
        if tally:
            tally.runs_checked += 1
        if problems:
            if tally:
                tally.lost += len(problems)
            raise AssertionError(f"{folder}: " + "; ".join(problems))
        runs[f"{folder.parent.name}/{folder.name}"] = m
    return runs
