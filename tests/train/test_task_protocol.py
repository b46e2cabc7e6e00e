"""The plain loop runs a task protocol (``losslab.runs.task.Task``): the classifier task implements it, the loop
uses nothing of the task beyond it, and the loop's evaluation and checkpoint state work for a task that is not a
classifier (a regression task whose tally is a squared-error sum, checked against a float64 reference)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import torch
from torch import Tensor, nn

from losslab.runs import loop
from losslab.runs.loop import Precision, evaluate, load_task_state, task_state
from losslab.runs.task import Task
from losslab.train import TrainConfig
from losslab.train.task import ClassifierTask

PROTOCOL = {name for name in vars(Task) if not name.startswith("_")}


def test_the_classifier_task_implements_the_protocol() -> None:
    task = ClassifierTask(TrainConfig(model="mlp"), nn.Linear(4, 3), nn.CrossEntropyLoss())
    assert isinstance(task, Task)
    assert set(task.modules()) == {"model", "objective"}
    assert task.batch_size((torch.zeros(5, 4), torch.zeros(5, dtype=torch.long))) == 5


def test_the_plain_loop_uses_only_the_protocol() -> None:
    """Every attribute the loop reads from ``task`` / ``self.task`` is a member of :class:`Task`."""
    tree = ast.parse(Path(inspect.getfile(loop)).read_text())
    used = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        is_task = isinstance(owner, ast.Name) and owner.id == "task"
        is_self_task = isinstance(owner, ast.Attribute) and owner.attr == "task"
        if is_task or is_self_task:
            used.add(node.attr)
    assert used and used <= PROTOCOL, sorted(used - PROTOCOL)


class RegressionTask:
    """Least squares with a linear model: tally = (sum of squared errors, count)."""

    def __init__(self) -> None:
        self.model = nn.Linear(3, 1)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def prepare(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return batch

    def batch_size(self, batch: tuple[Tensor, Tensor]) -> int:
        return int(batch[0].shape[0])

    def eval_tally(self, batch: tuple[Tensor, Tensor], stage: str, log) -> Tensor:
        x, y = batch
        err = (self.model(x).squeeze(-1) - y).to(torch.float64)
        log(f"{stage}/max_abs_err", err.abs().max())
        return torch.stack([err.square().sum(), torch.tensor(float(y.numel()), dtype=torch.float64)])

    def tally_metrics(self, stage: str, tally: Tensor) -> dict[str, float]:
        sq, n = tally.tolist()
        return {f"{stage}/mse": sq / n, f"{stage}/n": n}


def test_evaluation_and_state_work_for_a_task_that_is_not_a_classifier() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, generator=gen), torch.randn(50, generator=gen)
    task = RegressionTask()
    task.model.train()
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 50, 16)]  # batches of 16, 16, 16, 2
    out = evaluate(task, loader, "val", torch.device("cpu"), Precision("32", torch.device("cpu")))
    w, b = task.model.weight.detach().double(), task.model.bias.detach().double()
    reference = ((x.double() @ w.T).squeeze(-1) + b - y.double()).square().mean().item()
    assert abs(out["val/mse"] - reference) <= 1e-6 * reference and out["val/n"] == 50  # float32 forward
    assert "val/max_abs_err" in out and task.model.training  # the module's mode is restored

    state = task_state(task)
    assert set(state) == {"model.weight", "model.bias"}
    other = RegressionTask()
    load_task_state(other, state)
    assert torch.equal(other.model.weight, task.model.weight) and torch.equal(other.model.bias, task.model.bias)
