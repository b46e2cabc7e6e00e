"""Load a trained classifier back from a run folder or a Lightning checkpoint.

    run = load_run("runs/digits-small_cnn-root-s0")      # best checkpoint of the run
    run = load_run("runs/.../checkpoints/last.ckpt")      # a specific checkpoint
    run.model, run.config, run.spec

The architecture is rebuilt from the config stored in the checkpoint (model name, dataset shape, factorization),
then the weights are loaded strictly: a checkpoint that does not fit the architecture is an error.

Every file is read with ``torch.load(weights_only=True)`` (:func:`losslab.serialization.load_torch_file`): a
checkpoint holds tensors and plain data only (the config is stored as a plain dict), so loading one never runs
code; a file with pickled objects is refused (:class:`UnsafeFileError`), an empty/truncated/garbled one too
(:class:`CorruptFileError`). :func:`read_checkpoint` validates a checkpoint before Lightning resumes from it.

timm training checkpoints (``.pth.tar`` from timm's ``train.py``)::

    state = timm_state_dict("model_best.pth.tar", use_ema=True)   # {"conv1.weight": ..., ...}, no 'module.'
    load_timm_checkpoint(model, "model_best.pth.tar")              # strict load into a timm model
    ckpt = read_timm_checkpoint("last.pth.tar")                    # + optimizer state, epoch, arch, args dict
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from losslab.errors import ConfigError, CorruptFileError, LosslabError
from losslab.serialization import CHECKSUM_KEY, check_state_dict, load_torch_file, verify_checksum
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


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A losslab (Lightning) classifier checkpoint as a dict, loaded with ``weights_only=True`` and validated.

    Raises :class:`UnsafeFileError` / :class:`CorruptFileError` for refused or unreadable files and
    :class:`LosslabError` for a readable file that is not a losslab checkpoint (no stored config or state dict).
    ``mmap=True`` checks a file cheaply (tensors stay on disk), e.g. before Lightning resumes from it.
    """
    ckpt_file = Path(path)
    checkpoint = load_torch_file(ckpt_file, what="checkpoint", map_location=map_location, mmap=mmap, verify=False)
    config = checkpoint.get("hyper_parameters", {}).get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict):
        raise LosslabError(
            f"{str(ckpt_file)!r} is not a losslab classifier checkpoint (no stored config); "
            "checkpoints come from `losslab train`"
        )
    if CHECKSUM_KEY not in checkpoint:  # written before losslab checksummed checkpoints: still usable, said once
        print(
            f"losslab: warning: checkpoint {str(ckpt_file)!r} carries no losslab checksum (written by losslab before "
            "checkpoints carried one, or saved again by another tool), so damage to it cannot be detected; its keys, "
            "shapes, dtypes and values are still checked",
            file=sys.stderr,
        )
    verify_checksum(checkpoint, ckpt_file, "checkpoint")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptFileError(
            f"checkpoint {str(ckpt_file)!r} has no state_dict of tensors; it is damaged or was edited. Use another "
            "checkpoint of the run (checkpoints/best.ckpt or last.ckpt) or train again"
        )
    return checkpoint


def load_run(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of a losslab training run and load its weights (strict)."""
    from losslab.data import dataset_info
    from losslab.train.build import build_model

    ckpt_file = checkpoint_path(path)
    checkpoint = read_checkpoint(ckpt_file, map_location=map_location)
    cfg = TrainConfig.build(checkpoint["hyper_parameters"]["config"])
    spec = dataset_info(cfg.dataset)
    model, _ = build_model(
        cfg.model_copy(
            update={"spectral": False, "attention_spectral": False, "pretrained": False, "initial_checkpoint": None}
        ),
        spec,
    )
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    check_state_dict(state, model.state_dict(), ckpt_file)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LosslabError(f"checkpoint {str(ckpt_file)!r} does not fit model {cfg.model!r}: {exc}") from None
    model.eval()
    return LoadedRun(model=model, config=cfg, spec=spec, checkpoint=ckpt_file)


#: Keys of a timm ``train.py`` checkpoint that hold a model state dict, EMA first when asked for.
TIMM_STATE_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


@dataclass
class TimmCheckpoint:
    """A timm ``train.py`` checkpoint read as data: weights (prefixes removed), EMA weights, optimizer state, epoch,
    architecture name and the training arguments as a plain dict (``vars`` of timm's ``argparse.Namespace``)."""

    state_dict: dict[str, torch.Tensor]
    state_dict_ema: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any] | None
    epoch: int | None
    arch: str | None
    args: dict[str, Any]


def read_timm_checkpoint(path: str | Path) -> TimmCheckpoint:
    """Read a timm checkpoint (``.pth.tar`` of timm's ``train.py``, or a bare state dict) with ``weights_only=True``.

    timm stores its training arguments as an ``argparse.Namespace`` (a plain attribute bag), the one extra class
    allowed. DDP/``torch.compile`` prefixes (``module.``, ``_orig_mod.``) are removed from the weights.
    """
    import argparse

    from timm.models import clean_state_dict

    file = Path(path)
    raw = load_torch_file(file, what="timm checkpoint", allow=[argparse.Namespace])
    if not isinstance(raw, dict):
        raise LosslabError(f"{str(file)!r} is not a timm checkpoint or state dict (it holds a {type(raw).__name__})")

    def weights(key: str | None) -> dict[str, torch.Tensor] | None:
        state = raw.get(key) if key is not None else raw
        if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            return None
        return clean_state_dict(state)

    main = next((w for w in map(weights, TIMM_STATE_KEYS[2:]) if w is not None), None) or weights(None)
    if main is None:
        raise LosslabError(
            f"{str(file)!r} holds no model weights: expected a state dict of tensors or a timm checkpoint with "
            f"one of the keys {list(TIMM_STATE_KEYS)}"
        )
    args = raw.get("args")
    epoch = raw.get("epoch")
    return TimmCheckpoint(
        state_dict=main,
        state_dict_ema=next((w for w in map(weights, TIMM_STATE_KEYS[:2]) if w is not None), None),
        optimizer=raw.get("optimizer") if isinstance(raw.get("optimizer"), dict) else None,
        epoch=epoch if isinstance(epoch, int) else None,
        arch=raw.get("arch") if isinstance(raw.get("arch"), str) else None,
        args=dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, dict) else {},
    )


