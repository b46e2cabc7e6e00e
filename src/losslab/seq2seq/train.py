"""Train and evaluate a translation Transformer: the model as the config asks, the run, beam-search translation.

Training is :class:`~losslab.seq2seq.task.TranslationTask` (losses, regularizers, schedule, evaluation tally) in
losslab's one training loop (:mod:`losslab.runs.loop`); the factorized layers, Frobenius decay and the per-head
attention SI/FD come from :mod:`losslab.layers` and :mod:`losslab.regularizers`. The run folder is the shared one
of :mod:`losslab.runs` (``config.yaml``, ``history.json``, ``metrics.csv``, ``checkpoints/last.ckpt``,
``result.json``) plus ``tokenizer.json``::

    cfg = TranslateConfig(arch="toy", max_epochs=20, lr=1e-3)
    result = train_translation(cfg, toy_corpus(), Path("runs/toy"), device="cpu")
    result["test"]["bleu"], result["train_tokens_per_s"]
    train_translation(cfg, corpus, None, resume=Path("runs/toy"))      # continue a killed run
    model, tok, cfg = load_run(Path("runs/toy"))                        # then bleu_of(model, tok, pairs, cfg, dev)

Under ``torchrun`` each process trains on its share of every batch with DDP and evaluates its share of the
evaluation batches (:mod:`losslab.seq2seq.task`); rank 0 alone claims the run folder, trains the tokenizer (the
others read it once it is written) and writes every file; a resume needs the number of processes the run had.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from tqdm.auto import tqdm

from losslab.errors import ConfigError, CorruptFileError
from losslab.limits import MAX_VOCAB, check_allocation, check_count
from losslab.runs import LAST_CKPT, RunSpec, claim, load
from losslab.runs.device import check_world_size, rank_world, torchrun_group
from losslab.runs.folder import stored_config
from losslab.runs.loop import LoopOutcome, LoopSettings, Precision, Ranks, evaluate, load_task_state, run_loop
from losslab.seq2seq.bleu import corpus_bleu
from losslab.seq2seq.config import TranslateConfig, fnl_attention_dim
from losslab.seq2seq.data import Corpus, collate
from losslab.seq2seq.model import ModelConfig, Seq2SeqTransformer, fnl_factorize
from losslab.seq2seq.search import beam_search
from losslab.seq2seq.task import EvalBatches, TrainBatches, TranslationTask
from losslab.seq2seq.tokenizer import SubwordTokenizer
from losslab.threads import thread_report

LEGACY_CHECKPOINT = "checkpoint_last.pt"  # runs written before losslab.runs; read by load_run
TOKENIZER = "tokenizer.json"


def model_config(cfg: TranslateConfig, vocab_size: int) -> ModelConfig:
    """The preset's sizes with the run's dropout, norm placement and FNL's attention width (int(s·d/H)·H)."""
    overrides: dict[str, object] = {}
    if cfg.normalize_before is not None:
        overrides["normalize_before"] = cfg.normalize_before
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    base = ModelConfig.preset(cfg.arch, vocab_size, **overrides)
    if cfg.rank_scale is not None and cfg.rank_scale < 1:
        return replace(base, attention_dim=fnl_attention_dim(base.d_model, base.heads, cfg.rank_scale))
    return base


