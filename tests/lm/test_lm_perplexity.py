"""Perplexity protocol (llm.md §3, §5, §8): exp(CE) = exp(HF loss), window counting, hand-computed values,
and bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch

from losslab.errors import DataNotFoundError, LosslabError
from losslab.lm.data import eval_windows, load_corpus, protocol_name, require_pad_token, tokenize_text
from losslab.lm.models import check_seqlen, load_causal_lm
from losslab.lm.offline import byte_tokenizer, tiny_opt
from losslab.lm.perplexity import perplexity

TEXT = " = Title = \n\n The river was built in 1910 . \n\n" * 3


def test_ten_windows_from_ten_seqlen_plus_seven_tokens() -> None:
    ids = torch.arange(10 * 32 + 7)
    windows = eval_windows(ids, 32)
    assert windows.shape == (10, 32) and torch.equal(windows.reshape(-1), ids[:320])


def test_perplexity_is_exp_of_hf_models_own_loss(trained_model, token_ids) -> None:
    window = token_ids["test"][:64].view(1, 64)
    with torch.no_grad():
        hf_loss = trained_model(input_ids=window, labels=window).loss.item()
    result = perplexity(trained_model, window)
    assert result.ppl == pytest.approx(math.exp(hf_loss), rel=1e-6)
    assert result.mean_ce == pytest.approx(hf_loss, rel=1e-6)


def test_hand_computed_perplexity_on_fixed_text(trained_model, tokenizer) -> None:
    ids = tokenize_text(tokenizer, TEXT)
    assert ids.tolist() == [256, *TEXT.encode()]  # one BOS, then the bytes
    seqlen = 40
    n = len(ids) // seqlen
    ces = []
    for w in range(n):
        window = ids[w * seqlen : (w + 1) * seqlen]
        with torch.no_grad():
            logp = torch.log_softmax(trained_model(input_ids=window[None]).logits[0].double(), dim=-1)
        ces.append(-sum(logp[t, window[t + 1]].item() for t in range(seqlen - 1)) / (seqlen - 1))
    expected = math.exp(sum(ces) / n)
    result = perplexity(trained_model, eval_windows(ids, seqlen), protocol=protocol_name("fixed.txt", seqlen))
    assert result.windows == n and result.ppl == pytest.approx(expected, rel=1e-5)
    assert "40-token non-overlapping windows" in result.describe()


def test_uniform_model_has_perplexity_equal_to_vocabulary_size(tokenizer) -> None:
    model = tiny_opt(seed=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied to the embeddings: logits are all 0 -> p = 1/V
    result = perplexity(model, eval_windows(tokenize_text(tokenizer, TEXT), 32))
    assert result.ppl == pytest.approx(model.config.vocab_size, rel=1e-6)


def test_bad_inputs_say_what_to_do(tmp_path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("tiny text")
    ids = tokenize_text(byte_tokenizer(), load_corpus(short))
    with pytest.raises(LosslabError, match="fewer than one window"):
        eval_windows(ids, 64)
    with pytest.raises(LosslabError, match="context is 128"):
        check_seqlen(tiny_opt(), 256)
    with pytest.raises(LosslabError, match="--pad-token eos"):
        require_pad_token(byte_tokenizer(with_pad=False), "finetuning")
    with pytest.raises(DataNotFoundError, match="looks like a local path but does not exist"):
        load_causal_lm(tmp_path / "no-such-model")  # a missing path is never looked up on the hub
    with pytest.raises(DataNotFoundError, match="--text-file"):
        load_corpus(tmp_path / "missing.txt")
