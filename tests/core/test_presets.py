"""Shipped study files and configs: found by name from any directory, and inside the built wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from losslab.errors import ConfigError
from losslab.presets import preset_file, preset_names, resolve_yaml
from losslab.regularizers import Schedule
from losslab.study import load_study_spec

ROOT = Path(__file__).resolve().parents[2]


def test_names_are_the_shipped_files() -> None:
    assert {"quickstart", "lr_quant_cifar10", "regulquant_cifar10"} <= set(preset_names("studies"))
    assert "combined_protocol" in preset_names("configs")
    assert preset_file("studies", "quickstart.yaml") == preset_file("studies", "quickstart")


def test_names_resolve_outside_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_study_spec("quickstart")
    assert spec.source == preset_file("studies", "quickstart")
    assert load_study_spec("studies/quickstart.yaml").source == spec.source  # README form, any directory
    schedule = Schedule.from_yaml("configs/combined_protocol.yaml")
    assert [reg.name for phase in schedule.phases for reg in phase.regularizers] == ["variance", "l2grad", "variance"]
    assert Schedule.from_yaml("combined_protocol").phases[1].start == schedule.phases[1].start


def test_an_existing_file_wins_over_a_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").write_text("x")
    assert resolve_yaml("quickstart", "studies") == Path("quickstart")


def test_unknown_name_lists_the_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"'quikstart' does not exist.*quickstart"):
        load_study_spec("quikstart")
    with pytest.raises(ConfigError, match="does not exist"):
        Schedule.from_yaml("elsewhere/combined_protocol.yaml")  # a folder that is not configs/ is not rewritten


@pytest.mark.slow
def test_the_wheel_ships_every_preset(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    source = tmp_path / "src_copy"  # setuptools builds in the source folder: never in the checkout itself
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("losslab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("studies", "configs"):
        for name in preset_names(kind):
            assert f"losslab/presets/{kind}/{name}.yaml" in names


def test_study_list_names_every_shipped_study() -> None:
    from click.testing import CliRunner

    from losslab.cli import cli

    result = CliRunner().invoke(cli, ["study", "list"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.splitlines()]
    assert listed == preset_names("studies")
