"""The Parquet cache: a second load reads it and equals the first; a damaged cache file is detected
and rebuilt, never returned; a changed file is validated again."""
import os
import subprocess
import sys

from conftest import ROOT, run_rk, save, sha256, write_resource

SCRIPT = """
import sys, warnings, pandas as pd
import research_kit as rk
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    df = rk.load("mini", "people")
print(len(df), pd.util.hash_pandas_object(df, index=False).sum(), sum("damaged" in str(w.message) for w in caught))
"""


def load_in_process(root, env):
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows, digest, warned = proc.stdout.split()
    return int(rows), digest, int(warned)


def cache_files(root):
    return sorted((root / ".cache").rglob("people-*.parquet"))


def test_cache_hit_equals_fresh_load(workspace):
    root, d, env = workspace
    first = load_in_process(root, env)
    [cached] = cache_files(root)
    stamp = cached.stat().st_mtime_ns
    assert load_in_process(root, env) == first
    assert cached.stat().st_mtime_ns == stamp  # read, not rewritten


def test_truncated_and_corrupt_cache_is_rebuilt(workspace):
    root, d, env = workspace
    rows, digest, _ = load_in_process(root, env)
    [cached] = cache_files(root)
    data = cached.read_bytes()
    for damaged in (data[: len(data) // 2], data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:], b""):
        cached.write_bytes(damaged)
        assert load_in_process(root, env) == (rows, digest, 1)
        assert cached.read_bytes() == data  # rebuilt, byte for byte


def test_changed_data_is_validated_again(workspace):
    root, d, env = workspace
    load_in_process(root, env)
    pkg = root / "datasets" / "mini"
    text = (pkg / "people.csv").read_text() + "P-004,ATK,30,paid,1.5,2021-09-01,true\n"
    write_resource(pkg, d, "people", text)
    save(pkg, d)
    rows, _, _ = load_in_process(root, env)
    assert rows == 4
    assert len(cache_files(root)) == 1  # the superseded version was removed


def test_touched_but_unchanged_file_finds_its_cache(workspace):
    # a checkout or a copy gives the file a new modification time, not new content: no new validation
    root, d, env = workspace
    first = load_in_process(root, env)
    [cached] = cache_files(root)
    stamp = cached.stat().st_mtime_ns
    csv = root / "datasets" / "mini" / "people.csv"
    os.utime(csv, ns=(csv.stat().st_atime_ns, csv.stat().st_mtime_ns + 10**9))
    assert load_in_process(root, env) == first
    assert cache_files(root) == [cached] and cached.stat().st_mtime_ns == stamp  # read, not rebuilt
