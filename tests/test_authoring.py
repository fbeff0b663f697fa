"""`rk datasets new` and `rk datasets rehash` through the real command, and the example ingest mapping:
a researcher's CSV becomes a package that validates at once; an edit is validated before its hash is
recorded and the change is reported; every refusal is one `error:` line and writes nothing."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_rk, save, sha256

SURVEY = (
    "respondent,school_code,age,score,visited,answered\n"
    "R1,007,16,4.5,true,2024-03-01\nR2,012,17,,false,2024-03-02\nR3,031,16,3.0,true,2024-03-02\n"
)


def tree(folder: Path) -> dict:
    """Every file under `folder` (hidden ones too) with its bytes: what a refused command must leave alone."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(proc, expected: str) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert expected in lines[0], lines[0]
    return lines[0]


def frictionless_validate(pkg: Path):
    exe = Path(sys.executable).parent / "frictionless"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "frictionless"]
    return subprocess.run(
        [*cmd, "validate", "datapackage.yaml"],
        cwd=pkg,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=600,
    )


# datasets new ---------------------------------------------------------------------------------------


def test_new_package_validates_at_once(workspace, tmp_path):
    root, _, env = workspace
    source = tmp_path / "Careers survey 2024.csv"
    source.write_text(SURVEY)
    proc = run_rk(
        "datasets",
        "new",
        "survey",
        "--from",
        source,
        "--title",
        "Careers survey [2024]",
        cwd=root,
        env=env,
        check=0,
    )
    out = proc.stdout
    assert "3 rows, 6 fields" in out and "school_code" in out
    for item in (
        "licence:",
        "description:",
        "field descriptions:",
        "constraints:",
        "primary key:",
        "labels:",
        "kk, ru, en",
    ):
        assert item in out, item
    assert "candidates: respondent, school_code" in out and "kept as text (leading zeros" in out

    pkg = root / "datasets" / "survey"
    assert sorted(p.name for p in pkg.iterdir()) == ["datapackage.yaml", "survey.csv"]
    assert (pkg / "survey.csv").read_bytes() == source.read_bytes()
    d = yaml.safe_load((pkg / "datapackage.yaml").read_text(encoding="utf-8"))
    assert (
        d["title"] == "Careers survey [2024]" and d["licenses"][0]["name"] == "TODO" and len(d["x-todo"]) >= 8
    )
    [res] = d["resources"]
    assert (
        res["hash"] == f"sha256:{sha256(source)}"
        and res["bytes"] == source.stat().st_size
        and res["x-rows"] == 3
    )
    assert [(f["name"], f["type"]) for f in res["schema"]["fields"]] == [
        ("respondent", "string"),
        ("school_code", "string"),
        ("age", "integer"),
        ("score", "number"),
        ("visited", "boolean"),
        ("answered", "date"),
    ]

    assert "survey" in run_rk("datasets", "validate", "survey", cwd=root, env=env, check=0).stdout
    listed = run_rk("datasets", "list", cwd=root, env=env, check=0).stdout
    assert "survey" in listed and "TODO" in listed
    proc = frictionless_validate(pkg)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_new_package_from_an_excel_csv(workspace, tmp_path):
    """cp1251 with semicolons, as Excel saves CSV on Russian Windows: encoding and delimiter are declared."""
    root, _, env = workspace
    source = tmp_path / "города.csv"
    source.write_bytes("город;число;доля\r\nАлматы;1;0.5\r\nАстана;2;0.25\r\n".encode("cp1251"))
    run_rk("datasets", "new", "cities", "--from", source, cwd=root, env=env, check=0)
    pkg = root / "datasets" / "cities"
    res = yaml.safe_load((pkg / "datapackage.yaml").read_text(encoding="utf-8"))["resources"][0]
    assert (res["encoding"], res["dialect"]) == ("cp1251", {"delimiter": ";"})
    run_rk("datasets", "validate", "cities", cwd=root, env=env, check=0)
    proc = frictionless_validate(pkg)
    assert proc.returncode == 0, proc.stdout + proc.stderr


BAD_SOURCES = [
    ("missing", None, "no such file"),
    ("empty", b"", "the file is empty"),
    ("blank", b"\n\n  \n", "the file is empty"),
    ("header only", b"a,b\n", "no data rows"),
    ("ragged", b"a,b\n1,2\n3,4,5\n", "cannot be read as CSV"),
    ("repeated column", b"a,b,a\n1,2,3\n", "more than once"),
    ("unnamed column", b"a,,c\n1,2,3\n", "column 2 of the header has no name"),
    ("xlsx", b"PK\x03\x04\x14\x00\x06\x00rest of a workbook", "not CSV; save it as 'CSV UTF-8'"),
    ("xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1rest", "old Excel (XLS) file, not CSV"),
    ("binary", b"a,b\n\x00\x01\x02,\x03\n", "binary data, not CSV text"),
    ("neither utf-8 nor cp1251", b"a,b\n1,\x98\x98\n", ":2: neither UTF-8 nor cp1251 text"),
]


