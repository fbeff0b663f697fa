"""Notebooks in git, for teams: `make hooks` installs nbdev's notebook merge driver and a
pre-commit hook that cleans notebooks (keeping the papermill `parameters` tag); two branches that
edit different cells of one notebook merge into a valid notebook that runs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from conftest import ROOT, make_template

BIN = Path(sys.executable).parent


def git(repo, *args, env):
    proc = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def edit_cell(path, index, source):
    nb = nbformat.read(path, as_version=4)
    nb.cells[index].source = source
    nbformat.write(nb, path)


def test_hooks_clean_commits_and_merge_cell_by_cell(tmp_path):
    repo, home = tmp_path / "repo", tmp_path / "home"
    repo.mkdir()
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "GIT_AUTHOR_NAME": "a",
        "GIT_AUTHOR_EMAIL": "a@x",
        "GIT_COMMITTER_NAME": "a",
        "GIT_COMMITTER_EMAIL": "a@x",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, repo / name)
    nb_path = make_template(
        repo / "reports" / "shared.ipynb",
        "n: int = 2  # a number",
        "import research_kit as rk\nrk.record('double', n * 2)",
        "rk.record('triple', n * 3)",
    )
    subprocess.run([str(BIN / "nbdev-clean"), "--fname", str(nb_path)], cwd=repo, env=env, check=True)
    git(repo, "init", "-q", "-b", "main", env=env)
    git(repo, "add", ".", env=env)
    git(repo, "commit", "-q", "-m", "start", env=env)

    stamp = tmp_path / "stamp"
    stamp.touch()  # the workspace's venv is this interpreter's: no setup in the throwaway repo
    make = subprocess.run(
        ["make", "hooks", f"BIN={BIN}", f"STAMP={stamp}"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert make.returncode == 0, make.stdout + make.stderr
    assert "merge=jupyternotebook" in (repo / ".gitattributes").read_text()
    assert os.access(repo / ".git" / "hooks" / "pre-commit", os.X_OK)

    # a commit of a notebook with outputs and counts is cleaned by the hook; the parameters tag stays
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", text="noise")]
    nb.cells[3].execution_count = 7
    nbformat.write(nb, nb_path)
    git(repo, "add", ".gitattributes", ".gitconfig", "reports/shared.ipynb", env=env)
    git(repo, "commit", "-q", "-m", "hooks", env=env)
    committed = json.loads(git(repo, "show", "HEAD:reports/shared.ipynb", env=env))
    code = [c for c in committed["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert committed["metadata"]["kernelspec"]["name"] == "research-kit"
    assert [c for c in code if "parameters" in c["metadata"].get("tags", [])], "the parameters tag was lost"

    # two branches edit neighbouring cells of the same notebook
    git(repo, "checkout", "-q", "-b", "left", env=env)
    edit_cell(nb_path, 3, "import research_kit as rk\nrk.record('double', n * 2)\nrk.record('left', 'yes')")
    git(repo, "commit", "-q", "-am", "left edits cell 3", env=env)
    git(repo, "checkout", "-q", "main", env=env)
    edit_cell(nb_path, 4, "rk.record('triple', n * 3)\nrk.record('right', 'yes')")
    git(repo, "commit", "-q", "-am", "right edits cell 4", env=env)
    merge = subprocess.run(
        ["git", "merge", "--no-edit", "left"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert merge.returncode == 0, merge.stdout + merge.stderr
    merged = nbformat.read(nb_path, as_version=4)
    nbformat.validate(merged)
    assert "<<<<<<<" not in nb_path.read_text()
    assert "left" in merged.cells[3].source and "right" in merged.cells[4].source

    # and it runs
    out = tmp_path / "out.ipynb"
    run = subprocess.run(
        [str(BIN / "papermill"), str(nb_path), str(out), "--no-progress-bar"],
        cwd=ROOT,
        env={k: v for k, v in env.items() if not k.startswith("RK_")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    from research_kit.runner.record import records

    assert records(out) == {"double": 4, "left": "yes", "triple": 6, "right": "yes"}
