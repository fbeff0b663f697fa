"""The `rk` command: settings from any subfolder, environment overrides, clear errors, demo data."""
import os
import subprocess
import sys
import time

from conftest import ROOT, RK, run_rk


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RK_")}
    return {**env, **extra}


def test_help_lists_commands():
    proc = run_rk("--help", check=0)
    for command in ("config", "datasets", "demo"):
        assert command in proc.stdout


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
