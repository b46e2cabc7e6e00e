"""quiet_third_party: Lightning and transformers stay silent in quiet runs, everything comes back afterwards."""

from __future__ import annotations

import logging
import os
import warnings

import click
import pytest
from click.testing import CliRunner

from losslab.cli.quiet import HF_ENV, VERBOSE_KEY, is_verbose, quiet_third_party


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def lightning_log():
    """Lightning's own setup: 'lightning.pytorch' at INFO with its handler (records here whatever reaches it)."""
    logger = logging.getLogger("lightning.pytorch")
    level, handler = logger.level, _Records()
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_quiet_runs_silence_lightning_info_and_library_warnings(lightning_log) -> None:
    banner = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    env_before = {k: os.environ.get(k) for k in HF_ENV}
    with quiet_third_party(progress=False, verbose=False) as silenced:
        assert silenced
        banner.info("GPU available: False, used: False")
        banner.error("a real error still shows")
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn_explicit("Checkpoint directory exists", UserWarning, "x.py", 1, module="lightning.pytorch")
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert lightning_log.messages == ["a real error still shows"] and not caught
    assert logging.getLogger("lightning.pytorch").level == logging.INFO
    assert {k: os.environ.get(k) for k in HF_ENV} == env_before


def test_progress_or_verbose_keeps_everything(lightning_log) -> None:
    for kwargs in ({"progress": True, "verbose": False}, {"progress": False, "verbose": True}):
        with quiet_third_party(**kwargs) as silenced:
            assert not silenced
            logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False")
    assert lightning_log.messages == ["GPU available: False"] * 2


def test_root_verbose_flag_reaches_subcommands() -> None:
    from losslab.cli.app import cli

    @cli.command("_probe_verbose", hidden=True)
    def probe() -> None:
        click.echo(f"verbose={is_verbose()}")

    try:
        assert CliRunner().invoke(cli, ["--verbose", "_probe_verbose"]).output.strip() == "verbose=True"
        assert CliRunner().invoke(cli, ["_probe_verbose"]).output.strip() == "verbose=False"
    finally:
        cli.commands.pop("_probe_verbose")
    assert VERBOSE_KEY == "losslab.verbose"
