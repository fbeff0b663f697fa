"""The shipped institution profile as a reader gets it, in Kazakh and in Russian, seen in a real browser
(Debian's chromium through Playwright): the public reader document of KITIG shows no code and no
parameter cell, no raw missing values and no long decimals, names programmes and columns in the
reader's language, and says which language it is in; its PDF carries the Kazakh text. Here too the check
that a Kazakh or Russian reader document leaves nothing in English (`untranslated`), shown to find what it
looks for; test_templates applies it to every shipped template."""

import functools
import json
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, run_rk
from test_browser import ARTIFACTS, browser, clean_env  # noqa: F401  (the shared browser fixture)

EXPECTED = {  # words the document must show: a programme, a column header, the section of key figures
    "kk": {
        "programme": "Қонақ үй қызметі",
        "column": "Білім беру бағдарламасы",
        "heading": "Негізгі көрсеткіштер",
        "title": "Туризм және қонақжайлылық индустриясы колледжі — Оқу орнының профилі",
    },
    "ru": {
        "programme": "Гостиничный сервис",
        "column": "Образовательная программа",
        "heading": "Основные показатели",
        "title": "Колледж индустрии туризма и гостеприимства — Профиль учебного заведения",
    },
}
LONG_DECIMAL = re.compile(r"\d[.,]\d{5,}")  # a number with more than four decimals, in either decimal mark


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    "The public KITIG profile run in Kazakh and in Russian by the real `rk run`: lang -> run folder."
    build = tmp_path_factory.mktemp("reader-languages")
    env = clean_env(RK_WORKSPACE_BUILD=str(build))
    folders = {}
    for lang in EXPECTED:
        run_rk(
            "run",
            "institution_profile",
            "-p",
            "institution=KITIG",
            "-p",
            "audience=public",
            "-p",
            f"lang={lang}",
            cwd=ROOT,
            env=env,
        )
        [folders[lang]] = [
            m.parent
            for m in build.glob("institution_profile/*/manifest.json")
            if f"lang={lang}" in m.parent.name
        ]
    return folders


@pytest.mark.parametrize("lang", sorted(EXPECTED))
def test_reader_document_in_the_readers_language(browser, profiles, lang):
    folder, words = profiles[lang], EXPECTED[lang]
    m = json.loads((folder / "manifest.json").read_text())
    assert m["status"] == "succeeded" and m["publishable"] is True, m.get("audit")
    assert isinstance(m["records"]["retention_rate"], float) and LONG_DECIMAL.search(
        repr(m["records"]["retention_rate"])
    )  # full precision kept
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto((folder / "report.html").as_uri())
    assert page.locator("html").get_attribute("lang") == lang
    assert page.title().startswith(words["title"]), page.title()
    text = page.locator("body").inner_text()
    for gone in (
        "institution: str",
        "lang: Literal",
        "import research_kit",
        "rk.show(",
        "counts_table",
        "functools",
        "<NA>",
        "NaN",
        "KITIG-01",
        "female_kazakh_n",
        "total_n",
        "retention_rate",
    ):
        assert gone not in text, gone
    assert page.locator(".input, .input_area, .jp-InputArea").count() == 0
    assert not LONG_DECIMAL.search(text), LONG_DECIMAL.search(text).group()
    for key in ("programme", "column", "heading"):
        assert words[key] in text, key
    assert "<10" in text and page.locator("p.rk-footnote").count() >= 1  # masked cells, and why
    assert page.locator("table.rk-table thead th").first.inner_text() == words["column"]
    other = {"kk": "Основные показатели", "ru": "Негізгі көрсеткіштер"}[lang]
    assert other not in text  # the other language's prose was left out
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"institution-profile-KITIG-{lang}.png"), full_page=True)
    page.close()


@pytest.mark.skipif(
    not shutil.which("pdftotext"), reason="pdftotext (poppler-utils) is needed: .ci/run installs it"
)
def test_kazakh_pdf_carries_the_kazakh_words(profiles):
    folder = profiles["kk"]
    m = json.loads((folder / "manifest.json").read_text())
    assert m["pdf"]["made"] is True, m["pdf"]
    text = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(folder / "report.pdf"), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Қонақ үй қызметі" in text and "көрсеткіштер" in text


# ---- the check that a Kazakh or Russian document leaves nothing in English and shows no raw code ----
# (test_templates runs it on every shipped template, from the batch that also compares the engines)

