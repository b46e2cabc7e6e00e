"""Mixed precision under a storage budget: per-layer sensitivity tables, an exact knapsack, tie groups.

``--budget B`` chooses one width per layer from ``--bits-choices`` so that the stored bits per quantized weight
(scales, zero points and codebooks included, as :func:`losslab.quant.save_packed` stores them) stay <= B and
the summed per-layer sensitivity is least::

    from losslab.quant.budget import allocate, fill_table
    table = fill_table(widths, layers, weights, fixed_weights, "proxy", run_width, cache)
    plan = allocate(table, 3.0, "exact")            # plan.chosen: {layer: bits}
    result = quantize(model, method, calib, overrides=plan.overrides(method))

:mod:`~losslab.quant.budget.table` (the table and its cache), :mod:`~losslab.quant.budget.runner` (one width's
rows from one driver run), :mod:`~losslab.quant.budget.probes` (Hessian trace, Fisher, loss probes),
:mod:`~losslab.quant.budget.solver` (exact and greedy knapsack), :mod:`~losslab.quant.budget.allocation`.
"""

from losslab.quant.budget.allocation import (
    Allocation,
    allocate,
    capacity_bits,
    default_ties,
    parse_budgets,
    tie_groups,
)
from losslab.quant.budget.search import (
    DEFAULT_REFINE,
    DEFAULT_REFINE_NOISE,
    DEFAULT_REFINE_SCORE,
    REFINE_SCORES,
    Refined,
    noise_plans,
    quantized_loss,
    refine,
    stitched_loss,
)
from losslab.quant.budget.solver import SOLVERS, BudgetError, Plan, solve, solve_exact, solve_greedy
from losslab.quant.budget.table import (
    DEFAULT_SENSITIVITY,
    SENSITIVITIES,
    SensitivityTable,
    TableCache,
    check_sensitivity,
    clamp_monotone,
    fill_table,
)

__all__ = [
    "DEFAULT_REFINE",
    "DEFAULT_REFINE_NOISE",
    "DEFAULT_REFINE_SCORE",
    "DEFAULT_SENSITIVITY",
    "REFINE_SCORES",
    "SENSITIVITIES",
    "SOLVERS",
    "Allocation",
    "BudgetError",
    "Plan",
    "Refined",
    "SensitivityTable",
    "TableCache",
    "allocate",
    "capacity_bits",
    "check_sensitivity",
    "clamp_monotone",
    "default_ties",
    "fill_table",
    "noise_plans",
    "parse_budgets",
    "quantized_loss",
    "refine",
    "solve",
    "solve_exact",
    "solve_greedy",
    "stitched_loss",
    "tie_groups",
]
