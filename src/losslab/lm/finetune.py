"""Finetune a Hugging Face causal LM with the rooted (or cross-entropy) token loss, with Lightning.

Why Lightning rather than the HF ``Trainer``: the rest of losslab trains with Lightning, and it gives
checkpoint + resume, the progress bar, bf16/fp16 autocast and DDP without another framework. One optimizer step
consumes one loader batch of ``batch_size × grad_accum`` blocks, split into ``grad_accum`` micro-batches; each
micro-batch loss is divided by the valid-token count of the **whole** accumulated batch (HF's
``num_items_in_batch``), so accumulation equals one big batch exactly (llm.md §1)::

    cfg = FinetuneConfig(model="facebook/opt-125m", output_dir="runs/opt125m-rlo", loss="root", k=5, m=5)
    result = finetune(cfg)                   # a new run folder (losslab.runs); resume=... continues a killed one
    result.val_ppl_before, result.val_ppl_after    # exp(token CE) on held-out windows, whatever the loss

Reported perplexity is always exp(token cross entropy); the training loss is logged separately. The run folder is
the shared one (:mod:`losslab.runs`): ``config.yaml``, ``history.json``/``metrics.csv`` (one row per checkpoint
interval, written before that checkpoint), ``checkpoints/last.ckpt`` (written atomically, read through the safe
loader), ``model/`` (save_pretrained) and ``result.json``; a confined run name, a lock, a marker, and
``overwrite`` replacing only a run losslab made, once the new one has finished.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from losslab.errors import ConfigError, TrainingDivergedError, check_range, unknown_name_error
from losslab.lm.data import eval_windows, load_corpus, require_pad_token, tokenize_text, training_blocks
from losslab.lm.models import check_seqlen, load_causal_lm, load_tokenizer
from losslab.lm.perplexity import perplexity
from losslab.objectives.token import TokenLossSpec, causal_lm_loss, count_predicted_tokens

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true")  # Lightning's values
MAX_GRAD_CLIP = 1e6  # also rejects inf (and NaN fails every comparison)
MAX_BATCH = 65_536
_CE = TokenLossSpec(kind="ce")


@dataclass
class FinetuneConfig:
    """Everything one finetuning run needs (defaults: the RLO reference recipe, llm.md §4, on raw text).

    ``text_file`` (local, offline) overrides ``dataset``; without ``val_file`` its last ``val_fraction`` of
    tokens is held out. ``max_steps`` (optimizer steps) overrides ``epochs`` when set.
    """

    model: str
    output_dir: str | None = None
    dataset: str = "wikitext2"
    text_file: str | None = None
    val_file: str | None = None
    val_fraction: float = 0.1
    block_size: int = 256
    loss: str = "root"
    k: float = 5.0
    m: float = 5.0
    lr: float = 1e-5
    weight_decay: float = 0.01
    warmup_steps: int = 500
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 2
    grad_clip: float = 1.0
    precision: str = "32-true"
    devices: str = "auto"
    accelerator: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 42
    eval_every: int = 500
    checkpoint_every: int = 500
    max_eval_windows: int | None = None
    pad_token: str | None = None
    resume: str | None = None
    run_name: str | None = None
    overwrite: bool = False
    progress: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.loss_spec()  # validates loss, k, m
        if self.output_dir is None and self.resume is None:
            raise ConfigError("give --out-dir (the run folder) or --resume RUN (a killed run to continue)")
        if self.precision not in PRECISIONS:
            raise unknown_name_error("precision", self.precision, PRECISIONS)
        for key in ("block_size", "batch_size", "grad_accum", "epochs", "eval_every", "checkpoint_every", "num_nodes"):
            check_range(key, getattr(self, key), low=1)
        for key in ("batch_size", "grad_accum"):  # blocks held at once: a typo here would exhaust memory
            check_range(key, getattr(self, key), high=MAX_BATCH)
        check_range("epochs", self.epochs, high=100_000)
        check_range("lr", self.lr, low=0.0, high=10.0, low_inclusive=False)
        check_range("weight_decay", self.weight_decay, low=0.0, high=1.0)
        check_range("grad_clip", self.grad_clip, low=0.0, high=MAX_GRAD_CLIP, low_inclusive=False)
        check_range("warmup_steps", self.warmup_steps, low=0)
        check_range("val_fraction", self.val_fraction, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        check_range("seed", self.seed, low=0, high=2**32 - 1)
        for key in ("max_steps", "max_eval_windows"):
            if getattr(self, key) is not None:
                check_range(key, getattr(self, key), low=1)

    def loss_spec(self) -> TokenLossSpec:
        """The training loss (``ce``, ``root`` or ``root_convex`` with k, m)."""
        return TokenLossSpec(kind=self.loss, k=self.k, m=self.m)


class _Blocks(Dataset):
    """Rows of the dict produced by :func:`training_blocks`."""

    def __init__(self, blocks: dict[str, Tensor]) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.blocks.items()}


def warmup_linear_decay(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warmup from 0 over ``warmup`` steps, then linear decay to 0 at ``total`` (HF's)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


class CausalLMFinetune(pl.LightningModule):
    """LightningModule around an HF causal LM: manual optimization with exact token-count accumulation.

    Logs ``train_loss`` (the training objective), ``val_ce`` and ``val_ppl`` = exp(val_ce) (always cross
    entropy) and ``val_objective`` (the training loss on validation blocks).
    """

    def __init__(self, model: nn.Module, cfg: FinetuneConfig, total_steps: int) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.spec = cfg.loss_spec()
        self.total_steps = total_steps
        self.automatic_optimization = False
        self._val: list[Tensor] = []

    def _logits(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits

    def on_train_start(self) -> None:
        # HF ``from_pretrained`` returns the model in eval mode and Lightning keeps each submodule's mode, so
        # without this dropout would be off for the whole run (the reference Trainer trains in train mode).
        self.model.train()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        opt = self.optimizers()
        n_items = max(1, count_predicted_tokens(batch["labels"]))
        total = torch.zeros((), device=self.device)
        for start in range(0, batch["input_ids"].shape[0], self.cfg.batch_size):
            micro = {k: v[start : start + self.cfg.batch_size] for k, v in batch.items()}
            loss = causal_lm_loss(self._logits(micro), micro["labels"], self.spec, num_items=n_items)
            self.manual_backward(loss)
            total += loss.detach()
        if not bool(torch.isfinite(total)):  # one sync per optimizer step; the update is never applied
            raise TrainingDivergedError(
                f"training diverged: the loss became NaN or infinite at step {self.global_step + 1}; the last "
                "checkpoint (checkpoints/last.ckpt, if any) is kept. Lower --lr, --gradient-clip or --k"
            )
        self.clip_gradients(opt, gradient_clip_val=self.cfg.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.lr_schedulers().step()
        self.log("train_loss", total, prog_bar=True)
        return total

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self._logits(batch)
        n = count_predicted_tokens(batch["labels"])
        ce = causal_lm_loss(logits, batch["labels"], _CE) * n
        objective = causal_lm_loss(logits, batch["labels"], self.spec) * n
        self._val.append(torch.stack([ce.detach(), objective.detach(), torch.tensor(float(n), device=ce.device)]))

    def on_validation_epoch_end(self) -> None:
        ce_sum, obj_sum, count = torch.stack(self._val).sum(0)
        self._val.clear()
        val_ce = ce_sum / count.clamp(min=1)
        self.log("val_ce", val_ce, sync_dist=True)
        self.log("val_ppl", torch.exp(val_ce), prog_bar=True, sync_dist=True)
        self.log("val_objective", obj_sum / count.clamp(min=1), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.dim() < 2 or "norm" in name.lower() else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(0.9, 0.999), eps=1e-8)
        warmup, total = self.cfg.warmup_steps, self.total_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_linear_decay(s, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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


#: Config keys a ``--resume`` must keep (the checkpoint holds this model's weights).
MATCH_KEYS = ("model", "pad_token")
#: Keys of :class:`FinetuneConfig` that say where and how the run runs, not what it trains (not in config.yaml).
RUN_KEYS = ("output_dir", "run_name", "resume", "overwrite", "progress", "extra")


def run_spec(cfg: FinetuneConfig) -> Any:
    """The run folder of ``cfg``: ``output_dir/run_name``, or ``output_dir`` itself without a run name."""
    from losslab.runs import RunSpec

    out_dir, run_name = cfg.output_dir, cfg.run_name
    if run_name is None and out_dir is not None:
        out_dir, run_name = str(Path(out_dir).parent), Path(out_dir).name
    config = {k: v for k, v in asdict(cfg).items() if k not in RUN_KEYS}
    resume = Path(cfg.resume) if cfg.resume is not None else None
    return RunSpec(out_dir=Path(out_dir or "."), run_name=run_name or "", resume=resume, overwrite=cfg.overwrite,
                   config=config, match_keys=MATCH_KEYS)  # fmt: skip


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoints through the run's contract: written atomically, read through the safe loader."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        from losslab.runs import save

        save(path, checkpoint)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        from losslab.runs import load

        return load(path, map_location=map_location if map_location is not None else "cpu")


class _RunRecord(pl.Callback):
    """One history row per checkpoint interval (``epoch`` = its 0-based index), appended before the checkpoint of
    the same step (Lightning runs checkpoint callbacks last), and, in ``lines`` mode, one line on stderr."""

    def __init__(self, history: Any, every: int, total: int, mode: str) -> None:
        self.history, self.every, self.total, self.mode = history, every, total, mode
        self.losses: list[float] = []
        self.val: dict[str, float] = {}
        self.start_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step = trainer.global_step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics  # validation runs after the step's row: the next row carries it
        self.val = {f"val/{k[4:]}": float(metrics[k]) for k in ("val_ce", "val_ppl") if k in metrics}
        self.val["val/at_step"] = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))
        step = trainer.global_step
        if step % self.every:
            return
        row = {"epoch": step // self.every - 1, "step": step, "train/loss": sum(self.losses) / len(self.losses),
               **self.val}  # fmt: skip
        self.losses.clear()
        self.history.append(row)
        if self.mode == "lines":
            shown = " ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in row.items() if k in ("train/loss", "val/ppl"))
            print(f"step {step}/{self.total}: {shown}", file=sys.stderr, flush=True)


def _texts(cfg: FinetuneConfig, tokenizer: Any) -> tuple[Tensor, Tensor]:
    """Train and validation token streams for ``cfg``."""
    if cfg.text_file is None:
        return (
            tokenize_text(tokenizer, load_corpus(cfg.dataset, "train")),
            tokenize_text(tokenizer, load_corpus(cfg.dataset, "validation")),
        )
    ids = tokenize_text(tokenizer, load_corpus(cfg.text_file))
    if cfg.val_file is not None:
        return ids, tokenize_text(tokenizer, load_corpus(cfg.val_file))
    cut = int(ids.numel() * (1 - cfg.val_fraction))
    return ids[:cut], ids[cut:]


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

    ``model``/``tokenizer`` override ``cfg.model``. Everything that can be refused (the run folder, the model, the
    data, the schedule) is checked before the folder is created. Writes ``checkpoints/last.ckpt`` every
    ``checkpoint_every`` steps, ``model/`` (save_pretrained) and ``result.json`` (see the module doc).
    """
    from losslab.runs import History, claim, load, progress_mode

    with claim(run_spec(cfg)) as run:
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model, cfg.pad_token)
        pad_id = require_pad_token(tokenizer, "finetuning (it pads the last block)")
        model = model if model is not None else load_causal_lm(cfg.model)
        check_seqlen(model, cfg.block_size)
        train_ids, val_ids = _texts(cfg, tokenizer)
        val_windows = eval_windows(val_ids, cfg.block_size, cfg.max_eval_windows)
        train = _Blocks(training_blocks(train_ids, cfg.block_size, pad_id))
        val = _Blocks(training_blocks(val_windows.reshape(-1), cfg.block_size, pad_id))
        step_batch = cfg.batch_size * cfg.grad_accum
        steps_per_epoch = math.ceil(len(train) / step_batch)
        total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
        if cfg.warmup_steps >= total_steps and cfg.warmup_steps > 0:
            raise ConfigError(
                f"warmup_steps={cfg.warmup_steps} is not below the {total_steps} optimizer steps of this run; lower "
                "--warmup-steps or train longer"
            )
        resumed = 0
        if run.resume_ckpt is not None:
            resumed = int(load(run.resume_ckpt, mmap=True).get("global_step", 0))
        work = run.create()
        run.write_config()
        mode = progress_mode(cfg.progress)
        record = _RunRecord(History(work, keep_before=resumed // cfg.checkpoint_every), cfg.checkpoint_every,
                            total_steps, mode)  # fmt: skip
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        protocol = f"held-out token perplexity = exp(mean CE), {cfg.block_size}-token windows"
        before = perplexity(model, val_windows, protocol=protocol).ppl
        module = CausalLMFinetune(model, cfg, total_steps)
        module.train()  # dropout on while training (perplexity() above left the model in eval mode)
        generator = torch.Generator().manual_seed(cfg.seed)
        train_loader = DataLoader(train, batch_size=step_batch, shuffle=True, generator=generator)
        val_loader = DataLoader(val, batch_size=cfg.batch_size)
        checkpoints = ModelCheckpoint(
            dirpath=run.last_ckpt.parent, save_last=True, save_top_k=0, every_n_train_steps=cfg.checkpoint_every
        )
        trainer = pl.Trainer(
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy=cfg.strategy,
            precision=cfg.precision,
            max_steps=total_steps,
            max_epochs=-1 if cfg.max_steps is not None else cfg.epochs,
            val_check_interval=min(cfg.eval_every, steps_per_epoch),
            num_sanity_val_steps=0,
            callbacks=[record, checkpoints],
            plugins=[_AtomicCheckpointIO()],
            logger=False,
            enable_progress_bar=mode == "bar",
            enable_model_summary=False,
            default_root_dir=work,
        )
        resume = str(run.resume_ckpt) if run.resume_ckpt is not None else None
        trainer.fit(module, train_loader, val_loader, ckpt_path=resume, weights_only=True)
        model = module.model.eval()
        after = perplexity(model, val_windows, protocol=protocol).ppl
        save_pretrained_atomic(model, tokenizer, work / "model")
        result = FinetuneResult(before, after, trainer.global_step, resumed, str(run.final / "model"), protocol,
                                asdict(cfg))  # fmt: skip
        run.write_result(asdict(result))
        run.commit()
    return result
