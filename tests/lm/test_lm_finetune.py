"""Finetuning (llm.md §1, §3, §8): rooted-loss steps lower held-out CE, resume after interruption, CLI end to end."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from losslab.cli.lm import lm
from losslab.errors import LosslabError
from losslab.lm.finetune import finetune
from losslab.lm.offline import byte_tokenizer, tiny_opt

#: A short rooted-loss run: 2-block accumulation, a checkpoint (and validation) every 50 steps.
ROOTED = dict(loss="root", lr=3e-3, warmup_steps=5, batch_size=4, grad_accum=2, eval_every=50, checkpoint_every=50,
              max_eval_windows=8)  # fmt: skip


@pytest.mark.slow
def test_fifty_rooted_loss_steps_lower_held_out_perplexity(tmp_path, finetune_config) -> None:
    cfg = finetune_config(ROOTED, max_steps=50)
    result = finetune(cfg, model=tiny_opt(seed=0), tokenizer=byte_tokenizer())
    assert result.global_step == 50
    assert result.val_ppl_after < 0.5 * result.val_ppl_before  # perplexity is exp(CE), not exp(rooted loss)
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert stored["val_ppl_after"] == result.val_ppl_after
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert [row["step"] for row in json.loads((tmp_path / "run" / "history.json").read_text())] == [50]


@pytest.mark.slow
def test_interrupted_finetuning_resumes_from_last_checkpoint(tmp_path, finetune_config) -> None:
    """Killed after step 3's checkpoint (as a kill would leave it: no result.json), --resume continues at step 3."""
    run = tmp_path / "run"
    first = finetune(
        finetune_config(ROOTED, max_steps=3, checkpoint_every=1, warmup_steps=1),
        model=tiny_opt(seed=0),
        tokenizer=byte_tokenizer(),
    )
    assert first.global_step == 3 and (run / "checkpoints" / "last.ckpt").is_file()
    (run / "result.json").unlink()
    second = finetune(
        finetune_config(ROOTED, max_steps=5, checkpoint_every=1, warmup_steps=1, resume=run),
        model=tiny_opt(seed=1),
        tokenizer=byte_tokenizer(),
    )
    assert second.resumed_from_step == 3 and second.global_step == 5
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [0, 1, 2, 3, 4]


def test_missing_pad_token_and_bad_config_fail_before_work(finetune_config) -> None:
    with pytest.raises(LosslabError, match="--pad-token eos"):
        finetune(finetune_config(ROOTED, max_steps=1), model=tiny_opt(), tokenizer=byte_tokenizer(False))
    with pytest.raises(LosslabError, match="block_size"):
        finetune_config(ROOTED, block_size=0)
    with pytest.raises(LosslabError, match="context is 128"):
        finetune(finetune_config(ROOTED, block_size=512), model=tiny_opt(), tokenizer=byte_tokenizer())


@pytest.mark.slow
def test_cli_quantize_then_eval_a_local_model(tmp_path, trained_model, tokenizer, text_files) -> None:
    folder = tmp_path / "tiny-opt"
    trained_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    train, val = text_files
    runner = CliRunner()
    out = tmp_path / "tiny.gptq4.safetensors"
    quant = runner.invoke(
        lm,
        [
            "quantize",
            "--model",
            str(folder),
            "--method",
            "gptq",
            "--bits",
            "4",
            "--text-file",
            str(train),
            "--calib-windows",
            "8",
            "--seqlen",
            "64",
            "--output",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert quant.exit_code == 0, quant.output
    assert json.loads(out.with_suffix(".json").read_text())["summary"]["quantized_layers"] == 12
    evals = {}
    for model in (folder, out):
        res = runner.invoke(
            lm,
            [
                "eval",
                "--model",
                str(model),
                "--text-file",
                str(val),
                "--seqlen",
                "64",
                "--device",
                "cpu",
                "--no-progress",
            ],
        )
        assert res.exit_code == 0, res.output
        assert "64-token non-overlapping windows" in res.output
        evals[model] = float(res.output.split("perplexity ")[1].split()[0])
    assert evals[out] > evals[folder] and abs(evals[out] / evals[folder] - 1) < 0.05
    bad = runner.invoke(
        lm, ["eval", "--model", str(folder), "--text-file", str(val), "--seqlen", "4096", "--device", "cpu"]
    )
    assert bad.exit_code != 0 and "context is 128" in str(bad.exception)
