"""``evaluate_run``: top-1/top-5 accuracy and cross entropy of a trained classifier (``losslab evaluate``).

The input is a losslab run folder or ``.ckpt``, a packed ``.safetensors`` file of ``losslab quantize --save-packed``
(architecture from the file's recipe, dataset and input size from its calibration record), or a timm checkpoint
(``.pth.tar`` of timm's train.py, with ``dataset``)::

    from losslab.compress.evaluate_run import EvaluateConfig, evaluate_run
    metrics = evaluate_run(EvaluateConfig(checkpoint="runs/digits-small_cnn-root-s0"))
    metrics["top1"], metrics["top5"], metrics["ce"], metrics["n"]

:class:`EvaluateConfig` is the command's typed config: its fields are the flags of ``losslab evaluate`` (generated
by :func:`losslab.cli.options.options_from_model`, as ``train``'s are from ``TrainConfig``). Importing this module
does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from losslab.errors import ConfigError

__all__ = ["EvaluateConfig", "evaluate_checkpoint", "evaluate_run"]


class EvaluateConfig(BaseModel):
    """What ``losslab evaluate`` measures: the checkpoint, the split, and the overrides of its stored settings."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Path = Field(description="A run folder or .ckpt, a packed .safetensors file, or a timm checkpoint.")
    split: Literal["test", "val"] = Field("test", description="Which split to evaluate on.")
    data_dir: Path | None = Field(None, description="Override the stored data folder.")
    device: str | None = Field(None, description="default: cuda if available")
    model: str | None = Field(None, description="timm checkpoints only: the architecture (default: the file's arch).")
    dataset: str | None = Field(
        None,
        description="timm checkpoints (required) and packed files (default: the file's calibration dataset): "
        "the dataset.",
    )
    img_size: int | None = Field(
        None,
        ge=1,
        description="timm checkpoints and packed files: input size (default: the data's / the file's calibration "
        "input).",
    )
    progress: bool = Field(False, description="A progress bar over the evaluation batches.")


def evaluate_run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` on ``cfg.split``: ``{"top1", "top5", "ce", "n", "dataset", "split",
    "checkpoint"}`` (accuracies in %, CE the mean token cross entropy).

    A checkpoint that does not exist, or options that do not apply to its kind, fail with
    :class:`~losslab.errors.ConfigError` before anything heavy is imported or loaded.
    """
    if not cfg.checkpoint.exists():
        raise ConfigError(f"{str(cfg.checkpoint)!r} does not exist; pass a run folder (runs/NAME) or a .ckpt file")
    if cfg.checkpoint.suffix == ".safetensors":  # a packed file of `losslab quantize --save-packed`
        from losslab.compress.quantize_run import evaluate_packed

        if cfg.model is not None:
            raise ConfigError("--model is for timm checkpoints; a packed file stores its architecture")
        return evaluate_packed(
            cfg.checkpoint,
            cfg.split,
            data_dir=cfg.data_dir,
            dataset=cfg.dataset,
            img_size=cfg.img_size,
            device=cfg.device,
        )
    return evaluate_checkpoint(
        cfg.checkpoint,
        cfg.split,
        cfg.data_dir,
        model=cfg.model,
        dataset=cfg.dataset,
        img_size=cfg.img_size,
        device=cfg.device,
        progress=cfg.progress,
    )


def evaluate_checkpoint(
    checkpoint: Path,
    split: str = "test",
    data_dir: Path | None = None,
    *,
    model: str | None = None,
    dataset: str | None = None,
    img_size: int | None = None,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Load a run (or a timm checkpoint for ``model`` on ``dataset``) and evaluate it on ``split``; the dict also
    names the dataset and checkpoint."""
    from losslab.runs.device import resolve_device
    from losslab.train import evaluate_model, load_run
    from losslab.train.build import make_loaders
    from losslab.train.checkpoint import load_timm_run
    from losslab.train.config import is_timm_checkpoint

    dev = resolve_device(device or "auto")  # a device this machine lacks: one line, before anything is loaded
    if is_timm_checkpoint(checkpoint):
        run = load_timm_run(checkpoint, model, dataset, img_size, data_dir)
    else:
        if model is not None or dataset is not None or img_size is not None:
            raise ConfigError("--model/--dataset/--img-size are for timm checkpoints; a losslab run knows them")
        run = load_run(checkpoint)
    cfg = run.config if data_dir is None else run.config.model_copy(update={"data_dir": data_dir})
    loaders = make_loaders(cfg)
    loader = loaders.test if split == "test" else loaders.val
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=f"evaluate {split}", unit="batch", leave=False)
    metrics = evaluate_model(run.model.to(dev), loader, dev)
    return {**metrics, "dataset": cfg.dataset, "split": split, "checkpoint": str(run.checkpoint)}
