"""Parallel text for translation: local files, the toy pair, or IWSLT de-en through ``datasets`` (``--download``),
and length-bucketed batches of at most ``max_tokens`` tokens (fairseq's ``--max-tokens``)::

    corpus = load_parallel_files({"train": ("train.de", "train.en"), "valid": (...), "test": (...)})
    corpus = download_iwslt("de", "en")                  # only with --download; needs network
    batches = token_batches(src_ids, tgt_ids, max_tokens=4000, shuffle_seed=epoch)   # lists of example indices
    src, tgt_in, tgt_out = collate(src_ids, tgt_ids, batch)                           # (B, S), (B, T), (B, T)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from losslab.errors import ConfigError, DataNotFoundError
from losslab.io import read_utf8
from losslab.objectives.token import IGNORE_INDEX
from losslab.seq2seq.tokenizer import BOS, PAD

Corpus = dict[str, list[tuple[str, str]]]
IWSLT_DATASETS = ("IWSLT/iwslt2017", "iwslt2017")


def read_parallel(src_file: Path, tgt_file: Path) -> list[tuple[str, str]]:
    """Line-aligned (source, target) pairs; DataNotFoundError / ConfigError before any work on bad files."""
    for path in (src_file, tgt_file):
        if not Path(path).is_file():
            raise DataNotFoundError(f"parallel text file {path} does not exist; give one sentence per line")
    src = read_utf8(src_file, "parallel text file").splitlines()
    tgt = read_utf8(tgt_file, "parallel text file").splitlines()
    if len(src) != len(tgt):
        raise ConfigError(f"{src_file} has {len(src)} lines but {tgt_file} has {len(tgt)}; the files must align")
    pairs = [(s.strip(), t.strip()) for s, t in zip(src, tgt) if s.strip() and t.strip()]
    if not pairs:
        raise ConfigError(f"{src_file} and {tgt_file} hold no non-empty sentence pair")
    return pairs


def load_parallel_files(splits: dict[str, tuple[Path, Path]]) -> Corpus:
    """Each split's (src_file, tgt_file) read with :func:`read_parallel`; ``train`` is required."""
    if "train" not in splits:
        raise ConfigError("a training split is needed: give --src-file/--tgt-file (or --download, or --toy)")
    return {name: read_parallel(*files) for name, files in splits.items()}


def download_iwslt(src_lang: str = "de", tgt_lang: str = "en", cache_dir: Path | None = None) -> Corpus:
    """IWSLT2017 ``{src}-{tgt}`` (train/validation/test) through Hugging Face ``datasets``; needs network."""
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError("--download needs the datasets package: pip install datasets") from exc
    config = f"iwslt2017-{src_lang}-{tgt_lang}"
    errors = []
    for name in IWSLT_DATASETS:
        try:
            ds = datasets.load_dataset(name, config, cache_dir=None if cache_dir is None else str(cache_dir))
            break
        except Exception as exc:  # network, missing script, hub errors: report them all
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    else:
        raise DataNotFoundError(
            f"could not load IWSLT {config} through datasets ({'; '.join(errors)}); check the network, or give "
            "local files with --src-file/--tgt-file (fairseq's prepare-iwslt14.sh output, one sentence per line)"
        )
    split_names = {"train": "train", "valid": "validation", "test": "test"}
    return {
        ours: [(row["translation"][src_lang], row["translation"][tgt_lang]) for row in ds[theirs]]
        for ours, theirs in split_names.items()
    }


def token_batches(
    src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], max_tokens: int, shuffle_seed: int | None
) -> list[list[int]]:
    """Index batches of similar length, each with at most ``max_tokens`` padded tokens on either side.

    Sorted by (target, source) length, cut greedily, then the batch order is shuffled with ``shuffle_seed``
    (``None``: keep the sorted order, for evaluation).
    """
    order = sorted(range(len(src_ids)), key=lambda i: (len(tgt_ids[i]), len(src_ids[i])))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        size = max(len(src_ids[i]), len(tgt_ids[i]) + 1)
        if size > max_tokens:
            raise ConfigError(f"sentence pair {i} has {size} tokens, more than max_tokens={max_tokens}; raise it")
        if current and max(longest, size) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, size)
    if current:
        batches.append(current)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(batches)
    return batches


def _pad(rows: Sequence[Sequence[int]], value: int) -> Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for j, row in enumerate(rows):
        out[j, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def collate(
    src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], batch: Sequence[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """(src (B, S) PAD-padded, decoder input BOS+target (B, T), labels target (B, T) with IGNORE_INDEX pads)."""
    src = _pad([src_ids[i] for i in batch], PAD)
    tgt_in = _pad([[BOS, *tgt_ids[i][:-1]] for i in batch], PAD)
    labels = _pad([tgt_ids[i] for i in batch], IGNORE_INDEX)
    return src, tgt_in, labels
