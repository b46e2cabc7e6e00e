"""`losslab quantize --budget` on a trained digits run: the plan is optimal, the packed file stores at most B bits
per weight (counted from the file itself), the table is cached and reused, bad requests fail before any work."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors import safe_open

from losslab.cli import cli, main
from losslab.quant.packed import read_packed_metadata
from losslab.train import TrainConfig, fit

CALIB = ["--calib-samples", "64", "--calib-batch-size", "32"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("b")
    return fit(TrainConfig(epochs=2, out_dir=out, run_name="r", progress=False)).run_dir


def bits_in_file(path: Path) -> dict[str, int]:
    """Stored bits per quantized layer, read from the packed file's own tensors and metadata: codes at their
    ``code_bits``, scales at 16 bits (fp16), zero points at the layer's ``bits``."""
    meta = read_packed_metadata(path)
    out = {}
    with safe_open(str(path), "pt") as fh:
        keys = set(fh.keys())
        for name, layer in meta["layers"].items():
            total = 0
            for k, g in enumerate(layer["groups"]):
                total += g["code_bits"] * math.prod(g["code_shape"])
                for field, width in (("scale", 16), ("zero", g["bits"])):
                    if f"{name}.g{k}.{field}" in keys:
                        total += width * math.prod(fh.get_slice(f"{name}.g{k}.{field}").get_shape())
            out[name] = total
    return out


@pytest.mark.parametrize(
    ("refine", "score", "noise"), [(1, "quantized", 0), (32, "stitched", 0), (6, "quantized", 0), (6, "quantized", 3)]
)
def test_budget_plan_is_optimal_and_the_packed_file_fits(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], refine: int, score: str, noise: int
) -> None:
    """``--refine 1``: the knapsack optimum; a search starts there and ends at a plan whose score (stitched, or
    the calibration loss of the model quantized with the plan, which is then the model returned) is no higher;
    all within the budget as the packed file counts it."""
    args = ["quantize", str(run_dir), "--method", "gptq", "--budget", "2.6,3.4", "--bits-choices", "2,4,8"]
    args += ["--refine", str(refine), "--refine-score", score, "--refine-noise", str(noise)]
    args += ["--select-samples", "96"] if refine > 1 else []
    args += ["--keep-8bit", "fc", "--json", str(tmp_path / "b.json"), "--save-packed", str(tmp_path / "p"), *CALIB]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert "chosen" in out.output and "stored bits/weight" in out.output and "uniform bits" in out.output
    report = json.loads((tmp_path / "b.json").read_text())
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    for entry in report["results"]:
        budget, alloc = entry["budget"], entry["allocation"]
        assert {a["layer"] for a in alloc} == {"features.0.conv", "features.1.conv", "features.3.conv"}  # fc fixed
        packed = tmp_path / "p" / f"{run_dir.name}.gptq.budget{budget}.safetensors"
        in_file = bits_in_file(packed)
        assert sum(in_file.values()) == entry["stored_bits"]
        assert entry["stored_bits"] <= budget * entry["quantized_weights"]
        assert entry["stored_bits_per_weight"] <= budget
        for a in alloc:
            chosen = next(c for c in a["choices"] if c["bits"] == a["chosen_bits"])
            assert in_file[a["layer"]] == chosen["stored_bits"]
            measured = [c["sensitivity"] for c in a["choices"]]  # narrowest first: clamped = running minimum
            assert [c["sensitivity_clamped"] for c in a["choices"]] == [
                min(measured[: k + 1]) for k in range(len(measured))
            ]
        # optimal: brute force over every assignment of the three budgeted layers, on the clamped sensitivities
        room = int(Fraction(str(budget)) * entry["quantized_weights"]) - in_file["fc"]
        best = min(
            sum(c["sensitivity_clamped"] for c in combo)
            for combo in itertools.product(*(a["choices"] for a in alloc))
            if sum(c["stored_bits"] for c in combo) <= room
        )
        search = entry["search"]
        if refine == 1:
            assert entry["predicted_sensitivity"] == pytest.approx(best, rel=1e-9) and search is None
        else:
            start = sum(
                next(
                    c["sensitivity_clamped"] for c in a["choices"] if c["bits"] == search["knapsack_chosen"][a["layer"]]
                )
                for a in alloc
            )
            assert start == pytest.approx(best, rel=1e-9) and entry["predicted_sensitivity"] >= best * (1 - 1e-9)
            assert 1 <= search["evaluations"] <= refine and search["calib_loss"] <= search["knapsack_calib_loss"]
            assert search["score"] == score and search["noise_candidates"] <= noise
            if score == "quantized":  # the packed model is the one scored, not a second quantization
                assert search["realised_calib_loss"] == search["calib_loss"]
        assert entry["packed_matches_fake"]
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "p").iterdir()}
    with pytest.raises(SystemExit) as info:  # the packed files exist: refused before any work
        main([*args[: -len(CALIB)], *CALIB, "--json", str(tmp_path / "other.json")])
    assert info.value.code == 2 and "already exist" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "p").iterdir()} == before


