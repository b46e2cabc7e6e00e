"""`losslab quantize` on a trained digits run: table, JSON, packed files that match the fake weights, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from losslab.cli import cli, main
from losslab.train import TrainConfig, fit


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q")
    return fit(TrainConfig(epochs=3, out_dir=out, run_name="r", progress=False)).run_dir


def test_table_json_and_packed_files(run_dir: Path, tmp_path: Path) -> None:
    out = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(run_dir),
            "--method",
            "rtn",
            "--method",
            "gptq",
            "--bits",
            "8,3",
            "--act-order",
            "--keep-8bit",
            "fc",
            "--calib-samples",
            "128",
            "--save-packed",
            str(tmp_path),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "quant top-1" in out.output and "fake-quantized" in out.output
    report = json.loads((run_dir / "quantize" / "rtn-gptq.json").read_text())
    rows = {(r["summary"]["method"].split("(")[0], r["bits"]): r for r in report["results"]}
    assert set(rows) == {("RTN", 8), ("RTN", 3), ("GPTQ", 8), ("GPTQ", 3)}
    assert all(r["packed_matches_fake"] for r in rows.values())
    for key in (("RTN", 8), ("GPTQ", 8)):
        assert abs(rows[key]["drop"]) <= 0.5  # 8-bit keeps float accuracy
    assert rows[("GPTQ", 3)]["summary"]["overrides"] == {"fc": "RTN(bits=8)"}
    sizes = {k: Path(r["packed_file"]).stat().st_size for k, r in rows.items()}
    assert sizes[("RTN", 3)] < sizes[("RTN", 8)]
    assert all(sizes[k] == rows[k]["packed_bytes"] for k in rows)  # the reported size is the real one


def test_existing_results_are_not_overwritten(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = run_dir / "quantize" / "taken.json"
    target.parent.mkdir(exist_ok=True)
    target.write_text("{}")
    with pytest.raises(SystemExit) as info:
        main(["quantize", str(run_dir), "--method", "rtn", "--out", str(target)])
    assert info.value.code == 2 and "already exists" in capsys.readouterr().err
    assert target.read_text() == "{}"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--bits", "9"], "--bits 9 is out of range"),
        (["--bits", "four"], "is not an integer"),
        (["--method", "rtn", "--lam", "0.1"], "--lam applies to gpfq"),
        (["--method", "rtn", "--order", "act"], "--order applies to ldlq"),
        (["--method", "nope"], "unknown quantization method 'nope'"),
        (["--skip", "no_such_layer*"], "no_such_layer"),
    ],
)
def test_bad_input(run_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["quantize", str(run_dir), "--out", str(run_dir / "never.json"), *args])
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err
    assert not (run_dir / "never.json").exists()


def test_evaluate_reads_a_packed_classifier(run_dir: Path, tmp_path: Path) -> None:
    args = ["quantize", str(run_dir), "--method", "rtn", "--bits", "3", "--override", "fc=rtn:8"]
    args += ["--calib-samples", "64", "--save-packed", str(tmp_path), "--json", str(tmp_path / "r.json")]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert "RTN(bits=8): fc" in out.output  # the kept column names the overridden layer
    (record,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert record["summary"]["overrides"] == {"fc": "RTN(bits=8)"}
    res = CliRunner().invoke(cli, ["evaluate", record["packed_file"], "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "e.json").read_text())
    assert metrics["dataset"] == "digits" and metrics["top1"] == pytest.approx(record["quant_top1"], abs=1e-9)
    assert metrics["ce"] == pytest.approx(record["quant_ce"], rel=1e-6)
