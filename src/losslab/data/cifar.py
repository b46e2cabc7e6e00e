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


LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "labels",
        "label_names",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": CifarLayout(
        "cifar-100-python",
        ("train",),
        ("test",),
        "meta",
        "fine_labels",
        "fine_label_names",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
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
    batches = [_unpickle(f) for f in files[:-1]]
    data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
    targets = [int(t) for b in batches for t in b[layout.label_key]]
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in _unpickle(files[-1])[layout.names_key]]
    return CifarImages(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), targets, classes)
