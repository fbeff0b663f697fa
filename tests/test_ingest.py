"""`rk ingest` in process: a college's export becomes pseudonymous, validated rows of a consortium
resource; raw IINs and names never reach any file; a failing ingest writes nothing."""

import csv
import io
import shutil

import openpyxl
import pytest
import yaml

from conftest import ROOT, run_rk, sha256
from research_kit import identifiers
from research_kit.data import ingest as ing
from research_kit.data.descriptor import write_descriptor
from research_kit.errors import AccessDenied, DataValidationError, RKError, SettingsError

KEY = "test-consortium-key-0123456789"
MAPPING = """\
identifier: ИИН
drop: [ФИО, Телефон, Email]
columns:
  Пол: gender
  Язык: language
  Специальность: program_id
  Год поступления: cohort
  Год рождения: birth_year
  База: entry_basis
  Финансирование: funding
  Регион: region
values:
  gender: {ж: female, жен: female, м: male, муж: male}
  language: {қазақ: kazakh, каз: kazakh, казахский: kazakh, русский: russian, рус: russian}
  entry_basis: {9 классов: grade_9, 11 классов: grade_11}
  funding: {грант: state_grant, платное: paid}
  region: {г. Алматы: almaty_city, Алматинская область: almaty_region}
"""
HEADER = [
    "ФИО",
    "ИИН",
    "Пол",
    "Язык",
    "Телефон",
    "Email",
    "Специальность",
    "Год поступления",
    "Год рождения",
    "База",
    "Финансирование",
    "Регион",
]


def make_iin(yymmdd: str, century_sex: int, serial: int = 1) -> str:
    while True:
        first11 = f"{yymmdd}{century_sex}{serial:04d}"
        check = identifiers.iin_check_digit(first11)
        if check is not None:
            return first11 + str(check)
        serial += 1


def student(
    name,
    iin,
    gender="ж",
    language="казахский",
    program="KITIG-01",
    phone="+7 701 555 0101",
    email="someone@example.kz",
):
    return [
        name,
        iin,
        gender,
        language,
        phone,
        email,
        program,
        "2024",
        "20" + iin[:2],
        "9 классов",
        "грант",
        "г. Алматы",
    ]


GOOD = [
    student("Сейткали Дана", make_iin("060415", 6), email="d.seitkali@example.kz"),
    student("Петров Олег", make_iin("070921", 5), "м", "русский", phone="+7 701 555 0102"),
    student("Омаров Ерлан", make_iin("061130", 5), "муж", "каз", phone="+7 701 555 0103"),
]
IINS = [r[1] for r in GOOD]
NAMES = [r[0] for r in GOOD] + ["d.seitkali@example.kz", "+7 701 555 0102"]


def bad_check_digit(iin: str) -> str:
    return iin[:11] + str((int(iin[11]) + 1) % 10)


def write_export(folder, rows, kind="cp1251", name="kitig_export"):
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "xlsx":
        path = folder / f"{name}.xlsx"
        wb = openpyxl.Workbook()
        wb.active.append(HEADER)
        for r in rows:  # the IIN as a number, as most college spreadsheets hold it
            wb.active.append([int(v) if i == 1 and v.isdigit() else v for i, v in enumerate(r)])
        wb.save(path)
        return path
    path = folder / f"{name}.csv"
    text = "\r\n".join(";".join(r) for r in [HEADER, *rows]) + "\r\n"
    path.write_bytes(text.encode("cp1251" if kind == "cp1251" else "utf-8"))
    return path


