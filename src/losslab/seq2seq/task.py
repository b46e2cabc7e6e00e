"""The translation experiment as a task of the plain training loop (:mod:`losslab.runs.task`), and its batches.

Per training batch (token batches of at most ``max_tokens``, fairseq's ``--max-tokens``)::

    logits = model(src, tgt_in)                       # (B, T, V), teacher forcing
    total = sequence_loss(logits, labels)             # label-smoothed CE or the rooted loss, mean per target token
    backward(total); reg.grad_term(model) for regs    # Frobenius decays (gradient-side), before clipping
    optimizer step; schedule.step_batch()             # fairseq's inverse_sqrt learning rate, per update

Every evaluation batch adds to one float64 tally (:data:`EVAL_TALLY`): the sums of the training loss and of the
cross entropy over the target tokens, the token count and, when the stage scores BLEU, BLEU's sufficient
statistics (:data:`losslab.seq2seq.bleu.BLEU_STATISTICS`) of the beam-search translations, the sentence count and
the seconds spent generating. Summed over batches (and ranks) the tally gives the exact corpus BLEU.
Validation scores BLEU in the last epoch only (fairseq validates the loss every epoch and generates at the
end); the test pass always does.

Resuming is bit-identical: the batch order of epoch ``e`` is seeded by (seed, e), and each epoch reseeds torch's
global generator from (seed, e) (dropout), so a resumed epoch draws what the straight run drew.

Under ``torchrun`` (``world`` processes, DDP) the batches are cut with ``max_tokens · world`` tokens and rank ``r``
trains on sentences ``r::world`` of each (about ``max_tokens`` per process, as a process of the classifier takes
``--batch-size``); its loss is its share's summed loss ÷ (the whole batch's target tokens / world), so DDP's mean
over the ranks is the single process's per-token loss of the whole batch. Each rank evaluates every ``world``-th
evaluation batch (the one holding the first sentence on rank 0, which keeps the example translation); the loop
sums the tallies over the ranks, so loss, CE and BLEU are those of the whole split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError
from losslab.objectives.token import IGNORE_INDEX, TokenLossSpec, token_loss
from losslab.regularizers.base import Regularizer
from losslab.runs.task import LogFn
from losslab.seq2seq.bleu import BLEU_STATISTICS, BleuResult, bleu_from_statistics, bleu_statistics
from losslab.seq2seq.config import TranslateConfig
from losslab.seq2seq.data import collate, token_batches
from losslab.seq2seq.model import Seq2SeqTransformer
from losslab.seq2seq.search import beam_search
from losslab.seq2seq.tokenizer import SubwordTokenizer

#: The sums of one evaluation pass, in order.
EVAL_TALLY = ("loss_sum", "ce_sum", "tokens", *BLEU_STATISTICS, "sentences", "seconds")
_BLEU = slice(3, 3 + len(BLEU_STATISTICS))


def label_smoothed_ce(logits: Tensor, labels: Tensor, eps: float, reduction: str = "mean") -> Tensor:
    """fairseq's label_smoothed_cross_entropy per valid token: (1−ε−ε/(V−1))·NLL + ε/(V−1)·Σ_v −log p_v, mean
    (or sum) over the tokens whose label is not IGNORE_INDEX; computed in float32 (float64 for float64 logits)."""
    valid = labels != IGNORE_INDEX
    logp = logits[valid].to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)  # (N, V), ≥ float32
    nll = -logp.gather(1, labels[valid][:, None]).squeeze(1)
    eps_i = eps / (logp.shape[-1] - 1)
    per_token = (1.0 - eps - eps_i) * nll + eps_i * (-logp.sum(-1))
    return per_token.sum() if reduction == "sum" else per_token.mean()


def sequence_loss(cfg: TranslateConfig, logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """The training loss of logits (B, T, V) against labels (B, T) (IGNORE_INDEX on padding), mean (or sum) per
    target token: label-smoothed CE for ``ce`` with smoothing, else losslab's token loss (``ce``, ``root``, ...)."""
    if cfg.loss == "ce" and cfg.smoothing > 0:
        return label_smoothed_ce(logits, labels, cfg.smoothing, reduction)
    return token_loss(logits, labels, TokenLossSpec(kind=cfg.loss, k=cfg.k, m=cfg.m), reduction=reduction)


