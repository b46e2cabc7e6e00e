"""Which engine trains a run, and what every engine is given and returns.

``fit`` builds the run's pieces once (:class:`RunParts`: loaders, model, objective, regularizers, speed settings,
the claimed run folder) and hands them to one of two engines, which both return an :class:`EngineOutcome`:

- ``plain`` (``losslab.train.engine_plain``): the one loop (``losslab.runs.loop``) in this process on one device
  (CPU, one GPU or MPS). It never imports Lightning, so a run reaches its first step a few seconds sooner, and its
  step is the bare loop's plus the logging sums.
- ``lightning`` (``losslab.train.engine_lightning``): Lightning's Trainer, for what needs it: several devices or
  nodes, an explicit strategy, the tensorboard/mlflow/wandb loggers and user-supplied Lightning callbacks.

``engine=auto`` (the default) picks ``plain`` unless the run needs Lightning, and says why; a resumed run keeps
the engine that wrote its checkpoint. Both write the same run folder and checkpoint layout (``state_dict`` with
``model.`` keys and ``hyper_parameters["config"]``), so ``evaluate``, ``quantize`` and studies read either.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from losslab.errors import ConfigError
from losslab.runs.device import join_torchrun, mps_available, torchrun_world
from losslab.runs.loop import ENGINE_KEY, LoopOutcome
from losslab.train.build import LoaderSet, training_device
from losslab.train.config import TrainConfig


@dataclass
class RunParts:
    """Everything an engine needs for one run, built once by ``fit``."""

    cfg: TrainConfig
    run_dir: Path  # the folder being written (the staging folder under --overwrite)
    resume_ckpt: Path | None
    data: LoaderSet
    model: nn.Module
    objective: nn.Module
    schedule: Any | None  # losslab.regularizers.Schedule
    always_on: list[Any]
    mixup: Any | None  # timm Mixup
    speed: dict[str, Any]
    started: float  # time.perf_counter() when fit started


#: What an engine reports back (the loop's outcome; the Lightning engine fills the same fields).
EngineOutcome = LoopOutcome


def parse_devices(devices: str) -> int | str | list[int]:
    """Lightning's ``devices`` from a string: ``auto``, ``4`` or ``0,1``."""
    if devices == "auto":
        return devices
    if "," in devices:
        return [int(d) for d in devices.split(",") if d]
    return int(devices) if devices.lstrip("-").isdigit() else devices


