"""Suppressed tables withstand a linear-programming attack written here from scratch.

The attacker sees what a reader sees -- the shown cells, which cells are masked, the table's total
row and column -- plus every row and column total the table does not show (as if published
elsewhere; only for lines of two or more cells, as `suppress` documents). It writes its own
constraint matrix (one equation per row and per column) into a HiGHS model of its own (highspy), and
solves it for the smallest value of each masked cell and, when that is below k, for its largest: one
model per table, only the objective changing between solves. It knows the true table, and checks
that it is one of the tables it cannot rule out. The promise checked: no masked cell that could be
a small count (interval reaching below k) is recovered exactly or narrowed to less than p -- over
the enrolment tables of every institution and cohort, which the institution profiles publish (the
issue's METU leak among them), and over 2 x 1029 random tables of 2-8 rows and columns: every
shape, in three mixes of zeros, small and large counts, 7 times each, once with a total row and
column and once without (then the margins are known, and `suppress` may refuse: the attacker must
then find a small count pinned down even with every cell masked). Each table is drawn by a
generator of its own, seeded by its number, so a failure names the table and `random_table(seed, n)`
rebuilds it. The tables are attacked in two processes (the machine's two cores);
PRIVACY_ATTACK_TABLES sets the tables per test, PRIVACY_ATTACK_WORKERS the processes (1: in this one).
"""

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import highspy
import numpy as np
import pandas as pd
import pytest

from research_kit.analysis.privacy import suppress
from research_kit.errors import RKError

K, P = 10, 5
SHAPES = [(rows, cols) for rows in range(2, 9) for cols in range(2, 9)]
MIXES = {  # the values a cell is drawn from (k = 10): the mix, then two harder ones
    "mixed": [0, 0, 1, 2, 3, 4, 6, 9, 10, 12, 20, 35, 60, 150],
    "mostly small": [0, 1, 1, 2, 2, 3, 4, 5, 7, 9, 11, 15, 40],
    "mostly zeros": [0, 0, 0, 0, 0, 1, 2, 3, 8, 12, 30, 90],
}
# tables per random test (there are two): by default every shape in every mix 7 times, 1029 tables; raise it for a long run
TABLES = int(os.environ.get("PRIVACY_ATTACK_TABLES", str(7 * len(SHAPES) * len(MIXES))))
WORKERS = int(
    os.environ.get("PRIVACY_ATTACK_WORKERS", str(min(2, os.cpu_count() or 1)))
)  # 1: in this process


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
        if not total and len(parts) < 2:
            continue  # its total is that one cell: nothing to learn
        coef, b = np.zeros(len(masked)), 0.0
        for cell in parts:
            if cell in column:
                coef[column[cell]] += 1
            else:
                b -= shown[cell]
        if not total:
            b += sum(truth[c] for c in parts)  # published elsewhere
        elif total in column:
            coef[column[total]] -= 1
        else:
            b += shown[total]
        if coef.any():
            rows.append(coef)
            rhs.append(b)
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
    assert model.getModelStatus() == highspy.HighsModelStatus.kOptimal, model.modelStatusToString(
        model.getModelStatus()
    )
    value = model.getInfo().objective_function_value
    model.changeColCost(n, 0.0)
    return value


def weak_cells(shown, truth, total_i=None, total_j=None, k=K, p=P):
    """Masked cells that could be below k and whose feasible range is narrower than p: (cell, lower, upper).
    One HiGHS model per table, solved for each masked cell's smallest value and, when that is below k, its
    largest (only the objective changes from one solve to the next, so each starts from the last basis).
    Every value is capped above anything the true table's total allows; reaching the cap means unbounded."""
    masked, A, b = equations(shown, truth, total_i, total_j)
    if not masked:
        return []
    cap = 2 * np.nansum(truth) + 1
    model = bounds_model(A, b, cap)
    weak = []
    for n, cell in enumerate(masked):
        lower = math.ceil(optimum(model, n, 1) - 1e-6)
        assert lower <= truth[cell]  # the true table is one the attacker cannot rule out
        if lower >= k:
            continue  # it cannot be a small count: its range does not matter
        high = -optimum(model, n, -1)
        upper = math.inf if high > cap - 0.5 else math.floor(high + 1e-6)
        assert truth[cell] <= upper
        if upper - lower < p:
            weak.append((cell, lower, upper))
    return weak


def masked_array(shown, columns):
    "The table as a reader sees it: NaN where masked."
    return shown[columns].to_numpy(dtype=float, na_value=np.nan)