def build_model(cfg: TranslateConfig, vocab_size: int) -> Seq2SeqTransformer:
    """The preset model, factorized and rebalanced as ``cfg`` asks.

    ``rank_scale`` s < 1 is FNL's: heads of int(s·d/H), then :func:`~losslab.seq2seq.model.fnl_factorize` (FFN,
    embeddings, position tables, output). ``ffn_rank_scale`` factorizes the FFN Linears only.
    """
    sizes = model_config(cfg, vocab_size)
    check_count("vocab_size", vocab_size, low=8, high=MAX_VOCAB, source=TOKENIZER)
    tables = 1 if sizes.tie_embeddings else 3  # source, target and output tables when untied
    check_allocation(f"the {cfg.arch} model's {tables} vocabulary table(s)", 4 * tables * vocab_size * sizes.d_model)
    model = Seq2SeqTransformer(sizes)
    if cfg.rank_scale is not None and cfg.rank_scale < 1:
        fnl_factorize(model, cfg.rank_scale, spectral=cfg.spectral)
    if cfg.ffn_rank_scale is not None:
        from losslab.layers.factorize import factorize

        skip = ["*.q_proj", "*.k_proj", "*.v_proj", "*.out_proj", "output"]
        factorize(model, rank_scale=cfg.ffn_rank_scale, spectral=cfg.spectral, skip=skip)
    if cfg.attention_spectral_qk or cfg.attention_spectral_ov:
        from losslab.layers.attention import spectral_rebalance_attention

        spectral_rebalance_attention(model, qk=cfg.attention_spectral_qk, ov=cfg.attention_spectral_ov)
    return model


@torch.no_grad()
def translate(
    model: Seq2SeqTransformer,
    tok: SubwordTokenizer,
    sources: Sequence[str],
    beam: int,
    lenpen: float,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
) -> tuple[list[str], float]:
    """Detokenized translations in input order, and sentences/s of the generation."""
    model.eval()
    ids = tok.encode_batch(sources)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    start = time.perf_counter()
    for lo in tqdm(range(0, len(order), batch_size), desc="beam search", disable=not progress, leave=False):
        batch = order[lo : lo + batch_size]
        src, _, _ = collate(ids, ids, batch)
        hyps = beam_search(model, src.to(device), beam=beam, lenpen=lenpen).tolist()
        for i, text in zip(batch, tok.decode_batch(hyps)):
            out[i] = text
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, len(ids) / max(time.perf_counter() - start, 1e-9)


def bleu_of(
    model: Seq2SeqTransformer,
    tok: SubwordTokenizer,
    pairs: Sequence[tuple[str, str]],
    cfg: TranslateConfig,
    device: torch.device,
    beam: int | None = None,
    progress: bool = False,
) -> dict[str, float | str]:
    """Beam-search translations of the sources scored against the targets: BLEU, signature, sentences/s."""
    sources = [s for s, _ in pairs]
    hyps, speed = translate(model, tok, sources, beam or cfg.beam, cfg.lenpen, cfg.eval_batch_size, device, progress)
    result = corpus_bleu(hyps, [t for _, t in pairs])
    return {"bleu": result.score, "signature": result.signature, "sentences_per_s": speed, "bleu_text": result.text,
            "example": hyps[0] if hyps else ""}  # fmt: skip


