"""Bad input gets a clear error and writes nothing outside the build folder: parameter values, report and
package names, batches.yaml, report templates and data files. Property tests run in-process; a handful of
representative cases go through the real `rk` command. The `test_formerly_*` tests pin down bugs these
property tests once found, so they stay fixed."""

import hashlib
import json
import os
import re
import uuid
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings, strategies as st

from conftest import PEOPLE, run_rk, save, write_resource
from research_kit.data import catalog
from research_kit.errors import DescriptorError, RKError, UnknownNameError
from research_kit.runner import params as P
from research_kit.runner.params import ParameterError, TemplateError

# ---------------------------------------------------------------------------------------------------------
# helpers

PARAMS_CELL = (
    's: str = "x"  # text\ni: int = 0\nf: float = 0.0\nb: bool = False\n'
    'l: list[str] = []\nm: Literal["a", "b"] = "a"'
)
DECLARED = P.parse_parameters(PARAMS_CELL, "test parameters cell")
TYPES = {"s": str, "i": int, "f": float, "b": bool, "l": list, "m": str}

INJECTIONS = [
    "\"); import os; os.system('x')#",
    "'); import os; os.system('x')#",
    "${HOME}",
    "$(id)",
    "`id`",
    "__import__('os')",
    "__import__('os').system('touch pwned')",
    "../",
    "../../../etc/passwd",
    "/etc/passwd",
    "a\x00b",
    "\x00",
    "x; rm -rf /",
    "a && b | c > d",
    "{{7*7}}",
    "%(x)s",
    "{0.__class__}",
    "\\..\\..\\x",
    "[",
    "[1, 2",
    '["a", 1]',
    "['a']",
    "1e400",
    "nan",
    "-0",
    "+7",
    " 7 ",
    "0x10",
    "1_000",
    "True",
    "yes",
    "ÿ",
    "a,b,,c",
    "",
    " ",
    "\n",
    ".",
    "..",
    ".hidden",
    "a/b",
    "C:\\Windows",
    "~",
    "~root",
    "*",
    "?",
    "%2F",
    "%00",
]
payloads = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(max_size=40),
    st.from_regex(r"\A[+-]?[0-9]{1,6}(\.[0-9]{0,3})?\Z"),
    st.sampled_from(["a", "b", "true", "false", "0", "1"]),
)
SAFE = settings(max_examples=150, deadline=None)


def check_parameter_error(e: Exception, name: str):
    msg = str(e)
    assert f"parameter {name}=" in msg and "expected" in msg, msg


def tree(root: Path, skip=("reports/_build", ".cache")) -> dict:
    """relative path -> sha256 of every file under `root`, except those under `skip` (relative to `root`)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = [
            d
            for d in dirnames
            if (rel / d).as_posix() not in skip
            and not any((rel / d).as_posix().endswith("/" + s) for s in skip)
        ]
        for f in filenames:
            p = Path(dirpath) / f
            out[(rel / f).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "?"
    return out


def assert_one_clear_error(proc, *fragments, lines=1):
    """Exit 1, no traceback, the message starts with `error:` on stderr and contains every fragment."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error: "), err
    if lines is not None:
        assert len(err.splitlines()) == lines, err
    for f in fragments:
        assert f in err, f"{f!r} not in:\n{err}"


# ---------------------------------------------------------------------------------------------------------
# 1. parameter values, in-process


@SAFE
@given(name=st.sampled_from(sorted(DECLARED)), text=payloads)
def test_parameter_text_is_parsed_by_type_or_refused(name, text, tally):
    tally.bad_inputs += 1
    try:
        out = P.validate(DECLARED, {name: text}, report="t")
    except ParameterError as e:
        check_parameter_error(e, name)
        assert name != "s" or "\x00" in text, f"str parameter refused {text!r}"
        return
    assert "\x00" not in text, "a NUL byte was accepted"
    value = out[name]
    assert type(value) is TYPES[name], (name, text, value)
    assert {k: v for k, v in out.items() if k != name} == {
        k: p.default for k, p in DECLARED.items() if k != name
    }
    if name == "s":
        assert value == text  # exactly the given text: never evaluated, stripped or decoded
    if name == "m":
        assert value == text and value in ("a", "b")
    if name == "l":
        assert all(type(v) is str and "\x00" not in v for v in value)
    if name == "i":
        assert re.fullmatch(r"[+-]?[0-9]+", text.strip())
    if name == "b":
        assert text.strip().lower() in {"true", "false", "1", "0", "yes", "no"}


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(DECLARED)), before=payloads, after=payloads)
def test_nul_bytes_are_refused_for_every_type(name, before, after, tally):
    tally.bad_inputs += 1
    texts = [before + "\x00" + after] + (
        ['["ok", "x\\u0000y"]'] if name == "l" else []
    )  # JSON escape: a NUL item
    for text in texts:
        with pytest.raises(ParameterError) as e:
            P.validate(DECLARED, {name: text})
        check_parameter_error(e.value, name)


