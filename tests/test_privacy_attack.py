"""Suppressed tables withstand a linear-programming attack written here from scratch.

The attacker sees what a reader sees -- the shown cells, which cells are masked, the table's total
row and column -- plus every row and column total the table does not show (as if published
elsewhere; only for lines of two or more cells, as `suppress` documents). It writes its own
constraint matrix (one equation per row and per column), and asks SciPy's linprog for the largest
and smallest value of each masked cell consistent with it (all of them in one program per table).
It knows the true table, and checks that it is one of the tables it cannot rule out. The promise
checked: no masked cell that could be a small count (interval reaching below k) is recovered
exactly or narrowed to less than p -- over random tables
with zeros and small values, and over the enrolment tables of every institution and cohort, which
the institution profiles publish (the issue's METU leak among them).
"""
import math
import os

import highspy
import numpy as np
import pandas as pd
import pytest

from research_kit.analysis.privacy import suppress
from research_kit.errors import RKError

K, P = 10, 5
# tables per random test: the default keeps the suite quick on two cores; set it to thousands for a long run
TABLES = int(os.environ.get("PRIVACY_ATTACK_TABLES", "150"))


def equations(shown, truth, total_i, total_j):
    "A_eq x = b_eq over the masked cells (NaN in `shown`), from every row and column the attacker can sum."
    n_rows, n_cols = shown.shape
    masked = list(zip(*np.nonzero(np.isnan(shown))))
    column = {cell: n for n, cell in enumerate(masked)}
    rows, rhs = [], []
    part_rows = [i for i in range(n_rows) if i != total_i]
    part_cols = [j for j in range(n_cols) if j != total_j]
    lines = [([(i, j) for j in part_cols], total_j is not None and (i, total_j)) for i in range(n_rows)]
    lines += [([(i, j) for i in part_rows], total_i is not None and (total_i, j)) for j in range(n_cols)]
    for parts, total in lines:
        if not total and len(parts) < 2: continue  # its total is that one cell: nothing to learn
        coef, b = np.zeros(len(masked)), 0.0
        for cell in parts:
            if cell in column: coef[column[cell]] += 1
            else: b -= shown[cell]
        if not total: b += sum(truth[c] for c in parts)  # published elsewhere
        elif total in column: coef[column[total]] -= 1
        else: b += shown[total]
        if coef.any(): rows.append(coef); rhs.append(b)
    return masked, np.array(rows).reshape(len(rows), len(masked)), np.array(rhs)


def bounds_model(A, b, cap):
    "A HiGHS model of A x = b, 0 <= x <= cap, ready to take one objective after another."
    model = highspy.Highs()
    for name, value in {"output_flag": False, "threads": 1, "presolve": "off"}.items():
        model.setOptionValue(name, value)
    h = A.shape[1]
    model.addVars(h, np.zeros(h), np.full(h, cap))
    for row, rhs in zip(A, b):
        on = np.flatnonzero(row)
        model.addRow(rhs, rhs, len(on), on.astype(np.int32), row[on])
    return model


def optimum(model, n, sense):
    "The smallest (sense 1) or, negated, the largest (sense -1) value of variable n; the model's objective is left at zero."
    model.changeColCost(n, sense)
    model.run()
    assert model.getModelStatus() == highspy.HighsModelStatus.kOptimal, model.modelStatusToString(model.getModelStatus())
    value = model.getInfo().objective_function_value
    model.changeColCost(n, 0.0)
    return value


def weak_cells(shown, truth, total_i=None, total_j=None, k=K, p=P):
    """Masked cells that could be below k and whose feasible range is narrower than p: (cell, lower, upper).
    One HiGHS model per table, solved for each masked cell's smallest value and, when that is below k, its
    largest (only the objective changes from one solve to the next, so each starts from the last basis).
    Every value is capped above anything the true table's total allows; reaching the cap means unbounded."""
    masked, A, b = equations(shown, truth, total_i, total_j)
    if not masked: return []
    cap = 2 * np.nansum(truth) + 1
    model = bounds_model(A, b, cap)
    weak = []
    for n, cell in enumerate(masked):
        lower = math.ceil(optimum(model, n, 1) - 1e-6)
        assert lower <= truth[cell]  # the true table is one the attacker cannot rule out
        if lower >= k: continue  # it cannot be a small count: its range does not matter
        high = -optimum(model, n, -1)
        upper = math.inf if high > cap - 0.5 else math.floor(high + 1e-6)
        assert truth[cell] <= upper
        if upper - lower < p: weak.append((cell, lower, upper))
    return weak


