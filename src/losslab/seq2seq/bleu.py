"""Corpus BLEU on detokenized text from its sufficient statistics, so that shards and batches sum exactly::

    stats = bleu_statistics(hypotheses, references)   # [hyp_len, ref_len, match_1..4, total_1..4] (ints)
    result = bleu_from_statistics(stats)               # = corpus_bleu(hypotheses, references)
    result.score, result.signature                     # 34.2, 'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|...'

The statistics are Papineni et al.'s (2002): per n-gram order n ≤ 4 the hypothesis n-grams and those matched in the
reference (counts clipped to the reference's), and the hypothesis and reference lengths, each summed over
sentences; BLEU = BP·exp(¼·Σ_n log p_n) with p_n = match_n / total_n and BP = min(1, exp(1 − ref_len/hyp_len)).
Tokenization (13a), the score and its smoothing ("exp") and signature are sacrebleu's, so the number is the
sacrebleu number of the whole corpus at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from losslab.errors import ConfigError

#: BLEU's n-gram orders (sacrebleu's default).
NGRAM_ORDER = 4
#: The names of :func:`bleu_statistics`' entries, in order.
BLEU_STATISTICS = (
    "hyp_len",
    "ref_len",
    *(f"match_{n}" for n in range(1, NGRAM_ORDER + 1)),
    *(f"total_{n}" for n in range(1, NGRAM_ORDER + 1)),
)


@dataclass(frozen=True)
class BleuResult:
    score: float
    signature: str
    text: str


def _metric(tokenize: str) -> Any:
    try:
        from sacrebleu.metrics import BLEU
    except ImportError as exc:
        raise ConfigError("BLEU needs sacrebleu: pip install 'losslab[seq2seq]' (or pip install sacrebleu)") from exc
    metric = BLEU(tokenize=tokenize)
    metric.num_refs = 1  # what corpus_score records for one reference per sentence (the signature's nrefs)
    return metric


def _ngrams(words: list[str]) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for n in range(1, NGRAM_ORDER + 1) for i in range(len(words) - n + 1))


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> list[int]:
    """The summed statistics :data:`BLEU_STATISTICS` of ``hypotheses`` against one reference each."""
    if len(hypotheses) != len(references):
        raise ConfigError(f"{len(hypotheses)} hypotheses but {len(references)} references; give one per line")
    tokenizer = _metric(tokenize).tokenizer
    stats = [0] * len(BLEU_STATISTICS)
    for hypothesis, reference in zip(hypotheses, references):
        hyp, ref = tokenizer(hypothesis.rstrip()).split(), tokenizer(reference.rstrip()).split()
        ref_counts = _ngrams(ref)
        stats[0] += len(hyp)
        stats[1] += len(ref)
        for gram, count in _ngrams(hyp).items():
            stats[1 + len(gram)] += min(count, ref_counts[gram])
            stats[1 + NGRAM_ORDER + len(gram)] += count
    return stats


def bleu_from_statistics(stats: Sequence[float], tokenize: str = "13a") -> BleuResult:
    """sacrebleu's corpus BLEU (exp smoothing) from summed :func:`bleu_statistics`, with its signature and text."""
    metric = _metric(tokenize)
    counts = [round(float(v)) for v in stats]
    score = metric.compute_bleu(correct=counts[2 : 2 + NGRAM_ORDER], total=counts[2 + NGRAM_ORDER :],
                                sys_len=counts[0], ref_len=counts[1], smooth_method="exp")  # fmt: skip
    return BleuResult(score.score, str(metric.get_signature()), str(score))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> BleuResult:
    """Corpus BLEU of ``hypotheses`` against one reference each (default 13a tokenization)."""
    return bleu_from_statistics(bleu_statistics(hypotheses, references, tokenize), tokenize)
