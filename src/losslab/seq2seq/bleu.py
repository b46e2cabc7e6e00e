"""Corpus BLEU with ``sacrebleu`` on detokenized text, with its signature for the log::

result = corpus_bleu(hypotheses, references)       # lists of detokenized sentences
result.score, result.signature                     # 34.2, 'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from losslab.errors import ConfigError


@dataclass(frozen=True)
class BleuResult:
    score: float
    signature: str
    text: str


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> BleuResult:
    """sacrebleu's corpus BLEU of ``hypotheses`` against one reference each (default 13a tokenization)."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError as exc:
        raise ConfigError("BLEU needs sacrebleu: pip install 'losslab[seq2seq]' (or pip install sacrebleu)") from exc
    if len(hypotheses) != len(references):
        raise ConfigError(f"{len(hypotheses)} hypotheses but {len(references)} references; give one per line")
    metric = BLEU(tokenize=tokenize)
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return BleuResult(result.score, str(metric.get_signature()), str(result))