def make_workspace(tmp_path, monkeypatch, full=False):
    """A workspace with a copy of the consortium package (`full`) or of its institutions, programs and
    the first 40 students; its own cache and build folders; RK_ROOT and the pseudonym key set."""
    root = tmp_path / "ws"
    src, pkg = ROOT / "datasets" / "consortium", root / "datasets" / "consortium"
    if full:
        shutil.copytree(src, pkg)
    else:
        pkg.mkdir(parents=True)
        d = yaml.safe_load((src / "datapackage.yaml").read_text(encoding="utf-8"))
        d["resources"] = [r for r in d["resources"] if r["name"] in ("institutions", "programs", "students")]
        for r in d["resources"]:
            lines = (src / r["path"]).read_bytes().splitlines(keepends=True)
            (pkg / r["path"]).write_bytes(b"".join(lines[:41]))
            r.update(
                hash=f"sha256:{sha256(pkg / r['path'])}",
                bytes=(pkg / r["path"]).stat().st_size,
                **{"x-rows": len(lines[:41]) - 1},
            )
        write_descriptor(pkg / "datapackage.yaml", d)
    (root / "settings.ini").write_text("[workspace]\ndata = datasets\ncache = .cache\nbuild = _build\n")
    (root / "_build").mkdir()
    for var in [v for v in __import__("os").environ if v.startswith("RK_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("RK_ROOT", str(root))
    monkeypatch.setenv("RK_PSEUDONYM_KEY", KEY)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING, encoding="utf-8")
    return root, pkg, mapping


@pytest.fixture
def ws(tmp_path, monkeypatch):
    return make_workspace(tmp_path, monkeypatch)


def snapshot(pkg):
    return {p.name: p.read_bytes() for p in pkg.iterdir() if p.is_file()}


def run(export, mapping, **kw):
    return ing.ingest(
        export,
        package="consortium",
        resource="students",
        institution=kw.pop("institution", "KITIG"),
        mapping=mapping,
        **kw,
    )


def load_students():
    from research_kit.data.load import load, wait_for_cache_writes

    df = load("consortium", "students")
    wait_for_cache_writes()
    return df


# (a) raw identifiers never reach disk ------------------------------------------------------------


def iin_forms(iin: str) -> set[bytes]:
    """Every way an IIN may be written: whole, as a number cell stores it (leading zeros lost), split
    into groups by spaces or dashes, and as the 64-bit integer a binary file (Parquet) would hold."""
    forms = {iin[k:] for k in range(4) if set(iin[:k]) <= {"0"}}
    forms |= {f"{iin[:6]}{sep}{iin[6:]}" for sep in (" ", "-")} | {" ".join((iin[:4], iin[4:8], iin[8:]))}
    return {f.encode(enc) for f in forms for enc in ("utf-8", "utf-16-le")} | {int(iin).to_bytes(8, "little")}


def assert_no_secrets(data: bytes, iins, names, where):
    """`data` holds none of the IINs in any form (also as `find_iins` finds them in its text) and none of the names."""
    needles = {n.encode(enc) for n in names for enc in ("utf-8", "cp1251", "utf-16-le")}
    for iin in iins:
        needles |= iin_forms(iin)
    leaked = [n for n in needles if n in data]
    assert not leaked, f"{where} holds a raw identifier or name"
    for enc in ("utf-8", "utf-16-le"):
        found = set(identifiers.find_iins(data.decode(enc, errors="ignore"), short_forms=True)) & set(iins)
        assert not found, f"{where} holds an IIN"


@pytest.mark.parametrize("kind", ["cp1251", "xlsx"])
def test_no_raw_identifier_reaches_any_file(ws, tmp_path, kind):
    root, pkg, mapping = ws
    rows = GOOD + [
        student("Нурланова Айжан", bad_check_digit(make_iin("051212", 6)), email="a.nurlanova@example.kz")
    ]
    export = write_export(tmp_path / "export", rows, kind)
    result = run(export, mapping, skip_invalid=True)
    assert (result.rows_added, result.rows_skipped, result.pseudonymized) == (3, 1, 3)
    students = load_students()  # so the Parquet cache and the hash memo are written too
    key = KEY.encode()
    assert set(students.student_id) >= {ing.pseudonym(i, key) for i in IINS}
    assert (root / ".cache").is_dir() and any((root / ".cache").rglob("*.parquet"))
    files = [p for p in [*root.rglob("*"), *export.parent.rglob("*")] if p.is_file() and p != export]
    assert result.report_path in files and any(p.suffix == ".yaml" for p in files)
    for p in files:
        assert_no_secrets(
            p.read_bytes(), IINS + [rows[-1][1]], NAMES + ["Нурланова Айжан", "a.nurlanova@example.kz"], p
        )


# (b) an invalid IIN: a clear error, nothing written -----------------------------------------------


def test_invalid_iin_is_refused_and_nothing_written(ws, tmp_path):
    root, pkg, mapping = ws
    before = snapshot(pkg)
    wrong = bad_check_digit(GOOD[1][1])
    export = write_export(tmp_path / "export", [GOOD[0], student("Петров Олег", wrong, "м"), GOOD[2]])
    with pytest.raises(DataValidationError) as e:
        run(export, mapping)
    msg = str(e.value)
    assert "kitig_export.csv:3" in msg and "invalid IIN (check digit)" in msg and "'ИИН'" in msg
    assert wrong not in msg and all(i not in msg for i in IINS) and "Петров" not in msg
    assert [(f.file, f.line) for f in e.value.failures] == [("kitig_export.csv", 3)]
    assert snapshot(pkg) == before
    assert sorted(p.name for p in export.parent.iterdir()) == [export.name]
    for bad, reason in [
        ("12345", "not 12 digits"),
        ("061331" + GOOD[0][1][6:], "birth date"),
        ("", "missing"),
    ]:
        export = write_export(tmp_path / "export", [student("X", bad)])
        with pytest.raises(DataValidationError, match=reason):
            run(export, mapping)
    assert snapshot(pkg) == before


# (c) a schema failure: line and field named, nothing written --------------------------------------


def test_schema_failure_names_line_and_field(ws, tmp_path):
    root, pkg, mapping = ws
    before = snapshot(pkg)
    rows = [
        GOOD[0],
        GOOD[1],
        student("Омаров Ерлан", GOOD[2][1], "другой"),
        student("Ким Алия", make_iin("050505", 6), program="KITIG-99"),
    ]
    export = write_export(tmp_path / "export", rows, "utf8")
    with pytest.raises(DataValidationError) as e:
        run(export, mapping)
    msg = str(e.value)
    assert (
        "kitig_export.csv:4 column 'gender': value <text of 6 characters, letters only>: enum" in msg
        and "другой" not in msg
    )
    assert "kitig_export.csv:5 column 'program_id'" in msg and "foreign key" in msg
    assert all(i not in msg for i in IINS)
    assert snapshot(pkg) == before


# (d) --skip-invalid: good rows land, the report lists the rest -------------------------------------


def test_skip_invalid_writes_good_rows_and_a_report(ws, tmp_path):
    root, pkg, mapping = ws
    wrong = bad_check_digit(make_iin("051212", 6))
    rows = [
        GOOD[0],
        student("Нурланова Айжан", wrong),
        GOOD[1],
        student("Омаров Ерлан", GOOD[2][1], "другой"),
    ]
    export = write_export(tmp_path / "export", rows)
    result = run(export, mapping, skip_invalid=True)
    assert (result.rows_added, result.rows_replaced, result.rows_skipped) == (2, 0, 2)
    assert result.report_path == export.with_name("kitig_export.csv.skipped.csv")
    report = result.report_path.read_text(encoding="utf-8-sig")
    assert list(csv.reader(io.StringIO(report))) == [
        ["line", "field", "reason", "value (described)"],
        ["3", "ИИН", "invalid IIN (check digit)", "text of 12 characters, digits only"],
        ["5", "gender", "enum: not one of female, male", "text of 6 characters, letters only"],
    ]
    assert (
        wrong not in report
        and "Нурланова" not in report
        and all(i not in report for i in IINS)
        and "другой" not in report
    )
    ids = set(load_students().student_id)
    key = KEY.encode()
    assert {ing.pseudonym(GOOD[0][1], key), ing.pseudonym(GOOD[1][1], key)} <= ids
    assert ing.pseudonym(GOOD[2][1], key) not in ids
    custom = tmp_path / "reports" / "skipped.csv"
    custom.parent.mkdir()
    result = run(
        write_export(tmp_path / "export", [GOOD[2], student("X", wrong)], name="second"),
        mapping,
        skip_invalid=True,
        report_path=custom,
    )
    assert result.report_path == custom and custom.is_file() and result.rows_added == 1


# (e) replace mode replaces only this institution's rows ---------------------------------------------


def test_replace_replaces_only_this_institutions_rows(ws, tmp_path):
    root, pkg, mapping = ws
    original = (pkg / "students.csv").read_text().splitlines()
    kitig_before = [l for l in original[1:] if l.split(",")[1] == "KITIG"]
    others = [l for l in original[1:] if l.split(",")[1] != "KITIG"]
    assert kitig_before and others
    run(write_export(tmp_path / "export", GOOD), mapping)
    result = run(write_export(tmp_path / "export", GOOD[:2], name="again"), mapping, mode="replace")
    assert (result.rows_added, result.rows_replaced) == (2, len(kitig_before) + 3)
    lines = (pkg / "students.csv").read_text().splitlines()
    assert (
        lines[0] == original[0] and lines[1 : len(others) + 1] == others
    )  # other institutions: untouched, in order
    students = load_students()
    key = KEY.encode()
    assert sorted(students.loc[students.institution_id == "KITIG", "student_id"]) == sorted(
        ing.pseudonym(i, key) for i in IINS[:2]
    )
    assert len(students) == len(others) + 2


def test_replace_refuses_to_strand_rows_of_other_resources(tmp_path, monkeypatch):
    root, pkg, mapping = make_workspace(tmp_path, monkeypatch, full=True)
    before = snapshot(pkg)
    with pytest.raises(RKError, match=r"consortium/(terms|internships|outcomes) referring to"):
        run(write_export(tmp_path / "export", GOOD), mapping, mode="replace")
    assert snapshot(pkg) == before
    assert run(write_export(tmp_path / "export", GOOD), mapping).rows_added == 3  # appending is fine
    assert len(load_students()) == 20_003


# (f) no pseudonym key: a clear error, nothing written ---------------------------------------------


@pytest.mark.parametrize("value", [None, "too-short"])
def test_missing_or_short_key_is_refused(ws, tmp_path, monkeypatch, value):
    root, pkg, mapping = ws
    before = snapshot(pkg)
    if value is None:
        monkeypatch.delenv("RK_PSEUDONYM_KEY")
    else:
        monkeypatch.setenv("RK_PSEUDONYM_KEY", value)
    export = write_export(tmp_path / "export", GOOD)
    with pytest.raises(SettingsError, match="RK_PSEUDONYM_KEY"):
        run(export, mapping)
    assert snapshot(pkg) == before and sorted(export.parent.iterdir()) == [export]


# (g) an unmapped source column ------------------------------------------------------------------


def test_unmapped_column_is_named(ws, tmp_path):
    root, pkg, mapping = ws
    before = snapshot(pkg)
    mapping.write_text(
        MAPPING.replace("drop: [ФИО, Телефон, Email]", "drop: [ФИО, Телефон]"), encoding="utf-8"
    )
    with pytest.raises(RKError) as e:
        run(write_export(tmp_path / "export", GOOD), mapping)
    assert "'Email'" in str(e.value) and "neither mapped" in str(e.value) and "mapping.yaml" in str(e.value)
    assert snapshot(pkg) == before


def test_mapping_mistakes_are_named(ws, tmp_path):
    root, pkg, mapping = ws
    export = write_export(tmp_path / "export", GOOD)
    base = yaml.safe_load(MAPPING)
    for change, expected in [
        ({"identifier": "IIN"}, "identifier column 'IIN'"),
        ({"columns": {**base["columns"], "Пол": "sex"}}, "unknown field 'sex'"),
        ({"columns": {**base["columns"], "ИИН": "program_id"}}, "identifier column 'ИИН' must not"),
        ({"colums": {}}, "did you mean 'columns'"),
        ({"constants": {"student_id": "S-00000000"}}, "'student_id'"),
    ]:
        with pytest.raises(RKError, match=expected):
            run(export, {**base, **change})


def test_mapping_file_with_an_alias_bomb_or_bad_yaml_is_named(ws, tmp_path, tally):
    """A mapping file goes through the workspace's one YAML reader: aliases that expand without end are
    refused before they are built, malformed YAML names the file; nothing is written either way."""
    root, pkg, mapping = ws
    export = write_export(tmp_path / "export", GOOD)
    before = {p: p.read_bytes() for p in pkg.iterdir()}
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")
    )
    for text, expected in [(bomb, "aliases expand"), ("identifier: [ИИН\n", "malformed YAML")]:
        tally.bad_inputs += 1
        bad = tmp_path / "bad-mapping.yaml"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(RKError, match=expected) as e:
            run(export, bad)
        assert str(bad) in str(e.value) and len(str(e.value)) < 1000
    assert {p: p.read_bytes() for p in pkg.iterdir()} == before


