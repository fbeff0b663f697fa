"""Known-answer tests: the analysis functions recover the effects planted in the synthetic consortium data.

Each dataset is written by `research_kit.data.demo.generate` into a throwaway workspace and read back
with `research_kit.data.load.load`, exactly as a report would, so the whole path (generator, loader,
`analysis.features`, `analysis.stats`, `analysis.models`) is checked against `TRUTH`.
"""
import os
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest

from research_kit.analysis.features import student_features
from research_kit.analysis.models import evaluate
from research_kit.analysis.stats import compare, effect
from research_kit.data.demo import TRUTH, generate
from research_kit.data.load import load, wait_for_cache_writes

SEEDS = range(1, 21)
STUDENTS = 10_000  # about 3,900 graduates per dataset: the adjusted estimate's standard error is about 0.02
RESOURCES = ["programs", "students", "terms", "internships", "outcomes"]
EFFECT = TRUTH["internship_effect_on_employment_6m"]
# The adjustment set of the planted employment model: a linear probability model in these is correctly specified.
CONTROLS = ["gpa", "institution_id", "field_of_study", "funding"]
# What is known after the first term; the cohort is left out because recent cohorts' outcomes are known
# mostly for those who already dropped out (the report dropout_risk does the same).
EARLY = ["first_term_attendance", "first_term_gpa", "funding", "entry_basis", "gender", "language", "institution_id"]


def make_workspace(root, seed):
    """A workspace whose data root holds the generated `consortium` package (only the resources used here)."""
    root.mkdir(parents=True)
    (root / "settings.ini").write_text("[workspace]\ndata = datasets\ncache = .cache\n")
    generate(root / "datasets" / "consortium", seed=seed, students=STUDENTS, resources=RESOURCES)
    return root


@contextmanager
def workspace(root):
    """Make `root` the current workspace, whatever RK_* variables the caller's environment sets."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("RK_")]: mp.delenv(name)
        mp.setenv("RK_ROOT", str(root))
        yield
        wait_for_cache_writes()


def features_of(root):
    with workspace(root):
        t = {name: load("consortium", name) for name in RESOURCES}
    return student_features(t["students"], t["terms"], t["internships"], t["outcomes"], programs=t["programs"])


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    base = tmp_path_factory.mktemp("planted")
    return {seed: make_workspace(base / f"seed-{seed}", seed) for seed in SEEDS}


@pytest.fixture(scope="module")
def internship_estimates(workspaces):
    """Per seed: the adjusted estimate of the internship effect among graduates, its 95% interval, and the naive difference."""
    rows = []
    for seed, root in workspaces.items():
        df = features_of(root)
        graduates = df[df["graduated"].fillna(False)]
        adjusted = effect(graduates, "employed_6m", "had_internship", controls=CONTROLS, cluster="program_id")
        adjusted = adjusted.set_index("term").loc["had_internship"]
        naive = compare(graduates, "employed_6m", "had_internship", reference=False)
        assert naive["group"].tolist() == [True]  # interns minus non-interns
        rows.append({"seed": seed, "n": int(adjusted["n"]), "estimate": adjusted["estimate"],
                     "std_error": adjusted["std_error"], "lower": adjusted["lower"], "upper": adjusted["upper"],
                     "naive": naive["estimate"].item()})
    table = pd.DataFrame(rows)
    print("\n" + table.round(4).to_string(index=False))
    return table


def test_adjusted_interval_covers_the_planted_effect(internship_estimates):
    t = internship_estimates
    covered = ((t["lower"] <= EFFECT) & (EFFECT <= t["upper"])).sum()
    assert covered >= 18, f"95% intervals cover {EFFECT} in only {covered} of {len(t)} seeds\n{t}"
    # and the estimates centre on the truth: the mean of 20 is within ~3 of its standard errors
    assert abs(t["estimate"].mean() - EFFECT) < 3 * t["std_error"].mean() / np.sqrt(len(t)), t["estimate"].mean()
    assert (t["n"] > 3000).all()


def test_naive_difference_is_biased_upward(internship_estimates):
    t = internship_estimates
    assert (t["naive"] > EFFECT).all(), t[t["naive"] <= EFFECT]
    bias = t["naive"].mean() - EFFECT
    assert bias > 0.03, f"mean naive bias only {bias:.4f}"
    assert (t["naive"] > t["estimate"]).sum() >= 18  # adjusting removes the upward bias seed by seed too


@pytest.fixture(scope="module")
def dropout_features(workspaces):
    df = features_of(workspaces[SEEDS[0]])
    return df[df["status"] != "enrolled"]


@pytest.mark.parametrize("model", ["logistic", "gradient_boosting"])
def test_dropout_model_finds_the_planted_risk_factors(dropout_features, model):
    ev = evaluate(dropout_features, "dropped", EARLY, model=model, seed=0)
    ranking = list(ev.importance["feature"])
    print(f"\n{model}: {ev}\n{ev.importance.round(4).to_string(index=False)}")
    assert ev.metric("roc_auc") > 0.65, ev.metrics
    # planted: the dropout hazard depends on attendance and on funding (state grant), on nothing else
    assert "dropout_hazard_log_odds_per_10pp_attendance" in TRUTH and "dropout_hazard_log_odds_state_grant" in TRUTH
    assert ranking.index("first_term_attendance") < 2, ranking
    assert ranking.index("funding") < 4, ranking
    # gender and language play no part in the hazard: they add (almost) nothing
    imp = ev.importance.set_index("feature")["importance"]
    assert imp[["gender", "language"]].max() < 0.2 * imp["first_term_attendance"], imp
