"""The one checkpoint contract of a run: a dict of stateful objects, written atomically, read only safely.

::

    save(run.last_ckpt, {"model": model, "optimizer": opt, "schedule": sched, "epoch": epoch, "best": 0.93})
    state = load(run.resume_ckpt, into={"model": model, "optimizer": opt, "schedule": sched})
    start = state["epoch"] + 1

:func:`save` stores ``obj.state_dict()`` for every value that has one (modules, optimizers, schedulers, grad
scalers, EMA helpers) and the value itself otherwise (numbers, strings, lists, dicts of tensors), then writes the
file through :func:`losslab.io.save_torch_atomic` (temporary file, fsync, rename: a kill leaves the old file or the
new one). :func:`load` reads it through :func:`losslab.serialization.load_torch_file` (``weights_only=True``: a
pickled payload is refused, no code runs) and calls ``load_state_dict`` on every object of ``into`` (strict for
modules): a checkpoint written by the same experiment restores it exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from losslab.errors import CorruptFileError

#: The key under which :func:`save` records the checkpoint format (``losslab.runs/1``).
FORMAT_KEY = "losslab_checkpoint"
FORMAT = "losslab.runs/1"


def state_of(value: Any) -> Any:
    """``value.state_dict()`` for a stateful object (module, optimizer, scheduler, scaler), else ``value``."""
    state_dict = getattr(value, "state_dict", None)
    return state_dict() if callable(state_dict) else value


def save(path: str | os.PathLike[str], objects: Mapping[str, Any]) -> Path:
    """Write the state of ``objects`` (name → stateful object or plain data) to ``path`` atomically."""
    from losslab.io import save_torch_atomic

    return save_torch_atomic(path, {FORMAT_KEY: FORMAT, **{name: state_of(v) for name, v in objects.items()}})


def load(
    path: str | os.PathLike[str],
    into: Mapping[str, Any] | None = None,
    *,
    map_location: Any = "cpu",
    mmap: bool = False,
    what: str = "checkpoint",
) -> dict[str, Any]:
    """Read a checkpoint safely (:func:`losslab.serialization.load_torch_file`) and restore ``into`` from it.

    Returns the stored dict. Raises :class:`UnsafeFileError` (pickled code), :class:`CorruptFileError` (unreadable,
    not a dict, or missing an entry ``into`` needs) and torch's error for a state that does not fit its object.
    """
    from losslab.serialization import load_torch_file

    file = Path(path)
    state = load_torch_file(file, what=what, map_location=map_location, mmap=mmap)
    if not isinstance(state, dict):
        raise CorruptFileError(
            f"{what} {str(file)!r} holds a {type(state).__name__}, not a checkpoint dict; it was not written by "
            "losslab. Use the run's own checkpoints/last.ckpt or start a new run"
        )
    for name, obj in (into or {}).items():
        if name not in state:
            raise CorruptFileError(
                f"{what} {str(file)!r} has no {name!r} entry; it was written by another experiment or edited. "
                "Use the run's own checkpoints/last.ckpt or start a new run"
            )
        obj.load_state_dict(state[name])
    return state


def check(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Validate a checkpoint cheaply before any work (tensors stay on disk): safe to load, and a dict."""
    return load(path, mmap=True)
