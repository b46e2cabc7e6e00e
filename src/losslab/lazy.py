"""Lazy package exports: heavy submodules (Lightning, transformers) load on first use, not on ``import``.

A package ``__init__`` declares which names live where and installs the returned ``__getattr__`` (PEP 562)::

    __getattr__ = lazy_exports(__name__, {"fit": "losslab.train.trainer", "load_run": "losslab.train.checkpoint"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``where[name]`` on first access of ``name``."""

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
