"""Public reports disclose nothing: run each report template with `audience=public` through the real
`rk batch`, then scan what a reader of the run would see -- every text/plain and text/html output and
every record of the executed notebook, and report.html -- for student pseudonyms and small counts.

The scan is deliberately simple, and documented here so a template author knows the rules:

- a **student identifier** is a pseudonym `S-XXXXXXXX` in any case and across separators, or a valid
  IIN whole or in groups (`research_kit.identifiers.find_pseudonyms` / `find_iins`);
- a **table of counts** is a record holding a list of dicts, or an HTML `<table>`, and its **count
  columns** are those named `n`, `count`, `events`, `students`, `enrolled`, `graduates`,
  `n_reference`, or ending in `_n` / `_count`, or starting with `n_` -- or headed by the reader's
  word for one of these (`research_kit.analysis.presentation.header` in kk, ru, en), or by a
  gender and a language of study, as the profile's enrolment table is; numbers are read as
  readers see them (`1 200`, `1,200`), and `<10` is a masked cell;
- a **small count** is a number in a count column with 0 < value < threshold (the workspace's
  `privacy.threshold`, 10). Zero is allowed: `research_kit.analysis.privacy.suppress` publishes
  zeros. Missing values (`<NA>`, `None`, `NaN`) are what suppression leaves and are fine.

An HTML table's column names are taken from its header row with the most non-empty cells, and the
cells of each body row (index `<th>` included) are matched to them by position; tables with
multi-level column headers are outside this scan, so templates avoid them in displayed tables.
The scan is shown to work by running it on a consortium-audience profile of a small institution,
where it must find small counts.

The runs scanned that the public batch does not make run together as one more real `rk batch`.
Independently of this scan, the whole `public` batch of reports/batches.yaml runs through the real
`rk batch public`: every run must pass the disclosure audit (`publishable`, no finding, audited with
the workspace's threshold), and every table, figure and number-bearing output of a public run must
carry the vetted mark of `rk.show` / `rk.record`. No run here prints a PDF: nothing here reads one.
"""

import json
import os
import re

import nbformat
import pytest
from bs4 import BeautifulSoup

from conftest import ROOT, run_rk

THRESHOLD = 10
COUNT_NAMES = {"n", "count", "events", "students", "enrolled", "graduates", "n_reference"}


def reader_count_headers() -> set:
    "The headers readers see over count columns, in every language."
    from research_kit.analysis.presentation import header
    from research_kit.data.labels import package_labels

    out = set()
    for lang in ("kk", "ru", "en"):
        out |= {header(c, lang).lower() for c in [*COUNT_NAMES, "total"]}
        names = package_labels("consortium", lang)
        out |= {f"{g}, {l}".lower() for g in names["gender"].values() for l in names["language"].values()}
    return out


READER_COUNT_HEADERS = reader_count_headers()
PUBLIC_RUNS = {  # report -> parameters; the small college and its sector table give small cells to protect
    "institution_profile": ["institution=KITIG", "audience=public"],
    "consortium_overview": ["audience=public"],
    "internship_outcomes": ["institution=KITIG", "audience=public"],
    "dropout_risk": ["institution=KITIG", "audience=public"],
    "pathways": ["institution=KITIG", "audience=public"],
    "working_professions": ["audience=public"],
    "outreach_effect": ["audience=public"],
}
CONSORTIUM_RUN = ("institution_profile", ["institution=KITIG", "audience=consortium"])


def is_count_column(name) -> bool:
    name = str(name).strip().lower()
    return (
        name in COUNT_NAMES
        or name in READER_COUNT_HEADERS
        or name.endswith(("_n", "_count"))
        or name.startswith("n_")
    )


def number(value):
    "A cell as a float, or None for missing values and text."
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return None if value != value else float(value)
    try:
        return float(re.sub(r"[,\s\u00a0\u202f]", "", str(value)))
    except ValueError:
        return None


class Scan:
    "What a scan found, plus how much it looked at (so an empty result is not a vacuous one)."

    def __init__(self):
        self.identifiers, self.small_counts, self.count_cells, self.tables = [], [], 0, 0

    def text(self, where, text):
        from research_kit.identifiers import find_iins, find_pseudonyms

        self.identifiers += [(where, m) for m in find_pseudonyms(text) + find_iins(text)]

    def table(self, where, columns, rows):
        self.tables += 1
        for i, row in enumerate(rows):
            for column, value in zip(columns, row):
                if not is_count_column(column):
                    continue
                v = number(value)
                if v is None:
                    continue
                self.count_cells += 1
                if 0 < v < THRESHOLD:
                    self.small_counts.append((where, i, column, v))

    def html(self, where, html):
        self.text(where, html)
        for k, table in enumerate(BeautifulSoup(html, "html.parser").find_all("table")):
            head = table.find("thead")
            header_rows = head.find_all("tr") if head else table.find_all("tr")[:1]
            if not header_rows:
                continue
            columns = max(
                ([c.get_text(strip=True) for c in r.find_all(["th", "td"])] for r in header_rows),
                key=lambda cells: sum(1 for c in cells if c),
            )
            body = table.find("tbody") or table
            rows = [[c.get_text(strip=True) for c in r.find_all(["th", "td"])] for r in body.find_all("tr")]
            rows = [r for r in rows if r and len(r) == len(columns) and r != columns]
            self.table(f"{where} table {k}", columns, rows)


