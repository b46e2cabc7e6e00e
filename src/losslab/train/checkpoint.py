"""Load a trained classifier back from a run folder or a Lightning checkpoint.

    run = load_run("runs/digits-small_cnn-root-s0")      # best checkpoint of the run
    run = load_run("runs/.../checkpoints/last.ckpt")      # a specific checkpoint
    run.model, run.config, run.spec

The architecture is rebuilt from the config stored in the checkpoint (model name, dataset shape, factorization),
then the weights are loaded strictly: a checkpoint that does not fit the architecture is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from losslab.errors import ConfigError, LosslabError
from losslab.train.config import TrainConfig


@dataclass
class LoadedRun:
    """A trained model (eval mode) with the config that trained it and its dataset's spec."""

    model: nn.Module
    config: TrainConfig
    spec: Any
    checkpoint: Path


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file for ``path``: itself, or a run folder's best (else last) checkpoint."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            candidate = path / "checkpoints" / name
            if candidate.is_file():
                return candidate
        raise ConfigError(
            f"{str(path)!r} holds no checkpoints/best.ckpt or checkpoints/last.ckpt; pass a run "
            "folder made by `losslab train` or a .ckpt file"
        )
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    return path


def load_run(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of a losslab training run and load its weights (strict)."""
    from losslab.data import dataset_info
    from losslab.train.build import build_model

    ckpt_file = checkpoint_path(path)
    checkpoint = torch.load(ckpt_file, map_location=map_location, weights_only=False)
    try:
        cfg = TrainConfig.build(checkpoint["hyper_parameters"]["config"])
    except KeyError:
        raise LosslabError(
            f"{str(ckpt_file)!r} is not a losslab classifier checkpoint (no stored config); "
            "checkpoints come from `losslab train`"
        ) from None
    spec = dataset_info(cfg.dataset)
    model, _ = build_model(
        cfg.model_copy(update={"spectral": False, "attention_spectral": False, "pretrained": False}), spec
    )
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LosslabError(f"checkpoint {str(ckpt_file)!r} does not fit model {cfg.model!r}: {exc}") from None
    model.eval()
    return LoadedRun(model=model, config=cfg, spec=spec, checkpoint=ckpt_file)
