"""Publishable outputs: a public run that shows a student pseudonym, an IIN, or a count that did not
go through the library's suppression path fails the audit, is marked not publishable in its
manifest and on the index page, and the batch exits 1. The threshold committed in settings.ini is a
floor: a lower one from the environment makes public runs not publishable."""

import json
import os
import textwrap

import pytest

from conftest import make_template, run_rk

AUDIENCE = 'audience: Literal["consortium", "public"] = "consortium"'
IIN = "870412300017"  # passes the check digit

# One template, one `leak` per way a count or an identifier reached a public page unnoticed by the
# audit that guessed count columns by name. Identifiers are built at run time, so the template's
# own source is clean.
LEAKS = {
    "record_n": "rk.record('n', 3)",
    "record_students": "rk.record('students', 4)",
    "record_dict": "rk.record('by_group', {'a': 3})",
    "n_reference": "display(pd.DataFrame({'estimate': [0.12], 'n': [40], 'n_reference': [4]}))",
    "value_counts": "print(pd.Series(['a', 'a', 'b', 'c']).value_counts())",
    "print": "print('only 3 students in the programme')",
    "crosstab": (
        "display(pd.crosstab(pd.Series(['x', 'x', 'y'], name='site'), "
        "pd.Series(['kazakh', 'russian', 'kazakh'], name='language')))"
    ),
    "headcount": "display(pd.DataFrame({'programme': ['a', 'b'], 'headcount': [4, 40]}))",
    "cell_text": "display(pd.DataFrame({'programme': ['a'], 'share': ['3 (7%)']}))",
    "transposed": "display(pd.DataFrame({'programme': ['a', 'b'], 'n': [3, 40]}).T)",
    "pseudonym_case": "print('top student: s-' + '1a2b3c4d')",
    "pseudonym_separators": "print('top student: S-' + '1A2B-3C4D')",
    "iin_space": "print('id ' + IIN[:6] + ' ' + IIN[6:])",
    "iin_dash": "print('id ' + IIN[:6] + '-' + IIN[6:])",
    # suppress's table with the partners of its small count shown again by hand: no small number shows,
    # so rk.show lets it through, but the count is its row's total minus the rest
    "weak_pattern": (
        "from research_kit.analysis.privacy import suppress\n"
        "t = pd.DataFrame({'a': [4, 30], 'b': [40, 50]}, index=['x', 'y'])\n"
        "t = t.assign(total=t.sum(axis=1))\n"
        "t.loc['all'] = t.sum()\n"
        "shown, masked = suppress(t, ['a', 'b'], 10, total_row='all', total_column='total')\n"
        "for (row, column), hidden in masked.stack().items():\n"
        "    if hidden and (row, column) != ('x', 'a'): shown.loc[row, column] = t.loc[row, column]\n"
        "rk.show(shown)"
    ),
}
KIND = {
    "pseudonym_case": "pseudonym",
    "pseudonym_separators": "pseudonym",
    "iin_space": "iin",
    "iin_dash": "iin",
    "weak_pattern": "unprotected",
}
# The same report done right: a suppressed table and a text through rk.show, a count suppressed
# before it is recorded, a rate recorded as it is.
CLEAN = (
    "from research_kit.analysis.privacy import suppress, suppress_count\n"
    "table = pd.DataFrame({'programme': ['a', 'b', 'c'], 'n': [3, 40, 52]})\n"
    "rk.show(suppress(table, ['n'], 10)[0])\n"
    "rk.show('Cohort 2024: counts below 10 are not shown.')\n"
    "rk.record('students', suppress_count(95, 10))\n"
    "rk.record('by_programme', suppress(table, ['n'], 10)[0])\n"
    "rk.record('rate', 0.31)\n"
    "print('done')"
)
RATES_ONLY = (
    "rk.record('rate', 0.31)\nprint('done')"  # nothing to suppress: publishable under the old audit too
)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    "A workspace whose `publish` batch ran every leak and the clean report, publicly, and one consortium run."
    from conftest import INSTITUTIONS, PEOPLE, mini_descriptor, save, write_resource

    root = tmp_path_factory.mktemp("audit") / "ws"
    pkg = root / "datasets" / "mini"
    pkg.mkdir(parents=True)
    (root / "settings.ini").write_text(
        "[workspace]\ndata = datasets\ncache = .cache\n[privacy]\nthreshold = 10\n"
    )
    d = mini_descriptor()
    write_resource(pkg, d, "institutions", INSTITUTIONS)
    write_resource(pkg, d, "people", PEOPLE)
    save(pkg, d)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RK_")}
    reports = root / "reports"
    branches = "".join(
        f"if leak == {name!r}:\n{textwrap.indent(code, '    ')}\n"
        for name, code in {**LEAKS, "none": CLEAN, "rates_only": RATES_ONLY}.items()
    )
    make_template(
        reports / "leaky.ipynb",
        AUDIENCE + "\nleak: str = 'none'",
        f"import pandas as pd, research_kit as rk\nfrom IPython.display import display\nIIN = '{IIN[:6]}' + '{IIN[6:]}'\n"
        + branches,
    )
    (reports / "batches.yaml").write_text(
        "publish:\n  - report: leaky\n    grid: {audience: [public], leak: ["
        + ", ".join(["none", *LEAKS])
        + "]}\n"
        "  - report: leaky\n    parameters: [{audience: public, leak: rates_only}, {audience: consortium, leak: record_n}]\n"
    )
    proc = run_rk(
        "batch", "publish", cwd=root, env={**env, "RK_RUNNER_PDF": "off"}
    )  # the audit reads no PDF, nor does a test here
    build = root / "reports" / "_build" / "leaky"
    manifests = {p.parent.name: json.loads(p.read_text()) for p in build.glob("*/manifest.json")}
    return root, env, proc, build, manifests


