"""Writing and trying templates: `rk new` makes a template that `rk params`, `rk run` and plain
papermill run as it is and that passes the notebook hygiene checks; `rk open` makes a personal,
git-ignored copy with the parameters injected as a run injects them, and opens it in the running
JupyterLab; the shared template never changes."""

import filecmp
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, run_rk, stop_process_group

BIN = Path(sys.executable).parent
USER = "a.researcher"  # the login name the tests run under: scratch/a.researcher/


def copy_workspace(dest: Path) -> Path:
    "A copy of the workspace (settings, data, templates, .gitignore) at `dest`, as a git repository with one commit."
    dest.mkdir(parents=True)
    for name in ("settings.ini", "pyproject.toml", ".gitignore"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "datasets", dest / "datasets")
    (dest / "reports").mkdir()
    for template in [*(ROOT / "reports").glob("*.ipynb"), ROOT / "reports" / "batches.yaml"]:
        shutil.copy2(template, dest / "reports" / template.name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "workspace"]):
        subprocess.run([*git, *args], cwd=dest, check=True, capture_output=True)
    return dest


def workspace_env(cache: Path, **extra) -> dict:
    "The environment of a researcher in a copied workspace: no RK_* of ours, a known login name, no JupyterLab running."
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RK_", "JUPYTER_"))}
    runtime = cache.parent / "jupyter-runtime"
    runtime.mkdir(exist_ok=True)
    return {
        **env,
        "RK_WORKSPACE_CACHE": str(cache),
        "USER": USER,
        "LOGNAME": USER,
        "JUPYTER_RUNTIME_DIR": str(runtime),
        "RK_RUNNER_PDF": "off",
        **extra,
    }


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    "(root, env) of a copied workspace shared by this module's tests, with a data cache of its own."
    base = tmp_path_factory.mktemp("authoring")
    root = copy_workspace(base / "ws")
    return root, workspace_env(base / "cache")


def run_rk_in(ws, *args, check=None):
    root, env = ws
    return run_rk(*args, cwd=root, env=env, check=check)


def one_error_line(proc) -> str:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def injected_cell(notebook: Path) -> dict:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return next(c for c in cells if "injected-parameters" in c["metadata"].get("tags", []))


def source(cell) -> str:
    return "".join(cell["source"])


# ---- the hygiene checks every template passes (tests/test_repo.py, tests/test_templates.py, tests/test_languages.py) ----


