"""Tiny-ImageNet-200 (CS231n; 200 classes of 64x64 images) from the standard ``tiny-imagenet-200/`` layout.

``wnids.txt`` lists the class ids (classes are sorted, as ImageFolder sorts them); training images are
``train/<wnid>/images/*.JPEG``; the labelled validation images are ``val/images/*.JPEG`` with labels in
``val/val_annotations.txt`` (tab-separated: file, wnid, box). The official test set has no labels, so losslab's
``test`` split is this validation set (and losslab's ``val`` split is carved out of ``train``)::

    source = load_tiny_imagenet(data_dir, train=False, download=False)  # 10,000 images
"""

from __future__ import annotations

from pathlib import Path

from losslab.data.image_files import ImageFiles
from losslab.data.paths import fetch, missing_data_error

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"


def load_tiny_imagenet(data_dir: Path, train: bool, download: bool) -> ImageFiles:
    """Training images (train/) or the labelled validation images used as test set (val/)."""
    root = data_dir / FOLDER
    needed = [root / "wnids.txt", root / "train"] if train else [root / "wnids.txt", root / "val/val_annotations.txt"]
    if download and not all(p.exists() for p in needed):
        from torchvision.datasets.utils import download_and_extract_archive

        fetch("tiny_imagenet", lambda: download_and_extract_archive(URL, str(data_dir)), URL, data_dir, f"'{FOLDER}'")
    missing = [p for p in needed if not p.exists()]
    if missing:
        what = f"the extracted '{FOLDER}' folder (wnids.txt, train/<wnid>/images/, val/val_annotations.txt)"
        raise missing_data_error("tiny_imagenet", root, needed, what, data_dir, can_download=True)
    classes = sorted(line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip())
    index = {wnid: i for i, wnid in enumerate(classes)}
    if train:
        files = [f for wnid in classes for f in sorted((root / "train" / wnid / "images").glob("*.JPEG"))]
        targets = [index[f.parent.parent.name] for f in files]
    else:
        rows = [line.split("\t") for line in (root / "val/val_annotations.txt").read_text().splitlines() if line]
        files = [root / "val/images" / row[0] for row in rows]
        targets = [index[row[1]] for row in rows]
    return ImageFiles(files, targets, classes)
