"""Train and eval transforms per data set: augmentation (train only), optional RandAugment, resize, normalise.

- ``crop_flip``: RandomCrop(native size, padding ``pad``) + RandomHorizontalFlip (CIFAR, Tiny-ImageNet).
- ``shift``: RandomCrop(native size, padding ``pad``), i.e. small random shifts, no flip (digits).
- ``resized_crop_flip``: RandomResizedCrop(img_size) + flip; eval Resize(img_size / 0.875) + CenterCrop (ImageNet).
- RandAugment: a timm config string such as ``"rand-m9-mstd0.5"`` (``timm.data.rand_augment_transform``,
  Cubuk et al. 2020), applied after the geometric augmentation, PIL data sets only.
- A requested ``img_size`` other than the native size adds a Resize. Last: ``Normalize(spec.mean, spec.std)``.

::

    tf = build_transform(dataset_info("cifar10"), train=True, img_size=32, randaugment="rand-m9-mstd0.5")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchvision import transforms as T

from losslab.data.spec import DataSpec
from losslab.errors import ConfigError

EVAL_CROP_FRACTION = 0.875


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


def build_transform(spec: DataSpec, train: bool, img_size: int, randaugment: str | None = None) -> Callable[[Any], Any]:
    """The transform turning a raw image of ``spec`` (PIL or [0, 1] tensor) into a normalised float tensor.

    Output shape (spec.in_chans, img_size, img_size). ``train=False`` gives the deterministic eval transform
    (``randaugment`` is still validated, so a bad string fails for every split).
    """
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
    return T.Compose(ops)
