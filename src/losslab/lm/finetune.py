"""Finetune a Hugging Face causal LM with the rooted (or cross-entropy) token loss, in the plain training loop.

Causal-LM finetuning is a task of the one loop (:class:`CausalLMTask`, the protocol of :mod:`losslab.runs.task`):
the loop owns the device, precision, clipping, EMA, NaN check, history, checkpoints, resume and progress; the task
owns the forward, the token loss and its evaluation. One optimizer step consumes ``batch_size × grad_accum``
blocks, split into ``grad_accum`` micro-batches (:meth:`CausalLMTask.micro_batches`); each micro-batch loss is
divided by the valid-token count of the **whole** step (HF's ``num_items_in_batch``), so accumulation equals one
big batch exactly (llm.md §1). The learning rate warms up linearly for ``warmup_steps`` and decays linearly to 0 at
the last step, stepped after every optimizer step (:class:`WarmupLinearDecay`, the loop's ``step_batch`` hook)::

    cfg = FinetuneConfig(model="facebook/opt-125m", out_dir="runs/opt125m-rlo", loss="root", k=5, m=5)
    result = finetune(cfg)                   # a new run folder (losslab.runs); resume=... continues a killed one
    result.val_ppl_before, result.val_ppl_after    # exp(token CE) on held-out windows, whatever the loss

The loop's "epoch" is an interval of ``checkpoint_every`` optimizer steps (:class:`StepBatches`): one history row
(``epoch`` = the interval's index) and one ``checkpoints/last.ckpt`` each, validation every ``eval_every`` steps.
The batches of step ``s`` depend only on ``s`` and the seed, and dropout is reseeded per interval, so a resumed run
continues bit-identically. Reported perplexity is always exp(token cross entropy) (``val/ppl``, summed exactly
over batches from the tally (CE sum, token count)); the training loss is logged separately. The run
folder is the shared one (:mod:`losslab.runs`): ``config.yaml``, ``history.json``/``metrics.csv``,
``checkpoints/last.ckpt``, ``model/`` (save_pretrained) and ``result.json``.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError
from losslab.lm.config import MATCH_KEYS, FinetuneConfig
from losslab.lm.data import eval_windows, load_corpus, require_pad_token, tokenize_text, training_blocks
from losslab.lm.models import check_seqlen, load_causal_lm, load_tokenizer
from losslab.lm.perplexity import perplexity
from losslab.objectives.token import (
    IGNORE_INDEX,
    TokenLossSpec,
    causal_lm_loss,
    count_predicted_tokens,
    shift_labels,
    token_loss,
)
from losslab.runs.loop import LoopOutcome, LoopSettings, Precision, run_loop
from losslab.runs.task import LogFn

_CE = TokenLossSpec(kind="ce")
DIVERGED_HINT = (
    "the run stopped and its last checkpoint (checkpoints/last.ckpt, from the interval before, if any) is kept. "
    "Lower --lr, --gradient-clip or --k"
)


def warmup_linear_decay(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warmup from 0 over ``warmup`` steps, then linear decay to 0 at ``total`` (HF's)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


class WarmupLinearDecay:
    """A per-step schedule for the plain loop: ``step_batch()`` after every optimizer step moves the LR multiplier
    :func:`warmup_linear_decay`; the loop's per-epoch ``step(epoch)`` leaves it alone."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total
        self.lambda_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)

    def factor(self, step: int) -> float:
        return warmup_linear_decay(step, self.warmup, self.total)

    def step(self, epoch: int | None = None) -> None:
        """Epochs (checkpoint intervals) do not move a per-step schedule."""

    def step_batch(self) -> None:
        self.lambda_lr.step()

    def state_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.lambda_lr.state_dict().items() if key != "lr_lambdas"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lambda_lr.load_state_dict({**state, "lr_lambdas": [None] * len(self.lambda_lr.lr_lambdas)})


