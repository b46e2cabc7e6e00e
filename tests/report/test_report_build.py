"""The report of a small synthetic study: every file written, every figure a real non-empty PNG, tables right."""

from __future__ import annotations

import csv
import re
import statistics
import sys
from pathlib import Path

import matplotlib.image
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "study"))
from fake_jobs import fake_job, float_top1, quant_top1

from losslab.errors import LosslabError
from losslab.report import build_report
from losslab.report.tables import accuracy_pivot, load_results
from losslab.study import StudyStore, parse_study, run_study

STUDY = {
    "name": "fake-report",
    "train": {"dataset": "digits", "model": "mlp", "epochs": 3, "logit_stats": True},
    "grid": {"loss": ["ce", "root"], "lr": [0.01, 0.1], "seed": [0, 1, 2]},
    "compress": {"methods": [{"method": "rtn", "bits": [8, 4, 2]}, {"method": "gpfq", "bits": [4, 3]}]},
}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study")
    run_study(parse_study(STUDY), out, job_fn=fake_job, progress=False)
    return out


@pytest.fixture(scope="module")
def report(study_dir: Path) -> Path:
    return build_report(study_dir)


def test_every_figure_is_a_rendered_png(report: Path) -> None:
    figures = sorted((report.parent / "figures").glob("*.png"))
    names = {f.name for f in figures}
    assert {
        "accuracy_vs_bits.png",
        "drop_heatmap_0.png",
        "drop_heatmap_1.png",
        "weights_0.png",
        "weights_1.png",
        "training_curves_loss.png",
        "training_curves_lr.png",
        "logit_statistics.png",
    } <= names
    for figure in figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(figure)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300
        assert pixels[..., :3].std() > 0.05, f"{figure.name} is blank"


def test_markdown_and_html_reference_every_figure(report: Path) -> None:
    markdown = (report.parent / "report.md").read_text()
    html = report.read_text()
    figures = sorted((report.parent / "figures").glob("*.png"))
    for figure in figures:
        assert f"(figures/{figure.name})" in markdown
    assert html.count('<img src="data:image/png;base64,') == len(figures)
    assert re.search(r"\| training variant +\| method +\| seeds +\| float top-1 % +\| 8-bit top-1 % +\|", markdown)


def test_the_summary_is_the_mean_and_std_over_seeds(study_dir: Path, report: Path) -> None:
    with open(report.parent / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 5  # variants x (3 rtn + 2 gpfq bit widths)
    for row in rows:
        configs = [{"seed": s, "lr": float(row["lr"])} for s in (0, 1, 2)]
        expected = [quant_top1(c, int(row["bits"])) for c in configs]
        assert float(row["top1_mean"]) == pytest.approx(statistics.fmean(expected))
        assert float(row["top1_std"]) == pytest.approx(statistics.stdev(expected))
        assert float(row["drop_mean"]) == pytest.approx(8.0 / int(row["bits"]))
        assert int(row["n_seeds"]) == 3
    with open(report.parent / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 12 * 5
    with open(report.parent / "layers.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 12 * 5 * 2


def test_the_pivot_table_shows_mean_plus_minus_std(study_dir: Path) -> None:
    header, rows = accuracy_pivot(load_results(study_dir))
    assert header == [
        "training variant",
        "method",
        "seeds",
        "float top-1 %",
        "8-bit top-1 %",
        "4-bit top-1 %",
        "3-bit top-1 %",
        "2-bit top-1 %",
    ]
    first = rows[0]
    assert first[:3] == ["loss=ce, lr=0.01", "rtn", "3"]
    floats = [float_top1({"seed": s, "lr": 0.01}) for s in (0, 1, 2)]
    assert first[3] == f"{statistics.fmean(floats):.2f} ± {statistics.stdev(floats):.2f}"
    assert first[6] == "-"  # rtn has no 3-bit point


def test_an_empty_study_has_no_report(tmp_path: Path) -> None:
    StudyStore.create(tmp_path).close()
    with pytest.raises(LosslabError, match="holds no compressed results yet"):
        build_report(tmp_path)
    assert not (tmp_path / "report").exists()
