"""Causal-LM finetuning as a task of the plain loop: a killed run resumes bit-identically; the schedule is HF's
warmup-linear-decay per step; the batches of a step depend only on the step; validation perplexity is exact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import losslab.io
from losslab.lm.config import FinetuneConfig
from losslab.lm.finetune import CausalLMTask, StepBatches, WarmupLinearDecay, eval_batches, finetune
from losslab.lm.offline import byte_tokenizer, tiny_opt

TIMING = ("per_s", "seconds", "_time")  # row entries measured with a clock, not computed from the weights


def _dropout_opt():
    """A tiny OPT with dropout 0.1 (so resume must also reproduce the dropout masks)."""
    return tiny_opt(seed=0, dropout=0.1)


def _cfg(out: Path, text: Path, **kw) -> FinetuneConfig:
    base = dict(model="tiny", out_dir=out, text_file=text, block_size=32, batch_size=2, grad_accum=2, epochs=2,
                lr=3e-3, warmup_steps=3, checkpoint_every=16, eval_every=16, max_eval_windows=4, progress=False,
                accelerator="cpu")  # fmt: skip
    return FinetuneConfig.build({**base, **kw})


class Killed(Exception):
    """What a kill right after the first checkpoint leaves behind."""


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def _rows(run: Path) -> list[dict]:
    rows = json.loads((run / "history.json").read_text())
    return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in rows]


@pytest.mark.slow
def test_two_intervals_straight_equal_one_then_resume_bit_for_bit(tmp_path, corpus, monkeypatch) -> None:
    text = tmp_path / "train.txt"
    text.write_text(corpus["train"][:2400])  # ~67 training blocks of 32 -> ~17 steps per pass, 2 passes
    straight = finetune(_cfg(tmp_path / "a", text), model=_dropout_opt(), tokenizer=byte_tokenizer())
    assert 32 < straight.global_step <= 48 and len(_rows(tmp_path / "a")) == 3  # intervals of 16 steps

    original, saves = losslab.io.save_torch_atomic, []

    def save_then_die(obj, path, *args, **kwargs):
        original(obj, path, *args, **kwargs)
        saves.append(path)
        raise Killed

    monkeypatch.setattr(losslab.io, "save_torch_atomic", save_then_die)
    with pytest.raises(Killed):
        finetune(_cfg(tmp_path / "b", text), model=_dropout_opt(), tokenizer=byte_tokenizer())
    monkeypatch.setattr(losslab.io, "save_torch_atomic", original)
    assert len(saves) == 1 and not (tmp_path / "b" / "result.json").exists()
    other = _dropout_opt()
    with torch.no_grad():
        for param in other.parameters():
            param.add_(1.0)  # the checkpoint's weights must replace these
    resumed = finetune(_cfg(tmp_path / "b", text, resume=tmp_path / "b"), model=other, tokenizer=byte_tokenizer())
    assert resumed.resumed_from_step == 16 and resumed.global_step == straight.global_step
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    assert resumed.val_ppl_after == straight.val_ppl_after


def test_schedule_is_hugging_face_linear_warmup_decay_per_step() -> None:
    from transformers import get_linear_schedule_with_warmup

    params = [torch.nn.Parameter(torch.zeros(1))]
    ours_opt, ref_opt = torch.optim.SGD(params, lr=0.5), torch.optim.SGD(params, lr=0.5)
    ours, ref = WarmupLinearDecay(ours_opt, 4, 11), get_linear_schedule_with_warmup(ref_opt, 4, 11)
    for _ in range(13):
        assert ours_opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
        ours_opt.step()
        ref_opt.step()
        ours.step(epoch=3)  # the loop's per-epoch call does not move a per-step schedule
        ours.step_batch()
        ref.step()
    restored = WarmupLinearDecay(torch.optim.SGD(params, lr=0.5), 4, 11)
    restored.load_state_dict(ours.state_dict())
    assert restored.lambda_lr.last_epoch == 13


def test_step_batches_depend_only_on_the_step_and_cover_each_pass() -> None:
    blocks = {"input_ids": torch.arange(10).unsqueeze(1), "labels": torch.arange(10).unsqueeze(1)}
    loader = StepBatches(blocks, step_blocks=3, every=3, total_steps=8, seed=7)  # 4 steps per pass
    assert loader.intervals == 3 and loader.steps_per_pass == 4
    steps = []
    for epoch in range(loader.intervals):
        loader.sampler.set_epoch(epoch)
        steps.extend(batch["input_ids"].flatten().tolist() for batch in loader)
    assert [len(s) for s in steps] == [3, 3, 3, 1, 3, 3, 3, 1]
    for first in (0, 4):
        assert sorted(i for step in steps[first : first + 4] for i in step) == list(range(10))  # each block once
    assert steps[:4] != steps[4:]  # a new order for the second pass
    loader.set_epoch(2)
    assert [b["input_ids"].flatten().tolist() for b in loader] == steps[6:]  # a resume at interval 2 sees the same


def test_validation_tally_gives_exact_token_perplexity_over_uneven_batches() -> None:
    model = tiny_opt(seed=0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (5, 16), generator=gen)
    labels = ids.clone()
    labels[4, 9:] = -100  # a padded last block
    blocks = {"input_ids": ids, "attention_mask": (labels != -100).long(), "labels": labels}
    cfg = FinetuneConfig.build({"model": "tiny", "out_dir": "unused", "loss": "root", "k": 3.0, "m": 2.0})
    task = CausalLMTask(model, cfg, total_steps=1)
    with torch.no_grad():
        tally = sum(task.eval_tally(batch, "val", lambda *a, **k: None) for batch in eval_batches(blocks, 2))
        logits = model(input_ids=ids, attention_mask=blocks["attention_mask"]).logits.double()
    metrics = task.tally_metrics("val", tally)
    z, y = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    valid = y != -100
    ce = torch.nn.functional.cross_entropy(z[valid], y[valid])  # float64, all tokens at once
    p_y = torch.softmax(z[valid], -1).gather(1, y[valid, None]).squeeze(1)
    rooted = (2.0 * (1 - p_y ** (1 / 3.0))).mean()
    assert tally[2].item() == valid.sum().item()
    assert math.isclose(metrics["val/ce"], ce.item(), rel_tol=1e-6)
    assert math.isclose(metrics["val/ppl"], math.exp(ce.item()), rel_tol=1e-6)
    assert math.isclose(metrics["val/objective"], rooted.item(), rel_tol=1e-6)