def scan_run(folder) -> Scan:
    "Scan an executed report.ipynb (outputs and records) and report.html in `folder`."
    from research_kit.runner.record import MIMETYPE

    scan = Scan()
    nb = nbformat.read(folder / "report.ipynb", as_version=4)
    for c, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            where = f"cell {c}"
            if "text" in output:
                scan.text(where, output["text"])
            data = output.get("data", {})
            if "text/plain" in data:
                scan.text(where, data["text/plain"])
            if "text/html" in data:
                scan.html(where, data["text/html"])
            if MIMETYPE in data:
                entry = data[MIMETYPE] if isinstance(data[MIMETYPE], dict) else json.loads(data[MIMETYPE])
                value = entry["value"]
                scan.text(f"record {entry['name']}", json.dumps(value))
                if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
                    columns = list(dict.fromkeys(k for r in value for k in r))
                    scan.table(
                        f"record {entry['name']}", columns, [[r.get(k) for k in columns] for r in value]
                    )
    scan.html("report.html", (folder / "report.html").read_text(encoding="utf-8"))
    return scan


def build_env(build):
    "No PDFs: nothing here reads one (test_documents and test_reader_languages do), and chromium would print every public run."
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("RK_")},
        "RK_WORKSPACE_BUILD": str(build),
        "RK_RUNNER_PDF": "off",
    }


def find(report, params, build):
    "The run folder of `report` with `params` in `build`, or None."
    found = [
        m.parent
        for m in build.glob(f"{report}/*/manifest.json")
        if all(p in m.parent.name.split(",") for p in params)
    ]
    return found[0] if found else None


def run_as_one_batch(wanted, build, reports):
    """Run `wanted` ([(report, params)]) by one real `rk batch --force` into `build` (one pool of workers for them
    all): a batches.yaml of their own in `reports`, beside copies of their templates. {(report, params): run folder}."""
    import shutil
    import yaml

    reports.mkdir()
    entries = []
    for report, params in wanted:
        shutil.copy(ROOT / "reports" / f"{report}.ipynb", reports)
        entries.append({"report": report, "parameters": [dict(p.split("=", 1) for p in params)]})
    (reports / "batches.yaml").write_text(yaml.safe_dump({"missing": entries}))
    run_rk(
        "batch",
        "missing",
        "--force",
        cwd=ROOT,
        env={**build_env(build), "RK_WORKSPACE_REPORTS": str(reports)},
        check=0,
    )
    folders = {}
    for report, params in wanted:
        folders[report, tuple(params)] = folder = find(report, params, build)
        assert json.loads((folder / "manifest.json").read_text())["status"] == "succeeded"
    return folders


@pytest.fixture(scope="module")
def public_batch(tmp_path_factory):
    "The real `rk batch public` into a fresh build folder: (process, build folder)."
    build = tmp_path_factory.mktemp("public-build")
    return run_rk("batch", "public", cwd=ROOT, env=build_env(build)), build


@pytest.fixture(scope="module")
def runs(public_batch, tmp_path_factory):
    "The runs scanned: those of PUBLIC_RUNS the public batch made, the rest and CONSORTIUM_RUN run as one batch."
    _, build = public_batch
    out = {report: find(report, params, build) for report, params in PUBLIC_RUNS.items()}
    missing = [(report, params) for report, params in PUBLIC_RUNS.items() if out[report] is None]
    made = run_as_one_batch(
        [*missing, CONSORTIUM_RUN], build, tmp_path_factory.mktemp("public-more") / "reports"
    )
    out.update({report: made[report, tuple(params)] for report, params in missing})
    out["consortium"] = made[CONSORTIUM_RUN[0], tuple(CONSORTIUM_RUN[1])]
    return out


