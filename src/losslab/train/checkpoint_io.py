"""How training runs write their checkpoints and metrics: atomically, and movable as a folder.

- :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin): every checkpoint Lightning saves
  (``best.ckpt``, ``last.ckpt``, ``preregularized.ckpt``) is written to a temporary file, fsynced and renamed into
  place; a full or read-only disk raises :class:`losslab.errors.OutputError` and leaves the previous file intact.
- :class:`RunCheckpoint` (a ``ModelCheckpoint``): after a run folder was moved or copied, a resume still knows the
  best checkpoint and its score (Lightning forgets them when the stored folder differs from the current one).
- :class:`KeepingCSVLogger`: Lightning's CSV logger deletes ``metrics.csv`` when it starts in a non-empty folder
  and appends to it in place; this one keeps the rows of the epochs a resumed run has already finished and
  rewrites the file atomically on each save. ``hparams.yaml`` is written atomically too.

::

    trainer = pl.Trainer(plugins=[AtomicCheckpointIO()], callbacks=[RunCheckpoint(dirpath=...)],
                         logger=KeepingCSVLogger(save_dir=run_dir, name="", version=""))
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.loggers.csv_logs import _ExperimentWriter as _FabricExperimentWriter
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from losslab.io import atomic_path, save_torch_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoint IO, written through :func:`losslab.io.save_torch_atomic`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        save_torch_atomic(path, checkpoint)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose restored paths follow the run folder when it was moved or copied."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        stored = state_dict.get("dirpath")
        if stored and self.dirpath and os.path.normpath(stored) != os.path.normpath(self.dirpath):
            state_dict = {**state_dict, **_moved(state_dict, stored, self.dirpath)}
        super().load_state_dict(state_dict)


def _moved(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The path entries of a ModelCheckpoint state re-rooted from folder ``old`` to ``new``."""

    def move(path: str) -> str:
        if not path:
            return path
        rel = os.path.relpath(path, old)
        return path if rel.startswith("..") else os.path.join(new, rel)

    return {
        "dirpath": new,
        "best_model_path": move(state.get("best_model_path", "")),
        "last_model_path": move(state.get("last_model_path", "")),
        "kth_best_model_path": move(state.get("kth_best_model_path", "")),
        "best_k_models": {move(k): v for k, v in state.get("best_k_models", {}).items()},
    }


class _KeepingWriter(ExperimentWriter):
    """The CSV experiment writer, but ``metrics.csv`` is rewritten atomically on each save (never a half-written
    row), the rows already in it when it starts (a resumed run's finished epochs) are kept, and ``hparams.yaml``
    is written atomically."""

    def __init__(self, log_dir: str) -> None:
        metrics_file = Path(log_dir) / _FabricExperimentWriter.NAME_METRICS_FILE
        rows: list[dict[str, Any]] = []
        if metrics_file.is_file():
            with open(metrics_file, newline="") as fh:
                rows = list(csv.DictReader(fh))
        super().__init__(log_dir)  # deletes metrics.csv when the folder is not empty
        self.rows = rows
        self._write()

    def _write(self) -> None:
        keys = sorted({k for row in self.rows for k in row} | set(self.metrics_keys))
        self.metrics_keys = keys
        if not self.rows:
            if os.path.isfile(self.metrics_file_path):
                os.remove(self.metrics_file_path)
            return
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Record hparams and write ``hparams.yaml`` atomically (Lightning rewrites it in place); the YAML is
        Lightning's own (:func:`~lightning.pytorch.core.saving.save_hparams_to_yaml`), written to a temporary file
        that replaces the old one only when complete."""
        from lightning.pytorch.core.saving import save_hparams_to_yaml

        self.hparams.update(params)
        with atomic_path(Path(self.log_dir) / self.NAME_HPARAMS_FILE) as tmp:
            save_hparams_to_yaml(tmp, self.hparams)

    def save(self) -> None:
        """Append the recorded metrics and rewrite the file atomically (Lightning appends in place)."""
        if not self.metrics:
            return
        self._record_new_keys()
        self.rows.extend(self.metrics)
        self.metrics = []
        self._write()

    def keep_before(self, epoch: int) -> None:
        """Drop the kept rows of epoch ``epoch`` and later (the epoch in flight when the run was killed)."""
        self.rows = [row for row in self.rows if _epoch(row) < epoch]
        self._write()


def _epoch(row: dict[str, Any]) -> float:
    try:
        return float(row.get("epoch") if row.get("epoch") not in (None, "") else "nan")
    except ValueError:
        return float("nan")


class KeepingCSVLogger(CSVLogger):
    """``CSVLogger`` that keeps the finished epochs' rows of a resumed run (see :class:`KeepMetricsHistory`)."""

    @property
    def experiment(self) -> _KeepingWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


class KeepMetricsHistory(Callback):
    """At the start of (resumed) training, drop the CSV rows of the epoch that was in flight when it was killed."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, KeepingCSVLogger) and trainer.is_global_zero:
                logger.experiment.keep_before(trainer.current_epoch)
