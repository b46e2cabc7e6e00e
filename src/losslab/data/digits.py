"""The 8x8 handwritten digits bundled with scikit-learn (1,797 images, 10 classes): offline, no download.

Pixels 0..16 are scaled to [0, 1]. The test split is a fixed stratified 20 % (``random_state=0``): 1,437 training
and 360 test images::

    source = load_digits_images(train=True)
    image, label = source[0]  # float tensor (1, 8, 8) in [0, 1], int
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

TEST_FRACTION = 0.2


class TensorImages(Dataset):
    """Images held as one float tensor (N, C, H, W) with integer ``targets``."""

    def __init__(self, images: torch.Tensor, targets: list[int], classes: list[str]) -> None:
        self.images = images
        self.targets = targets
        self.classes = classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]


def load_digits_images(train: bool) -> TensorImages:
    """The fixed stratified training (1,437) or test (360) part of scikit-learn's digits."""
    bunch = load_digits()
    indices = list(range(len(bunch.target)))
    train_idx, test_idx = train_test_split(indices, test_size=TEST_FRACTION, random_state=0, stratify=bunch.target)
    chosen = sorted(train_idx if train else test_idx)
    images = torch.tensor(bunch.images[chosen] / 16.0, dtype=torch.float32).unsqueeze(1)
    return TensorImages(images, [int(bunch.target[i]) for i in chosen], [str(d) for d in range(10)])
