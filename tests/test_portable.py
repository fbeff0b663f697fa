"""research_kit on the researchers' own laptops (Windows, macOS), tested on Linux: the runner and data
layer with the Unix-only modules unavailable (as on Windows), no Unix-only call outside the portable
helpers, every text file with its encoding named, and the set-up without make in a fresh clone at a
path with spaces, followed by a batch under a Windows code page (cp1251)."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, RK, build_report_workspace, check_build, make_template, run_rk

# Modules that exist only on POSIX. research_kit's own imports of them fail in the processes of these
# tests, as on Windows. Other libraries keep them: on Linux psutil and filelock use them, on Windows
# they take their own Windows code paths, which cannot run here.
UNAVAILABLE = ("fcntl", "resource", "termios", "pwd", "grp")

SITECUSTOMIZE = f"""
import builtins

_import = builtins.__import__

def _windows_like(name, globals=None, locals=None, fromlist=(), level=0):
    "Refuse the POSIX-only modules to research_kit (and to a script), as Windows does, even once another library loaded them."
    importer = (globals or {{}}).get("__name__") or ""
    if level == 0 and name.partition(".")[0] in {UNAVAILABLE!r} and importer.startswith(("research_kit", "__main__")):
        raise ModuleNotFoundError(f"No module named {{name!r}} (unavailable, as on Windows)", name=name)
    return _import(name, globals, locals, fromlist, level)

builtins.__import__ = _windows_like
"""


@pytest.fixture(scope="module")
def windows_like(tmp_path_factory):
    "An environment whose Python processes (rk, its workers, their kernels) cannot import the POSIX-only modules."
    folder = tmp_path_factory.mktemp("windows-like")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RK_")}
    return {**env, "PYTHONPATH": path}


@pytest.fixture
def far_workspace(tmp_path):
    "The report workspace in a folder whose path has spaces and Cyrillic letters, like C:\\Users\\Айгерим\\..."
    root, _, _ = build_report_workspace(tmp_path / "Айгерим Нурланова" / "my workspace")
    return root


def manifests(root):
    return {
        f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text(encoding="utf-8"))
        for p in (root / "reports" / "_build").glob("*/*/manifest.json")
    }


def test_the_posix_only_modules_are_unavailable_there(windows_like):
    for name in UNAVAILABLE:
        proc = subprocess.run(
            [sys.executable, "-c", f"import {name}"], env=windows_like, capture_output=True, encoding="utf-8"
        )
        assert proc.returncode == 1 and "unavailable, as on Windows" in proc.stderr, (name, proc.stderr)
    code = (
        "import psutil, filelock  # they load resource and fcntl for themselves on Linux\n"
        "import research_kit.runner.batch, research_kit.runner.executors, research_kit.data.load, research_kit.cli\n"
        "from research_kit.processes import memory_enforced, memory_note\n"
        "assert not memory_enforced()\nprint(memory_note(1500))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=windows_like, capture_output=True, encoding="utf-8"
    )
    assert proc.returncode == 0, proc.stderr
    assert "memory limit ([runner] memory = 1500 MB) is watched, not enforced" in proc.stdout


def test_a_batch_and_the_build_lock_without_the_posix_only_modules(far_workspace, windows_like, tally):
    """`rk batch` runs; a second writer of the build folder is refused while the first holds the lock,
    and one started with --wait gets it afterwards; a report's child processes end with it."""
    root = far_workspace
    make_template(
        root / "reports" / "slow.ipynb",
        "k: int = 0",
        "import time, research_kit as rk\ntime.sleep(0.5)\nrk.record('k', k)",
    )
    make_template(
        root / "reports" / "spawner.ipynb",
        "n: int = 0",
        "import subprocess, sys, research_kit as rk\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "rk.record('child', child.pid)",
    )
    (root / "reports" / "batches.yaml").write_text(
        "many:\n  - report: slow\n    grid: {k: [0, 1, 2, 3, 4, 5]}\n"
        "  - report: spawner\n    parameters: [{n: 1}]\n",
        encoding="utf-8",
    )
    build = root / "reports" / "_build"
    first = subprocess.Popen(
        [str(RK), "batch", "many", "--workers", "2"],
        cwd=root,
        env=windows_like,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
    )
    deadline = time.time() + 120
    while not (build / ".lock.holder").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = run_rk("run", "slow", "-p", "k=9", cwd=root, env=windows_like)
    tally.faults += 1
    waiting = subprocess.Popen(
        [str(RK), "run", "slow", "-p", "k=9", "--wait"],
        cwd=root,
        env=windows_like,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
    )
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out + err
    assert (
        second.returncode == 1 and "is writing" in second.stderr and f"(pid {first.pid})" in second.stderr
    ), second.stderr
    assert "Traceback" not in second.stderr
    out, err = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, out + err
    runs = check_build(build, tally)
    assert len(runs) == 8 and all(m["status"] == "succeeded" for m in runs.values())
    import psutil

    child = runs["spawner/n=1"]["records"]["child"]
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE, (
        "a report's child outlived it"
    )


