"""Finetuning trains in train mode: dropout of the HF model is active in every training step (issue 13)."""

from __future__ import annotations

import pytest
import torch

from losslab.lm import finetune as finetune_module
from losslab.lm.finetune import PRECISIONS, CausalLMFinetune, FinetuneConfig, finetune
from losslab.lm.offline import byte_tokenizer, tiny_opt_config


def _dropout_opt():
    """A tiny OPT with dropout 0.5, returned in eval mode like HF ``from_pretrained`` does."""
    from transformers import OPTForCausalLM

    torch.manual_seed(0)
    config = tiny_opt_config()
    config.dropout = 0.5
    config._attn_implementation = "eager"
    return OPTForCausalLM(config).eval()


def test_dropout_is_active_in_training_steps(tmp_path, corpus, monkeypatch) -> None:
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text(corpus["train"])
    val.write_text(corpus["validation"])
    seen: list[tuple[bool, bool, bool]] = []
    original = CausalLMFinetune.training_step

    def recording_step(self, batch, batch_idx):
        micro = {k: v[:2] for k, v in batch.items()}
        with torch.no_grad():
            first, second = self._logits(micro), self._logits(micro)
        dropouts = [m for m in self.model.modules() if isinstance(m, torch.nn.Dropout)]
        seen.append((self.model.training, all(m.training for m in dropouts), not torch.equal(first, second)))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(finetune_module.CausalLMFinetune, "training_step", recording_step)
    cfg = FinetuneConfig(
        model="tiny",
        output_dir=str(tmp_path / "run"),
        text_file=str(train),
        val_file=str(val),
        block_size=64,
        warmup_steps=1,
        max_steps=2,
        eval_every=1,
        checkpoint_every=10,
        max_eval_windows=2,
        progress=False,
        accelerator="cpu",
        devices="1",
    )
    finetune(cfg, model=_dropout_opt(), tokenizer=byte_tokenizer())
    assert len(seen) == 2  # the second step follows a validation run (eval mode) and must be in train mode again
    assert all(training and dropout_on and differs for training, dropout_on, differs in seen), seen


def test_precision_takes_lightning_values_only() -> None:
    from losslab.cli.lm import PRECISIONS as CLI_PRECISIONS
    from losslab.errors import LosslabError

    assert CLI_PRECISIONS == PRECISIONS
    with pytest.raises(LosslabError, match="bf16-mixed"):
        FinetuneConfig(model="m", output_dir="o", precision="bf16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_mixed_finetuning_on_gpu_trains_with_dropout(tmp_path, corpus, monkeypatch) -> None:
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text(corpus["train"])
    val.write_text(corpus["validation"])
    modes: list[bool] = []
    original = CausalLMFinetune.training_step

    def recording_step(self, batch, batch_idx):
        modes.append(self.model.training and batch["input_ids"].is_cuda)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(finetune_module.CausalLMFinetune, "training_step", recording_step)
    cfg = FinetuneConfig(
        model="tiny",
        output_dir=str(tmp_path / "run"),
        text_file=str(train),
        val_file=str(val),
        block_size=64,
        lr=3e-3,
        warmup_steps=2,
        max_steps=20,
        eval_every=10,
        checkpoint_every=10,
        max_eval_windows=8,
        precision="bf16-mixed",
        progress=False,
        accelerator="gpu",
        devices="1",
    )
    result = finetune(cfg, model=_dropout_opt(), tokenizer=byte_tokenizer())
    assert modes and all(modes) and result.global_step == 20
    assert result.val_ppl_after < result.val_ppl_before  # it learned under bf16 autocast with dropout on