def test_a_clean_public_run_is_publishable(audited):
    root, env, proc, build, m = audited
    clean = m["audience=public,leak=none"]
    assert clean["status"] == "succeeded", clean["error"]
    assert clean["publishable"] is True and clean["audit"] == [], clean["audit"]
    assert (clean["audit_threshold"], clean["threshold_policy"]) == (10, 10)
    assert clean["records"]["students"] == 95 and clean["records"]["by_programme"][0]["n"] is None
    proc = run_rk("audit", build / "audience=public,leak=none", cwd=root, env=env, check=0)
    assert proc.stdout.strip().endswith("publishable")


@pytest.mark.parametrize("leak", sorted(LEAKS))
def test_every_leak_fails_the_audit(audited, leak, tally):
    "Each leak the old audit let through is a finding naming the cell; identifiers are masked."
    tally.bad_inputs += 1
    root, env, proc, build, m = audited
    entry = m[f"audience=public,leak={leak}"]
    assert entry["status"] == "succeeded", entry["error"]
    assert entry["publishable"] is False, entry["audit"]
    kinds = {a["kind"] for a in entry["audit"]}
    assert KIND.get(leak, "unvetted") in kinds, entry["audit"]
    cells = [a for a in entry["audit"] if a["file"] == "report.ipynb" and a["location"].startswith("cell ")]
    assert cells, entry["audit"]
    if leak not in KIND:  # a count: the finding says which cell and output (or record) and what it holds
        finding = next(a for a in cells if a["kind"] == "unvetted")
        assert " output " in finding["location"] and finding["detail"], finding
    shown = json.dumps(entry["audit"]).lower()
    assert "1a2b3c4d" not in shown and "3c4d" not in shown and IIN[6:] not in shown


def test_a_weak_suppression_pattern_fails_the_audit_naming_the_cell(audited, tally):
    "The audit attacks every vetted table again by linear programming: the count rk.show could not see is named."
    tally.bad_inputs += 1
    root, env, proc, build, m = audited
    entry = m["audience=public,leak=weak_pattern"]
    assert entry["status"] == "succeeded", entry["error"]
    found = [a for a in entry["audit"] if a["kind"] == "unprotected"]
    assert [(a["location"].split()[0], a["detail"].split(":")[0]) for a in found] == [
        ("cell", "row 'x', column 'a'")
    ], entry["audit"]
    assert " 4" not in found[0]["detail"]  # the count itself is never written down
    proc = run_rk("audit", build / "audience=public,leak=weak_pattern", cwd=root, env=env, check=1)
    assert (
        "not publishable: 1 unprotected count found" in proc.stdout and "row 'x', column 'a'" in proc.stdout
    ), proc.stdout


