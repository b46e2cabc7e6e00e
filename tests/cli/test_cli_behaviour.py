"""What a user sees: deprecated spellings still work (with a warning), errors come before work, quiet logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "study"))
from fake_jobs import fake_job

from losslab.cli.app import cli, main
from losslab.cli.options import LosslabCommand, command_key, rename_deprecated
from losslab.quant.bits import BITS_RANGE
from losslab.study import StudyStore, parse_study, run_study

LOW, HIGH = BITS_RANGE


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def test_deprecated_flags_and_values_reach_the_new_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import losslab.lm.finetune as finetune_module

    seen: dict[str, Any] = {}

    def fake_finetune(cfg: Any) -> Any:
        seen["cfg"] = cfg
        return finetune_module.FinetuneResult(2.0, 1.0, 3, 0, str(tmp_path / "model"), "protocol", {})

    monkeypatch.setattr(finetune_module, "finetune", fake_finetune)
    args = ["lm", "finetune", "--model", "m", "--output-dir", str(tmp_path / "run"), "--grad-clip=0.5"]
    result = CliRunner().invoke(cli, [*args, "--precision", "bf16", "--no-progress"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.out_dir, cfg.gradient_clip, cfg.precision) == (tmp_path / "run", 0.5, "bf16-mixed")
    for old, new in (("--output-dir", "--out-dir"), ("--grad-clip", "--gradient-clip"), ("bf16", "bf16-mixed")):
        assert f"{old} is deprecated; use" in result.output and new in result.output


def test_command_key_is_the_same_from_the_root_or_a_group() -> None:
    @click.group("lm")
    def group() -> None:
        pass

    @group.command("finetune", cls=LosslabCommand)
    @click.option("--out-dir")
    def leaf(out_dir: str) -> None:
        click.echo(f"{command_key(click.get_current_context())}|{out_dir}")

    result = CliRunner().invoke(group, ["finetune", "--output-dir", "x"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "lm finetune|x"
    assert rename_deprecated("lm finetune", ["--", "--output-dir"]) == ["--", "--output-dir"]


def test_regularizer_without_lambda_is_an_error_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["train", "--regularizer", "l2grad", "--print-config"], capsys)
    assert code == 2 and "--lmbda" in err and "l2grad" in err
    code, out, _ = run_main(["train", "--regularizer", "l2grad", "--lmbda", "0", "--print-config"], capsys)
    assert code == 0 and "lmbda: 0.0" in out  # an explicit 0 (an unregularized control) is allowed


def test_models_with_no_match_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["models", "nomatch_zz*"], capsys)
    assert code == 2 and out == "" and "no model name matches 'nomatch_zz*'" in err


def test_objectives_and_regularizers_have_descriptions() -> None:
    for command in ("objectives", "regularizers"):
        result = CliRunner().invoke(cli, [command])
        assert result.exit_code == 0
        lines = result.output.splitlines()
        assert len(lines) >= 5 and all(len(line.split()) >= 3 for line in lines), result.output
    assert "rooted" in CliRunner().invoke(cli, ["objectives"]).output


def test_study_table_of_an_empty_study_says_so(tmp_path: Path) -> None:
    with StudyStore.create(tmp_path):
        pass
    result = CliRunner().invoke(cli, ["study", "table", str(tmp_path)])
    assert result.exit_code == 0
    assert "holds no results yet" in result.output


def test_study_checks_every_data_set_before_the_first_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    study = {
        "name": "needs-data",
        "train": {"model": "mlp", "epochs": 1, "data_dir": str(empty)},
        "grid": {"dataset": ["cifar10", "cifar100", "digits"]},
        "compress": {"methods": [{"method": "rtn", "bits": [8]}]},
    }
    file = tmp_path / "study.yaml"
    file.write_text(yaml.safe_dump(study))
    out_dir = tmp_path / "out"
    code, _, err = run_main(["study", "run", str(file), "--out-dir", str(out_dir)], capsys)
    assert code == 2
    assert err.count("error:") == 1 and "2 data set(s)" in err and "no job was started" in err
    assert "cifar10" in err and "cifar100" in err and str(empty) in err and "--download" in err
    assert not out_dir.exists()  # nothing was started


def test_non_terminal_stderr_gets_one_line_per_finished_job(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = parse_study(
        {
            "name": "lines",
            "train": {"dataset": "digits", "model": "mlp", "epochs": 3},
            "grid": {"loss": ["ce", "root"], "lr": [0.01, 0.1]},
            "compress": {"methods": [{"method": "rtn", "bits": [8, 2]}]},
        }
    )
    run_study(spec, tmp_path, job_fn=fake_job)  # progress=None and pytest's stderr is not a terminal
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[")]
    assert len(lines) == 4
    assert {ln.split("]")[0] for ln in lines} == {"[1/4", "[2/4", "[3/4", "[4/4"}
    for line in lines:
        assert "job " in line and "loss=" in line and "lr=" in line and "float top-1" in line
        assert "2 compressions (lowest top-1" in line and "rtn 2-bit" in line and line.endswith(" s")


def test_logreg_json_to_stdout_is_json_only() -> None:
    result = CliRunner().invoke(cli, ["logreg", "--dataset", "iris_binary", "--json", "-"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["dataset"]["name"] == "iris_binary" and record["runs"]


def test_logreg_json_file_is_not_overwritten_silently(tmp_path: Path) -> None:
    target = tmp_path / "fits.json"
    target.write_text("{}")
    result = CliRunner().invoke(cli, ["logreg", "--dataset", "iris_binary", "--json", str(target)])
    assert result.exit_code != 0 and "--overwrite" in str(result.exception)
    result = CliRunner().invoke(cli, ["logreg", "--dataset", "iris_binary", "--json", str(target), "--overwrite"])
    assert result.exit_code == 0 and json.loads(target.read_text())["runs"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["demo", "--workers", "0"], "Invalid value for '--workers': 0 is not in the range x>=1"),
        (["evaluate", "/nonexistent/run"], "does not exist"),
        (["train", "--k", "-1"], "Invalid value for '--k': -1.0 is not in the range 0<x"),
        # --bits is checked while parsing, before the method flags (generated from the torch dataclasses) load
        (["quantize", "run", "--bits", "9"], f"--bits 9 is out of range: allowed {LOW} <= bits <= {HIGH}"),
        (["quantize", "run", "--grid", "sym", "--bits", "4", "--bits", "1"], "--bits 1 is out of range"),
        (
            ["quantize", "run", "--bits=8,x"],
            f"--bits 'x' is not an integer: give whole bit widths from {LOW} to {HIGH}",
        ),
        (["lm", "quantize", "--model", "m", "--act-order", "--bits", "4.5"], "--bits '4.5' is not an integer"),
        (
            ["lm", "quantize", "--model", "m", "--seed", "1", "--bits", ","],
            f"--bits is empty: give at least one bit width from {LOW} to {HIGH}",
        ),
        (
            ["lm", "quantize", "--model", "m", "--override", "*.fc2=gptq:9"],
            f"--override '*.fc2=gptq:9': bits 9 is out of range: allowed {LOW} <= bits <= {HIGH}",
        ),
        (["lm", "quantize", "--model", "m", "--override", "*.fc2=gptq"], "must look like PATTERN=METHOD:BITS"),
        (["lm", "quantize", "--model", "m", "--override", "fc2=rtn:8,4"], "takes one bit width"),
    ],
)
def test_bad_arguments_fail_before_the_heavy_imports(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess

    code = "import sys; from losslab.cli.app import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
    code += "    print('torch' in sys.modules, 'lightning' in sys.modules, file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and fragment in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False False", done.stderr