# (h) one student, one code, at every institution ------------------------------------------------


def test_same_iin_same_code_and_one_row_per_student(ws, tmp_path):
    root, pkg, mapping = ws
    key = KEY.encode()
    assert ing.pseudonym(IINS[0], key) == ing.pseudonym(IINS[0], KEY.encode())  # two calls, e.g. two colleges
    run(write_export(tmp_path / "export", GOOD[:1]), mapping)
    before = snapshot(pkg)
    other = [student("Сейткали Дана", IINS[0], program="ATK-01")]
    with pytest.raises(
        DataValidationError, match="already in students.csv"
    ):  # one student is one row of students
        run(write_export(tmp_path / "export", other, name="atk"), mapping, institution="ATK")
    assert snapshot(pkg) == before


def test_pseudonym_collision_is_refused(ws, tmp_path, monkeypatch):
    root, pkg, mapping = ws
    before = snapshot(pkg)
    monkeypatch.setattr(ing, "pseudonym", lambda iin, key: "S-0000BEEF")
    with pytest.raises(RKError, match=r"lines 2 and 3 hold different IINs with the same pseudonym") as e:
        run(write_export(tmp_path / "export", GOOD), mapping)
    assert all(i not in str(e.value) for i in IINS)
    assert snapshot(pkg) == before


