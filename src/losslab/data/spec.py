"""What each named data set is: classes, channels, native image size, normalisation and default model.

::

    spec = dataset_info("cifar10")
    spec.num_classes, spec.img_size, spec.mean  # 10, 32, (0.4914, 0.4822, 0.4465)
    dataset_info("fake", num_classes=4, img_size=16).num_classes  # 4
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from losslab.errors import ConfigError, unknown_name_error

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTS = ("crop_flip", "shift", "resized_crop_flip", "none")


@dataclass(frozen=True)
class DataSpec:
    """A data set's fixed facts.

    - ``img_size``: native side length in pixels (images are ``in_chans x img_size x img_size`` after transforms).
    - ``mean``/``std``: per-channel normalisation of pixel values scaled to [0, 1]: ``(x - mean) / std``.
    - ``train_augment``: ``crop_flip`` (RandomCrop with ``pad`` zero padding + horizontal flip), ``shift``
      (RandomCrop with ``pad``, no flip), ``resized_crop_flip`` (RandomResizedCrop + flip) or ``none``.
    - ``default_model``: a model name for :func:`losslab.models.create_model`.
    - ``pil``: whether raw images are PIL images (True) or float tensors in [0, 1] (False).
    """

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_model: str
    train_augment: str = "crop_flip"
    pad: int = 4
    pil: bool = True


SPECS: dict[str, DataSpec] = {
    spec.name: spec
    for spec in (
        DataSpec("digits", 10, 1, 8, (0.3054,), (0.3761,), "small_cnn", "shift", 1, pil=False),
        DataSpec("fake", 10, 3, 32, (0.0,) * 3, (1.0,) * 3, "small_cnn", "none", 0, pil=False),
        DataSpec("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), "cifar_resnet20"),
        DataSpec("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar_resnet32"),
        DataSpec("tiny_imagenet", 200, 3, 64, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), "cifar_resnet18"),
        DataSpec("food101", 101, 3, 224, IMAGENET_MEAN, IMAGENET_STD, "resnet50", "resized_crop_flip", 0),
        DataSpec("imagenet", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD, "resnet50", "resized_crop_flip", 0),
    )
}

FAKE_OPTIONS = {"num_samples": 1000, "num_classes": 10, "in_chans": 3, "img_size": 32, "noise": 0.5, "seed": 0}
"""Options of the synthetic ``fake`` data set and their defaults (``num_samples`` = training images)."""


def fake_options(options: dict[str, Any]) -> dict[str, Any]:
    """``FAKE_OPTIONS`` updated by ``options``; unknown keys or bad values raise :class:`ConfigError`."""
    unknown = sorted(set(options) - set(FAKE_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for data set 'fake'; allowed: {sorted(FAKE_OPTIONS)}")
    merged = {**FAKE_OPTIONS, **{k: v for k, v in options.items() if v is not None}}
    for key in ("num_samples", "num_classes", "in_chans", "img_size"):
        if int(merged[key]) < 1:
            raise ConfigError(f"fake data option {key}={merged[key]!r} is not allowed: it must be >= 1")
    if merged["noise"] < 0:
        raise ConfigError(f"fake data option noise={merged['noise']!r} is not allowed: it must be >= 0")
    return merged


def dataset_info(name: str, **options: Any) -> DataSpec:
    """The :class:`DataSpec` of data set ``name``; ``options`` are only for ``fake`` (see ``FAKE_OPTIONS``)."""
    key = name.strip().lower().replace("-", "_")
    if key not in SPECS:
        raise unknown_name_error("data set", name, SPECS)
    if key != "fake":
        if options:
            raise ConfigError(f"options {sorted(options)} are only allowed for data set 'fake', not {name!r}")
        return SPECS[key]
    opts = fake_options(options)
    c = int(opts["in_chans"])
    return dataclasses.replace(
        SPECS[key],
        num_classes=int(opts["num_classes"]),
        in_chans=c,
        img_size=int(opts["img_size"]),
        mean=(0.0,) * c,
        std=(1.0,) * c,
    )
