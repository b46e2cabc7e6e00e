"""Subword (BPE) tokenizer for parallel text, trained on the training side with Hugging Face ``tokenizers``.

One joint vocabulary for source and target (fairseq's IWSLT14 recipe: joint BPE, shared embeddings). Metaspace
pre-tokenization makes decoding exact: ``decode(encode(s)) == s`` for whitespace-normalized text::

    tok = SubwordTokenizer.train(src_lines + tgt_lines, vocab_size=10000)
    ids = tok.encode_batch(["ein kleiner test ."])      # [[ ..., EOS]]
    tok.decode_batch(ids)                                # ['ein kleiner test .']
    tok.save(run / "tokenizer.json"); SubwordTokenizer.load(run / "tokenizer.json")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from losslab.errors import ConfigError, DataNotFoundError
from losslab.io import write_text_atomic

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
PAD, BOS, EOS, UNK = 0, 1, 2, 3


class SubwordTokenizer:
    """A byte-pair-encoding tokenizer with ids PAD=0, BOS=1, EOS=2, UNK=3; ``encode`` appends EOS."""

    def __init__(self, backend: Tokenizer) -> None:
        self.backend = backend

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int) -> SubwordTokenizer:
        """Learn BPE merges on ``texts`` (the training side) up to ``vocab_size`` entries (specials included)."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        if vocab_size <= len(SPECIALS):
            raise ConfigError(f"vocab_size={vocab_size} is too small; give more than {len(SPECIALS)} (e.g. 10000)")
        if not texts:
            raise ConfigError("cannot train a tokenizer on no text; give a non-empty training side")
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
        tok.train_from_iterator(list(texts), trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> SubwordTokenizer:
        """A tokenizer saved by :meth:`save` (DataNotFoundError when the file is missing)."""
        from tokenizers import Tokenizer

        if not Path(path).is_file():
            raise DataNotFoundError(f"tokenizer file {path} does not exist; train first (losslab translate train)")
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: Path) -> None:
        """Write the tokenizer JSON atomically."""
        write_text_atomic(path, self.backend.to_str())

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text followed by EOS."""
        return [[*enc.ids, EOS] for enc in self.backend.encode_batch(list(texts))]

    def decode_batch(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Detokenized texts; stops at the first EOS and drops specials."""
        cut = [list(row[: list(row).index(EOS)] if EOS in row else row) for row in ids]
        return self.backend.decode_batch(cut, skip_special_tokens=True)

    def describe(self) -> str:
        """One line naming the tokenizer, printed next to BLEU."""
        return f"BPE (Hugging Face tokenizers, joint vocab {self.vocab_size}, Metaspace)"
