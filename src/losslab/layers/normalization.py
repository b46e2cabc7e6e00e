"""The normalization experiment (§8 of ``specs/factorized.md``) as Lightning callbacks around
:mod:`losslab.layers.factor_norms` (which the plain training engine uses directly).

Run 1 (``frob``) records n_l(e, i) = ‖U_l(M_l)V_lᵀ‖_F of every low-rank layer after every optimizer step; run 2
(``norm``) rescales the factors after every step so each product has the recorded norm::

    trainer = Trainer(callbacks=[RecordFrobNorms("frob/frobnorms.pt")])        # FD run
    trainer = Trainer(callbacks=[NormalizeToRecorded("frob/frobnorms.pt")])    # no-FD run, same data order

The per-epoch factor logs (``factor_stats``) and the norm helpers are in :mod:`losslab.layers.factor_norms`.

Layers are the model's :class:`~losslab.layers.lowrank.LowRankBase` modules in ``modules()`` order. The
callbacks act in ``on_train_batch_end``, i.e. after the optimizer step of that batch (no gradient accumulation).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from losslab.layers.factor_norms import FrobNormFollower, FrobNormRecorder


class RecordFrobNorms(Callback):
    """:class:`~losslab.layers.factor_norms.FrobNormRecorder` as a Lightning callback (saved at the end of every
    training epoch and at the end of training)."""

    def __init__(self, path: str | Path) -> None:
        self.recorder = FrobNormRecorder(path)

    @property
    def path(self) -> Path:
        return self.recorder.path

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.recorder.start(pl_module, keep_epochs=trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        self.recorder.after_step(trainer.current_epoch, batch_idx)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.recorder.end_epoch()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.recorder.save()


class NormalizeToRecorded(Callback):
    """:class:`~losslab.layers.factor_norms.FrobNormFollower` as a Lightning callback: after every optimizer step
    the factor products take the recorded norms (ConfigError at train start when the record cannot match)."""

    def __init__(self, path: str | Path) -> None:
        self.follower = FrobNormFollower(path)

    @property
    def targets(self) -> Tensor:
        return self.follower.targets

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.follower.start(pl_module, trainer.num_training_batches, trainer.max_epochs)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.follower.start_epoch()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        self.follower.after_step(trainer.current_epoch, batch_idx)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.follower.end_epoch()