@pytest.mark.parametrize("engine", ["warm", "kernel"])
def test_the_memory_limit_is_watched_without_resource(far_workspace, windows_like, engine, tally):
    """Without `resource` the parent watches each worker: the hog is stopped with a clear reason, the rest
    succeed, rk says so once."""
    root = far_workspace
    make_template(
        root / "reports" / "hog.ipynb",
        "n: int = 0",
        "import time, research_kit as rk\nrk.record('n', n)",
        "if n == 1:\n    blocks = []\n    while True:\n        blocks.append(bytearray(50 * 2**20)); time.sleep(0.05)",
    )
    (root / "reports" / "batches.yaml").write_text(
        "hog:\n  - report: hog\n    parameters: [{n: 0}, {n: 1}, {n: 2}]\n", encoding="utf-8"
    )
    proc = run_rk(
        "batch",
        "hog",
        "--engine",
        engine,
        "--workers",
        "2",
        cwd=root,
        env={**windows_like, "RK_RUNNER_MEMORY": "900"},
        timeout=600,
    )
    tally.faults += 1
    assert proc.returncode == 1 and "1 report failed" in proc.stderr, proc.stdout + proc.stderr
    assert proc.stderr.count("is watched, not enforced") == 1, proc.stderr
    m = manifests(root)
    assert m["hog/n=0"]["status"] == m["hog/n=2"]["status"] == "succeeded"
    err = m["hog/n=1"]["error"]
    assert m["hog/n=1"]["status"] == "failed" and err["type"] == "MemoryError", err
    assert "exceeded its memory limit of 900 MB" in err["message"] and "was stopped" in err["message"], err
    check_build(root / "reports" / "_build", tally)


def test_a_dead_worker_and_a_hang_fail_alone_without_the_posix_only_modules(
    far_workspace, windows_like, tally
):
    root = far_workspace
    reports = root / "reports"
    make_template(
        reports / "crash.ipynb",
        "n: int = 0",
        "import os, research_kit as rk\nrk.record('n', n)",
        "if n == 1: os._exit(9)",
    )
    make_template(
        reports / "hang.ipynb",
        "n: int = 0",
        "import time, research_kit as rk\nrk.record('n', n)",
        "if n == 1: time.sleep(600)",
    )
    (reports / "batches.yaml").write_text(
        "faults:\n  - report: crash\n    parameters: [{n: 0}, {n: 1}]\n"
        "  - report: hang\n    parameters: [{n: 0}, {n: 1}]\n",
        encoding="utf-8",
    )
    tally.faults += 2
    proc = run_rk(
        "batch",
        "faults",
        "--workers",
        "2",
        cwd=root,
        env={**windows_like, "RK_RUNNER_TIMEOUT": "5"},
        timeout=600,
    )
    assert proc.returncode == 1 and "2 reports failed" in proc.stderr, proc.stdout + proc.stderr
    m = manifests(root)
    assert [k for k, v in sorted(m.items()) if v["status"] == "succeeded"] == ["crash/n=0", "hang/n=0"]
    assert (
        m["crash/n=1"]["error"]["type"] == "WorkerDied"
        and "exit code 9" in m["crash/n=1"]["error"]["message"]
    )
    assert "timeout" in (m["hang/n=1"]["error"]["type"] + m["hang/n=1"]["error"]["message"]).lower()
    check_build(root / "reports" / "_build", tally)


# ---- no Unix-only call, no text without its encoding ----

PORTABLE_HELPERS = {"research_kit/processes.py"}  # the one place the differences between the OSes live
UNIX_ONLY = [
    (
        re.compile(
            r"^\s*(import|from)\s+(fcntl|resource|termios|tty|pty|pwd|grp|posix|crypt|syslog|msvcrt|winreg)\b"
            r"|^\s*import\s+.*\b(fcntl|resource|termios|pwd|grp)\b"
        ),
        "imports a module that exists on one OS only",
    ),
    (
        re.compile(
            r"\bos\.(killpg|setsid|setpgrp|setpgid|getpgid|getpgrp|fork|forkpty|getuid|geteuid|getgid|getegid|"
            r"uname|wait3|wait4|chown|lchown|mkfifo|nice|getloadavg|execv|execvp)\b"
        ),
        "calls an os function Windows lacks or handles differently",
    ),
    (
        re.compile(
            r"\bsignal\.(SIGKILL|SIGHUP|SIGQUIT|SIGUSR1|SIGUSR2|SIGALRM|SIGCHLD|SIGSTOP|SIGCONT|SIGTSTP|SIGPIPE|"
            r"alarm|setitimer|pthread_kill|pthread_sigmask|siginterrupt)\b"
        ),
        "uses a signal Windows lacks",
    ),
    (
        re.compile(r"\b(preexec_fn|start_new_session|close_fds\s*=\s*True)\b"),
        "uses a POSIX-only option of subprocess",
    ),
    (
        re.compile(r"[\"'](/bin/|/usr/|/tmp/|/dev/|/proc/)|/\s*[\"']bin[\"']|[\"']bin/"),
        "assumes a POSIX path",
    ),
]