def test_injection_strings_are_never_evaluated(tally):
    tally.bad_inputs += len(INJECTIONS)
    for text in INJECTIONS:
        if "\x00" in text:
            with pytest.raises(ParameterError):
                P.parse_value(DECLARED["s"], text)
            continue
        assert P.parse_value(DECLARED["s"], text) == text
        for name in ("i", "b", "m"):
            try:
                v = P.parse_value(DECLARED[name], text)
            except ParameterError as e:
                check_parameter_error(e, name)
                continue
            assert type(v) is TYPES[name]


def test_unknown_parameter_is_named():
    with pytest.raises(UnknownNameError, match=r"unknown parameter 'ss' in report 't'; did you mean 's'"):
        P.validate(DECLARED, {"ss": "x"}, report="t")


valid_values = st.fixed_dictionaries(
    {
        "s": st.text(max_size=200),
        "i": st.integers(-(10**12), 10**12),
        "f": st.floats(allow_nan=False),
        "b": st.booleans(),
        "l": st.lists(st.text(max_size=20), max_size=5),
        "m": st.sampled_from(["a", "b"]),
    }
)


@settings(max_examples=200, deadline=None)
@given(values=valid_values, other=st.text(max_size=200))
def test_slug_is_safe_stable_and_injective_for_text(values, other, tally):
    tally.bad_inputs += 1
    params = P.validate(DECLARED, {}) | values
    s = P.slug(params)
    assert "/" not in s and "\\" not in s and "\x00" not in s, s
    assert s not in (".", "..") and not s.startswith("."), s
    assert len(s.encode()) <= 255, len(s)
    assert (
        s == P.slug(dict(reversed(list(params.items())))) == P.slug(json.loads(json.dumps(params)))
    )  # stable
    assume(other != values["s"])
    assert P.slug(params | {"s": other}) != s, (values["s"], other)  # two different texts, two folders
    # every str-valued slug component is safe on its own too
    alone = P.slug({"s": values["s"]})
    assert "/" not in alone and not alone.startswith(".") and alone not in (".", "..")


@pytest.mark.parametrize(
    "text", [".", "..", "../..", "/", "a/../../b", ".hidden", "...", "%2e%2e", "..\\..", "~/x"]
)
def test_slug_of_path_like_text_stays_one_folder_name(text, tally):
    tally.bad_inputs += 1
    s = P.slug({"s": text})
    assert "/" not in s and s not in (".", "..") and not s.startswith(".")
    assert Path("/build", s).parent == Path("/build")


# ---- bugs once found in parameter handling ----


def test_formerly_int_with_too_many_digits(tally):
    tally.bad_inputs += 1
    with pytest.raises(ParameterError, match="parameter i="):
        P.parse_value(DECLARED["i"], "1" * 5000)


def test_formerly_deeply_nested_json_list(tally):
    tally.bad_inputs += 1
    with pytest.raises(ParameterError, match="parameter l="):
        P.parse_value(DECLARED["l"], "[" * 100_000)


def test_formerly_surrogate_text_value(tally):
    tally.bad_inputs += 1
    try:
        value = P.validate(DECLARED, {"s": "\udcff"})
    except ParameterError:
        return  # refusing it would be fine too
    P.slug(value)


def test_formerly_list_slug_collision(tally):
    tally.bad_inputs += 3
    slugs = {P.slug({"l": v}) for v in ([], [""], ["none"])}
    assert len(slugs) == 3, slugs


def test_formerly_float_default_keeps_int_type():
    ps = P.parse_parameters("f: float = 1")
    assert type(P.validate(ps, {})["f"]) is float