@pytest.mark.parametrize("kind,content,expected", BAD_SOURCES, ids=[b[0] for b in BAD_SOURCES])
def test_new_refuses_a_file_that_is_not_a_usable_csv(workspace, tmp_path, tally, kind, content, expected):
    root, _, env = workspace
    source = tmp_path / "input.csv"
    if content is not None:
        source.write_bytes(content)
    before = tree(root)
    one_error_line(run_rk("datasets", "new", "survey", "--from", source, cwd=root, env=env), expected)
    assert tree(root) == before  # nothing written, no assembly folder left behind
    tally.bad_inputs += 1


def test_new_refuses_a_folder_and_bad_names(workspace, tmp_path, tally):
    root, _, env = workspace
    source = tmp_path / "ok.csv"
    source.write_text(SURVEY)
    cases = [
        (["survey", "--from", tmp_path], "not a file"),
        (["mini", "--from", source], "datasets/mini already exists; choose another name"),
        (["Survey", "--from", source], "invalid package name 'Survey'"),
        (["../escape", "--from", source], "invalid package name '../escape'"),
        (["a b", "--from", source], "invalid package name 'a b'"),
    ]
    (root / "datasets" / "notes").mkdir()  # a folder that is not a package is not overwritten either
    before = tree(root)
    cases.append((["notes", "--from", source], "datasets/notes already exists"))
    for args, expected in cases:
        one_error_line(run_rk("datasets", "new", *args, cwd=root, env=env), expected)
        tally.bad_inputs += 1
    assert tree(root) == before and sorted(os.listdir(root / "datasets")) == ["mini", "notes"]


def test_new_refuses_an_unreadable_file(workspace, tmp_path, tally):
    root, _, env = workspace
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        source = (
            "/proc/self/mem"  # root reads any file by its permissions; this one fails on read all the same
        )
    else:
        source = tmp_path / "secret.csv"
        source.write_text(SURVEY)
        source.chmod(0)
    before = tree(root)
    one_error_line(run_rk("datasets", "new", "survey", "--from", source, cwd=root, env=env), "cannot be read")
    assert tree(root) == before
    tally.bad_inputs += 1


def test_a_column_that_is_not_a_number_late_in_the_file_is_text(workspace, tmp_path):
    """frictionless' describe samples the first rows and would call `code` an integer; the package would then
    fail its first validation. The whole file decides here."""
    root, _, env = workspace
    source = tmp_path / "late.csv"
    source.write_text("id,code\n" + "".join(f"{i},{i}\n" for i in range(1, 500)) + "500,abc\n")
    run_rk("datasets", "new", "late", "--from", source, cwd=root, env=env, check=0)
    fields = yaml.safe_load((root / "datasets" / "late" / "datapackage.yaml").read_text())["resources"][0][
        "schema"
    ]["fields"]
    assert [f["type"] for f in fields] == ["integer", "string"]
    run_rk("datasets", "validate", "late", cwd=root, env=env, check=0)


# datasets rehash ------------------------------------------------------------------------------------

PEOPLE_EDITED = (
    "person_id,institution_id,age,funding,gpa,enrolled,active\n"
    "P-001,ATK,17,paid,3.5,2024-09-01,true\n"
    "P-003,ATK,22,paid,,2022-09-01,\n"  # changed: age 21 -> 22
    "P-004,KITIG,18,state_grant,3.1,2024-09-01,true\n"  # added
    "P-005,ATK,19,paid,2.9,2023-09-01,false\n"
)  # added; P-002 removed


def descriptor_of(root: Path, package="mini") -> dict:
    return yaml.safe_load((root / "datasets" / package / "datapackage.yaml").read_text(encoding="utf-8"))


def people_entry(root: Path) -> dict:
    return next(r for r in descriptor_of(root)["resources"] if r["name"] == "people")


def test_rehash_records_an_edit_and_says_what_changed(workspace):
    root, _, env = workspace
    run_rk(
        "datasets", "validate", "mini", cwd=root, env=env, check=0
    )  # the published version, as the loader keeps it
    people = root / "datasets" / "mini" / "people.csv"
    people.write_text(PEOPLE_EDITED)
    stale = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)
    assert stale.returncode == 1 and "hash" in stale.stderr  # the loader refuses an unrecorded edit

    proc = run_rk("datasets", "rehash", "mini", "people", cwd=root, env=env, check=0)
    assert "by primary key person_id: 2 row(s) added, 1 removed, 1 changed" in proc.stdout, proc.stdout
    assert "rows 3 -> 4" in proc.stdout
    entry = people_entry(root)
    assert (
        entry["hash"] == f"sha256:{sha256(people)}"
        and entry["bytes"] == people.stat().st_size
        and entry["x-rows"] == 4
    )
    run_rk("datasets", "validate", "mini", cwd=root, env=env, check=0)
    assert "unchanged" in run_rk("datasets", "rehash", "mini", "people", cwd=root, env=env, check=0).stdout


