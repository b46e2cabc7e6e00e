"""Which data set a data folder holds, read from its layout, so a data folder is never silently ignored.

timm-style recipes (Softmax Gradient Tampering's) name only a folder: ``--data_dir IMAGENET_DIR``, an ImageFolder
tree with ``train/<class>/`` and ``val/<class>/``. losslab picks the data set that layout shows::

    dataset_in_folder(Path("/data/imagenet"))   # "imagenet" (train/<wnid>/ and val/<wnid>/ inside)
    dataset_in_folder(Path("/data"))            # "cifar10" when only cifar-10-batches-py/ is there
    check_folder_use("digits", Path("/data"))   # ConfigError: digits is bundled and reads no folder

A folder with no recognisable layout, or with several data sets in it, is a :class:`ConfigError` naming the
layouts losslab reads and asking for ``--dataset``.
"""

from __future__ import annotations

from pathlib import Path

from losslab.errors import ConfigError

#: The sub-folder each file-backed data set reads under ``data_dir`` (cifar.py, tiny_imagenet.py, food101.py,
#: imagenet.py).
FOLDERS: dict[str, str] = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "tiny_imagenet": "tiny-imagenet-200",
    "food101": "food-101",
    "imagenet": "imagenet",
}

#: Data sets that read no folder: ``digits`` is bundled with scikit-learn, ``fake`` is generated.
FOLDERLESS = frozenset({"digits", "fake"})


def is_image_folder_tree(path: Path) -> bool:
    """True when ``path`` has ``train/`` and ``val/``, each with at least one class sub-folder (ImageFolder)."""
    splits = [path / "train", path / "val"]
    return all(split.is_dir() and any(p.is_dir() for p in split.iterdir()) for split in splits)


def dataset_in_folder(path: Path) -> str:
    """The data set whose layout ``path`` holds; :class:`ConfigError` when none or several are found."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"data folder {str(path)!r} does not exist: point --data-dir (timm: --data_dir) at the folder that holds "
            "the data, or name the data set with --dataset"
        )
    if is_image_folder_tree(path):
        return "imagenet"
    found = [name for name, sub in FOLDERS.items() if (path / sub).is_dir()]
    if len(found) == 1:
        return found[0]
    layouts = ", ".join(f"{sub}/ ({name})" for name, sub in FOLDERS.items())
    if found:
        raise ConfigError(
            f"data folder {str(path)!r} holds several data sets ({', '.join(found)}): pick one with --dataset"
        )
    raise ConfigError(
        f"data folder {str(path)!r} shows no data set layout losslab reads (train/<class>/ + val/<class>/ for an "
        f"ImageNet-style tree, or {layouts}): name the data set with --dataset"
    )


def check_folder_use(dataset: str, data_dir: Path | None) -> None:
    """:class:`ConfigError` when a data folder is given for a data set that reads none (it would be ignored)."""
    key = dataset.strip().lower().replace("-", "_")
    if data_dir is not None and key in FOLDERLESS:
        raise ConfigError(
            f"data set {dataset!r} reads no data folder, so --data-dir {str(data_dir)!r} would be ignored: drop "
            "--data-dir, or name the data set the folder holds with --dataset (leave --dataset out to pick it from "
            "the folder's layout)"
        )