def test_the_batch_and_the_index_say_not_publishable(audited):
    root, env, proc, build, m = audited
    assert (
        proc.returncode == 1 and f"{len(LEAKS)} public reports failed the disclosure audit" in proc.stderr
    ), proc.stderr
    assert (
        m["audience=consortium,leak=record_n"]["publishable"] is False
    )  # consortium runs are never for publication
    assert not any(
        a["kind"] == "unvetted" for a in m["audience=consortium,leak=record_n"]["audit"]
    )  # nor count-checked
    index = (root / "reports" / "_build" / "index.html").read_text()
    assert index.count("not publishable") >= len(LEAKS) + 1 and "threshold 10" in index
    proc = run_rk("audit", "--batch", "publish", cwd=root, env=env)
    assert proc.returncode == 1 and "not publishable" in proc.stdout and "S-1A2B****" in proc.stdout
    assert "cell " in proc.stdout and "unvetted" in proc.stdout


def test_a_threshold_below_the_policy_is_not_publishable(audited, tally):
    "RK_PRIVACY_THRESHOLD=1 cannot make a public run publishable: settings.ini's threshold is a floor."
    tally.bad_inputs += 1
    root, env, proc, build, m = audited
    run = build / "audience=public,leak=rates_only"
    assert m[run.name]["publishable"] is True
    proc = run_rk("audit", run, cwd=root, env={**env, "RK_PRIVACY_THRESHOLD": "1"})
    assert proc.returncode == 1, proc.stdout
    assert "not publishable: threshold 1 is below the workspace's policy (10, settings.ini)" in proc.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["publishable"] is False and (
        manifest["audit_threshold"],
        manifest["threshold_policy"],
    ) == (1, 10)
    assert "threshold 1, policy 10" in (root / "reports" / "_build" / "index.html").read_text()
    # a leaking run stays unpublishable however low the threshold
    proc = run_rk(
        "audit", build / "audience=public,leak=record_n", cwd=root, env={**env, "RK_PRIVACY_THRESHOLD": "1"}
    )
    assert proc.returncode == 1 and "record 'n'" in proc.stdout
    # the policy's own value (or a higher one) audits as before
    proc = run_rk("audit", run, cwd=root, env={**env, "RK_PRIVACY_THRESHOLD": "10"}, check=0)
    assert json.loads((run / "manifest.json").read_text())["publishable"] is True


def test_own_settings_cannot_lower_the_policy(audited, tmp_path, tally):
    """A threshold in the researcher's own settings file is overridden by settings.ini's; where settings.ini
    sets none, one below the default policy is a local override, like RK_PRIVACY_THRESHOLD."""
    tally.bad_inputs += 1
    root, env, proc, build, m = audited
    run = build / "audience=public,leak=rates_only"
    own = tmp_path / "research_kit" / "settings.ini"
    own.parent.mkdir()
    own.write_text("[privacy]\nthreshold = 1\n")
    with_own = {**env, "XDG_CONFIG_HOME": str(tmp_path)}
    run_rk("audit", run, cwd=root, env=with_own, check=0)  # settings.ini says 10: the user's 1 is not used
    assert json.loads((run / "manifest.json").read_text())["audit_threshold"] == 10
    workspace_file = root / "settings.ini"
    committed = workspace_file.read_text()
    workspace_file.write_text(
        "[workspace]\ndata = datasets\ncache = .cache\n"
    )  # the policy is then the default, 10
    try:
        proc = run_rk("audit", run, cwd=root, env=with_own)
        assert proc.returncode == 1, proc.stdout
        assert (
            "not publishable: threshold 1 is below the workspace's policy (10, settings.ini)" in proc.stdout
        )
        run_rk("audit", run, cwd=root, env=env, check=0)  # without the user's file: publishable again
    finally:
        workspace_file.write_text(committed)
