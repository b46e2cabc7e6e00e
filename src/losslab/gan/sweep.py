"""``losslab gan sweep``: logistic vs rooted k over seeds, one :func:`~losslab.gan.train_gan` run per point.

    from losslab.gan.sweep import run_gan_sweep
    rows = run_gan_sweep(GanConfig(data="ring", epochs=30), ks=[2, 4, 8], seeds=[0, 1, 2], out_dir="gan_sweep")

Each point is a run folder ``out_dir/runs/<data>_<loss>_seed<S>-<id>``, where ``<id>`` (:func:`run_identity`) is a
digest of every setting that changes the result (the config without the run-placement keys), as studies name their
points. A finished run is reused only when its stored config equals the asked one, an unfinished one is resumed, so
a killed sweep continues where it stopped and a sweep with other settings trains its own runs. ``sweep.csv`` holds
one row per run (loss, k, seed and the scalar metrics of its result.json); ``sweep.png`` plots the main metrics vs k
(mean ± std over seeds, error bars clipped to each metric's range) with the logistic loss as a dashed reference
line; ``sweep.json`` records the settings they were made with, and a sweep with other settings refuses to replace
them unless ``overwrite``. (The study runner's jobs are classifier trainings followed by compression, so GAN
comparisons run here instead of as a study.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from losslab.errors import ConfigError
from losslab.gan.config import GanConfig
from losslab.io import write_json_atomic
from losslab.runs import sweep

TOY_PLOT = (("modes_covered", "modes covered"), ("hq_rate", "high-quality rate"), ("mmd2", "MMD²"))
IMAGE_PLOT = (("digits_fd", "digits-FD"), ("precision", "precision (k=3)"), ("recall", "recall (k=3)"))
#: Each plotted metric's range (None: unbounded); error bars and bands are clipped to it. modes_covered's upper
#: bound is the number of modes, taken from the rows.
METRIC_RANGE: dict[str, tuple[float | None, float | None]] = {
    "modes_covered": (0.0, None),
    "hq_rate": (0.0, 1.0),
    "precision": (0.0, 1.0),
    "recall": (0.0, 1.0),
    "digits_fd": (0.0, None),
    "mmd2": (0.0, None),  # MMD² ≥ 0 (its unbiased estimate can dip slightly below; bars stop at 0)
}
INTEGER_METRICS = frozenset({"modes_covered"})
#: Config keys that place or show a run without changing its result: left out of its identity.
PLACEMENT_KEYS = frozenset({"out_dir", "run_name", "resume", "overwrite", "progress", "data_dir", "download"})
SWEEP_VARIED = frozenset({"loss", "k", "seed"})


def run_identity(config: dict[str, Any], leave_out: frozenset[str] = frozenset()) -> str:
    """The identity (:func:`losslab.runs.sweep.identity`) of the config's result-changing keys."""
    return sweep.identity(config, PLACEMENT_KEYS | leave_out)


def sweep_run_name(cfg: GanConfig) -> str:
    """``<data>_<loss>_seed<S>-<first 8 digits of the identity>``: one folder per distinct setting."""
    return f"{cfg.default_run_name()}-{run_identity(cfg.to_dict())[:8]}"


def sweep_points(
    ks: Sequence[float], seeds: Sequence[int], include_logistic: bool = True
) -> list[tuple[str, float, int]]:
    """(loss, k, seed) for every seed: logistic (k unused: the config's 2) then rooted per k."""
    cells = sweep.grid({"seed": [int(s) for s in seeds], "loss_k": sweep.loss_axis(ks, include_logistic)})
    return [(c["loss_k"][0], 2.0 if c["loss_k"][1] is None else c["loss_k"][1], c["seed"]) for c in cells]


def _stored_identity(raw: dict[str, Any]) -> str | None:
    """The identity of a stored config, normalised through :class:`GanConfig`; None when it is not one."""
    try:
        return run_identity(GanConfig.build(raw).to_dict())
    except ConfigError:
        return None


def _run_point(cfg: GanConfig) -> dict[str, Any]:
    """The result of ``cfg``'s run: reused when finished with the same config, resumed when unfinished, else trained
    (:func:`losslab.runs.sweep.cell_state`; a folder of that name holding another config is refused)."""
    from losslab.gan.train import train_gan

    run_dir = cfg.out_dir / sweep_run_name(cfg)
    state = sweep.cell_state(run_dir, run_identity(cfg.to_dict()), _stored_identity)
    if state == "done":
        return json.loads((run_dir / "result.json").read_text())
    if state == "unfinished":
        return train_gan(GanConfig.build({**cfg.to_dict(), "resume": str(run_dir)})).to_dict()
    return train_gan(GanConfig.build({**cfg.to_dict(), "run_name": run_dir.name})).to_dict()


def sweep_settings(base: GanConfig, ks: Sequence[float], seeds: Sequence[int], include_logistic: bool) -> dict:
    """What ``sweep.json`` records: the shared settings' identity and values, and the grid."""
    config = {key: v for key, v in base.to_dict().items() if key not in PLACEMENT_KEYS | SWEEP_VARIED}
    return {
        "settings_id": run_identity(base.to_dict(), SWEEP_VARIED),
        "settings": config,
        "k": [float(k) for k in ks],
        "seeds": [int(s) for s in seeds],
        "logistic": include_logistic,
    }


