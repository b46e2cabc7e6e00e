"""Shared test set-up: deterministic seeds, CPU threads, and skipping GPU tests where no GPU exists."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # One torch thread per test process: `make test` runs two pytest workers (xdist) on a 2-core machine, and
    # OpenMP threads that spin-wait for a busy core make small ops 10-30x slower.
    torch.set_num_threads(1)
    # No test reaches the network: the Hugging Face libraries stay offline (tests that need the hub are marked
    # `network` and deselected), so a test can never probe or download from the hub by accident.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture()
def cli_main(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, str, str]]:
    """``cli_main(args)``: (exit status, stdout, stderr) of the console entry point ``losslab.cli.app.main``."""
    from losslab.cli.app import main

    def run(args: list[str]) -> tuple[int, str, str]:
        try:
            main(args)
            code = 0
        except SystemExit as exit_info:
            code = int(exit_info.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
