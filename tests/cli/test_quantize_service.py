"""`losslab quantize` goes through the TrainedRun service: the run's img_size reaches calibration and evaluation,
and the output paths are checked before any work (issue 11, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from losslab.cli import main
from losslab.compress.trained_run import TrainedRun
from losslab.quant import engine
from losslab.train import TrainConfig, fit


@pytest.fixture(scope="module")
def run16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits run trained on 16 × 16 images (digits are 8 × 8 natively; the model pools adaptively)."""
    out = tmp_path_factory.mktemp("img16")
    return fit(TrainConfig(epochs=1, out_dir=out, run_name="r", progress=False, img_size=16)).run_dir


def test_calibration_and_evaluation_use_the_runs_img_size(
    run16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shapes: list[tuple[int, ...]] = []
    original = engine.cache_calibration

    def spy(calib: object, device: torch.device) -> list[torch.Tensor]:
        batches = original(calib, device)
        shapes.extend(tuple(b.shape[1:]) for b in batches)
        return batches

    monkeypatch.setattr(engine, "cache_calibration", spy)
    report = tmp_path / "r.json"
    args = ["quantize", str(run16), "--method", "rtn", "--bits", "8", "--calib-samples", "64", "--json", str(report)]
    main(args)
    assert shapes and set(shapes) == {(1, 16, 16)}  # today's code calibrated on (1, 8, 8)
    data = json.loads(report.read_text())
    assert data["results"][0]["summary"]["calibration"]["input_shape"] == [1, 16, 16]
    assert "1x16x16" in data["protocol"]
    run = TrainedRun.load(run16, device="cpu")
    assert next(iter(run.test_loader))[0].shape[1:] == (1, 16, 16)
    assert abs(data["results"][0]["drop"]) <= 1.0  # 8-bit RTN keeps the accuracy measured on 16-pixel images


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--json", "{file}/r.json"], "is not a writable folder"),
        (["--json", "{dir}"], "is a folder"),
        (["--save-packed", "{file}"], "is a file"),
    ],
)
def test_outputs_are_checked_before_any_work(
    run16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, extra, fragment
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("calibration started before the outputs were checked")

    monkeypatch.setattr(TrainedRun, "calibration_loader", no_work)
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    args = [e.format(file=a_file, dir=tmp_path) for e in extra]
    with pytest.raises(SystemExit) as info:
        main(["quantize", str(run16), "--method", "rtn", *args])
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err