def _guarded(line: str, match: re.Match) -> bool:
    "A call checked for on the same line (`hasattr(os, 'geteuid') and os.geteuid()`) runs only where it exists."
    name = match.group(0).split(".")[-1]
    return f'hasattr(os, "{name}")' in line or f"hasattr(os, '{name}')" in line


def unix_only_lines(path: Path, text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0] if not line.lstrip().startswith(('"', "'")) else ""
        for pattern, why in UNIX_ONLY:
            match = pattern.search(code)
            if match and not _guarded(code, match):
                found.append(f"{path}:{number}: {why}: {line.strip()}")
    return found


def package_sources():
    for path in sorted((ROOT / "research_kit").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel not in PORTABLE_HELPERS and "__pycache__" not in rel:
            yield rel, path.read_text(encoding="utf-8")
    for path in sorted((ROOT / "reports").glob("*.ipynb")) + sorted(
        (ROOT / "research_kit" / "skeleton").glob("*.ipynb")
    ):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        yield (
            path.relative_to(ROOT).as_posix(),
            "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"),
        )


def test_no_unix_only_call_outside_the_portable_helpers():
    found = [hit for rel, text in package_sources() for hit in unix_only_lines(Path(rel), text)]
    assert found == [], "Unix-only code outside research_kit/processes.py:\n" + "\n".join(found)


def test_the_grep_finds_what_it_looks_for():
    sample = (
        "import fcntl\nimport os, resource\nos.killpg(pid, signal.SIGKILL)\nsubprocess.Popen(cmd, start_new_session=True)\n"
        "exe = venv / 'bin' / 'python'\nif hasattr(os, 'geteuid') and os.geteuid() == 0: pass\n# os.fork() in a comment\n"
    )
    assert [line.split(": ", 1)[0] for line in unix_only_lines(Path("x.py"), sample)] == [
        "x.py:1",
        "x.py:2",
        "x.py:3",
        "x.py:3",
        "x.py:4",
        "x.py:5",
    ]


def text_without_encoding(source: str) -> list[int]:
    "Lines that open, read or write text (or run a process with text=True) without naming the encoding."
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(k.arg in ("encoding", None) for k in node.keywords):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        mode = (
            node.args[1]
            if len(node.args) > 1
            else next((k.value for k in node.keywords if k.arg == "mode"), None)
        )
        binary = isinstance(mode, ast.Constant) and "b" in str(mode.value)
        if (
            (name in ("read_text", "write_text") and isinstance(f, ast.Attribute))
            or (name == "open" and isinstance(f, ast.Name) and not binary)
            or any(k.arg in ("text", "universal_newlines") for k in node.keywords)
        ):
            lines.append(node.lineno)
    return lines


def test_every_text_file_names_its_encoding():
    "A Windows code page (cp1251) must never change what research_kit reads or writes: UTF-8 is named every time."
    found = [
        f"{rel}:{n}"
        for rel, text in package_sources()
        if rel.endswith(".py")
        for n in text_without_encoding(text)
    ]
    assert found == [], f"text read or written in the locale's encoding: {found}"
    assert text_without_encoding(
        "p.read_text()\nopen(p, 'rb')\nopen(p)\nsubprocess.run(c, text=True)\np.write_text(t, encoding='utf-8')\n"
    ) == [1, 3, 4]


# ---- the set-up without make, in a fresh clone; then a batch under a Windows code page ----


def cp1251_locale(folder: Path) -> dict:
    "Environment variables for a Russian Windows code page (cp1251) where localedef can build it, else the plain C locale."
    if shutil.which("localedef"):
        proc = subprocess.run(
            ["localedef", "-i", "ru_RU", "-f", "CP1251", str(folder / "ru_RU.CP1251")], capture_output=True
        )
        if (folder / "ru_RU.CP1251").is_dir():
            return {"LOCPATH": str(folder), "LC_ALL": "ru_RU.CP1251", "LANG": "ru_RU.CP1251"}
    return {"LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0"}  # ASCII: stricter still


