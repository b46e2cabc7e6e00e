"""``lm finetune`` under ``torchrun`` (DDP, gloo, 2 CPU processes) against one process with the same global step.

One process with ``batch_size 2 x grad_accum 2`` and two processes with ``1 x 2`` each take the same 4 blocks per
optimizer step (rank r: rows r::2 of the step), and each rank divides its summed token loss by half the step's
scored tokens, so DDP's mean of the two gradients is the single process's gradient of the step's token mean. The
30 training blocks make the last step of each pass a 2-block one (one block per rank). In float64 the two runs
differ only by the order of the gradient sums (rank sums, then the all-reduce, instead of one sum): about 1e-16
relative per step, which 16 AdamW steps (the update divides by sqrt(v)) leave below 1e-10 (measured 4e-15 on the
2-vCPU VM); a loss over per-rank token counts, a rank training on the wrong rows or a missing gradient average moves
the weights by more than 1e-4. The history's logged scalars are rounded to float32 by the loop (1e-6 relative).
``tests/ddp_guard`` makes any write of a rank other than 0 under the run's folder raise.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

import ddp_runs
from ddp_runs import needs_torchrun, rows, weights
from losslab.lm.config import FinetuneConfig
from losslab.lm.data import eval_windows, tokenize_text, training_blocks
from losslab.lm.finetune import CausalLMTask, StepBatches, eval_batches
from losslab.lm.offline import byte_tokenizer, tiny_opt
from losslab.objectives.token import count_predicted_tokens
from losslab.runs.loop import Precision, evaluate, load_task_state


def launch(tmp_path: Path, nproc: int, *args: str) -> subprocess.CompletedProcess[str]:
    """tests/ddp_script.py lm ARGS in one process (nproc 1) or under torchrun; writes by ranks > 0 refused."""
    return ddp_runs.launch(tmp_path, nproc, "lm", (*args, "--data", str(tmp_path)), tmp_path / "runs")


@pytest.fixture
def data(tmp_path: Path, corpus: dict[str, str]) -> Path:
    """train.txt (30 blocks of 32 tokens: ≡ 2 mod 4) and val.txt in ``tmp_path``."""
    (tmp_path / "train.txt").write_text(corpus["train"][:940])
    (tmp_path / "val.txt").write_text(corpus["validation"][:2000])
    tok = byte_tokenizer()
    assert training_blocks(tokenize_text(tok, corpus["train"][:940]), 32, tok.pad_token_id)["input_ids"].shape[0] == 30
    return tmp_path


@pytest.mark.slow
@needs_torchrun
def test_two_ranks_train_what_one_process_trains_float64(data: Path) -> None:
    runs = data / "runs"
    one = launch(data, 1, str(runs / "one"), "--batch", "2", "--grad-accum", "2", "--float64")
    assert one.returncode == 0, one.stderr
    two = launch(data, 2, str(runs / "two"), "--batch", "1", "--grad-accum", "2", "--float64")
    assert two.returncode == 0, two.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]  # no lock, staging or stray file left
    listing = {run: sorted(str(p.relative_to(runs / run)) for p in (runs / run).rglob("*")) for run in ("one", "two")}
    assert listing["two"] == listing["one"]
    r1, r2 = rows(runs / "one"), rows(runs / "two")
    assert [(r["epoch"], r["step"]) for r in r2] == [(r["epoch"], r["step"]) for r in r1]
    assert r1[-1]["step"] == 16  # 2 passes of ceil(30 / 4) steps
    for a, b in zip(r1, r2, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-6), key
    w1, w2 = weights(runs / "one"), weights(runs / "two")
    assert w1.keys() == w2.keys() and w1["model.lm_head.weight"].dtype == torch.float64
    for key in w1:
        assert (w1[key] - w2[key]).abs().max() <= 1e-10 * (1 + w1[key].abs().max()), key
    res1, res2 = (json.loads((runs / run / "result.json").read_text()) for run in ("one", "two"))
    assert res2["val_ppl_before"] == res1["val_ppl_before"]  # the same untrained weights, rank 0 alone measures
    assert res2["val_ppl_after"] == pytest.approx(res1["val_ppl_after"], rel=1e-10)
    assert res2["global_step"] == res1["global_step"] == 16


@pytest.mark.slow
@needs_torchrun
def test_killed_run_resumes_under_torchrun_and_validation_equals_one_process(data: Path) -> None:
    runs = data / "runs"
    straight = launch(data, 2, str(runs / "straight"), "--batch", "1", "--grad-accum", "2")
    assert straight.returncode == 0, straight.stderr
    killed = launch(data, 2, str(runs / "cut"), "--batch", "1", "--grad-accum", "2", "--kill")
    assert killed.returncode != 0 and "Killed" in killed.stderr
    assert not (runs / "cut" / "result.json").exists() and len(rows(runs / "cut")) == 1
    single = launch(data, 1, str(runs / "cut"), "--batch", "1", "--grad-accum", "2", "--resume")
    assert single.returncode != 0 and "trained by 2 process(es) and this launch has 1" in single.stderr
    resumed = launch(data, 2, str(runs / "cut"), "--batch", "1", "--grad-accum", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert rows(runs / "cut") == rows(runs / "straight")  # bit-identical: same batches, same reduction order
    w_straight, w_cut = weights(runs / "straight"), weights(runs / "cut")
    assert all(torch.equal(w_straight[key], w_cut[key]) for key in w_straight)

    # The last validation (two ranks, each its batches) equals one process's evaluation of the same weights.
    cfg = FinetuneConfig.build({"model": "tiny", "out_dir": runs / "x", "block_size": 32, "batch_size": 1,
                                "grad_accum": 2, "progress": False, "accelerator": "cpu"})  # fmt: skip
    tok = byte_tokenizer()
    windows = eval_windows(tokenize_text(tok, (data / "val.txt").read_text()), 32, 12)
    val = eval_batches(training_blocks(windows.reshape(-1), 32, tok.pad_token_id), 1)
    assert len(val) == 12  # each rank evaluated 6 of them
    task = CausalLMTask(tiny_opt(seed=0), cfg, total_steps=16)
    load_task_state(task, w_cut)
    cpu = torch.device("cpu")
    metrics = evaluate(task, val, "val", cpu, Precision("32", cpu))
    last = rows(runs / "cut")[-1]
    assert (last["val/ce"], last["val/ppl"]) == (metrics["val/ce"], metrics["val/ppl"])
    assert last["val/ppl"] == math.exp(last["val/ce"])


def test_rank_shares_of_a_step_are_the_single_process_step() -> None:
    """In one process: rank r's rows of a step are rows r::2 of the global step, so the two shares interleaved are the
    one-process step of twice the blocks; ``step_tokens`` counts the whole step; a pass trains every block once, but
    with an odd block count one block of its permutation (the last) is left out, so both ranks have rows every step."""

    def blocks(n: int) -> dict[str, torch.Tensor]:
        ids = torch.arange(n * 4).reshape(n, 4)  # block k's ids start at 4k
        labels = ids.clone()
        labels[n - 1, 2:] = -100  # a padded last block: token counts differ between rows
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    for n in (14, 15):  # 4 steps per pass (one process: 4 blocks a step; two: 2 each), 2 passes
        data = blocks(n)
        one = StepBatches(data, 4, every=4, total_steps=8, seed=7)
        ranks = [StepBatches(data, 2, every=4, total_steps=8, seed=7, rank=r, world=2) for r in (0, 1)]
        for epoch in (0, 1):  # an epoch (4 steps) is a pass here
            for loader in (one, *ranks):
                loader.set_epoch(epoch)
            seen: list[int] = []
            for i, (single, a, b) in enumerate(zip(one, *ranks, strict=True)):
                assert len(a["input_ids"]) == len(b["input_ids"]) >= 1
                rows = torch.stack([a["input_ids"], b["input_ids"]], 1).reshape(-1, 4)
                index = rows[:, 0] // 4
                seen += index.tolist()
                assert a["step_tokens"] == b["step_tokens"] == count_predicted_tokens(data["labels"][index])
                if n == 14 or i < 3:  # 15 blocks: one process's last step has 3 blocks, the ranks' 2 (one left out)
                    assert torch.equal(rows, single["input_ids"])
            assert len(seen) == len(set(seen)) == n - n % 2
