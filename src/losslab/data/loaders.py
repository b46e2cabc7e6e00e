"""DataLoaders over :func:`create_dataset`: train/val/test loaders and seeded calibration sets for quantization.

::

    loaders = create_dataloaders("digits", batch_size=64)          # {'train': ..., 'val': ..., 'test': ...}
    calib = calibration_loader("cifar10", n_samples=512, batch_size=128, data_dir="~/data")
    for x, y in calib: ...                                          # eval transform, same 512 images every run
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from losslab.data.datasets import SPLITS, create_dataset
from losslab.errors import ConfigError, check_range


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """A DataLoader whose shuffling order is fixed by ``seed`` (a dedicated ``torch.Generator``)."""
    check_range("batch_size", batch_size, low=1)
    check_range("num_workers", num_workers, low=0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )


def create_dataloaders(
    name: str,
    batch_size: int,
    splits: Sequence[str] = SPLITS,
    num_workers: int = 0,
    seed: int = 0,
    eval_batch_size: int | None = None,
    **dataset_kwargs: Any,
) -> dict[str, DataLoader]:
    """Loaders for ``splits`` of ``name``: ``train`` shuffled (seeded), ``val``/``test`` in order.

    ``dataset_kwargs`` go to :func:`create_dataset` (``data_dir``, ``download``, ``augment``, ``randaugment``,
    ``val_fraction``, ``split_seed``, ``img_size``, fake options). ``eval_batch_size`` defaults to ``batch_size``.
    """
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ConfigError(f"splits={list(splits)} contains {bad}: allowed splits are {', '.join(SPLITS)}")
    check_range("batch_size", batch_size, low=1)
    loaders = {}
    for split in splits:
        dataset = create_dataset(name, split, **dataset_kwargs)
        size = batch_size if split == "train" else eval_batch_size or batch_size
        loaders[split] = make_loader(dataset, size, shuffle=split == "train", num_workers=num_workers, seed=seed)
    return loaders


def calibration_loader(
    name: str,
    n_samples: int,
    batch_size: int = 128,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "train",
    num_workers: int = 0,
    **dataset_kwargs: Any,
) -> DataLoader:
    """``n_samples`` images of ``split`` (default: losslab's train split) with the EVAL transform, in fixed order.

    The images are the first ``n_samples`` of a ``seed``-ed permutation of the split, so the same seed gives the
    same calibration set. ``dataset_kwargs`` go to :func:`create_dataset` (``download``, ``img_size``,
    ``val_fraction``, ``split_seed``, fake options); ``augment`` is always off.
    """
    check_range("n_samples", n_samples, low=1)
    check_range("batch_size", batch_size, low=1)
    if "augment" in dataset_kwargs or "randaugment" in dataset_kwargs:
        raise ConfigError("calibration_loader always uses the eval transform: drop augment=/randaugment=")
    dataset = create_dataset(name, split, data_dir=data_dir, augment=False, **dataset_kwargs)
    if n_samples > len(dataset):
        raise ConfigError(
            f"n_samples={n_samples} is more than the {len(dataset)} images of {name!r} split {split!r}: "
            f"use n_samples <= {len(dataset)}"
        )
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n_samples].tolist()
    return make_loader(Subset(dataset, chosen), batch_size, shuffle=False, num_workers=num_workers)
