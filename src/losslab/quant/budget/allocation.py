"""From a sensitivity table and a budget B (stored bits per weight) to one width per layer.

The capacity is ⌊B · N⌋ stored bits, N the weights of every quantized layer (budgeted ones plus those fixed by
``skip``-less ``overrides``/``--keep-8bit``, which count at what they store; float layers are not quantized
weights and do not count), minus what the fixed layers store. Tie groups (``--tie``) take one width together:
their costs and sensitivities are summed per width before the knapsack (:mod:`losslab.quant.budget.solver`).
The sensitivities the knapsack sees are each layer's clamped ones (:func:`losslab.quant.budget.table.clamp_monotone`:
s'(b_k) = min_{j <= k} s(b_j), widths ascending), so a wider width is never predicted worse; the plan's
``predicted_sensitivity`` is their sum. Among equally good plans the exact solver takes the one storing most bits.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from losslab.errors import ConfigError
from losslab.quant.budget.solver import BudgetError, solve
from losslab.quant.budget.table import SensitivityTable

__all__ = ["Allocation", "allocate", "capacity_bits", "default_ties", "parse_budgets", "tie_groups"]

QKV = ("q_proj", "k_proj", "v_proj")


def parse_budgets(text: str | Sequence[str]) -> list[float]:
    """``"3,3.5"`` or ``("3", "3.5")`` → [3.0, 3.5] (``--budget``); each a positive number."""
    items = [text] if isinstance(text, str) else list(text)
    out = []
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            try:
                value = float(part)
            except ValueError:
                raise ConfigError(
                    f"--budget {part.strip()!r} is not a number: give bits per weight, e.g. 3.5"
                ) from None
            if not value > 0:
                raise ConfigError(f"--budget {value} must be positive (stored bits per weight, e.g. 3.5)")
            out.append(value)
    if not out:
        raise ConfigError("--budget is empty: give bits per weight, e.g. --budget 3.0,3.5")
    return out


def capacity_bits(budget: float, weights: int) -> int:
    """⌊B · N⌋ in exact arithmetic (B as written in decimal)."""
    return int(Fraction(str(budget)) * weights)


def default_ties(layers: Sequence[str]) -> list[list[str]]:
    """The q/k/v projections of each decoder block (names ending in ``q_proj``/``k_proj``/``v_proj``)."""
    blocks: dict[str, list[str]] = {}
    for name in layers:
        parent, _, leaf = name.rpartition(".")
        if leaf in QKV:
            blocks.setdefault(parent, []).append(name)
    return [names for names in blocks.values() if len(names) > 1]


def tie_groups(
    layers: Sequence[str], patterns: Sequence[str], defaults: Sequence[Sequence[str]] = ()
) -> list[list[str]]:
    """Items of the knapsack: every layer alone, except that the layers one ``--tie`` pattern matches (fnmatch;
    ``a,b`` lists alternatives) form one group, as does each default group; overlapping groups merge.
    A pattern that matches no budgeted layer raises ConfigError."""
    parent = {n: n for n in layers}

    def root(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    groups = [list(g) for g in defaults]
    for pattern in patterns:
        alts = [p.strip() for p in pattern.split(",") if p.strip()]
        hit = [n for n in layers if any(fnmatch.fnmatchcase(n, p) for p in alts)]
        if not hit:
            raise ConfigError(f"--tie {pattern!r} matches no budgeted layer; layer names are: {', '.join(layers)}")
        groups.append(hit)
    for group in groups:
        for n in group[1:]:
            parent[root(n)] = root(group[0])
    merged: dict[str, list[str]] = {}
    for n in layers:
        merged.setdefault(root(n), []).append(n)
    return list(merged.values())


@dataclass
class Allocation:
    """A plan for one budget: the width of every budgeted layer and what it costs and predicts; ``search`` is set
    by :func:`losslab.quant.budget.search.refine` (plans evaluated, calibration losses, the knapsack plan)."""

    budget: float
    solver: str
    chosen: dict[str, int]
    stored_bits: int
    total_weights: int
    predicted_sensitivity: float
    note: str | None = None
    search: dict[str, Any] | None = None

    @property
    def stored_bits_per_weight(self) -> float:
        """Planned stored bits per quantized weight (fixed layers included)."""
        return self.stored_bits / self.total_weights

    def overrides(self, method: Any) -> dict[str, Any]:
        """``{layer name: method at its chosen width}`` for the driver's overrides (exact names)."""
        from dataclasses import replace

        return {name: replace(method, bits=b) for name, b in self.chosen.items()}

    def rows(self, table: SensitivityTable) -> list[dict[str, Any]]:
        """The ``allocation`` JSON entries: layer, weights, chosen_bits, choices."""
        return [
            {"layer": n, "weights": table.weights[n], "chosen_bits": self.chosen[n], "choices": table.choices(n)}
            for n in table.layers
        ]


def allocate(
    table: SensitivityTable,
    budget: float,
    solver: str = "exact",
    groups: Sequence[Sequence[str]] | None = None,
    bounds: Sequence[tuple[int, int]] | None = None,
) -> Allocation:
    """Solve the knapsack for ``budget`` (stored bits per weight). Below the cheapest plan: BudgetError naming the
    cheapest reachable B; at or above the widest plan's cost: the least-sensitivity plan, with a ``note``.

    ``bounds`` (one ``(lo, hi)`` per group, indices into the sorted widths, inclusive) restricts each group's
    choices (:mod:`losslab.quant.budget.search`); a restriction no plan within the budget meets raises
    BudgetError."""
    groups = [list(g) for g in groups] if groups else [[n] for n in table.layers]
    widths = sorted(table.widths)
    costs = [[sum(table.widths[b].rows[n].stored_bits for n in g) for b in widths] for g in groups]
    clamped = {n: table.clamped(n) for n in table.layers}  # non-increasing in the width (clamp_monotone)
    values = [[sum(clamped[n][k] for n in g) for k in range(len(widths))] for g in groups]
    bounds = list(bounds) if bounds is not None else [(0, len(widths) - 1)] * len(groups)
    total = table.total_weights
    room = capacity_bits(budget, total) - table.fixed_bits
    cheapest = sum(min(c) for c in costs) + table.fixed_bits
    widest = sum(max(c) for c in costs) + table.fixed_bits
    if room < cheapest - table.fixed_bits:
        raise BudgetError(
            f"--budget {budget} is below the cheapest plan: every layer at {widths[0]} bits stores "
            f"{cheapest / total:.4f} bits per weight (scales and zero points included); give --budget >= "
            f"{cheapest / total:.4f} or add a narrower width to --bits-choices"
        )
    plan = solve(
        [c[lo : hi + 1] for c, (lo, hi) in zip(costs, bounds)],
        [v[lo : hi + 1] for v, (lo, hi) in zip(values, bounds)],
        room,
        solver,
    )
    chosen = {n: widths[j + lo] for g, j, (lo, _) in zip(groups, plan.choice, bounds) for n in g}
    note = None
    if capacity_bits(budget, total) >= widest:
        note = (
            f"budget {budget} is at or above the widest plan ({widest / total:.4f} bits per weight): every layer "
            "takes its least sensitive width"
        )
    return Allocation(budget, solver, chosen, plan.cost + table.fixed_bits, total, plan.sensitivity, note)
