"""Translation with a Transformer encoder-decoder: toy corpus, BPE tokenizer, model, beam search, BLEU, training.

See docs/seq2seq.md. Entry points: :func:`losslab.seq2seq.train.train_translation`, ``losslab translate``.
"""
