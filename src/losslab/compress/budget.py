"""``losslab quantize RUN --budget B``: widths chosen per layer from measured sensitivity under a storage budget.

Workflow: check the request (before any work) → load the run → the sensitivity table, one uniform run of the
driver per candidate width (cached in ``<run>/quantize/budget/``, resumed per width, keyed by run, calibration,
method, layer plan and metric; the uniform runs are also the uniform points of the Pareto figure) → for every
budget, the knapsack plan (:func:`losslab.quant.budget.allocate`) → quantize once more with the plan as per-layer
overrides, evaluate, pack and check that the packed file stores exactly the planned bits → text tables, JSON and
the Pareto figure::

    from losslab.compress.budget import BudgetOptions, quantize_run_budget
    report = quantize_run_budget(run, GPTQ(bits=4), BudgetOptions([2.5, 3.0], [2, 3, 4, 8]), QuantizeOptions())
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from losslab.compress.quantize_run import (
    QuantizeOptions,
    check_packed_names,
    load_run,
    method_label,
    pack_and_check,
    quantize_points,
)
from losslab.errors import ConfigError, LosslabError
from losslab.io import check_output
from losslab.quant.budget import (
    DEFAULT_REFINE,
    DEFAULT_REFINE_NOISE,
    DEFAULT_REFINE_SCORE,
    DEFAULT_SENSITIVITY,
    REFINE_SCORES,
    SOLVERS,
    Allocation,
    SensitivityTable,
    TableCache,
    allocate,
    check_sensitivity,
    fill_table,
    quantized_loss,
    refine,
    stitched_loss,
    tie_groups,
)
from losslab.quant.methods import QuantMethod
from losslab.tables import format_table

__all__ = ["BudgetOptions", "budget_points", "check_budget_request", "quantize_run_budget"]


@dataclass
class BudgetOptions:
    """``--budget`` values (stored bits per weight), ``--bits-choices``, ``--sensitivity``, ``--solver``, ``--tie``
    patterns, the figure path (default next to the JSON), the Hutchinson probe count of ``hawq``, ``--refine``
    (plans evaluated by calibration loss per budget, :mod:`losslab.quant.budget.search`; 1: the knapsack plan) and
    ``--refine-score`` (``quantized`` or ``stitched``), ``--refine-noise`` (noise candidates scored first,
    :func:`losslab.quant.budget.noise_plans`) and ``--select-samples`` (training images ``--refine`` scores plans
    on; None: the calibration images)."""

    budgets: list[float]
    choices: list[int]
    sensitivity: str = DEFAULT_SENSITIVITY
    solver: str = "exact"
    ties: list[str] = field(default_factory=list)
    figure: Path | None = None
    hutchinson_probes: int = 8
    refine: int = DEFAULT_REFINE
    refine_score: str = DEFAULT_REFINE_SCORE
    refine_noise: int = DEFAULT_REFINE_NOISE
    select_samples: int | None = None

    @property
    def keeps_weights(self) -> bool:
        """The stitched score needs each width's quantized weights kept beside the table."""
        return self.refine > 1 and self.refine_score == "stitched"


