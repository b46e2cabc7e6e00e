"""Text corpora and token windows for LM finetuning, calibration and perplexity (llm.md §4–§5).

Every text comes from :func:`load_corpus`: a local text file (offline) or a Hugging Face dataset by name
(``wikitext2``, ``ptb``, ``c4``; needs the ``datasets`` cache or network). Token streams are cut into windows::

    text = load_corpus("wikitext2", "test")                       # raw test split joined with "\\n\\n"
    ids = tokenize_text(tokenizer, text)                           # one BOS for the whole text
    windows = eval_windows(ids, seqlen=2048)                       # (n_w, 2048), tail dropped
    calib = calibration_windows(train_ids, n_windows=128, seqlen=2048, seed=0)   # GPTQ's sampling
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch

from losslab.errors import DataNotFoundError, LosslabError, unknown_name_error
from losslab.io import read_utf8
from losslab.limits import check_allocation

CORPORA = ("wikitext2", "ptb", "c4")

# name -> (datasets path, config, {split: hub split}, joiner); ptb is "ptb-new" for test (joined " "), as in
# GPTQ's final tables; c4 validation uses GPTQ's "c4-new" (first 1100 documents joined with " ").
_HF_SOURCES: dict[str, tuple[str, str | None, str]] = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "text"),
    "ptb": ("ptb_text_only", "penn_treebank", "sentence"),
    "c4": ("allenai/c4", None, "text"),
}
_C4_FILES = {
    "train": "en/c4-train.00000-of-01024.json.gz",
    "validation": "en/c4-validation.00000-of-00008.json.gz",
    "test": "en/c4-validation.00000-of-00008.json.gz",
}


def protocol_name(corpus: str, seqlen: int) -> str:
    """Human-readable name of the perplexity protocol, printed with every result."""
    joins = {
        "wikitext2": "wikitext-2-raw-v1 test joined with '\\n\\n'",
        "ptb": "ptb_text_only test joined with ' ' (ptb-new)",
        "c4": "c4 en validation shard 0, first 1100 documents joined with ' ', 256 windows (c4-new)",
    }
    source = joins.get(corpus, f"text file {corpus}")
    return f"token perplexity = exp(mean CE) on {source}, {seqlen}-token non-overlapping windows, tail dropped"


def _offline_hint(name: str) -> str:
    return (
        f"could not load dataset {name!r} (no network and not in the Hugging Face cache?). Either go online once "
        "so `datasets` caches it, or pass a local text file with --text-file PATH."
    )


def _load_hf_documents(name: str, split: str) -> list[str]:
    try:
        from datasets import load_dataset

        path, config, column = _HF_SOURCES[name]
        if name == "c4":
            ds = load_dataset(path, data_files={split: _C4_FILES[split]}, split=split)
        else:
            ds = load_dataset(path, config, split=split)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, HfHubHTTPError)
        raise DataNotFoundError(f"{_offline_hint(name)} ({type(err).__name__}: {err})") from err
    return list(ds[column])


def load_corpus(name_or_path: str | Path, split: str = "test") -> str:
    """The raw text of ``split`` for a corpus name in ``CORPORA`` or the content of a local text file.

    wikitext2: ``wikitext-2-raw-v1`` split joined with "\\n\\n" (GPTQ protocol); ptb: train/validation joined
    with "\\n\\n", test joined with " " (ptb-new); c4: first 1100 validation documents joined with " " (c4-new),
    or all train-shard documents joined with "\\n\\n". A file path is read as UTF-8 whatever ``split`` is.
    """
    path = Path(name_or_path)
    if str(name_or_path) not in CORPORA:
        if path.is_file():
            return read_utf8(path, "text file")
        raise DataNotFoundError(
            f"text source {str(name_or_path)!r} is neither a corpus name ({', '.join(CORPORA)}) nor an existing "
            "file; give an existing UTF-8 text file (--text-file PATH) or one of those names"
        )
    name = str(name_or_path)
    if split not in ("train", "validation", "test"):
        raise unknown_name_error("split", split, ("train", "validation", "test"))
    docs = _load_hf_documents(name, "validation" if name == "c4" and split == "test" else split)
    if name == "c4" and split != "train":
        return " ".join(docs[:1100])
    if name == "ptb" and split == "test":
        return " ".join(docs)
    return "\n\n".join(docs)


def require_pad_token(tokenizer: object, what: str) -> int:
    """The tokenizer's pad id, or a :class:`LosslabError` that says how to get one."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise LosslabError(
            f"the tokenizer has no pad token, which {what} needs; pass --pad-token eos (the RLO reference's "
            "choice: tokenizer.pad_token = tokenizer.eos_token) or use a tokenizer that defines one"
        )
    return int(pad)


