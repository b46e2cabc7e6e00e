"""Training with the device pipeline: --val-every, resume continuing the permutation, divergence, compile checks,
pipeline parity on digits, DDP test metrics equal to a single-process evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from losslab.cli import main
from losslab.errors import ConfigError
from losslab.train import TrainConfig, evaluate_model, fit, load_run
from losslab.train.classifier import TrainingDivergedError


def quick(tmp_path: Path, **kw: object) -> TrainConfig:
    values = {"epochs": 1, "out_dir": tmp_path, "run_name": "run", "progress": False, "model": "mlp", **kw}
    return TrainConfig.build(values)


class FirstBatches(pl.Callback):
    """Records the first training batch (images, labels) of every epoch."""

    def __init__(self) -> None:
        self.batches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.batches[trainer.current_epoch] = (batch[0].clone(), batch[1].clone())


class StopAt(pl.Callback):
    """Simulates a crash at the start of epoch ``epoch`` (after the previous epoch's checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_val_every_validates_the_last_epoch(tmp_path: Path) -> None:
    result = fit(quick(tmp_path, epochs=5, val_every=2, loader="device"))
    assert [row["epoch"] for row in result.epochs] == [0, 1, 2, 3, 4]
    csv_rows = (result.run_dir / "metrics.csv").read_text().splitlines()
    header = csv_rows[0].split(",")
    col, epoch_col = header.index("val/acc"), header.index("epoch")
    val_epochs = sorted({int(r.split(",")[epoch_col]) for r in csv_rows[1:] if r.split(",")[col]})
    assert val_epochs == [1, 3, 4]  # every 2nd epoch and the last one
    assert torch.load(result.last_ckpt, weights_only=False)["epoch"] == 4
    stored = json.loads((result.run_dir / "result.json").read_text())
    assert stored["loader"] == "device" and stored["train_images_per_s"] > 0 and stored["first_step_s"] > 0
    assert stored["threads"]["torch_threads"] == torch.get_num_threads()


def test_resume_continues_the_permutation(tmp_path: Path) -> None:
    whole = FirstBatches()
    fit(quick(tmp_path, epochs=3, run_name="whole", loader="device", cutout=2), callbacks=[whole])
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(quick(tmp_path, epochs=3, run_name="cut", loader="device", cutout=2), callbacks=[StopAt(2)])
    resumed = FirstBatches()
    fit(quick(tmp_path, epochs=3, resume=tmp_path / "cut", loader="device", cutout=2), callbacks=[resumed])
    assert list(resumed.batches) == [2]
    assert torch.equal(resumed.batches[2][1], whole.batches[2][1])  # same permutation
    assert torch.equal(resumed.batches[2][0], whole.batches[2][0])  # same augmentation draws
    assert not torch.equal(whole.batches[1][1], whole.batches[2][1])


class Poison(pl.Callback):
    """Sets a weight to NaN in the middle of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 3:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingDivergedError, match=r"epoch 1.*last good checkpoint"):
        fit(quick(tmp_path, epochs=3), callbacks=[Poison(1)])
    run = tmp_path / "run"
    assert not (run / "result.json").exists()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 0
    assert all(bool(torch.isfinite(v).all()) for v in last["state_dict"].values() if v.is_floating_point())
    assert math.isfinite(load_run(run).model(torch.zeros(1, 1, 8, 8)).sum().item())


def test_divergence_exits_nonzero_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--model", "mlp", "--epochs", "1", "--lr", "1e30", "--out-dir", str(tmp_path), "--no-progress"]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "training diverged" in capsys.readouterr().err


def test_compile_refuses_double_backward(tmp_path: Path) -> None:
    cfg = quick(tmp_path, compile=True, regularizer="lp_grad", lmbda=0.1, model="small_cnn")
    with pytest.raises(ConfigError, match=r"lp_grad.*double backward"):
        fit(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_compile_trains_like_eager(tmp_path: Path) -> None:
    eager = fit(quick(tmp_path, model="small_cnn", run_name="eager"))
    compiled = fit(quick(tmp_path, model="small_cnn", run_name="compiled", compile=True))
    assert compiled.to_dict()["compiled"] and not eager.to_dict()["compiled"]
    assert compiled.test_ce == pytest.approx(eager.test_ce, rel=1e-3)  # same weights up to kernel rounding
    assert load_run(compiled.run_dir).model.state_dict().keys() == load_run(eager.run_dir).model.state_dict().keys()


@pytest.mark.slow
def test_device_pipeline_matches_worker_accuracy(tmp_path: Path) -> None:
    acc: dict[str, list[float]] = {"device": [], "workers": []}
    for loader in acc:
        for seed in (0, 1, 2):
            name = f"{loader}{seed}"
            cfg = quick(tmp_path, epochs=6, loader=loader, seed=seed, run_name=name, model="small_cnn")
            acc[loader].append(fit(cfg).test_acc)
    spread = max(max(v) - min(v) for v in acc.values())
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    assert mean["device"] > 70 and abs(mean["device"] - mean["workers"]) <= max(spread, 2.0), acc


def _ddp_test(module: Any, loader: Any) -> dict[str, float]:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        enable_checkpointing=False,
    )
    return trainer.test(module, loader, verbose=False)[0]


@pytest.mark.slow
def test_ddp_test_metrics_equal_single_process(tmp_path: Path) -> None:
    from losslab.train.build import build_objective, make_loaders
    from losslab.train.classifier import ClassifierModule

    cfg = quick(tmp_path, val_fraction=0.1)
    torch.manual_seed(0)
    run = fit(cfg)
    model = load_run(run.run_dir).model
    for kind in ("workers", "device"):
        data = make_loaders(cfg, kind=kind, eval_batch_size=100)  # 360 test images: shards of 180, batches 100+80
        ddp = _ddp_test(ClassifierModule(cfg, model, build_objective(cfg)), data.test)  # loader not yet decoded
        single = evaluate_model(model, data.test)
        assert ddp["test/n"] == 360
        # Lightning returns logged values as float32: 1e-4 of a percentage is its resolution, one sample is 0.28.
        assert ddp["test/acc"] == pytest.approx(single["top1"], abs=1e-4)
        assert ddp["test/top5"] == pytest.approx(single["top5"], abs=1e-4)
        assert ddp["test/ce"] == pytest.approx(single["ce"], rel=1e-5)
