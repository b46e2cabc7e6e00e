"""``losslab lm quantize --budget B``: per-linear widths of a causal LM under a stored-bits budget.

The same steps as :mod:`losslab.compress.budget`, with the decoder driver (:func:`losslab.lm.quantize.quantize_decoder`)
as the source of the uniform runs: one run per candidate width gives every linear's sensitivity and stored bits
(cached next to the JSON, keyed by model, calibration, method, layer plan and metric); the q/k/v projections of
each decoder block are tied by default; the realised metric is the perplexity on ``eval_windows`` when given::

    report = quantize_lm_budget(LmBudgetJob(model, "facebook/opt-125m", calib, ...), GPTQ(bits=4), budget)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from losslab.compress.budget import (
    BudgetOptions,
    allocation_table,
    budget_entry,
    cached_table,
    check_budget_request,
    solve_plans,
)
from losslab.compress.quantize_run import method_label
from losslab.errors import ConfigError, LosslabError
from losslab.io import check_output, write_json_atomic
from losslab.quant.budget import (
    TableCache,
    default_ties,
    tie_groups,
)
from losslab.quant.methods import QuantMethod
from losslab.quant.result import storage_bits_total
from losslab.tables import format_table

__all__ = ["LmBudgetJob", "quantize_job", "quantize_lm_budget"]


@dataclass
class LmBudgetJob:
    """A loaded float LM, its name (hub id or folder: part of the cache key), calibration windows ``(n, T)``,
    optional test windows for perplexity, the layer plan, where results go and the driver's settings (also what
    one plain ``lm quantize`` point runs, :func:`quantize_job`)."""

    model: nn.Module
    name: str
    calib: Tensor
    out: Path
    eval_windows: Tensor | None = None
    save_packed: Path | None = None
    tokenizer: str | None = None
    overrides: dict[str, QuantMethod] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)
    calib_name: str = ""
    seed: int = 0
    device: str = "cpu"
    true_sequential: bool = False
    micro_batch: int | None = None
    overwrite: bool = False
    progress: bool = False


def _lm_loss(model: nn.Module, batch: Tensor) -> Tensor:
    return model(input_ids=batch, labels=batch, use_cache=False).loss


def _lm_window_loss(model: nn.Module, batch: Tensor) -> Tensor:
    """The per-sample loss of a batch of one window: that window's token-mean loss, shape [1]."""
    return _lm_loss(model, batch).reshape(1)


def _key(job: LmBudgetJob, method: QuantMethod, budget: BudgetOptions) -> dict[str, Any]:
    calib = hashlib.sha256(job.calib.cpu().numpy().tobytes()).hexdigest()
    weights = hashlib.sha256()
    for t in job.model.state_dict().values():
        weights.update(t.detach().float().reshape(-1)[:1024].cpu().numpy().tobytes())
    return {
        "model": job.name,
        "weights_sample_sha256": weights.hexdigest(),
        "calibration": {"name": job.calib_name, "windows_sha256": calib, "seed": job.seed},
        "method": method_label(method),
        "overrides": {p: m.describe() for p, m in job.overrides.items()},
        "skip": list(job.skip),
        "true_sequential": job.true_sequential,
        "sensitivity": budget.sensitivity,
        "eval_windows": None if job.eval_windows is None else list(job.eval_windows.shape),
    }


def quantize_job(
    job: LmBudgetJob,
    method: QuantMethod,
    overrides: dict[str, QuantMethod],
    *,
    metrics: bool = True,
    inplace: bool = False,
) -> Any:
    """:func:`~losslab.lm.quantize.quantize_decoder` of ``job.model`` with ``method`` and ``overrides`` under the
    job's skip list, calibration (windows, name, seed, micro-batch), device and true-sequential setting."""
    from losslab.lm.quantize import quantize_decoder

    return quantize_decoder(
        job.model,
        method,
        job.calib,
        device=job.device,
        skip=job.skip,
        overrides=overrides,
        seed=job.seed,
        metrics=metrics,
        progress=job.progress,
        calib_name=job.calib_name,
        calib_seed=job.seed,
        true_sequential=job.true_sequential,
        micro_batch=job.micro_batch,
        inplace=inplace,
    )


def _ppl(job: LmBudgetJob, model: nn.Module) -> dict[str, float]:
    if job.eval_windows is None:
        return {}
    from losslab.lm.perplexity import perplexity

    return {"ppl": perplexity(model, job.eval_windows, device=job.device).ppl}


