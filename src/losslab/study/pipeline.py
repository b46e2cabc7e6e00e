"""The real study job: train one point, then quantize and evaluate it at every missing compression point.

::

    from losslab.study.pipeline import train_and_compress
    result = train_and_compress(job)      # a JobResult; run_study uses this job function by default

Steps: ``losslab.train.fit`` into ``job.run_dir`` (skipped when the store already holds the run, or when a
killed earlier attempt finished training: its ``result.json`` is reused); the best checkpoint is loaded and
evaluated on the test split (the float reference of every drop, same pipeline as the compressed models); each
compression group (one method and option set, all its bit widths) is quantized with
:func:`losslab.quant.quantize_many` from one calibration cache; every compressed model is evaluated on the test
split. Weight histograms of every Conv2d/Linear layer are kept for the float and each compressed model. With a
``landscape:`` section the model is then probed once (:mod:`losslab.study.landscape_stage`). Loading,
calibration (with the run's img_size/data settings), evaluation and quantization go through
:class:`losslab.compress.trained_run.TrainedRun`, the service that ``losslab quantize`` uses too.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from losslab.errors import LosslabError
from losslab.study.job import (
    CompressionRecord,
    JobResult,
    StudyJob,
    TrainRecord,
    WeightHistogram,
    compression_setting,
    provenance,
)
from losslab.study.spec import CompressSection


def weight_histogram(
    layer: str, weight: torch.Tensor, bins: int, reference: torch.Tensor | None = None
) -> WeightHistogram:
    """Histogram of ``weight`` over ``bins`` equal bins spanning its range (and ``reference``'s, if given).

    ``stats``: mean, std, min, max, absmax, excess kurtosis E[(w−μ)⁴]/σ⁴ − 3, and the number of distinct values.
    """
    w = weight.detach().double().flatten().cpu()
    span = w if reference is None else torch.cat([w, reference.detach().double().flatten().cpu()])
    low, high = float(span.min()), float(span.max())
    if high <= low:
        low, high = low - 0.5, high + 0.5
    counts = torch.histc(w, bins=bins, min=low, max=high)
    edges = torch.linspace(low, high, bins + 1)
    mean, std = float(w.mean()), float(w.std(unbiased=False))
    kurt = float(((w - mean) ** 4).mean() / std**4 - 3) if std > 0 else 0.0
    stats = {
        "mean": mean,
        "std": std,
        "min": float(w.min()),
        "max": float(w.max()),
        "absmax": float(w.abs().max()),
        "kurtosis": kurt,
        "distinct": float(torch.unique(w).numel()),
    }
    return WeightHistogram(layer, edges.tolist(), [int(c) for c in counts.tolist()], stats)


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def _device(cfg: Any) -> torch.device:
    wants_gpu = cfg.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def _train(job: StudyJob) -> tuple[float, float | None, int | None, list[dict[str, Any]]]:
    """Train (or reuse a finished earlier attempt); (train seconds, best val acc, params, epoch rows)."""
    from losslab.train import TrainConfig, fit

    run_dir = Path(job.run_dir)
    finished = run_dir / "result.json"
    if finished.is_file() and (run_dir / "history.json").is_file():
        done = _read_finished(finished, ("wall_time_s", "best_val_acc", "num_params"))
        epochs = _read_finished(run_dir / "history.json")
        return done["wall_time_s"], done["best_val_acc"], done["num_params"], epochs
    cfg = TrainConfig.build(
        {**job.config, "out_dir": str(run_dir.parent), "run_name": run_dir.name, "overwrite": True, "progress": False}
    )
    result = fit(cfg)
    return result.wall_time_s, result.best_val_acc, result.num_params, result.epochs


def _read_finished(path: Path, keys: tuple[str, ...] = ()) -> Any:
    """A finished run's JSON file; a corrupt one is an error that names it and says what to do."""
    try:
        data = json.loads(path.read_text())
        missing = [k for k in keys if k not in data]
    except (OSError, ValueError, TypeError) as exc:
        missing, data = [f"readable JSON ({exc})"], None
    if missing:
        raise LosslabError(
            f"{str(path)!r} is corrupt (missing {', '.join(missing)}); delete the run folder "
            f"{str(path.parent)!r} so that the next `losslab study run` trains it again"
        )
    return data


def _record(
    key: str,
    point: Any,
    setting: dict[str, Any],
    done: Any,
    summary: dict[str, Any],
    hists: list[WeightHistogram] | None = None,
) -> CompressionRecord:
    """The record of one compressed model ``done`` (a quantized point with its metrics and timings)."""
    result = done.result
    layers = [asdict(r) for r in result.layers]
    return CompressionRecord(
        key, point, setting, done.metrics, summary, layers, result.seconds, done.eval_seconds, hists or []
    )


def train_and_compress(job: StudyJob) -> JobResult:
    """The default study job (see the module docstring)."""
    from losslab.compress.trained_run import CalibrationSettings, TrainedRun
    from losslab.train import TrainConfig

    section: CompressSection = job.compress_section()
    cfg = TrainConfig.build(job.config)
    train = _train(job) if job.needs_training else None
    run = TrainedRun.load(job.run_dir, device=_device(cfg), eval_batch_size=section.eval_batch_size)
    model = run.model
    float_metrics = run.float_metrics
    float_eval_s = run.float_eval_seconds
    bins = section.histogram_bins
    float_weights = {name: m.weight for name, m in _weight_layers(model)}
    record = None
    if train is not None:
        hists = [weight_histogram(name, w, bins) for name, w in float_weights.items()]
        record = TrainRecord(
            job.config, job.run_dir, float_metrics, train[1], train[2], train[0], float_eval_s, train[3], hists
        )
    c = section.calibration
    calib = run.calibration_loader(CalibrationSettings(c.samples, c.batch_size, c.seed))
    setting = compression_setting(section)
    records = []
    groups: dict[tuple[str, tuple[tuple[str, Any], ...]], list[tuple[str, Any]]] = {}
    budgeted = [(key, point) for key, point in job.points if "budget" in point.options_dict()]
    for key, point in job.points:
        if (key, point) not in budgeted:
            groups.setdefault((point.method, point.options), []).append((key, point))
    for members in groups.values():
        points = run.quantize(
            [[p.build() for _, p in members]],
            calib,
            skip=section.skip or None,
            fold_bn=section.fold_bn,
            seed=c.seed,
            calib_seed=c.seed,
            calib_name=f"{run.cfg.dataset}/train",
        )
        for (key, point), done in zip(members, points):
            result = done.result
            qlayers = {r.name for r in result.layers if r.quantized}
            hists = [
                weight_histogram(name, m.weight, bins, reference=float_weights[name])
                for name, m in _weight_layers(result.model)
                if name in qlayers
            ]
            records.append(_record(key, point, setting, done, result.summary(), hists))
    records += budget_records(run, calib, budgeted, section, setting)
    if job.landscape is not None:  # the landscape stage: stored in the run folder, reused when done
        from losslab.study.landscape_stage import probe_trained_model

        probe_trained_model(job.run_dir, job.landscape, device=str(run.device))
    return JobResult(job.train_key, record, records, provenance())


def budget_records(
    run: Any, calib: Any, members: list[tuple[str, Any]], section: CompressSection, setting: dict[str, Any]
) -> list[CompressionRecord]:
    """The budgeted points of one trained model (:mod:`losslab.compress.budget`): one sensitivity table per
    method and option set (cached in the run folder), one knapsack plan and quantized model per budget. The
    record's summary adds ``budget``, ``predicted_sensitivity`` and ``allocation`` (layer → width)."""
    from losslab.compress.budget import BudgetOptions, budget_points
    from losslab.compress.quantize_run import QuantizeOptions

    c = section.calibration
    opts = QuantizeOptions(c.samples, c.batch_size, c.seed, skip=list(section.skip), fold_bn=section.fold_bn)
    by_table: dict[tuple[Any, ...], list[tuple[str, Any]]] = {}
    for key, point in members:
        shared = tuple((k, v) for k, v in point.options if k != "budget")
        by_table.setdefault((point.method, shared), []).append((key, point))
    records = []
    for members_of_table in by_table.values():
        first = members_of_table[0][1].options_dict()
        budget = BudgetOptions(
            [p.options_dict()["budget"] for _, p in members_of_table],
            list(first["bits_choices"]),
            first["sensitivity"],
            first["solver"],
        )
        _, _, points = budget_points(run, members_of_table[0][1].build(), budget, opts, calib, echo=lambda *_: None)
        for (key, point), (alloc, done, stored) in zip(members_of_table, points):
            summary = {**done.result.summary(), "budget": alloc.budget, "stored_bits": stored}
            summary |= {"predicted_sensitivity": alloc.predicted_sensitivity, "allocation": alloc.chosen}
            records.append(_record(key, point, setting, done, summary))
    return records
