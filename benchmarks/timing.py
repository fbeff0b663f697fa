"""Timing helpers shared by the benchmark scripts: medians, because these machines are noisy."""

import statistics
import subprocess
import time


def timed(fn, repeat):
    "The median wall time of `repeat` calls of `fn`, in seconds."
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def wall(cmd, repeat):
    "The median wall time of running the command `cmd` (a list) `repeat` times, in seconds."
    return timed(lambda: subprocess.run(cmd, check=True, capture_output=True), repeat)


def user_environ() -> dict:
    """This process's environment as a user's command would have it: no workspace overrides (RK_*), and bytecode
    caches written. A shell that sets PYTHONDONTWRITEBYTECODE makes every command compile research_kit's source
    again (~0.07 s each), which a user's Python does once."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("RK_") and k != "PYTHONDONTWRITEBYTECODE"}
