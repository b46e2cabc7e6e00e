"""Model EMA for the Lightning engine: timm's ``ModelEmaV3`` as a Lightning callback.

Kept apart from :mod:`losslab.train.recipe` so that building a run's recipe does not import Lightning. The averaged
weights are the ones validated, selected and saved (the checkpoint's ``state_dict`` holds the EMA weights, the raw
weights travel in ``ema_raw_state_dict`` so ``--resume`` continues training them).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor


class ModelEma(Callback):
    """timm's ``ModelEmaV3`` as a Lightning callback: updated after every optimizer step, swapped in for
    validation, test and checkpoints (see the module docstring)."""

    def __init__(self, decay: float, warmup: bool = False) -> None:
        self.decay = decay
        self.warmup = warmup
        self.ema: Any | None = None
        self._raw: dict[str, Tensor] | None = None
        self._pending_raw: dict[str, Tensor] | None = None

    def _ensure(self, pl_module: pl.LightningModule) -> Any:
        if self.ema is None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(pl_module.model, decay=self.decay, use_warmup=self.warmup)
            self.ema.requires_grad_(False)
        self.ema.to(pl_module.device)
        return self.ema

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ema = self._ensure(pl_module)
        if self._pending_raw is not None:  # resumed: the checkpoint's state_dict held the EMA weights
            ema.module.load_state_dict(pl_module.model.state_dict())
            pl_module.model.load_state_dict(self._pending_raw)
            self._pending_raw = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._ensure(pl_module).update(pl_module.model, step=trainer.global_step)

    # --- swap the averaged weights in for evaluation and saving, and back for training
    def _swap_in(self, pl_module: pl.LightningModule) -> None:
        if self.ema is None or self._raw is not None:
            return
        self._raw = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        pl_module.model.load_state_dict(self.ema.module.state_dict())

    def _swap_out(self, pl_module: pl.LightningModule) -> None:
        if self._raw is not None:
            pl_module.model.load_state_dict(self._raw)
            self._raw = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out(pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.ema is None:
            return
        raw = self._raw if self._raw is not None else pl_module.model.state_dict()
        checkpoint["ema_raw_state_dict"] = {k: v.detach().cpu().clone() for k, v in raw.items()}
        ema_state = self.ema.module.state_dict()
        for key in list(checkpoint["state_dict"]):
            inner = key.removeprefix("model.")
            if key.startswith("model.") and inner in ema_state:
                checkpoint["state_dict"][key] = ema_state[inner].detach().cpu().clone()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        raw = checkpoint.get("ema_raw_state_dict")
        if raw is not None:
            self._pending_raw = {k: torch.as_tensor(v) for k, v in raw.items()}
