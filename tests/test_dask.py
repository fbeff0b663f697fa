"""The dask executor on a real cluster: a scheduler and two workers on 127.0.0.1 run a batch,
and its records equal a local run's."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_rk

BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    procs = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    for _ in range(2):
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "dask"),
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    from distributed import Client

    deadline = time.time() + 120
    while True:
        try:
            with Client(address, timeout=5) as c:
                if len(c.scheduler_info()["workers"]) == 2:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError("the Dask cluster did not start")
        time.sleep(1)
    yield address
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def records_of(build):
    return {
        f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())["records"]
        for p in build.glob("*/*/manifest.json")
    }


def test_batch_on_dask_equals_local(dask_cluster, tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RK_")}
    local, remote = tmp_path / "local", tmp_path / "dask"
    run_rk("batch", "replication", env={**clean, "RK_WORKSPACE_BUILD": str(local)}, check=0)
    proc = run_rk(
        "batch",
        "replication",
        "--executor",
        "dask",
        "--scheduler",
        dask_cluster,
        env={**clean, "RK_WORKSPACE_BUILD": str(remote)},
        check=0,
    )
    assert records_of(remote) == records_of(local) and len(records_of(local)) == 2
    assert all(json.loads(p.read_text())["status"] == "succeeded" for p in remote.glob("*/*/manifest.json"))


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RK_")}
    proc = run_rk(
        "batch",
        "replication",
        "--executor",
        "dask",
        "--scheduler",
        f"tcp://127.0.0.1:{free_port()}",
        env={**clean, "RK_WORKSPACE_BUILD": str(tmp_path / "b")},
    )
    assert (
        proc.returncode == 1
        and "cannot reach the Dask scheduler" in proc.stderr
        and "nothing listens there" in proc.stderr  # at once, not after Dask's 30 s of retries
        and "Traceback" not in proc.stderr
    ), proc.stderr
