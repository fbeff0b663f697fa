"""Bad data gets a clear error naming package, resource, file, column, line and value; `rk` exits
non-zero without a traceback; and nothing is cached for the invalid resource."""

import pytest
import yaml

from conftest import INSTITUTIONS, PEOPLE, run_rk, save, write_resource

PKG = ("datasets", "mini")


def people_with(old: str, new: str) -> str:
    assert old in PEOPLE
    return PEOPLE.replace(old, new, 1)


def header_with(new_header: str) -> str:
    lines = PEOPLE.splitlines(keepends=True)
    return new_header + "".join(lines[1:])


# (case id, new people.csv text, fragments the error message must contain)
DATA_FAULTS = [
    (
        "wrong-type",
        people_with("P-002,KITIG,19", "P-002,KITIG,nineteen"),
        ["people.csv:3", "'age'", "'nineteen'", "not a valid integer"],
    ),
    ("null-required", people_with("P-002,KITIG,19", "P-002,KITIG,"), ["people.csv:3", "'age'", "required"]),
    (
        "below-minimum",
        people_with("P-002,KITIG,19", "P-002,KITIG,12"),
        ["people.csv:3", "'age'", "12", "minimum 14"],
    ),
    ("above-maximum", people_with("paid,3.5", "paid,4.5"), ["people.csv:2", "'gpa'", "4.5", "maximum 4"]),
    ("enum", people_with("state_grant", "grant"), ["people.csv:3", "'funding'", "'grant'", "enum"]),
    ("pattern", people_with("P-003", "X-3"), ["people.csv:4", "'person_id'", "'X-3'", "pattern"]),
    (
        "duplicate-primary-key",
        people_with("P-003", "P-001"),
        ["people.csv:2", "people.csv:4", "'person_id'", "more than once"],
    ),
    (
        "dangling-foreign-key",
        people_with("P-002,KITIG", "P-002,ZZZ"),
        ["people.csv:3", "'ZZZ'", "foreign key", "institutions.institution_id"],
    ),
    (
        "bad-date",
        people_with("2023-09-01", "2023-02-30"),
        ["people.csv:3", "'enrolled'", "'2023-02-30'", "not a valid date"],
    ),
    (
        "bad-boolean",
        people_with("2024-09-01,true", "2024-09-01,yes"),
        ["people.csv:2", "'active'", "'yes'", "boolean"],
    ),
    (
        "missing-column",
        header_with("person_id,institution_id,age,funding,gpa,enrolled,activ\n"),
        ["people.csv:1", "'active'", "missing from the file", "'activ'", "not declared"],
    ),
    (
        "extra-value",
        people_with("P-003,ATK,21,paid,,2022-09-01,", "P-003,ATK,21,paid,,2022-09-01,,x"),
        ["people.csv:4", "8 values", "header has 7"],
    ),
    ("empty-file", "", ["people.csv", "empty"]),
]


def assert_failed_cleanly(proc, fragments, root):
    from conftest import TALLY

    TALLY.bad_inputs += 1
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, f"{fragment!r} not in:\n{proc.stderr}"
    cached = list((root / ".cache").rglob("people-*.parquet"))
    assert cached == [], f"invalid data was cached: {cached}"


@pytest.mark.parametrize("case,text,fragments", DATA_FAULTS, ids=[c[0] for c in DATA_FAULTS])
def test_bad_data_is_reported(workspace, case, text, fragments):
    root, d, env = workspace
    write_resource(root.joinpath(*PKG), d, "people", text)
    save(root.joinpath(*PKG), d)
    proc = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)
    assert_failed_cleanly(proc, ["mini/people", *fragments], root)


def test_valid_package_loads_and_is_cached(workspace):
    root, d, env = workspace
    proc = run_rk("datasets", "validate", "mini", cwd=root, env=env, check=0)
    assert "FAILED" not in proc.stdout
    assert len(list((root / ".cache").rglob("people-*.parquet"))) == 1


def test_hash_mismatch(workspace):
    root, d, env = workspace
    (root.joinpath(*PKG) / "people.csv").write_text(people_with("3.5", "3.4"))  # changed without a new hash
    proc = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)
    assert_failed_cleanly(proc, ["hash", "sha256", "people.csv", "datapackage.yaml"], root)


def test_wrong_encoding(workspace):
    root, d, env = workspace
    # a cp1251 file, as Excel writes it on Russian Windows, declared UTF-8
    cp1251 = (PEOPLE + "P-004,ATK,18,paid,,2024-09-01,Иванова\n").encode("cp1251")
    write_resource(root.joinpath(*PKG), d, "people", cp1251)
    save(root.joinpath(*PKG), d)
    proc = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)
    assert_failed_cleanly(proc, ["people.csv:5", "not valid utf-8", "cp1251"], root)


def test_file_changing_while_read(workspace):
    # a file whose content never matches its size, like one still being written: /proc reports size 0
    root, d, env = workspace
    people = root.joinpath(*PKG) / "people.csv"
    people.unlink()
    people.symlink_to("/proc/self/status")
    proc = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)
    assert_failed_cleanly(proc, ["people.csv", "kept changing while it was read"], root)


def test_missing_resource_file(workspace):
    root, d, env = workspace
    (root.joinpath(*PKG) / "people.csv").unlink()
    proc = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)
    assert_failed_cleanly(proc, ["people.csv", "does not exist"], root)


def test_missing_descriptor(workspace):
    root, d, env = workspace
    (root.joinpath(*PKG) / "datapackage.yaml").unlink()
    proc = run_rk("datasets", "validate", "mini", cwd=root, env=env)
    assert_failed_cleanly(proc, ["mini", "has no datapackage.yaml"], root)


