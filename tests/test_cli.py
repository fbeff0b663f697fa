"""The `rk` command: settings from any subfolder, environment overrides, clear errors, demo data."""
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, RK, run_rk


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RK_")}
    return {**env, **extra}


def test_help_lists_commands():
    proc = run_rk("--help", check=0)
    for command in ("config", "datasets", "demo"):
        assert command in proc.stdout


@pytest.mark.parametrize("command", [["run"], ["batch"], ["open"], ["datasets", "validate"]])
def test_help_shows_flags_as_flags(command):
    "A flag takes no value, and --help shows it so: `--dry-run`, `--force / --no-force`, never `--help <bool>`."
    proc = run_rk(*command, "--help", env={"COLUMNS": "200"}, check=0)
    assert "<bool>" not in proc.stdout and "bool" not in proc.stdout.lower().replace("boolean", ""), proc.stdout
    help_line = next(l for l in proc.stdout.splitlines() if l.strip().startswith("--help"))
    assert help_line.split() == ["--help", "Show", "this", "message", "and", "exit."], help_line
    if command in (["run"], ["batch"]):
        assert "--force / --no-force" in proc.stdout
        assert "([workspace] share)" in proc.stdout  # help text prints as written, square brackets too


def test_cached_rows_of_the_summary_show_their_key_figures(report_workspace):
    "A cached run's row shows the key figures its manifest recorded, as an executed run's row does."
    root, _, env = report_workspace
    first = run_rk("run", "tiny", cwd=root, env=env, check=0)
    row = next(l for l in first.stdout.splitlines() if "succeeded" in l)
    assert "n_people=3" in row, first.stdout
    again = run_rk("run", "tiny", cwd=root, env=env, check=0)
    row = next(l for l in again.stdout.splitlines() if "cached" in l)
    assert "n_people=3" in row and "n=1" in row, again.stdout


def test_config_from_a_subfolder_with_override():
    proc = run_rk("config", cwd=ROOT / "nbs" / "data", env=clean_env(RK_PRIVACY_THRESHOLD="7"), check=0)
    assert f"workspace: {ROOT}" in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if "threshold" in l)
    assert "7" in line and "RK_PRIVACY_THRESHOLD" in line
    line = next(l for l in proc.stdout.splitlines() if " data " in l)
    assert "datasets" in line and "settings.ini" in line


def test_bad_setting_is_a_clear_error():
    proc = run_rk("config", env=clean_env(RK_RUNNER_ENGINE="turbo"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "RK_RUNNER_ENGINE" in proc.stderr and "'turbo'" in proc.stderr and "warm or kernel" in proc.stderr


def test_outside_a_workspace(tmp_path):
    proc = run_rk("datasets", "list", cwd=tmp_path, env=clean_env())
    assert proc.returncode == 1 and "no settings.ini" in proc.stderr and "Traceback" not in proc.stderr


def test_datasets_list_and_show():
    proc = run_rk("datasets", "list", env=clean_env(), check=0)
    for name in ("consortium", "students", "star", "college_distance", "GPL-2.0", "CC0-1.0"):
        assert name in proc.stdout
    proc = run_rk("datasets", "show", "consortium", env=clean_env(), check=0)
    assert "SYNTHETIC" in proc.stdout.upper() and "student_id" in proc.stdout


def test_demo_writes_a_valid_package(tmp_path):
    out = tmp_path / "data" / "consortium"
    run_rk("demo", "--seed", "7", "--students", "300", "--out", out, env=clean_env(), check=0)
    assert (out / "datapackage.yaml").is_file()
    proc = run_rk("datasets", "validate", "consortium", env=clean_env(RK_WORKSPACE_DATA=str(tmp_path / "data"),
                                                                      RK_WORKSPACE_CACHE=str(tmp_path / "cache")), check=0)
    assert "FAILED" not in proc.stdout and "students" in proc.stdout


# ---- rk docs never deletes a folder it did not write ----

def docs_workspace(tmp_path):
    """A small workspace with the folders rk docs must never touch, each holding a file."""
    import nbformat
    root = tmp_path / "ws"
    for folder in (".git", "datasets", "reports", "nbs", "notes"):
        (root / folder).mkdir(parents=True)
        (root / folder / "keep.txt").write_text("uncommitted work")
    (root / "settings.ini").write_text("[workspace]\ndata = datasets\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# m\n\n> A module.")])
    nbformat.write(nb, root / "nbs" / "m.ipynb")
    return root


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("out", [".", "..", "reports", "datasets", ".git", "nbs", "nbs/sub", "notes", "settings.ini"])
def test_docs_refuses_a_folder_it_did_not_write(tmp_path, out, tally):
    from test_bad_input import assert_one_clear_error
    tally.bad_inputs += 1
    root = docs_workspace(tmp_path)
    before = files(tmp_path)
    proc = run_rk("docs", "--out", out, cwd=root, env=clean_env())
    assert_one_clear_error(proc, "--out", str((root / out).resolve()))
    assert files(tmp_path) == before  # nothing deleted, nothing left behind


def test_docs_writes_a_new_folder_and_replaces_only_its_own(tmp_path):
    root = docs_workspace(tmp_path)
    before = files(root)
    run_rk("docs", "--out", "site/docs", cwd=root, env=clean_env(), check=0)
    assert (root / "site" / "docs" / "index.html").is_file() and (root / "site" / "docs" / ".rk-docs").is_file()
    (root / "site" / "docs" / "stale.html").write_text("old page")
    run_rk("docs", "--out", "site/docs", cwd=root, env=clean_env(), check=0)
    assert not (root / "site" / "docs" / "stale.html").exists()
    assert [f for f in files(root) if not f.startswith("site")] == before


def test_docs_failure_leaves_nothing_behind(tmp_path, tally):
    from test_bad_input import assert_one_clear_error
    tally.bad_inputs += 1
    root = docs_workspace(tmp_path)
    (root / "nbs" / "broken.ipynb").write_text("{not json")
    before = files(tmp_path)
    proc = run_rk("docs", "--out", "new/docs", cwd=root, env=clean_env())
    assert_one_clear_error(proc, "broken.ipynb", "cannot be rendered")
    assert files(tmp_path) == before


# ---- rk verify, rk audit and rk push choose their runs the same way ----

@pytest.mark.parametrize("command", ["verify", "audit", "push"])
def test_run_folder_or_batch_is_chosen_alike(report_workspace, tmp_path, command, tally):
    "The same mistakes in choosing runs get the same message from each command that acts on finished runs."
    root, _, env = report_workspace
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    cases = [((not_a_run, "--batch", "small"), "give a run folder or --batch NAME, not both"),
             ((not_a_run,), f"{not_a_run} holds no manifest.json; give a run folder"),
             (("--batch", "small"), f"batch 'small' has no finished runs to {command}; run it first")]
    if command != "push":  # push acts on every finished run when given neither
        cases.append(((), "give a run folder or --batch NAME (one of them)"))
    for args, expected in cases:
        proc = run_rk(command, *args, cwd=root, env=env, check=1)
        tally.bad_inputs += 1
        assert proc.stderr.startswith("error: ") and expected in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
