"""Figure rules a reader relies on: real bits on the x axis, one heatmap scale, clipped bands, colour vs dashes."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.image
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "study"))
from fake_jobs import fake_job

from losslab.report import figures
from losslab.report.tables import StudyResults, load_results
from losslab.study import parse_study, run_study

STUDY = {
    "name": "fake-figures",
    "train": {"dataset": "digits", "model": "mlp", "epochs": 3},
    "grid": {"loss": ["ce", "root"], "lr": [0.01, 0.1], "seed": [0, 1]},
    "compress": {"methods": [{"method": "rtn", "bits": [8, 4, 2]}, {"method": "gpfq", "bits": [4, 3]}]},
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> StudyResults:
    out = tmp_path_factory.mktemp("figures")
    run_study(parse_study(STUDY), out, job_fn=fake_job, progress=False)
    return load_results(out)


def test_clip_band_keeps_accuracy_at_most_100_and_losses_non_negative() -> None:
    lower, upper = figures.clip_band([99.0, 50.0, 0.5], [3.0, 10.0, 2.0], figures.ACCURACY_RANGE)
    assert lower == [96.0, 40.0, 0.0] and upper == [100.0, 60.0, 2.5]
    lower, upper = figures.clip_band([0.2], [1.0], figures.NON_NEGATIVE)
    assert lower == [0.0] and upper == [1.2]


def test_x_position_is_the_stored_bits_per_weight(results: StudyResults) -> None:
    # fake_jobs stores avg_bits_per_weight = bits + 0.25; a method without summaries falls back to the nominal bits
    assert figures.real_bits(results, "rtn", 4) == pytest.approx(4.25)
    assert figures.real_bits(results, "gpfq", 3) == pytest.approx(3.25)
    assert figures.real_bits(results, "nothing", 3) == 3.0


def test_one_colour_scale_for_every_method(results: StudyResults) -> None:
    option = figures.heatmap_option(results)
    assert option == "lr"
    per_method = []
    for method in results.methods():
        _, _, _, tables = figures._drop_tables(results, method, option)
        per_method.append(max(abs(v) for grid in tables for line in grid for v in line))
    assert figures.drop_scale(results, option) == pytest.approx(max(max(per_method), 0.5))
    assert len(set(per_method)) > 1  # the methods differ, so a per-method scale would have misled


def test_losses_by_colour_learning_rates_by_line_style(results: StudyResults) -> None:
    assert figures.style_options(results) == ("loss", "lr")
    styles = figures.variant_styles(results)
    by_config = {(r["config"]["loss"], r["config"]["lr"]): styles[r["variant"]] for r in results.runs}
    assert by_config[("ce", 0.01)]["color"] == by_config[("ce", 0.1)]["color"]
    assert by_config[("ce", 0.01)]["color"] != by_config[("root", 0.01)]["color"]
    assert by_config[("ce", 0.01)]["linestyle"] == by_config[("root", 0.01)]["linestyle"]
    assert by_config[("ce", 0.01)]["linestyle"] != by_config[("ce", 0.1)]["linestyle"]


def test_heatmap_fits_a_page_width(results: StudyResults, tmp_path: Path) -> None:
    path = figures.drop_heatmap(results, "rtn", tmp_path / "heat.png")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width <= 1500 and height >= 250  # about 8-10 inches at 150 dpi: text stays legible on a page