def test_unknown_institution(ws, tmp_path):
    root, pkg, mapping = ws
    with pytest.raises(RKError, match="did you mean 'KITIG'"):
        run(write_export(tmp_path / "export", GOOD), mapping, institution="KITlG")


# a crash between the data file and the descriptor ------------------------------------------------


def test_crash_between_data_and_descriptor_is_detected_and_recoverable(ws, tmp_path, monkeypatch):
    root, pkg, mapping = ws
    published = (pkg / "students.csv").read_bytes()
    export = write_export(tmp_path / "export", GOOD)

    def crash(*a, **k):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr("research_kit.data.descriptor.write_descriptor", crash)
    with pytest.raises(KeyboardInterrupt):
        run(export, mapping)
    monkeypatch.undo()
    monkeypatch.setenv("RK_ROOT", str(root))
    monkeypatch.setenv("RK_PSEUDONYM_KEY", KEY)
    with pytest.raises(DataValidationError, match="hash"):  # the loader refuses the mismatched pair
        load_students()
    with pytest.raises(RKError, match="restore the published file"):  # and so does the ingest
        run(export, mapping)
    (pkg / "students.csv").write_bytes(published)  # recovery: restore, then run the same ingest again
    assert run(export, mapping).rows_added == 3
    assert len(load_students()) == 43
    assert not [p for p in pkg.iterdir() if p.name.endswith(".tmp")]


