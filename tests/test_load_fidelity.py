"""What `load` returns is what the file says, in the declared types, whichever way it was made.

A load validates a table with a fast screen in Arrow before pandera, builds the DataFrame straight
from Arrow buffers, and stores a cache file in a form that reads back fast (fixed-width text as
binary, codes dictionary-encoded). Each of those is checked here against an independent reference:
`pandas.read_csv` with the declared dtypes, pandera run on every column, Python's `set`.
"""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import run_rk, save, write_resource
from research_kit.data.frames import to_frame
from research_kit.data.keys import fixed_width_keys, has_duplicates
from research_kit.data.rules import check
from research_kit.data.schema import Where
from research_kit.data.types import dtypes
from research_kit.data.validate import parse, validate_table
from research_kit.data.demo import generate

STUDENTS = 3000


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    """A workspace holding a generated `consortium` package big enough for codes to be dictionary-encoded."""
    root = tmp_path_factory.mktemp("fidelity")
    (root / "settings.ini").write_text("[workspace]\ndata = datasets\ncache = .cache\n")
    generate(root / "datasets" / "consortium", seed=7, students=STUDENTS)
    return root


def reference_frame(path, schema) -> pd.DataFrame:
    """The resource read by pandas alone, then cast to the declared dtypes."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    out = {}
    for f, (name, want) in zip(schema["fields"], dtypes(schema).items()):
        col, typ = raw[name], f.get("type", "string")
        if isinstance(want, pd.CategoricalDtype):
            col = col.astype(int) if typ in ("integer", "year") else col
            out[name] = pd.Categorical(col, dtype=want)
        elif typ == "boolean":
            out[name] = col.map({"true": True, "false": False}).astype("boolean")
        elif typ in ("date", "datetime"):
            out[name] = pd.to_datetime(col).astype("datetime64[us]")
        elif typ == "number":
            out[name] = col.astype(float)
        else:
            out[name] = col.astype(want)
    return pd.DataFrame(out)


def resources(root):
    from research_kit.data.catalog import open_package

    return list(open_package("consortium", str(root / "datasets")).resources.values())


def test_fresh_and_cached_loads_equal_pandas(consortium, monkeypatch):
    monkeypatch.setenv("RK_ROOT", str(consortium))
    from research_kit.data.load import load, wait_for_cache_writes

    for res in resources(consortium):
        expected = reference_frame(res.url, res.schema)
        fresh = load("consortium", res.name)
        wait_for_cache_writes()
        cached = load("consortium", res.name)
        pd.testing.assert_frame_equal(fresh, expected, obj=f"fresh {res.name}")
        pd.testing.assert_frame_equal(cached, expected, obj=f"cached {res.name}")
    cache = list((consortium / ".cache" / "data" / "consortium").glob("students-*.parquet"))
    import pyarrow.parquet as pq

    stored = pq.read_schema(cache[0])
    # the forms that make the cache fast really are used (and so are tested above)
    assert pa.types.is_fixed_size_binary(stored.field("student_id").type)
    assert pa.types.is_large_string(stored.field("program_id").type)
    assert not stored.field("student_id").nullable


def test_loaded_frames_can_be_changed(consortium, monkeypatch):
    monkeypatch.setenv("RK_ROOT", str(consortium))
    from research_kit.data.load import load, wait_for_cache_writes

    for res in resources(consortium):
        for attempt in ("fresh", "cached"):
            df = load("consortium", res.name)
            wait_for_cache_writes()
            before = df.copy()
            for c in df.columns:
                df.loc[0, c] = df[c].iloc[1]
            pd.testing.assert_frame_equal(
                df.iloc[[0]].reset_index(drop=True),
                before.iloc[[1]].reset_index(drop=True),
                obj=f"{attempt} {res.name}",
            )
            # and the next load is not affected by the change
            again = load("consortium", res.name)
            pd.testing.assert_frame_equal(again, before)


# ---- the Arrow screen never lets pass what pandera would report ----

SCHEMA = {
    "fields": [
        {"name": "id", "type": "string", "constraints": {"required": True, "pattern": "[A-Z]-[0-9]{2}"}},
        {
            "name": "code",
            "type": "string",
            "constraints": {"pattern": "[A-Z]{2}", "minLength": 2, "maxLength": 3},
        },
        {"name": "n", "type": "integer", "constraints": {"required": True, "minimum": 0, "maximum": 9}},
        {"name": "x", "type": "number", "constraints": {"required": True, "minimum": -1, "maximum": 1}},
        {"name": "d", "type": "date", "constraints": {"minimum": "2020-01-01", "maximum": "2024-12-31"}},
        {"name": "b", "type": "boolean", "constraints": {"required": True}},
        {"name": "e", "type": "string", "constraints": {"enum": ["lo", "hi"]}},
        # bounds on an enum and on a boolean: the screen once decided these differently from pandera
        {"name": "lvl", "type": "integer", "constraints": {"enum": [1, 2, 3], "maximum": 2}},
        {"name": "ok", "type": "boolean", "constraints": {"minimum": 1}},
    ],
    "primaryKey": ["id", "n"],
}

cells = {
    "id": st.sampled_from(["A-01", "B-02", "C-03", "c-04", "D-5", None]),
    "code": st.sampled_from(["AB", "CD", "ABC", "A", "ab", "ABCD", None]),
    "n": st.sampled_from(["0", "5", "9", "10", "-1", "x", None]),
    "x": st.sampled_from(["0.5", "-1", "1", "1.5", "NaN", "nan", None]),
    "d": st.sampled_from(["2021-03-01", "2019-12-31", "2025-01-01", "2024-02-30", None]),
    "b": st.sampled_from(["true", "false", "yes", None]),
    "e": st.sampled_from(["lo", "hi", "mid", None]),
    "lvl": st.sampled_from(["1", "2", "3", None]),
    "ok": st.sampled_from(["true", "false", None]),
}


def described(failures):
    return sorted((f.line, f.column, f.rule, repr(f.value)) for f in failures if f is not None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries(cells), max_size=60), st.integers(1, 3))
def test_screen_then_pandera_equals_pandera_on_everything(rows, chunks):
    names = [f["name"] for f in SCHEMA["fields"]]
    per = max(1, len(rows) // chunks)
    batches = [
        pa.table({n: pa.array([r[n] for r in rows[i : i + per]], pa.string()) for n in names})
        for i in range(0, len(rows), per)
    ] or [pa.table({n: pa.array([], pa.string()) for n in names})]
    text = pa.concat_tables(batches)
    where = Where("p", "r", "r.csv")

    typed, expected = parse(text, SCHEMA, where)
    df_reference = to_frame(typed, SCHEMA)
    reported = {(f.line, f.column) for f in expected if f is not None}
    expected += [f for f in check(df_reference, SCHEMA, where) if (f.line, f.column) not in reported]

    typed2, df, actual = validate_table(text, SCHEMA, where)
    assert described(actual) == described(expected)
    pd.testing.assert_frame_equal(df, df_reference)
    # to_frame agrees with pandas' own conversion of the same Arrow table
    via_pandas = typed2.to_pandas(
        types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get
    )
    for name, want in dtypes(SCHEMA).items():
        col = via_pandas[name]
        if isinstance(want, pd.CategoricalDtype):
            col = col.astype(object).astype(want)
        elif want == "int64" and col.hasnans:
            want = "Int64"
        pd.testing.assert_series_equal(df[name], col.astype(want), check_names=False, obj=name)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text("ab", min_size=1, max_size=3),
            st.text("xy", min_size=9, max_size=9),
            st.text("pq", min_size=17, max_size=17),
            st.none(),
        ),
        max_size=40,
    ),
    st.sampled_from([pa.string(), pa.large_string()]),
)
def test_duplicate_detection_equals_set(values, typ):
    present = [v for v in values if v is not None]
    arr = pa.chunked_array(
        [pa.array(values[: len(values) // 2], typ), pa.array(values[len(values) // 2 :], typ)]
    )
    assert has_duplicates(arr) == (len(set(present)) < len(present))


def test_fixed_width_keys_differ_after_eight_bytes():
    # nine-byte values equal in their first eight bytes: keys may collide, the answer must not
    values = pa.chunked_array([pa.array([f"ABCDEFGH{c}" for c in "0123456789"])])
    assert not has_duplicates(values)
    assert has_duplicates(pa.chunked_array([pa.array(["ABCDEFGH1", "ABCDEFGH2", "ABCDEFGH1"])]))


def test_colliding_keys_are_checked_exactly():
    # two different 16-character values whose 64-bit sort keys are equal: search for such a pair
    rng = np.random.default_rng(0)
    K = np.uint64(0x9E3779B97F4A7C15)
    while True:
        a0, a1, b0 = (rng.integers(0x20, 0x7F, (4096, 8), dtype=np.uint8) for _ in range(3))
        b1 = (
            (a0.view(np.uint64) * K ^ a1.view(np.uint64) ^ b0.view(np.uint64) * K)
            .view(np.uint8)
            .reshape(-1, 8)
        )
        ok = ((b1 >= 0x20) & (b1 < 0x7F)).all(axis=1)
        if ok.any():
            i = int(np.flatnonzero(ok)[0])
            first, second = (bytes(x[i]) + bytes(y[i]) for x, y in ((a0, a1), (b0, b1)))
            break
    values = pa.chunked_array([pa.array([first.decode(), second.decode()])])
    keys = fixed_width_keys(values)
    assert first != second and keys[0] == keys[1]
    assert not has_duplicates(values)


# ---- failures in dictionary-encoded text keep their line numbers ----


def repetitive_people(n=40, bad=None):
    lines = ["person_id,institution_id,age,funding,gpa,enrolled,active"]
    for i in range(n):
        lines.append(f"P-{i:03d},{'ATK' if i % 2 else 'KITIG'},20,paid,3.0,2024-09-01,true")
    if bad:
        lines[bad[0] - 1] = lines[bad[0] - 1].replace(*bad[1])
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "line,change,fragments",
    [
        (17, (",ATK,", ",ZZZ,"), ["people.csv:17", "'ZZZ'", "foreign key"]),
        (30, (",KITIG,", ",ATK,"), None),  # still valid: nothing reported
    ],
)
def test_foreign_key_in_repetitive_column(workspace, line, change, fragments):
    root, d, env = workspace
    pkg = root / "datasets" / "mini"
    write_resource(pkg, d, "people", repetitive_people(bad=(line, change)))
    save(pkg, d)
    proc = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)
    if fragments is None:
        assert proc.returncode == 0, proc.stderr
        return
    from conftest import TALLY

    TALLY.bad_inputs += 1
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_pattern_in_repetitive_column(workspace):
    root, d, env = workspace
    pkg = root / "datasets" / "mini"
    d["resources"][1]["schema"]["fields"][1]["constraints"]["pattern"] = "[A-Z]{3,5}"
    write_resource(pkg, d, "institutions", "institution_id,name\nATK,A\nKITIG,K\nATk,Bad\n")
    write_resource(pkg, d, "people", repetitive_people(bad=(12, (",KITIG,", ",ATk,"))))
    save(pkg, d)
    proc = run_rk("datasets", "validate", "mini", "people", cwd=root, env=env)
    from conftest import TALLY

    TALLY.bad_inputs += 1
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    for fragment in ["people.csv:12", "'institution_id'", "'ATk'", "pattern"]:
        assert fragment in proc.stderr, proc.stderr
    assert proc.stderr.count("pattern") == 1, proc.stderr
