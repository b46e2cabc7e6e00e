"""``python -m losslab`` is the console script (issue 18, item 5), and ``python -m losslab.study`` its study group."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def test_python_m_losslab_is_the_cli() -> None:
    done = run("-m", "losslab", "--version")
    assert done.returncode == 0 and done.stdout.startswith("losslab, version"), done.stderr


@pytest.mark.parametrize("module", ["losslab", "losslab.study"])
def test_a_user_fault_is_one_line_and_exit_2(module: str, tmp_path: Path) -> None:
    args = ["study", "status", str(tmp_path)] if module == "losslab" else ["status", str(tmp_path)]
    done = run("-m", module, *args)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "no study database" in done.stderr
