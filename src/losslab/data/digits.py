"""The 8x8 handwritten digits bundled with scikit-learn (1,797 images, 10 classes): offline, no download.

Pixels 0..16 are scaled to [0, 1]. The test split is a fixed stratified 20 % (``random_state=0``): 1,437 training
and 360 test images::

    source = load_digits_images(train=True, data_dir=resolve_data_dir(None))
    image, label = source[0]  # float tensor (1, 8, 8) in [0, 1], int

The first load reads scikit-learn's copy and splits it with ``train_test_split``; the pixels, labels and split are
then kept in ``<data_dir>/digits/digits-split.npz`` (written atomically), so later runs read one small file and
never import scikit-learn (about a second of start-up). Without a writable data folder every load uses
scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

TEST_FRACTION = 0.2
CACHE = Path("digits") / "digits-split.npz"
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


def digits_arrays(data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels uint8 (1797, 8, 8) in 0..16, labels int64 (1797,), is_test bool (1797,)), cached under ``data_dir``."""
    cache = data_dir / CACHE if data_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as held:
                pixels, labels, is_test = held["pixels"], held["labels"], held["is_test"]
            if pixels.shape == (N_DIGITS, 8, 8) and labels.shape == is_test.shape == (N_DIGITS,):
                return pixels, labels, is_test
        except (OSError, ValueError, KeyError):
            pass  # damaged or foreign: rebuilt below
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    indices = list(range(len(bunch.target)))
    _, test_idx = train_test_split(indices, test_size=TEST_FRACTION, random_state=0, stratify=bunch.target)
    pixels = bunch.images.astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_idx] = True
    if cache is not None:
        _write_cache(cache, pixels, labels, is_test)
    return pixels, labels, is_test


def _write_cache(cache: Path, pixels: np.ndarray, labels: np.ndarray, is_test: np.ndarray) -> None:
    from losslab.errors import LosslabError
    from losslab.io import atomic_path

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, pixels=pixels, labels=labels, is_test=is_test)
    except (OSError, LosslabError):
        pass  # a read-only data folder: scikit-learn is used on every load instead


def load_digits_images(train: bool, data_dir: Path | None = None) -> TensorImages:
    """The fixed stratified training (1,437) or test (360) part of scikit-learn's digits."""
    pixels, labels, is_test = digits_arrays(data_dir)
    chosen = np.flatnonzero(~is_test if train else is_test)  # sorted
    images = torch.tensor(pixels[chosen] / 16.0, dtype=torch.float32).unsqueeze(1)
    return TensorImages(images, [int(labels[i]) for i in chosen], [str(d) for d in range(10)])
