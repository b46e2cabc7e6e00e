"""A knapsack plan refined by the measured calibration loss of whole plans (``--refine N``).

The knapsack (:func:`losslab.quant.budget.allocate`) adds sensitivities measured one layer at a time. Together
the layers' errors interact (they compound through the network), so a plan the sum ranks better can realise
worse. :func:`refine` evaluates whole plans instead, by an ``evaluate(plan) -> (loss, payload)`` on calibration
data only (never the test split). Two scores (``--refine-score``):

- ``stitched`` (:func:`stitched_loss`): the calibration loss of the float network with every budgeted layer's
  weight replaced by its Q from the uniform run at the plan's width (one forward pass over the calibration set
  per plan). It ignores the error feedback of the sequential driver (GPTQ/GPFQ quantize each layer on the
  inputs the already-quantized layers before it produce), so the plan it prefers is not the one quantized.
- ``quantized`` (:func:`quantized_loss`): the calibration loss of the model the driver really quantizes with
  the plan, as the final quantization does (one quantize pass and one forward pass per plan); the best plan's
  quantized model is the payload, so the result is not quantized twice.

Local search over feasible plans. The start is the knapsack optimum. A neighbour of the current plan forces one
item (a layer or a tie group) at choice j to a wider choice (> j) or a narrower one (< j) and re-solves the
knapsack for every item within the same budget (the constraints accepted so far kept), so each neighbour is a
plan within the budget and optimal under its constraints. Neighbours are tried in order of their predicted
sensitivity; the first whose loss is lower than the current plan's becomes the current plan (its constraint
kept) and the neighbourhood is rebuilt. The search stops after ``evaluations`` evaluations (the start included)
or when no neighbour improves (a plan is never evaluated twice); it returns the best plan evaluated.
``evaluations = 1`` is the knapsack plan alone.

Noise candidates (``--refine-noise K``, the ``loss`` table with a standard error per entry). The table's entries
are means over calibration samples; where two plans' predicted totals differ by less than their noise the
knapsack's choice between them is chance. Before the local search, :func:`noise_plans` draws tables
s̃ = s + se·ε (ε ~ N(0, 1) per entry, seeded) and takes the knapsack optimum of each, until K distinct plans other
than the knapsack plan are found (at most 8·K draws): the plans the measurement could as well have made optimal.
Each is evaluated (within the ``evaluations`` count); the best of them and the knapsack plan is where the local
search starts (the whole range of widths open again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from losslab.errors import ConfigError
from losslab.quant.budget.allocation import Allocation, allocate
from losslab.quant.budget.solver import BudgetError
from losslab.quant.budget.table import SensitivityTable

__all__ = [
    "DEFAULT_REFINE",
    "DEFAULT_REFINE_NOISE",
    "DEFAULT_REFINE_SCORE",
    "REFINE_SCORES",
    "Refined",
    "noise_plans",
    "quantized_loss",
    "refine",
    "stitched_loss",
]

DEFAULT_REFINE = 1  # --refine: 1 is the knapsack plan (the stitched search lost accuracy: BENCHMARKS.md)
REFINE_SCORES = ("stitched", "quantized")
DEFAULT_REFINE_SCORE = "quantized"
DEFAULT_REFINE_NOISE = 0
NOISE_DRAWS = 8  # draws per wanted noise candidate before giving up (the table may allow fewer distinct plans)

Evaluate = Callable[[Allocation], tuple[float, Any]]


@dataclass
class Refined:
    """The best plan evaluated, its calibration loss and payload (what ``evaluate`` returned with it, e.g. the
    quantized point), the knapsack plan's loss and every evaluation as ``(chosen widths, predicted, loss)``."""

    allocation: Allocation
    loss: float
    payload: Any
    start_loss: float
    trace: list[tuple[dict[str, int], float, float]] = field(default_factory=list)


def stitched_loss(table: SensitivityTable, probe: Any) -> Evaluate:
    """``evaluate`` for :func:`refine` at the cost of one forward pass over the calibration set: the calibration
    loss of the float network (``probe``: a :class:`losslab.quant.budget.runner.Probe`) with every budgeted
    layer's weight replaced by its Q from the uniform run at the plan's width (kept in the table), the plan
    stitched from the runs the ``loss`` metric measures one layer at a time. The payload is None."""

    from losslab.quant.budget.probes import loss_with_weights

    def evaluate(alloc: Allocation) -> tuple[float, Any]:
        weights = {n: table.widths[b].weights[n] for n, b in alloc.chosen.items()}
        return loss_with_weights(probe.model, weights, probe.batches, probe.loss_fn), None

    return evaluate


def quantized_loss(quantize: Callable[[Allocation], tuple[Any, Any]], probe: Any) -> Evaluate:
    """``evaluate`` for :func:`refine` scoring what is really built: ``quantize(plan)`` runs the one sequential
    driver with the plan as per-layer widths and returns ``(quantized network, payload)``; the score is that
    network's calibration loss on ``probe``'s batches (Σ_b n_b·loss_b / Σ n_b, :func:`calibration_loss`)."""
    from losslab.quant.budget.probes import calibration_loss

    def evaluate(alloc: Allocation) -> tuple[float, Any]:
        model, payload = quantize(alloc)
        return calibration_loss(model.eval(), probe.batches, probe.loss_fn), payload

    return evaluate