def check_budget_request(method: QuantMethod, budget: BudgetOptions) -> None:
    """Refuse, before any work: an unknown metric or solver, fewer than two widths, a width outside the method's
    range, or a budget below the narrowest width (no plan can store fewer bits than its codes)."""
    check_sensitivity(budget.sensitivity)
    if budget.refine_score not in REFINE_SCORES:
        raise ConfigError(f"--refine-score {budget.refine_score!r} is not known: choose {' or '.join(REFINE_SCORES)}")
    if budget.solver not in SOLVERS:
        raise ConfigError(f"--solver {budget.solver!r} is not known: choose one of {', '.join(SOLVERS)}")
    if budget.refine_noise and (budget.refine < 2 or budget.sensitivity != "loss"):
        raise ConfigError(
            f"--refine-noise {budget.refine_noise} draws plans within the noise of the loss table and scores them: "
            "it needs --sensitivity loss and --refine 2 or more"
        )
    if budget.select_samples is not None and (budget.select_samples < 1 or budget.refine < 2):
        raise ConfigError(
            f"--select-samples {budget.select_samples} sets the training images --refine scores plans on: give at "
            "least 1 image and --refine 2 or more"
        )
    if len(set(budget.choices)) < 2:
        raise ConfigError(
            f"--budget chooses a width per layer: give at least two widths in --bits-choices (got "
            f"{','.join(map(str, budget.choices))}), e.g. --bits-choices 2,3,4,8"
        )
    low, high = method.bits_range
    outside = [b for b in budget.choices if not low <= b <= high]
    if outside:
        raise ConfigError(
            f"--bits-choices {','.join(map(str, outside))} is outside {method.name}'s range {low}..{high}"
        )
    too_low = [b for b in budget.budgets if b < min(budget.choices)]
    if too_low:
        raise ConfigError(
            f"--budget {too_low[0]} is below the narrowest width {min(budget.choices)} (every layer stores at least "
            "its codes): raise the budget or add a narrower width to --bits-choices"
        )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_key(run: Any, method: QuantMethod, budget: BudgetOptions, opts: QuantizeOptions) -> dict[str, Any]:
    """Everything a sensitivity row depends on (the widths are not in it: each width is its own entry)."""
    return {
        "checkpoint_sha256": _file_sha256(run.checkpoint),
        "calibration": {
            "dataset": run.cfg.dataset,
            "img_size": run.cfg.img_size,
            "samples": opts.calib_samples,
            "batch_size": opts.calib_batch_size,
            "seed": opts.calib_seed,
        },
        "method": method_label(method),
        "overrides": {p: m.describe() for p, m in opts.overrides.items()},
        "skip": list(opts.skip),
        "fold_bn": opts.fold_bn,
        "act_bits": opts.act_bits,
        "sensitivity": budget.sensitivity,
        "hutchinson_probes": budget.hutchinson_probes if budget.sensitivity == "hawq" else None,
    }


def _cross_entropy(net: Any, batch: Any) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(net(batch[0]), batch[1])


def _cross_entropy_samples(net: Any, batch: Any) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(net(batch[0]), batch[1], reduction="none")


def _probe(run: Any, budget: BudgetOptions, calib: Any, layers: list[str], opts: QuantizeOptions) -> Any:
    """The float network (BatchNorm folded when the run folds it) and calibration batches for loss-based metrics
    and ``--refine``."""
    if budget.sensitivity == "proxy" and budget.refine == 1:
        return None
    from losslab.quant.bn_fold import fold_batchnorm
    from losslab.quant.budget.runner import Probe

    model = copy.deepcopy(run.model).eval()
    if opts.fold_bn:
        fold_batchnorm(model, inplace=True)
    return Probe(
        model,
        [(x.to(run.device), y.to(run.device)) for x, y, *_ in calib],
        _cross_entropy,
        layers,
        budget.hutchinson_probes,
        opts.calib_seed,
        _cross_entropy_samples,
    )


def _selection_batches(run: Any, budget: BudgetOptions, opts: QuantizeOptions) -> list[Any] | None:
    """``--select-samples`` training images drawn with the calibration seed (the calibration images first), the
    batches ``--refine`` scores plans on; None without the option."""
    if budget.select_samples is None:
        return None
    from losslab.compress.trained_run import CalibrationSettings

    settings = CalibrationSettings(budget.select_samples, opts.calib_batch_size, opts.calib_seed)
    try:
        loader = run.calibration_loader(settings)
    except ConfigError as err:
        raise ConfigError(f"--select-samples {budget.select_samples}: {err}") from None
    return [(x.to(run.device), y.to(run.device)) for x, y, *_ in loader]