def test_rehash_without_a_primary_key_counts_whole_rows(workspace):
    root, d, env = workspace
    del next(r for r in d["resources"] if r["name"] == "people")["schema"]["primaryKey"]
    save(root / "datasets" / "mini", d)
    run_rk("datasets", "validate", "mini", cwd=root, env=env, check=0)
    (root / "datasets" / "mini" / "people.csv").write_text(PEOPLE_EDITED)
    proc = run_rk("datasets", "rehash", "mini", cwd=root, env=env, check=0)
    assert "by whole rows (no primary key): 3 row(s) added, 2 removed" in proc.stdout, proc.stdout
    assert "mini/institutions (institutions.csv): unchanged" in proc.stdout
    assert people_entry(root)["x-rows"] == 4


def test_rehash_without_the_previous_content_still_records_the_edit(workspace):
    """Nothing cached and no git: the edit is validated and recorded; what changed is said to be unknown."""
    root, _, env = workspace
    (root / "datasets" / "mini" / "people.csv").write_text(PEOPLE_EDITED)
    proc = run_rk("datasets", "rehash", "mini", "people", cwd=root, env=env, check=0)
    assert "rows 3 -> 4" in proc.stdout and "what changed is not known" in proc.stdout
    run_rk("datasets", "validate", "mini", cwd=root, env=env, check=0)


def test_rehash_finds_the_previous_content_in_git(workspace):
    root, _, env = workspace
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "datasets"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "data"], cwd=root, check=True)
    (root / "datasets" / "mini" / "people.csv").write_text(PEOPLE_EDITED)
    proc = run_rk("datasets", "rehash", "mini", "people", cwd=root, env=env, check=0)
    assert "2 row(s) added, 1 removed, 1 changed" in proc.stdout, proc.stdout


def test_rehash_refuses_an_invalid_edit_and_changes_nothing(workspace, tally):
    root, _, env = workspace
    people = root / "datasets" / "mini" / "people.csv"
    for text, expected in [
        (PEOPLE_EDITED + "P-006,ATK,9,paid,3.0,2024-09-01,true\n", "people.csv:6 column 'age'"),
        (PEOPLE_EDITED + "P-006,XYZ,19,paid,3.0,2024-09-01,true\n", "foreign key"),
        (PEOPLE_EDITED + "P-001,ATK,19,paid,3.0,2024-09-01,true\n", "unique"),
    ]:
        people.write_text(text)
        before = tree(root / "datasets")
        proc = run_rk("datasets", "rehash", "mini", "people", cwd=root, env=env)
        assert proc.returncode == 1 and proc.stderr.startswith("error: ") and expected in proc.stderr, (
            proc.stderr
        )
        assert "Traceback" not in proc.stderr
        assert tree(root / "datasets") == before
        tally.bad_inputs += 1


def test_rehash_unknown_names_suggest_the_right_one(workspace, tally):
    root, _, env = workspace
    before = tree(root)
    one_error_line(run_rk("datasets", "rehash", "minni", cwd=root, env=env), "unknown package 'minni'")
    assert "did you mean 'mini'" in run_rk("datasets", "rehash", "minni", cwd=root, env=env).stderr
    one_error_line(run_rk("datasets", "rehash", "mini", "peple", cwd=root, env=env), "did you mean 'people'")
    (root / "datasets" / "mini" / "people.csv").unlink()
    one_error_line(
        run_rk("datasets", "rehash", "mini", "people", cwd=root, env=env),
        "people.csv: the file of mini/people does not exist",
    )
    tally.bad_inputs += 3


# the example mapping ---------------------------------------------------------------------------------


def test_example_export_and_mapping_ingest(tmp_path, monkeypatch):
    from research_kit.identifiers import iin_valid
    from test_ingest import make_workspace

    export, mapping = ROOT / "examples" / "kitig_export.csv", ROOT / "examples" / "kitig_mapping.yaml"
    rows = export.read_text(encoding="utf-8-sig").splitlines()[1:]
    assert rows and all(iin_valid(r.split(";")[1]) for r in rows)  # synthetic, but valid by the IIN's rules
    root, pkg, _ = make_workspace(tmp_path, monkeypatch)
    before = descriptor_of(root, "consortium")
    students_before = next(r for r in before["resources"] if r["name"] == "students")["x-rows"]
    proc = run_rk(
        "ingest",
        export,
        "--package",
        "consortium",
        "--resource",
        "students",
        "--institution",
        "KITIG",
        "--mapping",
        mapping,
        cwd=root,
        check=0,
    )
    assert (
        f"{len(rows)} row(s) added, 0 replaced, 0 skipped; {len(rows)} IIN(s) pseudonymized" in proc.stdout
    ), proc.stdout
    students = next(r for r in descriptor_of(root, "consortium")["resources"] if r["name"] == "students")
    assert students["x-rows"] == students_before + len(rows)
    run_rk("datasets", "validate", "consortium", cwd=root, check=0)
    written = (pkg / "students.csv").read_text()
    assert all(r.split(";")[1] not in written for r in rows)


def test_the_examples_folder_is_not_a_data_package():
    assert not (ROOT / "datasets" / "examples").exists()
    assert not (ROOT / "examples" / "datapackage.yaml").exists()
