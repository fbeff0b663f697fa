"""Batch performance, as ratios against baselines measured in the same run.

Baseline: a shell loop of plain `papermill` command-line calls over the same (template,
parameters) list as the `annual` batch.
- cold `rk batch annual`, warm engine, vs the loop (target <= 0.2)
- cold `rk batch annual`, kernel engine, vs the loop (target <= 0.7)
- re-running the unchanged batch vs the cold warm run (target <= 0.03)
- warm-engine overhead for an empty template: per report (target: median <= 50 ms)
- against another checkout (`--against DIR`, e.g. a clone of main): cold `rk batch annual`, warm engine,
  here vs there, alternating, the same load for both; the ratio of the medians (target for a branch that
  adds reports: <= 1.5)
- the run documents: cold `rk batch annual` (warm engine) writing the reader document report.html
  next to notebook.html, vs the same batch writing notebook.html only (`[runner] reader = off`):
  target <= 1.15; and with a PDF printed for every run (`[runner] pdf = on`), reported separately
- the honest baselines (--baselines-only; each figure the median of --repeat rounds, the contenders alternating):
  cold `rk batch annual` (no warm workers running, nothing cached; the workspace's long-lived workers when this
  checkout has them) vs plain papermill run two at a time over the same runs, as `xargs -P 2` would (target <= 0.3),
  and vs the sequential loop (target <= 0.1); an unchanged rerun of `annual` vs its cold run (target <= 0.01), right
  after it and once its files have settled;
  and the dropout_risk runs' own execution times and figures (ROC AUC, Brier) from the cold batches' manifests
- the discovery of what each run reads (files, settings; `research_kit.runner.reads`): cold
  `rk batch annual` (warm engine) with `[runner] discovery = on` vs the same batch with it off,
  alternating (off-on, on-off, ...), medians of --repeat pairs: target <= 1.05

Usage: python benchmarks/bench_batch.py [--workers N] [--empty N] [--repeat N]
       [--documents-only | --discovery-only | --baselines-only] [--against DIR [--rounds N]]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import user_environ  # noqa: E402

from research_kit.files import SETTLE_NS  # noqa: E402

BIN = Path(sys.executable).parent


def rk(*args, env, cwd=ROOT):
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "rk"), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"rk {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - t0


def papermill_cmd(run, out: Path) -> list[str]:
    "One plain papermill call for `run`, writing `out`."
    args = []
    for name, value in run.parameters.items():  # -r passes text as is; -p lets papermill parse the rest
        args += ["-r" if isinstance(value, str) else "-p", name, str(value)]
    return [str(BIN / "papermill"), str(run.template), str(out), "--no-progress-bar", *args]


def papermill_loop(runs, out: Path, env) -> float:
    "The baseline: one plain papermill process per run, one after another, as a shell loop would."
    t0 = time.perf_counter()
    for i, run in enumerate(runs):
        subprocess.run(
            papermill_cmd(run, out / f"{i}.ipynb"), cwd=ROOT, env=env, check=True, capture_output=True
        )
    return time.perf_counter() - t0


def papermill_parallel(runs, out: Path, env, parallel: int = 2) -> float:
    "The baseline a user with two cores has: plain papermill processes, `parallel` at a time, as `xargs -P 2` would run them."
    from concurrent.futures import ThreadPoolExecutor

    def one(i):
        subprocess.run(
            papermill_cmd(runs[i], out / f"{i}.ipynb"), cwd=ROOT, env=env, check=True, capture_output=True
        )

    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(len(runs))))
    return time.perf_counter() - t0


def empty_overhead(workers, n, base_env) -> tuple[float, float]:
    "Per-report cost of an empty template with the warm engine: (amortized wall, median execution)."
    import json
    import nbformat

    tmp = Path(tempfile.mkdtemp(prefix="rk-empty-"))
    nb = nbformat.v4.new_notebook(
        metadata={
            "kernelspec": {"name": "research-kit", "display_name": "research_kit", "language": "python"}
        }
    )
    nb.cells = [
        nbformat.v4.new_code_cell("i: int = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("i"),
    ]
    nbformat.write(nb, tmp / "empty.ipynb")
    (tmp / "batches.yaml").write_text(
        f"one:\n  - report: empty\n    parameters: [{{i: -1}}]\n"
        f"many:\n  - report: empty\n    grid: {{i: {list(range(n))}}}\n"
    )
    env = {**base_env, "RK_WORKSPACE_REPORTS": str(tmp), "RK_WORKSPACE_BUILD": str(tmp / "_build")}
    one = rk("batch", "one", "--workers", "1", env=env)
    many = rk("batch", "many", "--workers", "1", env=env)
    durations = [
        json.loads(p.read_text())["duration"] for p in (tmp / "_build" / "empty").glob("*/manifest.json")
    ]
    shutil.rmtree(tmp, ignore_errors=True)
    return (many - one) / (n - 1), statistics.median(durations)


def documents_cost(workers, base) -> tuple[float, float, float, int]:
    "Cold warm-engine `rk batch annual` wall times: notebook.html only, + reader documents, + PDFs; and the PDFs made."
    import json

    work = Path(tempfile.mkdtemp(prefix="rk-bench-docs-"))
    times = {}
    try:
        for name, reader, pdf in (("none", "off", "off"), ("reader", "on", "off"), ("pdf", "on", "on")):
            env = {
                **base,
                "RK_WORKSPACE_BUILD": str(work / name),
                "RK_RUNNER_READER": reader,
                "RK_RUNNER_PDF": pdf,
            }
            times[name] = rk("batch", "annual", "--engine", "warm", "--workers", str(workers), env=env)
        pdfs = sum(json.loads(p.read_text())["pdf"]["made"] for p in (work / "pdf").glob("*/*/manifest.json"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return times["none"], times["reader"], times["pdf"], pdfs


def against(other: Path, workers: int, rounds: int, base) -> tuple[list[float], list[float]]:
    "Cold warm-engine `rk batch annual` wall times in this checkout and in `other`, alternating: (here, there)."
    here, there = [], []
    work = Path(tempfile.mkdtemp(prefix="rk-bench-against-"))
    try:
        trees = {"here": (ROOT, here), "there": (other.resolve(), there)}
        envs = {
            name: {**base, "PYTHONPATH": str(tree), "RK_WORKSPACE_CACHE": str(work / name / "cache")}
            for name, (tree, _) in trees.items()
        }
        for name, (tree, _) in trees.items():
            rk("datasets", "validate", env=envs[name], cwd=tree)  # a warm data cache for both
        for i in range(rounds):
            for name, (tree, times) in trees.items() if i % 2 == 0 else reversed(trees.items()):
                env = {**envs[name], "RK_WORKSPACE_BUILD": str(work / name / f"build{i}")}
                times.append(
                    rk("batch", "annual", "--engine", "warm", "--workers", str(workers), env=env, cwd=tree)
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return here, there


def print_against(other, workers, here, there):
    print(f"cold rk batch annual, warm engine, {workers} workers, {len(here)} rounds alternating")
    print(f"{'':44} {'seconds (each)':>24} {'median':>8} {'ratio':>7}")
    print(
        f"{str(other) + ' (baseline)':44} {' '.join(f'{t:.1f}' for t in there):>24} {statistics.median(there):8.2f} {1:7.3f}"
    )
    ratio = statistics.median(here) / statistics.median(there)
    print(
        f"{'this checkout':44} {' '.join(f'{t:.1f}' for t in here):>24} {statistics.median(here):8.2f} "
        f"{ratio:7.3f}  target <= 1.5"
    )


def print_documents(workers, figures):
    none, reader, pdf, pdfs = figures
    print(f"\nrun documents, cold rk batch annual, warm engine, {workers} workers")
    print(f"{'':44} {'seconds':>8} {'ratio':>7}")
    print(f"{'notebook.html only (baseline)':44} {none:8.2f} {1:7.3f}")
    print(
        f"{'+ reader documents (report.html)':44} {reader:8.2f} {reader / none:7.3f}  target <= 1.15 of the baseline"
    )
    print(
        f"{'+ reader documents and PDFs ([runner] pdf = on)':44} {pdf:8.2f} {pdf / none:7.3f}  "
        f"{pdfs} PDFs, {(pdf - reader) / max(pdfs, 1) * workers:.2f} s each in a worker"
    )


def cpu_seconds() -> float:
    "User and system time of this process's finished children (rk and the workers it waited for)."
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def discovery_cost(workers, base, repeat) -> dict:
    """Cold warm-engine `rk batch annual` with the discovery of reads off and on, alternating: {mode: [(wall,
    summed durations, cpu)]}."""
    import json

    work = Path(tempfile.mkdtemp(prefix="rk-bench-reads-"))
    times = {"off": [], "on": []}
    try:
        for i in range(repeat):
            for mode in (
                ("off", "on") if i % 2 == 0 else ("on", "off")
            ):  # ABBA: a machine getting busier favours neither
                build, cpu = work / f"{mode}-{i}", cpu_seconds()
                wall = rk(
                    "batch",
                    "annual",
                    "--engine",
                    "warm",
                    "--workers",
                    str(workers),
                    env={**base, "RK_WORKSPACE_BUILD": str(build), "RK_RUNNER_DISCOVERY": mode},
                )
                durations = sum(
                    json.loads(p.read_text())["duration"] for p in build.glob("*/*/manifest.json")
                )
                times[mode].append((wall, durations, cpu_seconds() - cpu))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return times


def print_discovery(workers, times):
    off, on = ([statistics.median(t[k] for t in times[m]) for k in range(3)] for m in ("off", "on"))
    print(
        f"\ndiscovery of what runs read, cold rk batch annual, warm engine, {workers} workers, median of {len(times['on'])}"
    )
    print(f"{'':44} {'seconds':>8} {'ratio':>7}")
    print(f"{'discovery off (baseline), wall':44} {off[0]:8.2f} {1:7.3f}")
    print(f"{'discovery on, wall':44} {on[0]:8.2f} {on[0] / off[0]:7.3f}  target <= 1.05 of the baseline")
    # on a busy machine the wall time follows the other load; CPU time much less so
    print(
        f"{'discovery on, CPU time of rk and its workers':44} {on[2]:8.2f} {on[2] / off[2]:7.3f}  (off: {off[2]:.2f} s)"
    )
    print(
        f"{'discovery on, the reports alone (durations)':44} {on[1]:8.2f} {on[1] / off[1]:7.3f}  (off: {off[1]:.2f} s)"
    )
    for k, what in ((0, "wall"), (2, "CPU")):
        print(
            f"  each pair, {what}:",
            ", ".join(f"{b[k] / a[k]:.3f}" for a, b in zip(times["off"], times["on"])),
        )


def has_daemon(env) -> bool:
    "Does this checkout's rk keep long-lived warm workers (`rk workers`)?"
    return (
        subprocess.run(
            [str(BIN / "rk"), "workers", "--help"], cwd=ROOT, env=env, capture_output=True
        ).returncode
        == 0
    )


def baselines(runs, workers, base, repeat) -> dict:
    """Wall times of each round: cold `rk batch annual`, its unchanged rerun, papermill two at a time, the
    papermill loop; and the dropout_risk manifests."""
    import json

    work = Path(tempfile.mkdtemp(prefix="rk-bench-baselines-"))
    daemon = has_daemon(base)
    times = {"cold": [], "rerun": [], "settled": [], "parallel": [], "loop": []}
    dropout = []
    try:
        for i in range(repeat):

            def cold():
                if daemon:
                    rk("workers", "stop", env=base)  # cold: no warm workers running
                env = {**base, "RK_WORKSPACE_BUILD": str(work / f"build{i}")}
                times["cold"].append(rk("batch", "annual", "--workers", str(workers), env=env))
                times["rerun"].append(rk("batch", "annual", "--workers", str(workers), env=env))
                # later: files written less than SETTLE_NS ago are not trusted by their identity (a change within
                # the same timestamp tick could go unseen), so the first rerun rebuilds the index page; once they
                # have settled, reruns see an unchanged build folder
                time.sleep(SETTLE_NS / 1e9 + 0.1)
                later = [rk("batch", "annual", "--workers", str(workers), env=env) for _ in range(4)]
                times["settled"].append(statistics.median(later[1:]))  # the first of them stamps the page
                for p in (work / f"build{i}" / "dropout_risk").glob("*/manifest.json"):
                    m = json.loads(p.read_text())
                    dropout.append(
                        (m["slug"], m["duration"], m["records"].get("roc_auc"), m["records"].get("brier"))
                    )

            def parallel():
                (work / f"parallel{i}").mkdir()
                times["parallel"].append(papermill_parallel(runs, work / f"parallel{i}", base, 2))

            def loop():
                (work / f"loop{i}").mkdir()
                times["loop"].append(papermill_loop(runs, work / f"loop{i}", base))

            rounds = (
                (cold, parallel, loop) if i % 2 == 0 else (loop, parallel, cold)
            )  # a machine getting busier favours none
            for contender in rounds:
                contender()
    finally:
        if daemon:
            subprocess.run([str(BIN / "rk"), "workers", "stop"], cwd=ROOT, env=base, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return {**times, "dropout": dropout, "daemon": daemon}


def print_baselines(runs, workers, figures):
    med = {k: statistics.median(figures[k]) for k in ("cold", "rerun", "settled", "parallel", "loop")}
    each = lambda k: " ".join(f"{t:.1f}" for t in figures[k])
    print(
        f"\nhonest baselines: annual batch, {len(runs)} reports, {workers} workers, median of {len(figures['cold'])} rounds"
        f"{' (long-lived workers stopped before each cold batch)' if figures['daemon'] else ''}"
    )
    print(f"{'':52} {'seconds (each)':>22} {'median':>8} {'ratio':>7}")
    print(f"{'papermill, sequential loop':52} {each('loop'):>22} {med['loop']:8.2f}")
    print(f"{'papermill, two at a time (xargs -P 2)':52} {each('parallel'):>22} {med['parallel']:8.2f}")
    print(
        f"{'rk batch annual, cold, vs papermill two at a time':52} {each('cold'):>22} {med['cold']:8.2f} "
        f"{med['cold'] / med['parallel']:7.3f}  target <= 0.3"
    )
    print(
        f"{'rk batch annual, cold, vs the sequential loop':52} {'':>22} {'':8} {med['cold'] / med['loop']:7.3f}  target <= 0.1"
    )
    print(
        f"{'rk batch annual, unchanged rerun, vs its cold run':52} {each('rerun'):>22} {med['rerun']:8.2f} "
        f"{med['rerun'] / med['cold']:7.3f}  target <= 0.01"
    )
    print(
        f"{'  the same, files settled (2 s later; median of 3)':52} {each('settled'):>22} {med['settled']:8.2f} "
        f"{med['settled'] / med['cold']:7.3f}"
    )
    print("dropout_risk runs of the cold batches (the report's own execution time, seconds; ROC AUC; Brier):")
    by_slug = {}
    for slug, duration, auc, brier in figures["dropout"]:
        by_slug.setdefault(slug, []).append((duration, auc, brier))
    for slug, rows in sorted(by_slug.items()):
        print(
            f"  {slug:60} median {statistics.median(r[0] for r in rows):6.2f} s  (each {' '.join(f'{r[0]:.2f}' for r in rows)})"
            f"  ROC AUC {rows[0][1]}  Brier {rows[0][2]}"
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--empty", type=int, default=41, help="empty reports for the overhead figure")
    ap.add_argument("--documents-only", action="store_true", help="only the run documents' figures")
    ap.add_argument("--discovery-only", action="store_true", help="only the discovery's figure")
    ap.add_argument(
        "--baselines-only",
        action="store_true",
        help="only the honest baselines (papermill two at a time, the loop, the rerun)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="pairs of batches for the discovery's figure, rounds of the baselines",
    )
    ap.add_argument(
        "--against",
        type=Path,
        help="only: cold rk batch annual here vs in this other checkout (e.g. a clone of main)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="rounds of --against, each running both checkouts")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from research_kit.runner.batch import plan_batch

    runs = plan_batch("annual", force=True)
    work = Path(tempfile.mkdtemp(prefix="rk-bench-batch-"))
    base = user_environ()
    base["RK_WORKSPACE_CACHE"] = str(work / "cache")
    if args.against:
        print_against(args.against, args.workers, *against(args.against, args.workers, args.rounds, base))
        shutil.rmtree(work, ignore_errors=True)
        return
    if args.documents_only:
        try:
            rk("datasets", "validate", env=base)
            print_documents(args.workers, documents_cost(args.workers, base))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    if args.baselines_only:
        try:
            rk("datasets", "validate", env=base)
            print_baselines(runs, args.workers, baselines(runs, args.workers, base, args.repeat))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    if args.discovery_only:
        try:
            rk("datasets", "validate", env=base)
            print_discovery(args.workers, discovery_cost(args.workers, base, args.repeat))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    try:
        rk("datasets", "validate", env=base)  # a warm data cache for every contender
        loop = papermill_loop(runs, work, base)
        warm = rk(
            "batch",
            "annual",
            "--engine",
            "warm",
            "--workers",
            str(args.workers),
            env={**base, "RK_WORKSPACE_BUILD": str(work / "warm")},
        )
        kernel = rk(
            "batch",
            "annual",
            "--engine",
            "kernel",
            "--workers",
            str(args.workers),
            env={**base, "RK_WORKSPACE_BUILD": str(work / "kernel")},
        )
        rerun = rk(
            "batch",
            "annual",
            "--engine",
            "warm",
            "--workers",
            str(args.workers),
            env={**base, "RK_WORKSPACE_BUILD": str(work / "warm")},
        )
        amortized, median_exec = empty_overhead(args.workers, args.empty, base)
        documents = documents_cost(args.workers, base)
        discovery = discovery_cost(args.workers, base, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"annual batch: {len(runs)} reports, {args.workers} workers")
    print(f"{'':44} {'seconds':>8} {'ratio':>7}")
    print(f"{'papermill CLI loop (baseline)':44} {loop:8.2f} {1:7.3f}")
    print(
        f"{'rk batch annual, warm engine (cold)':44} {warm:8.2f} {warm / loop:7.3f}  target <= 0.2 of the loop"
    )
    print(
        f"{'rk batch annual, kernel engine (cold)':44} {kernel:8.2f} {kernel / loop:7.3f}  target <= 0.7 of the loop"
    )
    print(
        f"{'rk batch annual, unchanged rerun':44} {rerun:8.2f} {rerun / warm:7.3f}  target <= 0.03 of the cold warm run"
    )
    print(
        f"\nempty template, warm engine, 1 worker: {amortized * 1000:.0f} ms per report all-in (outputs, HTML, manifest), "
        f"median execution {median_exec * 1000:.0f} ms (target: median <= 50 ms)"
    )
    print_documents(args.workers, documents)
    print_discovery(args.workers, discovery)


if __name__ == "__main__":
    main()