def masked_array(shown, columns):
    return np.column_stack([shown[c].to_numpy(dtype=float, na_value=np.nan) for c in columns])


def random_table(rng):
    rows, cols = rng.integers(2, 9, size=2)
    values = rng.choice([0, 0, 1, 2, 3, 4, 6, 9, 10, 12, 20, 35, 60, 150], size=(rows, cols))
    return pd.DataFrame(values, columns=[f"c{j}" for j in range(cols)])


def with_totals(table):
    full = table.assign(total=table.sum(axis=1))
    full.loc["all"] = full.sum()
    return full


def test_random_tables_with_totals_withstand_the_attack():
    rng = np.random.default_rng(20240)
    checked = small = 0
    for trial in range(TABLES):
        table = random_table(rng)
        names, full = list(table.columns), with_totals(table)
        shown, masked = suppress(full, names, K, total_row="all", total_column="total")
        truth = full[[*names, "total"]].to_numpy(float)
        assert ((truth > 0) & (truth < K) <= masked[[*names, "total"]].to_numpy()).all()
        got = masked_array(shown, [*names, "total"])
        assert weak_cells(got, truth, len(table), len(names)) == [], (trial, table.to_numpy().tolist())
        checked += 1
        small += int(((truth > 0) & (truth < K)).sum())
    assert checked == TABLES and small > 3 * TABLES  # the tables were not trivially safe


def test_random_tables_without_totals_withstand_the_attack_or_are_refused():
    "Without totals, the margins (known elsewhere) can pin a small count: then suppress refuses, and rightly."
    rng = np.random.default_rng(20241)
    protected = refused = 0
    for trial in range(TABLES):
        table = random_table(rng)
        names, truth = list(table.columns), table.to_numpy(float)
        try:
            shown, masked = suppress(table, names, K)
        except RKError as e:
            assert "cannot be protected" in str(e)
            # the attacker confirms it: with every cell masked, some small count is still pinned down
            assert weak_cells(np.full(truth.shape, np.nan), truth), (trial, table.to_numpy().tolist())
            refused += 1
            continue
        assert weak_cells(masked_array(shown, names), truth) == [], (trial, table.to_numpy().tolist())
        protected += 1
    assert protected > TABLES // 4 and refused > 0


def enrolment_tables():
    "The enrolment table of every institution and cohort, built as reports/institution_profile.ipynb builds it."
    from research_kit.data.load import load
    students = load("consortium", "students")
    for (institution, cohort), group in students.groupby(["institution_id", "cohort"]):
        cells = pd.crosstab(group["program_id"], [group["gender"], group["language"]])
        cells.columns = [f"{g}_{l}_n" for g, l in cells.columns]
        table = cells.assign(total_n=cells.sum(axis=1))
        table.loc["all"] = table.sum()
        yield f"{institution} {cohort}", table, list(cells.columns)


def test_every_enrolment_table_withstands_the_attack():
    "The issue's METU 2024 table (METU-03 had exactly 2 female Kazakh speakers) and every other one."
    seen = set()
    for name, table, parts in enrolment_tables():
        shown, _ = suppress(table, parts, K, total_row="all", total_column="total_n")
        columns = [*parts, "total_n"]
        weak = weak_cells(masked_array(shown, columns), table[columns].to_numpy(float), len(table) - 1, len(parts))
        assert weak == [], (name, weak)
        seen.add(name)
    assert "METU 2024" in seen and len(seen) >= 12


def test_the_attacker_finds_the_leak_of_the_old_rule():
    "The attacker is not blind: on the pattern the old rule published for METU 2024 it finds the exact 2."
    [(_, table, parts)] = [t for t in enrolment_tables() if t[0] == "METU 2024"]
    columns = [*parts, "total_n"]
    old = table[columns].astype(float)
    for row, cols in {"METU-01": ["female_kazakh_n", "male_kazakh_n"], "METU-03": ["female_kazakh_n", "female_russian_n"],
                      "METU-04": ["female_russian_n", "male_russian_n"], "METU-05": ["female_kazakh_n", "male_kazakh_n"],
                      "METU-06": ["female_russian_n", "male_russian_n"]}.items():
        old.loc[row, cols] = np.nan
    weak = weak_cells(old.to_numpy(), table[columns].to_numpy(float), len(table) - 1, len(parts))
    where = table.index.get_loc("METU-03"), columns.index("female_kazakh_n")
    assert (where, 2, 2) in weak
