"""Everything a reader sees exists in Kazakh, Russian and English: every message of the catalogs
(and every message the code marks for them), every label of every bundled data package, and the
language-tagged prose of every report template. Each check is also shown to catch what it is for."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from babel.messages.pofile import read_po

from conftest import ROOT, run_rk, save

BIN = Path(sys.executable).parent
LANGUAGES = ("kk", "ru", "en")
LOCALES = ROOT / "locales"
PLACEHOLDER = re.compile(r"\{(\w*)[^{}]*\}")


def read_catalog(path: Path):
    with open(path, "rb") as f:
        return read_po(f, abort_invalid=True)


def catalog_problems(path: Path) -> list[str]:
    "Messages without a usable translation: empty, fuzzy, or with other {placeholders} than the English."
    problems = []
    for m in read_catalog(path):
        if not m.id:
            continue
        if not str(m.string or "").strip():
            problems.append(f"{path}: {m.id!r} has no translation")
        elif m.fuzzy:
            problems.append(f"{path}: {m.id!r} is fuzzy (not checked by a translator)")
        elif sorted(PLACEHOLDER.findall(m.id)) != sorted(PLACEHOLDER.findall(m.string)):
            problems.append(f"{path}: {m.id!r} and its translation {m.string!r} have different placeholders")
    return problems


def extracted_messages(tmp_path: Path) -> set[str]:
    "The messages the code marks today, as `pybabel extract` finds them (the translator's first step)."
    pot = tmp_path / "research_kit.pot"
    proc = subprocess.run(
        [str(BIN / "pybabel"), "extract", "-F", "babel.cfg", "-k", "translate", "-o", str(pot), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return {m.id for m in read_catalog(pot) if m.id}


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_catalog_message_is_translated(lang):
    assert catalog_problems(LOCALES / lang / "LC_MESSAGES" / "research_kit.po") == []


def test_catalogs_hold_every_message_the_code_marks(tmp_path):
    marked = extracted_messages(tmp_path)
    assert {"Back to the index", "Suppressed: fewer than {k}", "Rate"} <= marked
    template = {m.id for m in read_catalog(LOCALES / "research_kit.pot") if m.id}
    assert marked - template == set(), "run pybabel extract and update (see nbs/i18n.ipynb)"
    for lang in LANGUAGES:
        have = {m.id for m in read_catalog(LOCALES / lang / "LC_MESSAGES" / "research_kit.po") if m.id}
        assert marked - have == set(), f"{lang}: messages missing from the catalog; run pybabel update"


def test_catalog_check_catches_a_missing_a_fuzzy_and_a_broken_translation(tmp_path, tally):
    po = (LOCALES / "ru" / "LC_MESSAGES" / "research_kit.po").read_text(encoding="utf-8")
    broken = (
        po.replace('msgstr "Вернуться к списку отчётов"', 'msgstr ""')
        .replace('msgstr "Скрыто: меньше {k}"', 'msgstr "Скрыто: меньше {n}"')
        .replace('msgid "Rate"', '#, fuzzy\nmsgid "Rate"')
    )
    (tmp_path / "ru.po").write_text(broken, encoding="utf-8")
    problems = catalog_problems(tmp_path / "ru.po")
    tally.bad_inputs += 3
    assert len(problems) == 3, problems
    assert any("'Back to the index' has no translation" in p for p in problems)
    assert any("'Rate' is fuzzy" in p for p in problems) and any(
        "different placeholders" in p for p in problems
    )


def test_translate_reads_the_catalogs_of_the_workspace():
    from research_kit.i18n import translate

    assert translate("Back to the index", "kk") == "Есептер тізіміне оралу"
    assert translate("Suppressed: fewer than {k}", "ru", k=10) == "Скрыто: меньше 10"


def test_pybabel_compile_accepts_the_catalogs(tmp_path):
    shutil.copytree(LOCALES, tmp_path / "locales")
    proc = subprocess.run(
        [
            str(BIN / "pybabel"),
            "compile",
            "-d",
            str(tmp_path / "locales"),
            "-D",
            "research_kit",
            "--statistics",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert all((tmp_path / "locales" / l / "LC_MESSAGES" / "research_kit.mo").is_file() for l in LANGUAGES)
    assert "100%" in proc.stderr + proc.stdout or "translated" in proc.stderr + proc.stdout


# ---- labels in the data package descriptors ----

PACKAGES = sorted(p.parent.name for p in (ROOT / "datasets").glob("*/datapackage.yaml"))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_descriptor_label_exists_in_three_languages(package):
    from research_kit.data.labels import label_problems

    descriptor = yaml.safe_load(
        (ROOT / "datasets" / package / "datapackage.yaml").read_text(encoding="utf-8")
    )
    assert label_problems(descriptor) == []


def test_label_check_catches_a_missing_language_and_a_missing_code(tally):
    from research_kit.data.labels import label_problems

    d = yaml.safe_load((ROOT / "datasets" / "consortium" / "datapackage.yaml").read_text(encoding="utf-8"))
    students = next(r for r in d["resources"] if r["name"] == "students")
    gender = next(f for f in students["schema"]["fields"] if f["name"] == "gender")
    del gender["x-labels"]["kk"]
    del gender["x-value-labels"]["female"]["ru"]
    region = next(f for f in students["schema"]["fields"] if f["name"] == "region")
    del region["x-value-labels"]["ulytau"]
    tally.bad_inputs += 3
    assert label_problems(d) == [
        "consortium/students/gender: title lacks kk",
        "consortium/students/gender: code 'female' lacks ru",
        "consortium/students/region: code 'ulytau' lacks kk, ru, en",
    ]


def test_oked_sections_are_named_in_three_languages():
    from research_kit.data.labels import labels

    names = {lang: labels("consortium", "internships", "sector", lang) for lang in LANGUAGES}
    assert all(sorted(n) == list("ABCDEFGHIJKLMNOPQRSTU") for n in names.values())
    assert names["ru"]["I"] == "Услуги по проживанию и питанию" and names["kk"]["P"] == "Білім беру"
    assert names["en"]["C"] == "Manufacturing"


def test_rk_datasets_show_in_russian_and_kazakh():
    wide = {"COLUMNS": "3000"}  # one line per field: no label is wrapped
    ru = run_rk("datasets", "show", "consortium", "--lang", "ru", env=wide)
    assert ru.returncode == 0, ru.stderr
    assert (
        "Гостиничный сервис" in ru.stdout
        and "Год поступления" in ru.stdout
        and "Услуги по проживанию и питанию" in ru.stdout
    )
    kk = run_rk("datasets", "show", "star", "--lang", "kk", env=wide)
    assert kk.returncode == 0 and "Шағын сынып" in kk.stdout and "Сынып түрі, даярлық сынып" in kk.stdout


def test_rk_datasets_show_refuses_an_unknown_language(tally):
    proc = run_rk("datasets", "show", "consortium", "--lang", "kz")
    tally.bad_inputs += 1
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: unknown language 'kz' in --lang: choose kk, ru or en"


def test_rk_datasets_show_prints_descriptor_text_as_text(workspace):
    "A label with square brackets is data, not Rich markup: it is printed as written."
    root, d, env = workspace
    d["resources"][0]["schema"]["fields"][0]["x-labels"] = {
        "kk": "[bold]Код[/bold]",
        "ru": "[red]Код",
        "en": "Code",
    }
    save(root / "datasets" / "mini", d)
    proc = run_rk("datasets", "show", "mini", "--lang", "ru", cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "[red]Код" in proc.stdout


# ---- prose of report templates ----

TEMPLATES = sorted((ROOT / "reports").glob("*.ipynb"))


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_template_prose_comes_in_all_three_languages(template):
    "Templates that tag their prose by language (lang-kk, lang-ru, lang-en) have every run of it complete."
    from research_kit.i18n import language_cell_problems

    cells = json.loads(template.read_text(encoding="utf-8"))["cells"]
    assert language_cell_problems(cells) == []


def test_prose_check_catches_a_missing_translation(tmp_path, tally):
    from research_kit.i18n import language_cell_problems

    cells = [
        {"cell_type": "markdown", "source": "# Оқу орнының профилі", "metadata": {"tags": ["lang-kk"]}},
        {"cell_type": "markdown", "source": "# Institution profile", "metadata": {"tags": ["lang-en"]}},
        {"cell_type": "code", "source": "x = 1", "metadata": {}},
    ]
    tally.bad_inputs += 1
    assert language_cell_problems(cells) == ["cells 0-1: no ru version (tag lang-ru)"]
