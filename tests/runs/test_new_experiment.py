"""A new experiment is a task plus a config (issue 18, "Done means"): this file defines one, a linear least-squares
regression trained by full-batch gradient descent, and nothing else; ``losslab.runs.loop.run_experiment`` gives it
the run folder, resume, history, safe loading and progress.

The oracle: full-batch gradient descent on (1/n)·||Xw + b − y||² is w ← w − lr·(2/n)·Xᵀ(Xw + b − y), run here in
float64 for the same number of steps.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from losslab.errors import LosslabError
from losslab.runs import RunSpec
from losslab.runs.loop import LoopSettings, run_experiment


# ---------------------------------------------------------------------------------------------- the experiment
@dataclass
class RegressionConfig:
    lr: float = 0.1
    epochs: int = 6
    seed: int = 0


class ConstantLR:
    """A per-epoch schedule that keeps the rate (the loop's contract: step(epoch), state_dict, load_state_dict)."""

    def step(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        pass


class RegressionTask:
    def __init__(self, cfg: RegressionConfig) -> None:
        torch.manual_seed(cfg.seed)
        self.model = nn.Linear(3, 1)
        self.cfg = cfg
        self.bad: Tensor | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizer_and_schedule(self) -> tuple[torch.optim.Optimizer, ConstantLR]:
        return torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr), ConstantLR()

    def attach(self) -> None: ...
    def detach(self) -> None: ...
    def start_epoch(self, epoch: int) -> None: ...

    def prepare(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return batch

    def batch_size(self, batch: tuple[Tensor, Tensor]) -> int:
        return int(batch[0].shape[0])

    def training_loss(self, batch: tuple[Tensor, Tensor], epoch: int, log) -> Tensor:
        x, y = batch
        loss = (self.model(x).squeeze(-1) - y).square().mean()
        log("train/loss", loss.detach())
        nonfinite = ~torch.isfinite(loss.detach())
        self.bad = nonfinite if self.bad is None else self.bad | nonfinite
        return loss

    def gradient_terms(self, epoch: int, log) -> None: ...

    def take_nonfinite(self) -> Tensor | None:
        bad, self.bad = self.bad, None
        return bad

    def eval_tally(self, batch: tuple[Tensor, Tensor], stage: str, log) -> Tensor:
        x, y = batch
        err = (self.model(x).squeeze(-1) - y).double()
        return torch.stack([err.square().sum(), torch.tensor(float(y.numel()), dtype=torch.float64)])

    def tally_metrics(self, stage: str, tally: Tensor) -> dict[str, float]:
        return {f"{stage}/mse": float(tally[0] / tally[1])}

    def validation_statistics(self, lr: float) -> dict[str, float]:
        return {}


# ---------------------------------------------------------------------------------------------- the harness
class Data:
    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(40, 3, generator=gen)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.1 * torch.randn(40, generator=gen)
        self.train = [(self.x, self.y)]  # one full batch per epoch
        self.val = [(self.x[:20], self.y[:20]), (self.x[20:], self.y[20:])]
        self.test = None


class Stop(Exception):
    """Raised by a hook after an epoch's checkpoints: a kill between two epochs."""


class KillAfter:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def after_checkpoints(self, loop, epoch: int) -> None:
        if epoch == self.epoch:
            raise Stop


def run(tmp: Path, cfg: RegressionConfig, resume: Path | None = None, hooks=(), progress="off"):
    spec = RunSpec(out_dir=tmp, run_name="reg", resume=resume, config=asdict(cfg), match_keys=("seed",))
    settings = LoopSettings(
        run_dir=tmp,
        epochs=cfg.epochs,
        device=torch.device("cpu"),
        score="val/mse",
        score_mode="min",
        hyper_parameters={"config": asdict(cfg)},
        progress=progress,
    )
    return run_experiment(spec, RegressionTask(cfg), Data(), settings, hooks)


def gd_reference(cfg: RegressionConfig, data: Data) -> tuple[Tensor, Tensor]:
    torch.manual_seed(cfg.seed)
    init = nn.Linear(3, 1)
    w, b = init.weight.detach().double().reshape(-1), init.bias.detach().double()
    x, y = data.x.double(), data.y.double()
    for _ in range(cfg.epochs):
        r = x @ w + b - y
        w, b = w - cfg.lr * 2 / len(y) * (x.T @ r), b - cfg.lr * 2 / len(y) * r.sum()
    return w, b


# ---------------------------------------------------------------------------------------------- the tests
def test_a_task_and_a_config_get_the_run_folder_and_train_as_the_float64_reference(tmp_path: Path) -> None:
    cfg = RegressionConfig()
    outcome, folder = run(tmp_path, cfg)
    for name in (".losslab-run", "config.yaml", "history.json", "metrics.csv", "checkpoints/last.ckpt", "result.json"):
        assert (folder / name).is_file(), name
    w, b = gd_reference(cfg, Data())
    model = torch.load(folder / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    torch.testing.assert_close(model["model.weight"].double().reshape(-1), w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model["model.bias"].double(), b, rtol=1e-5, atol=1e-6)
    rows = json.loads((folder / "history.json").read_text())
    assert [r["epoch"] for r in rows] == list(range(cfg.epochs))
    mses = [r["val/mse"] for r in rows]
    assert outcome.best_val_acc == min(mses) and mses[-1] < mses[0]  # best.ckpt follows the smallest val/mse
    assert json.loads((folder / "result.json").read_text())["best_score"] == {"val/mse": min(mses)}


def test_a_killed_run_resumes_bit_identically(tmp_path: Path) -> None:
    cfg = RegressionConfig()
    _, straight = run(tmp_path / "a", cfg)
    with pytest.raises(Stop):
        run(tmp_path / "b", cfg, hooks=[KillAfter(2)])
    killed = tmp_path / "b" / "reg"
    assert not (killed / "result.json").exists()
    _, resumed = run(tmp_path / "b", cfg, resume=killed)
    a = torch.load(straight / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows_a = json.loads((straight / "history.json").read_text())
    rows_b = json.loads((resumed / "history.json").read_text())
    drop = {"seconds", "time"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows_b
    ]


def test_a_resume_with_another_seed_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(Stop):
        run(tmp_path, RegressionConfig(), hooks=[KillAfter(0)])
    before = (tmp_path / "reg" / "checkpoints/last.ckpt").read_bytes()
    with pytest.raises(LosslabError, match="seed"):
        run(tmp_path, RegressionConfig(seed=1), resume=tmp_path / "reg")
    assert (tmp_path / "reg" / "checkpoints/last.ckpt").read_bytes() == before


class Payload:
    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def test_a_pickled_payload_as_checkpoint_is_refused_and_never_runs(tmp_path: Path) -> None:
    with pytest.raises(Stop):
        run(tmp_path, RegressionConfig(), hooks=[KillAfter(0)])
    marker = tmp_path / "code-ran"
    payload = Payload()
    payload.marker = str(marker)
    (tmp_path / "reg" / "checkpoints/last.ckpt").write_bytes(pickle.dumps({"state_dict": payload}))
    with pytest.raises(LosslabError):
        run(tmp_path, RegressionConfig(), resume=tmp_path / "reg")
    assert not marker.exists()


def test_progress_lines_go_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(tmp_path, RegressionConfig(epochs=2), progress="lines")
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err