def sensitivity_table(
    run: Any, method: QuantMethod, budget: BudgetOptions, opts: QuantizeOptions, calib: Any, echo: Any
) -> tuple[SensitivityTable, list[list[str]], Any]:
    """The run's table for ``budget.choices`` (cached), the knapsack items (tie groups) and the loss probe (None
    when neither the metric nor ``--refine`` needs one)."""
    from losslab.quant.budget.runner import budgeted_layers, width_run
    from losslab.quant.engine import plan_layers, quant_layers

    names = [n for n, _ in quant_layers(run.model)]
    plan = plan_layers(names, method, opts.overrides, opts.skip)
    layers = budgeted_layers(plan, method)
    groups = tie_groups(layers, budget.ties)
    probe = _probe(run, budget, calib, layers, opts)

    def run_width(bits: int) -> Any:
        (point,) = quantize_points(run, [replace(method, bits=bits)], calib, opts, opts.overrides)
        return width_run(point.result, layers, budget.sensitivity, probe, point.metrics, budget.keeps_weights)

    cache = TableCache(run.run_dir / "quantize" / "budget", _cache_key(run, method, budget, opts))
    return cached_table(run.model, plan, method, layers, budget, run_width, cache, echo), groups, probe


def cached_table(
    model: Any,
    plan: Mapping[str, QuantMethod | None],
    method: QuantMethod,
    layers: list[str],
    budget: BudgetOptions,
    run_width: Callable[[int], Any],
    cache: TableCache,
    echo: Any,
) -> SensitivityTable:
    """The sensitivity table of ``layers`` for ``budget.choices`` (:func:`losslab.quant.budget.fill_table`): each
    layer weighs its weight count; the layers ``plan`` gives another method are the fixed part. Each width is read
    from ``cache`` or measured by ``run_width(bits)``, and said through ``echo``."""
    weights = {n: model.get_submodule(n).weight.numel() for n in layers}
    fixed = sum(model.get_submodule(n).weight.numel() for n, m in plan.items() if m is not None and m is not method)
    return fill_table(
        budget.choices,
        layers,
        weights,
        fixed,
        budget.sensitivity,
        run_width,
        cache,
        lambda b, cached: echo(f"sensitivity at {b} bits: {'cached' if cached else 'measured'} ({cache.path})"),
        need_weights=budget.keeps_weights,
    )


def allocation_table(table: SensitivityTable, alloc: Allocation) -> str:
    """Layer, weights, each width's sensitivity and stored bits, the chosen width."""
    widths = sorted(table.widths)
    headers = ["layer", "weights"]
    for b in widths:
        headers += [f"{b}b sens", f"{b}b bits"]
    rows = []
    for n in table.layers:
        row: list[Any] = [n, table.weights[n]]
        for c in table.choices(n):
            row += [f"{c['sensitivity']:.3e}", c["stored_bits"]]
        rows.append([*row, alloc.chosen[n]])
    return format_table([*headers, "chosen"], rows)


def budget_entry(table: SensitivityTable, alloc: Allocation, stored: int, metrics: Any, **extra: Any) -> dict:
    """The JSON entry of one budget: the plan (budget, solver, stored bits and bits per weight, predicted
    sensitivity, note), the model's ``metrics``, the ``extra`` fields, then the per-layer allocation."""
    return {
        "budget": alloc.budget,
        "solver": alloc.solver,
        "stored_bits_per_weight": stored / alloc.total_weights,
        "stored_bits": stored,
        "quantized_weights": alloc.total_weights,
        "predicted_sensitivity": alloc.predicted_sensitivity,
        "note": alloc.note,
        "search": alloc.search,
        "metrics": metrics,
        **extra,
        "allocation": alloc.rows(table),
    }


def _model_and_point(point: Any) -> tuple[Any, Any]:
    return point.result.model, point


def _stored_bits(result: Any) -> int:
    from losslab.quant.result import storage_bits_total

    return sum(storage_bits_total(wq) for wqs in result.weights.values() for wq in wqs)


