"""The data root may be a remote store: datasets/ served over HTTP on 127.0.0.1 loads exactly as
from disk, and a cached resource is not downloaded again."""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        CountingHandler.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def http_datasets(tmp_path):
    """A copy of datasets/ served read-only over HTTP on a free loopback port; yields (url, request log, folder)."""
    CountingHandler.requests = []
    folder = tmp_path / "served"
    shutil.copytree(ROOT / "datasets", folder)
    handler = functools.partial(CountingHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", CountingHandler.requests, folder
    server.shutdown()
    server.server_close()


SCRIPT = """
import json, sys
import pandas as pd
import research_kit as rk
out = {}
cat = rk.catalog()
out["packages"] = sorted(set(cat.package))
for pkg, res in [("star", None), ("college_distance", None), ("consortium", "institutions"), ("consortium", "programs")]:
    df = rk.load(pkg, res)
    digest = pd.util.hash_pandas_object(df, index=False).sum().item()
    out[f"{pkg}/{res}"] = [len(df), digest, {c: str(t) for c, t in df.dtypes.items()}]
print(json.dumps(out))
"""


def load_summary(env):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_remote_loads_equal_local(http_datasets, tmp_path):
    url, requests, _ = http_datasets
    base = {k: v for k, v in os.environ.items() if not k.startswith("RK_")}
    local = load_summary({**base, "RK_WORKSPACE_CACHE": str(tmp_path / "local-cache")})
    remote_env = {**base, "RK_WORKSPACE_DATA": url, "RK_WORKSPACE_CACHE": str(tmp_path / "remote-cache")}
    remote = load_summary(remote_env)
    assert remote == local
    assert {"star", "college_distance", "consortium"} <= set(remote["packages"])
    downloads = [p for p in requests if p.endswith(".csv")]
    assert "/star/star.csv" in downloads

    # a second run with a warm cache reads descriptors only: no data file is downloaded again
    requests.clear()
    assert load_summary(remote_env) == local
    assert [p for p in requests if p.endswith(".csv")] == []
    assert any(p.endswith("datapackage.yaml") for p in requests)


def test_changed_remote_file_is_downloaded_again(http_datasets, tmp_path):
    import hashlib
    import yaml

    url, requests, folder = http_datasets
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RK_")},
        "RK_WORKSPACE_DATA": url,
        "RK_WORKSPACE_CACHE": str(tmp_path / "cache"),
    }
    script = "import research_kit as rk; print(len(rk.load('college_distance')))"
    first = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0 and first.stdout.strip() == "4739", first.stderr
    # the store publishes a new version: one row fewer, with its new hash in the descriptor
    csv = folder / "college_distance" / "college_distance.csv"
    csv.write_bytes(b"".join(csv.read_bytes().splitlines(keepends=True)[:-1]))
    d = yaml.safe_load((folder / "college_distance" / "datapackage.yaml").read_text())
    d["resources"][0].update(
        hash="sha256:" + hashlib.sha256(csv.read_bytes()).hexdigest(), bytes=csv.stat().st_size
    )
    (folder / "college_distance" / "datapackage.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    requests.clear()
    second = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert second.returncode == 0 and second.stdout.strip() == "4738", second.stderr
    assert "/college_distance/college_distance.csv" in requests


def test_batch_on_remote_data_equals_local(http_datasets, tmp_path):
    url, requests, _ = http_datasets
    base = {k: v for k, v in os.environ.items() if not k.startswith("RK_")}
    rk = Path(sys.executable).parent / "rk"
    results = {}
    for name, extra in [("local", {}), ("remote", {"RK_WORKSPACE_DATA": url})]:
        env = {
            **base,
            **extra,
            "RK_WORKSPACE_CACHE": str(tmp_path / f"cache-{name}"),
            "RK_WORKSPACE_BUILD": str(tmp_path / f"build-{name}"),
        }
        proc = subprocess.run(
            [str(rk), "batch", "replication"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results[name] = {
            f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
            for p in (tmp_path / f"build-{name}").glob("*/*/manifest.json")
        }
    assert set(results["local"]) == set(results["remote"]) and len(results["local"]) == 2
    for run, m in results["local"].items():
        assert results["remote"][run]["records"] == m["records"], run
        assert results["remote"][run]["inputs"] == m["inputs"], run  # same data, by content hash
    assert any(p.endswith(".csv") for p in requests)
