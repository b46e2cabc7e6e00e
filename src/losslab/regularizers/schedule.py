"""Phase schedules: which regularizers are on in which epochs (RegulQuant's ``first_regularized_epoch`` and
``combined_protocol.py``).

Phases are half-open epoch ranges [start, end) (``end=None``: to the end of training); epochs no phase covers
run unregularized. Switches happen only at epoch boundaries; the learning-rate schedule is independent.

Example::

    schedule = Schedule.from_yaml("configs/combined_protocol.yaml")
    schedule.attach(model)                     # attach every regularizer once
    for epoch in range(schedule.epochs):
        active = schedule.set_epoch(epoch)     # set_active(True) on these, set_active(False) on the rest
        ...                                    # train one epoch with `active`
        if epoch == schedule.first_regularized_epoch - 1:
            ...                                # save the pre-regularized checkpoint (end of epoch E−1)
    schedule.detach()

    Schedule.from_start_epoch([create("l2grad", lam=0.01)], 20)   # epochs < 20 plain, then L2Grad

YAML layout (``epochs`` optional)::

    epochs: 110
    phases:
      - {start: 70, end: 90, regularizers: [{name: variance, lam: 1.25}]}
      - {start: 90, end: null, regularizers: [{name: l2grad, lam: 0.05, activations: false}]}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from losslab.errors import ConfigError
from losslab.regularizers.base import Regularizer, create


def _check_epoch(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}={value!r} must be an integer epoch >= 0")
    return value


@dataclass
class Phase:
    """Regularizers on for epochs ``start <= epoch < end`` (``end=None``: until training ends)."""

    start: int
    end: int | None
    regularizers: list[Regularizer] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_epoch("start", self.start)
        if self.end is not None and (_check_epoch("end", self.end) <= self.start):
            raise ConfigError(f"phase {self.label} is empty: end must be > start (or null for 'until the end')")
        self.regularizers = list(self.regularizers)
        names = [r.name for r in self.regularizers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"phase {self.label} lists {repeated} more than once; each name is a log key")

    @property
    def label(self) -> str:
        """The range as text, e.g. ``[70, 90)`` or ``[90, end)``."""
        return f"[{self.start}, {'end' if self.end is None else self.end})"

    def covers(self, epoch: int) -> bool:
        """Whether ``epoch`` lies in [start, end)."""
        return self.start <= epoch and (self.end is None or epoch < self.end)


class Schedule:
    """An ordered list of non-overlapping phases, optionally bounded by the total number of ``epochs``."""

    def __init__(self, phases: Sequence[Phase], epochs: int | None = None) -> None:
        self.phases = list(phases)
        self.epochs = None if epochs is None else _check_epoch("epochs", epochs)
        for i, (prev, cur) in enumerate(zip(self.phases, self.phases[1:]), start=1):
            if cur.start < prev.start:
                raise ConfigError(
                    f"phases are not in order: phase {i} {prev.label} comes before phase {i + 1} {cur.label}; "
                    "list phases by increasing start"
                )
            if prev.end is None or prev.end > cur.start:
                raise ConfigError(
                    f"phase {i} {prev.label} overlaps phase {i + 1} {cur.label}; end each phase at or before "
                    "the next one's start"
                )
        if self.epochs is not None:
            for i, phase in enumerate(self.phases, start=1):
                if phase.start >= self.epochs or (phase.end is not None and phase.end > self.epochs):
                    raise ConfigError(f"phase {i} {phase.label} lies outside epochs=[0, {self.epochs})")

    @classmethod
    def from_start_epoch(
        cls, regularizers: Sequence[Regularizer], start_epoch: int, epochs: int | None = None
    ) -> Schedule:
        """Epochs < ``start_epoch`` unregularized, then ``regularizers`` until the end (RegulQuant's shorthand)."""
        return cls([Phase(start_epoch, None, list(regularizers))], epochs=epochs)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], epochs: int | None = None) -> Schedule:
        """Build from ``{"epochs": N (optional), "phases": [{"start", "end", "regularizers": [{name, ...}]}]}``.

        ``epochs`` is the run's length: phases must lie inside it, and it must equal the file's ``epochs`` if
        both are given (a schedule written for 110 epochs does not silently run in a 200-epoch run).
        """
        _check_keys("schedule", config, required={"phases"}, optional={"epochs"})
        declared = config.get("epochs")
        if epochs is not None and declared is not None and declared != epochs:
            raise ConfigError(
                f"the schedule is written for epochs={declared!r} but the run has epochs={epochs!r}; train for "
                f"{declared!r} epochs or edit the schedule's 'epochs' and phases"
            )
        phases = []
        for i, spec in enumerate(config["phases"] or [], start=1):
            where = f"phase {i}"
            _check_keys(where, spec, required={"start"}, optional={"end", "regularizers"})
            regs = []
            for reg in spec.get("regularizers") or []:
                if not isinstance(reg, Mapping) or "name" not in reg:
                    raise ConfigError(f"{where}: each regularizer needs a 'name' key, got {reg!r}")
                kwargs = {k: v for k, v in reg.items() if k != "name"}
                regs.append(create(reg["name"], **kwargs))
            phases.append(Phase(spec["start"], spec.get("end"), regs))
        return cls(phases, epochs=declared if epochs is None else epochs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], epochs: int | None = None) -> Schedule:
        """Read a schedule file (layout in the module docstring); ``epochs`` as in :meth:`from_dict`.

        ``path`` may also name a shipped schedule (``combined_protocol``; :mod:`losslab.presets`).
        """
        from losslab.io import load_yaml_file
        from losslab.presets import resolve_yaml

        config = load_yaml_file(resolve_yaml(path, "configs"), "regularizer schedule")
        return cls.from_dict(config, epochs=epochs)

    def active(self, epoch: int) -> list[Regularizer]:
        """The regularizers on in ``epoch`` (empty list if no phase covers it, e.g. cool-down epochs)."""
        _check_epoch("epoch", epoch)
        return next((list(p.regularizers) for p in self.phases if p.covers(epoch)), [])

    def regularizers(self) -> list[Regularizer]:
        """Every regularizer of every phase, once each, in phase order."""
        seen: dict[int, Regularizer] = {}
        for phase in self.phases:
            for reg in phase.regularizers:
                seen.setdefault(id(reg), reg)
        return list(seen.values())

    def set_epoch(self, epoch: int) -> list[Regularizer]:
        """Call ``set_active`` on every regularizer (True for the ones on in ``epoch``); return the active ones."""
        active = self.active(epoch)
        on = {id(r) for r in active}
        for reg in self.regularizers():
            reg.set_active(id(reg) in on)
        return active

    def attach(self, model: nn.Module) -> None:
        """``attach(model)`` every regularizer (before training; raises ConfigError early for bad set-ups)."""
        for reg in self.regularizers():
            reg.attach(model)

    def detach(self) -> None:
        """``detach()`` every regularizer."""
        for reg in self.regularizers():
            reg.detach()

    @property
    def first_regularized_epoch(self) -> int | None:
        """The first epoch with a regularizer on (None if never). The pre-regularized checkpoint is saved at the
        end of the epoch before it (after that epoch's evaluation, before its LR-scheduler step)."""
        return next((p.start for p in self.phases if p.regularizers), None)

    def __repr__(self) -> str:
        inner = ", ".join(f"{p.label}: {[r.name for r in p.regularizers]}" for p in self.phases)
        return f"Schedule({inner}, epochs={self.epochs})"


def _check_keys(where: str, config: object, *, required: set[str], optional: set[str]) -> None:
    """ConfigError unless ``config`` is a mapping with all ``required`` keys and no keys outside the two sets."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where} must be a mapping with keys {sorted(required | optional)}, got {config!r}")
    missing = sorted(required - set(config))
    unknown = sorted(set(config) - required - optional)
    if missing or unknown:
        raise ConfigError(
            f"{where}: missing keys {missing}, unknown keys {unknown}; allowed: {sorted(required | optional)}"
        )
