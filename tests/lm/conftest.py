"""Offline fixtures for the LM tests: byte tokenizer, synthetic corpus, and a tiny OPT trained on it once."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

from losslab.lm.config import FinetuneConfig
from losslab.lm.data import tokenize_text
from losslab.lm.offline import byte_tokenizer, synthetic_corpus, tiny_opt
from losslab.objectives.token import TokenLossSpec, causal_lm_loss

BLOCK = 64


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="session")
def corpus() -> dict[str, str]:
    return synthetic_corpus(seed=0)


@pytest.fixture
def text_files(corpus, tmp_path):
    """The corpus's train and validation text as files: (train.txt, val.txt)."""
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text(corpus["train"])
    val.write_text(corpus["validation"])
    return train, val


@pytest.fixture
def finetune_config(tmp_path, text_files) -> Callable[..., FinetuneConfig]:
    """``build(*recipes, **overrides)``: a FinetuneConfig of the tiny OPT on CPU over ``text_files`` (64-token
    blocks, run folder ``tmp_path/run``, no progress output), then the ``recipes`` dicts and ``overrides`` in order."""
    train, val = text_files
    base = dict(model="tiny", out_dir=tmp_path / "run", text_file=train, val_file=val, block_size=64,
                progress=False, accelerator="cpu")  # fmt: skip

    def build(*recipes: dict[str, Any], **overrides: Any) -> FinetuneConfig:
        values = dict(base)
        for recipe in (*recipes, overrides):
            values.update(recipe)
        return FinetuneConfig.build(values)

    return build


@pytest.fixture(scope="session")
def token_ids(tokenizer, corpus) -> dict[str, torch.Tensor]:
    return {split: tokenize_text(tokenizer, text) for split, text in corpus.items()}


@pytest.fixture(scope="session")
def _trained_state(token_ids) -> dict[str, torch.Tensor]:
    """A tiny OPT trained with CE (batch 8) for 200 AdamW steps on 64-token blocks (fixed seed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the per-test one-thread fixture
    gen = torch.Generator().manual_seed(0)
    model = tiny_opt(seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = token_ids["train"]
    for _ in range(200):
        starts = torch.randint(0, ids.numel() - BLOCK, (8,), generator=gen)
        batch = torch.stack([ids[s : s + BLOCK] for s in starts])
        loss = causal_lm_loss(model(input_ids=batch).logits, batch, TokenLossSpec("ce"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return copy.deepcopy(model.state_dict())


@pytest.fixture
def trained_model(_trained_state):
    model = tiny_opt(seed=0)
    model.load_state_dict(_trained_state)
    return model.eval()