@dataclass
class StepBatches:
    """The training batches of the loop's epoch ``e``: optimizer steps ``[e·every, min((e+1)·every, total))``.

    Step ``s`` takes the blocks ``perm_p[j·G : (j+1)·G]`` with ``p, j = divmod(s, steps_per_pass)``, ``perm_p`` the
    permutation of pass ``p`` (:meth:`permutations`) and ``G = step_blocks · world`` the global step: the order
    depends only on the step and the seed, so a resume sees the same batches. Each batch is gathered with one index
    per tensor (no per-sample collate). Under ``torchrun`` (``world`` > 1) rank ``r`` takes rows ``r::world`` of
    the step's index and the batch also holds ``step_tokens``, the scored tokens of the whole (global) step; each
    pass's permutation is first cut to a multiple of ``world``, so every rank has rows in every step.
    """

    blocks: dict[str, Tensor]
    step_blocks: int  # blocks of one optimizer step in this process (batch_size · grad_accum)
    every: int
    total_steps: int
    seed: int
    epoch: int = 0
    rank: int = 0
    world: int = 1

    @property
    def sampler(self) -> StepBatches:
        return self  # the loop calls ``loader.sampler.set_epoch(epoch)``

    @property
    def steps_per_pass(self) -> int:
        return math.ceil(self.used_blocks / (self.step_blocks * self.world))

    @property
    def used_blocks(self) -> int:
        """The blocks of each pass's permutation that are trained on (all but ``n_blocks mod world``)."""
        return self.n_blocks - self.n_blocks % self.world

    @property
    def n_blocks(self) -> int:
        return int(self.blocks["input_ids"].shape[0])

    @property
    def intervals(self) -> int:
        return math.ceil(self.total_steps / self.every)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return min(self.every, self.total_steps - self.epoch * self.every)

    def permutations(self, first_pass: int) -> Iterator[Tensor]:
        """The block order of each pass from ``first_pass`` on: the draws a shuffling ``DataLoader`` makes from a
        generator seeded with ``seed`` (per pass: its base-seed draw, the sampler's permutation and the sampler's
        empty tail permutation), so a run keeps the data order of the earlier Lightning engine."""
        generator = torch.Generator().manual_seed(self.seed)
        for data_pass in itertools.count():
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            perm = torch.randperm(self.n_blocks, generator=generator)
            torch.randperm(self.n_blocks, generator=generator)
            if data_pass >= first_pass:
                yield perm

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        first, size = self.epoch * self.every, self.step_blocks * self.world
        perms, perm_pass = self.permutations(first // self.steps_per_pass), -1
        for step in range(first, first + len(self)):
            data_pass, j = divmod(step, self.steps_per_pass)
            if data_pass != perm_pass:
                perm, perm_pass = next(perms)[: self.used_blocks], data_pass
            index = perm[j * size : (j + 1) * size]
            if self.world == 1:
                yield {key: value[index] for key, value in self.blocks.items()}
                continue
            share = {key: value[index[self.rank :: self.world]] for key, value in self.blocks.items()}
            yield {**share, "step_tokens": count_predicted_tokens(self.blocks["labels"][index])}


def eval_batches(blocks: dict[str, Tensor], batch_size: int) -> list[dict[str, Tensor]]:
    """The held-out blocks in batches of ``batch_size``."""
    index = torch.arange(blocks["input_ids"].shape[0])
    return [{key: value[part] for key, value in blocks.items()} for part in index.split(batch_size)]


class CausalLMTask:
    """Causal-LM finetuning as a task of the plain loop (:mod:`losslab.runs.task`).

    Logs ``train/loss`` (the training objective, the token mean of each optimizer step); evaluation tallies
    (cross-entropy sum, training-objective sum, scored tokens) in float64, from which ``val/ce``, ``val/ppl`` =
    exp(val/ce) and ``val/objective`` follow exactly.
    """

    def __init__(self, model: nn.Module, cfg: FinetuneConfig, total_steps: int) -> None:
        self.model, self.cfg, self.total_steps = model, cfg, total_steps
        self.spec = cfg.loss_spec()
        self._items: float | None = None  # what the micro-batch losses of the current optimizer step are divided by
        self.world = 1  # torchrun processes (distribute)
        self.forward_model: nn.Module = model  # the training forward: DistributedDataParallel under torchrun
        self._step_loss: Tensor | None = None
        self._nonfinite: Tensor | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizer_and_schedule(self) -> tuple[torch.optim.Optimizer, WarmupLinearDecay]:
        """AdamW (β = 0.9, 0.999; no weight decay on biases and norms) and the warmup-linear-decay schedule."""
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if param.dim() < 2 or "norm" in name.lower() else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(0.9, 0.999), eps=1e-8)
        return optimizer, WarmupLinearDecay(optimizer, self.cfg.warmup_steps, self.total_steps)

    def attach(self) -> None:
        """No hooks."""

    def detach(self) -> None:
        """No hooks."""

    def start_epoch(self, epoch: int) -> None:
        """Reseed dropout for the interval ``epoch``: a resumed run draws the same masks."""
        torch.manual_seed((self.cfg.seed + (epoch + 1) * 0x9E3779B97F4A7C15) % 2**64)

    def prepare(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return batch

    def batch_size(self, batch: dict[str, Tensor]) -> int:
        return int(batch["input_ids"].shape[0])

    def distribute(self, wrap: Any) -> list[nn.Module]:
        """Under torchrun: the training forward goes through ``wrap(model)`` (DistributedDataParallel)."""
        from losslab.runs.device import rank_world

        self.forward_model, self.world = wrap(self.model), rank_world()[1]
        return [self.model]

    def micro_batches(self, batch: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """The ``batch_size``-block micro-batches of one optimizer step; notes the step's scored-token count N.
        Under torchrun N is the global step's (``step_tokens``) and the losses are divided by N / world: DDP's
        mean over ranks of Σ_rank / (N / world) is Σ / N, the single process's loss."""
        step_tokens = batch.pop("step_tokens", None)
        if step_tokens is None:
            self._items = max(1, count_predicted_tokens(batch["labels"]))
        else:
            self._items = max(1, int(step_tokens)) / self.world
        size = self.cfg.batch_size
        return [
            {k: v[start : start + size] for k, v in batch.items()} for start in range(0, self.batch_size(batch), size)
        ]

    def _logits(self, batch: dict[str, Tensor], model: nn.Module | None = None) -> Tensor:
        model = self.model if model is None else model
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits

    def training_loss(self, batch: dict[str, Tensor], epoch: int, log: LogFn) -> Tensor:
        """Σ token loss of the micro-batch ÷ scored tokens of the whole step (:meth:`micro_batches`)."""
        logits = self._logits(batch, self.forward_model)
        loss = causal_lm_loss(logits, batch["labels"], self.spec, num_items=self._items)
        self._step_loss = loss.detach() if self._step_loss is None else self._step_loss + loss.detach()
        return loss

    def gradient_terms(self, epoch: int, log: LogFn) -> None:
        """No gradient-side terms; logs the step's training loss (the sum over its micro-batches) once per step."""
        if self._step_loss is not None:
            bad = ~torch.isfinite(self._step_loss)
            self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
            log("train/loss", self._step_loss, prog_bar=True)
        self._step_loss, self._items = None, None

    def take_nonfinite(self) -> Tensor | None:
        bad, self._nonfinite = self._nonfinite, None
        return bad

    def eval_tally(self, batch: dict[str, Tensor], stage: str, log: LogFn) -> Tensor:
        """(CE sum, objective sum, scored tokens) of one batch, float64."""
        logits = self._logits(batch)
        targets = shift_labels(batch["labels"])
        ce = token_loss(logits, targets, _CE, reduction="sum")
        objective = ce if self.spec.kind == "ce" else token_loss(logits, targets, self.spec, reduction="sum")
        tokens = (targets != IGNORE_INDEX).sum()
        return torch.stack([ce.double(), objective.double(), tokens.double()])

    def tally_metrics(self, stage: str, tally: Tensor) -> dict[str, float]:
        ce_sum, objective_sum, tokens = tally.tolist()
        if tokens == 0:
            return {}
        return {f"{stage}/ce": ce_sum / tokens, f"{stage}/ppl": math.exp(ce_sum / tokens),
                f"{stage}/objective": objective_sum / tokens}  # fmt: skip

    def validation_statistics(self, lr: float) -> dict[str, float]:
        return {}


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`: held-out perplexity (exp CE) before and after, steps, where things are."""

    val_ppl_before: float
    val_ppl_after: float
    global_step: int
    resumed_from_step: int
    model_dir: str
    protocol: str
    config: dict[str, Any]


def run_spec(cfg: FinetuneConfig) -> Any:
    """The run folder of ``cfg``: ``out_dir/run_name``, or ``out_dir`` itself without a run name."""
    from losslab.runs import RunSpec

    out_dir, run_name = cfg.out_dir, cfg.run_name
    if run_name is None and out_dir is not None:
        out_dir, run_name = Path(out_dir).parent, Path(out_dir).name
    return RunSpec(out_dir=Path(out_dir or "."), run_name=run_name or "", resume=cfg.resume, overwrite=cfg.overwrite,
                   config=cfg.stored(), match_keys=MATCH_KEYS)  # fmt: skip


def _texts(cfg: FinetuneConfig, tokenizer: Any) -> tuple[Tensor, Tensor]:
    """Train and validation token streams for ``cfg``."""
    if cfg.text_file is None:
        return (
            tokenize_text(tokenizer, load_corpus(cfg.dataset, "train")),
            tokenize_text(tokenizer, load_corpus(cfg.dataset, "validation")),
        )
    ids = tokenize_text(tokenizer, load_corpus(str(cfg.text_file)))
    if cfg.val_file is not None:
        return ids, tokenize_text(tokenizer, load_corpus(str(cfg.val_file)))
    cut = int(ids.numel() * (1 - cfg.val_fraction))
    return ids[:cut], ids[cut:]


def total_steps(cfg: FinetuneConfig, n_blocks: int, world: int = 1) -> int:
    """Optimizer steps of the run: ``max_steps``, else ``epochs`` passes of ⌈blocks / (batch_size·grad_accum)⌉
    (under ``torchrun``: of ⌈(blocks − blocks mod world) / (batch_size·grad_accum·world)⌉); refuses a warmup that
    does not end before the last step."""
    used = n_blocks - n_blocks % world
    steps = cfg.max_steps or cfg.epochs * math.ceil(used / (cfg.batch_size * cfg.grad_accum * world))
    if cfg.warmup_steps >= steps and cfg.warmup_steps > 0:
        raise ConfigError(
            f"warmup_steps={cfg.warmup_steps} is not below the {steps} optimizer steps of this run; lower "
            "--warmup-steps or train longer"
        )
    return steps


def save_pretrained_atomic(model: nn.Module, tokenizer: Any, directory: str | os.PathLike[str]) -> Path:
    """``save_pretrained`` of model and tokenizer into a temporary sibling folder, then renamed into place."""
    target = Path(directory)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def finetune(cfg: FinetuneConfig, model: nn.Module | None = None, tokenizer: Any = None) -> FinetuneResult:
    """Run (or, with ``cfg.resume``, continue) the finetuning described by ``cfg`` in its run folder.

    ``model``/``tokenizer`` override ``cfg.model``. Everything that can be refused (the run folder, the device, the
    model, the data, the schedule) is checked before the folder is created. Writes ``checkpoints/last.ckpt`` every
    ``checkpoint_every`` steps, ``model/`` (save_pretrained) and ``result.json`` (see the module doc). Under
    ``torchrun`` every process trains on its share of each step (DDP, :class:`StepBatches`) and validates its share
    of the batches; rank 0 alone claims and writes the run folder and measures the perplexity before and after (the
    other ranks return NaN for them).
    """
    from losslab.runs import resolve_device
    from losslab.runs.device import torchrun_group

    with torchrun_group(resolve_device(cfg.accelerator, flag="--accelerator")) as device:
        return _finetune(cfg, model, tokenizer, device)


def _finetune(cfg: FinetuneConfig, model: nn.Module | None, tokenizer: Any, device: torch.device) -> FinetuneResult:
    """:func:`finetune` on ``device``, inside the torchrun process group when there is one."""
    from losslab.runs import claim, load
    from losslab.runs.device import check_world_size, rank_world

    started, (rank, world) = time.perf_counter(), rank_world()
    with claim(run_spec(cfg)) as run:
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model, cfg.pad_token)
        pad_id = require_pad_token(tokenizer, "finetuning (it pads the last block)")
        model = model if model is not None else load_causal_lm(cfg.model)
        check_seqlen(model, cfg.block_size)
        train_ids, val_ids = _texts(cfg, tokenizer)
        val_windows = eval_windows(val_ids, cfg.block_size, cfg.max_eval_windows)
        train = training_blocks(train_ids, cfg.block_size, pad_id)
        steps = total_steps(cfg, int(train["input_ids"].shape[0]), world)
        batches = StepBatches(train, cfg.batch_size * cfg.grad_accum, cfg.checkpoint_every, steps, cfg.seed,
                              rank=rank, world=world)  # fmt: skip
        val = eval_batches(training_blocks(val_windows.reshape(-1), cfg.block_size, pad_id), cfg.batch_size)
        val = val[rank::world]  # under torchrun every world-th batch, whole: the summed tallies are the split's
        resumed = 0
        if run.resume_ckpt is not None:
            state = load(run.resume_ckpt, mmap=True)
            check_world_size(state, world)  # the blocks of a step and the total steps depend on it
            resumed = int(state.get("global_step", 0))
        Precision(loop_precision(cfg), device)  # 16-mixed without a GPU: refused before the folder exists
        work = run.create()
        run.write_config()
        if cfg.precision == "bf16-true":
            model.to(torch.bfloat16)
        protocol = f"held-out token perplexity = exp(mean CE), {cfg.block_size}-token windows"
        writes = rank == 0  # the other ranks need no perplexity: they write nothing
        before = perplexity(model, val_windows, protocol=protocol, device=device).ppl if writes else math.nan
        task = CausalLMTask(model, cfg, steps)
        outcome = _train(cfg, task, batches, val, work, run.resume_ckpt, device, started, world)
        model = model.eval()
        after = perplexity(model, val_windows, protocol=protocol, device=device).ppl if writes else math.nan
        if outcome.writes_results:
            save_pretrained_atomic(model, tokenizer, work / "model")
        steps_done = outcome.rows[-1]["step"] if outcome.rows else resumed
        result = FinetuneResult(before, after, steps_done, resumed, str(run.final / "model"), protocol,
                                cfg.model_dump(mode="json"))  # fmt: skip
        run.write_result(asdict(result))
        run.commit()
    return result


def loop_precision(cfg: FinetuneConfig) -> str:
    """The loop's precision for ``cfg.precision`` (bf16-true: bf16 weights, no autocast)."""
    return "32" if cfg.precision in ("32-true", "bf16-true") else cfg.precision


def _train(cfg: FinetuneConfig, task: CausalLMTask, batches: StepBatches, val: list[dict[str, Tensor]], work: Path,
           resume_ckpt: Path | None, device: torch.device, started: float, world: int = 1) -> LoopOutcome:  # fmt: skip
    """The plain loop over ``task``: one epoch per checkpoint interval; validation every ``eval_every`` steps;
    only ``last.ckpt`` (the finetuned model is the last one); the checkpoint records the ``world`` size."""
    settings = LoopSettings(
        run_dir=work,
        epochs=batches.intervals,
        device=device,
        resume_ckpt=resume_ckpt,
        val_every=cfg.eval_every // cfg.checkpoint_every,
        precision=loop_precision(cfg),
        gradient_clip=cfg.gradient_clip,
        progress=cfg.progress,
        progress_summary={"train/loss": "loss", "val/ppl": "val_ppl"},
        score=None,
        hyper_parameters={"config": cfg.model_dump(mode="json"), "world_size": world},
        started=started,
        diverged_hint=DIVERGED_HINT,
    )
    return run_loop(task, SimpleNamespace(train=batches, val=val, test=None), settings)
