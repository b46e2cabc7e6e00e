"""Optimizers and learning-rate schedules for classifier training.

``build_optimizer`` makes SGD (heavy-ball or Nesterov), Adam or AdamW over parameter groups: parameters that a
regularizer asks to exempt (Frobenius-decay factors, attention projections under QK/OV decay) go into a group with
``weight_decay = 0``, every other parameter keeps the run's weight decay, as the seed systems did (RegulQuant and
the FNL ResNets decay BN parameters too). ``build_scheduler`` returns a timm scheduler stepped once per epoch::

    optimizer = build_optimizer(cfg, model, no_decay=[...])
    scheduler, total_epochs = build_scheduler(cfg, optimizer)
    scheduler.step(epoch)          # sets the lr of epoch `epoch`

Schedules (per epoch ``e``, peak lr ``η``): cosine η_min + ½(η − η_min)(1 + cos(π e/E)); step η·γ^⌊e/step⌋;
multistep η·γ^(number of milestones ≤ e); exponential η·γ^e; none keeps η. All accept linear warmup from
``warmup_lr`` over ``warmup_epochs`` and ``cooldown_epochs`` at ``min_lr`` after ``epochs``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
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


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> tuple[Scheduler, int]:
    """A timm per-epoch scheduler for ``cfg.scheduler`` and the total number of epochs (cooldown included)."""
    kind = {"none": "constant", "exponential": "step"}.get(cfg.scheduler, cfg.scheduler)
    scheduler, total = create_scheduler_v2(
        optimizer,
        sched=kind,
        num_epochs=cfg.epochs,
        decay_epochs=1 if cfg.scheduler == "exponential" else cfg.step_size,
        # timm's multistep counts milestones <= epoch + 1; shift so epoch e uses gamma^(#milestones <= e) as
        # torch.optim.lr_scheduler.MultiStepLR and the seed systems do.
        decay_milestones=[m + 1 for m in (cfg.milestones or default_milestones(cfg.epochs))],
        decay_rate=cfg.gamma,
        cooldown_epochs=cfg.cooldown_epochs,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
    )
    return scheduler, total