# ---------------------------------------------------------------------------------------------------------
# 2. injection through the real command never executes


def test_injected_labels_are_recorded_verbatim_and_nothing_escapes(report_workspace, tally):
    root, _, env = report_workspace
    marker = f"pwned-{uuid.uuid4().hex[:8]}"
    payloads = [
        f"\"); import os; os.system('touch {marker}')#",
        f"$(touch {marker}); `touch {marker}` && echo ${{HOME}} | tee {marker} > /dev/null",
        f"../../{marker}/x",
        f"__import__('pathlib').Path('{marker}').touch() or '{{{{7*7}}}}'",
    ]
    before = tree(root.parent, skip=("ws/reports/_build", "ws/.cache"))
    for p in payloads:
        tally.bad_inputs += 1
        proc = run_rk("run", "tiny", "-p", f"label={p}", cwd=root, env=env)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert tree(root.parent, skip=("ws/reports/_build", "ws/.cache")) == before
    for where in (root, root.parent, Path("/tmp"), Path.home(), root / "reports"):
        assert not (where / marker).exists(), where / marker
    build = (root / "reports" / "_build").resolve()
    folders = [f for f in (build / "tiny").iterdir() if not f.name.startswith(".")]
    assert len(folders) == len(payloads)
    labels = []
    for folder in folders:
        tally.runs_checked += 1
        assert folder.resolve().parent == build / "tiny"
        m = json.loads((folder / "manifest.json").read_text())
        assert m["status"] == "succeeded" and m["records"]["label"] == m["parameters"]["label"]
        labels.append(m["records"]["label"])
    assert sorted(labels) == sorted(payloads)
    escaped = [p for p in root.parent.rglob(f"*{marker}*") if build not in p.resolve().parents]
    assert escaped == []


# ---------------------------------------------------------------------------------------------------------
# 3. report and package names

REFUSED_NAMES = [
    "../x",
    "/abs",
    "a/b",
    "x\x00y",
    "..",
    ".",
    "",
    "a\\b",
    ".hidden",
    "x/../y",
    "~",
    "a b",
    "tiny\n",
]


@pytest.fixture(scope="module")
def reports_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("reports")
    (d / "tiny.ipynb").write_text("{}")
    (d / "sub").mkdir()
    (d / "sub" / "x.ipynb").write_text("{}")
    (d.parent / "outside.ipynb").write_text("{}")
    return d


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "mini").mkdir()
    (d / "mini" / "datapackage.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "mini",
                "resources": [
                    {"name": "people", "path": "people.csv", "schema": {"fields": [{"name": "x"}]}}
                ],
            }
        )
    )
    (d / "empty").mkdir()
    return d


def names():
    return st.one_of(
        st.sampled_from(
            REFUSED_NAMES
            + [
                "tiny",
                "TINY",
                "mini",
                "sub",
                "outside",
                "../outside",
                "sub/x",
                "mini.",
                "a..b",
                "a-b_c",
                "x" * 100,
                "x" * 101,
                "tiny.ipynb",
                "../tiny.ipynb",
                "sub/../tiny.ipynb",
                ".ipynb",
                "/etc/passwd.ipynb",
                "x" * 300 + ".ipynb",
            ]
        ),
        st.text(max_size=120),
        st.from_regex(r"\A[a-z0-9./_-]{1,30}\Z"),
    )


@settings(max_examples=200, deadline=None)
@given(name=names())
def test_report_names_are_safe_or_refused(reports_dir, name, tally):
    tally.bad_inputs += 1
    try:
        path = P.find_template(name, reports_dir)
    except TemplateError as e:
        assert "invalid report name" in str(e) or "is not a template of this workspace" in str(e)
        return
    except UnknownNameError as e:
        stem = Path(name).stem if name.endswith(".ipynb") else name  # a template may be given by its path
        assert "unknown report" in str(e) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}", stem)
        return
    assert path.resolve() == (reports_dir / "tiny.ipynb").resolve() and name in (
        "tiny",
        str(reports_dir / "tiny.ipynb"),
    )


