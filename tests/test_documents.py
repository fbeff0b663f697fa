"""What a run leaves for readers, seen in a real browser (Debian's chromium through Playwright):
the reader document (report.html) and its PDF, and the index page's states for a batch with a
publishable, an audit-failed and an internal run."""

import json
import os
import re
import shutil
import subprocess

import nbformat
import pytest

from conftest import ROOT, check_build, run_rk
from test_browser import ARTIFACTS, CHROMIUM, browser  # noqa: F401  (the shared browser fixture)

KITIG_KK = (
    "Туризм және қонақжайлылық индустриясы колледжі"  # KITIG's name in Kazakh, from the consortium's labels
)
KAZAKH_WORD = "бітірушілерге"  # "for school leavers": ә, і and ү are letters Russian does not have
PARAMS = (
    'institution: str = "ATK"  # institution code\nyear: int = 2024  # cohort year\n'
    'audience: Literal["consortium", "public"] = "consortium"  # who may read it\n'
    'lang: Literal["kk", "ru", "en"] = "en"  # language of the document\n'
    "leak: bool = False  # record a small count (the audit must stop it)"
)
CODE = (  # a public run may show counts only through the library's vetted path (rk.show, suppressed records)
    "import sys, pandas as pd, matplotlib.pyplot as plt\nimport research_kit as rk\n"
    "from research_kit.analysis.privacy import suppress, suppress_count\n"
    "def helper_function_of_the_template(x): return x\n"
    "people = rk.load('mini', 'people')\n"
    "print('a warning only researchers should see', file=sys.stderr)\n"
    "print('printed only for researchers')\n"
    "rk.show('Мектеп бітірушілерге арналған есеп — Қазақ тілі: ә ғ қ ң ө ұ ү һ і')\n"
    "table = pd.DataFrame({'institution': ['ATK', 'KITIG'], 'students': [120, 45]})\n"
    "shown, _ = suppress(table, ['students'], 10)\n"
    "rk.record('students', suppress_count(int(table.students.sum()), 10))\n"
    "if leak: rk.record('by_group', [{'group': 'a', 'n': 3}])\n"
    "fig, ax = plt.subplots(figsize=(4, 2)); ax.bar(table.institution, table.students)\n"
    "rk.show(fig)\n"
    "rk.show(shown)"
)


def docs_workspace(root):
    """A report template for the documents: a heading, typed parameters, prose in Kazakh, a warning,
    a table, a record, a plot."""
    # `institution` parameters are checked against the consortium's institutions
    (root / "datasets" / "consortium").symlink_to(ROOT / "datasets" / "consortium")
    path = root / "reports" / "docs.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    v4 = nbformat.v4
    nb = v4.new_notebook(
        metadata={
            "kernelspec": {"name": "research-kit", "display_name": "research_kit", "language": "python"},
            "language_info": {"name": "python"},
        }
    )
    nb.cells = [
        v4.new_markdown_cell(
            "# Institution profile\n\nМектеп бітірушілерге: who enrolled, and what became of them."
        ),
        v4.new_code_cell("from typing import Literal"),
        v4.new_code_cell(PARAMS, metadata={"tags": ["parameters"]}),
        v4.new_code_cell(CODE),
    ]
    nbformat.write(nb, path)
    (root / "reports" / "batches.yaml").write_text(
        "three:\n"
        "  - report: docs\n"
        "    parameters: [{institution: KITIG, audience: public, lang: kk},\n"
        "                 {institution: ATK, audience: public, leak: true},\n"
        "                 {institution: APC, audience: consortium, lang: ru}]\n"
    )
    return root / "reports" / "_build"


@pytest.fixture
def docs_run(workspace):
    root, _, env = workspace
    build = docs_workspace(root)
    run_rk(
        "run",
        "docs",
        "-p",
        "institution=KITIG",
        "-p",
        "audience=public",
        "-p",
        "lang=kk",
        cwd=root,
        env=env,
        check=0,
    )
    [folder] = (build / "docs").iterdir()
    return root, build, folder, env


def test_reader_document_has_no_code_and_says_where_it_came_from(browser, docs_run):
    root, build, folder, _ = docs_run
    m = json.loads((folder / "manifest.json").read_text())
    assert set(m["outputs"]) == {"report.ipynb", "report.html", "notebook.html", "report.pdf"}, m["outputs"]
    check_build(build)  # every output's sha256 matches the manifest
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    page.goto((folder / "report.html").as_uri())
    # the title in the run's language, the institution by its name from the descriptor's labels
    assert (
        page.title()
        == f"{KITIG_KK} — Institution profile, 2024 жылы түскендер, жариялауға арналған нұсқа, leak жоқ"
    )
    assert page.locator("html").get_attribute("lang") == "kk"
    text = page.locator("body").inner_text()
    for gone in (
        "helper_function_of_the_template",
        "institution: str",
        'institution = "KITIG"',
        "rk.load",
        "a warning only researchers should see",
        "printed only for researchers",
        "In [",
        "Out[",
    ):
        assert gone not in text, gone
    assert page.locator(".input, .input_area, .jp-InputArea, .prompt:visible").count() == 0
    assert "<NA>" not in text and "NaN" not in text
    assert (
        KAZAKH_WORD in text
        and page.locator("table.dataframe").count() == 1
        and page.locator("img").count() == 1
    )
    assert page.locator("img").first.get_attribute("src").startswith("data:image/png;base64,")
    assert (
        page.locator("img").first.get_attribute("alt") == "ATK; KITIG"
    )  # the figure's own words, for who cannot see it
    assert page.locator(".rk-record[data-name='students']").count() == 1
    footer = page.locator("footer.rk-provenance").inner_text()
    [data] = m["inputs"]
    assert (
        data["package"] in footer and "нұсқа 1.0.0" in footer and data["sha256"][:12] in footer
    )  # in Kazakh: "version"
    assert (
        "research_kit " + m["code"]["research_kit"] in footer
        and m["started"][:10] in footer
        and "warm" in footer
    )
    assert "10 шегінен аз сандар" in footer  # the threshold in force for a public run: "counts below 10 ..."
    assert page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth"
    )  # nothing wider than the phone
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "reader-document-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1200, "height": 900})
    page.screenshot(path=str(ARTIFACTS / "reader-document.png"), full_page=True)
    page.locator("footer a.rk-index-link").click()
    page.wait_for_load_state()
    assert page.url.endswith("/index.html") and page.locator("tr.run").count() == 1
    page.close()
    notebook = (folder / "notebook.html").read_text()
    assert (
        "helper_function_of_the_template" in notebook and "a warning only researchers should see" in notebook
    )
    assert "printed only for researchers" in notebook


