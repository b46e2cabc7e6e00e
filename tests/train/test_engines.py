"""The plain engine against the Lightning engine (same weights from the same seed), its resume, and the choice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from losslab.errors import ConfigError
from losslab.train import TrainConfig, fit
from losslab.train.engine import choose_engine, device_problem, lightning_needs

BASE = {
    "dataset": "digits",
    "model": "small_cnn",
    "epochs": 3,
    "batch_size": 64,
    "lr": 0.05,
    "scheduler": "cosine",
    "warmup_epochs": 1,
    "progress": False,
}


def _weights(run_dir: Path, name: str = "last.ckpt") -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


@pytest.mark.parametrize(
    "extra",
    [
        {"loss": "root", "regularizer": "lp_grad", "lmbda": 0.01, "reg_start_epoch": 1},
        {"loss": "ce", "gradient_clip": 0.5, "val_every": 2, "optimizer": "adamw", "weight_decay": 0.01},
        {"loss": "sgt", "model_ema": True, "model_ema_decay": 0.9, "mixup": 0.2, "label_smoothing": 0.1},
    ],
    ids=["lpgrad-phase", "clip-valevery-adamw", "ema-mixup-sgt"],
)
def test_plain_engine_trains_the_lightning_engines_weights(tmp_path: Path, extra: dict) -> None:
    """Same seed, same config: the two engines end with identical weights, validation and test metrics."""
    results = {}
    for engine in ("plain", "lightning"):
        cfg = TrainConfig(**BASE, **extra, engine=engine, out_dir=tmp_path, run_name=engine)
        results[engine] = fit(cfg)
    plain, light = results["plain"], results["lightning"]
    assert plain.speed["engine"] == "plain" and light.speed["engine"] == "lightning"
    a, b = _weights(plain.run_dir), _weights(light.run_dir)
    model_keys = sorted(k for k in b if k.startswith("model."))
    assert model_keys and sorted(k for k in a if k.startswith("model.")) == model_keys
    for key in model_keys:
        assert torch.equal(a[key], b[key]), key
    f32 = 1e-6  # Lightning's logged metrics are float32; the plain engine's are the float64 sums' ratio
    assert plain.test_acc == pytest.approx(light.test_acc, rel=f32)
    assert plain.test_ce == pytest.approx(light.test_ce, rel=f32)
    assert plain.best_val_acc == pytest.approx(light.best_val_acc, rel=f32)
    val_plain = {r["epoch"]: r["val/acc"] for r in plain.epochs if "val/acc" in r}
    val_light = {r["epoch"]: r["val/acc"] for r in light.epochs if "val/acc" in r}
    assert val_plain and {e: pytest.approx(v, rel=f32) for e, v in val_plain.items()} == {
        e: val_light[e] for e in val_plain
    }
    for row_p, row_l in zip(plain.epochs, light.epochs, strict=True):
        assert row_p["train/loss"] == pytest.approx(row_l["train/loss"], rel=1e-6)
        assert row_p["lr"] == pytest.approx(row_l["lr"], rel=f32)


@pytest.mark.parametrize("extra", [{}, {"model_ema": True, "model_ema_decay": 0.8}], ids=["plain", "ema"])
def test_plain_resume_continues_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: dict) -> None:
    """A plain run stopped after epoch 2 and resumed ends with the weights of the uninterrupted run (with EMA: the
    average and the raw weights both continue)."""
    from losslab.runs import loop

    cfg = {**BASE, "epochs": 4, "loss": "root", "engine": "plain", "out_dir": tmp_path, **extra}
    whole = fit(TrainConfig(**cfg, run_name="whole"))

    real_append = loop.History.append

    def stop_after_epoch_1(self, row, extra=()):  # the process dies once epoch 1 is written
        real_append(self, row, extra)
        if row and row["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.History, "append", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        fit(TrainConfig(**cfg, run_name="cut"))
    monkeypatch.setattr(loop.History, "append", real_append)
    cut = tmp_path / "cut"
    assert not (cut / "result.json").exists()
    assert [r["epoch"] for r in json.loads((cut / "history.json").read_text())] == [0, 1]
    resumed = fit(TrainConfig(**cfg, resume=cut))
    assert [r["epoch"] for r in resumed.epochs] == [0, 1, 2, 3]
    for name in ("last.ckpt", "best.ckpt"):
        a, b = _weights(whole.run_dir, name), _weights(cut, name)
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    if extra:
        raw = [
            torch.load(r / "checkpoints/last.ckpt", weights_only=True)["ema_raw_state_dict"]
            for r in (whole.run_dir, cut)
        ]
        assert all(torch.equal(raw[0][k], raw[1][k]) for k in raw[0])
    assert resumed.test_acc == whole.test_acc


def test_auto_picks_and_explains(tmp_path: Path) -> None:
    cfg = TrainConfig(**BASE)
    assert choose_engine(cfg, None, None) == ("plain", "one process on one device")
    engine, why = choose_engine(TrainConfig(**BASE, devices="2", accelerator="cpu"), None, None)
    assert engine == "lightning" and "2 devices" in why
    assert choose_engine(cfg, [object()], None)[0] == "lightning"
    assert lightning_needs(TrainConfig(**BASE, model_ema=True, mixup=0.2), None) == []
    needs = lightning_needs(TrainConfig(**BASE, strategy="ddp", logger="mlflow", normalize="norms.pt"), None)
    assert needs == ["strategy='ddp'", "logger='mlflow'"]
    with pytest.raises(ConfigError, match=r"engine='plain'.*logger='tensorboard'.*--engine lightning"):
        choose_engine(TrainConfig(**BASE, engine="plain", logger="tensorboard"), None, None)


def test_auto_resumes_with_the_engine_that_wrote_the_checkpoint(tmp_path: Path) -> None:
    light = fit(TrainConfig(**{**BASE, "epochs": 2}, engine="lightning", out_dir=tmp_path, run_name="light"))
    ckpt = light.run_dir / "checkpoints" / "last.ckpt"
    engine, why = choose_engine(TrainConfig(**BASE), None, ckpt)
    assert (engine, why) == ("lightning", "resuming a checkpoint the lightning engine wrote")
    engine, why = choose_engine(TrainConfig(**BASE, engine="plain"), None, ckpt)
    assert engine == "plain" and "written by the lightning engine" in why


class Killed(Exception):
    """The process dies after an epoch's row is written."""


