"""Glue between losslab's model classes and timm's ``@register_model`` entrypoints.

timm calls every entrypoint as ``fn(pretrained=..., pretrained_cfg=..., pretrained_cfg_overlay=..., cache_dir=...,
**kwargs)``. :func:`build` drops timm's bookkeeping arguments, refuses ``pretrained=True`` (losslab ships no
weights for its own architectures) and passes the rest to the model class::

    @register_model
    def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
        return build("cifar_resnet20", CifarResNet, pretrained, kwargs, depth=20)
"""

from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

from losslab.errors import DataNotFoundError

M = TypeVar("M", bound=nn.Module)

TIMM_BOOKKEEPING = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def build(name: str, cls: type[M], pretrained: bool, kwargs: dict[str, Any], **arch: Any) -> M:
    """Instantiate ``cls(**arch, **kwargs)`` for the entrypoint ``name`` (timm's extra arguments removed)."""
    if pretrained:
        raise DataNotFoundError(
            f"no pretrained weights exist for losslab model {name!r}: losslab trains its own architectures from "
            "scratch. Use pretrained=False (CLI: drop --pretrained), or load your own checkpoint into the model."
        )
    own = {k: v for k, v in kwargs.items() if k not in TIMM_BOOKKEEPING}
    return cls(**arch, **own)
