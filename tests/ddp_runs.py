"""Shared by the torchrun tests of ``lm finetune`` and ``translate train``: launch ``tests/ddp_script.py`` in one
process or under torchrun (CPU, gloo) with writes by ranks > 0 refused, and read a run's history and weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from losslab.serialization import load_torch_file

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
TORCHRUN = Path(sys.executable).parent / "torchrun"
#: History columns that measure time, left out when runs are compared.
TIMING = ("per_s", "seconds", "_time")

needs_torchrun = pytest.mark.skipif(shutil.which("torchrun", path=str(TORCHRUN.parent)) is None, reason="no torchrun")


def launch(
    cwd: Path, nproc: int, command: str, args: tuple[str, ...], guarded: Path
) -> subprocess.CompletedProcess[str]:
    """``tests/ddp_script.py COMMAND ARGS`` in one process (``nproc`` 1) or under torchrun, from ``cwd``; any write
    under ``guarded`` by a rank other than 0 raises (tests/ddp_guard)."""
    env = {**os.environ, "PYTHONPATH": f"{TESTS / 'ddp_guard'}{os.pathsep}{SRC}", "OMP_NUM_THREADS": "1",
           "LOSSLAB_TEST_NO_WRITES_UNDER": str(guarded)}  # fmt: skip
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOSSLAB_RUN_WORK_DIR"):
        env.pop(name, None)
    prefix = [sys.executable] if nproc == 1 else [str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*prefix, str(TESTS / "ddp_script.py"), command, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)


def rows(run: Path) -> list[dict]:
    """The run's history rows without their timing columns."""
    return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)}
            for row in json.loads((run / "history.json").read_text())]  # fmt: skip


def weights(run: Path) -> dict[str, torch.Tensor]:
    """The state dict of the run's last checkpoint."""
    return load_torch_file(run / "checkpoints" / "last.ckpt", what="checkpoint")["state_dict"]
