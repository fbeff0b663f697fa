"""The warm and kernel engines agree on everything a report can do to its process: options and global
state it changes, exiting early, children it leaves running, HTML it displays. And what the runner
prints around a run (a load's progress bar) never mixes into an error message."""

import functools
import http.server
import json
import re
import subprocess
import sys
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
        if self.path.endswith(".csv"):
            time.sleep(2.5)
        super().do_GET()


@pytest.fixture
def slow_data(workspace):
    root, d, env = workspace
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(SlowHandler, directory=str(root / "datasets"))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, d, {**env, "RK_WORKSPACE_DATA": f"http://127.0.0.1:{server.server_address[1]}"}
    server.shutdown()
    server.server_close()


def test_a_slow_load_that_fails_prints_only_the_error(slow_data, tally):
    root, d, env = slow_data
    tally.bad_inputs += 1
    write_resource(
        root / "datasets" / "mini", d, "people", PEOPLE.replace("P-002,KITIG,19", "P-002,KITIG,nineteen")
    )
    save(root / "datasets" / "mini", d)
    proc = run_rk(
        "datasets", "validate", "mini", "people", cwd=root, env=env
    )  # stderr is a pipe, not a terminal
    assert proc.returncode == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert "loading" not in proc.stderr and "\r" not in proc.stderr and "step" not in proc.stderr, proc.stderr
    assert "people.csv:3" in proc.stderr and "'nineteen'" in proc.stderr


# ---- a report that exits early ---------------------------------------------------------------------

EXITS = {
    "sys_exit_0": "import sys\nsys.exit(0)",
    "sys_exit_3": "import sys\nsys.exit(3)",
    "sys_exit_text": "import sys\nsys.exit('done')",
    "exit": "exit()",
    "quit": "quit()",
    "raise": "raise SystemExit",
}


@pytest.mark.parametrize("engine", ["warm", "kernel"])
def test_a_report_that_exits_early_fails_and_is_not_cached(report_workspace, engine, tally):
    root, _, env = report_workspace
    make_template(
        root / "reports" / "leave.ipynb",
        f"how: Literal{list(EXITS)} = 'exit'",
        "import research_kit as rk\nrk.record('before', 1)",
        f"exec({EXITS!r}[how])",
        "rk.record('after', 2)",
    )
    (root / "reports" / "batches.yaml").write_text(
        f"exits:\n  - report: leave\n    grid: {{how: {list(EXITS)}}}\n"
    )
    tally.faults += len(EXITS)
    proc = run_rk(
        "batch", "exits", "--engine", engine, "--workers", "1", cwd=root, env=env
    )  # one worker: one after another
    assert proc.returncode == 1 and f"{len(EXITS)} reports failed" in proc.stderr, proc.stdout + proc.stderr
    # the kernels' own log lines reach stderr unfiltered (the TCP warning at every start, "KeyboardInterrupt caught
    # in kernel" when a loaded machine delivers the stop of a finished kernel late, and now and then libzmq's
    # "Assertion failed: pfd.revents & POLLIN (src/signaler.cpp:238)" from a kernel that aborts as it exits, its
    # peer already gone): they are not rk's output. A worker that died instead would show in the manifests below.
    lines = [
        l
        for l in proc.stderr.splitlines()
        if not l.startswith("[IPKernelApp]")
        and not re.fullmatch(r"Assertion failed: .+ \(src/\w+\.cpp:\d+\)", l)
    ]
    assert lines == [f"error: {len(EXITS)} reports failed"], proc.stderr  # no progress bar on a pipe
    for how in EXITS:
        m = manifest(root, "leave", f"how={how}")
        assert m["status"] == "failed" and m["records"] == {"before": 1}, (how, m)
        assert "the report called exit" in m["error"]["message"] and m["error"]["cell"] == 5, (
            how,
            m["error"],
        )
    assert "code 3" in manifest(root, "leave", "how=sys_exit_3")["error"]["message"]
    dry = run_rk("batch", "exits", "--dry-run", cwd=root, env=env, check=0).stdout
    assert "cached" not in dry and dry.count("│ run") == len(EXITS), dry  # a failed run is never a cache hit
    check_build(build(root), tally)


# ---- state one report leaves in a warm worker --------------------------------------------------------