def _neighbours(
    table: SensitivityTable,
    budget: float,
    solver: str,
    groups: list[list[str]],
    bounds: list[tuple[int, int]],
    current: Allocation,
) -> list[tuple[Allocation, list[tuple[int, int]]]]:
    """Every item forced one step wider or narrower (all further widths allowed), the rest re-solved; feasible
    plans only, distinct, the cheapest predicted sensitivity first."""
    widths = sorted(table.widths)
    out: dict[tuple[int, ...], tuple[Allocation, list[tuple[int, int]]]] = {}
    for i, group in enumerate(groups):
        j = widths.index(current.chosen[group[0]])
        lo, hi = bounds[i]
        for new in ((j + 1, hi), (lo, j - 1)):
            if new[0] > new[1]:
                continue
            trial = [*bounds[:i], new, *bounds[i + 1 :]]
            try:
                alloc = allocate(table, budget, solver, groups, trial)
            except BudgetError:
                continue
            key = tuple(alloc.chosen[g[0]] for g in groups)
            if key != tuple(current.chosen[g[0]] for g in groups):
                out.setdefault(key, (alloc, trial))
    return sorted(out.values(), key=lambda item: item[0].predicted_sensitivity)


def noise_plans(
    table: SensitivityTable,
    budget: float,
    count: int,
    solver: str = "exact",
    groups: Sequence[Sequence[str]] | None = None,
    seed: int = 0,
) -> list[Allocation]:
    """Up to ``count`` distinct plans, none the knapsack plan of ``table``, each the knapsack optimum of
    :meth:`SensitivityTable.perturbed` (s + se·ε, ε ~ N(0, 1), ``numpy.random.default_rng(seed)``), in draw order;
    at most ``NOISE_DRAWS · count`` draws. Each is returned as an allocation of the unperturbed table (its
    ``predicted_sensitivity`` is the measured Σ s' of its widths)."""
    import numpy as np

    groups = [list(g) for g in groups] if groups else [[n] for n in table.layers]
    widths = sorted(table.widths)
    seen = {tuple(sorted(allocate(table, budget, solver, groups).chosen.items()))}
    rng = np.random.default_rng(seed)
    out: list[Allocation] = []
    for _ in range(NOISE_DRAWS * count):
        if len(out) >= count:
            break
        drawn = allocate(table.perturbed(rng), budget, solver, groups)
        key = tuple(sorted(drawn.chosen.items()))
        if key in seen:
            continue
        seen.add(key)
        fixed = [(widths.index(drawn.chosen[g[0]]),) * 2 for g in groups]
        out.append(allocate(table, budget, solver, groups, fixed))
    return out


def refine(
    table: SensitivityTable,
    budget: float,
    evaluate: Evaluate,
    evaluations: int,
    solver: str = "exact",
    groups: Sequence[Sequence[str]] | None = None,
    noise: int = DEFAULT_REFINE_NOISE,
    seed: int = 0,
) -> Refined:
    """The best of at most ``evaluations`` plans within ``budget``: the knapsack plan, then up to ``noise`` noise
    candidates (:func:`noise_plans`), then the local search of the module doc from the best of those;
    ``evaluate(plan)`` returns ``(calibration loss, payload)``."""
    if evaluations < 1:
        raise ConfigError(f"--refine {evaluations}: give the number of plans to evaluate, at least 1")
    groups = [list(g) for g in groups] if groups else [[n] for n in table.layers]
    full = [(0, len(table.widths) - 1)] * len(groups)
    bounds = full
    current = allocate(table, budget, solver, groups, bounds)
    loss, payload = evaluate(current)
    best = Refined(current, loss, payload, loss, [(dict(current.chosen), current.predicted_sensitivity, loss)])
    seen = {tuple(sorted(current.chosen.items()))}
    candidates = noise_plans(table, budget, min(noise, evaluations - 1), solver, groups, seed) if noise else []
    for alloc in candidates:
        seen.add(tuple(sorted(alloc.chosen.items())))
        loss, payload = evaluate(alloc)
        best.trace.append((dict(alloc.chosen), alloc.predicted_sensitivity, loss))
        if loss < best.loss:
            best.allocation, best.loss, best.payload = alloc, loss, payload
    improved = True
    while improved and len(seen) < evaluations:
        improved = False
        for alloc, trial in _neighbours(table, budget, solver, groups, bounds, best.allocation):
            if len(seen) >= evaluations:
                break
            key = tuple(sorted(alloc.chosen.items()))
            if key in seen:
                continue
            seen.add(key)
            loss, payload = evaluate(alloc)
            best.trace.append((dict(alloc.chosen), alloc.predicted_sensitivity, loss))
            if loss < best.loss:
                best.allocation, best.loss, best.payload, bounds = alloc, loss, payload, trial
                improved = True
                break
    start_plan, _, _ = best.trace[0]
    best.allocation.search = {
        "evaluations": len(best.trace),
        "noise_candidates": len(candidates),
        "calib_loss": best.loss,
        "knapsack_calib_loss": best.start_loss,
        "knapsack_chosen": start_plan,
    }
    return best
