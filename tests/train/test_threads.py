"""The torch thread policy: available CPUs (affinity, cgroup quota) minus busy ones, user overrides first."""

from __future__ import annotations

from pathlib import Path

import pytest

from losslab.errors import ConfigError
from losslab.threads import auto_threads, cgroup_quota, choose_threads, configure_threads, threads_from_argv


def test_auto_threads_leaves_busy_cores_alone() -> None:
    assert auto_threads(cpus=2, quota=None, load=1.1) == 1  # a 2-core machine with one busy core
    assert auto_threads(cpus=2, quota=None, load=0.2) == 2
    assert auto_threads(cpus=2, quota=None, load=5.0) == 1  # never below one
    assert auto_threads(cpus=16, quota=2.5, load=0.0) == 2  # a container with a 2.5-CPU quota
    assert auto_threads(cpus=16, quota=0.5, load=0.0) == 1


def test_cgroup_quota_files(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_quota(v1) == 3.0
    assert cgroup_quota(tmp_path / "absent") is None


def test_overrides_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("LOSSLAB_THREADS", "2")
    assert choose_threads(5) == (5, "flag")
    assert choose_threads() == (2, "LOSSLAB_THREADS")
    monkeypatch.delenv("LOSSLAB_THREADS")
    assert choose_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv("LOSSLAB_THREADS", "many")
    with pytest.raises(ConfigError, match="LOSSLAB_THREADS='many'"):
        choose_threads()
    assert threads_from_argv(["train", "--threads", "4"]) == 4
    assert threads_from_argv(["train", "--threads=2", "--epochs", "1"]) == 2
    assert threads_from_argv(["train"]) is None


def test_configure_sets_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert configure_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