def readme_setup_commands() -> list[str]:
    "The set-up commands the README gives for Windows and for a Mac without make."
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Windows and macOS, without make", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^(\S+ -m research_kit\.setup)\b", section, re.M)


def test_setup_without_make_in_a_fresh_clone_then_a_batch_in_cp1251(tmp_path):
    """The README's command, in a clone whose path has spaces. (Not Cyrillic letters here: under a cp1251
    locale Linux encodes file names in cp1251 too, unlike Windows, where they are always Unicode; the
    tests above run in a Cyrillic path.)"""
    assert readme_setup_commands() == ["py -m research_kit.setup", "python3 -m research_kit.setup"]
    clone = tmp_path / "my documents" / "research kit"
    clone.parent.mkdir()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RK_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if Path(p).resolve() != Path(sys.executable).parent.resolve()
    )
    # pip's compiling of ~17,000 installed modules to bytecode is half of the install's time (135 -> 68 s
    # measured) and no part of what is tested here, the set-up's own steps; the batch below compiles what it imports
    env["PIP_COMPILE"] = "0"
    base = getattr(
        sys, "_base_executable", sys.executable
    )  # a Python outside any virtual environment, as on a new laptop
    proc = subprocess.run(
        [base, "-m", "research_kit.setup"],
        cwd=clone,
        env=env,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=3000,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    venv = clone / ".venv"
    assert (venv / ".installed").is_file() and "ready:" in proc.stdout and "source" in proc.stdout
    spec = json.loads(
        (venv / "share" / "jupyter" / "kernels" / "research-kit" / "kernel.json").read_text(encoding="utf-8")
    )
    assert Path(spec["argv"][0]).parent.resolve() == (venv / "bin").resolve()
    again = subprocess.run(
        [base, "-m", "research_kit.setup"],
        cwd=clone,
        env=env,
        capture_output=True,
        encoding="utf-8",
        timeout=300,
    )
    assert again.returncode == 0 and "is up to date" in again.stdout and "pip" not in again.stdout, (
        again.stdout
    )

    legacy = {
        **env,
        **cp1251_locale(tmp_path),
        "PYTHONUTF8": "0",
        "RK_WORKSPACE_CACHE": str(tmp_path / "cache"),
    }
    check = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import locale, sys; print(locale.getpreferredencoding(), sys.flags.utf8_mode)",
        ],
        env=legacy,
        capture_output=True,
        encoding="ascii",
        errors="replace",
    )
    assert check.stdout.split()[1] == "0" and check.stdout.split()[0].lower() not in ("utf-8", "utf8"), (
        check.stdout
    )
    run = subprocess.run(
        [str(venv / "bin" / "rk"), "batch", "replication"],
        cwd=clone,
        env=legacy,
        capture_output=True,
        timeout=900,
    )
    out = run.stdout.decode("utf-8", "replace") + run.stderr.decode("utf-8", "replace")
    assert run.returncode == 0, out[-4000:]
    runs = check_build(clone / "reports" / "_build")
    assert len(runs) == 2 and all(m["status"] == "succeeded" for m in runs.values()), out
    # Kazakh letters (ә ғ қ ң ө ұ ү һ і) have no place in cp1251: a text file written in the locale's encoding would fail
    kk = subprocess.run(
        [str(venv / "bin" / "rk"), "run", "institution_profile", "-p", "institution=KITIG", "-p", "lang=kk"],
        cwd=clone,
        env=legacy,
        capture_output=True,
        timeout=900,
    )
    assert kk.returncode == 0, (kk.stdout + kk.stderr).decode("utf-8", "replace")[-4000:]
    runs = check_build(clone / "reports" / "_build")
    page = next(clone.glob("reports/_build/institution_profile/*lang=kk*/report.html")).read_text(
        encoding="utf-8"
    )
    assert "қ" in page or "ә" in page or "ұ" in page
    # the test suite's quick subset (the package in sync, clean notebooks, catalogs, Kazakh and Russian output of rk)
    quick = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_repo.py",
            "tests/test_languages.py",
        ],
        cwd=clone,
        env=legacy,
        capture_output=True,
        timeout=900,
    )
    assert quick.returncode == 0, quick.stdout.decode("utf-8", "replace")[-4000:]


def test_setup_names_the_step_that_failed(tmp_path, tally):
    "A step that fails stops the set-up with an error naming the command and its exit code; nothing is stamped."
    tally.bad_inputs += 1
    (tmp_path / "pyproject.toml").write_text(
        "[project\nname = 'broken'\n", encoding="utf-8"
    )  # pip cannot read it
    from research_kit.setup import SetupError, setup

    with pytest.raises(SetupError, match=r"pip install .* failed \(exit code \d+\); see its output above"):
        setup(tmp_path, extras="")
    assert not (tmp_path / ".venv" / ".installed").exists()
