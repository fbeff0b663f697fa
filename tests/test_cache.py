"""The Parquet cache: a second load reads it and equals the first; a damaged cache file is detected
and rebuilt, never returned; a changed file is validated again."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    for damaged in (
        data[: len(data) // 2],
        data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:],
        b"",
    ):
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


# ---- the hash memo never answers for a file that changed ----


@pytest.fixture
def here(workspace, monkeypatch):
    """The `mini` workspace, loaded in this process; the hash memo remembers a file at once (no settling
    time), so only its stamp can tell an edit."""
    from research_kit.data.load import HashMemo

    root, d, env = workspace
    for var in [v for v in os.environ if v.startswith("RK_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("RK_ROOT", str(root))
    monkeypatch.setattr(HashMemo, "settle_ns", 0, raising=False)
    return root, d


def load_people():
    from research_kit.data.load import load, wait_for_cache_writes

    df = load("mini", "people")
    wait_for_cache_writes()
    return df


def edit_in_place(csv):
    """Change one value without changing the size, then put the modification time back (`touch -r`)."""
    st = csv.stat()
    csv.write_text(csv.read_text().replace("P-001,ATK,17", "P-001,ATK,18", 1))
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (csv.stat().st_size, csv.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_same_size_edit_with_mtime_put_back_is_seen(here):
    from research_kit.errors import DataValidationError

    root, d = here
    assert load_people().age.tolist() == [17, 19, 21]
    assert load_people().age.tolist() == [17, 19, 21]  # from the cache, with the memo's hash
    edit_in_place(root / "datasets" / "mini" / "people.csv")
    with pytest.raises(DataValidationError, match="hash: the file's sha256 differs"):
        load_people()


def test_descriptor_updated_to_the_edited_file_loads_it(here):
    # the reverse: the edit is published (new hash in the descriptor); no need to delete .cache
    root, d = here
    pkg = root / "datasets" / "mini"
    assert load_people().age.tolist() == [17, 19, 21]
    edit_in_place(pkg / "people.csv")
    d["resources"][1]["hash"] = f"sha256:{sha256(pkg / 'people.csv')}"
    save(pkg, d)
    assert load_people().age.tolist() == [18, 19, 21]
    assert (root / ".cache" / "hashes").is_dir()


def test_validate_hashes_every_file(here):
    # a file system whose stamps cannot be trusted (the memo says "unchanged"): validate still sees the edit
    from research_kit.data.load import HashMemo, validate

    root, d = here
    csv = root / "datasets" / "mini" / "people.csv"
    load_people()
    [entry] = [
        e
        for e in (root / ".cache" / "hashes").glob("*.json")
        if json.loads(e.read_text())["stamp"][0] == str(csv)
    ]
    remembered = json.loads(entry.read_text())
    edit_in_place(csv)
    entry.write_text(json.dumps({**remembered, "stamp": HashMemo(root / ".cache").stamp(str(csv))}))
    failed = {c.resource: str(c.error) for c in validate("mini") if c.error is not None}
    assert list(failed) == ["people"] and "hash: the file's sha256 differs" in failed["people"]


def test_rk_datasets_validate_sees_a_same_size_edit(workspace):
    root, d, env = workspace
    run_rk("datasets", "validate", "mini", cwd=root, env=env, check=0)
    edit_in_place(root / "datasets" / "mini" / "people.csv")
    proc = run_rk("datasets", "validate", "mini", cwd=root, env=env)
    assert proc.returncode == 1 and "hash: the file's sha256 differs" in proc.stderr, (
        proc.stdout + proc.stderr
    )


OTHER_USE = """
from research_kit.data.load import column_values, load, wait_for_cache_writes
load("consortium", "institutions")
wait_for_cache_writes()
column_values("consortium", "institutions", "name")  # kept as JSON beside the cached table
"""


def cache_contents(cache):
    return {p.relative_to(cache): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


def test_load_notebook_keeps_to_its_own_cache(tmp_path):
    # nbdev-test runs notebooks two at a time, and a researcher's rk commands use the workspace's cache too: the
    # load notebook's tests count and damage cache files, so they must do it in a cache of their own, whatever
    # another process keeps in the workspace's (here: another column of the same table, kept as JSON)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "settings.ini").write_text(f"[workspace]\ndata = {ROOT / 'datasets'}\ncache = .cache\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RK_")} | {"RK_ROOT": str(ws)}
    seeded = subprocess.run([sys.executable, "-c", OTHER_USE], env=env, capture_output=True, text=True)
    assert seeded.returncode == 0, seeded.stderr
    before = cache_contents(ws / ".cache")
    nbdev_test = Path(sys.executable).parent / "nbdev-test"
    proc = subprocess.run(
        [str(nbdev_test), "nbs/data/load.ipynb"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert cache_contents(ws / ".cache") == before  # the workspace's cache: neither written nor damaged