def _trainable(
    tok: SubwordTokenizer, pairs: Sequence[tuple[str, str]], limit: int, log: Callable[[str], None]
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of the pairs whose both sides fit the model's positions (fairseq skips longer ones too)."""
    src = tok.encode_batch([s for s, _ in pairs])
    tgt = tok.encode_batch([t for _, t in pairs])
    keep = [i for i in range(len(src)) if len(src[i]) <= limit and len(tgt[i]) <= limit]
    if len(keep) < len(src):
        log(f"skipped {len(src) - len(keep)} training pairs longer than {limit} tokens")
    if not keep:
        raise ConfigError(f"every training pair is longer than {limit} tokens; shorten the sentences")
    return [src[i] for i in keep], [tgt[i] for i in keep]


# TranslateConfig keys fixed by a run's checkpoint and tokenizer: a resume must not change them.
ARCHITECTURE_KEYS = ("arch", "vocab_size", "rank_scale", "ffn_rank_scale", "normalize_before")
#: The per-epoch summary a non-terminal stderr gets (``losslab.runs.Progress`` "lines" mode).
PROGRESS_SUMMARY = {"train/loss": "loss", "val/loss": "val_loss", "train/tokens_per_s": "target tokens/s"}
DIVERGED_HINT = (
    "the run stopped and its last checkpoint (checkpoints/last.ckpt, from the epoch before, if any) is kept. "
    "Lower --lr, add --gradient-clip (e.g. 1.0) or lower --k"
)


def run_spec(
    cfg: TranslateConfig,
    out_dir: Path | None,
    run_name: str | None = None,
    resume: Path | None = None,
    overwrite: bool = False,
    data: dict[str, object] | None = None,
) -> RunSpec:
    """The run folder of a translation run: ``out_dir/run_name``, or ``out_dir`` itself without a run name; its
    ``config.yaml`` holds the config and the data source (``data``), and a resume keeps :data:`ARCHITECTURE_KEYS`."""
    if resume is None and out_dir is None:
        raise ConfigError("give --out-dir (the run folder) or --resume RUN (a run to continue)")
    if run_name is None and out_dir is not None:
        out_dir, run_name = Path(out_dir).parent, Path(out_dir).name
    config = {**cfg.model_dump(), "data": dict(data or {})}
    return RunSpec(out_dir=Path(out_dir or "."), run_name=run_name or "", resume=resume, overwrite=overwrite,
                   config=config, match_keys=ARCHITECTURE_KEYS, epochs=cfg.max_epochs)  # fmt: skip


def stored_run_config(resume: Path) -> dict[str, object]:
    """The ``config.yaml`` of the run ``--resume`` names (config keys plus ``data``), upgraded to today's keys."""
    return upgrade_config(stored_config(resume))


def train_translation(
    cfg: TranslateConfig,
    corpus: Corpus,
    out_dir: Path | None,
    device: str | torch.device = "cpu",
    *,
    run_name: str | None = None,
    resume: Path | None = None,
    overwrite: bool = False,
    data: dict[str, object] | None = None,
    log: Callable[[str], None] = print,
    progress: bool | None = False,
    on_start: Callable[[Seq2SeqTransformer, SubwordTokenizer], None] | None = None,
) -> dict[str, object]:
    """Train on ``corpus["train"]`` in a run folder (:func:`run_spec`) with the plain loop of
    :mod:`losslab.runs.loop` (:class:`~losslab.seq2seq.task.TranslationTask`), report BLEU on the other splits.
    ``resume`` continues a killed run from its ``checkpoints/last.ckpt``; ``overwrite`` replaces a run losslab
    made, once the new one has finished. ``progress``: True a bar, False nothing, None a bar on a terminal and one
    line per epoch otherwise. ``on_start(model, tokenizer)`` sees the model a new run starts from (after the
    folder is claimed, before training). Returns ``result.json``'s content (on every rank under torchrun; rank 0
    alone logs and writes)."""
    if "train" not in corpus or not corpus["train"]:
        raise ConfigError("the corpus has no training pairs; give --src-file/--tgt-file, --toy or --download")
    with torchrun_group(torch.device(device)) as dev:
        spec = run_spec(cfg, out_dir, run_name, resume, overwrite, data)
        return _train_in_group(cfg, corpus, spec, dev, log if rank_world()[0] == 0 else _quiet, progress, on_start)


def _quiet(message: str) -> None:
    """The log of a torchrun rank other than 0: rank 0 says it."""


def _train_in_group(
    cfg: TranslateConfig,
    corpus: Corpus,
    spec: RunSpec,
    dev: torch.device,
    log: Callable[[str], None],
    progress: bool | None,
    on_start: Callable[[Seq2SeqTransformer, SubwordTokenizer], None] | None,
) -> dict[str, object]:
    """:func:`train_translation` on ``dev``, inside the torchrun process group when there is one."""
    started, ranks = time.perf_counter(), Ranks(dev)
    Precision(cfg.precision, dev)  # 16-mixed without a GPU: refused before the run folder is touched
    with claim(spec) as run:
        if run.resume_ckpt is not None:
            check_world_size(load(run.resume_ckpt, mmap=True), ranks.world)
        work = run.create()
        tok = _tokenizer(cfg, corpus, work / TOKENIZER, fresh=run.resume_ckpt is None, ranks=ranks)
        run.write_config()
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, tok.vocab_size).to(dev)
        if run.resume_ckpt is None and on_start is not None:
            on_start(model, tok)
        data_ = _loaders(cfg, tok, corpus, model.cfg.max_positions - 1, log, ranks)
        epochs = data_.train.epochs(cfg.max_epochs)
        log(f"tokenizer: {tok.describe()}; model: {sum(p.numel() for p in model.parameters()):,} parameters")
        if run.resume_ckpt is not None:
            log(f"resuming from {run.resume_ckpt}")
        task = TranslationTask(cfg, model, tok, bleu_epoch=epochs - 1)
        settings = LoopSettings(run_dir=work, epochs=epochs, device=dev, resume_ckpt=run.resume_ckpt,
                                gradient_clip=cfg.gradient_clip, precision=cfg.precision,
                                ema_decay=cfg.model_ema_decay if cfg.model_ema else None,
                                ema_warmup=cfg.model_ema_warmup, progress=progress, progress_summary=PROGRESS_SUMMARY,
                                score=None, hyper_parameters={"config": cfg.model_dump(), "world_size": ranks.world},
                                started=started,
                                diverged_hint=DIVERGED_HINT, throughput_column="train/tokens_per_s",
                                resume_view=partial(loop_view, path=run.resume_ckpt, resume=True))  # fmt: skip
        outcome = run_loop(task, data_, settings)
        valid = outcome.rows[-1] if outcome.rows else {}
        if corpus.get("valid") and "val" not in task.bleu:  # resumed after its last epoch (killed while testing)
            valid = _validate_checkpoint(task, data_.val, run.last_ckpt, settings, ranks)
        result = _result(task, outcome, valid, corpus, log)
        result.update({"tokenizer": tok.describe(), "run_dir": str(run.final)})
        run.write_result(result)
        run.commit()
    return result