PROPER_NAMES = ("High School and Beyond", "Rouse", "Stock & Watson")  # cited sources keep their own names
PSEUDONYM = re.compile(r"\bS-[0-9A-F]{8}\b")  # research_kit.identifiers' student pseudonyms
CODES = {  # what a reader must never see raw
    "column or code with an underscore": re.compile(r"\b[A-Za-z][A-Za-z0-9]*_\w+"),
    "programme code": re.compile(r"\b[A-Z]+(?:-[A-Z]+)*-\d+\b"),
    "model term": re.compile(r"\w+\[[^\]\s]+\]"),
    "English word": re.compile(
        r"(?<![\w-])[a-z]{2,}\b"
    ),  # Latin lower case: an English word or a code, never Kazakh or Russian
    "English name": re.compile(
        r"(?<![\w-])[A-Z][a-z]+\b"
    ),  # capitalised Latin: only the proper names above may stay
}


class ReaderText:
    "What a reader of a page sees or hears: its text and the images' alternative text, without the provenance footer."

    def __init__(self, page: str):
        from html.parser import HTMLParser

        self.parts, self.cells, hidden = [], [], []
        parser = HTMLParser()

        def start(tag, attrs):
            if tag in ("footer", "style", "script"):
                hidden.append(tag)
            if tag == "td":
                self.cells.append("")
            self.parts += [v for k, v in attrs if k == "alt" and v and not hidden]

        def data(text):
            if hidden:
                return
            self.parts.append(text)
            if self.cells:
                self.cells[-1] += text

        parser.handle_starttag = start
        parser.handle_endtag = lambda tag: (
            hidden.pop() if tag in ("footer", "style", "script") and hidden else None
        )
        parser.handle_data = data
        parser.feed(page)
        self.text = " ".join(self.parts)


@functools.cache
def english_messages() -> list[tuple[str, re.Pattern]]:
    "Each catalog message whose Kazakh and Russian differ from the English, as a pattern (placeholders match anything)."
    from babel.messages.pofile import read_po

    catalogs = {}
    for lang in ("kk", "ru"):
        with open(ROOT / "locales" / lang / "LC_MESSAGES" / "research_kit.po", "rb") as f:
            catalogs[lang] = {m.id: m.string for m in read_po(f) if m.id}
    out = []
    for message in catalogs["kk"]:
        if any(message in catalogs[lang].get(message, "") for lang in catalogs):
            continue  # "ROC AUC" stays inside its translation
        parts = [re.escape(p) for p in re.split(r"\{\w*\}", message)]
        # A message that opens with a placeholder: any character before the rest, which is what a leading `.+?`
        # after the word boundary matches (the text has no newlines); that pattern was tried at every position of
        # a page, each try scanning on to its end (seconds a page).
        start, parts = (
            (r"(?<=.)" + parts[1], parts[2:]) if parts[0] == "" else (r"(?<![\w-])" + parts[0], parts[1:])
        )
        out.append((message, re.compile(start + "".join(r".+?" + p for p in parts) + r"(?![\w-])")))
    return out


def untranslated(page: str) -> list[str]:
    "Catalog messages left in English, and raw codes, in a Kazakh or Russian reader document."
    seen = ReaderText(page)
    text = " ".join(seen.text.split())  # prose wraps lines anywhere, names too
    found = [
        f"catalog message {message!r}" for message, pattern in english_messages() if pattern.search(text)
    ]
    for name in PROPER_NAMES:
        text = text.replace(name, " ")
    text = PSEUDONYM.sub(
        " ", text
    )  # the consortium's list of students at risk names them by pseudonym, on purpose
    found += [f"{kind} {m.group()!r}" for kind, pattern in CODES.items() for m in pattern.finditer(text)]
    found += [
        f"table cell with a bare code {cell.strip()!r}"
        for cell in seen.cells
        if re.fullmatch(r"\s*[A-Z]\s*", cell)
    ]
    return sorted(set(found))


def test_the_check_finds_english_and_codes_left_in_a_document():
    page = (
        "<html><head><title>Оқу орнының профилі</title><style>body{font:sans-serif}</style></head><body>"
        "<table><tr><td>I</td><td>KITIG-01</td><td>female_kazakh_n</td><td>funding[paid]</td><td>wilson</td></tr></table>"
        "<p>Lower bound: 0,5; Intercept; under 20%</p><img alt='No description has been provided for this image'>"
        "<p>Rouse (1995), High School and Beyond, ATK, ROC AUC</p>"
        "<footer>consortium sha256 ab12 research_kit</footer></body></html>"
    )
    problems = untranslated(page)
    for expected in (
        "table cell with a bare code 'I'",
        "programme code 'KITIG-01'",
        "column or code with an underscore 'female_kazakh_n'",
        "model term 'funding[paid]'",
        "English word 'wilson'",
        "catalog message 'Lower bound'",
        "English name 'Intercept'",
        "catalog message 'under {share}'",
        "English word 'description'",
    ):
        assert expected in problems, (expected, problems)
    assert not [
        p
        for p in problems
        if any(w in p for w in ("Rouse", "High", "ATK", "ROC", "consortium", "research_kit", "sans"))
    ], problems