POLLUTE = """import builtins, locale, os, sys, time, warnings
import numpy as np, pandas as pd, matplotlib, matplotlib.pyplot as plt
pd.set_option("display.precision", 1)
pd.set_option("display.max_rows", 3)
np.set_printoptions(precision=2)
np.seterr(all="raise")
matplotlib.rcParams["figure.figsize"] = (1.0, 1.0)
plt.style.use("ggplot")
fig = plt.figure()
with np.errstate(all="ignore"):
    np.mean([])  # fills numpy's registry of warnings already shown
warnings.simplefilter("ignore")
warnings.showwarning = lambda *args, **kwargs: None
os.chdir("/")
os.environ["RK_LEAKED"] = "1"
os.environ["TZ"] = "Asia/Almaty"
time.tzset()
locale.setlocale(locale.LC_NUMERIC, "C.utf8")
builtins.leaked = 1
sys.path.insert(0, "/leaked")
sys.setrecursionlimit(12345)
"""

PROBE_STATE = """import builtins, locale, os, sys, time, warnings
import numpy as np, pandas as pd, matplotlib, matplotlib.pyplot as plt
import research_kit as rk
rk.record("open_figures", len(plt.get_fignums()))
rk.record("figsize", list(matplotlib.rcParams["figure.figsize"]))
rk.record("axes_facecolor", str(matplotlib.rcParams["axes.facecolor"]))
rk.record("precision", pd.get_option("display.precision"))
rk.record("max_rows", pd.get_option("display.max_rows"))
rk.record("np_array", str(np.array([1 / 3])))
rk.record("np_err", np.geterr())
rk.record("cwd_is_root", os.path.isfile("settings.ini"))
rk.record("env", os.environ.get("RK_LEAKED"))
rk.record("tz", list(time.tzname))
rk.record("numeric_locale", locale.setlocale(locale.LC_NUMERIC))
rk.record("builtins", hasattr(builtins, "leaked"))
rk.record("sys_path", "/leaked" in sys.path)
rk.record("recursion", sys.getrecursionlimit())
rk.record("showwarning", warnings.showwarning.__module__)
"""

PROBE_WARNINGS = """shown = []
saved = warnings.showwarning
warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
np.mean([])  # a library's warning: shown once per location unless the registry was reset
warnings.showwarning = saved
rk.record("warnings_shown", shown)
"""

PROBE_PRINT = "print(pd.DataFrame({'x': [1.23456, 2.5, 3.75, 4.125]}))\nprint(np.array([1 / 3, 2 / 3]))"


def probe_outputs(root):
    from research_kit.runner.verify import text_outputs

    folder = build(root) / "probe" / "n=0"
    m = json.loads((folder / "manifest.json").read_text())
    return m["status"], m["error"], m["records"], text_outputs(folder / "report.ipynb")


def test_a_report_sees_the_same_state_after_another_on_one_warm_worker_as_in_a_kernel(report_workspace):
    root, _, env = report_workspace
    make_template(root / "reports" / "pollute.ipynb", "n: int = 0", POLLUTE)
    make_template(root / "reports" / "probe.ipynb", "n: int = 0", PROBE_STATE, PROBE_WARNINGS, PROBE_PRINT)
    (root / "reports" / "batches.yaml").write_text(
        "pair:\n  - report: pollute\n    parameters: [{n: 0}]\n  - report: probe\n    parameters: [{n: 0}]\n"
    )
    run_rk("run", "probe", "--engine", "kernel", cwd=root, env=env, check=0)
    kernel = probe_outputs(root)
    run_rk("run", "probe", "--engine", "warm", "--force", cwd=root, env=env, check=0)
    alone = probe_outputs(root)
    run_rk(
        "batch", "pair", "--engine", "warm", "--workers", "1", "--force", cwd=root, env=env, check=0
    )  # one worker: pollute, then probe
    after = probe_outputs(root)
    assert alone == kernel
    assert after == alone
    assert "Mean of empty slice" in kernel[2]["warnings_shown"] and kernel[2]["precision"] == 6


def test_numpy_options_set_in_one_cell_hold_in_the_next_in_both_engines(report_workspace):
    "NumPy keeps print options and error handling in context variables: the warm engine lost them between cells."
    root, _, env = report_workspace
    make_template(
        root / "reports" / "probe.ipynb",
        "n: int = 0",
        "import numpy as np, research_kit as rk\nnp.set_printoptions(precision=2)\nnp.seterr(divide='raise')",
        "rk.record('np_array', str(np.array([1 / 3])))\nrk.record('divide', np.geterr()['divide'])\nprint(np.array([2 / 3]))",
    )
    results = {}
    for engine in ("warm", "kernel"):
        run_rk("run", "probe", "--engine", engine, "--force", cwd=root, env=env, check=0)
        results[engine] = probe_outputs(root)
    assert results["warm"] == results["kernel"]
    assert results["warm"][2] == {"np_array": "[0.33]", "divide": "raise"}


