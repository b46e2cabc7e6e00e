"""Quantize a trained classifier run: the one service behind ``losslab quantize`` and the study pipeline.

The workflow is: load the run → build its test and calibration loaders with the run's **own** data settings
(``dataset``, ``img_size``, ``data_dir``, ``download``, ``val_fraction``; the dataset's normalisation comes with
the dataset) → evaluate the float model → quantize with :func:`losslab.quant.quantize_many` (one calibration
cache per group of methods) → evaluate every quantized model on the same test loader::

    from losslab.compress.trained_run import CalibrationSettings, TrainedRun
    run = TrainedRun.load("runs/digits-small_cnn-root-s0", device="cpu")
    calib = run.calibration_loader(CalibrationSettings(samples=256, batch_size=64, seed=0))
    print(run.float_metrics)                                   # evaluated once, on first use
    for point in run.quantize([[RTN(bits=8), RTN(bits=4)]], calib, skip=["conv1"]):
        print(point.method.describe(), point.metrics["top1"], point.result.summary()["avg_bits_per_weight"])

A run trained with ``--img-size 16`` is calibrated and evaluated on 16-pixel images (before this service the
CLI built its calibration loader without the run's ``img_size``; a model with adaptive pooling raised no error and
was calibrated on wrongly sized images). ``data_dir`` / ``download`` passed here override the stored ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from losslab.quant.methods import QuantMethod
from losslab.quant.result import QuantResult

__all__ = ["CalibrationSettings", "QuantizedPoint", "TrainedRun", "default_device"]


@dataclass(frozen=True)
class CalibrationSettings:
    """``samples`` training-split images (eval transform) in batches of ``batch_size``, drawn with ``seed``."""

    samples: int = 256
    batch_size: int = 64
    seed: int = 0


@dataclass
class QuantizedPoint:
    """One quantized model of a run: its method, the engine's result and its test metrics."""

    method: QuantMethod
    result: QuantResult
    metrics: dict[str, float]
    eval_seconds: float


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class TrainedRun:
    """A trained classifier with its training config (``cfg``: a :class:`losslab.train.TrainConfig`)."""

    model: nn.Module
    cfg: Any
    checkpoint: Path | None = None
    device: torch.device = field(default_factory=default_device)
    eval_batch_size: int | None = None
    _test: DataLoader | None = None
    _float: dict[str, float] | None = None
    float_eval_seconds: float = 0.0

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        data_dir: str | Path | None = None,
        download: bool | None = None,
        device: str | torch.device | None = None,
        eval_batch_size: int | None = None,
    ) -> TrainedRun:
        """Load a run folder or checkpoint; ``data_dir``/``download`` override the run's stored data settings."""
        from losslab.train import load_run

        loaded = load_run(path)
        update: dict[str, Any] = {}
        if data_dir is not None:
            update["data_dir"] = Path(data_dir)
        if download is not None:
            update["download"] = download
        cfg = loaded.config.model_copy(update=update) if update else loaded.config
        dev = default_device(device)
        return cls(loaded.model.to(dev), cfg, loaded.checkpoint, dev, eval_batch_size)

    @property
    def run_dir(self) -> Path | None:
        """The run folder (``<run>/checkpoints/x.ckpt`` → ``<run>``)."""
        return None if self.checkpoint is None else self.checkpoint.parent.parent

    def data_options(self) -> dict[str, Any]:
        """The run's data settings shared by calibration and evaluation (``create_dataset`` keywords)."""
        return {
            "data_dir": self.cfg.data_dir,
            "download": self.cfg.download,
            "img_size": self.cfg.img_size,
            "val_fraction": self.cfg.val_fraction,
        }

    def calibration_loader(self, settings: CalibrationSettings) -> DataLoader:
        """``settings.samples`` training images of the run's dataset with the run's data settings."""
        from losslab.data import calibration_loader

        return calibration_loader(
            self.cfg.dataset, settings.samples, settings.batch_size, settings.seed, **self.data_options()
        )

    @property
    def test_loader(self) -> DataLoader:
        """The run's test split (built once; same data settings as training, see ``make_loaders``)."""
        if self._test is None:
            from losslab.train.build import make_loaders

            self._test = make_loaders(self.cfg, eval_batch_size=self.eval_batch_size).test
        return self._test

    @property
    def float_metrics(self) -> dict[str, float]:
        """Top-1/top-5/CE of the float model on the test split (evaluated once)."""
        if self._float is None:
            from losslab.train import evaluate_model

            start = time.perf_counter()
            self._float = evaluate_model(self.model, self.test_loader, self.device)
            self.float_eval_seconds = time.perf_counter() - start
        return self._float

    def quantize(
        self,
        groups: Sequence[Sequence[QuantMethod]],
        calib: DataLoader,
        *,
        overrides: Mapping[str, QuantMethod] | None = None,
        skip: Sequence[str] | None = None,
        fold_bn: bool = False,
        act_bits: int | None = None,
        seed: int = 0,
        calib_seed: int | None = None,
        calib_name: str | None = None,
        progress: bool | str = False,
    ) -> Iterator[QuantizedPoint]:
        """Quantize the model with every method (one calibration cache per group) and evaluate each result.

        Yields the points in order, one group at a time, so a caller can drop each quantized model after use.
        """
        from losslab.quant.engine import quantize_many
        from losslab.train import evaluate_model

        for methods in groups:
            results = quantize_many(
                self.model,
                list(methods),
                calib,
                overrides=overrides,
                skip=skip,
                fold_bn=fold_bn,
                act_bits=act_bits,
                device=self.device,
                progress=progress,
                seed=seed,
                calib_seed=calib_seed,
                calib_name=calib_name if calib_name is not None else f"{self.cfg.dataset}/train",
            )
            for method, result in zip(methods, results):
                start = time.perf_counter()
                metrics = evaluate_model(result.model, self.test_loader, self.device)
                yield QuantizedPoint(method, result, metrics, time.perf_counter() - start)