def check_hardware(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` for an accelerator or devices value this machine cannot run, before work."""
    accelerator = cfg.accelerator.lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"accelerator={cfg.accelerator!r} needs a CUDA GPU, but torch.cuda.is_available() is False on this "
            f"machine (torch {torch.__version__}, CUDA build {torch.version.cuda}); use --accelerator cpu or auto"
        )
    try:
        devices = parse_devices(cfg.devices)
    except ValueError:
        raise ConfigError(
            f"devices={cfg.devices!r} is not allowed: use auto, a count (2, -1 = all) or a list of indices (0,1)"
        ) from None
    if isinstance(devices, str) and devices != "auto":
        raise ConfigError(f"devices={cfg.devices!r} is not allowed: use auto, a count (2, -1 = all) or indices (0,1)")
    if cfg.num_nodes < 1:
        raise ConfigError(f"num_nodes={cfg.num_nodes!r} must be >= 1")


#: The accelerators the plain engine knows; any other name goes to Lightning, which runs or refuses it.
PLAIN_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def uses_cuda(cfg: TrainConfig) -> bool:
    return training_device(cfg).type == "cuda"


def device_count(cfg: TrainConfig) -> int:
    """How many devices of this node the run asks for (``auto`` = every GPU on a GPU run, else 1)."""
    devices = parse_devices(cfg.devices)
    if isinstance(devices, list):
        return len(devices)
    if devices == "auto" and torchrun_world() > 1:  # torchrun started one process per device: this one uses one
        return 1
    if devices == "auto" or (devices == -1 and uses_cuda(cfg)):
        return torch.cuda.device_count() if uses_cuda(cfg) else 1
    return int(devices)


def device_problem(cfg: TrainConfig) -> str | None:
    """Why the plain engine cannot place ``cfg`` on exactly one device it knows (None: it can)."""
    accelerator = cfg.accelerator.lower()
    if accelerator not in PLAIN_ACCELERATORS:
        return f"accelerator={cfg.accelerator!r}"
    if accelerator == "mps" and not mps_available():
        return "accelerator='mps' (not available on this machine)"
    count = device_count(cfg)
    if count > 1:
        return f"devices={cfg.devices!r} means {count} devices (DDP)"
    if count != 1:
        return f"devices={cfg.devices!r} is not one device"
    devices = parse_devices(cfg.devices)
    if isinstance(devices, list):
        if not uses_cuda(cfg):
            return f"devices={cfg.devices!r} lists GPU indices, and this run has no CUDA GPU"
        if not 0 <= devices[0] < torch.cuda.device_count():
            return f"devices={cfg.devices!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def precision_problem(cfg: TrainConfig) -> str | None:
    """Why the plain engine cannot train ``cfg.precision`` on the run's device (None: it can)."""
    device = training_device(cfg)
    if cfg.precision == "16-mixed" and device.type not in ("cuda", "mps"):
        return (
            f"precision='16-mixed' needs a GPU (this run trains on {device}); use --precision bf16-mixed or 32 "
            "(the Lightning engine would switch to bf16-mixed with a warning)"
        )
    return None


def lightning_needs(cfg: TrainConfig, callbacks: list[Any] | None) -> list[str]:
    """Why ``cfg`` needs the Lightning engine (empty: the plain engine can run it). Hardware options the plain
    engine does not know go to Lightning too, whose own checks then run them or refuse them before any work."""
    reasons = []
    if callbacks:
        reasons.append("Lightning callbacks were passed to fit()")
    if cfg.num_nodes > 1:
        reasons.append(f"num_nodes={cfg.num_nodes}")
    placement = device_problem(cfg)
    if placement is not None:
        reasons.append(placement)
    if cfg.strategy != "auto":
        reasons.append(f"strategy={cfg.strategy!r}")
    if cfg.logger != "csv":
        reasons.append(f"logger={cfg.logger!r}")
    return reasons


def checkpoint_engine(path: Path) -> str:
    """``plain`` or ``lightning``: which engine wrote the checkpoint ``path``."""
    from losslab.serialization import load_torch_file

    ckpt = load_torch_file(path, what="checkpoint", mmap=True)
    return "plain" if isinstance(ckpt, dict) and ckpt.get(ENGINE_KEY) == "plain" else "lightning"


def choose_engine(cfg: TrainConfig, callbacks: list[Any] | None, resume_ckpt: Path | None) -> tuple[str, str]:
    """(``plain`` | ``lightning``, reason) for ``cfg``; a ConfigError names the conflict when the asked-for engine
    cannot run the config or resume its checkpoint."""
    needs = lightning_needs(cfg, callbacks)
    wrote = checkpoint_engine(resume_ckpt) if resume_ckpt is not None else None
    if cfg.engine == "plain" and needs:
        raise ConfigError(
            f"engine='plain' trains one process on one device and cannot run this config: {'; '.join(needs)}. "
            "Use --engine lightning (or auto)"
        )
    if wrote == "plain" and needs:
        raise ConfigError(
            f"--resume: {str(resume_ckpt)!r} was written by the plain engine, which cannot run this config "
            f"({'; '.join(needs)}); resume it on one device (--devices 1) with "
            "--strategy auto and --logger csv"
        )
    if wrote is not None and cfg.engine == "auto":
        return wrote, f"resuming a checkpoint the {wrote} engine wrote"
    if wrote is not None:
        return cfg.engine, f"asked for with --engine {cfg.engine}; the checkpoint was written by the {wrote} engine"
    if cfg.engine == "lightning":
        return "lightning", "asked for with --engine lightning"
    if needs:
        return "lightning", "; ".join(needs)
    return "plain", "asked for with --engine plain" if cfg.engine == "plain" else "one process on one device"


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every device), as ``lightning.seed_everything`` does."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_plain_distributed(cfg: TrainConfig) -> bool:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1), join the process group for the plain engine: NCCL with one GPU per
    process (``cuda:LOCAL_RANK``), else gloo (CPU). True when this call started it (the caller ends it)."""
    return join_torchrun(training_device(cfg))
