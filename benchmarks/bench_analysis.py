"""Analysis overhead, as ratios against the bare library calls they wrap, measured in the same run.

On the consortium package generated at 1,000,000 students:
- `rates(students, "state_grant", by=["institution_id", "program_id"])` vs the bare pandas groupby
  plus statsmodels' proportion_confint on the counts (target ratio <= 1.3);
- `effect(...)` with ten controls vs the bare statsmodels OLS fit (same formula, HC1) (target <= 1.3).

On the consortium package at its default size (20,000 students, as in the workspace; the 10,918 with
a known outcome), as the dropout_risk report calls it:
- `evaluate(...)` of each model vs the plain scikit-learn way of computing the same numbers: each
  fold's pipeline fitted, its predictions, and `permutation_importance` through the whole pipeline
  (how `evaluate` computed them before it encoded each held-out fold once) (target <= 0.3 for the
  logistic model; <= 0.5 for gradient boosting, whose own fits and trees are most of what is left).

Usage: python benchmarks/bench_analysis.py [--students N] [--repeat R]
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from timing import timed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rk-bench-analysis-"))
    try:
        (work / "settings.ini").write_text("[workspace]\ndata = datasets\ncache = cache\n")
        os.environ["RK_ROOT"] = str(work)
        from research_kit.data.demo import generate

        t0 = time.perf_counter()
        generate(work / "datasets" / "consortium", students=args.students)
        print(f"generated {args.students:,} students in {time.perf_counter() - t0:.1f} s")

        import statsmodels.formula.api as smf
        from statsmodels.stats.proportion import proportion_confint
        from research_kit.analysis import effect, rates

        tables, features = consortium_features()
        students = tables["students"].assign(state_grant=lambda d: d["funding"] == "state_grant")
        features = features[features["status"] != "enrolled"].assign(
            dropped=lambda d: d["dropped"].astype(float)
        )

        by = ["institution_id", "program_id"]

        def bare_rates():
            counts = (
                students.groupby(by, observed=True)["state_grant"].agg(n="size", events="sum").reset_index()
            )
            counts["rate"] = counts["events"] / counts["n"]
            counts["lower"], counts["upper"] = proportion_confint(
                counts["events"], counts["n"], alpha=0.05, method="wilson"
            )
            return counts

        ours_rates = lambda: rates(students, "state_grant", by=by)
        assert len(bare_rates()) == len(ours_rates())

        controls = [
            "first_term_gpa",
            "first_term_attendance",
            "gpa",
            "attendance",
            "gender",
            "language",
            "entry_basis",
            "region",
            "institution_id",
            "field_of_study",
        ]
        table = effect(features, "dropped", "funding", controls=controls)
        formula = table.attrs["formula"]
        used = features.dropna(subset=["dropped", "funding", *controls])
        bare_effect = lambda: smf.ols(formula, data=used).fit(cov_type="HC1")
        ours_effect = lambda: effect(features, "dropped", "funding", controls=controls)

        rows = []
        for name, bare, ours in [
            ("rates by institution x programme", bare_rates, ours_rates),
            ("effect, ten controls (OLS, HC1)", bare_effect, ours_effect),
        ]:
            b, o = timed(bare, args.repeat), timed(ours, args.repeat)
            rows.append((name, b, o))
        print(
            f"\n{len(students):,} students; {len(used):,} rows in the effect model; median of {args.repeat} runs"
        )
        print(f"{'':36} {'bare (s)':>9} {'ours (s)':>9} {'ratio':>7}")
        for name, b, o in rows:
            print(f"{name:36} {b:9.3f} {o:9.3f} {o / b:7.3f}  target <= 1.3")
        print(f"\neffect formula: {formula}")
        model_rows(work, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def consortium_features(root=None):
    "The consortium package's tables (from data root `root`; None: the workspace's) and its students' features."
    from research_kit.data.load import load
    from research_kit.analysis import student_features

    tables = {
        r: load("consortium", r, root=root)
        for r in ("students", "terms", "internships", "outcomes", "programs")
    }
    features = student_features(
        tables["students"],
        tables["terms"],
        tables["internships"],
        tables["outcomes"],
        programs=tables["programs"],
    )
    return tables, features


def model_rows(work, repeat):
    "evaluate of each model on the consortium package at its default size vs the plain scikit-learn way."
    import numpy as np
    from research_kit.data.demo import generate
    from research_kit.analysis.models import MODELS, evaluate

    generate(work / "models" / "consortium")
    _, students = consortium_features(root=str(work / "models"))
    known = students[students["status"] != "enrolled"]
    early = ["first_term_attendance", "first_term_gpa", "funding", "entry_basis", "gender", "language"]
    early.append("institution_id")
    rows, targets = [], {"logistic": 0.3, "gradient_boosting": 0.5}
    for model in MODELS:
        ours = evaluate(known, "dropped", early, model=model)
        bare = plain_evaluation(known, "dropped", early, model)
        assert np.allclose(
            ours.importance.set_index("feature").loc[early, "importance"], bare, rtol=0, atol=1e-12
        )
        rows.append(
            (
                model,
                timed(lambda: plain_evaluation(known, "dropped", early, model), repeat),
                timed(lambda: evaluate(known, "dropped", early, model=model), repeat),
            )
        )
    print(f"\n{len(known):,} students with a known outcome, 5 folds x 5 shuffles; median of {repeat} runs")
    print(f"{'':36} {'plain (s)':>9} {'ours (s)':>9} {'ratio':>7}")
    for name, b, o in rows:
        print(
            f"{'evaluate, ' + name:36} {b:9.3f} {o:9.3f} {o / b:7.3f}  target <= {targets[name]} ({b / o:.1f}x)"
        )


def plain_evaluation(df, target, features, model):
    "evaluate's predictions and importances the plain scikit-learn way; the mean importance of each feature."
    import numpy as np
    from sklearn.base import clone
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import StratifiedKFold
    from research_kit.analysis.models import _one_thread, _pipeline

    X, y = df[features], df[target].astype(int).to_numpy()
    pipe, importances = _pipeline(X, model, 0), []
    with _one_thread():
        for train, test in StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(X, y):
            fitted = clone(pipe).fit(X.iloc[train], y[train])
            fitted.predict_proba(X.iloc[test])
            shuffled = permutation_importance(
                fitted, X.iloc[test], y[test], scoring="roc_auc", n_repeats=5, random_state=0
            )
            importances.append(shuffled.importances)
    return np.concatenate(importances, axis=1).mean(axis=1)


if __name__ == "__main__":
    main()
