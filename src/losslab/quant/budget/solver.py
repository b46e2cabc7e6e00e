"""Multiple-choice knapsack: one width per layer (or tie group), least summed sensitivity within a bit budget.

Each item ``i`` (a layer, or a tie group of layers that take one width together) has choices ``j`` with an
integer cost ``c_ij`` (stored bits, as :func:`losslab.quant.result.storage_bits_total` counts them) and a
sensitivity ``s_ij``. A plan picks one ``j(i)`` per item::

    minimize Σ_i s_i,j(i)   subject to   Σ_i c_i,j(i) <= capacity

* :func:`solve_exact` solves it as a 0/1 integer program (x_ij ∈ {0, 1}, Σ_j x_ij = 1) with HiGHS through
  ``scipy.optimize.milp`` at zero optimality gap; the rounded plan is re-checked in integer arithmetic and, if
  HiGHS' feasibility tolerance let it overshoot, solved again with the capacity tightened by the overshoot.
  Ties are broken toward spending the budget: a second program maximizes Σ c over the plans that keep every
  item's s at the optimum's (each item may move among its choices of equal s), so Σ s is unchanged.
* :func:`solve_greedy` is NNCF's rule generalised to several widths: start at the widest choice of every item
  and, while over budget, take the step down to the next cheaper choice with the smallest sensitivity increase
  per stored bit saved.

Both raise :class:`BudgetError` when even the cheapest plan exceeds the capacity. Costs and capacity are plain
Python integers (stored bits of a large network exceed 2^31).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from losslab.errors import ConfigError

__all__ = ["SOLVERS", "BudgetError", "Plan", "plan_cost", "solve", "solve_exact", "solve_greedy"]

SOLVERS = ("exact", "greedy")


class BudgetError(ConfigError):
    """A budget no plan can meet."""


@dataclass(frozen=True)
class Plan:
    """One choice index per item, its summed cost (stored bits) and summed sensitivity."""

    choice: tuple[int, ...]
    cost: int
    sensitivity: float


def plan_cost(costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]], choice: Sequence[int]) -> Plan:
    """The :class:`Plan` of ``choice``: Σ c_i,choice[i] (exact integer) and Σ s_i,choice[i]."""
    cost = sum(int(costs[i][j]) for i, j in enumerate(choice))
    return Plan(tuple(int(j) for j in choice), cost, float(sum(values[i][j] for i, j in enumerate(choice))))


def _check(costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]], capacity: int) -> None:
    if len(costs) != len(values) or any(len(c) != len(v) or not c for c, v in zip(costs, values)):
        raise ConfigError("costs and values must have one non-empty row per item, of equal lengths")
    cheapest = sum(min(int(x) for x in c) for c in costs)
    if cheapest > capacity:
        raise BudgetError(
            f"the budget of {capacity} stored bits is below the cheapest plan ({cheapest} bits, every layer at its "
            "narrowest choice): raise the budget or add a narrower width to the choices"
        )


def solve_exact(costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]], capacity: int) -> Plan:
    """The optimal plan (least Σ s within Σ c <= capacity) by 0/1 integer programming (HiGHS, zero gap), its ties
    broken toward more stored bits.

    Tie-break: with j*(i) the optimum's choices, each item may move to any choice j with s_ij == s_ij*(i) exactly
    (the ties the clamp :func:`losslab.quant.budget.table.clamp_monotone` makes); a second integer program over
    only those choices maximizes Σ c within the capacity. Every plan it may return has the same s per item, hence
    the same Σ s: it cannot trade a better Σ s for bits. It is the lexicographic optimum (least Σ s, then most
    bits) whenever equal totals come from equal per-item values; a coincidental equality of sums of different
    values across items is not searched."""
    _check(costs, values, capacity)
    base = np.array([min(int(x) for x in c) for c in costs], dtype=np.int64)
    extra = np.concatenate([np.asarray(c, dtype=np.float64) - b for c, b in zip(costs, base)])  # cost above cheapest
    floor = np.array([min(v) for v in values], dtype=np.float64)
    gain = np.concatenate([np.asarray(v, dtype=np.float64) - f for v, f in zip(values, floor)])
    scale = gain.max() if gain.size and gain.max() > 0 else 1.0
    room = capacity - int(base.sum())
    if float(extra.sum()) <= room:  # every item at its best choice fits: the costliest of each row's best
        return plan_cost(costs, values, [max(_best(v), key=lambda j, c=c: int(c[j])) for c, v in zip(costs, values)])
    first = _milp(costs, values, capacity, [len(c) for c in costs], gain / scale, extra, room)
    ties = [[j for j, v in enumerate(values[i]) if v == values[i][first.choice[i]]] for i in range(len(costs))]
    if first.cost >= capacity or all(len(t) == 1 for t in ties):
        return first
    sub_costs = [[int(costs[i][j]) for j in t] for i, t in enumerate(ties)]
    sub_base = [min(c) for c in sub_costs]
    sub_extra = np.concatenate([np.asarray(c, dtype=np.float64) - b for c, b in zip(sub_costs, sub_base)])
    sub = _milp(
        sub_costs,
        [[values[i][j] for j in t] for i, t in enumerate(ties)],
        capacity,
        [len(t) for t in ties],
        -sub_extra / max(float(sub_extra.max()), 1.0),
        sub_extra,
        capacity - sum(sub_base),
    )
    second = plan_cost(costs, values, [t[j] for t, j in zip(ties, sub.choice)])
    return second if second.cost > first.cost else first


def _best(values: Sequence[float]) -> list[int]:
    """Indices of the least value of one row."""
    low = min(values)
    return [j for j, v in enumerate(values) if v == low]


def _milp(
    costs: Sequence[Sequence[int]],
    values: Sequence[Sequence[float]],
    capacity: int,
    sizes: list[int],
    objective: np.ndarray,
    extra: np.ndarray,
    room: int,
) -> Plan:
    """Minimize ``objective`` · x over 0/1 x with one choice per item and extra · x <= room; the rounded plan is
    re-checked in integer arithmetic and, if HiGHS' feasibility tolerance let it overshoot the capacity, solved
    again with ``room`` tightened by the overshoot."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    starts = np.concatenate([[0], np.cumsum(sizes)])
    n = int(starts[-1])
    rows = np.repeat(np.arange(len(costs)), sizes)
    one_each = csr_array((np.ones(n), (rows, np.arange(n))), shape=(len(costs), n))
    for _ in range(8):
        res = milp(
            objective,
            integrality=np.ones(n),
            bounds=Bounds(0, 1),
            constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(extra[None, :], -np.inf, room)],
            options={"mip_rel_gap": 0.0},
        )
        if res.x is None:
            raise BudgetError(f"no plan fits {capacity} stored bits ({res.message})")
        choice = [int(np.argmax(res.x[starts[i] : starts[i + 1]])) for i in range(len(costs))]
        plan = plan_cost(costs, values, choice)
        if plan.cost <= capacity:
            return plan
        room -= plan.cost - capacity  # HiGHS' tolerance let it overshoot: tighten and solve again
    raise BudgetError(f"the integer program did not return a plan within {capacity} stored bits")


