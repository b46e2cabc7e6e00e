"""Finetuning trains in train mode: dropout of the HF model is active in every training step (issue 13); the
precision names; bf16 autocast on a GPU."""

from __future__ import annotations

import pytest
import torch

from losslab.errors import LosslabError
from losslab.lm.config import PRECISIONS, FinetuneConfig
from losslab.lm.finetune import CausalLMTask, finetune
from losslab.lm.offline import byte_tokenizer, tiny_opt


def _dropout_opt():
    """A tiny OPT with dropout 0.5, returned in eval mode like HF ``from_pretrained`` does."""
    return tiny_opt(seed=0, dropout=0.5)


def _record_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, bool, bool]]:
    """Per training micro-batch: (model in train mode, every dropout in train mode, two forwards differ)."""
    seen: list[tuple[bool, bool, bool]] = []
    original = CausalLMTask.training_loss

    def recording_loss(self, batch, epoch, log):
        with torch.no_grad():
            first, second = self._logits(batch), self._logits(batch)
        dropouts = [m for m in self.model.modules() if isinstance(m, torch.nn.Dropout)]
        seen.append((self.model.training, all(m.training for m in dropouts), not torch.equal(first, second)))
        return original(self, batch, epoch, log)

    monkeypatch.setattr(CausalLMTask, "training_loss", recording_loss)
    return seen


def test_dropout_is_active_in_training_steps(finetune_config, monkeypatch) -> None:
    seen = _record_steps(monkeypatch)
    cfg = finetune_config(
        warmup_steps=1, max_steps=2, grad_accum=1, eval_every=1, checkpoint_every=1, max_eval_windows=2
    )
    finetune(cfg, model=_dropout_opt(), tokenizer=byte_tokenizer())
    assert len(seen) == 2  # the second step follows a validation run (eval mode) and must be in train mode again
    assert all(training and dropout_on and differs for training, dropout_on, differs in seen), seen


def test_precision_names_and_old_spellings() -> None:
    assert PRECISIONS == ("32-true", "16-mixed", "bf16-mixed", "bf16-true")
    with pytest.raises(LosslabError, match="bf16-mixed"):
        FinetuneConfig.build({"model": "m", "out_dir": "o", "precision": "bf16"})  # the CLI maps it, with a warning


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_mixed_finetuning_on_gpu_trains_with_dropout(finetune_config, monkeypatch) -> None:
    modes: list[bool] = []
    original = CausalLMTask.training_loss

    def recording_loss(self, batch, epoch, log):
        modes.append(self.model.training and batch["input_ids"].is_cuda and torch.is_autocast_enabled("cuda"))
        return original(self, batch, epoch, log)

    monkeypatch.setattr(CausalLMTask, "training_loss", recording_loss)
    cfg = finetune_config(
        lr=3e-3,
        warmup_steps=2,
        max_steps=20,
        eval_every=10,
        checkpoint_every=10,
        max_eval_windows=8,
        precision="bf16-mixed",
        accelerator="gpu",
    )
    result = finetune(cfg, model=_dropout_opt(), tokenizer=byte_tokenizer())
    assert modes and all(modes) and result.global_step == 20
    assert result.val_ppl_after < result.val_ppl_before  # it learned under bf16 autocast with dropout on
