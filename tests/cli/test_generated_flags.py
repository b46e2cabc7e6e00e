"""The flags that were declared by hand and are now generated from typed configs (``logreg sweep``'s grid,
``gan sweep``'s grid, ``translate``'s data files, ``translate eval`` and ``translate demo``, ``train --config``)
accept and refuse what they did before, and reach the library call as the same values.

Each accepted command line is run up to the library function the command calls, which is replaced by a stub that
records its arguments and stops (no work); the expected values are written out here from the flags' documented
meaning (defaults from the library's own config class). A refused value exits with status 2 and a one-line
message naming the flag, before that call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from losslab.cli.app import cli


class Reached(Exception):
    """Raised by the stub in place of the library call: the command got that far, with these arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("reached")
        self.args_seen, self.kwargs_seen = args, kwargs


def stop(*args: Any, **kwargs: Any) -> None:
    raise Reached(*args, **kwargs)


def reach(args: list[str]) -> Reached:
    """Run ``losslab ARGS`` and return what the stubbed library call received."""
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, Reached), result.output
    return result.exception


def refused(args: list[str], flag: str) -> str:
    """Run ``losslab ARGS``; it must stop at parse time with status 2 and one error line naming ``flag``."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and flag in error[0], result.output
    return error[0]


# --- logreg sweep -------------------------------------------------------------------------------------------------


@pytest.fixture
def sweep_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("losslab.logreg.sweep.run_sweep_folder", stop)


def test_logreg_sweep_defaults_are_the_sweep_config(sweep_stub: None) -> None:
    from losslab.logreg.sweep import SweepConfig

    seen = reach(["logreg", "sweep"])
    assert seen.args_seen == (SweepConfig(),)
    assert seen.kwargs_seen == {
        "out_dir": Path("runs"), "run_name": "logreg_sweep", "resume": None, "overwrite": False, "progress": None
    }  # fmt: skip


def test_logreg_sweep_flags_reach_the_config(sweep_stub: None) -> None:
    from losslab.logreg.sweep import SweepConfig

    args = ["--datasets", " iris_binary, wine_binary", "--k", "1,3.5", "--l2", "0,1e-3", "--seeds", "4,2"]
    args += ["--no-logistic", "--solver", "newton", "--max-iter", "7", "--tol", "1e-4", "--test-fraction", "0.25"]
    (cfg,) = reach(["logreg", "sweep", *args]).args_seen
    assert cfg == SweepConfig(
        datasets=("iris_binary", "wine_binary"), k=(1.0, 3.5), l2=(0.0, 1e-3), seeds=(4, 2), include_logistic=False,
        solver="newton", max_iter=7, tol=1e-4, test_fraction=0.25,
    )  # fmt: skip


def test_logreg_sweep_resume_gets_only_the_typed_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """On --resume the stored config is the base: a flag left out must not be sent as its default."""
    monkeypatch.setattr("losslab.logreg.sweep.stored_config", stop)
    seen = reach(["logreg", "sweep", "--resume", str(tmp_path), "--k", "2", "--no-logistic"])
    assert seen.args_seen == (tmp_path, {"k": (2.0,), "include_logistic": False})
    assert reach(["logreg", "sweep", "--resume", str(tmp_path)]).args_seen == (tmp_path, {})


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--k", "0"], "--k"),
        (["--k", "1,nan"], "--k"),
        (["--k", "1,x"], "--k"),
        (["--k", "2e6"], "--k"),
        (["--l2", "-1"], "--l2"),
        (["--l2", "inf"], "--l2"),
        (["--seeds", "-1"], "--seeds"),
        (["--seeds", "0.5"], "--seeds"),
        (["--max-iter", "0"], "--max-iter"),
        (["--tol", "-1e-3"], "--tol"),
        (["--test-fraction", "1"], "--test-fraction"),
        (["--logistic"], "--logistic"),
        (["--no-logistic=1"], "--no-logistic"),
    ],
)
def test_logreg_sweep_refuses_at_parse_time(sweep_stub: None, args: list[str], flag: str) -> None:
    refused(["logreg", "sweep", *args], flag)


# --- gan sweep ----------------------------------------------------------------------------------------------------


@pytest.fixture
def gan_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("losslab.gan.sweep.run_gan_sweep", stop)


def gan_grid(seen: Reached) -> tuple[list[float], list[int], bool, Path]:
    _base, ks, seeds, out_dir = seen.args_seen
    return list(ks), list(seeds), seen.kwargs_seen["include_logistic"], Path(out_dir)


def test_gan_sweep_default_grid(gan_stub: None) -> None:
    from losslab.gan.config import GanConfig

    seen = reach(["gan", "sweep"])
    assert gan_grid(seen) == ([2.0, 4.0, 8.0], [0, 1, 2], True, Path("gan_sweep"))
    assert seen.args_seen[0] == GanConfig.build({}) and seen.kwargs_seen["overwrite"] is False


def test_gan_sweep_flags_override_the_files_grid(gan_stub: None, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("epochs: 3\nsweep:\n  k: [3, 5]\n  seeds: [7]\n")
    seen = reach(["gan", "sweep", "--config", str(path)])
    assert gan_grid(seen)[:3] == ([3.0, 5.0], [7], True) and seen.args_seen[0].epochs == 3
    seen = reach(["gan", "sweep", "--config", str(path), "--k", "1.5", "--no-logistic"])
    assert gan_grid(seen)[:3] == ([1.5], [7], False)
    seen = reach(["gan", "sweep", "--k", "", "--seeds", "4,9"])  # an empty list leaves the default grid
    assert gan_grid(seen)[:3] == ([2.0, 4.0, 8.0], [4, 9], True)


def test_gan_sweep_refuses_a_files_unknown_grid_key(gan_stub: None, tmp_path: Path) -> None:
    from losslab.errors import ConfigError

    path = tmp_path / "sweep.yaml"
    path.write_text("sweep:\n  k: [3]\n  lr: [0.1]\n")
    result = CliRunner().invoke(cli, ["gan", "sweep", "--config", str(path)])
    assert isinstance(result.exception, ConfigError) and "sweep keys ['lr'] are unknown" in str(result.exception)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--k", "0"], "--k"),
        (["--k", "2,inf"], "--k"),
        (["--seeds", "-1"], "--seeds"),
        (["--seeds", "1,a"], "--seeds"),
        (["--logistic"], "--logistic"),
        (["--loss", "root"], "--loss"),
        (["--seed", "1"], "--seed"),
    ],
)
def test_gan_sweep_refuses_at_parse_time(gan_stub: None, args: list[str], flag: str) -> None:
    refused(["gan", "sweep", *args], flag)
