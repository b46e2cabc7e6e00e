"""Learning-rate schedules against their closed forms, and weight-decay parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from losslab.train import TrainConfig
from losslab.train.optim import build_optimizer, build_scheduler, default_milestones


def lrs(cfg: TrainConfig) -> list[float]:
    opt = build_optimizer(cfg, nn.Linear(2, 2))
    scheduler, total = build_scheduler(cfg, opt)
    out = []
    for epoch in range(total):
        scheduler.step(epoch)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_cosine_closed_form() -> None:
    cfg = TrainConfig(lr=0.1, epochs=10, scheduler="cosine", min_lr=0.001)
    expected = [0.001 + 0.5 * (0.1 - 0.001) * (1 + math.cos(math.pi * e / 10)) for e in range(10)]
    assert lrs(cfg) == pytest.approx(expected, rel=1e-9)


def test_multistep_combined_protocol_lr() -> None:
    """RegulQuant's combined protocol: MultiStep [25, 50], gamma 0.15 -> lr 0.00225 from epoch 50 (spec §3)."""
    cfg = TrainConfig(lr=0.1, epochs=110, scheduler="multistep", milestones=[25, 50], gamma=0.15)
    values = lrs(cfg)
    assert values[24] == pytest.approx(0.1) and values[25] == pytest.approx(0.015)
    assert values[70] == pytest.approx(0.00225) and values[109] == pytest.approx(0.00225)


def test_exponential_and_step() -> None:
    assert lrs(TrainConfig(lr=0.1, epochs=5, scheduler="exponential", gamma=0.99)) == pytest.approx(
        [0.1 * 0.99**e for e in range(5)]
    )
    assert lrs(TrainConfig(lr=0.1, epochs=6, scheduler="step", step_size=2, gamma=0.5)) == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    )


def test_warmup_and_cooldown() -> None:
    cfg = TrainConfig(lr=0.1, epochs=6, scheduler="none", warmup_epochs=2, warmup_lr=0.0)
    assert lrs(cfg) == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.1, 0.1])
    cooled = lrs(TrainConfig(lr=0.1, epochs=6, scheduler="cosine", cooldown_epochs=2, min_lr=0.001))
    assert len(cooled) == 8 and cooled[6:] == pytest.approx([0.001, 0.001])


def test_default_milestones() -> None:
    assert default_milestones(110) == [55, 91]


def test_no_decay_group() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    exempt = list(model[1].parameters())
    opt = build_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.1), model, exempt)
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(decays[id(p)] == 0.0 for p in exempt)
    assert all(decays[id(p)] == 0.1 for p in model[0].parameters())
    assert isinstance(opt, torch.optim.AdamW)
    nesterov = build_optimizer(TrainConfig(optimizer="nesterov"), model)
    assert nesterov.param_groups[0]["nesterov"] is True
