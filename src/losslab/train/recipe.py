"""timm's training-recipe pieces for ``losslab train``: Mixup/CutMix, model EMA and stochastic depth.

Each piece is timm's own implementation; this module only connects it to losslab's objectives and Lightning loop::

    mix = build_mixup(cfg, num_classes)            # timm.data.Mixup or None (cfg.mixup / cfg.cutmix > 0)
    x, y, y2, lam = mix_batch(mix, x, y)            # mixed images, both label sets, per-sample weight of y
    loss = mixed_loss(objective_none, logits, y, y2, lam)     # lam·L(z, y) + (1 − lam)·L(z, y2), batch mean
    ema = ModelEma(decay)                           # losslab.runs.ema: Lightning callback around ModelEmaV3

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


def check_model_accepts_drop(error: TypeError, cfg: TrainConfig) -> ConfigError:
    """The error for ``--drop``/``--drop-path`` on a model whose constructor does not take them."""
    flags = " / ".join(f for f, v in (("--drop", cfg.drop), ("--drop-path", cfg.drop_path)) if v)
    return ConfigError(
        f"{flags}: model {cfg.model!r} does not take timm's drop_rate/drop_path_rate ({error}); use a timm model "
        "with stochastic depth (resnet*, vit_*, convnext_*, ...) or drop the flag"
    )