def test_root_argument_points_at_another_data_root(ws, tmp_path, monkeypatch):
    """`root=` is handed to the data layer: the process's environment (which other threads read) never changes."""
    import os
    from research_kit.data import descriptor

    root, pkg, mapping = ws
    monkeypatch.setenv("RK_WORKSPACE_DATA", str(tmp_path / "elsewhere"))
    seen, write = [], descriptor.write_descriptor

    def watching(*args, **kw):  # the ingest's last step: what did the environment say while it ran?
        seen.append(os.environ["RK_WORKSPACE_DATA"])
        return write(*args, **kw)

    monkeypatch.setattr(descriptor, "write_descriptor", watching)
    result = run(write_export(tmp_path / "export", GOOD), mapping, root=str(pkg.parent))
    assert result.rows_added == 3 and result.rows_total == 43
    assert seen == [str(tmp_path / "elsewhere")]
    assert os.environ["RK_WORKSPACE_DATA"] == str(tmp_path / "elsewhere")


# the command line -------------------------------------------------------------------------------


def test_rk_ingest_command(ws, tmp_path, monkeypatch, tally):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root, pkg, mapping = ws
    good = student("Айгерим Нурланова", make_iin("050312", 6, 7))
    export = write_export(tmp_path / "exports", [good])
    rk = Path(sys.executable).parent / "rk"
    args = [
        str(rk),
        "ingest",
        str(export),
        "--package",
        "consortium",
        "--resource",
        "students",
        "--institution",
        "KITIG",
        "--mapping",
        str(mapping),
    ]
    env = {**os.environ}
    no_key = {k: v for k, v in env.items() if k != "RK_PSEUDONYM_KEY"}
    before = snapshot(pkg)
    proc = subprocess.run(args, cwd=root, env=no_key, capture_output=True, text=True)
    tally.bad_inputs += 1
    assert proc.returncode == 1 and "RK_PSEUDONYM_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(pkg) == before
    proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "1" in proc.stdout and snapshot(pkg) != before


