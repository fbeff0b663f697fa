"""The shipped institution profile as a reader gets it, in Kazakh and in Russian, seen in a real browser
(Debian's chromium through Playwright): the public reader document of KITIG shows no code and no
parameter cell, no raw missing values and no long decimals, names programmes and columns in the
reader's language, and says which language it is in; its PDF carries the Kazakh text."""
import json
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, run_rk
from test_browser import ARTIFACTS, browser, clean_env  # noqa: F401  (the shared browser fixture)

EXPECTED = {  # words the document must show: a programme, a column header, the section of key figures
    "kk": {"programme": "Қонақ үй қызметі", "column": "Білім беру бағдарламасы", "heading": "Негізгі көрсеткіштер",
           "title": "Туризм және қонақжайлылық индустриясы колледжі — Оқу орнының профилі"},
    "ru": {"programme": "Гостиничный сервис", "column": "Образовательная программа", "heading": "Основные показатели",
           "title": "Колледж индустрии туризма и гостеприимства — Профиль учебного заведения"},
}
LONG_DECIMAL = re.compile(r"\d[.,]\d{5,}")  # a number with more than four decimals, in either decimal mark


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    "The public KITIG profile run in Kazakh and in Russian by the real `rk run`: lang -> run folder."
    build = tmp_path_factory.mktemp("reader-languages")
    env = clean_env(RK_WORKSPACE_BUILD=str(build))
    folders = {}
    for lang in EXPECTED:
        run_rk("run", "institution_profile", "-p", "institution=KITIG", "-p", "audience=public", "-p", f"lang={lang}",
               cwd=ROOT, env=env)
        [folders[lang]] = [m.parent for m in build.glob("institution_profile/*/manifest.json") if f"lang={lang}" in m.parent.name]
    return folders


@pytest.mark.parametrize("lang", sorted(EXPECTED))
def test_reader_document_in_the_readers_language(browser, profiles, lang):
    folder, words = profiles[lang], EXPECTED[lang]
    m = json.loads((folder / "manifest.json").read_text())
    assert m["status"] == "succeeded" and m["publishable"] is True, m.get("audit")
    assert isinstance(m["records"]["retention_rate"], float) and LONG_DECIMAL.search(repr(m["records"]["retention_rate"]))  # full precision kept
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto((folder / "report.html").as_uri())
    assert page.locator("html").get_attribute("lang") == lang
    assert page.title().startswith(words["title"]), page.title()
    text = page.locator("body").inner_text()
    for gone in ("institution: str", "lang: Literal", "import research_kit", "rk.show(", "counts_table", "functools",
                 "<NA>", "NaN", "KITIG-01", "female_kazakh_n", "total_n", "retention_rate"):
        assert gone not in text, gone
    assert page.locator(".input, .input_area, .jp-InputArea").count() == 0
    assert not LONG_DECIMAL.search(text), LONG_DECIMAL.search(text).group()
    for key in ("programme", "column", "heading"): assert words[key] in text, key
    assert "<10" in text and page.locator("p.rk-footnote").count() >= 1  # masked cells, and why
    assert page.locator("table.rk-table thead th").first.inner_text() == words["column"]
    other = {"kk": "Основные показатели", "ru": "Негізгі көрсеткіштер"}[lang]
    assert other not in text  # the other language's prose was left out
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"institution-profile-KITIG-{lang}.png"), full_page=True)
    page.close()


@pytest.mark.skipif(not shutil.which("pdftotext"), reason="pdftotext (poppler-utils) is needed: .ci/run installs it")
def test_kazakh_pdf_carries_the_kazakh_words(profiles):
    folder = profiles["kk"]
    m = json.loads((folder / "manifest.json").read_text())
    assert m["pdf"]["made"] is True, m["pdf"]
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", str(folder / "report.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "Қонақ үй қызметі" in text and "көрсеткіштер" in text
