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
from scipy import stats

from research_kit.analysis.features import student_features
from research_kit.analysis.indicators import college_graduates, outreach_panel
from research_kit.analysis.models import evaluate
from research_kit.analysis.staggered import did
from research_kit.analysis.stats import compare, effect
from research_kit.data.demo import TRUTH, generate
from research_kit.data.load import load, wait_for_cache_writes

SEEDS = range(1, 21)
STUDENTS = 10_000  # about 3,900 graduates per dataset: the adjusted estimate's standard error is about 0.02
RESOURCES = [
    "programs",
    "students",
    "terms",
    "internships",
    "outcomes",
    "joint_programs",
    "joint_enrolments",
    "pathways",
    "applications",
    "outreach_events",
]
EFFECT = TRUTH["internship_effect_on_employment_6m"]
# The adjustment set of the planted employment model: a linear probability model in these is correctly specified.
CONTROLS = ["gpa", "institution_id", "field_of_study", "funding"]
# What is known after the first term; the cohort is left out because recent cohorts' outcomes are known
# mostly for those who already dropped out (the report dropout_risk does the same).
EARLY = [
    "first_term_attendance",
    "first_term_gpa",
    "funding",
    "entry_basis",
    "gender",
    "language",
    "institution_id",
]


LEVEL = 0.95  # every interval checked here is a 95% interval
# A correct 95% interval covers the truth in each seed with probability 0.95, independently across seeds, so the
# number of seeds covered is Binomial(n, 0.95). A coverage test fails when that number is implausibly low for a
# correct interval: P(X <= covered | n, 0.95) < FALSE_ALARM. A correct interval then fails at most 1% of the time,
# whatever the seeds. With 20 seeds this rejects 15 or fewer; its power is weak: it catches an interval that really
# covers 90% of the time with probability 0.04, 80% with 0.37, 70% with 0.76. With 200 seeds it rejects 181 or
# fewer and catches 90% coverage with probability 0.63, 85% with 0.99.
FALSE_ALARM = 0.01


def covered(table, truth):
    return int(((table["lower"] <= truth) & (truth <= table["upper"])).sum())


def assert_covers(table, truth):
    "The intervals in `table` (one per seed) cover `truth` as often as 95% intervals plausibly do."
    n, hits = len(table), covered(table, truth)
    chance = stats.binom.cdf(hits, n, LEVEL)
    assert chance >= FALSE_ALARM, (
        f"95% intervals cover {truth:.4f} in only {hits} of {n} seeds: P(X <= {hits}) = {chance:.4f} "
        f"for a correct interval\n{table}"
    )


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
        for name in [n for n in os.environ if n.startswith("RK_")]:
            mp.delenv(name)
        mp.setenv("RK_ROOT", str(root))
        yield
        wait_for_cache_writes()


def tables_of(root):
    with workspace(root):
        return {name: load("consortium", name) for name in RESOURCES}


def features_of(root, tables=None):
    t = tables or tables_of(root)
    return student_features(
        t["students"], t["terms"], t["internships"], t["outcomes"], programs=t["programs"]
    )


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
        rows.append(
            {
                "seed": seed,
                "n": int(adjusted["n"]),
                "estimate": adjusted["estimate"],
                "std_error": adjusted["std_error"],
                "lower": adjusted["lower"],
                "upper": adjusted["upper"],
                "naive": naive["estimate"].item(),
            }
        )
    table = pd.DataFrame(rows)
    print("\n" + table.round(4).to_string(index=False))
    return table


def test_adjusted_interval_covers_the_planted_effect(internship_estimates):
    t = internship_estimates
    assert_covers(t, EFFECT)
    # and the estimates centre on the truth: the mean of 20 is within ~3 of its standard errors
    assert abs(t["estimate"].mean() - EFFECT) < 3 * t["std_error"].mean() / np.sqrt(len(t)), t[
        "estimate"
    ].mean()
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
    assert (
        "dropout_hazard_log_odds_per_10pp_attendance" in TRUTH
        and "dropout_hazard_log_odds_state_grant" in TRUTH
    )
    assert ranking.index("first_term_attendance") < 2, ranking
    assert ranking.index("funding") < 4, ranking
    # gender and language play no part in the hazard: they add (almost) nothing
    imp = ev.importance.set_index("feature")["importance"]
    assert imp[["gender", "language"]].max() < 0.2 * imp["first_term_attendance"], imp


