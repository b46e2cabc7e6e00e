"""ImageNet-1k (ILSVRC 2012) in ImageFolder layout: ``imagenet/train/<wnid>/*.JPEG`` and ``imagenet/val/<wnid>/*``.

ImageNet cannot be downloaded automatically (its licence needs a sign-in); prepare the class-per-folder layout
yourself. Classes are the sorted folder names of ``train/``; ``val/`` is losslab's ``test`` split. ``data_dir``
may hold the ``imagenet/`` folder or be the tree itself (timm's ``--data_dir IMAGENET_DIR``, with ``train/`` and
``val/`` directly inside)::

    source = load_imagenet(data_dir, train=True, download=False)
"""

from __future__ import annotations

from pathlib import Path

from losslab.data.image_files import ImageFiles
from losslab.data.layout import is_image_folder_tree
from losslab.data.paths import missing_data_error
from losslab.errors import DataNotFoundError

FOLDER = "imagenet"


def load_image_folder(root: Path, classes: list[str]) -> ImageFiles:
    """All images under ``root/<class>/`` for the given class names (label = position in ``classes``)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    samples = make_dataset(str(root), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS)
    return ImageFiles([Path(p) for p, _ in samples], [t for _, t in samples], classes)


def load_imagenet(data_dir: Path, train: bool, download: bool) -> ImageFiles:
    """The ``train/`` or ``val/`` tree under ``data_dir/imagenet`` (or ``data_dir`` itself); classes from ``train/``."""
    root = data_dir / FOLDER
    if not (root / "train").is_dir() and is_image_folder_tree(data_dir):
        root = data_dir  # timm's convention: the data folder is the ImageFolder tree itself
    split_dir = root / ("train" if train else "val")
    what = "the ImageFolder tree 'imagenet/' (train/<wnid>/*.JPEG and val/<wnid>/*.JPEG)"
    if not (root / "train").is_dir() or not split_dir.is_dir():
        error = missing_data_error("imagenet", root, [root / "train", split_dir], what, data_dir, can_download=False)
        if download:
            raise DataNotFoundError(
                f"ImageNet cannot be downloaded automatically (its licence needs a sign-in). {error}"
            )
        raise error
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    return load_image_folder(split_dir, classes)
