"""A run killed by a real SIGKILL resumes from its last checkpoint and finishes, keeping every finished epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from losslab.train import TrainConfig, fit


@pytest.mark.slow
def test_kill_then_resume(tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "losslab.cli",
        "train",
        "--model",
        "mlp",
        "--epochs",
        "40",
        "--out-dir",
        str(tmp_path),
        "--run-name",
        "killed",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    run_dir = tmp_path / "killed"
    history = run_dir / "history.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if history.exists() and len(json.loads(history.read_text())) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "result.json").exists(), "the run finished before it could be killed"
    done_before = [row["epoch"] for row in json.loads(history.read_text())]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    result = fit(TrainConfig.build({**_stored(run_dir), "resume": str(run_dir), "progress": False}))
    epochs = [row["epoch"] for row in result.epochs]
    assert epochs == list(range(40))  # every epoch exactly once
    assert set(done_before) <= set(epochs)
    assert (run_dir / "result.json").is_file() and result.test_acc > 50.0


def _stored(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    from losslab.errors import ConfigError

    with pytest.raises(ConfigError, match="no checkpoint"):
        fit(TrainConfig(resume=tmp_path, progress=False))


def test_factorized_run_reports_compression(tmp_path: Path) -> None:
    """`--rank-scale` factorizes the model before training; the result reports params and the ratio."""
    cfg = TrainConfig(
        model="small_cnn",
        rank_scale=0.25,
        spectral=True,
        frobenius_decay=True,
        epochs=1,
        out_dir=tmp_path,
        progress=False,
    )
    result = fit(cfg)
    from losslab.layers import count_params_factorized
    from losslab.models import create_model

    dense = create_model("small_cnn", num_classes=10, in_chans=1)
    assert result.num_params_dense == sum(p.numel() for p in dense.parameters())
    assert result.num_params == count_params_factorized(dense, 0.25)
    assert result.compression_ratio < 1.0
    assert "reg/frobenius_decay" in result.epochs[0]
    assert result.epochs[0]["factors/frob_norm"] > 0  # the normalization experiment's per-epoch logs
    assert result.epochs[0]["weights/kurtosis_mean"] > 0


def test_tensor_train_run_decays_the_cores(tmp_path: Path) -> None:
    cfg = TrainConfig(
        model="small_cnn",
        tensor_train=True,
        rank_scale=0.5,
        frobenius_decay=True,
        epochs=1,
        out_dir=tmp_path,
        progress=False,
    )
    result = fit(cfg)
    assert result.epochs[0]["reg/tt_frobenius_decay"] > 0
    assert result.compression_ratio < 1.0
