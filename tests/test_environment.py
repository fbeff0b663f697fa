"""One environment everywhere: rk doctor, rk docs, rk lab (a real JupyterLab on 127.0.0.1)."""

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import ROOT, RK, run_rk


def clean_env(**extra):
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RK_")}, **extra}


def test_doctor_passes_here():
    proc = run_rk("doctor", env=clean_env(), check=0)
    for name in (
        "kernel",
        "kernel imports research_kit",
        "package in sync",
        "data root reachable",
        "data packages valid",
    ):
        assert f"ok   {name}" in proc.stdout, proc.stdout


def test_doctor_names_failures_and_fixes(tmp_path):
    proc = run_rk("doctor", env=clean_env(RK_WORKSPACE_DATA=str(tmp_path / "nowhere")))
    assert proc.returncode == 1
    assert "FAIL data root reachable" in proc.stdout and "fix: check [workspace] data" in proc.stdout
    proc = run_rk("doctor", env=clean_env(RK_RUNNER_WORKERS="many"))
    assert proc.returncode == 1 and "FAIL settings" in proc.stdout and "RK_RUNNER_WORKERS" in proc.stdout


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def test_docs_build_every_page_and_links_resolve(tmp_path):
    out = tmp_path / "site"
    run_rk("docs", "--out", out, env=clean_env(), check=0)
    index = out / "index.html"
    assert index.exists()
    notebooks = sorted((ROOT / "nbs").rglob("*.ipynb")) + sorted((ROOT / "reports").glob("*.ipynb"))
    for nb in notebooks:
        rel = nb.relative_to(ROOT).with_suffix(".html")
        assert (out / rel).exists(), rel
    parser = Links()
    parser.feed(index.read_text())
    local = [h for h in parser.hrefs if "://" not in h and not h.startswith("#")]
    assert len(local) == len(notebooks)
    from urllib.parse import unquote

    for href in local:
        assert (out / unquote(href)).is_file(), href
    for page in out.rglob("*.html"):
        text = page.read_text()
        assert "<script src=" not in text and "<link " not in text, page  # self-contained


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lab_serves_on_loopback_with_a_token(tmp_path):
    port = free_port()
    env = clean_env(
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
    )
    proc = subprocess.Popen(
        [str(RK), "lab", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/lab\?token=(\w+))", first)
        assert m, first
        token = m.group(2)
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/status?token={token}", timeout=5
                ) as r:
                    assert r.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > deadline:
                    raise
                time.sleep(1)
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=5)
        assert denied.value.code == 403
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/contents/reports?token={token}", timeout=10
        ) as r:
            assert b"star_replication.ipynb" in r.read()  # the workspace root is served
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/kernelspecs?token={token}", timeout=10
        ) as r:
            assert b'"default": "research-kit"' in r.read().replace(
                b'"default":"research-kit"', b'"default": "research-kit"'
            )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_lab_refuses_an_empty_token():
    proc = run_rk("lab", "--token", "")
    assert proc.returncode == 1 and "token is always required" in proc.stderr
