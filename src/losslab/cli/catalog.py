"""``losslab models | objectives | regularizers | datasets``: what is available."""

from __future__ import annotations

import click


@click.command("models")
@click.argument("pattern", required=False)
def list_models_cmd(pattern: str | None) -> None:
    """List model names (losslab's first, then timm's), optionally filtered by a wildcard PATTERN."""
    from losslab.models import list_models

    for name in list_models(pattern):
        click.echo(name)


@click.command("objectives")
def list_objectives_cmd() -> None:
    """List training objectives."""
    from losslab.objectives import list_objectives

    click.echo("\n".join(list_objectives()))


@click.command("regularizers")
def list_regularizers_cmd() -> None:
    """List regularizers."""
    from losslab.regularizers import list_regularizers

    click.echo("\n".join(list_regularizers()))


@click.command("datasets")
def list_datasets_cmd() -> None:
    """List dataset names and their shapes."""
    from losslab.data import DATASETS, dataset_info

    for name in DATASETS:
        spec = dataset_info(name)
        click.echo(f"{name:14s} {spec.num_classes:5d} classes  {spec.in_chans}x{spec.img_size}x{spec.img_size}")
