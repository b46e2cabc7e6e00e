"""``create_dataset``: a named data set's train / val / test split as a torch Dataset of normalised tensors.

``val`` is a fixed, seeded carve-out of the official training set (select checkpoints on it, never on ``test``);
``train`` is the rest. Augmentation applies only to ``train`` (and only with ``augment=True``)::

    from losslab.data import create_dataset

    train = create_dataset("digits", "train")            # 1,293 images (1,437 minus the 10 % val carve-out)
    val = create_dataset("digits", "val")                # 144 images, disjoint from train, same every run
    test = create_dataset("digits", "test")              # 360 images
    x, y = train[0]                                      # float tensor (1, 8, 8), int
    create_dataset("cifar10", "train", data_dir="~/data", download=True)
    create_dataset("fake", "train", num_samples=256, num_classes=4, img_size=16)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from losslab.data.cifar import load_cifar
from losslab.data.digits import load_digits_images
from losslab.data.fake import FakeImages
from losslab.data.food101 import load_food101
from losslab.data.imagenet import load_imagenet
from losslab.data.paths import resolve_data_dir
from losslab.data.spec import DataSpec, dataset_info, fake_options
from losslab.data.tiny_imagenet import load_tiny_imagenet
from losslab.data.transforms import Erasing, build_transform
from losslab.errors import ConfigError, check_range

SPLITS = ("train", "val", "test")


class TransformedSubset(Dataset):
    """Items ``indices`` of ``source`` (all if None) passed through ``transform``; ``targets`` are their labels."""

    def __init__(
        self, source: Any, indices: Sequence[int] | None, transform: Callable[[Any], Any], spec: DataSpec
    ) -> None:
        self.source = source
        self.indices = list(range(len(source))) if indices is None else list(indices)
        self.transform = transform
        self.spec = spec
        self.classes: list[str] = list(source.classes)
        self.targets = [source.targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.source[self.indices[index]]
        return self.transform(image), label


def train_val_indices(n: int, val_fraction: float, split_seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into (train, val): ``round(val_fraction * n)`` val indices by a seeded permutation.

    Both lists are sorted; the same ``(n, val_fraction, split_seed)`` always gives the same split.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).tolist()
    n_val = round(val_fraction * n)
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def _load_source(name: str, data_dir: Path, train: bool, download: bool, options: dict[str, Any]) -> Any:
    if name == "digits":
        return load_digits_images(train)
    if name == "fake":
        return FakeImages(train=train, **fake_options(options))
    if name in ("cifar10", "cifar100"):
        return load_cifar(data_dir, name, train, download)
    loaders = {"tiny_imagenet": load_tiny_imagenet, "food101": load_food101, "imagenet": load_imagenet}
    return loaders[name](data_dir, train, download)


@dataclass(frozen=True)
class SplitSource:
    """One split before any transform: the raw ``source`` items ``indices`` (all if None) of data set ``spec``.

    The one place that decides which raw images form train / val / test; both the worker pipeline
    (:func:`create_dataset`) and the device pipeline (:mod:`losslab.data.device`) read splits through it.
    """

    spec: DataSpec
    source: Any
    indices: list[int] | None
    img_size: int

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)


def load_splits(
    name: str,
    splits: Sequence[str] = SPLITS,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    img_size: int | None = None,
    **options: Any,
) -> dict[str, SplitSource]:
    """The raw images of each of ``splits`` of ``name`` (see :func:`create_dataset` for the arguments); the
    training source is read once for train and val."""
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ConfigError(f"split(s) {bad} not allowed: choose from {', '.join(SPLITS)}")
    check_range("val_fraction", val_fraction, low=0.0, high=1.0, high_inclusive=False)
    if "val" in splits and val_fraction == 0:
        raise ConfigError("split='val' needs val_fraction > 0 (the val split is carved out of the training set)")
    key = name.strip().lower().replace("-", "_")
    if key == "fake" and img_size is not None:
        options = {**options, "img_size": img_size}
    spec = dataset_info(key, **options)
    size = spec.img_size if img_size is None else img_size
    check_range("img_size", size, low=1)
    root = resolve_data_dir(data_dir)
    found: dict[str, SplitSource] = {}
    if "test" in splits:
        found["test"] = SplitSource(spec, _load_source(key, root, False, download, options), None, size)
    if "train" in splits or "val" in splits:
        source = _load_source(key, root, True, download, options)
        train_idx, val_idx = train_val_indices(len(source), val_fraction, split_seed)
        for split, idx in (("train", train_idx), ("val", val_idx)):
            if split in splits:
                found[split] = SplitSource(spec, source, idx, size)
    return {split: found[split] for split in splits}


def load_split(name: str, split: str, **kwargs: Any) -> SplitSource:
    """The raw images of one split: ``load_splits(name, [split], **kwargs)[split]``."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not allowed: choose one of {', '.join(SPLITS)}")
    return load_splits(name, [split], **kwargs)[split]


def as_dataset(
    raw: SplitSource, augment: bool = False, randaugment: str | None = None, erasing: Erasing | None = None
) -> TransformedSubset:
    """A split as a Dataset of transformed tensors (``augment`` etc. only matter for the training transform)."""
    transform = build_transform(raw.spec, augment, raw.img_size, randaugment=randaugment, erasing=erasing)
    return TransformedSubset(raw.source, raw.indices, transform, raw.spec)


def create_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    augment: bool = True,
    randaugment: str | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    img_size: int | None = None,
    erasing: Erasing | None = None,
    **options: Any,
) -> TransformedSubset:
    """Split ``split`` in {train, val, test} of data set ``name`` as (image tensor, label) pairs.

    - ``data_dir``: folder holding the data sets (default ``$LOSSLAB_DATA_DIR`` or ``~/.cache/losslab/data``).
    - ``download``: fetch a missing data set (never otherwise); a missing one raises ``DataNotFoundError``.
    - ``augment``/``randaugment``/``erasing``: training-split augmentation (see ``losslab.data.transforms``).
    - ``val_fraction``/``split_seed``: the seeded val carve-out of the training set (0 <= fraction < 1).
    - ``img_size``: output side length (default: the data set's native size); for ``fake`` it sets the size.
    - ``options``: only for ``fake`` (``num_samples``, ``num_classes``, ``in_chans``, ``noise``, ``seed``).

    Items are ``(x, y)`` with x float32 (in_chans, img_size, img_size) normalised by ``spec.mean``/``spec.std``.
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not allowed: choose one of {', '.join(SPLITS)}")
    key = name.strip().lower().replace("-", "_")
    spec = dataset_info(key, **({**options, "img_size": img_size} if key == "fake" and img_size else options))
    # Validate the transform (a bad RandAugment string fails for every split) before reading any file.
    build_transform(spec, False, img_size or spec.img_size, randaugment=randaugment, erasing=erasing)
    raw = load_split(
        key,
        split,
        data_dir=data_dir,
        download=download,
        val_fraction=val_fraction,
        split_seed=split_seed,
        img_size=img_size,
        **options,
    )
    return as_dataset(raw, split == "train" and augment, randaugment, erasing)
