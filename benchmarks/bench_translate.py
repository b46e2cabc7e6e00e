"""Translation speed on CPU: training target tokens/s and beam-5 generation sentences/s (toy preset, one thread),
each with a reference measured in the same run (forward-only tokens/s; greedy sentences/s)::

    PYTHONPATH=src python benchmarks/bench_translate.py [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from losslab.objectives.token import IGNORE_INDEX
from losslab.seq2seq.config import TranslateConfig
from losslab.seq2seq.data import collate, token_batches
from losslab.seq2seq.search import beam_search, greedy_decode
from losslab.seq2seq.task import build_optimizer, sequence_loss
from losslab.seq2seq.tokenizer import SubwordTokenizer
from losslab.seq2seq.toy import toy_corpus
from losslab.seq2seq.train import build_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    corpus = toy_corpus(600, 0, 200, seed=0)
    tok = SubwordTokenizer.train([t for p in corpus["train"] for t in p], 160)
    cfg = TranslateConfig(arch="toy", vocab_size=160, max_tokens=1024, normalize_before=True)
    model = build_model(cfg, tok.vocab_size).to(dev)
    opt = build_optimizer(cfg, model, [])
    src_ids = tok.encode_batch([s for s, _ in corpus["train"]])
    tgt_ids = tok.encode_batch([t for _, t in corpus["train"]])
    batches = [[t.to(dev) for t in collate(src_ids, tgt_ids, b)] for b in token_batches(src_ids, tgt_ids, 1024, 0)]

    def run(train: bool) -> float:
        n, start = 0, time.perf_counter()
        for src, tgt_in, labels in batches:
            with torch.set_grad_enabled(train):
                loss = sequence_loss(cfg, model(src, tgt_in), labels)
            if train:
                opt.zero_grad()
                loss.backward()
                opt.step()
            n += int((labels != IGNORE_INDEX).sum())
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - start)

    fwd, train = run(False), run(True)
    print(f"training: {train:.0f} target tokens/s; forward only: {fwd:.0f} tokens/s; ratio {fwd / train:.2f}x")
    model.eval()
    src, _, _ = collate(*(2 * [tok.encode_batch([s for s, _ in corpus["test"]])]), list(range(200)))
    src = src.to(dev)
    for name, fn in (("greedy", lambda: greedy_decode(model, src)), ("beam 5", lambda: beam_search(model, src, 5))):
        start = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        print(f"{name}: {200 / (time.perf_counter() - start):.1f} sentences/s (batch of 200)")


if __name__ == "__main__":
    main()
