"""Train and evaluate a translation Transformer: config, losses, factorization, training loop, BLEU evaluation.

The losses are losslab's token losses (:mod:`losslab.objectives.token`: ``ce``, ``root``, ``root_convex``) with
fairseq's label smoothing for ``ce``; the factorized layers, Frobenius decay and the per-head attention SI/FD
come from :mod:`losslab.layers` and :mod:`losslab.regularizers`. The run folder is the shared one of
:mod:`losslab.runs` (``config.yaml``, ``history.json``, ``metrics.csv``, ``checkpoints/last.ckpt``,
``result.json``) plus ``tokenizer.json``::

    cfg = TranslateConfig(arch="toy", max_epochs=20, lr=1e-3)
    result = train_translation(cfg, toy_corpus(), Path("runs/toy"), device="cpu")
    result["test"]["bleu"], result["train_tokens_per_s"]
    train_translation(cfg, corpus, None, resume=Path("runs/toy"))      # continue a killed run
    model, tok, cfg = load_run(Path("runs/toy"))                        # then bleu_of(model, tok, pairs, cfg, dev)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from losslab.errors import ConfigError, CorruptFileError, TrainingDivergedError
from losslab.limits import MAX_VOCAB, check_allocation, check_count
from losslab.objectives.token import IGNORE_INDEX, TokenLossSpec, token_loss
from losslab.regularizers.base import Regularizer
from losslab.runs import LAST_CKPT, History, Progress, RunSpec, Throughput, claim, load, progress_mode, save
from losslab.runs.folder import stored_config
from losslab.seq2seq.bleu import corpus_bleu
from losslab.seq2seq.config import TranslateConfig, fnl_attention_dim
from losslab.seq2seq.data import Corpus, collate, token_batches
from losslab.seq2seq.model import ModelConfig, Seq2SeqTransformer, fnl_factorize
from losslab.seq2seq.search import beam_search
from losslab.seq2seq.tokenizer import SubwordTokenizer

LEGACY_CHECKPOINT = "checkpoint_last.pt"  # runs written before losslab.runs; read by load_run
TOKENIZER = "tokenizer.json"


def label_smoothed_ce(logits: Tensor, labels: Tensor, eps: float) -> Tensor:
    """fairseq's label_smoothed_cross_entropy per valid token: (1−ε−ε/(V−1))·NLL + ε/(V−1)·Σ_v −log p_v, mean."""
    valid = labels != IGNORE_INDEX
    logp = logits[valid].float().log_softmax(-1)  # (N, V)
    nll = -logp.gather(1, labels[valid][:, None]).squeeze(1)
    eps_i = eps / (logp.shape[-1] - 1)
    return ((1.0 - eps - eps_i) * nll + eps_i * (-logp.sum(-1))).mean()


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


def build_regularizers(cfg: TranslateConfig, model: nn.Module) -> list[Regularizer]:
    """Frobenius decay of the factorized layers and per-head attention FD, λ = weight decay; attached."""
    regs: list[Regularizer] = []
    if cfg.frobenius_decay:
        from losslab.regularizers.frobenius import FrobeniusDecay

        regs.append(FrobeniusDecay(lam=cfg.weight_decay))
    if cfg.attention_fd_qk or cfg.attention_fd_ov:
        from losslab.layers.attention import AttentionFrobeniusDecay

        regs.append(AttentionFrobeniusDecay(cfg.weight_decay, qk=cfg.attention_fd_qk, ov=cfg.attention_fd_ov))
    for reg in regs:
        reg.attach(model)
    return regs


def build_optimizer(cfg: TranslateConfig, model: nn.Module, regs: Sequence[Regularizer]) -> torch.optim.Optimizer:
    """Weight decay on every parameter (as fairseq) except those a Frobenius decay penalizes (WD-0 group)."""
    no_decay = {id(p) for reg in regs for p in reg.no_weight_decay_params(model)}
    decay = [p for p in model.parameters() if id(p) not in no_decay]
    plain = [p for p in model.parameters() if id(p) in no_decay]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.99, nesterov=True)


def inverse_sqrt_lr(cfg: TranslateConfig, step: int) -> float:
    """fairseq's inverse_sqrt: linear warmup to ``lr`` over ``warmup_updates``, then lr·sqrt(warmup/step)."""
    if step < cfg.warmup_updates:
        return cfg.warmup_init_lr + (cfg.lr - cfg.warmup_init_lr) * step / cfg.warmup_updates
    return cfg.lr * math.sqrt(max(cfg.warmup_updates, 1) / max(step, 1))


