"""``losslab translate``: the demo, train on files, eval with --json, FNL's flag spellings, the shipped config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from losslab.cli import cli
from losslab.errors import ConfigError
from losslab.seq2seq.toy import toy_corpus

pytest.importorskip("sacrebleu")


def _write(tmp_path: Path, name: str, pairs: list[tuple[str, str]]) -> tuple[str, str]:
    src, tgt = tmp_path / f"{name}.src", tmp_path / f"{name}.tgt"
    src.write_text("\n".join(s for s, _ in pairs) + "\n")
    tgt.write_text("\n".join(t for _, t in pairs) + "\n")
    return str(src), str(tgt)


def test_train_then_eval_from_files_with_seed_flags(tmp_path: Path) -> None:
    corpus = toy_corpus(120, 0, 20, seed=1)
    train_src, train_tgt = _write(tmp_path, "train", corpus["train"])
    test_src, test_tgt = _write(tmp_path, "test", corpus["test"])
    run = tmp_path / "run"
    args = ["translate", "train", "--out-dir", str(run), "--src-file", train_src, "--tgt-file", train_tgt,
            "--arch", "toy", "--vocab-size", "80", "--max-epochs", "1", "--rank-scale", "0.5", "--spectral",
            "--wd2fd", "--spectral-quekey", "--spectral-outval", "--wd2fd-quekey", "--wd2fd-outval",
            "--clip-norm", "0.1", "--accelerator", "cpu"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["attention_fd_ov"] and saved["attention_spectral_qk"] and saved["gradient_clip"] == 0.1
    assert saved["data"] == {"src_file": str(Path(train_src).resolve()), "tgt_file": str(Path(train_tgt).resolve())}
    assert "epoch 1/1: loss" in result.stderr and "target tokens/s" in result.stderr  # one line per epoch
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "result.json").is_file()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "--overwrite" in str(again.exception)
    out = tmp_path / "bleu.json"
    eval_args = ["translate", "eval", "--out-dir", str(run), "--src-file", test_src, "--tgt-file", test_tgt,
                 "--beam", "2", "--json", str(out), "--device", "cpu"]  # fmt: skip
    ev = CliRunner().invoke(cli, eval_args)
    assert ev.exit_code == 0, ev.output
    data = json.loads(out.read_text())
    assert 0.0 <= data["bleu"] <= 100.0 and "tok:13a" in data["signature"] and "BPE" in ev.output


def test_shipped_fnl_config_and_bad_sources(tmp_path: Path) -> None:
    from losslab.cli.translate import _config, _corpus
    from losslab.seq2seq.config import TranslateInputs

    cfg = _config("fnl_iwslt14", {})
    assert (cfg.optimizer, cfg.lr, cfg.max_tokens, cfg.rank_scale, cfg.dropout) == ("nag", 0.25, 4000, 0.5, 0.2)
    assert cfg.attention_fd_qk and cfg.attention_fd_ov and cfg.attention_spectral_ov and cfg.beam == 5
    with pytest.raises(ConfigError, match="exactly one data source"):
        _corpus(TranslateInputs())
    with pytest.raises(ConfigError, match="both its source and target"):
        _corpus(TranslateInputs(src_file="a", tgt_file="b", valid_src="c"))


@pytest.mark.slow
def test_demo_prints_bleu_before_and_after(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["translate", "demo", "--out-dir", str(tmp_path / "d"), "--epochs", "1",
                                      "--accelerator", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "untrained test: BLEU = " in result.output and "sacrebleu signature: nrefs:1" in result.output
    assert json.loads((tmp_path / "d" / "result.json").read_text())["epochs"] == 1
    bad = CliRunner().invoke(cli, ["translate", "demo", "--out-dir", str(tmp_path / "e"), "--devices", "2"])
    assert bad.exit_code != 0 and "one device" in str(bad.exception)


def test_half_precision_without_a_gpu_is_refused_before_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["translate", "train", "--toy", "--arch", "toy", "--precision", "16-mixed",
                                      "--accelerator", "cpu", "--out-dir", str(run)])  # fmt: skip
    assert result.exit_code != 0 and "16-mixed' needs a GPU" in str(result.exception) and not run.exists()
