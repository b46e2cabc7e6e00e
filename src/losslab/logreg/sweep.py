"""The RLO logistic-regression sweep: loss × k × λ (l2) × data sets × seeds, a CSV row per fit and a plot.

Each grid point is one :func:`~losslab.logreg.fit_logistic_regression` call on the stratified, standardised split
of :func:`~losslab.data.binary_tables.load_split` (the split seed is the point's seed), exactly what
``losslab logreg --dataset D --loss L --k K --l2 λ --seed S`` fits::

    from losslab.logreg.sweep import SWEEP_COLUMNS, plot_sweep, run_sweep, sweep_grid
    from losslab.runs.sweep import write_rows_csv

    points = sweep_grid(["breast_cancer", "wine_binary"], ks=[1, 3, 10], l2s=[0.0, 1e-3], seeds=[0, 1])
    rows = run_sweep(points, solver="lbfgs")          # one dict per point, columns SWEEP_COLUMNS
    write_rows_csv(rows, "sweep/sweep.csv", SWEEP_COLUMNS); plot_sweep(rows, "sweep/sweep.png")

The grid, the CSV and the means over seeds are :mod:`losslab.runs.sweep`'s, shared with ``gan sweep``.

``losslab logreg sweep`` runs :func:`run_sweep_folder`: the sweep as an experiment of the shared runtime
(:mod:`losslab.runs`) in ``OUT_DIR/RUN_NAME`` with the one run-folder layout (``config.yaml``, ``history.json`` and
``metrics.csv`` with one row per fit, ``checkpoints/last.ckpt`` holding the rows done so far, then ``sweep.csv``,
``sweep.png`` and ``result.json``). A killed sweep continues with ``--resume`` at the first fit it had not saved.

The plot has one column per λ: iterations to the stopping rule (top) and test accuracy (bottom) vs k on a log axis,
one line per data set (mean ± std over seeds) and the logistic loss (k = ∞) as a dashed reference line in the same
colour.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from losslab.errors import ConfigError, CorruptFileError
from losslab.runs import sweep

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
    from losslab.logreg.model import check_options

    for name, values in (("datasets", datasets), ("k", ks), ("l2", l2s), ("seeds", seeds)):
        if not values and not (name == "k" and include_logistic):
            raise ConfigError(f"the sweep's {name} list is empty; give at least one value")
    for name in datasets:
        check_dataset_name(name)
    losses = sweep.loss_axis(ks, include_logistic, rooted="rooted")
    for l2 in l2s:
        for loss, k in losses:
            check_options(loss=loss, k=k, l2=l2)
    axes = {"dataset": datasets, "seed": [int(s) for s in seeds], "l2": [float(v) for v in l2s], "loss_k": losses}
    return [SweepPoint(c["dataset"], c["seed"], c["l2"], *c["loss_k"]) for c in sweep.grid(axes)]


def check_points(points: Sequence[SweepPoint], options: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` if any point with ``options`` is not allowed (before any fit)."""
    from losslab.logreg.model import check_options

    settings = {key: options[key] for key in ("solver", "lr", "max_iter", "tol") if key in options}
    for point in points:
        check_options(loss=point.loss, k=point.k, l2=point.l2, **settings)