def hygiene_problems(template: Path, workspace: Path, tmp_path: Path) -> list[str]:
    "What the repository's notebook checks would say about `template`: not clean, executed, tags, check cell, languages."
    from research_kit.i18n import language_cell_problems

    problems = []
    copy = tmp_path / f"clean-{template.name}"
    shutil.copy2(template, copy)
    proc = subprocess.run(
        [str(BIN / "nbdev-clean"), "--fname", str(copy)], cwd=workspace, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    if not filecmp.cmp(template, copy, shallow=False):
        problems.append("not clean: nbdev-clean changes it")
    cells = json.loads(template.read_text(encoding="utf-8"))["cells"]
    if any(c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count")) for c in cells):
        problems.append("executed outputs")
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"{len(tagged)} cells tagged parameters")
    elif "rk.check_parameters(globals())" not in source(cells[tagged[0] + 1]):
        problems.append("no check after the parameters cell")
    return problems + language_cell_problems(cells)


def test_hygiene_check_catches_what_it_is_for(tmp_path, tally):
    "The checks used on new templates below do find an executed cell, a second parameters cell and a missing language."
    template = ROOT / "reports" / "star_replication.ipynb"
    assert hygiene_problems(template, ROOT, tmp_path) == []
    nb = json.loads(template.read_text(encoding="utf-8"))
    nb["cells"][3]["execution_count"] = 1
    nb["cells"][5]["metadata"]["tags"] = ["parameters"]
    nb["cells"] = nb["cells"][1:]  # the Kazakh title
    broken = tmp_path / "broken.ipynb"
    broken.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    tally.bad_inputs += 1
    problems = hygiene_problems(broken, ROOT, tmp_path)
    assert "not clean: nbdev-clean changes it" in problems and "2 cells tagged parameters" in problems
    assert "cells 0-1: no kk version (tag lang-kk)" in problems


# ---- rk new ----


def test_new_template_runs_with_rk_and_papermill_and_is_clean(ws, tmp_path):
    from research_kit.runner.record import records

    root, env = ws
    proc = run_rk_in(ws, "new", "enrolment", "--title", "Enrolment by institution", check=0)
    template = root / "reports" / "enrolment.ipynb"
    assert f"created {template}" in proc.stdout and "rk run enrolment" in proc.stdout
    made = template.read_bytes()
    assert hygiene_problems(template, root, tmp_path) == []

    params = run_rk_in(ws, "params", "enrolment", check=0).stdout
    for name, default in (("year", "2024"), ("audience", "'consortium'"), ("lang", "'en'")):
        assert any(name in line and default in line for line in params.splitlines()), params

    # a public run in Kazakh: suppressed, audited and publishable, titled as asked
    run_rk_in(ws, "run", "enrolment", "-p", "audience=public", "-p", "lang=kk", check=0)
    folder = root / "reports" / "_build" / "enrolment" / "audience=public,lang=kk,year=2024"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["publishable"] is True, manifest.get(
        "audit_reasons"
    )
    assert manifest["records"]["students"] > 0
    assert "Enrolment by institution" in (folder / "report.html").read_text(encoding="utf-8")

    # plain papermill, with the defaults, from the workspace
    out = tmp_path / "out.ipynb"
    proc = subprocess.run(
        [str(BIN / "papermill"), str(template), str(out), "--no-progress-bar"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        records(out)["students"] == manifest["records"]["students"]
    )  # everything is shown to the consortium
    assert template.read_bytes() == made  # running it changed nothing


@pytest.mark.parametrize(
    "args,message",
    [
        (["star_replication"], "report 'star_replication' exists already"),
        (["Enrolment-2"], "invalid report name 'Enrolment-2'"),
        (["2nd_report"], "invalid report name '2nd_report'"),
        (["../outside"], "invalid report name '../outside'"),
        (["fine_name", "--title", "  "], "invalid title '  '"),
        (["fine_name", "--title", "two\nlines"], "invalid title 'two\\nlines'"),
    ],
    ids=["existing", "capitals", "digit-first", "path", "empty-title", "two-line-title"],
)
def test_new_refuses_an_existing_or_invalid_name(ws, args, message, tally):
    root, _ = ws
    before = sorted(p.name for p in (root / "reports").iterdir())
    star = (root / "reports" / "star_replication.ipynb").read_bytes()
    tally.bad_inputs += 1
    line = one_error_line(run_rk_in(ws, "new", *args))
    assert message in line, line
    assert sorted(p.name for p in (root / "reports").iterdir()) == before  # nothing written
    assert (root / "reports" / "star_replication.ipynb").read_bytes() == star


# ---- rk open ----


def test_open_writes_a_git_ignored_copy_with_the_parameters_a_run_injects(ws, tmp_path, tally):
    from research_kit.runner.record import records

    root, env = ws
    template = root / "reports" / "star_replication.ipynb"
    shared = template.read_bytes()
    proc = run_rk_in(ws, "open", "star_replication", "-p", "grade=1", check=0)
    copy = root / "scratch" / USER / "star_replication.ipynb"
    assert f"your copy: {copy}" in proc.stdout and "no JupyterLab serves this workspace" in proc.stdout
    assert "rk lab" in proc.stdout

    # the same injected cell as the run of the same parameters, after the same cells of the template
    run_rk_in(ws, "run", "star_replication", "-p", "grade=1", check=0)
    executed = (
        root / "reports" / "_build" / "star_replication" / "controls=false,grade=1,lang=en" / "report.ipynb"
    )
    assert source(injected_cell(copy)) == source(injected_cell(executed))
    assert 'grade = "1"' in source(injected_cell(copy))
    template_cells = [source(c) for c in json.loads(shared)["cells"]]
    assert [
        source(c)
        for c in json.loads(copy.read_text())["cells"]
        if "injected-parameters" not in c["metadata"].get("tags", [])
    ] == template_cells
    # ... and executed as it is, it gives the run's key figures
    out = tmp_path / "copy-out.ipynb"
    proc = subprocess.run(
        [str(BIN / "papermill"), str(copy), str(out), "--no-progress-bar"],
        cwd=copy.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert records(out) == records(executed) and records(out)["n"] > 0

    # the shared template is untouched, the copy is ignored by git, and git sees no change at all
    assert template.read_bytes() == shared
    ignored = subprocess.run(["git", "check-ignore", "-q", str(copy.relative_to(root))], cwd=root)
    assert ignored.returncode == 0
    status = subprocess.run(
        [
            "git",
            "status",
            "--porcelain",
            "--untracked-files=all",
            "--",
            "scratch",
            "reports/star_replication.ipynb",
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0 and status.stdout == "", status.stdout

    # an earlier copy is never overwritten without --replace; a bad value is refused as rk run refuses it
    mine = copy.read_bytes()
    tally.bad_inputs += 2
    assert "--replace" in one_error_line(run_rk_in(ws, "open", "star_replication", "-p", "grade=2"))
    bad = one_error_line(run_rk_in(ws, "open", "star_replication", "-p", "grade=5", "--replace"))
    assert bad == one_error_line(run_rk_in(ws, "run", "star_replication", "-p", "grade=5"))
    assert "parameter grade='5': expected one of k, 1, 2, 3" in bad
    assert copy.read_bytes() == mine
    run_rk_in(ws, "open", "star_replication", "-p", "grade=2", "--replace", check=0)
    assert 'grade = "2"' in source(injected_cell(copy)) and template.read_bytes() == shared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


def test_open_opens_the_copy_in_the_running_lab(ws, tmp_path):
    root, env = ws
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"  # stands in for the researcher's browser: notes the address it is given
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    env = {**env, "BROWSER": f"{browser} %s"}
    port, token = free_port(), "lab-token-for-the-test"
    runtime = Path(env["JUPYTER_RUNTIME_DIR"])
    lab = subprocess.Popen(
        [str(BIN / "rk"), "lab", "--port", str(port), "--token", token],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: list(runtime.glob("jpserver-*.json")), 180, "JupyterLab to start")
        proc = run_rk("open", "college_distance", "-p", "region=all", cwd=root, env=env, check=0)
        copy = root / "scratch" / USER / "college_distance.ipynb"
        url = f"http://127.0.0.1:{port}/lab/tree/scratch/{USER}/college_distance.ipynb?token={token}"
        assert f"JupyterLab: {url}" in proc.stdout, proc.stdout
        assert opened.read_text().strip() == url  # handed to the browser
        api = f"http://127.0.0.1:{port}/api/contents/scratch/{USER}/college_distance.ipynb?token={token}"
        with urllib.request.urlopen(api, timeout=30) as response:  # the lab serves that very file
            served = json.load(response)
        assert served["type"] == "notebook"
        assert [source(c) for c in served["content"]["cells"]] == [
            source(c) for c in json.loads(copy.read_text())["cells"]
        ]
        opened.unlink()
        proc = run_rk("open", "college_distance", "--replace", "--no-browser", cwd=root, env=env, check=0)
        assert f"JupyterLab: {url}" in proc.stdout and not opened.exists()
    finally:
        stop_process_group(lab)