# --- the four lines of work -------------------------------------------------------------------


def row(estimate, **extra):
    e = estimate.iloc[0] if len(estimate) == 1 else estimate
    return {
        "estimate": e["estimate"],
        "std_error": e["std_error"],
        "lower": e["lower"],
        "upper": e["upper"],
        **extra,
    }


@pytest.fixture(scope="module")
def pathway_estimates(workspaces):
    """Per seed: the joint track's effect on continuing at METU (college graduates) and on credits recognised
    (those who continued), adjusted for GPA and institution, and the naive differences."""
    rows = []
    for seed, root in workspaces.items():
        t = tables_of(root)
        graduates = college_graduates(features_of(root, t), t["pathways"], t["joint_enrolments"])
        controls = ["gpa", "institution_id"]
        go = effect(graduates, "continued", "joint", controls).set_index("term").loc["joint"]
        continued = graduates[graduates["continued"]]
        credits = effect(continued, "credits_recognised", "joint", controls).set_index("term").loc["joint"]
        naive_go = compare(graduates, "continued", "joint", reference=False)["estimate"].item()
        naive_credits = compare(continued, "credits_recognised", "joint", reference=False)["estimate"].item()
        rows += [
            row(go, seed=seed, outcome="continued", naive=naive_go, n=int(go["n"])),
            row(credits, seed=seed, outcome="credits_recognised", naive=naive_credits, n=int(credits["n"])),
        ]
    table = pd.DataFrame(rows)
    print("\n" + table.round(4).to_string(index=False))
    return table


JOINT_EFFECTS = [
    ("continued", TRUTH["pathway_continue_joint_effect"]),
    ("credits_recognised", TRUTH["credits_recognised_joint_effect"]),
]


@pytest.mark.parametrize("outcome, truth", JOINT_EFFECTS)
def test_joint_track_intervals_cover_the_planted_effect(pathway_estimates, outcome, truth):
    # seeds 1-20 cover the continuation effect 17 times (97% of seeds 1-200): P(X <= 17) = 0.075 for a correct interval
    assert_covers(pathway_estimates[pathway_estimates["outcome"] == outcome], truth)


@pytest.mark.parametrize("outcome, truth", JOINT_EFFECTS)
def test_joint_track_effects_are_recovered_and_the_naive_difference_is_biased(
    pathway_estimates, outcome, truth
):
    t = pathway_estimates[pathway_estimates["outcome"] == outcome]
    assert abs(t["estimate"].mean() - truth) < 3 * t["std_error"].mean() / np.sqrt(len(t)), t[
        "estimate"
    ].mean()
    # planted: the joint track selects by GPA, which raises both outcomes, so the plain difference overstates the effect
    assert (t["naive"] > t["estimate"]).sum() >= 18 and t["naive"].mean() > truth + 2 * t[
        "std_error"
    ].mean() / np.sqrt(len(t))


@pytest.fixture(scope="module")
def outreach_estimates(workspaces):
    """Per seed: the average effect of outreach on log applicants over treated programme-years, both estimators."""
    rows = []
    for seed, root in workspaces.items():
        t = tables_of(root)
        panel = outreach_panel(t["applications"], t["outreach_events"])
        for method in ("callaway_santanna", "twfe"):
            estimate = did(panel, "log_applicants", "program_id", "year", "first_treated", method=method)
            rows.append(row(estimate, seed=seed, method=method, df=estimate["df"].item()))
    table = pd.DataFrame(rows)
    print("\n" + table.round(4).to_string(index=False))
    return table


def test_outreach_effect_is_recovered(outreach_estimates):
    truth = TRUTH["outreach_att_log"]
    t = outreach_estimates[outreach_estimates["method"] == "callaway_santanna"]
    assert abs(t["estimate"].mean() - truth) < 3 * t["std_error"].mean() / np.sqrt(len(t)), t[
        "estimate"
    ].mean()


