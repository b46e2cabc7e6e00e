"""``losslab gan sweep``: logistic vs rooted k over seeds, one :func:`~losslab.gan.train_gan` run per point.

    from losslab.gan.sweep import run_gan_sweep
    rows = run_gan_sweep(GanConfig(data="ring", epochs=30), ks=[2, 4, 8], seeds=[0, 1, 2], out_dir="gan_sweep")

Each point is a run folder ``out_dir/runs/<data>_<loss>_seed<S>`` (an existing finished run is reused, an unfinished
one resumed, so a killed sweep continues where it stopped). ``sweep.csv`` holds one row per run (loss, k, seed and
the scalar metrics of its result.json); ``sweep.png`` plots the main metrics vs k (mean ± std over seeds) with the
logistic loss as a dashed reference line. (The study runner's jobs are classifier trainings followed by
compression, so GAN comparisons run here instead of as a study.)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from losslab.gan.config import GanConfig
from losslab.io import write_atomic

TOY_PLOT = (("modes_covered", "modes covered"), ("hq_rate", "high-quality rate"), ("mmd2", "MMD²"))
IMAGE_PLOT = (("digits_fd", "digits-FD"), ("precision", "precision (k=3)"), ("recall", "recall (k=3)"))


def sweep_points(
    ks: Sequence[float], seeds: Sequence[int], include_logistic: bool = True
) -> list[tuple[str, float, int]]:
    """(loss, k, seed) for every seed: logistic (k unused) then rooted per k."""
    losses = ([("logistic", 2.0)] if include_logistic else []) + [("rooted", float(k)) for k in dict.fromkeys(ks)]
    return [(loss, k, int(s)) for s in dict.fromkeys(seeds) for loss, k in losses]


def run_gan_sweep(
    base: GanConfig,
    ks: Sequence[float],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    include_logistic: bool = True,
) -> list[dict[str, Any]]:
    """Train every point (reusing finished runs), then write ``sweep.csv`` and ``sweep.png``; returns the rows."""
    from losslab.gan.train import train_gan

    out_dir = Path(out_dir)
    points = sweep_points(ks, seeds, include_logistic)
    configs = [
        GanConfig.build(
            {
                **base.to_dict(),
                "loss": loss,
                "k": k,
                "seed": seed,
                "out_dir": str(out_dir / "runs"),
                "run_name": None,
                "resume": None,
                "overwrite": False,
            }
        )
        for loss, k, seed in points
    ]  # all validated before the first run
    rows = []
    for cfg in configs:
        run_dir = cfg.out_dir / cfg.default_run_name()
        result_file, ckpt = run_dir / "result.json", run_dir / "checkpoints" / "last.ckpt"
        if result_file.is_file() and json.loads(result_file.read_text())["epochs"] >= cfg.epochs:
            result = json.loads(result_file.read_text())
        else:
            resume = {"resume": str(run_dir)} if ckpt.is_file() else {}
            result = train_gan(GanConfig.build({**cfg.to_dict(), **resume})).to_dict()
        scalars = {key: v for key, v in result["metrics"].items() if isinstance(v, (int, float))}
        rows.append(
            {
                "loss": cfg.loss,
                "k": cfg.k if cfg.loss == "rooted" else None,
                "seed": cfg.seed,
                "epochs": result["epochs"],
                "train_seconds": result["train_seconds"],
                **scalars,
            }
        )
    write_sweep_csv(rows, out_dir / "sweep.csv")
    plot_gan_sweep(rows, out_dir / "sweep.png", TOY_PLOT if base.is_toy else IMAGE_PLOT)
    return rows


def write_sweep_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Rows as CSV (columns: the union of the rows' keys, in first-seen order; k empty for logistic)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def write(fh: Any) -> None:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})

    return write_atomic(path, write)


def summarize(rows: Sequence[dict[str, Any]], metric: str) -> dict[tuple[str, float | None], tuple[float, float, int]]:
    """(loss, k) → (mean, std, n) of ``metric`` over seeds (rows lacking it are skipped)."""
    from losslab.logreg.sweep import mean_std

    groups: dict[tuple[str, float | None], list[float]] = {}
    for row in rows:
        if row.get(metric) is not None:
            groups.setdefault((row["loss"], row["k"]), []).append(float(row[metric]))
    return {key: (*mean_std(v), len(v)) for key, v in groups.items()}


def plot_gan_sweep(rows: Sequence[dict[str, Any]], path: Path, panels: Sequence[tuple[str, str]]) -> Path:
    """One panel per metric: rooted mean ± std vs k (log axis), logistic mean dashed with its ±std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from losslab.report.figures import save_figure

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, layout="constrained")
    for ax, (metric, label) in zip(axes[0], panels):
        stats = summarize(rows, metric)
        rooted = sorted((k, v) for (loss, k), v in stats.items() if loss == "rooted")
        if rooted:
            ax.errorbar(
                [k for k, _ in rooted],
                [v[0] for _, v in rooted],
                yerr=[v[1] for _, v in rooted],
                marker="o",
                capsize=3,
                label="rooted",
            )
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if ("logistic", None) in stats:
            mean, std, _ = stats[("logistic", None)]
            ax.axhline(mean, color="k", ls="--", lw=1, label="logistic")
            ax.axhspan(mean - std, mean + std, color="k", alpha=0.08)
        ax.set_xlabel("k (rooted loss)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, path)
