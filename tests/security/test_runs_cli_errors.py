"""The top-level handler: a user's mistake or an ordinary fault is one line on stderr and exit 2, --debug adds the
traceback, and a real bug keeps its traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import click
import pytest

from losslab.cli import app
from losslab.cli.app import cli, main, user_fault
from losslab.errors import ConfigError


@click.command("boom")
@click.argument("kind")
def boom(kind: str) -> None:
    """Raise the error named by KIND (a stand-in for any command's failure)."""
    import yaml

    errors = {
        "losslab": ConfigError("lr=-1 is out of range: allowed lr > 0"),
        "readonly": OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/result.json"),
        "full": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/best.ckpt"),
        "yaml": yaml.YAMLError("mapping values are not allowed here"),
        "eof": EOFError("Ran out of input"),
        "bug": ZeroDivisionError("division by zero"),
    }
    raise errors[kind]


@pytest.fixture(autouse=True)
def _boom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOSSLAB_DEBUG", raising=False)
    cli.add_command(boom)
    yield
    cli.commands.pop("boom", None)


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("losslab", "lr=-1 is out of range"),
        ("readonly", "'/mnt/ro/result.json': Read-only file system"),
        ("full", "'/data/best.ckpt': No space left on device"),
        ("yaml", "invalid YAML: mapping values"),
        ("eof", "corrupt or truncated"),  # click would turn EOFError into "aborted", exit 130
    ],
)
def test_user_faults_are_one_line_and_exit_2(kind: str, fragment: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["boom", kind])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("error: ") and fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSSLAB_DEBUG", "0")  # --debug sets it to 1 for the process; restored after the test
    with pytest.raises(SystemExit) as exit_info:
        main(["--debug", "boom", "losslab"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err and err.strip().endswith("allowed lr > 0")


def test_a_bug_keeps_its_traceback() -> None:
    assert user_fault(ZeroDivisionError("x")) is None
    with pytest.raises(ZeroDivisionError):
        main(["boom", "bug"])


def test_bad_yaml_in_reg_schedule_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "phases.yaml"
    bad.write_text("phases: [\n  - {epochs: 2\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "mlp", "--epochs", "1", "--out-dir", str(tmp_path), "--reg-schedule", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("YAML" in err or "yaml" in err)


def test_a_zero_byte_checkpoint_is_not_reported_as_aborted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "best.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(empty)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "aborted" not in err and "Traceback" not in err and err.strip().startswith("error: ")


def test_debug_flag_is_on_the_root_command() -> None:
    assert any(p.name == "debug" for p in app.cli.params)


@pytest.mark.parametrize(
    "args",
    [
        ["lm", "quantize", "--model", "m", "--calib-samples", "0", "--save-packed", "x.safetensors"],
        ["lm", "quantize", "--model", "m", "--calib-windows", "0", "--save-packed", "x.safetensors"],
        ["quantize", "run", "--method", "rtn", "--calib-samples", "0"],
    ],
)
def test_zero_calibration_samples_is_a_usage_error_before_any_work(args: list[str]) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "--calib-samples" in result.output and "x>=1" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