def test_outreach_intervals_cover_the_planted_effect(outreach_estimates):
    # 26 programmes in cohorts of 3-5: Bell-McCaffrey gives about 18 degrees of freedom, not 25 (seeds 1-1000 of the
    # generator's applications: 95.1% coverage; 94.7% with t(25)); seeds 1-20 cover the truth 17 times
    t = outreach_estimates[outreach_estimates["method"] == "callaway_santanna"]
    assert_covers(t, TRUTH["outreach_att_log"])
    assert (
        t["df"] < 25
    ).all()  # fewer than clusters - 1: the cohorts, not the programmes, limit what the errors rest on


def few_treated_panel(seed, treated=3, controls=27, periods=4, start=3, effect=0.5):
    "A cohort of `treated` units starting in period `start` and `controls` units never treated; a constant effect."
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(treated + controls):
        level, first = rng.normal(0, 1), start if i < treated else np.nan
        for period in range(1, periods + 1):
            now = effect if i < treated and period >= start else 0.0
            rows.append((f"u{i:02d}", period, first, level + 0.1 * period + now + rng.normal(0, 0.3)))
    return pd.DataFrame(rows, columns=["unit", "period", "start", "y"]), effect


def test_intervals_keep_their_level_with_a_handful_of_treated_units():
    # 30 clusters but 3 treated units: t(29) intervals covered the truth in 163 of these 200 seeds; the variance rests
    # on the 3 units' deviations, which Bell-McCaffrey's degrees of freedom (about 2-3 here) account for
    rows = []
    for seed in range(1, 201):
        panel, truth = few_treated_panel(seed)
        rows.append(row(did(panel, "y", "unit", "period", "start"), seed=seed, truth=truth))
    t = pd.DataFrame(rows)
    assert_covers(t, t["truth"].iloc[0])


def staggered_panel(seed, per_cohort=20, starts=(4, 7, 10), slopes=(0.3, 0.2, 0.1)):
    """Three cohorts starting in periods 4, 7 and 10, no unit untreated throughout, parallel trends, and effects
    that grow with time since the start, faster for earlier cohorts. Kept to the periods before the last cohort
    starts (after that no unit is left to compare with); the truth is the mean effect over treated unit-periods."""
    rng = np.random.default_rng(seed)
    end = max(starts) - 1
    rows, effects = [], []
    for cohort, (start, slope) in enumerate(zip(starts, slopes)):
        for i in range(per_cohort):
            level = rng.normal(0, 1)
            for period in range(1, end + 1):
                effect_now = slope * (period - start + 1) if period >= start else 0.0
                if period >= start:
                    effects.append(effect_now)
                rows.append(
                    (f"u{cohort}-{i}", period, start, level + 0.1 * period + effect_now + rng.normal(0, 0.1))
                )
    return pd.DataFrame(rows, columns=["unit", "period", "start", "y"]), float(np.mean(effects))


def test_twfe_is_biased_under_staggered_heterogeneous_effects_and_group_time_effects_are_not():
    rows = []
    for seed in range(1, 201):  # 200 seeds: cheap here (about 30 ms each), and the coverage check gains power
        panel, truth = staggered_panel(seed)
        for method in ("callaway_santanna", "twfe"):
            rows.append(
                row(
                    did(panel, "y", "unit", "period", "start", method=method),
                    seed=seed,
                    method=method,
                    truth=truth,
                )
            )
    t = pd.DataFrame(rows)
    print("\n" + t.round(4).to_string(index=False))
    truth = t["truth"].iloc[0]
    assert (t["truth"] == truth).all()  # the design fixes the truth; only the noise changes with the seed
    cs, twfe = t[t["method"] == "callaway_santanna"], t[t["method"] == "twfe"]
    assert_covers(cs, truth)
    assert covered(twfe, truth) == 0, twfe  # every interval of the naive estimate misses ...
    assert (
        twfe["estimate"].mean() < 0.7 * truth
    )  # ... by far: it puts weight on comparisons with already-treated units
