"""The guide to writing templates and the README's first day, run as written: every code block of
docs/templates.md in a copy of the workspace, and the first-day steps in a fresh clone."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, stop_process_group
from test_template_authoring import USER, copy_workspace, free_port, hygiene_problems, wait_for, workspace_env

BIN = Path(sys.executable).parent
GUIDE = ROOT / "docs" / "templates.md"
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```$", re.M | re.S)


def code_blocks(markdown: str) -> list[tuple[str, str, str]]:
    "(language, the rest of the info string, code) of each fenced block, in order."
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(markdown)]


def bash(script: str, cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{script}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Kernel:
    "One research-kit kernel in the workspace: the guide's python blocks run in it as the cells of one notebook."

    def __init__(self, cwd: Path, env: dict):
        from jupyter_client.manager import start_new_kernel

        self.manager, self.client = start_new_kernel(
            kernel_name="research-kit", startup_timeout=120, cwd=str(cwd), env=env
        )

    def run(self, code: str) -> dict:
        return self.client.execute_interactive(code, timeout=600, output_hook=lambda message: None)["content"]

    def close(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def test_guide_links_and_blocks():
    "The README links the guide; its blocks are shell, python (a cell, or a file to save) or text (what a command prints)."
    assert "(docs/templates.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = code_blocks(GUIDE.read_text(encoding="utf-8"))
    assert {language for language, _, _ in blocks} == {"sh", "python", "text"}
    assert all(info == "" or re.fullmatch(r"file=[\w.-]+", info) for _, info, _ in blocks)


def test_every_code_block_of_the_guide_runs(tmp_path):
    from research_kit.runner.record import records

    root = copy_workspace(tmp_path / "ws")
    env = workspace_env(
        tmp_path / "cache", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"
    )  # as with .venv activated
    kernel = Kernel(root, env)
    ran = []
    try:
        for i, (language, info, code) in enumerate(code_blocks(GUIDE.read_text(encoding="utf-8"))):
            if info.startswith("file="):
                (root / info.removeprefix("file=")).write_text(code, encoding="utf-8")
            elif language == "sh":
                proc = bash(code, root, env)
                assert proc.returncode == 0, (
                    f"block {i}:\n{code}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
                )
            elif language == "python":
                reply = kernel.run(code)
                assert reply["status"] == "ok", (
                    f"block {i}:\n{code}\n{reply.get('ename')}: {reply.get('evalue')}"
                )
            else:
                continue
            ran.append(language)
    finally:
        kernel.close()
    assert ran.count("sh") >= 5 and ran.count("python") >= 8

    # what the guide says the blocks made
    build = root / "reports" / "_build"
    manifest = json.loads((build / "class_size" / "grade=1,lang=ru" / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["records"]["pupils"] == 6379
    assert round(manifest["records"]["small_minus_regular"], 2) == 29.78
    assert "Размер класса и баллы учеников, 1 класс" in (
        build / "class_size" / "grade=1,lang=ru" / "report.html"
    ).read_text(encoding="utf-8")
    assert records(root / "out.ipynb")["pupils"] > 0
    assert (root / "scratch" / USER / "institution_profile.ipynb").is_file()
    assert (
        json.loads(
            (
                build / "retention_by_region" / "audience=consortium,lang=en,year=2023" / "manifest.json"
            ).read_text()
        )["status"]
        == "succeeded"
    )
    for template in ("retention_by_region", "class_size", "kitig_profile"):
        assert hygiene_problems(root / "reports" / f"{template}.ipynb", root, tmp_path) == [], template


# ---- the README's first day, in a fresh clone ----


def first_day_steps() -> list[str]:
    "The commands of the README's first-day block, without their comments."
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Your first day", 1)[1].split("\n## ", 1)[0]
    block = code_blocks(section)[0][2]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_first_day_in_a_fresh_clone(tmp_path):
    """Clone the repository and follow the first-day steps as written. `make run` is replaced by the
    environment it would make (this one, linked as .venv): installing packages is not this test's job."""
    steps = first_day_steps()
    assert (
        steps[0].startswith("git clone ")
        and steps[1] == "make run"
        and steps[2] == "source .venv/bin/activate"
    )
    assert steps[-1] == "rk lab"
    clone = tmp_path / "research_kit"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, capture_output=True)
    (clone / ".venv").symlink_to(Path(sys.prefix))
    env = workspace_env(tmp_path / "cache", PYTHONPATH=str(clone))  # the clone's code, not this checkout's
    env.pop("RK_WORKSPACE_CACHE")  # the clone's own cache, as on a first day
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if Path(p).resolve() != BIN.resolve()
    )

    proc = bash("\n".join(steps[2:-1]), clone, env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "FAIL" not in proc.stdout  # rk doctor
    assert (
        clone / "reports" / "_build" / "star_replication" / "controls=false,grade=1,lang=en" / "report.html"
    ).is_file()
    assert (clone / "scratch" / USER / "institution_profile.ipynb").is_file()
    assert (clone / "reports" / "my_report.ipynb").is_file()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone, capture_output=True, text=True
    )
    # only the new template is new to git: runs, caches and scratch copies are ignored (.venv here is a link, not a folder)
    assert [l for l in status.stdout.splitlines() if l != "?? .venv"] == ["?? reports/my_report.ipynb"], (
        status.stdout
    )

    # rk lab, as written but on a free port (8888 may be taken on a test machine), until it serves the workspace
    port = free_port()
    runtime = Path(env["JUPYTER_RUNTIME_DIR"])
    lab = subprocess.Popen(
        ["bash", "-c", f"source .venv/bin/activate && exec {steps[-1]} --port {port}"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert lab.stdout.readline().startswith(f"JupyterLab: http://127.0.0.1:{port}/lab?token=")
        servers = wait_for(lambda: list(runtime.glob("jpserver-*.json")), 180, "JupyterLab to start")
        assert Path(json.loads(servers[0].read_text())["root_dir"]).resolve() == clone.resolve()
    finally:
        stop_process_group(lab)
