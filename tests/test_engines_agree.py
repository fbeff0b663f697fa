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


# ---- a report that exits early ---------------------------------------------------------------------

EXITS = {"sys_exit_0": "import sys\nsys.exit(0)", "sys_exit_3": "import sys\nsys.exit(3)", "sys_exit_text": "import sys\nsys.exit('done')",
         "exit": "exit()", "quit": "quit()", "raise": "raise SystemExit"}


@pytest.mark.parametrize("engine", ["warm", "kernel"])
def test_a_report_that_exits_early_fails_and_is_not_cached(report_workspace, engine, tally):
    root, _, env = report_workspace
    make_template(root / "reports" / "leave.ipynb", f"how: Literal{list(EXITS)} = 'exit'",
                  "import research_kit as rk\nrk.record('before', 1)", f"exec({EXITS!r}[how])", "rk.record('after', 2)")
    (root / "reports" / "batches.yaml").write_text(f"exits:\n  - report: leave\n    grid: {{how: {list(EXITS)}}}\n")
    tally.faults += len(EXITS)
    proc = run_rk("batch", "exits", "--engine", engine, "--workers", "1", cwd=root, env=env)  # one worker: one after another
    assert proc.returncode == 1 and f"{len(EXITS)} reports failed" in proc.stderr, proc.stdout + proc.stderr
    for how in EXITS:
        m = manifest(root, "leave", f"how={how}")
        assert m["status"] == "failed" and m["records"] == {"before": 1}, (how, m)
        assert "the report called exit" in m["error"]["message"] and m["error"]["cell"] == 5, (how, m["error"])
    assert "code 3" in manifest(root, "leave", "how=sys_exit_3")["error"]["message"]
    dry = run_rk("batch", "exits", "--dry-run", cwd=root, env=env, check=0).stdout
    assert "cached" not in dry and dry.count("│ run") == len(EXITS), dry  # a failed run is never a cache hit
    check_build(build(root), tally)
