"""The run folder of ``losslab train``: a :class:`losslab.runs.RunSpec` built from a :class:`TrainConfig`.

Every rule (confined name, marker, lock, staged ``--overwrite``, recovery of a killed swap, resume checks) is
:mod:`losslab.runs.folder`'s; this module says which config keys a classifier resume must keep and how a
classifier checkpoint is validated before any work::

    with claim_run_folder(cfg) as run:   # validates, locks; creates nothing yet
        work = run.create()              # the folder training writes to (the run folder or its staging sibling)
        ...
        run.commit()
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from losslab.runs.folder import RunFolder, RunSpec, claim, safe_run_name
from losslab.runs.folder import resolve_resume as resolve_any_resume
from losslab.train.config import TrainConfig

# Config keys that fix the shapes stored in a checkpoint: a resume must not change them.
ARCHITECTURE_KEYS = ("dataset", "model", "img_size", "rank_scale", "target_ratio", "tensor_train", "square")


def validate_checkpoint(path: Path) -> None:
    """A classifier checkpoint, read safely with tensors left on disk (refused before any work if it is not)."""
    from losslab.train.checkpoint import read_checkpoint

    read_checkpoint(path, mmap=True)


def resolve_resume(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(run folder, checkpoint) for ``--resume`` given a run folder or a checkpoint file (validated)."""
    return resolve_any_resume(path, validate_checkpoint)


def run_spec(cfg: TrainConfig) -> RunSpec:
    """The :class:`RunSpec` of ``cfg``: its name (or the config's default), the architecture keys, the epochs."""
    name = cfg.run_name if cfg.run_name is not None else safe_run_name(cfg.default_run_name())
    return RunSpec(
        out_dir=Path(cfg.out_dir),
        run_name=name,
        resume=Path(cfg.resume) if cfg.resume is not None else None,
        overwrite=cfg.overwrite,
        config=cfg.to_dict(),
        match_keys=ARCHITECTURE_KEYS,
        epochs=cfg.epochs + cfg.cooldown_epochs,
        validate=validate_checkpoint,
    )


@contextmanager
def claim_run_folder(cfg: TrainConfig) -> Iterator[RunFolder]:
    """Validate and lock the run folder of ``cfg`` for the duration of the block (:func:`losslab.runs.claim`)."""
    with claim(run_spec(cfg)) as run:
        yield run
