"""Nothing lost, nothing corrupt: `kill -9` of `rk batch` at random moments, a manifest truncated
mid-write, a build folder deleted during a batch. A rerun then finishes every report exactly once,
and reports that had finished are not rerun."""

import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from conftest import RK, check_build, make_template, run_rk

N_RUNS = 12


@pytest.fixture
def slow_workspace(report_workspace):
    root, d, env = report_workspace
    make_template(
        root / "reports" / "slow.ipynb",
        "k: int = 0",
        "import time, research_kit as rk\ntime.sleep(0.4)\nrk.record('k', k)",
    )
    (root / "reports" / "batches.yaml").write_text(
        f"many:\n  - report: slow\n    grid: {{k: {list(range(N_RUNS))}}}\n"
    )
    return root, env


def start_batch(root, env):
    return subprocess.Popen(
        [str(RK), "batch", "many", "--workers", "2"],
        cwd=root,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_kill_minus_nine_at_random_moments(slow_workspace, tally):
    root, env = slow_workspace
    build = root / "reports" / "_build"
    rng = random.Random(20261126)
    for moment in [rng.uniform(0.5, 6.0) for _ in range(4)]:
        proc = start_batch(root, env)
        time.sleep(moment)
        os.killpg(proc.pid, signal.SIGKILL)  # rk and its worker processes, mid-whatever they were doing
        proc.wait()
        tally.faults += 1
        if build.exists():
            check_build(build, tally)  # whatever was visible is whole
    before = check_build(build, tally) if build.exists() else {}
    finished = {k: m["started"] for k, m in before.items() if m["status"] == "succeeded"}
    run_rk("batch", "many", "--workers", "2", cwd=root, env=env, check=0)
    after = check_build(build, tally)
    assert len(after) == N_RUNS and all(m["status"] == "succeeded" for m in after.values())
    for key, started in finished.items():
        assert after[key]["started"] == started, f"{key} was rerun"
    assert not list(build.glob("*/.tmp-*")) and not list(build.glob("*/.old-*")), "stale temporary folders"
    dry = run_rk("batch", "many", "--dry-run", cwd=root, env=env, check=0).stdout
    assert dry.count("cached") == N_RUNS  # cache and manifests agree


def test_truncated_manifest_is_detected_and_rerun(slow_workspace, tally):
    root, env = slow_workspace
    build = root / "reports" / "_build"
    run_rk("batch", "many", "--workers", "2", cwd=root, env=env, check=0)
    victim = build / "slow" / "k=3" / "manifest.json"
    text = victim.read_text()
    victim.write_text(text[: len(text) // 2])  # as if the writer died mid-write without the atomic rename
    tally.faults += 1
    dry = run_rk("batch", "many", "--dry-run", cwd=root, env=env, check=0).stdout
    assert dry.count("cached") == N_RUNS - 1 and "slow" in dry
    run_rk("batch", "many", cwd=root, env=env, check=0)
    runs = check_build(build, tally)
    assert runs["slow/k=3"]["status"] == "succeeded" and runs["slow/k=3"]["records"] == {"k": 3}


def test_build_folder_deleted_during_a_batch(slow_workspace, tally):
    root, env = slow_workspace
    build = root / "reports" / "_build"
    proc = subprocess.Popen(
        [str(RK), "batch", "many", "--workers", "2"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not list(build.glob("slow/k=*")) and time.time() < deadline:
        time.sleep(0.1)
    shutil.rmtree(build)
    tally.faults += 1
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    check_build(build, tally)
    run_rk("batch", "many", cwd=root, env=env, check=0)  # the rerun recovers everything
    runs = check_build(build, tally)
    assert len(runs) == N_RUNS and all(m["status"] == "succeeded" for m in runs.values())
    assert (build / "index.html").exists()


def test_two_batches_at_once(slow_workspace, tally):
    root, env = slow_workspace
    first = start_batch(root, env)
    build = root / "reports" / "_build"
    deadline = time.time() + 60
    while not (build / ".lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    second = run_rk("batch", "many", cwd=root, env=env)
    tally.faults += 1
    assert second.returncode == 1 and "is writing" in second.stderr
    assert first.wait(300) == 0
    waited = run_rk(
        "batch", "many", "--wait", cwd=root, env=env, check=0
    )  # waits, then finds everything cached
    runs = check_build(build, tally)
    assert len(runs) == N_RUNS and all(m["status"] == "succeeded" for m in runs.values())


def test_a_waiting_batch_plans_after_the_running_one_finished(slow_workspace, tally):
    """`rk batch --wait` started while the same batch runs: once it gets the lock it finds every
    report cached, rather than rerun what the first batch ran while it waited."""
    root, env = slow_workspace
    build = root / "reports" / "_build"
    first = start_batch(root, env)
    deadline = time.time() + 60
    while not (build / ".lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.Popen(
        [str(RK), "batch", "many", "--wait"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tally.faults += 1
    assert first.wait(300) == 0
    ran_first = {k: m["started"] for k, m in check_build(build, tally).items()}
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, out + err
    assert {k: m["started"] for k, m in check_build(build, tally).items()} == ran_first  # nothing ran twice
    assert len(ran_first) == N_RUNS and out.count("cached") == N_RUNS, out
