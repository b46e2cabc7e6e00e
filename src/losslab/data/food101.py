"""Food-101 (Bossard et al. 2014; 101 classes, 750 train / 250 test images each) in torchvision's layout.

Under ``data_dir``: ``food-101/images/<class>/<id>.jpg`` and ``food-101/meta/{train,test}.json`` (class -> list of
``"<class>/<id>"``). ``download=True`` fetches the 5 GB archive through ``torchvision.datasets.Food101``::

    source = load_food101(data_dir, train=True, download=False)  # 75,750 images
"""

from __future__ import annotations

import json
from pathlib import Path

from losslab.data.image_files import ImageFiles
from losslab.data.paths import fetch, missing_data_error

URL = "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz"
FOLDER = "food-101"


def load_food101(data_dir: Path, train: bool, download: bool) -> ImageFiles:
    """The official training or test split, classes sorted by name."""
    root = data_dir / FOLDER
    meta = root / "meta" / ("train.json" if train else "test.json")
    if download and not meta.is_file():
        import torchvision

        fetch("food101", lambda: torchvision.datasets.Food101(str(data_dir), download=True), URL, data_dir, FOLDER)
    if not meta.is_file() or not (root / "images").is_dir():
        what = f"the extracted '{FOLDER}' folder (images/<class>/*.jpg, meta/train.json, meta/test.json)"
        raise missing_data_error("food101", root, [meta, root / "images"], what, data_dir, can_download=True)
    listing: dict[str, list[str]] = json.loads(meta.read_text())
    classes = sorted(listing)
    pairs = [(root / "images" / f"{item}.jpg", i) for i, c in enumerate(classes) for item in listing[c]]
    return ImageFiles([p for p, _ in pairs], [t for _, t in pairs], classes)
