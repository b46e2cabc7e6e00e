"""The translation task of the plain loop: BLEU from summed statistics equals sacrebleu on the whole corpus, the
tally's loss sums equal a float64 loop, the inverse-sqrt schedule per update, and bit-identical resume."""

from __future__ import annotations

import random

import pytest
import torch

from losslab.seq2seq.bleu import BLEU_STATISTICS, bleu_from_statistics, bleu_statistics, corpus_bleu
from losslab.seq2seq.config import TranslateConfig
from losslab.seq2seq.task import EVAL_TALLY, InverseSqrtSchedule, inverse_sqrt_lr

sacrebleu = pytest.importorskip("sacrebleu")


def _sentences(seed: int, n: int) -> tuple[list[str], list[str]]:
    """Hypotheses that share some n-grams with their references (punctuation and case for the 13a tokenizer)."""
    rng = random.Random(seed)
    words = ["the", "cat", "dog", "sat", "on", "a", "mat", "ran", "away", "Hello", "world", "it's", "(big)", "."]
    refs, hyps = [], []
    for _ in range(n):
        ref = [rng.choice(words) for _ in range(rng.randint(1, 12))]
        hyp = [w if rng.random() < 0.7 else rng.choice(words) for w in ref]
        hyp = hyp[: rng.randint(0, len(hyp) + 2)] + [rng.choice(words) for _ in range(rng.randint(0, 2))]
        refs.append(" ".join(ref) + rng.choice(["", ".", "!"]))
        hyps.append(" ".join(hyp))
    return hyps, refs


def test_bleu_of_summed_statistics_is_sacrebleu_of_the_whole_corpus() -> None:
    """Statistics of random shards, summed, give sacrebleu's corpus BLEU of the whole corpus at once (score, text
    and signature): BLEU is a function of summed counts, never a mean of shard scores."""
    hyps, refs = _sentences(0, 300)
    cuts = sorted(random.Random(1).sample(range(1, 300), 12))
    shards = [(lo, hi) for lo, hi in zip([0, *cuts], [*cuts, 300])]
    summed = torch.zeros(len(BLEU_STATISTICS), dtype=torch.float64)
    for lo, hi in shards:
        summed += torch.tensor(bleu_statistics(hyps[lo:hi], refs[lo:hi]), dtype=torch.float64)
    ours = bleu_from_statistics(summed.tolist())
    metric = sacrebleu.metrics.BLEU(tokenize="13a")
    theirs = metric.corpus_score(hyps, [refs])
    assert 5.0 < theirs.score < 95.0  # partial matches at every order: a test that can fail
    assert ours.score == pytest.approx(theirs.score, abs=1e-12) and ours.text == str(theirs)
    assert ours.signature == str(metric.get_signature())
    shard_mean = sum(corpus_bleu(hyps[lo:hi], refs[lo:hi]).score for lo, hi in shards) / len(shards)
    assert abs(shard_mean - theirs.score) > 0.1  # the mean of shard BLEUs is not corpus BLEU


def test_inverse_sqrt_schedule_steps_per_update_and_resumes() -> None:
    cfg = TranslateConfig.build(dict(arch="toy", lr=0.25, warmup_init_lr=0.05, warmup_updates=100))
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    schedule = InverseSqrtSchedule(cfg, opt)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(400):
        schedule.step(3)  # an epoch boundary changes nothing
        schedule.step_batch()
        seen.append(opt.param_groups[0]["lr"])
    assert seen[0] == 0.05 and seen[50] == pytest.approx(0.15) and seen[400] == pytest.approx(0.25 * (100 / 400) ** 0.5)
    assert seen == [inverse_sqrt_lr(cfg, n) for n in range(401)]
    other = torch.optim.SGD([param], lr=1.0)
    InverseSqrtSchedule(cfg, other).load_state_dict(schedule.state_dict())
    assert other.param_groups[0]["lr"] == seen[400]