# values of the export are described, never echoed ------------------------------------------------

SHIFTED_PARENT = make_iin("750321", 4, 17)  # not a student of the export: any IIN counts
SHIFTED = [
    ("Ким Алия", make_iin("050505", 6)),
    ("Ли Марат", make_iin("040404", 5)),
    ("Пак Ирина", make_iin("030303", 6)),
]


def shifted_export(folder, kind="cp1251"):
    """Good rows, plus: an 11-digit IIN (a number cell, leading zero lost) in the birth-year column, a
    12-digit IIN split by a space in the programme column, and a full name in the gender column."""
    (n1, i1), (n2, i2), (n3, i3) = SHIFTED
    year_iin = student(n1, i1)
    year_iin[8] = make_iin("060101", 5, 3).lstrip("0")
    spaced = student(n2, i2, program=f"{SHIFTED_PARENT[:6]} {SHIFTED_PARENT[6:]}")
    named = student(n3, i3, gender=n3)
    return write_export(folder, GOOD + [year_iin, spaced, named], kind, name="shifted")


def shifted_secrets():
    iins = IINS + [i for _, i in SHIFTED] + [SHIFTED_PARENT, make_iin("060101", 5, 3)]
    return iins, NAMES + [n for n, _ in SHIFTED]


@pytest.mark.parametrize("skip", [False, True], ids=["refused", "skip-invalid"])
def test_rk_ingest_never_echoes_a_value_of_the_export(ws, tmp_path, tally, skip):
    root, pkg, mapping = ws
    before = snapshot(pkg)
    export = shifted_export(tmp_path / "exports")
    args = [
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
    ] + (["--skip-invalid"] if skip else [])
    proc = run_rk(*args, cwd=root, env={"RK_ROOT": str(root)})
    tally.bad_inputs += 1
    out = proc.stdout + proc.stderr
    if skip:
        assert proc.returncode == 0, out
        assert "3 row(s) added" in out and "3 skipped" in out
        report = export.with_name("shifted.csv.skipped.csv").read_text(encoding="utf-8-sig")
        assert list(csv.reader(io.StringIO(report)))[1:] == [
            [
                "5",
                "birth_year",
                "holds an IIN, which is never written: map this field from another column",
                "text of 11 characters, digits only",
            ],
            [
                "6",
                "program_id",
                "holds an IIN, which is never written: map this field from another column",
                "text of 13 characters, digits and spaces",
            ],
            ["7", "gender", "enum: not one of female, male", "text of 9 characters, letters and spaces"],
        ]
    else:
        assert proc.returncode == 1 and "Traceback" not in out
        for line, column, described in [
            (5, "birth_year", "text of 11 characters, digits only"),
            (6, "program_id", "text of 13 characters, digits and spaces"),
            (7, "gender", "text of 9 characters, letters and spaces"),
        ]:
            assert f"shifted.csv:{line} column '{column}': value <{described}>" in proc.stderr, proc.stderr
        assert snapshot(pkg) == before and sorted(export.parent.iterdir()) == [export]
    iins, names = shifted_secrets()
    assert_no_secrets(out.encode("utf-8"), iins, names, "the terminal")
    load_students()  # the cache and the hash memo are files too
    files = [p for p in [*root.rglob("*"), *export.parent.rglob("*")] if p.is_file() and p != export]
    assert files
    for p in files:
        assert_no_secrets(p.read_bytes(), iins, names, p)