def test_a_module_beside_settings_imports_in_both_engines_and_keys_both_runs(report_workspace):
    """A kernel has its working folder (the workspace root) on its search path, after the standard library: the
    warm engine's reports could not import a module there that the kernel's did."""
    root, _, env = report_workspace
    (root / "shared_code.py").write_text("FACTOR = 3\n")
    make_template(
        root / "reports" / "probe.ipynb",
        "n: int = 1",
        "import sys\nimport research_kit as rk\nimport shared_code\n"
        "rk.record('scaled', shared_code.FACTOR * n)\n"
        "rk.record('before_site', sys.path.index('') < min(i for i, p in enumerate(sys.path) if 'site-packages' in p))",
    )
    runs = {}
    for engine in ("kernel", "warm"):
        run_rk("run", "probe", "--engine", engine, "--force", cwd=root, env=env)
        runs[engine] = manifest(root, "probe", "n=1")
    kernel, warm = runs["kernel"], runs["warm"]
    assert warm["status"] == kernel["status"] == "succeeded", warm.get("error")
    assert warm["records"]["scaled"] == kernel["records"]["scaled"] == 3
    assert warm["files"] == kernel["files"] and [f["path"] for f in warm["files"]] == ["shared_code.py"]
    assert warm["records"]["before_site"] is kernel["records"]["before_site"] is True


# ---- library threads of reports side by side -------------------------------------------------------

THREADS_PROBE = (
    "import os\nimport numpy\nimport research_kit as rk\nfrom threadpoolctl import threadpool_info\n"
    "rk.record('variable', os.environ.get('OMP_NUM_THREADS', 'unset'))\n"
    "rk.record('blas', max(p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'))"
)


def default_blas_threads(env) -> int:
    "The BLAS threads numpy starts with in a fresh process of this environment."
    code = "import numpy\nfrom threadpoolctl import threadpool_info\n"
    code += "print(max(p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'))"
    return int(
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
    )


