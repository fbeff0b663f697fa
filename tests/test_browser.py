"""The workspace in a real browser (Debian's chromium driven by Playwright): a report template run
top to bottom in JupyterLab, and the index page of a batch served over HTTP."""

import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, RK, run_rk

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
LAB_REPORT = (
    "institution_profile" if (ROOT / "reports" / "institution_profile.ipynb").exists() else "star_replication"
)


def clean_env(**extra):
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RK_")}, **extra}


@pytest.fixture(scope="module")
def browser():
    assert os.path.exists(CHROMIUM), (
        "Debian's chromium is needed: apt-get install chromium (.ci/run does this)"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """`rk lab` on a free loopback port, serving a copy of the workspace's reports (so nothing in the
    repository is autosaved), with its data read from the repository's datasets."""
    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "reports", ws / "reports", ignore=shutil.ignore_patterns("_build"))
    (ws / "settings.ini").write_text(
        f"[workspace]\ndata = {ROOT / 'datasets'}\ncache = {tmp_path / 'cache'}\n"
    )
    port, token = free_port(), "browser-test-token-0123456789"
    env = clean_env(
        JUPYTER_CONFIG_DIR=str(tmp_path / "jconfig"),
        JUPYTER_DATA_DIR=str(tmp_path / "jdata"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "jruntime"),
    )
    proc = subprocess.Popen(
        [str(RK), "lab", "--port", str(port), "--token", token],
        cwd=ws,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = []
    threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("JupyterLab did not start:\n" + "".join(log))
            time.sleep(1)
    yield base, token
    urllib.request.urlopen(
        urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST"), timeout=10
    )
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("JupyterLab did not shut down cleanly")
    assert proc.returncode == 0, "".join(log)[-2000:]


def test_template_runs_in_jupyterlab(browser, lab):
    base, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    page.goto(f"{base}/lab/tree/reports/{LAB_REPORT}.ipynb?token={token}")
    page.wait_for_selector(".jp-Notebook")
    page.get_by_text(re.compile(r"\| Idle")).first.wait_for()  # the kernel exists and is idle
    page.click("text=Run", timeout=30_000)  # the Run menu
    page.click("text=Run All Cells")
    page.locator(".jp-OutputArea-output .rk-record").first.wait_for()  # a recorded figure, rendered
    page.locator(".jp-OutputArea-output img").first.wait_for()  # a plot
    page.get_by_text(re.compile(r"\| Idle")).first.wait_for()
    assert page.locator(".jp-OutputArea-output .rk-record").count() >= 3
    assert (
        page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] >> text=Traceback"
        ).count()
        == 0
    )
    assert (
        page.locator(
            ".jp-OutputArea-output .jp-RenderedText[data-mime-type='application/vnd.jupyter.error']"
        ).count()
        == 0
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"jupyterlab-{LAB_REPORT}.png"), full_page=False)
    page.close()


@pytest.fixture
def served_build(tmp_path):
    """A small batch's outputs, served over HTTP on 127.0.0.1."""
    build = tmp_path / "build"
    run_rk("batch", "replication", env=clean_env(RK_WORKSPACE_BUILD=str(build)), check=0)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(build))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", build
    server.shutdown()
    server.server_close()


def test_index_page_lists_runs_and_links_to_reports(browser, served_build):
    base, build = served_build
    manifests = {
        f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
        for p in build.glob("*/*/manifest.json")
    }
    page = browser.new_page()
    page.goto(f"{base}/index.html")
    rows = page.locator("tr.run")
    assert rows.count() == len(manifests) == 2
    for i in range(rows.count()):
        row = rows.nth(i)
        key = f"{row.get_attribute('data-report')}/{row.get_attribute('data-slug')}"
        assert row.get_attribute("data-status") == manifests[key]["status"] == "succeeded"
    first = rows.first
    report = first.get_attribute("data-report")
    first.locator("a.report-link").click()
    page.wait_for_load_state()
    assert page.url.endswith("/report.html")
    names = page.locator(".rk-record").evaluate_all("els => els.map(e => e.dataset.name)")
    expected = manifests[f"{report}/{first.get_attribute('data-slug')}"]["records"] if False else None
    m = next(v for k, v in manifests.items() if k.startswith(report + "/"))
    assert set(m["records"]) <= set(names), (names, list(m["records"]))
    assert page.locator("img").count() >= 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-page.png"))
    page.close()
