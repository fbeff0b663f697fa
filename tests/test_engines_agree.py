"""The warm and kernel engines agree on everything a report can do to its process: options and global
state it changes, exiting early, children it leaves running, HTML it displays. And what the runner
prints around a run (a load's progress bar) never mixes into an error message."""
import functools
import http.server
import json
import subprocess
import threading
import time

import pytest

from conftest import PEOPLE, RK, check_build, make_template, run_rk, save, write_resource


def build(root):
    return root / "reports" / "_build"


def manifest(root, report, slug):
    return json.loads((build(root) / report / slug / "manifest.json").read_text())


# ---- a load's progress bar ------------------------------------------------------------------------

class SlowHandler(http.server.SimpleHTTPRequestHandler):
    "Serves a folder, taking a while over data files: a load long enough for its progress bar to appear."
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith(".csv"): time.sleep(2.5)
        super().do_GET()


@pytest.fixture
def slow_data(workspace):
    root, d, env = workspace
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SlowHandler, directory=str(root / "datasets")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, d, {**env, "RK_WORKSPACE_DATA": f"http://127.0.0.1:{server.server_address[1]}"}
    server.shutdown()
    server.server_close()


def test_a_slow_load_that_fails_prints_only_the_error(slow_data, tally):
    root, d, env = slow_data
    tally.bad_inputs += 1
    write_resource(root / "datasets" / "mini", d, "people", PEOPLE.replace("P-002,KITIG,19", "P-002,KITIG,nineteen"))
    save(root / "datasets" / "mini", d)
    proc = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)  # stderr is a pipe, not a terminal
    assert proc.returncode == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert "loading" not in proc.stderr and "\r" not in proc.stderr and "step" not in proc.stderr, proc.stderr
    assert "people.csv:3" in proc.stderr and "'nineteen'" in proc.stderr
