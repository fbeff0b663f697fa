"""Publishable outputs: a public run that shows a student pseudonym, an IIN or a small count fails
the audit, is marked not publishable in its manifest and on the index page, and the batch exits 1."""
import json

from conftest import make_template, run_rk

AUDIENCE = 'audience: Literal["consortium", "public"] = "consortium"'
IIN = "870412300017"  # passes the check digit


def test_public_runs_are_audited(report_workspace):
    root, _, env = report_workspace
    reports = root / "reports"
    make_template(reports / "leaky.ipynb", AUDIENCE + "\nleak: str = 'none'",
                  f"import pandas as pd, research_kit as rk\nIIN = '{IIN[:6]}' + '{IIN[6:]}'\n"
                  "if leak == 'pseudonym': print('top student: S-' + '1A2B3C4D')\n"  # built, so the source itself is clean
                  "if leak == 'iin': print('id ' + IIN[:6] + IIN[6:])\n"
                  "if leak == 'count': rk.record('by_group', [{'group': 'a', 'n': 3}, {'group': 'b', 'n': 40}])\n"
                  "rk.record('total', 43)")
    (reports / "batches.yaml").write_text(
        "publish:\n  - report: leaky\n    grid: {audience: [public], leak: [none, pseudonym, iin, count]}\n"
        "  - report: leaky\n    parameters: [{audience: consortium, leak: count}]\n")
    proc = run_rk("batch", "publish", cwd=root, env=env)
    assert proc.returncode == 1 and "3 public reports failed the disclosure audit" in proc.stderr, proc.stderr
    build = root / "reports" / "_build" / "leaky"
    m = {p.parent.name: json.loads(p.read_text()) for p in build.glob("*/manifest.json")}
    assert m["audience=public,leak=none"]["publishable"] is True
    for leak, kind in [("pseudonym", "pseudonym"), ("iin", "iin"), ("count", "small_count")]:
        entry = m[f"audience=public,leak={leak}"]
        assert entry["publishable"] is False and {a["kind"] for a in entry["audit"]} == {kind}, entry["audit"]
        assert {a["file"] for a in entry["audit"]} == {"report.ipynb", "report.html"}
        assert "S-1A2B3C4D" not in json.dumps(entry["audit"]) and IIN not in json.dumps(entry["audit"])
    assert m["audience=consortium,leak=count"]["publishable"] is False  # consortium runs are never for publication
    index = (root / "reports" / "_build" / "index.html").read_text()
    assert index.count("not publishable") >= 4

    proc = run_rk("audit", build / "audience=public,leak=none", cwd=root, env=env, check=0)
    assert "publishable" in proc.stdout
    proc = run_rk("audit", "--batch", "publish", cwd=root, env=env)
    assert proc.returncode == 1 and "not publishable" in proc.stdout and "S-1A2B****" in proc.stdout