def fit_rows(points: Sequence[SweepPoint], *, test_fraction: float = 0.3, **options: Any) -> Iterator[dict[str, Any]]:
    """Fit the points in order and yield one row per point (``SWEEP_COLUMNS``); splits are built once per
    (data set, seed)."""
    from losslab.data.binary_tables import load_split
    from losslab.logreg.model import fit_logistic_regression

    splits: dict[tuple[str, int], Any] = {}
    for point in points:
        key = (point.dataset, point.seed)
        if key not in splits:
            splits[key] = load_split(point.dataset, seed=point.seed, test_fraction=test_fraction)
        split = splits[key]
        start = time.perf_counter()
        fit = fit_logistic_regression(split.X_train, split.y_train, loss=point.loss, k=point.k, l2=point.l2, **options)
        wall = time.perf_counter() - start
        yield {
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


def run_sweep(
    points: Sequence[SweepPoint],
    *,
    test_fraction: float = 0.3,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Fit every point (``options``: solver, lr, max_iter, tol, fit_intercept); one row per point (``SWEEP_COLUMNS``).

    Every point is checked before the first fit. ``on_row`` is called after each fit (progress display).
    """
    check_points(points, options)
    rows = []
    for row in fit_rows(points, test_fraction=test_fraction, **options):
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def summarize(rows: Sequence[dict[str, Any]], metric: str) -> dict[tuple[str, float, str, float | None], tuple]:
    """(data set, λ, loss, k) → (mean, std, n) of ``metric`` over seeds."""
    return sweep.group_stats(rows, metric, ("dataset", "l2", "loss", "k"))


def plot_sweep(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Iterations (top) and test accuracy % (bottom) vs k, one column per λ, one colour per data set (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from losslab.report.figures import clipped_errors, save_figure

    l2s = sorted({row["l2"] for row in rows})
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(2, len(l2s), figsize=(4.2 * len(l2s), 6.4), squeeze=False, layout="constrained")
    for row_idx, (metric, label, scale, high) in enumerate(
        (("iterations", "iterations", 1.0, math.inf), ("test_accuracy", "test accuracy (%)", 100.0, 100.0))
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
                    yerr = clipped_errors(mean, std, 0.0, high)  # bars stay within the metric's range
                    ax.errorbar(ks, mean, yerr=yerr, color=color, marker="o", ms=3, capsize=2, label=name)
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
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right upper")  # beside the panels, never over the data
    return save_figure(fig, path)


SUMMARY_METRICS = ("iterations", "test_accuracy")


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Iterations and test accuracy (mean ± std over seeds) per (data set, λ, loss, k), as a text table."""
    from losslab.tables import format_table

    table = [
        [
            d,
            f"{l2:g}",
            loss,
            "-" if k is None else f"{k:g}",
            f"{it[0]:.1f} ± {it[1]:.1f}",
            f"{100 * acc[0]:.2f} ± {100 * acc[1]:.2f}",
            it[2],
        ]
        for (d, l2, loss, k), stats in sweep.aggregate(rows, ("dataset", "l2", "loss", "k"), SUMMARY_METRICS)
        for it, acc in [(stats["iterations"], stats["test_accuracy"])]
    ]
    return format_table(["dataset", "l2", "loss", "k", "iterations", "test %", "seeds"], table, align="lrllrrr")


DEFAULT_RUN_NAME = "logreg_sweep"


@dataclass(frozen=True)
class SweepConfig:
    """The sweep's grid and fit options (``config.yaml`` of its run folder; a ``--resume`` must keep all of them)."""

    datasets: tuple[str, ...] = ("breast_cancer", "wine_binary", "iris_binary", "digits_binary")
    k: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 20.0, 50.0)
    l2: tuple[float, ...] = (0.0, 1e-3, 1e-2)
    seeds: tuple[int, ...] = tuple(range(10))
    include_logistic: bool = True
    solver: str = "lbfgs"
    max_iter: int | None = None
    tol: float | None = None
    test_fraction: float = 0.3

    def to_dict(self) -> dict[str, Any]:
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SweepConfig:
        """A config from ``config.yaml`` values (lists become tuples); an unknown key is a :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown logreg sweep setting(s) {unknown}; known: {sorted(known)}")
        return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in values.items()})

    def options(self) -> dict[str, Any]:
        """The fit options of every point (solver, and max_iter / tol when given)."""
        given = {"max_iter": self.max_iter, "tol": self.tol}
        return {"solver": self.solver, **{key: v for key, v in given.items() if v is not None}}

    def points(self) -> list[SweepPoint]:
        """The grid, checked (names, k, λ, options) before any fit."""
        points = sweep_grid(self.datasets, self.k, self.l2, self.seeds, include_logistic=self.include_logistic)
        check_points(points, self.options())
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction={self.test_fraction} must be in (0, 1), e.g. 0.3")
        return points


def stored_config(resume: str | Path, given: Mapping[str, Any]) -> SweepConfig:
    """The config of the run ``--resume`` names (its ``config.yaml``) with the ``given`` settings on top; the run
    folder then refuses a given setting that differs from the stored one."""
    from losslab.runs.folder import CONFIG, resume_run_dir
    from losslab.runs.folder import stored_config as stored_run_config

    stored = stored_run_config(resume) if (resume_run_dir(resume) / CONFIG).is_file() else {}
    return SweepConfig.from_dict({**stored, **given})


@dataclass
class SweepRun:
    """A finished sweep: its run folder and its rows (one per grid point)."""

    run_dir: Path
    rows: list[dict[str, Any]]
    csv_path: Path
    png_path: Path


def _done_rows(path: Path, points: Sequence[SweepPoint]) -> list[dict[str, Any]]:
    """The rows a sweep checkpoint holds, checked against the grid (same points, in order)."""
    from losslab.runs.checkpoint import load

    rows = load(path).get("rows")
    if not isinstance(rows, list) or len(rows) > len(points) or not all(isinstance(r, dict) for r in rows):
        raise CorruptFileError(f"sweep checkpoint {str(path)!r} holds no list of fit rows; start a new run")
    for row, point in zip(rows, points, strict=False):
        if (row.get("dataset"), row.get("seed"), row.get("l2"), row.get("loss")) != (
            point.dataset,
            point.seed,
            point.l2,
            point.loss,
        ):
            raise CorruptFileError(f"sweep checkpoint {str(path)!r} does not match its config.yaml; start a new run")
    return rows


def _group(point: SweepPoint) -> tuple[str, int, float]:
    """The (data set, seed, λ) group of a point: history and checkpoint are written once per group."""
    return point.dataset, point.seed, point.l2


def _show(progress: Any, index: int, total: int, row: dict[str, Any]) -> None:
    """One line per fit on stderr (``lines`` mode), else advance the bar (``bar``)."""
    import sys

    if progress == "lines":
        k = "" if row["k"] is None else f" k={row['k']:g}"
        print(
            f"fit {index + 1}/{total}: {row['dataset']} seed {row['seed']} l2 {row['l2']:g} {row['loss']}{k}: "
            f"{row['iterations']} iterations, test accuracy {100 * row['test_accuracy']:.2f} %",
            file=sys.stderr,
            flush=True,
        )
    elif progress is not None and progress != "off":
        progress.update(1)


def run_sweep_folder(
    cfg: SweepConfig,
    *,
    out_dir: str | Path = "runs",
    run_name: str = DEFAULT_RUN_NAME,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> SweepRun:
    """Run the sweep in its run folder (see the module doc); every check happens before the first fit.

    History and checkpoint are written once per (data set, seed, λ) group of fits, the group's history rows (one
    per fit, ``epoch`` = the fit's index) before the checkpoint that counts them as done, so a kill between the
    two redoes that group on ``--resume`` (a fit is deterministic: its row is the same). Writing per group rather
    than per fit keeps the fsyncs of the three files to one set per group (a fit takes milliseconds).
    """
    from losslab.runs import History, RunSpec, Throughput, claim, progress_mode, save

    points = cfg.points()
    config = cfg.to_dict()
    spec = RunSpec(
        out_dir=Path(out_dir),
        run_name=run_name,
        resume=Path(resume) if resume is not None else None,
        overwrite=overwrite,
        config=config,
        match_keys=tuple(config),
    )
    started = time.perf_counter()
    with claim(spec) as run:
        rows = _done_rows(run.resume_ckpt, points) if run.resume_ckpt is not None else []
        work = run.create()
        run.write_config()
        history = History(work, keep_before=len(rows))
        clock = Throughput(started)
        mode = progress_mode(progress)
        bar: Any = mode
        if mode == "bar":
            from tqdm.auto import tqdm

            bar = tqdm(total=len(points), initial=len(rows), desc="logreg sweep", dynamic_ncols=True)
        try:
            todo = points[len(rows) :]
            clock.step()
            fits = fit_rows(todo, test_fraction=cfg.test_fraction, **cfg.options())
            for index, (point, row) in enumerate(zip(todo, fits, strict=True), len(rows)):
                clock.count(1)
                rows.append(row)
                _show(bar, index, len(points), row)
                if index + 1 == len(points) or _group(points[index + 1]) != _group(point):
                    done = len(history.rows)
                    history.extend({"epoch": i, "step": i + 1, **r} for i, r in enumerate(rows[done:], done))
                    save(run.last_ckpt, {"epoch": index, "rows": rows})  # after the rows: see the docstring
            clock.stop()
        finally:
            if mode == "bar":
                bar.close()
        csv_path = sweep.write_rows_csv(rows, work / "sweep.csv", SWEEP_COLUMNS)
        png_path = plot_sweep(rows, work / "sweep.png")
        run.write_result(
            {"config": config, "fits": len(rows), "csv": csv_path.name, "plot": png_path.name, "speed": clock.record()}
        )
        run.commit()
    final = run.final
    return SweepRun(run_dir=final, rows=rows, csv_path=final / csv_path.name, png_path=final / png_path.name)
