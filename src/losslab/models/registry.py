"""losslab's own model entrypoints, registered in timm's registry without importing timm first.

Each family module decorates its entrypoints with :func:`register_model`, which records them here. They enter
timm's registry as soon as timm is imported (a post-import hook, ``wrapt.register_post_import_hook``; at once if
timm is already loaded), so ``timm.create_model("cifar_resnet20")`` works wherever losslab's models were
imported, while building a losslab model by name (``losslab.models.create_model``) never pays timm's ~1.5 s
import::

    @register_model
    def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet: ...

    ENTRYPOINTS["cifar_resnet20"](num_classes=10)     # what timm.create_model calls, without timm
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import wrapt

F = TypeVar("F", bound=Callable[..., Any])

#: name -> entrypoint ``fn(pretrained=False, **kwargs) -> nn.Module`` of every losslab architecture.
ENTRYPOINTS: dict[str, Callable[..., Any]] = {}
_in_timm: set[str] = set()


def register_model(fn: F) -> F:
    """Record ``fn`` as the entrypoint of the model named ``fn.__name__`` (and in timm's registry once timm loads)."""
    ENTRYPOINTS[fn.__name__] = fn
    if "timm" in sys.modules:  # timm came first: its post-import hook has run already
        register_with_timm()
    return fn


def register_with_timm(timm: ModuleType | None = None) -> None:
    """Put every recorded entrypoint into timm's registry (idempotent; called when timm is imported)."""
    from timm.models import register_model as timm_register

    for name, fn in ENTRYPOINTS.items():
        if name not in _in_timm:
            timm_register(fn)
            _in_timm.add(name)


wrapt.register_post_import_hook(register_with_timm, "timm")
