"""A synthetic, seeded, learnable image data set for tests and demos (no files, no network).

Class c has a fixed smooth pattern P_c (a 4x4 N(0, 1) grid per channel, bilinearly upsampled to
``img_size``); image i has label ``i mod num_classes`` and pixels ``P_label + noise * N(0, 1)``. Patterns depend
only on ``seed``; the noise of image i depends on ``(seed, split, i)``, so every access returns the same tensor::

    source = FakeImages(num_samples=100, num_classes=4, in_chans=3, img_size=16, noise=0.5, seed=0, train=True)
    image, label = source[5]  # float tensor (3, 16, 16), 1
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

SPLIT_STRIDE = 1_000_003


class FakeImages(Dataset):
    """``num_samples`` images of class-dependent patterns plus Gaussian noise; see the module docstring."""

    def __init__(
        self, num_samples: int, num_classes: int, in_chans: int, img_size: int, noise: float, seed: int, train: bool
    ) -> None:
        self.num_samples = num_samples
        self.noise = noise
        self.in_chans = in_chans
        self.img_size = img_size
        self.noise_seed = (2 * seed + (0 if train else 1)) * SPLIT_STRIDE
        gen = torch.Generator().manual_seed(seed)
        coarse = torch.randn(num_classes, in_chans, 4, 4, generator=gen)
        self.patterns = F.interpolate(coarse, size=(img_size, img_size), mode="bilinear", align_corners=True)
        self.targets = [i % num_classes for i in range(num_samples)]
        self.classes = [str(c) for c in range(num_classes)]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        gen = torch.Generator().manual_seed(self.noise_seed + index)
        noise = torch.randn(self.in_chans, self.img_size, self.img_size, generator=gen)
        label = self.targets[index]
        return self.patterns[label] + self.noise * noise, label
