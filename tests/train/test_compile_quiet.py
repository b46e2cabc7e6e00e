"""``--compile`` on CPU prints no torch "No CUDA runtime is found" warning (inductor imports cpp_extension, which
logs it on machines with a CUDA_HOME but no CUDA runtime)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SRC = str(Path(__file__).resolve().parents[2] / "src")
BUILD = """
import torch
from losslab.models import create_model
model = create_model("mlp", num_classes=3, in_chans=1, img_size=4)
"""
PLAIN = "model.compile()\n"  # torch alone: the control
LOSSLAB = """
from losslab.train import TrainConfig
from losslab.train.trainer import speed_settings
speed_settings(TrainConfig(model="mlp", compile=True, accelerator="cpu"), model, [])
"""
RUN = "model(torch.randn(2, 1, 4, 4))\n"


def _stderr(compile_step: str) -> str:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    code = BUILD + compile_step + RUN
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is about a machine without a CUDA runtime")
def test_compile_on_cpu_is_quiet() -> None:
    if "No CUDA runtime" not in _stderr(PLAIN):
        pytest.skip("torch does not warn on this machine (no CUDA_HOME found), so there is nothing to silence")
    assert "No CUDA runtime" not in _stderr(LOSSLAB)