@pytest.mark.parametrize(
    ("first", "second", "extra"),
    [
        ("plain", "lightning", {}),
        ("lightning", "plain", {}),
        ("plain", "lightning", {"model_ema": True}),
        ("lightning", "lightning", {"model_ema": True}),
        ("lightning", "plain", {"model_ema": True}),
    ],
    ids=["plain-then-lightning", "lightning-then-plain", "ema-plain-then-lightning", "ema-lightning", "ema-l-p"],
)
def test_a_checkpoint_resumes_in_the_other_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str, second: str, extra: dict
) -> None:
    """Killed after epoch 1 in one engine, resumed in the other: the weights (last and best), the history and the
    metrics.csv columns are those of the uninterrupted run, and the best score carries over."""
    from losslab.runs import history

    extra = {**extra, "model_ema_decay": 0.8} if extra else extra
    cfg = {**BASE, "epochs": 4, "loss": "root", "out_dir": tmp_path, **extra}
    whole = fit(TrainConfig(**cfg, engine=first, run_name="whole"))
    real_append = history.History.append

    def die_after_epoch_1(self, row, extra=()):
        real_append(self, row, extra)
        if row and row["epoch"] == 1:
            raise Killed

    monkeypatch.setattr(history.History, "append", die_after_epoch_1)
    with pytest.raises(Killed):
        fit(TrainConfig(**cfg, engine=first, run_name="cut"))
    monkeypatch.setattr(history.History, "append", real_append)
    cut = tmp_path / "cut"
    resumed = fit(TrainConfig(**cfg, engine=second, resume=cut))
    for name in ("last.ckpt", "best.ckpt"):
        a, b = _weights(whole.run_dir, name), _weights(cut, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = [json.loads((r / "history.json").read_text()) for r in (whole.run_dir, cut)]
    assert [r["epoch"] for r in rows[1]] == [0, 1, 2, 3]
    for key in ("train/loss", "val/acc", "lr", "step"):
        assert [r[key] for r in rows[0]] == pytest.approx([r[key] for r in rows[1]], rel=1e-6), key
    headers = [(r / "metrics.csv").read_text().splitlines()[0] for r in (whole.run_dir, cut)]
    assert headers[0] == headers[1]
    # the same counts; Lightning's logged metrics are float32
    assert resumed.best_val_acc == pytest.approx(whole.best_val_acc, rel=1e-7)
    assert resumed.test_acc == pytest.approx(whole.test_acc, rel=1e-7)


def test_plain_run_never_imports_lightning(tmp_path: Path) -> None:
    code = (
        "import sys; from losslab.train import TrainConfig, fit; "
        f"r = fit(TrainConfig(epochs=1, progress=False, out_dir={str(tmp_path)!r})); "
        "print(r.speed['engine'], 'lightning' in sys.modules, 'timm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["plain", "False", "False"]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_engines_agree_on_cuda(tmp_path: Path, precision: str) -> None:
    """On one GPU (deterministic algorithms on in both engines) the plain engine trains the Lightning engine's
    weights; with 16-mixed the plain checkpoint carries the gradient scaler's state for --resume."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    runs = {}
    for engine in ("plain", "lightning"):
        cfg = TrainConfig(
            **{**BASE, "model": "cifar_resnet20", "dataset": "fake", "loss": "root"},
            accelerator="gpu",
            devices="1",
            precision=precision,
            engine=engine,
            out_dir=tmp_path,
            run_name=engine,
        )
        runs[engine] = fit(cfg)
    a, b = _weights(runs["plain"].run_dir), _weights(runs["lightning"].run_dir)
    for key in (k for k in b if k.startswith("model.")):
        assert torch.equal(a[key].cpu(), b[key].cpu()), key
    plain_ckpt = torch.load(runs["plain"].run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (plain_ckpt["grad_scaler"] is not None) == (precision == "16-mixed")
    assert runs["plain"].speed["channels_last"] is True


def test_normalization_experiment_is_the_same_in_both_engines(tmp_path: Path) -> None:
    """FNL's §8 experiment: the recorded ||U V^T||_F of a Frobenius-decay run, and a run that follows them, are the
    same under both engines; the follower's last step ends at the recorded norms."""
    from losslab.layers.factor_norms import lowrank_layers, product_frobenius_norms
    from losslab.train import load_run

    factorized = {**BASE, "model": "mlp", "rank_scale": 0.5}
    records = {}
    for engine in ("plain", "lightning"):
        path = tmp_path / f"{engine}.pt"
        cfg = TrainConfig(**factorized, frobenius_decay=True, record_frob_norms=path, engine=engine)
        fit(cfg.model_copy(update={"out_dir": tmp_path, "run_name": f"fd-{engine}"}))
        records[engine] = torch.load(path, weights_only=True)
    assert records["plain"].shape[:2] == (3, 20) and torch.equal(records["plain"], records["lightning"])
    followed = {}
    for engine in ("plain", "lightning"):
        cfg = TrainConfig(**factorized, weight_decay=0.0, normalize=tmp_path / "plain.pt", engine=engine)
        followed[engine] = fit(cfg.model_copy(update={"out_dir": tmp_path, "run_name": f"norm-{engine}"}))
    for row_p, row_l in zip(followed["plain"].epochs, followed["lightning"].epochs, strict=True):
        factor_keys = [k for k in row_l if k.startswith("factors/")]
        assert "factors/lr_over_frob" in factor_keys  # per-epoch statistics use the epoch's own lr in both
        assert {k: row_p[k] for k in factor_keys} == {k: pytest.approx(row_l[k], rel=1e-6) for k in factor_keys}
    a, b = _weights(followed["plain"].run_dir), _weights(followed["lightning"].run_dir)
    assert all(torch.equal(a[k], b[k]) for k in b if k.startswith("model."))
    model = load_run(followed["plain"].run_dir / "checkpoints" / "last.ckpt").model
    last_recorded = records["plain"][-1, -1]  # (layers,) after the last step of the last epoch
    torch.testing.assert_close(product_frobenius_norms(lowrank_layers(model)), last_recorded, rtol=1e-6, atol=0)


def test_plain_engine_stops_a_diverged_run_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN loss in epoch 1 stops the plain run with TrainingDivergedError before anything of epoch 1 is written;
    last.ckpt stays the one of epoch 0 and the run can be resumed from it."""
    from losslab.train.task import ClassifierTask, TrainingDivergedError

    real = ClassifierTask.training_loss

    def nan_in_epoch_1(self, batch, epoch, log):
        total = real(self, batch, epoch, log)
        return total * float("nan") if epoch == 1 else total

    monkeypatch.setattr(ClassifierTask, "training_loss", nan_in_epoch_1)
    cfg = TrainConfig(**{**BASE, "epochs": 3, "val_every": 2}, engine="plain", out_dir=tmp_path, run_name="nan")
    with pytest.raises(TrainingDivergedError, match="epoch 1"):
        fit(cfg)
    run = tmp_path / "nan"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and not (run / "result.json").exists()
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [0]
    monkeypatch.setattr(ClassifierTask, "training_loss", real)
    resumed = fit(TrainConfig(**{**BASE, "epochs": 3, "val_every": 2}, engine="plain", resume=run))
    assert [r["epoch"] for r in resumed.epochs] == [0, 1, 2]
    assert [r["epoch"] for r in resumed.epochs if "val/acc" in r] == [1, 2]  # every 2nd epoch and the last


def test_a_resumed_recording_keeps_the_epochs_before_the_kill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--record-frob-norms with --resume: the record equals the uninterrupted run's (it used to restart)."""
    from losslab.runs import loop

    cfg = {**BASE, "model": "mlp", "rank_scale": 0.5, "frobenius_decay": True, "epochs": 4, "engine": "plain"}
    fit(TrainConfig(**cfg, record_frob_norms=tmp_path / "whole.pt", out_dir=tmp_path, run_name="whole"))
    real_append = loop.History.append

    def die_after_epoch_1_row(self, row, extra=()):
        real_append(self, row, extra)
        if row and row["epoch"] == 1:
            raise KeyboardInterrupt  # after the row, before epoch 1's checkpoint: the resume redoes epoch 1

    monkeypatch.setattr(loop.History, "append", die_after_epoch_1_row)
    cut = TrainConfig(**cfg, record_frob_norms=tmp_path / "cut.pt", out_dir=tmp_path, run_name="cut")
    with pytest.raises(KeyboardInterrupt):
        fit(cut)
    monkeypatch.setattr(loop.History, "append", real_append)
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    resumed = fit(cut.model_copy(update={"resume": tmp_path / "cut"}))
    assert [r["epoch"] for r in resumed.epochs] == [0, 1, 2, 3]
    whole, again = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("whole", "cut"))
    assert whole.shape[0] == 4 and torch.equal(whole, again)


def test_plain_engine_refuses_bad_hardware_options_before_any_folder(tmp_path: Path) -> None:
    """Accelerators and device lists the plain engine does not know go to Lightning's checks; a precision the
    device cannot run is refused by the plain engine; both before the run folder exists."""
    assert device_problem(TrainConfig(**BASE, accelerator="tpu")) == "accelerator='tpu'"
    assert device_problem(TrainConfig(**BASE, accelerator="cpu", devices="0,")).startswith("devices='0,' lists GPU")
    assert device_problem(TrainConfig(**BASE, accelerator="cpu", devices="-1")) == "devices='-1' is not one device"
    assert device_problem(TrainConfig(**BASE, accelerator="cpu", devices="1")) is None
    for bad in ({"accelerator": "foo"}, {"accelerator": "cpu", "devices": "0,"}, {"precision": "16-mixed"}):
        cfg = TrainConfig(**BASE, accelerator=bad.get("accelerator", "cpu"), out_dir=tmp_path, run_name="hw")
        with pytest.raises(ConfigError):
            fit(cfg.model_copy(update=bad))
        assert not (tmp_path / "hw").exists(), bad


def test_a_plain_checkpoint_gets_the_loop_counters_lightning_writes(tmp_path: Path) -> None:
    """The counters derived for a plain checkpoint equal those of a Lightning checkpoint at the same epoch, and
    Lightning's best-checkpoint callback takes the plain checkpoint's best score."""
    from losslab.train.checkpoint_io import AtomicCheckpointIO, RunCheckpoint, lightning_loops

    light = fit(TrainConfig(**BASE, engine="lightning", out_dir=tmp_path, run_name="light"))
    written = torch.load(light.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    derived = lightning_loops(int(written["epoch"]), int(written["global_step"]))["fit_loop"]
    fit_loop = written["loops"]["fit_loop"]
    for key in (
        "epoch_progress",
        "epoch_loop.state_dict",
        "epoch_loop.batch_progress",
        "epoch_loop.scheduler_progress",
        "epoch_loop.automatic_optimization.optim_progress",
    ):
        assert derived[key] == fit_loop[key], key
    plain = fit(TrainConfig(**BASE, engine="plain", out_dir=tmp_path, run_name="plain"))
    loaded = AtomicCheckpointIO().load_checkpoint(plain.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert "loops" in loaded and "pytorch-lightning_version" in loaded and loaded["callbacks"] == {}
    callback = RunCheckpoint(dirpath=plain.run_dir / "checkpoints", monitor="val/acc", mode="max")
    callback.on_load_checkpoint(None, None, loaded)
    assert float(callback.best_model_score) == pytest.approx(plain.best_val_acc, rel=1e-7)
    assert Path(callback.best_model_path) == plain.run_dir / "checkpoints" / "best.ckpt"