def test_malformed_yaml(workspace):
    root, d, env = workspace
    (root.joinpath(*PKG) / "datapackage.yaml").write_text("name: mini\nresources: [\n  - {name: people\n")
    proc = run_rk("datasets", "validate", "mini", cwd=root, env=env)
    assert_failed_cleanly(proc, ["datapackage.yaml", "malformed YAML"], root)


@pytest.mark.parametrize(
    "field_change,fragment",
    [
        ({"type": "geopoint"}, "type 'geopoint'"),
        ({"constraints": {"between": [1, 2]}}, "constraint 'between'"),
    ],
)
def test_unsupported_schema(workspace, field_change, fragment):
    root, d, env = workspace
    d["resources"][1]["schema"]["fields"][2].update(field_change)
    save(root.joinpath(*PKG), d)
    proc = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)
    assert_failed_cleanly(proc, ["datapackage.yaml", "'age'", fragment], root)


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["datasets", "validate", "minni"], ["unknown package 'minni'", "did you mean 'mini'"]),
        (["datasets", "validate", "mini", "peple"], ["unknown resource 'peple'", "did you mean 'people'"]),
        (["datasets", "show", "minni"], ["did you mean 'mini'"]),
        (["datasets", "show", "../mini"], ["invalid package name '../mini'"]),
    ],
)
def test_unknown_names(workspace, args, fragments):
    root, d, env = workspace
    proc = run_rk(*args, cwd=root, env=env)
    assert_failed_cleanly(proc, fragments, root)


def test_many_failures_are_summarised(workspace):
    root, d, env = workspace
    rows = "".join(f"P-{i:03d},ATK,{i % 10},paid,,2024-09-01,true\n" for i in range(100))
    write_resource(root.joinpath(*PKG), d, "people", PEOPLE.splitlines(keepends=True)[0] + rows)
    save(root.joinpath(*PKG), d)
    proc = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)
    assert_failed_cleanly(proc, ["100 validation failures", "... and 80 more"], root)


def test_restricted_resource_needs_its_owner(workspace):
    root, d, env = workspace
    d["resources"][1].update({"x-access": "restricted", "x-owner": "ATK"})
    save(root.joinpath(*PKG), d)
    proc = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)
    assert_failed_cleanly(
        proc,
        ["mini/people is restricted to its owner ATK", "no institution", "RK_WORKSPACE_INSTITUTION"],
        root,
    )
    proc = run_rk(
        "datasets", "validate", "mini", "people", cwd=root, env={**env, "RK_WORKSPACE_INSTITUTION": "KITIG"}
    )
    assert_failed_cleanly(proc, ["restricted to its owner ATK", "name KITIG"], root)
    run_rk(
        "datasets",
        "validate",
        "mini",
        "people",
        cwd=root,
        env={**env, "RK_WORKSPACE_INSTITUTION": "ATK"},
        check=0,
    )
    d["resources"][1]["x-access"] = "secret"
    save(root.joinpath(*PKG), d)
    proc = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)
    assert proc.returncode == 1 and "x-access 'secret'" in proc.stderr


@pytest.mark.parametrize("level", ["resource", "package"])
def test_validate_skips_restricted_resources_of_others(workspace, level):
    # `make run` runs `rk datasets validate` for every researcher: another institution's restricted
    # resource is skipped with a note, not a failure; its owner validates it
    root, d, env = workspace
    if level == "resource":
        d["resources"][1].update({"x-access": "restricted", "x-owner": "ATK"})
    else:  # said once for the package: applies to every resource that does not set its own
        d.update({"x-access": "restricted", "x-owner": "ATK"})
        d["resources"][0]["x-access"] = "consortium"
    save(root.joinpath(*PKG), d)
    for args in [(), ("mini",)]:
        proc = run_rk(
            "datasets", "validate", *args, cwd=root, env={**env, "RK_WORKSPACE_INSTITUTION": "KITIG"}
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "mini/people skipped: restricted to ATK" in proc.stdout and "error" not in proc.stderr
        assert not list((root / ".cache").rglob("people-*.parquet"))  # not read at all
    proc = run_rk(
        "datasets", "validate", "mini", "people", cwd=root, env={**env, "RK_WORKSPACE_INSTITUTION": "KITIG"}
    )
    assert_failed_cleanly(proc, ["mini/people is restricted to its owner ATK", "name KITIG"], root)
    proc = run_rk("datasets", "validate", cwd=root, env={**env, "RK_WORKSPACE_INSTITUTION": "ATK"}, check=0)
    assert "skipped" not in proc.stdout and "3" in proc.stdout
    proc = run_rk("doctor", cwd=root, env={**env, "RK_WORKSPACE_INSTITUTION": "KITIG"})
    assert "1 resources valid, 1 restricted to other institutions skipped" in proc.stdout, proc.stdout


def test_validate_still_fails_on_what_it_may_check(workspace):
    root, d, env = workspace
    d["resources"][1].update({"x-access": "restricted", "x-owner": "ATK"})
    write_resource(root.joinpath(*PKG), d, "institutions", INSTITUTIONS.replace("ATK,", "atk,"))
    save(root.joinpath(*PKG), d)
    proc = run_rk("datasets", "validate", cwd=root, env={**env, "RK_WORKSPACE_INSTITUTION": "KITIG"})
    assert proc.returncode == 1 and "institutions.csv:2" in proc.stderr and "pattern" in proc.stderr
    assert "mini/people skipped: restricted to ATK" in proc.stdout