@settings(max_examples=200, deadline=None)
@given(name=names())
def test_package_names_are_safe_or_refused(data_root, name, tally):
    tally.bad_inputs += 1
    assume(len(name) <= 200)  # longer names: see test_bug_long_package_name
    try:
        ok = catalog.check_name("package", name)
    except DescriptorError as e:
        assert "invalid package name" in str(e)
        ok = None
    if ok is not None:
        assert ok == name and "/" not in name and "\\" not in name and "\x00" not in name
        assert not name.startswith(".") and ".." not in name and name == name.strip()
    try:
        pkg = catalog.open_package(name, str(data_root))
    except (DescriptorError, UnknownNameError):
        return
    assert name == "mini" and pkg.name == "mini"
    assert Path(pkg.url).resolve().parent == data_root.resolve()


@pytest.mark.parametrize("name", REFUSED_NAMES)
def test_path_like_names_are_refused(reports_dir, data_root, name, tally):
    tally.bad_inputs += 1
    with pytest.raises(TemplateError, match="invalid report name"):
        P.find_template(name, reports_dir)
    with pytest.raises(DescriptorError, match="invalid package name"):
        catalog.open_package(name, str(data_root))
    with pytest.raises(DescriptorError, match="invalid resource name"):
        catalog.check_name("resource", name)


def test_formerly_long_package_name(data_root, tally):
    tally.bad_inputs += 1
    with pytest.raises((DescriptorError, UnknownNameError)):
        catalog.open_package("a" * 300, str(data_root))


# ---------------------------------------------------------------------------------------------------------
# 4. batches.yaml through the CLI

BATCH_CASES = [
    ("malformed-yaml", "b:\n  - report: tiny\n    grid: {n: [1, 2\n", [], ["batches.yaml", "malformed YAML"]),
    ("not-a-mapping", "- report: tiny\n", [], ["batches.yaml", "expected a mapping of batch names"]),
    (
        "grid-value-not-a-list",
        "b:\n  - report: tiny\n    grid: {n: 5}\n",
        [],
        ["batch 'b', entry 1", "'grid' must map each parameter to a non-empty list"],
    ),
    ("grid-empty-list", "b:\n  - report: tiny\n    grid: {n: []}\n", [], ["entry 1", "non-empty list"]),
    (
        "entry-without-report",
        "b:\n  - report: tiny\n    grid: {n: [1]}\n  - grid: {n: [1]}\n",
        [],
        ["batch 'b', entry 2", "needs a 'report'"],
    ),
    ("unknown-key", "b:\n  - report: tiny\n    grids: {n: [1]}\n", [], ["entry 1", "unknown key(s) 'grids'"]),
    (
        "grid-and-parameters",
        "b:\n  - report: tiny\n    grid: {n: [1]}\n    parameters: [{n: 1}]\n",
        [],
        ["not both"],
    ),
    (
        "grid-too-large",
        "b:\n  - report: tiny\n    grid: {n: [1,2,3,4,5,6,7,8,9,10,11]}\n",
        ["--max-runs", "10"],
        ["entry 1", "the grid has 11 runs, more than --max-runs 10"],
    ),
    (
        "batch-too-large",
        "b:\n  - report: tiny\n    grid: {n: [1,2,3,4,5,6]}\n  - report: tiny\n    grid: {n: [7,8,9,10,11,12]}\n",
        ["--max-runs", "10"],
        ["batch 'b' has more than --max-runs 10 runs"],
    ),
    (
        "unknown-parameter",
        "b:\n  - report: tiny\n    grid: {n: [1]}\n  - report: other\n    parameters: [{k: 1}, {kk: 2}]\n",
        [],
        ["batches.yaml: batch 'b', entry 2", "unknown parameter 'kk'", "report 'other'", "did you mean 'k'"],
    ),
    (
        "bad-value",
        "b:\n  - report: tiny\n    grid: {mode: [a, c]}\n",
        [],
        ["batch 'b', entry 1", "mode='c'", "one of a, b"],
    ),
    (
        "unknown-report",
        "b:\n  - report: ../tiny\n    grid: {n: [1]}\n",
        [],
        ["batch 'b', entry 1", "invalid report name"],
    ),
    # formerly: the full text of a billion-laughs value filled the memory (a message quoting it, a cache key)
    (
        "alias-bomb",
        "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
        + "b2:\n  - report: *i\n    grid: {n: [1]}\n",
        [],
        ["batches.yaml: line", "YAML aliases expand to more than"],
    ),
    (
        "large-value-quoted",
        "a: &a [" + ", ".join(["x" * 50] * 9) + "]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nb2:\n  - report: *c\n    grid: {n: [1]}\n",
        ["--max-runs", "5"],
        ["batch 'b2', entry 1", "invalid report name [[[", "…"],
    ),
    (
        "keys-of-other-types",
        "1: []\nb: [{report: tiny, 2: x}]\n",
        [],
        ["entry 1", "unknown key(s) 2; use report"],
    ),
    ("unknown-batch-among-keys-of-other-types", "1: []\nc: []\n", [], ["unknown batch 'b'"]),
]


