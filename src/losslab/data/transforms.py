"""Train and eval transforms per data set: augmentation (train only), optional RandAugment, resize, normalise.

- ``crop_flip``: RandomCrop(native size, padding ``pad``) + RandomHorizontalFlip (CIFAR, Tiny-ImageNet).
- ``shift``: RandomCrop(native size, padding ``pad``), i.e. small random shifts, no flip (digits).
- ``resized_crop_flip``: RandomResizedCrop(img_size) + flip; eval Resize(img_size / 0.875) + CenterCrop (ImageNet).
- RandAugment: a timm config string such as ``"rand-m9-mstd0.5"`` (``timm.data.rand_augment_transform``,
  Cubuk et al. 2020), applied after the geometric augmentation, PIL data sets only.
- A requested ``img_size`` other than the native size adds a Resize. Then ``Normalize(spec.mean, spec.std)``.
- After normalisation (train only), :class:`Erasing`: cutout (DeVries & Taylor 2017: one ``cutout`` x ``cutout``
  square of zeros, centre uniform over the image, clipped at the border) and timm's RandomErasing (Zhong et al.
  2020; ``reprob``, ``remode``, ``recount`` as in timm's train script). The device pipeline
  (:mod:`losslab.data.device`) draws the same distributions batched on the training device.

::

    tf = build_transform(dataset_info("cifar10"), train=True, img_size=32, randaugment="rand-m9-mstd0.5")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from losslab.data.spec import DataSpec
from losslab.errors import ConfigError

EVAL_CROP_FRACTION = 0.875
ERASE_SCALE = (0.02, 1 / 3)  # timm RandomErasing: erased area fraction range (split over `count` boxes)
ERASE_LOG_RATIO = (-1.2039728043259361, 1.2039728043259361)  # log(0.3), log(1 / 0.3): box aspect ratio range
ERASE_ATTEMPTS = 10  # timm: tries per box to find one that fits inside the image


@dataclass(frozen=True)
class Erasing:
    """Occlusion augmentations applied to normalised training images.

    - ``cutout``: side in pixels of one zeroed square per image (0 = off; FNL's WRN recipe uses 16).
    - ``reprob``: probability of timm's RandomErasing per image (0 = off); ``remode`` ``const`` fills zeros,
      ``pixel`` per-pixel N(0, 1) values; ``recount``: up to this many boxes (count uniform in 1..recount).
    """

    cutout: int = 0
    reprob: float = 0.0
    remode: Literal["const", "pixel"] = "const"
    recount: int = 1

    def __post_init__(self) -> None:
        if self.cutout < 0:
            raise ConfigError(f"cutout={self.cutout} is not allowed: a square side in pixels >= 0 (0 = off)")
        if not 0.0 <= self.reprob <= 1.0:
            raise ConfigError(f"reprob={self.reprob} is not allowed: a probability in [0, 1] (0 = off)")
        if self.remode not in ("const", "pixel"):
            raise ConfigError(f"remode={self.remode!r} is not allowed: choose const or pixel")
        if self.recount < 1:
            raise ConfigError(f"recount={self.recount} is not allowed: at least 1 box")

    @property
    def active(self) -> bool:
        """Whether any occlusion is switched on."""
        return self.cutout > 0 or self.reprob > 0


class Cutout:
    """One ``size`` x ``size`` square of zeros at a uniform centre (clipped at the border), on a (C, H, W) tensor."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.size // 2
        x = x.clone()
        x[..., max(0, cy - half) : min(h, cy - half + self.size), max(0, cx - half) : min(w, cx - half + self.size)] = 0
        return x


def erasing_transforms(erasing: Erasing | None) -> list[Callable[[Any], Any]]:
    """The per-image occlusion transforms for the worker pipeline (after Normalize)."""
    if erasing is None:
        return []
    ops: list[Callable[[Any], Any]] = []
    if erasing.cutout:
        ops.append(Cutout(erasing.cutout))
    if erasing.reprob:
        from timm.data.random_erasing import RandomErasing

        ops.append(RandomErasing(erasing.reprob, mode=erasing.remode, max_count=erasing.recount, device="cpu"))
    return ops


def _randaugment(config: str, spec: DataSpec) -> Callable[[Any], Any]:
    from timm.data import rand_augment_transform

    if not spec.pil:
        raise ConfigError(
            f"randaugment={config!r} is not allowed for data set {spec.name!r}: RandAugment needs RGB images "
            "(cifar10, cifar100, tiny_imagenet, food101, imagenet); leave randaugment unset"
        )
    try:
        return rand_augment_transform(config, {"img_mean": tuple(round(255 * m) for m in spec.mean)})
    except (AssertionError, ValueError, KeyError, IndexError) as error:
        raise ConfigError(
            f"randaugment={config!r} is not a valid timm RandAugment string ({error}); use e.g. 'rand-m9-mstd0.5' "
            "or 'rand-m7-n2' (m = magnitude 0..10, n = number of ops)"
        ) from error


def build_transform(
    spec: DataSpec, train: bool, img_size: int, randaugment: str | None = None, erasing: Erasing | None = None
) -> Callable[[Any], Any]:
    """The transform turning a raw image of ``spec`` (PIL or [0, 1] tensor) into a normalised float tensor.

    Output shape (spec.in_chans, img_size, img_size). ``train=False`` gives the deterministic eval transform
    (``randaugment`` is still validated, so a bad string fails for every split).
    """
    from torchvision import transforms as T

    augment_policy = _randaugment(randaugment, spec) if randaugment else None
    ops: list[Callable[[Any], Any]] = []
    native = spec.img_size
    if spec.train_augment == "resized_crop_flip":
        if train:
            ops += [T.RandomResizedCrop(img_size), T.RandomHorizontalFlip()]
        else:
            ops += [T.Resize(round(img_size / EVAL_CROP_FRACTION)), T.CenterCrop(img_size)]
    else:
        if train and spec.train_augment in ("crop_flip", "shift"):
            ops.append(T.RandomCrop(native, padding=spec.pad))
        if train and spec.train_augment == "crop_flip":
            ops.append(T.RandomHorizontalFlip())
        if img_size != native:
            ops.append(T.Resize((img_size, img_size), antialias=True))
    if train and augment_policy is not None:
        ops.append(augment_policy)
    if spec.pil:
        ops.append(T.ToTensor())
    ops.append(T.Normalize(spec.mean, spec.std))
    if train:
        ops += erasing_transforms(erasing)
    return T.Compose(ops)