def test_eval_tally_loss_sums_equal_a_float64_loop() -> None:
    """The tally's loss and CE sums over uneven batches, divided by the token count, are the per-token means of a
    float64 loop over every target token of the split (label smoothing ε = 0.1, fairseq's formula)."""
    from losslab.seq2seq.task import EvalBatches, TranslationTask
    from losslab.seq2seq.tokenizer import SubwordTokenizer
    from losslab.seq2seq.toy import toy_corpus
    from losslab.seq2seq.train import build_model

    pairs = toy_corpus(0, 0, 23, seed=3)["test"]
    tok = SubwordTokenizer.train([t for p in pairs for t in p], 80)
    cfg = TranslateConfig.build(dict(arch="toy", vocab_size=80, label_smoothing=0.1))
    torch.manual_seed(0)
    model = build_model(cfg, tok.vocab_size).double().eval()
    task = TranslationTask(cfg, model, tok, bleu_epoch=-1)
    batches = EvalBatches(tok, pairs, batch_size=5, limit=1023)
    with torch.no_grad():
        tally = sum(task.eval_tally(batch, "val", lambda *a, **k: None) for batch in batches)
    named = dict(zip(EVAL_TALLY, tally.tolist(), strict=True))
    loss, ce, n = 0.0, 0.0, 0
    for src_text, tgt_text in pairs:
        src, tgt = torch.tensor([tok.encode_batch([src_text])[0]]), tok.encode_batch([tgt_text])[0]
        with torch.no_grad():
            logp = model(src, torch.tensor([[1, *tgt[:-1]]]))[0].log_softmax(-1)  # BOS = 1
        for t, y in enumerate(tgt):
            nll, smooth = -float(logp[t, y]), -float(logp[t].sum() - logp[t, y])
            loss += 0.9 * nll + 0.1 / (logp.shape[-1] - 1) * smooth
            ce, n = ce + nll, n + 1
    assert named["tokens"] == n and named["sentences"] == 0  # validation before the last epoch: no BLEU
    metrics = task.tally_metrics("val", tally)
    assert metrics["val/loss"] == pytest.approx(loss / n, rel=1e-12)
    assert metrics["val/ce"] == pytest.approx(ce / n, rel=1e-12)


class _Stop(Exception):
    """Raised instead of the nth last.ckpt write: a run killed after that epoch's history row."""


