"""Every shipped report template: runs unchanged with the plain papermill command line; run by one real
`rk batch` in Kazakh and in Russian (both audiences where it has them) with the warm engine, and in one
language and audience of those with the kernel engine (Kazakh and Russian, consortium and public each among
them), it gives the same records with both, leaves nothing in English in its reader documents, and
reproduces the published figures. The `annual` batch names every template."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_rk
from test_reader_languages import untranslated

TEMPLATES = sorted(p.stem for p in (ROOT / "reports").glob("*.ipynb"))


def clean_env(**extra):
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RK_")}, **extra}


def test_templates_are_shipped():
    assert {"star_replication", "college_distance"} <= set(TEMPLATES)


@pytest.mark.parametrize("report", TEMPLATES)
def test_plain_papermill_runs_every_template(report, tmp_path):
    from research_kit.runner.record import records

    out = tmp_path / f"{report}.ipynb"
    papermill = Path(sys.executable).parent / "papermill"
    proc = subprocess.run(
        [str(papermill), str(ROOT / "reports" / f"{report}.ipynb"), str(out), "--no-progress-bar"],
        cwd=ROOT,
        env=clean_env(RK_WORKSPACE_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert records(out), f"{report} recorded nothing"


ENGINES = ("warm", "kernel")
# The published figures are read from the Kazakh runs of these parameters: named in the batch, not left to the defaults.
PUBLISHED = {
    "star_replication": {"grade": ["k"], "controls": [False]},
    "college_distance": {"region": ["non_west"], "controls": [False]},
}


def test_annual_covers_every_template():
    from research_kit.runner.batch import plan_batch
    from research_kit.settings import load_settings

    assert {run.report for run in plan_batch("annual", load_settings(ROOT))} == set(TEMPLATES)


def languages_batch(reports: Path) -> dict:
    """Copy every shipped template into `reports` with a batches.yaml whose batch `languages` runs each in Kazakh and
    in Russian (the consortium's templates for both audiences), and whose batch `engines` runs each once, in Kazakh
    for the consortium and in Russian for the public where it has audiences (in Kazakh where not); return how many
    runs each plans."""
    import nbformat
    import yaml

    reports.mkdir()
    batches, planned = {"languages": [], "engines": []}, {"languages": 0, "engines": 0}
    for name in TEMPLATES:
        shutil.copy(ROOT / "reports" / f"{name}.ipynb", reports)
        nb = nbformat.read(ROOT / "reports" / f"{name}.ipynb", as_version=4)
        [parameters] = [c.source for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        audiences = "audience:" in parameters
        grid = {
            "lang": ["kk", "ru"],
            **({"audience": ["consortium", "public"]} if audiences else {}),
            **PUBLISHED.get(name, {}),
        }
        batches["languages"].append({"report": name, "grid": grid})
        planned["languages"] += math.prod(len(values) for values in grid.values())
        fixed = {key: values[0] for key, values in PUBLISHED.get(name, {}).items()}
        once = (
            [{"lang": "kk", "audience": "consortium", **fixed}, {"lang": "ru", "audience": "public", **fixed}]
            if audiences
            else [{"lang": "kk", **fixed}]
        )
        batches["engines"].append({"report": name, "parameters": once})
        planned["engines"] += len(once)
    (reports / "batches.yaml").write_text(yaml.safe_dump(batches))
    return planned


# The kernel engine re-runs a subset of the warm engine's runs: that its records agree is what it shows, and a
# language or an audience is handled alike by both engines (the same template code), so each is shown once.
BATCHES = {"warm": "languages", "kernel": "engines"}


@pytest.fixture(scope="module")
def every_template(tmp_path_factory):
    """Every shipped template run by a real `rk batch` in Kazakh and in Russian (the consortium's templates for both
    audiences) with the warm engine, and the batch `engines` with the kernel engine, PDFs off, each into its own
    build folder: ({engine: build folder}, {batch: runs planned})."""
    root = tmp_path_factory.mktemp("every-template")
    planned = languages_batch(root / "reports")
    builds = {}
    for engine in ENGINES:
        builds[engine] = root / f"build-{engine}"
        env = clean_env(
            RK_WORKSPACE_REPORTS=str(root / "reports"),
            RK_WORKSPACE_BUILD=str(builds[engine]),
            RK_RUNNER_PDF="off",
        )
        run_rk(
            "batch",
            BATCHES[engine],
            "--engine",
            engine,
            "--workers",
            "2",
            cwd=ROOT,
            env=env,
            timeout=1800,
            check=0,
        )
    return builds, planned


def manifests(build: Path) -> dict:
    return {
        f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
        for p in build.glob("*/*/manifest.json")
    }


def test_engines_record_identical_values(every_template):
    builds, planned = every_template
    warm, kernel = manifests(builds["warm"]), manifests(builds["kernel"])
    assert len(warm) == planned["languages"] and len(kernel) == planned["engines"]
    assert set(kernel) <= set(warm)
    assert {run.split("/")[0] for run in warm} == {run.split("/")[0] for run in kernel} == set(TEMPLATES)
    shown = {p for run in kernel for p in run.split("/")[1].split(",")}
    assert shown >= {"lang=kk", "lang=ru", "audience=consortium", "audience=public"}, shown
    for run in warm:
        assert warm[run]["status"] == "succeeded" and warm[run]["engine"] == "warm", run
    for run in kernel:
        assert warm[run]["status"] == kernel[run]["status"] == "succeeded", run
        assert warm[run]["engine"] == "warm" and kernel[run]["engine"] == "kernel"
        assert warm[run]["records"] == kernel[run]["records"], run
        assert warm[run]["inputs"] == kernel[run]["inputs"], run


def test_published_figures(every_template):
    runs = manifests(every_template[0]["warm"])
    star = runs["star_replication/controls=false,grade=k,lang=kk"]["records"]
    assert (round(star["small_class_effect"], 2), round(star["small_class_se"], 2)) == (13.90, 2.45)
    assert (round(star["aide_effect"], 2), round(star["aide_se"], 2)) == (0.31, 2.27)
    assert round(star["intercept"], 2) == 918.04 and star["n"] == 5786
    rouse = runs["college_distance/controls=false,lang=kk,region=non_west"]["records"]
    assert (round(rouse["distance_effect"], 3), round(rouse["distance_se"], 3), rouse["n"]) == (
        -0.073,
        0.013,
        3796,
    )


@pytest.mark.parametrize("template", TEMPLATES)
def test_kazakh_and_russian_documents_leave_nothing_in_english(every_template, template):
    pages = sorted((every_template[0]["warm"] / template).glob("*/report.html"))
    assert {p.parent.name.count("lang=kk") for p in pages} == {0, 1} and len(pages) in (2, 4), pages
    for page in pages:
        text = page.read_text(encoding="utf-8")
        problems = untranslated(text)
        assert problems == [], f"{page.parent.name}: {problems}"
        lang = "kk" if "lang=kk" in page.parent.name else "ru"
        assert f'<html lang="{lang}">' in text and "<img" in text


# ---- plain papermill validates the values it injects, with rk run's rules ----


def test_every_template_checks_its_parameters_right_after_the_parameters_cell():
    for report in TEMPLATES:
        cells = json.loads((ROOT / "reports" / f"{report}.ipynb").read_text())["cells"]
        i = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
        assert "rk.check_parameters(globals())" in "".join(cells[i + 1]["source"]), report


def papermill_run(report, tmp_path, parameters):
    import papermill

    return papermill.execute_notebook(
        str(ROOT / "reports" / f"{report}.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters=parameters,
        kernel_name="research-kit",
        cwd=str(ROOT),
        progress_bar=False,
    )


BAD_VALUES = [  # report, parameters as papermill injects them, error type, message
    (
        "institution_profile",
        {"institution": "XYZ"},
        "UnknownNameError",
        "unknown institution 'XYZ' in parameter institution",
    ),
    (
        "institution_profile",
        {"year": "abc"},
        "ParameterError",
        "parameter year='abc': expected a whole number",
    ),
    (
        "institution_profile",
        {"institution": "all"},
        "UnknownNameError",
        "unknown institution 'all' in parameter institution",
    ),
    ("internship_outcomes", {"institution": "KITG"}, "UnknownNameError", "did you mean 'KITIG'"),
    (
        "dropout_risk",
        {"institution": "atk"},
        "UnknownNameError",
        "unknown institution 'atk' in parameter institution",
    ),
    (
        "consortium_overview",
        {"audience": "press"},
        "ParameterError",
        "parameter audience='press': expected one of consortium, public",
    ),
    ("dropout_risk", {"seed": 1.5}, "ParameterError", "parameter seed='1.5': expected a whole number"),
    ("star_replication", {"grade": 5}, "ParameterError", "parameter grade='5': expected one of k, 1, 2, 3"),
    (
        "college_distance",
        {"controls": "maybe"},
        "ParameterError",
        "parameter controls='maybe': expected true or false",
    ),
    (
        "outreach_effect",
        {"method": "did"},
        "ParameterError",
        "parameter method='did': expected one of callaway_santanna, twfe",
    ),
    ("pathways", {"institution": "KITG"}, "UnknownNameError", "did you mean 'KITIG'"),
]


@pytest.mark.parametrize(
    "report,parameters,ename,message", BAD_VALUES, ids=[f"{c[0]}-{next(iter(c[1]))}" for c in BAD_VALUES]
)
def test_plain_papermill_refuses_bad_values_like_rk_run(report, parameters, ename, message, tmp_path, tally):
    from papermill.exceptions import PapermillExecutionError

    tally.bad_inputs += 1
    with pytest.raises(PapermillExecutionError) as caught:
        papermill_run(report, tmp_path, parameters)
    assert caught.value.ename == ename and message in caught.value.evalue, (
        caught.value.ename,
        caught.value.evalue,
    )
    assert caught.value.exec_count <= 4  # stopped in the check, right after the parameters
    name, value = next(iter(parameters.items()))
    proc = run_rk("run", report, "-p", f"{name}={value}", env=clean_env())
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr  # the same message as rk run's


# ---- where a parameter's allowed values come from: its type, not its name ----


def params_row(report, name):
    out = run_rk("params", report, env=clean_env(COLUMNS="300"), check=0).stdout
    return next(l for l in out.splitlines() if l.strip("│ ").startswith(name + " "))


def test_params_lists_the_institutions_the_data_allows():
    row = params_row("institution_profile", "institution")
    assert "│ Institution " in row and "│ METU, METU-C, ATK, ASTK, APC, KITIG │" in row, row
    row = params_row("dropout_risk", "institution")
    assert "Institution | Literal['all']" in row and "METU, METU-C, ATK, ASTK, APC, KITIG, all" in row, row


def test_the_runner_knows_no_parameter_by_name(report_workspace):
    """A parameter named `institution` but declared `str` is any text, in a workspace without the consortium's data."""
    from conftest import make_template

    root, _, env = report_workspace
    make_template(
        root / "reports" / "named.ipynb",
        'institution: str = "anything"  # free text',
        "import research_kit as rk\nrk.check_parameters(globals())\nrk.record('institution', institution)",
    )
    run_rk("run", "named", "-p", "institution=XYZ", cwd=root, env=env, check=0)
    [manifest] = (root / "reports" / "_build" / "named").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["records"]["institution"] == "XYZ"


def test_plain_papermill_types_good_values_by_declaration(tmp_path):
    from research_kit.runner.record import records

    papermill_run("star_replication", tmp_path, {"grade": 1})  # `-p grade 1` injects a number
    assert records(tmp_path / "out.ipynb")["n"] > 0
    nb = papermill_run("consortium_overview", tmp_path, {"year": "2023"})  # `-r year 2023` injects text
    assert records(tmp_path / "out.ipynb")


# ---- the outreach report recovers the effect planted in the bundled data ----


def test_outreach_effect_covers_the_planted_effect(tmp_path):
    "The bundled consortium data plants TRUTH['outreach_att_log']; the report's recorded 95% interval covers it."
    from research_kit.data.demo import TRUTH
    from research_kit.runner.record import records

    papermill_run("outreach_effect", tmp_path, {"audience": "public"})
    r = records(tmp_path / "out.ipynb")
    truth = TRUTH["outreach_att_log"]
    assert r["outreach_effect_lower"] <= truth <= r["outreach_effect_upper"], (r, truth)
    assert r["outreach_effect_lower"] > 0  # and outreach did raise applications
    assert abs(r["outreach_change_rate"] - (2.718281828459045 ** r["outreach_effect"] - 1)) < 1e-12
