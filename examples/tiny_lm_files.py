"""Write a tiny OPT (with its byte-level tokenizer) and a synthetic text corpus to a folder, for trying the
``losslab lm`` pipeline offline (the README's language-model table was made with these files)::

    python examples/tiny_lm_files.py /tmp/lm            # -> /tmp/lm/tiny-opt, train.txt, validation.txt, test.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

from losslab.io import write_text_atomic
from losslab.lm.offline import byte_tokenizer, synthetic_corpus, tiny_opt


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model = tiny_opt(seed=0)
    model.save_pretrained(out / "tiny-opt")
    byte_tokenizer().save_pretrained(out / "tiny-opt")
    for split, text in synthetic_corpus(seed=0).items():
        write_text_atomic(out / f"{split}.txt", text)
    print(f"wrote {out / 'tiny-opt'} and {', '.join(sorted(p.name for p in out.glob('*.txt')))}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tiny_lm")
