"""The CSV logger's files in a run folder are written atomically: a write that fails half-way keeps the old file."""

from __future__ import annotations

import errno
from pathlib import Path

import lightning.pytorch.core.saving as saving
import lightning.pytorch.loggers.csv_logs as csv_logs
import pytest
import yaml

from losslab.errors import OutputError
from losslab.train.checkpoint_io import KeepingCSVLogger


def _logger(run_dir: Path) -> KeepingCSVLogger:
    return KeepingCSVLogger(save_dir=run_dir, name="", version="")


@pytest.mark.parametrize(
    ("error", "raised"),
    [(OSError(errno.ENOSPC, "No space left on device"), OutputError), (RuntimeError("killed mid-write"), RuntimeError)],
)
def test_a_failing_hparams_write_keeps_the_previous_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, raised: type[Exception]
) -> None:
    logger = _logger(tmp_path)
    logger.log_hyperparams({"lr": 0.1, "model": "mlp"})
    hparams = tmp_path / "hparams.yaml"
    before = hparams.read_bytes()
    assert yaml.safe_load(before) == {"lr": 0.1, "model": "mlp"}

    def half_write(path: str | Path, params: dict[str, object], use_omegaconf: bool = True) -> None:
        with open(path, "w") as fh:  # the start of the new YAML, then the failure
            fh.write("lr: 0.")
        raise error

    for module in (saving, csv_logs):  # wherever the writer takes it from (Lightning's writer: csv_logs)
        monkeypatch.setattr(module, "save_hparams_to_yaml", half_write)
    with pytest.raises(raised):
        logger.log_hyperparams({"lr": 0.2, "model": "mlp"})
    assert hparams.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hparams.yaml"]  # no .hparams.yaml.*.tmp left


def test_hparams_yaml_is_lightnings_yaml_and_is_replaced_whole(tmp_path: Path) -> None:
    logger = _logger(tmp_path)
    logger.log_hyperparams({"lr": 0.1, "milestones": [3, 6]})
    logger.log_hyperparams({"lr": 0.2})
    assert yaml.safe_load((tmp_path / "hparams.yaml").read_text()) == {"lr": 0.2, "milestones": [3, 6]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hparams.yaml"]
