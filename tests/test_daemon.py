"""The long-lived warm workers (research_kit.runner.daemon): reused between commands, identical records, shown and
stopped, idle timeout, replaced when the code changes, and kill -9 of either side loses nothing."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import RK, ROOT, check_build, make_template, run_rk


def daemon_env(env, **extra):
    "The workspace's environment with the long-lived workers allowed (the suite sets CI, which turns them off)."
    return {**env, "CI": "", **extra}  # run_rk lays `env` over the suite's own environment


def state(root: Path) -> dict:
    return json.loads((root / ".cache" / "workers" / "daemon.json").read_text())


def workers_of(pid: int) -> set[int]:
    "The worker processes of the daemon `pid` (its children; not the resource tracker, nor one that just ended)."

    def is_worker(p) -> bool:
        try:
            return "spawn_main" in " ".join(p.cmdline())
        except psutil.Error:  # a replaced worker between its end and its parent reaping it
            return False

    return {p.pid for p in psutil.Process(pid).children() if is_worker(p)}


def wait_for(condition, timeout=120, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def daemon_workspace(report_workspace):
    root, d, env = report_workspace
    make_template(root / "reports" / "sleepy.ipynb", "n: int = 1", "import time\ntime.sleep(120)")
    env = daemon_env(env)
    yield root, env
    run_rk("workers", "stop", cwd=root, env=env)


def test_second_run_same_workers_identical_record(daemon_workspace):
    root, env = daemon_workspace
    run_rk("run", "tiny", "-p", "n=2", cwd=root, env=env, check=0)
    first = state(root)
    workers = workers_of(first["pid"])
    assert workers
    run_rk("run", "tiny", "-p", "n=2", "--force", cwd=root, env=env, check=0)
    assert (
        state(root)["pid"] == first["pid"] and workers_of(first["pid"]) == workers
    )  # the same processes served it
    folder = root / "reports" / "_build" / "tiny" / "label=x,mode=a,n=2"
    daemon = json.loads((folder / "manifest.json").read_text())
    run_rk("run", "tiny", "-p", "n=2", "--force", "--no-daemon", cwd=root, env=env, check=0)
    own = json.loads((folder / "manifest.json").read_text())
    assert daemon["records"] == own["records"] and daemon["records"]["n_people"] == 3
    assert daemon["cache_key"] == own["cache_key"], (daemon, own)
    assert daemon["status"] == own["status"] == "succeeded"
    assert workers_of(first["pid"]) == workers  # --no-daemon did not touch them
    # owner-only: the runtime folder, its socket and its state (which holds the authkey)
    runtime = root / ".cache" / "workers"
    assert runtime.stat().st_mode & 0o777 == 0o700
    assert (
        Path(first["address"]).stat().st_mode & 0o777 == 0o600
        and (runtime / "daemon.json").stat().st_mode & 0o777 == 0o600
    )
    shown = run_rk("workers", cwd=root, env=env, check=0).stdout
    assert f"process {first['pid']}" in shown and all(str(w) in shown for w in workers)
    stopped = run_rk("workers", "stop", cwd=root, env=env, check=0).stdout
    assert f"stopped the long-lived workers (process {first['pid']})" in stopped
    assert gone(first["pid"]) and all(gone(w) for w in workers)
    assert not (runtime / "daemon.json").exists() and not Path(first["address"]).exists()
    assert "no long-lived workers run" in run_rk("workers", cwd=root, env=env, check=0).stdout
    assert (
        "no long-lived workers were running" in run_rk("workers", "stop", cwd=root, env=env, check=0).stdout
    )


def test_reports_see_the_commands_variables_and_search_path(daemon_workspace):
    """Workers started by an earlier command with other variables still run this command's report as a pool of its own
    would: its variables, its search path (python -c put the workspace first: helpers.py beside settings.ini was
    importable only there, and read, so the daemon's run had another key), the same records and the same cache key."""
    root, env = daemon_workspace
    (root / "helpers.py").write_text("X = 1\n")
    make_template(
        root / "reports" / "probe.ipynb",
        "n: int = 1",
        "import os, sys\nimport research_kit as rk\n"
        "try:\n    import helpers\n    found = True\nexcept ImportError:\n    found = False\n"
        "rk.record('helpers', found)\nrk.record('who', os.environ.get('PROBE_WHO'))\nrk.record('path', sys.path)",
    )
    run_rk("run", "other", cwd=root, env={**env, "PROBE_WHO": "first"}, check=0)  # starts the workers
    pid = state(root)["pid"]
    run_rk("run", "probe", cwd=root, env={**env, "PROBE_WHO": "second"}, check=0)
    assert state(root)["pid"] == pid  # the same workers served it
    folder = root / "reports" / "_build" / "probe" / "n=1"
    daemon = json.loads((folder / "manifest.json").read_text())
    run_rk("run", "probe", "--force", "--no-daemon", cwd=root, env={**env, "PROBE_WHO": "second"}, check=0)
    own = json.loads((folder / "manifest.json").read_text())
    assert daemon["cache_key"] == own["cache_key"] and daemon["files"] == own["files"], (daemon, own)
    assert daemon["records"] == own["records"] and daemon["records"]["who"] == "second"
    assert daemon["unkeyed"] == own["unkeyed"] == []


def test_idle_timeout_ends_them(daemon_workspace):
    root, env = daemon_workspace
    env = {**env, "RK_RUNNER_IDLE": "2"}
    run_rk("run", "other", "-p", "k=1", cwd=root, env=env, check=0)
    pid = state(root)["pid"]
    wait_for(lambda: gone(pid), what="the idle workers to stop")
    assert not (root / ".cache" / "workers" / "daemon.json").exists()


def test_code_change_replaces_them(daemon_workspace, tmp_path):
    root, env = daemon_workspace
    code = tmp_path / "code"
    shutil.copytree(
        ROOT / "research_kit", code / "research_kit", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "locales", code / "locales")  # the message catalogs, found beside the package
    env = {**env, "PYTHONPATH": str(code)}
    run_rk("run", "other", "-p", "k=1", cwd=root, env=env, check=0)
    old = state(root)["pid"]
    run_rk("run", "other", "-p", "k=2", cwd=root, env=env, check=0)
    assert state(root)["pid"] == old  # unchanged code: the same workers
    with open(code / "research_kit" / "runner" / "record.py", "a") as f:
        f.write("\n# changed\n")
    run_rk("run", "other", "-p", "k=3", cwd=root, env=env, check=0)
    assert state(root)["pid"] != old and gone(old)
    manifest = json.loads((root / "reports" / "_build" / "other" / "k=3" / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["records"] == {"k": 3}


def start_sleepy(root, env):
    "`rk run sleepy` in the background, once its report is running in a worker."
    proc = subprocess.Popen(
        [str(RK), "run", "sleepy"],
        cwd=root,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        start_new_session=True,
    )
    # a worker makes the run's temporary folder when it takes the task, then runs the cells
    wait_for(
        lambda: list((root / "reports" / "_build" / "sleepy").glob(".tmp-*")) or proc.poll() is not None,
        what="the report to start",
    )
    time.sleep(3)
    assert proc.poll() is None, proc.communicate()
    return proc


def test_kill_9_of_the_daemon_mid_run(daemon_workspace, tally):
    root, env = daemon_workspace
    run_rk("run", "other", "-p", "k=1", cwd=root, env=env, check=0)
    old = state(root)["pid"]
    workers = workers_of(old)
    proc = start_sleepy(root, env)
    os.kill(old, signal.SIGKILL)
    tally.faults += 1
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err
    assert f"error: the long-lived workers (process {old}) stopped while running sleepy/n=1" in err
    assert not (root / "reports" / "_build" / "sleepy" / "n=1").exists()  # nothing under a final name
    wait_for(lambda: all(gone(w) for w in workers), what="the orphaned workers to end")
    run_rk("run", "other", "-p", "k=2", cwd=root, env=env, check=0)  # a new daemon
    assert state(root)["pid"] != old
    runs = check_build(root / "reports" / "_build", tally)
    assert set(runs) == {"other/k=1", "other/k=2"}
    assert not list(
        (root / "reports" / "_build").glob("*/.tmp-*")
    )  # the killed run's temporary folder was cleaned


def test_kill_9_of_the_command_mid_run(daemon_workspace, tally):
    root, env = daemon_workspace
    proc = start_sleepy(root, env)
    pid = state(root)["pid"]
    busy = workers_of(pid)
    os.kill(proc.pid, signal.SIGKILL)
    tally.faults += 1
    proc.communicate(timeout=60)
    wait_for(
        lambda: workers_of(pid) and not (workers_of(pid) & busy),
        what="the abandoned report's worker to be replaced",
    )
    assert not gone(pid)  # the daemon survives
    assert not (root / "reports" / "_build" / "sleepy" / "n=1").exists()
    run_rk("run", "other", "-p", "k=1", cwd=root, env=env, check=0)
    assert state(root)["pid"] == pid
    runs = check_build(root / "reports" / "_build", tally)
    assert set(runs) == {"other/k=1"} and runs["other/k=1"]["status"] == "succeeded"


def test_bad_settings_name_the_setting(daemon_workspace, tally):
    root, env = daemon_workspace
    bad = run_rk("run", "other", cwd=root, env={**env, "RK_RUNNER_DAEMON": "maybe"})
    assert bad.returncode == 1 and bad.stderr.strip() == (
        "error: RK_RUNNER_DAEMON: [runner] daemon = 'maybe'; expected on (keep warm workers running between commands) or off"
    )
    (root / "settings.ini").write_text((root / "settings.ini").read_text() + "[runner]\nidle = 0\n")
    bad = run_rk("run", "other", cwd=root, env=env)
    assert bad.returncode == 1 and bad.stderr.strip() == (
        f"error: {root / 'settings.ini'}:5: [runner] idle = '0'; expected a whole number of seconds from 1 to 604800 (a week)"
    )
    tally.bad_inputs += 2
    assert not (root / ".cache" / "workers").exists()  # nothing was started


def test_workers_that_cannot_start_say_so(daemon_workspace, tally):
    from research_kit.processes import local_address

    root, env = daemon_workspace
    # where the socket goes (in the workspace, or under the temp folder when that path is too long for
    # a socket): a folder there, so it cannot listen
    address, _ = local_address(root / ".cache" / "workers")
    Path(address).mkdir(parents=True)
    tally.faults += 1
    proc = run_rk("run", "other", cwd=root, env=env)
    log = root / ".cache" / "workers" / "daemon.log"
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: the long-lived workers did not start (see {log}); run again with --no-daemon"
    )
    assert Path(address).name in log.read_text()
    assert not (root / "reports" / "_build" / "other" / "k=0").exists()
    run_rk("run", "other", "--no-daemon", cwd=root, env=env, check=0)  # and without them it runs
    shutil.rmtree(address, ignore_errors=True)  # the blocker may sit in the temp folder


@pytest.mark.parametrize("created", ["another", "unrecorded"])
def test_a_stale_state_never_kills_the_process_that_has_its_pid_now(daemon_workspace, created, tally):
    # the daemon died (kill -9, a reboot) and its pid went to another process: rk workers stop (and the
    # next rk run, which replaces the workers) removes the stale state and leaves that process alone
    import sys

    root, env = daemon_workspace
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        folder = root / ".cache" / "workers"
        folder.mkdir(parents=True, exist_ok=True)
        stale = {
            "pid": other.pid,
            "address": str(folder / "gone.sock"),
            "family": "AF_UNIX",
            "authkey": "00" * 32,
            "identity": "old",
            "root": str(root),
            "started": "2026-11-30T08:00:00+00:00",
            "idle": 900,
        }
        if created == "another":
            stale["created"] = psutil.Process(other.pid).create_time() - 3600  # the dead daemon's start
        (folder / "daemon.json").write_text(json.dumps(stale))
        tally.faults += 1
        proc = run_rk("workers", "stop", cwd=root, env=env)
        assert proc.stdout.strip() == "no long-lived workers were running for this workspace"
        assert other.poll() is None, "rk killed a process it did not start"
        assert not (folder / "daemon.json").exists()
    finally:
        other.kill()
        other.wait()