def check_sweep_outputs(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse (ConfigError) to replace sweep.csv/sweep.png that no GAN sweep made (no readable ``sweep.json``
    beside them: never), or that one made with other shared settings (unless ``overwrite``); a sweep over other k
    or seeds with the same settings rewrites them."""
    existing = [name for name in ("sweep.csv", "sweep.png", "sweep.json") if (out_dir / name).exists()]
    if not existing:
        return
    try:
        stored = json.loads((out_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict) or not isinstance(stored.get("settings"), dict):
        raise ConfigError(
            f"{str(out_dir)!r} holds {' and '.join(existing)} that `losslab gan sweep` did not make (no readable "
            "sweep.json); move them away or use another --out-dir"
        )
    if stored.get("settings_id") != settings["settings_id"] and not overwrite:
        old = stored["settings"]
        changed = sorted(k for k in settings["settings"] if old.get(k) != settings["settings"][k])
        raise ConfigError(
            f"{str(out_dir)!r} holds {' and '.join(existing)} made with other settings ({', '.join(changed)} "
            "differ); use another --out-dir, or pass --overwrite to replace them (the runs under runs/ are kept)"
        )


def run_gan_sweep(
    base: GanConfig,
    ks: Sequence[float],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    include_logistic: bool = True,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Train every point (reusing finished runs of the same config), then write ``sweep.csv``, ``sweep.png`` and
    ``sweep.json``; returns the rows. Everything is validated before the first run."""
    out_dir = Path(out_dir)
    settings = sweep_settings(base, ks, seeds, include_logistic)
    check_sweep_outputs(out_dir, settings, overwrite)
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
    ]
    rows = []
    for cfg in configs:
        result = _run_point(cfg)
        scalars = {key: v for key, v in result["metrics"].items() if isinstance(v, (int, float))}
        rows.append(
            {
                "loss": cfg.loss,
                "k": cfg.k if cfg.loss == "root" else None,
                "seed": cfg.seed,
                "epochs": result["epochs"],
                "train_seconds": result["train_seconds"],
                "run": sweep_run_name(cfg),
                **scalars,
            }
        )
    sweep.write_rows_csv(rows, out_dir / "sweep.csv")
    plot_gan_sweep(rows, out_dir / "sweep.png", TOY_PLOT if base.is_toy else IMAGE_PLOT)
    write_json_atomic(out_dir / "sweep.json", settings)
    return rows


def summarize(rows: Sequence[dict[str, Any]], metric: str) -> dict[tuple[str, float | None], tuple[float, float, int]]:
    """(loss, k) → (mean, std, n) of ``metric`` over seeds (rows lacking it are skipped)."""
    return sweep.group_stats(rows, metric, ("loss", "k"))  # type: ignore[return-value]


def metric_range(rows: Sequence[dict[str, Any]], metric: str) -> tuple[float, float]:
    """(low, high) a metric can take (±inf when unbounded); modes_covered's high is the rows' num_modes."""
    low, high = METRIC_RANGE.get(metric, (None, None))
    if metric == "modes_covered":
        high = max((float(row["num_modes"]) for row in rows if row.get("num_modes") is not None), default=None)
    return (-math.inf if low is None else low, math.inf if high is None else high)


def seeds_label(n: int) -> str:
    """``1 seed`` / ``3 seeds``."""
    return f"{n} seed" if n == 1 else f"{n} seeds"


def sweep_figure(rows: Sequence[dict[str, Any]], panels: Sequence[tuple[str, str]]) -> Any:
    """One panel per metric: rooted mean ± std vs k (log axis, a tick per k), logistic mean dashed with its ±std
    band; error bars and bands within the metric's range, integer ticks for counts. Returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

    from losslab.report.figures import clipped_errors

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, layout="constrained")
    n_seeds = len({row["seed"] for row in rows})
    for ax, (metric, label) in zip(axes[0], panels):
        stats = summarize(rows, metric)
        low, high = metric_range(rows, metric)
        rooted = sorted((k, v) for (loss, k), v in stats.items() if loss == "root")
        if rooted:
            ks, means, stds = [k for k, _ in rooted], [v[0] for _, v in rooted], [v[1] for _, v in rooted]
            ax.errorbar(ks, means, yerr=clipped_errors(means, stds, low, high), marker="o", capsize=3, label="root")
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(ks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{k:g}" for k in ks])
        if ("logistic", None) in stats:
            mean, std, _ = stats[("logistic", None)]
            ax.axhline(mean, color="k", ls="--", lw=1, label="logistic")
            ax.axhspan(max(mean - std, low), min(mean + std, high), color="k", alpha=0.08)
        bottom, top = ax.get_ylim()
        if metric in INTEGER_METRICS:  # whole-number ticks need a span of at least one unit
            bottom, top = math.floor(bottom) - 0.5, max(math.ceil(top), math.floor(bottom) + 1) + 0.5
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(max(bottom, low - 0.05 * (top - bottom)), min(top, high + 0.05 * (top - bottom)))
        ax.set_xlabel("k (rooted loss)")
        ax.set_title(f"{label} (mean ± std, {seeds_label(n_seeds)})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return fig


def plot_gan_sweep(rows: Sequence[dict[str, Any]], path: Path, panels: Sequence[tuple[str, str]]) -> Path:
    """:func:`sweep_figure` saved as a PNG at ``path``."""
    from losslab.report.figures import save_figure

    return save_figure(sweep_figure(rows, panels), path)
