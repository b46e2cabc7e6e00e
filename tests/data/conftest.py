"""Builders of tiny data sets in the real on-disk formats (CIFAR pickles, Tiny-ImageNet folders, ImageFolder)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    """cifar-10-batches-py with 5 training batches of 4 images and a test batch of 3; pixel = 10 * label + batch."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for b in range(1, 6):
        labels = [(b + i) % 10 for i in range(4)]
        data = np.stack([np.full(3072, 10 * y + b, dtype=np.uint8) for y in labels])
        _pickle(root / f"data_batch_{b}", {b"batch_label": b"x", b"labels": labels, b"data": data})
    test_labels = [7, 8, 9]
    test = np.stack([np.full(3072, 10 * y, dtype=np.uint8) for y in test_labels])
    _pickle(root / "test_batch", {b"labels": test_labels, b"data": test})
    _pickle(root / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return tmp_path


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    """cifar-100-python with 6 training and 2 test images; the red channel is 255, others 0."""
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    red = np.concatenate([np.full(1024, 255), np.zeros(2048)]).astype(np.uint8)
    for split, labels in (("train", [0, 5, 99, 42, 3, 7]), ("test", [1, 98])):
        data = np.stack([red] * len(labels))
        _pickle(root / split, {"fine_labels": labels, "coarse_labels": [0] * len(labels), "data": data})
    _pickle(root / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    return tmp_path


def _jpeg(path: Path, value: int, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path, format="JPEG", quality=100)


@pytest.fixture
def tiny_imagenet_dir(tmp_path: Path) -> Path:
    """tiny-imagenet-200 with 3 classes (wnids unsorted in wnids.txt), 5 train images each, 4 val images."""
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid in wnids:
        for i in range(5):
            _jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 50 * int(wnid[-1]))
    rows = [("val_0.JPEG", "n02"), ("val_1.JPEG", "n01"), ("val_2.JPEG", "n03"), ("val_3.JPEG", "n01")]
    for file, wnid in rows:
        _jpeg(root / "val" / "images" / file, 50 * int(wnid[-1]))
    (root / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in rows))
    return tmp_path


@pytest.fixture
def imagenet_dir(tmp_path: Path) -> Path:
    """imagenet/{train,val}/<wnid>/*.JPEG with 2 classes, 3 train and 1 val image each, 40x30 pixels."""
    for split, n in (("train", 3), ("val", 1)):
        for c, wnid in enumerate(("n0a", "n0b")):
            for i in range(n):
                path = tmp_path / "imagenet" / split / wnid / f"{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (40, 30), (100 * c, 0, 0)).save(path, format="JPEG")
    return tmp_path
