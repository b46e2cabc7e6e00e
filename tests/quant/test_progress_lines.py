"""`quantize` reports progress when stderr is not a terminal: one line per group of layers, each printed once the
group is quantized (as `study run` prints one line per finished job)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from losslab.cli import main
from losslab.quant.engine import LINES, layer_progress
from losslab.train import TrainConfig, fit


def test_lines_come_per_group_after_the_group_is_done(capsys: pytest.CaptureFixture[str]) -> None:
    names = [f"layer{i}" for i in range(25)]
    done: list[str] = []
    printed_after: list[int] = []
    for index, name in layer_progress(names, LINES, "rtn 4-bit", lines=10):
        assert names[index] == name
        done.append(name)
        err = capsys.readouterr().err
        printed_after += [len(done) - 1] * err.count("\n")  # lines printed before this layer's work
    printed_after += [len(done)] * capsys.readouterr().err.count("\n")
    assert done == names
    # ceil(25 / 10) = 3 layers a group: after layers 3, 6, ..., 24 and the last one, each once its group is done
    assert printed_after == [3, 6, 9, 12, 15, 18, 21, 24, 25]


def test_a_bar_or_nothing_prints_no_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert [n for _, n in layer_progress(["a", "b"], False, "x")] == ["a", "b"]
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit(
        TrainConfig(epochs=1, loss="ce", out_dir=tmp_path_factory.mktemp("p"), run_name="r", progress=False)
    ).run_dir


def _quantize(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        main(["quantize", *args])
    except SystemExit as exit_info:
        assert not exit_info.code
    return capsys.readouterr().err


def test_quantize_prints_layer_lines_when_stderr_is_not_a_terminal(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _quantize([str(run_dir), "--method", "rtn", "--bits", "4", "--json", str(tmp_path / "a.json")], capsys)
    lines = [line for line in err.splitlines() if "layers quantized" in line]
    assert lines, err
    assert re.fullmatch(r"RTN\(bits=4.*\): 4/4 layers quantized \(fc\), \d+\.\d s", lines[-1]), lines[-1]
    err = _quantize(
        [str(run_dir), "--method", "rtn", "--bits", "4", "--json", str(tmp_path / "b.json"), "--no-progress"], capsys
    )
    assert "layers quantized" not in err
