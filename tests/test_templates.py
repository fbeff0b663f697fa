"""Every shipped report template: runs unchanged with the plain papermill command line, gives the
same records with the warm and the kernel engine, and reproduces the published figures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_rk

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
    proc = subprocess.run([str(papermill), str(ROOT / "reports" / f"{report}.ipynb"), str(out), "--no-progress-bar"],
                          cwd=ROOT, env=clean_env(RK_WORKSPACE_CACHE=str(tmp_path / "cache")),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert records(out), f"{report} recorded nothing"


@pytest.fixture(scope="module")
def both_engines(tmp_path_factory):
    """Run `annual` with each engine into its own build folder; return {engine: {run: records}}."""
    results = {}
    for engine in ("warm", "kernel"):
        build = tmp_path_factory.mktemp(f"build-{engine}")
        run_rk("batch", "annual", "--engine", engine, "--workers", "2",
               env=clean_env(RK_WORKSPACE_BUILD=str(build)), check=0)
        results[engine] = {f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
                           for p in build.glob("*/*/manifest.json")}
    return results


def test_engines_record_identical_values(both_engines):
    warm, kernel = both_engines["warm"], both_engines["kernel"]
    assert set(warm) == set(kernel) and len(warm) >= len(TEMPLATES)
    assert {run.split("/")[0] for run in warm} == set(TEMPLATES)  # annual covers every template
    for run in warm:
        assert warm[run]["status"] == kernel[run]["status"] == "succeeded", run
        assert warm[run]["engine"] == "warm" and kernel[run]["engine"] == "kernel"
        assert warm[run]["records"] == kernel[run]["records"], run
        assert warm[run]["inputs"] == kernel[run]["inputs"], run


def test_published_figures(both_engines):
    runs = both_engines["warm"]
    star = runs["star_replication/controls=false,grade=k,lang=en"]["records"]
    assert (round(star["small_class_effect"], 2), round(star["small_class_se"], 2)) == (13.90, 2.45)
    assert (round(star["aide_effect"], 2), round(star["aide_se"], 2)) == (0.31, 2.27)
    assert round(star["intercept"], 2) == 918.04 and star["n"] == 5786
    rouse = runs["college_distance/controls=false,lang=en,region=non_west"]["records"]
    assert (round(rouse["distance_effect"], 3), round(rouse["distance_se"], 3), rouse["n"]) == (-0.073, 0.013, 3796)