@pytest.mark.skipif(
    not shutil.which("pdftotext"), reason="pdftotext (poppler-utils) is needed: .ci/run installs it"
)
def test_pdf_carries_the_kazakh_letters(docs_run):
    _, _, folder, _ = docs_run
    m = json.loads((folder / "manifest.json").read_text())
    assert m["pdf"]["made"] is True, m["pdf"]
    text = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(folder / "report.pdf"), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert KAZAKH_WORD in text and "ә ғ қ ң ө ұ ү һ і" in text
    assert "helper_function_of_the_template" not in text and f"{KITIG_KK} — Institution profile" in text
    fonts = subprocess.run(
        ["pdffonts", str(folder / "report.pdf")], capture_output=True, text=True, check=True
    ).stdout
    assert all(" yes yes " in line for line in fonts.splitlines()[2:]), (
        fonts
    )  # every font embedded, as a subset


def test_no_pdf_when_turned_off_and_why(workspace):
    root, _, env = workspace
    build = docs_workspace(root)
    run_rk("run", "docs", "-p", "audience=public", cwd=root, env={**env, "RK_RUNNER_PDF": "off"}, check=0)
    [folder] = (build / "docs").iterdir()
    m = json.loads((folder / "manifest.json").read_text())
    assert (
        m["pdf"] == {"made": False, "reason": "[runner] pdf = off"} and not (folder / "report.pdf").exists()
    )
    assert (folder / "report.html").is_file() and "report.pdf" not in m["outputs"]


@pytest.mark.parametrize(
    "key,value,expected", [("PDF", "sometimes", "expected auto"), ("READER", "yes", "expected on or off")]
)
def test_bad_document_settings_are_named(workspace, tally, key, value, expected):
    root, _, env = workspace
    docs_workspace(root)
    tally.bad_inputs += 1
    proc = run_rk("run", "docs", cwd=root, env={**env, f"RK_RUNNER_{key}": value}, check=1)
    assert (
        f"[runner] {key.lower()} = {value!r}" in proc.stderr
        and expected in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_index_shows_publishable_audit_failed_and_internal_apart(browser, workspace):
    root, _, env = workspace
    build = docs_workspace(root)
    proc = run_rk("batch", "three", cwd=root, env={**env, "RK_RUNNER_PDF": "off"})
    assert proc.returncode == 1 and "1 public report failed the disclosure audit" in proc.stderr, proc.stderr
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto((build / "index.html").as_uri())
    assert page.locator("html").get_attribute("lang") == "en"
    rows = {r.get_attribute("data-institution"): r for r in page.locator("tr.run").all()}
    states = {k: r.get_attribute("data-state") for k, r in rows.items()}
    assert states == {"KITIG": "publishable", "ATK": "audit-failed", "APC": "internal"}, states
    labels = {k: r.locator(".state-label") for k, r in rows.items()}
    assert {k: l.inner_text() for k, l in labels.items()} == {
        "KITIG": "publishable",
        "ATK": "audit failed",
        "APC": "internal",
    }
    colours = {l.evaluate("e => getComputedStyle(e).backgroundColor") for l in labels.values()}
    assert len(colours) == 3  # told apart at a glance, not only by their words
    assert "passed the disclosure audit" in rows["KITIG"].inner_text()
    assert "'n' = 3" in rows["ATK"].inner_text() and rows["ATK"].locator(".findings li").count() >= 1
    assert "consortium audience: not for publication" in rows["APC"].inner_text()
    assert {k: r.locator("td.lang").inner_text() for k, r in rows.items()} == {
        "KITIG": "kk",
        "ATK": "en",
        "APC": "ru",
    }  # the default counts
    for r in rows.values():
        assert (
            r.locator("a.report-link").count()
            == r.locator("a.notebook-link").count()
            == r.locator("a.manifest-link").count()
            == 1
        )
    page.locator("fieldset[data-facet=state] label", has_text="internal").click()
    assert [r.get_attribute("data-institution") for r in page.locator("tr.run").all() if r.is_visible()] == [
        "APC"
    ]
    page.locator("fieldset[data-facet=lang] label", has_text="kk").click()
    assert not any(r.is_visible() for r in page.locator("tr.run").all())  # filters combine
    page.locator("fieldset[data-facet=state] label", has_text="all").click()
    assert [r.get_attribute("data-institution") for r in page.locator("tr.run").all() if r.is_visible()] == [
        "KITIG"
    ]
    page.locator("fieldset[data-facet=lang] label", has_text="all").click()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "index-states.png"), full_page=True)
    page.locator("tr.run[data-state=publishable] a.report-link").click()
    page.wait_for_load_state()
    assert page.url.endswith("/report.html") and page.title().startswith(f"{KITIG_KK} — Institution profile")
    page.close()
