"""Faults in a batch: a worker that dies mid-report, a cell that hangs past the timeout, a kernel
that dies. Each becomes a failed run with a clear reason; the rest of the batch completes."""

import json

import pytest

from conftest import check_build, make_template, run_rk


@pytest.fixture
def faulty_workspace(report_workspace):
    root, d, env = report_workspace
    reports = root / "reports"
    make_template(
        reports / "crash.ipynb",
        "n: int = 0",
        "import os, research_kit as rk\nrk.record('n', n)",
        "if n == 1: os._exit(9)",
    )
    make_template(
        reports / "hang.ipynb",
        "n: int = 0",
        "import time, research_kit as rk\nrk.record('n', n)",
        "if n == 1: time.sleep(600)",
    )
    (reports / "batches.yaml").write_text(
        "faults:\n"
        "  - report: crash\n    parameters: [{n: 0}, {n: 1}, {n: 2}]\n"
        "  - report: hang\n    parameters: [{n: 0}, {n: 1}, {n: 2}]\n"
        "  - report: other\n    parameters: [{k: 1}, {k: 2}]\n"
    )
    return root, d, {**env, "RK_RUNNER_TIMEOUT": "5"}


def manifests(root):
    return {
        f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
        for p in (root / "reports" / "_build").glob("*/*/manifest.json")
    }


@pytest.mark.parametrize("engine", ["warm", "kernel"])
def test_dead_worker_and_hang_fail_alone(faulty_workspace, engine, tally):
    root, _, env = faulty_workspace
    tally.faults += 2
    proc = run_rk("batch", "faults", "--engine", engine, "--workers", "2", cwd=root, env=env, timeout=900)
    assert proc.returncode == 1 and "2 reports failed" in proc.stderr, proc.stdout + proc.stderr
    m = manifests(root)
    assert len(m) == 8
    ok = [k for k, v in m.items() if v["status"] == "succeeded"]
    assert sorted(ok) == ["crash/n=0", "crash/n=2", "hang/n=0", "hang/n=2", "other/k=1", "other/k=2"]
    crash, hang = m["crash/n=1"], m["hang/n=1"]
    assert crash["status"] == "failed" and hang["status"] == "failed"
    if engine == "warm":
        assert crash["error"]["type"] == "WorkerDied" and "exit code 9" in crash["error"]["message"]
    else:
        assert "died" in (crash["error"]["type"] + crash["error"]["message"]).lower()
    assert "timeout" in (hang["error"]["type"] + hang["error"]["message"]).lower()
    index = (root / "reports" / "_build" / "index.html").read_text()
    assert index.count('data-status="failed"') == 2
    check_build(root / "reports" / "_build", tally)


@pytest.mark.parametrize("engine", ["warm", "kernel"])
def test_memory_hog_fails_with_a_clear_reason(report_workspace, engine, tally):
    root, _, env = report_workspace
    make_template(
        root / "reports" / "hog.ipynb",
        "n: int = 0",
        "import research_kit as rk\nrk.record('n', n)",
        "if n == 1:\n    blocks = []\n    while True: blocks.append(bytearray(50 * 2**20))",
    )
    (root / "reports" / "batches.yaml").write_text(
        "hog:\n  - report: hog\n    parameters: [{n: 0}, {n: 1}, {n: 2}]\n"
    )
    proc = run_rk(
        "batch",
        "hog",
        "--engine",
        engine,
        "--workers",
        "2",
        cwd=root,
        env={**env, "RK_RUNNER_MEMORY": "1500"},
        timeout=600,
    )
    tally.faults += 1
    assert proc.returncode == 1 and "1 report failed" in proc.stderr, proc.stdout + proc.stderr
    m = manifests(root)
    assert m["hog/n=0"]["status"] == m["hog/n=2"]["status"] == "succeeded"
    err = m["hog/n=1"]["error"]
    assert m["hog/n=1"]["status"] == "failed" and err["type"] in (
        "MemoryError",
        "DeadKernelError",
        "WorkerDied",
    ), err
    if err["type"] == "MemoryError":
        assert "memory limit of 1500 MB" in err["message"]
    check_build(root / "reports" / "_build", tally)


def test_two_hundred_kernel_reports_without_spurious_failures(report_workspace, tally):
    root, _, env = report_workspace
    make_template(root / "reports" / "empty.ipynb", "i: int = 0", "i")
    (root / "reports" / "batches.yaml").write_text(
        f"many:\n  - report: empty\n    grid: {{i: {list(range(200))}}}\n"
    )
    proc = run_rk("batch", "many", "--engine", "kernel", "--workers", "2", cwd=root, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = check_build(root / "reports" / "_build", tally)
    assert len(runs) == 200 and all(
        m["status"] == "succeeded" and m["engine"] == "kernel" for m in runs.values()
    )


@pytest.mark.parametrize("engine", ["warm", "kernel"])
def test_a_report_after_a_timed_out_one_on_the_same_worker_succeeds(report_workspace, engine, tally):
    """A warm cell that timed out may still be running (a blocking call cannot be cancelled): the
    worker must not hand its next report to that busy shell, where it would wait and be failed in turn."""
    root, _, env = report_workspace
    make_template(
        root / "reports" / "hang.ipynb",
        "n: int = 0",
        "import time, research_kit as rk\nrk.record('n', n)",
        "if n == 1: time.sleep(600)",
    )
    (root / "reports" / "batches.yaml").write_text(
        "after:\n  - report: hang\n    parameters: [{n: 1}]\n  - report: other\n    parameters: [{k: 1}, {k: 2}]\n"
    )
    tally.faults += 1
    proc = run_rk(
        "batch",
        "after",
        "--engine",
        engine,
        "--workers",
        "1",
        cwd=root,
        env={**env, "RK_RUNNER_TIMEOUT": "3"},
        timeout=600,
    )
    assert proc.returncode == 1 and "1 report failed" in proc.stderr, proc.stdout + proc.stderr
    m = manifests(root)
    assert (
        m["hang/n=1"]["status"] == "failed"
        and "timeout" in (m["hang/n=1"]["error"]["type"] + m["hang/n=1"]["error"]["message"]).lower()
    )
    assert m["other/k=1"]["status"] == m["other/k=2"]["status"] == "succeeded", (
        m["other/k=1"]["error"],
        m["other/k=2"]["error"],
    )
    assert m["other/k=1"]["records"] == {"k": 1} and m["other/k=2"]["records"] == {"k": 2}
    check_build(root / "reports" / "_build", tally)
