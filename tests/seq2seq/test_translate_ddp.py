"""``translate train`` under ``torchrun`` (DDP, gloo, 2 CPU processes) against one process with the same batches.

One process with ``--max-tokens 512`` and two processes with ``256`` each cut the same token batches (of
``max_tokens x processes`` tokens) and rank r trains on sentences r::2 of each; each rank divides its summed loss
by half the batch's target tokens, so DDP's mean of the two gradients is the single process's gradient of the
per-token loss. In float64 the runs differ by the order of the gradient sums and by the padding (a rank pads to
its own longest sentence: other matrix shapes, other summation order): about 1e-16 relative per step, which 8
Adam steps leave below 1e-10 (measured 1e-12 on the 2-vCPU VM); a per-rank token mean (the ranks' token counts
differ) or a rank training on the wrong sentences moves the weights by far more. The history's logged training
loss is rounded to float32 by the loop (1e-6 relative). ``tests/ddp_guard`` makes any write of a rank other than 0
under the run's folder raise.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

import ddp_runs
from ddp_runs import needs_torchrun, rows, weights
from losslab.runs.loop import Precision, evaluate, load_task_state
from losslab.seq2seq.config import TranslateConfig
from losslab.seq2seq.task import EvalBatches, TranslationTask
from losslab.seq2seq.tokenizer import SubwordTokenizer
from losslab.seq2seq.toy import toy_corpus
from losslab.seq2seq.train import build_model


def launch(tmp_path: Path, nproc: int, *args: str) -> subprocess.CompletedProcess[str]:
    """tests/ddp_script.py translate ARGS in one process (nproc 1) or under torchrun; writes by ranks > 0 refused."""
    return ddp_runs.launch(tmp_path, nproc, "translate", args, tmp_path)


EVAL = ("--eval-batch", "20")  # one evaluation batch per split: rank 1's shares are empty


@pytest.mark.slow
@needs_torchrun
def test_two_ranks_train_what_one_process_trains_float64(tmp_path: Path) -> None:
    one = launch(tmp_path, 1, str(tmp_path / "one"), "--batch", "512", "--float64")
    assert one.returncode == 0, one.stderr
    two = launch(tmp_path, 2, str(tmp_path / "two"), "--batch", "256", "--float64")
    assert two.returncode == 0, two.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no lock, staging or stray file left
    # (3 evaluation batches of 8 sentences per split: rank 0 evaluates 2, rank 1 one)
    listing = {
        run: sorted(str(p.relative_to(tmp_path / run)) for p in (tmp_path / run).rglob("*")) for run in ("one", "two")
    }
    assert listing["two"] == listing["one"]
    assert (tmp_path / "two" / "tokenizer.json").read_bytes() == (tmp_path / "one" / "tokenizer.json").read_bytes()
    r1, r2 = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [(r["epoch"], r["step"]) for r in r2] == [(r["epoch"], r["step"]) for r in r1] == [(0, 4), (1, 8)]
    for a, b in zip(r1, r2, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-6), key
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert w1.keys() == w2.keys() and w1["model.output.weight"].dtype == torch.float64
    for key in w1:
        if w1[key].is_floating_point():
            assert (w1[key] - w2[key]).abs().max() <= 1e-10 * (1 + w1[key].abs().max()), key
    res1, res2 = (json.loads((tmp_path / run / "result.json").read_text()) for run in ("one", "two"))
    for split in ("valid", "test"):
        assert res2[split]["bleu"] == pytest.approx(res1[split]["bleu"], rel=1e-9)
        assert res2[split]["example"] == res1[split]["example"]  # rank 0 evaluated the first sentence
    assert (res2["epochs"], res2["steps"]) == (res1["epochs"], res1["steps"]) == (2, 8)


@pytest.mark.slow
@needs_torchrun
def test_killed_run_resumes_under_torchrun_and_evaluation_equals_one_process(tmp_path: Path) -> None:
    straight = launch(tmp_path, 2, str(tmp_path / "straight"), "--batch", "256", *EVAL)
    assert straight.returncode == 0, straight.stderr
    killed = launch(tmp_path, 2, str(tmp_path / "cut"), "--batch", "256", *EVAL, "--kill")
    assert killed.returncode != 0 and "Killed" in killed.stderr
    assert not (tmp_path / "cut" / "result.json").exists() and len(rows(tmp_path / "cut")) == 1
    single = launch(tmp_path, 1, str(tmp_path / "cut"), "--batch", "256", *EVAL, "--resume")
    assert single.returncode != 0 and "trained by 2 process(es) and this launch has 1" in single.stderr
    resumed = launch(tmp_path, 2, str(tmp_path / "cut"), "--batch", "256", *EVAL, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert rows(tmp_path / "cut") == rows(tmp_path / "straight")  # bit-identical
    w_straight, w_cut = weights(tmp_path / "straight"), weights(tmp_path / "cut")
    assert all(torch.equal(w_straight[key], w_cut[key]) for key in w_straight)

    # Validation and test (two ranks, each its batches, tallies summed) equal one process's evaluation of the
    # same weights: the per-batch sums are the same float32 numbers, added exactly in float64; BLEU's counts are
    # integers. Each split is one batch of 20 sentences here: rank 1 evaluates none and adds zeros.
    cfg = TranslateConfig.build({"arch": "toy", "vocab_size": 80, "dropout": 0.0, "eval_batch_size": 20, "beam": 2})
    tok = SubwordTokenizer.load(tmp_path / "cut" / "tokenizer.json")
    model = build_model(cfg, tok.vocab_size)
    task = TranslationTask(cfg, model, tok, bleu_epoch=0)
    load_task_state(task, w_cut)
    corpus, cpu = toy_corpus(96, 20, 20, seed=1), torch.device("cpu")
    result = json.loads((tmp_path / "cut" / "result.json").read_text())
    for split, stage, reported in (("valid", "val", rows(tmp_path / "cut")[-1]), ("test", "test", None)):
        batches = EvalBatches(tok, corpus[split], 20, model.cfg.max_positions - 1)
        assert len(batches) == 1
        metrics = evaluate(task, batches, stage, cpu, Precision("32", cpu))
        assert result[split]["bleu"] == metrics[f"{stage}/bleu"] and result[split]["example"] == task.examples[stage]
        if reported is not None:
            assert (reported["val/loss"], reported["val/ce"]) == (metrics["val/loss"], metrics["val/ce"])


def test_rank_shares_partition_the_single_process_batches() -> None:
    """In one process: each token batch of --max-tokens 2M is split r::2 into the two ranks' shares of --max-tokens M
    (``tokens`` each share's targets, ``step_tokens`` the batch's); the ranks' evaluation batches are the single
    process's, each once, rank 0 holding the first sentence's (a rank may hold none); a batch of one sentence is
    refused under two processes."""
    from losslab.errors import ConfigError
    from losslab.seq2seq.task import TrainBatches

    corpus = toy_corpus(60, 11, 0, seed=3)
    tok = SubwordTokenizer.train([t for pair in corpus["train"] for t in pair], 80)
    src, tgt = tok.encode_batch([s for s, _ in corpus["train"]]), tok.encode_batch([t for _, t in corpus["train"]])
    one = TrainBatches(src, tgt, 256, seed=5, max_updates=None)
    ranks = [TrainBatches(src, tgt, 128, seed=5, max_updates=None, rank=r, world=2) for r in (0, 1)]
    for epoch in (0, 1):
        for loader in (one, *ranks):
            loader.set_epoch(epoch)
        for single, a, b in zip(one, *ranks, strict=True):
            assert a["step_tokens"] == b["step_tokens"] == single["tokens"] == a["tokens"] + b["tokens"]
            assert len(a["src"]) == (len(single["src"]) + 1) // 2 and len(b["src"]) == len(single["src"]) // 2
            for key in ("src", "tgt_in", "labels"):  # rows r::2 of the single batch, padded to the share's longest
                for share, want in ((a, single[key][0::2]), (b, single[key][1::2])):
                    assert torch.equal(share[key], want[:, : share[key].shape[1]])
    with pytest.raises(ConfigError, match="fewer than 2 sentences"):
        longest = max(max(len(s), len(t) + 1) for s, t in zip(src, tgt, strict=True))  # fits 2 x M, not twice
        TrainBatches(src, tgt, (longest + 1) // 2, seed=5, max_updates=None, rank=0, world=2)

    for size, world in ((2, 2), (4, 3), (11, 2)):
        full = EvalBatches(tok, corpus["valid"], size, 64)
        shares = [EvalBatches(tok, corpus["valid"], size, 64, rank=r, world=world).batches for r in range(world)]
        assert sorted(b for share in shares for b in share) == sorted(full.batches)
        assert any(0 in batch for batch in shares[0])
    assert shares[1] == []  # one batch of 11: rank 1 evaluates nothing
