"""Cell suppression: speed and information loss of the optimizing `suppress`, against the rule it replaced.

Baselines, measured in the same run:
- `heuristic`: the rule `suppress` used before (mask the smallest partner until every row and column
  has zero or at least two masked cells), copied below; fast, but it leaked (see the leak counts);
- `one LP`: a single linprog call over the same table's relations (what one bound of one cell costs).

Figures:
1. time to suppress and prove a 20 x 10 table with a total row and column (about a quarter of its
   cells below k), as seconds and as ratios to both baselines;
2. on the same random tables of 2-8 rows and columns with totals: cells masked and their total value,
   optimizing vs heuristic, and how many small counts the heuristic's patterns give away exactly or
   narrow to less than p (by `check_protection`'s LP attack);
3. the LP check alone (`check_protection`) over every institution's enrolment tables;
4. the disclosure audit of the `public` batch (`rk batch public`, run into a temporary build folder,
   or an existing one given with --build): `audit_run` over every run with the LP attack on each
   vetted table's suppression pattern, against the same audit without it (baseline).

Usage: python benchmarks/bench_privacy.py [--tables N] [--repeat R] [--build DIR | --no-batch]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from timing import timed

K, P = 10, 5
ROOT = Path(__file__).resolve().parent.parent


def heuristic(table, counts, k, total_row, total_column):
    "The rule suppress used before: returns the mask (rows x counts, total column last)."
    values = table[counts].to_numpy(float)
    ti, tj = table.index.get_loc(total_row), counts.index(total_column)
    masked = (values > 0) & (values < k)
    rows, cols = values.shape
    part_rows = [i for i in range(rows) if i != ti]
    part_cols = [j for j in range(cols) if j != tj]
    lines = [([(i, j) for j in part_cols], (i, tj)) for i in range(rows)]
    lines += [([(i, j) for i in part_rows], (ti, j)) for j in range(cols)]
    changed = True
    while changed:
        changed = False
        for parts, total in lines:
            lone = [p for p in parts if masked[p]]
            if not lone and masked[total]:
                lone = [total]
            if len(lone) != 1:
                continue
            shown = [p for p in parts if not masked[p]]
            pool = [p for p in shown if values[p] > 0] or shown
            partner = min(pool, key=lambda p: values[p]) if pool else (None if masked[total] else total)
            if partner is not None:
                masked[partner] = changed = True
    return masked


def with_totals(parts):
    table = pd.DataFrame(parts, columns=[f"c{j}" for j in range(parts.shape[1])])
    names = list(table.columns)
    table = table.assign(total=table.sum(axis=1))
    table.loc["all"] = table.sum()
    return table, names


def big_table(seed=1):
    "20 x 10 with totals; about a quarter of the cells below k, the rest like programme-by-group counts."
    rng = np.random.default_rng(seed)
    small = rng.random((20, 10)) < 0.25
    parts = np.where(small, rng.integers(0, K, (20, 10)), rng.integers(K, 200, (20, 10)))
    return with_totals(parts)


def one_lp(table, names):
    "One linprog call over the table's relations, every cell unknown: the unit cost of an LP bound."
    from scipy.optimize import linprog

    values = table[[*names, "total"]].to_numpy(float)
    rows, cols = values.shape
    A, b = [], []
    for i in range(rows):
        row = np.zeros((rows, cols))
        row[i, :-1] = 1
        row[i, -1] = -1
        A.append(row.ravel())
        b.append(0)
    for j in range(cols):
        col = np.zeros((rows, cols))
        col[:-1, j] = 1
        col[-1, j] = -1
        A.append(col.ravel())
        b.append(0)
    c = np.zeros(rows * cols)
    c[0] = -1
    return linprog(
        c, A_eq=np.array(A), b_eq=np.array(b), bounds=[(0, values.max())] * (rows * cols), method="highs"
    )


def public_build(given):
    "A build folder holding the `public` batch: the one given, or a fresh `rk batch public` (timed)."
    if given:
        return Path(given), None
    build = Path(tempfile.mkdtemp(prefix="rk-bench-public-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RK_")},
        "RK_WORKSPACE_BUILD": str(build),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "rk"), "batch", "public"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"rk batch public failed:\n{proc.stdout}\n{proc.stderr}")
    return build, time.perf_counter() - t0


def audit_times(build, repeat):
    "Median seconds to audit every run of the build, with and without the LP attack on vetted tables; patterns checked."
    import research_kit.runner.audit as audit
    from research_kit.runner.record import PATTERN
    from research_kit.settings import load_settings

    settings = load_settings(ROOT)
    folders = sorted(p.parent for p in build.glob("*/*/manifest.json"))
    run = lambda: audit.audit_runs(folders, threshold=settings.threshold, policy=settings.threshold_policy)
    results = run()
    assert all(r.publishable for r in results.values()), {
        f.name: r.reasons for f, r in results.items() if not r.publishable
    }
    patterns = sum(
        PATTERN in (p.read_text()) for p in (f / "report.ipynb" for f in folders)
    )  # runs with at least one
    with_lp = timed(run, repeat)
    check, audit._check_pattern = audit._check_pattern, lambda *args: None
    try:
        without = timed(run, repeat)
    finally:
        audit._check_pattern = check
    return len(folders), patterns, with_lp, without


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--build", help="an existing build folder of `rk batch public` (default: run the batch)")
    ap.add_argument("--no-batch", action="store_true", help="skip figure 4")
    args = ap.parse_args()
    from research_kit.analysis.privacy import suppress, check_protection

    table, names = big_table()
    counts = [*names, "total"]
    ours = lambda: suppress(table, names, K, total_row="all", total_column="total")
    shown, masked = ours()
    t_ours = timed(ours, args.repeat)
    cpu = time.process_time()
    ours()
    cpu = (
        time.process_time() - cpu
    )  # this process's own work: the wall time above also holds waiting for a busy machine
    t_heur = timed(lambda: heuristic(table, counts, K, "all", "total"), args.repeat)
    t_lp = timed(lambda: one_lp(table, names), args.repeat)
    fallback = lambda: suppress(table, names, K, total_row="all", total_column="total", time_limit=0)
    t_fallback = timed(fallback, args.repeat)
    value = lambda mask: int(table[counts].to_numpy()[mask[counts].to_numpy()].sum())
    truth = table[counts].to_numpy()
    print(
        f"1. 20 x 10 table with totals: {int(((truth > 0) & (truth < K)).sum())} small counts, "
        f"{int(masked[counts].to_numpy().sum())} cells masked (optimal: {shown.attrs['protection']['optimal']}); "
        f"median of {args.repeat} runs"
    )
    print(
        f"   suppress + proof {t_ours:.3f} s (cpu {cpu:.3f} s); heuristic {t_heur * 1e3:.2f} ms (ratio {t_ours / t_heur:.0f}); "
        f"one LP {t_lp * 1e3:.2f} ms (ratio {t_ours / t_lp:.0f})"
    )
    print(
        f"   out of budget (time_limit=0: the pattern completed cell by cell, no search) {t_fallback:.3f} s; "
        f"masked value {value(fallback()[1])}, optimal {value(masked)}, "
        f"heuristic {int(table[counts].to_numpy()[heuristic(table, counts, K, 'all', 'total')].sum())}"
    )

    rng = np.random.default_rng(7)
    totals = {"optimizing": [0, 0], "heuristic": [0, 0]}
    exact = narrow = small_cells = 0
    t0 = time.perf_counter()
    for _ in range(args.tables):
        r, c = rng.integers(2, 9, size=2)
        parts = rng.choice([0, 0, 1, 2, 3, 4, 6, 9, 10, 12, 20, 35, 60, 150], size=(r, c))
        table, names = with_totals(parts)
        counts = [*names, "total"]
        values = table[counts].to_numpy()
        small_cells += int(((values > 0) & (values < K)).sum())
        _, masked = suppress(table, names, K, total_row="all", total_column="total")
        new = masked[counts].to_numpy()
        old = heuristic(table, counts, K, "all", "total")
        for name, mask in (("optimizing", new), ("heuristic", old)):
            totals[name][0] += int(mask.sum())
            totals[name][1] += int(values[mask].sum())
        old_shown = table[counts].astype("Int64").mask(pd.DataFrame(old, index=table.index, columns=counts))
        attack = check_protection(old_shown, names, K, p=P, total_row="all", total_column="total")
        small = attack[
            np.array(
                [
                    0 < values[table.index.get_loc(x.row), counts.index(x.column)] < K
                    for x in attack.itertuples()
                ],
                dtype=bool,
            )
        ]
        exact += int((small["lower"] == small["upper"]).sum())
        narrow += int(((small["upper"] - small["lower"] < P) & (small["lower"] != small["upper"])).sum())
    print(
        f"\n2. {args.tables} random tables of 2-8 x 2-8 with totals, {small_cells} small counts "
        f"({time.perf_counter() - t0:.1f} s):"
    )
    for name, (n, value) in totals.items():
        print(f"   {name:10} masks {n:6} cells, total value {value:8}")
    (n_new, v_new), (n_old, v_old) = totals["optimizing"], totals["heuristic"]
    print(f"   optimizing / heuristic: cells {n_new / n_old:.2f}, value {v_new / v_old:.2f}")
    print(
        f"   heuristic's small counts given away exactly: {exact}; narrowed to less than {P}: {narrow} "
        f"(optimizing: 0 and 0, by its proof)"
    )

    from research_kit.data.load import load

    students = load("consortium", "students")
    tables = []
    for _, group in students.groupby(["institution_id", "cohort"]):
        cells = pd.crosstab(group["program_id"], [group["gender"], group["language"]])
        cells.columns = [f"{g}_{l}_n" for g, l in cells.columns]
        table = cells.assign(total_n=cells.sum(axis=1))
        table.loc["all"] = table.sum()
        tables.append((table, list(cells.columns)))
    shown = [
        (suppress(t, parts, K, total_row="all", total_column="total_n")[0], parts) for t, parts in tables
    ]
    check = lambda: [
        check_protection(s, parts, K, total_row="all", total_column="total_n") for s, parts in shown
    ]
    print(
        f"\n3. LP check of {len(shown)} enrolment tables (every institution and cohort): "
        f"{timed(check, args.repeat):.3f} s"
    )

    if args.no_batch:
        return
    build, batch_seconds = public_build(args.build)
    try:
        runs, patterns, with_lp, without = audit_times(build, args.repeat)
    finally:
        if batch_seconds is not None:
            shutil.rmtree(build)  # the build this script made
    made = f"; rk batch public took {batch_seconds:.0f} s" if batch_seconds else ""
    print(f"\n4. audit of the public batch ({runs} runs, {patterns} with vetted tables to attack{made}):")
    print(
        f"   with the LP check {with_lp:.3f} s; without {without:.3f} s (ratio {with_lp / without:.2f}, "
        f"+{(with_lp - without) / runs * 1e3:.0f} ms per run)"
    )


if __name__ == "__main__":
    main()
