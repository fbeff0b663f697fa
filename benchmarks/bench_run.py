"""Single-run performance, as ratios against one plain papermill call measured in the same run.

Baseline: `papermill reports/REPORT.ipynb out.ipynb -r NAME VALUE ...`, the same template and parameters, in the
same environment and data cache. Each figure is the median of --repeat whole-process wall times, taken pair by
pair with the baseline (rk, papermill, rk, papermill, ...), so a machine getting busier favours neither.
- `rk run REPORT -p ... --force`, warm engine, warm workers already running (target <= 0.1 of papermill)
- the same from cold, no warm workers running (`rk workers stop` before each; target <= 1.0)
- the same with --no-daemon: a pool of its own for the one command (today's behaviour before the daemon)
- `rk run ... --force --engine kernel`
- `rk run ...` when cached
- the overhead of `rk run` with warm workers over the report's own execution time, each run less its own
  manifest's duration (target <= 0.5 s)
- where the time of an `rk run` goes (--breakdown): process start and imports, pool start, worker imports,
  the report itself, render (notebook.html, report.html), records and reads, manifest, audit, index update

Usage: python benchmarks/bench_run.py [--report star_replication] [-p grade=2 ...] [--repeat N] [--breakdown-only]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import timed, user_environ, wall  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def papermill_cmd(template, parameters: dict, out: Path) -> list[str]:
    args = []
    for name, value in parameters.items():  # -r passes text as is; -p lets papermill parse the rest
        args += ["-r" if isinstance(value, str) else "-p", name, str(value)]
    return [str(BIN / "papermill"), str(template), str(out), "--no-progress-bar", *args]


def rk_cmd(*args) -> list[str]:
    return [str(BIN / "rk"), *args]


def run(cmd, env):
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")


def paired(contender, baseline, repeat: int, env, before=None, after=None) -> tuple[list[float], list[float]]:
    """Wall times of `contender` and `baseline` (commands), alternating; `before` (a command) runs untimed before each
    contender, `after(seconds)` (a function) is given each contender's time as it ends."""
    mine, theirs = [], []
    for i in range(repeat):
        order = [("c", contender), ("b", baseline)] if i % 2 == 0 else [("b", baseline), ("c", contender)]
        for which, cmd in order:
            if which == "c" and before:
                run(before, env)
            t = timed(lambda: run(cmd, env), 1)
            (mine if which == "c" else theirs).append(t)
            if which == "c" and after:
                after(t)
    return mine, theirs


def daemon_available(env) -> bool:
    "Does this checkout's rk have long-lived workers (`rk workers`)?"
    return subprocess.run(rk_cmd("workers", "--help"), cwd=ROOT, env=env, capture_output=True).returncode == 0


def last_duration(build: Path, report: str) -> float:
    return max(
        (json.loads(p.read_text()) for p in (build / report).glob("*/manifest.json")),
        key=lambda m: m["started"],
    )["duration"]


# -- the breakdown, in a process of its own (`--breakdown-child`) ----------------------------------------


def _ready(conn, warm: bool) -> None:
    "A worker process that only starts: the executors' imports, and with `warm` the warm engine's warm-up."
    import research_kit.runner.executors  # noqa: F401  (what a pool's worker imports to find its main function)

    if warm:
        from research_kit.runner.engines import ENGINES

        ENGINES["warm"].warm_up()
    conn.send("ready")


def pool_start(warm: bool) -> float:
    "Seconds until a spawned worker says it is ready (as `runner.executors` starts its workers)."
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    t0 = time.perf_counter()
    p = ctx.Process(target=_ready, args=(child, warm), daemon=True)
    p.start()
    parent.recv()
    t = time.perf_counter() - t0
    p.join(10)
    return t


class Stopwatch:
    "Wraps module functions so that every call adds its time to a named total."

    def __init__(self):
        self.totals = {}

    def wrap(self, module, name, label):
        fn = getattr(module, name)

        def timed_call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[label] = self.totals.get(label, 0.0) + time.perf_counter() - t0

        setattr(module, name, timed_call)


def breakdown_child(report: str, given: dict) -> dict:
    "Each step of one `rk run --force`, done in this process in the order run_runs does them: {step: seconds}."
    steps = {}

    def step(label, fn):
        t0 = time.perf_counter()
        out = fn()
        steps[label] = time.perf_counter() - t0
        return out

    step("pool start: spawn a worker, import the runner", lambda: pool_start(False))
    steps["worker imports: the warm engine's warm-up"] = (
        pool_start(True) - steps["pool start: spawn a worker, import the runner"]
    )
    from research_kit.settings import load_settings
    from research_kit.runner import runs as R, documents, record, reads, engines
    from research_kit.runner.audit import audit_unless_current
    from research_kit.runner.site import build_index

    s = step("settings", load_settings)
    r = step("plan: template, parameters, cache check", lambda: R.plan(report, given, s, force=True))

    def locked():
        lock = R.build_lock(s.build_dir).__enter__()
        R.still_cached(r, s)
        R.clean_stale(s.build_dir)
        return lock

    lock = step("build lock, cache check again, clean stale", locked)
    git = step("git state", lambda: R.git_state(s.root))
    engines.ENGINES["warm"].warm_up()  # as a pool's worker did before its first report (counted above)
    watch = Stopwatch()
    watch.wrap(documents, "write_documents", "render: notebook.html, report.html (in the worker)")
    watch.wrap(record, "records", "records and reads: read back from the notebook (in the worker)")
    watch.wrap(reads, "collect", "records and reads: read back from the notebook (in the worker)")
    task = R.make_task(r, s, "warm", git=git)
    t0 = time.perf_counter()
    outcome = engines.execute_report(task)
    in_worker = time.perf_counter() - t0
    steps["the report itself (its cells; first report of a worker)"] = outcome.duration
    steps.update(watch.totals)
    steps["the rest of the worker's task (papermill set-up, ...)"] = (
        in_worker - outcome.duration - sum(watch.totals.values())
    )
    step("manifest: hash outputs, write, move into place", lambda: R.finish(r, task, outcome, git))
    step("audit", lambda: audit_unless_current(r.folder, threshold=s.threshold, policy=s.threshold_policy))
    step("index update", lambda: build_index(s.build_dir))
    lock.__exit__(None, None, None)
    # a second report in the same warm worker: what a long-lived worker's reports cost
    task = R.make_task(r, s, "warm", git=git)
    outcome = engines.execute_report(task)
    shutil.rmtree(task.output_dir, ignore_errors=True)
    steps["the report itself (its cells; second report of the same worker)"] = outcome.duration
    if outcome.status != "succeeded":
        raise SystemExit(f"the report failed: {outcome.error}")
    return steps


