"""A deterministic toy language pair for offline translation demos and tests: SVO English-like → SOV with morphology.

Source sentences ``det [adj] noun verb det [adj] noun`` (plural nouns end in ``s``, verbs in present/past) map to
target ``NOUN-def-num [ADJ] ga NOUN-def-num [ADJ] o VERB-tense``: the verb moves to the end (reordering), the
adjective follows its noun, every word goes through a fixed lexicon, determiners become suffixes (``n`` for
*the*), plural adds ``ra`` and tense ``ru``/``ta``. A model must learn the lexicon, the reordering and the
morphology, so BLEU rises from ~0 (untrained) to near 100::

    pairs = toy_corpus(n_train=2000, n_valid=200, n_test=200, seed=0)
    pairs["train"][0]   # ('a red cat sees the dogs', 'neko aka ga inunra o miru')
"""

from __future__ import annotations

import random

NOUNS = {
    "dog": "inu", "cat": "neko", "bird": "tori", "fish": "sakana", "horse": "uma", "child": "ko", "teacher": "sensei",
    "farmer": "nomin", "king": "ou", "friend": "tomo", "wolf": "okami", "fox": "kitsu",
}  # fmt: skip
ADJECTIVES = {
    "red": "aka", "big": "oki", "small": "chisa", "old": "furu", "young": "waka", "happy": "ureshi", "quiet": "shizu",
    "fast": "haya",
}  # fmt: skip
VERBS = {  # lemma: (present, past, target stem)
    "see": ("sees", "saw", "mi"), "chase": ("chases", "chased", "oika"), "help": ("helps", "helped", "tasuke"),
    "find": ("finds", "found", "mitsuke"), "call": ("calls", "called", "yob"),
    "follow": ("follows", "followed", "tsuzu"), "teach": ("teaches", "taught", "oshie"),
    "know": ("knows", "knew", "shi"),
}  # fmt: skip
SPLITS = ("train", "valid", "test")


def _noun_phrase(rng: random.Random) -> tuple[str, str]:
    noun = rng.choice(sorted(NOUNS))
    definite, plural = rng.random() < 0.5, rng.random() < 0.3
    adj = rng.choice(sorted(ADJECTIVES)) if rng.random() < 0.4 else None
    det = "the" if definite else ("some" if plural else "a")
    src = " ".join(w for w in (det, adj, noun + ("s" if plural else "")) if w)
    tgt_noun = NOUNS[noun] + ("n" if definite else "") + ("ra" if plural else "")
    tgt = " ".join(w for w in (tgt_noun, ADJECTIVES[adj] if adj else None) if w)
    return src, tgt


def toy_pair(rng: random.Random) -> tuple[str, str]:
    """One (source, target) sentence pair drawn with ``rng``."""
    subj_src, subj_tgt = _noun_phrase(rng)
    obj_src, obj_tgt = _noun_phrase(rng)
    present, past, stem = VERBS[rng.choice(sorted(VERBS))]
    is_past = rng.random() < 0.5
    src = f"{subj_src} {past if is_past else present} {obj_src}"
    tgt = f"{subj_tgt} ga {obj_tgt} o {stem}{'ta' if is_past else 'ru'}"
    return src, tgt


def toy_corpus(
    n_train: int = 2000, n_valid: int = 200, n_test: int = 200, seed: int = 0
) -> dict[str, list[tuple[str, str]]]:
    """Disjoint splits of distinct sentence pairs (valid/test sentences never occur in train)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[tuple[str, str]]] = {}
    for split, size in zip(SPLITS, (n_train, n_valid, n_test)):
        pairs: list[tuple[str, str]] = []
        while len(pairs) < size:
            src, tgt = toy_pair(rng)
            if src not in seen:
                seen.add(src)
                pairs.append((src, tgt))
        out[split] = pairs
    return out