def tokenize_text(tokenizer: object, text: str) -> torch.Tensor:
    """Token ids (1-D int64) of ``text`` tokenized once, with the tokenizer's own special tokens (one BOS)."""
    if not text.strip():
        raise LosslabError("the text is empty; give a text file with content")
    ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]  # type: ignore[operator]
    return torch.tensor(ids, dtype=torch.long)


def _check_length(n_tokens: int, seqlen: int, what: str) -> None:
    if n_tokens < seqlen:
        raise LosslabError(
            f"the text has {n_tokens} tokens, fewer than one window of seqlen={seqlen} for {what}; give a longer "
            "text (--text-file) or a smaller --seqlen"
        )


def eval_windows(token_ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows ``(⌊n/seqlen⌋, seqlen)`` of a 1-D token stream; the tail is dropped."""
    _check_length(token_ids.numel(), seqlen, "evaluation")
    n = token_ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    return token_ids[: n * seqlen].view(n, seqlen)


def calibration_windows(token_ids: torch.Tensor, n_windows: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """GPTQ's calibration sample: ``n_windows`` windows at random starts in one token stream, ``(n, seqlen)``.

    As in GPTQ's ``get_wikitext2`` after ``random.seed(seed)``: ``i = randint(0, n − seqlen − 1)``.
    """
    _check_length(token_ids.numel() - 1, seqlen, "calibration")
    distinct = token_ids.numel() - seqlen
    if n_windows > distinct:
        raise LosslabError(
            f"--calib-samples {n_windows:,}: the calibration text has only {distinct:,} distinct windows of {seqlen} "
            "tokens; pass at most that many, or a longer text"
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, token_ids.numel() - seqlen - 1) for _ in range(n_windows)]
    return torch.stack([token_ids[s : s + seqlen] for s in starts])


def calibration_windows_from_documents(
    tokenizer: object, documents: Sequence[str], n_windows: int, seqlen: int, seed: int = 0
) -> torch.Tensor:
    """GPTQ's C4 calibration: pick random documents with more than ``seqlen`` tokens, then a random window in each."""
    rng = random.Random(seed)
    if not documents:
        raise LosslabError("no documents to sample calibration windows from")
    windows = []
    for _ in range(100 * n_windows):
        if len(windows) == n_windows:
            break
        ids = tokenize_text(tokenizer, documents[rng.randint(0, len(documents) - 1)])
        if ids.numel() <= seqlen:
            continue
        start = rng.randint(0, ids.numel() - seqlen - 1)
        windows.append(ids[start : start + seqlen])
    if len(windows) < n_windows:
        raise LosslabError(f"found only {len(windows)} documents longer than seqlen={seqlen}; lower --seqlen")
    return torch.stack(windows)


def load_calibration(tokenizer: object, source: str | Path, n_windows: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """Calibration windows ``(n_windows, seqlen)`` from ``c4`` (document sampling), another corpus's train split
    or a local text file (one stream)."""
    if n_windows < 1:
        raise LosslabError(f"n_windows={n_windows}: calibration needs at least one window (--calib-samples >= 1)")
    check_allocation("calibration windows (--calib-samples x --seqlen)", 8 * n_windows * seqlen)
    if str(source) == "c4":
        return calibration_windows_from_documents(tokenizer, _load_hf_documents("c4", "train"), n_windows, seqlen, seed)
    return calibration_windows(tokenize_text(tokenizer, load_corpus(source, "train")), n_windows, seqlen, seed)


def training_blocks(token_ids: torch.Tensor, block_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Cut a token stream into ``block_size`` blocks for finetuning; labels = input ids.

    The last partial block (≥ 2 tokens) is kept, padded with ``pad_id``, its padding masked in
    ``attention_mask`` and set to −100 in ``labels`` (no text is lost; ignore_index is honoured).
    Returns ``input_ids``, ``attention_mask``, ``labels``, each ``(n_blocks, block_size)``.
    """
    _check_length(token_ids.numel(), 2, "training")
    n_full, tail = divmod(token_ids.numel(), block_size)
    n_blocks = n_full + (1 if tail >= 2 else 0)
    ids = torch.full((n_blocks * block_size,), pad_id, dtype=torch.long)
    used = min(token_ids.numel(), n_blocks * block_size)
    ids[:used] = token_ids[:used]
    mask = torch.zeros_like(ids)
    mask[:used] = 1
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    shape = (n_blocks, block_size)
    return {"input_ids": ids.view(shape), "attention_mask": mask.view(shape), "labels": labels.view(shape)}
