"""The objective registry: ``create("root", k=3.0, m=3.0)`` builds a loss module by name.

    >>> from losslab.objectives import create, list_objectives
    >>> list_objectives()
    ['ce', 'focal', 'focal_rlo_paper', 'root', 'root_convex', 'sgt']
    >>> loss_fn = create("root", k=3.0, m=3.0)     # nn.Module, forward(logits, target)

Constructor keyword arguments are checked against the factory's signature, so a flag meant for another loss
(``create("ce", k=3)``) fails with a message that lists the accepted names.

Each objective declares the hyper-parameters it reads from a training config, as a class attribute mapping config
field to keyword argument (``FocalLoss.hyperparameters = {"focal_gamma": "gamma", "focal_alpha": "alpha"}``), and
:func:`create_from_config` forwards those fields by name. A new objective is one file: a registered class with its
``hyperparameters`` (and, for a new hyper-parameter, the config field it names)::

    @OBJECTIVES.register("margin_ce")
    class MarginCE(RowLoss):
        hyperparameters = {"k": "margin"}            # TrainConfig.k -> MarginCE(margin=...)
        def __init__(self, *, margin=1.0, reduction="mean", ignore_index=-100): ...

    loss_fn = create_from_config(TrainConfig(loss="margin_ce", k=0.5))
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from losslab.errors import ConfigError
from losslab.registry import Registry

OBJECTIVES: Registry[nn.Module] = Registry("objective")


def objective_kwargs(name: str) -> list[str]:
    """The keyword arguments the objective ``name`` accepts, e.g. ``['k', 'm', 'reduction', 'ignore_index']``."""
    parameters = inspect.signature(OBJECTIVES.get(name)).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss module registered as ``name`` (or an alias) with ``kwargs``; see :func:`list_objectives`."""
    accepted = objective_kwargs(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"objective {OBJECTIVES.resolve(name)!r} does not take {', '.join(unknown)}; "
            f"accepted keyword arguments: {', '.join(accepted)}"
        )
    return OBJECTIVES.create(name, **kwargs)


def hyperparameters(name: str) -> dict[str, str]:
    """Config field -> keyword argument, as the objective ``name`` declares them (its ``hyperparameters``
    attribute; none declared: it takes nothing from a config)."""
    return dict(getattr(OBJECTIVES.get(name), "hyperparameters", {}))


def config_kwargs(name: str, config: Any) -> dict[str, Any]:
    """The keyword arguments of the objective ``name`` read from ``config``'s fields by the names it declares."""
    declared = hyperparameters(name)
    missing = [field for field in declared if not hasattr(config, field)]
    if missing:
        raise ConfigError(
            f"objective {OBJECTIVES.resolve(name)!r} reads {', '.join(missing)} from its config, which "
            f"{type(config).__name__} does not have; add the field(s) to the config or choose another loss"
        )
    return {kwarg: getattr(config, field) for field, kwarg in declared.items()}


def create_from_config(config: Any, **kwargs: Any) -> nn.Module:
    """The objective ``config.loss`` built with the hyper-parameters it declares, forwarded from ``config`` by name,
    and ``kwargs`` (e.g. ``reduction="none"``); see :func:`create`."""
    return create(config.loss, **config_kwargs(config.loss, config), **kwargs)


def list_objectives() -> list[str]:
    """Sorted canonical names of the registered objectives (aliases excluded)."""
    return OBJECTIVES.names()