def solve_plans(
    table: SensitivityTable,
    groups: list[list[str]],
    budget: BudgetOptions,
    quantize: Callable[[Allocation], tuple[Any, Any]],
    scorer: Any,
    seed: int,
) -> list[tuple[Allocation, Any]]:
    """``(plan, payload)`` per budget: the knapsack plan (payload None), or with ``budget.refine`` > 1 the best of
    :func:`losslab.quant.budget.search.refine`'s plans by the calibration loss of ``scorer``, scored on the model
    ``quantize(plan)`` returns as ``(model, payload)`` (``quantized``) or stitched from the table's runs; the
    quantized payload is kept so the chosen plan is not quantized twice. Shared by ``quantize`` and ``lm quantize``."""
    if budget.refine <= 1:
        return [(allocate(table, b, budget.solver, groups), None) for b in budget.budgets]
    quantized = budget.refine_score == "quantized"
    evaluate = quantized_loss(quantize, scorer) if quantized else stitched_loss(table, scorer)
    found = [
        refine(table, b, evaluate, budget.refine, budget.solver, groups, budget.refine_noise, seed)
        for b in budget.budgets
    ]
    return [(r.allocation, r.payload) for r in found]


def budget_points(
    run: Any, method: QuantMethod, budget: BudgetOptions, opts: QuantizeOptions, calib: Any, echo: Any = print
) -> tuple[SensitivityTable, list[list[str]], Iterator[tuple[Allocation, Any, int]]]:
    """The run's sensitivity table, its knapsack items and, lazily, per budget ``(plan, quantized and evaluated
    point, stored bits)``. Every plan is solved (and, with ``budget.refine`` > 1, refined by the calibration loss
    of whole plans, :func:`losslab.quant.budget.search.refine`, scored by ``budget.refine_score``; the plan's
    ``search`` says how) before the first point is quantized (an impossible budget fails first); the stored bits
    of each result are recounted and must equal the plan's."""
    from losslab.quant.budget.probes import calibration_loss

    selection = _selection_batches(run, budget, opts)
    table, groups, probe = sensitivity_table(run, method, budget, opts, calib, echo)
    scorer = probe if selection is None else replace(probe, batches=selection, _cache={})

    def quantize(alloc: Allocation) -> Any:
        (point,) = quantize_points(run, [method], calib, opts, {**alloc.overrides(method), **opts.overrides})
        return point

    plans = solve_plans(table, groups, budget, lambda alloc: _model_and_point(quantize(alloc)), scorer, opts.calib_seed)

    def points() -> Iterator[tuple[Allocation, Any, int]]:
        for alloc, point in plans:
            point = point or quantize(alloc)
            stored = _stored_bits(point.result)
            if stored != alloc.stored_bits:
                raise LosslabError(f"the plan stores {stored} bits, not the planned {alloc.stored_bits}: report this")
            if alloc.search is not None:
                alloc.search["score"] = budget.refine_score
                alloc.search["realised_calib_loss"] = calibration_loss(
                    point.result.model.eval(), scorer.batches, scorer.loss_fn
                )
            yield alloc, point, stored

    return table, groups, points()