def _kill_before_checkpoint(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    from losslab import io as losslab_io

    real, writes = losslab_io.save_torch_atomic, []

    def save(path, obj):
        if str(path).endswith("last.ckpt"):
            writes.append(path)
            if len(writes) == nth:
                raise _Stop
        return real(path, obj)

    monkeypatch.setattr(losslab_io, "save_torch_atomic", save)


TIMING = ("train/tokens_per_s", "val/sentences_per_s")


def test_translation_resumes_bit_identically_and_its_bleu_is_sacrebleu_of_the_whole_split(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed after epoch 2's history row (before its checkpoint) and resumed ends with exactly the weights
    (EMA and raw), optimizer state and history of the same run made straight (dropout 0.1 and FNL's factorization
    with Frobenius decay, so the resumed epochs must replay the dropout draws, batch order and per-update learning
    rate). Its
    test BLEU, summed from per-batch tallies over 7-sentence batches, equals sacrebleu's corpus BLEU of the final
    model's translations of the whole split at once."""
    import json

    from losslab.runs.checkpoint import load
    from losslab.seq2seq.toy import toy_corpus
    from losslab.seq2seq.train import load_run, train_translation, translate

    torch.set_num_threads(1)
    corpus = toy_corpus(200, 20, 30, seed=4)
    cfg = TranslateConfig.build(dict(arch="toy", vocab_size=90, lr=3e-3, warmup_updates=8, max_epochs=4, max_tokens=600,
                                dropout=0.1, rank_scale=0.5, spectral=True, frobenius_decay=True, attention_fd_ov=True,
                                gradient_clip=1.0, eval_batch_size=7, beam=3, model_ema=True,
                                model_ema_decay=0.9))  # fmt: skip
    quiet = {"log": lambda _: None}
    straight = train_translation(cfg, corpus, tmp_path / "straight", **quiet)
    with monkeypatch.context() as patch:
        _kill_before_checkpoint(patch, nth=2)
        with pytest.raises(_Stop):
            train_translation(cfg, corpus, tmp_path / "resumed", **quiet)
    assert [row["epoch"] for row in json.loads((tmp_path / "resumed" / "history.json").read_text())] == [0, 1]
    resumed = train_translation(cfg, corpus, None, resume=tmp_path / "resumed", **quiet)

    a, b = (load(tmp_path / name / "checkpoints" / "last.ckpt") for name in ("straight", "resumed"))
    assert a["global_step"] == b["global_step"] == straight["steps"] == resumed["steps"] > 4
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert opt_a.keys() == opt_b.keys() and all(
        torch.equal(opt_a[i][key], opt_b[i][key]) for i in opt_a for key in opt_a[i]
    )
    assert a["lr_schedulers"] == b["lr_schedulers"] == [{"updates": straight["steps"]}]
    raw_a, raw_b = a["ema_raw_state_dict"], b["ema_raw_state_dict"]  # the EMA weights are state_dict's
    assert all(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)
    assert not all(torch.equal(raw_a[k], a["state_dict"][f"model.{k}"]) for k in raw_a)
    rows_a, rows_b = (json.loads((tmp_path / n / "history.json").read_text()) for n in ("straight", "resumed"))
    drop = (
        [{k: v for k, v in row.items() if k not in TIMING} for row in rows_a],
        [{k: v for k, v in row.items() if k not in TIMING} for row in rows_b],
    )
    assert drop[0] == drop[1] and len(rows_a) == 4 and "val/bleu" in rows_a[-1] and "val/bleu" not in rows_a[0]

    model, tok, _ = load_run(tmp_path / "resumed")
    hyps, _ = translate(model, tok, [s for s, _ in corpus["test"]], 3, cfg.lenpen, 7, torch.device("cpu"))
    whole = sacrebleu.corpus_bleu(hyps, [[t for _, t in corpus["test"]]])
    assert 0.0 < whole.score < 100.0 and resumed["test"]["bleu"] == straight["test"]["bleu"]
    assert resumed["test"]["bleu"] == pytest.approx(whole.score, abs=1e-12)
    assert resumed["test"]["bleu_text"] == str(whole) and resumed["test"]["example"] == hyps[0]


def test_a_run_of_the_earlier_translation_loop_evaluates_and_resumes(tmp_path) -> None:
    """A last.ckpt in the earlier translation loop's layout (model, optimizer, step, epoch, config) loads for
    evaluation with the same weights, and resuming it ends with the weights of the same run made straight in the
    loop (its update count drives the schedule, its optimizer state continues)."""
    from losslab.errors import CorruptFileError
    from losslab.runs.checkpoint import load, save
    from losslab.seq2seq.toy import toy_corpus
    from losslab.seq2seq.train import load_run, loop_view, train_translation

    corpus = {"train": toy_corpus(60, 0, 0, seed=1)["train"]}
    cfg = TranslateConfig.build(
        dict(arch="toy", vocab_size=80, max_epochs=2, max_tokens=512, lr=3e-3, warmup_updates=3)
    )
    train_translation(cfg, corpus, tmp_path / "old", log=lambda _: None)
    ckpt = tmp_path / "old" / "checkpoints" / "last.ckpt"
    new = load(ckpt)
    weights = {k.removeprefix("model."): v for k, v in new["state_dict"].items()}
    save(ckpt, {"model": weights, "optimizer": new["optimizer_states"][0], "step": new["global_step"], "epoch": 1,
                "config": cfg.model_dump()})  # fmt: skip
    model, _, stored = load_run(tmp_path / "old")
    assert stored == cfg and all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    (tmp_path / "old" / "result.json").unlink()  # an unfinished run of the earlier loop
    longer = cfg.model_copy(update={"max_epochs": 3})
    resumed = train_translation(longer, corpus, None, resume=tmp_path / "old", log=lambda _: None)
    straight = train_translation(longer, corpus, tmp_path / "straight", log=lambda _: None)
    a, b = (load(tmp_path / name / "checkpoints" / "last.ckpt") for name in ("old", "straight"))
    assert resumed["steps"] == straight["steps"] == b["global_step"] and a["lr_schedulers"] == b["lr_schedulers"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])
    with pytest.raises(CorruptFileError, match="not a losslab translation checkpoint"):
        loop_view({"model": weights, "config": cfg.model_dump()}, ckpt, resume=True)  # no optimizer state


def test_a_run_killed_while_testing_resumes_to_the_same_result(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after its last checkpoint, before result.json (the final BLEU passes take long on a real corpus), a
    run resumes without training and writes the straight run's valid and test BLEU (text and signature too)."""
    import json

    from losslab import io as losslab_io
    from losslab.seq2seq.toy import toy_corpus
    from losslab.seq2seq.train import train_translation

    corpus = toy_corpus(80, 15, 15, seed=2)
    cfg = TranslateConfig.build(
        dict(arch="toy", vocab_size=80, max_epochs=2, max_tokens=2048, lr=3e-3, warmup_updates=4)
    )
    straight = train_translation(cfg, corpus, tmp_path / "straight", log=lambda _: None)
    real = losslab_io.write_json_atomic

    def write(path, obj, *args, **kwargs):
        if str(path).endswith("result.json"):
            raise _Stop
        return real(path, obj, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr("losslab.runs.folder.write_json_atomic", write)
        with pytest.raises(_Stop):
            train_translation(cfg, corpus, tmp_path / "killed", log=lambda _: None)
    resumed = train_translation(cfg, corpus, None, resume=tmp_path / "killed", log=lambda _: None)
    for split in ("valid", "test"):
        assert {k: v for k, v in resumed[split].items() if k != "sentences_per_s"} == {
            k: v for k, v in straight[split].items() if k != "sentences_per_s"
        }
    assert resumed["steps"] == straight["steps"] and resumed["epochs"] == 2
    assert json.loads((tmp_path / "killed" / "result.json").read_text())["valid"]["bleu"] == straight["valid"]["bleu"]
