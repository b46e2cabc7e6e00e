"""TrainConfig validation: bad keys and values fail before any work, naming the key and the allowed range."""

from __future__ import annotations

from pathlib import Path

import pytest

from losslab.errors import ConfigError
from losslab.train import TrainConfig


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"k": 0}, "k=0: must be > 0"),
        ({"m": -1.0}, "m=-1.0: must be > 0"),
        ({"lr": -0.1}, "lr=-0.1: must be > 0"),
        ({"weight_decay": -1e-4}, "weight_decay=-0.0001: must be >= 0"),
        ({"sgt_alpha": 1.5}, "sgt_alpha=1.5: must be in (0, 1]"),
        ({"focal_gamma": 0.5}, "focal_gamma=0.5: must be 0 or >= 1"),
        ({"p": 0.5}, "p=0.5: must be >= 1"),
        ({"val_fraction": 1.0}, "val_fraction=1.0: must be in (0, 1)"),
        ({"rank_scale": 0.0}, "rank_scale=0.0: must be > 0"),
        ({"lmbda": -1.0}, "lmbda=-1.0: must be >= 0"),
        ({"milestones": [50, 25]}, "strictly increasing"),
        ({"optimizer": "lbfgs"}, "optimizer='lbfgs'"),
        ({"rank_scale": 0.5, "target_ratio": 0.1}, "either rank_scale or target_ratio"),
        ({"warmup_epochs": 5, "epochs": 5}, "warmup_epochs=5 must be below epochs=5"),
        ({"regularizer": "variance", "reg_start_epoch": 9, "epochs": 5}, "reg_start_epoch=9"),
        ({"cooldown_epochs": 2, "scheduler": "step"}, "needs scheduler='cosine'"),
    ],
)
def test_bad_values_name_the_key(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.build(values)
    assert fragment in str(info.value)


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rte'.*|unknown key 'lr_rate'.*"):
        TrainConfig.build({"lr_rate": 0.1})
    with pytest.raises(ConfigError, match="did you mean label_smoothing"):
        TrainConfig.build({"label_smoothng": 0.1})


def test_yaml_then_overrides(tmp_path: Path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("loss: focal\nfocal_gamma: 3\nlr: 0.2\nmilestones: [5, 8]\n")
    cfg = TrainConfig.from_yaml(file, overrides={"lr": 0.01})
    assert (cfg.loss, cfg.focal_gamma, cfg.lr, cfg.milestones) == ("focal", 3.0, 0.01, [5, 8])


def test_yaml_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        TrainConfig.from_yaml(bad)