def test_the_public_batch_passes_the_audit(public_batch):
    "Every run of `rk batch public` succeeds and is publishable, audited with the workspace's threshold."
    from research_kit.runner.batch import plan_batch
    from research_kit.settings import load_settings

    proc, build = public_batch
    assert proc.returncode == 0, proc.stdout + proc.stderr
    planned = plan_batch("public", load_settings(ROOT))
    manifests = {
        r.name: json.loads((build / r.report / r.slug / "manifest.json").read_text()) for r in planned
    }
    assert len(manifests) == len(planned) >= 9
    for name, m in manifests.items():
        assert m["status"] == "succeeded" and m["parameters"]["audience"] == "public", name
        assert m["publishable"] is True and m["audit"] == [] and m["audit_reasons"] == [], (name, m["audit"])
        assert m["audit_threshold"] == m["threshold_policy"] == THRESHOLD, name
    index = (build / "index.html").read_text()
    assert "not publishable" not in index and index.count(f"threshold {THRESHOLD}") >= len(planned)


def test_public_outputs_with_numbers_are_vetted(public_batch):
    "In every public run, each table, figure and number-bearing output carries rk.show's or rk.record's mark."
    from research_kit.runner.record import VETTED, integers, output_digest

    _, build = public_batch
    checked = 0
    for folder in sorted(p.parent for p in build.glob("*/*/manifest.json")):
        if "audience=public" not in folder.name:
            continue
        nb = nbformat.read(folder / "report.ipynb", as_version=4)
        for c, cell in enumerate(nb.cells):
            for output in cell.get("outputs", []):
                if output["output_type"] == "stream":
                    assert not integers(output["text"]), (folder.name, c, output["text"][:200])
                if output["output_type"] not in ("display_data", "execute_result"):
                    continue
                data = output["data"]
                carries = (
                    any(k.startswith("image/") for k in data)
                    or "<table" in data.get("text/html", "")
                    or any(
                        integers(v) for k, v in data.items() if k.startswith("text/") and isinstance(v, str)
                    )
                )
                if not carries:
                    continue
                mark = output.get("metadata", {}).get(VETTED)
                assert mark and mark["vetted"] is True and mark["threshold"] >= THRESHOLD, (
                    folder.name,
                    c,
                    list(data),
                )
                assert mark["sha256"] == output_digest(data), (folder.name, c)
                checked += 1
    assert checked > 30, "no vetted output was checked"


@pytest.mark.parametrize("report", sorted(PUBLIC_RUNS))
def test_public_report_discloses_nothing(runs, report):
    scan = scan_run(runs[report])
    assert scan.identifiers == [], f"student identifiers in {report}: {scan.identifiers[:5]}"
    assert scan.small_counts == [], f"counts below {THRESHOLD} in {report}: {scan.small_counts[:5]}"
    assert scan.tables > 0 and scan.count_cells > 0, "the scan found no table of counts to check"


def test_public_profile_did_suppress(runs):
    "The KITIG profile has small cells: public shows them masked, and records no masked count."
    from research_kit.runner.record import records

    nb = nbformat.read(runs["institution_profile"] / "report.ipynb", as_version=4)
    shown = "".join(o.get("data", {}).get("text/plain", "") for c in nb.cells for o in c.get("outputs", []))
    assert "<10" in shown and "<NA>" not in shown  # masked cells, shown as readers see them
    rec = records(runs["institution_profile"] / "report.ipynb")
    assert rec["students"] == 473 and all(
        r["students"] is None or r["students"] >= THRESHOLD for r in rec["enrolment_by_programme"]
    )


def test_scan_finds_small_counts_in_a_consortium_report(runs):
    "The same scan on the unsuppressed profile of a small college finds small counts: it can see them."
    scan = scan_run(runs["consortium"])
    assert scan.small_counts, "the scan found no small count where there are some"
    assert any(column.lower() in READER_COUNT_HEADERS for _, _, column, _ in scan.small_counts)
    assert scan.identifiers == []  # consortium reports show no row-level data either


def test_scan_detects_identifiers_and_small_counts_in_records(tmp_path):
    "The scanner on a hand-made run: a pseudonym in text, a small count in a record table and in HTML."
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="student S-0A1B2C3D\n"),
        nbformat.v4.new_output(
            "display_data",
            data={
                "application/vnd.research-kit.record+json": {"name": "t", "value": [{"group": "a", "n": 4}]},
                "text/plain": "t",
            },
        ),
    ]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "report.ipynb")
    (tmp_path / "report.html").write_text(
        "<table><thead><tr><th></th><th>events</th><th>rate</th></tr></thead>"
        "<tbody><tr><th>0</th><td>3</td><td>0.3</td></tr>"
        "<tr><th>1</th><td>&lt;NA&gt;</td><td>0</td></tr></tbody></table>"
    )
    scan = scan_run(tmp_path)
    assert [m for _, m in scan.identifiers] == ["S-0A1B2C3D"]
    assert sorted((col, v) for _, _, col, v in scan.small_counts) == [("events", 3.0), ("n", 4.0)]
