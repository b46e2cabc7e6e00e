"""The RLO logistic-regression sweep: loss × k × λ (l2) × data sets × seeds, a CSV row per fit and a plot.

Each grid point is one :func:`~losslab.objectives.fit_logistic_regression` call on the stratified, standardised split
of :func:`~losslab.data.binary_tables.load_split` (the split seed is the point's seed), exactly what
``losslab logreg --dataset D --loss L --k K --l2 λ --seed S`` fits::

    from losslab.objectives.logreg_sweep import plot_sweep, run_sweep, sweep_grid, write_sweep_csv

    points = sweep_grid(["breast_cancer", "wine_binary"], ks=[1, 3, 10], l2s=[0.0, 1e-3], seeds=[0, 1])
    rows = run_sweep(points, solver="lbfgs")          # one dict per point, columns SWEEP_COLUMNS
    write_sweep_csv(rows, "sweep/sweep.csv"); plot_sweep(rows, "sweep/sweep.png")

The plot has one column per λ: iterations to the stopping rule (top) and test accuracy (bottom) vs k on a log axis,
one line per data set (mean ± std over seeds) and the logistic loss (k = ∞) as a dashed reference line in the same
colour.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from losslab.errors import ConfigError
from losslab.io import write_atomic

SWEEP_COLUMNS = (
    "dataset",
    "seed",
    "l2",
    "loss",
    "k",
    "iterations",
    "converged",
    "stop_reason",
    "objective",
    "grad_norm",
    "weight_norm",
    "train_accuracy",
    "test_accuracy",
    "wall_s",
)


@dataclass(frozen=True)
class SweepPoint:
    """One fit of the sweep: ``k`` is None for the logistic loss."""

    dataset: str
    seed: int
    l2: float
    loss: str
    k: float | None


def sweep_grid(
    datasets: Sequence[str],
    ks: Sequence[float],
    l2s: Sequence[float],
    seeds: Sequence[int],
    *,
    include_logistic: bool = True,
) -> list[SweepPoint]:
    """Every (data set, seed, λ, loss, k) point, logistic first per (data set, seed, λ); checked before any fit."""
    from losslab.data.binary_tables import check_dataset_name
    from losslab.objectives.logistic_regression import check_options

    for name, values in (("datasets", datasets), ("k", ks), ("l2", l2s), ("seeds", seeds)):
        if not values and not (name == "k" and include_logistic):
            raise ConfigError(f"the sweep's {name} list is empty; give at least one value")
    for name in datasets:
        check_dataset_name(name)
    losses = [("logistic", None)] if include_logistic else []
    losses += [("rooted", float(k)) for k in dict.fromkeys(ks)]
    for l2 in l2s:
        for loss, k in losses:
            check_options(loss=loss, k=k, l2=l2)
    return [
        SweepPoint(d, int(s), float(l2), loss, k)
        for d in dict.fromkeys(datasets)
        for s in dict.fromkeys(seeds)
        for l2 in dict.fromkeys(l2s)
        for loss, k in losses
    ]


def run_sweep(
    points: Sequence[SweepPoint],
    *,
    test_fraction: float = 0.3,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Fit every point (``options``: solver, lr, max_iter, tol, fit_intercept); one row per point (``SWEEP_COLUMNS``).

    Splits are built once per (data set, seed). ``on_row`` is called after each fit (progress display).
    """
    from losslab.data.binary_tables import load_split
    from losslab.objectives.logistic_regression import check_options, fit_logistic_regression

    settings = {key: options[key] for key in ("solver", "lr", "max_iter", "tol") if key in options}
    for point in points:
        check_options(loss=point.loss, k=point.k, l2=point.l2, **settings)
    splits: dict[tuple[str, int], Any] = {}
    rows = []
    for point in points:
        key = (point.dataset, point.seed)
        if key not in splits:
            splits[key] = load_split(point.dataset, seed=point.seed, test_fraction=test_fraction)
        split = splits[key]
        start = time.perf_counter()
        fit = fit_logistic_regression(split.X_train, split.y_train, loss=point.loss, k=point.k, l2=point.l2, **options)
        wall = time.perf_counter() - start
        row = {
            "dataset": point.dataset,
            "seed": point.seed,
            "l2": point.l2,
            "loss": point.loss,
            "k": fit.options.k,
            "iterations": fit.iterations,
            "converged": fit.converged,
            "stop_reason": fit.stop_reason,
            "objective": fit.objective,
            "grad_norm": fit.grad_norm,
            "weight_norm": float(fit.weights.norm()),
            "train_accuracy": fit.score(split.X_train, split.y_train),
            "test_accuracy": fit.score(split.X_test, split.y_test),
            "wall_s": wall,
        }
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def write_sweep_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The rows as CSV (header ``SWEEP_COLUMNS``; k empty for the logistic loss), written atomically."""

    def write(fh: Any) -> None:
        writer = csv.DictWriter(fh, fieldnames=SWEEP_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row[key] is None else row[key] for key in SWEEP_COLUMNS})

    return write_atomic(path, write)


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def summarize(rows: Sequence[dict[str, Any]], metric: str) -> dict[tuple[str, float, str, float | None], tuple]:
    """(data set, λ, loss, k) → (mean, std, n) of ``metric`` over seeds."""
    groups: dict[tuple[str, float, str, float | None], list[float]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["l2"], row["loss"], row["k"]), []).append(float(row[metric]))
    return {key: (*_mean_std(values), len(values)) for key, values in groups.items()}


def plot_sweep(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Iterations (top) and test accuracy % (bottom) vs k, one column per λ, one colour per data set (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from losslab.report.figures import save_figure

    l2s = sorted({row["l2"] for row in rows})
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(2, len(l2s), figsize=(4.2 * len(l2s), 6.4), squeeze=False, layout="constrained")
    for row_idx, (metric, label, scale) in enumerate(
        (("iterations", "iterations", 1.0), ("test_accuracy", "test accuracy (%)", 100.0))
    ):
        stats = summarize(rows, metric)
        for col, l2 in enumerate(l2s):
            ax = axes[row_idx][col]
            for i, name in enumerate(datasets):
                color = colors[i % len(colors)]
                rooted = sorted((key[3], v) for key, v in stats.items() if key[:3] == (name, l2, "rooted"))
                if rooted:
                    ks = [k for k, _ in rooted]
                    mean = [v[0] * scale for _, v in rooted]
                    std = [v[1] * scale for _, v in rooted]
                    ax.errorbar(ks, mean, yerr=std, color=color, marker="o", ms=3, capsize=2, label=name)
                logistic = stats.get((name, l2, "logistic", None))
                if logistic is not None:
                    ax.axhline(logistic[0] * scale, color=color, ls="--", lw=1, label=f"{name} logistic")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("k (rooted loss)")
            ax.set_ylabel(label)
            ax.set_title(f"λ = {l2:g}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path)
