"""``losslab models | objectives | regularizers | datasets``: what is available, one line each."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import click

from losslab.errors import ConfigError

# One-line descriptions for the listings; a name missing here shows its factory's docstring summary instead.
OBJECTIVE_HELP = {
    "ce": "cross entropy (--label-smoothing)",
    "focal": "focal loss (1-p)^gamma * CE (--focal-gamma, --focal-alpha)",
    "focal_rlo_paper": "the focal loss of the RLO training script (alpha 0.25, gamma 3)",
    "root": "rooted logistic loss, RLO (--k, --m)",
    "root_convex": "convex variant of the rooted loss (--k, --m)",
    "sgt": "cross entropy with softmax gradient tampering (--sgt-alpha)",
}
REGULARIZER_HELP = {
    "frobenius_decay": "(lambda/2) ||U V^T||_F^2 on factorized layers (--frobenius-decay)",
    "inverse_std": "lambda * sqrt(mean 1/Var(W_l)): spreads weights (RegulQuant)",
    "inverse_variance": "lambda * mean 1/Var(W_l): spreads weights (RegulQuant)",
    "l1grad": "lambda * L1 norm of the loss gradient w.r.t. weights and activations (RegulQuant)",
    "l2grad": "lambda * L2 norm of the loss gradient w.r.t. weights and activations (RegulQuant)",
    "lp_grad": "lambda * Lp norm of the loss gradient (--p), by double backprop",
    "std": "lambda * sqrt(sum Var(W_l)): shrinks the weight spread (RegulQuant)",
    "variance": "lambda * sum Var(W_l): shrinks the weight spread (RegulQuant)",
}


def _summary(factory: Callable[..., object]) -> str:
    """The first line of ``factory``'s docstring without reST markup."""
    first = (factory.__doc__ or "").strip().splitlines()[0:1]
    return re.sub(r":\w+:`([^`]*)`|``([^`]*)``", lambda m: m.group(1) or m.group(2), first[0]) if first else ""


def _echo_described(
    names: Iterable[str], described: dict[str, str], factory: Callable[[str], Callable[..., object]]
) -> None:
    names = list(names)
    width = max(map(len, names), default=0) + 2
    for name in names:
        click.echo(f"{name:{width}s}{described.get(name) or _summary(factory(name))}")


@click.command("models")
@click.argument("pattern", required=False)
def list_models_cmd(pattern: str | None) -> None:
    """List model names (losslab's first, then timm's), optionally filtered by a wildcard PATTERN."""
    from losslab.models import list_models

    names = list_models(pattern)
    if not names:
        raise ConfigError(
            f"no model name matches {pattern!r}; patterns are shell wildcards (e.g. 'resnet*', '*vit*'); "
            "`losslab models` lists them all"
        )
    for name in names:
        click.echo(name)


@click.command("objectives")
def list_objectives_cmd() -> None:
    """List training objectives (--loss NAME) with a one-line description."""
    from losslab.objectives.registry import OBJECTIVES

    _echo_described(OBJECTIVES.names(), OBJECTIVE_HELP, OBJECTIVES.get)


@click.command("regularizers")
def list_regularizers_cmd() -> None:
    """List regularizers (--regularizer NAME --lmbda X) with a one-line description."""
    from losslab.regularizers.base import REGULARIZERS

    _echo_described(REGULARIZERS.names(), REGULARIZER_HELP, REGULARIZERS.get)


@click.command("datasets")
def list_datasets_cmd() -> None:
    """List dataset names and their shapes."""
    from losslab.data import DATASETS, dataset_info

    for name in DATASETS:
        spec = dataset_info(name)
        click.echo(f"{name:14s} {spec.num_classes:5d} classes  {spec.in_chans}x{spec.img_size}x{spec.img_size}")
