"""The plain engine of ``fit``: the classifier's task in the one loop (:mod:`losslab.runs.loop`).

``losslab.train.engine`` says when ``fit`` picks this engine. This module only turns ``fit``'s
:class:`~losslab.train.engine.RunParts` into the loop's three inputs: the :class:`ClassifierTask`, the loaders
(``train``/``val``/``test``, on the device when the device loader is used) and :class:`LoopSettings`; and adds
the classifier's own per-step work as loop hooks (the Frobenius-norm recorder and follower of the normalization
experiment, ``preregularized.ckpt``). Within a step the order is Lightning's (zero_grad before backward;
gradient-side terms after the AMP unscale, before clipping), so on CPU both engines train the same weights from the
same seed (Lightning steps the schedule before validating, this loop after; neither changes a weight). Checkpoints
hold the Lightning engine's keys plus ``losslab_engine: plain`` and the best score.
"""

from __future__ import annotations

from typing import Any

from losslab.layers.factor_norms import FrobNormFollower, FrobNormRecorder
from losslab.runs.loop import ENGINE_KEY, LoopOutcome, LoopSettings, PlainLoop, run_loop
from losslab.train.build import training_device
from losslab.train.engine import RunParts
from losslab.train.task import DIVERGED_HINT, ClassifierTask


class NormHooks:
    """The normalization experiment (factorized.md §8): record or follow ||U(M)V^T||_F after every step."""

    def __init__(self, parts: RunParts, total_epochs: int) -> None:
        cfg = parts.cfg
        self.model, self.batches, self.total_epochs = parts.model, len(parts.data.train), total_epochs
        self.recorder = FrobNormRecorder(cfg.record_frob_norms) if cfg.record_frob_norms is not None else None
        self.follower = FrobNormFollower(cfg.normalize) if cfg.normalize is not None else None

    def start(self, loop: PlainLoop) -> None:
        if self.recorder is not None:
            self.recorder.start(self.model, keep_epochs=loop.start)
        if self.follower is not None:
            self.follower.start(self.model, self.batches, self.total_epochs)

    def start_epoch(self, epoch: int) -> None:
        if self.follower is not None:
            self.follower.start_epoch()

    def after_step(self, epoch: int, batch_idx: int) -> None:
        for hook in (self.recorder, self.follower):
            if hook is not None:
                hook.after_step(epoch, batch_idx)

    def end_epoch(self, epoch: int) -> None:
        for hook in (self.recorder, self.follower):
            if hook is not None:
                hook.end_epoch()


class PreregularizedCheckpoint:
    """``checkpoints/preregularized.ckpt``: the weights of the epoch before the first regularized one."""

    def __init__(self, parts: RunParts) -> None:
        first = getattr(parts.schedule, "first_regularized_epoch", None)
        self.epoch = first - 1 if parts.cfg.save_preregularized and first else None

    def after_checkpoints(self, loop: PlainLoop, epoch: int) -> None:
        if epoch == self.epoch:
            loop.save(loop.ckpt_dir / "preregularized.ckpt", epoch)


def plain_view(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint as the loop resumes it: a Lightning engine's gets ``best_score`` from its ModelCheckpoint's
    state (both engines write the other keys the loop reads), so a run resumes in either engine."""
    if checkpoint.get(ENGINE_KEY) == "plain" or "best_score" in checkpoint:
        return checkpoint
    scores = [
        state.get("best_model_score")
        for key, state in checkpoint.get("callbacks", {}).items()
        if key.startswith(("RunCheckpoint", "ModelCheckpoint")) and isinstance(state, dict)
    ]
    found = [float(score) for score in scores if score is not None]
    return {**checkpoint, "best_score": found[0] if found else None}


def classifier_task(parts: RunParts) -> ClassifierTask:
    """The classifier's task for ``parts`` (mixup, channels-last inputs; DDP wraps the model only)."""
    task = ClassifierTask(parts.cfg, parts.model, parts.objective, schedule=parts.schedule, always_on=parts.always_on)
    task.mixup, task.channels_last = parts.mixup, parts.speed["channels_last"]
    return task


def classifier_settings(parts: RunParts) -> LoopSettings:
    """The loop settings of a classifier run: best.ckpt by val/acc, the config in every checkpoint."""
    cfg = parts.cfg
    return LoopSettings(
        run_dir=parts.run_dir,
        epochs=cfg.epochs + cfg.cooldown_epochs,
        device=training_device(cfg),
        resume_ckpt=parts.resume_ckpt,
        val_every=cfg.val_every,
        precision=cfg.precision,
        gradient_clip=cfg.gradient_clip,
        ema_decay=cfg.model_ema_decay if cfg.model_ema else None,
        ema_warmup=cfg.model_ema_warmup,
        progress=cfg.progress,
        score="val/acc",
        hyper_parameters={"config": cfg.to_dict()},
        started=parts.started,
        diverged_hint=DIVERGED_HINT,
        resume_view=plain_view,
    )


def run_plain(parts: RunParts) -> LoopOutcome:
    """Train ``parts`` in this process on one device, then test the best checkpoint (see the module doc)."""
    settings = classifier_settings(parts)
    for loader in parts.data.device_loaders():
        loader.to(settings.device)
    hooks: list[Any] = [NormHooks(parts, settings.epochs), PreregularizedCheckpoint(parts)]
    return run_loop(classifier_task(parts), parts.data, settings, hooks)
