"""Greedy decoding and batched beam search for :class:`~losslab.seq2seq.model.Seq2SeqTransformer`.

Beam search keeps all B·K hypotheses in one batch on the model's device: each step is one incremental decoder
call on the newest token (cached keys/values, :meth:`Seq2SeqTransformer.decode_step`), one ``topk`` over the
(B, K·V) candidate scores and one gather of the prefixes and caches; no Python loop over sentences or beams.
A finished hypothesis (it emitted EOS) keeps its score and extends with PAD at log-probability 0; the
beam ranks by the summed log-probability and the final choice per sentence maximizes
``score / length ** lenpen`` (fairseq's length penalty, length counting EOS). With ``beam=1`` this is exactly
greedy decoding::

    hyps = beam_search(model, src, beam=5, lenpen=1.0, max_len_a=1.2, max_len_b=10)   # (B, T) ids, PAD-padded
    same = beam_search(model, src, beam=1) == greedy_decode(model, src)
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab.errors import check_range
from losslab.seq2seq.model import Seq2SeqTransformer
from losslab.seq2seq.tokenizer import BOS, EOS, PAD


def _max_len(model: Seq2SeqTransformer, src: Tensor, max_len_a: float, max_len_b: int) -> int:
    longest = int((src != PAD).sum(1).max().item())
    return max(1, min(int(max_len_a * longest + max_len_b), model.cfg.max_positions - 1))


@torch.no_grad()
def greedy_decode(model: Seq2SeqTransformer, src: Tensor, max_len_a: float = 1.2, max_len_b: int = 10) -> Tensor:
    """Argmax decoding of src (B, S) -> (B, T) token ids after BOS, EOS included, PAD after it."""
    memory, keep = model.encode(src)
    cache = model.start_cache(memory)
    tokens = torch.full((src.shape[0], 1), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for t in range(_max_len(model, src, max_len_a, max_len_b)):
        nxt = model.decode_step(tokens[:, -1], t, cache, keep).argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        done |= nxt == EOS
        if bool(done.all()):
            break
    return tokens[:, 1:]


@torch.no_grad()
def beam_search(
    model: Seq2SeqTransformer,
    src: Tensor,
    beam: int = 5,
    lenpen: float = 1.0,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
) -> Tensor:
    """Best hypothesis per sentence of src (B, S) -> (B, T) token ids (EOS included, PAD after it)."""
    check_range("beam", beam, low=1)
    b, k = src.shape[0], beam
    memory, keep = model.encode(src)
    memory = memory.repeat_interleave(k, 0)  # (B·K, S, d)
    keep = keep.repeat_interleave(k, 0)
    cache = model.start_cache(memory)
    dev = src.device
    tokens = torch.full((b * k, 1), BOS, dtype=torch.long, device=dev)
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # only the first beam is live at step 0 (the others are copies)
    done = torch.zeros(b, k, dtype=torch.bool, device=dev)
    lengths = torch.zeros(b, k, device=dev)
    rows = torch.arange(b, device=dev)[:, None] * k  # (B, 1) offsets of each sentence's beams
    for t in range(_max_len(model, src, max_len_a, max_len_b)):
        logp = model.decode_step(tokens[:, -1], t, cache, keep).float().log_softmax(-1)  # (B·K, V)
        vocab = logp.shape[-1]
        frozen = torch.full_like(logp, float("-inf"))
        frozen[:, PAD] = 0.0
        logp = torch.where(done.view(-1, 1), frozen, logp).view(b, k, vocab)
        cand = (scores[:, :, None] + logp).view(b, k * vocab)
        scores, flat = cand.topk(k, dim=1)  # (B, K)
        origin, token = flat // vocab, flat % vocab
        pick = (rows + origin).view(-1)  # (B·K,) rows of the surviving prefixes
        tokens = torch.cat([tokens[pick], token.view(-1, 1)], 1)
        model.reorder_cache(cache, pick)
        was_done = done.gather(1, origin)
        lengths = lengths.gather(1, origin) + (~was_done).float()
        done = was_done | (token == EOS)
        if bool(done.all()):
            break
    normalized = scores / lengths.clamp(min=1.0).pow(lenpen)
    best = normalized.argmax(1)  # (B,)
    return tokens.view(b, k, -1)[torch.arange(b, device=dev), best, 1:]