def inverse_sqrt_lr(cfg: TranslateConfig, step: int) -> float:
    """fairseq's inverse_sqrt: linear warmup to ``lr`` over ``warmup_updates``, then lr·sqrt(warmup/step)."""
    if step < cfg.warmup_updates:
        return cfg.warmup_init_lr + (cfg.lr - cfg.warmup_init_lr) * step / cfg.warmup_updates
    return cfg.lr * math.sqrt(max(cfg.warmup_updates, 1) / max(step, 1))


class InverseSqrtSchedule:
    """:func:`inverse_sqrt_lr` per update: the loop calls ``step_batch()`` after every optimizer step; the epoch
    boundary (``step(epoch)``) changes nothing. Its state is the update count, so a resume continues the curve."""

    def __init__(self, cfg: TranslateConfig, optimizer: torch.optim.Optimizer) -> None:
        self.cfg, self.optimizer, self.updates = cfg, optimizer, 0
        self._apply()

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = inverse_sqrt_lr(self.cfg, self.updates)

    def step_batch(self) -> None:
        self.updates += 1
        self._apply()

    def step(self, epoch: int | None = None) -> None:
        """Per-epoch step of the loop's schedule contract: nothing happens at an epoch boundary."""

    def state_dict(self) -> dict[str, int]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self._apply()


