"""The normalization experiment (§8 of ``specs/factorized.md``) as Lightning callbacks.

Run 1 (``frob``) records n_l(e, i) = ‖U_l(M_l)V_lᵀ‖_F of every low-rank layer after every optimizer step; run 2
(``norm``) rescales the factors after every step so each product has the recorded norm::

    trainer = Trainer(callbacks=[RecordFrobNorms("frob/frobnorms.pt")])        # FD run
    trainer = Trainer(callbacks=[NormalizeToRecorded("frob/frobnorms.pt")])    # no-FD run, same data order

The per-epoch factor logs (``factor_stats``) and the norm helpers are in :mod:`losslab.layers.factor_norms`.

Layers are the model's :class:`~losslab.layers.lowrank.LowRankBase` modules in ``modules()`` order. The
callbacks act in ``on_train_batch_end``, i.e. after the optimizer step of that batch (no gradient accumulation).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from losslab.errors import ConfigError, DataNotFoundError
from losslab.io import save_torch_atomic
from losslab.layers.factor_norms import lowrank_layers, product_frobenius_norms, rescale_to_norms
from losslab.serialization import load_torch_file


class RecordFrobNorms(Callback):
    """Record ‖U(M)Vᵀ‖_F per low-rank layer after every optimizer step into ``path`` ([epochs, iters, layers]).

    The tensor is saved atomically at the end of every training epoch and at the end of training (complete
    epochs only). Unlike the original, the norm includes M for ``square`` layers.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._epochs: list[Tensor] = []
        self._current: list[Tensor] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._layers = lowrank_layers(pl_module)
        self._epochs, self._current = [], []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        self._current.append(product_frobenius_norms(self._layers))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._epochs and len(self._current) != self._epochs[0].shape[0]:
            raise ConfigError(
                f"RecordFrobNorms: epoch {len(self._epochs)} ran {len(self._current)} optimizer steps but epoch 0 ran "
                f"{self._epochs[0].shape[0]}; use the same number of batches every epoch (e.g. drop_last=True)"
            )
        self._epochs.append(torch.stack(self._current))
        self._current = []
        self._save()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save()

    def _save(self) -> None:
        if self._epochs:
            save_torch_atomic(self.path, torch.stack(self._epochs))


class NormalizeToRecorded(Callback):
    """After every optimizer step rescale U_l and V_l (under ``no_grad``; momentum untouched) so that
    ‖U_l(M_l)V_lᵀ‖_F equals the norm recorded by :class:`RecordFrobNorms` at the same (epoch, iteration).

    Raises ConfigError at train start if the layer count, iterations per epoch or epoch count cannot match.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataNotFoundError(f"NormalizeToRecorded: no recorded norms at {self.path}; run RecordFrobNorms first")
        self.targets: Tensor = load_torch_file(self.path, what="recorded norms")
        if not isinstance(self.targets, Tensor) or self.targets.dim() != 3:
            raise ConfigError(f"{self.path} does not hold an [epochs, iters, layers] tensor from RecordFrobNorms")
        self._seen = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epochs, iters, n_layers = self.targets.shape
        self._layers = lowrank_layers(pl_module)
        if len(self._layers) != n_layers:
            raise ConfigError(
                f"NormalizeToRecorded: the model has {len(self._layers)} low-rank layers but {self.path} recorded "
                f"{n_layers}; factorize the same architecture with the same rank scale"
            )
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches != iters:
            raise ConfigError(
                f"NormalizeToRecorded: {batches} iterations per epoch but {self.path} recorded {iters}; "
                "use the same batch size, dataset and drop_last as the recording run"
            )
        if trainer.max_epochs is not None and trainer.max_epochs > epochs:
            raise ConfigError(
                f"NormalizeToRecorded: max_epochs={trainer.max_epochs} but {self.path} recorded only {epochs} epochs"
            )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._seen = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        epochs, iters, _ = self.targets.shape
        epoch = trainer.current_epoch
        if epoch >= epochs or batch_idx >= iters:
            raise ConfigError(
                f"NormalizeToRecorded: step (epoch {epoch}, iteration {batch_idx}) is outside the record "
                f"({epochs} epochs × {iters} iterations) in {self.path}"
            )
        rescale_to_norms(self._layers, self.targets[epoch, batch_idx])
        self._seen += 1

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        iters = self.targets.shape[1]
        if self._seen != iters:
            raise ConfigError(f"NormalizeToRecorded: this epoch ran {self._seen} steps but the record has {iters}")
