"""The data root may be a remote store: datasets/ served over HTTP on 127.0.0.1 loads exactly as
from disk, and a cached resource is not downloaded again."""
import functools
import http.server
import json
import subprocess
import sys
import threading

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
def http_datasets():
    """datasets/ served read-only over HTTP on a free loopback port; yields (url, request log)."""
    CountingHandler.requests = []
    handler = functools.partial(CountingHandler, directory=str(ROOT / "datasets"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", CountingHandler.requests
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
    out[f"{pkg}/{res}"] = [len(df), pd.util.hash_pandas_object(df, index=False).sum().item(), {c: str(t) for c, t in df.dtypes.items()}]
print(json.dumps(out))
"""


def load_summary(env):
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_remote_loads_equal_local(http_datasets, tmp_path):
    import os
    url, requests = http_datasets
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
