"""Read-only and full output folders: a clear OutputError, before the work where it can be known, and never a
truncated file. Uses a real read-only or tiny tmpfs mount where the test may mount one (root in a container),
else simulates the failing system call (EROFS/ENOSPC)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from losslab.errors import OutputError
from losslab.io import check_writable, save_torch_atomic, write_json_atomic
from losslab.train import TrainConfig, fit

TINY = {"model": "mlp", "epochs": 1, "progress": False, "batch_size": 256}


def _mount(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    except OSError:
        return False
    return done.returncode == 0


@pytest.fixture
def readonly_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A read-only folder: a real read-only tmpfs if mounting is allowed, else EROFS from mkstemp and mkdir."""
    target = tmp_path / "ro"
    if _mount(target, "ro,size=1m"):
        yield target
        subprocess.run(["umount", str(target)], check=False)
        return
    import tempfile

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))

    target.mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    yield target


def test_a_read_only_out_dir_fails_before_training(readonly_dir: Path) -> None:
    with pytest.raises(OutputError, match="read-only"):
        check_writable(readonly_dir)
    with pytest.raises(OutputError, match=r"read-only.*--out-dir"):
        fit(TrainConfig(**TINY, out_dir=readonly_dir, run_name="r"))
    with pytest.raises(OutputError, match="read-only"):
        write_json_atomic(readonly_dir / "result.json", {"a": 1})


class FullFile:
    """A binary file that takes ``room`` bytes, then fails like write(2) on a full device."""

    def __init__(self, fh, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.fh.write(bytes(data[: self.room]))  # a partial write, as a real full disk does
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()

    def __enter__(self) -> FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Binary writes through losslab.io (checkpoints) get 1 KiB, then ENOSPC."""
    import losslab.io as io_module

    def limited_open(file, mode="r", *args, **kwargs):
        fh = open(file, mode, *args, **kwargs)  # noqa: SIM115
        return FullFile(fh, 1024) if mode == "wb" else fh

    monkeypatch.setattr(io_module, "open", limited_open, raising=False)


def test_a_full_disk_keeps_the_old_checkpoint(tmp_path: Path, full_disk: None) -> None:
    target = tmp_path / "best.ckpt"
    target.write_bytes(b"the previous best")
    with pytest.raises(OutputError, match="no space left"):
        save_torch_atomic(target, {"w": torch.zeros(10_000)})
    assert target.read_bytes() == b"the previous best"
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]  # no temporary file left


def test_a_full_disk_during_training_leaves_no_truncated_checkpoint(tmp_path: Path, full_disk: None) -> None:
    with pytest.raises(OutputError, match=r"best\.ckpt.*no space left"):
        fit(TrainConfig(**TINY, out_dir=tmp_path, run_name="run"))
    run = tmp_path / "run"
    assert not list(run.rglob("*.ckpt")) and not list(run.rglob("*.tmp"))
    assert not (run / "result.json").exists()


def test_training_onto_a_disk_that_fills_up(tmp_path: Path) -> None:
    """A real 200 KiB tmpfs: config and logs fit, the checkpoints do not; the error is clear, nothing truncated."""
    small = tmp_path / "small"
    if not _mount(small, "size=200k"):
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC test covers the write path")
    try:
        with pytest.raises(OutputError, match="no space left"):
            fit(TrainConfig(**{**TINY, "model": "small_cnn"}, out_dir=small, run_name="r"))
        for ckpt in small.rglob("*.ckpt"):
            torch.load(ckpt, weights_only=True)  # whatever exists is whole
        assert not list(small.rglob("*.tmp"))
    finally:
        subprocess.run(["umount", str(small)], check=False)
