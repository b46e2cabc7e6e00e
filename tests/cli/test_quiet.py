"""quiet_third_party: Lightning and transformers stay silent in quiet runs, everything comes back afterwards."""

from __future__ import annotations

import logging
import os
import warnings

import click
from click.testing import CliRunner

from losslab.cli.quiet import HF_ENV, VERBOSE_KEY, is_verbose, quiet_third_party


def test_quiet_runs_silence_lightning_info_and_library_warnings(caplog) -> None:
    banner = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    before = logging.getLogger("lightning.pytorch").level
    env_before = {k: os.environ.get(k) for k in HF_ENV}
    with caplog.at_level(logging.INFO), quiet_third_party(progress=False, verbose=False) as silenced:
        assert silenced
        banner.info("GPU available: False, used: False")
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn_explicit("Checkpoint directory exists", UserWarning, "x.py", 1, module="lightning.pytorch")
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert "GPU available" not in caplog.text and not caught
    assert logging.getLogger("lightning.pytorch").level == before
    assert {k: os.environ.get(k) for k in HF_ENV} == env_before


def test_progress_or_verbose_keeps_everything(caplog) -> None:
    for kwargs in ({"progress": True, "verbose": False}, {"progress": False, "verbose": True}):
        with caplog.at_level(logging.INFO), quiet_third_party(**kwargs) as silenced:
            assert not silenced
            logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False")
        assert "GPU available" in caplog.text
        caplog.clear()


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
