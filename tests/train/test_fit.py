"""End-to-end classifier training on the bundled digits data: run folder, CLI, errors, regularizers, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from losslab.cli import cli, main
from losslab.errors import ConfigError, LosslabError
from losslab.train import TrainConfig, fit, load_run


def quick(tmp_path: Path, **kw: object) -> TrainConfig:
    """A one-epoch digits run in ``tmp_path``."""
    values = {"epochs": 1, "out_dir": tmp_path, "run_name": "run", "progress": False, **kw}
    return TrainConfig.build(values)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(
        cli, ["train", "--epochs", "2", "--out-dir", str(out), "--run-name", "a", "--no-progress", "--logit-stats"]
    )
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    return out / "a"


def test_run_folder_contents(one_epoch_run: Path) -> None:
    for name in (
        "config.yaml",
        "metrics.csv",
        "history.json",
        "result.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
    ):
        assert (one_epoch_run / name).is_file(), name
    stored = yaml.safe_load((one_epoch_run / "config.yaml").read_text())
    assert stored["loss"] == "root" and stored["epochs"] == 2
    history = json.loads((one_epoch_run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]
    assert {"train/loss", "val/acc", "val/ce", "lr", "val_logits/norm", "val_logits/var"} <= set(history[0])
    result = json.loads((one_epoch_run / "result.json").read_text())
    assert result["test_acc"] > 30.0  # it learned: chance is 10 % (the accuracy claim is test_default_run)


def test_evaluate_matches_result(one_epoch_run: Path) -> None:
    out = CliRunner().invoke(cli, ["evaluate", str(one_epoch_run), "--json"])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.output)
    stored = json.loads((one_epoch_run / "result.json").read_text())
    assert metrics["top1"] == pytest.approx(stored["test_acc"], abs=1e-4)
    assert metrics["ce"] == pytest.approx(stored["test_ce"], rel=1e-4)
    assert metrics["n"] == 360


def test_load_run_rejects_foreign_checkpoint(one_epoch_run: Path, tmp_path: Path) -> None:
    import torch

    from losslab.io import save_torch_atomic

    ckpt = torch.load(one_epoch_run / "checkpoints" / "best.ckpt", weights_only=False)
    ckpt["hyper_parameters"]["config"]["model"] = "mlp"
    save_torch_atomic(tmp_path / "other.ckpt", ckpt)  # resealed: its checksum matches the edited content
    with pytest.raises(LosslabError, match="does not match its model"):
        load_run(tmp_path / "other.ckpt")


def test_finished_run_is_not_overwritten(one_epoch_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (one_epoch_run / "result.json").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out-dir", str(one_epoch_run.parent), "--run-name", "a", "--epochs", "1"])
    assert exit_info.value.code == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (one_epoch_run / "result.json").read_text() == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--loss", "cee"], "'cee' is not a loss here; choose one of: ce, focal"),
        (["--model", "resnet_nope"], "resnet_nope"),
        (["--dataset", "mnist2"], "mnist2"),
        (["--k", "-1"], "Invalid value for '--k': -1.0 is not in the range 0<x"),
        (["--lr", "-0.1"], "Invalid value for '--lr': -0.1 is not in the range x>0"),
        (["--regularizer", "l3norm", "--lmbda", "0.1"], "unknown regularizer 'l3norm'"),
        (["--optimizer", "lbfgs"], "lbfgs"),
    ],
)
def test_bad_input_fails_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out-dir", str(tmp_path), *args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert fragment in captured.err + captured.out
    assert not any(tmp_path.iterdir())  # nothing was started


def test_missing_logger_package_fails_before_work(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    with pytest.raises(ConfigError, match=r"logger='wandb' needs the 'wandb' package.*losslab\[loggers\]"):
        fit(quick(tmp_path, logger="wandb"))
    assert not any(tmp_path.iterdir())


def test_config_file_with_override(tmp_path: Path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("loss: focal\nfocal_gamma: 3\nepochs: 5\n")
    out = CliRunner().invoke(cli, ["train", "--config", str(file), "--epochs", "1", "--print-config"])
    assert out.exit_code == 0, out.output
    printed = yaml.safe_load(out.output)
    assert (printed["loss"], printed["focal_gamma"], printed["epochs"]) == ("focal", 3.0, 1)


def test_combined_protocol_logs_each_regularizer_separately(tmp_path: Path) -> None:
    """RegulQuant's combined protocol shape on digits: none, then VarianceNorm, then L2Grad(weights) + VN."""
    schedule = tmp_path / "phases.yaml"
    schedule.write_text(
        yaml.safe_dump(
            {
                "epochs": 3,
                "phases": [
                    {"start": 1, "end": 2, "regularizers": [{"name": "variance", "lam": 1.25}]},
                    {
                        "start": 2,
                        "end": 3,
                        "regularizers": [
                            {"name": "l2grad", "lam": 0.05, "activations": False},
                            {"name": "variance", "lam": 1.25},
                        ],
                    },
                ],
            }
        )
    )
    result = fit(quick(tmp_path, epochs=3, reg_schedule=schedule, save_preregularized=True, model="mlp"))
    rows = {row["epoch"]: row for row in result.epochs}
    assert not any(key.startswith("reg/") for key in rows[0])
    assert "reg/variance" in rows[1] and "reg/l2grad" not in rows[1]
    assert {"reg/variance", "reg/l2grad"} <= set(rows[2])
    assert rows[2]["reg/variance"] > 0 and rows[2]["reg/l2grad"] > 0
    assert (result.run_dir / "checkpoints" / "preregularized.ckpt").is_file()


def test_schedule_file_must_fit_the_run(tmp_path: Path) -> None:
    schedule = tmp_path / "phases.yaml"
    schedule.write_text("epochs: 110\nphases:\n  - {start: 70, regularizers: [{name: variance, lam: 1.25}]}\n")
    with pytest.raises(ConfigError, match="epochs=110"):
        fit(quick(tmp_path, epochs=2, reg_schedule=schedule))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_default_run_reaches_95_percent(tmp_path: Path) -> None:
    """`losslab train` with no arguments: rooted loss on digits, >= 95 % test accuracy (issue: the main job)."""
    result = fit(TrainConfig(out_dir=tmp_path, progress=False))
    assert result.config.loss == "root" and result.config.dataset == "digits"
    assert result.test_acc >= 95.0