def _tokenizer(cfg: TranslateConfig, corpus: Corpus, path: Path, fresh: bool, ranks: Ranks) -> SubwordTokenizer:
    """A new run's tokenizer, trained on the training pairs and saved to ``path`` (by rank 0; the other torchrun
    ranks wait, then read it); a resumed run's, loaded."""
    if not fresh:
        return SubwordTokenizer.load(path)
    tok = None
    if ranks.writes:
        tok = SubwordTokenizer.train([t for pair in corpus["train"] for t in pair], cfg.vocab_size)
        tok.save(path)
    ranks.barrier()
    return tok if tok is not None else SubwordTokenizer.load(path)


def _loaders(
    cfg: TranslateConfig, tok: SubwordTokenizer, corpus: Corpus, limit: int, log: Callable[[str], None], ranks: Ranks
) -> SimpleNamespace:
    """The loop's data: training token batches, and the valid and test splits (None when the corpus has none),
    each rank's share under torchrun."""
    train = TrainBatches(*_trainable(tok, corpus["train"], limit, log), cfg.max_tokens, cfg.seed, cfg.max_updates,
                         rank=ranks.rank, world=ranks.world)  # fmt: skip
    evals = {split: EvalBatches(tok, corpus[split], cfg.eval_batch_size, limit, ranks.rank, ranks.world)
             if corpus.get(split) else None for split in ("valid", "test")}  # fmt: skip
    return SimpleNamespace(train=train, val=evals["valid"] or [], test=evals["test"])


def _validate_checkpoint(
    task: TranslationTask, loader: EvalBatches, ckpt: Path, settings: LoopSettings, ranks: Ranks
) -> dict[str, float]:
    """The last validation (BLEU included) of the weights in ``ckpt``, as the loop's validation saw them."""
    load_task_state(task, load(ckpt, map_location=settings.device)["state_dict"])
    task.epoch = task.bleu_epoch
    return evaluate(task, loader, "val", settings.device, Precision(settings.precision, settings.device), ranks)


