"""``fit(config) -> RunResult``: train a classifier, select the best checkpoint on validation, test it.

The same call backs ``losslab train`` and every study job::

    from losslab.train import TrainConfig, fit
    result = fit(TrainConfig(dataset="digits", loss="root", epochs=5))
    print(result.test_acc, result.run_dir)

One of two engines trains the run (``losslab.train.engine``): ``plain``, a PyTorch loop in this process on one
device that never imports Lightning (the default whenever it can run the config), or ``lightning`` (several
devices or nodes, strategies, experiment trackers and user callbacks). A run folder ``out_dir/run_name``
receives from either: ``config.yaml`` (the resolved config), ``metrics.csv`` (epoch metrics), ``history.json``
(one row per epoch), ``checkpoints/last.ckpt`` and ``checkpoints/best.ckpt`` (best validation accuracy; the test
set is never used for selection), ``checkpoints/preregularized.ckpt`` when asked, and ``result.json`` with the
test metrics of the best checkpoint (checkpoint paths relative to the run folder), the engine and the input
pipeline used and why (``engine``, ``loader``), training throughput (``train_images_per_s``, validation
excluded), the time from ``fit`` to the first training step, the torch thread choice and the speed settings
(TF32, channels-last, compile). Every file, checkpoints included, is written atomically. A run killed at any point
resumes from ``last.ckpt`` with ``resume=<run folder>``, keeping its metrics history; a finished run folder is
never resumed, and is replaced only with ``overwrite=True`` once the new run has finished (see
:mod:`losslab.runs.folder`). A loss that turns NaN/inf stops the run (``TrainingDivergedError``) before that
epoch's checkpoint is written.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from losslab.errors import ConfigError, LosslabError
from losslab.runs.folder import RunFolder, is_child_rank
from losslab.train.build import build_model, build_objective, build_regularization, make_loaders
from losslab.train.config import TrainConfig
from losslab.train.engine import (
    RunParts,
    check_hardware,
    choose_engine,
    precision_problem,
    seed_all,
    start_plain_distributed,
)
from losslab.train.recipe import build_mixup
from losslab.train.run_folder import claim_run_folder, resolve_resume

__all__ = ["RunResult", "evaluate_model", "fit", "resolve_resume"]


@dataclass
class RunResult:
    """What a finished training run produced (all accuracies in percent)."""

    run_dir: Path
    config: TrainConfig
    test_acc: float
    test_ce: float
    test_top5: float
    best_val_acc: float
    best_ckpt: Path
    last_ckpt: Path
    num_params: int
    num_params_dense: int
    wall_time_s: float
    epochs: list[dict[str, Any]] = field(default_factory=list)
    speed: dict[str, Any] = field(default_factory=dict)

    @property
    def compression_ratio(self) -> float:
        """Parameters of the trained model over those of its dense counterpart (1.0 when not factorized)."""
        return self.num_params / self.num_params_dense

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (the content of ``result.json``; checkpoint paths relative to the run folder)."""
        return {
            "run_dir": str(self.run_dir),
            "test_acc": self.test_acc,
            "test_ce": self.test_ce,
            "test_top5": self.test_top5,
            "best_val_acc": self.best_val_acc,
            "best_ckpt": _relative(self.best_ckpt, self.run_dir),
            "last_ckpt": _relative(self.last_ckpt, self.run_dir),
            "num_params": self.num_params,
            "num_params_dense": self.num_params_dense,
            "compression_ratio": self.compression_ratio,
            "wall_time_s": self.wall_time_s,
            **self.speed,
            "protocol": "top-1 accuracy (%) on the test split of the checkpoint with the best validation accuracy",
            "config": self.config.to_dict(),
        }


def _relative(path: Path, run_dir: Path) -> str:
    """``path`` relative to ``run_dir`` (POSIX separators), so a run folder can be moved or copied whole."""
    try:
        return Path(path).resolve().relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return str(path)


DOUBLE_BACKWARD = frozenset({"lp_grad", "l1grad", "l2grad"})


def speed_settings(cfg: TrainConfig, model: nn.Module, regularizers: list[Any]) -> dict[str, Any]:
    """Apply TF32, channels-last and torch.compile to ``model`` as ``cfg`` asks (checked first); what was applied.

    TF32 is allowed on CUDA unless ``tf32=False``; channels-last defaults to on for conv nets on CUDA; compile
    refuses regularizers that need double backward (torch.compile cannot differentiate its graph twice).
    """
    from losslab.train.build import training_device

    cuda = training_device(cfg).type == "cuda"
    if cfg.compile:
        needs = sorted({r.name for r in regularizers if getattr(r, "name", "") in DOUBLE_BACKWARD})
        if needs:
            raise ConfigError(
                f"compile (--compile) cannot train with {', '.join(needs)}: the regularizer differentiates the "
                "gradient (double backward), which torch.compile does not support; drop --compile for this run "
                "(eager mode with the closed-form double backwards is the fast path there)"
            )
        import torch._dynamo

        if not hasattr(torch, "compile") or not torch._dynamo.is_dynamo_supported():
            raise ConfigError(
                f"compile (--compile): torch.compile is not available with torch {torch.__version__} on this "
                "Python/platform; drop --compile"
            )
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    is_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    channels_last = (cuda and is_conv) if cfg.channels_last is None else cfg.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        if not cuda:  # inductor's C++ backend imports cpp_extension, which warns "No CUDA runtime is found" on CPU
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        model.compile(mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    return {"tf32": bool(cuda and cfg.tf32), "channels_last": bool(channels_last), "compiled": cfg.compile}


def say(message: str) -> None:
    """One line on stderr from rank zero (the engine and input pipeline choices, throughput)."""
    if not is_child_rank():
        print(f"losslab: {message}", file=sys.stderr, flush=True)


LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}