def test_reports_side_by_side_share_the_cores_in_both_engines(report_workspace):
    """Two workers on a two-core machine ran reports whose numerical libraries each started a thread per core:
    four busy threads on two cores. Reports running at once get their share; a report alone, the libraries' own
    default; a user who set the variable, their setting."""
    from research_kit.processes import usable_cores

    root, _, env = report_workspace
    make_template(root / "reports" / "threads.ipynb", "n: int = 0", THREADS_PROBE)
    (root / "reports" / "batches.yaml").write_text("side:\n  - report: threads\n    grid: {n: [0, 1]}\n")
    share, default = max(1, usable_cores() // 2), default_blas_threads(env)
    for engine in ("warm", "kernel"):
        run_rk("batch", "side", "--engine", engine, "--workers", "2", "--force", cwd=root, env=env)
        for n in (0, 1):
            records = manifest(root, "threads", f"n={n}")["records"]
            assert records == {"variable": str(share), "blas": share}, (engine, records)
        run_rk(
            "run", "threads", "--engine", engine, "--force", cwd=root, env=env
        )  # alone: as the libraries start
        records = manifest(root, "threads", "n=0")["records"]
        assert records == {"variable": "unset", "blas": default}, (engine, records)
        own = {**env, "OMP_NUM_THREADS": "3"}
        run_rk("batch", "side", "--engine", engine, "--workers", "2", "--force", cwd=root, env=own)
        assert manifest(root, "threads", "n=1")["records"]["variable"] == "3", engine


# ---- processes a report starts ---------------------------------------------------------------------

CHILDREN = """import subprocess
subprocess.Popen(["sleep", "{mark}1"])                                   # a child
subprocess.Popen("sleep {mark}2 &", shell=True)                         # a grandchild whose parent exits at once
subprocess.Popen(["sleep", "{mark}3"], start_new_session=True)          # a child in a session of its own
"""


def sleepers(mark):
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(arg.startswith(mark) for arg in (p.info["cmdline"] or [])):
            found.append(p)
    return found


@pytest.mark.parametrize("engine", ["warm", "kernel"])
def test_processes_a_report_started_end_with_it(report_workspace, engine, tally):
    root, _, env = report_workspace
    mark = f"600.{abs(hash((str(root), engine))) % 10**6:06d}"  # this test's sleeps, and no one else's
    make_template(
        root / "reports" / "spawn.ipynb",
        "n: int = 0",
        "import research_kit as rk\nrk.record('n', n)",
        CHILDREN.format(mark=mark),
    )
    tally.faults += 1
    proc = subprocess.Popen(
        [str(RK), "run", "spawn", "--engine", engine],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=120)  # returns only once no process holds rk's output pipes
    finally:
        if proc.poll() is None:
            proc.kill()
        leftover = sleepers(mark)
        for p in leftover:
            p.kill()
    assert proc.returncode == 0, out + err
    assert leftover == [], [p.info["cmdline"] for p in leftover]
    assert manifest(root, "spawn", "n=0")["status"] == "succeeded"


# ---- HTML a report displays ------------------------------------------------------------------------

SHOW_HTML = """import pandas as pd
from IPython.display import HTML, SVG, Javascript, Markdown, display
display(HTML("<script>window.__rk_xss = 1</script><b onclick='window.__rk_xss = 2'>bold</b>"
             "<iframe src='javascript:window.__rk_xss = 3'></iframe><table><tr><td>cell-html</td></tr></table>"))
display(pd.DataFrame({"a": [1.5, 2.5]}).style.set_caption(caption).highlight_max(color="yellow"))
display(Markdown("<img src=x onerror='window.__rk_xss = 4'> markdown-output"))
display(Javascript("window.__rk_xss = 5"))
display(SVG('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            '<script>window.__rk_xss = 6</script><circle r="5"/></svg>'))
"""


class Elements:
    "Every start tag of an HTML page, with its attributes."

    def __init__(self, text):
        from html.parser import HTMLParser

        self.tags = []
        parser = HTMLParser()
        parser.handle_starttag = lambda tag, attrs: self.tags.append((tag, dict(attrs)))
        parser.feed(text)


def test_html_a_report_displays_is_sanitized_in_report_html(report_workspace, tally):
    import nbformat

    root, _, env = report_workspace
    path = make_template(root / "reports" / "xss.ipynb", 'caption: str = "c"', SHOW_HTML)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(
        nbformat.v4.new_markdown_cell(
            '<a href="javascript:window.__rk_xss = 7">md-link</a> <b onmouseover="x()">md-bold</b>'
        )
    )
    nbformat.write(nb, path)
    tally.bad_inputs += 1
    run_rk(
        "run",
        "xss",
        "-p",
        "caption=<img src=x onerror=window.__rk_xss=8>Caption-text",
        cwd=root,
        env=env,
        check=0,
    )
    [page] = (build(root) / "xss").glob(
        "*/report.html"
    )  # (the code and the title show the payloads as escaped text)
    text = page.read_text()
    tags = Elements(text).tags
    assert not [t for t, _ in tags if t in ("script", "iframe", "svg", "object", "embed")], sorted(
        {t for t, _ in tags}
    )
    assert not [(t, a) for t, attrs in tags for a in attrs if a.lower().startswith("on")]
    assert not [(t, v) for t, attrs in tags for v in attrs.values() if v and "javascript:" in v.lower()]
    tables = [attrs for t, attrs in tags if t == "table"]
    assert any(a.get("id", "").startswith("T_") for a in tables), (
        tables
    )  # the Styler's table, its id kept for its <style>
    assert (
        "cell-html" in text
        and "Caption-text" in text
        and "markdown-output" in text
        and "md-link" in text
        and "md-bold" in text
    )
    assert "background-color: yellow" in text  # the Styler's own <style> block
    assert any(
        t == "img" and a.get("src", "").startswith("data:image/svg+xml;base64,") for t, a in tags
    )  # the SVG, as an image

    import os

    if not os.path.exists("/usr/bin/chromium"):
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            tab = browser.new_page()
            tab.goto(page.as_uri())
            tab.mouse.move(1, 1)
            for selector in ("b", "a"):
                for element in tab.query_selector_all(selector):
                    if element.is_visible():
                        element.hover()  # the reader document hides some links (e.g. on print)
            tab.wait_for_timeout(300)
            assert tab.evaluate("window.__rk_xss") is None
            assert tab.locator("table").count() >= 2
        finally:
            browser.close()
