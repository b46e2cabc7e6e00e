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


def timm_lrs(cfg: TrainConfig) -> list[float]:
    """The same schedule from timm's ``create_scheduler_v2`` (the reference losslab's closed forms follow)."""
    from timm.scheduler import create_scheduler_v2

    opt = build_optimizer(cfg, nn.Linear(2, 2))
    scheduler, total = create_scheduler_v2(
        opt,
        sched={"none": "constant", "exponential": "step"}.get(cfg.scheduler, cfg.scheduler),
        num_epochs=cfg.epochs,
        decay_epochs=1 if cfg.scheduler == "exponential" else cfg.step_size,
        decay_milestones=[m + 1 for m in (cfg.milestones or default_milestones(cfg.epochs))],
        decay_rate=cfg.gamma,
        cooldown_epochs=cfg.cooldown_epochs,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
    )
    out = [opt.param_groups[0]["lr"]]  # the lr set at construction (epoch 0 before any step)
    for epoch in range(total):
        scheduler.step(epoch)
        out.append(opt.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize(
    "values",
    [
        {"scheduler": "cosine", "epochs": 12, "min_lr": 1e-3},
        {"scheduler": "cosine", "epochs": 12, "warmup_epochs": 3, "warmup_lr": 1e-4, "cooldown_epochs": 3},
        {"scheduler": "step", "epochs": 9, "step_size": 2, "gamma": 0.3, "warmup_epochs": 2},
        {"scheduler": "multistep", "epochs": 20, "milestones": [3, 7, 15], "gamma": 0.2},
        {"scheduler": "multistep", "epochs": 12, "warmup_epochs": 4, "warmup_lr": 0.0},
        {"scheduler": "exponential", "epochs": 7, "gamma": 0.9, "warmup_epochs": 1},
        {"scheduler": "none", "epochs": 5, "warmup_epochs": 2, "warmup_lr": 0.01},
    ],
)
def test_schedules_equal_timms(values: dict) -> None:
    """Every schedule, warmup and cooldown equals timm's create_scheduler_v2 epoch by epoch (and at construction)."""
    cfg = TrainConfig(lr=0.2, **values)
    opt = build_optimizer(cfg, nn.Linear(2, 2))
    scheduler, total = build_scheduler(cfg, opt)
    ours = [opt.param_groups[0]["lr"]]
    for epoch in range(total):
        scheduler.step(epoch)
        ours.append(opt.param_groups[0]["lr"])
    assert ours == pytest.approx(timm_lrs(cfg), rel=1e-12, abs=1e-15)


def test_schedule_state_round_trip() -> None:
    """A resumed optimizer gets the schedule's position back; a second schedule on it continues the same curve."""
    cfg = TrainConfig(lr=0.1, epochs=10, scheduler="cosine")
    opt = build_optimizer(cfg, nn.Linear(2, 2))
    scheduler, _ = build_scheduler(cfg, opt)
    scheduler.step(4)
    state = scheduler.state_dict()
    again, _ = build_scheduler(cfg, build_optimizer(cfg, nn.Linear(2, 2)))
    again.load_state_dict(state)
    assert again.last_epoch == 4
    again.step(5)
    scheduler.step(5)
    assert again.optimizer.param_groups[0]["lr"] == scheduler.optimizer.param_groups[0]["lr"]


def test_training_schedule_does_not_import_timm() -> None:
    """Building the optimizer and schedule of a run needs no timm (it costs ~1.5 s of start-up)."""
    import subprocess
    import sys

    code = (
        "import sys; from torch import nn; from losslab.train import TrainConfig; "
        "from losslab.train.optim import build_optimizer, build_scheduler; "
        "cfg = TrainConfig(); build_scheduler(cfg, build_optimizer(cfg, nn.Linear(2, 2))); "
        "print('timm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