def sequence_loss(cfg: TranslateConfig, logits: Tensor, labels: Tensor) -> Tensor:
    """Mean per-token loss of logits (B, T, V) against labels (B, T) (IGNORE_INDEX on padding)."""
    if cfg.loss == "ce" and cfg.smoothing > 0:
        return label_smoothed_ce(logits, labels, cfg.smoothing)
    return token_loss(logits, labels, TokenLossSpec(kind=cfg.loss, k=cfg.k, m=cfg.m))


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
PROGRESS_SUMMARY = {"train/loss": "loss", "train/tokens_per_s": "target tokens/s"}


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
    """Train on ``corpus["train"]`` in a run folder (:func:`run_spec`, :mod:`losslab.runs`), report BLEU on the
    other splits. ``resume`` continues a killed run from its ``checkpoints/last.ckpt``; ``overwrite`` replaces a
    run losslab made, once the new one has finished. ``progress``: True a bar, False nothing, None a bar on a
    terminal and one line per epoch otherwise. ``on_start(model, tokenizer)`` sees the model a new run starts
    from (after the folder is claimed, before training). Returns ``result.json``'s content."""
    if "train" not in corpus or not corpus["train"]:
        raise ConfigError("the corpus has no training pairs; give --src-file/--tgt-file, --toy or --download")
    dev = torch.device(device)
    with claim(run_spec(cfg, out_dir, run_name, resume, overwrite, data)) as run:
        work = run.create()
        tok_path = work / TOKENIZER
        if run.resume_ckpt is not None:
            tok = SubwordTokenizer.load(tok_path)
        else:
            tok = SubwordTokenizer.train([t for pair in corpus["train"] for t in pair], cfg.vocab_size)
            tok.save(tok_path)
        run.write_config()
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, tok.vocab_size).to(dev)
        regs = build_regularizers(cfg, model)
        opt = build_optimizer(cfg, model, regs)
        step, start = 0, 0
        if run.resume_ckpt is None and on_start is not None:
            on_start(model, tok)
        if run.resume_ckpt is not None:
            state = load(run.resume_ckpt, into={"model": model, "optimizer": opt}, map_location=dev)
            step, start = int(state["step"]), int(state["epoch"]) + 1
            log(f"resumed from {run.resume_ckpt} after epoch {start}, step {step}")
        src_ids, tgt_ids = _trainable(tok, corpus["train"], model.cfg.max_positions - 1, log)
        log(f"tokenizer: {tok.describe()}; model: {sum(p.numel() for p in model.parameters()):,} parameters")
        history = History(work, keep_before=start)
        clock = Throughput(time.perf_counter(), dev)
        bar = Progress(progress_mode(progress), cfg.max_epochs, summary=PROGRESS_SUMMARY)
        for epoch in range(start, cfg.max_epochs):
            if cfg.max_updates is not None and step >= cfg.max_updates:
                break
            row, step = _epoch(cfg, model, regs, opt, (src_ids, tgt_ids), epoch, step, dev, clock, bar)
            if not bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all()):
                raise _diverged(epoch + 1, step - 1, run.last_ckpt)  # an update made a weight NaN/inf
            history.append(row)  # the row before the checkpoint: a kill between them redoes the epoch
            save(run.last_ckpt, {"model": model, "optimizer": opt, "step": step, "epoch": epoch,
                                 "config": cfg.model_dump()})  # fmt: skip
            bar.close(row)
        result = _evaluate_splits(cfg, model, tok, corpus, dev, log, progress)
        result.update({"epochs": len(history.rows), "steps": step, "train_tokens_per_s": clock.images_per_s,
                       "speed": clock.record(), "tokenizer": tok.describe(), "run_dir": str(run.final)})  # fmt: skip
        run.write_result(result)
        run.commit()
    return result


