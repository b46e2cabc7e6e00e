"""timm's training-recipe pieces for ``losslab train``: Mixup/CutMix, model EMA and stochastic depth.

Each piece is timm's own implementation; this module only connects it to losslab's objectives and Lightning loop::

    mix = build_mixup(cfg, num_classes)            # timm.data.Mixup or None (cfg.mixup / cfg.cutmix > 0)
    x, y, y2, lam = mix_batch(mix, x, y)            # mixed images, both label sets, per-sample weight of y
    loss = mixed_loss(objective_none, logits, y, y2, lam)     # lam·L(z, y) + (1 − lam)·L(z, y2), batch mean
    ema = ModelEma(cfg)                             # Lightning callback around timm.utils.ModelEmaV3

Mixing any losslab objective. timm's Mixup returns soft targets t = λ·e_y + (1 − λ)·e_{y'} with y' the batch
flipped (all three modes pair sample i with sample B−1−i). Rather than a soft-target cross entropy (which only
works for CE), losslab recovers the per-sample λ_i = t[i, y_i] and trains on λ_i·L(z_i, y_i) + (1 − λ_i)·L(z_i,
y'_i) with the run's own objective (rooted, focal, SGT, ...). For cross entropy this equals timm's
SoftTargetCrossEntropy exactly; label smoothing stays the objective's own (``--smoothing``), so timm's Mixup is
built with ``label_smoothing=0``.

Model EMA follows timm's train.py: the averaged weights are the ones validated, selected and saved (the checkpoint's
``state_dict`` holds the EMA weights, the raw weights travel in the callback state so ``--resume`` continues
training them), so ``evaluate``, ``quantize`` and studies see the EMA model.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from losslab.errors import ConfigError
from losslab.train.config import TrainConfig


def build_mixup(cfg: TrainConfig, num_classes: int) -> Any | None:
    """timm's ``Mixup`` for ``cfg`` (None when neither mixup nor cutmix is on)."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    if cfg.batch_size % 2:
        raise ConfigError(
            f"mixup/cutmix pair each sample with the batch's mirror image and need an even batch_size; "
            f"got {cfg.batch_size} (use --batch-size {cfg.batch_size + 1})"
        )
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob,
        mode=cfg.mixup_mode,
        label_smoothing=0.0,
        num_classes=num_classes,
    )


def mix_batch(mixup: Any, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mix a batch with timm's ``Mixup``: (mixed x [B, ...], y [B], partner labels y.flip(0) [B], λ [B])."""
    x = x.clone()  # timm mixes in place
    x, soft = mixup(x, y)  # soft [B, C] = λ·e_y + (1 − λ)·e_{y.flip(0)}
    lam = soft.gather(1, y.unsqueeze(1)).squeeze(1)  # λ_i (1 where y_i equals its partner's label: either works)
    return x, y, y.flip(0), lam


def mixed_loss(objective: nn.Module, logits: Tensor, y: Tensor, y2: Tensor, lam: Tensor) -> Tensor:
    """Batch mean of λ·L(z, y) + (1 − λ)·L(z, y2); ``objective`` must have ``reduction='none'``."""
    return (lam * objective(logits, y) + (1.0 - lam) * objective(logits, y2)).mean()


def drop_kwargs(cfg: TrainConfig) -> dict[str, float]:
    """timm's ``drop_rate`` / ``drop_path_rate`` model arguments that ``cfg`` sets (empty when both are off)."""
    out: dict[str, float] = {}
    if cfg.drop:
        out["drop_rate"] = cfg.drop
    if cfg.drop_path:
        out["drop_path_rate"] = cfg.drop_path
    return out


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


def check_model_accepts_drop(error: TypeError, cfg: TrainConfig) -> ConfigError:
    """The error for ``--drop``/``--drop-path`` on a model whose constructor does not take them."""
    flags = " / ".join(f for f, v in (("--drop", cfg.drop), ("--drop-path", cfg.drop_path)) if v)
    return ConfigError(
        f"{flags}: model {cfg.model!r} does not take timm's drop_rate/drop_path_rate ({error}); use a timm model "
        "with stochastic depth (resnet*, vit_*, convnext_*, ...) or drop the flag"
    )
