"""Load performance, as ratios against baselines measured in the same run.

- `students` scaled to 1,000,000 rows (generated with research_kit.data.demo):
  cached `rk.load` vs `pandas.read_csv` of the same CSV (target <= 0.2), and
  the first, validating load vs `pandas.read_csv` (target <= 3).
- `python -c "import research_kit"` vs `python -c "pass"` (target: difference <= 0.15 s),
  and `rk --help` wall time (target <= 0.6 s).

`--resource terms` measures the `terms` of those students instead (a table with a primary key of two
columns and a foreign key to students; no target, the same ratios).

Usage: python benchmarks/bench_load.py [--students N] [--repeat R] [--resource students|terms]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from timing import timed, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--resource", choices=["students", "terms"], default="students")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rk-bench-"))
    try:
        (work / "settings.ini").write_text("[workspace]\ndata = datasets\ncache = cache\n")
        os.environ["RK_ROOT"] = str(work)
        from research_kit.data.demo import generate

        t0 = time.perf_counter()
        generate(
            work / "datasets" / "consortium",
            students=args.students,
            resources=["institutions", "programs", "students"]
            + (["terms"] if args.resource == "terms" else []),
        )
        print(f"generated {args.students:,} students in {time.perf_counter() - t0:.1f} s")
        name = args.resource
        csv = work / "datasets" / "consortium" / f"{name}.csv"

        import pandas as pd
        from research_kit.data.load import load, wait_for_cache_writes

        for other in ["institutions", "programs", "students"][: 3 if name == "terms" else 2]:
            load("consortium", other)  # warm imports and the tables foreign keys point to
        wait_for_cache_writes()

        baseline = timed(lambda: pd.read_csv(csv), args.repeat)

        def cold_load():
            # the cache file is written on a background thread after load returns: not timed
            wait_for_cache_writes()
            for f in (work / "cache" / "data" / "consortium").glob(f"{name}-*.parquet"):
                f.unlink()
            shutil.rmtree(work / "cache" / "hashes", ignore_errors=True)
            t0 = time.perf_counter()
            load("consortium", name)
            return time.perf_counter() - t0

        first = statistics.median(cold_load() for _ in range(args.repeat))
        wait_for_cache_writes()
        cached = timed(
            lambda: load("consortium", name), max(args.repeat, 21)
        )  # ~20 ms each: many, to steady the median

        py = sys.executable
        rk = str(Path(py).parent / "rk")
        bare = wall([py, "-c", "pass"], 10)
        imp = wall([py, "-c", "import research_kit"], 10)
        helptime = wall([rk, "--help"], 5)

        rows = [
            ("pandas.read_csv (baseline)", baseline, 1.0, ""),
            (
                "rk.load, first (validating)",
                first,
                first / baseline,
                "target <= 3" if name == "students" else "",
            ),
            ("rk.load, cached", cached, cached / baseline, "target <= 0.2" if name == "students" else ""),
        ]
        rows_in_file = len(load("consortium", name))
        print(
            f"\n{name}.csv: {rows_in_file:,} rows, {csv.stat().st_size / 1e6:.0f} MB; "
            f"median of {args.repeat} runs (cached: {max(args.repeat, 21)})"
        )
        print(f"{'':32} {'seconds':>8} {'ratio':>7}")
        for name, t, ratio, target in rows:
            print(f"{name:32} {t:8.3f} {ratio:7.3f}  {target}")
        print(f"\npython -c pass                   {bare:8.3f}")
        print(f"python -c 'import research_kit'  {imp:8.3f}   difference {imp - bare:.3f} s (target <= 0.15)")
        print(f"rk --help                        {helptime:8.3f}   (target <= 0.6 s wall)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
