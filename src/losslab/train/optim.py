"""Optimizers and learning-rate schedules for classifier training.

``build_optimizer`` makes SGD (heavy-ball or Nesterov), Adam or AdamW over parameter groups: parameters that a
regularizer asks to exempt (Frobenius-decay factors, attention projections under QK/OV decay) go into a group with
``weight_decay = 0``, every other parameter keeps the run's weight decay, as the seed systems did (RegulQuant and
the FNL ResNets decay BN parameters too). ``build_scheduler`` returns an :class:`EpochSchedule` stepped once per
epoch::

    optimizer = build_optimizer(cfg, model, no_decay=[...])
    scheduler, total_epochs = build_scheduler(cfg, optimizer)
    scheduler.step(epoch)          # sets the lr of epoch `epoch`

Schedules (per epoch ``e``, peak lr ``η``): cosine η_min + ½(η − η_min)(1 + cos(π e/E)); step η·γ^⌊e/step⌋;
multistep η·γ^(number of milestones ≤ e); exponential η·γ^e; none keeps η. All accept linear warmup from
``warmup_lr`` over ``warmup_epochs`` (the warmup overlaps the first epochs of the schedule, it is not a prefix)
and ``cooldown_epochs`` at ``min_lr`` after ``epochs``. These are timm's per-epoch schedules (``create_scheduler_v2``
with ``warmup_prefix=False``; the tests hold them equal to timm's), written in closed form so that a training run
does not import timm unless its model needs it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from losslab.train.config import TrainConfig


def build_optimizer(cfg: TrainConfig, model: nn.Module, no_decay: Iterable[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer`` with a weight-decay-free group for ``no_decay`` parameters."""
    exempt = {id(p) for p in no_decay}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in exempt], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer in ("sgd", "nesterov"):
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov")
    betas = (cfg.momentum, 0.999)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)


def default_milestones(epochs: int) -> list[int]:
    """RegulQuant's ``default`` multistep milestones: [⌊E/2⌋, ⌊5E/6⌋]."""
    return sorted({max(1, epochs // 2), max(1, (5 * epochs) // 6)})


class EpochSchedule:
    """The per-epoch learning rate of a :class:`TrainConfig` (see the module doc), applied to an optimizer.

    Construction sets the lr of epoch 0; ``step(epoch)`` sets the lr of ``epoch`` in every parameter group (each
    group scaled from its own initial lr). Its state is the last epoch set, so a resumed run continues the curve.
    """

    def __init__(self, cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.kind = cfg.scheduler
        self.epochs = cfg.epochs
        self.step_size = cfg.step_size
        self.gamma = cfg.gamma
        self.milestones = sorted(cfg.milestones or default_milestones(cfg.epochs))
        self.warmup_epochs = cfg.warmup_epochs
        self.warmup_lr = cfg.warmup_lr
        self.min_lr = cfg.min_lr
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = 0
        self.step(0)

    def lr_at(self, epoch: int, base: float) -> float:
        """The learning rate of ``epoch`` for a group whose peak lr is ``base``."""
        if epoch < self.warmup_epochs:
            return self.warmup_lr + epoch * (base - self.warmup_lr) / self.warmup_epochs
        if self.kind == "cosine":
            if epoch >= self.epochs:  # cooldown (and anything after the single cycle): min_lr
                return self.min_lr
            return self.min_lr + 0.5 * (base - self.min_lr) * (1.0 + math.cos(math.pi * epoch / self.epochs))
        if self.kind == "step":
            return base * self.gamma ** (epoch // self.step_size)
        if self.kind == "exponential":
            return base * self.gamma**epoch
        if self.kind == "multistep":  # gamma^(number of milestones <= epoch), as torch's MultiStepLR
            return base * self.gamma ** bisect.bisect_right(self.milestones, epoch)
        return base  # none

    def step(self, epoch: int) -> None:
        """Set the learning rate of ``epoch`` in the optimizer."""
        self.last_epoch = int(epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = self.lr_at(self.last_epoch, base)

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the last epoch set (a checkpoint of an older losslab held timm's scheduler state: same keys for
        what matters here; the curve itself comes from the config)."""
        self.base_lrs = [float(v) for v in state.get("base_lrs", state.get("base_values", self.base_lrs))]
        self.last_epoch = int(state.get("last_epoch", self.last_epoch) or 0)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> tuple[EpochSchedule, int]:
    """The per-epoch schedule of ``cfg`` on ``optimizer`` and the number of epochs (cooldown included)."""
    return EpochSchedule(cfg, optimizer), cfg.epochs + cfg.cooldown_epochs