@pytest.mark.parametrize("case,text,extra,fragments", BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_bad_batches_file(report_workspace, case, text, extra, fragments, tally):
    root, _, env = report_workspace
    (root / "reports" / "batches.yaml").write_text(text)
    before = tree(root, skip=(".cache",))
    tally.bad_inputs += 1
    proc = run_rk("batch", "b2" if "b2:" in text else "b", *extra, cwd=root, env=env)
    # a YAML parser error carries its own multi-line location snippet after the first line
    assert_one_clear_error(proc, *fragments, lines=None if case == "malformed-yaml" else 1)
    assert len(proc.stderr) < 1000, proc.stderr[:2000]  # every value a message quotes is cut short
    assert not (root / "reports" / "_build").exists()
    assert tree(root, skip=(".cache",)) == before


# ---------------------------------------------------------------------------------------------------------
# 5. broken templates


def _write_broken_templates(reports: Path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("n: int = 1"), nbformat.v4.new_code_cell("print(n)")]
    nbformat.write(nb, reports / "notags.ipynb")
    from conftest import make_template

    make_template(reports / "untyped.ipynb", "x = 1", "print(x)")
    make_template(reports / "badtype.ipynb", "x: dict = {}", "print(x)")
    make_template(reports / "baddefault.ipynb", 'x: int = "one"', "print(x)")
    (reports / "notjson.ipynb").write_text('{"cells": [ this is not json')


TEMPLATE_CASES = [
    ("notags", ["notags.ipynb", "has no cell tagged 'parameters'"]),
    ("untyped", ["untyped.ipynb parameters cell, line 1", "give the parameter a type"]),
    ("badtype", ["badtype.ipynb parameters cell, line 1", "unsupported type dict"]),
    ("baddefault", ["baddefault.ipynb parameters cell, line 1", "x='one'", "expected int"]),
    ("notjson", ["notjson.ipynb", "not a readable notebook"]),
]


@pytest.mark.parametrize("command", ["params", "run"])
def test_broken_templates(report_workspace, command, tally):
    root, _, env = report_workspace
    _write_broken_templates(root / "reports")
    before = tree(root, skip=(".cache",))
    for name, fragments in TEMPLATE_CASES:
        tally.bad_inputs += 1
        proc = run_rk(command, name, cwd=root, env=env)
        assert_one_clear_error(proc, *fragments)
    assert not (root / "reports" / "_build").exists()
    assert tree(root, skip=(".cache",)) == before


def test_formerly_literal_with_a_name(tally):
    tally.bad_inputs += 1
    with pytest.raises(TemplateError):
        P.parse_parameters("x: Literal[foo] = 1", "t.ipynb parameters cell")


@pytest.mark.parametrize(
    "body",
    [
        '{"cells": 5}',
        '{"cells": [5]}',
        '{"cells": [{"metadata": 5}]}',
        '{"cells": [{"metadata": {"tags": ["parameters"]}, "source": 5}]}',
    ],
)
def test_formerly_notebook_json_of_the_wrong_shape(tmp_path, body, tally):
    tally.bad_inputs += 1
    (tmp_path / "t.ipynb").write_text(body)
    with pytest.raises(TemplateError):
        P.template_parameters(tmp_path / "t.ipynb")


# ---------------------------------------------------------------------------------------------------------
# 6. data files and descriptors

PKG = ("datasets", "mini")
HEADER = PEOPLE.splitlines(keepends=True)[0]


def validate_fails(root, env, *fragments, resource="people", tally=None):
    if tally is not None:
        tally.bad_inputs += 1
    proc = run_rk("datasets", "validate", "mini", *([resource] if resource else []), cwd=root, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr
    for f in fragments:
        assert f in proc.stderr, f"{f!r} not in:\n{proc.stderr}"
    assert list((root / ".cache").rglob("people-*.parquet")) == [], "invalid data was cached"
    return proc


def test_empty_csv(workspace, tally):
    root, d, env = workspace
    write_resource(root.joinpath(*PKG), d, "people", "")
    save(root.joinpath(*PKG), d)
    validate_fails(root, env, "mini/people", "people.csv", "empty", tally=tally)


def test_whitespace_only_csv(workspace, tally):
    root, d, env = workspace
    write_resource(root.joinpath(*PKG), d, "people", "\n \n\t\n")
    save(root.joinpath(*PKG), d)
    validate_fails(root, env, "mini/people", "people.csv", "empty", tally=tally)


def test_header_only_csv(workspace, tally):
    """A header-only table is valid (0 rows); a header-only *referenced* table makes every foreign key dangle."""
    root, d, env = workspace
    pkg = root.joinpath(*PKG)
    write_resource(pkg, d, "institutions", "institution_id,name\n")
    save(pkg, d)
    proc = validate_fails(
        root,
        env,
        "mini/people",
        "foreign key",
        "institutions.institution_id",
        "'ATK'",
        "'KITIG'",
        resource=None,
        tally=tally,
    )
    assert re.search(r"institutions\s*│\s*0\s*│\s*ok", proc.stdout), proc.stdout
    write_resource(pkg, d, "people", HEADER)
    save(pkg, d)
    out = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env, check=0).stdout
    assert "people" in out and "FAILED" not in out


def test_header_with_wrong_columns_only(workspace, tally):
    root, d, env = workspace
    write_resource(root.joinpath(*PKG), d, "people", HEADER.replace("gpa", "GPA"))
    save(root.joinpath(*PKG), d)
    validate_fails(
        root, env, "people.csv:1", "'gpa'", "missing from the file", "'GPA'", "not declared", tally=tally
    )


def test_large_csv_with_a_bad_last_line(workspace, tally):
    root, d, env = workspace
    n = 300_000
    d["resources"][1]["schema"]["fields"][0]["constraints"]["pattern"] = "P-[0-9]+"
    rows = [f"P-{i:06d},ATK,{18 + i % 40},paid,,2024-09-01,true\n" for i in range(n - 1)]
    text = HEADER + "".join(rows) + f"P-{n - 1:06d},ATK,eighteen,paid,,2024-09-01,true\n"
    write_resource(root.joinpath(*PKG), d, "people", text)
    save(root.joinpath(*PKG), d)
    proc = validate_fails(
        root,
        env,
        "mini/people",
        f"people.csv:{n + 1}",
        "'age'",
        "'eighteen'",
        "not a valid integer",
        tally=tally,
    )
    failures = [l for l in proc.stderr.splitlines() if l.startswith("  people.csv")]
    assert failures and all(l.startswith(f"  people.csv:{n + 1} column 'age'") for l in failures), proc.stderr


def test_formerly_wrong_type_in_required_column_counted_twice(workspace, tally):
    root, d, env = workspace
    write_resource(root.joinpath(*PKG), d, "people", PEOPLE.replace("P-002,KITIG,19", "P-002,KITIG,nineteen"))
    save(root.joinpath(*PKG), d)
    proc = validate_fails(root, env, "people.csv:3", "'nineteen'", tally=tally)
    assert "1 validation failure in" in proc.stderr and "required" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "field_change,fragments",
    [
        ({"type": "duration"}, ["type 'duration'", "supported types"]),
        ({"type": "Integer"}, ["type 'Integer'"]),
        ({"constraints": {"exclusiveMinimum": 14}}, ["constraint 'exclusiveMinimum'", "supported"]),
        ({"constraints": {"required": True, "Maximum": 80}}, ["constraint 'Maximum'"]),
    ],
    ids=["type-duration", "type-case", "constraint-exclusiveMinimum", "constraint-case"],
)
def test_unsupported_field_type_or_constraint(workspace, field_change, fragments, tally):
    root, d, env = workspace
    d["resources"][1]["schema"]["fields"][2].update(field_change)
    save(root.joinpath(*PKG), d)
    validate_fails(root, env, "datapackage.yaml", "'age'", *fragments, tally=tally)


