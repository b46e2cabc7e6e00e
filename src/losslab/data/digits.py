"""The 8x8 handwritten digits bundled with scikit-learn (1,797 images, 10 classes): offline, no download.

Pixels 0..16 are scaled to [0, 1]. The test split is a fixed stratified 20 %: 1,437 training and 360 test images,
the indices scikit-learn's ``train_test_split(..., test_size=0.2, random_state=0, stratify=target)`` holds out,
kept in :mod:`losslab.data.digits_split`::

    source = load_digits_images(train=True)
    image, label = source[0]  # float tensor (1, 8, 8) in [0, 1], int

The pixels are read from scikit-learn's own copy (``sklearn/datasets/data/digits.csv.gz``) without importing
scikit-learn, which costs about a second of start-up; if that file is not where it is expected, ``load_digits``
is used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from losslab.data.digits_split import TEST_INDICES

N_DIGITS = 1797


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


def bundled_file() -> Path | None:
    """scikit-learn's ``digits.csv.gz``, located without importing scikit-learn (None if not found)."""
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [Path(root) / "datasets" / "data" / "digits.csv.gz" for root in locations]
    return next((path for path in found if path.is_file()), None)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(pixels float64 (1797, 8, 8) in 0..16, labels int64 (1797,)) as ``sklearn.datasets.load_digits`` gives."""
    path = bundled_file()
    if path is not None:
        data = np.loadtxt(path, delimiter=",")  # (1797, 65): 64 pixels, then the label
        if data.shape == (N_DIGITS, 65):
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def load_digits_images(train: bool) -> TensorImages:
    """The fixed stratified training (1,437) or test (360) part of scikit-learn's digits."""
    pixels, labels = digits_arrays()
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[list(TEST_INDICES)] = True
    chosen = np.flatnonzero(~is_test if train else is_test)  # sorted
    images = torch.tensor(pixels[chosen] / 16.0, dtype=torch.float32).unsqueeze(1)
    return TensorImages(images, [int(labels[i]) for i in chosen], [str(d) for d in range(10)])
