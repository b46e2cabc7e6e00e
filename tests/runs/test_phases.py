"""A task with two optimizers (``phases()``, :class:`losslab.runs.task.Phase`) in the one loop: the phases run in
order on each batch (checked against the same updates written out in float64), and a resume restores both
optimizers, the schedule and the task's own state, so a killed run ends bit-identical to an uninterrupted one.

The task: A fits y with SGD (momentum 0.9, lr halved each epoch by a per-epoch schedule); B fits A's prediction
*after* A's step with SGD (momentum 0.5, constant lr). Squared error, full batches, three batches per epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from losslab.runs.loop import LoopSettings, PlainLoop, run_loop
from losslab.runs.task import Phase, task_phases

LR_A, LR_B, MU_A, MU_B = 0.1, 0.05, 0.9, 0.5


class HalvingLR:
    """Per-epoch schedule: lr = lr0 · 0.5^epoch (``step(epoch)``, state = the epoch)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer, self.lr0, self.epoch = optimizer, optimizer.param_groups[0]["lr"], 0

    def step(self, epoch: int) -> None:
        self.epoch = epoch
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr0 * 0.5**epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]


class TwoStepTask:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.A, self.B = nn.Linear(3, 1, bias=False), nn.Linear(3, 1, bias=False)
        self.opt_a = torch.optim.SGD(self.A.parameters(), lr=LR_A, momentum=MU_A)
        self.opt_b = torch.optim.SGD(self.B.parameters(), lr=LR_B, momentum=MU_B)
        self.schedule_a = HalvingLR(self.opt_a)
        self.b_steps = 0  # task state beside the modules (checkpointed through state_dict)

    def modules(self) -> dict[str, nn.Module]:
        return {"A": self.A, "B": self.B}

    def phases(self) -> list[Phase]:
        return [
            Phase("A", self.opt_a, self.loss_a, schedule=self.schedule_a),
            Phase("B", self.opt_b, self.loss_b, after_step=self.count),
        ]

    def loss_a(self, batch: tuple[Tensor, Tensor], epoch: int, log: Any) -> Tensor:
        x, y = batch
        loss = (self.A(x).squeeze(-1) - y).square().mean()
        log("loss_a", loss.detach())
        return loss

    def loss_b(self, batch: tuple[Tensor, Tensor], epoch: int, log: Any) -> Tensor:
        x, _ = batch
        loss = (self.B(x) - self.A(x).detach()).square().mean()
        log("loss_b", loss.detach())
        return loss

    def count(self) -> None:
        self.b_steps += 1

    def state_dict(self) -> dict[str, int]:
        return {"b_steps": self.b_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.b_steps = state["b_steps"]

    def attach(self) -> None: ...
    def detach(self) -> None: ...
    def start_epoch(self, epoch: int) -> None: ...

    def prepare(self, batch: Any) -> Any:
        return batch

    def batch_size(self, batch: tuple[Tensor, Tensor]) -> int:
        return int(batch[1].shape[0])

    def take_nonfinite(self) -> None:
        return None


def _data() -> SimpleNamespace:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 3, generator=gen), torch.randn(24, generator=gen)
    return SimpleNamespace(train=[(x[i : i + 8], y[i : i + 8]) for i in range(0, 24, 8)], val=None, test=None)


def _settings(run_dir: Path, epochs: int, resume: Path | None = None) -> LoopSettings:
    run_dir.mkdir(parents=True, exist_ok=True)
    return LoopSettings(run_dir=run_dir, epochs=epochs, device=torch.device("cpu"), resume_ckpt=resume, progress=False)


def _reference(epochs: int) -> tuple[Tensor, Tensor]:
    """The same updates in float64: per batch A's momentum-SGD step on its squared error, then B's on A's new output."""
    task = TwoStepTask()
    a, b = task.A.weight.detach().double().clone(), task.B.weight.detach().double().clone()
    va, vb = torch.zeros_like(a), torch.zeros_like(b)
    for epoch in range(epochs):
        for x, y in _data().train:
            x, y = x.double(), y.double()
            grad_a = 2 * ((x @ a.T).squeeze(-1) - y) @ x / len(y)
            va = MU_A * va + grad_a
            a = a - LR_A * 0.5**epoch * va
            grad_b = 2 * (x @ b.T - x @ a.T).T @ x / len(y)
            vb = MU_B * vb + grad_b
            b = b - LR_B * vb
    return a, b


def test_phases_run_in_order_and_match_the_float64_updates(tmp_path: Path) -> None:
    task = TwoStepTask()
    outcome = run_loop(task, _data(), _settings(tmp_path / "run", 3))
    a, b = _reference(3)
    torch.testing.assert_close(task.A.weight.detach().double(), a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(task.B.weight.detach().double(), b, rtol=1e-5, atol=1e-6)
    assert task.b_steps == 9 and [row["lr"] for row in outcome.rows] == [LR_A, LR_A / 2, LR_A / 4]
    assert {"loss_a", "loss_b"} <= set(outcome.rows[0])


def test_the_single_phase_of_a_task_without_phases_is_its_training_loss() -> None:
    class Single:
        def optimizer_and_schedule(self) -> tuple[str, str]:
            return "opt", "sched"

        def training_loss(self, batch: Any, epoch: int, log: Any) -> None: ...
        def gradient_terms(self, epoch: int, log: Any) -> None: ...

    task = Single()
    (phase,) = task_phases(task)
    assert (phase.optimizer, phase.schedule) == ("opt", "sched") and phase.loss == task.training_loss
    assert phase.gradient_terms == task.gradient_terms and phase.after_step is None


def test_a_resume_restores_both_optimizers_the_schedule_and_the_task_state(tmp_path: Path) -> None:
    straight = TwoStepTask()
    whole = run_loop(straight, _data(), _settings(tmp_path / "straight", 3))
    run_loop(TwoStepTask(), _data(), _settings(tmp_path / "cut", 2))  # killed after epoch 2's checkpoint
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert len(saved["optimizer_states"]) == 2 and saved["lr_schedulers"] == [{"epoch": 2}, None]
    assert saved["task"] == {"b_steps": 6}

    fresh = TwoStepTask()
    loop = PlainLoop(fresh, _data(), _settings(tmp_path / "cut", 3, resume=ckpt))
    loop.resume()
    for phase, state in zip(loop.phases, saved["optimizer_states"], strict=True):
        buffers = [s["momentum_buffer"] for s in phase.optimizer.state_dict()["state"].values()]
        assert buffers and all(
            torch.equal(got, s["momentum_buffer"]) for got, s in zip(buffers, state["state"].values())
        )
    assert fresh.opt_a.param_groups[0]["lr"] == LR_A / 4 and fresh.b_steps == 6  # epoch 2's rate, the counter

    resumed = run_loop(TwoStepTask(), _data(), _settings(tmp_path / "cut", 3, resume=ckpt))
    a, b = (
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
        for d in (tmp_path / "straight", tmp_path / "cut")
    )
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for sa, sb in zip(opt_a["state"].values(), opt_b["state"].values(), strict=True):
            assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["task"] == b["task"] == {"b_steps": 9}
    assert resumed.rows == whole.rows == json.loads((tmp_path / "cut" / "history.json").read_text())