def test_the_table_is_reused_and_recomputed_when_calibration_changes(run_dir: Path, tmp_path: Path) -> None:
    base = ["quantize", str(run_dir), "--method", "rtn", "--bits-choices", "3,8", "--overwrite", *CALIB]
    first = CliRunner().invoke(cli, [*base, "--budget", "4", "--json", str(tmp_path / "a.json")])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(cli, [*base, "--budget", "5", "--json", str(tmp_path / "a.json")])
    assert again.output.count("cached") == 2 and "measured" not in again.output
    other = CliRunner().invoke(cli, [*base, "--budget", "5", "--calib-seed", "1", "--json", str(tmp_path / "a.json")])
    assert other.output.count("measured") == 2


def test_loss_entries_have_standard_errors_and_the_selection_set_leaves_the_table_alone(
    run_dir: Path, tmp_path: Path
) -> None:
    """``--select-samples`` only changes what ``--refine`` scores plans on: the table is read back; the scores are
    calibration losses over those training images (the realised one recomputed from the quantized model)."""
    base = ["quantize", str(run_dir), "--method", "rtn", "--bits-choices", "3,8", "--overwrite", *CALIB]
    base += ["--budget", "4", "--sensitivity", "loss", "--json", str(tmp_path / "s.json"), "--refine", "2"]
    first = CliRunner().invoke(cli, [*base, "--select-samples", "40"])
    assert first.exit_code == 0, first.output
    (small,) = json.loads((tmp_path / "s.json").read_text())["results"]
    again = CliRunner().invoke(cli, [*base, "--select-samples", "200"])
    assert again.output.count("cached") == 2 and "measured" not in again.output
    (entry,) = json.loads((tmp_path / "s.json").read_text())["results"]
    assert entry["search"]["realised_calib_loss"] == pytest.approx(entry["search"]["calib_loss"], rel=1e-9)
    assert small["search"]["knapsack_calib_loss"] != entry["search"]["knapsack_calib_loss"]
    assert all(c["stderr"] is not None and c["stderr"] >= 0 for a in entry["allocation"] for c in a["choices"])
    assert any(c["stderr"] > 0 for a in entry["allocation"] for c in a["choices"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--budget", "1.5"], "below the narrowest width 2"),
        (
            ["--budget", "3", "--sensitivity", "nope"],
            "'--sensitivity': 'nope' is not one of 'proxy', 'hawq', 'loss', 'fisher'",
        ),
        (["--budget", "3", "--solver", "nope"], "'--solver': 'nope' is not one of 'exact', 'greedy'"),
        (["--budget", "3", "--bits", "4"], "drop --bits 4"),
        (["--budget", "3", "--bits-choices", "4"], "at least two widths"),
        (["--budget", "3", "--bits-choices", "2,9"], "--bits-choices 9 is out of range"),
        (["--budget", "3", "--tie", "nope*"], "--tie 'nope*' matches no budgeted layer"),
        (["--budget", "abc"], "is not a number"),
        (["--budget", "3", "--refine", "0"], "--refine"),
        (["--budget", "3", "--refine-score", "nope"], "'--refine-score': 'nope' is not one of 'quantized', 'stitched'"),
        (["--budget", "3", "--refine-noise", "2"], "needs --sensitivity loss and --refine 2 or more"),
        (["--budget", "3", "--refine", "4", "--refine-noise", "2", "--sensitivity", "proxy"], "--sensitivity loss"),
        (["--budget", "3", "--refine", "2", "--select-samples", "0"], "--select-samples"),
        (["--budget", "3", "--select-samples", "64"], "--refine 2 or more"),
        (
            ["--budget", "3", "--refine", "2", "--select-samples", "100000"],
            "--select-samples 100000: n_samples=100000 is more than",
        ),
    ],
)
def test_bad_budget_requests(run_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    target = run_dir / "never.json"
    before = sorted(run_dir.rglob("*"))
    with pytest.raises(SystemExit) as info:
        main(["quantize", str(run_dir), "--method", "gptq", "--json", str(target), *CALIB, *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert sorted(run_dir.rglob("*")) == before  # nothing written


def test_a_budget_between_the_narrowest_width_and_the_cheapest_plan_names_the_cheapest(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(
            [
                "quantize",
                str(run_dir),
                "--method",
                "rtn",
                "--budget",
                "2.01",
                "--bits-choices",
                "2,8",
                *CALIB,
                "--json",
                str(tmp_path / "x.json"),
            ]
        )
    err = capsys.readouterr().err
    assert info.value.code == 2 and "below the cheapest plan" in err and "give --budget >=" in err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("metric", ["hawq", "fisher", "loss"])
def test_loss_based_metrics_rank_the_narrow_width_as_worse(run_dir: Path, tmp_path: Path, metric: str) -> None:
    args = ["quantize", str(run_dir), "--method", "rtn", "--budget", "3", "--bits-choices", "2,8"]
    args += ["--sensitivity", metric, "--json", str(tmp_path / "m.json"), "--calib-samples", "16"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    (entry,) = json.loads((tmp_path / "m.json").read_text())["results"]
    for layer in entry["allocation"]:
        narrow, wide = layer["choices"]
        # 8 bits is near float: its effect is far smaller (the loss change of an undertrained net may be < 0)
        assert narrow["bits"] == 2 and abs(narrow["sensitivity"]) > 10 * abs(wide["sensitivity"]), layer
        assert metric == "loss" or wide["sensitivity"] >= 0