def test_formerly_constraint_of_the_wrong_shape(workspace, tally):
    root, d, env = workspace
    d["resources"][1]["schema"]["fields"][2]["constraints"]["enum"] = "paid"
    save(root.joinpath(*PKG), d)
    validate_fails(root, env, "datapackage.yaml", "'age'", "enum", tally=tally)


# ---------------------------------------------------------------------------------------------------------
# 7. settings out of range, data roots that cannot be read: one line naming the setting or URL


def _s3fs_installed():
    import importlib.util

    return importlib.util.find_spec("s3fs") is not None


SETTING_CASES = [  # variable, value, command, fragments
    (
        "RK_RUNNER_TIMEOUT",
        "10000000000",
        ["config"],
        ["RK_RUNNER_TIMEOUT", "'10000000000'", "from 1 to 604800 (a week)"],
    ),
    ("RK_RUNNER_TIMEOUT", "0", ["run", "tiny"], ["RK_RUNNER_TIMEOUT", "from 1 to 604800"]),
    (
        "RK_RUNNER_MEMORY",
        "99999999999999",
        ["run", "tiny"],
        ["RK_RUNNER_MEMORY", "'99999999999999'", "(1 TB)"],
    ),
    ("RK_RUNNER_WORKERS", "100000", ["batch", "small"], ["RK_RUNNER_WORKERS", "from 0 to 1024"]),
    (
        "RK_WORKSPACE_DATA",
        "http://127.0.0.1:9/datasets",
        ["datasets", "validate"],
        ["http://127.0.0.1:9/datasets", "cannot be read"],
    ),
    (
        "RK_WORKSPACE_DATA",
        "http://127.0.0.1:9/datasets",
        ["datasets", "show", "mini"],
        ["http://127.0.0.1:9/datasets/mini", "cannot be read"],
    ),
    (
        "RK_WORKSPACE_DATA",
        "http://127.0.0.1:9/datasets",
        ["datasets", "list"],
        ["http://127.0.0.1:9/datasets", "cannot be read"],
    ),
    (
        "RK_WORKSPACE_DATA",
        "foo://x",
        ["datasets", "validate"],
        ["RK_WORKSPACE_DATA", "'foo://x'", "unknown protocol 'foo'"],
    ),
    (
        "RK_WORKSPACE_BUILD",
        ".",
        ["run", "tiny"],
        ["RK_WORKSPACE_BUILD", "the workspace or a folder above it"],
    ),
    ("RK_WORKSPACE_BUILD", "datasets", ["batch", "small"], ["RK_WORKSPACE_BUILD", "datasets/ folder"]),
    (
        "RK_WORKSPACE_CACHE",
        "..",
        ["datasets", "validate"],
        ["RK_WORKSPACE_CACHE", "the workspace or a folder above it"],
    ),
]