def solve_greedy(costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]], capacity: int) -> Plan:
    """NNCF-style greedy: all items at their widest choice, then repeatedly the cheapest step down (least Δs per
    stored bit saved) until the plan fits. Not optimal; kept for comparison with :func:`solve_exact`."""
    _check(costs, values, capacity)
    order = [sorted(range(len(c)), key=lambda j, c=c: (-int(c[j]), j)) for c in costs]  # widest first
    pos = [0] * len(costs)
    total = sum(int(costs[i][order[i][0]]) for i in range(len(costs)))
    while total > capacity:
        best, best_rate = -1, np.inf
        for i, p in enumerate(pos):
            if p + 1 < len(order[i]):
                a, b = order[i][p], order[i][p + 1]
                saved = int(costs[i][a]) - int(costs[i][b])
                rate = (values[i][b] - values[i][a]) / saved if saved > 0 else -np.inf
                if rate < best_rate:
                    best, best_rate = i, rate
        a, b = order[best][pos[best]], order[best][pos[best] + 1]
        total -= int(costs[best][a]) - int(costs[best][b])
        pos[best] += 1
    return plan_cost(costs, values, [order[i][p] for i, p in enumerate(pos)])


def solve(
    costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]], capacity: int, solver: str = "exact"
) -> Plan:
    """:func:`solve_exact` or :func:`solve_greedy` by name (``--solver``)."""
    if solver not in SOLVERS:
        raise ConfigError(f"--solver {solver!r} is not known: choose one of {', '.join(SOLVERS)}")
    return (solve_exact if solver == "exact" else solve_greedy)(costs, values, capacity)