def timm_state_dict(path: str | Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model weights of a timm checkpoint; ``use_ema`` picks ``state_dict_ema`` when the file has one."""
    ckpt = read_timm_checkpoint(path)
    return ckpt.state_dict_ema if use_ema and ckpt.state_dict_ema is not None else ckpt.state_dict


def load_timm_checkpoint(model: nn.Module, path: str | Path, use_ema: bool = False) -> nn.Module:
    """Load a timm checkpoint's weights into ``model`` (strict); a mismatch names the checkpoint and the keys."""
    state = timm_state_dict(path, use_ema=use_ema)
    _check_finite(state, path)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise LosslabError(
            f"timm checkpoint {str(path)!r} does not fit {type(model).__name__}: {mismatch} "
            "(build the same architecture and number of classes it was trained with)"
        )
    model.load_state_dict(state, strict=True)
    return model


def state_dict_mismatch(own: dict[str, torch.Tensor], given: dict[str, torch.Tensor], show: int = 3) -> str:
    """What keeps ``given`` from loading strictly into a model whose state dict is ``own`` ("" when it fits):
    the counts of missing keys, unexpected keys and shape mismatches, each with its first ``show`` entries."""
    shapes = [
        f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in given and tuple(given[k].shape) != tuple(own[k].shape)
    ]
    groups = (
        ("missing key(s)", [k for k in own if k not in given]),
        ("unexpected key(s)", [k for k in given if k not in own]),
        ("shape mismatch(es), checkpoint vs model", shapes),
    )
    return "; ".join(
        f"{len(items)} {label}: {', '.join(items[:show])}{', ...' if len(items) > show else ''}"
        for label, items in groups
        if items
    )


def _check_finite(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Every floating tensor of a foreign state dict is finite (its keys and shapes are load_state_dict's check)."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CorruptFileError(
                f"timm checkpoint {str(path)!r}: tensor {key!r} holds NaN/Inf values; use another checkpoint"
            )


def load_timm_run(
    path: str | Path,
    model: str | None = None,
    dataset: str | None = None,
    img_size: int | None = None,
    data_dir: Path | None = None,
    use_ema: bool = False,
) -> LoadedRun:
    """A timm checkpoint as a :class:`LoadedRun` for ``dataset`` (``model`` defaults to the checkpoint's ``arch``).

    timm checkpoints do not say which data they were trained on, so ``dataset`` is required; its class count
    must match the checkpoint's classifier (a mismatch names both).
    """
    from losslab.data import dataset_info
    from losslab.train.build import build_model

    ckpt = read_timm_checkpoint(path)
    name = model or ckpt.arch
    if name is None:
        raise ConfigError(f"timm checkpoint {str(path)!r} does not name its architecture: pass --model NAME")
    if dataset is None:
        raise ConfigError(f"timm checkpoint {str(path)!r}: pass --dataset (timm files do not record their data)")
    cfg = TrainConfig.build({"model": name, "dataset": dataset, "img_size": img_size, "data_dir": data_dir})
    spec = dataset_info(cfg.dataset)
    net, _ = build_model(cfg, spec)
    state = ckpt.state_dict_ema if use_ema and ckpt.state_dict_ema is not None else ckpt.state_dict
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LosslabError(
            f"timm checkpoint {str(path)!r} does not fit {name!r} with {spec.num_classes} classes ({dataset}): "
            f"{str(exc).splitlines()[0]}"
        ) from None
    net.eval()
    return LoadedRun(model=net, config=cfg, spec=spec, checkpoint=Path(path))
