"""``losslab gan train`` and ``losslab gan sweep``: GAN training with the logistic or rooted loss (docs/gan.md).

    losslab gan train --data ring --loss root --k 2 --epochs 30
    losslab gan train --data digits --img-size 32 --loss root --k 2 --r1-gamma 0.1 --epochs 50
    losslab gan train --resume gan_runs/ring_rooted_k2_seed0 --epochs 60
    losslab gan sweep --data ring --k 2,4,8 --seeds 0,1,2 --epochs 30 --out-dir gan_sweep

Flags are generated from :class:`losslab.gan.config.GanConfig` and, for the sweep's grid, ``GanSweepOptions``
(pydantic models: loading this module does not import torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from losslab.cli.groups import shared_option
from losslab.cli.options import LosslabCommand, given_options, options_from_model
from losslab.gan.config import GanConfig, GanSweepOptions  # pydantic only: no torch at load time


@click.group("gan")
def gan() -> None:
    """GAN training with the logistic or rooted (RLO) non-saturating loss, and logistic-vs-rooted sweeps."""


@gan.command("train", cls=LosslabCommand)
@options_from_model(GanConfig)
def train(**flags: Any) -> None:
    """Train a GAN (DCGAN for images, MLP pair for ring/grid); run folder with samples, checkpoints, result.json."""
    from losslab.gan.train import resume_config, train_gan

    overrides = given_options(flags)
    cfg = resume_config(overrides.pop("resume"), overrides) if "resume" in overrides else GanConfig.build(overrides)
    result = train_gan(cfg)
    click.echo(f"run {result.run_dir}: {result.epochs} epochs, {result.steps} steps, {result.train_seconds:.1f} s")
    if result.metrics:
        ema = result.ema
        click.echo(
            f"EMA generator (the samples; half-life {ema['half_life_steps']:.0f} steps at the end, initial weights "
            f"{100 * ema['initial_weight_share']:.2g} %): {_metrics_line(result.metrics)}"
        )
        click.echo(f"live generator: {_metrics_line(result.metrics_live)}")
    for note in result.notes:
        click.echo(f"note: {note}")


def _metrics_line(metrics: dict[str, Any]) -> str:
    if "modes_covered" in metrics:
        return (
            f"modes covered {metrics['modes_covered']}/{metrics['num_modes']}, high-quality rate "
            f"{metrics['hq_rate']:.3f}, MMD² {metrics['mmd2']:.4f}"
        )
    parts = [f"{key} {value + 0.0:.4g}" for key, value in metrics.items() if isinstance(value, float)]
    return ", ".join(parts) or "no metrics"


@gan.command("sweep", cls=LosslabCommand)
@options_from_model(GanSweepOptions)
@shared_option("overwrite", "sweep.csv/sweep.png made with other settings", default=False)
@options_from_model(GanConfig, exclude={"loss", "k", "seed", "run_name", "resume", "overwrite"})
def sweep(
    config: str | None,
    k: list[float] | None,
    seeds: list[int] | None,
    no_logistic: bool | None,
    overwrite: bool,
    **flags: Any,
) -> None:
    """Logistic vs rooted k over seeds: runs in OUT_DIR/runs (reused only with equal settings), sweep.csv/.png."""

    from losslab.errors import ConfigError
    from losslab.gan.sweep import IMAGE_PLOT, TOY_PLOT, run_gan_sweep, seeds_label
    from losslab.io import load_yaml_file
    from losslab.presets import resolve_yaml
    from losslab.runs.sweep import aggregate
    from losslab.tables import format_table

    stored: dict[str, Any] = {}
    if config is not None:
        stored = load_yaml_file(resolve_yaml(config, "configs"), "--config") or {}
        if not isinstance(stored, dict):
            raise ConfigError(f"--config {config!r} holds a {type(stored).__name__}; it must be a mapping of keys")
    grid = stored.pop("sweep", {}) or {}
    unknown = sorted(set(grid) - {"k", "seeds"})
    if unknown:
        raise ConfigError(f"sweep keys {unknown} are unknown in {config!r}: use k and seeds")
    typed = {"k": k, "seeds": seeds, "no_logistic": no_logistic}  # an empty list keeps the file's (or default) grid
    opts = GanSweepOptions.build({**grid, **{key: v for key, v in typed.items() if v}})
    overrides = {**stored, **given_options(flags)}
    out_dir = Path(overrides.pop("out_dir", "gan_sweep"))
    base = GanConfig.build(overrides)
    rows = run_gan_sweep(base, opts.k, opts.seeds, out_dir, include_logistic=not opts.no_logistic, overwrite=overwrite)
    panels = TOY_PLOT if base.is_toy else IMAGE_PLOT
    groups = aggregate(rows, ("loss", "k"), [metric for metric, _ in panels])
    table = [[loss, "-" if k is None else f"{k:g}", *map(_fmt, stats.values())] for (loss, k), stats in groups]
    click.echo(format_table(["loss", "k", *(label for _, label in panels)], table))
    click.echo(
        f"\n{len(rows)} runs, {seeds_label(len(set(opts.seeds)))} ({','.join(map(str, opts.seeds))}); "
        f"rows: {out_dir / 'sweep.csv'}; "
        f"plot: {out_dir / 'sweep.png'}"
    )


def _fmt(stat: tuple[float, float, int] | None) -> str:
    """``mean ± std`` (just the mean for one seed; + 0.0 turns -0.0 into 0)."""
    if stat is None:
        return "-"
    return f"{stat[0] + 0.0:.3g}" if stat[2] == 1 else f"{stat[0] + 0.0:.3g} ± {stat[1] + 0.0:.2g}"


__all__ = ["gan"]
