"""The objective registry: ``create("root", k=3.0, m=3.0)`` builds a loss module by name.

    >>> from losslab.objectives import create, list_objectives
    >>> list_objectives()
    ['ce', 'focal', 'focal_rlo_paper', 'root', 'root_convex', 'sgt']
    >>> loss_fn = create("root", k=3.0, m=3.0)     # nn.Module, forward(logits, target)

Constructor keyword arguments are checked against the factory's signature, so a flag meant for another loss
(``create("ce", k=3)``) fails with a message that lists the accepted names.
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


def list_objectives() -> list[str]:
    """Sorted canonical names of the registered objectives (aliases excluded)."""
    return OBJECTIVES.names()