@pytest.mark.parametrize(
    "variable,value,command,fragments",
    SETTING_CASES,
    ids=[f"{v[0]}-{'-'.join(v[2])}" for v in (getattr(c, "values", c) for c in SETTING_CASES)],
)
def test_bad_setting_or_data_root(report_workspace, variable, value, command, fragments, tally):
    root, _, env = report_workspace
    tally.bad_inputs += 1
    before = tree(root, skip=(".cache",))
    proc = run_rk(*command, cwd=root, env={**env, variable: value}, timeout=120)
    assert_one_clear_error(proc, *fragments)
    assert tree(root, skip=(".cache",)) == before


def test_s3_data_root_without_the_s3_extra(report_workspace, tmp_path, tally):
    """s3:// needs the `s3` extra; the suite installs it, so the package is hidden from this one command
    by a module of the same name that fails to import, as a missing package does."""
    root, _, env = report_workspace
    tally.bad_inputs += 1
    hide = tmp_path / "hide-s3fs"
    hide.mkdir()
    (hide / "s3fs.py").write_text("raise ModuleNotFoundError(\"No module named 's3fs'\", name='s3fs')\n")
    path = os.pathsep.join(p for p in (str(hide), env.get("PYTHONPATH", "")) if p)
    proc = run_rk(
        "datasets",
        "show",
        "mini",
        cwd=root,
        env={**env, "RK_WORKSPACE_DATA": "s3://bucket/datasets", "PYTHONPATH": path},
    )
    assert_one_clear_error(proc, "RK_WORKSPACE_DATA", "s3fs")


