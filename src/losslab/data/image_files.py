"""A labelled list of image files, read lazily with PIL (Tiny-ImageNet, Food-101, ImageNet).

::

    source = ImageFiles([Path("a.JPEG"), Path("b.JPEG")], targets=[0, 1], classes=["n01", "n02"])
    image, label = source[0]  # PIL RGB image, 0
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset


class ImageFiles(Dataset):
    """``files[i]`` opened as an RGB PIL image with label ``targets[i]`` (an index into ``classes``)."""

    def __init__(self, files: Sequence[Path], targets: Sequence[int], classes: Sequence[str]) -> None:
        self.files = list(files)
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        with Image.open(self.files[index]) as image:
            return image.convert("RGB"), self.targets[index]