def check_logger_available(name: str) -> None:
    """Fail before training if the experiment tracker's package is missing, saying how to install it."""
    import importlib.util

    packages = LOGGER_PACKAGES.get(name, ())
    if packages and not any(importlib.util.find_spec(p) for p in packages):
        raise ConfigError(
            f"logger={name!r} needs the {packages[0]!r} package, which is not installed; "
            "pip install 'losslab[loggers]' (or the package alone), or use --logger csv"
        )


def fit(cfg: TrainConfig, callbacks: list[Any] | None = None) -> RunResult:
    """Train, select the best checkpoint on validation accuracy, evaluate it on the test split.

    Everything that can be wrong with the config (unknown names, unreachable compression targets, missing data,
    hardware options, the run folder) is checked before the first training step; the run folder is locked
    while the run lasts (see :mod:`losslab.runs.folder`). ``callbacks`` are Lightning callbacks (they make
    the run use the Lightning engine; see :mod:`losslab.train.engine`).
    """
    from losslab.threads import configure_threads

    configure_threads(cfg.threads)
    check_logger_available(cfg.logger)
    check_hardware(cfg)
    resume_ckpt = resolve_resume(cfg.resume)[1] if cfg.resume is not None else None
    engine, why = choose_engine(cfg, callbacks, resume_ckpt)
    if engine == "lightning":
        from losslab.train.engine_lightning import check_lightning_options, quiet_lightning

        quiet_lightning()
        check_lightning_options(cfg)
    elif (problem := precision_problem(cfg)) is not None:
        raise ConfigError(problem)
    started_dist = engine == "plain" and start_plain_distributed(cfg)  # torchrun: one process per device
    try:
        with claim_run_folder(cfg) as run:
            result = _fit_in(cfg, run, engine, why, callbacks)
            run.commit()
    finally:
        if started_dist:
            import torch.distributed as dist

            dist.destroy_process_group()
    return result


def _fit_in(cfg: TrainConfig, run: RunFolder, engine: str, why: str, callbacks: list[Any] | None) -> RunResult:
    """``fit`` inside a claimed run folder: build, train into ``run.work`` with ``engine``, test, write result.json."""
    from losslab.threads import thread_report

    started = time.perf_counter()
    seed_all(cfg.seed)
    data = make_loaders(cfg)
    model, num_dense = build_model(cfg, data.spec)
    objective = build_objective(cfg)
    schedule, always_on = build_regularization(cfg, model)
    speed = speed_settings(cfg, model, [*always_on, *(schedule.regularizers() if schedule is not None else [])])
    say(f"engine: {engine} ({why}); input pipeline: {data.kind} ({data.reason})")
    run_dir = run.create()
    if not is_child_rank():  # rank 0 writes the run folder
        run.write_config()
    parts = RunParts(
        cfg=cfg,
        run_dir=run_dir,
        resume_ckpt=run.resume_ckpt,
        data=data,
        model=model,
        objective=objective,
        schedule=schedule,
        always_on=always_on,
        mixup=build_mixup(cfg, data.spec.num_classes),
        speed=speed,
        started=started,
    )
    if engine == "plain":
        from losslab.train.engine_plain import run_plain

        outcome = run_plain(parts)
    else:
        from losslab.train.engine_lightning import run_lightning

        outcome = run_lightning(parts, callbacks)
    final = run.final
    result = RunResult(
        run_dir=final,
        config=cfg,
        test_acc=float(outcome.tested["test/acc"]),
        test_ce=float(outcome.tested["test/ce"]),
        test_top5=float(outcome.tested["test/top5"]),
        best_val_acc=outcome.best_val_acc,
        best_ckpt=final / _relative(outcome.best_path, run_dir),
        last_ckpt=final / "checkpoints" / "last.ckpt",
        num_params=sum(p.numel() for p in model.parameters()),
        num_params_dense=num_dense,
        wall_time_s=time.perf_counter() - started,
        epochs=outcome.rows,
        speed={
            "engine": engine,
            "engine_reason": why,
            "loader": data.kind,
            "loader_reason": data.reason,
            "train_images_per_s": outcome.images_per_s,
            "first_step_s": outcome.first_step_s,
            "first_step_unix": outcome.first_step_unix,
            **speed,
            "threads": thread_report(),
        },
    )
    say(f"training throughput {outcome.images_per_s:,.0f} images/s ({engine} engine, {data.kind} pipeline)")
    if outcome.writes_results:  # other DDP ranks must not write into a folder rank 0 may already have swapped
        run.write_result(result.to_dict())
    return result


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: DataLoader, device: str | torch.device | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross entropy of ``model`` over ``loader`` (eval mode, no grad)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct1 = correct5 = nonfinite = 0
    ce_sum = 0.0
    n = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        nonfinite += int((~torch.isfinite(logits)).any(dim=-1).sum())
        ce_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y.unsqueeze(-1)).any(dim=-1).sum())
        n += y.numel()
    model.train(was_training)
    if n == 0:
        raise ConfigError("evaluation loader is empty; check the dataset split and batch size")
    if nonfinite:
        raise LosslabError(
            f"the model's logits are NaN/Inf on {nonfinite} of {n} images: an accuracy of it would mean nothing. "
            "Its weights are damaged or diverged (or a compression produced non-finite values); use another "
            "checkpoint or setting"
        )
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "ce": ce_sum / n, "n": n}
