"""The plain loop under ``torchrun`` with DistributedDataParallel (gloo, CPU): two processes of batch B/2 train what
one process of batch B trains, within the rounding of the reduction, and only rank 0 writes the run folder.

Rank r takes ``perm[r::2]`` of the epoch's seeded permutation, so its i-th batch of B/2 and the other rank's are
together the single process's i-th batch of B; DDP averages the two mean-loss gradients, which equals the gradient
of the mean over B. Random augmentation is off: each rank draws its own crops, which agree only in distribution.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from losslab.serialization import load_torch_file

SRC = Path(__file__).resolve().parents[2] / "src"
ARGS = ["train", "--model", "mlp", "--epochs", "2", "--no-augment", "--no-progress", "--run-name", "r"]


def launch(prefix: list[str], out: Path, batch: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOSSLAB_RUN_WORK_DIR"):
        env.pop(name, None)
    cmd = [*prefix, "-m", "losslab", *ARGS, "--batch-size", str(batch), "--out-dir", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_two_gloo_processes_train_what_one_process_trains(tmp_path: Path) -> None:
    one = launch([sys.executable], tmp_path / "one", 64)
    assert one.returncode == 0, one.stderr
    torchrun = str(Path(sys.executable).parent / "torchrun")
    two = launch([torchrun, "--standalone", "--nproc_per_node", "2"], tmp_path / "two", 32)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("test accuracy") == 1  # rank 0 reports

    run1, run2 = tmp_path / "one" / "r", tmp_path / "two" / "r"
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["r"]
    assert sorted(p.name for p in run2.iterdir()) == sorted(p.name for p in run1.iterdir())
    h1, h2 = (json.loads((run / "history.json").read_text()) for run in (run1, run2))
    assert [(r["epoch"], r["step"]) for r in h2] == [(r["epoch"], r["step"]) for r in h1] == [(0, 20), (1, 40)]
    for a, b in zip(h1, h2, strict=True):
        for key in ("train/loss", "train/acc", "val/acc", "val/ce"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    r1, r2 = (json.loads((run / "result.json").read_text()) for run in (run1, run2))
    assert r2["test_acc"] == pytest.approx(r1["test_acc"], abs=1e-9) and r2["test_ce"] == pytest.approx(r1["test_ce"])
    w1, w2 = (
        load_torch_file(run / "checkpoints" / "last.ckpt", what="checkpoint")["state_dict"] for run in (run1, run2)
    )
    assert w1.keys() == w2.keys()
    for key in w1:
        assert (w1[key] - w2[key]).abs().max() <= 1e-5 * (1 + w1[key].abs().max()), key
