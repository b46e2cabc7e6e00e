"""The LightningModule of the Lightning engine: :class:`losslab.train.task.ClassifierTask` in Lightning's hooks.

The step math, what it logs and the evaluation tally live in the task (shared with the plain engine,
``losslab.train.engine_plain``); this module maps them onto Lightning: ``self.log`` epoch means, the optimizer and
its per-epoch schedule, and the DDP reduction. Validation and test report plain cross entropy (``val/ce``) and
top-1 accuracy whatever the training objective, so checkpoints are selected on the same metric for every loss.
They are exact over the whole split also under DDP: each rank sums correct predictions, cross entropy and counts
over its (unpadded) shard, and the sums are all-reduced once at the end of the pass (sum of correct / sum of
counts). A non-finite training loss is recorded without a device sync per step and checked at the end of the
epoch, before any checkpoint of that epoch is written: the run stops with :class:`TrainingDivergedError`, the last
good checkpoint stays.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from losslab.train.config import TrainConfig
from losslab.train.task import (
    EVAL_TALLY,
    ClassifierTask,
    TrainingDivergedError,
    accuracy,
    diverged_error,
    factor_statistics,
    tally_metrics,
    weight_statistics,
)

__all__ = [
    "EVAL_TALLY",
    "ClassifierModule",
    "TrainingDivergedError",
    "accuracy",
    "factor_statistics",
    "weight_statistics",
]


class ClassifierModule(pl.LightningModule):
    """A :class:`ClassifierTask` (same arguments: config, model, objective, schedule, always_on) in Lightning."""

    def __init__(self, config: TrainConfig, model: nn.Module, objective: nn.Module, **task: Any) -> None:
        super().__init__()
        self.config, self.model, self.objective = config, model, objective  # submodules: "model.*" state keys
        self.task = ClassifierTask(config, model, objective, **task)
        self.save_hyperparameters({"config": config.to_dict()})
        self._tally: Tensor | None = None  # (4,) sums of EVAL_TALLY over this rank's evaluation batches
        self._epoch_lr: float | None = None  # the lr of the epoch in training (factor statistics use it)

    # mixup and channels_last are set by fit on the module; they belong to the task
    @property
    def mixup(self) -> Any | None:
        return self.task.mixup

    @mixup.setter
    def mixup(self, value: Any | None) -> None:
        self.task.mixup = value

    @property
    def channels_last(self) -> bool:
        return self.task.channels_last

    @channels_last.setter
    def channels_last(self, value: bool) -> None:
        self.task.channels_last = value

    def _log_epoch(self, name: str, value: Tensor | float, prog_bar: bool = False) -> None:
        # logit statistics are per-rank batch averages: mean them over the ranks too
        self.log(name, value, on_step=False, on_epoch=True, prog_bar=prog_bar, sync_dist="_logits/" in name)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.task.prepare(batch)

    def all_regularizers(self) -> list[Any]:
        return self.task.all_regularizers()

    def active_regularizers(self) -> list[Any]:
        return self.task.active_regularizers(self.current_epoch)

    def on_fit_start(self) -> None:
        self.task.attach()

    def on_fit_end(self) -> None:
        self.task.detach()

    def on_train_epoch_start(self) -> None:
        self._epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log("lr", self._epoch_lr, on_step=False, on_epoch=True)
        self.task.start_epoch(self.current_epoch)

    # ------------------------------------------------------------------ steps
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.task.training_loss(batch, self.current_epoch, self._log_epoch)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.task.gradient_terms(self.current_epoch, self._log_epoch)

    def on_train_epoch_end(self) -> None:
        # Runs before ModelCheckpoint's hook of this epoch: a diverged epoch never overwrites last.ckpt.
        bad = self.task.take_nonfinite()
        if bad is not None and bool(self.trainer.strategy.reduce(bad.float(), reduce_op="sum") > 0):
            raise diverged_error(self.current_epoch)

    def _eval_step(self, stage: str, batch: tuple[Tensor, Tensor]) -> None:
        step = self.task.eval_tally(batch, stage, self._log_epoch)
        self._tally = step if self._tally is None else self._tally + step

    def _log_eval_tally(self, stage: str) -> None:
        """Log ``stage/acc``, ``stage/ce`` (and ``test/top5``) from the sums over every rank's shard."""
        tally, self._tally = self._tally, None
        if tally is None:
            tally = torch.zeros(len(EVAL_TALLY), dtype=torch.float64, device=self.device)
        for key, value in tally_metrics(stage, self.trainer.strategy.reduce(tally, reduce_op="sum")).items():
            self.log(key, value, prog_bar=stage == "val", sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._tally = None

    def on_test_epoch_start(self) -> None:
        self._tally = None

    def on_test_epoch_end(self) -> None:
        self._log_eval_tally("test")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self._log_eval_tally("val")
        # the lr the epoch trained with (Lightning steps the schedule before this validation runs)
        lr = self._epoch_lr if self._epoch_lr is not None else self.trainer.optimizers[0].param_groups[0]["lr"]
        for key, value in self.task.validation_statistics(lr).items():
            self.log(key, value)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = self.task.optimizer_and_schedule()
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        # The schedule takes the epoch index; Lightning steps after epoch `current_epoch`, so set the next one.
        scheduler.step(epoch=self.current_epoch + 1)