def _result(
    task: TranslationTask, outcome: LoopOutcome, valid: dict[str, float], corpus: Corpus, log: Callable[[str], None]
) -> dict:
    """``result.json``: BLEU of the valid split (last validation) and the test split, the run's size and speed."""
    result: dict[str, object] = {}
    metrics = {"valid": valid, "test": outcome.tested}
    for split, stage in (("valid", "val"), ("test", "test")):
        if corpus.get(split) and stage in task.bleu:
            bleu = task.bleu[stage]
            result[split] = {"bleu": bleu.score, "signature": bleu.signature, "bleu_text": bleu.text,
                             "sentences_per_s": metrics[split][f"{stage}/sentences_per_s"],
                             "example": task.examples.get(stage, "")}  # fmt: skip
            log(f"{split}: {bleu.text} [{bleu.signature}] ({result[split]['sentences_per_s']:.1f} sentences/s)")
    steps = outcome.rows[-1]["step"] if outcome.rows else 0
    return {**result, "epochs": len(outcome.rows), "steps": steps, "train_tokens_per_s": outcome.images_per_s,
            "speed": {"items_per_s": outcome.images_per_s, "first_step_s": outcome.first_step_s,
                      "first_step_unix": outcome.first_step_unix, "threads": thread_report()}}  # fmt: skip


def upgrade_config(saved: object) -> dict[str, object]:
    """A stored config dict in today's keys: runs saved before ``ffn_rank_scale`` existed used ``rank_scale`` for
    the FFN-only factorization."""
    if not isinstance(saved, dict):
        raise CorruptFileError("the run's stored config is not a mapping; the run folder is damaged, train it again")
    saved = dict(saved)
    if "ffn_rank_scale" not in saved:
        saved["ffn_rank_scale"], saved["rank_scale"] = saved.get("rank_scale"), None
    return saved


def loop_view(state: dict[str, Any], path: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """A translation checkpoint in the loop's layout (``state_dict`` with ``model.`` keys, ``optimizer_states``,
    ``lr_schedulers``, ``epoch``, ``global_step``, the config under ``hyper_parameters``). One of the loop passes
    through; one of the translation loop before it (``model``, ``optimizer``, ``step``, ``epoch``, ``config``: the
    same optimizer groups, ``step`` updates of the schedule) is mapped, so such a run evaluates and resumes."""
    if isinstance(state.get("state_dict"), dict) and isinstance(state.get("hyper_parameters"), dict):
        return state
    needed = ("model", "config", *(("optimizer", "step", "epoch") if resume else ()))
    if (
        not isinstance(state.get("model"), dict)
        or not isinstance(state.get("config"), dict)
        or not all(key in state for key in needed)
    ):
        raise CorruptFileError(f"{str(path)!r} is not a losslab translation checkpoint; train the run again")
    step = int(state.get("step", 0))
    return {
        "state_dict": {f"model.{k}": v for k, v in state["model"].items()},
        "optimizer_states": [state.get("optimizer")],
        "lr_schedulers": [{"updates": step}],
        "epoch": state.get("epoch"),
        "global_step": step,
        "hyper_parameters": {"config": state["config"]},
    }


def load_run(
    out_dir: Path, device: str | torch.device = "cpu"
) -> tuple[Seq2SeqTransformer, SubwordTokenizer, TranslateConfig]:
    """The trained model, tokenizer and config of a run folder (``checkpoints/last.ckpt``; a run saved before the
    shared run folder: ``checkpoint_last.pt``), read through the safe loader, in any layout :func:`loop_view`
    reads."""
    ckpt_path = out_dir / LAST_CKPT
    if not ckpt_path.is_file() and (out_dir / LEGACY_CHECKPOINT).is_file():
        ckpt_path = out_dir / LEGACY_CHECKPOINT
    if not ckpt_path.is_file():
        raise ConfigError(f"{out_dir} holds no {LAST_CKPT}; train first (losslab translate train --out-dir ...)")
    state = loop_view(load(ckpt_path, what="translation checkpoint", map_location=device), ckpt_path)
    weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    cfg = TranslateConfig.build(upgrade_config(state["hyper_parameters"].get("config")))
    tok = SubwordTokenizer.load(out_dir / TOKENIZER)
    model = build_model(cfg.model_copy(update={"attention_spectral_qk": False, "attention_spectral_ov": False,
                                               "spectral": False}), tok.vocab_size)  # fmt: skip
    model.load_state_dict(weights)
    return model.to(device).eval(), tok, cfg
