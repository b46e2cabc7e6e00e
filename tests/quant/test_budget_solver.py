"""The budget's knapsack, tie groups and sensitivity-table cache, against brute force and their definitions."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from losslab.errors import ConfigError
from losslab.quant.budget import (
    BudgetError,
    SensitivityTable,
    TableCache,
    allocate,
    capacity_bits,
    clamp_monotone,
    default_ties,
    fill_table,
    parse_budgets,
    solve_exact,
    solve_greedy,
    tie_groups,
)
from losslab.quant.budget.table import LayerRow, WidthRun


def brute_force(costs: list[list[int]], values: list[list[float]], capacity: int) -> float | None:
    """The least Σ value over every assignment within the capacity (None: none fits)."""
    best = None
    for choice in itertools.product(*(range(len(c)) for c in costs)):
        if sum(costs[i][j] for i, j in enumerate(choice)) <= capacity:
            value = sum(values[i][j] for i, j in enumerate(choice))
            best = value if best is None else min(best, value)
    return best


def instance(rng: np.random.Generator, layers: int, choices: int) -> tuple[list[list[int]], list[list[float]]]:
    """Layers of random size; stored bits grow with the width, sensitivities shrink (with noise, not always)."""
    bits = sorted(rng.choice([2, 3, 4, 5, 6, 8], size=choices, replace=False))
    n = rng.integers(10, 5000, size=layers)
    costs = [[int(w * b + 16 * rng.integers(1, 20)) for b in bits] for w in n]
    values = [[float(w * 4.0**-b * rng.uniform(0.2, 5.0)) for b in bits] for w in n]
    return costs, values


@pytest.mark.parametrize("seed", range(12))
def test_exact_solver_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    costs, values = instance(rng, int(rng.integers(1, 7)), int(rng.integers(2, 5)))
    low, high = sum(min(c) for c in costs), sum(max(c) for c in costs)
    for capacity in np.linspace(low, high, 7).astype(int):
        plan = solve_exact(costs, values, int(capacity))
        assert plan.cost <= capacity
        assert plan.cost == sum(costs[i][j] for i, j in enumerate(plan.choice))
        assert plan.sensitivity == pytest.approx(brute_force(costs, values, int(capacity)), rel=1e-9, abs=1e-12)
        greedy = solve_greedy(costs, values, int(capacity))
        assert greedy.cost <= capacity and greedy.sensitivity >= plan.sensitivity - 1e-9 * abs(plan.sensitivity)


def lexicographic_brute_force(costs: list[list[int]], values: list[list[float]], capacity: int) -> tuple[float, int]:
    """Over every assignment within the capacity: the least Σ value, then the most Σ cost among those with it."""
    plans = []
    for choice in itertools.product(*(range(len(c)) for c in costs)):
        cost = sum(costs[i][j] for i, j in enumerate(choice))
        if cost <= capacity:
            plans.append((sum(values[i][j] for i, j in enumerate(choice)), cost))
    best = min(v for v, _ in plans)
    return best, max(c for v, c in plans if v <= best + 1e-12)


def test_clamp_makes_a_row_non_increasing_by_its_definition() -> None:
    row = [5.0, 2.0, 3.0, 1.0, 4.0, -0.5, 0.0]
    expected = [min(row[: k + 1]) for k in range(len(row))]  # s'(b_k) = min_{j <= k} s(b_j)
    assert clamp_monotone(row) == expected == [5.0, 2.0, 2.0, 1.0, 1.0, -0.5, -0.5]
    assert clamp_monotone([3.0, 2.0, 1.0]) == [3.0, 2.0, 1.0]  # already monotone: unchanged


@pytest.mark.parametrize("seed", range(10))
def test_exact_solver_on_clamped_rows_equals_lexicographic_brute_force(seed: int) -> None:
    """Noisy rows (a wider width sometimes measured worse) with integer values 0..3 (many ties after the clamp),
    item i's row scaled by 100^i so that equal totals mean equal per-item values (base-100 digits): the plan has
    the brute-force least Σ s and, among all plans with it, the most stored bits; never over budget."""
    rng = np.random.default_rng(100 + seed)
    layers, choices = int(rng.integers(1, 6)), int(rng.integers(2, 5))
    costs, _ = instance(rng, layers, choices)
    raw = [[float(rng.integers(0, 4) * 100**i) for _ in range(choices)] for i in range(layers)]
    values = [clamp_monotone(r) for r in raw]
    low, high = sum(min(c) for c in costs), sum(max(c) for c in costs)
    for capacity in np.linspace(low, high, 9).astype(int):
        plan = solve_exact(costs, values, int(capacity))
        best, most_bits = lexicographic_brute_force(costs, values, int(capacity))
        assert plan.cost <= capacity
        assert plan.sensitivity == best
        assert plan.cost == most_bits


def test_allocate_clamps_a_noisy_row_and_spends_the_budget_on_the_tie() -> None:
    """Layer a measured worse at 4 bits than at 2 (noise): clamped to a tie, which takes 4 bits when they fit;
    the JSON rows keep the measured and the clamped sensitivities."""
    costs = {2: {"a": 200, "b": 200}, 4: {"a": 400, "b": 400}, 8: {"a": 800, "b": 800}}
    sens = {2: {"a": 1.0, "b": 3.0}, 4: {"a": 1.2, "b": 0.5}, 8: {"a": 0.9, "b": 0.7}}
    table = table_of(costs, sens)
    assert table.clamped("a") == [1.0, 1.0, 0.9] and table.clamped("b") == [3.0, 0.5, 0.5]
    plan = allocate(table, 5.0, "exact")  # 1000 bits: Σ s' = 1.5 at (2, 4) 600 bits, (4, 4) 800, (2, 8) 1000
    assert plan.chosen == {"a": 2, "b": 8} and plan.stored_bits == 1000
    assert plan.predicted_sensitivity == pytest.approx(1.5)
    assert allocate(table, 4.0, "exact").chosen == {"a": 4, "b": 4}  # measured values: a at 2 (1.5 < 1.7)
    row = plan.rows(table)[0]["choices"][1]
    assert (row["sensitivity"], row["sensitivity_clamped"]) == (1.2, 1.0)


def test_budget_below_the_cheapest_plan_is_refused_and_above_the_widest_takes_the_best() -> None:
    costs, values = [[10, 20, 40], [5, 9, 30]], [[3.0, 1.0, 0.5], [2.0, 0.1, 0.2]]
    with pytest.raises(BudgetError, match="below the cheapest plan"):
        solve_exact(costs, values, 14)
    plan = solve_exact(costs, values, 1000)
    assert plan.choice == (2, 1)  # each item's least sensitivity, not its widest choice


def table_of(costs: dict[int, dict[str, int]], sens: dict[int, dict[str, float]], fixed: int = 0) -> SensitivityTable:
    layers = list(next(iter(costs.values())))
    weights = {n: 100 for n in layers}
    widths = {b: WidthRun({n: LayerRow(sens[b][n], costs[b][n]) for n in layers}, fixed) for b in costs}
    return SensitivityTable(layers, weights, 50 if fixed else 0, widths, "proxy")


def test_allocate_counts_fixed_layers_and_reports_the_cheapest_reachable_budget() -> None:
    costs = {2: {"a": 230, "b": 230}, 4: {"a": 430, "b": 430}}
    sens = {2: {"a": 5.0, "b": 1.0}, 4: {"a": 0.5, "b": 0.4}}
    table = table_of(costs, sens, fixed=400)  # 50 weights at 8 bits kept by an override
    plan = allocate(table, 4.5, "exact")  # ⌊4.5 · 250⌋ = 1125 bits, 725 left after the fixed layer's 400
    assert plan.total_weights == 250 and capacity_bits(4.5, 250) == 1125
    assert plan.chosen == {"a": 4, "b": 2} and plan.stored_bits == 400 + 430 + 230
    assert allocate(table, 3.5, "exact").chosen == {"a": 2, "b": 2}  # 475 bits left: only 230 + 230 fits


def test_allocate_below_cheapest_names_the_cheapest_budget() -> None:
    table = table_of({2: {"a": 230}, 4: {"a": 430}}, {2: {"a": 1.0}, 4: {"a": 0.1}})
    with pytest.raises(BudgetError, match=r"give --budget >= 2\.3000"):
        allocate(table, 2.2)
    assert allocate(table, 9.0).note is not None


def test_tie_groups_share_one_width_and_unknown_patterns_are_refused() -> None:
    costs = {
        2: {"l.q_proj": 200, "l.k_proj": 200, "l.v_proj": 200},
        4: {"l.q_proj": 400, "l.k_proj": 400, "l.v_proj": 400},
    }
    sens = {
        2: {"l.q_proj": 9.0, "l.k_proj": 0.1, "l.v_proj": 0.1},
        4: {"l.q_proj": 0.0, "l.k_proj": 0.0, "l.v_proj": 0.0},
    }
    table = table_of(costs, sens)
    groups = tie_groups(table.layers, [], default_ties(table.layers))
    assert groups == [["l.q_proj", "l.k_proj", "l.v_proj"]]
    plan = allocate(table, 3.0, "exact", groups)
    assert len(set(plan.chosen.values())) == 1 and plan.stored_bits == 600  # untied, q would take 4 bits alone
    assert allocate(table, 3.0, "exact").chosen == {"l.q_proj": 4, "l.k_proj": 2, "l.v_proj": 2}
    with pytest.raises(ConfigError, match="--tie 'nope' matches no budgeted layer"):
        tie_groups(table.layers, ["nope"])
    assert tie_groups(["a", "b", "c"], ["a,b"]) == [["a", "b"], ["c"]]


@pytest.mark.parametrize(("text", "fragment"), [("x", "not a number"), ("-1", "must be positive"), ("", "empty")])
def test_parse_budgets_refuses_bad_values(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_budgets(text)


def run_width_counter(calls: list[int], fail_at: int | None = None):
    def run(bits: int) -> WidthRun:
        if bits == fail_at:
            raise KeyboardInterrupt  # a kill in the middle of the computation
        calls.append(bits)
        return WidthRun({"a": LayerRow(1.0 / bits, 100 * bits)}, 0, {"top1": float(bits)})

    return run


def test_cache_is_keyed_and_a_killed_computation_resumes(tmp_path: Path) -> None:
    key = {"checkpoint_sha256": "abc", "calibration": {"samples": 8}, "method": "gptq"}
    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        fill_table(
            [2, 3, 4], ["a"], {"a": 100}, 0, "proxy", run_width_counter(calls, fail_at=4), TableCache(tmp_path, key)
        )
    assert calls == [2, 3]
    saved = json.loads(TableCache(tmp_path, key).path.read_text())
    assert sorted(saved["table"]["widths"]) == ["2", "3"]  # each finished width is on disk
    calls.clear()
    table = fill_table([2, 3, 4], ["a"], {"a": 100}, 0, "proxy", run_width_counter(calls), TableCache(tmp_path, key))
    assert calls == [4] and sorted(table.widths) == [2, 3, 4]
    calls.clear()
    fill_table([3, 4], ["a"], {"a": 100}, 0, "proxy", run_width_counter(calls), TableCache(tmp_path, key))
    assert calls == []
    for change in ({"checkpoint_sha256": "abd"}, {"calibration": {"samples": 9}}, {"method": "gptq grid=sym"}):
        calls.clear()
        other = TableCache(tmp_path, {**key, **change})
        assert other.path != TableCache(tmp_path, key).path
        fill_table([2], ["a"], {"a": 100}, 0, "proxy", run_width_counter(calls), other)
        assert calls == [2]


def test_quant_does_not_import_train_or_compress() -> None:
    import subprocess
    import sys

    code = (
        "import sys, losslab.quant, losslab.quant.budget, losslab.quant.budget.runner, losslab.quant.engine\n"
        "print(' '.join(m for m in sys.modules if m.startswith('losslab.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    modules = set(done.stdout.split())
    assert not {m for m in modules if m.startswith(("losslab.train", "losslab.compress", "losslab.cli"))}
