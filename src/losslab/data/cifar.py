"""CIFAR-10 and CIFAR-100 from the python pickle batches (Krizhevsky 2009), read without torchvision.

Layout under ``data_dir``: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` or
``cifar-100-python/{train, test, meta}``; each batch is a pickled dict with ``data`` (N x 3072 uint8, channel-major
32x32) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). ``download=True`` fetches and extracts the
official archive through torchvision; the files are then read here (no checksum test, so small hand-made batches
in the same format load too)::

    source = load_cifar(Path("~/data").expanduser(), "cifar10", train=True, download=False)
    image, label = source[0]  # PIL 32x32 RGB, int
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from losslab.data.paths import fetch, missing_data_error
from losslab.errors import CorruptFileError
from losslab.serialization import load_data_pickle


@dataclass(frozen=True)
class CifarLayout:
    """File names of one CIFAR variant."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str
    url: str
    classes: int


LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "labels",
        "label_names",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        10,
    ),
    "cifar100": CifarLayout(
        "cifar-100-python",
        ("train",),
        ("test",),
        "meta",
        "fine_labels",
        "fine_label_names",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        100,
    ),
}


class CifarImages(Dataset):
    """In-memory CIFAR images: ``data`` (N, 32, 32, 3) uint8, ``targets`` list of ints, ``classes`` names."""

    def __init__(self, data: np.ndarray, targets: list[int], classes: list[str]) -> None:
        self.data = data
        self.targets = targets
        self.classes = classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.data[index]), self.targets[index]


def _unpickle(path: Path) -> dict[str, Any]:
    raw = load_data_pickle(path, what="CIFAR batch")  # numpy arrays and plain data only: no code runs
    if not isinstance(raw, dict):
        raise CorruptFileError(f"CIFAR batch {str(path)!r} holds a {type(raw).__name__}, not a dict; re-extract it")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _batch_arrays(path: Path, batch: dict[str, Any], layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images (N x 3072 uint8) and labels (N ints in [0, classes)), checked before they are paired:
    data and labels of different lengths, a wrong row size, pixel values outside 0..255 or labels outside the
    classes are refused (:class:`CorruptFileError` naming the file)."""
    where = f"CIFAR batch {str(path)!r}"
    fix = "re-extract the data set from its archive (or delete it and use --download)"
    if "data" not in batch or layout.label_key not in batch:
        raise CorruptFileError(f"{where} has no 'data' and '{layout.label_key}' entries; {fix}")
    try:
        data = np.asarray(batch["data"])
        labels = np.asarray(batch[layout.label_key])
    except (ValueError, TypeError) as exc:
        raise CorruptFileError(f"{where}: its data or labels are not arrays ({exc}); {fix}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype.kind not in "ui":
        raise CorruptFileError(f"{where}: 'data' is {data.dtype} {data.shape}, not N x 3072 integers; {fix}")
    if labels.ndim != 1 or labels.dtype.kind not in "ui" or len(labels) != len(data):
        raise CorruptFileError(
            f"{where} holds {len(data)} images but {labels.size} labels ({labels.dtype}); images would be paired "
            f"with the wrong labels; {fix}"
        )
    if data.size and (data.min() < 0 or data.max() > 255):
        raise CorruptFileError(f"{where}: pixel values outside 0..255; {fix}")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.classes):
        raise CorruptFileError(f"{where}: labels outside 0..{layout.classes - 1}; {fix}")
    return data.astype(np.uint8), labels.astype(np.int64)


def _download(name: str, data_dir: Path) -> None:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    layout = LAYOUTS[name]
    fetch(name, lambda: cls(str(data_dir), train=True, download=True), layout.url, data_dir, f"'{layout.folder}'")


def load_cifar(data_dir: Path, name: str, train: bool, download: bool) -> CifarImages:
    """The training (50,000) or test (10,000) images of ``name`` in {cifar10, cifar100}."""
    layout = LAYOUTS[name]
    root = data_dir / layout.folder
    files = [root / f for f in (*(layout.train if train else layout.test), layout.meta)]
    if download and not all(f.is_file() for f in files):
        _download(name, data_dir)
    missing = [f for f in files if not f.is_file()]
    if missing:
        what = f"the extracted '{layout.folder}' folder (python version, with {', '.join(f.name for f in files)})"
        raise missing_data_error(name, root, files, what, data_dir, can_download=True)
    arrays = [_batch_arrays(f, _unpickle(f), layout) for f in files[:-1]]
    data = np.concatenate([d for d, _ in arrays])
    targets = [int(t) for _, labels in arrays for t in labels]
    names = _unpickle(files[-1]).get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.classes:
        raise CorruptFileError(
            f"CIFAR meta file {str(files[-1])!r} does not list {layout.classes} class names under "
            f"'{layout.names_key}'; re-extract the data set from its archive"
        )
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names]
    return CifarImages(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), targets, classes)
