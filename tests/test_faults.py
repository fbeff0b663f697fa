"""Faults in a batch: a worker that dies mid-report, a cell that hangs past the timeout, a kernel
that dies. Each becomes a failed run with a clear reason; the rest of the batch completes."""
import json

import pytest

from conftest import make_template, run_rk


@pytest.fixture
def faulty_workspace(report_workspace):
    root, d, env = report_workspace
    reports = root / "reports"
    make_template(reports / "crash.ipynb", "n: int = 0", "import os, research_kit as rk\nrk.record('n', n)",
                  "if n == 1: os._exit(9)")
    make_template(reports / "hang.ipynb", "n: int = 0", "import time, research_kit as rk\nrk.record('n', n)",
                  "if n == 1: time.sleep(600)")
    (reports / "batches.yaml").write_text(
        "faults:\n"
        "  - report: crash\n    parameters: [{n: 0}, {n: 1}, {n: 2}]\n"
        "  - report: hang\n    parameters: [{n: 0}, {n: 1}, {n: 2}]\n"
        "  - report: other\n    parameters: [{k: 1}, {k: 2}]\n")
    return root, d, {**env, "RK_RUNNER_TIMEOUT": "5"}


def manifests(root):
    return {f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
            for p in (root / "reports" / "_build").glob("*/*/manifest.json")}


@pytest.mark.parametrize("engine", ["warm", "kernel"])
def test_dead_worker_and_hang_fail_alone(faulty_workspace, engine):
    root, _, env = faulty_workspace
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