def random_table(seed, n):
    "Table n of a seed: shapes and mixes taken in turn, the values drawn by a generator of its own (so n alone rebuilds it)."
    rows, cols = SHAPES[n % len(SHAPES)]
    mix = list(MIXES.values())[n // len(SHAPES) % len(MIXES)]
    values = np.random.default_rng([seed, n]).choice(mix, size=(rows, cols))
    return pd.DataFrame(values, columns=[f"c{j}" for j in range(cols)])


def with_totals(table):
    "The table with a total column and a total row ('all')."
    values = table.to_numpy()
    values = np.column_stack([values, values.sum(axis=1)])
    return pd.DataFrame(
        np.vstack([values, values.sum(axis=0)]),
        index=[*table.index, "all"],
        columns=[*table.columns, "total"],
    )


def attack_with_totals(n):
    "Table n suppressed with its total row and column, then attacked: (its small counts, the weak cells found)."
    table = random_table(20240, n)
    names, full = list(table.columns), with_totals(table)
    shown, masked = suppress(full, names, K, total_row="all", total_column="total")
    truth = full[[*names, "total"]].to_numpy(float)
    small = (truth > 0) & (truth < K)
    assert (small <= masked[[*names, "total"]].to_numpy()).all(), n
    return int(small.sum()), weak_cells(masked_array(shown, [*names, "total"]), truth, len(table), len(names))


def attack_without_totals(n):
    """Table n suppressed as it is (its margins known elsewhere), then attacked: ("protected", weak cells); or, when
    suppress refuses it, ("refused", the weak cells with every cell masked), which must not be empty."""
    table = random_table(20241, n)
    names, truth = list(table.columns), table.to_numpy(float)
    try:
        shown, _ = suppress(table, names, K)
    except RKError as e:
        assert "cannot be protected" in str(e), n
        return "refused", weak_cells(np.full(truth.shape, np.nan), truth)
    return "protected", weak_cells(masked_array(shown, names), truth)


@pytest.fixture(scope="module")
def attack_all():
    "attack(n) for every table n, spread over WORKERS processes (the tables are independent; the machine has two cores)."
    if WORKERS < 2:
        yield lambda attack: [attack(n) for n in range(TABLES)]
        return
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda attack: list(pool.map(attack, range(TABLES), chunksize=8))


def test_random_tables_with_totals_withstand_the_attack(attack_all):
    results = attack_all(attack_with_totals)
    weak = {
        n: cells for n, (_, cells) in enumerate(results) if cells
    }  # random_table(20240, n) rebuilds table n
    small = sum(count for count, _ in results)
    print(
        f"attacked {len(results)} random tables with totals, {small} small counts: {len(weak)} with a weak cell"
    )
    assert weak == {}
    assert len(results) == TABLES and small > 3 * TABLES  # the tables were not trivially safe


def test_random_tables_without_totals_withstand_the_attack_or_are_refused(attack_all):
    "Without totals, the margins (known elsewhere) can pin a small count: then suppress refuses, and rightly."
    results = attack_all(attack_without_totals)
    kinds = [kind for kind, _ in results]
    weak = {n: cells for n, (kind, cells) in enumerate(results) if kind == "protected" and cells}
    # the attacker confirms each refusal: with every cell masked, some small count is still pinned down
    wrongly_refused = [n for n, (kind, cells) in enumerate(results) if kind == "refused" and not cells]
    print(
        f"attacked {len(results)} random tables without totals: {kinds.count('protected')} protected, "
        f"{len(weak)} of them with a weak cell; {kinds.count('refused')} refused, {len(wrongly_refused)} of them wrongly"
    )
    assert weak == {} and wrongly_refused == []
    assert kinds.count("protected") > TABLES // 4 and kinds.count("refused") > 0


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
        weak = weak_cells(
            masked_array(shown, columns), table[columns].to_numpy(float), len(table) - 1, len(parts)
        )
        assert weak == [], (name, weak)
        seen.add(name)
    assert "METU 2024" in seen and len(seen) >= 12


def test_the_attacker_finds_the_leak_of_the_old_rule():
    "The attacker is not blind: on the pattern the old rule published for METU 2024 it finds the exact 2."
    [(_, table, parts)] = [t for t in enrolment_tables() if t[0] == "METU 2024"]
    columns = [*parts, "total_n"]
    old = table[columns].astype(float)
    for row, cols in {
        "METU-01": ["female_kazakh_n", "male_kazakh_n"],
        "METU-03": ["female_kazakh_n", "female_russian_n"],
        "METU-04": ["female_russian_n", "male_russian_n"],
        "METU-05": ["female_kazakh_n", "male_kazakh_n"],
        "METU-06": ["female_russian_n", "male_russian_n"],
    }.items():
        old.loc[row, cols] = np.nan
    weak = weak_cells(old.to_numpy(), table[columns].to_numpy(float), len(table) - 1, len(parts))
    where = table.index.get_loc("METU-03"), columns.index("female_kazakh_n")
    assert (where, 2, 2) in weak
