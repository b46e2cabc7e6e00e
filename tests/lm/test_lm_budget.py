"""`losslab lm quantize --budget` on the tiny offline OPT: q/k/v of a block share one width, the packed files
store at most B bits per weight, the plan is the brute-force optimum over the tied items."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from losslab.cli.lm import lm
from losslab.lm.packing import load_packed_lm
from losslab.quant.packed import read_packed_metadata


@pytest.mark.slow
@pytest.mark.parametrize(
    ("refine", "score", "noise"), [(1, "quantized", 0), (4, "quantized", 0), (4, "stitched", 0), (4, "quantized", 2)]
)
def test_lm_budget_ties_qkv_and_fits(
    tmp_path: Path, trained_model, tokenizer, text_files, refine: int, score: str, noise: int
) -> None:
    """``--refine 1``: the knapsack optimum; ``--refine 4``: a search from it that keeps the ties and the budget
    and ends no worse by its score (the calibration loss of the model quantized with the plan, or stitched)."""
    folder = tmp_path / "tiny-opt"
    trained_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    train, val = text_files
    out = tmp_path / "tiny.safetensors"
    args = ["quantize", "--model", str(folder), "--method", "gptq", "--budget", "3.25", "--bits-choices", "2,3,4"]
    args += ["--text-file", str(train), "--eval-text", str(val), "--calib-samples", "4", "--seqlen", "64"]
    args += ["--save-packed", str(out), "--device", "cpu", "--no-progress", "--refine", str(refine)]
    args += ["--refine-score", score, "--refine-noise", str(noise)]
    res = CliRunner().invoke(lm, args)
    assert res.exit_code == 0, res.output
    report = json.loads(out.with_suffix(".json").read_text())
    (entry,) = report["results"]
    chosen = {a["layer"]: a["chosen_bits"] for a in entry["allocation"]}
    assert len(chosen) == 12 and len(report["ties"]) == 2  # 2 decoder blocks x 6 linears; q/k/v tied per block
    for tie in report["ties"]:
        assert len({chosen[n] for n in tie}) == 1
    assert entry["stored_bits_per_weight"] <= 3.25
    packed = Path(entry["packed_file"])
    assert read_packed_metadata(packed)["summary"]["avg_bits_per_weight"] == pytest.approx(
        entry["stored_bits_per_weight"], rel=1e-12
    )
    load_packed_lm(packed)  # the file loads back
    assert entry["metrics"]["ppl"] > 1 and [u["bits"] for u in report["uniform"]] == [2, 3, 4]
    # optimal over the knapsack items (tie groups and single linears), on the clamped sensitivities
    rows = {a["layer"]: a["choices"] for a in entry["allocation"]}
    for choices in rows.values():  # narrowest first: clamped = running minimum of the measured
        measured = [c["sensitivity"] for c in choices]
        assert all(c["stderr"] is not None and c["stderr"] >= 0 for c in choices)  # the windows are the samples
        assert [c["sensitivity_clamped"] for c in choices] == [min(measured[: k + 1]) for k in range(len(measured))]
    groups = report["ties"] + [[n] for n in rows if not any(n in t for t in report["ties"])]
    room = int(Fraction("3.25") * entry["quantized_weights"])
    best = min(
        sum(rows[n][j]["sensitivity_clamped"] for g, j in zip(groups, combo) for n in g)
        for combo in itertools.product(range(3), repeat=len(groups))
        if sum(rows[n][j]["stored_bits"] for g, j in zip(groups, combo) for n in g) <= room
    )
    if refine == 1:
        assert entry["predicted_sensitivity"] == pytest.approx(best, rel=1e-9) and entry["search"] is None
    else:
        search = entry["search"]
        start = sum(
            next(c["sensitivity_clamped"] for c in rows[n] if c["bits"] == b)
            for n, b in search["knapsack_chosen"].items()
        )
        assert start == pytest.approx(best, rel=1e-9) and 1 <= search["evaluations"] <= refine
        assert search["calib_loss"] <= search["knapsack_calib_loss"] and search["score"] == score
        assert search["noise_candidates"] <= noise


def test_lm_budget_refuses_select_samples_before_work(
    tmp_path: Path, trained_model, tokenizer, text_files, capsys: pytest.CaptureFixture[str]
) -> None:
    from losslab.cli import main

    folder = tmp_path / "tiny-opt"
    trained_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    train, _ = text_files
    out = tmp_path / "tiny.safetensors"
    args = ["quantize", "--model", str(folder), "--method", "gptq", "--budget", "3.25", "--bits-choices", "2,3,4"]
    args += ["--text-file", str(train), "--calib-samples", "4", "--seqlen", "64", "--save-packed", str(out)]
    capsys.readouterr()  # save_pretrained's progress bar
    with pytest.raises(SystemExit) as info:
        main(["lm", *args, "--device", "cpu", "--no-progress", "--refine", "2", "--select-samples", "8"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--select-samples is for losslab quantize" in err and len(err.splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".json").exists()