def test_ingest_result_and_error_describe_values(ws, tmp_path):
    # the Python API: the error's failures and the result's skipped rows carry descriptions, not values
    root, pkg, mapping = ws
    iins, names = shifted_secrets()
    export = shifted_export(tmp_path / "exports", "xlsx")
    with pytest.raises(DataValidationError) as e:
        run(export, mapping)
    assert_no_secrets(
        repr(e.value.failures).encode() + str(e.value.frame()).encode(), iins, names, "the error"
    )
    result = run(export, mapping, skip_invalid=True)
    assert result.rows_skipped == 3
    assert_no_secrets(repr(result).encode(), iins, names, "the result")


def test_export_without_a_header_row_is_not_quoted(ws, tmp_path):
    root, pkg, mapping = ws
    export = tmp_path / "export" / "noheader.csv"
    export.parent.mkdir()
    export.write_bytes("\r\n".join(";".join(r) for r in GOOD).encode("cp1251"))
    with pytest.raises(RKError) as e:
        run(export, mapping)
    assert "noheader.csv:1: column 2 of the first row holds an IIN" in str(e.value) and "header row" in str(
        e.value
    )
    assert_no_secrets(str(e.value).encode(), IINS, NAMES, "the error")


# access levels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["resource", "package"])
def test_ingest_into_a_restricted_resource_needs_its_owner(ws, tmp_path, monkeypatch, level):
    root, pkg, mapping = ws
    run(write_export(tmp_path / "export", GOOD[:1]), mapping)  # a KITIG student is there
    descriptor = yaml.safe_load((pkg / "datapackage.yaml").read_text(encoding="utf-8"))
    if level == "resource":
        next(r for r in descriptor["resources"] if r["name"] == "students").update(
            {"x-access": "restricted", "x-owner": "KITIG"}
        )
    else:
        descriptor.update({"x-access": "restricted", "x-owner": "KITIG"})
        for r in descriptor["resources"]:
            r.pop("x-access", None)
    write_descriptor(pkg / "datapackage.yaml", descriptor)
    before = snapshot(pkg)
    monkeypatch.setenv("RK_WORKSPACE_INSTITUTION", "ATK")
    probe = write_export(
        tmp_path / "export", [student("Сейткали Дана", IINS[0], program="ATK-01")], name="atk"
    )
    for export in (
        probe,
        tmp_path / "export" / "no-such-export.csv",
    ):  # refused before the export is even read
        with pytest.raises(AccessDenied) as e:
            run(export, mapping, institution="ATK")
        assert "consortium/students is restricted to its owner KITIG" in str(
            e.value
        ) and "already" not in str(e.value)
    proc = run_rk(
        "ingest",
        probe,
        "--package",
        "consortium",
        "--resource",
        "students",
        "--institution",
        "ATK",
        "--mapping",
        mapping,
        cwd=root,
        env={"RK_ROOT": str(root), "RK_WORKSPACE_INSTITUTION": "ATK"},
    )
    assert (
        proc.returncode == 1 and "error: consortium/students is restricted to its owner KITIG" in proc.stderr
    )
    assert "already" not in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(pkg) == before
    monkeypatch.setenv("RK_WORKSPACE_INSTITUTION", "KITIG")
    assert run(write_export(tmp_path / "export", GOOD[1:]), mapping).rows_added == 2
