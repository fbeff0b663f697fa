"""Every data package under datasets/ passes the reference validator (frictionless) and carries
the metadata the workspace relies on: package provenance, and per resource a sha256 hash, a byte
size and a row count that match the file.

Packages are discovered when the tests are collected, so a new datasets/<package>/datapackage.yaml
is checked without touching this file.
"""

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT / "datasets"

PACKAGE_KEYS = ["name", "title", "description", "version", "licenses", "sources", "contributors"]


def _packages():
    if not DATASETS.is_dir():
        return []
    return sorted(p for p in DATASETS.iterdir() if (p / "datapackage.yaml").is_file())


PACKAGES = _packages()
IDS = [p.name for p in PACKAGES]


def _frictionless():
    """The frictionless command of the running interpreter's environment."""
    exe = Path(sys.executable).parent / ("frictionless.exe" if os.name == "nt" else "frictionless")
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-m", "frictionless"]


def _load(path: Path):
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def _descriptor(pkg: Path) -> dict:
    d = _load(pkg / "datapackage.yaml")
    assert isinstance(d, dict), f"{pkg / 'datapackage.yaml'}: expected a mapping at the top level"
    return d


def _schema(pkg: Path, res: dict):
    schema = res.get("schema")
    if isinstance(schema, str):  # a schema kept in its own file, relative to the package
        schema = _load(pkg / schema)
    return schema


def _local_path(pkg: Path, res: dict):
    path = res.get("path")
    if not isinstance(path, str) or "://" in path:
        return None
    return pkg / path


def test_reference_packages_are_discovered():
    assert {"star", "college_distance"} <= set(IDS), f"found packages: {IDS}"


@pytest.mark.parametrize("pkg", PACKAGES, ids=IDS)
def test_frictionless_validate(pkg):
    cmd = [*_frictionless(), "validate", "datapackage.yaml"]
    env = {**os.environ, "COLUMNS": "200"}  # wide tables: untruncated error messages
    proc = subprocess.run(cmd, cwd=pkg, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (
        f"`{' '.join(cmd)}` in {pkg} exited {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


@pytest.mark.parametrize("pkg", PACKAGES, ids=IDS)
def test_package_metadata(pkg):
    d = _descriptor(pkg)
    where = pkg / "datapackage.yaml"
    missing = [k for k in PACKAGE_KEYS if not d.get(k)]
    assert not missing, f"{where}: missing or empty package keys {missing}"
    for key in ("licenses", "sources", "contributors"):
        assert isinstance(d[key], list), f"{where}: {key} should be a list"
    resources = d.get("resources")
    assert isinstance(resources, list) and resources, f"{where}: no resources"


@pytest.mark.parametrize("pkg", PACKAGES, ids=IDS)
def test_resource_metadata(pkg):
    d = _descriptor(pkg)
    where = pkg / "datapackage.yaml"
    for i, res in enumerate(d.get("resources") or []):
        name = res.get("name", f"#{i}")
        at = f"{where}: resource {name!r}"
        h = res.get("hash")
        assert isinstance(h, str) and h.startswith("sha256:"), (
            f"{at}: hash should be 'sha256:<hex>', got {h!r}"
        )
        assert isinstance(res.get("bytes"), int), (
            f"{at}: bytes should be an integer, got {res.get('bytes')!r}"
        )
        assert isinstance(res.get("x-rows"), int), (
            f"{at}: x-rows should be an integer, got {res.get('x-rows')!r}"
        )
        schema = _schema(pkg, res)
        assert isinstance(schema, dict) and schema.get("fields"), f"{at}: schema with fields expected"
        for j, f in enumerate(schema["fields"]):
            assert f.get("name") and f.get("type"), f"{at}: field #{j} needs a name and a type, got {f!r}"


@pytest.mark.parametrize("pkg", PACKAGES, ids=IDS)
def test_resource_files_match_hash_bytes_rows(pkg):
    """`x-rows` is the workspace's own key, which frictionless does not check; hash and bytes are checked
    here too, so the message names the file and the figures without reading the validator's report."""
    d = _descriptor(pkg)
    for i, res in enumerate(d.get("resources") or []):
        path = _local_path(pkg, res)
        if path is None:
            continue
        at = f"{pkg / 'datapackage.yaml'}: resource {res.get('name', i)!r} ({path.name})"
        assert path.is_file(), f"{at}: file not found"
        raw = path.read_bytes()
        assert res.get("hash") == "sha256:" + hashlib.sha256(raw).hexdigest(), (
            f"{at}: sha256 does not match the file"
        )
        assert res.get("bytes") == len(raw), f"{at}: bytes is {res.get('bytes')}, the file has {len(raw)}"
        if res.get("format", path.suffix.lstrip(".")) == "csv":
            text = raw.decode(res.get("encoding", "utf-8"))
            records = list(csv.reader(io.StringIO(text, newline="")))
            rows = len(records) - 1  # header row
            assert res.get("x-rows") == rows, (
                f"{at}: x-rows is {res.get('x-rows')}, the file has {rows} data rows"
            )