def breakdown(report, given, env, repeat) -> dict:
    "Medians over `repeat` fresh processes of each step of an `rk run`, plus the process start and its imports."
    py = str(BIN / "python")
    figures = {
        "process start: python itself": wall([py, "-c", "pass"], repeat),
        "process start: python + import research_kit.cli (rk's imports)": wall(
            [py, "-c", "import research_kit.cli"], repeat
        ),
    }
    runs = []
    for _ in range(repeat):
        proc = subprocess.run(
            [
                py,
                __file__,
                "--breakdown-child",
                "--report",
                report,
                *sum((["-p", f"{k}={v}"] for k, v in given.items()), []),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise SystemExit(f"the breakdown failed:\n{proc.stdout}\n{proc.stderr}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for label in runs[0]:
        figures[label] = statistics.median(r[label] for r in runs)
    return figures


def print_breakdown(figures):
    print(f"\nwhere an rk run spends its time (each step in a process of its own, medians)")
    for label, t in figures.items():
        print(f"  {label:72} {t:7.3f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", default="star_replication")
    ap.add_argument("-p", dest="params", action="append", default=None, help="name=value (default: grade=2)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--breakdown-only", action="store_true")
    ap.add_argument("--breakdown-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    given = dict(p.split("=", 1) for p in (args.params if args.params is not None else ["grade=2"]))
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    if args.breakdown_child:
        print(json.dumps(breakdown_child(args.report, given)))
        return
    from research_kit.runner.runs import plan

    r = plan(args.report, given, force=True)
    work = Path(tempfile.mkdtemp(prefix="rk-bench-run-"))
    env = user_environ()
    env.update(RK_WORKSPACE_CACHE=str(work / "cache"), RK_WORKSPACE_BUILD=str(work / "build"))
    p_args = sum((["-p", f"{k}={v}"] for k, v in given.items()), [])
    base = papermill_cmd(r.template, r.parameters, work / "out.ipynb")
    rows = []
    daemon = daemon_available(env)
    overheads = []  # each warm run's wall time less its own report's execution time (its manifest's duration)

    def note_overhead(seconds):
        overheads.append(seconds - last_duration(work / "build", args.report))

    try:
        run(rk_cmd("run", args.report, *p_args, "--force"), env)  # a warm data cache for every contender
        if not args.breakdown_only:
            if daemon:
                run(rk_cmd("run", args.report, *p_args, "--force"), env)  # the workers are warm
                warm, pm = paired(
                    rk_cmd("run", args.report, *p_args, "--force"),
                    base,
                    args.repeat,
                    env,
                    after=note_overhead,
                )
                rows.append(("rk run --force, warm workers running", warm, pm, "target <= 0.1"))
                cold, pm = paired(
                    rk_cmd("run", args.report, *p_args, "--force"),
                    base,
                    args.repeat,
                    env,
                    before=rk_cmd("workers", "stop"),
                )
                rows.append(("rk run --force, cold (no workers running)", cold, pm, "target <= 1.0"))
            own = ("--no-daemon",) if daemon else ()
            mine, pm = paired(
                rk_cmd("run", args.report, *p_args, "--force", *own),
                base,
                args.repeat,
                env,
                after=None if daemon else note_overhead,
            )
            rows.append(
                (f"rk run --force{' --no-daemon' if daemon else ''}, a pool of its own", mine, pm, "")
            )
            kernel, pm = paired(
                rk_cmd("run", args.report, *p_args, "--force", "--engine", "kernel", *own),
                base,
                args.repeat,
                env,
            )
            rows.append(("rk run --force --engine kernel", kernel, pm, ""))
            cached, pm = paired(rk_cmd("run", args.report, *p_args), base, args.repeat, env)
            rows.append(("rk run, cached", cached, pm, ""))
        figures = breakdown(args.report, given, env, max(1, args.repeat // 2))
    finally:
        if daemon:
            subprocess.run(rk_cmd("workers", "stop"), cwd=ROOT, env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    if rows:
        print(
            f"rk run {args.report} {' '.join(p_args)}: whole process, median of {args.repeat}, "
            "each paired with one plain papermill call"
        )
        print(f"{'':48} {'seconds':>8} {'papermill':>9} {'ratio':>7}")
        for label, mine, pm, target in rows:
            print(
                f"{label:48} {statistics.median(mine):8.2f} {statistics.median(pm):9.2f} "
                f"{statistics.median(mine) / statistics.median(pm):7.3f}  {target}"
            )
        first = rows[0]
        print(
            f"overhead of {first[0]!r} over the report's own execution, run by run (median of {len(overheads)}): "
            f"{statistics.median(overheads):.2f} s{'  target <= 0.5 s' if daemon else ''}"
        )
    print_breakdown(figures)


if __name__ == "__main__":
    main()
