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
    assert "<bool>" not in proc.stdout and "bool" not in proc.stdout.lower().replace("boolean", ""), (
        proc.stdout
    )
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
    proc = run_rk(
        "config", cwd=ROOT / "nbs" / "data", env=clean_env(RK_PRIVACY_THRESHOLD="7", COLUMNS="200"), check=0
    )  # wide: no name cut short
    assert f"workspace: {ROOT}" in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if "threshold" in l)
    assert "7" in line and "RK_PRIVACY_THRESHOLD" in line
    line = next(l for l in proc.stdout.splitlines() if " data " in l)
    assert "datasets" in line and "settings.ini" in line


def test_bad_setting_is_a_clear_error():
    proc = run_rk("config", env=clean_env(RK_RUNNER_ENGINE="turbo"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "RK_RUNNER_ENGINE" in proc.stderr and "'turbo'" in proc.stderr and "warm or kernel" in proc.stderr


# ---- the researcher's own settings file, layered between the defaults and the workspace's ----


def own_settings(tmp_path, text):
    """The researcher's settings file under a configuration folder of their own; returns (file, env)."""
    path = tmp_path / "config" / "research_kit" / "settings.ini"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path, clean_env(XDG_CONFIG_HOME=str(tmp_path / "config"), COLUMNS="400")


def config_rows(stdout):
    """{(section, key): (value, layer, source)} from `rk config`'s table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[0] != "section":
            rows[cells[0], cells[1]] = tuple(cells[2:])
    return rows


def test_config_shows_the_layer_of_each_value(workspace, tmp_path):
    root, _, _ = workspace
    (root / "settings.ini").write_text(
        "[workspace]\ndata = datasets\ncache = .cache\n[runner]\nengine = kernel\n"
    )
    user, env = own_settings(
        tmp_path, "[workspace]\ninstitution = KITIG\nresearcher = Aigerim\n[runner]\nengine = warm\n"
    )
    rows = config_rows(run_rk("config", cwd=root, env={**env, "RK_RUNNER_TIMEOUT": "60"}, check=0).stdout)
    assert rows["workspace", "institution"] == ("KITIG", "user", f"{user}:2")
    assert rows["workspace", "researcher"] == ("Aigerim", "user", f"{user}:3")
    assert rows["runner", "engine"] == (
        "kernel",
        "workspace",
        f"{root / 'settings.ini'}:5",
    )  # the workspace's file wins
    assert rows["runner", "timeout"] == ("60", "environment", "RK_RUNNER_TIMEOUT")
    assert rows["runner", "memory"] == ("0", "default", "default")
    other = tmp_path / "elsewhere.ini"  # RK_USER_SETTINGS names another file
    other.write_text("[workspace]\nresearcher = Dana\n")
    rows = config_rows(
        run_rk("config", cwd=root, env={**env, "RK_USER_SETTINGS": str(other)}, check=0).stdout
    )
    assert (
        rows["workspace", "researcher"] == ("Dana", "user", f"{other}:2")
        and rows["workspace", "institution"][1] == "default"
    )


def test_config_own_threshold_below_the_policy_is_a_local_override(workspace, tmp_path):
    """The user file may not lower the workspace's privacy policy: rk config says public runs would not be publishable."""
    root, _, _ = workspace
    user, env = own_settings(tmp_path, "[privacy]\nthreshold = 5\n")
    proc = run_rk("config", cwd=root, env=env, check=0)
    assert config_rows(proc.stdout)["privacy", "threshold"] == ("5", "user", f"{user}:2")
    assert (
        "note: [privacy] threshold 5 ("
        + f"{user}:2) is a local override below the workspace's policy 10 (default): "
        "public runs made with it are not publishable"
    ) in proc.stdout
    from research_kit.settings import load_settings
    import os

    saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "RK_ROOT")}
    os.environ.update(XDG_CONFIG_HOME=env["XDG_CONFIG_HOME"], RK_ROOT=str(root))
    try:
        assert (load_settings().threshold, load_settings().threshold_policy) == (
            5,
            10,
        )  # what the audit holds runs to
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    user.write_text("[privacy]\nthreshold = 20\n")  # stricter than the policy: no note
    proc = run_rk("config", cwd=root, env=env, check=0)
    assert config_rows(proc.stdout)["privacy", "threshold"][0] == "20" and "note:" not in proc.stdout


@pytest.mark.parametrize(
    "text,line,fragment",
    [
        ("[workspace]\ninstitution = KITIG\n[runner]\nengin = kernel\n", 4, "did you mean 'engine'"),
        ("[runner]\n\ntimeout = 0\n", 3, "timeout = '0'; expected a whole number of seconds"),
        ("[workspace]\ninstitution = KITIG\nthis is not a setting\n", 3, "cannot be read as an ini file"),
        ("institution = KITIG\n", 1, "before the first [section] header"),
        ("[privacy]\nthreshold = 5\nthreshold = 6\n", 3, "already exists"),
        ("[worksapce]\ninstitution = KITIG\n", 1, "did you mean 'workspace'"),
    ],
    ids=["unknown-key", "out-of-range", "not-ini", "no-section", "twice", "unknown-section"],
)
def test_config_bad_user_settings_file_names_file_and_line(workspace, tmp_path, text, line, fragment, tally):
    root, _, _ = workspace
    tally.bad_inputs += 1
    user, env = own_settings(tmp_path, text)
    proc = run_rk("config", cwd=root, env=env)
    err = proc.stderr.strip()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("error: ") and f"{user}:{line}" in err and fragment in err, err


def test_config_user_settings_variable_naming_no_file(workspace, tmp_path, tally):
    root, _, env = workspace
    tally.bad_inputs += 1
    proc = run_rk("config", cwd=root, env={**env, "RK_USER_SETTINGS": str(tmp_path / "nope.ini")})
    assert (
        proc.returncode == 1
        and proc.stderr.strip() == f"error: RK_USER_SETTINGS={tmp_path / 'nope.ini'}: no such settings file"
    )


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
    proc = run_rk(
        "datasets",
        "validate",
        "consortium",
        env=clean_env(RK_WORKSPACE_DATA=str(tmp_path / "data"), RK_WORKSPACE_CACHE=str(tmp_path / "cache")),
        check=0,
    )
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


@pytest.mark.parametrize(
    "out", [".", "..", "reports", "datasets", ".git", "nbs", "nbs/sub", "notes", "settings.ini"]
)
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
    assert (root / "site" / "docs" / "index.html").is_file() and (
        root / "site" / "docs" / ".rk-docs"
    ).is_file()
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
    cases = [
        ((not_a_run, "--batch", "small"), "give a run folder or --batch NAME, not both"),
        ((not_a_run,), f"{not_a_run} holds no manifest.json; give a run folder"),
        (("--batch", "small"), f"batch 'small' has no finished runs to {command}; run it first"),
    ]
    if command != "push":  # push acts on every finished run when given neither
        cases.append(((), "give a run folder or --batch NAME (one of them)"))
    for args, expected in cases:
        proc = run_rk(command, *args, cwd=root, env=env, check=1)
        tally.bad_inputs += 1
        assert proc.stderr.startswith("error: ") and expected in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
