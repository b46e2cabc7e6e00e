"""A small name -> factory registry, shared by objectives, regularizers and quantization methods.

The shape follows timm's ``register_model`` / ``create_model`` / ``list_models``::

    OBJECTIVES = Registry("objective")

    @OBJECTIVES.register("ce")
    class CrossEntropy(nn.Module): ...

    loss = OBJECTIVES.create("ce", label_smoothing=0.1)
    OBJECTIVES.names()  # ['ce', ...]

Unknown names raise :class:`losslab.errors.LosslabError` listing the valid choices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from losslab.errors import unknown_name_error

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (case-insensitive, ``-`` and ``_`` equivalent) to factories."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._aliases: dict[str, str] = {}
        self._internal: set[str] = set()

    @staticmethod
    def _key(name: str) -> str:
        return name.strip().lower().replace("-", "_")

    def register(
        self, name: str, *aliases: str, internal: bool = False
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``factory`` under ``name`` (and optional aliases); ``internal`` entries work by name
        but are not offered to users (listings and error messages leave them out)."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            key = self._key(name)
            if key in self._factories or key in self._aliases:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[key] = factory
            for alias in aliases:
                self._aliases[self._key(alias)] = key
            if internal:
                self._internal.add(key)
            return factory

        return decorate

    def resolve(self, name: str) -> str:
        """Canonical name for ``name`` or an alias; raises with the valid choices if unknown."""
        key = self._key(name)
        key = self._aliases.get(key, key)
        if key not in self._factories:
            raise unknown_name_error(self.kind, name, self.names())
        return key

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``."""
        return self._factories[self.resolve(name)]

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the object registered under ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Sorted canonical names (aliases and internal entries excluded)."""
        return sorted(set(self._factories) - self._internal)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = self._key(name)
        return key in self._factories or key in self._aliases