def _lm_table(job: LmBudgetJob, method: QuantMethod, budget: BudgetOptions, echo: Any) -> tuple[Any, list, Any]:
    """The LM's sensitivity table (cached next to the JSON), its knapsack items (q/k/v tied per block) and the
    loss probe (None when neither the metric nor ``--refine`` needs one)."""
    from losslab.lm.quantize import plan_decoder
    from losslab.quant.budget.runner import Probe, budgeted_layers, width_run

    plan = plan_decoder(job.model, method, job.overrides, job.skip)
    layers = budgeted_layers(plan, method)
    groups = tie_groups(layers, budget.ties, default_ties(layers))
    probe = None
    if budget.sensitivity != "proxy" or budget.refine > 1:
        windows = list(job.calib.split(1))
        probe = Probe(job.model, windows, _lm_loss, layers, budget.hutchinson_probes, job.seed, _lm_window_loss)

    def run_width(bits: int) -> Any:
        result = quantize_job(job, replace(method, bits=bits), job.overrides)
        return width_run(result, layers, budget.sensitivity, probe, _ppl(job, result.model), budget.keeps_weights)

    cache = TableCache(job.out.parent / "budget-cache", _key(job, method, budget))
    return cached_table(job.model, plan, method, layers, budget, run_width, cache, echo), groups, probe


def _lm_point(
    job: LmBudgetJob, method: QuantMethod, table: Any, alloc: Any, path: Path | None, result: Any = None
) -> dict[str, Any]:
    """Quantize with the plan (unless ``result`` is that model already, from ``--refine-score quantized``), check
    its stored bits, pack (when asked) and score it: the JSON entry."""
    from losslab.lm.packing import save_packed_lm

    result = result or _quantize_plan(job, method, alloc)
    stored = sum(storage_bits_total(wq) for wqs in result.weights.values() for wq in wqs)
    if stored != alloc.stored_bits:
        raise LosslabError(f"the plan stores {stored} bits, not the planned {alloc.stored_bits}: report this")
    return budget_entry(
        table,
        alloc,
        stored,
        _ppl(job, result.model),
        packed_file=None if path is None else str(path),
        packed_bytes=None if path is None else save_packed_lm(result, path, tokenizer=job.tokenizer),
    )


def _quantize_plan(job: LmBudgetJob, method: QuantMethod, alloc: Any) -> Any:
    return quantize_job(job, method, {**alloc.overrides(method), **job.overrides})


def _model_and_result(result: Any) -> tuple[Any, Any]:
    return result.model, result


def _lm_text(table: Any, alloc: Any, entry: dict[str, Any], metric: str) -> str:
    ppl = f", perplexity {entry['metrics']['ppl']:.4f}" if entry["metrics"] else ""
    return (
        f"{allocation_table(table, alloc)}\nbudget {alloc.budget} ({alloc.solver}): "
        f"{entry['stored_bits_per_weight']:.4f} stored bits/weight (<= {alloc.budget}), predicted {metric} "
        f"sensitivity {alloc.predicted_sensitivity:.4e}{ppl}" + (f"\nnote: {alloc.note}" if alloc.note else "")
    )


def quantize_lm_budget(job: LmBudgetJob, method: QuantMethod, budget: BudgetOptions, echo: Any = print) -> dict:
    """Allocate (and with ``budget.refine`` > 1 refine by the calibration loss scored by ``budget.refine_score``)
    and quantize at every budget; returns ``{"text", "json", "results"}``; packed files per budget. Every plan is
    solved before the first budgeted model is quantized (an impossible budget fails first)."""
    check_budget_request(method, budget)
    if budget.select_samples is not None:
        raise ConfigError(
            "--select-samples is for losslab quantize (training images); lm quantize measures the loss and --refine "
            "on its --calib-samples windows: drop --select-samples or raise --calib-samples"
        )
    check_output(job.out, overwrite=job.overwrite, what="results JSON", flag="--json")
    packed = [None if job.save_packed is None else _budget_path(job.save_packed, b) for b in budget.budgets]
    for path in packed:
        check_output(path, overwrite=job.overwrite, what="packed model", flag="--save-packed")
    table, groups, probe = _lm_table(job, method, budget, echo)
    plans = solve_plans(
        table, groups, budget, lambda a: _model_and_result(_quantize_plan(job, method, a)), probe, job.seed
    )
    for alloc, _ in plans:
        if alloc.search is not None:
            alloc.search["score"] = budget.refine_score
    allocations = [a for a, _ in plans]
    entries = [_lm_point(job, method, table, a, path, res) for (a, res), path in zip(plans, packed)]
    texts = [_lm_text(table, a, e, budget.sensitivity) for a, e in zip(allocations, entries)]
    uniform = [
        {"bits": w, "stored_bits_per_weight": run.stored_bits_per_weight, **run.metrics}
        for w, run in sorted(table.widths.items())
    ]
    rows = [[u["bits"], f"{u['stored_bits_per_weight']:.4f}", f"{u.get('ppl', float('nan')):.4f}"] for u in uniform]
    texts.append(format_table(["uniform bits", "stored bits/weight", "perplexity"], rows))
    record = {"model": job.name, "method": method.describe(), "sensitivity": budget.sensitivity}
    record |= {"solver": budget.solver, "ties": [g for g in groups if len(g) > 1], "uniform": uniform}
    write_json_atomic(job.out, json.loads(json.dumps({**record, "results": entries}, default=str)))
    return {"text": "\n\n".join(texts), "json": str(job.out), "results": entries}


def _budget_path(path: Path, budget: float) -> Path:
    return path.with_name(f"{path.stem}.budget{budget}{path.suffix}")