def quantize_run_budget(
    checkpoint: Path, method: QuantMethod, budget: BudgetOptions, opts: QuantizeOptions, echo: Any = print
) -> dict[str, Any]:
    """Quantize ``checkpoint`` at every budget; returns ``{"text", "json", "figure", "results"}`` (see module doc)."""
    from losslab.compress.trained_run import CalibrationSettings
    from losslab.io import write_json_atomic

    check_budget_request(method, budget)
    run = load_run(checkpoint, opts)
    stem = f"budget-{method.name}-{budget.sensitivity}"
    out = opts.out or run.run_dir / "quantize" / f"{stem}.json"
    figure = budget.figure or out.with_suffix(".png")
    check_output(out, overwrite=opts.overwrite, what="results JSON", flag="--json")
    check_output(figure, overwrite=opts.overwrite, what="Pareto figure", flag="--figure")
    names = [f"{run.run_dir.name}.{method.name}.budget{b}.safetensors" for b in budget.budgets]
    check_packed_names(opts.save_packed, names, opts.overwrite)
    calib = run.calibration_loader(CalibrationSettings(opts.calib_samples, opts.calib_batch_size, opts.calib_seed))
    table, groups, points = budget_points(run, method, budget, opts, calib, echo)
    texts, entries = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for (alloc, point, stored), name in zip(points, names):
            size, packed_ok = pack_and_check(point.result, (opts.save_packed or Path(tmp)) / name, run)
            entries.append(
                budget_entry(table, alloc, stored, point.metrics, packed_bytes=size, packed_matches_fake=packed_ok)
            )
            texts.append(_budget_text(table, alloc, entries[-1], run.float_metrics, budget.sensitivity))
    uniform = _uniform_rows(table)
    shown = [[b, f"{s:.4f}", f"{acc:.2f}", f"{t:.4e}"] for b, s, acc, t in uniform]
    texts.append(format_table(["uniform bits", "stored bits/weight", "top-1", f"{budget.sensitivity} total"], shown))
    title = f"{run.run_dir.name}: budgeted widths ({budget.sensitivity}, {budget.solver}) vs uniform widths"
    _figure(entries, uniform, run.float_metrics["top1"], figure, method_label(method), title)
    write_json_atomic(
        out,
        {
            "checkpoint": str(run.checkpoint),
            "method": method.describe(),
            "sensitivity": budget.sensitivity,
            "solver": budget.solver,
            "bits_choices": sorted(table.widths),
            "ties": [g for g in groups if len(g) > 1],
            "float": run.float_metrics,
            "uniform": [dict(zip(("bits", "stored_bits_per_weight", "top1", "total_sensitivity"), r)) for r in uniform],
            "results": entries,
        },
    )
    return {"text": "\n\n".join(texts), "json": str(out), "figure": str(figure), "results": entries}


def _budget_text(table: SensitivityTable, alloc: Allocation, entry: dict, float_metrics: dict, metric: str) -> str:
    acc = entry["metrics"]["top1"]
    lines = [
        allocation_table(table, alloc),
        f"budget {alloc.budget} ({alloc.solver}): {entry['stored_bits_per_weight']:.4f} stored bits/weight "
        f"(<= {alloc.budget}; {entry['stored_bits']} bits over {alloc.total_weights} weights, scales and zero "
        f"points included), predicted {metric} sensitivity {alloc.predicted_sensitivity:.4e}, top-1 {acc:.2f} % "
        f"(float {float_metrics['top1']:.2f}, drop {float_metrics['top1'] - acc:.2f}), packed "
        f"{entry['packed_bytes'] / 1024:.1f} KiB",
    ]
    if alloc.search and alloc.search["evaluations"] > 1:
        lines.append(
            f"refined over {alloc.search['evaluations']} plans: {alloc.search['score']} calibration loss "
            f"{alloc.search['calib_loss']:.4f} (knapsack plan {alloc.search['knapsack_calib_loss']:.4f}), quantized "
            f"with the plan {alloc.search['realised_calib_loss']:.4f}"
        )
    if alloc.note:
        lines.append(f"note: {alloc.note}")
    return "\n".join(lines)


def _uniform_rows(table: SensitivityTable) -> list[list[Any]]:
    return [
        [
            b,
            round(run.stored_bits_per_weight, 4),
            run.metrics.get("top1"),
            sum(r.sensitivity for r in run.rows.values()),
        ]
        for b, run in sorted(table.widths.items())
    ]


def _figure(
    entries: list[dict], uniform: list[list[Any]], float_top1: float, path: Path, name: str, title: str
) -> None:
    from losslab.compress.pareto import pareto_figure

    curve = [(e["stored_bits_per_weight"], e["metrics"]["top1"]) for e in entries]
    points = [(r[1], r[2], f"{r[0]}-bit") for r in uniform]
    pareto_figure({name: curve}, {name: points}, {name: float_top1}, path, title=title)