def _epoch(
    cfg: TranslateConfig,
    model: Seq2SeqTransformer,
    regs: Sequence[Regularizer],
    opt: torch.optim.Optimizer,
    data: tuple[list[list[int]], list[list[int]]],
    epoch: int,
    step: int,
    dev: torch.device,
    clock: Throughput,
    bar: Progress,
) -> tuple[dict[str, float], int]:
    """One epoch of token batches (0-based ``epoch``); its history row and the update count after it. A NaN/inf
    loss raises :class:`TrainingDivergedError` before its update is applied."""
    model.train()
    src_ids, tgt_ids = data
    total, count = 0.0, 0
    batches = token_batches(src_ids, tgt_ids, cfg.max_tokens, shuffle_seed=cfg.seed * 100003 + epoch + 1)
    for batch in bar.batches(batches, epoch):
        clock.step()
        src, tgt_in, labels = (t.to(dev, non_blocking=True) for t in collate(src_ids, tgt_ids, batch))
        for group in opt.param_groups:
            group["lr"] = inverse_sqrt_lr(cfg, step)
        loss = sequence_loss(cfg, model(src, tgt_in), labels)
        if not math.isfinite(loss_value := loss.item()):
            raise _diverged(epoch + 1, step, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for reg in regs:
            reg.grad_term(model)
        if cfg.gradient_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.gradient_clip)
        opt.step()
        step += 1
        n_tok = int((labels != IGNORE_INDEX).sum())
        total, count = total + loss_value * n_tok, count + n_tok
        clock.count(n_tok)
        if cfg.max_updates is not None and step >= cfg.max_updates:
            break
    clock.stop()
    return {"epoch": epoch, "step": step, "train/loss": total / max(count, 1),
            "train/tokens_per_s": clock.images_per_s}, step  # fmt: skip


def _evaluate_splits(
    cfg: TranslateConfig,
    model: Seq2SeqTransformer,
    tok: SubwordTokenizer,
    corpus: Corpus,
    dev: torch.device,
    log: Callable[[str], None],
    progress: bool | None,
) -> dict[str, object]:
    """BLEU of the valid and test splits the corpus has."""
    result: dict[str, object] = {}
    for split in ("valid", "test"):
        if corpus.get(split):
            scores = bleu_of(model, tok, corpus[split], cfg, dev, progress=bool(progress))
            result[split] = scores
            log(f"{split}: {scores['bleu_text']} [{scores['signature']}] ({scores['sentences_per_s']:.1f} sentences/s)")
    return result


def upgrade_config(saved: object) -> dict[str, object]:
    """A stored config dict in today's keys: runs saved before ``ffn_rank_scale`` existed used ``rank_scale`` for
    the FFN-only factorization."""
    if not isinstance(saved, dict):
        raise CorruptFileError("the run's stored config is not a mapping; the run folder is damaged, train it again")
    saved = dict(saved)
    if "ffn_rank_scale" not in saved:
        saved["ffn_rank_scale"], saved["rank_scale"] = saved.get("rank_scale"), None
    return saved


def _diverged(epoch: int, step: int, ckpt_path: Path | None) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"training diverged: the loss became NaN or infinite in epoch {epoch} (update {step + 1}); the run stopped "
        "and its last checkpoint (checkpoints/last.ckpt, from the epoch before, if any) is kept. Lower --lr, add "
        "--gradient-clip (e.g. 1.0) or lower --k"
    )


def load_run(
    out_dir: Path, device: str | torch.device = "cpu"
) -> tuple[Seq2SeqTransformer, SubwordTokenizer, TranslateConfig]:
    """The trained model, tokenizer and config of a run folder (``checkpoints/last.ckpt``; a run saved before the
    shared run folder: ``checkpoint_last.pt``), read through the safe loader."""
    ckpt_path = out_dir / LAST_CKPT
    if not ckpt_path.is_file() and (out_dir / LEGACY_CHECKPOINT).is_file():
        ckpt_path = out_dir / LEGACY_CHECKPOINT
    if not ckpt_path.is_file():
        raise ConfigError(f"{out_dir} holds no {LAST_CKPT}; train first (losslab translate train --out-dir ...)")
    state = load(ckpt_path, what="translation checkpoint", map_location=device)
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise CorruptFileError(f"{str(ckpt_path)!r} is not a losslab translation checkpoint; train the run again")
    cfg = TranslateConfig.build(**upgrade_config(state["config"]))
    tok = SubwordTokenizer.load(out_dir / TOKENIZER)
    model = build_model(cfg.model_copy(update={"attention_spectral_qk": False, "attention_spectral_ov": False,
                                               "spectral": False}), tok.vocab_size)  # fmt: skip
    model.load_state_dict(state["model"])
    return model.to(device).eval(), tok, cfg