def test_institution_setting_is_checked_with_did_you_mean(tally):
    from conftest import ROOT

    tally.bad_inputs += 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("RK_")}
    proc = run_rk("config", cwd=ROOT, env={**env, "RK_WORKSPACE_INSTITUTION": "KITG"})
    assert_one_clear_error(
        proc, "unknown institution 'KITG'", "RK_WORKSPACE_INSTITUTION", "did you mean 'KITIG'"
    )
    run_rk("config", cwd=ROOT, env={**env, "RK_WORKSPACE_INSTITUTION": "KITIG"}, check=0)


# ---------------------------------------------------------------------------------------------------------
# 8. square brackets in anything a user wrote print as written (Rich markup is never read)

MARKUP = "[/x] [a-z]+ [bold]"


def test_square_brackets_print_as_written(report_workspace, tally):
    from conftest import make_template

    root, d, env = report_workspace
    tally.bad_inputs += 5
    make_template(
        root / "reports" / "brackets.ipynb",
        f'text: str = "{MARKUP}"  # help {MARKUP}',
        "import research_kit as rk\nrk.record('value', text)",
    )
    d["description"] = f"described {MARKUP}"
    d["licenses"][0].update(name=f"CC0 {MARKUP}", title=f"CC0 {MARKUP}")
    d["resources"][1]["schema"]["fields"][0]["description"] = f"field {MARKUP}"
    save(root / "datasets" / "mini", d)
    checks = [
        (["params", "brackets"], [f"help {MARKUP}", repr(MARKUP)]),
        (["run", "brackets"], [f"value={MARKUP}"[:40]]),
        (
            ["datasets", "show", "mini"],
            [f"described {MARKUP}", f"field {MARKUP}", "pattern=[A-Z]+", f"CC0 {MARKUP}"],
        ),
        (["datasets", "list"], [f"CC0 {MARKUP}"]),
        (["config"], [f"cache{MARKUP}"]),
    ]
    for command, fragments in checks:
        proc = run_rk(*command, cwd=root, env={**env, "RK_WORKSPACE_CACHE": f"cache{MARKUP}"})
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (command, proc.stderr[-2000:])
        for f in fragments:
            assert f in proc.stdout, (command, f, proc.stdout)


# ---------------------------------------------------------------------------------------------------------
# 9. a template named by its path; a run never replaces a folder it did not write


def test_template_path_works_where_a_name_does(report_workspace):
    root, _, env = report_workspace
    for given in ("reports/tiny.ipynb", str(root / "reports" / "tiny.ipynb")):
        proc = run_rk("params", given, cwd=root, env=env, check=0)
        assert "parameters of tiny" in proc.stdout and "a number" in proc.stdout
    proc = run_rk("params", "tiny.ipynb", cwd=root / "reports", env=env, check=0)
    run_rk("run", "reports/tiny.ipynb", "-p", "n=3", cwd=root, env=env, check=0)
    assert (root / "reports" / "_build" / "tiny" / "label=x,mode=a,n=3" / "manifest.json").is_file()


def test_template_path_outside_the_reports_folder_is_refused(report_workspace, tmp_path, tally):
    import shutil

    root, _, env = report_workspace
    tally.bad_inputs += 1
    shutil.copy(root / "reports" / "tiny.ipynb", tmp_path / "tiny.ipynb")
    proc = run_rk("params", str(tmp_path / "tiny.ipynb"), cwd=root, env=env)
    assert_one_clear_error(proc, "is not a template of this workspace", str(root / "reports"))


def test_run_never_replaces_a_folder_it_did_not_write(report_workspace, tally):
    root, _, env = report_workspace
    tally.bad_inputs += 1
    folder = root / "reports" / "_build" / "tiny" / "label=x,mode=a,n=1"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("my own notes")
    proc = run_rk("run", "tiny", cwd=root, env=env)
    assert (
        proc.returncode == 1
        and "was not written by rk (it has no manifest.json)" in proc.stderr
        and "Traceback" not in proc.stderr
    ), proc.stderr
    assert (folder / "notes.txt").read_text() == "my own notes" and sorted(
        p.name for p in folder.iterdir()
    ) == ["notes.txt"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]
