"""How Lightning runs write their checkpoints: atomically, and movable as a folder.

- :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin): every checkpoint Lightning saves
  (``best.ckpt``, ``last.ckpt``, ``preregularized.ckpt``) is written to a temporary file, fsynced and renamed into
  place; a full or read-only disk raises :class:`losslab.errors.OutputError` and leaves the previous file intact.
- :class:`RunCheckpoint` (a ``ModelCheckpoint``): after a run folder was moved or copied, a resume still knows the
  best checkpoint and its score (Lightning forgets them when the stored folder differs from the current one).

A checkpoint resumes in either engine. The plain loop (``losslab.runs.loop``) writes Lightning's keys
(``state_dict``, ``optimizer_states``, ``lr_schedulers``, ``epoch``, ``global_step``) plus ``best_score``; what
Lightning also needs is derived on load: :meth:`AtomicCheckpointIO.load_checkpoint` adds the fit loop's progress
counters (:func:`lightning_loops`) and the version key, :class:`RunCheckpoint` takes the best score and path.
The other way, ``losslab.train.engine_plain.plain_view`` reads the best score out of a Lightning checkpoint's
``callbacks``.

``history.json`` and ``metrics.csv`` are written by the loop's :class:`losslab.runs.history.History` in both engines
(``losslab.train.engine_lightning.EpochHistory``), so the Lightning engine needs no CSV logger.

::

    trainer = pl.Trainer(plugins=[AtomicCheckpointIO()], callbacks=[RunCheckpoint(dirpath=...)])
"""

from __future__ import annotations

import os
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from losslab.io import save_torch_atomic
from losslab.runs.loop import ENGINE_KEY


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoint IO, written through :func:`losslab.io.save_torch_atomic`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        save_torch_atomic(path, checkpoint)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        """Lightning's load; a plain-loop checkpoint gets the fit loop's counters and Lightning's version key."""
        checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        if isinstance(checkpoint, dict) and checkpoint.get(ENGINE_KEY) == "plain":
            import lightning

            checkpoint.setdefault("pytorch-lightning_version", lightning.__version__)
            checkpoint.setdefault("loops", lightning_loops(int(checkpoint["epoch"]), int(checkpoint["global_step"])))
            checkpoint.setdefault("callbacks", {})  # without it Lightning calls no callback's on_load_checkpoint
        return checkpoint


def _progress(total: int, current: int, keys: tuple[str, ...] = ("ready", "completed", "started", "processed")):
    return {"total": dict.fromkeys(keys, total), "current": dict.fromkeys(keys, current)}


def lightning_loops(epoch: int, global_step: int) -> dict[str, Any]:
    """The ``loops`` entry Lightning writes at the end of epoch ``epoch`` (0-based) after ``global_step`` optimizer
    steps, one per batch and the same number per epoch (the plain loop's checkpoints are written there)."""
    per_epoch = global_step // (epoch + 1)
    step = _progress(global_step, per_epoch, ("ready", "completed"))
    idle = {"state_dict": {}, "batch_progress": {**_progress(0, 0), "is_last_batch": False}}
    epochs = _progress(epoch + 1, epoch + 1)
    for part in epochs.values():
        part["completed"] = epoch  # Lightning counts the epoch complete only after its checkpoint is written
    return {
        "fit_loop": {
            "state_dict": {},
            "epoch_loop.state_dict": {"_batches_that_stepped": global_step},
            "epoch_loop.batch_progress": {**_progress(global_step, per_epoch), "is_last_batch": True},
            "epoch_loop.scheduler_progress": _progress(epoch + 1, 1, ("ready", "completed")),
            "epoch_loop.automatic_optimization.state_dict": {},
            "epoch_loop.automatic_optimization.optim_progress": {
                "optimizer": {
                    "step": step,
                    "zero_grad": _progress(global_step, per_epoch, ("ready", "completed", "started")),
                }
            },
            "epoch_loop.manual_optimization.state_dict": {},
            "epoch_loop.manual_optimization.optim_step_progress": _progress(0, 0, ("ready", "completed")),
            "epoch_loop.val_loop.state_dict": {},
            "epoch_loop.val_loop.batch_progress": {**_progress(0, 0), "is_last_batch": False},
            "epoch_progress": epochs,
        },
        "validate_loop": idle,
        "test_loop": idle,
        "predict_loop": {"state_dict": {}, "batch_progress": _progress(0, 0)},
    }


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose restored paths follow the run folder when it was moved or copied."""

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """A plain-loop checkpoint has no state for this callback: take its best score (``best.ckpt`` beside it)."""
        if checkpoint.get(ENGINE_KEY) != "plain" or checkpoint.get("best_score") is None or not self.dirpath:
            return
        import torch

        best, score = os.path.join(self.dirpath, "best.ckpt"), torch.tensor(float(checkpoint["best_score"]))
        self.best_model_score, self.best_model_path = score, best
        self.best_k_models, self.kth_best_model_path, self.kth_value = {best: score}, best, score
        self.last_model_path = os.path.join(self.dirpath, "last.ckpt")

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