def build_regularizers(cfg: TranslateConfig) -> list[Regularizer]:
    """Frobenius decay of the factorized layers and per-head attention FD, λ = weight decay (not yet attached)."""
    regs: list[Regularizer] = []
    if cfg.frobenius_decay:
        from losslab.regularizers.frobenius import FrobeniusDecay

        regs.append(FrobeniusDecay(lam=cfg.weight_decay))
    if cfg.attention_fd_qk or cfg.attention_fd_ov:
        from losslab.layers.attention import AttentionFrobeniusDecay

        regs.append(AttentionFrobeniusDecay(cfg.weight_decay, qk=cfg.attention_fd_qk, ov=cfg.attention_fd_ov))
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


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s batch order and dropout draws."""
    return seed * 100003 + epoch + 1


class TrainBatches:
    """The training pairs as token batches, in epoch ``e``'s seeded order (``set_epoch``); ``max_updates`` cuts
    the epoch that reaches it (each epoch has the same number of batches, so epoch e starts at update e·n). Under
    ``torchrun`` (``world`` > 1) the batches hold ``max_tokens · world`` tokens and rank ``rank`` takes sentences
    ``rank::world`` of each (module doc); a batch also carries ``step_tokens``, the target tokens of all shares."""

    def __init__(
        self,
        src_ids: list[list[int]],
        tgt_ids: list[list[int]],
        max_tokens: int,
        seed: int,
        max_updates: int | None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.src_ids, self.tgt_ids, self.max_tokens, self.seed = src_ids, tgt_ids, max_tokens * world, seed
        self.rank, self.world = rank, world
        batches = token_batches(src_ids, tgt_ids, self.max_tokens, shuffle_seed=None)
        self.per_epoch = len(batches)
        self.max_updates, self.epoch = max_updates, 0
        if min(map(len, batches)) < world:
            raise ConfigError(
                f"a batch of --max-tokens {max_tokens} x {world} processes holds fewer than {world} sentences, so "
                "some process would get none; raise --max-tokens or start fewer processes"
            )

    def epochs(self, max_epochs: int) -> int:
        """How many epochs run: ``max_epochs``, or fewer when ``max_updates`` ends training earlier."""
        if self.max_updates is None:
            return max_epochs
        return min(max_epochs, math.ceil(self.max_updates / self.per_epoch))

    @property
    def sampler(self) -> TrainBatches:
        """What the loop calls ``set_epoch`` on (a DataLoader's sampler): the batches themselves."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.max_updates is None:
            return self.per_epoch
        return max(0, min(self.per_epoch, self.max_updates - self.epoch * self.per_epoch))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = token_batches(self.src_ids, self.tgt_ids, self.max_tokens, epoch_seed(self.seed, self.epoch))
        for batch in batches[: len(self)]:
            share = batch[self.rank :: self.world]
            src, tgt_in, labels = collate(self.src_ids, self.tgt_ids, share)
            yield {"src": src, "tgt_in": tgt_in, "labels": labels, "tokens": sum(len(self.tgt_ids[i]) for i in share),
                   "step_tokens": sum(len(self.tgt_ids[i]) for i in batch)}  # fmt: skip


class EvalBatches:
    """A split's pairs in batches of ``batch_size`` sentences sorted by source length, with their references.

    A target longer than the model's positions (``limit``) adds no loss (its labels are ignored); its sentence is
    still translated and scored. Under ``torchrun`` rank ``rank`` keeps every ``world``-th batch, counted from the
    one holding the split's first sentence (rank 0's, so rank 0 records its translation); a rank may get none."""

    def __init__(
        self,
        tok: SubwordTokenizer,
        pairs: Sequence[tuple[str, str]],
        batch_size: int,
        limit: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.refs = [t for _, t in pairs]
        self.src_ids = tok.encode_batch([s for s, _ in pairs])
        self.tgt_ids = tok.encode_batch(self.refs)
        self.limit = limit
        order = sorted(range(len(self.src_ids)), key=lambda i: len(self.src_ids[i]))
        batches = [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]
        first = next((j for j, batch in enumerate(batches) if 0 in batch), 0)
        self.batches = [batch for j, batch in enumerate(batches) if (j - first) % world == rank]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.batches:
            targets = [self.tgt_ids[i] for i in batch]
            fits = torch.tensor([len(t) <= self.limit for t in targets])
            rows = range(len(batch))
            src, tgt_in, labels = collate([self.src_ids[i] for i in batch], [t[: self.limit] for t in targets], rows)
            labels[~fits] = IGNORE_INDEX
            yield {"src": src, "tgt_in": tgt_in, "labels": labels, "tokens": int((labels != IGNORE_INDEX).sum()),
                   "refs": [self.refs[i] for i in batch], "first": batch.index(0) if 0 in batch else -1}  # fmt: skip


class TranslationTask:
    """Train a :class:`Seq2SeqTransformer` on token batches (module doc); evaluate loss and BLEU.

    Args:
        cfg: the run's :class:`TranslateConfig`.
        model: the (factorized) Transformer.
        tok: its tokenizer (BLEU detokenizes the beam-search hypotheses).
        bleu_epoch: the epoch whose validation also scores BLEU (the run's last).
    """

    def __init__(self, cfg: TranslateConfig, model: Seq2SeqTransformer, tok: SubwordTokenizer, bleu_epoch: int) -> None:
        self.cfg, self.model, self.tok, self.bleu_epoch = cfg, model, tok, bleu_epoch
        self.regs = build_regularizers(cfg)
        self.epoch = 0
        self._nonfinite: Tensor | None = None
        self.bleu: dict[str, BleuResult] = {}  # per stage, from its last pass (text and signature for the log)
        self.examples: dict[str, str] = {}  # per stage, the translation of the split's first sentence
        self.forward_model: nn.Module = model  # the training forward: DistributedDataParallel under torchrun
        self.world = 1

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizer_and_schedule(self) -> tuple[torch.optim.Optimizer, InverseSqrtSchedule]:
        optimizer = build_optimizer(self.cfg, self.model, self.regs)
        return optimizer, InverseSqrtSchedule(self.cfg, optimizer)

    def attach(self) -> None:
        for reg in self.regs:
            reg.attach(self.model)

    def detach(self) -> None:
        for reg in self.regs:
            reg.detach()

    def start_epoch(self, epoch: int) -> None:
        """Remember the epoch and seed its dropout draws from (seed, epoch)."""
        self.epoch = epoch
        torch.manual_seed(epoch_seed(self.cfg.seed, epoch))

    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        return batch

    def batch_size(self, batch: dict[str, Any]) -> int:
        """Target tokens: the epoch's ``train/loss`` is the per-token mean and throughput counts tokens."""
        return int(batch["tokens"])

    def distribute(self, wrap: Any) -> list[nn.Module]:
        """Under torchrun: the training forward goes through ``wrap(model)`` (DistributedDataParallel)."""
        from losslab.runs.device import rank_world

        self.forward_model, self.world = wrap(self.model), rank_world()[1]
        return [self.model]

    def training_loss(self, batch: dict[str, Any], epoch: int, log: LogFn) -> Tensor:
        """The per-target-token loss of the batch plus the loss-side regularizer terms; under torchrun the share's
        summed loss ÷ (``step_tokens`` / world) (module doc). Logs ``train/loss``, the share's per-token mean."""
        logits = self.forward_model(batch["src"], batch["tgt_in"])
        if self.world == 1:
            loss = mean = sequence_loss(self.cfg, logits, batch["labels"])
        else:
            summed = sequence_loss(self.cfg, logits, batch["labels"], "sum")
            loss, mean = summed * (self.world / batch["step_tokens"]), summed / batch["tokens"]
        terms = [t for t in (r.loss_term(self.model, loss, batch["src"].shape[0]) for r in self.regs) if t is not None]
        total = sum(terms, loss)
        bad = ~torch.isfinite(total.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        log("train/loss", mean.detach(), prog_bar=True)
        return total

    def gradient_terms(self, epoch: int, log: LogFn) -> None:
        for reg in self.regs:
            value = reg.grad_term(self.model)
            if value is not None:
                log(f"reg/{reg.name}", value)

    def take_nonfinite(self) -> Tensor | None:
        """A non-finite training loss since the last call, or a weight an update made NaN/inf."""
        bad, self._nonfinite = self._nonfinite, None
        if bad is None:
            return None
        return bad | ~torch.stack([p.isfinite().all() for p in self.model.parameters()]).all()

    def scores_bleu(self, stage: str) -> bool:
        return stage != "val" or self.epoch == self.bleu_epoch

    def eval_tally(self, batch: dict[str, Any], stage: str, log: LogFn) -> Tensor:
        """The (len(EVAL_TALLY),) float64 sums of one batch (model in eval mode, no grad)."""
        logits, labels = self.model(batch["src"], batch["tgt_in"]), batch["labels"]
        losses = torch.stack([sequence_loss(self.cfg, logits, labels, "sum"),
                              token_loss(logits, labels, TokenLossSpec(kind="ce"), reduction="sum")])  # fmt: skip
        counts = [0.0] * (len(EVAL_TALLY) - 2)
        counts[0] = float(batch["tokens"])
        if self.scores_bleu(stage):
            start = time.perf_counter()
            ids = beam_search(self.model, batch["src"], beam=self.cfg.beam, lenpen=self.cfg.lenpen).tolist()
            hyps = self.tok.decode_batch(ids)
            counts[-1] = time.perf_counter() - start  # .tolist() waited for the device
            counts[1:-2] = bleu_statistics(hyps, batch["refs"])
            counts[-2] = float(len(hyps))
            if batch["first"] >= 0:
                self.examples[stage] = hyps[batch["first"]]
        tail = torch.tensor(counts, dtype=torch.float64, device=losses.device)
        return torch.cat([losses.to(torch.float64), tail])

    def tally_metrics(self, stage: str, tally: Tensor | Sequence[float]) -> dict[str, float]:
        """``stage/loss`` (the training loss), ``stage/ce`` per target token and, when scored, ``stage/bleu`` and
        ``stage/sentences_per_s`` from a pass's summed tally."""
        sums = tally.tolist() if isinstance(tally, Tensor) else list(tally)
        named = dict(zip(EVAL_TALLY, sums, strict=True))
        out: dict[str, float] = {}
        tokens = named["tokens"]
        if tokens > 0:
            out.update({f"{stage}/loss": named["loss_sum"] / tokens, f"{stage}/ce": named["ce_sum"] / tokens})
        if named["sentences"] > 0:
            self.bleu[stage] = bleu_from_statistics(sums[_BLEU])
            out.update({f"{stage}/bleu": self.bleu[stage].score,
                        f"{stage}/sentences_per_s": named["sentences"] / max(named["seconds"], 1e-9)})  # fmt: skip
        return out

    def validation_statistics(self, lr: float) -> dict[str, float]:
        return {}
