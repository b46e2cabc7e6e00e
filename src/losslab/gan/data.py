"""GAN training data as one device-resident tensor: 2-D Gaussian mixtures (ring, grid) or any losslab image set.

    mixture = toy_mixture("ring")                      # 8 modes on a circle of radius 2, σ = 0.02
    points = mixture.sample(10_000, seed=0)            # [10000, 2] float32
    images = load_images("digits", img_size=32)        # [1437, 1, 32, 32] in [−1, 1], upsampled offline
    data = load_gan_data("ring", n_toy=10_000, seed=0) # GanData(tensor, kind="toy", mixture=...)

Images come from :func:`losslab.data.create_dataset` (no augmentation; nothing downloaded unless ``download``),
un-normalised to [0, 1] and mapped to [−1, 1] (the generator's tanh range). ``digits`` (8×8) is resized to
``img_size`` bilinearly once, before training; other sets use the data set's own Resize when ``img_size`` differs
from the native size. The ``train`` split is the full official training set (``val_fraction=0``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab.errors import ConfigError

TOY_DATASETS = ("ring", "grid")


@dataclass(frozen=True)
class ToyMixture:
    """An equal-weight mixture of isotropic Gaussians: ``modes`` [M, 2] and one ``sigma``."""

    name: str
    modes: Tensor
    sigma: float

    def sample(self, n: int, seed: int = 0) -> Tensor:
        """``n`` points [n, 2] (float32, CPU), mode indices drawn uniformly, seeded."""
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(len(self.modes), (n,), generator=gen)
        return self.modes[idx] + self.sigma * torch.randn(n, 2, generator=gen)


def toy_mixture(name: str, *, radius: float = 2.0, sigma: float | None = None) -> ToyMixture:
    """``ring``: 8 modes at radius ``radius`` (σ 0.02, the spec's demo); ``grid``: 5×5 modes at −4, −2, ..., 4 (σ 0.05).

    Both are the standard mixtures of the mode-collapse literature (Metz et al. 2017; Srivastava et al. 2017).
    """
    if name == "ring":
        angles = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
        modes = radius * torch.stack([angles.cos(), angles.sin()], 1)
        return ToyMixture(name, modes, 0.02 if sigma is None else sigma)
    if name == "grid":
        axis = torch.arange(-4.0, 4.1, 2.0)
        modes = torch.cartesian_prod(axis, axis)
        return ToyMixture(name, modes, 0.05 if sigma is None else sigma)
    raise ConfigError(f"toy data set {name!r} is unknown: choose one of {', '.join(TOY_DATASETS)}")


def load_images(
    name: str,
    img_size: int | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    split: str = "train",
    **options: object,
) -> Tensor:
    """All images of a losslab data set's ``split`` as one float32 tensor [N, C, S, S] in [−1, 1] (CPU)."""
    from losslab.data import create_dataset, dataset_info

    spec = dataset_info(name, **options)
    native = name == "digits" or not spec.pil  # tensor sources: resize the whole tensor once here
    size = spec.img_size if img_size is None else img_size
    dataset = create_dataset(
        name,
        split,
        data_dir=data_dir,
        download=download,
        augment=False,
        val_fraction=0.0,
        img_size=None if native and name != "fake" else size,
        **options,
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=512, shuffle=False)
    images = torch.cat([x for x, _ in loader])
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    images = (images * std + mean).clamp(0, 1)  # back to [0, 1]
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return images * 2 - 1


@dataclass(frozen=True)
class GanData:
    """Training data: ``tensor`` [N, ...]; ``mixture`` for toy data (metrics), None for images."""

    name: str
    tensor: Tensor
    mixture: ToyMixture | None

    @property
    def is_toy(self) -> bool:
        return self.mixture is not None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape[1:])


def load_gan_data(
    name: str,
    *,
    img_size: int | None = None,
    n_toy: int = 10_000,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> GanData:
    """Toy points (``ring``/``grid``: ``n_toy`` seeded samples) or a losslab image set (``img_size`` default 32)."""
    if name in TOY_DATASETS:
        mixture = toy_mixture(name)
        return GanData(name, mixture.sample(n_toy, seed=seed), mixture)
    return GanData(name, load_images(name, img_size or 32, data_dir=data_dir, download=download), None)


class ShuffledBatches:
    """The training tensor's full batches [B, ...] in a fresh random order per pass (the loop's train loader).

    Each iteration draws one permutation from the global RNG on the tensor's device (``torch.randperm``; seeded
    runs repeat, and a resumed run continues the stream the checkpoint stored) and yields ``len(self)`` slices of
    ``batch_size`` rows; the last ``N mod B`` rows of the order are left out of that pass. No host round trip.
    """

    def __init__(self, tensor: Tensor, batch_size: int) -> None:
        self.tensor = tensor
        self.batch_size = batch_size

    def to(self, device: torch.device | str) -> ShuffledBatches:
        self.tensor = self.tensor.to(device)
        return self

    def __len__(self) -> int:
        return len(self.tensor) // self.batch_size

    def __iter__(self) -> Iterator[Tensor]:
        order = torch.randperm(len(self.tensor), device=self.tensor.device)
        for i in range(len(self)):
            yield self.tensor[order[i * self.batch_size : (i + 1) * self.batch_size]]
