"""Offline stand-ins for the hub: a byte-level tokenizer, a synthetic wikitext-like corpus and a tiny OPT.

Tests, benchmarks and the docs' examples use these so nothing downloads (llm.md §8)::

    tok = byte_tokenizer()                       # PreTrainedTokenizerFast, 256 bytes + <s>, </s>, <pad>
    corpus = synthetic_corpus(seed=0)            # {"train": str, "validation": str, "test": str}
    model = tiny_opt(seed=0)                     # OPTForCausalLM: vocab 260, hidden 64, 2 layers, 128 positions
"""

from __future__ import annotations

import random

import torch

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
BYTE_VOCAB = 256

_WORD_TEXT = (
    "the of and in to a was is for on as by with from that at his an were which it he are be had first "
    "after its new also their or not but has two one this they other have who been three season during "
    "game song film album city river team war army time station world year series people north south "
    "built played released became called began second later known under between where until state"
)
_WORDS = tuple(_WORD_TEXT.split(" "))


def byte_tokenizer(with_pad: bool = True):  # -> transformers.PreTrainedTokenizerFast
    """Byte-level tokenizer built in memory with ``tokenizers``: ids 0–255 are bytes, 256 ``<s>``, 257 ``</s>``,
    258 ``<pad>`` (omitted with ``with_pad=False``, to exercise the missing-pad-token error).

    Every encoding starts with ``<s>`` like OPT's tokenizer; decoding round-trips any UTF-8 text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    mapping = _bytes_to_unicode()
    vocab = {mapping[b]: b for b in range(BYTE_VOCAB)}
    assert set(vocab) == set(byte_chars)
    specials = [BOS, EOS] + ([PAD] if with_pad else [])
    for offset, token in enumerate(specials):
        vocab[token] = BYTE_VOCAB + offset
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BYTE_VOCAB)]
    )
    extra = {"pad_token": PAD} if with_pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, **extra)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character map (the alphabet of the ByteLevel pre-tokenizer)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _paragraph(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(2, 5)):
        length = rng.randint(5, 14)
        words = [rng.choice(_WORDS[:30]) if rng.random() < 0.6 else rng.choice(_WORDS) for _ in range(length)]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, len(words)), str(rng.randint(1900, 2020)))
        sentences.append(" ".join(words).capitalize() + " .")
    return " " + " ".join(sentences) + " \n"


def _article(rng: random.Random) -> str:
    title = " ".join(rng.choice(_WORDS[30:]).capitalize() for _ in range(rng.randint(1, 3)))
    parts = [f" = {title} = \n", "\n"]
    for _ in range(rng.randint(1, 3)):
        section = rng.choice(_WORDS[30:]).capitalize()
        parts += [f" = = {section} = = \n", "\n"]
        for _ in range(rng.randint(1, 3)):
            parts += [_paragraph(rng), "\n"]
    return "".join(parts)


def synthetic_corpus(seed: int = 0, articles: tuple[int, int, int] = (40, 6, 6)) -> dict[str, str]:
    """Seeded wikitext-like text (headings `` = Title = ``, paragraphs, blank lines) for train/validation/test.

    ``articles`` gives the number of articles per split; the splits use disjoint random streams.
    """
    names = ("train", "validation", "test")
    return {
        name: "".join(_article(random.Random(f"{seed}-{name}-{i}")) for i in range(count))
        for name, count in zip(names, articles)
    }


def tiny_opt_config(
    vocab_size: int = 260, max_positions: int = 128, layers: int = 2, dropout: float = 0.0
):  # -> OPTConfig
    """An OPT config small enough for unit tests: hidden 64, 4 heads, ffn 256, pre-LayerNorm, OPT's ``dropout``
    probability (0 by default) and no attention dropout."""
    from transformers import OPTConfig

    return OPTConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=layers,
        ffn_dim=256,
        num_attention_heads=4,
        max_position_embeddings=max_positions,
        word_embed_proj_dim=64,
        dropout=dropout,
        attention_dropout=0.0,
        bos_token_id=BYTE_VOCAB,
        eos_token_id=BYTE_VOCAB + 1,
        pad_token_id=BYTE_VOCAB + 2,
    )


def tiny_opt(seed: int = 0, **config_overrides: float):  # -> OPTForCausalLM
    """A randomly initialised tiny OPT (seeded), in float32 eval mode, with the eager attention kernel."""
    from transformers import OPTForCausalLM

    torch.manual_seed(seed)
    config = tiny_opt_config(**config_overrides)
    config._attn_implementation = "eager"
    return OPTForCausalLM(config).eval()
